"""The stream over object storage: a real S3 API (moto's server) on the loopback interface, real
s3fs/boto3 clients, and a fault-injecting proxy between them (dropped connections, 503s,
truncated bodies, read timeouts). What the stream emits from ``s3://`` must be exactly what it
emits from the same shards on local disk, under faults, across torchrun ranks and DataLoader
workers, and across a resume."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import domain_mixture
from quadmix_stream.storage.store import StorageConfig, StorageError
from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs
from tests.support.s3local import FaultProxy, LocalS3
from tests.support.streamutil import wide_params

from .test_scale_stream import pairs, sampled, torchrun

BUCKET = "qms-tests"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server behind a fault proxy; this process and its children talk to the proxy."""
    from quadmix_stream.synth import synth

    root = tmp_path_factory.mktemp("remote")
    with LocalS3() as server, FaultProxy(server.endpoint_url, seed=1) as proxy:
        saved = dict(os.environ)
        os.environ.update(server.env(proxy.endpoint_url))
        try:
            # many small shards: several windows per consumer with shuffle_block_shards=4
            for fmt in ("mds", "tar", "jsonl", "parquet"):
                synth(root / fmt, fmt, docs_per_domain=120, seed=0, rows_per_shard=12)
                server.upload_dir(root / fmt, f"s3://{BUCKET}/{fmt}")
            yield server, proxy, root
        finally:
            os.environ.clear()
            os.environ.update(saved)


def items(ds, workers: int = 0, context: str | None = None) -> list[tuple]:
    if not workers:
        return [(int(d["key"]), d["copy"], d["text"]) for d in ds]
    loader = DataLoader(
        ds,
        batch_size=7,
        num_workers=workers,
        collate_fn=collate_docs,
        multiprocessing_context=context,
    )
    return [
        (int(k), c, t)
        for b in loader
        for k, c, t in zip(b["key"], b["copy"], b["text"], strict=True)
    ]


def remote(url: str, params, tmp_path: Path, **kw) -> QuaDMixDataset:
    storage = StorageConfig(cache_dir=tmp_path / "cache", backoff_s=0.01, **kw)
    return QuaDMixDataset(
        url, params, seed=3, balance=None, shuffle_block_shards=4, storage=storage
    )


def sparse(root: Path):
    m = Manifest.load(root)
    return domain_mixture(m.domains, m.scorer_names, [0.1] * len(m.domains))


@pytest.mark.parametrize("fmt", ["mds", "tar", "jsonl", "parquet"])
def test_remote_stream_is_the_local_stream(s3, tmp_path, fmt):
    _, proxy, root = s3
    proxy.faults = {}
    # these shards are a few KB: any request cost would make whole shards the cheaper choice
    for params in (wide_params(root / fmt), sparse(root / fmt)):
        local = QuaDMixDataset(root / fmt, params, seed=3, balance=None, shuffle_block_shards=4)
        want = items(local)
        ds = remote(
            f"s3://{BUCKET}/{fmt}", params, tmp_path / params.fingerprint(), request_bytes=0
        )
        assert items(ds) == want  # same documents, copies and order
    if fmt in ("mds", "tar"):  # the sparse selection read byte ranges, not whole shards
        m = Manifest.load(root / fmt)
        shard_bytes = sum(e.shard_bytes for e in m.shards)
        cached = [p for p in (tmp_path / params.fingerprint() / "cache").rglob("*")]
        assert not [p for p in cached if p.name.endswith((".mds", ".tar"))]
        # everything fetched but the shards' bytes: manifest, MDS index, sidecars
        other = sum(
            p.stat().st_size
            for p in (root / fmt).iterdir()
            if not p.name.endswith((".mds", ".tar"))
        )
        assert ds.store.bytes_fetched - other < 0.3 * shard_bytes


@pytest.mark.slow
def test_faults_lose_and_repeat_nothing(s3, tmp_path):
    """Fork workers here; spawn workers meet faults in the torchrun test below."""
    _, proxy, root = s3
    params = wide_params(root / "mds")
    want = Counter(items(QuaDMixDataset(root / "mds", params, seed=3, balance=None)))
    proxy.reset_counters()
    proxy.faults = {"drop": 0.08, "error": 0.08, "truncate": 0.08, "delay": 0.02}
    proxy.delay_s, proxy.max_faults = 3.0, 60
    try:
        ds = remote(
            f"s3://{BUCKET}/mds",
            params,
            tmp_path,
            # a delayed response times out and is asked again
            storage_options={"config_kwargs": {"read_timeout": 1, "connect_timeout": 1}},
        )
        got = Counter(items(ds, workers=2, context="fork"))
    finally:
        proxy.faults = {}
    assert got == want
    injected = proxy.faults_injected
    assert {"drop", "error", "truncate"} <= {k for k, v in injected.items() if v}, injected


