"""The baselines (docs/design.md, "The search") as params files, so they run through the same proxies.

* ``random``: every document once (:meth:`SamplingParams.keep_all`).
* ``topk-<scorer>``: the best ``fraction`` of each domain's tokens by one scorer, once each
  (α one-hot, λ = 0 so S = η = 1 below ω = fraction, ε = 0). The QuaDMix function ranks within
  a domain, so "top-k" keeps every domain's share of the pool.
* ``criteria-mix``: the union of the per-scorer top-k sets (Criteria Mix). A union of
  thresholds on different scores is *not* a threshold on one weighted sum (Eq. 1), so it cannot
  be expressed exactly; we write the closest QuaDMix params: per domain, ω keeps the union's
  token count and α is the point of a simplex grid whose selection overlaps the exact union
  most (token-weighted Jaccard, reported in the file's ``extra``).
* ``regmix``: domain weights only (λ = 0, ω = 1, per-domain η), found by its own search over
  Dirichlet proposals with the same proxies (``RUN_DIR/regmix``, see :mod:`.space`).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.sampling import rank_exact, sample_rows_per_domain
from quadmix_stream.search.pool import Pool


def random_params(pool: Pool) -> SamplingParams:
    return SamplingParams.keep_all(pool.domains, pool.scorers)


def _hard_cut(pool: Pool, alpha: np.ndarray, omega: np.ndarray, provenance: str) -> SamplingParams:
    m = len(pool.domains)
    return SamplingParams(
        domains=tuple(pool.domains),
        scorers=tuple(pool.scorers),
        alpha=alpha,
        lam=np.zeros(m),
        omega=np.clip(omega, 0.0, 1.0),
        eta=np.ones(m),
        eps=np.zeros(m),
        provenance=provenance,
    )


def topk_params(pool: Pool, scorer: str, fraction: float) -> SamplingParams:
    j = pool.scorers.index(scorer)
    alpha = np.zeros((len(pool.domains), len(pool.scorers)))
    alpha[:, j] = 1.0
    omega = np.full(len(pool.domains), fraction)
    return _hard_cut(
        pool, alpha, omega, f"baseline: top {fraction:.0%} of each domain's tokens by {scorer!r}"
    )


def simplex_grid(n: int, steps: int) -> np.ndarray:
    """Every point of the simplex in ``n`` dimensions with coordinates in multiples of 1/steps."""
    pts = [c for c in itertools.product(range(steps + 1), repeat=n - 1) if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in pts], dtype=np.float64) / steps


def criteria_mix_params(
    pool: Pool, fraction: float, grid: int = 10, sample_per_domain: int = 20000
) -> SamplingParams:
    """Closest QuaDMix params to the union of per-scorer top-``fraction`` sets (see module doc)."""
    lab = pool.labels
    rows = sample_rows_per_domain(lab.domain, lab.key, sample_per_domain)
    dom, tok, sig = lab.domain[rows], lab.tokens[rows].astype(np.float64), pool.sigma[rows]
    w = np.maximum(tok, 1.0)
    union = np.zeros(len(rows), dtype=bool)
    for j in range(sig.shape[1]):
        union |= rank_exact(sig[:, j], dom, tok) <= fraction
    n = len(pool.scorers)
    while grid > 1 and len(simplex_grid(n, grid)) > 5000:
        grid -= 1
    cands = simplex_grid(n, grid)
    m = len(pool.domains)
    alpha = np.full((m, n), 1.0 / n)
    omega = np.zeros(m)
    overlap: dict[str, float] = {}
    for d in range(m):
        sel = dom == d
        if not sel.any():
            continue
        wd, ud, sd = w[sel], union[sel], sig[sel]
        omega[d] = float(wd[ud].sum() / wd.sum())
        best, best_j = -1.0, 0.0
        for a in cands:
            r = rank_exact(sd @ a, np.zeros(len(wd), dtype=np.int64), wd)
            pick = r <= omega[d]
            inter, uni = wd[pick & ud].sum(), wd[pick | ud].sum()
            jac = float(inter / uni) if uni > 0 else 1.0
            if jac > best + 1e-12:
                best, best_j = jac, a
        alpha[d] = best_j
        overlap[pool.domains[d]] = round(best, 4)
    p = _hard_cut(
        pool,
        alpha,
        omega,
        f"baseline: Criteria Mix (union of per-scorer top {fraction:.0%}), closest QuaDMix params "
        f"(token Jaccard with the exact union per domain: {overlap})",
    )
    return replace(p, extra={"criteria_mix": {"fraction": fraction, "jaccard": overlap}})


def baseline_params(pool: Pool, name: str, fraction: float, grid: int) -> SamplingParams | None:
    """The baseline called ``name`` (as in :func:`all_baselines`), or None if there is none."""
    if name == "random":
        return random_params(pool)
    if name.startswith("topk-") and name.removeprefix("topk-") in pool.scorers:
        return topk_params(pool, name.removeprefix("topk-"), fraction)
    if name == "criteria-mix":
        return criteria_mix_params(pool, fraction, grid)
    return None


def all_baselines(pool: Pool, fraction: float, grid: int) -> dict[str, SamplingParams]:
    names = ["random", *(f"topk-{s}" for s in pool.scorers), "criteria-mix"]
    return {n: baseline_params(pool, n, fraction, grid) for n in names}
