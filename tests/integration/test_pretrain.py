"""torchrun pretraining: kill and resume exactly, resume on fewer processes, resume with new params."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from quadmix_stream.formats.labels import Manifest, load_labels
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.packing import decode_doc_id, encode_doc_id
from quadmix_stream.training.launch import torchrun_command
from tests.support.streamutil import all_counts, favouring, kill_tree

pytestmark = pytest.mark.slow
STEPS = 14


def _cmd(nproc: int, recipe: Path, *extra: str) -> list[str]:
    return torchrun_command(nproc, "-m", "quadmix_stream.trainers.pretrain", str(recipe), *extra)


def _run(nproc: int, recipe: Path, *extra: str) -> str:
    r = subprocess.run(_cmd(nproc, recipe, *extra), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _steps(out: Path) -> dict[int, dict]:
    return {
        r["step"]: r for r in _log(out) if "loss" in r
    }  # a redone step overwrites its first try


def _copy_until(ref: Path, out: Path, at: int) -> None:
    """``ref`` copied to ``out`` as if the run had died after its checkpoint at step ``at``."""
    shutil.copytree(ref, out)
    for ck in (out / "checkpoints").glob("step-*.pt"):
        if int(ck.stem.split("-")[1]) > at:
            ck.unlink()


def _rows_of(ds: Path, domain: str) -> set[int]:
    """Global rows of ``domain``'s documents."""
    m = Manifest.load(ds)
    return set(np.flatnonzero(load_labels(ds, m).domain == m.domains.index(domain)).tolist())


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mds_ds):
    tmp = tmp_path_factory.mktemp("pretrain")
    m = Manifest.load(mds_ds)
    SamplingParams.propose(
        1,
        m.domains,
        m.scorer_names,
        seed=4,
        ranges={"omega": (0.4, 0.9), "eta": (0.5, 1.5), "lam": (1, 20)},
    )[0].save(tmp / "p.json")

    def recipe(name: str, out: Path, data: dict | None = None, **train) -> Path:
        r = {
            "data": {
                "dataset": str(mds_ds),
                "params": str(tmp / "p.json"),
                "seq_len": 32,
                "workers": 1,
                "track_docs": True,
                "vocab_size": 300,
                **(data or {}),
            },
            "model": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
            "train": {
                "steps": STEPS,
                "batch_size": 8,  # 2 ranks × 4, or 1 rank × 2 passes of 4
                "micro_batch_size": 4,
                "checkpoint_every": 4,
                "keep_last": 2,
                "threads": 1,
                "warmup_steps": 2,
                **train,
            },
            "out": str(out),
        }
        p = tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(r))
        return p

    full = tmp / "full"
    _run(2, recipe("full", full))
    return tmp, recipe, full


def _kill_after_checkpoint(nproc: int, r: Path, out: Path, at: int) -> None:
    """Run ``r`` and SIGKILL torchrun and its workers once the checkpoint of step ``at`` exists."""
    proc = subprocess.Popen(
        _cmd(nproc, r), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        if (out / "log.jsonl").exists() and any(
            x.get("event") == "checkpoint" and x["step"] >= at for x in _log(out)
        ):
            break
        time.sleep(0.02)  # a step of these tiny models takes ~10 ms: look often
    kill_tree(proc.pid)  # torchrun and its workers, mid-run
    proc.wait()


def test_kill_and_resume_continues_exactly(setup):
    tmp, recipe, full = setup
    out = tmp / "killed"
    r = recipe("killed", out)
    _kill_after_checkpoint(2, r, out, 4)
    done = max(x["step"] for x in _log(out) if "loss" in x)
    assert done < STEPS, "the run finished before it could be killed"
    shutil.copytree(out, tmp / "killed-copy")
    _run(2, r)
    a, b = _steps(full), _steps(out)
    assert sorted(b) == list(range(1, STEPS + 1))
    assert len([x for x in _log(out) if "loss" in x]) == STEPS  # no step logged twice
    for s in range(1, STEPS + 1):  # same documents, same batches, same loss curve
        assert b[s]["batch_sha"] == a[s]["batch_sha"], s
        assert b[s]["docs"] == a[s]["docs"]
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5), s
    assert any(x.get("event") == "resume" and x["exact"] for x in _log(out))