@pytest.mark.slow
def test_torchrun_resume_under_faults_is_exact(s3, tmp_path):
    """2 ranks × 2 fork workers consume part of the epoch through a faulty endpoint; 3 ranks ×
    1 spawn worker resume from the gathered state: together exactly `sample`'s counts."""
    _, proxy, root = s3
    url = f"s3://{BUCKET}/jsonl"
    params = wide_params(root / "jsonl")
    params.save(tmp_path / "p.json")
    os.environ["QUADMIX_CACHE"] = str(tmp_path / "node-cache")
    proxy.faults, proxy.max_faults = {"drop": 0.05, "error": 0.05, "truncate": 0.05}, 40
    proxy.reset_counters()
    try:
        torchrun(2, url, str(tmp_path / "p.json"), str(tmp_path), "first", "2", "fork", "4")
        torchrun(3, url, str(tmp_path / "p.json"), str(tmp_path), "rest", "1", "spawn", "4")
    finally:
        proxy.faults = {}
    assert sum(proxy.faults_injected.values()) > 0
    consumed, rest = pairs(tmp_path, "first", 2), pairs(tmp_path, "rest", 3)
    assert len(consumed) == 5 * (20 + 29)
    want = sampled(url, tmp_path / "p.json", tmp_path / "sample.jsonl")  # `sample` reads S3 too
    assert Counter(consumed + rest) == want


def test_missing_or_changed_shards_are_errors_naming_the_url(s3, tmp_path):
    server, proxy, root = s3
    proxy.faults = {}
    url = f"s3://{BUCKET}/broken"
    server.upload_dir(root / "mds", url)
    m = Manifest.load(root / "mds")
    params = wide_params(root / "mds")
    client = server.client()
    gone, changed = m.shards[0].name, m.shards[1].name
    client.delete_object(Bucket=BUCKET, Key=f"broken/{gone}")
    data = bytearray((root / "mds" / changed).read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes
    client.put_object(Bucket=BUCKET, Key=f"broken/{changed}", Body=bytes(data))
    for shard, words in ((0, "no such file"), (1, "do not match the manifest's sha256")):
        ds = remote(url, params, tmp_path / str(shard))
        with pytest.raises(StorageError) as e:
            ds._open(shard, 0).close()
        assert f"{url}/{m.shards[shard].name}" in str(e.value) and words in str(e.value)
        assert "testing" not in str(e.value)  # credentials are never shown


def test_cache_limit_is_kept(s3, tmp_path):
    _, proxy, root = s3
    proxy.faults = {}
    params = wide_params(root / "tar")
    m = Manifest.load(root / "tar")
    biggest = max(e.shard_bytes for e in m.shards)
    limit = 3 * biggest
    ds = remote(f"s3://{BUCKET}/tar", params, tmp_path, cache_limit=limit, prefetch_threads=2)
    want = items(QuaDMixDataset(root / "tar", params, seed=3, balance=None, shuffle_block_shards=4))
    assert items(ds) == want
    held = sum(p.stat().st_size for p in ds.store.folder.iterdir() if p.is_file())
    assert held <= limit
    # every shard (and sidecar) was fetched, some more than once: the cache did evict
    assert ds.store.bytes_fetched >= sum(e.shard_bytes for e in m.shards)
    shutil.rmtree(tmp_path / "cache")


def test_auto_window_fits_the_cache_and_streams_as_that_window(s3, tmp_path):
    """From the bucket, "auto" picks the largest window whose shards in flight fit cache_limit,
    says so, and streams exactly what that explicit window streams."""
    _, proxy, root = s3
    proxy.faults = {}
    m = Manifest.load(root / "mds")
    mean = sum(s.shard_bytes for s in m.shards) / len(m.shards)
    limit = int(2 * 3 * 5.5 * mean)  # 3 consumers on the node: 5 shards per window fit
    storage = StorageConfig(cache_dir=tmp_path / "cache", backoff_s=0.01, cache_limit=limit)
    params = wide_params(root / "mds")
    url = f"s3://{BUCKET}/mds"
    ds = QuaDMixDataset(
        url,
        params,
        seed=3,
        balance=None,
        shuffle_block_shards="auto",
        consumers_per_node=3,
        storage=storage,
    )
    assert ds.block_shards == 5 and "5 shards per window" in ds.window_note
    want = items(QuaDMixDataset(root / "mds", params, seed=3, balance=None, shuffle_block_shards=5))
    assert items(ds) == want
