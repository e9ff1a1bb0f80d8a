"""QuaDMixDataset: the eight guarantees of docs/design.md, each with its own test."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.io import sha256_file
from quadmix_stream.stream.checkpoint import gather_state
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.state import StateError, merge_states
from tests.support.streamutil import (
    all_counts,
    all_labels,
    as_counter,
    expected_items,
    favouring,
    ids,
    mixture_of,
    walk_loader,
    wide_params,
)

pytestmark = pytest.mark.core


def make(root, params=None, **kw) -> QuaDMixDataset:
    kw.setdefault("seed", 7)
    kw.setdefault("shuffle_block_shards", 3)
    return QuaDMixDataset(root, params or wide_params(root), **kw)


# ---------------------------------------------------------------- 1. exact multiplicity
def test_walk_matches_sample_command_in_every_format(any_ds, tmp_path):
    from quadmix_stream.cli import main

    p = wide_params(any_ds)
    p.save(tmp_path / "p.json")
    main(
        [
            "sample",
            str(any_ds),
            "--params",
            str(tmp_path / "p.json"),
            "--seed",
            "7",
            "--epoch",
            "2",
            "--out",
            str(tmp_path / "s.jsonl"),
        ]
    )
    want = Counter()
    for line in (tmp_path / "s.jsonl").read_text().splitlines():
        r = json.loads(line)
        want.update({r["key"]: r["count"]} if r["count"] else {})
    ds = make(any_ds, p, balance=None)
    ds.set_epoch(2)
    items = list(ds)
    assert Counter(it["key"] for it in items) == want
    assert sorted(it["copy"] for it in items if it["copy"] > 0)  # repeats happen
    lab = all_labels(ds)
    by_key = {int(k): i for i, k in enumerate(lab.key.tolist())}
    for it in items[:50]:  # labels travel with the payload
        i = by_key[it["key"]]
        assert it["domain"] == ds.manifest.domains[lab.domain[i]] and it["tokens"] == lab.tokens[i]


@pytest.mark.slow
def test_exact_multiplicity_over_ranks_and_workers(mds_ds):
    world, workers = 2, 2
    got = []
    for rank in range(world):
        got += walk_loader(make(mds_ds, balance=None, rank=rank, world_size=world), workers)
    assert as_counter(got) == expected_items(make(mds_ds), 0)


# ---------------------------------------------------------------- 2. determinism
def test_determinism_same_sequence(tar_ds):
    a = ids(make(tar_ds, rank=1, world_size=3))
    b = ids(make(tar_ds, rank=1, world_size=3))
    assert a == b and len(a) > 100
    c = ids(make(tar_ds, rank=1, world_size=3, seed=8))
    assert a != c
    ds = make(tar_ds, rank=1, world_size=3)
    ds.set_epoch(1)
    assert ids(ds) != a  # a new epoch renews the draws and the order


# ---------------------------------------------------------------- 3. exact resume
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stop=st.integers(0, 400), epoch=st.integers(0, 3))
def test_exact_resume_at_any_point(jsonl_ds, stop, epoch):
    full = make(jsonl_ds, rank=0, world_size=2)
    full.set_epoch(epoch)
    want = ids(full)
    ds = make(jsonl_ds, rank=0, world_size=2)
    ds.set_epoch(epoch)
    it = iter(ds)
    head = [next(it) for _ in range(min(stop, len(want)))]
    state = json.loads(json.dumps(ds.state_dict()))  # survives a JSON checkpoint
    fresh = make(jsonl_ds, rank=0, world_size=2)
    fresh.load_state_dict(state)
    assert ids(head) + ids(fresh) == want


def test_exact_resume_infinite_across_epochs(mds_ds):
    ds = make(mds_ds, infinite=True)
    it = iter(ds)
    total0 = int(all_counts(ds, 0).sum())
    want = [next(it) for _ in range(total0 + 300)]
    ds2 = make(mds_ds, infinite=True)
    it2 = iter(ds2)
    head = [next(it2) for _ in range(total0 - 5)]
    fresh = make(mds_ds, infinite=True)
    fresh.load_state_dict(ds2.state_dict())
    it3 = iter(fresh)
    rest = [next(it3) for _ in range(305)]
    assert ids(head + rest) == ids(want)
    assert {x["epoch"] for x in rest} == {0, 1}


@pytest.mark.slow
def test_exact_resume_in_stateful_dataloader_with_workers(mds_ds):
    pytest.importorskip("torchdata")  # an extra's package: skipped in the core-only env
    from torchdata.stateful_dataloader import StatefulDataLoader

    from quadmix_stream.stream.dataset import collate_docs

    def loader(ds):
        return StatefulDataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_docs)

    want = [list(zip(b["key"], b["copy"], strict=True)) for b in loader(make(mds_ds, balance=None))]
    L = loader(make(mds_ds, balance=None))
    it = iter(L)
    head = [list(zip(b["key"], b["copy"], strict=True)) for b in (next(it) for _ in range(9))]
    sd = L.state_dict()
    L2 = loader(make(mds_ds, balance=None))
    L2.load_state_dict(sd)
    rest = [list(zip(b["key"], b["copy"], strict=True)) for b in L2]
    assert head + rest == want
    g = gather_state(loader=L)  # the same checkpoint as one global state
    assert sum(p[1] for p in g["progress"].values()) == 36


# ---------------------------------------------------------------- 4. elastic resume
@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after"), [((2, 2), (1, 3)), ((2, 2), (3, 1)), ((1, 1), (2, 2))]
)
def test_elastic_resume_loses_and_repeats_nothing(mds_ds, before, after):
    pytest.importorskip("torchdata")  # an extra's package: skipped in the core-only env
    from torchdata.stateful_dataloader import StatefulDataLoader

    from quadmix_stream.stream.dataset import collate_docs

    world, workers = before
    consumed, states = [], []
    for rank in range(world):
        L = StatefulDataLoader(
            make(mds_ds, balance=None, rank=rank, world_size=world),
            batch_size=3,
            num_workers=workers,
            collate_fn=collate_docs,
        )
        it = iter(L)
        for _ in range(5 + 3 * rank):  # ranks at different points, as after a crash
            b = next(it)
            consumed += list(zip(b["key"], b["copy"], strict=True))
        states.append(L.state_dict())
        del it, L
    state = json.loads(
        json.dumps(
            merge_states(
                [
                    s
                    for sd in states
                    for s in __import__(
                        "quadmix_stream.stream.state", fromlist=["find_states"]
                    ).find_states(sd)
                ]
            )
        )
    )
    world, workers = after
    rest = []
    for rank in range(world):
        ds = make(mds_ds, balance=None, rank=rank, world_size=world)
        ds.load_state_dict(state)
        rest += walk_loader(ds, workers)
    assert not set(consumed) & set(rest)
    assert as_counter(consumed + rest) == expected_items(make(mds_ds), 0)


def test_partial_state_refused_for_new_topology(mds_ds):
    ds = make(mds_ds, rank=0, world_size=2)
    it = iter(ds)
    next(it)
    st_ = ds.state_dict()
    other = make(mds_ds, rank=0, world_size=3)
    other.load_state_dict(st_)
    with pytest.raises(StateError, match="global state from gather_state"):
        next(iter(other))


# ---------------------------------------------------------------- 5. resume with new params
def test_resume_with_new_params(mds_ds):
    old, new = favouring(mds_ds, "arith"), favouring(mds_ds, "code")
    consumed, states = [], []
    for rank in range(2):
        ds = make(mds_ds, old, balance=None, rank=rank, world_size=2, shuffle_block_shards=None)
        it = iter(ds)
        consumed += ids([next(it) for _ in range(60 + 7 * rank)])
        states.append(ds.state_dict())
    state = merge_states(states)
    strict = make(mds_ds, new, rank=0, world_size=2)
    with pytest.raises(StateError, match="resume_with_new_params"):
        strict.load_state_dict(state)
    rest = sum(_rest(mds_ds, new, state, 2, shuffle_block_shards=None), [])
    assert not set(consumed) & set(rest)  # consumed stays consumed
    new_full = make(mds_ds, new, balance=None, shuffle_block_shards=None)
    new_items = ids(new_full)
    assert set(rest) <= set(new_items)  # the remainder follows the new params ...
    # ... and nothing is lost: an item that exists under both params is emitted iff it was not
    # consumed (new copies in the consumed part of the key space are not: it is consumed)
    old_items = set(ids(make(mds_ds, old, balance=None, shuffle_block_shards=None)))
    both = old_items & set(new_items)
    assert both - set(consumed) == set(rest) & both and len(both - set(consumed)) > 20
    mix = mixture_of(new_full, rest)
    code, arith = new_full.manifest.domains.index("code"), new_full.manifest.domains.index("arith")
    exp = new_full.expected_mixture()
    want_code = exp["code"]["tokens"] / sum(v["tokens"] for v in exp.values())
    assert abs(mix[code] - want_code) < 0.05 and mix[code] > 0.6 > mix[arith]


def _consumer(root, params, rank, consumers, **kw) -> QuaDMixDataset:
    """Consumer ``rank`` of ``consumers``, ready to load a state saved under other params."""
    return make(
        root,
        params,
        balance=None,
        rank=rank,
        world_size=consumers,
        resume_with_new_params=True,
        **kw,
    )


def _switched(root, before, after, stop, count, consumers=2, state=None):
    """Consume ``stop[c]`` items per consumer under ``before`` (or from ``state``), switch to
    ``after``; returns (consumed, the rest of the epoch per consumer, the merged state)."""
    consumed, states = [], []
    for rank in range(consumers):
        ds = _consumer(root, before, rank, consumers, count_consumed_copies=count)
        if state is not None:
            ds.load_state_dict(state)
        it = iter(ds)
        consumed += ids([next(it) for _ in range(stop[rank])])
        states.append(ds.state_dict())
    merged = merge_states(states)
    return consumed, _rest(root, after, merged, consumers, count_consumed_copies=count), merged


def _rest(root, params, state, consumers, **kw) -> list[list[tuple[int, int]]]:
    """Each of ``consumers``' items of the rest of the epoch after loading ``state``."""
    out = []
    for rank in range(consumers):
        ds = _consumer(root, params, rank, consumers, **kw)
        ds.load_state_dict(state)
        out.append(ids(ds))
    return out


