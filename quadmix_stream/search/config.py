"""Search settings: a YAML recipe parsed into frozen dataclasses (unknown keys are errors).

A recipe is read with ``yaml.safe_load`` only (never evaluated). Paths are relative to the
current directory; ``{dataset}`` in ``target`` expands to the dataset path. Every section has
defaults; the proxy defaults are RegMix's 1M model (2 layers, 8 heads, hidden 256, MLP 512,
sequence 2048, AdamW lr 4e-4, weight decay 0.1, clip 1.0, 4% warm-up, batch 512), see
``recipes/search_gpu_paper_scale.yaml``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quadmix_stream.params import DEFAULT_RANGES
from quadmix_stream.recipe import build, check_number
from quadmix_stream.sampling import FORMS

SPACES = ("quadmix", "domain_mixture")


class SearchConfigError(ValueError):
    """A recipe or run-folder setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class SynthConfig:
    """Write the planted synthetic corpus at ``dataset`` first when it is missing."""

    docs_per_domain: int = 400
    format: str = "mds"
    seed: int = 0
    rows_per_shard: int = 500


@dataclass(frozen=True)
class ProposalConfig:
    """How θ proposals are drawn (Algorithm 1 ranges, or Dirichlet mixtures)."""

    n: int = 64
    seed: int = 1
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: domain_mixture space: Dirichlet concentration of the domain weights
    dirichlet: float = 1.0
    #: domain_mixture space: selected tokens per epoch as a multiple of the pool's tokens
    scale: float = 1.0


