"""The search report: ``report/report.md`` with the PNG plots of :mod:`.plots`.

Sections, each built by its own function from the run folder's tables: setup and throughput,
coverage, the regressor's held-out scores, the search rounds, and θ* against the baselines.
Every figure is recomputed from the run folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.plots import (
    plot_error_vs_runs,
    plot_importance,
    plot_losses,
    plot_mixture,
    plot_partial_dependence,
    plot_pred_vs_actual,
    plot_retest,
    plot_rounds,
)
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.proxy import build_model, count_params
from quadmix_stream.search.retest import verdict
from quadmix_stream.search.runfolder import RunFolder
from quadmix_stream.search.select import LEVEL, measured_contenders
from quadmix_stream.search.summaries import best_per_round, coverage_lines
from quadmix_stream.storage.io import atomic_write_text

WEAK_SPEARMAN = 0.5
NOTES = (
    "Notes: losses are mean per-token cross-entropy (nats) of the proxies on each evaluation "
    "set with the run's tokenizer; the objective is their weighted sum. Held-out metrics come "
    "from models that did not see those runs; the model used for selection is refit on all "
    "successful runs."
)


def _f(x: float | None, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(folder: RunFolder) -> Path:
    """Write ``report/report.md`` and its plots from the run folder; returns the markdown's path."""
    out = folder.sub("report")
    _, y, _ = folder.table()
    done = folder.finished()
    failed = {k: v for k, v in done.items() if v.get("status") != "ok"}
    # contenders' mean objective over the verification seeds
    evals_ok = {k: v["objective"] for k, v in measured_contenders(folder)[0].items()}
    md: list[str] = [f"# Search report: `{folder.path}`", ""]
    md += _setup(folder, len(done), len(y), failed)
    md += _coverage(folder, failed)
    md += _regressor(folder, out)
    md += _shape(folder, out)
    md += _retest(folder)
    md += _rounds(folder, out, y, evals_ok)
    md += _theta_star(folder, out, y, evals_ok)
    md += ["", NOTES, ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def _setup(folder: RunFolder, n_done: int, n_ok: int, failed: dict[str, dict]) -> list[str]:
    """The dataset, the proposal space, the proxy, throughput per invocation, the objective."""
    cfg, p, ds = folder.config, folder.config.proxy, folder.meta["dataset"]
    ids, _, _ = folder.proposals()
    n_params = count_params(build_model(p, _vocab(folder)))
    md = [
        "## Setup",
        "",
        f"- dataset `{ds['path']}` ({ds['rows']} documents, "
        f"fingerprint `{ds['fingerprint']}`), target set `{folder.target}`",
        f"- proposal space **{cfg.space}**, {len(ids)} proposals; proxies finished "
        f"{n_done} ({n_ok} ok, {len(failed)} failed)",
        f"- proxy: Llama {p.model.num_hidden_layers} layers × hidden {p.model.hidden_size}, "
        f"{n_params['total']:,} parameters ({n_params['non_embedding']:,} non-embedding), "
        f"seq {p.seq_len}, batch {p.batch_size}, {p.steps} steps = {p.steps * p.batch_size * p.seq_len:,} "
        f"tokens, lr {p.lr}, same initial weights for all (seed {p.init_seed}), "
        + (
            f"a data seed of its own per proposal (drawn from {p.data_seed})"
            if p.seed_per_run
            else f"the same data seed for all ({p.data_seed})"
        ),
    ]
    md += _throughput(folder)
    obj = " + ".join(f"{w:g}·{k}" for k, w in cfg.objective.items())
    constraints = ", ".join(f"{k} ≤ {v}" for k, v in cfg.constraints.items())
    md += [
        "",
        f"Objective (lower is better): **{obj}** (proxy losses on the evaluation sets "
        f"{sorted(folder.eval_paths)})"
        + (f"; constraints: {constraints}" if constraints else "")
        + ".",
    ]
    return md


def _throughput(folder: RunFolder) -> list[str]:
    """One table row per ``proxies`` invocation and rank that trained proxies."""
    logs = [lg for lg in folder.logs() if lg.get("trained")]
    if not logs:
        return []
    rows = [
        [
            lg.get("started", ""),
            str(lg.get("rank")),
            str(lg.get("world_size")),
            str(lg.get("group")),
            lg.get("device", ""),
            str(lg["trained"]),
            _f(lg["seconds"], 1),
            _f(lg.get("proxies_per_hour"), 0),
        ]
        for lg in logs
    ]
    head = ["started", "rank", "world", "group", "device", "proxies", "s", "proxies/hour"]
    return ["", "Throughput (one row per `proxies` invocation and rank):", "", _table(head, rows)]


def _coverage(folder: RunFolder, failed: dict[str, dict]) -> list[str]:
    """Tokens of each evaluation set, distinct documents per proxy, and the failed proxies."""
    md = ["", "## Coverage: documents per proxy and per evaluation set", ""]
    for name, c in folder.meta.get("eval_coverage", {}).items():
        md.append(
            f"- eval set `{name}`: {c['tokens']:,} tokens from {c['docs_used']} of its "
            f"{c['docs']} documents"
        )
    md.append("")
    cov = folder.coverage()
    if cov:
        p = folder.config.proxy
        cap = f"{p.doc_tokens} tokens per document" if p.doc_tokens else "whole documents"
        md += [
            f"Distinct documents each proxy trained on ({cap}): min {cov['min']}, median "
            f"{cov['median']:.0f}, max {cov['max']} over {cov['proxies']} proxies.",
        ]
        warn = coverage_lines(folder)[1:]
        if warn:
            md += ["", f"**{warn[0]}**"]
    if failed:
        rows = [[k, str(v.get("reason"))] for k, v in sorted(failed.items())]
        md += ["", "Failed proxies (excluded from the fit):", "", _table(["run", "reason"], rows)]
    md.append("")
    return md


def _regressor(folder: RunFolder, out: Path) -> list[str]:
    """Held-out and k-fold scores of every regressor, its plots and the top features."""
    mpath = folder.path / "model" / "metrics.json"
    if not mpath.exists():
        return []
    from quadmix_stream.search.regressor import headline

    metrics = json.loads(mpath.read_text())
    md = ["## Regressor inputs → objective (on runs it did not see)", ""]
    md += [
        "LightGBM, ridge (linear) and a Gaussian process, each on the raw θ (the paper's "
        "inputs) and on the selection profile (`quadmix_stream/search/features.py`); the "
        f"best allowed by k-fold Spearman predicts: **{metrics['chosen']}**.",
        "",
        _table(
            ["model", "inputs", "split", "runs", "MAE", "MAE of predicting the mean", "Spearman"],
            _score_rows(metrics),
        ),
    ]
    head, split = headline(metrics)["spearman"], headline(metrics)["split"]
    if not (head >= WEAK_SPEARMAN):
        md += [
            "",
            f"**Weak regressor**: {split} Spearman {_f(head, 3)} < {WEAK_SPEARMAN}. At this "
            f"number of runs ({metrics['n_runs']}) the prediction ranks θ poorly; θ* is "
            "correspondingly uncertain (see the error-vs-runs curve: more proxies help).",
        ]
    curve = plot_error_vs_runs(metrics, out / "error_vs_runs.png")
    top = [[r["feature"], _f(r["gain"], 3), str(r["splits"])] for r in metrics["importance"][:10]]
    return md + [
        "",
        f"![predicted vs actual]({plot_pred_vs_actual(metrics, out / 'pred_vs_actual.png')})",
        f"![error vs runs]({curve})" if curve else "",
        "",
        f"Top features (share of gain of LightGBM on the {metrics['features']} inputs):",
        "",
        _table(["feature", "gain", "splits"], top),
        "",
        f"![feature importance]({plot_importance(metrics, out / 'feature_importance.png')})",
        "",
    ]


def _shape(folder: RunFolder, out: Path, top: int = 12) -> list[str]:
    """The fitted regressor's partial dependence on each input of the proposal space: which
    shares and quality parameters move its prediction, and which way."""
    if not (folder.path / "model" / "metrics.json").exists():
        return []
    from quadmix_stream.search.regressor import partial_dependence
    from quadmix_stream.search.select import load_predictor

    x, _, _ = folder.table()
    if len(x) < 3:
        return []
    pool = Pool(folder.dataset)
    names = folder.space(pool).names
    values, pred = partial_dependence(load_predictor(folder, pool).predict, x)
    spread = np.ptp(pred, axis=1)
    rows = [
        [
            names[j],
            f"{values[j, 0]:.3g} → {values[j, -1]:.3g}",
            f"{pred[j, 0]:.4f} → {pred[j, -1]:.4f}",
            _f(float(spread[j])),
        ]
        for j in np.argsort(-spread, kind="stable")[:top]
    ]
    png = plot_partial_dependence(names, values, pred, out / "partial_dependence.png")
    return [
        "## What the regressor learned: partial dependence",
        "",
        "The predicted objective as one input moves from its 5th to its 95th percentile among "
        "the proxied points, averaged over 32 of them (the inputs the prediction moves most "
        "with; a flat input is one the proxies could not tell apart):",
        "",
        _table(["input", "from → to", "predicted objective", "range"], rows),
        "",
        f"![partial dependence]({png})",
        "",
    ]


def _retest(folder: RunFolder) -> list[str]:
    """The test-retest of proxy losses (``search retest``), when it was run."""
    path = folder.path / "retest.json"
    if not path.exists():
        return []
    res = json.loads(path.read_text())
    png = plot_retest(res, folder.sub("report") / "retest.png")
    md = ["## Test-retest: proxies again with another data seed", "", verdict(res), ""]
    return md + [f"![test-retest]({png})", ""]


def _score_rows(metrics: dict) -> list[list[str]]:
    """One row per regressor and split (held-out, k-fold) it was scored on."""
    rows = []
    for kk, sc in metrics["scores"].items():
        for split in ("holdout", "kfold"):
            if split not in sc:
                continue
            m = sc[split]
            label = "holdout" if split == "holdout" else f"{metrics['kfold']['k']}-fold"
            rows.append(
                [
                    sc["model"] + (" **(chosen)**" if kk == metrics["chosen"] else ""),
                    sc["features"],
                    label,
                    str(m["n"]),
                    _f(m["mae"]),
                    _f(m["mae_of_mean"]),
                    _f(m["spearman"], 3),
                ]
            )
    return rows


def _rounds(folder: RunFolder, out: Path, y: np.ndarray, evals_ok: dict[str, float]) -> list[str]:
    """Best actual objective per round (only when the search ran more than one)."""
    best = best_per_round(folder) if len(y) else {}
    if len(best) <= 1:
        return []
    rounds = folder.rounds()
    marks = {k: v for k, v in evals_ok.items() if k in ("theta-star", "random")}
    rows = [
        [str(r), str(int((rounds == r).sum())), _f(v), _f(min(list(best.values())[: i + 1]))]
        for i, (r, v) in enumerate(best.items())
    ]
    head = ["round", "proxies", "best actual objective", "best so far"]
    sel_path = folder.path / "selection.json"
    chosen = json.loads(sel_path.read_text()).get("round_bests", []) if sel_path.exists() else []
    if chosen and "within_constraints" in chosen[0]:
        # under constraints the round's best (verified as best-round-R) is its best run within them
        within = {b["name"].removeprefix("best-round-"): b for b in chosen}
        head.append("best within the constraints (verified as `best-round-R`)")
        for row in rows:
            b = within.get(row[0])
            row.append(
                "—"
                if b is None
                else f"{_f(b['objective'])} (run {b['run']})"
                + ("" if b["within_constraints"] else ", none within")
            )
    return [
        "## Search rounds",
        "",
        _table(head, rows),
        "",
        f"![rounds]({plot_rounds(best, marks, out / 'rounds.png')})",
        "",
    ]


def _theta_star(
    folder: RunFolder, out: Path, y: np.ndarray, evals_ok: dict[str, float]
) -> list[str]:
    """θ*, what was shipped, and θ* against the pool and the baselines (needs params.json)."""
    cpath = folder.path / "candidates" / "theta-star.json"
    if not ((folder.path / "params.json").exists() and cpath.exists()):
        return []
    domains, scorers = folder.domains, folder.scorers
    star = SamplingParams.load(cpath).reorder(domains, scorers)
    sel = json.loads((folder.path / "selection.json").read_text())
    md = [
        "## θ*",
        "",
        f"Mean of the best {sel['top_k']} of {sel['candidates']:,} fresh proposals "
        f"({sel.get('local_candidates', 0):,} of them near the best runs). Predicted "
        f"objective of θ* {_f(sel['predicted_loss'])} (ridge: {_f(sel['predicted_loss_linear'])}); "
        f"its top-{sel['top_k']} candidates were predicted "
        f"{_f(min(sel['top_k_predicted']))}–{_f(max(sel['top_k_predicted']))}. Proxy runs: best "
        f"{_f(float(y.min()))}, median {_f(float(np.median(y)))}.",
        "",
    ]
    md += _steering(sel)
    for b in sel.get("boundary", []):
        md += [f"**Range boundary**: {b['message']}.", ""]
    if sel.get("shipped"):
        md += _shipped(sel["shipped"])
    elif not folder.config.evaluate:
        md += ["params.json is θ*, not verified by a proxy (`evaluate: false`).", ""]
    pool = Pool(folder.dataset)
    profiles = _profiles(folder, star, pool)
    md += _comparison(folder, profiles, evals_ok)
    md += _share_range(folder, pool, profiles)
    md += [
        "θ* per domain:",
        "",
        _table(
            ["domain"] + [f"α {s}" for s in scorers] + ["λ", "ω", "η", "ε"],
            [
                [d]
                + [_f(star.alpha[i, j], 3) for j in range(len(scorers))]
                + [_f(getattr(star, k)[i], 4) for k in ("lam", "omega", "eta", "eps")]
                for i, d in enumerate(domains)
            ],
        ),
        "",
    ]
    shares = {k: v["token_share"] for k, v in profiles.items()}
    md.append(
        f"![mixture]({plot_mixture(shares, star.alpha, domains, scorers, out / 'mixture.png')})"
    )
    marks = {k: v for k, v in evals_ok.items() if not k.startswith(("cand-", "best-round-"))}
    if len(y):
        md += ["", f"![losses]({plot_losses(y, marks, out / 'losses.png')})", ""]
    return md


def _steering(sel: dict) -> list[str]:
    """How the constraints steered the rounds and θ* (each set's own regressor)."""
    st = sel.get("steering")
    if not st:
        return []
    rows = [
        [
            name,
            c["from"],
            f"{c['regressor']} (Spearman {_f(c['spearman'], 3)})",
            _f(c["predicted_bound"]),
            _f(c["margin"]),
            _f(c["theta_star_predicted"]),
        ]
        for name, c in st["constraints"].items()
    ]
    head = ["set", "bound", "its regressor", "bound predicted", "margin", "θ* predicted"]
    md = [
        f"Constraints steer the search: rounds and θ* rank first the "
        f"{st['candidates_predicted_within']:,} candidates predicted at least `margin` below every "
        "bound; what ships is decided by the measured losses below.",
        "",
        _table(head, rows) if rows else "",
        "",
    ]
    return md + [f"**{n}**" for n in st["notes"]] + ([""] if st["notes"] else [])


def _shipped(shipped: dict) -> list[str]:
    """Which contender params.json is, with every measured contender's objective and losses."""
    sets = sorted({s_ for v in shipped["measured"].values() for s_ in v["losses"]})
    seeds = shipped.get("seeds") or [None]
    baseline = (
        f"; best baseline {shipped['best_baseline']} {_f(shipped['best_baseline_objective'])}"
        if shipped.get("best_baseline")
        else ""
    )
    rows = []
    minus = shipped.get("theta_star_minus") or {}
    for k, v in sorted(shipped["measured"].items(), key=lambda kv: kv[1]["objective"]):
        per = v.get("objectives") or [v["objective"]]
        sd = [_f(float(np.std(per, ddof=1)))] if len(seeds) > 1 else []
        d = minus.get(k)
        pair = [f"{d['mean']:+.4f} ± {d['se']:.4f}" if d else "—"] if len(seeds) > 1 else []
        rows.append(
            [k + (" **(shipped)**" if k == shipped["name"] else ""), _f(v["objective"])]
            + sd
            + pair
            + [_f(v["losses"].get(s_)) for s_ in sets]
        )
    over = (
        f" Each contender was trained with {len(seeds)} data seeds ({', '.join(map(str, seeds))});"
        " the figures are means, sd is between seeds."
        if len(seeds) > 1
        else ""
    )
    md = [
        f"**Shipped as params.json: {shipped['name']}** (measured objective "
        f"{_f(shipped['objective'])}; θ* {_f(shipped['theta_star_objective'])}, "
        f"margin {_f(shipped['margin_vs_theta_star'])}"
        + baseline
        + ")."
        + over
        + " `best-round-R` is the best proxy run of round R (under constraints, the best that "
        "measured within them) measured again on these seeds (its recorded objective is the "
        "lowest of many noisy measurements, so it is optimistic). "
        "Every measured contender:",
        "",
        _table(
            ["contender", "objective"]
            + (["sd", "θ* − it (paired by seed, ± se)"] if len(seeds) > 1 else [])
            + [f"{s_} loss" for s_ in sets],
            rows,
        ),
        "",
    ]
    md += _decisions(shipped)
    for note in shipped.get("notes", []):
        md += [f"**Note**: {note}.", ""]
    md += _decided(shipped)
    return md


def _decided(shipped: dict) -> list[str]:
    """The deciding step: the verification proxies' ranking beside the deciding runs'."""
    agree = shipped.get("rank_agreement")
    if shipped.get("stage") != "decide" or not agree:
        return []
    screen = shipped["screened"]
    rows = sorted(agree["methods"].items(), key=lambda kv: kv[1]["full"])
    return [
        f"**Decided at a higher fidelity** ({shipped['fidelity']}): the contenders above were "
        f"trained again there and the best there shipped. The verification proxies would have "
        f"shipped {screen['name']} ({_f(screen['objective'])}). Their ranking against the "
        f"deciding runs': Spearman {agree['spearman_vs_full']:+.2f} over {len(rows)} contenders.",
        "",
        _table(
            ["contender", "proxy objective", "proxy rank", "deciding objective", "deciding rank"],
            [
                [m, _f(v["proxy"]), f"{v['proxy_rank']:g}", _f(v["full"]), f"{v['full_rank']:g}"]
                for m, v in rows
            ],
        ),
        "",
    ]


def _decisions(shipped: dict) -> list[str]:
    """The tests behind what shipped: constraints per contender, and the runner-up."""
    checks = shipped.get("constraint_checks") or {}
    runner = shipped.get("runner_up")
    test = next((c["test"] for c in shipped.get("constraints", {}).values()), None)
    md = []
    if checks and test:
        md += [f"Constraints ({test}): loss minus the bound, ± se, p that it is above:", ""]
        sets = list(shipped["constraints"])
        rows = [
            [k]
            + [
                f"{c[s]['mean']:+.4f}"
                + (f" ± {c[s]['se']:.4f}, p {c[s]['p']:.3f}" if c[s]["se"] == c[s]["se"] else "")
                + (" **fails**" if c[s]["fails"] else "")
                for s in sets
            ]
            for k, c in sorted(
                checks.items(), key=lambda kv: shipped["measured"][kv[0]]["objective"]
            )
        ]
        md += [
            _table(
                ["contender", *(f"{s} ≤ {shipped['constraints'][s]['from']}" for s in sets)], rows
            ),
            "",
        ]
    if runner and runner.get("separable") is not None:
        verdict = "separable" if runner["separable"] else "**not separable**"
        md += [
            f"Runner-up {runner['name']}: {runner['mean']:+.4f} ± {runner['se']:.4f} worse than "
            f"{shipped['name']} paired by seed (one-sided paired t-test, p {runner['p']:.3f}): "
            f"{verdict} at {LEVEL:g}.",
            "",
        ]
    return md


def _profiles(folder: RunFolder, star: SamplingParams, pool: Pool) -> dict[str, dict]:
    """Expected selection profile of the pool (random), θ*, what shipped (when it is not θ*)
    and every other baseline."""
    domains, scorers = folder.domains, folder.scorers
    compare = {"pool (random)": SamplingParams.keep_all(domains, scorers), "θ*": star}
    shipped = SamplingParams.load(folder.path / "params.json").reorder(domains, scorers)
    if shipped.fingerprint() != star.fingerprint():
        compare["shipped"] = shipped
    for f in sorted((folder.path / "baselines").glob("*.json")):
        if f.stem != "random":
            compare[f.stem] = SamplingParams.load(f).reorder(domains, scorers)
    return {k: pool.profile(v) for k, v in compare.items()}


def _share_range(folder: RunFolder, pool: Pool, profiles: dict[str, dict]) -> list[str]:
    """Per domain: the pool's token share, the range of shares the proxies' proposals realised
    (estimated on the label sample, as the profile features are), and θ*'s and what shipped."""
    from quadmix_stream.search.features import featurizer_for

    x, _, _ = folder.table()
    if not len(x):
        return []
    m = len(folder.domains)
    feat = featurizer_for("profile", pool, folder.config.form, space=folder.space(pool))
    share = feat(x)[:, :m]
    cols = [k for k in ("θ*", "shipped") if k in profiles]
    rows = [
        [d, _f(profiles["pool (random)"]["token_share"][d], 3)]
        + [_f(float(q), 3) for q in np.quantile(share[:, i], [0.0, 0.5, 1.0])]
        + [_f(profiles[k]["token_share"][d], 3) for k in cols]
        for i, d in enumerate(folder.domains)
    ]
    return [
        f"Domain shares of the selected tokens: the pool's, the range the {len(x)} proxied "
        "proposals realised (a narrow range means the search could not learn that domain's "
        "share), and θ*'s and what shipped:",
        "",
        _table(["domain", "pool", "proposals min", "median", "max", *cols], rows),
        "",
    ]


def _comparison(
    folder: RunFolder, profiles: dict[str, dict], evals_ok: dict[str, float]
) -> list[str]:
    """Per params set: actual objective, tokens per epoch, domain shares and mean σ."""
    domains, scorers = folder.domains, folder.scorers
    rows = []
    for name, prof in profiles.items():
        key = {"pool (random)": "random", "θ*": "theta-star"}.get(name, name)
        actual = _f(evals_ok[key]) if key in evals_ok else "—"
        rows.append(
            [name, actual, f"{prof['tokens']:,.0f}"]
            + [_f(prof["token_share"][d], 3) for d in domains]
            + [_f(prof["sigma_mean"][s], 3) for s in scorers]
        )
    return [
        "Expected selection per epoch (label tokens), per-domain token shares, mean σ of the "
        "selected tokens per scorer (0 = best), and the actual proxy loss when evaluated:",
        "",
        _table(
            ["params", "actual objective", "tokens/epoch"] + domains + [f"σ {s}" for s in scorers],
            rows,
        ),
        "",
    ]


def _vocab(folder: RunFolder) -> int:
    from quadmix_stream.search.tokenizer import TextTokenizer

    return TextTokenizer(folder.tokenizer_path, folder.config.tokenizer.eos_token).vocab_size