def _counts_by_key(root, params) -> dict[int, int]:
    ds = make(root, params, balance=None)
    keys = all_labels(ds).key.tolist()
    return dict(zip(keys, all_counts(ds, 0).tolist(), strict=True))


def test_counting_consumed_copies_caps_each_document_at_the_new_count(mds_ds):
    """With ``count_consumed_copies`` a document gets after a switch at most its new count
    minus the copies it already had, and exactly the first of the copies the re-deal would
    give it without the option: nothing else changes."""
    many = favouring(mds_ds, "code", others=1.2, this=3.0)
    few = favouring(mds_ds, "code", others=0.4, this=1.0)
    stop = [130, 171]  # part-way through a window of each consumer
    consumed, plain, _ = _switched(mds_ds, many, few, stop, count=False)
    consumed2, capped, state = _switched(mds_ds, many, few, stop, count=True)
    assert consumed == consumed2
    plain, capped = sum(plain, []), sum(capped, [])
    assert not set(consumed) & set(capped) and len(set(capped)) == len(capped)
    had, new = Counter(k for k, _ in consumed), _counts_by_key(mds_ds, few)
    over = [k for k, n in Counter(k for k, _ in plain).items() if had[k] + n > max(had[k], new[k])]
    assert len(over) > 10, "the switch must lower counts of consumed documents to test anything"
    copies: dict[int, list[int]] = {}
    for k, c in plain:
        copies.setdefault(k, []).append(c)
    want = {(k, c) for k, cs in copies.items() for c in sorted(cs)[: max(0, new[k] - had[k])]}
    assert set(capped) == want
    assert state["count_consumed"] is True and "history" not in state  # taken before the switch
    after = make(mds_ds, few, rank=0, world_size=2, count_consumed_copies=False)
    with_history = merge_states(_switched(mds_ds, few, few, [5, 5], True, state=state)[2:3])
    assert with_history["history"]
    with pytest.raises(StateError, match="count_consumed_copies=True"):
        after.load_state_dict(with_history)


