"""The I/O side of a rank: read units, write payload shards, hash them, in a helper process.

While the rank's main process runs the models on unit *i*, a reader process writes unit *i*'s
payload shard and reads + parses unit *i+1*, so reading, JSON parsing, shard encoding and hashing
overlap with inference. For each unit it sends two messages, in order:

* ``("docs", index, ids, texts, keys, digests, fields, issues, seconds)``: what the labellers
  and the sidecar need;
* ``("shard", index, WrittenShard | None, seconds)``: the payload is on disk (or, in place, hashed).

With ``io_workers: 0`` the same producer runs inline (no process), which gives identical results.
On object storage (:class:`~.roots.RemoteRoot`) the producer fetches each existing shard into
a private local folder, reads and hashes it there and deletes it; a new shard is written there,
uploaded (one PUT) and deleted before its ``shard`` message: the payload is in the bucket before
the unit's sidecar and record are committed.
The helper dies with its parent (``PR_SET_PDEATHSIG``), so a killed run leaves no writer behind.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.formats.labels import LabelError
from quadmix_stream.labelling.inputs import InputSpec, Unit
from quadmix_stream.labelling.outputs import WrittenShard, existing_shard, write_shard
from quadmix_stream.labelling.read_raw import LineCursor, read_raw_unit
from quadmix_stream.labelling.read_shards import read_shard_unit
from quadmix_stream.labelling.roots import RemoteRoot, as_root
from quadmix_stream.mixing.hashing import doc_key, text_digests


@dataclass
class IOConfig:
    """Everything the producer needs (picklable: it crosses into the helper process)."""

    mode: str  # "new" | "sidecar"
    root: str  # a folder or a URL
    spec: InputSpec
    format: str
    compression: str | None
    need_fields: bool
    mds_entries: dict[str, dict] | None = None


@dataclass(frozen=True)
class Task:
    unit: Unit
    write_payload: bool  # False: the payload exists (stale-column relabel) or is labelled in place


def produce(tasks: list[Task], cfg: IOConfig) -> Iterator[tuple]:
    """Messages for ``tasks`` in order (see the module docstring)."""
    where = as_root(cfg.root)
    remote = where if isinstance(where, RemoteRoot) else None
    # the folder the shards are read from / written to: the dataset's, or a local stage
    root = remote.stage_dir if remote is not None else Path(cfg.root)
    cursors: dict[str, LineCursor] = {}
    try:
        for task in tasks:
            u = task.unit
            t0 = time.perf_counter()
            offsets, digests = None, None
            if cfg.mode == "new":
                docs, issues = read_raw_unit(u, cfg.spec, cursors)
            else:
                if remote is not None:
                    remote.stage(u.source)
                gunzip = remote.proc_dir / "gunzip" if remote is not None else None
                docs, issues, offsets, digests = read_shard_unit(
                    root, cfg.format, u.source, cfg.spec, cfg.mds_entries, cfg.need_fields, gunzip
                )
                if gunzip is not None:
                    shutil.rmtree(gunzip, ignore_errors=True)
            ids = [d["id"] for d in docs]
            texts = [d["text"] for d in docs]
            keys = np.fromiter((doc_key(i) for i in ids), dtype=np.uint64, count=len(ids))
            if digests is None:  # the shard is written from these texts
                digests = text_digests(texts)
            fields = (
                [{k: v for k, v in d.items() if k != "text"} for d in docs]
                if cfg.need_fields
                else None
            )
            t1 = time.perf_counter()
            yield ("docs", u.index, ids, texts, keys, digests, fields, issues.to_dict(), t1 - t0)
            shard: WrittenShard | None
            if cfg.mode == "sidecar":
                shard = existing_shard(root, u.source, offsets)
                if remote is not None:
                    remote.unstage(u.source)
            elif task.write_payload:
                if remote is not None:
                    root.mkdir(parents=True, exist_ok=True)
                shard = write_shard(root, cfg.format, u.index, docs, cfg.compression)
                if remote is not None and shard is not None:
                    remote.upload_staged(shard.name)  # in the bucket before its commit
            else:
                shard = None  # the pipeline takes it from the unit's existing record
            del docs
            yield ("shard", u.index, shard, time.perf_counter() - t1)
    finally:
        for c in cursors.values():
            c.close()
        if remote is not None:
            remote.close()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _serve(inbox: Any, outbox: Any, parent: int) -> None:
    """The helper's loop: ``("plan", fn, args)`` → ``("plan", result)``; ``("work", tasks, cfg)``
    → the producer's messages then ``("end",)``; ``("stop",)`` → exit."""
    _die_with_parent()
    if os.getppid() != parent:  # parent died before prctl took effect
        return
    while True:
        req = inbox.get()
        try:
            if req[0] == "stop":
                return
            if req[0] == "call":
                outbox.put(("result", req[1](*req[2])))
                continue
            cpu = time.process_time()
            for msg in produce(req[1], req[2]):
                outbox.put(msg)
            outbox.put(("end", time.process_time() - cpu))
        except BaseException as e:  # report, then exit: the parent raises it with context
            detail = f"{e}" if isinstance(e, ValueError | OSError) else traceback.format_exc()
            outbox.put(("error", detail))
            return


class IOHelper:
    """The rank's I/O helper: a spawned process (``workers=1``) or inline calls (``0``).

    Started early, it imports its modules while the main process trains or loads models; it can
    then compute the plan (:meth:`call_async`) and stream a list of tasks (:meth:`work`).
    """

    def __init__(self, workers: int = 1) -> None:
        self.proc = None
        self._pending: tuple | None = None
        self.cpu_s = 0.0
        if workers > 0:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            self.inbox, self.outbox = ctx.Queue(), ctx.Queue(maxsize=2)
            self.proc = ctx.Process(
                target=_serve, args=(self.inbox, self.outbox, os.getpid()), daemon=True
            )
            self.proc.start()

    def _get(self) -> tuple:
        assert self.proc is not None
        while True:
            try:
                msg = self.outbox.get(timeout=2.0)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise LabelError(
                        f"labelling I/O helper process died (exit code {self.proc.exitcode})"
                    ) from None
                continue
            if msg[0] == "error":
                raise LabelError(msg[1])
            return msg

    def call_async(self, fn: Any, *args: Any) -> None:
        """Start ``fn(*args)`` in the helper (a picklable module-level function)."""
        if self.proc is None:
            self._pending = (fn, args)
        else:
            self.inbox.put(("call", fn, args))

    def result(self) -> Any:
        """The result of the last :meth:`call_async` (raises its error)."""
        if self.proc is None:
            assert self._pending is not None
            fn, args = self._pending
            self._pending = None
            return fn(*args)
        return self._get()[1]

    def work(self, tasks: list[Task], cfg: IOConfig) -> Iterator[tuple]:
        """The producer's messages for ``tasks`` (see the module docstring); afterwards
        :attr:`cpu_s` is the helper's CPU time for them (0 inline: it is the caller's)."""
        self.cpu_s = 0.0
        if self.proc is None:
            yield from produce(tasks, cfg)
            return
        self.inbox.put(("work", tasks, cfg))
        while True:
            msg = self._get()
            if msg[0] == "end":
                self.cpu_s = float(msg[1])
                return
            yield msg

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.inbox.put(("stop",))
                self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(timeout=5)
            self.proc = None
