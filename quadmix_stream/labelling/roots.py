"""Where a labelling run reads and writes: a local folder, or a prefix on object storage.

``quadmix-stream label`` works on a *root*: the dataset folder that gets the shards (raw input)
or already holds them (labelling in place), their sidecars, the manifest and the run's work files
(``.quadmix-label/``: the plan, one commit record per unit, per-rank stats). :class:`LocalRoot` is
a folder; :class:`RemoteRoot` is a URL such as ``s3://bucket/ds`` read and written through a
:class:`~quadmix_stream.storage.store.Store` (retries, credentials and endpoints as the stream reads
them; ``AWS_ENDPOINT_URL`` for MinIO, R2 or a local test server).

On object storage:

* **Commit order.** Every write is one PUT, which S3 (and GCS, Azure) make atomic: an object is
  absent or whole. A unit's payload shard (raw input) is uploaded first, then its sidecar, then
  its commit record; the manifest (``quadmix.json``) is written by the merge, last, after every
  record and sidecar has been checked. A run killed at any point leaves no manifest, or the
  previous complete one; never one that names a missing or partial sidecar.
* **Records live beside the data**, under ``<url>/.quadmix-label/``, not in a local folder: a
  record is the proof that its sidecar was written, so it must be where the sidecar is. A re-run
  on another machine (or a torchrun job spread over nodes, whose rank 0 merges what every rank
  committed) then sees every committed unit, checks the sidecar against the record's sha256 and
  the shard against its size, and resumes exactly as a local run does. Local records would be
  lost with the machine, and a re-run elsewhere would relabel everything.
* **Shards are fetched one at a time** into a private folder of the node-local cache
  (``<cache>/label/<hash of url>/proc-<pid>/``), read, hashed and deleted at once, so labelling a
  pool larger than the local disk needs room for about two shards per rank. Folders of killed
  processes are removed by the next run.

Raw input files on object storage are read by :mod:`.remote_files`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from quadmix_stream.formats.labels import (
    LabelError,
    Manifest,
    ShardLabels,
    read_sidecar,
    write_sidecar,
)
from quadmix_stream.storage.io import check_inside, default_cache_dir, resolve_inside
from quadmix_stream.storage.io import sha256_file as _sha256_file
from quadmix_stream.storage.store import StorageConfig, Store, is_remote

T = TypeVar("T")
R = TypeVar("R")

WORK_DIR = ".quadmix-label"
#: concurrent requests when a remote run checks or merges many units
REMOTE_THREADS = 16


class _StoreRoot:
    """What both roots do through their :class:`~quadmix_stream.storage.store.Store`."""

    remote: bool
    store: Store
    url: str

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def where(self, name: str) -> str:
        """The file's path or URL, for messages."""
        return self.store.where(name)

    def read_bytes(self, name: str) -> bytes | None:
        """A whole file, or ``None`` when it does not exist."""
        try:
            return self.store.read_bytes(name)
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole file: atomically (temp file + rename, or one PUT)."""
        self.store.write_bytes(name, data)


class LocalRoot(_StoreRoot):
    """A labelling run's dataset folder on the local file system.

    Args:
        path: the folder (created by :meth:`prepare`).
    """

    remote = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self.store = Store(self.path)

    def check_name(self, name: object, what: str) -> None:
        """Refuse a name read from a file that could leave the folder (``..``, absolute)."""
        resolve_inside(self.path, name, what, LabelError)

    def prepare(self) -> None:
        """Create the folder."""
        self.path.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Nothing to release for a local folder."""

    def refresh(self) -> None:
        """Nothing is cached for a local folder."""

    def top_names(self) -> list[str]:
        """Names of the entries directly in the folder (none when it does not exist)."""
        return [p.name for p in self.path.iterdir()] if self.path.is_dir() else []

    def size(self, name: str) -> int | None:
        """Bytes of a file, or ``None`` when it does not exist."""
        try:
            return (self.path / name).stat().st_size
        except FileNotFoundError:
            return None

    def sha256(self, name: str) -> str | None:
        """sha256 of a file, or ``None`` when it does not exist."""
        p = self.path / name
        return _sha256_file(p) if p.exists() else None

    def read_sidecar(
        self, name: str, shard: str, scorers: list[str], sha256: str | None = None
    ) -> ShardLabels:
        """Read and check a sidecar (``sha256``: checked on object storage only, where the
        bytes are fetched anew; a local file was hashed by the caller)."""
        return read_sidecar(self.path / name, shard, scorers)

    def write_sidecar(self, name: str, labels: ShardLabels, scorers: list[str]) -> str:
        """Write a sidecar; returns its sha256."""
        return write_sidecar(self.path / name, labels, scorers)

    def save_manifest(self, manifest: Manifest) -> None:
        """Write ``quadmix.json`` (atomically)."""
        manifest.save(self.path)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]`` (local files: one after the other)."""
        return [fn(x) for x in items]


def default_scratch(url: str) -> Path:
    """The node-local folder of a remote labelling run (shards being read, temp files)."""
    tag = hashlib.sha256(url.encode()).hexdigest()[:16]
    return default_cache_dir() / "label" / tag


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RemoteRoot(_StoreRoot):
    """A labelling run's dataset on object storage (``s3://bucket/prefix`` or any fsspec URL).

    Reads and writes go through a :class:`Store` (retried; a missing object is ``None`` here).
    Sizes come from one listing of the prefix, taken by :meth:`refresh` (before the unit states
    are read and before the merge), so checking N units costs N record reads and N sidecar
    reads, done :data:`REMOTE_THREADS` at a time, not N more requests for sizes.

    Args:
        url: the dataset's URL.
        scratch: node-local folder for this run (default: :func:`default_scratch`).
    """

    remote = True

    def __init__(self, url: str, scratch: Path | None = None) -> None:
        self.url = str(url).rstrip("/")
        self.scratch = Path(scratch) if scratch is not None else default_scratch(self.url)
        self.store = Store(self.url, StorageConfig(cache_dir=self.proc_dir / "fetch"))
        self._sizes: dict[str, int] | None = None
        self._last = threading.local()  # the bytes a thread read last (hash, then parse)

    @property
    def proc_dir(self) -> Path:
        """This process's private folder (removed by :meth:`close` or by a later run)."""
        return self.scratch / f"proc-{os.getpid()}"

    @property
    def stage_dir(self) -> Path:
        """Where shards being read or written sit locally, under their dataset names."""
        return self.proc_dir / "stage"

    def check_name(self, name: object, what: str) -> None:
        """Refuse a name read from a file that could leave the prefix (``..``, absolute)."""
        check_inside(self.url, name, what, LabelError)

    # ------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        """Remove what killed processes of an earlier run left in the scratch folder."""
        if not self.scratch.is_dir():
            return
        for d in self.scratch.iterdir():
            pid = d.name.removeprefix("proc-")
            if d.name.startswith("proc-") and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Remove this process's scratch folder."""
        shutil.rmtree(self.proc_dir, ignore_errors=True)

    # ------------------------------------------------------------ listing
    def refresh(self) -> None:
        """List every object under the prefix once (sizes for :meth:`size`)."""
        self._sizes = self.store.sizes()

    def names(self) -> list[str]:
        """Every object under the prefix, relative to it (from the last :meth:`refresh`)."""
        if self._sizes is None:
            self.refresh()
        assert self._sizes is not None
        return sorted(self._sizes)

    def top_names(self) -> list[str]:
        """Names directly under the prefix (files, and the first part of deeper names)."""
        return sorted({n.split("/", 1)[0] for n in self.names()})

    def size(self, name: str) -> int | None:
        """Bytes of an object at the last :meth:`refresh` (``None``: absent)."""
        if self._sizes is None:
            self.refresh()
        assert self._sizes is not None
        return self._sizes.get(name)

    # ------------------------------------------------------------ whole objects
    def read_bytes(self, name: str) -> bytes | None:
        """A whole object, or ``None`` when it does not exist."""
        data = super().read_bytes(name)
        self._last.item = (name, data)
        return data

    def _bytes(self, name: str) -> bytes | None:
        last = getattr(self._last, "item", None)
        if last is not None and last[0] == name:
            return last[1]
        return self.read_bytes(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        """One PUT (atomic on object storage: the object is absent, old or whole)."""
        super().write_bytes(name, data)
        if self._sizes is not None:
            self._sizes[name] = len(data)

    def sha256(self, name: str) -> str | None:
        """sha256 of an object, or ``None`` when it does not exist."""
        data = self.read_bytes(name)
        return None if data is None else hashlib.sha256(data).hexdigest()

    def read_sidecar(
        self, name: str, shard: str, scorers: list[str], sha256: str | None = None
    ) -> ShardLabels:
        """Fetch, check (``sha256``) and read a sidecar (the bytes :meth:`sha256` just read
        are reused by the same thread)."""
        data = self._bytes(name)
        self._last.item = None
        if data is None:
            raise LabelError(f"shard {shard!r}: label sidecar {self.where(name)} is missing")
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise LabelError(
                f"shard {shard!r}: label sidecar {self.where(name)} changed since it was committed"
            )
        self.proc_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.proc_dir) as tmp:
            path = Path(tmp) / posixpath.basename(name)
            path.write_bytes(data)
            return read_sidecar(path, shard, scorers)

    def write_sidecar(self, name: str, labels: ShardLabels, scorers: list[str]) -> str:
        """Encode a sidecar (the bytes of a local one) and PUT it; returns its sha256."""
        self.proc_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.proc_dir) as tmp:
            path = Path(tmp) / posixpath.basename(name)
            sha = write_sidecar(path, labels, scorers)
            self.write_bytes(name, path.read_bytes())
        return sha

    def save_manifest(self, manifest: Manifest) -> None:
        """PUT ``quadmix.json`` (the bytes :meth:`Manifest.save` writes locally)."""
        from quadmix_stream.formats.labels import MANIFEST_NAME

        self.proc_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.proc_dir) as tmp:
            manifest.save(tmp)
            self.write_bytes(MANIFEST_NAME, (Path(tmp) / MANIFEST_NAME).read_bytes())

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``[fn(x) for x in items]``, :data:`REMOTE_THREADS` at a time (results in order; the
        first failure in order is raised)."""
        with ThreadPoolExecutor(REMOTE_THREADS, thread_name_prefix="quadmix-label") as ex:
            return list(ex.map(fn, items))

    # ------------------------------------------------------------ shards on the local disk
    def stage(self, name: str) -> Path:
        """Fetch shard ``name`` whole (through the store's cache, retried) and return the local
        folder that holds it under its dataset name; :meth:`unstage` deletes it."""
        cached = self.store.fetch(name)
        dst = self.stage_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                os.link(cached, dst)
            except FileExistsError:
                dst.unlink()
                os.link(cached, dst)
            except OSError:  # another file system: copy
                shutil.copyfile(cached, dst)
        finally:
            self.store.release(cached)
            cached.unlink(missing_ok=True)  # the run's private cache: nobody else reads it
        return self.stage_dir

    def unstage(self, name: str) -> None:
        """Delete the local copy of a shard."""
        (self.stage_dir / name).unlink(missing_ok=True)

    def upload_staged(self, name: str) -> None:
        """PUT a shard written under :attr:`stage_dir`, then delete the local file."""
        path = self.stage_dir / name
        self.write_bytes(name, path.read_bytes())
        path.unlink()


Root = LocalRoot | RemoteRoot


def as_root(root: str | Path | Root) -> Root:
    """``root`` as a :class:`LocalRoot` (a folder) or :class:`RemoteRoot` (a URL)."""
    if isinstance(root, LocalRoot | RemoteRoot):
        return root
    return RemoteRoot(str(root)) if is_remote(root) else LocalRoot(root)


__all__ = [
    "REMOTE_THREADS",
    "WORK_DIR",
    "LocalRoot",
    "RemoteRoot",
    "Root",
    "as_root",
    "default_scratch",
]
