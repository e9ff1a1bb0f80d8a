"""What a controller is: per-domain signals in, new params (sometimes) out, state to checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from quadmix_stream.mixing.params import SamplingParams


@dataclass(frozen=True)
class DomainSignals:
    """One training step's per-domain figures, summed over every rank (identical on all ranks).

    Attributes:
        tokens: [M] tokens of each domain in the step's batch (inputs).
        loss_sum: [M] summed next-token loss over the predicted tokens of each domain.
        loss_tokens: [M] predicted tokens ``loss_sum`` is over.
    """

    tokens: np.ndarray
    loss_sum: np.ndarray
    loss_tokens: np.ndarray

    @classmethod
    def from_step(cls, domain_tokens: Any, domain_loss: Any) -> DomainSignals:
        """From the trainer's step result: ``domain_tokens`` [M], ``domain_loss`` [M, 2]."""
        dl = np.asarray(domain_loss, dtype=np.float64)
        return cls(np.asarray(domain_tokens, dtype=np.int64), dl[:, 0].copy(), dl[:, 1].copy())


@runtime_checkable
class Controller(Protocol):
    """Called after every training step; returns params to put in force from the next step.

    Every rank calls it with the same signals and must get the same answer (no randomness
    outside the state, no clock). ``state_dict`` is saved with each checkpoint (plain Python
    numbers, strings, lists and dicts) and ``load_state_dict`` restores it exactly.
    """

    name: str

    def observe(self, step: int, signals: DomainSignals) -> SamplingParams | None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]: ...


__all__ = ["Controller", "DomainSignals"]
