"""Which existing shards a dataset folder or prefix holds, in dataset order (sidecar mode).

A labelled dataset's manifest lists them; else an MDS ``index.json``; else the tar, JSONL.zst,
Parquet (subfolders included) or Arrow files found (``save_to_disk``: in ``state.json`` order).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from quadmix_stream.formats.labels import MANIFEST_NAME, Manifest
from quadmix_stream.formats.mds import mds_index
from quadmix_stream.formats.table import table_columns
from quadmix_stream.labelling.inputs import TAR_SUFFIXES
from quadmix_stream.labelling.roots import WORK_DIR, RemoteRoot, Root


def detect_shards(root: Root, fmt: str = "auto") -> tuple[str, list[str], dict[str, Any]]:
    """(format, shard names in dataset order, extra) of a folder or prefix of existing shards.

    ``extra`` carries a labelled dataset's manifest ``extra`` (kept on relabelling) and, for MDS,
    ``mds_index`` (name → index.json entry). A prefix on object storage is listed once.
    """
    top, deep, where = _listing(root)
    extra: dict[str, Any] = {}
    if MANIFEST_NAME in top:
        m = Manifest.load(root.store)  # validated: shard names stay inside root
        if fmt in ("auto", m.format):
            extra["manifest_extra"] = m.extra
            if m.format == "mds":
                extra["mds_index"] = mds_index(root.store)
            return m.format, [s.name for s in m.shards], extra
    if fmt in ("auto", "mds") and "index.json" in top:
        entries = mds_index(root.store)  # validated: every basename stays inside root
        # one name per shard, in index order: the compressed file when there is one
        names = list(
            dict.fromkeys(
                (s.get("zip_data") or s["raw_data"])["basename"] for s in entries.values()
            )
        )
        extra["mds_index"] = entries
        return "mds", names, extra
    tars = [n for n in top if n.endswith(TAR_SUFFIXES)]
    if fmt in ("auto", "tar") and tars:
        return "tar", tars, extra
    jsonl = [n for n in top if n.endswith(".jsonl.zst")]
    if fmt in ("auto", "jsonl") and jsonl:
        return "jsonl", jsonl, extra
    parquet = [n for n in deep() if n.endswith(".parquet")]
    if fmt in ("auto", "parquet") and parquet:
        return "parquet", parquet, extra
    arrow = _arrow_files(root, top)
    if fmt in ("auto", "arrow") and arrow:
        return "arrow", arrow, extra
    raise FileNotFoundError(
        f"input.shards: no "
        f"{fmt if fmt != 'auto' else 'MDS (index.json), .tar(.gz), .jsonl.zst, .parquet or .arrow'} "
        f"shards {where}"
    )


def _listing(root: Root) -> tuple[list[str], Callable[[], list[str]], str]:
    """(sorted names directly in the root, sorted names at any depth (asked only for Parquet),
    where the shards were looked for); a prefix's names exclude the run's work files."""
    if isinstance(root, RemoteRoot):
        root.refresh()
        names = [n for n in root.names() if not n.startswith(WORK_DIR + "/")]
        if not names:
            raise FileNotFoundError(f"input.shards: nothing under {root.url}")
        return [n for n in names if "/" not in n], lambda: names, f"under {root.url}"
    path = root.path
    if not path.is_dir():
        raise FileNotFoundError(f"input.shards: {path} is not a folder")
    top = sorted(p.name for p in path.iterdir())
    return (
        top,
        lambda: sorted(p.relative_to(path).as_posix() for p in path.rglob("*")),
        f"in {path}",
    )


def _arrow_files(root: Root, top: list[str]) -> list[str]:
    """A ``save_to_disk`` folder's Arrow files in dataset order (its ``state.json``), else sorted."""
    if "state.json" in top:
        files = json.loads(root.read_bytes("state.json") or b"{}").get("_data_files") or []
        names = [f["filename"] for f in files if isinstance(f, dict) and "filename" in f]
        if names:
            return names
    return [n for n in top if n.endswith(".arrow")]


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


__all__ = ["detect_shards", "shard_columns"]