def test_resume_on_one_process_loses_and_repeats_nothing(setup, mds_ds):
    """The 2-rank run's checkpoint resumed on one process, through the end of epoch 0: the
    epoch-0 document copies started before and after the checkpoint are exactly the epoch's."""
    tmp, recipe, full = setup
    src = tmp / "killed-copy"
    if not src.exists():
        pytest.skip("needs the killed run of the previous test")
    out = tmp / "one"
    shutil.copytree(src, out)
    ck = max(x["step"] for x in _log(out) if x.get("event") == "checkpoint")
    # big batches (the batch size may change with the topology) reach epoch 1 in ~100 steps
    steps = ck + 110
    _run(
        1,
        recipe(
            "one", out, batch_size=128, micro_batch_size=128, steps=steps, checkpoint_every=1000
        ),
    )
    resumed = [x for x in _log(out) if x.get("event") == "resume"][-1]
    assert resumed["switch"]["from_world"] == 2 and resumed["switch"]["to_world"] == 1
    before = [d for s, r in _steps(full).items() if s <= ck for d in r["docs"]]
    # the killed run's records past its checkpoint were cut from the log on resume
    assert sorted(_steps(out)) == list(range(1, steps + 1))
    assert len([x for x in _log(out) if "loss" in x]) == steps
    after = [d for s, r in _steps(out).items() if s > ck for d in r["docs"]]
    docs = Counter(before + after)
    assert max(docs.values()) == 1  # no document copy started twice
    ds = QuaDMixDataset(mds_ds, SamplingParams.load(tmp / "p.json"), seed=0)
    for d in docs:  # each is a real copy of its epoch
        e, row, k = decode_doc_id(d)
        shard, local = ds.tables.shard_of_row(row)
        assert k < ds.counts(shard, e)[local]
    # nothing lost: one consumer now, so once it started epoch 1 every epoch-0 copy it was dealt
    # has started; with those started before the checkpoint they are exactly the epoch's copies
    # (an infinite stream emits every item: no balancing drop, as with balance=None)
    assert any(decode_doc_id(d)[0] == 1 for d in after), "epoch 0 not finished: raise `steps`"
    want = {encode_doc_id(0, row, k) for row, n in enumerate(all_counts(ds, 0)) for k in range(n)}
    assert {d for d in docs if decode_doc_id(d)[0] == 0} == want


def test_resume_with_new_params_follows_them(setup, mds_ds):
    """A switch with --params, then the plain command: it resumes exactly under the switched
    params (they are part of the checkpoint), and the LR schedule keeps the plan of the first
    invocation when --steps extends the run."""
    tmp, recipe, full = setup
    out = tmp / "newp"
    shutil.copytree(full, out)
    new = favouring(mds_ds, "code", others=0.0, this=1.0)
    new.save(tmp / "code.json")
    r = recipe("newp", out)
    _run(1, r, "--params", str(tmp / "code.json"), "--steps", str(STEPS + 8))
    resumed = [x for x in _log(out) if x.get("event") == "resume"][-1]
    assert resumed["step"] == STEPS and resumed["switch"]["to_params"] == new.fingerprint()
    said = _run(1, r, "--steps", str(STEPS + 12))  # the plain command: keeps the switched params
    assert "kept from the checkpoint at step 22" in said
    assert "keeps its plan of 14 steps" in said
    again = [x for x in _log(out) if x.get("event") == "resume"][-1]
    assert again["step"] == STEPS + 8 and again["exact"]
    code_rows = _rows_of(mds_ds, "code")
    steps = _steps(out)
    after = [x for s, x in steps.items() if s > STEPS + 2]  # past the carried-over tokens
    assert sorted(steps) == list(range(1, STEPS + 13))
    assert after and all(set(decode_doc_id(d)[1] for d in x["docs"]) <= code_rows for x in after)
    # the LR reached its floor (0.1 · 3e-3) at step 14 and stays there through both extensions
    assert all(steps[s]["lr"] == pytest.approx(3e-4) for s in range(STEPS, STEPS + 13))
    # per document, across the switch: a copy started after it is one the new params make
    # (k < c_new) and was not started before it, so no document exceeds c_new(x) plus the
    # copies beyond c_new(x) it had already consumed (docs/guides/train.md)
    before = {d for s, x in steps.items() if s <= STEPS for d in x["docs"]}
    ds_new = QuaDMixDataset(mds_ds, new, seed=0)
    for d in {d for x in after for d in x["docs"]}:
        e, row, k = decode_doc_id(d)
        shard, local = ds_new.tables.shard_of_row(row)
        if e == 0:
            assert d not in before
            assert k < ds_new.counts(shard, 0)[local]


