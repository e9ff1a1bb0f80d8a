"""Params → expected and realised copies for a labelled dataset (the "compile" step).

Pure numpy over the label columns: σ tables (from the manifest) → Eq. 1 → Eq. 2 (exact for pools
up to ``exact_limit`` documents, else from per-domain rank tables built on a uniform sample of
``sample_per_domain`` documents) → Eq. 3 → realize.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quadmix_stream.labels import DatasetLabels, Manifest
from quadmix_stream.params import SamplingParams
from quadmix_stream.sampling import (
    apply_sigma,
    build_rank_table,
    expected_copies,
    rank_exact,
    rank_from_table,
    realize,
    sample_rows_per_domain,
)


@dataclass(frozen=True)
class RankConfig:
    """How Eq. 2 is computed: ``method`` is ``"auto"``, ``"exact"`` or ``"table"``."""

    method: str = "auto"
    exact_limit: int = 2_000_000
    sample_per_domain: int = 50_000
    grid: int = 16384


def sigma_scores(scores: np.ndarray, manifest: Manifest) -> np.ndarray:
    """(n_docs, N) σ-normalised scores (0 = best) using the manifest's σ tables."""
    out = np.empty_like(scores, dtype=np.float64)
    for j, s in enumerate(manifest.scorers):
        out[:, j] = apply_sigma(manifest.sigma[s.name], scores[:, j])
    return out


def expected_for(
    sigma: np.ndarray,
    domain: np.ndarray,
    tokens: np.ndarray,
    keys: np.ndarray,
    params: SamplingParams,
    config: RankConfig = RankConfig(),
) -> np.ndarray:
    """Expected copies S(x) of every document under ``params`` (Eqs. 1-3)."""
    prep = PreparedLabels.build(sigma, domain, tokens, keys, len(params.domains), config)
    return prep.expected(params, config)


@dataclass(frozen=True)
class PreparedLabels:
    """Label columns sorted by domain once per dataset, so that each params → S evaluation works
    on contiguous per-domain slices with scalar parameters (no per-document gathers).

    ``sigma_t`` is (N, n) in domain order; ``sample`` holds, in the same order, the rows that
    build the rank tables (used when the pool is larger than ``exact_limit``).
    """

    order: np.ndarray
    bounds: np.ndarray
    sigma_t: np.ndarray
    tokens: np.ndarray
    sample: np.ndarray
    exact: bool

    @classmethod
    def build(
        cls,
        sigma: np.ndarray,
        domain: np.ndarray,
        tokens: np.ndarray,
        keys: np.ndarray,
        n_domains: int,
        config: RankConfig = RankConfig(),
    ) -> PreparedLabels:
        domain = np.asarray(domain)
        n = domain.size
        exact = config.method == "exact" or (config.method == "auto" and n <= config.exact_limit)
        if config.method not in ("auto", "exact", "table"):
            raise ValueError(f"rank method must be auto, exact or table, got {config.method!r}")
        key16 = domain.astype(np.int16) if n and domain.max() < 32768 else domain
        order = np.argsort(key16, kind="stable")
        bounds = np.searchsorted(domain[order], np.arange(n_domains + 1))
        sample = np.zeros(0, dtype=np.int64)
        if not exact:
            pick = np.zeros(n, dtype=bool)
            pick[sample_rows_per_domain(domain, keys, config.sample_per_domain)] = True
            sample = np.flatnonzero(pick[order])
        return cls(
            order=order,
            bounds=bounds,
            sigma_t=np.ascontiguousarray(np.asarray(sigma, dtype=np.float64)[order].T),
            tokens=np.asarray(tokens)[order],
            sample=sample,
            exact=exact,
        )

    def expected(self, params: SamplingParams, config: RankConfig = RankConfig()) -> np.ndarray:
        """S(x) for every document (original row order)."""
        s_sorted = np.empty(self.order.size)
        for d in range(len(params.domains)):
            a, b = int(self.bounds[d]), int(self.bounds[d + 1])
            if a == b:
                continue
            q = params.alpha[d] @ self.sigma_t[:, a:b]  # Eq. 1 on the domain's slice
            zeros = np.zeros(b - a, dtype=np.int64)
            if self.exact:
                r = rank_exact(q, zeros, self.tokens[a:b])
            else:
                lo, hi = np.searchsorted(self.sample, [a, b])
                idx = self.sample[lo:hi] - a
                table = build_rank_table(q[idx], zeros[idx], self.tokens[a:b][idx], 1, config.grid)
                r = rank_from_table(table, q, zeros)
            s_sorted[a:b] = expected_copies(
                r, params.lam[d], params.omega[d], params.eta[d], params.eps[d], params.form
            )
        out = np.empty_like(s_sorted)
        out[self.order] = s_sorted
        return out


class Selection:
    """Expected copies of a dataset under one params object, and realised copies per epoch."""

    def __init__(
        self,
        labels: DatasetLabels,
        manifest: Manifest,
        params: SamplingParams,
        seed: int,
        config: RankConfig = RankConfig(),
        sigma: np.ndarray | None = None,
        prepared: PreparedLabels | None = None,
    ) -> None:
        params.check_names(manifest.domains, manifest.scorer_names)
        self.labels, self.params, self.seed = labels, params, seed
        if prepared is None:
            sig = sigma_scores(labels.scores, manifest) if sigma is None else sigma
            prepared = PreparedLabels.build(
                sig, labels.domain, labels.tokens, labels.key, len(manifest.domains), config
            )
        self.expected = prepared.expected(params, config)
        self._counts: dict[int, np.ndarray] = {}

    def counts(self, epoch: int) -> np.ndarray:
        if epoch not in self._counts:
            if len(self._counts) >= 3:
                self._counts.pop(min(self._counts))
            self._counts[epoch] = realize(self.expected, self.labels.key, self.seed, epoch)
        return self._counts[epoch]

    def mixture(self, epoch: int | None = None) -> dict[str, np.ndarray]:
        """Per-domain documents and tokens: expected (S) or realised for ``epoch``."""
        lab = self.labels
        m = len(self.params.domains)
        w = self.expected if epoch is None else self.counts(epoch).astype(np.float64)
        # P(at least one copy) is min(S, 1) in expectation; [c > 0] once realised.
        seen = np.minimum(w, 1.0) if epoch is None else (w > 0).astype(np.float64)
        return {
            "docs": np.bincount(lab.domain, weights=w, minlength=m),
            "tokens": np.bincount(lab.domain, weights=w * lab.tokens, minlength=m),
            "unique_docs": np.bincount(lab.domain, weights=seen, minlength=m),
        }
