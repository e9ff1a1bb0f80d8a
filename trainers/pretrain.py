"""Pretraining on the QuaDMix stream, with exact checkpoint/resume. Launch with torchrun:

    torchrun --nproc_per_node N -m quadmix_stream.trainers.pretrain RECIPE.yaml [--out DIR]
    python -m quadmix_stream.trainers.pretrain RECIPE.yaml          # one process

A transformers causal LM built from a config (no download), DDP (gloo on CPU, NCCL on GPU),
AdamW with warm-up + cosine, gradient accumulation, bf16 autocast on CUDA, periodic evaluation
on a target set, logging of loss, tokens/s and realised vs expected per-domain tokens
(``OUT/log.jsonl``; TensorBoard and Weights & Biases through the recipe's ``logging:`` section,
see :mod:`quadmix_stream.trainers.runlog`), and a progress line every few seconds on rank 0.

The dataset (``data.dataset``) is a folder or a URL (``s3://bucket/ds``, read through
:mod:`quadmix_stream.storage` with a node-local cache bounded by ``data.cache_limit``); the log's
``start`` event names it by location and manifest fingerprint. ``train.eval_set`` may be a URL too.

Guards: the output folder must be writable (checked before any work), one trainer per folder
(``OUT/.lock``), ranks exit when their torchrun agent dies, and a failed checkpoint write (disk
full) stops every rank with the file's name, keeping the previous checkpoint.

Resume: run the same command again; the latest checkpoint in ``OUT/checkpoints`` is restored
(model, optimiser, scheduler, step, loader). Same world size and params → every rank restores
its own loader state and the run continues item for item. Another world size, or
``--params NEW.json`` → the global loader state is re-dealt (nothing consumed is repeated,
nothing is lost) and the log records the switch and its step. Log records past the
checkpoint's step (the killed invocation's last steps, trained again) are cut from ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
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

from quadmix_stream.metrics import MixtureMeter
from quadmix_stream.progress import Progress
from quadmix_stream.recipe import RecipeError, build, read_yaml
from quadmix_stream.runguard import (
    OutputError,
    RunLock,
    check_writable,
    exit_with_parent,
    remove_stale_tmp,
    under_torchrun,
    write_file_atomic,
)
from quadmix_stream.storage import StorageConfig
from quadmix_stream.trainers.runlog import LoggingConfig, RunLogger, truncate_log


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
    shuffle_block_shards: int | None = 256
    track_docs: bool = False  # log the (epoch, row, copy) of documents started in each step
    # a remote dataset (s3://…): bytes its node-local cache may hold, e.g. "64gb" (None: no limit)
    cache_limit: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    """A transformers LlamaConfig; defaults are a ~0.1M-parameter model for CPU."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 2048


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    batch_size: int = 8  # per rank and micro-step
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 10
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_set: str | None = None  # JSONL with a "text" field; logged as eval_loss
    eval_sets: dict[str, str] | None = None  # more named JSONL sets, logged as eval_losses[name]
    eval_every: int = 50
    eval_max_blocks: int = 64
    checkpoint_every: int = 50
    keep_last: int = 2
    threads: int | None = None

    def __post_init__(self) -> None:
        sets = self.eval_sets
        if sets is not None and (
            not isinstance(sets, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in sets.items())
        ):
            raise ValueError(f"eval_sets: a mapping {{name: JSONL path}}, got {sets!r}")


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    out: str = "runs/pretrain"


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    raw = read_yaml(path)
    raw = raw.get("pretrain", raw)  # a whole-flow recipe keeps this under `pretrain:`
    for key, value in (overrides or {}).items():  # "train.steps" → raw["train"]["steps"]
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return build(PretrainConfig, raw, "pretrain")


