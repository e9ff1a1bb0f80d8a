"""The search report: ``report/report.md`` and PNG plots (matplotlib, Agg backend).

Plots: predicted vs actual loss on held-out runs; regressor error vs number of runs; feature
importance; per-domain expected token shares and α of θ* against the pool; proxy losses with
θ* and the baselines marked. Every figure is recomputed from the run folder's tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from quadmix_stream.io import atomic_write_text
from quadmix_stream.params import SamplingParams
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.proxy import build_model, count_params
from quadmix_stream.search.runfolder import RunFolder

WEAK_SPEARMAN = 0.5


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)
    return path.name


def _f(x: float | None, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


# ---------------------------------------------------------------- plots
def plot_pred_vs_actual(metrics: dict, out: Path) -> str:
    """Out-of-fold (else held-out) predictions of the chosen model and of ridge on its inputs."""
    plt = _plt()
    split = "kfold" if "kfold_predictions" in metrics else "holdout"
    pr = metrics[f"{split}_predictions"]
    fig, ax = plt.subplots(figsize=(5, 5))
    y = np.array(pr["actual"])
    chosen = metrics["chosen"]
    shown = dict.fromkeys([chosen, f"linear/{metrics['features']}"])
    for kk, marker in zip(shown, ("o", "x"), strict=False):
        rho = metrics["scores"][kk][split]["spearman"]
        ax.scatter(y, pr[kk], marker=marker, alpha=0.7, label=f"{kk} (Spearman {rho:+.2f})")
    lo, hi = float(min(y.min(), *pr[chosen])), float(max(y.max(), *pr[chosen]))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    what = "out-of-fold (k-fold)" if split == "kfold" else "held-out split"
    ax.set(
        xlabel="actual proxy objective", ylabel="predicted", title=f"Predicted vs actual, {what}"
    )
    ax.legend()
    return _save(fig, out)


def plot_rounds(best: dict[int, float], marks: dict[str, float], out: Path) -> str:
    """Best actual proxy objective per search round, with θ* and the baselines as lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = list(best)
    ax.plot(rounds, list(best.values()), "o-", label="best proxy run of the round")
    ax.plot(rounds, np.minimum.accumulate(list(best.values())), "k:", label="best so far")
    for i, (name, v) in enumerate(marks.items()):
        ax.axhline(v, color=f"C{i + 1}", lw=1, label=f"{name} {v:.3f}")
    ax.set(
        xlabel="round (0: the recipe's proposals)",
        ylabel="actual proxy objective",
        title="Search rounds",
        xticks=rounds,
    )
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_error_vs_runs(metrics: dict, out: Path) -> str | None:
    plt = _plt()
    lc = metrics["learning_curve"]
    if not lc:
        return None
    runs = [r["runs"] for r in lc]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("lgbm", "linear"):
        a1.plot(runs, [r[f"{name}_mae"] for r in lc], "o-", label=name)
        a2.plot(runs, [r[f"{name}_spearman"] for r in lc], "o-", label=name)
    a1.plot(runs, [r["mae_of_mean"] for r in lc], ":", color="grey", label="predict the mean")
    a1.set(xlabel="training runs", ylabel="MAE on the other runs", title="Error vs number of runs")
    a2.set(xlabel="training runs", ylabel="Spearman on the other runs", ylim=(-1, 1))
    a2.axhline(0, color="k", lw=0.5)
    a1.legend()
    a2.legend()
    fig.tight_layout()
    return _save(fig, out)


def plot_importance(metrics: dict, out: Path, top: int = 20) -> str:
    plt = _plt()
    imp = metrics["importance"][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1))
    ax.barh([r["feature"] for r in imp], [r["gain"] for r in imp])
    ax.set(xlabel="share of LightGBM gain", title="Feature importance (inputs → objective)")
    return _save(fig, out)


def plot_mixture(
    shares: dict[str, dict[str, float]], alpha: np.ndarray, domains, scorers, out: Path
) -> str:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(shares)
    width = 0.8 / len(names)
    x = np.arange(len(domains))
    for i, n in enumerate(names):
        a1.bar(x + i * width, [shares[n][d] for d in domains], width, label=n)
    a1.set_xticks(x + 0.4 - width / 2, domains, rotation=45, ha="right")
    a1.set(ylabel="expected share of selected tokens", title="Per-domain token shares")
    a1.legend(fontsize=8)
    bottom = np.zeros(len(domains))
    for j, s in enumerate(scorers):
        a2.bar(x, alpha[:, j], bottom=bottom, label=s)
        bottom += alpha[:, j]
    a2.axhline(1.0, color="k", lw=0.5)
    a2.set_xticks(x, domains, rotation=45, ha="right")
    a2.set(ylabel="α (merge weight)", title="α of θ* per domain (pool/random: uniform)")
    a2.legend(fontsize=8)
    return _save(fig, out)


