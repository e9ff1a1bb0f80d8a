"""Lightning: a 2-process CPU DDP run SIGKILLed at a random step resumes with exactly the
batches of the uninterrupted run (nothing lost, nothing repeated)."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quadmix_stream.dataset import QuaDMixDataset

from .streamutil import wide_params

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


def _kill_tree(pid: int) -> None:
    """SIGKILL the launcher, the other rank and every DataLoader worker at once."""
    import psutil

    parent = psutil.Process(pid)
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"processes survived SIGKILL: {alive}"


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
    _kill_tree(proc.pid)
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


def test_finite_stream_is_refused(mds_ds, tmp_path):
    from quadmix_stream.loaders.lightning import QuaDMixDataModule

    params = tmp_path / "p.json"
    wide_params(mds_ds).save(params)
    dm = QuaDMixDataModule(lambda: QuaDMixDataset(mds_ds, params), batch_size=2)
    with pytest.raises(ValueError, match="infinite=True"):
        dm.train_dataloader()


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
