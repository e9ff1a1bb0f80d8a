"""Search settings: a YAML recipe parsed into frozen dataclasses (unknown keys are errors).

A recipe is read with ``yaml.safe_load`` only (never evaluated). Paths are relative to the
current directory; ``{dataset}`` in ``target`` expands to the dataset path. Every section has
defaults; the proxy defaults are RegMix's 1M model (2 layers, 8 heads, hidden 256, MLP 512,
sequence 2048, AdamW lr 4e-4, weight decay 0.1, clip 1.0, 4% warm-up, batch 512), see
``recipes/search_gpu_paper_scale.yaml``.

Why one module of ~430 lines: it is one recipe's schema. Every section's dataclass, converter
and the cross-section checks (an objective naming a set the recipe does not evaluate, rounds
that need more candidates than they draw) are read together when a recipe is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quadmix_stream.errors import UserError
from quadmix_stream.executors import ExecutorConfig
from quadmix_stream.mixing.params import DEFAULT_RANGES
from quadmix_stream.mixing.sampling import FORMS
from quadmix_stream.recipe import build, check_number
from quadmix_stream.storage.locations import dataset_location, location_str
from quadmix_stream.training.model import PROXY_MODEL, ModelConfig, model_section
from quadmix_stream.training.schedule import warmup_cosine

SPACES = ("quadmix", "domain_mixture", "shares")


class SearchConfigError(UserError):
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
    """How proposals are drawn (Algorithm 1 ranges, Dirichlet shares; see search/space.py)."""

    n: int = 64
    seed: int = 1
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    #: domain_mixture and shares spaces: Dirichlet concentration of the domain shares
    dirichlet: float = 1.0
    #: domain_mixture and shares spaces: selected tokens per epoch as a multiple of the pool's
    scale: float = 1.0
    #: shares space: labelled documents per domain that turn shares into η
    share_sample: int = 2000
    #: shares space: a domain's share at most this multiple of its share of the pool
    max_share_ratio: float | None = None
    #: shares space: at most this many expected copies of any document over ``final_tokens``
    #: trained tokens (over one epoch of the proposal's stream when ``final_tokens`` is unset)
    max_copies: float | None = None
    #: shares space: the final run's token budget, for ``max_copies``
    final_tokens: float | None = None
    #: shares space: search the shares first (the first batch selects every document of a
    #: domain alike), then round 1 pairs the best shares with fresh quality parameters
    staged: bool = False


@dataclass(frozen=True)
class TokenizerConfig:
    """A tokenizer given by path (tokenizer.json or a folder holding one), or trained on the pool."""

    path: str | None = None
    vocab_size: int = 512
    max_docs: int = 5000
    eos_token: str | None = None


@dataclass(frozen=True)
class ProxyConfig:
    """One proxy training: model, token budget, optimiser, evaluation, placement."""

    #: the proxy LM (:mod:`quadmix_stream.training.model`); keys a recipe leaves out are RegMix's
    model: ModelConfig = field(default_factory=lambda: PROXY_MODEL)
    seq_len: int = 2048
    batch_size: int = 512
    #: split each batch into micro-batches of this size (gradient accumulation); 0 = no split
    micro_batch_size: int = 0
    tokens: int = 1_048_576_000  # 1000 steps × 512 × 2048 (RegMix's 1M proxies: 1B tokens)
    lr: float = 4e-4
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.04
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    init_seed: int = 0
    data_seed: int = 0
    #: False: every proposal reads its θ's stream with ``data_seed`` (common random numbers:
    #: nearby θ read mostly the same documents). True: proposal ``i`` gets its own seed drawn
    #: from (``data_seed``, i), so which documents one seed drew is noise between proposals that
    #: a smooth regressor averages away, instead of a smooth function of θ it fits as θ's effect
    #: (``search retest`` measures how much of a proxy's loss is its draw)
    seed_per_run: bool = False
    eval_max_tokens: int = 1_000_000
    #: 0: evaluate on the first ``eval_max_tokens`` tokens of each set in file order; N: at most
    #: N tokens from each document, documents in a seeded order (covers many more documents)
    eval_doc_tokens: int = 0
    eval_batch_size: int = 32
    #: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", …
    device: str = "auto"
    #: proxies trained at once in one process (torch.func.vmap over stacked weights); 1 = one by one
    group: int = 1
    #: give up on a θ whose selection is so small that the budget needs more epochs than this
    max_epochs: int = 1000
    #: torch intra-op threads (0: this process's share of the cores it may run on)
    threads: int = 0
    #: at most this many tokens of each drawn document (a window at a seeded offset, re-drawn
    #: every epoch); 0 = whole documents. On long documents a small budget then covers many
    #: documents instead of a handful (see the coverage section of the report)
    doc_tokens: int = 0
    #: proxies read only this fraction of the pool (documents chosen by hash of their key, the
    #: same for every proxy). A proxy's budget is a tiny fraction of the full training's; with
    #: ``pool_fraction`` ≈ proxy tokens / training tokens (per pool token) a proxy makes as many
    #: passes over a selection as the full training does, so a θ that must repeat its data at
    #: full scale also repeats it at proxy scale (the repetition regime of the paper's Table 1)
    pool_fraction: float = 1.0

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step``: warm-up over ``warmup_fraction`` of the steps, then
        cosine decay reaching ``min_lr_ratio · lr`` at the last step."""
        warm = int(round(self.warmup_fraction * self.steps))
        return warmup_cosine(
            step,
            warmup=warm,
            decay_steps=self.steps - warm - 1,
            min_ratio=self.min_lr_ratio,
            peak=self.lr,
        )


