"""Where a dataset's files live: a local folder, or an object store read through fsspec.

A :class:`Store` is the one place the stream, the labels and the tools touch dataset files. A
local folder is read in place (nothing is copied). A remote dataset (``s3://bucket/ds``,
``gs://…`` with ``gcsfs`` installed, or any other fsspec URL) is read through fsspec:

- whole files (manifest, sidecars, shards the stream reads most of) are downloaded once into a
  node-local cache folder, verified against the manifest's size and sha256, renamed into place
  (no process ever sees a partial file) and evicted least-recently-used when the folder grows
  past ``cache_limit``. A file in use holds a shared ``flock``; eviction takes an exclusive one
  without waiting, so a file another process is reading is never removed from under it.
- byte ranges (the kept rows of a shard the stream reads little of) are fetched concurrently
  with ``cat_ranges``, adjacent ranges merged, and checked for length.

Every request is retried with exponential backoff on transient failures (timeouts, 5xx,
throttling, connection resets, truncated bodies): reads are idempotent, so a retry can neither
lose nor duplicate a document. A missing object or a denied request is not retried and is a
:class:`StorageError` naming the URL. Credentials and endpoints come from each client's standard
configuration (for S3: ``AWS_*`` environment variables, ``~/.aws``, instance roles; an
S3-compatible endpoint such as MinIO or R2 from ``AWS_ENDPOINT_URL``, or ``S3_ENDPOINT_URL`` as
mosaicml-streaming spells it); they are never logged.

Why fsspec: one API for S3, GCS, Azure, HTTP and local files, with ranged and concurrent reads
(which decide-before-decode needs on a sparse selection); s3fs and gcsfs are the clients
PyTorch-ecosystem tools already use (Hugging Face datasets, Lightning, webdataset's ``pipe:``
alternative). mosaicml-streaming's downloader fetches whole shards only.

Why one module of ~500 lines: :class:`Store`'s reads, retries, cache folder and eviction share
one per-process client and lock state that a pickled ``Store`` rebuilds in each worker
(``__setstate__``); splitting the cache from the reads would spread that state over two
classes that must always be rebuilt together.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from quadmix_stream.errors import UserError
from quadmix_stream.extras import MissingExtraError, install_hint, require
from quadmix_stream.storage.io import default_cache_dir, open_tmp, sha256_file
from quadmix_stream.storage.redact import has_userinfo, redact, scrub, url_secrets
from quadmix_stream.validate import parse_json, read_json

T = TypeVar("T")

#: Object stores whose URLs name a bucket, never a user.
_BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs")
_CREDENTIALS_HINT = {
    "s3": "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or pass "
    "StorageConfig(storage_options={'key': …, 'secret': …}))",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS (or pass "
    "StorageConfig(storage_options={'token': …}))",
}
_CREDENTIALS_HINT["s3a"], _CREDENTIALS_HINT["gcs"] = (
    _CREDENTIALS_HINT["s3"],
    _CREDENTIALS_HINT["gs"],
)
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class StorageError(UserError):
    """A dataset file that cannot be fetched: missing, denied, corrupt, or failing after retries."""


def is_remote(root: str | Path) -> bool:
    """Whether ``root`` is a URL read through fsspec (``file://`` counts as local)."""
    m = _URL.match(str(root))
    return bool(m) and m.group(1).lower() != "file"


def parse_bytes(x: int | str | None) -> int | None:
    """``"20gb"``, ``"512MiB"``, ``10**9`` → bytes (``None`` stays ``None``: no limit)."""
    if x is None or isinstance(x, int):
        return x
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", str(x).lower())
    if not m:
        raise UserError(f"cache_limit: expected bytes such as 20000000000 or '20gb', got {x!r}")
    return int(float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_"))


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """How a remote dataset is read (ignored for a local folder).

    Args:
        cache_dir: node-local folder for downloaded files (default ``<cache>/remote``).
        cache_limit: bytes (or ``"64gb"``) the cache folder may hold; files in use are never
            evicted, so the folder can exceed it by the shards in flight. ``None``: no limit.
        retries: attempts after the first for a transient failure (timeouts, 5xx, throttling,
            resets, truncated bodies); the client's own retries are turned off, so these are all
            the attempts there are.
        backoff_s: first retry delay; doubled each retry (with jitter), capped at 10 s.
        deadline_s: the most one operation (a file, a set of ranges) may take, retries
            included: no retry starts after it, and each attempt waits at most ``timeout_s``.
        timeout_s: how long one request may wait for a connection or for the next bytes.
        request_bytes: what one request costs, in bytes of transfer: a hole of up to this many
            bytes between two needed rows is read through rather than skipped, and a shard is
            read by byte ranges (uncompressed MDS, WebDataset tar) only when its ranges cost
            less than the whole shard (requests × ``request_bytes`` + their bytes). The default,
            1 MiB, is a real object store's round trip: ~30 ms to the first byte at ~35 MB/s per
            connection. 8 KiB (pyarrow's hole limit) fetches the fewest bytes (egress) at one
            request per sparse row; a value above the shard size always fetches whole shards.
        prefetch_threads: concurrent downloads per process (the next window's shards).
        max_connections: connections the S3 client keeps open per process. Every concurrent
            request (range reads of a shard, ``prefetch_threads`` downloads) needs one;
            botocore's own default, 10, would queue the rest behind a round trip each.
        storage_options: keyword arguments for ``fsspec.filesystem`` (e.g.
            ``{"client_kwargs": {"endpoint_url": ...}}``, ``{"anon": True}``).
    """

    cache_dir: str | Path | None = None
    cache_limit: int | str | None = None
    retries: int = 8
    backoff_s: float = 0.2
    deadline_s: float = 120.0
    timeout_s: float = 20.0
    request_bytes: int = 1 << 20
    prefetch_threads: int = 8
    max_connections: int = 64
    storage_options: dict[str, Any] = field(default_factory=dict)


# (pid, protocol, options, environment) → fsspec filesystem. A forked child keeps its parent's
# clients here, never used and never closed: they belong to the parent's event loop, and closing
# them in the child fails noisily.
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()
_S3_ENDPOINT_VARS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "S3_ENDPOINT_URL",
    "FSSPEC_S3_ENDPOINT_URL",
)


def _reset_lock() -> None:
    global _CLIENTS_LOCK
    _CLIENTS_LOCK = threading.Lock()  # a fork while another thread held it must not deadlock


os.register_at_fork(after_in_child=_reset_lock)


def _env_key() -> str:
    """The environment variables that decide where a client goes and who it is."""
    names = sorted(k for k in os.environ if k.startswith(("AWS_", "S3_", "GOOGLE_", "FSSPEC_")))
    return hashlib.sha256(repr([(k, os.environ[k]) for k in names]).encode()).hexdigest()


class _Truncated(OSError):
    """A response shorter than asked for (a dropped connection the client did not notice)."""


_FINAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
#: Client errors no retry heals (by class name: the clients are optional packages).
_FINAL_NAMES = frozenset(
    {
        "NoCredentialsError",
        "PartialCredentialsError",
        "CredentialRetrievalError",
        "ParamValidationError",
        "InvalidRegionError",
        "DefaultCredentialsError",  # google-auth
    }
)
#: A local disk that is full, read-only or refuses the name: the cache cannot take the file.
_FINAL_ERRNOS = frozenset(
    {errno.EACCES, errno.ENOENT, errno.EINVAL, errno.ENOSPC, errno.EDQUOT, errno.EROFS}
)


# Errors of the clients under fsspec (botocore, aiohttp, gcsfs, ...) that reach us untranslated:
# s3fs maps "not found" and "denied" to FileNotFoundError/PermissionError before they get here.
_CLIENT_MODULES = ("botocore.", "aiobotocore.", "aiohttp.", "fsspec.", "s3fs.", "gcsfs.", "google.")


def _advice(e: BaseException) -> str:
    """What to do about an error no retry heals."""
    names = {c.__name__ for c in type(e).__mro__}
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return "no credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    if "DefaultCredentialsError" in names:
        return "no credentials found: set GOOGLE_APPLICATION_CREDENTIALS"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the local cache's disk is full: free space or set cache_dir/cache_limit"
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return "the local cache's disk is read-only: set cache_dir to a writable folder"
    return "check the URL and the storage options"


def _is_transient(e: BaseException) -> bool:
    if isinstance(e, _FINAL) or any(c.__name__ in _FINAL_NAMES for c in type(e).__mro__):
        return False
    if isinstance(e, OSError) and e.errno in _FINAL_ERRNOS:
        return False
    if isinstance(e, TimeoutError | ConnectionError | _Truncated):
        return True
    if any(c.__module__.startswith(_CLIENT_MODULES) for c in type(e).__mro__):
        return True
    # s3fs turns service errors into OSError with an errno; a bare OSError from the network
    # stack (reset, broken pipe, EIO) is transient too (the final errnos were caught above)
    return isinstance(e, OSError)


class Store:
    """A dataset root: a local folder (read in place) or a remote URL (cached, retried).

    Picklable: DataLoader workers (fork or spawn) get a copy without the open client, which each
    process creates on first use.

    Args:
        root: a folder, or a URL such as ``s3://bucket/prefix``.
        config: remote reading options.
    """

    def __init__(self, root: str | Path, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig()
        self.remote = is_remote(root)
        if self.remote:
            self.url = str(root).rstrip("/")
            self.protocol = _URL.match(self.url).group(1).lower()  # type: ignore[union-attr]
            if self.protocol in _BUCKET_PROTOCOLS and has_userinfo(self.url):
                # the client would take "KEY:SECRET@bucket" for a bucket name
                raise StorageError(
                    f"{redact(self.url)}: credentials in the URL are never used; remove them and "
                    f"{_CREDENTIALS_HINT[self.protocol]}"
                )
            base = Path(self.config.cache_dir or default_cache_dir() / "remote")
            self.folder = base / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        else:
            root = str(root)
            self.url = root[len("file://") :] if root.startswith("file://") else root
            self.folder = Path(self.url)
        # credentials in the URL itself: masked in every message (see :meth:`_scrub`)
        self._secrets = url_secrets(self.url) if self.remote else []
        self.limit = parse_bytes(self.config.cache_limit)
        self.bytes_fetched = 0  # bytes downloaded by this process (benchmarks, tests)
        self._init_process()

    def _init_process(self) -> None:
        self._fs: Any = None  # a parent's client stays in _CLIENTS, unused (see there)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._pins: dict[str, list] = {}  # cached path → [fd, count]

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        for k in ("_fs", "_lock", "_pins", "_pid"):
            d.pop(k)
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._init_process()

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r})"

    def __str__(self) -> str:
        return self.url

    # ------------------------------------------------------------ names
    def where(self, name: str) -> str:
        """The file's URL or path, as the client takes it (credentials in the URL included:
        messages use :meth:`shown`)."""
        return f"{self.url}/{name}" if self.remote else str(Path(self.url, name))

    def shown(self, name: str) -> str:
        """:meth:`where` with the URL's credentials masked: what a message may print."""
        return redact(self.where(name))

    def _scrub(self, text: str) -> str:
        """``text`` (a message, a client's error) without this store's credentials: URLs
        redacted, and the URL's userinfo wherever a client echoed it without the URL."""
        return scrub(text, self._secrets)

    def path(self, name: str) -> Path:
        """The local path of a file of a local store."""
        assert not self.remote, "remote stores have no local paths; use fetch()"
        return Path(self.url) / name

    @property
    def fs(self) -> Any:
        """The fsspec filesystem, created in each process on first use (clients do not fork)."""
        if self._fs is None or self._pid != os.getpid():
            if self._pid != os.getpid():  # a forked child: the parent's lock state is not ours
                self._init_process()
            with self._lock:
                if self._fs is None:
                    self._fs = self._connect()
        return self._fs

    def _connect(self) -> Any:
        opts = dict(self.config.storage_options)
        given = "endpoint_url" in opts or "endpoint_url" in opts.get("client_kwargs", {})
        if self.protocol in ("s3", "s3a"):
            # one retry layer (ours, bounded by deadline_s): botocore makes one attempt, with
            # timeouts, unless the options say otherwise; s3fs's own retries are set below
            t = min(self.config.timeout_s, self.config.deadline_s)
            cfg = dict(opts.get("config_kwargs") or {})
            # (botocore's "max_attempts" counts retries; "total_max_attempts" counts requests)
            cfg.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
            cfg.setdefault("max_pool_connections", self.config.max_connections)
            cfg.setdefault("connect_timeout", t)
            cfg.setdefault("read_timeout", t)
            opts["config_kwargs"] = cfg
        if self.protocol in ("s3", "s3a") and not given:
            # read now, not when fsspec was imported (fsspec's config copies
            # FSSPEC_S3_ENDPOINT_URL at import); S3_ENDPOINT_URL is mosaicml-streaming's name
            for var in _S3_ENDPOINT_VARS:
                if os.environ.get(var):
                    opts["endpoint_url"] = os.environ[var]
                    break
        # one client per process and options: making one costs ~0.5 s (the search opens a
        # dataset per proxy); the environment is part of the key (endpoints, credentials)
        key = (os.getpid(), self.protocol, repr(sorted(opts.items())), _env_key())
        with _CLIENTS_LOCK:
            fs = _CLIENTS.get(key)
            if fs is None:
                extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(
                    self.protocol, "all"
                )
                feature = f"reading {self.protocol}:// URLs"
                fsspec = require("fsspec", feature, extra)
                try:
                    fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **opts)
                except ImportError as e:  # fsspec is there, the protocol's client is not
                    raise MissingExtraError(f"{feature}: {e}: {install_hint(extra)}") from e
                if self.protocol in ("s3", "s3a"):
                    fs.retries = 1  # s3fs's retry loop: one attempt (ours retries)
                if hasattr(fs, "connect"):
                    # s3fs: make the client once; concurrent first calls would each build one
                    fs.connect()
                _CLIENTS[key] = fs
        return fs

    # ------------------------------------------------------------ requests
    def retry(self, name: str, fn: Callable[[], T], missing_ok: bool = False) -> T:
        """``fn()`` retried on transient failures; ``missing_ok``: a missing file re-raises
        ``FileNotFoundError`` (for callers that word their own message)."""
        delay = self.config.backoff_s
        t0 = time.monotonic()
        for attempt in range(self.config.retries + 1):
            try:
                return fn()
            except FileNotFoundError:
                if missing_ok:
                    raise FileNotFoundError(self.shown(name)) from None
                raise StorageError(f"{self.shown(name)}: {self.missing_why()}") from None
            except PermissionError as e:
                raise StorageError(
                    f"{self.shown(name)}: access denied ({type(e).__name__}); check the "
                    "credentials the client finds (AWS_PROFILE, AWS_ACCESS_KEY_ID, ~/.aws, "
                    "GOOGLE_APPLICATION_CREDENTIALS, …)"
                ) from None
            except MissingExtraError:
                raise
            except Exception as e:
                left = self.config.deadline_s - (time.monotonic() - t0)
                if not _is_transient(e) or attempt == self.config.retries or left <= 0:
                    took = f"{time.monotonic() - t0:.0f} s"
                    why = "" if _is_transient(e) else "; not retried: " + _advice(e)
                    # the client's text may quote the URL (with a presigned query, or the
                    # userinfo taken for a bucket name) and span lines (botocore's validation)
                    said = self._scrub(" ".join(str(e).split()))
                    raise StorageError(
                        f"{self.shown(name)}: cannot be read ({attempt + 1} attempt(s) in {took}, "
                        f"deadline_s {self.config.deadline_s:g}; {type(e).__name__}: {said}){why}"
                    ) from e
                time.sleep(min(delay, 10.0, left) * (1 + random.random()))
                delay *= 2
        raise AssertionError("unreachable")

    def root_missing(self) -> str | None:
        """Why nothing can be found under the root (no such folder or bucket), else ``None``."""
        if not self.remote:
            return None if Path(self.url).is_dir() else f"the folder {self.url} does not exist"
        bucket = self.url.split("://", 1)[1].split("/", 1)[0]
        try:
            exists = self.fs.exists(f"{self.protocol}://{bucket}")
        except Exception:  # the check is a courtesy: its failure changes nothing
            exists = True
        if exists:
            return None
        # the "bucket" of s3://KEY:SECRET@bucket starts with the userinfo: masked
        shown = self._scrub(f"{self.protocol}://{bucket}").split("://", 1)[1]
        return f"the bucket {shown!r} does not exist (check URL and endpoint)"

    def missing_why(self) -> str:
        """Why a file is missing, in words."""
        root = self.root_missing()
        return f"no such file: {root}" if root else "no such file (deleted, or never uploaded?)"

    def sizes(self) -> dict[str, int]:
        """Bytes of every file under the root, by name relative to it (``{}`` when the root
        does not exist). Remotely one fresh listing (``find``, not the client's cache)."""
        if not self.remote:
            base = Path(self.url)
            if not base.is_dir():
                return {}
            files = (p for p in base.rglob("*") if p.is_file())
            return {p.relative_to(base).as_posix(): p.stat().st_size for p in files}
        fs = self.fs
        base_url = fs._strip_protocol(self.url).rstrip("/")

        def find() -> dict[str, Any]:
            fs.invalidate_cache()
            try:
                return fs.find(base_url, detail=True)
            except FileNotFoundError:
                return {}

        out = {}
        for path, info in self.retry("", find).items():
            if info.get("type", "file") == "file" and path.startswith(base_url + "/"):
                out[path[len(base_url) + 1 :]] = int(info.get("size") or 0)
        return out

    def exists(self, name: str) -> bool:
        if not self.remote:
            return self.path(name).exists()
        return bool(self.retry(name, lambda: self.fs.exists(self.where(name))))

    def read_bytes(self, name: str) -> bytes:
        """A whole (small) file: a manifest, an index.

        Raises:
            FileNotFoundError: the file does not exist (callers word their own message).
            StorageError: the file cannot be read.
        """
        if not self.remote:
            return self.path(name).read_bytes()
        url = self.where(name)
        data = self.retry(name, lambda: self.fs.cat_file(url), missing_ok=True)
        self.bytes_fetched += len(data)
        return data

    def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes ``[start, end)`` of each range of one file, fetched concurrently."""
        if not ranges:
            return []
        if not self.remote:
            out = []
            with open(self.path(name), "rb") as f:
                for a, b in ranges:
                    f.seek(a)
                    out.append(f.read(b - a))
            return out
        url = self.where(name)
        out: list[bytes | None] = [None] * len(ranges)

        def get() -> None:
            todo = [i for i, x in enumerate(out) if x is None]
            got = self.fs.cat_ranges(
                [url] * len(todo),
                [ranges[i][0] for i in todo],
                [ranges[i][1] for i in todo],
                on_error="return",
            )
            err: BaseException | None = None
            for i, g in zip(todo, got, strict=True):
                if isinstance(g, BaseException):
                    err = err or g
                elif len(g) != ranges[i][1] - ranges[i][0]:
                    err = err or _Truncated(f"got {len(g)} of {ranges[i][1] - ranges[i][0]} bytes")
                else:
                    out[i] = g
                    self.bytes_fetched += len(g)
            if err is not None:  # the good ranges are kept; only the rest is asked again
                raise err

        self.retry(name, get)
        return out  # type: ignore[return-value]

    def read_json(
        self, name: str, error: type[Exception], what: str, missing: str | None = None
    ) -> Any:
        """A JSON file, parsed; every failure is ``error`` naming the file (``missing``: the
        message when it does not exist)."""
        if not self.remote:
            path = self.path(name)
            if missing is not None and not path.exists():
                root = self.root_missing()
                raise error(root or missing)
            return read_json(path, error, what)
        try:
            data = self.read_bytes(name)
        except FileNotFoundError:
            root = self.root_missing()
            if root:
                raise error(f"{self.shown(name)}: {root}") from None
            # ``missing`` is the caller's wording, which may name the URL as given
            raise error(self._scrub(missing or f"{self.where(name)}: no such {what}")) from None
        except StorageError as e:  # every other remote failure, retried and worded already
            raise error(str(e)) from None
        return parse_json(data, self.shown(name), error, what)

    # ------------------------------------------------------------ whole files in the cache
    def fetch(self, name: str, *, size: int | None = None, sha256: str | None = None) -> Path:
        """A local path to the whole file, pinned (not evicted) until :meth:`release`.

        Remote files are downloaded into the cache once (verified against ``size`` and
        ``sha256`` when given: a mismatch is retried, then a :class:`StorageError`).
        """
        if not self.remote:
            return self.path(name)
        tag = hashlib.sha256(f"{name}\0{sha256 or ''}".encode()).hexdigest()[:16]
        local = self.folder / f"{tag}-{name.replace('/', '_')}"
        for _ in range(3):  # a file evicted by another process before we pin it: fetch again
            if self._pin(local):
                return local
            self._download(name, local, size, sha256)
            if self._pin(local):
                self._evict()  # after pinning: the file just fetched is not a candidate
                return local
        raise StorageError(
            f"{self.shown(name)}: the cache folder {self.folder} evicts it as soon as it "
            "lands; raise cache_limit"
        )

    def release(self, path: Path) -> None:
        """Unpin a file from :meth:`fetch` (it may now be evicted)."""
        if not self.remote:
            return
        with self._lock:
            pin = self._pins.get(str(path))
            if pin is None:
                return
            pin[1] -= 1
            if pin[1] > 0:
                return
            del self._pins[str(path)]
            os.close(pin[0])
        self._evict()

    def _pin(self, local: Path) -> bool:
        with self._lock:
            pin = self._pins.get(str(local))
            if pin is not None:
                pin[1] += 1
                return True
            try:
                fd = os.open(local, os.O_RDONLY)
            except FileNotFoundError:
                return False
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_nlink == 0:  # evicted between open and lock
                os.close(fd)
                return False
            os.utime(fd)  # least recently used goes first
            self._pins[str(local)] = [fd, 1]
            return True

    def _download(self, name: str, local: Path, size: int | None, sha256: str | None) -> None:
        url = self.where(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        bad_hash = 0
        while True:
            fd, tmp_file = open_tmp(local)
            os.close(fd)
            tmp = str(tmp_file)  # the client writes it by path
            try:

                def get(tmp: str = tmp) -> None:
                    self.fs.get_file(url, tmp)
                    got = os.path.getsize(tmp)
                    if size is not None and got != size:
                        raise _Truncated(f"got {got} of {size} bytes")

                self.retry(name, get)
                n = os.path.getsize(tmp)
                if sha256 and sha256_file(tmp) != sha256:
                    bad_hash += 1
                    if bad_hash > 2:
                        raise StorageError(
                            f"{self.shown(name)}: its bytes do not match the manifest's sha256 "
                            "(the object changed after labelling, or is corrupt); relabel or "
                            "restore it"
                        )
                    continue
                os.replace(tmp, local)
                self.bytes_fetched += n
                break
            finally:
                Path(tmp).unlink(missing_ok=True)

    def _evict(self) -> None:
        """Remove least recently used files until the folder fits ``cache_limit`` (files pinned
        here or, through their ``flock``, in another process are kept)."""
        if self.limit is None:
            return
        entries = []
        with os.scandir(self.folder) as it:
            for e in it:
                if e.name.startswith(".") or not e.is_file():
                    continue
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime_ns, st.st_size, e.path))
        total = sum(s for _, s, _ in entries)
        for _, nbytes, path in sorted(entries):
            if total <= self.limit:
                break
            with self._lock:
                pinned = path in self._pins
            if pinned:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                total -= nbytes
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # in use by another process
                os.close(fd)
                continue
            try:
                os.unlink(path)
                total -= nbytes
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)

    # ------------------------------------------------------------ writing (labelling in place)
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a whole file: atomically on a local folder; an object PUT (atomic) remotely."""
        if not self.remote:
            from quadmix_stream.storage.io import atomic_write_bytes

            atomic_write_bytes(self.path(name), data)
            return
        self.retry(name, lambda: self.fs.pipe_file(self.where(name), data))


def as_store(root: str | Path | Store) -> Store:
    """``root`` as a :class:`Store` (a store passes through)."""
    return root if isinstance(root, Store) else Store(root)


__all__ = ["StorageConfig", "StorageError", "Store", "as_store", "is_remote", "parse_bytes"]
