"""tables.py: PoolTables over a small synthetic MDS pool: rows → shards, one shard's labels and
counts, and the cached pool-wide passes (domain sizes, per-shard totals, mixtures).

Domain-only mixtures with integer η make every count known in advance (S = η[domain] exactly),
so expected values come from the sidecars read with numpy, not from the module.
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil

import numpy as np
import pytest

import quadmix_stream.stream.tables as tables_mod
from quadmix_stream.errors import UserError
from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.mixing.params import SamplingParams, domain_mixture
from quadmix_stream.stream.tables import PoolTables

pytestmark = pytest.mark.core

ETA = [0, 1, 2, 3, 1]  # copies per document of each domain


@pytest.fixture(scope="module")
def pool(mds_ds):
    """(manifest, per-shard (domain, tokens) read straight from the sidecars)."""
    manifest = Manifest.load(mds_ds)
    cols = []
    for entry in manifest.shards:
        with np.load(mds_ds / entry.sidecar, allow_pickle=False) as z:
            cols.append((z["domain"].astype(np.int64), z["tokens"].astype(np.int64)))
    return manifest, cols


@pytest.fixture
def tables(mds_ds, pool, tmp_path):
    return PoolTables(mds_ds, pool[0], cache_dir=tmp_path / "cache")


def mixture_params(manifest, eta=ETA):
    return domain_mixture(manifest.domains, manifest.scorer_names, eta)


def test_a_manifest_without_shards_is_refused(mds_ds, pool, tmp_path):
    empty = dataclasses.replace(pool[0], shards=[])
    with pytest.raises(LabelError, match="the manifest lists no shards"):
        PoolTables(mds_ds, empty, cache_dir=tmp_path)


def test_shard_of_row(tables, pool):
    rows = [e.rows for e in pool[0].shards]
    starts = np.concatenate([[0], np.cumsum(rows)])
    assert tables.n_shards == len(rows)
    assert tables.shard_start.tolist() == starts.tolist()
    assert tables.shard_of_row(0) == (0, 0)
    assert tables.shard_of_row(rows[0] - 1) == (0, rows[0] - 1)
    assert tables.shard_of_row(rows[0]) == (1, 0)
    assert tables.shard_of_row(int(starts[5]) + 7) == (5, 7)
    last = len(rows) - 1
    assert tables.shard_of_row(int(starts[-1]) - 1) == (last, rows[-1] - 1)


def test_labels_are_the_shards_sidecar_and_a_few_stay_cached(tables, pool):
    manifest, cols = pool
    tables.keep_shards = 2
    for s in (0, 3, len(manifest.shards) - 1):
        lab = tables.labels(s)
        assert lab.domain.tolist() == cols[s][0].tolist()
        assert lab.tokens.tolist() == cols[s][1].tolist()
        assert lab.rows == manifest.shards[s].rows
    first = tables.labels(0)
    assert tables.labels(0) is first  # cached
    tables.labels(1)
    assert tables.labels(0) is first  # still one of the two most recent
    tables.labels(1)
    tables.labels(2)
    again = tables.labels(0)  # dropped: read again
    assert again is not first and again.key.tolist() == first.key.tolist()


def test_domain_sizes(tables, pool):
    m = len(pool[0].domains)
    want = sum(np.bincount(d, minlength=m) for d, _ in pool[1])
    assert tables.domain_sizes().tolist() == want.tolist()


def test_expected_and_counts_of_a_domain_mixture(tables, pool):
    manifest, cols = pool
    params = mixture_params(manifest)
    eta = np.array(ETA)
    for s in range(tables.n_shards):
        domain = cols[s][0]
        assert tables.expected(s, params).tolist() == eta[domain].astype(float).tolist()
        c = tables.counts(s, params, seed=3, epoch=1)
        assert c.dtype == np.uint8
        assert c.tolist() == eta[domain].tolist()


def test_counts_are_drawn_per_seed_and_epoch(tables, pool):
    params = mixture_params(pool[0], [0.5] * 5)  # S = 0.5: each document 0 or 1 copy
    draws = {
        (seed, epoch): tables.counts(4, params, seed, epoch).tolist()
        for seed in (0, 1)
        for epoch in (0, 1)
    }
    assert draws[(0, 0)] == tables.counts(4, params, 0, 0).tolist()
    assert len({tuple(v) for v in draws.values()}) == 4
    for v in draws.values():
        assert set(v) == {0, 1} and 20 < sum(v) < 80  # 100 documents at p = 0.5


def test_too_many_copies_are_refused(tables, pool):
    manifest = pool[0]
    params = mixture_params(manifest, [300.0] * 5)
    with pytest.raises(
        UserError,
        match=rf"^shard '{manifest.shards[0].name}': a document gets 300 copies under these "
        r"params; at most 255 are supported \(lower η\)$",
    ):
        tables.counts(0, params, 0, 0)
    assert tables.counts(0, mixture_params(manifest, [255.0] * 5), 0, 0).max() == 255


def test_totals_are_items_per_shard(tables, pool):
    manifest, cols = pool
    params = mixture_params(manifest)
    want = [int(np.array(ETA)[d].sum()) for d, _ in cols]
    t = tables.totals(params, seed=0, epoch=2)
    assert t.shape == (tables.n_shards,)
    assert t.tolist() == want
    assert sum(want) == sum(e * 240 for e in ETA)  # 240 documents per domain


def test_totals_come_from_the_node_cache(mds_ds, pool, tmp_path):
    manifest = pool[0]
    params = mixture_params(manifest)
    a = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    want = a.totals(params, 0, 0).tolist()
    b = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    b.labels = None  # a fresh process with a warm cache reads no shard's labels
    assert b.totals(params, 0, 0).tolist() == want


def test_cached_totals_are_known_without_reading_them(mds_ds, pool, tmp_path):
    params = mixture_params(pool[0])
    a = PoolTables(mds_ds, pool[0], cache_dir=tmp_path)
    assert not a.has_totals(params, 0, 2)
    a.totals(params, 0, 2)
    b = PoolTables(mds_ds, pool[0], cache_dir=tmp_path)
    assert a.has_totals(params, 0, 2) and b.has_totals(params, 0, 2)
    assert not b.has_totals(params, 0, 3) and not b.has_totals(params, 1, 2)


def test_totals_of_a_wrong_shape_in_the_cache(tables, pool):
    params = mixture_params(pool[0])
    tables.domain_sizes()  # creates the cache folder
    name = f"totals-{params.fingerprint()}-{tables.config.fingerprint()}-s0-e0"
    np.savez(tables.folder / f"{name}.npz", totals=np.zeros(3, np.int64))
    with pytest.raises(OSError, match=rf"{name}\.npz: wrong shape \(3,\); delete it to recompute"):
        tables.totals(params, 0, 0)


def test_chunked_passes_give_the_same_tables(mds_ds, pool, tmp_path, monkeypatch):
    manifest, cols = pool
    params = mixture_params(manifest)
    whole = PoolTables(mds_ds, manifest, cache_dir=tmp_path / "a")
    assert whole.chunk_bounds == [0, whole.n_shards]
    monkeypatch.setattr(tables_mod, "CHUNK_ROWS", 250)  # 2 shards of 100 rows per chunk
    chunked = PoolTables(mds_ds, manifest, cache_dir=tmp_path / "b")
    assert chunked.chunk_bounds == list(range(0, whole.n_shards, 2)) + [whole.n_shards]
    assert chunked.domain_sizes().tolist() == whole.domain_sizes().tolist()
    assert chunked.totals(params, 1, 0).tolist() == whole.totals(params, 1, 0).tolist()
    for k, v in chunked.mixture(params, 1, 0).items():
        assert v.tolist() == whole.mixture(params, 1, 0)[k].tolist()


@pytest.mark.parametrize("epoch", [None, 0])
def test_mixture(tables, pool, epoch):
    manifest, cols = pool
    params = mixture_params(manifest)
    m = len(manifest.domains)
    eta = np.array(ETA, dtype=float)
    sizes = sum(np.bincount(d, minlength=m) for d, _ in cols)
    tokens = sum(np.bincount(d, weights=t, minlength=m) for d, t in cols)
    got = tables.mixture(params, seed=5, epoch=epoch)
    assert sorted(got) == ["docs", "tokens", "unique_docs"]
    assert got["docs"].tolist() == (eta * sizes).tolist()
    assert got["tokens"].tolist() == (eta * tokens).tolist()
    assert got["unique_docs"].tolist() == (np.minimum(eta, 1) * sizes).tolist()


def test_iter_counts_walks_every_shard_in_order(tables, pool):
    manifest, cols = pool
    params = mixture_params(manifest)
    seen = []
    for s, lab, expected, counts in tables.iter_counts(params, 0, 0):
        seen.append(s)
        assert lab.domain.tolist() == cols[s][0].tolist()
        assert expected.tolist() == np.array(ETA, dtype=float)[cols[s][0]].tolist()
        assert counts.tolist() == np.array(ETA)[cols[s][0]].tolist()
    assert seen == list(range(tables.n_shards))


def test_pickling_and_fork_drop_the_shard_caches(tables, pool):
    params = mixture_params(pool[0])
    want = tables.totals(params, 0, 0).tolist()
    tables.labels(0)
    clone = pickle.loads(pickle.dumps(tables))
    assert clone.shard_start.tolist() == tables.shard_start.tolist()
    assert clone.domain_sizes().tolist() == tables.domain_sizes().tolist()  # small tables kept
    assert clone._labels == {} and clone._counts == {}
    assert clone.totals(params, 0, 0).tolist() == want
    other = tables.fork()
    assert other._totals == {} and other._models == {} and other._labels == {}
    assert other.totals(params, 0, 0).tolist() == want
    assert tables._labels  # the original keeps its own caches


def test_verify_shards_hashes_each_shard(mds_ds, pool, tmp_path):
    manifest = pool[0]
    root = tmp_path / "ds"
    shutil.copytree(mds_ds, root)
    name = manifest.shards[2].name
    data = bytearray((root / name).read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    (root / name).write_bytes(bytes(data))
    assert PoolTables(root, manifest, cache_dir=tmp_path / "c").labels(2).rows == 100
    strict = PoolTables(root, manifest, cache_dir=tmp_path / "c", verify_shards=True)
    assert strict.labels(1).rows == 100
    with pytest.raises(
        LabelError, match=rf"shard '{name}': field 'shard_sha256' does not match the file"
    ):
        strict.labels(2)


def test_the_rank_model_is_built_once_per_node_and_alpha(mds_ds, pool, tmp_path, monkeypatch):
    """A second process (here: a second PoolTables on the same cache) loads Eq. 2's rank model
    from the node cache instead of sorting the reference again, and ranks the same; params that
    differ only in λ, ω, η or ε share it."""
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.selection import RankModel

    manifest = pool[0]
    p = SamplingParams.propose(1, manifest.domains, manifest.scorer_names, seed=5)[0]
    builds = []
    real = RankModel.build.__func__
    monkeypatch.setattr(
        RankModel, "build", classmethod(lambda cls, *a: builds.append(1) or real(cls, *a))
    )
    a = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    want = [a.expected(s, p) for s in range(a.n_shards)]
    b = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    scaled = dataclasses.replace(p, eta=p.eta * 2, eps=p.eps * 2, lam=p.lam + 1)
    assert all(np.array_equal(b.expected(s, p), want[s]) for s in range(b.n_shards))
    b.expected(0, scaled)
    assert len(builds) == 1
    other = dataclasses.replace(p, alpha=np.roll(p.alpha, 1, axis=1))
    b.expected(0, other)
    assert len(builds) == 2


def test_counts_come_from_the_node_cache_the_totals_pass_wrote(mds_ds, pool, tmp_path):
    """The totals pass keeps each chunk's counts (a byte per document): another process reads
    its shards' counts from there, reading no labels; a damaged file is recomputed around."""
    manifest = pool[0]
    params = SamplingParams.propose(1, manifest.domains, manifest.scorer_names, seed=2)[0]
    a = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    a.totals(params, 0, 3)
    want = [a._compute_counts(s, params, 0, 3) for s in range(a.n_shards)]
    b = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    b.labels = None  # a warm process reads no shard's labels for its counts
    assert all(np.array_equal(b.counts(s, params, 0, 3), want[s]) for s in range(b.n_shards))
    (chunk,) = list(a._counts_dir(params, 0, 3).glob("0.u8"))
    chunk.write_bytes(chunk.read_bytes()[:-1])  # cut short: not taken for the chunk's counts
    c = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    assert c._cached_counts(0, params, 0, 3) is None
    assert np.array_equal(c.counts(0, params, 0, 3), want[0])


def test_cached_counts_are_pruned_to_the_newest_sets(mds_ds, pool, tmp_path):
    manifest = pool[0]
    t = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    params = mixture_params(manifest)
    for epoch in range(9):
        t.totals(params, 0, epoch)
    kept = sorted(p.name for p in tmp_path.rglob("counts-*"))
    assert len(kept) == 6 and all(f"-e{e}" in " ".join(kept) for e in range(3, 9))
    fresh = PoolTables(mds_ds, manifest, cache_dir=tmp_path)
    assert fresh._cached_counts(0, params, 0, 0) is None  # pruned: computed again, the same
    assert np.array_equal(fresh.counts(0, params, 0, 0), t._compute_counts(0, params, 0, 0))
