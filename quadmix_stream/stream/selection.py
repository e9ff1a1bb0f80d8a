"""Params → expected and realised copies of documents (the "compile" step), one shard at a time.

A document's copies depend on its own labels plus small global tables, so any process computes
the counts of the shards it reads and nothing else (docs/design.md, "Counts from a shard's own labels and small tables"):

* σ tables (in the manifest) normalise raw scores;
* Eq. 2 needs each domain's distribution of merged quality q̄. It comes from a *reference*: a
  uniform sample of at most ``sample_per_domain`` documents of each domain (hash-chosen, so every
  process picks the same one). A domain that fits whole in the reference gets the exact Eq. 2
  (a token-weighted step function looked up by binary search); a larger one gets the paper's
  approximation, a rank table interpolated on a grid built from its sample. The reference is
  built once per dataset by a pool-wide pass (:mod:`quadmix_stream.stream.tables`) and holds
  O(domains × sample) rows whatever the pool's size.

The same functions serve the stream, ``sample``/``inspect`` and the search, so they all agree
document for document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.formats.labels import DatasetLabels, Manifest
from quadmix_stream.mixing.choices import choose
from quadmix_stream.mixing.hashing import SALT_SAMPLE, hash64
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.sampling import (
    RankTable,
    apply_sigma,
    build_rank_table,
    expected_copies,
    merge_quality,
    rank_from_table,
    realize,
)


@dataclass(frozen=True, kw_only=True)
class RankMethod:
    """One way to compute Eq. 2.

    Attributes:
        whole_pool: the reference is every document (else at most ``sample_per_domain`` per
            domain).
        exact_domains: from the domains that fit whole in the reference, those ranked exactly
            (the others use a rank table).
    """

    whole_pool: bool
    exact_domains: Callable[[np.ndarray], np.ndarray]


def _where_complete(complete: np.ndarray) -> np.ndarray:
    return np.array(complete, dtype=bool)


def _nowhere(complete: np.ndarray) -> np.ndarray:
    return np.zeros_like(complete, dtype=bool)


#: the rank methods by name (see :class:`RankConfig`)
RANK_METHOD: dict[str, RankMethod] = {
    "auto": RankMethod(whole_pool=False, exact_domains=_where_complete),
    "exact": RankMethod(whole_pool=True, exact_domains=_where_complete),
    "table": RankMethod(whole_pool=False, exact_domains=_nowhere),
}
RANK_METHODS = tuple(RANK_METHOD)


@dataclass(frozen=True, kw_only=True)
class RankConfig:
    """How Eq. 2 is computed.

    Attributes:
        method: ``"auto"`` (exact for domains that fit in the reference, else a table),
            ``"exact"`` (the whole pool is the reference: exact everywhere, O(pool) memory in
            every process — small pools only) or ``"table"`` (tables everywhere).
        sample_per_domain: reference documents per domain (the paper's bounded sample).
        grid: rank-table resolution.
    """

    method: str = "auto"
    sample_per_domain: int = 50_000
    grid: int = 16384

    def __post_init__(self) -> None:
        choose(RANK_METHOD, self.method, "rank method")
        if self.sample_per_domain < 1 or self.grid < 2:
            raise UserError("sample_per_domain must be ≥ 1 and grid ≥ 2")

    @property
    def per_domain(self) -> int | None:
        """Reference size per domain (``None``: every document)."""
        return None if RANK_METHOD[self.method].whole_pool else int(self.sample_per_domain)

    def fingerprint(self) -> str:
        return f"{self.method}-{self.per_domain or 'all'}-{self.grid}"


def sigma_scores(scores: np.ndarray, manifest: Manifest) -> np.ndarray:
    """(n_docs, N) σ-normalised scores (0 = best) using the manifest's σ tables."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(manifest.scorers))
    out = np.empty_like(scores)
    for j, s in enumerate(manifest.scorers):
        out[:, j] = apply_sigma(manifest.sigma[s.name], scores[:, j])
    return out


# ---------------------------------------------------------------- the reference sample
def reference_threshold(domain_sizes: np.ndarray, per_domain: int | None) -> np.ndarray:
    """Per domain, the hash threshold under which a document is in the reference (uint64)."""
    sizes = np.asarray(domain_sizes, dtype=np.float64)
    if per_domain is None:
        p = np.ones_like(sizes)
    else:
        p = np.minimum(1.0, per_domain / np.maximum(sizes, 1.0))
    # 53-bit fixed point, exact in float64; p == 1 → every document
    t = (p * float(1 << 53)).astype(np.uint64) << np.uint64(11)
    return np.where(p >= 1.0, np.iinfo(np.uint64).max, t).astype(np.uint64)


def reference_rows(keys: np.ndarray, domain: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Indices of the documents that belong to the reference (a pure function of the key)."""
    h = hash64(np.asarray(keys, dtype=np.uint64), SALT_SAMPLE)
    return np.flatnonzero(h <= threshold[np.asarray(domain, dtype=np.int64)])


@dataclass(frozen=True)
class Reference:
    """The label sample Eq. 2 is computed from: σ scores, domain and tokens of its documents,
    plus each domain's size in the pool (to know whether the sample is the whole domain)."""

    sigma: np.ndarray  # (n, N) float64
    domain: np.ndarray  # (n,) int64
    tokens: np.ndarray  # (n,) int64
    domain_sizes: np.ndarray  # (M,) documents per domain in the pool

    @property
    def complete(self) -> np.ndarray:
        """(M,) bool: the reference holds every document of the domain."""
        return np.bincount(self.domain, minlength=self.domain_sizes.size) == self.domain_sizes

    @classmethod
    def of_arrays(
        cls,
        sigma: np.ndarray,
        domain: np.ndarray,
        tokens: np.ndarray,
        keys: np.ndarray,
        n_domains: int,
        config: RankConfig,
    ) -> Reference:
        """The reference of a pool held in memory (small pools, tools, benchmarks)."""
        sizes = np.bincount(np.asarray(domain, dtype=np.int64), minlength=n_domains)
        pick = reference_rows(keys, domain, reference_threshold(sizes, config.per_domain))
        return cls(
            sigma=np.asarray(sigma, dtype=np.float64)[pick],
            domain=np.asarray(domain, dtype=np.int64)[pick],
            tokens=np.asarray(tokens, dtype=np.int64)[pick],
            domain_sizes=sizes.astype(np.int64),
        )

    @classmethod
    def of_labels(cls, labels: DatasetLabels, manifest: Manifest, config: RankConfig) -> Reference:
        """The reference of a pool whose labels are loaded whole."""
        return cls.of_arrays(
            sigma_scores(labels.scores, manifest),
            labels.domain,
            labels.tokens,
            labels.key,
            len(manifest.domains),
            config,
        )


# ---------------------------------------------------------------- Eq. 2 for one params
@dataclass(frozen=True)
class RankModel:
    """Eq. 2 under one params: per domain an exact step function or an interpolated table."""

    exact: np.ndarray  # (M,) bool
    q: list[np.ndarray]  # per exact domain: sorted q̄ of the reference (empty otherwise)
    cum: list[np.ndarray]  # per exact domain: token-weighted rank at each sorted q̄
    table: object  # RankTable for the domains that use one (None if none does)

    @classmethod
    def build(cls, ref: Reference, params: SamplingParams, config: RankConfig) -> RankModel:
        m = ref.domain_sizes.size
        q_all = merge_quality(ref.sigma, ref.domain, params.alpha)
        w_all = np.maximum(ref.tokens.astype(np.float64), 1.0)
        exact = RANK_METHOD[config.method].exact_domains(ref.complete)
        qs: list[np.ndarray] = []
        cums: list[np.ndarray] = []
        for d in range(m):
            if not exact[d]:
                qs.append(np.zeros(0))
                cums.append(np.zeros(0))
                continue
            sel = ref.domain == d
            q, w = q_all[sel], w_all[sel]
            o = np.argsort(q, kind="stable")
            c = np.cumsum(w[o])
            qs.append(q[o])
            cums.append(c / c[-1] if c.size else c)
        table = None
        if not exact.all():
            use = ~exact[ref.domain]
            table = build_rank_table(q_all[use], ref.domain[use], ref.tokens[use], m, config.grid)
        return cls(exact=exact, q=qs, cum=cums, table=table)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The model as named arrays (for the node cache); :meth:`from_arrays` inverts it."""
        out = {"exact": self.exact}
        for d in np.flatnonzero(self.exact):
            out[f"q{d}"], out[f"cum{d}"] = self.q[d], self.cum[d]
        if self.table is not None:
            out.update(lo=self.table.lo, step=self.table.step, values=self.table.values)
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> RankModel:
        exact = a["exact"].astype(bool)
        empty = np.zeros(0)
        q = [a[f"q{d}"] if exact[d] else empty for d in range(exact.size)]
        cum = [a[f"cum{d}"] if exact[d] else empty for d in range(exact.size)]
        table = RankTable(a["lo"], a["step"], a["values"]) if "values" in a else None
        return cls(exact=exact, q=q, cum=cum, table=table)

    def rank(self, quality: np.ndarray, domain: np.ndarray) -> np.ndarray:
        """r(x) in (0, 1] for documents with merged quality ``quality`` in ``domain``."""
        domain = np.asarray(domain, dtype=np.int64)
        out = np.empty(quality.size)
        tab = ~self.exact[domain]
        if tab.any():
            out[tab] = rank_from_table(self.table, quality[tab], domain[tab])
        for d in np.flatnonzero(np.bincount(domain[~tab], minlength=self.exact.size)):
            sel = domain == d
            # ties share the top of their group: the last reference q̄ ≤ this q̄
            i = np.searchsorted(self.q[d], quality[sel], side="right") - 1
            out[sel] = self.cum[d][np.clip(i, 0, None)]
        return out


def expected_of(
    sigma: np.ndarray, domain: np.ndarray, params: SamplingParams, model: RankModel
) -> np.ndarray:
    """S(x) (Eqs. 1-3) of documents from their σ scores and domains."""
    domain = np.asarray(domain, dtype=np.int64)
    r = model.rank(merge_quality(sigma, domain, params.alpha), domain)
    return expected_copies(
        r,
        params.lam[domain],
        params.omega[domain],
        params.eta[domain],
        params.eps[domain],
        params.form,
    )


class Selection:
    """Expected copies of a whole pool held in memory, and realised copies per epoch.

    For labels held in memory: the search's bounded label sample (:mod:`quadmix_stream.search.pool`) and tests.
    The stream, ``sample``, ``inspect`` and the plots compute the same numbers one shard at a
    time (:class:`~quadmix_stream.stream.tables.PoolTables`).
    """

    def __init__(
        self,
        labels: DatasetLabels,
        manifest: Manifest,
        params: SamplingParams,
        seed: int,
        config: RankConfig = RankConfig(),
        sigma: np.ndarray | None = None,
        reference: Reference | None = None,
    ) -> None:
        params.check_names(manifest.domains, manifest.scorer_names)
        self.labels, self.params, self.seed = labels, params, seed
        ref = reference or Reference.of_labels(labels, manifest, config)
        sig = sigma_scores(labels.scores, manifest) if sigma is None else sigma
        self.expected = expected_of(
            sig, labels.domain, params, RankModel.build(ref, params, config)
        )
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
        return mixture_sums(lab.domain, lab.tokens, w, m, realised=epoch is not None)


def mixture_sums(
    domain: np.ndarray, tokens: np.ndarray, w: np.ndarray, m: int, realised: bool
) -> dict[str, np.ndarray]:
    """Per-domain sums of copies ``w``: documents, tokens and unique documents."""
    # P(at least one copy) is min(S, 1) in expectation; [c > 0] once realised.
    seen = (w > 0).astype(np.float64) if realised else np.minimum(w, 1.0)
    return {
        "docs": np.bincount(domain, weights=w, minlength=m),
        "tokens": np.bincount(domain, weights=w * tokens, minlength=m),
        "unique_docs": np.bincount(domain, weights=seen, minlength=m),
    }
