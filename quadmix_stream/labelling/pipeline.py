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
* **Object storage**: the dataset (``--shards s3://bucket/ds``, ``--out s3://…``) may be a URL;
  shards, sidecars, records and the manifest are then written there in that order, one PUT each
  (see :mod:`.remote`), and a re-run on any machine resumes from the records in the bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.dist import World, init_world, split_units
from quadmix_stream.labelling.inputs import Unit, input_size, plan_raw, plan_shards
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.labelers import Labeler, build_labeler
from quadmix_stream.labelling.outputs import WrittenShard
from quadmix_stream.labelling.paths import require_readable, resolve_path
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.records import (
    Record,
    UnitState,
    clean_tmp,
    merge,
    shard_dict,
    unit_state,
    write_record,
    write_root_json,
)
from quadmix_stream.labelling.remote import WORK_DIR, LocalRoot, Root, as_root, shard_columns
from quadmix_stream.labelling.worker import IOConfig, IOHelper, Task
from quadmix_stream.labels import LabelError, Manifest, ScorerInfo, ShardLabels
from quadmix_stream.recipe import RecipeError


# ---------------------------------------------------------------- labeller set
@dataclass
class LabelerSet:
    """The domain labeller, the token counter and the scorers, with the dataset's domain list."""

    domain: Labeler
    tokens: Labeler
    scorers: list[Labeler]
    domains: list[str]
    unknown_domain: str = "error"

    @property
    def all(self) -> list[Labeler]:
        return [self.domain, self.tokens, *self.scorers]

    @property
    def scorer_names(self) -> list[str]:
        return [s.name for s in self.scorers]

    def columns(self) -> dict[str, str]:
        """Column → fingerprint; the domain column also depends on the domain list and policy."""
        dom = hashlib.sha256(
            json.dumps([self.domain.fingerprint(), self.domains, self.unknown_domain]).encode()
        ).hexdigest()[:16]
        cols = {"domain": f"domain:{dom}", "tokens": self.tokens.fingerprint()}
        cols.update({s.name: s.fingerprint() for s in self.scorers})
        return cols

    def scorer_infos(self) -> list[ScorerInfo]:
        return [ScorerInfo(s.name, s.higher_is_better, s.fingerprint()) for s in self.scorers]

    def describe(self) -> dict[str, Any]:
        return {
            "domain": self.domain.describe(),
            "tokens": self.tokens.describe(),
            "scorers": {s.name: s.describe() for s in self.scorers},
            "unknown_domain": self.unknown_domain,
        }


def build_labelers(recipe: Recipe) -> LabelerSet:
    """Load every labeller of a recipe (models from local paths) and fix the domain list."""
    base = recipe.base
    assert recipe.domain is not None
    domain = build_labeler(recipe.expand(recipe.domain), "domain", "domain", base)
    tokens = build_labeler(recipe.expand(recipe.tokens), "tokens", "tokens", base)
    scorers = [build_labeler(recipe.expand(s), "quality", s["name"], base) for s in recipe.scorers]
    classes = domain.classes()
    domains = list(recipe.domains) if recipe.domains else classes
    if not domains:
        raise RecipeError(
            "domains: the domain labeller does not list its classes (field labeller without a "
            "'map'); give the domain list: --domains a,b,c on the command line, or 'domains:' "
            "in the recipe"
        )
    if len(set(domains)) != len(domains):
        raise RecipeError(f"domains: duplicate names in {domains}")
    pol = recipe.unknown_domain
    if pol != "error" and pol not in domains:
        raise RecipeError(f"unknown_domain: {pol!r} is not one of the domains {domains}")
    extra = sorted(set(classes) - set(domains))
    if extra and pol == "error":
        raise RecipeError(
            f"domains: the domain labeller can return {extra}, which are not in {domains}; add "
            "them (--domains or the recipe's 'domains:'), or set unknown_domain to the domain "
            "that should take them"
        )
    return LabelerSet(domain, tokens, scorers, domains, pol)


def check_model_paths(recipe: Recipe) -> None:
    """Refuse a recipe whose labeller model files are missing, before anything is written.

    A path that one of the recipe's training jobs writes (its ``out``) may be missing: it is
    made before labelling starts. Raises :class:`LabelerError` naming the labeller and the path.
    """

    def norm(p: object) -> str:
        return os.path.normpath(resolve_path(str(recipe.expand(p)), recipe.base))

    made = {norm(j["out"]) for j in recipe.train if isinstance(j, dict) and "out" in j}
    specs = [("domain", recipe.domain), ("tokens", recipe.tokens)]
    specs += [(str(s.get("name")), s) for s in recipe.scorers]
    for name, spec in specs:
        if not isinstance(spec, dict):
            continue
        for key in ("path", "model", "head"):
            if isinstance(spec.get(key), str) and norm(spec[key]) not in made:
                p = resolve_path(str(recipe.expand(spec[key])), recipe.base)
                what = spec.get("type") if key == "path" else f"{spec.get('type')} {key}"
                require_readable(p, f"labeller {name!r} ({what})")


# ---------------------------------------------------------------- plan
@dataclass
class Plan:
    """The units of a run and what produced them (identical on every rank and every re-run)."""

    mode: str
    format: str
    compression: str | None
    rows_per_shard: int
    units: list[Unit]
    inputs: list[list[Any]]  # [path or shard, bytes]
    extra: dict[str, Any] = field(default_factory=dict)

    def ident(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "format": self.format,
            "compression": self.compression,
            "rows_per_shard": self.rows_per_shard if self.mode == "new" else None,
            "units": [asdict(u) for u in self.units],
            "inputs": self.inputs,
        }


def make_plan(recipe: Recipe) -> Plan:
    """The run's units from its inputs (local files or URLs; shards listed once)."""
    spec = recipe.input
    if spec.mode == "sidecar":
        assert recipe.out is not None
        root = as_root(recipe.out)
        fmt, units, extra = plan_shards(root, spec.shard_format)
        inputs = [[u.source, root.size(u.source)] for u in units]
        return Plan("sidecar", fmt, None, 0, units, inputs, extra)
    units = plan_raw(spec, recipe.rows_per_shard, recipe.base)
    paths = sorted({u.source for u in units})
    inputs = [[p, input_size(p) if p != "synthetic" else 0] for p in paths]
    if spec.synthetic is not None:
        inputs = [["synthetic", json.dumps(spec.synthetic, sort_keys=True)]]
    comp = recipe.compression if recipe.format == "mds" else None
    return Plan("new", recipe.format, comp, recipe.rows_per_shard, units, inputs)


_OUR_FILES = ("shard.", "index.json", "quadmix.json")


def check_out_dir(root: Path | Root, plan: Plan) -> None:
    """Refuse to mix runs: the folder must be new, or hold a run of the same plan."""
    root = as_root(root)
    saved = f"{WORK_DIR}/plan.json"
    data = root.read_bytes(saved)
    if data is not None:
        old = json.loads(data)
        if old != json.loads(json.dumps(plan.ident())):
            again = (
                "To add or change labellers of that dataset, re-run the recipe (or flags) that "
                "made it with the new labellers: only their columns are computed."
            )
            if plan.mode == "sidecar":
                raise FileExistsError(
                    f"{root} was labelled by a run with another plan ({old.get('mode')} mode, or "
                    f"its shards changed). {again} To label these shards in place afresh, remove "
                    f"{root.where(WORK_DIR)} (its run records) first."
                )
            raise FileExistsError(
                f"{root} holds a labelling run with another plan (inputs, format, "
                f"rows_per_shard or input files changed); use another --out. {again}"
            )
        return
    if plan.mode == "new":
        ours = [n for n in root.top_names() if n.startswith(_OUR_FILES)]
        if ours:
            raise FileExistsError(
                f"{root} already holds shards ({ours[0]}, ...) that this run did not plan; "
                "refusing to mix datasets (use another --out)"
            )
    write_root_json(root, saved, plan.ident())


# ---------------------------------------------------------------- results
@dataclass
class RankStats:
    """What one rank did in this run (timings are not part of the dataset)."""

    rank: int = 0
    units: int = 0
    relabelled: int = 0
    docs: int = 0
    wall_s: float = 0.0
    read_s: float = 0.0
    write_s: float = 0.0
    wait_s: float = 0.0
    commit_s: float = 0.0
    cpu_main_s: float = 0.0  # CPU seconds of this rank's process while labelling its units
    cpu_helper_s: float = 0.0  # CPU seconds of its I/O helper process (0 with io_workers: 0)
    label_s: dict[str, float] = field(default_factory=dict)
    label_docs: dict[str, int] = field(default_factory=dict)


@dataclass
class RunResult:
    """Returned on every rank; ``manifest`` and ``summary`` on rank 0 only."""

    root: Path | str
    world: int
    planned: int
    skipped: int
    todo: int
    stale: int
    manifest: Manifest | None = None
    issues: Issues | None = None
    stats: list[RankStats] = field(default_factory=list)
    wall_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = []
        docs = sum(s.docs for s in self.stats)
        train = self.phases.get("train", 0.0)
        wall = self.wall_s - train
        lines.append(
            f"labelled {docs} documents in {self.todo} of {self.planned} units with "
            f"{self.world} rank(s) in {wall:.1f}s ({docs / max(wall, 1e-9):,.0f} docs/s"
            + (f"; training took {train:.1f}s more" if train >= 0.05 else "")
            + f"); skipped {self.skipped} finished unit(s), relabelled stale columns in "
            f"{self.stale}"
        )
        cols: dict[str, list[float]] = {}
        for s in self.stats:
            for c, sec in s.label_s.items():
                a = cols.setdefault(c, [0.0, 0.0])
                a[0] += sec
                a[1] += s.label_docs.get(c, 0)
        if cols:
            lines.append(f"  {'column':<16}{'docs':>10}{'seconds':>10}{'docs/s':>12}")
            for c, (sec, n) in cols.items():
                lines.append(f"  {c:<16}{int(n):>10}{sec:>10.2f}{n / max(sec, 1e-9):>12,.0f}")
        io = [sum(getattr(s, k) for s in self.stats) for k in ("read_s", "write_s", "wait_s")]
        lines.append(
            f"  reader (parallel to labelling): read+parse {io[0]:.2f}s, write+hash {io[1]:.2f}s;"
            f" labelling waited {io[2]:.2f}s for it"
        )
        cpu = [sum(getattr(s, k) for s in self.stats) for k in ("cpu_main_s", "cpu_helper_s")]
        lines.append(f"  CPU while labelling: main {cpu[0]:.2f}s + I/O helper {cpu[1]:.2f}s")
        if self.phases:
            lines.append("  phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in self.phases.items()))
        if self.manifest is not None:
            m = self.manifest
            lines.append(
                f"dataset: {self.root} ({m.format}, {len(m.shards)} shards, {m.rows} documents, "
                f"domains {len(m.domains)}, scorers {m.scorer_names})"
            )
        if self.issues is not None and self.issues.counts:
            lines.append("per-document issues (counted, none dropped silently):")
            lines.extend(self.issues.report())
        return "\n".join(lines)


# ---------------------------------------------------------------- labelling one unit
def _read_old_sidecar(root: Root, name: str) -> dict[str, Any]:
    data = root.read_bytes(name)
    if data is None:
        raise LabelError(f"{root.where(name)}: label sidecar is missing")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        cols = {k: z[k] for k in z.files}
    cols["scorers"] = json.loads(cols["scorers"].tobytes().decode())
    return cols


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


# ---------------------------------------------------------------- the run
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
    assert recipe.out is not None
    root = as_root(recipe.out)
    check_model_paths(recipe)  # on every rank, before anything (the output folder) is created
    world = init_world(recipe.barrier_timeout_s)
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

    def train() -> None:
        if rank0 and recipe.train and not status_only:
            from quadmix_stream.labelling.train import format_report, run_train_job

            for job in recipe.train:
                out = root.path if isinstance(root, LocalRoot) else None  # remote: no {out}
                model, rep, trained = run_train_job(job, recipe.base, out, force=retrain)
                print(("trained " if trained else "reusing ") + format_report(model, rep), file=log)

    _guard(world, train)
    phases["train"] = time.perf_counter() - t
    t = time.perf_counter()

    def load() -> tuple[LabelerSet, Plan | None]:
        # rank 0's helper plans (counting input rows) while this process loads the models
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

    labs, plan0 = _guard(world, load)
    plan: Plan = world.broadcast(plan0)
    current = labs.columns()
    phases["plan+load"] = time.perf_counter() - t
    t = time.perf_counter()
    names = labs.scorer_names

    def states() -> list[UnitState] | None:
        if not rank0:
            return None
        root.refresh()
        return root.map(lambda u: unit_state(root, u.index, current, names), plan.units)

    all_states: list[UnitState] = world.broadcast(_guard(world, states))
    if status_only:
        return all_states
    work = [s for s in all_states if s.status != "done"]
    mine = split_units(work, world.rank, world.size)
    phases["states"] = time.perf_counter() - t
    t = time.perf_counter()
    stats = _guard(
        world, _label_units, recipe, root, plan, labs, mine, world, helper, throttle_s, log
    )
    gathered = _gather_stats(world, root, stats)
    phases["label"] = time.perf_counter() - t
    t = time.perf_counter()

    def finish() -> tuple[Manifest, Issues] | None:
        if not rank0:
            return None
        extra = dict(plan.extra.get("manifest_extra", {}))
        extra["labelling"] = _relative_to(
            {"recipe": recipe.name, "mode": plan.mode, "units": len(plan.units), **labs.describe()},
            root,
        )
        if plan.mode == "sidecar" and plan.format in ("parquet", "arrow"):
            extra["columns"] = _table_columns(recipe, root, plan)
        if plan.mode == "sidecar" and plan.format == "tar" and _foreign_tar(recipe, plan):
            extra["tar_members"] = {
                "text_ext": recipe.input.tar_text_ext,
                "json_ext": recipe.input.tar_json_ext,
            }
        return merge(
            root,
            plan.format,
            plan.mode,
            len(plan.units),
            labs.domains,
            labs.scorer_infos(),
            current,
            extra,
        )

    merged = _guard(world, finish)
    phases["merge"] = time.perf_counter() - t
    assert recipe.out is not None
    res = RunResult(
        recipe.out,
        world.size,
        len(plan.units),
        sum(s.status == "done" for s in all_states),
        len(work),
        sum(s.status == "stale" for s in all_states),
        stats=gathered,
        wall_s=time.perf_counter() - t_start,
        phases=phases,
    )
    if merged is not None:
        res.manifest, res.issues = merged
        write_root_json(
            root,
            f"{WORK_DIR}/last_run.json",
            {"summary": res.summary(), "stats": [asdict(s) for s in gathered]},
        )
    return res


def _relative_to(x: Any, root: Root) -> Any:
    """Model paths inside the dataset folder are recorded relative to it (portable manifests)."""
    if not isinstance(root, LocalRoot):
        return x  # models are local files; the dataset is not
    return _relative_to_path(x, root.path)


def _relative_to_path(x: Any, root: Path) -> Any:
    if isinstance(x, str):
        prefix = str(root.resolve()) + "/"
        return x[len(prefix) :] if x.startswith(prefix) else x
    if isinstance(x, list):
        return [_relative_to_path(v, root) for v in x]
    if isinstance(x, dict):
        return {k: _relative_to_path(v, root) for k, v in x.items()}
    return x


def _table_columns(recipe: Recipe, root: Root, plan: Plan) -> dict[str, Any]:
    """How the loader turns Parquet/Arrow rows into documents (as labelling did)."""
    spec = recipe.input
    names = shard_columns(root, plan.units[0].source, plan.format)
    return {
        "text_column": spec.text_field,
        "id_column": spec.id_field if spec.id_field in names else None,
    }


def _foreign_tar(recipe: Recipe, plan: Plan) -> bool:
    had_manifest = "manifest_extra" in plan.extra
    defaults = recipe.input.tar_text_ext == "txt" and recipe.input.tar_json_ext == "json"
    return not (had_manifest and defaults)


def _gather_stats(world: World, root: Root, stats: RankStats) -> list[RankStats]:
    wd = f"{WORK_DIR}/ranks"
    write_root_json(root, f"{wd}/rank-{world.rank:05d}.json", asdict(stats))
    world.all_ok(True)
    if world.rank != 0:
        return [stats]
    out = []
    for r in range(world.size):
        data = root.read_bytes(f"{wd}/rank-{r:05d}.json")
        if data is None:
            raise LabelError(f"{root.where(f'{wd}/rank-{r:05d}.json')}: rank {r} left no stats")
        out.append(RankStats(**json.loads(data)))
    return out


def _label_units(
    recipe: Recipe,
    root: Root,
    plan: Plan,
    labs: LabelerSet,
    mine: list[UnitState],
    world: World,
    helper: IOHelper,
    throttle_s: float,
    log: Any,
) -> RankStats:
    from tqdm import tqdm

    stats = RankStats(rank=world.rank)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    units = {u.index: u for u in plan.units}
    tasks = [Task(units[s.unit], s.status == "pending") for s in mine]
    state = {s.unit: s for s in mine}
    need_fields = any(lab.needs_docs for lab in labs.all)
    cfg = IOConfig(
        plan.mode,
        root.url,
        recipe.input,
        plan.format,
        plan.compression,
        need_fields,
        plan.extra.get("mds_index"),
    )
    total = sum(max(u.stop - u.start, 0) for u in (t.unit for t in tasks))
    bar = tqdm(
        total=total or len(tasks),
        unit="doc" if total else "shard",
        desc=f"label rank {world.rank}",
        position=world.rank,
        disable=not recipe.progress or not tasks,
        file=log,
        dynamic_ncols=True,
        leave=True,
    )
    pending: dict[str, Any] = {}
    try:
        t_wait = time.perf_counter()
        for msg in helper.work(tasks, cfg):
            if msg[0] == "docs":
                stats.wait_s += time.perf_counter() - t_wait
                _, idx, ids, texts, keys, fields, issues_d, read_s = msg
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
                pending = {
                    "idx": idx,
                    "keys": keys,
                    "values": values,
                    "issues": issues,
                    "n": len(texts),
                }
                del texts, docs
            else:
                _, idx, shard, write_s = msg
                stats.write_s += write_s
                assert pending and pending["idx"] == idx
                tc = time.perf_counter()
                _commit(root, plan, labs, state[idx], shard, pending)
                stats.commit_s += time.perf_counter() - tc
                stats.units += 1
                stats.docs += pending["n"]
                bar.update(pending["n"] if total else 1)
                pending = {}
                if throttle_s:
                    time.sleep(throttle_s)
                t_wait = time.perf_counter()
    finally:
        bar.close()
    stats.wall_s = time.perf_counter() - t0
    stats.cpu_main_s = time.process_time() - cpu0
    stats.cpu_helper_s = helper.cpu_s
    return stats


def _commit(
    root: Root,
    plan: Plan,
    labs: LabelerSet,
    st: UnitState,
    shard: WrittenShard | None,
    p: dict[str, Any],
) -> None:
    """Write the unit's sidecar, then its record (the commit): on object storage two PUTs in
    that order, so a record never names a sidecar that is not in the bucket."""
    idx, keys, values, issues = p["idx"], p["keys"], p["values"], p["issues"]
    names = labs.scorer_names
    n = int(keys.size)
    if st.status == "stale":  # keep the current columns, replace the stale ones
        rec = st.record
        assert rec is not None and rec.shard is not None
        old = _read_old_sidecar(root, rec.shard["sidecar"])
        if not np.array_equal(old["key"], keys):
            raise LabelError(
                f"shard {rec.shard['name']!r}: its documents no longer match the sidecar's keys "
                "(input changed since it was labelled); delete the output and relabel"
            )
        old_scores = {s: old["scores"][:, j] for j, s in enumerate(old["scorers"])}
        values.setdefault("domain", old["domain"])
        values.setdefault("tokens", old["tokens"])
        for s in names:
            if s not in values:
                values[s] = old_scores[s]
        shard = WrittenShard(**{**rec.shard})
        if "offset" in old:
            shard.offset, shard.length = old["offset"].tolist(), old["length"].tolist()
        issues = _merge_stale_issues(Issues.from_dict(rec.issues), issues, st.stale)
    if n == 0 or shard is None:
        write_record(
            root,
            Record(idx, _source(plan, idx), 0, None, None, labs.columns(), names, issues.to_dict()),
        )
        return
    if plan.format == "tar" and shard.offset is None:
        raise LabelError(f"shard {shard.name!r}: tar shard without byte offsets")
    labels = ShardLabels(
        key=keys,
        domain=np.asarray(values["domain"], dtype=np.int32),
        tokens=np.asarray(values["tokens"], dtype=np.int64),
        scores=(
            np.column_stack([np.asarray(values[s], dtype=np.float64) for s in names])
            if names
            else np.zeros((n, 0))
        ),
        offset=np.asarray(shard.offset, dtype=np.int64) if shard.offset is not None else None,
        length=np.asarray(shard.length, dtype=np.int64) if shard.length is not None else None,
    )
    side_sha = root.write_sidecar(shard.sidecar, labels, names)
    write_record(
        root,
        Record(
            idx,
            _source(plan, idx),
            n,
            shard_dict(shard),
            side_sha,
            labs.columns(),
            names,
            issues.to_dict(),
        ),
    )


def _column_of(kind: str) -> str | None:
    """``truncated[dclm]`` → ``dclm``; document-level kinds (no brackets) → ``None``."""
    return kind[kind.find("[") + 1 : -1] if kind.endswith("]") and "[" in kind else None


def _merge_stale_issues(old: Issues, new: Issues, stale: Sequence[str]) -> Issues:
    """The unit's issues after relabelling ``stale`` columns: document-level and current
    columns' issues from the record, the relabelled columns' from this run."""
    out = Issues()
    for k, v in old.counts.items():
        if _column_of(k) not in stale:
            out.counts[k] = v
            out.examples[k] = list(old.examples.get(k, []))
    for k, v in new.counts.items():
        if _column_of(k) in stale:
            out.counts[k] = v
            out.examples[k] = list(new.examples.get(k, []))
    return out


def _source(plan: Plan, idx: int) -> str:
    u = plan.units[idx]
    return f"{u.source}[{u.start}:{u.stop}]" if plan.mode == "new" else u.source


__all__ = [
    "LabelerSet",
    "Plan",
    "RankStats",
    "RunResult",
    "build_labelers",
    "make_plan",
    "run_label",
]
