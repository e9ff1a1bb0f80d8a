"""The commit step: a labelled unit's sidecar, then its record (the commit), in that order.

On object storage these are two PUTs in that order, so a record never names a sidecar that is
not in the bucket. A unit with stale columns keeps its current columns from the committed
sidecar and replaces the stale ones (checking the documents still match the sidecar's keys).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quadmix_stream.formats.labels import LabelError, ShardLabels
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.labeler_set import LabelerSet
from quadmix_stream.labelling.outputs import WrittenShard
from quadmix_stream.labelling.plan import Plan
from quadmix_stream.labelling.records import Record, UnitState, shard_dict, write_record
from quadmix_stream.labelling.roots import Root
from quadmix_stream.storage.io import read_npz


@dataclass
class Labelled:
    """A unit's labels waiting for its payload shard to be written before they are committed.

    Attributes:
        idx: the unit.
        keys: its documents' keys (``uint64``), in shard order.
        digests: its documents' text checksums (``uint32``, :func:`~quadmix_stream.mixing.hashing.text_digest`).
        values: column → values of the columns labelled in this run.
        issues: the unit's issues (reading and labelling).
        n: number of documents.
    """

    idx: int
    keys: np.ndarray
    digests: np.ndarray
    values: dict[str, np.ndarray]
    issues: Issues
    n: int


def read_old_sidecar(root: Root, name: str) -> dict[str, Any]:
    """A committed sidecar's columns (its scorer names decoded), to keep its current columns."""
    data = root.read_bytes(name)
    if data is None:
        raise LabelError(f"{root.where(name)}: label sidecar is missing")
    cols = read_npz(io.BytesIO(data))
    cols["scorers"] = json.loads(cols["scorers"].tobytes().decode())
    return cols


def commit_unit(
    root: Root,
    plan: Plan,
    labs: LabelerSet,
    st: UnitState,
    shard: WrittenShard | None,
    p: Labelled,
) -> None:
    """Write the unit's sidecar, then its record (the commit): on object storage two PUTs in
    that order, so a record never names a sidecar that is not in the bucket."""
    idx, keys, values, issues = p.idx, p.keys, p.values, p.issues
    names = labs.scorer_names
    n = int(keys.size)
    if st.status == "stale":  # keep the current columns, replace the stale ones
        rec = st.record
        assert rec is not None and rec.shard is not None
        old = read_old_sidecar(root, rec.shard["sidecar"])
        if not np.array_equal(old["key"], keys):
            raise LabelError(
                f"shard {rec.shard['name']!r}: its documents no longer match the sidecar's keys "
                "(input changed since it was labelled); delete the output and relabel"
            )
        old_scores = {s: old["scores"][:, j] for j, s in enumerate(old["scorers"])}
        values.setdefault("domain", old["domain"])
        values.setdefault("tokens", old["tokens"])
        for s in names:
            if s not in values:
                values[s] = old_scores[s]
        shard = WrittenShard(**{**rec.shard})
        if "offset" in old:
            shard.offset, shard.length = old["offset"].tolist(), old["length"].tolist()
        issues = _merge_stale_issues(Issues.from_dict(rec.issues), issues, st.stale)
    if n == 0 or shard is None:
        write_record(
            root,
            Record(
                idx, unit_source(plan, idx), 0, None, None, labs.columns(), names, issues.to_dict()
            ),
        )
        return
    if plan.format == "tar" and shard.offset is None:
        raise LabelError(f"shard {shard.name!r}: tar shard without byte offsets")
    labels = ShardLabels(
        key=keys,
        domain=np.asarray(values["domain"], dtype=np.int32),
        tokens=np.asarray(values["tokens"], dtype=np.int64),
        scores=(
            np.column_stack([np.asarray(values[s], dtype=np.float64) for s in names])
            if names
            else np.zeros((n, 0))
        ),
        offset=np.asarray(shard.offset, dtype=np.int64) if shard.offset is not None else None,
        length=np.asarray(shard.length, dtype=np.int64) if shard.length is not None else None,
        digest=p.digests,
    )
    side_sha = root.write_sidecar(shard.sidecar, labels, names)
    write_record(
        root,
        Record(
            idx,
            unit_source(plan, idx),
            n,
            shard_dict(shard),
            side_sha,
            labs.columns(),
            names,
            issues.to_dict(),
        ),
    )


def _column_of(kind: str) -> str | None:
    """``truncated[dclm]`` → ``dclm``; document-level kinds (no brackets) → ``None``."""
    return kind[kind.find("[") + 1 : -1] if kind.endswith("]") and "[" in kind else None


def _merge_stale_issues(old: Issues, new: Issues, stale: Sequence[str]) -> Issues:
    """The unit's issues after relabelling ``stale`` columns: document-level and current
    columns' issues from the record, the relabelled columns' from this run."""
    out = Issues()
    for k, v in old.counts.items():
        if _column_of(k) not in stale:
            out.counts[k] = v
            out.examples[k] = list(old.examples.get(k, []))
    for k, v in new.counts.items():
        if _column_of(k) in stale:
            out.counts[k] = v
            out.examples[k] = list(new.examples.get(k, []))
    return out


def unit_source(plan: Plan, idx: int) -> str:
    """Where unit ``idx`` came from, as its record says."""
    u = plan.units[idx]
    return f"{u.source}[{u.start}:{u.stop}]" if plan.mode == "new" else u.source


__all__ = ["Labelled", "commit_unit", "read_old_sidecar", "unit_source"]
