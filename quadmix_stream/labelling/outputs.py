"""Writing one new payload shard per unit, in the exact layout of :class:`~quadmix_stream.shards.DatasetWriter`.

Each unit's shard is written on its own (atomically, under a name fixed by the unit index), so
ranks can write in parallel and a killed run leaves either a whole shard or none. MDS shards are
encoded by :mod:`.mds` (the bytes ``MDSWriter`` would write); their ``index.json`` entries are
kept in the unit's commit record and merged into one ``index.json`` at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quadmix_stream.io import atomic_write_bytes, sha256_file
from quadmix_stream.shards import _JsonlBackend, _sidecar_name, _TarBackend, split_doc

if TYPE_CHECKING:
    from quadmix_stream.labelling.remote import Root

OUTPUT_FORMATS = ("mds", "tar", "jsonl")


@dataclass
class WrittenShard:
    """What the manifest and sidecar need to know about a written (or existing) payload shard."""

    name: str
    sidecar: str
    sha256: str
    bytes: int
    offset: list[int] | None = None  # tar: byte offset of each sample
    length: list[int] | None = None
    mds_entry: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def shard_name(fmt: str, index: int, compression: str | None = None) -> str:
    """File name of unit ``index``'s shard (same scheme as :class:`DatasetWriter`)."""
    if fmt == "mds":
        return f"shard.{index:05d}.mds" + (f".{compression}" if compression else "")
    return f"shard.{index:05d}." + ("tar" if fmt == "tar" else "jsonl.zst")


def write_shard(
    root: Path,
    fmt: str,
    index: int,
    docs: Sequence[dict[str, Any]],
    compression: str | None = None,
) -> WrittenShard | None:
    """Write ``docs`` (flat documents) as unit ``index``'s shard; ``None`` when there are none."""
    if not docs:
        return None
    if fmt == "jsonl":
        jb = _JsonlBackend(root)
        jb.index = index
        for d in docs:
            jb.add(*split_doc(d))
        name = jb.end_shard()
        return _done(root, name)
    if fmt == "tar":
        tb = _TarBackend(root)
        tb.index = index
        offs, lens = [], []
        for d in docs:
            off = tb.add(*split_doc(d))
            assert off is not None
            offs.append(off[0])
            lens.append(off[1])
        name = tb.end_shard()
        out = _done(root, name)
        out.offset, out.length = offs, lens
        return out
    if fmt != "mds":
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    from quadmix_stream.labelling.mds import encode_shard

    _raw, stored, entry = encode_shard([split_doc(d) for d in docs], compression)
    name = shard_name("mds", index, compression)
    entry["raw_data"]["basename"] = shard_name("mds", index, None)
    if entry["zip_data"] is not None:
        entry["zip_data"]["basename"] = name
    atomic_write_bytes(root / name, stored)
    out = WrittenShard(name, _sidecar_name(name), hashlib.sha256(stored).hexdigest(), len(stored))
    out.mds_entry = entry
    return out


def existing_shard(
    root: Path, name: str, offsets: tuple[list[int], list[int]] | None
) -> WrittenShard:
    """Describe an existing shard labelled in place (hash + size, tar offsets from a scan)."""
    out = _done(root, name)
    if offsets is not None:
        out.offset, out.length = offsets
    return out


def _done(root: Path, name: str) -> WrittenShard:
    path = root / name
    return WrittenShard(name, _sidecar_name(name), sha256_file(path), path.stat().st_size)


def write_mds_index(root: Path | Root, entries: Sequence[dict[str, Any]]) -> None:
    """The MDS ``index.json`` listing ``entries`` in order (atomically: a rename, or one PUT)."""
    from quadmix_stream.labelling.remote import as_root

    data = json.dumps({"shards": list(entries), "version": 2}).encode("utf-8")
    as_root(root).write_bytes("index.json", data)