@dataclass(frozen=True)
class RegressorConfig:
    """θ → loss: LightGBM, ridge and a Gaussian process on θ and/or the selection profile, each
    scored by held-out split and k-fold (below ``kfold_below`` runs); the best by k-fold predicts."""

    valid_fraction: float = 0.2
    kfold: int = 5
    kfold_below: int = 500
    seed: int = 0
    #: extra LGBMRegressor arguments (override the small-data defaults of :mod:`.regressor`)
    lgbm: Mapping[str, Any] = field(default_factory=dict)
    #: ridge penalty of the linear baseline (features standardised)
    ridge_alpha: float = 1.0
    #: regressor inputs: "theta" (the paper), "profile", "theta+profile" (see search/features.py),
    #: or "auto": compare "theta" and "profile" and keep the better by k-fold Spearman
    features: str = "theta"
    #: "lgbm", "linear" (ridge), "gp" (Gaussian process) or "auto" (the best by k-fold Spearman)
    model: str = "lgbm"
    #: labelled documents per domain used to compute profile features of candidates
    profile_sample: int = 2000


@dataclass(frozen=True)
class SelectConfig:
    n: int = 100_000
    top_k: int = 10
    seed: int = 2
    #: best predicted candidates trained next to θ* (and the baselines) before params.json is
    #: written: the lowest *actual* proxy loss among all of them (and the proxy runs) is shipped
    verify: int = 4
    #: data seeds each contender (θ*, candidates, baselines, the best run of each round) is
    #: trained with; the shipped θ is the lowest *mean* objective. Seeds ``data_seed + s`` for
    #: s < seeds; with ``proxy.seed_per_run`` none of them is a proposal's seed
    seeds: int = 1


@dataclass(frozen=True)
class RoundsConfig:
    """CLIMB-style refinement after the first fit: ``k`` rounds of ``n`` new proxies each.

    Round r draws ``candidates`` points between an anchor (the ``top`` best actual runs and the
    ``top`` best predicted fresh proposals) and a fresh proposal, at most ``shrink**(r-1)`` of the
    way, predicts them with a regressor refit on every run so far, and trains the ``n`` best.
    """

    k: int = 0
    n: int = 16
    top: int = 4
    candidates: int = 20_000
    shrink: float = 0.5
    seed: int = 4


