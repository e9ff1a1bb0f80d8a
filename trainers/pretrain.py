"""Pretraining on the QuaDMix stream, with exact checkpoint/resume. Launch with torchrun:

    torchrun --nproc_per_node N -m quadmix_stream.trainers.pretrain RECIPE.yaml [--out DIR]
    python -m quadmix_stream.trainers.pretrain RECIPE.yaml          # one process

The causal LM of :mod:`quadmix_stream.training.model` (no download), DDP (gloo on CPU, NCCL on GPU),
AdamW with :mod:`quadmix_stream.training.schedule`'s warm-up + cosine, gradient accumulation, bf16
autocast on CUDA, periodic evaluation on a target set (:mod:`quadmix_stream.training.evaluation`), logging of loss, tokens/s and realised vs expected per-domain tokens
(``OUT/log.jsonl``; TensorBoard and Weights & Biases through the recipe's ``logging:`` section,
see :mod:`quadmix_stream.trainers.runlog`), and a progress line every few seconds on rank 0.

The dataset (``data.dataset``) is a folder or a URL (``s3://bucket/ds``, read through
:mod:`quadmix_stream.storage.store` with a node-local cache bounded by ``data.cache_limit``); the log's
``start`` event names it by location and manifest fingerprint. ``train.eval_set`` may be a URL too.

Guards: the output folder must be writable (checked before any work), one trainer per folder
(``OUT/.lock``), ranks exit when their torchrun agent dies, and a failed checkpoint write (disk
full) stops every rank with the file's name, keeping the previous checkpoint.

Resume: run the same command again; the latest checkpoint in ``OUT/checkpoints`` is restored
(model, optimiser, scheduler, step, loader). Same world size and params → every rank restores
its own loader state and the run continues item for item. Another world size, or
``--params NEW.json`` → the global loader state is re-dealt (nothing consumed is repeated,
nothing is lost) and the log records the switch and its step. The params in force are part of
every checkpoint: after a switch, the plain command resumes under the switched params (the
recipe's ``data.params`` only starts a run). ``--steps N`` on a resume keeps the LR schedule the
run was planned with (its floor after the planned steps); ``--replan-lr`` stretches the cosine to
N. Log records past the checkpoint's step (the killed invocation's last steps, trained again)
are cut from ``log.jsonl``.

The module holds the recipe's sections, the set-up, one step and the loop (a little over 400
lines) so that :func:`train` reads in one sitting next to the parts it calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import logging
import math
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from quadmix_stream.errors import UserError
from quadmix_stream.logs import show
from quadmix_stream.progress import Progress
from quadmix_stream.recipe import RecipeError, build, read_yaml, short_repr
from quadmix_stream.storage.store import StorageConfig, is_remote
from quadmix_stream.stream.metrics import MixtureMeter
from quadmix_stream.stream.window import is_window
from quadmix_stream.trainers.args import add_run_arguments
from quadmix_stream.trainers.run_folder import checkpoints, claim_out, save_checkpoint
from quadmix_stream.trainers.runlog import LoggingConfig, RunLogger, truncate_log
from quadmix_stream.training.evaluation import (
    autocast,
    domain_loss_pairs,
    full_blocks,
    hf_batch_loss,
    mean_loss,
    token_nll,
)
from quadmix_stream.training.launch import cpu_threads
from quadmix_stream.training.model import ModelConfig, build_causal_lm
from quadmix_stream.training.runguard import exit_with_parent, under_torchrun
from quadmix_stream.training.schedule import warmup_cosine

log = logging.getLogger("quadmix_stream.trainers.pretrain")  # also when run as __main__

__all__ = ["DataConfig", "ModelConfig", "PretrainConfig", "TrainConfig", "load_config", "train"]


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class DataConfig:
    dataset: str = ""
    params: str = ""
    seed: int = 0
    tokenizer: str | None = None  # tokenizer.json / folder; None: train a BPE on the pool
    vocab_size: int = 512  # when training the tokenizer
    seq_len: int = 64
    workers: int = 1
    # "auto": 256 shards per window, fewer from object storage when that many would not fit
    # cache_limit (quadmix_stream.stream.window); or a number of shards, or null (a rank's whole share)
    shuffle_block_shards: int | str | None = "auto"
    track_docs: bool = False  # log the (epoch, row, copy) of documents started in each step
    # a remote dataset (s3://…): bytes its node-local cache may hold, e.g. "64gb" (None: no limit)
    cache_limit: str | None = None
    # {step: params file}: those params are in force from that step on (an anneal, say), on
    # every rank and worker at the same point, switched in the running job; a key may be a
    # token count instead ("1.2M tokens": after the first step that ends at or past it)
    params_schedule: dict[int | str, str] | None = None
    # a controller that adapts the params as training goes, from per-domain training losses:
    # {name: odm, every: 20, …} (quadmix_stream.control); not together with params_schedule
    controller: dict[str, Any] | None = None
    # at a switch of params mid-epoch (a schedule, a controller, --params on resume), count the
    # copies a document already had in the epoch against the new params' counts: none gets
    # more than the params in force allow (off: up to its old count that epoch)
    count_consumed_copies: bool = False
    # check each document read against the text checksum its sidecar recorded at labelling
    # (a shard changed in place stops the run naming shard and row; about 1 µs per document)
    verify_documents: bool = True
    # also hash each whole shard file on its first use in each process (one more full read)
    verify_shards: bool = False

    def __post_init__(self) -> None:
        sched = self.params_schedule
        if sched is not None and (
            not isinstance(sched, dict)
            or not all(
                _schedule_key(k) is not None and isinstance(v, str) for k, v in sched.items()
            )
        ):
            raise UserError(
                "params_schedule: a mapping {step ≥ 1 or 'N tokens': params file}, got "
                f"{short_repr(sched)}"
            )
        if self.controller is not None and sched:
            raise UserError(
                "controller: a run has one controller; params_schedule is one already (drop "
                "one of data.controller and data.params_schedule)"
            )


_TOKENS = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKMB]?)\s*tokens\s*")


def _schedule_key(key: Any) -> tuple[str, float] | None:
    """A schedule key as ``("step", n)`` or ``("tokens", n)``; ``None`` if it is neither."""
    if isinstance(key, int) and not isinstance(key, bool):
        return ("step", key) if key >= 1 else None
    m = _TOKENS.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        return None
    n = float(m.group(1)) * 1000 ** " kMB".index(m.group(2).replace("K", "k") or " ")
    return ("tokens", n) if n > 0 else None


def schedule_steps(cfg: PretrainConfig) -> dict[int, tuple[str, str]]:
    """``data.params_schedule`` keyed by step: ``{step: (the recipe's key, params file)}``.

    A ``"N tokens"`` key switches once the first step that ends at or past N tokens is done
    (every step trains ``train.batch_size × data.seq_len`` tokens).
    """
    per_step = cfg.train.batch_size * cfg.data.seq_len
    out: dict[int, tuple[str, str]] = {}
    for key, path in (cfg.data.params_schedule or {}).items():
        kind, n = _schedule_key(key)  # type: ignore[misc]  # checked in DataConfig
        step = int(n) if kind == "step" else max(1, math.ceil(n / per_step))
        if step in out:
            raise UserError(
                f"data.params_schedule: {key!r} and {out[step][0]!r} both switch after step "
                f"{step} ({per_step:,} tokens per step)"
            )
        out[step] = (str(key), path)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    # sequences per optimiser step over all ranks; it stays the same when a resume brings another
    # number of ranks (gradient accumulation makes up the difference)
    batch_size: int = 8
    # sequences per forward pass on each rank (0: batch_size / ranks, no accumulation)
    micro_batch_size: int = 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_set: str | None = None  # JSONL with a "text" field; logged as eval_loss
    eval_sets: dict[str, str] | None = None  # more named JSONL sets, logged as eval_losses[name]
    eval_every: int = 50
    eval_max_blocks: int = 64
    # 0: the first eval_max_blocks blocks of each set in file order (on long documents, a few of
    # them); N: at most N tokens of every document (seeded order), spread over the whole set
    eval_doc_tokens: int = 0
    checkpoint_every: int = 50
    keep_last: int = 2
    threads: int | None = None  # torch threads per rank (None: its share of the node's cores)

    def __post_init__(self) -> None:
        sets = self.eval_sets
        if sets is not None and (
            not isinstance(sets, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in sets.items())
        ):
            raise UserError(f"eval_sets: a mapping {{name: JSONL path}}, got {sets!r}")


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    out: str = "runs/pretrain"


def overrides(params: str | None, steps: int | None) -> dict[str, Any]:
    """The command line's ``--params`` and ``--steps`` as recipe overrides."""
    over: dict[str, Any] = {}
    if params:
        over["data.params"] = params
    if steps is not None:
        over["train.steps"] = steps
    return over


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    raw = read_yaml(path)
    where = str(path)
    if "pretrain" in raw:  # a whole-flow recipe keeps this under `pretrain:`
        raw, where = raw["pretrain"], f"{path}: pretrain"
    for key, value in (overrides or {}).items():  # "train.steps" → raw["train"]["steps"]
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return build(PretrainConfig, raw, where, convert={"shuffle_block_shards": _window_spec})


def _window_spec(value: Any, where: str) -> int | str | None:
    if not is_window(value):
        raise RecipeError(
            f"{where}: expected a number of shards ≥ 1, 'auto' or null, got {value!r}"
        )
    return value if value is None or value == "auto" else int(value)


# ---------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:

    ap = argparse.ArgumentParser(
        prog="python -m quadmix_stream.trainers.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(ap)
    a = ap.parse_args(argv)
    show(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    try:
        cfg = load_config(a.recipe, overrides(a.params, a.steps))
        out = Path(a.out or cfg.out)
        return train(
            cfg, out, resume=not a.no_resume, params_changed=bool(a.params), replan_lr=a.replan_lr
        )
    except UserError as e:  # the user's to fix: one line, once (every rank meets the same error)
        if os.environ.get("RANK", "0") == "0":
            print(f"pretrain: error: {e}", file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 2


# ---------------------------------------------------------------- setting up
def check_inputs(cfg: PretrainConfig) -> tuple[Any, dict[int, Any]]:
    """The params files, the dataset's manifest and the evaluation sets, read and checked: a
    mistake in them is a :class:`UserError` before anything slow starts.

    Returns the params of ``data.params`` and the schedule, ``{step: params}``.
    """
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.storage.store import as_store

    manifest = Manifest.load(as_store(cfg.data.dataset))
    loaded = {}
    for step, (key, path) in {0: ("", cfg.data.params), **schedule_steps(cfg)}.items():
        where = "data.params" if step == 0 else f"data.params_schedule.{key}"
        try:
            loaded[step] = SamplingParams.load(path)
            loaded[step].check_names(manifest.domains, manifest.scorer_names)
        except UserError as e:
            raise type(e)(f"{where}: {e}") from None
    sets = dict(cfg.train.eval_sets or {})
    if cfg.train.eval_set:
        sets["eval"] = cfg.train.eval_set
    for name, path in sets.items():
        if not is_remote(str(path)) and not Path(path).is_file():
            raise UserError(f"train.eval_sets.{name}: {path}: no such file")
    if cfg.data.controller is not None:
        from quadmix_stream.control import controller_config

        controller_config(cfg.data.controller, "data.controller")
        if loaded[0].form != "multiplicative":
            raise UserError(
                f"data.controller: adapts the multiplicative form of Eq. 3 only; {cfg.data.params} "
                f"has form {loaded[0].form!r}"
            )
    params = loaded.pop(0)
    return params, dict(sorted(loaded.items()))


def scheduled(params, schedule: dict[int, Any], step: int):
    """The params the recipe puts in force at ``step``: the last schedule entry at or before it."""
    return next((schedule[s] for s in sorted(schedule, reverse=True) if s <= step), params)


def micro_batches(tc: TrainConfig, world: int) -> tuple[int, int]:
    """(sequences per forward pass on a rank, forward passes per step) for ``world`` ranks."""
    micro = tc.micro_batch_size or tc.batch_size // world
    accum, left = divmod(tc.batch_size, max(1, micro) * world)
    if micro < 1 or left or accum < 1:
        raise UserError(
            f"train.batch_size {tc.batch_size} must be a multiple of micro_batch_size "
            f"{tc.micro_batch_size or 'batch_size / ranks'} × {world} rank(s); set "
            "train.micro_batch_size to a divisor of batch_size / ranks"
        )
    return micro, accum


def lr_multiplier(step: int, tc: TrainConfig, planned_steps: int | None = None) -> float:
    """The schedule as a multiple of ``train.lr``: ``warmup_steps``, then a cosine reaching its
    floor at ``planned_steps`` (default ``train.steps``) and holding it after."""
    steps = tc.steps if planned_steps is None else planned_steps
    return warmup_cosine(
        step, warmup=tc.warmup_steps, decay_steps=steps - tc.warmup_steps, min_ratio=tc.min_lr_ratio
    )


def init_distributed(cfg: PretrainConfig) -> tuple[int, int, torch.device]:
    """World size, rank and device; the process group under torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if under_torchrun():  # killing only the agent must stop the ranks
        exit_with_parent()
    # under torchrun even one rank gets a process group (the GPU smoke check runs NCCL this way)
    if world > 1 or under_torchrun():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(cpu_threads(cfg.train.threads))  # this rank's share of the cores
    return world, rank, device


def load_tokenizer(d: DataConfig, out: Path, rank: int, storage: StorageConfig):
    """The recipe's tokenizer, or a BPE trained on the pool once (rank 0) and shared via ``out``."""
    from quadmix_stream.stream.pool import pool_texts
    from quadmix_stream.training.tokenizer import TextTokenizer, train_tokenizer

    tok_path = Path(d.tokenizer) if d.tokenizer else out / "tokenizer.json"
    if not d.tokenizer and rank == 0 and not tok_path.exists():
        texts = pool_texts(d.dataset, 5000, storage=storage, verify_documents=d.verify_documents)
        train_tokenizer(texts, d.vocab_size, tok_path)
    if dist.is_initialized():
        dist.barrier()
    return TextTokenizer(tok_path)


def build_training(cfg: PretrainConfig, vocab_size: int, device: torch.device, lr_steps: int):
    """Model (same initialisation on every rank and run), its DDP wrapper, AdamW, and the
    schedule planned over ``lr_steps``."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_causal_lm(cfg.model, vocab_size, cfg.data.seq_len).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95)
    )
    # a lambda, not a partial: LambdaLR would put a callable object's fields in the checkpoint
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, tc, lr_steps))
    return model, ddp, opt, sched


def loader_options(d: DataConfig) -> dict[str, Any]:
    return {"prefetch_factor": 2} if d.workers else {}


def open_loader(
    cfg: PretrainConfig, packed, ckpt_loader: dict | None, micro: int
) -> tuple[Any, bool | None]:
    """A stateful loader over ``packed``: fresh, or restored from a checkpoint's loader state.

    Returns the loader and, after a restore, whether it continues item for item (``exact``).
    """
    from quadmix_stream.loaders.stateful import make_loader, restore_loader

    d = cfg.data
    kw = loader_options(d)
    if ckpt_loader is None:
        return make_loader(packed, micro, d.workers, **kw), None
    return restore_loader(ckpt_loader, packed, micro, d.workers, **kw)


def params_in_force(
    cfg: PretrainConfig, params, schedule: dict[int, Any], ck: dict | None, switching: bool
):
    """The params this invocation starts under, and a line saying which and why.

    A fresh run starts under ``data.params`` (``--params`` overrides it). A resume keeps the
    params in force at its checkpoint (its loader state holds them): after a ``--params``
    switch, the plain command goes on under the switched params. ``--params`` on a resume
    switches (again); a schedule entry at the checkpoint's step switches there, as the
    uninterrupted run did right after writing that checkpoint.
    """
    from quadmix_stream.loaders.stateful import loader_params

    paths = {0: cfg.data.params, **{s: p for s, (_, p) in schedule_steps(cfg).items()}}
    by_step = {0: params, **schedule}

    def named(p, path: str) -> str:
        return f"{path} ({p.fingerprint()[:12]})"

    if ck is None:
        return params, named(params, paths[0])
    step = int(ck["step"])
    saved = loader_params(ck["loader"])
    if switching:
        return params, f"{named(params, paths[0])}, switching from {saved.fingerprint()[:12]}"
    if cfg.data.controller is not None:
        return saved, f"{saved.fingerprint()[:12]}, as data.controller left them at step {step}"
    if step in schedule:
        return schedule[step], f"{named(schedule[step], paths[step])}, scheduled from step {step}"
    due = max(s for s in by_step if s <= step)
    if saved.fingerprint() == by_step[due].fingerprint():
        return saved, f"{named(saved, paths[due])}, as at step {step}"
    return saved, (
        f"{saved.fingerprint()[:12]}, kept from the checkpoint at step {step} (the recipe has "
        f"{named(by_step[due], paths[due])} there: this run switched away from it; pass "
        "--params FILE to switch again)"
    )


def planned_lr_steps(tc: TrainConfig, ck: dict | None, replan: bool) -> tuple[int, str | None]:
    """The number of steps the LR schedule is planned over, and a line when that is news.

    A resume keeps the plan saved in its checkpoint, so ``--steps`` extending a run does not
    lift the LR from its floor back up the cosine; ``--replan-lr`` stretches the cosine instead.
    """
    planned = tc.steps if ck is None else int(ck.get("lr_steps", tc.steps))
    if planned == tc.steps:
        return planned, None
    if replan:
        return tc.steps, f"LR schedule re-planned over {tc.steps} steps (was {planned})"
    return planned, (
        f"train.steps is {tc.steps}; the LR schedule keeps its plan of {planned} steps "
        f"(held at {tc.min_lr_ratio:g}·lr after them); pass --replan-lr to stretch it to {tc.steps}"
    )


def make_controller(d: DataConfig, ds, schedule: dict[int, Any], ck: dict | None, switching: bool):
    """The run's controller, restored from the checkpoint, and the params it has pending.

    ``data.params_schedule`` is a :class:`~quadmix_stream.control.ScheduleController`;
    ``data.controller`` names another. A controller adapts the params in force when it starts
    (its state keeps them: a plain resume goes on adapting the same base); ``--params`` on a
    resume starts it afresh from the new params. Returns ``(controller or None, pending params
    or None, a line for the console or None)``.
    """
    from quadmix_stream.control import ScheduleController, build_controller
    from quadmix_stream.mixing.params import SamplingParams

    if d.controller is None:
        return (ScheduleController(schedule) if schedule else None), None, None
    saved = None if ck is None or switching else ck.get("control")
    if saved is None:
        tokens = [v["tokens"] for v in ds.expected_mixture().values()]
        ctl = build_controller(d.controller, ds.params, tokens, "data.controller")
        return ctl, None, f"controller {ctl.name}: adapting {ds.params.fingerprint()[:12]}"
    state = saved["state"]
    base = SamplingParams.from_dict(state["base"])
    ctl = build_controller(d.controller, base, state["base_tokens"], "data.controller")
    ctl.load_state_dict(state)
    pending = saved.get("pending")
    return (
        ctl,
        None if pending is None else SamplingParams.from_dict(pending),
        f"controller {ctl.name}: adapting {base.fingerprint()[:12]}, restored from step {ck['step']}",
    )


def resume_record(ckpt: Path, step: int, exact: bool, ckpt_loader: dict, world: int, params):
    """The log's ``resume`` event; another topology or new params: the switch is recorded."""
    rec = {"event": "resume", "checkpoint": ckpt.name, "step": step, "exact": exact}
    if not exact:
        rec["switch"] = {
            "from_world": ckpt_loader["world"],
            "to_world": world,
            "from_params": ckpt_loader["params_fingerprint"],
            "to_params": params.fingerprint(),
        }
    return rec


def resume_line(rec: dict) -> str:
    """What a resume did, in words, for the console (``rec``: :func:`resume_record`)."""
    head = f"resumed from {rec['checkpoint']} at step {rec['step']}: "
    if rec["exact"]:
        return head + "the loader continues item for item"
    sw = rec["switch"]
    why = []
    if sw["from_world"] != sw["to_world"]:
        why.append(f"{sw['from_world']} → {sw['to_world']} ranks")
    if sw["from_params"] != sw["to_params"]:
        why.append(f"params {sw['from_params'][:12]} → {sw['to_params'][:12]}")
    return head + "the rest of the epoch is re-dealt (" + ", ".join(why or ["new workers"]) + ")"


def eval_sets(
    tc: TrainConfig, tok, seq_len: int
) -> tuple[dict[str | None, torch.Tensor], dict[str, dict]]:
    """Blocks of every evaluation set (``None`` is ``eval_set``, logged as ``eval_loss``) and
    how much of each set they hold (by name; ``eval_set`` as ``target``)."""
    named: dict[str | None, str] = {None: tc.eval_set} if tc.eval_set else {}
    named.update({str(k): str(v) for k, v in dict(tc.eval_sets or {}).items()})
    blocks, coverage = {}, {}
    for k, v in named.items():
        blocks[k], coverage["target" if k is None else k] = full_blocks(
            v, tok, seq_len, tc.eval_max_blocks, tc.eval_doc_tokens
        )
    return blocks, coverage


def evaluate(model: torch.nn.Module, blocks: torch.Tensor, device: torch.device, batch: int):
    """Mean loss of ``model`` over ``blocks`` (the model's own loss, per block, averaged)."""
    model.eval()
    loss = float(mean_loss(hf_batch_loss(model, device), blocks, None, device, batch))
    model.train()
    return loss


# ---------------------------------------------------------------- one step
@dataclass
class StepResult:
    """What one optimiser step consumed and its loss, summed over ranks after :func:`gather`."""

    loss: torch.Tensor
    domain_tokens: torch.Tensor
    domain_loss: torch.Tensor  # [M, 2] float64: (loss sum, predicted tokens) per domain
    digest: str
    docs: list[int]


def train_step(
    ddp, model, opt, sched, it, cfg: PretrainConfig, world: int, accum: int, device
) -> StepResult:
    """``accum`` micro-batches (DDP syncs on the last), clipping, one AdamW step."""
    tc = cfg.train
    loss_sum = torch.zeros(1, device=device)
    dom: torch.Tensor | None = None
    dom_loss: torch.Tensor | None = None
    h = hashlib.sha256()
    docs: list[int] = []
    for i in range(accum):
        batch = next(it)
        x = batch["input_ids"].to(device)
        h.update(batch["input_ids"].numpy().tobytes())
        dt = batch["domain_tokens"].sum(0)
        dom = dt if dom is None else dom + dt
        if cfg.data.track_docs:
            docs += [v for v in batch["doc_ids"].flatten().tolist() if v >= 0]
        sync = nullcontext() if (world == 1 or i == accum - 1) else ddp.no_sync()
        with sync, autocast(device):
            # the causal LM loss from per-token losses, which also give each domain's loss
            nll = token_nll(ddp(input_ids=x).logits, x)
            loss = nll.mean() / accum
            loss.backward()
        loss_sum += loss.detach()
        pairs = domain_loss_pairs(nll.detach(), batch["token_domains"].to(device), dt.numel())
        dom_loss = pairs if dom_loss is None else dom_loss + pairs
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    assert dom is not None and dom_loss is not None
    return StepResult(loss_sum, dom, dom_loss.cpu(), h.hexdigest(), docs)


def gather(r: StepResult, world: int) -> StepResult:
    """Mean loss, summed domain tokens, one digest and every rank's documents (all ranks)."""
    if world == 1:
        return r
    dist.all_reduce(r.loss)
    r.loss /= world
    dist.all_reduce(r.domain_tokens)
    dist.all_reduce(r.domain_loss)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (r.digest, r.docs))
    digest = hashlib.sha256("".join(g[0] for g in gathered).encode()).hexdigest()
    docs = [x for g in gathered for x in g[1]]
    return StepResult(r.loss, r.domain_tokens, r.domain_loss, digest, docs)


def step_record(step: int, r: StepResult, lr: float, tokens_per_s: float, mix: dict, docs: bool):
    """The log line of a step (rank 0): loss (also per domain), lr, throughput, realised vs
    expected mixture."""
    sums, counts = r.domain_loss[:, 0].tolist(), r.domain_loss[:, 1].tolist()
    rec = {
        "step": step,
        "loss": round(float(r.loss), 6),
        "domain_loss": {
            k: round(s / c, 6) for k, s, c in zip(mix, sums, counts, strict=True) if c > 0
        },
        "domain_tokens": {
            k: int(n) for k, n in zip(mix, r.domain_tokens.tolist(), strict=True) if n > 0
        },
        "lr": lr,
        "tokens_per_s": round(tokens_per_s, 1),
        "batch_sha": r.digest[:16],
        "realised_share": {k: round(v["share"], 4) for k, v in mix.items()},
        "expected_share": {k: round(v.get("expected_share", 0.0), 4) for k, v in mix.items()},
    }
    if docs:
        rec["docs"] = r.docs
    return rec


def step_scalars(rec: dict, domains: list[str]) -> dict[str, float]:
    """A step record's scalars for TensorBoard / W&B."""
    scalars = {k: rec[k] for k in ("loss", "lr", "tokens_per_s", "eval_loss") if k in rec}
    scalars.update({f"eval_loss/{k}": v for k, v in rec.get("eval_losses", {}).items()})
    scalars.update({f"train_loss/{k}": v for k, v in rec["domain_loss"].items()})
    for k in domains:
        scalars[f"mixture/realised/{k}"] = rec["realised_share"][k]
        scalars[f"mixture/expected/{k}"] = rec["expected_share"][k]
    return scalars


# ---------------------------------------------------------------- the loop
def train(
    cfg: PretrainConfig,
    out: Path,
    resume: bool = True,
    params_changed: bool = False,
    replan_lr: bool = False,
) -> int:
    from quadmix_stream.control import DomainSignals
    from quadmix_stream.loaders.stateful import switch_params
    from quadmix_stream.stream.dataset import QuaDMixDataset
    from quadmix_stream.stream.packing import PackedDataset

    d, tc = cfg.data, cfg.train
    # seconds, before the process group, tokenizer and model
    recipe_params, schedule = check_inputs(cfg)
    world, rank, device = init_distributed(cfg)
    micro, accum = micro_batches(tc, world)
    lock = claim_out(out, rank)  # before any work: writable, and no other trainer in it
    say = log.info if rank == 0 else log.debug
    ckpts = checkpoints(out) if resume else []
    ck = torch.load(ckpts[-1], map_location="cpu", weights_only=True) if ckpts else None
    params, params_note = params_in_force(cfg, recipe_params, schedule, ck, params_changed)
    lr_steps, lr_note = planned_lr_steps(tc, ck, replan_lr)
    say("[pretrain] %d rank(s) on %s; dataset %s", world, device, d.dataset)
    say("[pretrain] params in force: %s", params_note)
    for s, (key, path) in schedule_steps(cfg).items():
        say(
            "[pretrain] params schedule: %s after step %d%s", path, s, f" ({key})" * (key != str(s))
        )
    if lr_note:
        say("[pretrain] %s", lr_note)
    # a local folder or an object-storage URL (s3://…): never wrapped in Path, which would
    # turn the URL into a relative folder name
    storage = StorageConfig(cache_limit=d.cache_limit)
    say(
        "[pretrain] tokenizer: %s",
        d.tokenizer
        or f"a {d.vocab_size}-token BPE of the pool (trained once, kept in the run folder)",
    )
    tok = load_tokenizer(d, out, rank, storage)
    model, ddp, opt, sched = build_training(cfg, tok.vocab_size, device, lr_steps)
    say("[pretrain] model: %s parameters", f"{sum(p.numel() for p in model.parameters()):,}")

    ds = QuaDMixDataset(
        d.dataset,
        params,
        seed=d.seed,
        infinite=True,
        shuffle_block_shards=d.shuffle_block_shards,
        # the ranks on this node and their workers share its cache ("auto" window)
        consumers_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * max(1, d.workers),
        resume_with_new_params=True,  # params_in_force chose them; a state under others is re-dealt
        count_consumed_copies=d.count_consumed_copies,
        storage=storage,
        verify_documents=d.verify_documents,
        verify_shards=d.verify_shards,
    )
    if ds.window_note and rank == 0:
        log.info("[pretrain] %s", ds.window_note)
    controller, pending, ctl_note = make_controller(d, ds, schedule, ck, params_changed)
    if ctl_note:
        say("[pretrain] %s", ctl_note)
    packed = PackedDataset(ds, tok, d.seq_len, track_docs=d.track_docs)

    step, ckpt_loader = 0, None
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, ckpt_loader = int(ck["step"]), ck["loader"]
    logger = RunLogger(out, cfg.logging, dataclasses.asdict(cfg), enabled=rank == 0)
    if rank == 0:  # steps after the checkpoint are trained again: drop their first try
        truncate_log(out / "log.jsonl", step)
    loader, exact = open_loader(cfg, packed, ckpt_loader, micro)
    if ckpt_loader is not None and rank == 0:
        rec = resume_record(ckpts[-1], step, bool(exact), ckpt_loader, world, params)
        logger.write(rec)
        say("[pretrain] %s", resume_line(rec))
    say("[pretrain] reading the evaluation sets")

    evals, coverage = eval_sets(tc, tok, d.seq_len)
    domains = ds.manifest.domains
    meter = MixtureMeter(domains, ds.expected_mixture())  # realised vs expected token shares
    if rank == 0:
        logger.write(
            {
                "event": "start",
                "step": step,
                "world": world,
                "params": params.provenance,
                # a remote dataset is named by its URL; the fingerprint says which labels
                "dataset": {"location": ds.root, "fingerprint": ds.fingerprint},
                "window_shards": ds.block_shards,  # shuffle_block_shards as resolved
                "model_parameters": sum(p.numel() for p in model.parameters()),
                "device": str(device),
                "eval_coverage": coverage,  # documents and tokens each eval loss is over
            },
        )
    if step >= tc.steps and rank == 0:  # e.g. resumed a finished run: say so, don't exit silently
        log.info(
            "nothing to train: %s is at step %d and train.steps is %d; pass --steps N (N > %d) "
            "to train further",
            out,
            step,
            tc.steps,
            step,
        )

    it = iter(loader)
    t0, tokens_since = time.perf_counter(), 0
    progress = Progress(
        "pretrain", tc.steps, initial=step, enabled=rank == 0, every_s=cfg.logging.progress_every
    )
    while step < tc.steps:
        if pending is not None and pending.fingerprint() != ds.params.fingerprint():
            # every rank at the same step, no restart; a resume from the checkpoint of the step
            # before has the same pending params and switches at the same point
            del it
            loader = switch_params(loader, packed, pending, micro, d.workers, **loader_options(d))
            it = iter(loader)
            meter = MixtureMeter(domains, ds.expected_mixture())
            why = (
                f"data.params_schedule: {schedule_steps(cfg)[step][1]}"
                if d.params_schedule
                else f"controller {controller.name}"
            )
            if rank == 0:
                logger.write(
                    {
                        "event": "switch",
                        "step": step,
                        "params": pending.fingerprint(),
                        "by": controller.name,
                        **controller.describe(),
                    }
                )
            say(
                "[pretrain] step %d: params %s in force (%s)", step, pending.fingerprint()[:12], why
            )
        pending = None
        r = gather(train_step(ddp, model, opt, sched, it, cfg, world, accum, device), world)
        step += 1
        if controller is not None:  # same signals on every rank → the same answer
            pending = controller.observe(
                step, DomainSignals.from_step(r.domain_tokens.numpy(), r.domain_loss.numpy())
            )
        meter.update({"domain_tokens": r.domain_tokens.numpy()[None]})
        tokens_since += tc.batch_size * d.seq_len
        if rank == 0:
            rate = tokens_since / (time.perf_counter() - t0)
            rec = step_record(step, r, sched.get_last_lr()[0], rate, meter.summary(), d.track_docs)
            if step % tc.eval_every == 0 or step == tc.steps:
                losses = {k: round(evaluate(model, x, device, micro), 6) for k, x in evals.items()}
                if None in losses:
                    rec["eval_loss"] = losses.pop(None)
                if losses:
                    rec["eval_losses"] = losses
            logger.write(rec)
            logger.scalars(step, step_scalars(rec, domains))
            progress.update(1, loss=rec["loss"], tokens_per_s=rec["tokens_per_s"])
            t0, tokens_since = time.perf_counter(), 0
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            if step == tc.steps:
                say("[pretrain] writing the final checkpoint (step %d)", step)
            save_checkpoint(
                out,
                step,
                model,
                opt,
                sched,
                loader,
                rank,
                tc.keep_last,
                logger,
                lr_steps=lr_steps,
                control=None
                if controller is None
                else {
                    "state": controller.state_dict(),
                    "pending": None if pending is None else pending.to_dict(),
                },
            )

    progress.close()
    logger.close()
    del it, loader, ddp
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if lock is not None:
        lock.release()
    say("[pretrain] done: %s is at step %d", out, step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
