"""``shuffle_block_shards: "auto"``: 256 shards per window unless the shards in flight would not
fit the node-local cache of a remote dataset (quadmix_stream.stream.window)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quadmix_stream.stream.window import (
    IN_FLIGHT,
    MIX_WINDOW,
    auto_window,
    bound_window,
    fit_window,
)

pytestmark = pytest.mark.core


@given(
    st.lists(st.integers(1, 10**9), min_size=1, max_size=50),
    st.integers(0, 10**13),
    st.integers(1, 512),
)
def test_fit_window_is_the_largest_that_fits(sizes, limit, consumers):
    w = fit_window(sizes, limit, consumers)
    mean = sum(sizes) / len(sizes)
    assert 1 <= w <= MIX_WINDOW
    if w > 1:  # fits, and one more shard per window would not (unless capped)
        assert IN_FLIGHT * consumers * w * mean <= limit
    if w < MIX_WINDOW:
        assert IN_FLIGHT * consumers * (w + 1) * mean > limit


def test_auto_window_local_or_unbounded_is_the_mixing_window():
    assert auto_window([10**9] * 4, remote=False, cache_limit=1, consumers_per_node=64) == (
        MIX_WINDOW,
        None,
    )
    assert auto_window([10**9] * 4, True, None, 64) == (MIX_WINDOW, None)
    assert auto_window([2**20] * 4, True, 2**40, 8) == (MIX_WINDOW, None)  # 1 TiB holds 4 GiB


def test_auto_window_from_object_storage_fits_the_cache():
    # 64 consumers (8 ranks × 8 workers) of 64 MiB shards with a 64 GiB cache: 256 shards per
    # window would hold 2 TiB in flight; 8 per window hold 64 GiB
    w, note = auto_window([64 * 2**20] * 100, True, 64 * 2**30, 64)
    assert w == 8 and "8 shards per window" in note and "64 consumers" in note
    assert "does not fit" not in note
    w, note = auto_window([64 * 2**20] * 100, True, 2**30, 64)  # below one shard each
    assert w == 1 and "raise data.cache_limit" in note


@given(
    st.integers(1, 512),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=50),
    st.integers(1, 10**8),
)
def test_a_window_holds_at_most_max_docs_as_far_as_whole_shards_allow(window, rows, max_docs):
    w, note = bound_window(window, rows, max_docs)
    mean = max(1.0, sum(rows) / len(rows))
    assert 1 <= w <= window and (note is None) == (w == window)
    assert w == 1 or w * mean <= max_docs  # fits, unless one shard alone is over
    assert w == window or (w + 1) * mean > max_docs  # and is the largest that does
    assert bound_window(window, rows, None) == (window, None)


def test_large_shards_make_a_window_of_fewer_shards():
    # 4 MiB MDS shards of short documents: ~111k rows; 16 of them would be 1.8M items
    w, note = bound_window(16, [111_000] * 100, 1 << 19)
    assert w == 4 and "4 shards per window (not 16)" in note and "max_window_docs" in note
    assert bound_window(256, [500] * 100, 1 << 19) == (256, None)


def test_a_bounded_window_streams_every_item_once(mds_ds):
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.dataset import QuaDMixDataset

    m = Manifest.load(mds_ds)
    p = SamplingParams.keep_all(m.domains, m.scorer_names)
    small = QuaDMixDataset(mds_ds, p, balance=None, shuffle_block_shards=16, max_window_docs=250)
    whole = QuaDMixDataset(mds_ds, p, balance=None, shuffle_block_shards=16, max_window_docs=None)
    assert small.block_shards == 2 and "2 shards per window" in small.window_note  # 100 rows each
    assert whole.block_shards == 16 and whole.window_note is None
    got = [(d["row"], d["copy"]) for d in small]
    assert sorted(got) == sorted((d["row"], d["copy"]) for d in whole)
    assert (
        len(set(got))
        == len(got)
        == sum(int(small.counts(s, 0).sum()) for s in range(small.tables.n_shards))
    )


def test_dataset_auto_window(mds_ds):
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.recipe import RecipeError
    from quadmix_stream.stream.dataset import QuaDMixDataset
    from quadmix_stream.trainers.pretrain import load_config

    m = Manifest.load(mds_ds)
    p = SamplingParams.keep_all(m.domains, m.scorer_names)
    ds = QuaDMixDataset(mds_ds, p, shuffle_block_shards="auto")
    assert ds.block_shards == MIX_WINDOW and ds.window_note is None  # local: read in place
    for bad in (0, "many", 1.5):
        with pytest.raises(ValueError, match="shuffle_block_shards"):
            QuaDMixDataset(mds_ds, p, shuffle_block_shards=bad)
    recipe = {"data": {"dataset": str(mds_ds), "params": "p.json"}}
    assert load_config_from(recipe, load_config).data.shuffle_block_shards == "auto"
    for ok in (4, None, "auto"):
        recipe["data"]["shuffle_block_shards"] = ok
        assert load_config_from(recipe, load_config).data.shuffle_block_shards == ok
    for bad in (0, "many", True):
        recipe["data"]["shuffle_block_shards"] = bad
        with pytest.raises(RecipeError, match="data.shuffle_block_shards"):
            load_config_from(recipe, load_config)


def load_config_from(recipe: dict, load_config):
    import tempfile
    from pathlib import Path

    import yaml

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return load_config(path)
