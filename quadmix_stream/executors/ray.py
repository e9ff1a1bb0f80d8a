"""The ``ray`` executor: each unit of work a Ray task, results handled on the driver as they come.

The driver keeps at most ``max_in_flight`` tasks submitted and submits the next as one finishes,
so a free worker always takes the next unit (work stealing) and the scheduler never holds a
billion-document job's every unit. A task whose worker process or node dies is retried by Ray
(``max_retries``); a task that raises a :class:`~quadmix_stream.errors.UserError` fails the run
with that one line, and a bug with its traceback. What a task writes must be idempotent (the
labelling commit protocol, the search folder's records): a retried task may redo a unit.

Workers keep what is costly to build (models, a proxy's evaluation blocks) in
:func:`cached` between tasks: Ray reuses a worker process for the tasks of one job (``max_calls``
is set to 0, also for GPU tasks, whose default would start a fresh process per task).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from quadmix_stream.errors import UserError
from quadmix_stream.executors import ExecutorConfig, ExecutorError
from quadmix_stream.extras import require
from quadmix_stream.progress import Progress

log = logging.getLogger(__name__)

_CACHE: dict[str, Any] = {}
_CACHE_SIZE = 2  # a worker serves one job at a time; keep the previous one for an alternation


def cached(key: str, build: Callable[[], Any]) -> Any:
    """``build()`` once per worker process for ``key`` (the last few keys are kept)."""
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = build()
    return _CACHE[key]


@dataclass
class _Failed:
    """A task's :class:`UserError`, returned (not raised) so the driver can raise it as is."""

    error: UserError


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    # arguments at the top level: Ray resolves ObjectRefs there (shared objects put once)
    try:
        return fn(*args)
    except UserError as e:
        return _Failed(e)


class RayExecutor:
    """A connection to a Ray cluster (joined or started) that runs units of work as tasks.

    Use as a context manager; a Ray instance it started is stopped on exit, one it joined is
    left running, and a Ray session the caller had already opened is left as it is.
    """

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg
        self.ray = require("ray", "the ray executor (--executor ray)", "ray")
        self._owned = False
        if not self.ray.is_initialized():
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.WARNING,
                "configure_logging": False,
            }
            if cfg.address:
                kw["address"] = cfg.address
            else:
                kw["address"] = "local"  # never join a cluster by accident (RAY_ADDRESS)
                kw["num_cpus"] = cfg.num_cpus
                if cfg.object_store_mb:
                    kw["object_store_memory"] = cfg.object_store_mb * 2**20
            try:
                self.ray.init(**kw)
            except (ConnectionError, RuntimeError, TimeoutError) as e:
                where = cfg.address or "a new local instance"
                raise ExecutorError(
                    f"cannot start or join Ray ({where}): {str(e).splitlines()[0]}; is the "
                    "cluster running (`ray status`), and is the address right?"
                ) from None
            self._owned = True
        res = self.ray.cluster_resources()
        self.cpus, self.gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        if self._owned:
            how = f"joined {cfg.address}" if cfg.address else "started a local instance"
            log.info("ray: %s with %g CPUs and %g GPUs", how, self.cpus, self.gpus)

    # ------------------------------------------------------------------ capacity
    def slots(self) -> int:
        """How many tasks the cluster runs at once with this config's requests."""
        per = []
        if self.cfg.cpus_per_task > 0:
            per.append(self.cpus / self.cfg.cpus_per_task)
        if self.cfg.gpus_per_task > 0:
            per.append(self.gpus / self.cfg.gpus_per_task)
        n = math.floor(min(per)) if per else 0
        if n < 1:
            raise ExecutorError(
                f"the Ray cluster ({self.cpus:g} CPUs, {self.gpus:g} GPUs) cannot run one task "
                f"requesting {self.cfg.cpus_per_task:g} CPUs and {self.cfg.gpus_per_task:g} GPUs "
                "(executor.cpus_per_task / gpus_per_task)"
            )
        return n

    # ------------------------------------------------------------------ running
    def run(
        self,
        fn: Callable[..., Any],
        calls: Iterable[tuple],
        *,
        desc: str,
        name: str = "qms-task",
        unit: str = "task",
        total: int | None = None,
        weight: Callable[[tuple], int] | None = None,
        stream: Any = None,
        progress: bool = True,
    ) -> Iterator[tuple[tuple, Any]]:
        """Run ``fn(*args)`` for each ``args`` in ``calls`` as Ray tasks; yield ``(args, result)``
        as each finishes (in finishing order). ``name`` is the tasks' name in Ray (a worker
        running one is titled ``ray::NAME``). Progress (``total`` in ``unit``, each call counting
        ``weight(args)``) is reported every few seconds while tasks run.
        """
        ray = self.ray
        remote = ray.remote(
            num_cpus=self.cfg.cpus_per_task,
            num_gpus=self.cfg.gpus_per_task,
            max_retries=self.cfg.max_retries,
            retry_exceptions=False,
            max_calls=0,
        )(_call).options(name=name)
        limit = self.cfg.max_in_flight or 2 * self.slots()
        todo = iter(calls)
        running: dict[Any, tuple] = {}
        bar = Progress(desc, total, unit=unit, stream=stream, enabled=progress)
        exhausted = False
        try:
            while running or not exhausted:
                while not exhausted and len(running) < limit:
                    args = next(todo, None)
                    if args is None:
                        exhausted = True
                        break
                    running[remote.remote(fn, *args)] = args
                if not running:
                    break
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if not done:
                    bar.update(0, running=len(running))
                    continue
                for ref in done:
                    args = running.pop(ref)
                    out = self._get(ref, desc)
                    bar.update(weight(args) if weight else 1, running=len(running))
                    yield args, out
        finally:
            for ref in running:  # a failure, or the caller stopped early
                ray.cancel(ref, force=True)
            bar.close()

    def _get(self, ref: Any, desc: str) -> Any:
        ray = self.ray
        try:
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # a bug in a task: its traceback
            raise e.as_instanceof_cause() from None
        except ray.exceptions.RayError as e:  # the worker or node died more than max_retries
            raise ExecutorError(
                f"{desc}: a task failed {self.cfg.max_retries + 1} times "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "see the Ray logs (/tmp/ray/session_latest/logs) or raise executor.max_retries"
            ) from None
        if isinstance(out, _Failed):
            raise out.error
        return out

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()
        self._owned = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_local_ray(stack: Any, num_cpus: int) -> float:
    """Start a local Ray instance of ``num_cpus`` CPUs that lives until ``stack`` (an
    :class:`contextlib.ExitStack`) closes; every :class:`RayExecutor` opened meanwhile joins it.
    Returns the seconds it took to start (benchmarks report it apart)."""
    t0 = time.perf_counter()
    stack.enter_context(RayExecutor(ExecutorConfig(kind="ray", num_cpus=num_cpus)))
    return time.perf_counter() - t0


__all__ = ["RayExecutor", "cached", "start_local_ray"]
