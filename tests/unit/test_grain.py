"""Grain adapter: a state saved with Grain (``get_state``, JSON) resumes the stream exactly.

Exact means bit for bit: the documents (or token blocks and their document ids) after a resume
are those the uninterrupted pipeline yields next, through ``.map``/``.batch`` and through
``mp_prefetch`` worker processes, also across windows of shards and across epochs.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

grain = pytest.importorskip("grain")

from quadmix_stream.loaders.grain import QuaDMixIterDataset, stream_states  # noqa: E402
from quadmix_stream.stream.dataset import QuaDMixDataset  # noqa: E402
from quadmix_stream.stream.packing import PackedDataset  # noqa: E402
from quadmix_stream.stream.state import StateError  # noqa: E402
from quadmix_stream.training.tokenizer import TextTokenizer, train_tokenizer  # noqa: E402
from tests.support.streamutil import wide_params  # noqa: E402

WINDOW = 2  # shards per window: the 15-shard pool streams in several windows per epoch


@pytest.fixture(scope="module")
def pool(synth_root: Path) -> Path:
    """15 JSONL shards of 20 documents (≈380 items an epoch under the wide params)."""
    from quadmix_stream.synth import synth

    out = synth_root / "grain-jsonl-60-20"
    if not out.exists():
        synth(out, "jsonl", docs_per_domain=60, seed=0, rows_per_shard=20)
    return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    pytest.importorskip("tokenizers")  # the `train` extra: packed tests only
    from quadmix_stream.synth import iter_docs

    path = tmp_path_factory.mktemp("grain-tok") / "tokenizer.json"
    train_tokenizer((d["text"] for d, *_ in iter_docs(40, seed=5)), 300, path)
    return TextTokenizer(path)


def stream(root: Path, params_seed: int = 1, **kw) -> QuaDMixDataset:
    kw.setdefault("seed", 2)
    kw.setdefault("balance", None)
    kw.setdefault("shuffle_block_shards", WINDOW)
    return QuaDMixDataset(root, wide_params(root, seed=params_seed), **kw)


def ends_of_windows(ds: QuaDMixDataset) -> list[int]:
    """Item counts at which a single consumer's windows of epoch 0 end."""
    seq = ds.sequence(0)
    sizes = [seq.window_size(w) for w in seq.windows(0, seq.total, ds.block_shards)]
    return np.cumsum(sizes).tolist()


def doc(d: dict) -> tuple:
    return (int(d["key"]), d["copy"], d["row"], d["epoch"], d["text"])


def take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def resumed(ds, state: dict):
    """A fresh iterator of ``ds`` restored from a state that went through JSON."""
    it = iter(ds)
    it.set_state(json.loads(json.dumps(state)))
    return it


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


# ------------------------------------------------------------ documents


@pytest.mark.parametrize("where", ["start", "first", "window_end", "window_end+1", "mid", "end"])
def test_documents_resume_exactly(pool, where):
    ds = QuaDMixIterDataset(stream(pool)).map(doc)
    want = list(ds)
    ends = ends_of_windows(stream(pool))
    assert len(ends) >= 4 and ends[-1] == len(want)  # several windows in the epoch
    k = {
        "start": 0,
        "first": 1,
        "window_end": ends[0],
        "window_end+1": ends[0] + 1,
        "mid": ends[2] - 1,
        "end": len(want),
    }[where]
    it = iter(ds)
    head = take(it, k)
    it2 = resumed(ds, it.get_state())
    assert head + list(it2) == want


@pytest.mark.parametrize("k", [5, 40])
def test_infinite_documents_resume_across_the_epoch_boundary(pool, k):
    ds = QuaDMixIterDataset(stream(pool, infinite=True)).map(doc)
    epoch = len(list(QuaDMixIterDataset(stream(pool))))
    it = iter(ds)
    want = take(it, epoch + 60)
    assert want[epoch - 1][3] == 0 and want[epoch][3] == 1
    it = iter(ds)
    take(it, epoch - k)
    assert take(resumed(ds, it.get_state()), k + 20) == want[epoch - k : epoch + 20]


