"""Guards for a long run's output folder and processes.

* :func:`check_writable`: fail before any work starts when the output folder cannot be written
  (read-only file system, no permission), with one line naming the folder.
* :class:`RunLock`: one writer per output folder (``fcntl.flock`` on ``OUT/.lock``; the kernel
  drops the lock when the process dies, so a killed run never leaves a stale lock behind).
* :func:`exit_with_parent`: a rank started by torchrun exits when its agent dies. torchrun starts
  every worker in a session of its own, so killing only the agent would otherwise leave the ranks
  training and checkpointing into the folder, racing the next run.
* :func:`write_file_atomic`: stream a large object into a hidden temporary file beside it
  (``.NAME.<random>.qms.tmp``, see :func:`quadmix_stream.storage.io.tmp_path`) and rename it; on
  any error the temporary file is removed and the error names the file (and says when the disk
  is full).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from quadmix_stream.errors import UserError
from quadmix_stream.storage.io import is_stale_tmp, open_tmp

log = logging.getLogger(__name__)


class OutputError(UserError):
    """The output folder or a file in it cannot be written (shown as one line by the CLIs).

    A ``ValueError`` so that ``quadmix-stream``'s command line prints it without a traceback.
    """


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def check_writable(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; returns it.

    Raises:
        OutputError: naming the folder, e.g. on a read-only file system.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"output folder {folder} is not writable: {_why(e)}") from None
    return folder


class RunLock:
    """An exclusive, non-blocking lock on ``folder/.lock`` held for the life of the process.

    Args:
        folder: the run's output folder.
        what: how the error names the holder's kind of run (e.g. ``"trainer"``).
    """

    def __init__(self, folder: str | Path, what: str = "run") -> None:
        self.path = Path(folder) / ".lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputError(
                    f"{self.path.parent} is in use by another {self.what} (pid {holder}); "
                    "wait for it to finish, or give this one another output folder"
                ) from None
            raise OutputError(f"cannot lock {self.path}: {_why(e)}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __del__(self) -> None:  # a run that ends by an exception still lets go of the folder
        self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_tmp(folder: str | Path, *, own_folder: bool = False) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (call it under the lock).

    Only our own temporary names are deleted (a user's ``.notes.tmp`` stays); ``own_folder``:
    the folder holds only our files (``OUT/checkpoints``), so the older ``.NAME.tmp`` names of
    earlier versions go too (see :func:`~quadmix_stream.storage.io.is_stale_tmp`).
    """
    gone = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file() and is_stale_tmp(p.name, own_folder=own_folder):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def under_torchrun() -> bool:
    """True in a worker started by torchrun's elastic agent."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exit_with_parent(
    interval_s: float = 1.0, on_exit: Callable[[], None] | None = None
) -> threading.Thread:
    """Exit this process (status 1) within ``interval_s`` of its parent dying.

    A daemon thread compares ``os.getppid()`` with the parent at start: once the parent is gone
    the process is re-parented and the id changes. ``os._exit`` stops the process even while the
    main thread is blocked in a collective; a half-written temporary file is removed by the next
    run (:func:`remove_stale_tmp`).
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                log.warning(
                    "[rank %s] parent process %s (the torchrun agent) died: stopping",
                    os.environ.get("RANK", "?"),
                    parent,
                )
                if on_exit is not None:
                    on_exit()
                os._exit(1)

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def write_file_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(file)`` into a hidden temporary file and rename it into place.

    Readers see the old file or the whole new one. On any error (disk full included) the
    temporary file is removed, ``path`` is untouched, and an :class:`OutputError` names the file.

    ``torch.save`` to a *path* turns ENOSPC into ``RuntimeError: basic_ios::clear``; giving it an
    open Python file instead lets the OS error through, and the free space is checked as well so
    the message says "No space left on device" either way.
    """
    path = Path(path)
    tmp: Path | None = None
    rec = None
    try:
        # 0o666: the umask decides, as for any file the run writes (mkstemp's would be 0o600)
        fd, tmp = open_tmp(path, 0o666)
        with os.fdopen(fd, "wb") as f:
            rec = _ErrorRecorder(f)
            write(rec)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _disk_full(path.parent)  # before freeing the .tmp
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        seen = ([rec.error] if rec is not None and rec.error else []) + _chain(e)
        err = next((x for x in seen if isinstance(x, OSError) and x.errno), None)
        if err is not None:
            why = _why(err)
        elif full:
            why = os.strerror(errno.ENOSPC)
        else:
            why = f"{type(e).__name__}: {e}"
        raise OutputError(f"cannot write {path}: {why}") from e


class _ErrorRecorder:
    """A file's ``write``/``flush`` that remember the OS error (``torch.save`` re-raises it as a
    ``RuntimeError`` without the errno)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, b: bytes) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in out:
        out.append(x)
        x = x.__cause__ or x.__context__
    return out


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False
