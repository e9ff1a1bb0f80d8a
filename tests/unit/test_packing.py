"""Packed token blocks: exact resume with the carry in the state, and no token lost elastically."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from quadmix_stream.stream.checkpoint import gather_state
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.stream.packing import PackedDataset
from quadmix_stream.training.tokenizer import TextTokenizer, train_tokenizer
from tests.support.streamutil import wide_params


@pytest.fixture(scope="module")
def tok(tmp_path_factory, jsonl_ds):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    from quadmix_stream.synth import iter_docs

    train_tokenizer((d["text"] for d, *_ in iter_docs(40, seed=5)), 300, path)
    return TextTokenizer(path)


def packed(root, tok, seq_len=48, **kw):
    kw.setdefault("seed", 2)
    kw.setdefault("balance", None)
    return PackedDataset(QuaDMixDataset(root, wide_params(root), **kw), tok, seq_len)


def flat(blocks):
    return [t for b in blocks for t in b["input_ids"].tolist()]


def test_blocks_are_the_documents_tokens_in_order(jsonl_ds, tok):
    ds = packed(jsonl_ds, tok)
    blocks = list(ds)
    assert all(
        b["input_ids"].shape == (48,) and torch.equal(b["input_ids"], b["labels"]) for b in blocks
    )
    docs = list(QuaDMixDataset(jsonl_ds, wide_params(jsonl_ds), seed=2, balance=None))
    stream = [t for d in docs for t in tok.encode_docs([d["text"]])[0]]
    assert flat(blocks) == stream[: len(blocks) * 48]
    assert sum(int(b["domain_tokens"].sum()) for b in blocks) == len(blocks) * 48
    # each token's domain is the domain of the document it came from
    doms = [d["domain_id"] for d in docs for _ in tok.encode_docs([d["text"]])[0]]
    assert [t for b in blocks for t in b["token_domains"].tolist()] == doms[: len(blocks) * 48]
    for b in blocks:
        assert torch.equal(
            torch.bincount(b["token_domains"], minlength=b["domain_tokens"].numel()),
            b["domain_tokens"],
        )


@pytest.mark.parametrize("stop", [0, 1, 7, 40])
def test_exact_resume_mid_document(jsonl_ds, tok, stop):
    want = list(packed(jsonl_ds, tok, seq_len=64))
    ds = packed(jsonl_ds, tok, seq_len=64)
    it = iter(ds)
    head = [next(it) for _ in range(stop)]
    state = json.loads(json.dumps(ds.state_dict()))
    assert len(json.dumps(state)) < 16_000  # a cut document is a (row, offset), not its tokens
    again = packed(jsonl_ds, tok, seq_len=64)
    again.load_state_dict(state)
    assert flat(head) + flat(again) == flat(want)


def test_state_right_after_a_restore_is_the_restored_state(jsonl_ds, tok):
    """A checkpoint taken after a restore and before the next block keeps the carried tokens."""
    want = list(packed(jsonl_ds, tok, seq_len=64))
    ds = packed(jsonl_ds, tok, seq_len=64)
    it = iter(ds)
    head = [next(it) for _ in range(7)]
    state = json.loads(json.dumps(ds.state_dict()))
    restored = packed(jsonl_ds, tok, seq_len=64)
    restored.load_state_dict(state)
    assert json.loads(json.dumps(restored.state_dict())) == state
    again = packed(jsonl_ds, tok, seq_len=64)
    again.load_state_dict(restored.state_dict())
    assert flat(head) + flat(again) == flat(want)


def test_elastic_resume_keeps_every_token(jsonl_ds, tok):
    states, head = [], []
    for rank in range(2):
        ds = packed(jsonl_ds, tok, rank=rank, world_size=2, balance=None)
        it = iter(ds)
        head += flat([next(it) for _ in range(5 + rank)])
        states.append(ds.state_dict())
    state = gather_state(states)
    rest = []
    for rank in range(3):
        ds = packed(jsonl_ds, tok, rank=rank, world_size=3, balance=None)
        ds.load_state_dict(state)
        rest += flat(list(ds))
    everything = flat(list(packed(jsonl_ds, tok, balance=None)))
    # the same tokens, up to each consumer's last partial block of the epoch (< seq_len each):
    # the single uninterrupted consumer leaves one, the three resumed consumers three
    missing = Counter(everything) - Counter(head + rest)
    extra = Counter(head + rest) - Counter(everything)
    assert sum(extra.values()) < 48 and sum(missing.values()) < 3 * 48
    assert len(head) + len(rest) > 0.9 * len(everything)


def test_track_docs_audits_every_document_once(jsonl_ds, tok):
    from quadmix_stream.stream.packing import decode_doc_id

    def docs_of(blocks):
        return [decode_doc_id(x) for b in blocks for x in b["doc_ids"].tolist() if x >= 0]

    ds = PackedDataset(
        QuaDMixDataset(jsonl_ds, wide_params(jsonl_ds), seed=2, balance=None),
        tok,
        32,
        track_docs=True,
    )
    full = list(ds)
    logged = docs_of(full)
    want = [
        (0, it["row"], it["copy"])
        for it in QuaDMixDataset(jsonl_ds, wide_params(jsonl_ds), seed=2, balance=None)
    ]
    assert (
        logged == want[: len(logged)] and len(want) - len(logged) <= 32
    )  # only the last partial block
    ds2 = PackedDataset(
        QuaDMixDataset(jsonl_ds, wide_params(jsonl_ds), seed=2, balance=None),
        tok,
        32,
        track_docs=True,
    )
    it = iter(ds2)
    head = [next(it) for _ in range(13)]
    again = PackedDataset(
        QuaDMixDataset(jsonl_ds, wide_params(jsonl_ds), seed=2, balance=None),
        tok,
        32,
        track_docs=True,
    )
    again.load_state_dict(ds2.state_dict())
    assert docs_of(head) + docs_of(list(again)) == logged
