"""model.py: the model config, the recipe's model section (aliases, defaults, errors), parameter
counts, and the Llama causal LM built from a config (that one needs transformers)."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from quadmix_stream.errors import UserError
from quadmix_stream.extras import MissingExtraError
from quadmix_stream.recipe import RecipeError
from quadmix_stream.training.model import (
    ALIASES,
    PROXY_MODEL,
    ModelConfig,
    build_causal_lm,
    count_params,
    model_section,
)

pytestmark = pytest.mark.core


class MyError(UserError):
    pass


def non_embedding_params(hidden: int, inter: int, layers: int) -> int:
    """Llama blocks by hand: q, k, v, o (no bias), gate/up/down, two RMSNorms; a final norm."""
    return layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + hidden


# ---------------------------------------------------------------- the config
def test_defaults_are_a_small_cpu_model():
    cfg = ModelConfig()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert (cfg.intermediate_size, cfg.max_position_embeddings) == (128, 2048)
    assert cfg.attn_implementation is None
    assert non_embedding_params(64, 128, 2) == 82_240  # "~0.1M parameters"


def test_proxy_model_is_regmix_1m():
    assert PROXY_MODEL == ModelConfig(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=512,
        max_position_embeddings=None,
        attn_implementation="eager",
    )


def test_config_is_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().hidden_size = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        ModelConfig(32)  # type: ignore[misc]


# ---------------------------------------------------------------- the recipe's section
def test_model_section_reads_the_old_spelling():
    assert ALIASES == {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}
    got = model_section({"num_layers": 3, "num_heads": 2, "hidden_size": 32}, "proxy.model")
    assert got == {"num_hidden_layers": 3, "num_attention_heads": 2, "hidden_size": 32}
    assert ModelConfig(**got) == ModelConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2
    )


def test_model_section_fills_in_defaults():
    got = model_section({"num_heads": 4}, "proxy.model", defaults=PROXY_MODEL)
    assert ModelConfig(**got) == dataclasses.replace(PROXY_MODEL, num_attention_heads=4)
    assert model_section({}, "model") == {}  # no defaults: the class defaults apply at build
    assert ModelConfig(**model_section({}, "model", defaults=ModelConfig())) == ModelConfig()


def test_model_section_refuses_a_non_mapping():
    with pytest.raises(RecipeError, match=r"^proxy\.model: expected a mapping, got \[1, 2\]$"):
        model_section([1, 2], "proxy.model")
    with pytest.raises(MyError, match=r"^model: expected a mapping, got 'small'$"):
        model_section("small", "model", error=MyError)


def test_model_section_refuses_a_setting_named_twice():
    with pytest.raises(
        RecipeError,
        match=r"^model: 'num_attention_heads' and 'num_heads' name the same setting; give one$",
    ):
        model_section({"num_attention_heads": 4, "num_heads": 2}, "model")
    with pytest.raises(MyError, match="name the same setting"):
        model_section({"num_hidden_layers": 1, "num_layers": 2}, "model", error=MyError)


def test_model_section_names_both_keys_whatever_their_order():
    with pytest.raises(RecipeError, match=r"'num_layers' and 'num_hidden_layers'"):
        model_section({"num_layers": 2, "num_hidden_layers": 3}, "model")


# ---------------------------------------------------------------- parameter counts
def test_count_params_separates_embeddings():
    model = torch.nn.ModuleDict(
        {
            "embed_tokens": torch.nn.Embedding(10, 4),  # 40
            "block": torch.nn.Linear(4, 4),  # 16 + 4
            "lm_head": torch.nn.Linear(4, 10, bias=False),  # 40
        }
    )
    assert count_params(model) == {"total": 100, "non_embedding": 20}
    assert count_params(torch.nn.Linear(3, 2)) == {"total": 8, "non_embedding": 8}


# ---------------------------------------------------------------- the causal LM
def test_build_without_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(
        MissingExtraError,
        match=r"needs 'transformers', which is not installed: pip install 'quadmix-stream\[hf\]'",
    ):
        build_causal_lm(ModelConfig(), vocab_size=100, seq_len=16)


def test_build_causal_lm():
    pytest.importorskip("transformers")
    vocab, seq = 100, 32
    torch.manual_seed(0)
    model = build_causal_lm(ModelConfig(), vocab, seq)
    c = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (c.vocab_size, c.hidden_size, c.intermediate_size) == (vocab, 64, 128)
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (2, 4, 4)
    assert c.max_position_embeddings == 2048  # the config's value
    assert c.tie_word_embeddings is False and c.use_cache is False
    assert c.attention_dropout == 0.0
    counts = count_params(model)
    assert counts["non_embedding"] == non_embedding_params(64, 128, 2)
    assert counts["total"] == counts["non_embedding"] + 2 * vocab * 64  # untied in and out
    # seeded: the same weights
    torch.manual_seed(0)
    again = build_causal_lm(ModelConfig(), vocab, seq)
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    logits = model(torch.arange(8).reshape(1, 8)).logits
    assert logits.shape == (1, 8, vocab)

    proxy = build_causal_lm(PROXY_MODEL, vocab, seq)
    assert proxy.config.max_position_embeddings == seq  # None: the run's sequence length
    assert proxy.config._attn_implementation == "eager"
    assert count_params(proxy)["non_embedding"] == non_embedding_params(256, 512, 2)