def test_counted_switches_resume_exactly_and_hold_across_two_switches(mds_ds):
    many = favouring(mds_ds, "code", others=1.2, this=3.0)
    few = favouring(mds_ds, "code", others=0.4, this=1.0)
    mid = favouring(mds_ds, "arith", others=0.8, this=2.0)
    consumed, rest, state = _switched(mds_ds, many, few, [130, 171], count=True)
    # an exact resume under the switched params continues item for item
    consumed_b, rest_b, state_b = _switched(mds_ds, few, mid, [40, 25], True, state=state)
    assert [consumed_b[:40], consumed_b[40:]] == [rest[0][:40], rest[1][:25]]
    # the second switch counts what both layers dealt
    had = Counter(k for k, _ in consumed + consumed_b)
    new = _counts_by_key(mds_ds, mid)
    after = Counter(k for r in rest_b for k, _ in r)
    assert all(n <= max(0, new[k] - had[k]) for k, n in after.items())
    assert not set(consumed + consumed_b) & {x for r in rest_b for x in r}
    assert len(state_b["history"]["0"]) == 1  # taken before the second switch
    # on three consumers: the same items, none twice
    three = sum(_rest(mds_ds, mid, state_b, 3, count_consumed_copies=True), [])
    assert sorted(three) == sorted(x for r in rest_b for x in r)
    ds = _consumer(mds_ds, mid, 0, 3, count_consumed_copies=True)
    ds.load_state_dict(state_b)
    assert len(ds.state_dict()["history"]["0"]) == 2


