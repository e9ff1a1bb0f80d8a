"""Reading an existing shard labelled in place: every row, through the format layer.

The shard is read whole by its format's :meth:`~quadmix_stream.formats.ShardFormat.scan`; here
the rows become flat documents with their problems counted (:func:`.documents.shard_doc`). Rows
are never dropped: the sidecar must stay row-aligned with the shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.formats import ShardSpec, get_format
from quadmix_stream.formats.base import as_text
from quadmix_stream.formats.labels import LabelError
from quadmix_stream.labelling.documents import shard_doc
from quadmix_stream.labelling.inputs import InputSpec
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.mixing.hashing import text_digests
from quadmix_stream.storage.io import resolve_inside


def scan_spec(
    name: str, spec: InputSpec, mds_entry: dict[str, Any] | None, need_fields: bool
) -> ShardSpec:
    """What the format needs to scan shard ``name``: the input's tar members and table columns
    (only text and id columns unless ``need_fields``: a labeller reads fields)."""
    columns = {
        "text_column": spec.text_field,
        "id_column": spec.id_field,
        "meta_columns": None if need_fields else [],
    }
    members = {"text_ext": spec.tar_text_ext, "json_ext": spec.tar_json_ext}
    extra = {"tar_members": members, "columns": columns}
    return ShardSpec(name, 0, "", 0, extra=extra, mds_entry=mds_entry)


def read_shard_unit(
    root: Path,
    fmt: str,
    name: str,
    spec: InputSpec,
    mds_entries: dict[str, dict] | None,
    need_fields: bool = True,
    cache_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], Issues, tuple[list[int], list[int]] | None, np.ndarray]:
    """Every row of an existing shard as a flat document, with issues, (tar) byte offsets and
    each row's text checksum. The checksum is of the text as the stream's readers will return
    it (:func:`~quadmix_stream.formats.base.as_text`), before the labelling's own cleaning.

    ``cache_dir``: where a ``.tar.gz`` shard is decompressed (default: the node's cache).
    """
    path = resolve_inside(root, name, f"shard {name!r}", LabelError)
    if not path.exists():
        raise LabelError(f"shard {name!r}: shard file is missing")
    mds_entry = None
    if fmt == "mds":
        if not mds_entries or name not in mds_entries:
            raise LabelError(f"shard {name!r}: not listed in {root}/index.json")
        mds_entry = mds_entries[name]
    scanned = get_format(fmt).scan(path, scan_spec(name, spec, mds_entry, need_fields), cache_dir)
    digests = text_digests(as_text(d["text"]) for d in scanned.docs)
    issues = Issues()
    keys = scanned.keys
    docs = [
        shard_doc(d, f"{name}:{keys[row] if keys is not None else row}", issues)
        for row, d in enumerate(scanned.docs)
    ]
    offsets = None
    if scanned.offset is not None and scanned.length is not None:
        offsets = (scanned.offset, scanned.length)
    return docs, issues, offsets, digests


__all__ = ["read_shard_unit", "scan_spec"]