def test_params_schedule_switches_in_the_running_job_and_resumes_exactly(setup, mds_ds):
    """``data.params_schedule`` (keyed in tokens) switches every rank and worker at step 8
    without a restart; the run resumed from its checkpoint before the switch (it then switches
    live) and from the one at it (it resumes under the new params) trains the same batches as
    the uninterrupted run.
    (A SIGKILLed run resumes from its last checkpoint the same way: see the first test.)"""
    tmp, recipe, full = setup
    favouring(mds_ds, "code", others=0.0, this=1.0).save(tmp / "anneal.json")
    # keyed by tokens: 256 per step (8 × 32), so 2,000 tokens are reached by step 8; the
    # copies consumed before the switch count against the anneal's counts
    data = {
        "params_schedule": {"2000 tokens": str(tmp / "anneal.json")},
        "count_consumed_copies": True,
    }
    ref = tmp / "sched"
    said = _run(2, recipe("sched", ref, data=data, keep_last=10))  # checkpoints 4, 8, 12, 14
    assert "anneal.json after step 8 (2000 tokens)" in said
    a, f = _steps(ref), _steps(full)
    assert [x["step"] for x in _log(ref) if x.get("event") == "switch"] == [8]
    assert all(a[s]["batch_sha"] == f[s]["batch_sha"] for s in range(1, 9))  # same until then
    code_rows = _rows_of(mds_ds, "code")
    assert all(
        {decode_doc_id(d)[1] for d in a[s]["docs"]} <= code_rows for s in range(11, STEPS + 1)
    )
    for at in (4, 8):
        out = tmp / f"sched-{at}"
        _copy_until(ref, out, at)
        said = _run(2, recipe(f"sched-{at}", out, data=data, keep_last=10))
        if at == 8:
            assert "scheduled from step 8" in said
        b = _steps(out)
        assert [x["step"] for x in _log(out) if x.get("event") == "resume"] == [at]
        assert sorted(b) == list(range(1, STEPS + 1))
        for s in range(1, STEPS + 1):
            assert b[s]["batch_sha"] == a[s]["batch_sha"], (at, s)
            assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5), (at, s)