def test_a_counted_switch_to_a_sparse_selection_reads_the_same_from_kept_labels(mds_ds, tmp_path):
    """After a counted switch to params keeping one document in 12, the rest of the epoch is the
    same whether the shards are dealt and read from the kept labels or from the sidecars."""
    import dataclasses

    many = favouring(mds_ds, "code", others=1.2, this=3.0)
    m = Manifest.load(mds_ds)
    keep_all = SamplingParams.keep_all(m.domains, m.scorer_names)
    sparse = dataclasses.replace(keep_all, eta=np.full(len(m.domains), 0.08))
    consumed, states = [], []
    for rank in range(2):
        ds = _consumer(mds_ds, many, rank, 2, count_consumed_copies=True)
        it = iter(ds)
        consumed += ids([next(it) for _ in range((130, 171)[rank])])
        states.append(ds.state_dict())
    state = merge_states(states)

    def rest(**kw):
        return _rest(mds_ds, sparse, state, 2, count_consumed_copies=True, **kw)

    kept = rest(cache_dir=tmp_path / "a")
    assert list((tmp_path / "a").rglob("*.kept"))
    assert kept == rest(cache_dir=tmp_path / "b", verify_shards=True)
    assert sum(map(len, kept)) > 20 and not set(consumed) & {x for r in kept for x in r}


