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
    merge_quality,
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


def ranks(
    quality: np.ndarray,
    domain: np.ndarray,
    tokens: np.ndarray,
    keys: np.ndarray,
    n_domains: int,
    config: RankConfig = RankConfig(),
) -> np.ndarray:
    """Eq. 2 for every document, exact or table-based per ``config``."""
    method = config.method
    if method == "auto":
        method = "exact" if quality.size <= config.exact_limit else "table"
    if method == "exact":
        return rank_exact(quality, domain, tokens)
    if method != "table":
        raise ValueError(f"rank method must be auto, exact or table, got {method!r}")
    idx = sample_rows_per_domain(domain, keys, config.sample_per_domain)
    table = build_rank_table(quality[idx], domain[idx], tokens[idx], n_domains, config.grid)
    return rank_from_table(table, quality, domain)


def expected_for(
    sigma: np.ndarray,
    domain: np.ndarray,
    tokens: np.ndarray,
    keys: np.ndarray,
    params: SamplingParams,
    config: RankConfig = RankConfig(),
) -> np.ndarray:
    """Expected copies S(x) of every document under ``params`` (Eqs. 1-3)."""
    q = merge_quality(sigma, domain, params.alpha)
    r = ranks(q, domain, tokens, keys, len(params.domains), config)
    return expected_copies(
        r,
        params.lam[domain],
        params.omega[domain],
        params.eta[domain],
        params.eps[domain],
        params.form,
    )


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
    ) -> None:
        params.check_names(manifest.domains, manifest.scorer_names)
        self.labels, self.params, self.seed = labels, params, seed
        sig = sigma_scores(labels.scores, manifest) if sigma is None else sigma
        self.expected = expected_for(sig, labels.domain, labels.tokens, labels.key, params, config)
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
