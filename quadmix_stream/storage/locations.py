"""Dataset and evaluation-set locations: a local path, or an object-storage URL kept as a string.

``pathlib.Path("s3://bucket/ds")`` silently becomes ``s3:/bucket/ds`` (a relative local path),
so code that takes "a dataset folder" must not wrap a URL in ``Path``. The tools that hold a
dataset location (the search's run folder, the flow, the trainer's log) go through
:func:`dataset_location` instead: a URL stays the string it was given (without a trailing
slash), a local folder becomes a ``Path`` exactly as before. Files that may live next to a
remote dataset (its ``eval_sets/target.jsonl``) are read with :func:`read_location`, through a
:class:`~quadmix_stream.storage.store.Store` (retries, the client's standard credentials).
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
from pathlib import Path

from quadmix_stream.errors import UserError
from quadmix_stream.storage.io import atomic_write_bytes
from quadmix_stream.storage.redact import redact
from quadmix_stream.storage.store import Store, is_remote


def dataset_location(dataset: str | Path, *, resolve: bool = False) -> str | Path:
    """``dataset`` as the stream, the labels and the tools take it.

    Args:
        dataset: a folder (``file://`` URLs count as folders) or a URL such as ``s3://b/ds``.
        resolve: make a local folder absolute (run metadata records it this way).

    Returns:
        The URL as a string without a trailing slash, or the local folder as a ``Path``.
    """
    text = str(dataset)
    if is_remote(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text)
    return path.resolve() if resolve else path


def location_str(dataset: str | Path, *, resolve: bool = False) -> str:
    """:func:`dataset_location` as a string (run metadata, logs, recipes passed on)."""
    return str(dataset_location(dataset, resolve=resolve))


def read_location(location: str | Path) -> bytes:
    """The bytes of a whole (small) file: a local path or a URL (read with retries).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        quadmix_stream.storage.store.StorageError: a remote file that cannot be read.
    """
    text = str(location)
    if not is_remote(text):
        return Path(dataset_location(text)).read_bytes()
    parent, name = posixpath.split(text.rstrip("/"))
    try:
        return Store(parent).read_bytes(name)
    except FileNotFoundError:
        raise FileNotFoundError(f"{redact(text)}: no such file") from None


def local_copy(location: str | Path, dest: Path) -> Path:
    """A local path holding ``location``'s bytes: the path itself when local, else ``dest``
    (downloaded and written atomically; an existing ``dest`` is replaced)."""
    if not is_remote(location):
        return Path(dataset_location(location))
    atomic_write_bytes(dest, read_location(location))
    return dest


__all__ = ["dataset_location", "local_copy", "location_str", "read_location"]


#: a file shipped inside an installed package: ``package://pkg/sub/path``
PACKAGE_PREFIX = "package://"


def resolve_path(path: str | os.PathLike, base: Path | None = None) -> Path:
    """Resolve ``package://pkg/sub/path`` (a file shipped inside an installed package) or a path.

    Relative plain paths are taken against ``base`` when given.
    """
    s = str(path)
    if s.startswith(PACKAGE_PREFIX):
        pkg, _, rest = s[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"{s}: package {pkg!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / rest
    p = Path(os.path.expanduser(s))
    if base is not None and not p.is_absolute():
        p = base / p
    return p