@dataclass(frozen=True)
class BaselineConfig:
    """Baselines (docs/design.md, "The search") written next to θ*."""

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
class DecideConfig:
    """The last step: the few best contenders trained again closer to the final run's scale,
    and the best there ships (see :mod:`quadmix_stream.search.decide`)."""

    #: the best proxy-verified contenders (by mean objective, within the constraints) trained
    #: here besides θ*, Random, RegMix and the best top-k baseline
    contenders: int = 3
    #: data seeds per contender (``proxy.data_seed + s``); a paired test needs at least 2
    seeds: int = 3
    #: the deciding runs' settings: keys left out are the search's ``proxy`` (its model's too),
    #: so ``{model: {hidden_size: 128}, tokens: 1228800}`` is a wider model on more tokens
    proxy: ProxyConfig = field(default_factory=ProxyConfig)


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
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    #: train the best contenders again at a higher fidelity and ship the best there (None: what
    #: the verification proxies measured best ships)
    decide: DecideConfig | None = None
    #: more evaluation sets of every proxy, name → JSONL path (``{dataset}`` expands)
    evals: Mapping[str, str] = field(default_factory=dict)
    #: what the search minimises: a weighted sum of eval-set losses ("target" is ``target``)
    objective: Mapping[str, float] = field(default_factory=lambda: {"target": 1.0})
    #: eval set → a bound on its proxy loss: a number, or a baseline's name ("random": no worse
    #: than Random on that set); a shipped θ must meet every bound that some contender meets,
    #: and rounds and θ* keep to θ predicted to meet them (a regressor per constrained set)
    constraints: Mapping[str, Any] = field(default_factory=dict)
    #: the search steers toward θ whose *predicted* loss on each constrained set is at least
    #: this far below the bound (the best of many predictions is optimistic); what ships is
    #: still decided by the measured losses
    constraint_margin: float = 0.0
    #: warn when proxies saw a median of fewer documents than this
    coverage_min_docs: int = 50
    #: train proxies on θ*, the best candidates and the baselines after selection, and ship the
    #: best measured (see ``select.verify``)
    evaluate: bool = True
    #: default run folder of ``search run``
    out: str | None = None
    #: where proxies train: this machine (``local``) or Ray tasks (``ray``); not part of a
    #: proxy's identity, so a run folder may change executor between steps
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        _check(self)

    def _expand(self, path: str) -> str | Path:
        # a remote dataset's URL stays a URL: its eval_sets/ are fetched by the run folder
        return dataset_location(path.replace("{dataset}", location_str(self.dataset)))

    @property
    def target_path(self) -> str | Path:
        """The target set: a local path, or a URL (e.g. a remote dataset's ``eval_sets/``)."""
        return self._expand(self.target)

    @property
    def eval_paths(self) -> dict[str, str | Path]:
        """Every evaluation set of the proxies: ``target`` first, then ``evals`` (paths or URLs)."""
        out = {"target": self.target_path}
        out.update({k: self._expand(v) for k, v in self.evals.items()})
        return out

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "recipe") -> SearchConfig:
        obj = _with_proxy_model(_with_decide_proxy(obj, where), where)
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
        """The settings that determine proxy results: changing any invalidates finished proxies.

        The target and evaluation sets count by name here; their content is compared by hash
        (:meth:`RunFolder.create`), so a run folder whose sets moved with it still resumes."""
        d = self.to_dict()
        keys = ("space", "form", "proposals", "tokenizer", "proxy")
        return {"evals": sorted(d["evals"] or {}), **{k: d[k] for k in keys}}


def _with_proxy_model(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``obj`` with its ``proxy.model`` section in :class:`ModelConfig`'s field names (the former
    ``num_layers`` / ``num_heads`` are read too) and RegMix's model for the keys it leaves out."""
    proxy = obj.get("proxy") if isinstance(obj, Mapping) else None
    if not isinstance(proxy, Mapping) or proxy.get("model") is None:
        return obj
    model = model_section(proxy["model"], f"{where}.proxy.model", SearchConfigError, PROXY_MODEL)
    return {**obj, "proxy": {**proxy, "model": model}}


