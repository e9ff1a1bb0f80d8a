"""Lightning: a 2-process CPU DDP run SIGKILLed at a random step resumes with exactly the
batches of the uninterrupted run (nothing lost, nothing repeated)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quadmix_stream.stream.dataset import QuaDMixDataset
from tests.support.streamutil import kill_tree, wide_params

pytest.importorskip("lightning")

SCRIPT = Path(__file__).with_name("lightning_script.py")
STEPS = 24  # optimizer steps (= batches per rank); a checkpoint every 4


def _cmd(ds: Path, params: Path, out: Path, *extra: str) -> list[str]:
    """2 devices, 1 DataLoader worker each: Lightning's own DDP launcher (this process is
    rank 0 and starts rank 1)."""
    return [
        sys.executable,
        str(SCRIPT),
        str(ds),
        str(params),
        str(out),
        str(STEPS),
        "1",
        "2",
        *extra,
    ]


def _run(args: list[str]) -> None:
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _records(out: Path, rank: int) -> list[dict]:
    f = out / f"consumed-rank{rank}.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def _by_step(records: list[dict]) -> dict[int, list]:
    """Documents per step; a step redone after the resume overwrites its first try."""
    return {r["step"]: r["docs"] for r in records}


def _step_of(ckpt: Path) -> int:
    return int(re.fullmatch(r"step=(\d+)\.ckpt", ckpt.name).group(1))


@pytest.mark.slow
def test_ddp_sigkill_and_resume_consumes_the_same_batches(tmp_path, mds_ds):
    params = tmp_path / "p.json"
    wide_params(mds_ds, seed=4).save(params)  # documents get 0, 1 and 2+ copies

    full = tmp_path / "full"
    full.mkdir()
    _run(_cmd(mds_ds, params, full, "datamodule"))

    out = tmp_path / "killed"
    out.mkdir()
    kill_at = random.randint(5, STEPS - 4)  # past the first checkpoint (step 4), before the end
    proc = subprocess.Popen(
        _cmd(mds_ds, params, out, "datamodule"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= kill_at for r in _records(out, 0)):
            break
        time.sleep(0.02)
    kill_tree(proc.pid)
    proc.wait()
    before = [_records(out, rank) for rank in (0, 1)]
    assert max(r["step"] for r in before[0]) < STEPS - 1, f"finished before the kill ({kill_at=})"
    ckpt = max((out / "ckpt").glob("step=*.ckpt"), key=_step_of)  # the last checkpoint on disk

    _run(_cmd(mds_ds, params, out, "datamodule", str(ckpt)))
    assert json.loads((out / "resume.json").read_text()) == {"exact": True}
    for rank in (0, 1):
        want = _by_step(_records(full, rank))
        records = _records(out, rank)
        resumed = records[len(before[rank]) :]
        # the resumed run starts at the checkpoint's step and redoes what followed it
        assert resumed[0]["step"] == _step_of(ckpt), (rank, kill_at)
        got = _by_step(records)
        assert sorted(got) == sorted(want) == list(range(STEPS)), (rank, kill_at)
        # the concatenation of consumed batches is the uninterrupted run's, batch for batch
        assert [got[s] for s in range(STEPS)] == [want[s] for s in range(STEPS)], (rank, kill_at)
    # and the two ranks read disjoint shares (the stream is dealt by rank)
    docs = [
        tuple(d) for rank in (0, 1) for s in range(STEPS) for d in _by_step(_records(full, rank))[s]
    ]
    assert len(docs) == len(set(docs)) == 2 * STEPS * 3


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory) -> tuple[Path, Path]:
    from quadmix_stream.synth import synth

    root = tmp_path_factory.mktemp("pl-small")
    synth(root / "ds", "mds", docs_per_domain=12, seed=0, rows_per_shard=30)
    wide_params(root / "ds", seed=4).save(root / "p.json")
    return root / "ds", root / "p.json"


@pytest.mark.slow
def test_finite_epochs_resume_exactly_mid_epoch_and_after_an_epochs_last_batch(tmp_path, small_ds):
    ds, params = small_ds
    n0 = -(-len(list(QuaDMixDataset(ds, params, seed=5))) // 3)  # batches in epoch 0
    env = {**os.environ, "CKPT_EVERY": str(n0)}  # checkpoints at epoch 0's last batch, ...

    def run(out: Path, *ckpt: str) -> dict[int, list]:
        out.mkdir()
        args = [sys.executable, str(SCRIPT), str(ds), str(params), str(out), "3", "1", "1"]
        r = subprocess.run(
            [*args, "finite", *ckpt], capture_output=True, text=True, env=env, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads((out / "resume.json").read_text()) == {"exact": True if ckpt else None}
        return _by_step(_records(out, 0))

    full = run(tmp_path / "full")
    epochs = [full[s][0][0] for s in sorted(full)]  # one stream epoch per Lightning epoch
    assert epochs[:n0] == [0] * n0 and sorted(set(epochs)) == [0, 1, 2]
    assert epochs[2 * n0 - 1] == epochs[2 * n0] == 1  # ... and in the middle of epoch 1
    for step in (n0, 2 * n0):
        got = run(tmp_path / f"from-{step}", str(tmp_path / "full" / "ckpt" / f"step={step}.ckpt"))
        assert sorted(got) == list(range(step, len(full))), step
        assert all(got[s] == full[s] for s in got), step


def test_unwrapped_batch_gets_lightnings_precision_cast():
    """The tag hides the batch from Lightning's input cast; the DataModule applies it."""
    import lightning.pytorch as pl
    import torch

    from quadmix_stream.loaders.lightning import QuaDMixDataModule, _Tagged

    dm = QuaDMixDataModule(lambda: None, batch_size=2)
    dm.trainer = pl.Trainer(accelerator="cpu", precision="bf16-true", logger=False)
    batch = dm.on_before_batch_transfer(_Tagged({"x": torch.ones(2)}, {"s": 1}), 0)
    assert batch["x"].dtype == torch.bfloat16
    assert dm._consumed == {"s": 1}
