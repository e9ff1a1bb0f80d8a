"""Commit records (one per unit): what a re-run reads to know each unit's state.

A unit is committed when its record is written (atomically, after its payload shard and
sidecar): the record names the shard and sidecar with their hashes and the fingerprint of the
labeller behind each column. A re-run reads the records to skip finished units, and marks a
column *stale* where its labeller's fingerprint changed: only that column is recomputed, never
mixed. The merge (:mod:`.merge`) builds the manifest from the records.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quadmix_stream.labelling.outputs import WrittenShard
from quadmix_stream.labelling.roots import WORK_DIR, Root, as_root
from quadmix_stream.storage.io import atomic_write_text, is_stale_tmp


@dataclass
class Record:
    """What one committed unit holds (JSON in ``.quadmix-label/done/unit-NNNNN.json``)."""

    unit: int
    source: str
    rows: int
    shard: dict[str, Any] | None  # WrittenShard as a dict (without tar offsets), None if empty
    sidecar_sha256: str | None
    columns: dict[str, str]  # column → labeller fingerprint
    scorers: list[str]  # score column order in the sidecar
    issues: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def work_dir(root: Path) -> Path:
    return root / WORK_DIR


def record_name(unit: int) -> str:
    """A unit's commit record, relative to the dataset root."""
    return f"{WORK_DIR}/done/unit-{unit:05d}.json"


def record_path(root: Path, unit: int) -> Path:
    return root / record_name(unit)


def write_record(root: Path | Root, rec: Record) -> None:
    """Commit a unit (atomic: a local rename, or one PUT on object storage)."""
    as_root(root).write_bytes(record_name(rec.unit), rec.to_json().encode("utf-8"))


def read_record(root: Path | Root, unit: int) -> Record | None:
    data = as_root(root).read_bytes(record_name(unit))
    if data is None:
        return None
    try:
        return Record(**json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return None  # a damaged record means: redo the unit


def shard_dict(s: WrittenShard) -> dict[str, Any]:
    d = asdict(s)
    d.pop("offset", None)
    d.pop("length", None)
    return d


@dataclass
class UnitState:
    """``done`` (nothing to do), ``stale`` (columns to recompute) or ``pending`` (all of it)."""

    unit: int
    status: str
    stale: list[str] = field(default_factory=list)
    record: Record | None = None
    why: str = ""


def unit_state(
    root: Path | Root, unit: int, current: dict[str, str], scorers: list[str]
) -> UnitState:
    """Compare a unit's record (and its files) with the current labellers' fingerprints."""
    root = as_root(root)
    rec = read_record(root, unit)
    if rec is None:
        return UnitState(unit, "pending")
    if rec.shard is not None:
        # names read back from a file: they must stay in the dataset folder (a sidecar is
        # written at the recorded name when a stale column is recomputed)
        where = f"{root.where(record_name(unit))}: shard"
        shard, side = rec.shard["name"], rec.shard["sidecar"]
        root.check_name(shard, f"{where}.name")
        root.check_name(side, f"{where}.sidecar")
        if root.size(shard) != rec.shard["bytes"]:
            return UnitState(unit, "pending", why=f"{_base(shard)} missing or changed")
        if root.sha256(side) != rec.sidecar_sha256:
            return UnitState(unit, "pending", why=f"{_base(side)} missing or changed")
    stale = [c for c, fp in current.items() if rec.columns.get(c) != fp]
    if rec.rows == 0:
        stale = []  # nothing to relabel in an empty unit
    if stale:
        return UnitState(unit, "stale", stale, rec)
    if rec.scorers != scorers and rec.rows:
        return UnitState(unit, "stale", [], rec, why="score column order changed")
    return UnitState(unit, "done", [], rec)


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def clean_tmp(root: Path | Root) -> int:
    """Remove temp files a killed run left (on object storage, the scratch folders of killed
    processes: PUTs leave no temp objects).

    In the dataset folder, which may hold the user's own files, only our temporary names go
    (``.NAME.<random>.qms.tmp``, :func:`~quadmix_stream.storage.io.is_tmp_name`); in the work
    folder, which holds only ours, any hidden ``.*.tmp`` file or folder (older names too)."""
    import shutil

    root = as_root(root)
    if root.remote:
        root.prepare()
        return 0
    root = root.path  # type: ignore[union-attr]
    work = work_dir(root)
    n = 0
    for d, own in ((root, False), (work, True), (work / "done", True), (work / "tmp", True)):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if is_stale_tmp(p.name, own_folder=own):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                n += 1
    return n


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8")


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, _json_bytes(obj).decode("utf-8"))


def write_root_json(root: Path | Root, name: str, obj: Any) -> None:
    """Write a JSON work file (``.quadmix-label/…``) of a local or remote dataset root."""
    as_root(root).write_bytes(name, _json_bytes(obj))
