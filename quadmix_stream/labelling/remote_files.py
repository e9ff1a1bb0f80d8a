"""Raw input files on object storage (``--input "s3://bucket/raw/*.jsonl.gz"``): globbed with
the fsspec filesystem of a :class:`~quadmix_stream.storage.store.Store` and streamed (decompressed on
the fly), never copied whole."""

from __future__ import annotations

import io
import os
import threading
from typing import IO, Any

from quadmix_stream.formats.labels import LabelError
from quadmix_stream.storage.store import Store

_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def _store_for(url: str) -> Store:
    """One store per bucket and process (its client is reused by every file of the bucket)."""
    scheme, _, rest = url.partition("://")
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    with _STORES_LOCK:
        s = _STORES.get(key)
        if s is None or s._pid != os.getpid():  # a client does not survive a fork
            s = _STORES[key] = Store(key)
        return s


def remote_fs(url: str) -> Any:
    """The fsspec filesystem for ``url`` (endpoint and credentials as the stream finds them)."""
    return _store_for(url).fs


def expand_remote(pattern: str, suffixes: tuple[str, ...]) -> list[str]:
    """URLs matching a glob on object storage, sorted (a folder: its files with ``suffixes``).

    Raises:
        FileNotFoundError: nothing matches.
    """
    store = _store_for(pattern)
    fs = store.fs
    scheme = pattern.split("://", 1)[0]

    def full(p: str) -> str:
        return p if "://" in p else f"{scheme}://{p}"

    if any(c in pattern for c in "*?["):
        hits = store.retry(pattern, lambda: sorted(fs.glob(pattern)))
    else:
        path = fs._strip_protocol(pattern)
        hits = [path] if store.retry(pattern, lambda: fs.exists(path)) else []
    out: list[str] = []
    for h in hits:

        def isdir(h: str = h) -> bool:
            return bool(fs.isdir(h))

        def ls(h: str = h) -> list[str]:
            return sorted(fs.ls(h, detail=False))

        if store.retry(h, isdir):
            out.extend(full(x) for x in store.retry(h, ls) if x.endswith(suffixes))
        else:
            out.append(full(h))
    if not out:
        raise FileNotFoundError(f"input: no file matches {pattern!r}")
    return out


def remote_size(url: str) -> int:
    """Bytes of a remote file (retried)."""
    store = _store_for(url)
    return int(store.retry(url, lambda: store.fs.size(url)))


def open_remote(url: str, compression: str | None = "infer") -> IO[bytes]:
    """A binary stream over a remote file, decompressed on the fly (``.gz``, ``.zst``, ...
    inferred from the name); closing it closes the connection."""
    fs = remote_fs(url)
    try:
        f = fs.open(url, "rb", compression=compression)
    except FileNotFoundError:
        raise LabelError(f"input {url}: no such file") from None
    except OSError as e:
        raise LabelError(f"input {url}: cannot open ({e})") from None
    if compression is None:
        return f  # random access (Parquet): the file's own block cache
    # fsspec's readline reads a whole block per line; a buffer makes lines cheap
    return io.BufferedReader(f, 1 << 20)  # type: ignore[arg-type]


__all__ = ["expand_remote", "open_remote", "remote_fs", "remote_size"]
