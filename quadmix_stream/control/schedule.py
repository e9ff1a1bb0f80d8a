"""A params schedule as a controller: given params in force from given steps (an anneal)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quadmix_stream.control.base import DomainSignals
from quadmix_stream.mixing.params import SamplingParams


class ScheduleController:
    """``{step: params}``: those params are in force from that step on.

    The switch to ``schedule[s]`` happens once step ``s`` is done, so step ``s + 1`` is the
    first trained under them. No state: the schedule itself says everything.
    """

    name = "schedule"

    def __init__(self, schedule: Mapping[int, SamplingParams]) -> None:
        self.schedule = dict(schedule)

    def observe(self, step: int, signals: DomainSignals) -> SamplingParams | None:
        return self.schedule.get(step)

    def describe(self) -> dict[str, Any]:
        return {"steps": sorted(self.schedule)}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


__all__ = ["ScheduleController"]
