"""Writing one new payload shard per unit, in the layout of :class:`~quadmix_stream.formats.shards.DatasetWriter`.

Each unit's shard is written on its own (atomically, under a name fixed by the unit index), so
ranks can write in parallel and a killed run leaves either a whole shard or none. Shards are
written by the format's backend (:func:`quadmix_stream.formats.writer_backend`, the one
``DatasetWriter`` uses); MDS shards' ``index.json`` entries are kept in the unit's commit record
and merged into one ``index.json`` at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quadmix_stream.errors import UserError
from quadmix_stream.formats import mds as mds_format
from quadmix_stream.formats import sidecar_name, split_doc, writer_backend
from quadmix_stream.storage.io import sha256_file

if TYPE_CHECKING:
    from quadmix_stream.labelling.roots import Root

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
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    backend = writer_backend(root, fmt, compression)
    backend.index = index
    spans = [backend.add(*split_doc(d)) for d in docs]
    # not backend.close(): an MDS index.json lists every unit's shard, written once at the end
    out = _done(root, backend.end_shard())
    if isinstance(backend, mds_format.MDSBackend):
        out.mds_entry = backend.entries[-1]
    if fmt == "tar":
        out.offset = [sp[0] for sp in spans if sp is not None]
        out.length = [sp[1] for sp in spans if sp is not None]
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
    return WrittenShard(name, sidecar_name(name), sha256_file(path), path.stat().st_size)


def write_mds_index(root: Path | Root, entries: Sequence[dict[str, Any]]) -> None:
    """The MDS ``index.json`` listing ``entries`` in order (atomically: a rename, or one PUT)."""
    from quadmix_stream.labelling.roots import as_root

    data = json.dumps({"shards": list(entries), "version": 2}).encode("utf-8")
    as_root(root).write_bytes("index.json", data)
