"""Dry run from metadata alone: what a params file would select, per domain (no payload is read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.formats.labels import LabelError, Manifest, ShardLabels
from quadmix_stream.mixing.hashing import SALT_SAMPLE, uniform
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.store import Store, as_store
from quadmix_stream.stream.selection import mixture_sums
from quadmix_stream.stream.tables import PoolTables

HIST_BINS = ("0", "1", "2", "3", "4+")
#: scorer quantiles are exact up to this many documents, from a uniform sample of it above
QUANTILE_SAMPLE = 1_000_000


def inspect_dataset(
    root: str | Path | Store, params: SamplingParams | None = None, seed: int = 0, epoch: int = 0
) -> dict[str, Any]:
    """Per-domain statistics of a labelled dataset, and of a selection when ``params`` is given.

    Returns a JSON-able dict: ``domains`` (docs, tokens, share of tokens; with params also
    expected selected docs/tokens, realised docs/tokens at ``epoch``, a repeat histogram and unique
    coverage), ``scorers`` (raw score quantiles) and ``totals``.

    ``root`` is the dataset's folder, its URL (``s3://bucket/ds``: only the manifest and the
    label sidecars are fetched, never a shard), or an open :class:`~quadmix_stream.storage.store.Store`.
    The pool is read one shard's labels at a time, with the stream's own tables
    (:class:`~quadmix_stream.stream.tables.PoolTables`: the same Eq. 2 reference, so the counts are the
    stream's): memory is one shard plus the scorer sample, whatever the pool's size. Quantiles are
    exact up to :data:`QUANTILE_SAMPLE` documents, and from a uniform sample of that many above.
    """
    store = as_store(root)  # a remote dataset: one client for the manifest and the sidecars
    manifest = Manifest.load(store)
    if manifest.rows == 0:  # no quantiles, ranks or mixtures of nothing
        raise LabelError(
            f"{root}: the dataset has 0 documents ({len(manifest.shards)} shard(s), all empty); "
            "nothing to inspect"
        )
    if params is not None:
        params.check_names(manifest.domains, manifest.scorer_names)
    tables = PoolTables(store, manifest)
    m = len(manifest.domains)
    acc = _Totals(m, len(HIST_BINS))
    rate = min(1.0, QUANTILE_SAMPLE / manifest.rows)
    sample = []
    for s in range(tables.n_shards):
        lab = tables.labels(s)
        acc.add_pool(lab.domain, lab.tokens)
        keep = slice(None) if rate >= 1.0 else uniform(lab.key, SALT_SAMPLE, 1) < rate
        sample.append(lab.scores[keep])
        if params is not None:
            acc.add_selection(
                lab, tables.expected(s, params), tables.counts(s, params, seed, epoch)
            )
    scores = np.concatenate(sample)
    docs, toks = acc.docs, acc.tokens
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
    for j, sc in enumerate(manifest.scorers):
        q = np.quantile(scores[:, j], [0.0, 0.1, 0.5, 0.9, 1.0])
        out["scorers"][sc.name] = {
            "higher_is_better": sc.higher_is_better,
            "fingerprint": sc.fingerprint,
            "quantiles(0,10,50,90,100%)": [round(float(x), 6) for x in q],
        }
    if params is None:
        return out
    exp, real, hist = acc.expected, acc.realised, acc.hist
    sel_tok = real["tokens"].sum()
    for i, d in enumerate(manifest.domains):
        out["domains"][d].update(
            expected_docs=float(exp["docs"][i]),
            expected_tokens=float(exp["tokens"][i]),
            realised_docs=int(real["docs"][i]),
            realised_tokens=int(real["tokens"][i]),
            realised_unique_tokens=int(real["unique_tokens"][i]),
            realised_token_share=float(real["tokens"][i] / max(sel_tok, 1)),
            repeat_histogram=dict(zip(HIST_BINS, hist[i].tolist(), strict=True)),
            unique_coverage=float(real["unique_docs"][i] / max(docs[i], 1)),
        )
    out["totals"].update(
        expected_docs=float(exp["docs"].sum()),
        expected_tokens=float(exp["tokens"].sum()),
        realised_docs=int(real["docs"].sum()),
        realised_tokens=int(sel_tok),
        realised_unique_tokens=int(real["unique_tokens"].sum()),
        unique_coverage=float(real["unique_docs"].sum() / max(docs.sum(), 1)),
        seed=seed,
        epoch=epoch,
        params=params.provenance,
    )
    return out


class _Totals:
    """Per-domain sums over the shards of a pool (and of a selection), one shard at a time."""

    def __init__(self, m: int, bins: int) -> None:
        self.m = m
        self.docs = np.zeros(m, dtype=np.int64)
        self.tokens = np.zeros(m, dtype=np.int64)
        keys = ("docs", "tokens", "unique_docs")
        self.expected = {k: np.zeros(m) for k in keys}
        self.realised = {k: np.zeros(m) for k in (*keys, "unique_tokens")}
        self.hist = np.zeros((m, bins), dtype=np.int64)

    def add_pool(self, domain: np.ndarray, tokens: np.ndarray) -> None:
        dom = domain.astype(np.int64)
        self.docs += np.bincount(dom, minlength=self.m)
        self.tokens += np.bincount(dom, weights=tokens, minlength=self.m).astype(np.int64)

    def add_selection(self, lab: ShardLabels, expected: np.ndarray, counts: np.ndarray) -> None:
        for into, w, realised in (
            (self.expected, expected, False),
            (self.realised, counts.astype(np.float64), True),
        ):
            part = mixture_sums(lab.domain, lab.tokens, w, self.m, realised=realised)
            for k in part:
                into[k] += part[k]
        seen = np.where(counts > 0, lab.tokens, 0).astype(np.float64)
        self.realised["unique_tokens"] += np.bincount(lab.domain, weights=seen, minlength=self.m)
        bins = self.hist.shape[1]
        np.add.at(self.hist, (lab.domain.astype(np.int64), np.minimum(counts, bins - 1)), 1)


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
