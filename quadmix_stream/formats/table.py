"""Parquet and Arrow shards (one table format, two file layouts): writer and row readers.

Parquet shards are read one row group at a time, only the text, id and meta columns, only
requested rows turned into Python objects. Arrow IPC files (Hugging Face ``save_to_disk``) are
memory-mapped, zero-copy. Shards not written by us name their columns in the manifest's
``extra["columns"]`` (``text_column``, ``id_column``, ``meta_columns``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.formats.base import (
    ScannedShard,
    ShardFormat,
    ShardReader,
    ShardSpec,
    WriterBackend,
    as_text,
)
from quadmix_stream.formats.labels import LabelError
from quadmix_stream.storage.io import atomic_write_bytes


def docs_table(rows: Sequence[tuple[str, str, dict]], where: str = "") -> Any:
    """A pyarrow table with columns ``id``, ``text`` and one per meta field (absent → null)."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for _, _, meta in rows:
        names.update(dict.fromkeys(k for k in meta if k not in ("id", "text")))
    cols = {"id": pa.array([r[0] for r in rows], pa.string())}
    cols["text"] = pa.array([r[1] for r in rows], pa.string())
    for k in names:
        try:
            cols[k] = pa.array([r[2].get(k) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise UserError(
                f"{where}: meta field {k!r} has values of mixed types; Parquet/Arrow shards hold "
                f"one type per column ({e})"
            ) from None
    return pa.table(cols)


class TableBackend(WriterBackend):
    """Parquet (row groups of ``row_group_rows``) or Arrow IPC stream files, one per shard."""

    def __init__(self, root: Path, fmt: str, row_group_rows: int = 1000) -> None:
        self.root, self.fmt, self.row_group_rows = root, fmt, row_group_rows
        self.index = 0
        self.rows: list[tuple[str, str, dict[str, Any]]] = []

    def add(self, doc_id: str, text: str, meta: dict[str, Any]) -> None:
        self.rows.append((doc_id, text, meta))

    def end_shard(self) -> str:
        import pyarrow as pa

        name = f"shard.{self.index:05d}.{self.fmt}"
        table = docs_table(self.rows, name)
        sink = pa.BufferOutputStream()
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, sink, row_group_size=self.row_group_rows, compression="zstd")
        else:  # the layout of Hugging Face `save_to_disk` files: an Arrow IPC stream
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table, max_chunksize=self.row_group_rows)
        atomic_write_bytes(self.root / name, sink.getvalue().to_pybytes())
        self.index, self.rows = self.index + 1, []
        return name


def _parquet_cache_bytes() -> int:
    """The row-group cache's budget in bytes (``$QUADMIX_PARQUET_CACHE_MB``, default 1024)."""
    return int(float(os.environ.get("QUADMIX_PARQUET_CACHE_MB", "1024")) * (1 << 20))


class TableDocs:
    """Builds documents from columns: ``text``, ``id`` (or ``"<shard>:<row>"``), meta = the rest."""

    def __init__(
        self,
        schema_names: Sequence[str],
        shard: str,
        text_column: str,
        id_column: str | None,
        meta_columns: Sequence[str] | None,
    ) -> None:
        if text_column not in schema_names:
            raise LabelError(
                f"shard {shard!r}: no text column {text_column!r} (columns {list(schema_names)})"
            )
        self.shard, self.text = shard, text_column
        self.id = id_column if id_column in schema_names else None
        skip = {text_column, self.id}
        meta = [c for c in schema_names if c not in skip] if meta_columns is None else meta_columns
        missing = [c for c in meta if c not in schema_names]
        if missing:
            raise LabelError(f"shard {shard!r}: meta columns {missing} are not in the file")
        self.meta = list(meta)
        #: what to read: text, id, meta (in this order)
        self.columns = [text_column] + ([self.id] if self.id else []) + self.meta

    def doc(self, arrays: Sequence[Any], i: int, row: int) -> dict[str, Any]:
        """The document at ``i`` in ``arrays`` (read in :attr:`columns` order), shard row ``row``."""
        text = arrays[0][i].as_py()
        k = 1
        if self.id:
            doc_id, k = arrays[1][i].as_py(), 2
            doc_id = f"{self.shard}:{row}" if doc_id is None else str(doc_id)
        else:
            doc_id = f"{self.shard}:{row}"
        meta = {c: arrays[k + j][i].as_py() for j, c in enumerate(self.meta)}
        return {"id": doc_id, "text": as_text(text), "meta": meta}


