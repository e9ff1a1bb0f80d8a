"""``quadmix-stream bench remote``: reading shards from an S3 endpoint, against StreamingDataset.

One run starts moto's S3 server on the loopback interface with a proxy in front of it that adds
a fixed latency per request (a realistic object-store round trip) and counts the body bytes it
sends. The same uncompressed MDS shards are uploaded once and read, each with a fresh local
cache, by:

(a) mosaicml-streaming ``StreamingDataset(remote=…)`` in a 2-worker DataLoader (its docs'
    configuration: ``batch_size`` equal to the DataLoader's, no shuffle);
(b) ``QuaDMixDataset`` keeping every document, in a 2-worker DataLoader;
(c) ``QuaDMixDataset`` at ~10 % selection (η = 0.1 everywhere), in a 2-worker DataLoader,
    with the default ``request_bytes`` (1 MiB: a request costs as much as 1 MiB of transfer;
    with these 1.7 KB documents that fetches whole shards);
    (c') the same with ``request_bytes`` = 8 KiB: the kept rows by byte ranges, fewest bytes.

For each latency it prints items/s, requests and bytes fetched per delivered item, and the
ratios the targets of docs/benchmarks.md name: (b)/(a) items/s, (c)/(b) bytes per epoch and
(c)/(b) items/s.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams

BUCKET = "qms-bench"
BATCH = 64


def _measure(proxy, make: Callable[[], Iterable]) -> dict[str, float]:
    proxy.reset_counters()
    t0 = time.perf_counter()
    n = sum(len(b) for b in make())
    dt = time.perf_counter() - t0
    return {
        "items": n,
        "seconds": dt,
        "items_s": n / dt,
        "bytes": proxy.bytes_out,
        "requests": sum(proxy.requests.values()),
    }


def _test_servers() -> tuple[type, type]:
    """The test suite's loopback S3 server and latency proxy (``tests/support``, not installed:
    this benchmark runs from a source checkout)."""
    import sys

    from quadmix_stream.errors import UserError

    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "support" / "s3local.py").is_file():
        raise UserError(
            "bench remote starts the test suite's local S3 server (tests/support/): run it from "
            "a source checkout installed with `pip install -e '.[dev]'`"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from tests.support.s3local import FaultProxy, LocalS3

    return FaultProxy, LocalS3


def run(
    work: str | None,
    docs_per_domain: int,
    rows_per_shard: int,
    latencies: list[float],
    corpus: str | None = None,
) -> list[dict]:
    """Run the benchmark; returns one row per (latency, reader)."""
    import torch

    from quadmix_stream.benchmarks.corpus import bench_docs, write_corpus

    FaultProxy, LocalS3 = _test_servers()

    torch.set_num_threads(1)
    tmp = Path(work or tempfile.mkdtemp(prefix="qms-bench-remote-"))
    mds = tmp / "mds"
    if not (mds / "quadmix.json").exists():
        shutil.rmtree(mds, ignore_errors=True)
        docs = bench_docs(corpus, docs_per_domain)
        print(f"writing {len(docs):,} documents as uncompressed MDS under {mds} …", flush=True)
        write_corpus(mds, "mds", iter(docs), rows_per_shard=rows_per_shard)
    m = Manifest.load(mds)
    keep_all = SamplingParams.keep_all(m.domains, m.scorer_names)
    tenth = replace(keep_all, eta=np.full(len(m.domains), 0.1), provenance="bench: η = 0.1")
    shard_bytes = sum(e.shard_bytes for e in m.shards)
    print(
        f"{m.rows:,} documents in {len(m.shards)} shards, {shard_bytes / 1e6:.1f} MB of shards "
        f"({shard_bytes / max(m.rows, 1):,.0f} B/document)",
        flush=True,
    )
    rows: list[dict] = []
    saved = dict(os.environ)
    with LocalS3() as s3, FaultProxy(s3.endpoint_url) as proxy:
        s3.upload_dir(mds, f"s3://{BUCKET}/mds")
        os.environ.update(s3.env(proxy.endpoint_url))
        os.environ["S3_ENDPOINT_URL"] = proxy.endpoint_url  # mosaicml-streaming's spelling
        try:
            for latency in latencies:
                proxy.latency_s = latency
                print(f"\nper-request latency {latency * 1000:.0f} ms:", flush=True)
                for name, make in _readers(tmp, keep_all, tenth):
                    r = {"latency_ms": latency * 1000, "reader": name, **_measure(proxy, make)}
                    rows.append(r)
                    print(
                        f"  {name:<44} {r['items_s']:>9,.0f} items/s  {r['items']:>7,} items  "
                        f"{r['bytes'] / max(r['items'], 1):>7,.0f} B/item  "
                        f"{r['requests'] / max(r['items'], 1):.3f} requests/item  "
                        f"({r['seconds']:.1f} s)",
                        flush=True,
                    )
                a, b, c, _ = rows[-4:]
                print(
                    f"  ratios: (b)/(a) items/s = {b['items_s'] / a['items_s']:.2f} (goal ≥ 1.0); "
                    f"(c)/(b) bytes per epoch = {c['bytes'] / b['bytes']:.2f} (goal ≤ 0.3); "
                    f"(c)/(b) items/s = {c['items_s'] / b['items_s']:.2f} (goal ≥ 0.5)",
                    flush=True,
                )
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return rows


def _readers(
    tmp: Path, keep_all: SamplingParams, tenth: SamplingParams
) -> list[tuple[str, Callable[[], Iterable]]]:
    """(name, a function making a fresh iterable of batches), each with an empty cache."""
    from streaming import StreamingDataset
    from torch.utils.data import DataLoader

    from quadmix_stream.storage.store import StorageConfig
    from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs

    url = f"s3://{BUCKET}/mds"

    def fresh(name: str) -> Path:
        d = tmp / "caches" / name
        shutil.rmtree(d, ignore_errors=True)
        return d

    def streaming() -> Iterable:
        sd = StreamingDataset(
            remote=url, local=str(fresh("streaming")), batch_size=BATCH, shuffle=False
        )
        return DataLoader(sd, batch_size=BATCH, num_workers=2, collate_fn=lambda b: b)

    def quadmix(params: SamplingParams, name: str, **storage) -> Callable[[], Iterable]:
        def make() -> Iterable:
            cache = fresh(name)
            ds = QuaDMixDataset(
                url,
                params,
                seed=0,
                balance=None,
                cache_dir=cache / "tables",
                storage=StorageConfig(cache_dir=cache / "remote", **storage),
            )
            loader = DataLoader(ds, batch_size=BATCH, num_workers=2, collate_fn=collate_docs)
            return (b["key"] for b in loader)

        return make

    return [
        ("(a) StreamingDataset(remote), 2 workers", streaming),
        ("(b) QuaDMixDataset keep-all, 2 workers", quadmix(keep_all, "keep-all")),
        ("(c) QuaDMixDataset ~10% selection, 2 workers", quadmix(tenth, "tenth")),
        ("(c') the same, request_bytes=8 KiB", quadmix(tenth, "tenth-8kib", request_bytes=8192)),
    ]
