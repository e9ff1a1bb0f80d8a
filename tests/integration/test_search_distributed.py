"""Proxy training as separate processes: killed and resumed for real, and split over torchrun ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quadmix_stream.search.pipeline import step_propose, step_proxies
from quadmix_stream.search.runfolder import RunFolder
from quadmix_stream.training.launch import torchrun_command
from tests.integration.test_search_pipeline import tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TRAINER = [sys.executable, "-m", "quadmix_stream.trainers.proxy"]


def _propose(mds_ds: Path, out: Path, n: int, **proxy) -> RunFolder:
    cfg = tiny_config(mds_ds, proposals={"n": n}, proxy=proxy).replace(regmix=None)
    return step_propose(out, cfg, log=lambda s: None)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in (folder / "proxies").glob("*.json")
    }


@pytest.mark.slow
def test_killed_proxies_step_resumes_without_redoing_finished_proxies(mds_ds, tmp_path):
    n = 10
    folder = _propose(mds_ds, tmp_path / "run", n, group=1, tokens=8 * 64 * 24)
    proc = subprocess.Popen(
        [*TRAINER, str(folder.path), "--threads", "1"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list((folder.path / "proxies").glob("*.json"))) < 3:
            assert proc.poll() is None, "trainer ended before it was killed"
            assert time.monotonic() < deadline, "no proxy finished in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = _snapshot(folder.path)
    assert 3 <= len(before) < n, "the kill must land while proxies are still pending"
    assert not list((folder.path / "proxies").glob(".*.tmp"))  # no half-written result
    pending = RunFolder(folder.path).pending()
    assert len(pending) == n - len(before)

    # run the step again (in this process: the same code as the trainer's single rank)
    summary = step_proxies(folder.path, threads=1, log=lambda s: None)
    assert summary["trained"] == len(pending)
    after = _snapshot(folder.path)
    assert len(after) == n
    assert {k: after[k] for k in before} == before  # finished proxies were not redone
    logs = RunFolder(folder.path).logs()
    assert len(logs) == 1  # the killed process never got to log; the second run did
    assert sorted(logs[0]["runs"]) == sorted(pending)  # exactly the unfinished ones, once
    rows = [json.loads(x) for x in (folder.path / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == list(range(n)) and all(r["status"] == "ok" for r in rows)


@pytest.mark.slow
def test_two_torchrun_ranks_split_the_work_and_match_one_rank(mds_ds, tmp_path):
    n = 6
    one = _propose(mds_ds, tmp_path / "one", n, group=2, tokens=8 * 64 * 12)
    two = tmp_path / "two"
    shutil.copytree(one.path, two)
    cmd = torchrun_command(2, "-m", "quadmix_stream.trainers.proxy", str(two), "--threads", "1")
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "on 2 rank(s)" in r.stdout and "per rank: [3, 3]" in r.stdout
    # one rank: the trainer's code path with rank 0 of 1, in this process
    from quadmix_stream.trainers.proxy import main as trainer

    assert trainer([str(one.path), "--threads", "1"]) == 0
    logs = RunFolder(two).logs()
    assert sorted(lg["rank"] for lg in logs) == [0, 1] and all(lg["world_size"] == 2 for lg in logs)
    runs = [set(lg["runs"]) for lg in logs]
    assert runs[0].isdisjoint(runs[1]) and runs[0] | runs[1] == set(range(n))
    a, b = RunFolder(one.path).finished(), RunFolder(two).finished()
    assert sorted(a) == sorted(b) and len(a) == n
    for name in a:
        assert a[name]["status"] == b[name]["status"] == "ok"
        assert b[name]["loss"] == pytest.approx(a[name]["loss"], rel=1e-5), name
        assert b[name]["docs"] == a[name]["docs"]
    res = [json.loads(x) for x in (two / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in res] == list(range(n))
