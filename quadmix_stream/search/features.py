"""Regressor inputs: θ itself (the paper), or the expected selection θ produces on the pool.

``theta``: the proposal space's own coordinates: the flat θ vector, (N+4)·M numbers, as in the
paper and RegMix; in the ``shares`` space, each domain's share and quality parameters (see
:mod:`.space`).

``profile``: what θ does to the pool, from the labels alone (no payload, no training): the
expected share of selected tokens of each domain, the log of the selected tokens per epoch, and
per scorer the token-weighted mean σ (0 = best) of the selected tokens: M + 1 + N numbers.
θ → profile is a fixed, known function (Eqs. 1-3 on the labels); giving it to the regressor
leaves it only profile → loss to learn, which needs far fewer proxy runs (on the planted corpus
with 64 runs: k-fold Spearman ≈ 0.9 instead of ≈ 0.4 for θ). θ* is still the mean of the best
k candidates *in the space's coordinates*, so selection works as in the paper.

``theta+profile``: both.

The profile of 100k candidates is computed in vectorised chunks on a uniform sample of at most
``sample_per_domain`` labelled documents per domain (Eq. 2 ranks on the sample; ties in q̄ are
broken arbitrarily, which only matters for exactly tied scores).
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.sampling import expected_copies, sample_rows_per_domain
from quadmix_stream.search.pool import Pool

if TYPE_CHECKING:
    from quadmix_stream.search.space import Space

KINDS = ("theta", "profile", "theta+profile")


def profile_names(domains: list[str], scorers: list[str]) -> list[str]:
    return [f"share[{d}]" for d in domains] + ["log_tokens"] + [f"sigma[{s}]" for s in scorers]


class Featurizer:
    """θ vectors → regressor features of one kind, for one pool.

    The profile of 100k candidates takes minutes, and the objective's and each constraint's
    regressors featurize the same candidates: the last ``memo`` results are kept by the bytes of
    their input (use :func:`featurizer_for` to share one featurizer between regressors).
    """

    memo = 32

    def __init__(
        self,
        kind: str,
        pool: Pool,
        form: str = "multiplicative",
        sample_per_domain: int = 2000,
        space: Space | None = None,
    ) -> None:
        if kind not in KINDS:
            raise UserError(f"regressor.features: must be one of {KINDS}, got {kind!r}")
        self.kind, self.pool, self.form = kind, pool, form
        #: the proposal space whose coordinates come in (None: θ itself)
        self.space = space
        self.m, self.n = len(pool.domains), len(pool.scorers)
        if kind != "theta":
            self.sample = DomainSample(pool, sample_per_domain, form)
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @property
    def names(self) -> list[str]:
        if self.space is not None:
            theta = self.space.names
        else:
            theta = SamplingParams.vector_names(self.pool.domains, self.pool.scorers)
        prof = profile_names(self.pool.domains, self.pool.scorers)
        return {"theta": theta, "profile": prof, "theta+profile": theta + prof}[self.kind]

    def __call__(self, vectors: np.ndarray, chunk: int = 256) -> np.ndarray:
        v = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if self.kind == "theta":
            return v
        key = hashlib.blake2b(np.ascontiguousarray(v).tobytes(), digest_size=16)
        key.update(repr((v.shape, chunk)).encode())  # chunking moves the last bit
        prof = self._memo.get(key.digest())
        if prof is None:
            parts = [v[i : i + chunk] for i in range(0, len(v), chunk)]
            # numpy's sort and exp release the GIL: chunks on threads use every core
            workers = min(len(parts), os.cpu_count() or 1, 8)
            if workers > 1:
                with ThreadPoolExecutor(workers) as ex:
                    prof = np.concatenate(list(ex.map(self.profile, parts)))
            else:
                prof = np.concatenate([self.profile(x) for x in parts])
            prof.setflags(write=False)
            self._memo[key.digest()] = prof
            while len(self._memo) > self.memo:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(key.digest())
        return prof.copy() if self.kind == "profile" else np.concatenate([v, prof], axis=1)

    def profile(self, v: np.ndarray) -> np.ndarray:
        if self.space is not None:
            v = self.space.theta(v)
        tokens, sig_sum = self.sample.expected(v)
        total = tokens.sum(axis=1, keepdims=True)
        safe = np.where(total > 0, total, 1.0)
        share = tokens / safe
        sigma = np.where(total > 0, sig_sum / safe, 1.0)
        return np.concatenate([share, np.log1p(total), sigma], axis=1)


class DomainSample:
    """A uniform sample of at most ``per_domain`` labelled documents per domain, and θ → the
    expected selected tokens of every domain on it (vectorised over many θ).

    Eq. 2 ranks each θ's documents within the sample (ties in q̄ broken arbitrarily); the
    tokens are scaled to the pool's exact per-domain totals.
    """

    def __init__(self, pool: Pool, per_domain: int = 2000, form: str = "multiplicative") -> None:
        self.m, self.n, self.form = len(pool.domains), len(pool.scorers), form
        lab = pool.labels
        rows = sample_rows_per_domain(lab.domain, lab.key, per_domain)
        self._dom = []
        for d in range(self.m):
            r = rows[lab.domain[rows] == d]
            w = np.maximum(lab.tokens[r].astype(np.float64), 1.0)
            scale = float(pool.domain_tokens[d] / w.sum()) if w.sum() > 0 else 0.0
            self._dom.append((w, pool.sigma[r], scale))

    def expected(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per θ row: expected selected tokens per domain ``(c, M)``, and per scorer the
        token-weighted sum of σ over the selected tokens ``(c, N)``."""
        m, n, c = self.m, self.n, len(v)
        alpha = v[:, : m * n].reshape(c, m, n)
        lam, omega, eta, eps = (v[:, m * n + k * m : m * n + (k + 1) * m] for k in range(4))
        tokens = np.zeros((c, m))
        sig_sum = np.zeros((c, n))
        for d, (w, sig, scale) in enumerate(self._dom):
            if not len(w):
                continue
            q = alpha[:, d, :] @ sig.T  # (c, docs): Eq. 1
            order = np.argsort(q, axis=1)
            ws = w[order]
            cum = np.cumsum(ws, axis=1)
            r = cum / cum[:, -1:]  # Eq. 2: token-weighted rank, small = better
            s = expected_copies(
                r, lam[:, d, None], omega[:, d, None], eta[:, d, None], eps[:, d, None], self.form
            )
            sw = np.empty_like(s)
            np.put_along_axis(sw, order, s * ws * scale, axis=1)  # back to document order
            tokens[:, d] = sw.sum(axis=1)
            sig_sum += sw @ sig
        return tokens, sig_sum


_SHARED: weakref.WeakKeyDictionary[Pool, dict[tuple, Featurizer]] = weakref.WeakKeyDictionary()


def featurizer_for(
    kind: str,
    pool: Pool,
    form: str = "multiplicative",
    sample_per_domain: int = 2000,
    space: Space | None = None,
) -> Featurizer:
    """The one featurizer of these settings for ``pool`` (regressors that share it compute
    each candidate's profile once)."""
    mine = _SHARED.setdefault(pool, {})
    key = (kind, form, sample_per_domain, None if space is None else space.key)
    if key not in mine:
        mine[key] = Featurizer(kind, pool, form, sample_per_domain, space)
    return mine[key]
