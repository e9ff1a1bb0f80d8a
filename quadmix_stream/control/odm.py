"""ODM: Online Data Mixing (Albalak et al., 2023, arXiv 2312.02406) over QuaDMix's domains.

ODM treats each domain as an arm of an EXP3 bandit rewarded by its training loss: a domain the
model still finds hard is sampled more. Its update, as in the authors' code, after the t-th
observation, with K domains::

    R̂_d ← α·R̂_d + (loss_d · reward_scale) / π_d          (importance-weighted reward)
    ε_t  = min(1/K, √(ln K / (K·t)))
    π_d  = (1 − K·ε_t) · p_d·exp(ε_{t−1}·R̂_d) / Σ_j p_j·exp(ε_{t−1}·R̂_j) + ε_t

ODM draws one domain per batch; here every batch mixes domains, so each update observes every
domain that had predicted tokens since the last one (its reward is its mean token loss over
those steps). ``p`` is the prior: ``uniform`` is ODM as published (the first update moves the
mixture to near-uniform); ``base`` (the default) starts from the base θ's own shares, so the
controller adapts a mixture a search found instead of discarding it. α = 1 is ODM's cumulative
reward; α < 1 forgets old rewards.

The shares π become params through :func:`quadmix_stream.mixing.shares.scale_to_shares`: each
domain's η and ε scaled from the base θ's, its selection within the domain unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from quadmix_stream.control.base import DomainSignals
from quadmix_stream.errors import UserError
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.shares import capped_factors, scale_to_shares, token_shares

PRIORS = ("base", "uniform")


@dataclass(frozen=True, kw_only=True)
class ODMConfig:
    every: int = 20  # steps between updates (each one switches the params: keep it ≥ ~10)
    warmup: int = 0  # steps before the first update
    reward_scale: float = 0.1  # the loss is divided by 10 in ODM's code
    smoothing: float = 1.0  # α: 1 = ODM's cumulative reward
    prior: str = "base"  # "base": around the base θ's shares; "uniform": ODM as published
    max_factor: float = 8.0  # at most this multiple of the base's η and ε for any domain
    decimals: int = 6  # shares rounded so float noise cannot change the params (and the stream)

    def __post_init__(self) -> None:
        if self.every < 1 or self.warmup < 0:
            raise UserError(
                f"controller: every ≥ 1 and warmup ≥ 0, got {self.every}, {self.warmup}"
            )
        if not 0.0 < self.smoothing <= 1.0:
            raise UserError(f"controller.smoothing: in (0, 1], got {self.smoothing}")
        if self.prior not in PRIORS:
            raise UserError(f"controller.prior: one of {PRIORS}, got {self.prior!r}")
        if not (self.reward_scale > 0 and self.max_factor >= 1):
            raise UserError("controller: reward_scale > 0 and max_factor ≥ 1 required")


def exp3_update(
    rewards: np.ndarray,
    pi: np.ndarray,
    observed: np.ndarray,
    reward: np.ndarray,
    t: int,
    eps_prev: float,
    prior: np.ndarray,
    smoothing: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One ODM/EXP3 update over the live arms; returns ``(rewards, pi, eps)`` (pure)."""
    k = len(pi)
    r = rewards.copy()
    r[observed] = smoothing * r[observed] + reward[observed] / pi[observed]
    eps = min(1.0 / k, math.sqrt(math.log(k) / (k * t))) if k > 1 else 0.0
    z = eps_prev * r
    w = prior * np.exp(z - z.max())  # shifted: the same π, no overflow
    new_pi = (1.0 - k * eps) * w / w.sum() + eps
    return r, new_pi, eps


