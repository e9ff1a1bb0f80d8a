"""The stream at multi-window scale: 1,000 shards, real torchrun ranks and DataLoader workers.

Elastic and new-params resumes that cross window boundaries are compared document by document
with ``quadmix-stream sample``; the state stays kilobytes with consumers far apart; no process
computes the pool-wide totals twice on one node.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.cli import main as cli
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.state import merge_states
from quadmix_stream.training.launch import torchrun_command
from tests.support.streamutil import favouring, ids, wide_params

SCRIPT = Path(__file__).with_name("dist_resume_script.py")


def sampled(root: Path, params_path: Path, out: Path) -> Counter:
    """(key, copy) multiset of epoch 0 per ``quadmix-stream sample`` (seed 5)."""
    cli(["sample", str(root), "--params", str(params_path), "--seed", "5", "--out", str(out)])
    want: Counter = Counter()
    for line in out.read_text().splitlines():
        r = json.loads(line)
        want.update({(r["key"], c): 1 for c in range(r["count"])})
    return want


def torchrun(nproc: int, *args: str) -> None:
    try:
        subprocess.run(
            torchrun_command(nproc, str(SCRIPT), *args),
            check=True,
            timeout=400,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as e:
        raise AssertionError(e.stderr[-4000:]) from None


def pairs(folder: Path, phase: str, ranks: int) -> list[tuple[int, int]]:
    out = []
    for r in range(ranks):
        out += [tuple(x) for x in json.loads((folder / f"{phase}-rank{r}.json").read_text())]
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("new_params", "after"),
    [(False, (3, 1, "spawn")), (True, (1, 2, "fork"))],
    ids=["elastic-2x2fork-to-3x1spawn", "new-params-2x2fork-to-1x2fork"],
)
def test_resume_across_windows_under_torchrun(many_shards_ds, tmp_path, new_params, after):
    root = many_shards_ds
    old = wide_params(root)
    old.save(tmp_path / "old.json")
    torchrun(2, str(root), str(tmp_path / "old.json"), str(tmp_path), "first", "2", "fork", "4")
    consumed = pairs(tmp_path, "first", 2)
    assert len(consumed) == 5 * (20 + 29)
    p = tmp_path / "old.json"
    if new_params:
        favouring(root, "code").save(tmp_path / "new.json")
        p = tmp_path / "new.json"
    world, workers, context = after
    torchrun(world, str(root), str(p), str(tmp_path), "rest", str(workers), context, "4")
    rest = pairs(tmp_path, "rest", world)
    assert not set(consumed) & set(rest) and len(set(rest)) == len(rest)
    want_old = sampled(root, tmp_path / "old.json", tmp_path / "old.jsonl")
    if not new_params:  # nothing lost, nothing repeated: exactly `sample`'s counts
        assert Counter(consumed + rest) == want_old
    else:
        want_new = sampled(root, p, tmp_path / "new.jsonl")
        assert Counter(rest) <= want_new  # the remainder follows the new params
        both = set(want_old) & set(want_new)
        assert both - set(consumed) == set(rest) & both  # and loses nothing that both select
        from quadmix_stream.formats.labels import Manifest, load_labels

        m = Manifest.load(root)
        lab = load_labels(root, m)
        dom = dict(zip(lab.key.tolist(), lab.domain.tolist(), strict=True))
        code = m.domains.index("code")
        assert np.mean([dom[k] == code for k, _ in rest]) > 0.6  # the new mixture


def test_state_stays_small_with_consumers_far_apart(many_shards_ds):
    root = many_shards_ds
    p = wide_params(root)
    far = [0, 40, 700, 1400]  # items consumed per consumer: far apart (shares are ~2,000)
    consumed, states = [], []
    for rank, n in enumerate(far):
        ds = QuaDMixDataset(
            root, p, seed=5, balance=None, rank=rank, world_size=4, shuffle_block_shards=4
        )
        it = iter(ds)
        consumed += ids([next(it) for _ in range(n)])
        states.append(ds.state_dict())
    state = json.loads(json.dumps(merge_states(states)))
    assert len(json.dumps(state)) < 8_000
    rest = []
    for rank in range(3):  # re-dealt to 3 consumers: the re-dealt state is small too
        ds = QuaDMixDataset(
            root, p, seed=5, balance=None, rank=rank, world_size=3, shuffle_block_shards=4
        )
        ds.load_state_dict(state)
        assert len(json.dumps(ds.state_dict())) < 8_000
        rest += ids(ds)
    full = QuaDMixDataset(root, p, seed=5, balance=None)
    assert Counter(consumed + rest) == Counter(ids(full))


def test_one_pool_pass_per_node(many_shards_ds, tmp_path):
    """Two datasets (as two ranks) share the cached per-shard totals: computed once."""
    p = wide_params(many_shards_ds)
    a = QuaDMixDataset(many_shards_ds, p, seed=5, cache_dir=tmp_path)
    t = a.tables.totals(a.params, 5, 0)
    files = sorted(x.name for x in (tmp_path / "pools").rglob("totals-*.npz"))
    assert len(files) == 1
    before = (tmp_path / "pools").rglob("totals-*.npz").__next__().stat().st_mtime_ns
    b = QuaDMixDataset(many_shards_ds, p, seed=5, cache_dir=tmp_path, rank=1, world_size=2)
    assert np.array_equal(b.tables.totals(b.params, 5, 0), t)
    after = next((tmp_path / "pools").rglob("totals-*.npz")).stat().st_mtime_ns
    assert before == after  # read, not recomputed
    assert int(t.sum()) == sum(int(a.counts(s, 0).sum()) for s in range(a.tables.n_shards))


def test_a_pass_survives_a_process_killed_holding_a_chunk(tmp_path):
    """A chunk's holder dies (SIGKILL): its flock goes with it and another process computes it."""
    import signal
    import sys
    import threading
    import time

    from quadmix_stream.storage.cache import cooperative

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time, pathlib\n"
            f"p = pathlib.Path({str(tmp_path)!r}) / 'sq.parts'\n"
            "p.mkdir(parents=True, exist_ok=True)\n"
            "f = open(p / '1.lock', 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    calls = []

    def compute(i: int) -> dict:
        calls.append(i)
        return {"v": np.array([i * i])}

    def combine(parts: list) -> dict:
        return {"v": np.concatenate([p["v"] for p in parts])}

    # it dies (SIGKILL) holding chunk 1 while we wait for that chunk: we then compute it
    killer = threading.Timer(1.0, lambda: holder.send_signal(signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    out = cooperative(tmp_path, "sq", 3, compute, combine)
    holder.wait()
    assert time.monotonic() - t0 >= 0.9  # it really waited for the holder
    assert out["v"].tolist() == [0, 1, 4] and sorted(calls) == [0, 1, 2]
    assert (tmp_path / "sq.npz").exists() and not (tmp_path / "sq.parts").exists()
    again = cooperative(tmp_path, "sq", 3, compute, combine)  # cached: nothing recomputed
    assert again["v"].tolist() == [0, 1, 4] and len(calls) == 3


def test_inspect_reads_one_shard_at_a_time_and_matches_the_whole_pool(many_shards_ds, monkeypatch):
    """``inspect`` over many shards never loads the pool's labels at once, and its figures equal
    a whole-pool computation (the oracle here loads everything: the pool is small)."""
    from quadmix_stream import inspect as inspect_mod
    from quadmix_stream.formats.labels import Manifest, load_labels
    from quadmix_stream.stream.selection import Selection

    m = Manifest.load(many_shards_ds)
    params = wide_params(many_shards_ds)
    lab = load_labels(many_shards_ds, m)
    sel = Selection(lab, m, params, seed=2)
    counts = sel.counts(1)

    def refuse(*a, **k):
        raise AssertionError("inspect loaded the whole pool's labels")

    monkeypatch.setattr("quadmix_stream.formats.labels.load_labels", refuse)
    rep = inspect_mod.inspect_dataset(many_shards_ds, params, seed=2, epoch=1)
    assert rep["shards"] == len(m.shards) > 100
    exp = sel.mixture(None)
    for i, d in enumerate(m.domains):
        row = rep["domains"][d]
        assert row["docs"] == int((lab.domain == i).sum())
        assert row["realised_docs"] == int(counts[lab.domain == i].sum())
        seen = (lab.domain == i) & (counts > 0)
        assert row["realised_unique_tokens"] == int(lab.tokens[seen].sum())
        assert row["expected_docs"] == pytest.approx(float(exp["docs"][i]), rel=1e-9)
        hist = np.bincount(np.minimum(counts[lab.domain == i], 4), minlength=5)
        assert list(row["repeat_histogram"].values()) == hist.tolist()
    q = np.quantile(lab.scores[:, 0], [0.0, 0.1, 0.5, 0.9, 1.0]).round(6).tolist()
    assert rep["scorers"][m.scorers[0].name]["quantiles(0,10,50,90,100%)"] == q


def test_the_search_pool_holds_a_bounded_sample(many_shards_ds):
    """The search's pool statistics come from at most ``max_docs`` documents' labels, gathered
    shard by shard; exact below the bound, and close to the whole pool's above it."""
    from quadmix_stream.search.pool import Pool

    whole, part = Pool(many_shards_ds), Pool(many_shards_ds, max_docs=2400)
    n = whole.manifest.rows
    assert whole.rate == 1.0 and whole.labels.rows == n
    assert part.rate == 2400 / n and 2100 < part.labels.rows < 2700
    assert np.array_equal(part.domain_tokens, whole.domain_tokens)  # exact sums
    params = wide_params(many_shards_ds)
    a, b = whole.profile(params), part.profile(params)
    assert b["tokens"] == pytest.approx(a["tokens"], rel=0.15)
    for d in whole.domains:
        assert b["token_share"][d] == pytest.approx(a["token_share"][d], abs=0.06)
    keys = set(part.labels.key.tolist())
    assert keys == set(Pool(many_shards_ds, max_docs=2400).labels.key.tolist())  # deterministic
    assert keys < set(whole.labels.key.tolist())


def test_the_scale_benchmark_pool_streams(tmp_path):
    """``bench scale``'s pools pass the stream's per-document key check (they did not once)."""
    from quadmix_stream.benchmarks.scale import build_pool
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams

    root = build_pool(tmp_path / "pool", 300)
    m = Manifest.load(root)
    keep = SamplingParams.keep_all(m.domains, m.scorer_names)
    ds = QuaDMixDataset(root, keep, seed=0, balance=None, rank=0, world_size=1)
    assert len({str(d["id"]) for d in ds}) == 300
