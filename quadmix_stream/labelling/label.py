"""The label step: run the labellers on each unit the reader delivers, then commit it.

The rank's I/O helper (:mod:`.worker`) reads unit *i+1* while the models label unit *i*; each
labelled unit is committed (:mod:`.commit`) once its payload shard is written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quadmix_stream.formats.labels import LabelError
from quadmix_stream.labelling.commit import Labelled, commit_unit
from quadmix_stream.labelling.dist import World
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.labeler_set import LabelerSet
from quadmix_stream.labelling.plan import Plan
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.records import UnitState
from quadmix_stream.labelling.roots import Root
from quadmix_stream.labelling.run_report import RankStats
from quadmix_stream.labelling.worker import IOConfig, IOHelper, Task


def label_unit(
    labs: LabelerSet,
    texts: list[str],
    docs: list[dict[str, Any]],
    issues: Issues,
    columns: Sequence[str],
    stats: RankStats,
) -> dict[str, np.ndarray]:
    """Run the labellers of ``columns`` on one unit; domain names become ids."""
    out: dict[str, np.ndarray] = {}
    by_name = {lab.name: lab for lab in labs.all}
    for c in columns:
        lab = by_name[c]
        t0 = time.perf_counter()
        vals = lab(texts, docs, issues)
        stats.label_s[c] = stats.label_s.get(c, 0.0) + time.perf_counter() - t0
        stats.label_docs[c] = stats.label_docs.get(c, 0) + len(texts)
        if c == "domain":
            vals = domain_ids(vals, labs, docs, issues)
        out[c] = vals
    return out


def domain_ids(
    names: np.ndarray, labs: LabelerSet, docs: list[dict[str, Any]], issues: Issues
) -> np.ndarray:
    """Domain names → ids in the dataset's list; unknown names follow the recipe's policy."""
    index = {d: i for i, d in enumerate(labs.domains)}
    ids = np.fromiter((index.get(n, -1) for n in names), dtype=np.int32, count=len(names))
    bad = np.flatnonzero(ids < 0)
    if bad.size:
        i = int(bad[0])
        if labs.unknown_domain == "error":
            raise LabelError(
                f"document {docs[i]['id']!r}: domain labeller returned {names[i]!r}, not one of "
                f"{labs.domains} (add it to --domains / the recipe's 'domains:', or set "
                "unknown_domain to map such documents)"
            )
        for j in bad:
            issues.add("unknown_domain[domain]", f"{docs[int(j)]['id']} ({names[int(j)]})")
        ids[bad] = index[labs.unknown_domain]
    return ids


@dataclass
class LabelRun:
    """What labelling this rank's units needs besides the units themselves."""

    recipe: Recipe
    root: Root
    plan: Plan
    labs: LabelerSet
    world: World
    helper: IOHelper
    throttle_s: float
    log: Any


def label_units(run: LabelRun, mine: list[UnitState]) -> RankStats:
    """Label and commit this rank's units ``mine`` (in order); returns what the rank did."""
    plan, labs = run.plan, run.labs
    stats = RankStats(rank=run.world.rank)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    units = {u.index: u for u in plan.units}
    tasks = [Task(units[s.unit], s.status == "pending") for s in mine]
    state = {s.unit: s for s in mine}
    need_fields = any(lab.needs_docs for lab in labs.all)
    cfg = IOConfig(
        plan.mode,
        run.root.url,
        run.recipe.input,
        plan.format,
        plan.compression,
        need_fields,
        plan.extra.get("mds_index"),
    )
    total = sum(max(u.stop - u.start, 0) for u in (t.unit for t in tasks))
    bar = _progress_bar(run, total or len(tasks), "doc" if total else "shard", bool(tasks))
    pending: Labelled | None = None
    try:
        t_wait = time.perf_counter()
        for msg in run.helper.work(tasks, cfg):
            if msg[0] == "docs":
                stats.wait_s += time.perf_counter() - t_wait
                pending = _label_docs(labs, state, msg, stats)
            else:
                _, idx, shard, write_s = msg
                stats.write_s += write_s
                assert pending is not None and pending.idx == idx
                tc = time.perf_counter()
                commit_unit(run.root, plan, labs, state[idx], shard, pending)
                stats.commit_s += time.perf_counter() - tc
                stats.units += 1
                stats.docs += pending.n
                bar.update(pending.n if total else 1)
                pending = None
                if run.throttle_s:
                    time.sleep(run.throttle_s)
                t_wait = time.perf_counter()
    finally:
        bar.close()
    stats.wall_s = time.perf_counter() - t0
    stats.cpu_main_s = time.process_time() - cpu0
    stats.cpu_helper_s = run.helper.cpu_s
    return stats


def _progress_bar(run: LabelRun, total: int, unit: str, any_tasks: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit=unit,
        desc=f"label rank {run.world.rank}",
        position=run.world.rank,
        disable=not run.recipe.progress or not any_tasks,
        file=run.log,
        dynamic_ncols=True,
        leave=True,
    )


def _label_docs(
    labs: LabelerSet, state: dict[int, UnitState], msg: tuple, stats: RankStats
) -> Labelled:
    """Label the documents of a ``docs`` message: every column of a pending unit, the stale
    columns of a stale one."""
    _, idx, ids, texts, keys, digests, fields, issues_d, read_s = msg
    stats.read_s += read_s
    st = state[idx]
    docs = fields if fields is not None else [{"id": i} for i in ids]
    issues = Issues.from_dict(issues_d)
    if st.status == "pending":
        cols = [lab.name for lab in labs.all]
    else:
        cols = st.stale
        stats.relabelled += 1
    values = label_unit(labs, texts, docs, issues, cols, stats)
    return Labelled(idx, keys, digests, values, issues, len(texts))


__all__ = ["LabelRun", "domain_ids", "label_unit", "label_units"]