class ODMController:
    """ODM's EXP3 over the domains, adapting ``base``'s per-domain η and ε.

    Args:
        config: the options (:class:`ODMConfig`).
        base: the params adapted; their selection within each domain is kept.
        base_tokens: per domain, the expected output tokens under ``base``.
    """

    name = "odm"

    def __init__(self, config: ODMConfig, base: SamplingParams, base_tokens: np.ndarray) -> None:
        if base.form != "multiplicative":
            raise UserError(
                "controller odm: adapts the multiplicative form of Eq. 3 only; the params have "
                f"form {base.form!r}"
            )
        self.config = config
        self._set_base(base, base_tokens)
        self.rewards = np.zeros(len(self.live))
        self.pi = self.prior_shares.copy()  # in force until the first update: the base θ itself
        self.eps = 1.0 / max(len(self.live), 1)
        self.updates = 0
        self.loss_sum = np.zeros(len(self.base_tokens))
        self.loss_tokens = np.zeros(len(self.base_tokens))

    def _set_base(self, base: SamplingParams, base_tokens: Any) -> None:
        self.base = base
        self.base_tokens = np.asarray(base_tokens, dtype=np.float64)
        # arms: the domains the base θ selects something from (the others cannot be scaled up)
        self.live = np.flatnonzero(self.base_tokens > 0)
        self.prior_shares = token_shares(self.base_tokens)[self.live]
        k = len(self.live)
        uniform = np.full(k, 1.0 / max(k, 1))
        self.prior = self.prior_shares if self.config.prior == "base" else uniform

    # ------------------------------------------------------------ the decision
    def observe(self, step: int, signals: DomainSignals) -> SamplingParams | None:
        self.loss_sum += signals.loss_sum
        self.loss_tokens += signals.loss_tokens
        c = self.config
        if step <= c.warmup or (step - c.warmup) % c.every or len(self.live) < 2:
            return None
        seen = self.loss_tokens[self.live] > 0
        mean = np.divide(
            self.loss_sum[self.live],
            self.loss_tokens[self.live],
            out=np.zeros(len(self.live)),
            where=seen,
        )
        self.updates += 1
        self.rewards, pi, self.eps = exp3_update(
            self.rewards,
            self.pi,
            seen,
            mean * c.reward_scale,
            self.updates,
            self.eps,
            self.prior,
            c.smoothing,
        )
        self.pi = np.round(pi, c.decimals)
        self.loss_sum[:] = 0.0
        self.loss_tokens[:] = 0.0
        return self.params()

    def target_shares(self) -> np.ndarray:
        """[M] the shares the controller asks for (0 for domains the base θ leaves out)."""
        out = np.zeros(len(self.base_tokens))
        out[self.live] = self.pi
        return out / out.sum() if out.sum() > 0 else out

    def params(self) -> SamplingParams:
        """The base params scaled to :meth:`target_shares`."""
        p = scale_to_shares(
            self.base, self.base_tokens, self.target_shares(), self.config.max_factor
        )
        return replace(p, provenance=f"odm update {self.updates} of {self.base.fingerprint()[:12]}")

    def describe(self) -> dict[str, Any]:
        """The target shares and the factors applied to the base's η and ε, per domain."""
        f = capped_factors(
            self.base, self.base_tokens, self.target_shares(), self.config.max_factor
        )
        names = self.base.domains
        return {
            "updates": self.updates,
            "target_share": {
                names[i]: round(float(s), 6) for i, s in enumerate(self.target_shares())
            },
            "factor": {names[i]: round(float(x), 6) for i, x in enumerate(f)},
        }

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": asdict(self.config),
            "base": self.base.to_dict(),
            "base_tokens": self.base_tokens.tolist(),
            "rewards": self.rewards.tolist(),
            "pi": self.pi.tolist(),
            "eps": self.eps,
            "updates": self.updates,
            "loss_sum": self.loss_sum.tolist(),
            "loss_tokens": self.loss_tokens.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the base params come back with it (this
        controller's config stays: options changed between invocations apply from now on)."""
        if state.get("name") != self.name:
            raise UserError(f"controller state: saved by {state.get('name')!r}, not {self.name!r}")
        self._set_base(SamplingParams.from_dict(state["base"]), state["base_tokens"])
        self.rewards = np.asarray(state["rewards"], dtype=np.float64)
        self.pi = np.asarray(state["pi"], dtype=np.float64)
        self.eps = float(state["eps"])
        self.updates = int(state["updates"])
        self.loss_sum = np.asarray(state["loss_sum"], dtype=np.float64)
        self.loss_tokens = np.asarray(state["loss_tokens"], dtype=np.float64)


__all__ = ["ODMConfig", "ODMController", "exp3_update"]
