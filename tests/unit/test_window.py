"""``shuffle_block_shards: "auto"``: 256 shards per window unless the shards in flight would not
fit the node-local cache of a remote dataset (quadmix_stream.stream.window)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quadmix_stream.stream.window import IN_FLIGHT, MIX_WINDOW, auto_window, fit_window

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