# ---------------------------------------------------------------- 6. decide before decode
def test_unselected_rows_are_never_read_or_decoded(tmp_path):
    from quadmix_stream.synth import synth

    root = tmp_path / "ds"
    synth(root, "jsonl", docs_per_domain=60, rows_per_shard=50)
    p = wide_params(root)
    ds = make(root, p, balance=None)
    keep = all_counts(ds, 0) > 0
    lab = all_labels(ds)
    m = Manifest.load(root)
    # overwrite every unselected row with bytes that are not JSON
    for s, e in enumerate(m.shards):
        path = root / e.name
        lines = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read().split(b"\n")
        for r in range(e.rows):
            if not keep[lab.shard_start[s] + r]:
                lines[r] = b"\xff{corrupt"
        path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines)))
        m.shards[s] = e.__class__(
            **{**e.__dict__, "shard_bytes": path.stat().st_size, "shard_sha256": sha256_file(path)}
        )
    m.save(root)
    ds = make(root, p, balance=None)
    items = list(ds)
    assert len(items) == ds.reads == int(all_counts(ds, 0).sum())
    assert (~keep).sum() > 50
    everything = make(root, SamplingParams.keep_all(m.domains, m.scorer_names), balance=None)
    with pytest.raises(LabelError, match="is not valid JSON"):
        list(everything)