# ------------------------------------------------------------ packed blocks, batched


@pytest.fixture(scope="module")
def packed_run(pool, tok):
    """The first 48 batches of 4 blocks, and the batches in which windows 2 and 3 start."""

    def make():
        return QuaDMixIterDataset(
            PackedDataset(stream(pool), tok, seq_len=128, track_docs=True)
        ).batch(4)

    want = take(iter(make()), 48)
    started = np.cumsum([int((b["doc_ids"] >= 0).sum()) for b in want])
    ends = ends_of_windows(stream(pool))
    # the batch in which the first document of window 2 (3) starts
    firsts = [int(np.searchsorted(started, e + 1)) for e in ends[:2]]
    assert firsts[1] + 11 <= len(want)  # both boundaries within the batches compared below
    return make, want, firsts


@pytest.mark.parametrize("where", ["start", "one", "window_2-1", "window_2", "window_3+1"])
def test_packed_batches_resume_exactly(packed_run, where):
    make, want, (w2, w3) = packed_run
    k = {"start": 0, "one": 1, "window_2-1": w2 - 1, "window_2": w2, "window_3+1": w3 + 1}[where]
    it = iter(make())
    head = take(it, k)
    assert same_batches(head, want[:k])
    state = it.get_state()
    assert len(json.dumps(state)) < 16_000  # a cut document is (row, offset), not its tokens
    assert same_batches(take(resumed(make(), state), 10), want[k : k + 10])


def test_grain_checkpoint_handler_round_trip(packed_run, tmp_path):
    """Grain's own checkpointer (what Orbax calls) writes and restores the state."""
    from etils import epath

    make, want, _ = packed_run
    it = iter(make())
    take(it, 7)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), item=it)
    assert list(tmp_path.glob("process_*.json"))
    it2 = handler.restore(epath.Path(tmp_path), item=iter(make()))
    assert it2.get_state() == json.loads(json.dumps(it.get_state()))
    assert same_batches(take(it2, 5), want[7:12])


def test_state_right_after_restore_keeps_the_packing_carry(packed_run):
    make, want, _ = packed_run
    it = iter(make())
    take(it, 3)
    again = resumed(make(), it.get_state())
    # saved again before reading on (a checkpoint right after a restore): still exact
    assert same_batches(take(resumed(make(), again.get_state()), 4), want[3:7])


# ------------------------------------------------------------ ranks and prefetch workers


def test_two_ranks_partition_the_epoch(pool):
    one = stream(pool)  # constructed without a rank: the adapter places it
    ranks = [list(QuaDMixIterDataset(one, dp_rank=r, dp_world=2).map(doc)) for r in range(2)]
    everything = list(QuaDMixIterDataset(one).map(doc))
    assert ranks[0] and ranks[1]
    assert not set(ranks[0]) & set(ranks[1])
    assert Counter(ranks[0] + ranks[1]) == Counter(everything)


def test_elastic_resume_from_gathered_states(pool):
    """2 ranks → 3 ranks: the gathered global state, loaded into the stream, re-deals the rest."""
    from quadmix_stream.stream.checkpoint import gather_state

    head, states = [], []
    for r, n in ((0, 20), (1, 25)):
        it = iter(QuaDMixIterDataset(stream(pool), dp_rank=r, dp_world=2).map(doc))
        head += take(it, n)
        states.append(stream_states(it.get_state()))
    everything = list(QuaDMixIterDataset(stream(pool)).map(doc))
    rest = []
    for r in range(3):
        s = stream(pool)
        s.load_state_dict(json.loads(json.dumps(gather_state(states))))
        rest += list(QuaDMixIterDataset(s, dp_rank=r, dp_world=3).map(doc))
    assert Counter(head + rest) == Counter(everything)