# ---------------------------------------------------------------- helpers
def log_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio``·lr (a multiplier of lr)."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def checkpoints(out: Path) -> list[Path]:
    found = [
        p for p in (out / "checkpoints").glob("step-*.pt") if re.fullmatch(r"step-\d+\.pt", p.name)
    ]
    return sorted(found, key=lambda p: int(p.stem.split("-")[1]))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a ``.tmp`` + rename; an error (disk full) names the file."""
    write_file_atomic(path, lambda f: torch.save(obj, f))


def agree_on_error(err: str | None) -> None:
    """Raise ``OutputError(err)`` on every rank when any rank had one (also a barrier)."""
    if dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, err)
        err = next((e for e in gathered if e), None)
    if err:
        raise OutputError(err)


def claim_out(out: Path, rank: int) -> RunLock | None:
    """Rank 0 checks that ``out`` is writable and locks it; every rank learns of a failure."""
    lock, err = None, None
    if rank == 0:
        try:
            check_writable(out)
            check_writable(out / "checkpoints")
            lock = RunLock(out, "trainer").acquire()
            for d in (out, out / "checkpoints"):
                remove_stale_tmp(d)  # left by a killed writer; the lock says none is running
        except OutputError as e:
            err = str(e)
    agree_on_error(err)
    return lock


def eval_blocks(path: str, tok, seq_len: int, max_blocks: int) -> torch.Tensor:
    """The first ``max_blocks`` blocks of an evaluation set (a JSONL file, local or a URL)."""
    from quadmix_stream.locations import read_location

    lines = read_location(path).decode("utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()]
    if not any(t.strip() for t in texts):
        raise ValueError(f"eval set {path} has no text")
    ids = [t for doc in tok.encode_docs(texts) for t in doc]
    n = min(len(ids) // seq_len, max_blocks)
    if n == 0:
        raise ValueError(f"eval set {path} has fewer than seq_len={seq_len} tokens")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, device: torch.device, batch: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch):
        x = blocks[i : i + batch].to(device)
        with autocast(device):
            loss = model(input_ids=x, labels=x).loss
        total += float(loss) * len(x)
        n += len(x)
    model.train()
    return total / n


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m quadmix_stream.trainers.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("recipe", help="YAML recipe (sections data, model, train, out)")
    ap.add_argument("--out", help="run folder (default: the recipe's `out`)")
    ap.add_argument("--params", help="a new params.json: resume the epoch under these params")
    ap.add_argument("--steps", type=int, help="override train.steps")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    a = ap.parse_args(argv)
    over: dict[str, Any] = {}
    if a.params:
        over["data.params"] = a.params
    if a.steps is not None:
        over["train.steps"] = a.steps
    try:
        cfg = load_config(a.recipe, over)
        out = Path(a.out or cfg.out)
        return train(cfg, out, resume=not a.no_resume, params_changed=bool(a.params))
    except (OutputError, RecipeError) as e:  # the user's to fix: one line, no traceback
        rank = os.environ.get("RANK", "0")
        print(f"pretrain (rank {rank}): error: {e}", file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 2


def train(cfg: PretrainConfig, out: Path, resume: bool = True, params_changed: bool = False) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from quadmix_stream.dataset import QuaDMixDataset
    from quadmix_stream.loaders.stateful import make_loader, restore_loader
    from quadmix_stream.packing import PackedDataset
    from quadmix_stream.params import SamplingParams
    from quadmix_stream.tokenizer import TextTokenizer, pool_texts, train_tokenizer

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
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    d, tc = cfg.data, cfg.train
    lock = claim_out(out, rank)  # before any work: writable, and no other trainer in it
    log_path = out / "log.jsonl"

    # a local folder or an object-storage URL (s3://…): never wrapped in Path, which would
    # turn the URL into a relative folder name
    storage = StorageConfig(cache_limit=d.cache_limit)

    # tokenizer: given, or a BPE trained on the pool once (rank 0) and shared through the folder
    tok_path = Path(d.tokenizer) if d.tokenizer else out / "tokenizer.json"
    if not d.tokenizer and rank == 0 and not tok_path.exists():
        train_tokenizer(pool_texts(d.dataset, 5000, storage=storage), d.vocab_size, tok_path)
    if dist.is_initialized():
        dist.barrier()
    tok = TextTokenizer(tok_path)

    # model: same initialisation on every rank and every run
    torch.manual_seed(tc.seed)
    mcfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        **dataclasses.asdict(cfg.model),
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(mcfg).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model
    opt = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, tc))

    # data
    params = SamplingParams.load(d.params)
    ds = QuaDMixDataset(
        d.dataset,
        params,
        seed=d.seed,
        infinite=True,
        shuffle_block_shards=d.shuffle_block_shards,
        resume_with_new_params=params_changed,
        storage=storage,
    )
    packed = PackedDataset(ds, tok, d.seq_len, track_docs=d.track_docs)

    step, ckpt_loader = 0, None
    ckpts = checkpoints(out) if resume else []
    if ckpts:
        ck = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        step, ckpt_loader = int(ck["step"]), ck["loader"]
    logger = RunLogger(out, cfg.logging, dataclasses.asdict(cfg), enabled=rank == 0)
    if rank == 0:  # steps after the checkpoint are trained again: drop their first try
        truncate_log(log_path, step)
    kw = {"prefetch_factor": 2} if d.workers else {}
    if ckpt_loader is None:
        loader = make_loader(packed, tc.batch_size, d.workers, **kw)
    else:
        loader, exact = restore_loader(ckpt_loader, packed, tc.batch_size, d.workers, **kw)
        if rank == 0:
            rec = {"event": "resume", "checkpoint": ckpts[-1].name, "step": step, "exact": exact}
            if not exact:  # another topology or new params: the log records the switch
                rec["switch"] = {
                    "from_world": ckpt_loader["world"],
                    "to_world": world,
                    "from_params": ckpt_loader["params_fingerprint"],
                    "to_params": params.fingerprint(),
                }
            logger.write(rec)

    eval_x = eval_blocks(tc.eval_set, tok, d.seq_len, tc.eval_max_blocks) if tc.eval_set else None
    more_x = {
        str(k): eval_blocks(str(v), tok, d.seq_len, tc.eval_max_blocks)
        for k, v in dict(tc.eval_sets or {}).items()
    }
    domains = ds.manifest.domains
    meter = MixtureMeter(domains, ds.expected_mixture())  # realised vs expected token shares
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        logger.write(
            {
                "event": "start",
                "step": step,
                "world": world,
                "params": params.provenance,
                # a remote dataset is named by its URL; the fingerprint says which labels
                "dataset": {"location": ds.root, "fingerprint": ds.fingerprint},
                "model_parameters": n_params,
                "device": str(device),
            },
        )

    if step >= tc.steps and rank == 0:  # e.g. resumed a finished run: say so, don't exit silently
        print(
            f"nothing to train: {out} is at step {step} and train.steps is {tc.steps}; "
            f"pass --steps N (N > {step}) to train further",
            flush=True,
        )
    it = iter(loader)
    t0, tokens_since = time.perf_counter(), 0
    progress = Progress(
        "pretrain",
        tc.steps,
        initial=step,
        enabled=rank == 0,
        every_s=cfg.logging.progress_every,
    )
    while step < tc.steps:
        loss_sum = torch.zeros(1, device=device)
        dom = torch.zeros(len(domains), dtype=torch.long)
        h = hashlib.sha256()
        docs: list[int] = []
        for micro in range(tc.grad_accum):
            batch = next(it)
            x = batch["input_ids"].to(device)
            h.update(batch["input_ids"].numpy().tobytes())
            dom += batch["domain_tokens"].sum(0)
            if d.track_docs:
                docs += [v for v in batch["doc_ids"].flatten().tolist() if v >= 0]
            sync = nullcontext() if (world == 1 or micro == tc.grad_accum - 1) else ddp.no_sync()
            with sync, autocast(device):
                loss = ddp(input_ids=x, labels=x).loss / tc.grad_accum
                loss.backward()
            loss_sum += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        # metrics over all ranks
        digest = h.hexdigest()
        if world > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world
            dist.all_reduce(dom)
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, (digest, docs))
            digest = hashlib.sha256("".join(g[0] for g in gathered).encode()).hexdigest()
            docs = [x for g in gathered for x in g[1]]
        meter.update({"domain_tokens": dom.numpy()[None]})
        tokens_since += tc.batch_size * tc.grad_accum * d.seq_len * world
        if rank == 0:
            dt = time.perf_counter() - t0
            mix = meter.summary()
            rec = {
                "step": step,
                "loss": round(float(loss_sum), 6),
                "lr": sched.get_last_lr()[0],
                "tokens_per_s": round(tokens_since / dt, 1),
                "batch_sha": digest[:16],
                "realised_share": {k: round(v["share"], 4) for k, v in mix.items()},
                "expected_share": {
                    k: round(v.get("expected_share", 0.0), 4) for k, v in mix.items()
                },
            }
            if d.track_docs:
                rec["docs"] = docs
            if step % tc.eval_every == 0 or step == tc.steps:
                if eval_x is not None:
                    rec["eval_loss"] = round(evaluate(model, eval_x, device, tc.batch_size), 6)
                if more_x:
                    rec["eval_losses"] = {
                        k: round(evaluate(model, x, device, tc.batch_size), 6)
                        for k, x in more_x.items()
                    }
            logger.write(rec)
            scalars = {k: rec[k] for k in ("loss", "lr", "tokens_per_s", "eval_loss") if k in rec}
            scalars.update({f"eval_loss/{k}": v for k, v in rec.get("eval_losses", {}).items()})
            for k in domains:
                scalars[f"mixture/realised/{k}"] = rec["realised_share"][k]
                scalars[f"mixture/expected/{k}"] = rec["expected_share"][k]
            logger.scalars(step, scalars)
            progress.update(1, loss=rec["loss"], tokens_per_s=rec["tokens_per_s"])
            t0, tokens_since = time.perf_counter(), 0
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            save_checkpoint(out, step, model, opt, sched, loader, rank, tc.keep_last, logger)

    progress.close()
    logger.close()
    del it, loader, ddp
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if lock is not None:
        lock.release()
    return 0


def save_checkpoint(
    out: Path,
    step: int,
    model,
    opt,
    sched,
    loader,
    rank: int,
    keep_last: int,
    logger: RunLogger | None = None,
) -> None:
    """Model, optimiser, scheduler, step and the loader (each rank's own + the global state).

    A failed write (disk full) raises :class:`OutputError` naming the file on every rank (not
    only on rank 0, whose peers would otherwise die in a collective with a gloo/NCCL error);
    the previous checkpoints stay, and no ``.tmp`` is left.
    """
    from quadmix_stream.loaders.stateful import checkpoint_loader

    state = checkpoint_loader(loader)  # all ranks take part
    err = None
    if rank == 0:
        ck = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "loader": state,
        }
        try:
            save_atomic(ck, out / "checkpoints" / f"step-{step:08d}.pt")
        except OutputError as e:
            err = str(e)
        else:
            for old in checkpoints(out)[:-keep_last]:
                old.unlink()
            rec = {"event": "checkpoint", "step": step}
            if logger is not None:
                logger.write(rec)
            else:
                log_jsonl(out / "log.jsonl", rec)
    agree_on_error(err)  # a barrier too


if __name__ == "__main__":
    raise SystemExit(main())
