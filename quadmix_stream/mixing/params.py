"""QuaDMix parameters θ: validation, versioned JSON, flat vectors and Algorithm-1 proposals.

The flat vector order (used by the search) is fixed::

    [α[d0,s0], α[d0,s1], …, α[d0,sN-1], α[d1,s0], …, α[dM-1,sN-1],   # M·N, row-major
     λ[d0..dM-1], ω[d0..dM-1], η[d0..dM-1], ε[d0..dM-1]]               # 4·M

so θ has (N + 4)·M numbers; :meth:`SamplingParams.vector_names` names each of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.sampling import FORMS
from quadmix_stream.storage.io import atomic_write_text
from quadmix_stream.validate import expect_names, expect_object, read_json, show

SCHEMA = "quadmix-stream/params"
VERSION = 1
PER_DOMAIN = ("lam", "omega", "eta", "eps")

#: Algorithm 1 ranges of the paper: λ = 1000·U, ω = 0.1·U, η = U, ε = 0.001·U.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "lam": (0.0, 1000.0),
    "omega": (0.0, 0.1),
    "eta": (0.0, 1.0),
    "eps": (0.0, 0.001),
}


class ParamsError(UserError):
    """A params file or object that cannot be used; the message names the field and domain."""


@dataclass(frozen=True)
class SamplingParams:
    """The QuaDMix sampling parameters for M domains and N quality scorers.

    Attributes:
        domains: domain names (M), in the order of the rows below.
        scorers: scorer names (N), in the order of α's columns.
        alpha: (M, N) merge weights per domain; every row non-negative and summing to 1.
        lam, omega, eta, eps: (M,) sigmoid steepness, cut-off rank, scale and floor per domain.
        form: ``"multiplicative"`` (η·2σ + ε) or ``"exponent"`` ((2σ)^η + ε).
        provenance: free text: how these parameters were found.
    """

    domains: tuple[str, ...]
    scorers: tuple[str, ...]
    alpha: np.ndarray
    lam: np.ndarray
    omega: np.ndarray
    eta: np.ndarray
    eps: np.ndarray
    form: str = "multiplicative"
    provenance: str = ""
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "scorers", tuple(self.scorers))
        for name in ("alpha", *PER_DOMAIN):
            arr = np.array(getattr(self, name), dtype=np.float64)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        self.validate()

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ParamsError` naming the field (and domain) of the first problem."""
        m, n = len(self.domains), len(self.scorers)
        if m == 0:
            raise ParamsError("domains: at least one domain is required")
        if n == 0:
            raise ParamsError("scorers: at least one scorer is required")
        for what, names in (("domains", self.domains), ("scorers", self.scorers)):
            dup = {x for x in names if names.count(x) > 1}
            if dup:
                raise ParamsError(f"{what}: duplicate names {sorted(dup)}")
        if self.form not in FORMS:
            raise ParamsError(f"form: must be one of {FORMS}, got {self.form!r}")
        if self.alpha.shape != (m, n):
            raise ParamsError(
                f"alpha: shape {self.alpha.shape}, expected (domains={m}, scorers={n})"
            )
        for name in PER_DOMAIN:
            if getattr(self, name).shape != (m,):
                raise ParamsError(f"{name}: shape {getattr(self, name).shape}, expected ({m},)")
        for name in ("alpha", *PER_DOMAIN):
            arr = getattr(self, name)
            bad = ~np.isfinite(arr) | (arr < 0)
            if bad.any():
                d = int(np.argwhere(bad)[0][0])
                val = arr[d] if arr.ndim == 1 else arr[d][bad[d]][0]
                kind = "NaN/inf" if not np.isfinite(val) else "negative"
                raise ParamsError(f"{name}: {kind} value {val} for domain {self.domains[d]!r}")
        sums = self.alpha.sum(axis=1)
        for d in np.flatnonzero(np.abs(sums - 1.0) > 1e-6):
            raise ParamsError(
                f"alpha: row of domain {self.domains[d]!r} sums to {sums[d]:.6g}, must sum to 1"
            )

    def check_names(self, domains: Sequence[str], scorers: Sequence[str]) -> None:
        """Check that these params are for a dataset with exactly these domains and scorers.

        The error lists every difference; it suggests :meth:`reorder` only when the names are
        the same (domains and scorers alike) and only their order differs.
        """
        problems, same_sets = [], True
        for what, mine, theirs in (
            ("domains", self.domains, tuple(domains)),
            ("scorers", self.scorers, tuple(scorers)),
        ):
            if mine == theirs:
                continue
            missing = [x for x in theirs if x not in mine]
            unknown = [x for x in mine if x not in theirs]
            same_sets &= not missing and not unknown and len(mine) == len(theirs)
            problems.append(
                f"{what}: params are for {list(mine)} but the dataset has {list(theirs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
                + ("; same names in another order" if not missing and not unknown else "")
            )
        if problems:
            hint = (
                "use SamplingParams.reorder(domains, scorers)"
                if same_sets
                else "regenerate the params for this dataset"
            )
            raise ParamsError("; ".join(problems) + f" ({hint})")

    def reorder(self, domains: Sequence[str], scorers: Sequence[str]) -> SamplingParams:
        """The same params with rows/columns in the given order (names must match as sets)."""
        if set(domains) != set(self.domains) or set(scorers) != set(self.scorers):
            self.check_names(domains, scorers)
        di = [self.domains.index(d) for d in domains]
        si = [self.scorers.index(s) for s in scorers]
        return replace(
            self,
            domains=tuple(domains),
            scorers=tuple(scorers),
            alpha=self.alpha[np.ix_(di, si)],
            **{k: getattr(self, k)[di] for k in PER_DOMAIN},
        )

    # ------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "form": self.form,
            "domains": list(self.domains),
            "scorers": list(self.scorers),
            "per_domain": {
                d: {
                    "alpha": {s: float(self.alpha[i, j]) for j, s in enumerate(self.scorers)},
                    **{k: float(getattr(self, k)[i]) for k in PER_DOMAIN},
                }
                for i, d in enumerate(self.domains)
            },
            "provenance": self.provenance,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, obj: object) -> SamplingParams:
        """Params from their JSON form; every problem is a :class:`ParamsError` naming the field."""
        obj = expect_object(
            obj,
            "params",
            ParamsError,
            required=("schema", "version", "domains", "scorers", "per_domain"),
            optional=("form", "provenance", "extra"),
        )
        if obj["schema"] != SCHEMA:
            raise ParamsError(f"schema: expected {SCHEMA!r}, got {show(obj['schema'])}")
        if obj["version"] != VERSION:
            raise ParamsError(
                f"version: this build reads version {VERSION}, got {show(obj['version'])}"
            )
        domains = expect_names(obj["domains"], "domains", ParamsError)
        scorers = expect_names(obj["scorers"], "scorers", ParamsError)
        per = expect_object(obj["per_domain"], "per_domain", ParamsError, optional=None)
        if set(per) != set(domains):
            raise ParamsError(f"per_domain: has {sorted(per)} but domains lists {sorted(domains)}")
        alpha, cols = [], {k: [] for k in PER_DOMAIN}
        for d in domains:
            entry = expect_object(
                per[d],
                f"per_domain[{d!r}]",
                ParamsError,
                required=(),
                optional=("alpha", *PER_DOMAIN),
            )
            a = entry.get("alpha")
            if not isinstance(a, Mapping) or set(a) != set(scorers):
                raise ParamsError(
                    f"alpha: domain {d!r} must give one weight per scorer {scorers}, got {show(a)}"
                )
            alpha.append([_num(a[s], f"alpha[{d!r}][{s!r}]") for s in scorers])
            for k in PER_DOMAIN:
                if k not in entry:
                    raise ParamsError(f"{k}: missing for domain {d!r}")
                cols[k].append(_num(entry[k], f"{k}[{d!r}]"))
        form = obj.get("form", "multiplicative")
        if not isinstance(form, str):
            raise ParamsError(f"form: must be one of {FORMS}, got {show(form)}")
        provenance = obj.get("provenance", "")
        if not isinstance(provenance, str):
            raise ParamsError(f"provenance: expected a string, got {show(provenance)}")
        return cls(
            domains=tuple(domains),
            scorers=tuple(scorers),
            alpha=np.array(alpha, dtype=np.float64).reshape(len(domains), len(scorers)),
            form=form,
            provenance=provenance,
            extra=expect_object(obj.get("extra", {}), "extra", ParamsError, optional=None),
            **{k: np.array(v, dtype=np.float64) for k, v in cols.items()},
        )

    def save(self, path: str | Path) -> None:
        """Write versioned JSON atomically (temp file + rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SamplingParams:
        """Read and validate a params.json; errors name the file and the field."""
        path = Path(path)
        obj = read_json(path, ParamsError, "params file")
        try:
            return cls.from_dict(obj)
        except ParamsError as e:
            raise ParamsError(f"{path}: {e}") from None

    def fingerprint(self) -> str:
        """Identity of the stream these params select: names, form and every number of θ.

        Free text (``provenance``) and ``extra`` are left out on purpose: the same θ found by
        another search, or saved with another note, selects the same documents, so a resume with
        it must be accepted.
        """
        fp = self.__dict__.get("_fingerprint")
        if fp is None:  # computed once: every field is immutable (a frozen class, read-only arrays)
            d = self.to_dict()
            keys = ("schema", "version", "form", "domains", "scorers", "per_domain")
            ident = {k: d[k] for k in keys}
            fp = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", fp)
        return fp

    # ------------------------------------------------------------ vectors
    def to_vector(self) -> np.ndarray:
        """θ as a flat vector in the documented order (module docstring)."""
        return np.concatenate([self.alpha.ravel(), *(getattr(self, k) for k in PER_DOMAIN)])

    @classmethod
    def from_vector(
        cls,
        vector: np.ndarray,
        domains: Sequence[str],
        scorers: Sequence[str],
        form: str = "multiplicative",
        provenance: str = "",
        renormalize: bool = False,
    ) -> SamplingParams:
        """Inverse of :meth:`to_vector`. ``renormalize`` projects α rows back onto the simplex."""
        m, n = len(domains), len(scorers)
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != ((n + 4) * m,):
            raise ParamsError(f"vector: length {v.shape}, expected (N+4)·M = {(n + 4) * m}")
        alpha = v[: m * n].reshape(m, n).copy()
        if renormalize:
            alpha = np.clip(alpha, 0.0, None)
            s = alpha.sum(axis=1, keepdims=True)
            alpha = np.where(s > 0, alpha / np.where(s > 0, s, 1.0), 1.0 / n)
        rest = v[m * n :].reshape(4, m)
        return cls(
            domains=tuple(domains),
            scorers=tuple(scorers),
            alpha=alpha,
            form=form,
            provenance=provenance,
            **{k: rest[i] for i, k in enumerate(PER_DOMAIN)},
        )

    @staticmethod
    def vector_names(domains: Sequence[str], scorers: Sequence[str]) -> list[str]:
        """Feature names of the flat vector, e.g. ``alpha[web,dclm]``, ``lam[web]``."""
        names = [f"alpha[{d},{s}]" for d in domains for s in scorers]
        return names + [f"{k}[{d}]" for k in PER_DOMAIN for d in domains]

    # ------------------------------------------------------------ Algorithm 1
    @staticmethod
    def propose_vectors(
        n: int,
        n_domains: int,
        n_scorers: int,
        seed: int,
        ranges: Mapping[str, tuple[float, float]] | None = None,
    ) -> np.ndarray:
        """Algorithm 1 as an (n, (N+4)·M) array (fast path for 100k proposals).

        a_n ~ U(0,1) normalised; b[d,n] ~ U(0,1); α[d,n] ∝ a_n·b[d,n]; λ, ω, η, ε uniform in
        their ranges (paper defaults: :data:`DEFAULT_RANGES`).
        """
        rg = {**DEFAULT_RANGES, **(ranges or {})}
        for k, (lo, hi) in rg.items():
            if k not in DEFAULT_RANGES:
                raise ParamsError(f"ranges: unknown key {k!r}; expected {list(DEFAULT_RANGES)}")
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ParamsError(f"ranges[{k!r}]: need 0 ≤ low ≤ high, got ({lo}, {hi})")
        rng = np.random.default_rng(seed)
        a = rng.uniform(0.0, 1.0, size=(n, 1, n_scorers))
        a = a / a.sum(axis=2, keepdims=True)
        b = rng.uniform(0.0, 1.0, size=(n, n_domains, n_scorers))
        alpha = a * b
        alpha = alpha / alpha.sum(axis=2, keepdims=True)
        cols = [alpha.reshape(n, -1)]
        for k in PER_DOMAIN:
            lo, hi = rg[k]
            cols.append(rng.uniform(lo, hi, size=(n, n_domains)))
        return np.concatenate(cols, axis=1)

    @classmethod
    def propose(
        cls,
        n: int,
        domains: Sequence[str],
        scorers: Sequence[str],
        seed: int,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        form: str = "multiplicative",
    ) -> list[SamplingParams]:
        """``n`` Algorithm-1 proposals as params objects."""
        vecs = cls.propose_vectors(n, len(domains), len(scorers), seed, ranges)
        return [
            cls.from_vector(
                v, domains, scorers, form=form, provenance=f"algorithm1 seed={seed} #{i}"
            )
            for i, v in enumerate(vecs)
        ]

    # ------------------------------------------------------------ baselines
    @classmethod
    def keep_all(cls, domains: Sequence[str], scorers: Sequence[str]) -> SamplingParams:
        """Random baseline: every document exactly once (λ=0, ω=1, η=1, ε=0 → S ≡ 1)."""
        return domain_mixture(
            domains, scorers, np.ones(len(domains)), "baseline: keep all (random)"
        )


def domain_mixture(
    domains: Sequence[str], scorers: Sequence[str], eta: Sequence[float], provenance: str = ""
) -> SamplingParams:
    """A domain-only mixture (RegMix-style): every document of domain d gets S = η[d] copies.

    λ = 0 makes the sigmoid term 2/(1+e⁰) = 1 and ω = 1 covers every rank, so quality plays no
    part; α is uniform (irrelevant here).
    """
    m, n = len(domains), len(scorers)
    return SamplingParams(
        domains=tuple(domains),
        scorers=tuple(scorers),
        alpha=np.full((m, n), 1.0 / n),
        lam=np.zeros(m),
        omega=np.ones(m),
        eta=np.asarray(eta, dtype=np.float64),
        eps=np.zeros(m),
        provenance=provenance or "domain mixture",
    )


def _num(x: object, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ParamsError(f"{where}: expected a number, got {show(x)}")
    return float(x)
