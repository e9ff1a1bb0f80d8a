"""Proposal spaces: where the search draws θ (the proxies' inputs and the 100k candidates).

``quadmix``: Algorithm 1 (:meth:`SamplingParams.propose_vectors`) with the recipe's ranges.

``domain_mixture``: the RegMix-style baseline, domain weights only. Weights w ~ Dirichlet(c·1)
become the QuaDMix parameters λ = 0, ω = 1, ε = 0, α uniform (quality ignored) and
η[d] = scale · w[d] · T / T[d] (T[d]: tokens of domain d in the pool), so every document of
domain d is expected η[d] times and domain d gets the share w[d] of ``scale · T`` selected tokens.

Both produce θ in the flat order of :mod:`quadmix_stream.mixing.params`, so the proxies, the regressor
and the selection are the same code for both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.config import ProposalConfig


def batch_seed(seed: int, batch: int) -> int:
    """A seed for proposal batch ``batch`` (batches let a search grow without redrawing)."""
    return int(np.random.SeedSequence([int(seed), int(batch)]).generate_state(1)[0])


def propose(
    space: str,
    cfg: ProposalConfig,
    n: int,
    seed: int,
    domains: Sequence[str],
    scorers: Sequence[str],
    domain_tokens: np.ndarray,
) -> np.ndarray:
    """``n`` θ vectors of ``space`` as an ``(n, (N+4)·M)`` array."""
    m, k = len(domains), len(scorers)
    if space == "quadmix":
        return SamplingParams.propose_vectors(n, m, k, seed, cfg.ranges or None)
    if space != "domain_mixture":
        raise UserError(f"unknown proposal space {space!r}")
    w = np.random.default_rng(seed).dirichlet(np.full(m, cfg.dirichlet), size=n)
    return mixture_vectors(w, domain_tokens, k, cfg.scale)


def mixture_vectors(
    weights: np.ndarray, domain_tokens: np.ndarray, n_scorers: int, scale: float = 1.0
) -> np.ndarray:
    """θ vectors of domain mixtures ``weights`` (rows on the simplex)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n, m = w.shape
    t = np.asarray(domain_tokens, dtype=np.float64)
    if np.any(t <= 0):
        raise UserError("domain_mixture: every domain needs tokens in the pool")
    eta = scale * w * t.sum() / t
    alpha = np.full((n, m * n_scorers), 1.0 / n_scorers)
    return np.concatenate([alpha, np.zeros((n, m)), np.ones((n, m)), eta, np.zeros((n, m))], 1)


def mixture_weights(vectors: np.ndarray, domain_tokens: np.ndarray, n_scorers: int) -> np.ndarray:
    """Inverse of :func:`mixture_vectors`: the domain weights of domain-mixture θ."""
    v = np.atleast_2d(vectors)
    m = domain_tokens.shape[0]
    eta = v[:, m * n_scorers + 2 * m : m * n_scorers + 3 * m]
    w = eta * domain_tokens
    return w / w.sum(axis=1, keepdims=True)


def to_params(
    vector: np.ndarray,
    domains: Sequence[str],
    scorers: Sequence[str],
    form: str,
    provenance: str = "",
) -> SamplingParams:
    return SamplingParams.from_vector(
        np.clip(vector, 0.0, None), domains, scorers, form, provenance, renormalize=True
    )


def toward(
    anchors: np.ndarray, fresh: np.ndarray, reach: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Points between anchors and fresh proposals, at most ``reach`` of the way (CLIMB-style
    local search: ``reach`` shrinks round after round).

    Row i moves a random anchor a fraction u ~ U(0, reach) of the way to ``fresh[i]``. A convex
    combination of two points of the space stays in it: α rows stay on the simplex, λ, ω, η, ε
    stay in their ranges, and domain-mixture θ stay domain mixtures. Returns the points and the
    index of each one's anchor.
    """
    which = rng.integers(len(anchors), size=len(fresh))
    pick = anchors[which]
    u = rng.uniform(0.0, reach, size=(len(fresh), 1))
    return pick + u * (fresh - pick), which


def spread_best(pred: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` of the best predicted, at most ⌈n / groups⌉ from any one group (anchor)
    while others have candidates left: the best points of one anchor are near-copies, which
    would train the same stream n times. Short groups leave their places to the best others."""
    order = np.argsort(pred, kind="stable")
    cap = -(-n // max(1, len(np.unique(groups))))
    taken: dict[int, int] = {}
    out: list[int] = []
    for i in order:
        g = int(groups[i])
        if taken.get(g, 0) < cap and len(out) < n:
            taken[g] = taken.get(g, 0) + 1
            out.append(int(i))
    chosen = set(out)
    out += [int(i) for i in order if int(i) not in chosen][: n - len(out)]
    return np.array(sorted(out, key=lambda i: pred[i]), dtype=np.int64)
