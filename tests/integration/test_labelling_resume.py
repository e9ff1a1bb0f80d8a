"""Labelling survives being killed (SIGKILL mid-run) and splits its work over torchrun ranks;
both give byte-identical datasets to one uninterrupted single-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import Manifest
from tests.support.labelling import (  # noqa: F401
    REPO,
    dataset_files,
    ft_models,
    recipe_dict,
    write_recipe,
)


def _recipe(tmp_path, models, out, io_workers=1):
    d = recipe_dict(models, out)
    d["input"] = {"synthetic": {"docs_per_domain": 48, "seed": 5}}
    d["output"]["rows_per_shard"] = 20  # 12 units
    d["run"]["io_workers"] = io_workers
    return write_recipe(tmp_path / f"r-{out.name}.yaml", d)


@pytest.mark.slow
def test_kill_and_resume_is_identical_to_an_uninterrupted_run(tmp_path, ft_models):  # noqa: F811
    ref = tmp_path / "ref"
    assert main(["label", str(_recipe(tmp_path, ft_models, ref, io_workers=0))]) == 0
    out = tmp_path / "killed"
    rec = _recipe(tmp_path, ft_models, out)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "quadmix_stream.cli", "label", str(rec), "--no-progress"]
    proc = subprocess.Popen(
        [*cmd, "--throttle", "0.4"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    done = out / ".quadmix-label" / "done"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if done.is_dir() and len(list(done.glob("unit-*.json"))) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"labelling ended before it could be killed: {proc.stdout.read()!r}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    committed = sorted(p.name for p in done.glob("unit-*.json"))
    assert 2 <= len(committed) < 12, committed
    assert not (out / "quadmix.json").exists()  # unfinished: no manifest
    time.sleep(1.0)  # the I/O helper died with its parent: nothing changes any more
    snap = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    time.sleep(1.0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == snap

    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"skipped {len(committed)} finished unit(s)" in res.stdout
    assert dataset_files(out) == dataset_files(ref)
    assert Manifest.load(out).rows == 240
    assert not [p for p in out.rglob("*.tmp")]  # temp files of the killed run are gone


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one(tmp_path, ft_models):  # noqa: F811
    one = tmp_path / "one"
    assert main(["label", str(_recipe(tmp_path, ft_models, one, io_workers=0))]) == 0
    two = tmp_path / "two"
    rec = _recipe(tmp_path, ft_models, two)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "quadmix_stream.cli",
            "label",
            str(rec),
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "with 2 rank(s)" in res.stdout
    ranks = sorted(p.name for p in (two / ".quadmix-label" / "ranks").iterdir())
    assert ranks == ["rank-00000.json", "rank-00001.json"]
    import json

    units = [json.loads((two / ".quadmix-label" / "ranks" / r).read_text())["units"] for r in ranks]
    assert units == [6, 6]  # the shards were split between the ranks
    assert dataset_files(two) == dataset_files(one)
