"""Labelling on Ray: the driver plans, trains and merges; each unit of work is a Ray task.

The driver does what rank 0 does under ``torchrun`` (train, plan, list the units' states,
merge); the pending units go to Ray as tasks, one per unit, except that consecutive units of one
compressed input file travel together (such a file is read from its start, so splitting it would
read it again per unit). A free worker takes the next task; a task whose worker dies is retried.

Each worker process builds the labellers once (:func:`~quadmix_stream.executors.ray.cached`)
and commits every unit with the same protocol as a rank (payload shard, sidecar, then record),
so outputs are byte-identical to the local executor's. A retried task first reads the unit's
record: a unit its earlier try committed is not committed again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from quadmix_stream.executors.ray import RayExecutor, cached
from quadmix_stream.labelling.dist import World
from quadmix_stream.labelling.labeler_set import LabelerSet, build_labelers
from quadmix_stream.labelling.plan import Plan
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.records import UnitState, read_record
from quadmix_stream.labelling.roots import as_root
from quadmix_stream.labelling.run_report import RankStats
from quadmix_stream.labelling.worker import IOHelper


def task_groups(work: list[UnitState], plan: Plan) -> list[list[UnitState]]:
    """The pending units as tasks: one unit each, except that consecutive units of the same
    sequential input (a compressed JSONL file or the synthetic generator: no offset to seek to)
    form one task, read front to back."""
    units = {u.index: u for u in plan.units}
    groups: list[list[UnitState]] = []
    for st in work:
        u = units[st.unit]
        prev = units[groups[-1][-1].unit] if groups else None
        sequential = plan.mode == "new" and u.byte_start < 0 and not u.source.endswith(".parquet")
        if prev is not None and sequential and prev.source == u.source:
            groups[-1].append(st)
        else:
            groups.append([st])
    return groups


def label_task(
    recipe: Recipe, plan: Plan, states: list[UnitState], current: dict[str, str], throttle_s: float
) -> RankStats:
    """Label and commit ``states``' units in this worker (see the module docstring)."""
    from quadmix_stream.labelling.label import LabelRun, label_units

    key = json.dumps(
        [
            recipe.domain,
            recipe.tokens,
            recipe.scorers,
            recipe.domains,
            recipe.unknown_domain,
            str(recipe.base),
            sorted(current.items()),
        ],
        default=str,
    )
    labs: LabelerSet = cached("label:" + key, lambda: build_labelers(recipe))
    root = as_root(recipe.out)
    if root.remote:
        root.prepare()  # scratch left by this node's killed workers
    try:
        todo = [s for s in states if not _committed_since(root, s)]
        run = LabelRun(recipe, root, plan, labs, World(), IOHelper(0), throttle_s, sys.stderr)
        return label_units(run, todo)
    finally:
        root.close()


def _committed_since(root: Any, st: UnitState) -> bool:
    """Whether the unit has a record the driver did not see (an earlier try of this task
    committed it, and its worker died before reporting)."""
    rec = read_record(root, st.unit)
    return rec is not None and rec != st.record


def label_on_ray(
    recipe: Recipe,
    plan: Plan,
    work: list[UnitState],
    current: dict[str, str],
    throttle_s: float,
    log: Any,
) -> tuple[list[RankStats], int]:
    """Label ``work`` on the Ray cluster of ``recipe.executor``; returns every task's stats and
    the number of tasks the cluster ran at once."""
    quiet = dataclasses.replace(recipe, progress=False)  # the driver reports for the cluster
    groups = task_groups(work, plan)
    stats: list[RankStats] = []
    with RayExecutor(recipe.executor) as ex:
        slots = ex.slots()
        plan_ref = ex.ray.put(plan)  # sent to each node once, not with every task
        calls = [(quiet, plan_ref, g, current, throttle_s) for g in groups]
        done = ex.run(
            label_task,
            calls,
            desc="label (ray)",
            name="qms-label",
            unit="unit",
            total=len(work),
            weight=lambda args: len(args[2]),
            stream=log,
            progress=recipe.progress,
        )
        for i, (_, st) in enumerate(done):
            st.rank = i
            stats.append(st)
    return stats, slots


__all__ = ["label_on_ray", "label_task", "task_groups"]
