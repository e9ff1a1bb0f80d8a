"""One shard's label sidecar: :class:`ShardLabels`, written and read as a small ``.npz``.

A sidecar is row-aligned with its shard and readable without touching the payload: document
keys, domain ids, token counts, raw scores in the manifest's scorer order, each document's text
checksum (checked on every read), and for tar shards each sample's byte offset and length.
Written with fixed zip timestamps (the same labels give the same bytes and sha256), read
without unpickling; every error names the shard and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.storage.io import atomic_write_bytes, read_npz


class LabelError(UserError):
    """A sidecar or manifest that does not match its shard, named in the message."""


@dataclass
class ShardLabels:
    """The labels of one shard, row-aligned with it."""

    key: np.ndarray  # uint64 document keys
    domain: np.ndarray  # int32 domain ids (index into the manifest's domains)
    tokens: np.ndarray  # int64 token counts
    scores: np.ndarray  # float64 (rows, N) raw scores in manifest scorer order
    offset: np.ndarray | None = None  # int64 tar byte offset of each sample (tar only)
    length: np.ndarray | None = None  # int64 tar bytes of each sample (tar only)
    digest: np.ndarray | None = None  # uint32 text checksum per document (None: older sidecars)

    @property
    def rows(self) -> int:
        return int(self.key.size)


def write_sidecar(path: str | Path, labels: ShardLabels, scorers: Sequence[str]) -> str:
    """Write a sidecar atomically; returns its sha256."""
    cols = {
        "key": np.asarray(labels.key, dtype=np.uint64),
        "domain": np.asarray(labels.domain, dtype=np.int32),
        "tokens": np.asarray(labels.tokens, dtype=np.int64),
        "scores": np.asarray(labels.scores, dtype=np.float64).reshape(labels.rows, len(scorers)),
        "scorers": np.frombuffer(json.dumps(list(scorers)).encode(), dtype=np.uint8),
    }
    if labels.offset is not None:
        cols["offset"] = np.asarray(labels.offset, dtype=np.int64)
        cols["length"] = np.asarray(labels.length, dtype=np.int64)
    if labels.digest is not None:
        cols["digest"] = np.asarray(labels.digest, dtype=np.uint32)
    # np.savez layout (uncompressed zip of .npy members) with a fixed member timestamp, so the
    # same labels give the same bytes and sha256 (np.savez stamps the current time).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in cols.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_sidecar(path: str | Path, shard: str, scorers: Sequence[str]) -> ShardLabels:
    """Read one sidecar (never unpickles) and check its columns; errors name shard and field."""
    path = Path(path)
    try:
        cols = read_npz(path)
    except FileNotFoundError:
        raise LabelError(f"shard {shard!r}: label sidecar {path.name} is missing") from None
    except Exception as e:  # zip/npy parse errors of a corrupted file
        raise LabelError(
            f"shard {shard!r}: label sidecar {path.name} is unreadable ({e})"
        ) from None
    for name in ("key", "domain", "tokens", "scores", "scorers"):
        if name not in cols:
            raise LabelError(f"shard {shard!r}: sidecar field {name!r} is missing")
    try:
        names = json.loads(cols["scorers"].tobytes().decode())
    except ValueError as e:  # not UTF-8, not JSON
        raise LabelError(
            f"shard {shard!r}: sidecar field 'scorers' is not a JSON list ({e})"
        ) from None
    if names != list(scorers):
        raise LabelError(
            f"shard {shard!r}: sidecar field 'scores' has scorers {names}, manifest has {list(scorers)}"
        )
    key = cols["key"]
    if key.ndim != 1 or key.dtype.kind not in "iu":
        raise LabelError(
            f"shard {shard!r}: sidecar field 'key' must be one integer per row, got "
            f"{key.dtype} of shape {key.shape}"
        )
    n = key.size
    for name in ("domain", "tokens", "offset", "length", "digest"):
        if name in cols and cols[name].shape != (n,):
            shape = cols[name].shape
            has = f"{shape[0]} rows" if len(shape) == 1 else f"shape {shape}"
            raise LabelError(f"shard {shard!r}: sidecar field {name!r} has {has}, key has {n}")
    if "digest" in cols and cols["digest"].dtype != np.uint32:
        raise LabelError(
            f"shard {shard!r}: sidecar field 'digest' must be uint32, got {cols['digest'].dtype}"
        )
    if cols["scores"].shape != (n, len(scorers)):
        raise LabelError(
            f"shard {shard!r}: sidecar field 'scores' has shape {cols['scores'].shape}, expected ({n}, {len(scorers)})"
        )
    return ShardLabels(  # the writer's dtypes already: no copies
        key=cols["key"].astype(np.uint64, copy=False),
        domain=cols["domain"].astype(np.int32, copy=False),
        tokens=cols["tokens"].astype(np.int64, copy=False),
        scores=cols["scores"].astype(np.float64, copy=False),
        offset=cols.get("offset"),
        length=cols.get("length"),
        digest=cols.get("digest"),
    )
