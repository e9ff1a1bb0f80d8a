"""The QuaDMix sampling function as pure, vectorised numpy (docs/design.md, "The math").

Pipeline: raw scores --σ--> normalised scores --Eq.1--> merged quality q̄ --Eq.2--> in-domain
rank r --Eq.3--> expected copies S --realize--> integer copies c. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.choices import choose
from quadmix_stream.mixing.hashing import SALT_COPIES, SALT_SAMPLE, uniform


def _multiplicative(g: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """η · g (the paper's Eq. 3)."""
    return eta * g


def _exponent(g: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """g^η."""
    return g**eta


#: the head of Eq. 3 from g = 2·sigmoid(λ(ω − r)) and η, by form name
HEADS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "multiplicative": _multiplicative,
    "exponent": _exponent,
}
FORMS = tuple(HEADS)


# ---------------------------------------------------------------- σ normalisation
@dataclass(frozen=True)
class SigmaTable:
    """Token-weighted percentile table of one scorer, oriented so that 0 is best.

    ``knots`` are raw scores in the order best → worst (descending when higher raw is better),
    ``levels`` the token-weighted fraction of the pool strictly better than each knot's score
    plus half of its own tie group, so σ is in [0, 1] and the best document maps near 0.
    """

    knots: np.ndarray
    levels: np.ndarray
    higher_is_better: bool

    def to_dict(self) -> dict:
        return {
            "knots": [float(x) for x in self.knots],
            "levels": [float(x) for x in self.levels],
            "higher_is_better": bool(self.higher_is_better),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SigmaTable:
        return cls(
            np.asarray(d["knots"], dtype=np.float64),
            np.asarray(d["levels"], dtype=np.float64),
            bool(d["higher_is_better"]),
        )


def build_sigma_table(
    raw: np.ndarray, tokens: np.ndarray, higher_is_better: bool, n_knots: int = 1025
) -> SigmaTable:
    """Build the σ table of one scorer over the whole pool.

    Args:
        raw: raw scores, one per document (finite).
        tokens: token counts (weights); documents with 0 tokens weigh 1 so none is invisible.
        higher_is_better: orientation declared by the scorer.
        n_knots: table size; interpolation error is about 1/n_knots.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size == 0:
        raise UserError("cannot build a σ table from an empty pool")
    if not np.all(np.isfinite(raw)):
        raise UserError("σ table: raw scores contain NaN or inf")
    w = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
    oriented = -raw if higher_is_better else raw  # ascending oriented = best first
    uniq, inv = np.unique(oriented, return_inverse=True)
    group_w = np.bincount(inv, weights=w, minlength=uniq.size)
    before = np.concatenate([[0.0], np.cumsum(group_w)[:-1]])
    mid = (before + 0.5 * group_w) / w.sum()
    if uniq.size > n_knots:  # compress to n_knots points of the (monotone) curve
        idx = np.unique(np.linspace(0, uniq.size - 1, n_knots).round().astype(np.int64))
        uniq, mid = uniq[idx], mid[idx]
    knots = -uniq if higher_is_better else uniq
    return SigmaTable(knots=knots, levels=mid, higher_is_better=higher_is_better)


class Oriented(Protocol):
    """A scorer as σ tables need it (:class:`quadmix_stream.formats.labels.ScorerInfo`)."""

    name: str
    higher_is_better: bool


def build_sigma_tables(
    scores: np.ndarray, tokens: np.ndarray, scorers: Sequence[Oriented]
) -> dict[str, SigmaTable]:
    """The σ table of every scorer over the whole pool: the one place a manifest's tables are built.

    Args:
        scores: (n_docs, n_scorers) raw scores, columns in ``scorers`` order.
        tokens: token count of each document (weights).
        scorers: name and orientation of each score column.

    Returns:
        scorer name → its table, in ``scorers`` order.
    """
    return {
        s.name: build_sigma_table(scores[:, j], tokens, s.higher_is_better)
        for j, s in enumerate(scorers)
    }


def apply_sigma(table: SigmaTable, raw: np.ndarray) -> np.ndarray:
    """σ(raw) in [0, 1] by linear interpolation in the table (clamped outside its range)."""
    raw = np.asarray(raw, dtype=np.float64)
    xp = -table.knots if table.higher_is_better else table.knots
    x = -raw if table.higher_is_better else raw
    if xp.size == 1:
        return np.full(raw.shape, float(table.levels[0]))
    return np.interp(x, xp, table.levels)


# ---------------------------------------------------------------- Eq. 1
def merge_quality(sigma_scores: np.ndarray, domain: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Eq. 1: q̄(x) = Σ_n α[d(x), n] · σ_n(q_n(x)).

    Summed column by column, left to right: a document's q̄ is bit-identical in any batch it is
    part of (a matrix product may reorder the sum with the batch's size or alignment).

    Args:
        sigma_scores: (n_docs, N) normalised scores.
        domain: (n_docs,) domain ids.
        alpha: (M, N) merge weights, rows on the simplex.
    """
    sigma = np.asarray(sigma_scores, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)[np.asarray(domain, dtype=np.int64)]
    q = sigma[:, 0] * a[:, 0]
    for n in range(1, sigma.shape[1]):
        q = q + sigma[:, n] * a[:, n]
    return q


# ---------------------------------------------------------------- Eq. 2
def _weights(tokens: np.ndarray) -> np.ndarray:
    # Zero-token documents weigh 1 so that every rank stays in (0, 1].
    return np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)


def _domain_sort_key(domain: np.ndarray) -> np.ndarray:
    # int16 keys make numpy's stable argsort a radix sort (O(n)); M < 32768 domains.
    d = np.asarray(domain)
    return d.astype(np.int16) if d.size and d.max() < 32768 else d


def rank_exact(quality: np.ndarray, domain: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Eq. 2 exactly: r(x) = T({y ∈ d : q̄(y) ≤ q̄(x)}) / T(d), ties share the top of their group."""
    quality = np.asarray(quality, dtype=np.float64)
    domain = np.asarray(domain, dtype=np.int64)
    n = quality.size
    if n == 0:
        return np.zeros(0)
    w = _weights(tokens)
    by_q = np.argsort(quality, kind="stable")
    order = by_q[np.argsort(_domain_sort_key(domain[by_q]), kind="stable")]  # (domain, q̄)
    d_s, q_s = domain[order], quality[order]
    cum = np.cumsum(w[order])
    idx = np.arange(n)
    new_dom = np.empty(n, dtype=bool)
    new_dom[0] = True
    np.not_equal(d_s[1:], d_s[:-1], out=new_dom[1:])
    base = np.concatenate([[0.0], cum])[np.maximum.accumulate(np.where(new_dom, idx, 0))]
    # last index of each (domain, q̄) tie group and of each domain, by a reversed running min
    end_group = np.append(new_dom[1:] | (q_s[1:] != q_s[:-1]), True)
    end_dom = np.append(new_dom[1:], True)
    group_end = np.minimum.accumulate(np.where(end_group, idx, n)[::-1])[::-1]
    dom_end = np.minimum.accumulate(np.where(end_dom, idx, n)[::-1])[::-1]
    r = np.empty(n)
    r[order] = (cum[group_end] - base) / (cum[dom_end] - base)
    return r


@dataclass(frozen=True)
class RankTable:
    """Per-domain rank function of q̄ on a uniform grid: ``values[d, i]`` = rank at ``lo[d] + i·step[d]``.

    A uniform grid makes the lookup a gather plus one linear interpolation per document (no
    search, no sort), which is what keeps params → counts near a second for 10M documents.
    """

    lo: np.ndarray  # (M,)
    step: np.ndarray  # (M,)
    values: np.ndarray  # (M, grid + 1)


def build_rank_table(
    quality: np.ndarray,
    domain: np.ndarray,
    tokens: np.ndarray,
    n_domains: int,
    grid: int = 16384,
) -> RankTable:
    """Build per-domain rank tables from (a sample of) the pool.

    The exact token-weighted rank (a right-continuous step function of q̄) is computed on the
    sample and evaluated at ``grid + 1`` evenly spaced q̄ values spanning the domain's sample.
    """
    quality = np.asarray(quality, dtype=np.float64)
    domain = np.asarray(domain, dtype=np.int64)
    r = rank_exact(quality, domain, tokens)
    lo = np.zeros(n_domains)
    step = np.ones(n_domains)
    values = np.ones((n_domains, grid + 1))
    order = np.argsort(_domain_sort_key(domain), kind="stable")
    bounds = np.searchsorted(domain[order], np.arange(n_domains + 1))
    for d in range(n_domains):
        sl = order[bounds[d] : bounds[d + 1]]
        if not sl.size:
            continue
        uq, first = np.unique(quality[sl], return_index=True)
        lv = r[sl][first]  # equal q̄ → equal rank
        lo[d] = uq[0]
        step[d] = (uq[-1] - uq[0]) / grid if uq[-1] > uq[0] else 1.0
        g = lo[d] + step[d] * np.arange(grid + 1)
        g[-1] = max(g[-1], uq[-1])
        i = np.searchsorted(uq, g, side="right") - 1
        values[d] = np.where(i >= 0, lv[np.maximum(i, 0)], 0.0)
    return RankTable(lo, step, values)


def rank_from_table(table: RankTable, quality: np.ndarray, domain: np.ndarray) -> np.ndarray:
    """Eq. 2 by linear interpolation in a :class:`RankTable`, clipped into (0, 1]."""
    quality = np.asarray(quality, dtype=np.float64)
    domain = np.asarray(domain, dtype=np.int64)
    grid = table.values.shape[1] - 1
    pos = np.clip((quality - table.lo[domain]) / table.step[domain], 0.0, float(grid))
    i = np.minimum(pos.astype(np.int64), grid - 1)
    frac = pos - i
    flat = table.values.ravel()
    base = domain * (grid + 1) + i
    out = flat[base] * (1.0 - frac) + flat[base + 1] * frac
    return np.clip(out, np.finfo(np.float64).tiny, 1.0)


def sample_rows_per_domain(
    domain: np.ndarray, keys: np.ndarray, per_domain: int, seed: int = 0
) -> np.ndarray:
    """Indices of a uniform sample of about ``per_domain`` documents in each domain (or all of it).

    Deterministic and O(n): a document is kept when its hash-uniform is below
    ``per_domain / size(domain)``, so the sample size is binomial around ``per_domain``.
    """
    domain = np.asarray(domain, dtype=np.int64)
    sizes = np.bincount(domain)
    p = np.minimum(1.0, per_domain / np.maximum(sizes, 1))
    return np.flatnonzero(uniform(keys, seed, SALT_SAMPLE) < p[domain])


# ---------------------------------------------------------------- Eq. 3
def expected_copies(
    rank: np.ndarray,
    lam: np.ndarray | float,
    omega: np.ndarray | float,
    eta: np.ndarray | float,
    eps: np.ndarray | float,
    form: str = "multiplicative",
) -> np.ndarray:
    """Eq. 3: expected copies S(r) of a document at in-domain rank r (arrays broadcast per doc).

    ``multiplicative``: η · 2 / (1 + exp(−λ(ω − r))) + ε for r ≤ ω, else ε.
    ``exponent``: (2 / (1 + exp(−λ(ω − r))))^η + ε for r ≤ ω, else ε.
    """
    head_of = choose(HEADS, form, "form", ValueError)
    r = np.asarray(rank, dtype=np.float64)
    lam, omega, eta, eps = (np.asarray(v, dtype=np.float64) for v in (lam, omega, eta, eps))
    # 2/(1+exp(-z)) = 2·sigmoid(z); computed stably for large |z| (λ up to 1000).
    z = np.clip(lam * (omega - r), -700.0, 700.0)
    g = 2.0 / (1.0 + np.exp(-z))
    head = head_of(g, eta)
    return np.where(r <= omega, head + eps, eps + 0.0 * head)


# ---------------------------------------------------------------- realised copies
def realize(expected: np.ndarray, keys: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """c(x) = ⌊S⌋ + [u(x) < S − ⌊S⌋] with u a counter-based uniform of (seed, key, epoch)."""
    # an absurd S (η of 1e19, inf) stays absurdly large instead of wrapping around in int64:
    # the callers' "at most 255 copies" check must see it
    s = np.minimum(np.asarray(expected, dtype=np.float64), 2.0**62)
    base = np.floor(s)
    u = uniform(keys, seed, epoch, SALT_COPIES)
    return (base + (u < (s - base))).astype(np.int64)
