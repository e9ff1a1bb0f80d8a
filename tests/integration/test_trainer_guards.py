"""The trainer's guards and logs: read-only output, disk full at a checkpoint, one trainer per
folder, ranks that stop when their torchrun agent dies, a log without repeated steps after a
resume, progress lines, TensorBoard and W&B (offline)."""

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
import yaml

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.trainers.runlog import read_log, wall_time
from quadmix_stream.training.launch import torchrun_command

pytestmark = pytest.mark.slow
TRAINER = ("-m", "quadmix_stream.trainers.pretrain")


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return r.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _can_unshare(), reason="needs `unshare -rm` (user + mount namespaces) for a real tmpfs"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory, mds_ds):
    """Params, a trained tokenizer (so runs on a tiny tmpfs write only checkpoints and logs) and
    a recipe writer."""
    from quadmix_stream.stream.pool import pool_texts
    from quadmix_stream.training.tokenizer import train_tokenizer

    tmp = tmp_path_factory.mktemp("guards")
    m = Manifest.load(mds_ds)
    SamplingParams.propose(1, m.domains, m.scorer_names, seed=4, ranges={"omega": (0.4, 0.9)})[
        0
    ].save(tmp / "p.json")
    train_tokenizer(pool_texts(mds_ds, 2000), 300, tmp / "tok.json")

    def recipe(name: str, out: Path, steps: int = 12, every: int = 4, **extra) -> Path:
        r = {
            "data": {
                "dataset": str(mds_ds),
                "params": str(tmp / "p.json"),
                "tokenizer": str(tmp / "tok.json"),
                "seq_len": 32,
                "workers": 1,
            },
            "model": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
            "train": {
                "steps": steps,
                "batch_size": 8,
                "micro_batch_size": 4,
                "checkpoint_every": every,
                "keep_last": 2,
                "threads": 1,
                "warmup_steps": 2,
            },
            "out": str(out),
            **extra,
        }
        p = tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(r))
        return p

    return tmp, recipe


def _steps_logged(out: Path) -> list[int]:
    return [r["step"] for r in read_log(out / "log.jsonl") if "loss" in r]


def _ckpt_steps(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("step-*.pt"))


# ---------------------------------------------------------------- read-only, disk full
@needs_unshare
def test_read_only_output_folder_is_one_line_error(env):
    tmp, recipe = env
    ro = tmp / "ro"
    ro.mkdir()
    r = recipe("ro", ro / "run")
    script = (
        f"mount -t tmpfs tmpfs {ro} && mount -o remount,ro {ro} && "
        f"exec {sys.executable} {' '.join(TRAINER)} {r}"
    )
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert lines == [
        f"pretrain: error: output folder {ro / 'run'} is not writable: Read-only file system"
    ], p.stderr[-2000:]


def _checkpoint_bytes() -> int:
    """Model + AdamW's two moments in float32: what one checkpoint of the test model holds."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=2,
        tie_word_embeddings=False,
    )
    return 12 * sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())


@needs_unshare
def test_disk_full_at_checkpoint_stops_every_rank_naming_the_file(env):
    """A tmpfs with room for one checkpoint: the second fails on rank 0; both ranks stop with
    the file's name, the first checkpoint is intact and no .tmp is left."""
    tmp, recipe = env
    mnt, keep = tmp / "small", tmp / "small-after"
    mnt.mkdir()
    r = recipe("full", mnt / "run", steps=12, every=4)
    size = int(_checkpoint_bytes() * 1.5) + (256 << 10)
    cmd = " ".join(torchrun_command(2, *TRAINER, str(r)))
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {mnt} && {cmd}; rc=$?; "
        f"cp -r {mnt / 'run'} {keep}; ls -a {mnt / 'run' / 'checkpoints'}; exit $rc"
    )
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert p.returncode != 0
    want = f"cannot write {mnt / 'run' / 'checkpoints' / 'step-00000008.pt'}: No space left"
    assert p.stderr.count(f"pretrain: error: {want}") == 1, p.stderr[-3000:]  # rank 0 says it
    assert "basic_ios" not in p.stderr and "enforce fail" not in p.stderr
    assert p.stdout.split() == [".", "..", "step-00000004.pt"]  # no .tmp on the full disk
    import torch

    ck = torch.load(keep / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert ck["step"] == 4 and ck["loader"]


def test_atomic_write_on_a_full_filesystem_keeps_the_old_file(tmp_path):
    if not _can_unshare():
        pytest.skip("needs `unshare -rm`")
    mnt = tmp_path / "m"
    mnt.mkdir()
    code = (
        "from quadmix_stream.training.runguard import write_file_atomic, OutputError\n"
        "import os\n"
        f"p = '{mnt}/f.bin'\n"
        "write_file_atomic(p, lambda f: f.write(b'old'))\n"
        "try:\n"
        "    write_file_atomic(p, lambda f: f.write(os.urandom(1 << 20)))\n"
        "except OutputError as e:\n"
        "    print(e)\n"
        f"print(sorted(os.listdir('{mnt}')), open(p, 'rb').read())\n"
    )
    script = f'mount -t tmpfs -o size=256k tmpfs {mnt} && exec {sys.executable} -c "{code}"'
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        f"cannot write {mnt}/f.bin: No space left on device",
        "['f.bin'] b'old'",
    ]


