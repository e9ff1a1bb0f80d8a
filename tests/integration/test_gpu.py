"""The CUDA paths: skipped without a GPU (``pytest -m gpu`` selects them on a GPU machine).

Last run on one H200 (2026-11-30): all passed. The dry run of the smoke check (CPU, toy scale)
runs everywhere.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.trainers.runlog import read_log

ROOT = Path(__file__).resolve().parents[2]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _smoke(work: Path, *extra: str, timeout: int) -> dict:
    # the script runs `python`: this interpreter's, as in an activated environment
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(
        [str(ROOT / "scripts" / "gpu_smoke.sh"), "--work", str(work), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "GPU smoke check " in r.stdout and " passed in " in r.stdout
    return json.loads((work / "gpu_smoke.json").read_text())


@pytest.mark.slow
def test_gpu_smoke_dry_run_on_cpu(tmp_path):
    """The smoke check's plumbing at toy scale: the full recipe parses, torchrun with one rank
    opens a process group, the proxy bench and the loader run."""
    res = _smoke(tmp_path, "--dry-run", timeout=600)
    t = res["trainer"]
    assert res["dry_run"] and t["device"] == "cpu" and t["world"] == 1 and t["steps"] == 2
    assert math.isfinite(t["last_loss"]) and t["checkpoints"] == ["step-00000002.pt"]
    assert res["proxies"]["batched_over_one"] > 0
    assert res["loader"]["tokens_per_s"] > 0
    start = [x for x in read_log(tmp_path / "pretrain-toy" / "log.jsonl") if "world" in x]
    assert start and start[-1]["world"] == 1


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_gpu_smoke_check(tmp_path):
    """The one-command check, in under 5 minutes on one GPU."""
    res = _smoke(tmp_path, timeout=330)
    t, p, lo = res["trainer"], res["proxies"], res["loader"]
    assert t["device"].startswith("cuda") and t["world"] == 1 and t["steps"] == 8
    assert math.isfinite(t["last_loss"]) and t["eval_loss"] is not None
    assert p["one_at_a_time_per_hour"] > 0 and p["batched_per_hour"] > 0
    assert lo["device"].startswith("cuda") and lo["tokens_per_s"] > 0
    assert res["wall_s"] < 300


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_trainer_bf16_nccl_one_rank_resumes(tmp_path, mds_ds):
    m = Manifest.load(mds_ds)
    SamplingParams.propose(1, m.domains, m.scorer_names, seed=1)[0].save(tmp_path / "p.json")
    recipe = {
        "data": {"dataset": str(mds_ds), "params": str(tmp_path / "p.json"), "seq_len": 64},
        "model": {"hidden_size": 64, "intermediate_size": 128},
        "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2},
        "out": str(tmp_path / "run"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd += ["-m", "quadmix_stream.trainers.pretrain", str(tmp_path / "r.yaml")]
    for steps in ("4", "6"):
        r = subprocess.run([*cmd, "--steps", steps], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [x["device"] for x in log if x.get("event") == "start"] == ["cuda:0", "cuda:0"]
    assert [x["step"] for x in log if "loss" in x] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(x["loss"]) for x in log if "loss" in x)
    assert [x["exact"] for x in log if x.get("event") == "resume"] == [True]


@pytest.mark.gpu
@needs_cuda
def test_loader_batches_arrive_pinned_on_the_gpu(mds_ds, tmp_path):
    from quadmix_stream.loaders.stateful import make_loader
    from quadmix_stream.stream.dataset import QuaDMixDataset
    from quadmix_stream.stream.packing import PackedDataset
    from quadmix_stream.stream.pool import pool_texts
    from quadmix_stream.training.tokenizer import train_tokenizer

    m = Manifest.load(mds_ds)
    tok = train_tokenizer(pool_texts(mds_ds, 500), 300, tmp_path / "tok.json")
    ds = QuaDMixDataset(mds_ds, SamplingParams.keep_all(m.domains, m.scorer_names), infinite=True)
    loader = make_loader(PackedDataset(ds, tok, 32), 4, 1, pin_memory=True)
    it = iter(loader)
    for _ in range(3):
        b = next(it)
        assert b["input_ids"].is_pinned()
        x = b["input_ids"].to("cuda", non_blocking=True)
        assert x.is_cuda and x.shape == (4, 32)
    torch.cuda.synchronize()


def test_gpu_smoke_names_a_missing_recipe(tmp_path, capsys):
    from quadmix_stream.cli import main

    missing = tmp_path / "nope.yaml"
    assert (
        main(["bench", "gpu", "--dry-run", "--recipe", str(missing), "--work", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert f"recipe {missing} not found; pass --recipe" in err
