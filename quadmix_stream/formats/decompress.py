"""Decompressed copies of compressed shards in the node's cache, keyed by the shard's content hash.

Formats that read rows by offset need an uncompressed file to seek in: MDS ``.zstd`` shards and
gzip-compressed tar shards are decompressed once per node (like mosaicml-streaming does), so
reading a few rows of a shard does not pay for decompressing all of it every epoch.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import zstandard

from quadmix_stream.storage.io import atomic_write_bytes, open_tmp, sha256_file


def zstd_copy(path: Path, sha256: str, cache_dir: Path) -> Path:
    """A decompressed copy of a zstd shard in the cache, keyed by the shard's content hash.

    Written to a temp file and renamed, so concurrent workers never read a half-written copy.
    """
    out = cache_dir / f"{sha256[:24]}-{path.name.removesuffix('.zstd')}"
    if not out.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as src:
            data = zstandard.ZstdDecompressor().stream_reader(src).read()
        atomic_write_bytes(out, data)
    return out


def gunzip_copy(path: Path, sha256: str, cache_dir: Path) -> Path:
    """A decompressed copy of a gzip-compressed tar shard in the cache (see :func:`zstd_copy`)."""
    base = path.name.removesuffix(".gz").removesuffix(".tgz")
    out = cache_dir / f"{(sha256 or sha256_file(path))[:24]}-{base}"
    if not out.exists():  # to a temp file, then renamed: workers never see a partial copy
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = open_tmp(out)
        try:
            with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out
