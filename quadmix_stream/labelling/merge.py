"""The merge: the manifest built from every unit's record, written last (rank 0).

Once every unit is committed with current fingerprints, the merge writes the MDS ``index.json``
of new shards if needed, the σ tables over the whole pool, and the manifest, last: a dataset
whose manifest exists has every sidecar it names, whole and with the recorded hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.formats.labels import LabelError, Manifest, ScorerInfo, ShardEntry
from quadmix_stream.labelling.discover import shard_columns
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.labeler_set import LabelerSet
from quadmix_stream.labelling.outputs import write_mds_index
from quadmix_stream.labelling.plan import Plan
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.records import UnitState, unit_state
from quadmix_stream.labelling.roots import LocalRoot, Root, as_root
from quadmix_stream.mixing.sampling import build_sigma_tables


def manifest_extra(recipe: Recipe, root: Root, plan: Plan, labs: LabelerSet) -> dict[str, Any]:
    """The manifest's ``extra``: how the dataset was labelled, and how the loader reads shards
    not written by us (Parquet/Arrow columns, foreign tar members)."""
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
    return extra


def merge(
    root: Path | Root,
    fmt: str,
    mode: str,
    n_units: int,
    domains: list[str],
    scorers: list[ScorerInfo],
    current: dict[str, str],
    extra: dict[str, Any],
) -> tuple[Manifest, Issues]:
    """Build and save the manifest from every unit's record (rank 0, after all ranks finished).

    The manifest is written last (after the MDS ``index.json`` of new shards): a dataset whose
    manifest exists has every sidecar it names, whole and with the recorded hash. On object
    storage the units are checked and their sidecars read :data:`REMOTE_THREADS` at a time.

    Raises :class:`LabelError` when a unit is unfinished or has a stale column.
    """
    root = as_root(root)
    names = [s.name for s in scorers]
    entries: list[ShardEntry] = []
    mds_entries: list[dict] = []
    issues = Issues()
    scores, tokens, keys, where = [], [], [], []
    root.refresh()  # every rank has committed: list sizes anew

    def load(u: int) -> tuple[UnitState, Any]:
        st = unit_state(root, u, current, names)
        if st.status != "done":
            what = f"stale columns {st.stale}" if st.status == "stale" else "not finished"
            raise LabelError(f"unit {u}: {what} {st.why}".strip())
        rec = st.record
        assert rec is not None
        if rec.shard is None or rec.rows == 0:
            return st, None
        s = rec.shard
        return st, root.read_sidecar(s["sidecar"], s["name"], names, rec.sidecar_sha256)

    for st, lab in root.map(load, range(n_units)):
        rec = st.record
        assert rec is not None
        issues.update(rec.issues)
        if lab is None:
            continue
        s = rec.shard
        assert s is not None
        if lab.rows != rec.rows:
            raise LabelError(f"shard {s['name']!r}: sidecar has {lab.rows} rows, record {rec.rows}")
        entries.append(
            ShardEntry(
                s["name"], s["sidecar"], rec.rows, s["sha256"], rec.sidecar_sha256, s["bytes"]
            )
        )
        if s.get("mds_entry"):
            mds_entries.append(s["mds_entry"])
        scores.append(lab.scores)
        tokens.append(lab.tokens)
        keys.append(lab.key)
        where.append(s["name"])
    if not entries:
        raise LabelError(f"{root.url}: no documents were labelled (every unit is empty)")
    sc = np.concatenate(scores)
    tk = np.concatenate(tokens)
    ky = np.concatenate(keys)
    _, first = np.unique(ky, return_index=True)
    if first.size < ky.size:  # the same document key twice: counted, rows kept
        starts = np.cumsum([0] + [len(k) for k in keys])
        for r in np.setdiff1d(np.arange(ky.size), first):
            sh = int(np.searchsorted(starts, r, side="right") - 1)
            issues.add("duplicate_id", f"{where[sh]} row {int(r - starts[sh])}")
    sigma = build_sigma_tables(sc, tk, scorers)
    if mode == "new" and fmt == "mds":
        write_mds_index(root, mds_entries)
    extra = dict(extra)
    extra.setdefault("labelling", {})["issues"] = issues.to_dict()
    manifest = Manifest(fmt, list(domains), list(scorers), entries, sigma, extra)
    root.save_manifest(manifest)  # last: a folder without a manifest is an unfinished dataset
    return manifest, issues


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


__all__ = ["manifest_extra", "merge"]