# ---------------------------------------------------------------- lock, agent death, resume log
def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    from quadmix_stream.training.runguard import OutputError, RunLock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from quadmix_stream.training.runguard import RunLock; "
            f"lock = RunLock('{tmp_path}').acquire(); print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(tmp_path):  # the kernel dropped the dead holder's lock
        pass


def test_agent_death_stops_ranks_and_a_resume_keeps_one_record_per_step(env):
    """SIGKILL of only the torchrun agent: the ranks exit within seconds and write no further
    checkpoint. While they ran, a second trainer on the same folder was refused. The resumed
    run leaves one log record per step and the wall time counts both invocations."""
    import psutil

    tmp, recipe = env
    out = tmp / "agent"
    r = recipe("agent", out, steps=2000, every=4)
    agent = subprocess.Popen(
        torchrun_command(2, *TRAINER, str(r)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any(
            s >= 8 for s in (_ckpt_steps(out) if (out / "checkpoints").exists() else [])
        ):
            time.sleep(0.2)
        assert _ckpt_steps(out), "no checkpoint within 240 s"
        second = subprocess.run(
            [sys.executable, *TRAINER, str(r)], capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2
        assert f"{out} is in use by another trainer (pid " in second.stderr, second.stderr
        ranks = psutil.Process(agent.pid).children(recursive=True)
        assert len([p for p in ranks if p.ppid() == agent.pid]) == 2
        agent.send_signal(signal.SIGKILL)  # the agent only
        agent.wait()
        t_kill, at_kill = time.time(), max(_ckpt_steps(out))
        _, alive = psutil.wait_procs(ranks, timeout=15)
        assert not alive, f"ranks still running 15 s after their agent died: {alive}"
        assert time.time() - t_kill < 15
        # the ranks are gone: nothing writes a checkpoint any more (how many steps they ran in
        # the ~1 s before noticing depends on the machine's load, so it is not bounded here)
        gone = _ckpt_steps(out)
        time.sleep(2)
        assert _ckpt_steps(out) == gone
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
    killed_log = read_log(out / "log.jsonl")
    logged = _steps_logged(out)
    assert max(logged) < 2000
    assert max(_ckpt_steps(out)) >= at_kill
    import torch

    for ck_path in (out / "checkpoints").glob("step-*.pt"):  # every checkpoint is complete
        assert "model" in torch.load(ck_path, map_location="cpu", weights_only=True), ck_path
    # resume on one process for a few steps: the records past the checkpoint are dropped once
    ck = max(_ckpt_steps(out))
    p = subprocess.run(
        [sys.executable, *TRAINER, str(r), "--steps", str(ck + 3)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    steps = _steps_logged(out)
    assert steps == list(range(1, ck + 4)), steps
    recs = read_log(out / "log.jsonl")
    if max(logged) > ck:
        cut = [x for x in recs if x.get("event") == "truncated"]
        assert cut and cut[0]["after_step"] == ck and cut[0]["dropped"] >= max(logged) - ck
    first = [x["time"] for x in killed_log if "time" in x]
    second_start = [x for x in recs if x.get("event") == "start"][-1]["time"]
    assert wall_time(recs) >= (max(first) - min(first)) + (recs[-1]["time"] - second_start) - 1e-6
    assert not list(out.glob("**/.*.tmp"))


# ---------------------------------------------------------------- progress, TensorBoard, W&B
def _wandb_history(run_dir: Path) -> list[dict]:
    """History rows of an offline W&B run file (a LevelDB-style log of protobuf records)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, pos, block, buf, rows = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                h = rec.history
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.item}
                rows.append({**row, "_step": h.step.num})
    return rows


def test_progress_lines_tensorboard_and_wandb_offline(env, mds_ds):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, recipe = env
    out = tmp / "logged"
    logging = {"tensorboard": True, "wandb": {"project": "qms-test"}, "progress_every": 0}
    r = recipe("logged", out, steps=6, every=6, logging=logging)
    p = subprocess.run(
        [sys.executable, *TRAINER, str(r)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("[pretrain] step ")]
    assert len(lines) == 6  # one per step (progress_every: 0); the last is not printed twice
    assert lines[2].startswith("[pretrain] step 3/6 (50%) | loss ")
    assert " | tokens/s " in lines[2] and " | ETA " in lines[2]
    assert "ETA" not in lines[-1] and lines[-1].startswith("[pretrain] step 6/6 (100%)")
    domains = Manifest.load(mds_ds).domains
    log = [x for x in read_log(out / "log.jsonl") if "loss" in x]
    # TensorBoard: loss and the realised vs expected mixture, per step
    (ev,) = (out / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(ev)).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "tokens_per_s"} | {f"mixture/realised/{d}" for d in domains} <= tags
    assert {f"mixture/expected/{d}" for d in domains} <= tags
    assert [e.step for e in acc.Scalars("loss")] == list(range(1, 7))
    assert [round(e.value, 4) for e in acc.Scalars("loss")] == [round(x["loss"], 4) for x in log]
    d0 = domains[0]
    assert acc.Scalars(f"mixture/realised/{d0}")[-1].value == pytest.approx(
        log[-1]["realised_share"][d0], abs=1e-6
    )
    # W&B, offline: the same scalars in the run file
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    hist = _wandb_history(run_dir)
    assert [h["_step"] for h in hist] == list(range(1, 7))
    assert [h["loss"] for h in hist] == [x["loss"] for x in log]
    assert hist[-1][f"mixture/expected/{d0}"] == log[-1]["expected_share"][d0]
    assert (out / "wandb-run-id").read_text().strip() in run_dir.name
