"""``quadmix-stream label``: plan → (train) → label units on every rank → merge on rank 0.

Guarantees:

* **Row alignment**: a unit's sidecar rows are its shard's rows, in order; every labeller returns
  one value per document or the unit fails (checked), and per-document problems are counted.
* **Resumable**: a unit is committed by its record (after its shard and sidecar); a re-run skips
  committed units, redoes unfinished ones, and gives byte-identical shards and sidecars.
* **No mixed versions**: a column whose labeller fingerprint changed is *stale*; the re-run
  recomputes exactly those columns (checking that the documents still match the sidecar's keys).
* **Distributed**: under ``torchrun`` rank 0 plans (and trains), ranks label contiguous blocks of
  the pending units, and rank 0 merges once every rank reports success.
* **On Ray** (``executor: {kind: ray}``, ``--executor ray``): this process is the driver (it
  plans, trains and merges) and each pending unit is a Ray task (:mod:`.ray_run`).
* **Object storage**: the dataset (``--shards s3://bucket/ds``, ``--out s3://…``) may be a URL;
  shards, sidecars, records and the manifest are then written there in that order, one PUT each
  (see :mod:`.roots`), and a re-run on any machine resumes from the records in the bucket.

The steps live in their own modules: plan (:mod:`.plan`, :mod:`.discover`), read (:mod:`.worker`,
:mod:`.read_raw`, :mod:`.read_shards`), label (:mod:`.label`, :mod:`.labeler_set`), commit
(:mod:`.commit`, :mod:`.records`, :mod:`.merge`); this module runs them in order on every rank.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.labelling.dist import World, init_world, split_units
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.label import LabelRun, label_units
from quadmix_stream.labelling.labeler_set import LabelerSet, build_labelers, check_model_paths
from quadmix_stream.labelling.merge import manifest_extra, merge
from quadmix_stream.labelling.plan import Plan, check_out_dir, make_plan
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.records import UnitState, clean_tmp, unit_state, write_root_json
from quadmix_stream.labelling.roots import WORK_DIR, LocalRoot, Root, as_root
from quadmix_stream.labelling.run_report import RunResult, gather_stats
from quadmix_stream.labelling.worker import IOHelper


def run_label(
    recipe: Recipe,
    status_only: bool = False,
    retrain: bool = False,
    throttle_s: float = 0.0,
    log: Any = None,
) -> RunResult | list[UnitState]:
    """Run (or resume) a labelling recipe on this process's rank; see the module docstring.

    Args:
        recipe: a checked :class:`Recipe` (``out`` set).
        status_only: report the state of every unit and do nothing.
        retrain: rerun the recipe's training jobs even when their models are current.
        throttle_s: sleep after each committed unit (demos and kill-and-resume tests).
        log: where progress lines go (default stderr); the summary is returned.
    """
    log = log or sys.stderr
    t_start = time.perf_counter()
    recipe.check()
    recipe.executor.check_installed()
    assert recipe.out is not None
    root = as_root(recipe.out)
    check_model_paths(recipe)  # on every rank, before anything (the output folder) is created
    world = init_world(recipe.barrier_timeout_s)
    if world.size > 1 and recipe.executor.kind == "ray":
        world.close()
        raise LabelError(
            "executor ray: launch the labelling driver as one process (no torchrun); Ray "
            "spreads the units over the cluster"
        )
    helper = IOHelper(recipe.io_workers)  # starts importing now, in parallel with the setup
    try:
        return _run(recipe, root, world, helper, status_only, retrain, throttle_s, log, t_start)
    finally:
        helper.close()
        world.close()
        root.close()


def _guard(world: World, fn: Any, *args: Any) -> Any:
    """Run ``fn`` on this rank, then agree with every rank that all succeeded."""
    err: BaseException | None = None
    out = None
    try:
        out = fn(*args)
    except BaseException as e:  # reported after the agreement, so no rank hangs
        err = e
    ok = world.all_ok(err is None)
    if err is not None:
        raise err
    if not ok:
        raise LabelError("another rank failed (see its error above)")
    return out


def _run(
    recipe: Recipe,
    root: Root,
    world: World,
    helper: IOHelper,
    status_only: bool,
    retrain: bool,
    throttle_s: float,
    log: Any,
    t_start: float,
) -> RunResult | list[UnitState]:
    rank0 = world.rank == 0
    phases: dict[str, float] = {}
    t = time.perf_counter()
    _guard(world, _train, recipe, root, rank0 and not status_only, retrain, log)
    phases["train"] = time.perf_counter() - t
    t = time.perf_counter()
    labs, plan0 = _guard(world, _load, recipe, root, rank0, helper, status_only)
    plan: Plan = world.broadcast(plan0)
    current = labs.columns()
    phases["plan+load"] = time.perf_counter() - t
    t = time.perf_counter()
    all_states: list[UnitState] = world.broadcast(
        _guard(world, _states, root, rank0, plan, current, labs.scorer_names)
    )
    if status_only:
        return all_states
    work = [s for s in all_states if s.status != "done"]
    phases["states"] = time.perf_counter() - t
    t = time.perf_counter()
    workers = world.size
    if recipe.executor.kind == "ray":
        from quadmix_stream.labelling.ray_run import label_on_ray

        gathered, workers = label_on_ray(recipe, plan, work, current, throttle_s, log)
        clean_tmp(root)  # what a worker killed mid-write left (its task was redone elsewhere)
    else:
        mine = split_units(work, world.rank, world.size)
        run = LabelRun(recipe, root, plan, labs, world, helper, throttle_s, log)
        stats = _guard(world, label_units, run, mine)
        gathered = gather_stats(world, root, stats)
    phases["label"] = time.perf_counter() - t
    t = time.perf_counter()
    merged = _guard(world, _finish, recipe, root, rank0, plan, labs, current)
    phases["merge"] = time.perf_counter() - t
    assert recipe.out is not None
    res = RunResult(
        recipe.out,
        workers,
        len(plan.units),
        sum(s.status == "done" for s in all_states),
        len(work),
        sum(s.status == "stale" for s in all_states),
        stats=gathered,
        wall_s=time.perf_counter() - t_start,
        phases=phases,
        executor=recipe.executor.kind,
    )
    if merged is not None:
        res.manifest, res.issues = merged
        write_root_json(
            root,
            f"{WORK_DIR}/last_run.json",
            {"summary": res.summary(), "stats": [asdict(s) for s in gathered]},
        )
    return res


def _train(recipe: Recipe, root: Root, train: bool, retrain: bool, log: Any) -> None:
    """Rank 0 runs the recipe's training jobs (a current model is reused) unless ``train`` is
    False (other ranks, ``--status``)."""
    if train and recipe.train:
        from quadmix_stream.labelling.train import format_report, run_train_job

        for job in recipe.train:
            out = root.path if isinstance(root, LocalRoot) else None  # remote: no {out}
            model, rep, trained = run_train_job(job, recipe.base, out, force=retrain)
            print(("trained " if trained else "reusing ") + format_report(model, rep), file=log)


def _load(
    recipe: Recipe, root: Root, rank0: bool, helper: IOHelper, status_only: bool
) -> tuple[LabelerSet, Plan | None]:
    """Load the labellers; rank 0's helper plans (counting input rows) meanwhile."""
    if rank0 or root.remote:  # remote: every node clears what its killed processes left
        root.prepare()
    if rank0:
        helper.call_async(make_plan, recipe)
    labs = build_labelers(recipe)
    labs.columns()  # fingerprints (model hashes) now, in parallel with the plan
    plan = helper.result() if rank0 else None
    if rank0 and not status_only:
        assert plan is not None
        check_out_dir(root, plan)
        clean_tmp(root)
    return labs, plan


def _states(
    root: Root, rank0: bool, plan: Plan, current: dict[str, str], names: list[str]
) -> list[UnitState] | None:
    """Rank 0 reads every unit's state from its record."""
    if not rank0:
        return None
    root.refresh()
    return root.map(lambda u: unit_state(root, u.index, current, names), plan.units)


def _finish(
    recipe: Recipe,
    root: Root,
    rank0: bool,
    plan: Plan,
    labs: LabelerSet,
    current: dict[str, str],
) -> tuple[Manifest, Issues] | None:
    """Rank 0 merges every unit's record into the manifest."""
    if not rank0:
        return None
    return merge(
        root,
        plan.format,
        plan.mode,
        len(plan.units),
        labs.domains,
        labs.scorer_infos(),
        current,
        manifest_extra(recipe, root, plan, labs),
    )


__all__ = ["run_label"]
