"""Which existing shards a dataset folder or prefix holds, in dataset order (sidecar mode).

A labelled dataset's manifest lists them; else an MDS ``index.json``; else the tar, JSONL.zst,
Parquet (subfolders included) or Arrow files found (``save_to_disk``: in ``state.json`` order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quadmix_stream.formats.mds import mds_index
from quadmix_stream.formats.table import table_columns
from quadmix_stream.labelling.inputs import TAR_SUFFIXES
from quadmix_stream.labelling.remote import WORK_DIR, RemoteRoot, Root
from quadmix_stream.labels import MANIFEST_NAME, Manifest


def detect_shards(root: Path, fmt: str = "auto") -> tuple[str, list[str], dict[str, Any]]:
    """(format, shard names in dataset order, extra) of a folder of existing shards.

    ``extra`` carries a labelled dataset's manifest ``extra`` (kept on relabelling) and, for MDS,
    ``mds_index`` (name → index.json entry).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"input.shards: {root} is not a folder")
    extra: dict[str, Any] = {}
    if (root / MANIFEST_NAME).exists():
        m = Manifest.load(root)  # validated: shard names stay inside root
        if fmt in ("auto", m.format):
            extra["manifest_extra"] = m.extra
            names = [s.name for s in m.shards]
            if m.format == "mds":
                extra["mds_index"] = _mds_entries(root)
            return m.format, names, extra
    if fmt in ("auto", "mds") and (root / "index.json").exists():
        entries = _mds_entries(root)  # validated: every basename stays inside root
        # one name per shard, in index order: the compressed file when there is one
        names = list(
            dict.fromkeys(
                (s.get("zip_data") or s["raw_data"])["basename"] for s in entries.values()
            )
        )
        extra["mds_index"] = entries
        return "mds", names, extra
    tars = sorted(p.name for p in root.iterdir() if p.name.endswith(TAR_SUFFIXES))
    if fmt in ("auto", "tar") and tars:
        return "tar", tars, extra
    jsonl = sorted(p.name for p in root.iterdir() if p.name.endswith(".jsonl.zst"))
    if fmt in ("auto", "jsonl") and jsonl:
        return "jsonl", jsonl, extra
    parquet = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    if fmt in ("auto", "parquet") and parquet:
        return "parquet", parquet, extra
    arrow = _arrow_files(root)
    if fmt in ("auto", "arrow") and arrow:
        return "arrow", arrow, extra
    raise FileNotFoundError(
        f"input.shards: no "
        f"{fmt if fmt != 'auto' else 'MDS (index.json), .tar(.gz), .jsonl.zst, .parquet or .arrow'} "
        f"shards in {root}"
    )


def _arrow_files(root: Path) -> list[str]:
    """A ``save_to_disk`` folder's Arrow files in dataset order (its ``state.json``), else sorted."""
    state = root / "state.json"
    if state.exists():
        files = json.loads(state.read_text()).get("_data_files") or []
        names = [f["filename"] for f in files if isinstance(f, dict) and "filename" in f]
        if names:
            return names
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".arrow"))


def _mds_entries(root: Path) -> dict[str, dict]:
    return mds_index(root)


def detect_remote_shards(
    root: RemoteRoot, fmt: str = "auto"
) -> tuple[str, list[str], dict[str, Any]]:
    """:func:`~quadmix_stream.labelling.inputs.detect_shards` for a prefix on object storage:
    the same formats, order and ``extra``, from one listing."""
    root.refresh()
    names = [n for n in root.names() if not n.startswith(WORK_DIR + "/")]
    if not names:
        raise FileNotFoundError(f"input.shards: nothing under {root.url}")
    top = [n for n in names if "/" not in n]
    extra: dict[str, Any] = {}
    if MANIFEST_NAME in top:
        m = Manifest.load(root.store)  # validated: shard names stay inside the prefix
        if fmt in ("auto", m.format):
            extra["manifest_extra"] = m.extra
            if m.format == "mds":
                extra["mds_index"] = mds_index(root.store)
            return m.format, [s.name for s in m.shards], extra
    if fmt in ("auto", "mds") and "index.json" in top:
        entries = mds_index(root.store)
        shards = list(
            dict.fromkeys(
                (s.get("zip_data") or s["raw_data"])["basename"] for s in entries.values()
            )
        )
        extra["mds_index"] = entries
        return "mds", shards, extra
    tars = sorted(n for n in top if n.endswith(TAR_SUFFIXES))
    if fmt in ("auto", "tar") and tars:
        return "tar", tars, extra
    jsonl = sorted(n for n in top if n.endswith(".jsonl.zst"))
    if fmt in ("auto", "jsonl") and jsonl:
        return "jsonl", jsonl, extra
    parquet = sorted(n for n in names if n.endswith(".parquet"))
    if fmt in ("auto", "parquet") and parquet:
        return "parquet", parquet, extra
    arrow = _remote_arrow_files(root, top)
    if fmt in ("auto", "arrow") and arrow:
        return "arrow", arrow, extra
    raise FileNotFoundError(
        f"input.shards: no "
        f"{fmt if fmt != 'auto' else 'MDS (index.json), .tar(.gz), .jsonl.zst, .parquet or .arrow'} "
        f"shards under {root.url}"
    )


def _remote_arrow_files(root: RemoteRoot, top: list[str]) -> list[str]:
    if "state.json" in top:
        data = root.read_bytes("state.json") or b"{}"
        files = json.loads(data).get("_data_files") or []
        names = [f["filename"] for f in files if isinstance(f, dict) and "filename" in f]
        if names:
            return names
    return sorted(n for n in top if n.endswith(".arrow"))


def shard_columns(root: Root, name: str, fmt: str) -> list[str]:
    """Column names of a Parquet (footer only) or Arrow shard of a local or remote root."""
    if not root.remote:
        return table_columns(root.path / name, fmt)  # type: ignore[union-attr]
    assert isinstance(root, RemoteRoot)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with root.store.fs.open(root.where(name), "rb") as f:
            return list(pq.ParquetFile(f).schema_arrow.names)
    folder = root.stage(name)
    try:
        return table_columns(folder / name, fmt)
    finally:
        root.unstage(name)


__all__ = ["detect_remote_shards", "detect_shards", "shard_columns"]