def test_tar_reads_seek_past_unselected_samples(tar_ds, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(tar_ds, root)
    p = wide_params(root)
    ds = make(root, p, balance=None)
    keep = all_counts(ds, 0) > 0
    lab = all_labels(ds)
    for s, e in enumerate(Manifest.load(root).shards):
        with open(root / e.name, "r+b") as f:
            for r in range(e.rows):
                g = lab.shard_start[s] + r
                if not keep[g]:
                    f.seek(int(lab.offset[g]))
                    f.write(b"\0" * int(lab.length[g]))  # same size: the manifest still matches
    assert Counter(ids(make(root, p, balance=None))) == expected_items(ds, 0)


@pytest.mark.parametrize("fmt", ["mds", "tar"])
def test_a_sparse_selection_reads_the_kept_labels_not_the_sidecars(fmt, mds_ds, tar_ds, tmp_path):
    """A selection keeping about one document in 12: the totals pass caches the kept rows'
    labels, and a warm process deals and reads from them without opening a sidecar. Items,
    labels and texts are those the sidecars give (``verify_shards`` reads the sidecars), tar
    offsets included; a damaged kept-labels file is read around."""
    import dataclasses

    from quadmix_stream.stream import tables as tables_mod

    root = {"mds": mds_ds, "tar": tar_ds}[fmt]
    m = Manifest.load(root)
    keep_all = SamplingParams.keep_all(m.domains, m.scorer_names)
    p = dataclasses.replace(keep_all, eta=np.full(len(m.domains), 0.08))
    cache = tmp_path / "cache"

    def walk(**kw) -> list[tuple]:
        ds = make(root, p, balance=None, cache_dir=cache, **kw)
        return [(d["key"], d["row"], d["copy"], d["domain"], d["tokens"], d["text"]) for d in ds]

    want = walk(verify_shards=True)
    assert len(want) > 50 and list(cache.rglob("*.kept"))
    real = tables_mod.read_shard_labels
    tables_mod.read_shard_labels = None  # a warm process reads no sidecar
    try:
        assert walk() == want
    finally:
        tables_mod.read_shard_labels = real
    for f in cache.rglob("*.kept"):
        f.write_bytes(f.read_bytes()[:-3])  # damaged: the sidecars are read instead
    assert walk() == want
    make(root, keep_all, cache_dir=cache).epoch_total(0)  # keep-all caches no kept labels
    assert list(cache.rglob(f"counts-{keep_all.fingerprint()}-*/*.u8"))
    assert not list(cache.rglob(f"counts-{keep_all.fingerprint()}-*/*.kept"))


def test_a_few_rows_are_read_without_mapping_the_shard(mds_ds):
    """The positioned-read MDS reader (a few rows of a shard) gives what the mapped one does."""
    from quadmix_stream.formats import open_shard

    m = Manifest.load(mds_ds)
    for s in (0, len(m.shards) - 1):
        rows = m.shards[s].rows
        mapped, few = open_shard(mds_ds, m, s), open_shard(mds_ds, m, s, reads=1)
        assert few.buf is None and mapped.buf is not None
        assert [few.read(r) for r in range(rows)] == [mapped.read(r) for r in range(rows)]
        few.close()
        mapped.close()


def test_the_next_epochs_totals_are_prefetched_once_per_node(mds_ds, tmp_path):
    """The first pass computes the next epoch's totals in the background; a later pass finds
    them in the node cache and starts no thread."""
    first = make(mds_ds, balance=None, cache_dir=tmp_path)
    list(first)
    first._prefetch.join()
    assert first.tables.has_totals(first.params, first.seed, 1)
    again = make(mds_ds, balance=None, cache_dir=tmp_path)
    list(again)
    assert again._prefetch is None


# ---------------------------------------------------------------- 7. equal counts, no DDP hang
@pytest.mark.parametrize("balance", ["drop", "pad"])
def test_every_consumer_yields_the_same_count(mds_ds, balance):
    world = 3
    per_rank = [ids(make(mds_ds, balance=balance, rank=r, world_size=world)) for r in range(world)]
    n = {len(x) for x in per_rank}
    assert len(n) == 1
    total = int(all_counts(make(mds_ds), 0).sum())
    got = sum(len(x) for x in per_rank)
    assert (total - world < got <= total) if balance == "drop" else (total <= got < total + world)
    if balance == "drop":  # only the tail is touched
        assert as_counter(sum(per_rank, [])) <= expected_items(make(mds_ds), 0)


# ---------------------------------------------------------------- 8. tiny state
def test_state_is_kilobytes_and_independent_of_dataset_size(synth_root):
    from tests.conftest import _make

    sizes = []
    for docs in (60, 600):
        root = _make(synth_root, "jsonl", docs=docs, rows=50)
        states = []
        for rank in range(4):
            ds = make(root, rank=rank, world_size=4)
            it = iter(ds)
            for _ in range(20 + rank):
                next(it)
            states.append(ds.state_dict())
        sizes.append(len(json.dumps(merge_states(states))))
    assert max(sizes) < 8_000
    assert abs(sizes[0] - sizes[1]) < 200


# ---------------------------------------------------------------- shuffle quality
def test_domains_interleave_and_copies_spread(tmp_path):
    from quadmix_stream.synth import synth

    root = tmp_path / "ds"
    synth(root, "mds", docs_per_domain=1000, rows_per_shard=100)  # shards are domain-sorted
    p = wide_params(root)
    ds = QuaDMixDataset(root, p, seed=3, shuffle_block_shards=None, balance=None)
    items = list(ds)
    doms = np.array([it["domain_id"] for it in items])
    share = np.bincount(doms, minlength=5) / doms.size
    window = 1000
    worst = max(
        np.abs(np.bincount(doms[i : i + window], minlength=5) / window - share).max()
        for i in range(0, doms.size - window, window // 2)
    )
    assert worst < 0.08
    pos: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        pos.setdefault(it["key"], []).append(i)
    gaps = [b - a for v in pos.values() if len(v) > 1 for a, b in zip(v, v[1:], strict=False)]
    assert np.median(gaps) > len(items) / 5  # copies land far apart


def test_refuses_state_of_another_dataset(mds_ds, jsonl_ds):
    ds = make(mds_ds)
    next(iter(ds))
    other = make(jsonl_ds)
    with pytest.raises(StateError, match="loader state is for dataset"):
        other.load_state_dict(ds.state_dict())


# ---------------------------------------------------------------- bad input and misuse
def test_params_that_select_nothing_fail_at_start_on_every_rank(mds_ds):
    from quadmix_stream.mixing.params import domain_mixture

    m = Manifest.load(mds_ds)
    none = domain_mixture(m.domains, m.scorer_names, [0.0] * len(m.domains))
    for rank in range(2):  # every rank sees the same totals, so every rank stops: no DDP wait
        ds = make(mds_ds, none, infinite=True, rank=rank, world_size=2)
        with pytest.raises(ValueError, match="select no document"):
            next(iter(ds))


def test_corrupt_shard_mid_stream_is_one_error_naming_shard_and_row(tmp_path):
    from quadmix_stream.formats import ShardReadError
    from quadmix_stream.synth import synth

    root = tmp_path / "ds"
    synth(root, "mds", docs_per_domain=40, rows_per_shard=50)
    m = Manifest.load(root)
    keep = SamplingParams.keep_all(m.domains, m.scorer_names)
    entry = m.shards[1]
    path = root / entry.name
    data = bytearray(path.read_bytes())
    n = int(np.frombuffer(bytes(data[:4]), np.uint32)[0])
    offsets = np.frombuffer(bytes(data[4 : 8 + 4 * n]), np.uint32)
    for r in range(n):  # same size, so the manifest's size check passes: bytes not UTF-8
        b = int(offsets[r + 1])
        data[b - 8 : b] = b"\xff" * 8
    path.write_bytes(bytes(data))
    ds = make(root, keep, balance=None, shuffle_block_shards=1)
    with pytest.raises(ShardReadError, match=rf"shard '{entry.name}', row \d+: cannot be read"):
        list(ds)
    verified = make(root, keep, balance=None, verify_shards=True)
    with pytest.raises(LabelError, match="shard_sha256"):  # the cheap check, on first use
        list(verified)


def test_hand_edited_states_are_refused(mds_ds):
    ds = make(mds_ds, rank=0, world_size=2)
    it = iter(ds)
    next(it)
    good = ds.state_dict()
    with pytest.raises(StateError, match="field 'dataset' is missing"):
        make(mds_ds).load_state_dict({"quadmix_state": 2})
    bad = json.loads(json.dumps(good))
    bad["progress"] = {"0": [0, -5]}
    with pytest.raises(StateError, match="not \\[epoch ≥ 0, items ≥ 0\\]"):
        make(mds_ds, rank=0, world_size=2).load_state_dict(bad)
    old = {**good, "quadmix_state": 1}
    with pytest.raises(StateError, match="version 1"):
        make(mds_ds).load_state_dict(old)


def test_a_state_claiming_more_than_a_consumers_range_is_refused(mds_ds):
    from quadmix_stream.stream.state import merge_states

    states = []
    for rank in (0, 1):
        ds = make(mds_ds, rank=rank, world_size=2)
        it = iter(ds)
        next(it)
        states.append(json.loads(json.dumps(ds.state_dict())))
    edited = json.loads(json.dumps(states[0]))
    edited["progress"] = {"0": [0, 10**9]}
    exact = make(mds_ds, rank=0, world_size=2)
    exact.load_state_dict(edited)  # the claim is checked once the range is known
    with pytest.raises(StateError, match="consumer 0 claims 1000000000 items of epoch 0"):
        list(exact)
    merged = merge_states(states)
    merged["progress"]["1"] = [0, 10**9]
    elastic = make(mds_ds)  # one consumer: the state is re-dealt
    elastic.load_state_dict(merged)
    with pytest.raises(StateError, match="consumer 1 claims 1000000000 items"):
        list(elastic)
    # the unedited states still resume
    fine = make(mds_ds)
    fine.load_state_dict(merge_states(states))
    assert len(list(fine)) > 0


def test_finite_packed_stream_across_ranks_is_refused(mds_ds, tmp_path):
    pytest.importorskip("tokenizers")  # an extra's package: skipped in the core-only env
    from quadmix_stream.stream.packing import PackedDataset
    from quadmix_stream.synth import iter_docs
    from quadmix_stream.training.tokenizer import TextTokenizer, train_tokenizer

    train_tokenizer((d["text"] for d, *_ in iter_docs(10, seed=5)), 200, tmp_path / "tok.json")
    tok = TextTokenizer(tmp_path / "tok.json")
    packed = PackedDataset(make(mds_ds, rank=0, world_size=2), tok, 16)
    with pytest.raises(ValueError, match="infinite=True"):
        next(iter(packed))
    ok = PackedDataset(make(mds_ds, rank=0, world_size=2, infinite=True), tok, 16)
    assert next(iter(ok))["input_ids"].shape == (16,)
