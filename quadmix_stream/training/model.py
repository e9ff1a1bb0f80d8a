"""The causal LM every trainer builds: one config, one builder (pretraining and search proxies).

A transformers ``LlamaConfig`` (RMSNorm, SwiGLU, RoPE, untied input/output embeddings) built
with ``AutoModelForCausalLM.from_config``: nothing is downloaded. The pretraining recipe's
``model:`` section and the search recipe's ``proxy.model:`` are both a :class:`ModelConfig`;
the search's former spelling ``num_layers`` / ``num_heads`` is still read (:func:`model_section`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quadmix_stream.recipe import RecipeError

if TYPE_CHECKING:  # torch loads when a model is built, not when a recipe is read
    import torch

#: recipe keys read as another field (the search's spelling before the two configs were one)
ALIASES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A Llama-family causal LM; the defaults are a ~0.1M-parameter model for a CPU.

    Attributes:
        hidden_size: width of the residual stream.
        num_hidden_layers: transformer blocks.
        num_attention_heads: attention heads (as many key/value heads).
        intermediate_size: width of the SwiGLU MLP.
        max_position_embeddings: positions the model is configured for; ``None``: the run's
            sequence length (default RoPE does not depend on it, so the weights and the losses
            are the same either way).
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``None``: transformers' choice (sdpa)
            for the trainer, ``"eager"`` for the search's proxies (it works under
            ``torch.func.vmap`` on every device).
    """

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int | None = 2048
    attn_implementation: str | None = None


#: the search's proxy: RegMix's 1M model (2 layers, 8 heads, hidden 256, MLP 512), eager attention
PROXY_MODEL = ModelConfig(
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=8,
    intermediate_size=512,
    max_position_embeddings=None,
    attn_implementation="eager",
)


def model_section(
    value: Any,
    where: str,
    error: type[ValueError] = RecipeError,
    defaults: ModelConfig | None = None,
) -> dict[str, Any]:
    """A recipe's model section in :class:`ModelConfig`'s field names, ready for ``build``.

    Args:
        value: the section (a mapping); ``num_layers`` / ``num_heads`` are read as
            ``num_hidden_layers`` / ``num_attention_heads``.
        where: the section's name, for error messages.
        error: the exception raised for a section that is not a mapping or names a field twice.
        defaults: the values of keys the section leaves out (the class defaults when ``None``).
    """
    if not isinstance(value, Mapping):
        raise error(f"{where}: expected a mapping, got {value!r}")
    data: dict[str, Any] = {}
    given: dict[str, str] = {}  # setting → the key the user wrote for it
    for key, v in value.items():
        name = ALIASES.get(key, key)
        if name in data:
            raise error(f"{where}: {given[name]!r} and {key!r} name the same setting; give one")
        given[name] = key
        data[name] = v
    if defaults is not None:
        data = {**dataclasses.asdict(defaults), **data}
    return data


def build_causal_lm(cfg: ModelConfig, vocab_size: int, seq_len: int) -> torch.nn.Module:
    """The model of ``cfg``, initialised from torch's current random state (seed it first).

    Args:
        cfg: the architecture.
        vocab_size: the tokenizer's vocabulary.
        seq_len: the training sequence length (``max_position_embeddings`` when the config
            leaves it ``None``).
    """
    from quadmix_stream.extras import require

    transformers = require("transformers", "a Hugging Face model in the trainer", "hf")
    AutoModelForCausalLM, LlamaConfig = transformers.AutoModelForCausalLM, transformers.LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings or seq_len,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        use_cache=False,  # training and scoring only: no key/value cache to build
    )
    kw = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    return AutoModelForCausalLM.from_config(config, **kw)


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Parameters in all (``total``) and without the input/output embeddings."""
    total = sum(p.numel() for p in model.parameters())
    emb = sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "lm_head" in n)
    return {"total": total, "non_embedding": total - emb}