@dataclass(frozen=True)
class TokenizerConfig:
    """A tokenizer given by path (tokenizer.json or a folder holding one), or trained on the pool."""

    path: str | None = None
    vocab_size: int = 512
    max_docs: int = 5000
    eos_token: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A transformers LlamaConfig (RMSNorm + SwiGLU + RoPE, untied head), built without downloads."""

    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 8
    intermediate_size: int = 512
    #: "eager" works under vmap everywhere; "sdpa" is faster for one model at long sequences
    attn_implementation: str = "eager"


@dataclass(frozen=True)
class ProxyConfig:
    """One proxy training: model, token budget, optimiser, evaluation, placement."""

    model: ModelConfig = field(default_factory=ModelConfig)
    seq_len: int = 2048
    batch_size: int = 512
    #: split each batch into micro-batches of this size (gradient accumulation); 0 = no split
    micro_batch_size: int = 0
    tokens: int = 1_048_576_000  # 1000 steps × 512 × 2048 (RegMix's 1M proxies: 1B tokens)
    lr: float = 4e-4
    min_lr_ratio: float = 0.1
    warmup: float = 0.04
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    init_seed: int = 0
    data_seed: int = 0
    eval_max_tokens: int = 1_000_000
    eval_batch_size: int = 32
    #: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", …
    device: str = "auto"
    #: proxies trained at once in one process (torch.func.vmap over stacked weights); 1 = one by one
    group: int = 1
    #: give up on a θ whose selection is so small that the budget needs more epochs than this
    max_epochs: int = 1000
    #: torch intra-op threads (0: leave torch's default)
    threads: int = 0

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size


@dataclass(frozen=True)
class RegressorConfig:
    """LightGBM θ → loss; held-out split, k-fold below ``kfold_below`` runs, linear baseline."""

    valid_fraction: float = 0.2
    kfold: int = 5
    kfold_below: int = 500
    seed: int = 0
    #: extra LGBMRegressor arguments (override the small-data defaults of :mod:`.regressor`)
    lgbm: Mapping[str, Any] = field(default_factory=dict)
    #: ridge penalty of the linear baseline (features standardised)
    ridge_alpha: float = 1.0
    #: regressor inputs: "theta" (the paper), "profile" or "theta+profile" (see search/features.py)
    features: str = "theta"
    #: labelled documents per domain used to compute profile features of candidates
    profile_sample: int = 2000


@dataclass(frozen=True)
class SelectConfig:
    n: int = 100_000
    top_k: int = 10
    seed: int = 2


@dataclass(frozen=True)
class BaselineConfig:
    """Baselines of DESIGN.md §3 written next to θ*."""

    #: fraction of each domain's tokens kept by the top-k and Criteria-Mix baselines
    topk_fraction: float = 0.3
    #: grid steps per α axis when fitting the Criteria-Mix approximation (see :mod:`.baselines`)
    criteria_grid: int = 10


@dataclass(frozen=True)
class RegmixConfig:
    """The RegMix-style domain-only search, run in ``RUN_DIR/regmix`` with the same proxies."""

    proposals: int = 32
    seed: int = 3
    dirichlet: float = 1.0


@dataclass(frozen=True)
class SearchConfig:
    dataset: str
    target: str = "{dataset}/eval_sets/target.jsonl"
    synth: SynthConfig | None = None
    space: str = "quadmix"
    form: str = "multiplicative"
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    regressor: RegressorConfig = field(default_factory=RegressorConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    regmix: RegmixConfig | None = None
    #: train proxies on θ* and the baselines after selection
    evaluate: bool = True
    #: default run folder of ``search run``
    out: str | None = None

    def __post_init__(self) -> None:
        _check(self)

    @property
    def target_path(self) -> Path:
        return Path(self.target.replace("{dataset}", self.dataset))

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "recipe") -> SearchConfig:
        return build(cls, obj, where, SearchConfigError, _CONVERT)

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        from quadmix_stream.recipe import RecipeError, read_yaml

        try:
            obj = read_yaml(path)
        except RecipeError as e:
            raise SearchConfigError(str(e)) from None
        obj = dict(obj.get("search", obj))  # a recipe may nest everything under `search:`
        return cls.from_dict(obj, str(path))

    def replace(self, **changes: Any) -> SearchConfig:
        return dataclasses.replace(self, **changes)

    def proxy_identity(self) -> dict:
        """The settings that determine proxy results: changing any invalidates finished proxies."""
        d = self.to_dict()
        return {k: d[k] for k in ("target", "space", "form", "proposals", "tokenizer", "proxy")}


def _list(value: Any, where: str, n: int) -> list:
    if not isinstance(value, list | tuple) or len(value) != n:
        raise SearchConfigError(f"{where}: expected a list of {n} numbers, got {value!r}")
    return list(value)


def _ranges(value: Any, where: str) -> dict[str, tuple[float, float]]:
    if not isinstance(value, Mapping):
        raise SearchConfigError(f"{where}: expected a mapping like {{omega: [0, 1]}}")
    out = {}
    for k, v in value.items():
        if k not in DEFAULT_RANGES:
            raise SearchConfigError(f"{where}: unknown key {k!r}; expected {list(DEFAULT_RANGES)}")
        lo, hi = (_num(x, f"{where}.{k}") for x in _list(v, f"{where}.{k}", 2))
        if not 0 <= lo <= hi:
            raise SearchConfigError(f"{where}.{k}: need 0 ≤ low ≤ high, got [{lo}, {hi}]")
        out[k] = (lo, hi)
    return out


def _num(x: Any, where: str) -> float:
    return check_number(x, where, SearchConfigError)


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise SearchConfigError(f"{where}: expected a mapping")
    return dict(value)


#: fields that need more than a scalar check (see :func:`quadmix_stream.recipe.build`)
_CONVERT = {
    "ranges": _ranges,
    "betas": lambda v, where: tuple(_num(x, where) for x in _list(v, where, 2)),
    "lgbm": _mapping,
}


def _check(c: SearchConfig) -> None:
    if c.space not in SPACES:
        raise SearchConfigError(f"space: must be one of {SPACES}, got {c.space!r}")
    if c.form not in FORMS:
        raise SearchConfigError(f"form: must be one of {FORMS}, got {c.form!r}")
    p, x = c.proposals, c.proxy
    positive = {
        "proposals.n": p.n,
        "proposals.dirichlet": p.dirichlet,
        "proposals.scale": p.scale,
        "tokenizer.vocab_size": c.tokenizer.vocab_size,
        "proxy.seq_len": x.seq_len,
        "proxy.batch_size": x.batch_size,
        "proxy.tokens": x.tokens,
        "proxy.lr": x.lr,
        "proxy.group": x.group,
        "proxy.max_epochs": x.max_epochs,
        "proxy.eval_max_tokens": x.eval_max_tokens,
        "proxy.eval_batch_size": x.eval_batch_size,
        "proxy.model.hidden_size": x.model.hidden_size,
        "proxy.model.num_layers": x.model.num_layers,
        "proxy.model.num_heads": x.model.num_heads,
        "proxy.model.intermediate_size": x.model.intermediate_size,
        "select.n": c.select.n,
        "select.top_k": c.select.top_k,
        "regressor.kfold": c.regressor.kfold,
    }
    for k, v in positive.items():
        if not v > 0:
            raise SearchConfigError(f"{k}: must be > 0, got {v}")
    if x.micro_batch_size < 0 or x.batch_size % x.micro:
        raise SearchConfigError(
            f"proxy.micro_batch_size: {x.micro_batch_size} must divide batch_size {x.batch_size}"
        )
    if x.seq_len < 2:
        raise SearchConfigError("proxy.seq_len: must be at least 2")
    if x.model.hidden_size % x.model.num_heads:
        raise SearchConfigError(
            f"proxy.model: hidden_size {x.model.hidden_size} is not a multiple of "
            f"num_heads {x.model.num_heads}"
        )
    if x.model.attn_implementation not in ("eager", "sdpa"):
        raise SearchConfigError("proxy.model.attn_implementation: 'eager' or 'sdpa'")
    if not 0 <= x.warmup < 1 or not 0 <= x.min_lr_ratio <= 1:
        raise SearchConfigError("proxy.warmup must be in [0, 1) and proxy.min_lr_ratio in [0, 1]")
    if c.select.top_k > c.select.n:
        raise SearchConfigError(f"select.top_k ({c.select.top_k}) > select.n ({c.select.n})")
    if c.regressor.features not in ("theta", "profile", "theta+profile"):
        raise SearchConfigError(
            f"regressor.features: 'theta', 'profile' or 'theta+profile', got {c.regressor.features!r}"
        )
    if not 0 < c.regressor.valid_fraction < 1:
        raise SearchConfigError("regressor.valid_fraction: must be in (0, 1)")
    if not 0 < c.baselines.topk_fraction <= 1:
        raise SearchConfigError("baselines.topk_fraction: must be in (0, 1]")
    if c.tokenizer.path is None and c.tokenizer.vocab_size < 257:
        raise SearchConfigError(
            "tokenizer.vocab_size: at least 257 (a byte-level BPE has 256 bytes + end-of-text)"
        )
