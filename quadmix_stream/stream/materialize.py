"""Offline materialisation: the realised copies of every document for (params, seed, epoch).

Computed one shard at a time through the stream's own path (:class:`~quadmix_stream.stream.tables.PoolTables`),
so the counts are the ones the loader emits, and memory stays one shard whatever the pool's size.
The output is written to a temporary file and renamed when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.io import open_tmp
from quadmix_stream.stream.selection import RankConfig
from quadmix_stream.stream.tables import PoolTables


def iter_sample(
    root: str | Path,
    params: SamplingParams,
    seed: int,
    epoch: int,
    config: RankConfig = RankConfig(),
    cache_dir: str | Path | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Per shard: columns ``key``, ``shard`` (shard index), ``row`` and ``count``."""
    manifest = Manifest.load(root)
    params.check_names(manifest.domains, manifest.scorer_names)
    tables = PoolTables(root, manifest, config, cache_dir)
    for s, lab, _, counts in tables.iter_counts(params, seed, epoch):
        yield {
            "key": lab.key,
            "shard": np.full(lab.rows, s, dtype=np.int64),
            "row": np.arange(lab.rows, dtype=np.int64),
            "count": counts.astype(np.int64),
        }


def write_sample(
    root: str | Path,
    params: SamplingParams,
    seed: int,
    epoch: int,
    out: str | Path,
    keep_zero: bool = True,
) -> int:
    """Write every document's count as JSONL (or Parquet when ``out`` ends in .parquet).

    Returns the number of rows written.
    """
    manifest = Manifest.load(root)
    names = [s.name for s in manifest.shards]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = open_tmp(out, 0o666)  # the umask decides, as for any file the user writes
    os.close(fd)
    n = 0
    try:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [
                    ("key", pa.uint64()),
                    ("shard", pa.string()),
                    ("row", pa.int64()),
                    ("count", pa.int64()),
                ]
            )
            with pq.ParquetWriter(tmp, schema) as w:
                for cols in iter_sample(root, params, seed, epoch):
                    cols = _kept(cols, keep_zero)
                    n += cols["key"].size
                    w.write_table(
                        pa.table(
                            {
                                "key": pa.array(cols["key"], pa.uint64()),
                                "shard": pa.array([names[i] for i in cols["shard"].tolist()]),
                                "row": pa.array(cols["row"]),
                                "count": pa.array(cols["count"]),
                            },
                            schema=schema,
                        )
                    )
        else:
            with open(tmp, "w") as f:
                for cols in iter_sample(root, params, seed, epoch):
                    cols = _kept(cols, keep_zero)
                    n += cols["key"].size
                    for k, s, r, c in zip(
                        cols["key"].tolist(),
                        cols["shard"].tolist(),
                        cols["row"].tolist(),
                        cols["count"].tolist(),
                        strict=True,
                    ):
                        f.write(
                            json.dumps({"key": k, "shard": names[s], "row": r, "count": c}) + "\n"
                        )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def _kept(cols: dict[str, np.ndarray], keep_zero: bool) -> dict[str, np.ndarray]:
    if keep_zero:
        return cols
    m = cols["count"] > 0
    return {k: v[m] for k, v in cols.items()}
