"""Where the offline steps run: ``local`` (this machine, as ``torchrun`` ranks or one process) or
``ray`` (a Ray cluster: an existing one by address, or a local one started for the run).

Labelling and the search's proxy trainings are many independent units of work (shards, proxies).
The ``local`` executor splits them statically over ``torchrun`` ranks; the ``ray`` executor makes
each one a Ray task, so a free worker takes the next unit (work stealing), a task whose worker or
node dies is retried, and CPU and GPU work get their own resource requests. What a unit writes is
committed the same way under both, so outputs are byte-identical and a re-run skips finished work.

Chosen by the recipe's ``executor:`` section or ``--executor`` on the command line::

    executor:
      kind: ray              # local (default) | ray
      address: auto          # ray: the cluster to join ("auto", "ray://head:10001");
                             #      unset: start a local Ray instance for the run
      cpus_per_task: 1       # each task's request
      gpus_per_task: 0.25    # fractional GPUs: four proxies share a GPU
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from quadmix_stream.errors import UserError

EXECUTORS = ("local", "ray")


class ExecutorError(UserError):
    """An executor setting that cannot be used, or a unit of work that failed for good."""


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """``executor:`` in a labelling or search recipe.

    Attributes:
        kind: ``local`` (this machine; ``torchrun`` ranks when launched under it) or ``ray``.
        address: the Ray cluster to join (``auto``: the one this machine belongs to, as started
            by ``ray start``; ``ray://HOST:10001``: a remote head through Ray Client). Unset: a
            Ray instance is started on this machine for the run and stopped after it.
        num_cpus: CPUs of a Ray instance started for the run (unset: all of this machine's).
        object_store_mb: its object store (unset: Ray's default, 30% of memory).
        cpus_per_task: CPUs each task requests (labelling: one unit; search: one proxy group).
        gpus_per_task: GPUs each task requests; fractions let tasks share a GPU.
        max_retries: how many times a task whose worker process or node died is retried. A task
            that raises is not retried: the error is the data's or the recipe's.
        max_in_flight: tasks submitted at once (unset: twice the cluster's task slots), so a
            billion-document job does not put every unit into the scheduler at once.
    """

    kind: str = "local"
    address: str | None = None
    num_cpus: int | None = None
    object_store_mb: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 3
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ExecutorError(f"executor.kind must be one of {EXECUTORS}, got {self.kind!r}")
        if self.cpus_per_task < 0 or self.gpus_per_task < 0:
            raise ExecutorError("executor.cpus_per_task and gpus_per_task must be ≥ 0")
        if self.cpus_per_task == 0 and self.gpus_per_task == 0:
            raise ExecutorError("executor: a task must request some CPUs or GPUs")
        if self.max_retries < 0:
            raise ExecutorError("executor.max_retries must be ≥ 0")
        for name in ("num_cpus", "object_store_mb", "max_in_flight"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ExecutorError(f"executor.{name} must be ≥ 1 when set, got {v}")

    def check_installed(self) -> None:
        """Fail now, in one line, when this executor's packages are missing (not after the
        planning of a long job)."""
        if self.kind == "ray":
            from quadmix_stream.extras import require

            require("ray", "the ray executor (--executor ray)", "ray")

    def with_overrides(self, kind: str | None = None, address: str | None = None) -> Any:
        """This config with the command line's ``--executor`` / ``--ray-address`` applied (an
        address alone implies ``ray``)."""
        changes: dict[str, Any] = {}
        if kind is not None:
            changes["kind"] = kind
        if address is not None:
            changes["address"] = address
            changes.setdefault("kind", "ray")
        return replace(self, **changes) if changes else self


def add_executor_arguments(p: Any) -> None:
    """``--executor`` and ``--ray-address`` on a command's argparse parser."""
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="where the units of work run: local (this machine; default unless the recipe's "
        "`executor:` says otherwise) or ray (pip install 'quadmix-stream[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster ('auto' = the one `ray start` set up on this machine, or "
        "ray://HEAD:10001); implies --executor ray. Without it --executor ray starts a local "
        "Ray instance for the run",
    )


__all__ = ["EXECUTORS", "ExecutorConfig", "ExecutorError", "add_executor_arguments"]
