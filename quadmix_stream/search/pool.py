"""The labelled pool seen from the search: a bounded label sample, θ → expected selection profile.

The search needs each θ's expected selection profile (per-domain token shares, tokens, mean σ)
for up to 100k candidates, and the baselines need per-domain samples. Both are estimates over a
*sample* of the pool's labels: every document whose hash-uniform falls below
``max_docs / rows`` (all of them in a pool of at most ``max_docs`` documents, where every figure
is exact). The sample is gathered one shard's sidecar at a time, so the search process holds at
most ``max_docs`` documents' labels whatever the pool's size; Eq. 2 uses the stream's own
reference (:meth:`PoolTables.reference`), and per-domain sizes and tokens are exact sums.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from quadmix_stream.formats.labels import DatasetLabels, Manifest
from quadmix_stream.mixing.hashing import SALT_POOL_SAMPLE, uniform
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.locations import dataset_location
from quadmix_stream.storage.store import Store
from quadmix_stream.stream.selection import RankConfig, Reference, Selection, sigma_scores
from quadmix_stream.stream.tables import PoolTables

#: documents whose labels the search holds at most (≈ 60 bytes each with three scorers)
MAX_DOCS = 2_000_000


class Pool:
    """Manifest, a label sample and σ-normalised scores of a dataset (sidecars only, no payload).

    Args:
        dataset: the dataset's folder, or its URL (``s3://bucket/ds``: the sidecars are fetched
            into the node-local cache once).
        max_docs: the label sample's size bound (see the module docstring).
    """

    def __init__(self, dataset: str | Path, max_docs: int = MAX_DOCS) -> None:
        self.root = dataset_location(dataset)
        # one store for the manifest and the sidecars: a remote one opens one client, not two
        self.store = Store(self.root)
        self.manifest = Manifest.load(self.store)
        self.domains = list(self.manifest.domains)
        self.scorers = list(self.manifest.scorer_names)
        #: the fraction of the pool in :attr:`labels` (1.0: the whole pool)
        self.rate = min(1.0, max_docs / max(self.manifest.rows, 1))
        self.tables = PoolTables(self.store, self.manifest)

    @cached_property
    def _sampled(self) -> tuple[DatasetLabels, np.ndarray]:
        """(sample labels, exact tokens per domain): one pass over the shards' sidecars."""
        m = len(self.domains)
        toks = np.zeros(m)
        parts, rows = [], []
        for s in range(self.tables.n_shards):
            lab = self.tables.labels(s)
            toks += np.bincount(lab.domain.astype(np.int64), weights=lab.tokens, minlength=m)
            if self.rate >= 1.0:
                pick = np.arange(lab.rows)
            else:
                pick = np.flatnonzero(uniform(lab.key, SALT_POOL_SAMPLE) < self.rate)
            parts.append((lab, pick))
            rows.append(pick.size)
        counts = np.array(rows, dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        def cat(f: str) -> np.ndarray:
            return np.concatenate([getattr(lab, f)[pick] for lab, pick in parts])

        sample = DatasetLabels(
            key=cat("key"),
            domain=cat("domain"),
            tokens=cat("tokens"),
            scores=cat("scores").reshape(-1, len(self.scorers)),
            shard=np.repeat(np.arange(len(parts), dtype=np.int32), counts),
            row=np.concatenate([pick for _, pick in parts]).astype(np.int64),
            shard_start=start,
        )
        return sample, toks

    @property
    def labels(self) -> DatasetLabels:
        """The label sample (the whole pool up to ``max_docs`` documents)."""
        return self._sampled[0]

    @cached_property
    def sigma(self) -> np.ndarray:
        return sigma_scores(self.labels.scores, self.manifest)

    @property
    def domain_tokens(self) -> np.ndarray:
        """(M,) tokens per domain in the whole pool (exact)."""
        return self._sampled[1]

    @cached_property
    def reference(self) -> Reference:
        """Eq. 2's reference sample: the stream's own (once per pool, not per θ)."""
        if self.rate >= 1.0:  # the whole pool is in memory anyway: no pass, no cache files
            return Reference.of_labels(self.labels, self.manifest, RankConfig())
        return self.tables.reference()

    def selection(self, params: SamplingParams, seed: int = 0) -> Selection:
        params = params.reorder(self.domains, self.scorers)
        return Selection(
            self.labels, self.manifest, params, seed, sigma=self.sigma, reference=self.reference
        )

    def profile(self, params: SamplingParams) -> dict:
        """Expected selection of θ per epoch: tokens, per-domain token share, and per scorer the
        token-weighted mean σ (0 = best) of the selected tokens, overall and per domain."""
        s = self.selection(params).expected
        w = s * self.labels.tokens
        tot = float(w.sum())
        dom = self.labels.domain
        per_dom = np.bincount(dom, weights=w, minlength=len(self.domains))
        out: dict = {
            "tokens": tot / self.rate,  # the sample's sums, scaled to the pool
            "docs": float(s.sum()) / self.rate,
            "token_share": {
                d: float(per_dom[i] / tot) if tot > 0 else 0.0 for i, d in enumerate(self.domains)
            },
            "sigma_mean": {},
            "sigma_mean_by_domain": {},
        }
        for j, name in enumerate(self.scorers):
            sig = self.sigma[:, j]
            out["sigma_mean"][name] = float((w * sig).sum() / tot) if tot > 0 else float("nan")
            num = np.bincount(dom, weights=w * sig, minlength=len(self.domains))
            out["sigma_mean_by_domain"][name] = {
                d: float(num[i] / per_dom[i]) if per_dom[i] > 0 else float("nan")
                for i, d in enumerate(self.domains)
            }
        return out

    def pool_profile(self) -> dict:
        return self.profile(SamplingParams.keep_all(self.domains, self.scorers))
