"""The ray executor on a real local Ray head: a SIGKILLed Ray worker's task is retried without
committing a unit twice, a killed driver's re-run skips what was finished, and labelling and
proxies end with the local executor's outputs byte for byte (proxy losses to float tolerance).
Ray's own retry of a task whose worker died is the same for proxies, so it is killed once, in
labelling."""
# ruff: noqa: F811  (pytest fixtures imported by name)

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")

from quadmix_stream.cli import main  # noqa: E402
from quadmix_stream.formats.labels import Manifest  # noqa: E402
from tests.support.labelling import (  # noqa: E402, F401
    REPO,
    dataset_files,
    ft_models,
    recipe_dict,
    synth_docs,
    write_jsonl,
    write_recipe,
)
from tests.support.raylocal import ray_head, ray_processes  # noqa: E402, F401

pytestmark = pytest.mark.slow
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",  # as the test head runs (tests/support/raylocal.py)
}
UNITS = 12


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory) -> Path:
    """240 documents in a plain JSONL file: 12 units of 20 rows, each its own Ray task."""
    return write_jsonl(tmp_path_factory.mktemp("in") / "docs.jsonl", synth_docs(48, seed=5))


def _recipe(tmp_path: Path, models, out: Path, src: Path) -> Path:
    d = recipe_dict(models, out)
    d["input"] = {"paths": [str(src)]}
    d["output"]["rows_per_shard"] = 20
    return write_recipe(tmp_path / f"r-{out.name}.yaml", d)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ft_models, docs_file) -> tuple[Path, dict]:  # noqa: F811
    """The local executor's dataset (one process)."""
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "ref"
    assert main(["label", str(_recipe(tmp, ft_models, out, docs_file))]) == 0
    return out, dataset_files(out)


def _driver(rec: Path, addr: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "quadmix_stream.cli", "label", str(rec), "--no-progress"]
    return subprocess.Popen(
        [*cmd, "--ray-address", addr, *extra],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class _CommitWatch(threading.Thread):
    """Polls a run's records: a record file replaced (a new inode) means a unit committed
    again."""

    def __init__(self, done: Path) -> None:
        super().__init__(daemon=True)
        self.done, self.seen, self.again = done, {}, []
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for p in self.done.glob("unit-*.json") if self.done.is_dir() else []:
                try:
                    ino = p.stat().st_ino
                except FileNotFoundError:
                    continue
                if self.seen.setdefault(p.name, ino) != ino:
                    self.again.append(p.name)
                    self.seen[p.name] = ino
            time.sleep(0.01)

    def count(self) -> int:
        return len(self.seen)

    def finish(self) -> list[str]:
        self.stop.set()
        self.join(timeout=5)
        return self.again


def _kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL the driver (only the driver: Ray ends its job's tasks)."""
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def _wait(cond, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before {what}: {proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_killed_ray_worker_is_retried_and_commits_nothing_twice(
    tmp_path, ft_models, docs_file, reference, ray_head
):
    out = tmp_path / "ray"
    watch = _CommitWatch(out / ".quadmix-label" / "done")
    proc = _driver(_recipe(tmp_path, ft_models, out, docs_file), ray_head, "--throttle", "0.6")
    try:
        _wait(lambda: watch.count() >= 2 and ray_processes("qms-label"), proc, "2 commits")
        victims = ray_processes("qms-label")
        os.kill(victims[0], signal.SIGKILL)
        text, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    again = watch.finish()
    assert proc.returncode == 0, text[-3000:]
    assert not again, f"units committed twice: {again}"
    assert watch.count() == UNITS
    assert dataset_files(out) == reference[1]
    assert not list(out.rglob("*.tmp"))


def test_a_killed_driver_resumes_without_redoing_finished_units(
    tmp_path, ft_models, docs_file, reference, ray_head, capsys
):
    out = tmp_path / "ray"
    rec = _recipe(tmp_path, ft_models, out, docs_file)
    done = out / ".quadmix-label" / "done"
    proc = _driver(rec, ray_head, "--throttle", "0.6")
    try:
        _wait(lambda: done.is_dir() and len(list(done.glob("unit-*.json"))) >= 3, proc, "3 commits")
    finally:
        _kill_driver(proc)
    time.sleep(2.0)  # Ray ends the dead driver's tasks; a unit in flight may still commit
    before = {p.name: p.stat().st_ino for p in done.glob("unit-*.json")}
    assert 3 <= len(before) < UNITS, before
    assert not (out / "quadmix.json").exists()
    # the same command again, here in this process (the driver's code is the CLI's)
    assert main(["label", str(rec), "--no-progress", "--ray-address", ray_head]) == 0
    said = capsys.readouterr().out
    skipped = int(said.split("skipped ")[1].split(" ")[0])
    assert skipped >= len(before), said
    assert f"in {UNITS - skipped} of {UNITS} units with 2 Ray task slots" in said, said
    after = {p.name: p.stat().st_ino for p in done.glob("unit-*.json")}
    assert {k: after[k] for k in before} == before  # finished units were not committed again
    assert dataset_files(out) == reference[1]  # the local executor's dataset, byte for byte
    assert Manifest.load(out).rows == 240


def test_proxies_resume_after_a_killed_driver_and_match_the_local_executor(
    mds_ds, tmp_path, ray_head
):
    from quadmix_stream.search.pipeline import step_propose, step_proxies
    from quadmix_stream.search.runfolder import RunFolder
    from tests.integration.test_search_pipeline import tiny_config

    n = 4
    cfg = tiny_config(mds_ds, proposals={"n": n}, proxy={"group": 1, "tokens": 8 * 64 * 16})
    local = step_propose(tmp_path / "local", cfg.replace(regmix=None), log=lambda s: None).path
    remote = tmp_path / "ray"
    shutil.copytree(local, remote)
    results = remote / "proxies"
    cmd = [sys.executable, "-m", "quadmix_stream.cli", "search", "proxies", str(remote)]
    cmd += ["--ray-address", ray_head]
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait(lambda: len(list(results.glob("*.json"))) >= 1, proc, "a proxy result")
    finally:
        _kill_driver(proc)
    time.sleep(1.0)
    before = {p.name: p.stat().st_ino for p in results.glob("*.json")}
    assert 1 <= len(before) < n, before
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count(": ok (loss") == n - len(before), r.stdout  # one line per proxy
    after = {p.name: p.stat().st_ino for p in results.glob("*.json")}
    assert len(after) == n and {k: after[k] for k in before} == before  # not redone
    assert RunFolder(remote).logs()[-1]["executor"] == "ray"
    # the local executor trains the same proxies to the same losses
    step_proxies(local, log=lambda s: None)
    a, b = RunFolder(local).finished(), RunFolder(remote).finished()
    assert sorted(a) == sorted(b) and len(a) == n
    for name in a:
        assert b[name]["status"] == a[name]["status"] == "ok"
        assert b[name]["loss"] == pytest.approx(a[name]["loss"], rel=1e-5), name
        assert b[name]["docs"] == a[name]["docs"]
