"""JSONL.zst shards: one JSON document per line, zstd-compressed.

The reader decompresses a shard once and parses only the lines that are asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import zstandard

from quadmix_stream.formats.base import (
    ScannedShard,
    ShardFormat,
    ShardReader,
    ShardSpec,
    WriterBackend,
    split_doc,
)
from quadmix_stream.formats.labels import LabelError
from quadmix_stream.storage.io import atomic_write_bytes


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard.{index:05d}.jsonl.zst"


class JsonlBackend(WriterBackend):
    """One ``{"id", "text", **meta}`` line per document, compressed at zstd ``level``."""

    def __init__(self, root: Path, level: int = 3) -> None:
        self.root, self.level, self.index = root, level, 0
        self.lines: list[str] = []

    def add(self, doc_id: str, text: str, meta: dict[str, Any]) -> None:
        self.lines.append(json.dumps({"id": doc_id, "text": text, **meta}, ensure_ascii=False))

    def end_shard(self) -> str:
        name = shard_name(self.index)
        data = ("\n".join(self.lines) + "\n").encode("utf-8")
        atomic_write_bytes(
            self.root / name, zstandard.ZstdCompressor(level=self.level).compress(data)
        )
        self.index, self.lines = self.index + 1, []
        return name


class JsonlShardReader(ShardReader):
    """Decompresses the shard once and parses only the lines that are asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()  # noqa: SIM115
        self.lines = data.split(b"\n")
        if self.lines and self.lines[-1] == b"":
            self.lines.pop()
        self.path = path

    def read(self, row: int) -> dict[str, Any]:
        self.rows_read += 1
        try:
            obj = json.loads(self.lines[row])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LabelError(f"{self.path.name}: row {row} is not valid JSON ({e})") from None
        doc_id, text, meta = split_doc(obj)
        return {"id": doc_id, "text": text, "meta": meta}


class JsonlFormat(ShardFormat):
    """JSONL.zst: whole shards (compressed lines have no byte offsets to seek to)."""

    def writer(
        self, root: Path, fmt: str, compression: str | None, row_group_rows: int
    ) -> WriterBackend:
        return JsonlBackend(root)

    def open_local(self, path: Path, spec: ShardSpec) -> ShardReader:
        return JsonlShardReader(path)

    def scan(self, path: Path, spec: ShardSpec, cache_dir: Path | None = None) -> ScannedShard:
        """Every line of the shard, decompressed once."""
        reader = JsonlShardReader(path)
        return ScannedShard([reader.read(row) for row in range(len(reader.lines))])


FORMAT = JsonlFormat()