def test_a_scheduled_run_resumed_on_three_ranks_switches_there(setup, mds_ds):
    """The 2-rank scheduled run's checkpoint at step 4 resumed on 3 ranks: the switch at step 8
    then happens on 3 ranks; across the resume and the switch no document copy is started twice,
    and from shortly after the switch only the new params' documents come."""
    tmp, recipe, full = setup
    ref = tmp / "sched"
    if not ref.exists():
        pytest.skip("needs the scheduled run of the previous test")
    out = tmp / "sched-3"
    _copy_until(ref, out, 4)
    data = {"params_schedule": {8: str(tmp / "anneal.json")}, "count_consumed_copies": True}
    _run(3, recipe("sched-3", out, data=data, keep_last=10, batch_size=12))  # 3 ranks × 4
    resumed = [x for x in _log(out) if x.get("event") == "resume"][-1]
    assert resumed["step"] == 4 and resumed["switch"]["to_world"] == 3
    assert resumed["switch"]["from_world"] == 2
    assert [x["step"] for x in _log(out) if x.get("event") == "switch"][-1] == 8
    a, b = _steps(ref), _steps(out)
    assert sorted(b) == list(range(1, STEPS + 1))
    started = [d for s in range(1, 5) for d in a[s]["docs"]]
    started += [d for s in range(5, STEPS + 1) for d in b[s]["docs"]]
    assert max(Counter(started).values()) == 1  # across the resume and the switch
    code_rows = _rows_of(mds_ds, "code")
    assert all(
        {decode_doc_id(d)[1] for d in b[s]["docs"]} <= code_rows for s in range(11, STEPS + 1)
    )
    # no document of epoch 0 gets more copies than the anneal allows, counting earlier ones
    anneal = QuaDMixDataset(mds_ds, tmp / "anneal.json", seed=0)
    allowed = np.concatenate([anneal.counts(s, 0) for s in range(anneal.tables.n_shards)])
    rows = [decode_doc_id(d)[:2] for d in started]
    had = Counter(r for e, r in rows[: sum(len(a[s]["docs"]) for s in range(1, 5))] if e == 0)
    had.update(r for s in range(5, 9) for e, r, _ in map(decode_doc_id, b[s]["docs"]) if e == 0)
    after = Counter(
        r for s in range(9, STEPS + 1) for e, r, _ in map(decode_doc_id, b[s]["docs"]) if e == 0
    )
    assert all(n <= max(0, int(allowed[r]) - had[r]) for r, n in after.items())


def test_odm_controller_switches_as_it_goes_and_resumes_exactly(setup, mds_ds):
    """``data.controller: {name: odm}`` re-weights the domains every 2 steps from their training
    losses, on 2 ranks × 2 DataLoader workers, in the running job. SIGKILLed after a checkpoint
    and resumed, the run trains the same batches and its controller ends in the same state, bit
    for bit; resumed on one process from a checkpoint with a switch pending, no document copy is
    started twice."""
    import torch

    tmp, recipe, full = setup
    steps, data = 24, {"controller": {"name": "odm", "every": 2}, "workers": 2}
    train = {"steps": steps, "checkpoint_every": 5, "keep_last": 10}
    ref = tmp / "odm"
    _run(2, recipe("odm", ref, data=data, **train))  # checkpoints 5, 10, 15, 20, 24
    a = _steps(ref)
    switches = [x for x in _log(ref) if x.get("event") == "switch"]
    # ODM explores uniformly while K·ε_t = 1, for its first K·ln K updates (ε_t is the
    # exploration floor; K domains), then follows the losses. An update that leaves the params as
    # they are switches nothing.
    k = len(Manifest.load(mds_ds).domains)
    first = math.floor(k * math.log(k)) + 1
    assert [x["step"] for x in switches] == [2] + list(range(2 * first, steps, 2))
    assert all(x["by"] == "odm" for x in switches)
    assert len({json.dumps(x["target_share"]) for x in switches}) == len(switches)

    def control(out: Path) -> dict:
        return torch.load(out / "checkpoints" / f"step-{steps:08d}.pt", weights_only=True)[
            "control"
        ]

    out = tmp / "odm-killed"
    r = recipe("odm-killed", out, data=data, **train)
    _kill_after_checkpoint(2, r, out, 15)
    assert max(x["step"] for x in _log(out) if "loss" in x) < steps, "finished before the kill"
    said = _run(2, r)
    assert "restored from step" in said and "as data.controller left them" in said
    b = _steps(out)
    assert sorted(b) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert b[s]["batch_sha"] == a[s]["batch_sha"], s
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5), s
    assert control(out) == control(ref)

    one = tmp / "odm-one"  # the checkpoint at step 20 has the switch of step 20 pending
    _copy_until(ref, one, 20)
    _run(1, recipe("odm-one", one, data=data, **train))
    resumed = [x for x in _log(one) if x.get("event") == "resume"][-1]
    assert resumed["step"] == 20 and resumed["switch"]["to_world"] == 1
    assert [x["step"] for x in _log(one) if x.get("event") == "switch"][-2:] == [20, 22]
    started = [d for s, x in _steps(one).items() for d in x["docs"]]
    assert max(Counter(started).values()) == 1  # across the resume too
