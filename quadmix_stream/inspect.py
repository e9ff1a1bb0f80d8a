"""Dry run from metadata alone: what a params file would select, per domain (no payload is read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labels import LabelError, Manifest, load_labels
from quadmix_stream.params import SamplingParams
from quadmix_stream.selection import Selection
from quadmix_stream.storage import Store, as_store

HIST_BINS = ("0", "1", "2", "3", "4+")


def inspect_dataset(
    root: str | Path | Store, params: SamplingParams | None = None, seed: int = 0, epoch: int = 0
) -> dict[str, Any]:
    """Per-domain statistics of a labelled dataset, and of a selection when ``params`` is given.

    Returns a JSON-able dict: ``domains`` (docs, tokens, share of tokens; with params also
    expected selected docs/tokens, realised docs/tokens at ``epoch``, a repeat histogram and unique
    coverage), ``scorers`` (raw score quantiles) and ``totals``.

    ``root`` is the dataset's folder, its URL (``s3://bucket/ds``: only the manifest and the
    label sidecars are fetched, never a shard), or an open :class:`~quadmix_stream.storage.Store`.
    """
    store = as_store(root)  # a remote dataset: one client for the manifest and the sidecars
    manifest = Manifest.load(store)
    if manifest.rows == 0:  # no quantiles, ranks or mixtures of nothing
        raise LabelError(
            f"{root}: the dataset has 0 documents ({len(manifest.shards)} shard(s), all empty); "
            "nothing to inspect"
        )
    lab = load_labels(store, manifest)
    m = len(manifest.domains)
    docs = np.bincount(lab.domain, minlength=m)
    toks = np.bincount(lab.domain, weights=lab.tokens, minlength=m)
    out: dict[str, Any] = {
        "dataset": str(root),
        "format": manifest.format,
        "fingerprint": manifest.fingerprint(),
        "shards": len(manifest.shards),
        "domains": {},
        "scorers": {},
        "totals": {"docs": int(docs.sum()), "tokens": int(toks.sum())},
    }
    for i, d in enumerate(manifest.domains):
        out["domains"][d] = {
            "docs": int(docs[i]),
            "tokens": int(toks[i]),
            "token_share": float(toks[i] / max(toks.sum(), 1)),
        }
    for j, s in enumerate(manifest.scorers):
        q = np.quantile(lab.scores[:, j], [0.0, 0.1, 0.5, 0.9, 1.0])
        out["scorers"][s.name] = {
            "higher_is_better": s.higher_is_better,
            "fingerprint": s.fingerprint,
            "quantiles(0,10,50,90,100%)": [round(float(x), 6) for x in q],
        }
    if params is None:
        return out
    sel = Selection(lab, manifest, params, seed)
    exp, real = sel.mixture(None), sel.mixture(epoch)
    counts = sel.counts(epoch)
    hist = np.zeros((m, len(HIST_BINS)), dtype=np.int64)
    np.add.at(hist, (lab.domain, np.minimum(counts, len(HIST_BINS) - 1)), 1)
    sel_tok = real["tokens"].sum()
    for i, d in enumerate(manifest.domains):
        out["domains"][d].update(
            expected_docs=float(exp["docs"][i]),
            expected_tokens=float(exp["tokens"][i]),
            realised_docs=int(real["docs"][i]),
            realised_tokens=int(real["tokens"][i]),
            realised_token_share=float(real["tokens"][i] / max(sel_tok, 1)),
            repeat_histogram=dict(zip(HIST_BINS, hist[i].tolist(), strict=True)),
            unique_coverage=float(real["unique_docs"][i] / max(docs[i], 1)),
        )
    out["totals"].update(
        expected_docs=float(exp["docs"].sum()),
        expected_tokens=float(exp["tokens"].sum()),
        realised_docs=int(real["docs"].sum()),
        realised_tokens=int(sel_tok),
        unique_coverage=float(real["unique_docs"].sum() / max(docs.sum(), 1)),
        seed=seed,
        epoch=epoch,
        params=params.provenance,
    )
    return out


def format_report(rep: dict[str, Any]) -> str:
    """A fixed-width table of :func:`inspect_dataset`'s result."""
    lines = [
        f"{rep['dataset']}: {rep['format']}, {rep['shards']} shards, fingerprint {rep['fingerprint']}"
    ]
    with_params = "expected_tokens" in rep["totals"]
    head = f"{'domain':<16}{'docs':>9}{'tokens':>12}{'share':>7}"
    if with_params:
        head += (
            f"{'exp.tokens':>12}{'real.tokens':>12}{'share':>7}{'unique':>8}  repeats 0/1/2/3/4+"
        )
    lines.append(head)
    for d, s in rep["domains"].items():
        row = f"{d:<16}{s['docs']:>9}{s['tokens']:>12}{s['token_share']:>7.1%}"
        if with_params:
            h = "/".join(str(v) for v in s["repeat_histogram"].values())
            row += f"{s['expected_tokens']:>12.0f}{s['realised_tokens']:>12}{s['realised_token_share']:>7.1%}{s['unique_coverage']:>8.1%}  {h}"
        lines.append(row)
    t = rep["totals"]
    row = f"{'TOTAL':<16}{t['docs']:>9}{t['tokens']:>12}{1:>7.0%}"
    if with_params:
        row += f"{t['expected_tokens']:>12.0f}{t['realised_tokens']:>12}{1:>7.0%}{t['unique_coverage']:>8.1%}"
    lines.append(row)
    lines.append("scorers (raw quantiles 0/10/50/90/100%):")
    for name, s in rep["scorers"].items():
        arrow = "higher is better" if s["higher_is_better"] else "lower is better"
        lines.append(f"  {name:<14} {s['quantiles(0,10,50,90,100%)']}  ({arrow})")
    return "\n".join(lines)