class _TableReader(ShardReader):
    """Rows of one table file whose columns are named by the manifest's ``extra["columns"]``.

    Args:
        path: the file.
        text_column: column holding the text.
        id_column: column holding the id (absent or null: ``"<shard>:<row>"``).
        meta_columns: columns put in ``meta`` (default: all others).
        name: the shard's name in errors and default ids (default: the file name).
    """

    def __init__(
        self,
        path: Path,
        text_column: str = "text",
        id_column: str | None = "id",
        meta_columns: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = name or self.path.name
        self.docs = TableDocs(self._open(), self.name, text_column, id_column, meta_columns)
        self._ready()

    def _open(self) -> Sequence[str]:
        """Open the file; return its column names."""
        raise NotImplementedError

    def _ready(self) -> None:
        """Finish opening once ``self.docs`` knows the columns to read."""


class ParquetShardReader(_TableReader):
    """Rows of one Parquet file, read one row group at a time (decide before decode).

    Only the row groups holding requested rows are read, only the text, id and meta columns, and
    only requested rows are turned into Python objects. Row groups stay in a per-process LRU cache
    shared by all readers (``$QUADMIX_PARQUET_CACHE_MB``, default 1024 MiB of Arrow data), so a
    block's shuffled reads fetch each group once while the block's groups fit in it.

    Attributes:
        groups_read: indices of the row groups read from the file, in order (a group read again
            after being evicted appears twice); tests assert unselected groups are never read.
    """

    _cache: OrderedDict[tuple, tuple[list[Any], int]] = OrderedDict()
    _cache_used = 0

    def _open(self) -> Sequence[str]:
        import pyarrow.parquet as pq

        self.file = pq.ParquetFile(self.path)  # reads the footer only
        md = self.file.metadata
        sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.groups_read: list[int] = []
        return self.file.schema_arrow.names

    def _ready(self) -> None:
        st = self.path.stat()
        self._ident = (str(self.path.resolve()), st.st_size, st.st_mtime_ns, *self.docs.columns)

    @classmethod
    def clear_cache(cls) -> None:
        """Drop every cached row group of this process."""
        cls._cache.clear()
        cls._cache_used = 0

    def _group(self, g: int) -> list[Any]:
        cls = ParquetShardReader
        key = (*self._ident, g)
        hit = cls._cache.get(key)
        if hit is not None:
            cls._cache.move_to_end(key)
            return hit[0]
        table = self.file.read_row_group(g, columns=self.docs.columns)
        self.groups_read.append(g)
        arrays = [table.column(c).combine_chunks() for c in self.docs.columns]
        nbytes = int(table.nbytes)
        cls._cache[key] = (arrays, nbytes)
        cls._cache_used += nbytes
        budget = _parquet_cache_bytes()
        while cls._cache_used > budget and len(cls._cache) > 1:
            _, (_, freed) = cls._cache.popitem(last=False)
            cls._cache_used -= freed
        return arrays

    def read(self, row: int) -> dict[str, Any]:
        if not 0 <= row < self.starts[-1]:
            raise LabelError(
                f"{self.path.name}: row {row} is out of range ({self.starts[-1]} rows)"
            )
        self.rows_read += 1
        g = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.docs.doc(self._group(g), row - int(self.starts[g]), row)

    def close(self) -> None:
        self.file.close()


def open_arrow_table(path: Path) -> Any:
    """A zero-copy table over a memory-mapped Arrow IPC file or stream (HF ``save_to_disk``)."""
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()


class ArrowShardReader(_TableReader):
    """Rows of one Arrow IPC file (as Hugging Face ``datasets.save_to_disk`` writes them).

    The file is memory-mapped and its record batches are views into the map, so opening it reads
    only batch headers and a row's bytes are paged in when that row is read.
    """

    def _open(self) -> Sequence[str]:
        self.table = open_arrow_table(self.path)
        return self.table.schema.names

    def _ready(self) -> None:
        self.arrays = [self.table.column(c) for c in self.docs.columns]

    def read(self, row: int) -> dict[str, Any]:
        if not 0 <= row < self.table.num_rows:
            raise LabelError(
                f"{self.path.name}: row {row} is out of range ({self.table.num_rows} rows)"
            )
        self.rows_read += 1
        return self.docs.doc(self.arrays, row, row)

    def close(self) -> None:
        self.arrays, self.table = [], None


class TableFormat(ShardFormat):
    """Parquet or Arrow: whole shards (a row group is the unit of a Parquet read)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def writer(
        self, root: Path, fmt: str, compression: str | None, row_group_rows: int
    ) -> WriterBackend:
        return TableBackend(root, self.fmt, row_group_rows)

    def prepare(self) -> None:
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401

    def open_local(self, path: Path, spec: ShardSpec) -> ShardReader:
        cls = ParquetShardReader if self.fmt == "parquet" else ArrowShardReader
        return cls(path, **spec.extra.get("columns", {}), name=spec.name)

    def scan(self, path: Path, spec: ShardSpec, cache_dir: Path | None = None) -> ScannedShard:
        """Every row, one Parquet row group (or the whole Arrow table) at a time; only the
        columns of ``spec.extra["columns"]``, one conversion per column, not one per value."""
        names = table_columns(path, self.fmt)
        args = _scan_columns(spec)
        if args["id_column"] != "id" and args["id_column"] not in names:  # named: must exist
            raise LabelError(
                f"shard {spec.name!r}: no id column {args['id_column']!r} (columns {names})"
            )
        cols = TableDocs(names, spec.name, **args)
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            tables = (pf.read_row_group(g, columns=cols.columns) for g in range(pf.num_row_groups))
        else:
            tables = iter([open_arrow_table(path).select(cols.columns)])
        docs: list[dict[str, Any]] = []
        for table in tables:
            text, *rest = (table.column(c).to_pylist() for c in cols.columns)
            ids = rest.pop(0) if cols.id else [None] * len(text)
            for i, t in enumerate(text):
                doc_id = f"{spec.name}:{len(docs)}" if ids[i] is None else str(ids[i])
                meta = {c: v[i] for c, v in zip(cols.meta, rest, strict=True)}
                docs.append({"id": doc_id, "text": None if t is None else str(t), "meta": meta})
        return ScannedShard(docs)


def _scan_columns(spec: ShardSpec) -> dict[str, Any]:
    """:class:`TableDocs` arguments from ``spec.extra["columns"]`` (defaults: text, id, all)."""
    c = spec.extra.get("columns", {})
    return {
        "text_column": c.get("text_column", "text"),
        "id_column": c.get("id_column", "id"),
        "meta_columns": c.get("meta_columns"),
    }


def table_columns(path: Path, fmt: str) -> list[str]:
    """Column names of a Parquet (footer only) or Arrow file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return list(open_arrow_table(path).schema.names)


PARQUET = TableFormat("parquet")
ARROW = TableFormat("arrow")
