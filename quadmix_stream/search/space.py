"""Proposal spaces: where the search draws its points (the proxies' inputs and the 100k
candidates), and what a point's coordinates mean.

``quadmix``: Algorithm 1 (:meth:`SamplingParams.propose_vectors`) with the recipe's ranges. A
point is θ itself.

``domain_mixture``: the RegMix-style baseline, domain weights only. Weights w ~ Dirichlet(c·1)
become the QuaDMix parameters λ = 0, ω = 1, ε = 0, α uniform (quality ignored) and
η[d] = scale · w[d] · T / T[d] (T[d]: tokens of domain d in the pool), so every document of
domain d is expected η[d] times and domain d gets the share w[d] of ``scale · T`` selected
tokens. A point is θ.

``shares``: domain shares and quality in one space. A point holds, per domain, the share
``w[d]`` of the selected tokens (Dirichlet(c·1), as RegMix draws it) and the quality parameters
α, λ, ω (Algorithm 1) and ρ = ε/η (drawn in ``ranges.eps``); η follows from the share: the
domain's expected selected tokens per unit η under its quality parameters are computed from the
labels (:class:`~.features.DomainSample`), and η[d] = w[d] · scale · T / (those tokens). So
shares and quality are separate inputs to the regressor, θ* averages shares with shares, and the
search cannot confuse "more of a domain" with "a different cut of it". Optional caps: a domain's
share at most ``max_share_ratio`` × its pool share, and at most ``max_copies`` expected copies of
any document over ``final_tokens`` trained tokens (per epoch without it); the stream's own limit
of 254 expected copies per epoch always holds. What a cap takes goes to the other domains in
proportion to their shares (:func:`~quadmix_stream.mixing.shares.cap_shares`).

Every space's points have (N+4)·M coordinates in θ's order (``shares``: η's place holds the
share, ε's holds ρ), so the run folder, the regressor, rounds (:func:`toward`) and θ* (the mean
of points) are the same code for all; :meth:`Space.params` turns a point into the params a proxy
trains on and the search ships, which the loader reads like any other.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.shares import MAX_EXPECTED, cap_shares
from quadmix_stream.search.config import ProposalConfig

if TYPE_CHECKING:
    from quadmix_stream.search.features import DomainSample
    from quadmix_stream.search.pool import Pool


def batch_seed(seed: int, batch: int) -> int:
    """A seed for proposal batch ``batch`` (batches let a search grow without redrawing)."""
    return int(np.random.SeedSequence([int(seed), int(batch)]).generate_state(1)[0])


def coordinate_names(space: str, domains: Sequence[str], scorers: Sequence[str]) -> list[str]:
    """Names of a point's coordinates, e.g. ``alpha[web,dclm]``, ``lam[web]``, ``share[web]``."""
    names = SamplingParams.vector_names(domains, scorers)
    if space != "shares":
        return names
    m = len(domains) * len(scorers) + 2 * len(domains)
    return names[:m] + [f"share[{d}]" for d in domains] + [f"eps_ratio[{d}]" for d in domains]


class Space:
    """A proposal space whose points are θ (``quadmix``, ``domain_mixture``).

    Args:
        name: the space (``SearchConfig.space``).
        cfg: how proposals are drawn.
        domains, scorers: the dataset's, in θ's order.
        form: Eq. 3's form of the params made from points.
        pool: the labelled pool (``domain_mixture`` needs its tokens per domain to propose).
    """

    def __init__(
        self,
        name: str,
        cfg: ProposalConfig,
        domains: Sequence[str],
        scorers: Sequence[str],
        form: str = "multiplicative",
        pool: Pool | None = None,
    ) -> None:
        self.name, self.cfg, self.form, self.pool = name, cfg, form, pool
        self.domains, self.scorers = list(domains), list(scorers)
        self.m, self.n = len(self.domains), len(self.scorers)

    @property
    def key(self) -> tuple:
        """What the meaning of a point depends on (featurizers are shared by it)."""
        return (self.name,)

    @property
    def names(self) -> list[str]:
        return coordinate_names(self.name, self.domains, self.scorers)

    def propose(self, n: int, seed: int) -> np.ndarray:
        """``n`` points as an ``(n, (N+4)·M)`` array."""
        if self.name == "quadmix":
            return SamplingParams.propose_vectors(n, self.m, self.n, seed, self.cfg.ranges or None)
        if self.pool is None:
            raise ValueError("the domain_mixture space proposes from the pool's domain tokens")
        w = np.random.default_rng(seed).dirichlet(np.full(self.m, self.cfg.dirichlet), size=n)
        return mixture_vectors(w, self.pool.domain_tokens, self.n, self.cfg.scale)

    def first_batch(self, n: int, seed: int) -> np.ndarray:
        """The search's first ``n`` proposals (a staged search's first stage)."""
        return self.propose(n, seed)

    def theta(self, points: np.ndarray) -> np.ndarray:
        """θ vectors of ``points``."""
        return np.atleast_2d(np.asarray(points, dtype=np.float64))

    def coords(self, theta: np.ndarray) -> np.ndarray:
        """The points nearest θ vectors (their own coordinates where θ is in the space)."""
        return np.atleast_2d(np.asarray(theta, dtype=np.float64))

    def params(self, point: np.ndarray, provenance: str = "") -> SamplingParams:
        """The params of one point (α rows projected back onto the simplex)."""
        theta = self.theta(np.asarray(point, dtype=np.float64)[None])[0]
        return to_params(theta, self.domains, self.scorers, self.form, provenance)