def _with_decide_proxy(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """``obj`` with ``decide.proxy`` completed by the search's ``proxy``: the keys it leaves out,
    its model's included, are the screening proxies'."""
    decide = obj.get("decide") if isinstance(obj, Mapping) else None
    base, over = obj.get("proxy") or {}, (decide or {}).get("proxy") or {}
    if not (
        isinstance(decide, Mapping) and isinstance(base, Mapping) and isinstance(over, Mapping)
    ):
        return obj  # no decide step, or a section that is not a mapping: `build` says which
    merged = {**base, **over}
    model = model_section(base.get("model") or {}, f"{where}.proxy.model", SearchConfigError)
    model = {**dataclasses.asdict(PROXY_MODEL), **model}
    over_model = model_section(
        over.get("model") or {}, f"{where}.decide.proxy.model", SearchConfigError
    )
    merged["model"] = {**model, **over_model}
    return {**obj, "decide": {**decide, "proxy": merged}}


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


def _weights(value: Any, where: str) -> dict[str, float]:
    return {str(k): _num(v, f"{where}.{k}") for k, v in _mapping(value, where).items()}


def _paths(value: Any, where: str) -> dict[str, str]:
    out = {}
    for k, v in _mapping(value, where).items():
        if not isinstance(v, str):
            raise SearchConfigError(f"{where}.{k}: expected a path to a JSONL file, got {v!r}")
        out[str(k)] = v
    return out


def _bounds(value: Any, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _mapping(value, where).items():
        out[str(k)] = v if isinstance(v, str) else _num(v, f"{where}.{k}")
    return out


#: fields that need more than a scalar check (see :func:`quadmix_stream.recipe.build`)
_CONVERT = {
    "ranges": _ranges,
    "betas": lambda v, where: tuple(_num(x, where) for x in _list(v, where, 2)),
    "lgbm": _mapping,
    "evals": _paths,
    "objective": _weights,
    "constraints": _bounds,
}


def _positive(values: Mapping[str, float]) -> None:
    for k, v in values.items():
        if not v > 0:
            raise SearchConfigError(f"{k}: must be > 0, got {v}")


def _check_proxy(x: ProxyConfig, where: str) -> None:
    positive = {
        "seq_len": x.seq_len,
        "batch_size": x.batch_size,
        "tokens": x.tokens,
        "lr": x.lr,
        "group": x.group,
        "max_epochs": x.max_epochs,
        "eval_max_tokens": x.eval_max_tokens,
        "eval_batch_size": x.eval_batch_size,
        "model.hidden_size": x.model.hidden_size,
        "model.num_hidden_layers": x.model.num_hidden_layers,
        "model.num_attention_heads": x.model.num_attention_heads,
        "model.intermediate_size": x.model.intermediate_size,
    }
    _positive({f"{where}.{k}": v for k, v in positive.items()})
    if x.micro_batch_size < 0 or x.batch_size % x.micro:
        raise SearchConfigError(
            f"{where}.micro_batch_size: {x.micro_batch_size} must divide batch_size {x.batch_size}"
        )
    if x.seq_len < 2:
        raise SearchConfigError(f"{where}.seq_len: must be at least 2")
    if x.model.hidden_size % x.model.num_attention_heads:
        raise SearchConfigError(
            f"{where}.model: hidden_size {x.model.hidden_size} is not a multiple of "
            f"num_attention_heads {x.model.num_attention_heads}"
        )
    if x.model.attn_implementation not in (None, "eager", "sdpa"):
        raise SearchConfigError(f"{where}.model.attn_implementation: 'eager' or 'sdpa'")
    if not 0 <= x.warmup_fraction < 1 or not 0 <= x.min_lr_ratio <= 1:
        raise SearchConfigError(
            f"{where}.warmup_fraction must be in [0, 1) and {where}.min_lr_ratio in [0, 1]"
        )
    if min(x.doc_tokens, x.eval_doc_tokens) < 0:
        raise SearchConfigError(f"{where}.doc_tokens and {where}.eval_doc_tokens must be ≥ 0")
    if not 0 < x.pool_fraction <= 1:
        raise SearchConfigError(f"{where}.pool_fraction: must be in (0, 1], got {x.pool_fraction}")


def _check(c: SearchConfig) -> None:
    if c.space not in SPACES:
        raise SearchConfigError(f"space: must be one of {SPACES}, got {c.space!r}")
    if c.form not in FORMS:
        raise SearchConfigError(f"form: must be one of {FORMS}, got {c.form!r}")
    p = c.proposals
    positive = {
        "proposals.n": p.n,
        "proposals.dirichlet": p.dirichlet,
        "proposals.scale": p.scale,
        "proposals.share_sample": p.share_sample,
        "tokenizer.vocab_size": c.tokenizer.vocab_size,
        "select.n": c.select.n,
        "select.top_k": c.select.top_k,
        "select.seeds": c.select.seeds,
        "regressor.kfold": c.regressor.kfold,
    }
    _positive(positive)
    _check_proxy(c.proxy, "proxy")
    if c.decide is not None:
        _check_proxy(c.decide.proxy, "decide.proxy")
    caps = {"max_share_ratio": p.max_share_ratio, "max_copies": p.max_copies}
    for k, v in {**caps, "final_tokens": p.final_tokens}.items():
        if v is not None and not v > 0:
            raise SearchConfigError(f"proposals.{k}: must be > 0 (or left out), got {v}")
    if c.space != "shares" and any(v is not None for v in caps.values()):
        raise SearchConfigError(
            "proposals.max_share_ratio and proposals.max_copies: only the shares space has caps"
        )
    if c.space == "shares" and c.form != "multiplicative":
        raise SearchConfigError(
            "space: shares turns each domain's share into η, which needs form: multiplicative "
            f"(expected copies linear in η and ε), got form {c.form!r}"
        )
    if p.final_tokens is not None and p.max_copies is None:
        raise SearchConfigError("proposals.final_tokens: set it with proposals.max_copies")
    if p.max_share_ratio is not None and p.max_share_ratio < 1:
        raise SearchConfigError(
            f"proposals.max_share_ratio: {p.max_share_ratio} < 1 caps every domain below its "
            "share of the pool, so the shares could not sum to 1; use a value ≥ 1"
        )
    if p.staged and (c.space != "shares" or c.rounds.k < 1):
        raise SearchConfigError(
            "proposals.staged: a staged search needs space: shares (its first stage searches the "
            "domain shares) and rounds.k ≥ 1 (round 1 is its second stage, the quality)"
        )
    if c.decide is not None and (c.decide.contenders < 0 or c.decide.seeds < 1):
        raise SearchConfigError("decide: need contenders ≥ 0 and seeds ≥ 1")
    if c.select.top_k > c.select.n:
        raise SearchConfigError(f"select.top_k ({c.select.top_k}) > select.n ({c.select.n})")
    if c.regressor.features not in ("theta", "profile", "theta+profile", "auto"):
        raise SearchConfigError(
            "regressor.features: 'theta', 'profile', 'theta+profile' or 'auto', got "
            f"{c.regressor.features!r}"
        )
    if c.regressor.model not in ("lgbm", "linear", "gp", "auto"):
        raise SearchConfigError(
            f"regressor.model: 'lgbm', 'linear', 'gp' or 'auto', got {c.regressor.model!r}"
        )
    sets = {"target", *c.evals}
    if "target" in c.evals:
        raise SearchConfigError("evals: 'target' is the search's target set; use another name")
    if (
        not c.objective
        or any(w < 0 for w in c.objective.values())
        or not any(w > 0 for w in c.objective.values())
    ):
        raise SearchConfigError(f"objective: non-negative weights, one > 0; got {c.objective}")
    for what, names in (("objective", c.objective), ("constraints", c.constraints)):
        unknown = sorted(set(names) - sets)
        if unknown:
            raise SearchConfigError(
                f"{what}: unknown evaluation set(s) {unknown}; known: {sorted(sets)} "
                "(add them under `evals:`)"
            )
    r = c.rounds
    if r.k < 0 or r.n < 1 or r.top < 1 or r.candidates < r.n or not 0 < r.shrink <= 1:
        raise SearchConfigError(
            "rounds: need k ≥ 0, n ≥ 1, top ≥ 1, candidates ≥ n and 0 < shrink ≤ 1"
        )
    if min(c.select.verify, c.coverage_min_docs) < 0 or c.constraint_margin < 0:
        raise SearchConfigError(
            "select.verify, coverage_min_docs and constraint_margin must be ≥ 0"
        )
    if not 0 < c.regressor.valid_fraction < 1:
        raise SearchConfigError("regressor.valid_fraction: must be in (0, 1)")
    if not 0 < c.baselines.topk_fraction <= 1:
        raise SearchConfigError("baselines.topk_fraction: must be in (0, 1]")
    if c.tokenizer.path is None and c.tokenizer.vocab_size < 257:
        raise SearchConfigError(
            "tokenizer.vocab_size: at least 257 (a byte-level BPE has 256 bytes + end-of-text)"
        )
