"""Pool-wide passes computed once per node and shared through files (docs/design.md, "Pool-wide work, once per node").

Some inputs of the stream need every shard's labels: each domain's size, the bounded label
sample that Eq. 2's rank tables are built on, and an epoch's per-shard item totals (for
positions and balancing). None of them may be recomputed by every rank and worker, and no
process may hold the pool to compute them. :func:`cooperative` splits such a pass into chunks of
shards; every process that needs the result works through the chunks not yet done (a chunk is
claimed with an ``flock``, which the kernel releases if its holder dies), waits for the chunks
others hold, and combines the parts. Files are written atomically, so a killed process leaves
either nothing or a finished part, never a half-written one taken for a finished one. Results are
small (per shard or per domain), so every process can keep the combined one.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quadmix_stream.storage.io import atomic_write_bytes, read_npz

ChunkFn = Callable[[int], dict[str, np.ndarray]]
CombineFn = Callable[[list[dict[str, np.ndarray]]], dict[str, np.ndarray]]


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` written by :func:`save_arrays` (never unpickles)."""
    try:
        return read_npz(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # a cache file damaged outside our atomic writes
        raise OSError(f"cache file {path} is unreadable ({e}); delete it to recompute") from None


def result_path(folder: Path, name: str) -> Path:
    """Where :func:`cooperative` keeps the combined result ``name`` (it exists once final)."""
    return folder / f"{name}.npz"


def cooperative(
    folder: Path,
    name: str,
    n_chunks: int,
    compute: ChunkFn,
    combine: CombineFn,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The result of a chunked pass, computed at most once per chunk by all processes together.

    Args:
        folder: cache folder (node-local, or shared by nodes that share the pass).
        name: identity of the result (everything that changes it must be in the name).
        n_chunks: number of independent chunks.
        compute: chunk index → arrays.
        combine: the parts, in chunk order → the result.
        on_progress: called with (chunks done here, n_chunks) after each chunk this process computed.
    """
    final = result_path(folder, name)
    if final.exists():
        return load_arrays(final)  # (the caller releases what it frees)
    parts = folder / f"{name}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    # Start at a different chunk in each process so that they rarely contend for one lock.
    start = (os.getpid() * 2654435761) % max(n_chunks, 1)
    order = [(start + i) % n_chunks for i in range(n_chunks)]
    done_here = 0
    for blocking in (False, True):
        for i in order:
            if final.exists():  # another process finished (and may have removed the parts)
                return load_arrays(final)
            part = parts / f"{i}.npz"
            if part.exists():
                continue
            parts.mkdir(parents=True, exist_ok=True)
            try:
                fh = open(parts / f"{i}.lock", "a")  # noqa: SIM115 (closed by the with below)
            except FileNotFoundError:  # removed by a process that wrote `final` meanwhile
                continue
            with fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    continue  # another process holds it: take the next one, wait in pass 2
                if not part.exists() and not final.exists():  # (its holder may have died)
                    save_arrays(part, compute(i))
                    done_here += 1
                    if on_progress is not None:
                        on_progress(done_here, n_chunks)
    try:
        result = combine([load_arrays(parts / f"{i}.npz") for i in range(n_chunks)])
    except FileNotFoundError:  # another process finished first and removed the parts
        if final.exists():
            return load_arrays(final)
        raise
    if not final.exists():
        save_arrays(final, result)
        shutil.rmtree(parts, ignore_errors=True)  # the result is final: the parts are clutter
    release_free_memory()  # a pass leaves freed heap behind; a long-lived worker should not keep it
    return result


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Throttle:
    """Calls ``fn(message)`` at most every ``seconds`` (progress lines on long passes)."""

    def __init__(self, fn: Callable[[str], None], seconds: float = 5.0) -> None:
        self.fn, self.seconds, self.last = fn, seconds, time.monotonic()

    def __call__(self, message: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.seconds:
            self.last = now
            self.fn(message)
