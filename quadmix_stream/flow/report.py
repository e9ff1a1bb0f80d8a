"""The report of ``quadmix-stream run``: ``{out}/report.md``, ``results.json`` and the plots.

Final losses per method (mean ± sd over seeds) with the tokens each params file selects, a
figure of them, whether the search's proxies ranked the methods as these trainings did, each
params file's selection (:mod:`quadmix_stream.inspect`), and the wall time of every stage.
:mod:`quadmix_stream.flow.run` runs the steps and calls :func:`write_report`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.io import atomic_write_text

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from quadmix_stream.storage.store import Store


def selected_tokens(report: dict[str, Any]) -> dict:
    """Tokens (label units) a params file selects in epoch 0, unique and counting repeats, from
    its :func:`~quadmix_stream.inspect.inspect_dataset` report (one shard at a time)."""
    t = report["totals"]
    return {
        "unique": float(t["realised_unique_tokens"]),
        "with_repeats": float(t["realised_tokens"]),
        "pool": float(t["tokens"]),
    }


def training_tokens_per_label_token(data: str | Path, tokenizer: str, docs: int = 2000) -> float:
    """The training tokenizer's tokens per label token, over ``docs`` documents of the pool (the
    keep-all stream's first ones: a uniform sample). The selections are counted in label tokens
    and the budget in training tokens; this converts one into the other for the passes column."""
    from quadmix_stream.stream.pool import pool_docs
    from quadmix_stream.training.tokenizer import TextTokenizer

    sample = list(pool_docs(data, docs))
    ids = TextTokenizer(tokenizer).encode_docs([str(d.get("text") or "") for d in sample])
    train = sum(len(x) - 1 for x in ids)  # without the end-of-text id
    return train / max(1, sum(int(d["tokens"]) for d in sample))


def _mean_sd(xs: list[float]) -> str:
    a = np.asarray(xs, dtype=np.float64)
    return f"{a.mean():.4f}" if len(a) == 1 else f"{a.mean():.4f} ± {a.std(ddof=1):.4f}"


def results_figure(results: dict[str, dict[str, Any]]) -> Any:
    """Final loss per method on each evaluation set: mean ± sd over seeds, and every seed.

    Points with error bars, not bars: losses sit far from zero, and a bar whose axis does not
    start at zero exaggerates the gaps between methods.
    """
    from quadmix_stream.extras import pyplot

    plt = pyplot("the flow report's figure")

    names = list(results)
    sets = list(next(iter(results.values()))["seeds"].values())[0].keys()
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, s in zip(axes[0], sets, strict=True):
        vals = [[v[s] for v in results[n]["seeds"].values()] for n in names]
        mean = [float(np.mean(v)) for v in vals]
        sd = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in vals]
        x = np.arange(len(names))
        ax.errorbar(x, mean, yerr=sd, fmt="o", ms=7, capsize=4, color="tab:blue", label="mean ± sd")
        for i, v in enumerate(vals):
            ax.plot([i] * len(v), v, "k.", ms=4, alpha=0.7, label="seeds" if i == 0 else None)
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("final loss")
        ax.set_title(f"{s} loss (lower is better)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_results(results: dict[str, dict[str, Any]], path: Path) -> Path:
    """Write :func:`results_figure` as a PNG."""
    from quadmix_stream.extras import pyplot

    plt = pyplot("the flow report's figure")

    fig = results_figure(results)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    out: Path,
    data: str | Path,
    runs: dict[str, Path],
    results: dict[str, dict[str, Any]],
    times: dict[str, float],
) -> Path:
    """Write ``report.md``, ``results.json`` and the plots into ``out``; returns the report.

    Adds each method's selected tokens to ``results`` (``results[name]["selected"]``).
    """
    from quadmix_stream.inspect import inspect_dataset
    from quadmix_stream.storage.store import Store

    store = Store(data)  # one client for every read of a remote dataset's labels below
    m = Manifest.load(store)
    params = {n: SamplingParams.load(p).reorder(m.domains, m.scorer_names) for n, p in runs.items()}
    reports = {n: inspect_dataset(store, p) for n, p in params.items()}
    for name in runs:
        results[name]["selected"] = selected_tokens(reports[name])
    tokenizer = next(iter(results.values())).get("tokenizer")
    ratio = training_tokens_per_label_token(data, tokenizer) if tokenizer else None
    lines = [
        "# quadmix-stream run",
        "",
        f"Data: `{data}` ({m.rows} documents, {len(m.shards)} {m.format} shards).",
        "",
    ]
    lines += _losses(results, out, ratio)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    ranks = rank_agreement(out / "search", results)
    if ranks is not None:
        atomic_write_text(out / "rank_agreement.json", json.dumps(ranks, indent=1))
        lines += _ranks(ranks)
    lines += _selections(store, params, reports, out)
    lines += _wall_time(out, times)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    log.info("\n".join(lines[:16]))
    return path


def _losses(results: dict[str, dict[str, Any]], out: Path, ratio: float | None) -> list[str]:
    """The final-loss table (mean ± sd over seeds, selected tokens, passes) and its figure."""
    first = next(iter(results.values()))
    seeds = sorted({s for r in results.values() for s in r["seeds"]})
    sets = list(next(iter(first["seeds"].values())).keys())
    lines = [
        f"## Final evaluation loss (a {first['model_parameters']:,}-parameter model, same steps "
        f"and tokens: {first['steps']} steps, {first['tokens']:,} training tokens; seeds {seeds})",
        "",
        "| params | " + " | ".join(f"{s} loss" for s in sets) + " | selected unique tokens | "
        "selected tokens with repeats |"
        + (" ≈ passes over the unique selection |" if ratio else ""),
        "|---|" + "---:|" * (len(sets) + 2 + bool(ratio)),
    ]
    for name, r in results.items():
        cells = [_mean_sd([v[s] for v in r["seeds"].values()]) for s in sets]
        sel = r["selected"]
        cells += [
            f"{sel['unique']:,.0f} ({sel['unique'] / sel['pool']:.1%})",
            f"{sel['with_repeats']:,.0f}",
        ]
        if ratio:
            cells.append(f"{r['tokens'] / max(sel['unique'] * ratio, 1):.1f}")
        label = f"{name} (= {r['same_stream_as']})" if r.get("same_stream_as") else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [
        "",
        "Losses: mean ± sample sd over seeds (model init and data order)"
        + _coverage(first.get("eval_coverage"))
        + ". Selected tokens: epoch 0 of the selection, in the labelling tokenizer's tokens."
        + (
            f" Passes: training tokens / (unique tokens × {ratio:.3f}, the training tokenizer's "
            "tokens per label token on 2,000 pool documents)."
            if ratio
            else ""
        ),
        "",
        f"![results]({plot_results(results, out / 'results.png').name})",
    ]


def full_objective(result: dict[str, Any], weights: dict[str, float]) -> float | None:
    """A trained method's value of a search objective: the weighted sum of its final losses,
    mean over seeds (None when a seed lacks one of the sets)."""
    seeds = list(result["seeds"].values())
    if not all(e in s for s in seeds for e in weights):
        return None
    return float(np.mean([sum(w * s[e] for e, w in weights.items()) for s in seeds]))


def rank_agreement(search: Path, results: dict[str, dict[str, Any]]) -> dict | None:
    """The search's measurements of the trained methods against the flow's full-size trainings
    (the search's objective, mean over seeds): its verification proxies (``screening``) and,
    with a deciding step, its deciding runs (``deciding``); "quadmix" is what shipped. None
    without a verification, or with fewer than 3 methods measured by both."""
    from quadmix_stream.search.decide import rank_table

    sel, meta = search / "selection.json", search / "search.json"
    if not (sel.exists() and meta.exists()):
        return None
    shipped = json.loads(sel.read_text()).get("shipped") or {}
    info = json.loads(meta.read_text())
    weights = info["config"]["objective"]
    screen = shipped.get("screened", {}).get("measured")
    if screen is None:  # no deciding step: the verification shipped
        screen = {k: w["objective"] for k, w in (shipped.get("measured") or {}).items()}
        decide = {}
    else:
        decide = {k: w["objective"] for k, w in shipped["measured"].items()}
    full = {
        m: v
        for m in results
        if not results[m].get("same_stream_as")  # a stream ranked once
        and (v := full_objective(results[m], weights)) is not None
    }

    def by_method(measured: dict[str, float]) -> dict[str, float]:
        names = {m: shipped.get("name") if m == "quadmix" else m for m in full}
        return {m: measured[n] for m, n in names.items() if n in measured}

    out = {"objective": weights, "search_target": Path(info["target"]["path"]).name}
    for stage, measured in (("screening", screen), ("deciding", decide)):
        mine = by_method(measured)
        if len(mine) >= 3:
            out[stage] = rank_table(mine, {m: full[m] for m in mine})
    return out if "screening" in out else None


def _ranks(ranks: dict) -> list[str]:
    """The search's rankings of the methods beside the full-size one."""
    obj = " + ".join(f"{w:g}·{e}" for e, w in ranks["objective"].items())
    lines = [
        "",
        "## Do the search's measurements rank the methods as these trainings do?",
        "",
        f"The search's objective ({obj}), mean over each stage's data seeds (`quadmix` is what "
        "shipped), beside the full-size trainings above (mean over seeds).",
    ]
    if ranks.get("search_target", "target.jsonl") != "target.jsonl":
        lines[-1] += (
            f" The search's `target` is `{ranks['search_target']}` (`search_target:`); the "
            "full-size objective uses the trained models' `target`, other documents of the same "
            "domains."
        )
    for stage, what in (
        ("screening", "its verification proxies"),
        ("deciding", "its deciding runs (`decide:`)"),
    ):
        if stage not in ranks:
            continue
        r = ranks[stage]
        rows = sorted(r["methods"].items(), key=lambda kv: kv[1]["full"])
        lines += [
            "",
            f"{what[0].upper()}{what[1:]}: Spearman over {len(rows)} methods "
            f"**{r['spearman_vs_full']:+.2f}**.",
            "",
            "| params | search objective | search rank | full-size objective | full-size rank |",
            "|---|---:|---:|---:|---:|",
            *(
                f"| {m} | {v['proxy']:.4f} | {v['proxy_rank']:g} | {v['full']:.4f} | "
                f"{v['full_rank']:g} |"
                for m, v in rows
            ),
        ]
    return lines


def _coverage(cov: dict[str, dict] | None) -> str:
    """What the losses are over: ``, over target: 400 of 400 documents (25,984 tokens), …``."""
    if not cov:
        return ""
    return ", over " + ", ".join(
        f"{k}: {c['docs_used']:,} of {c['docs']:,} documents ({c['tokens']:,} tokens)"
        for k, c in cov.items()
    )


def _selections(
    store: Store, params: dict[str, SamplingParams], reports: dict[str, dict], out: Path
) -> list[str]:
    """Per params file: a plot of its selection and the dry-run report of what it keeps."""
    from quadmix_stream.inspect import format_report
    from quadmix_stream.plots import plot_selection

    lines: list[str] = []
    for name, p in params.items():
        png = plot_selection(store, p, out / f"selection-{name}.png", report=reports[name])
        lines += [
            "",
            f"## Selection: {name}",
            "",
            f"![{name}]({png.name})",
            "",
            "```",
            format_report(reports[name]),
            "```",
        ]
    return lines


def _wall_time(out: Path, times: dict[str, float]) -> list[str]:
    """Where the search report is, and each stage's wall time over every invocation."""
    lines = [
        "",
        "## Search",
        "",
        f"See `{out / 'search' / 'report' / 'report.md'}`.",
        "",
        "## Wall time",
        "",
        "Summed over every invocation of this flow (a resumed stage adds its new time).",
        "",
    ]
    return lines + [f"- {k}: {v:.0f} s" for k, v in times.items()]
