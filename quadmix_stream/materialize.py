"""Offline materialisation: the realised copies of every document for (params, seed, epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quadmix_stream.io import atomic_write_bytes
from quadmix_stream.labels import Manifest, load_labels
from quadmix_stream.params import SamplingParams
from quadmix_stream.selection import Selection


def sample_counts(
    root: str | Path, params: SamplingParams, seed: int, epoch: int
) -> dict[str, np.ndarray]:
    """Columns ``key``, ``shard`` (file name index), ``row``, ``count`` for every document."""
    manifest = Manifest.load(root)
    lab = load_labels(root, manifest)
    counts = Selection(lab, manifest, params, seed).counts(epoch)
    return {"key": lab.key, "shard": lab.shard, "row": lab.row, "count": counts}


def write_sample(
    root: str | Path,
    params: SamplingParams,
    seed: int,
    epoch: int,
    out: str | Path,
    keep_zero: bool = True,
) -> int:
    """Write :func:`sample_counts` as JSONL (or Parquet when ``out`` ends in .parquet); returns rows."""
    manifest = Manifest.load(root)
    cols = sample_counts(root, params, seed, epoch)
    if not keep_zero:
        m = cols["count"] > 0
        cols = {k: v[m] for k, v in cols.items()}
    names = [s.name for s in manifest.shards]
    out = Path(out)
    if out.suffix == ".parquet":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "key": pa.array(cols["key"], pa.uint64()),
                "shard": pa.array([names[i] for i in cols["shard"]]),
                "row": pa.array(cols["row"]),
                "count": pa.array(cols["count"]),
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(out, buf.getvalue())
    else:
        lines = (
            json.dumps({"key": k, "shard": names[s], "row": r, "count": c})
            for k, s, r, c in zip(
                cols["key"].tolist(),
                cols["shard"].tolist(),
                cols["row"].tolist(),
                cols["count"].tolist(),
                strict=True,
            )
        )
        atomic_write_bytes(out, ("\n".join(lines) + "\n").encode())
    return int(cols["key"].size)
