"""torchtitan: its CheckpointManager (DCP, 2 ranks over gloo) saves and restores the QuaDMix
loader built as torchtitan's trainer builds it, and the restored loader continues exactly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from quadmix_stream.stream.pool import pool_texts
from quadmix_stream.training.launch import torchrun_command
from quadmix_stream.training.tokenizer import train_tokenizer
from tests.support.streamutil import wide_params

pytest.importorskip("torchtitan")

SCRIPT = Path(__file__).with_name("titan_script.py")


@pytest.fixture(scope="module")
def titan_setup(tmp_path_factory, mds_ds):
    tmp = tmp_path_factory.mktemp("titan")
    wide_params(mds_ds, seed=2).save(tmp / "p.json")
    (tmp / "tok").mkdir()
    train_tokenizer(pool_texts(mds_ds, 2000), 300, tmp / "tok" / "tokenizer.json")
    return tmp


def _build(mds_ds: Path, tmp: Path, rank: int, world: int, workers: int):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from quadmix_stream.loaders.torchtitan import QuaDMixTitanDataLoader

    return QuaDMixTitanDataLoader.Config(
        dataset_path=str(mds_ds), params=str(tmp / "p.json"), num_workers=workers
    ).build(
        dp_world_size=world,
        dp_rank=rank,
        tokenizer=HuggingFaceTokenizer.Config().build(tokenizer_path=str(tmp / "tok")),
        seq_len=16,
        local_batch_size=2,
    )


@pytest.mark.slow
def test_checkpoint_manager_restores_the_loader_exactly(titan_setup, mds_ds):
    tmp = titan_setup
    out = tmp / "run"
    out.mkdir()
    args = [str(SCRIPT), str(mds_ds), str(tmp / "p.json"), str(tmp / "tok"), str(out), "1"]
    r = subprocess.run(torchrun_command(2, *args), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step-3", "step-6"]
    for res in ranks:
        assert res["loaded_step"] == 6  # the latest checkpoint was loaded
        assert res["got"] == res["want"]  # ... and the loader continued exactly from it
        assert len(set(res["seen"] + res["want"])) == 10  # (a restart would repeat "seen")
    # the two data-parallel ranks read different blocks
    assert not set(ranks[0]["seen"] + ranks[0]["want"]) & set(ranks[1]["seen"] + ranks[1]["want"])


def test_batches_are_torchtitan_batches(titan_setup, mds_ds):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from torchtitan.trainer import Trainer

    from quadmix_stream.loaders.torchtitan import QuaDMixTitanDataLoader

    # the trainer's config takes it as its dataloader; build() with the trainer's arguments
    config = Trainer.Config(
        dataloader=QuaDMixTitanDataLoader.Config(
            dataset_path=str(mds_ds), params=str(titan_setup / "p.json")
        )
    )
    loader = config.dataloader.build(
        dp_world_size=1,
        dp_rank=0,
        tokenizer=HuggingFaceTokenizer.Config().build(tokenizer_path=str(titan_setup / "tok")),
        seq_len=16,
        local_batch_size=2,
        snapshot_every_n_steps=None,
    )
    inputs, labels = next(iter(loader))
    assert set(inputs) == {"input"}  # other keys would become model-forward kwargs
    assert inputs["input"].shape == labels.shape == (2, 16)
    assert (inputs["input"][:, 1:] == labels[:, :-1]).all()  # next-token labels


def test_checkpoint_of_another_topology_is_refused(titan_setup, mds_ds):
    loader = _build(mds_ds, titan_setup, 0, 1, 0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="workers=0.*this loader is dp=1;workers=1"):
        _build(mds_ds, titan_setup, 0, 1, 1).load_state_dict(state)
    fresh = _build(mds_ds, titan_setup, 0, 1, 0)
    fresh.load_state_dict(state)  # the same topology restores (and continues: see above)
    assert next(iter(fresh))[1].equal(next(it)[1])
