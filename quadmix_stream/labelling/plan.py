"""Planning a labelling run: its units of work, the same on every rank and every re-run.

Raw input (``new`` mode) is cut into units of at most ``rows_per_shard`` rows of one file (each
becomes one new shard); existing shards (``sidecar`` mode, found by :mod:`.discover`) are one
unit each. The plan is saved in the output's work folder, so a re-run checks it resumes the same
job and a folder never mixes two datasets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quadmix_stream.labelling.discover import detect_shards
from quadmix_stream.labelling.inputs import InputSpec, Unit
from quadmix_stream.labelling.raw_files import count_rows, expand_paths, input_size, synthetic_docs
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.records import write_root_json
from quadmix_stream.labelling.roots import WORK_DIR, Root, as_root


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
        """What identifies the plan (saved, and compared by a re-run)."""
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


def plan_raw(spec: InputSpec, rows_per_shard: int, base: Path | None = None) -> list[Unit]:
    """Units of a raw-input run: per file, consecutive slices of ``rows_per_shard`` rows."""
    if spec.synthetic is not None:
        n = sum(1 for _ in synthetic_docs(spec.synthetic))
        if spec.limit is not None:
            n = min(n, spec.limit)
        return [
            Unit(i, "synthetic", s, min(s + rows_per_shard, n))
            for i, s in enumerate(range(0, n, rows_per_shard))
        ]
    units: list[Unit] = []
    for path in expand_paths(spec.paths, base):
        n, offsets = count_rows(path, rows_per_shard, spec.limit)
        for j, s in enumerate(range(0, n, rows_per_shard)):
            off = offsets[j] if offsets else -1
            units.append(Unit(len(units), str(path), s, min(s + rows_per_shard, n), off))
    return units


def plan_shards(root: Path | Root, fmt: str) -> tuple[str, list[Unit], dict[str, Any]]:
    """(format, units, extra) of a sidecar-mode run over the shards in ``root`` (a folder, or a
    dataset root, local or on object storage)."""
    fmt, names, extra = detect_shards(as_root(root), fmt)
    return fmt, [Unit(i, name) for i, name in enumerate(names)], extra


_OUR_FILES = ("shard.", "index.json", "quadmix.json")


def portable(ident: dict[str, Any]) -> dict[str, Any]:
    """A plan's identity with its input files named relative to the folder that holds them all.

    A dataset moved together with its inputs (a flow folder copied elsewhere, a cluster that
    mounts the same disk at another path), or inputs moved alone, is the same job; a renamed,
    added, removed or resized input file is not.
    """
    if ident.get("mode") != "new":
        return ident  # sidecar units are already named relative to the dataset
    paths = [str(i[0]) for i in ident["inputs"] if i[0] != "synthetic"]
    if not paths:
        return ident
    parts = [p.split("/") for p in paths]
    common = 0  # leading folder components every input shares
    while all(len(x) > common + 1 and x[common] == parts[0][common] for x in parts):
        common += 1
    names = {p: "/".join(x[common:]) for p, x in zip(paths, parts, strict=True)}
    out = dict(ident)
    out["inputs"] = [[names.get(str(i[0]), i[0]), *i[1:]] for i in ident["inputs"]]
    out["units"] = [{**u, "source": names.get(u["source"], u["source"])} for u in ident["units"]]
    return out


def check_out_dir(root: Path | Root, plan: Plan) -> None:
    """Refuse to mix runs: the folder must be new, or hold a run of the same plan."""
    root = as_root(root)
    saved = f"{WORK_DIR}/plan.json"
    data = root.read_bytes(saved)
    if data is not None:
        old = json.loads(data)
        if portable(old) != portable(json.loads(json.dumps(plan.ident()))):
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


__all__ = ["Plan", "check_out_dir", "make_plan", "plan_raw", "plan_shards", "portable"]
