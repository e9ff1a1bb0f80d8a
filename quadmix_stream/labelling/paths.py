"""Model paths: readability checks and content fingerprints.

A labeller's fingerprint is a hash of the bytes of its model (file or folder) plus the settings
that change its output. Changing either marks the labeller's column stale in finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from quadmix_stream.errors import UserError

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


class LabelerError(UserError):
    """A labeller that cannot be built or run; the message names the labeller and the path."""


def require_readable(path: Path, what: str, want_dir: bool | None = None) -> Path:
    """Check that ``path`` exists and can be read; raise :class:`LabelerError` naming ``what``."""
    if not path.exists():
        raise LabelerError(f"{what}: model path {path} does not exist")
    if want_dir is True and not path.is_dir():
        raise LabelerError(f"{what}: model path {path} must be a folder")
    if want_dir is False and not path.is_file():
        raise LabelerError(f"{what}: model path {path} must be a file")
    if not os.access(path, os.R_OK):
        raise LabelerError(f"{what}: model path {path} is not readable (permissions)")
    return path


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names + contents, sorted; dotfiles skipped)."""
    if path.is_file():
        return _file_sha(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            if "__pycache__" in rel.parts:
                continue
            h.update(f"{rel.as_posix()}\0{_file_sha(p)}\n".encode())
    return h.hexdigest()


def fingerprint(kind: str, settings: dict[str, Any], *paths: Path) -> str:
    """``kind:hash16`` over model content hashes and output-changing settings."""
    ident = {"settings": settings, "models": [content_hash(p) for p in paths]}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return f"{kind}:{digest[:16]}"