def test_mp_prefetch_resumes_exactly(pool):
    """2 worker processes on rank 1 of 2: consumers 2 and 3 of 4, interleaved by Grain."""

    def key(d):
        return (int(d["key"]), d["copy"], d["row"])

    def make():
        return QuaDMixIterDataset(stream(pool, balance="drop"), dp_rank=1, dp_world=2).map(key)

    # what each worker must read: the same stream as consumer 2 (3) of 4, in this process
    per_worker = [
        list(QuaDMixIterDataset(stream(pool, balance="drop"), dp_rank=c, dp_world=4).map(key))
        for c in (2, 3)
    ]
    assert len(per_worker[0]) == len(per_worker[1]) > 60
    want = [x for pair in zip(*per_worker, strict=True) for x in pair]

    ds = make().mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
    it = iter(ds)
    try:
        # a state before the first item is taken in this process: it already names the workers
        first = stream_states(it.get_state())
        assert [(s["consumer"], s["consumers"]) for s in first] == [(2, 4), (3, 4)]
        head = take(it, 61)
        assert head == want[:61]
        state = json.loads(json.dumps(it.get_state()))
        assert take(it, 9) == want[61:70]
        # the workers restore the JSON state and continue from item 61, not 70
        it.set_state(state)
        assert list(it) == want[61:]
    finally:
        it.close()


# ------------------------------------------------------------ refusals


def test_refuses_a_state_of_another_topology_or_params(pool):
    it = iter(QuaDMixIterDataset(stream(pool), dp_rank=0, dp_world=2))
    take(it, 5)
    rank_state = it.get_state()
    with pytest.raises(StateError, match="one consumer's state"):
        iter(QuaDMixIterDataset(stream(pool))).set_state(rank_state)

    it = iter(QuaDMixIterDataset(stream(pool)))
    take(it, 5)
    state = it.get_state()
    with pytest.raises(StateError, match="other params"):
        iter(QuaDMixIterDataset(stream(pool, params_seed=7))).set_state(state)
    with pytest.raises(StateError, match="seed"):
        iter(QuaDMixIterDataset(stream(pool, seed=3))).set_state(state)
    with pytest.raises(ValueError, match="not a QuaDMixIterDataset iterator state"):
        iter(QuaDMixIterDataset(stream(pool))).set_state({"next_index": 3})


def test_refuses_a_state_of_another_kind_or_seq_len(pool, tok):
    packed = iter(QuaDMixIterDataset(PackedDataset(stream(pool), tok, seq_len=64)))
    take(packed, 2)
    with pytest.raises(ValueError, match="packed stream"):
        iter(QuaDMixIterDataset(stream(pool))).set_state(packed.get_state())
    with pytest.raises(ValueError, match="seq_len=64"):
        iter(QuaDMixIterDataset(PackedDataset(stream(pool), tok, seq_len=32))).set_state(
            packed.get_state()
        )


def test_a_refused_state_leaves_the_iterator_as_it_was(pool):
    ds = QuaDMixIterDataset(stream(pool)).map(doc)
    want = list(ds)
    it = iter(ds)
    take(it, 4)
    with pytest.raises(StateError):
        it.set_state(
            json.loads(json.dumps(iter(QuaDMixIterDataset(stream(pool, seed=9))).get_state()))
        )
    assert take(it, 3) == want[4:7]


def test_only_mp_prefetch_slices(pool):
    ds = QuaDMixIterDataset(stream(pool))
    for sl in (slice(0, 10), slice(3, None, 2)):
        with pytest.raises(ValueError, match="cannot be sliced"):
            ds.set_slice(sl)
    with pytest.raises(ValueError, match="both dp_rank and dp_world"):
        QuaDMixIterDataset(stream(pool), dp_rank=1)


def test_import_without_grain_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "grain", None)  # `import grain` now fails
    monkeypatch.delitem(sys.modules, "quadmix_stream.loaders.grain")
    with pytest.raises(ImportError, match=r"pip install 'quadmix-stream\[grain\]'"):
        importlib.import_module("quadmix_stream.loaders.grain")