def plot_losses(losses: np.ndarray, marks: dict[str, float], out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(losses, bins=min(30, max(5, len(losses) // 3)), color="lightgrey", label="proposals")
    for i, (name, v) in enumerate(marks.items()):
        ax.axvline(v, color=f"C{i}", lw=2, label=f"{name} {v:.3f}")
    ax.set(xlabel="proxy objective", ylabel="runs", title="Actual proxy objective")
    ax.legend(fontsize=8)
    return _save(fig, out)


# ---------------------------------------------------------------- markdown
def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(folder: RunFolder) -> Path:
    out = folder.sub("report")
    cfg = folder.config
    pool = Pool(folder.dataset)
    domains, scorers = folder.domains, folder.scorers
    ids, _, _ = folder.proposals()
    done = folder.finished()
    x, y, recs = folder.table()
    failed = {k: v for k, v in done.items() if v.get("status") != "ok"}
    md: list[str] = [f"# Search report: `{folder.path}`", ""]

    # ---- setup and throughput
    p = cfg.proxy
    n_params = count_params(build_model(p, _vocab(folder)))
    md += [
        "## Setup",
        "",
        f"- dataset `{folder.meta['dataset']['path']}` ({folder.meta['dataset']['rows']} documents, "
        f"fingerprint `{folder.meta['dataset']['fingerprint']}`), target set `{folder.target}`",
        f"- proposal space **{cfg.space}**, {len(ids)} proposals; proxies finished {len(done)} "
        f"({len(y)} ok, {len(failed)} failed)",
        f"- proxy: Llama {p.model.num_layers} layers × hidden {p.model.hidden_size}, "
        f"{n_params['total']:,} parameters ({n_params['non_embedding']:,} non-embedding), "
        f"seq {p.seq_len}, batch {p.batch_size}, {p.steps} steps = {p.steps * p.batch_size * p.seq_len:,} "
        f"tokens, lr {p.lr}, same initial weights for all (seed {p.init_seed})",
    ]
    logs = [lg for lg in folder.logs() if lg.get("trained")]
    if logs:
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
        md += ["", "Throughput (one row per `proxies` invocation and rank):", ""]
        md += [
            _table(
                ["started", "rank", "world", "group", "device", "proxies", "s", "proxies/hour"],
                rows,
            )
        ]
    obj = " + ".join(f"{w:g}·{k}" for k, w in cfg.objective.items())
    md += [
        "",
        f"Objective (lower is better): **{obj}** (proxy losses on the evaluation sets "
        f"{sorted(folder.eval_paths)})"
        + (
            "; constraints: " + ", ".join(f"{k} ≤ {v}" for k, v in cfg.constraints.items())
            if cfg.constraints
            else ""
        )
        + ".",
    ]
    md += ["", "## Coverage: documents per proxy and per evaluation set", ""]
    for name, c in folder.meta.get("eval_coverage", {}).items():
        md.append(
            f"- eval set `{name}`: {c['tokens']:,} tokens from {c['docs_used']} of its "
            f"{c['docs']} documents"
        )
    md.append("")
    cov = folder.coverage()
    if cov:
        cap = f"{p.doc_tokens} tokens per document" if p.doc_tokens else "whole documents"
        md += [
            f"Distinct documents each proxy trained on ({cap}): min {cov['min']}, median "
            f"{cov['median']:.0f}, max {cov['max']} over {cov['proxies']} proxies.",
        ]
        from quadmix_stream.search.pipeline import coverage_lines

        warn = coverage_lines(folder)[1:]
        if warn:
            md += ["", f"**{warn[0]}**"]
    if failed:
        md += ["", "Failed proxies (excluded from the fit):", ""]
        md += [
            _table(
                ["run", "reason"], [[k, str(v.get("reason"))] for k, v in sorted(failed.items())]
            )
        ]
    md.append("")

    # ---- regressor
    mpath = folder.path / "model" / "metrics.json"
    if mpath.exists():
        metrics = json.loads(mpath.read_text())
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
        md += ["## Regressor inputs → objective (on runs it did not see)", ""]
        md += [
            "LightGBM, ridge (linear) and a Gaussian process, each on the raw θ (the paper's "
            "inputs) and on the selection profile (`quadmix_stream/search/features.py`); the "
            f"best allowed by k-fold Spearman predicts: **{metrics['chosen']}**.",
            "",
        ]
        md += [
            _table(
                [
                    "model",
                    "inputs",
                    "split",
                    "runs",
                    "MAE",
                    "MAE of predicting the mean",
                    "Spearman",
                ],
                rows,
            )
        ]
        from quadmix_stream.search.regressor import headline

        head = headline(metrics)["spearman"]
        if not (head >= WEAK_SPEARMAN):
            md += [
                "",
                f"**Weak regressor**: held-out Spearman {_f(head, 3)} < {WEAK_SPEARMAN}. At this "
                f"number of runs ({metrics['n_runs']}) the prediction ranks θ poorly; θ* is "
                "correspondingly uncertain (see the error-vs-runs curve: more proxies help).",
            ]
        curve = plot_error_vs_runs(metrics, out / "error_vs_runs.png")
        md += [
            "",
            f"![predicted vs actual]({plot_pred_vs_actual(metrics, out / 'pred_vs_actual.png')})",
            f"![error vs runs]({curve})" if curve else "",
            "",
            f"Top features (share of gain of LightGBM on the {metrics['features']} inputs):",
            "",
            _table(
                ["feature", "gain", "splits"],
                [
                    [r["feature"], _f(r["gain"], 3), str(r["splits"])]
                    for r in metrics["importance"][:10]
                ],
            ),
            "",
            f"![feature importance]({plot_importance(metrics, out / 'feature_importance.png')})",
            "",
        ]

    # ---- rounds
    from quadmix_stream.search.pipeline import best_per_round

    best = best_per_round(folder) if len(y) else {}
    evals_ok = {
        k: folder.objective(v)
        for k, v in folder.finished("evals").items()
        if v.get("status") == "ok"
    }
    if len(best) > 1:
        rounds = folder.rounds()
        marks = {k: v for k, v in evals_ok.items() if k in ("theta-star", "random")}
        md += [
            "## Search rounds",
            "",
            _table(
                ["round", "proxies", "best actual objective", "best so far"],
                [
                    [
                        str(r),
                        str(int((rounds == r).sum())),
                        _f(v),
                        _f(min(list(best.values())[: i + 1])),
                    ]
                    for i, (r, v) in enumerate(best.items())
                ],
            ),
            "",
            f"![rounds]({plot_rounds(best, marks, out / 'rounds.png')})",
            "",
        ]

    # ---- θ*, baselines, actual losses
    spath = folder.path / "params.json"
    cpath = folder.path / "candidates" / "theta-star.json"
    if spath.exists() and cpath.exists():
        star = SamplingParams.load(cpath).reorder(domains, scorers)
        sel = json.loads((folder.path / "selection.json").read_text())
        evals = folder.finished("evals")
        md += [
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
        for b in sel.get("boundary", []):
            md += [f"**Range boundary**: {b['message']}.", ""]
        shipped = sel.get("shipped")
        if shipped:
            sets = sorted({s_ for v in shipped["measured"].values() for s_ in v["losses"]})
            md += [
                f"**Shipped as params.json: {shipped['name']}** (measured objective "
                f"{_f(shipped['objective'])}; θ* {_f(shipped['theta_star_objective'])}, "
                f"margin {_f(shipped['margin_vs_theta_star'])}"
                + (
                    f"; best baseline {shipped['best_baseline']} "
                    f"{_f(shipped['best_baseline_objective'])}"
                    if shipped.get("best_baseline")
                    else ""
                )
                + "). Every measured contender (the best proxy run is the lowest of many noisy "
                "measurements, so its figure is optimistic):",
                "",
                _table(
                    ["contender", "objective"] + [f"{s_} loss" for s_ in sets],
                    [
                        [k + (" **(shipped)**" if k == shipped["name"] else ""), _f(v["objective"])]
                        + [_f(v["losses"].get(s_)) for s_ in sets]
                        for k, v in sorted(
                            shipped["measured"].items(), key=lambda kv: kv[1]["objective"]
                        )
                    ],
                ),
                "",
            ]
            for note in shipped.get("notes", []):
                md += [f"**Note**: {note}.", ""]
        elif not cfg.evaluate:
            md += ["params.json is θ*, not verified by a proxy (`evaluate: false`).", ""]
        compare = {"pool (random)": SamplingParams.keep_all(domains, scorers), "θ*": star}
        for f in sorted((folder.path / "baselines").glob("*.json")):
            if f.stem != "random":
                compare[f.stem] = SamplingParams.load(f).reorder(domains, scorers)
        profiles = {k: pool.profile(v) for k, v in compare.items()}
        rows = []
        for name, prof in profiles.items():
            key = {"pool (random)": "random", "θ*": "theta-star"}.get(name, name)
            ev = evals.get(key)
            actual = (
                _f(folder.objective(ev))
                if ev and ev["status"] == "ok"
                else (f"failed ({ev.get('reason')})" if ev else "—")
            )
            rows.append(
                [name, actual, f"{prof['tokens']:,.0f}"]
                + [_f(prof["token_share"][d], 3) for d in domains]
                + [_f(prof["sigma_mean"][s], 3) for s in scorers]
            )
        md += [
            "Expected selection per epoch (label tokens), per-domain token shares, mean σ of the "
            "selected tokens per scorer (0 = best), and the actual proxy loss when evaluated:",
            "",
            _table(
                ["params", "actual objective", "tokens/epoch"]
                + domains
                + [f"σ {s}" for s in scorers],
                rows,
            ),
            "",
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
        marks = {k: v for k, v in evals_ok.items() if not k.startswith("cand-")}
        if len(y):
            md += ["", f"![losses]({plot_losses(y, marks, out / 'losses.png')})", ""]
    md += [
        "",
        "Notes: losses are mean per-token cross-entropy (nats) of the proxies on each evaluation "
        "set with the run's tokenizer; the objective is their weighted sum. Held-out metrics come from models that did not see those runs; the "
        "model used for selection is refit on all successful runs.",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def _vocab(folder: RunFolder) -> int:
    from quadmix_stream.search.tokenizer import TextTokenizer

    return TextTokenizer(folder.tokenizer_path, folder.config.tokenizer.eos_token).vocab_size