class SharesSpace(Space):
    """The ``shares`` space (module docstring): a point's η comes from its shares and the labels."""

    def __init__(self, cfg: ProposalConfig, pool: Pool, form: str = "multiplicative") -> None:
        super().__init__("shares", cfg, pool.domains, pool.scorers, form, pool)
        #: selected tokens per epoch that the shares divide (scale × the pool's tokens)
        self.total = float(cfg.scale * pool.domain_tokens.sum())
        self.pool_shares = pool.domain_tokens / pool.domain_tokens.sum()

    @property
    def key(self) -> tuple:
        c = self.cfg
        return ("shares", c.scale, c.share_sample, c.max_share_ratio, c.max_copies, c.final_tokens)

    @cached_property
    def sample(self) -> DomainSample:
        from quadmix_stream.search.features import DomainSample  # features imports this module

        return DomainSample(self.pool, self.cfg.share_sample, self.form)

    def _split(self, v: np.ndarray) -> tuple[np.ndarray, ...]:
        """(α part, λ, ω, share, ρ) of points."""
        a = self.m * self.n
        return (v[:, :a], *(v[:, a + k * self.m : a + (k + 1) * self.m] for k in range(4)))

    def _tokens(self, theta: np.ndarray) -> np.ndarray:
        """Per θ row and domain: expected selected tokens (in chunks: a row holds every sampled
        document's copies while it is computed)."""
        return np.concatenate(
            [self.sample.expected(theta[i : i + 256])[0] for i in range(0, len(theta), 256)]
        )

    def _unit_tokens(self, v: np.ndarray) -> np.ndarray:
        """Per point and domain: expected selected tokens at η = 1, ε = ρ."""
        alpha, lam, omega, _, rho = self._split(v)
        return self._tokens(np.concatenate([alpha, lam, omega, np.ones_like(lam), rho], axis=1))

    def _caps(self, v: np.ndarray, unit: np.ndarray | None) -> np.ndarray:
        """Per point and domain: the largest share the caps allow (``unit`` None: the share cap
        alone, which needs no pass over the labels)."""
        _, lam, omega, _, rho = self._split(v)
        cap = np.full(lam.shape, np.inf)
        if self.cfg.max_share_ratio is not None:
            cap = np.minimum(cap, self.cfg.max_share_ratio * self.pool_shares)
        if unit is None:
            return cap
        # the best-ranked document (r = 0) gets the most copies: η·(2σ(λω) + ρ) per epoch
        top = 2.0 / (1.0 + np.exp(-np.clip(lam * omega, -700.0, 700.0))) + rho
        per_epoch = MAX_EXPECTED
        if self.cfg.max_copies is not None:
            epochs = (self.cfg.final_tokens / self.total) if self.cfg.final_tokens else 1.0
            per_epoch = min(per_epoch, self.cfg.max_copies / epochs)
        # η = w·total/unit, so copies ≤ per_epoch ⇔ w ≤ per_epoch·unit/(total·top)
        return np.minimum(cap, per_epoch * unit / (self.total * np.maximum(top, 1e-300)))

    def propose(self, n: int, seed: int) -> np.ndarray:
        v = SamplingParams.propose_vectors(n, self.m, self.n, seed, self.cfg.ranges or None)
        a = self.m * self.n
        # a stream of its own: Algorithm 1's draws above used ``seed``'s
        w = np.random.default_rng([seed, 1]).dirichlet(np.full(self.m, self.cfg.dirichlet), size=n)
        v[:, a + 2 * self.m : a + 3 * self.m] = w  # η's place holds the share; ε's holds ρ
        unit = self._unit_tokens(v) if self.cfg.max_copies is not None else None
        v[:, a + 2 * self.m : a + 3 * self.m] = cap_shares(w, self._caps(v, unit))
        return v

    def shares(self, points: np.ndarray) -> np.ndarray:
        """Each point's domain shares."""
        return self._split(np.atleast_2d(points))[3]

    def with_shares(self, points: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """``points`` with these domain shares (held to the caps), their quality kept."""
        v = np.array(np.atleast_2d(points), dtype=np.float64)
        a = self.m * self.n
        unit = self._unit_tokens(v) if self.cfg.max_copies is not None else None
        v[:, a + 2 * self.m : a + 3 * self.m] = cap_shares(shares, self._caps(v, unit))
        return v

    def first_batch(self, n: int, seed: int) -> np.ndarray:
        """Proposals; in a staged search, shares alone: every document of a domain selected
        alike (α uniform, λ = 0, ω = 1, ρ = 0, so 2σ(0) = 1 at every rank), as RegMix draws."""
        v = self.propose(n, seed)
        if not self.cfg.staged:
            return v
        a = self.m * self.n
        v[:, :a] = 1.0 / self.n
        v[:, a : a + self.m] = 0.0
        v[:, a + self.m : a + 2 * self.m] = 1.0
        v[:, a + 3 * self.m :] = 0.0
        return self.with_shares(v, self.shares(v))

    def theta(self, points: np.ndarray) -> np.ndarray:
        v = np.clip(np.atleast_2d(np.asarray(points, dtype=np.float64)), 0.0, None)
        alpha, lam, omega, w, rho = self._split(v)
        unit = self._unit_tokens(v)
        w = cap_shares(w, self._caps(v, unit))
        eta = np.divide(w * self.total, unit, out=np.zeros_like(w), where=unit > 0)
        return np.concatenate([alpha, lam, omega, eta, rho * eta], axis=1)

    def coords(self, theta: np.ndarray) -> np.ndarray:
        v = np.atleast_2d(np.asarray(theta, dtype=np.float64)).copy()
        alpha, lam, omega, eta, eps = self._split(v)
        # a domain with η = 0 and ε > 0 selects every document ε times: that is λ = 0, ω = 1,
        # η = ε, ε = 0 (2σ(0) = 1 at every rank), a point of this space
        flat = (eta <= 0) & (eps > 0)
        lam, omega = np.where(flat, 0.0, lam), np.where(flat, 1.0, omega)
        eta, eps = np.where(flat, eps, eta), np.where(flat, 0.0, eps)
        rho = np.divide(eps, eta, out=np.zeros_like(eta), where=eta > 0)
        same = np.concatenate([alpha, lam, omega, eta, eps], axis=1)
        w = self._tokens(same) / self.total
        return np.concatenate([alpha, lam, omega, w, rho], axis=1)


_SPACES: weakref.WeakKeyDictionary[Pool, dict[tuple, Space]] = weakref.WeakKeyDictionary()


def space_of(
    name: str,
    cfg: ProposalConfig,
    domains: Sequence[str],
    scorers: Sequence[str],
    form: str = "multiplicative",
    pool: Pool | None = None,
) -> Space:
    """The proposal space ``name`` (one per pool and settings: its label sample is built once).

    ``shares`` needs ``pool``; the others need it only to propose ``domain_mixture`` points."""
    if name in ("quadmix", "domain_mixture"):
        return Space(name, cfg, domains, scorers, form, pool)
    if name != "shares":
        raise UserError(f"unknown proposal space {name!r}")
    if pool is None:
        raise ValueError("the shares space turns shares into η from the pool's labels")
    mine = _SPACES.setdefault(pool, {})
    key = (form, repr(cfg))  # the config holds a dict (ranges): not hashable
    if key not in mine:
        mine[key] = SharesSpace(cfg, pool, form)
    return mine[key]


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
