"""``quadmix-stream bench gpu``: one command that checks the CUDA paths, in under 5 minutes on one GPU.

Three parts, each printed as it runs and summarised at the end (also ``WORK/gpu_smoke.json``):

1. **trainer**: a few steps of ``recipes/pretrain_gpu_530m.yaml`` (its model, sequence length,
   batch, gradient accumulation and workers; bf16 autocast) under ``torchrun`` with one rank, so
   the NCCL process group, DDP and the checkpoint path run as in a real launch. The data are a
   synthetic pool written to WORK with a byte-level BPE trained on it (its vocabulary, not the
   recipe's 50k tokenizer, sizes the embeddings).
2. **proxies**: ``quadmix-stream bench proxies`` at the paper-scale proxy shape (hidden 256,
   2 layers, 8 heads, seq 2048, micro-batch 4, groups of 8): proxies/hour one at a time vs batched.
3. **loader**: the packed QuaDMix stream with the recipe's batch, sequence length and workers,
   copied to the GPU (pinned memory): tokens/s it supplies vs tokens/s the trainer consumed.

``--dry-run`` runs the same three commands at toy scale on the CPU (torchrun with one gloo rank,
a tiny model, two proxies, a few batches) after checking that the full-scale recipe parses: it
proves the plumbing, not the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "pretrain_gpu_530m.yaml"
PROXY_SHAPE = ["--hidden", "256", "--layers", "2", "--heads", "8", "--seq-len", "2048"]
PROXY_SHAPE += ["--batch-size", "4", "--group", "8", "--proxies", "8"]
TOY_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 2048,
}


def add_parser(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser(
        "gpu",
        help="GPU smoke check: 530M trainer steps (bf16, NCCL), batched proxies, loader → GPU",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--work", help="working folder (default: a new temporary folder)")
    p.add_argument(
        "--recipe", default=str(RECIPE), help="pretraining recipe (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=8, help="trainer steps (default 8)")
    p.add_argument("--proxy-steps", type=int, default=16, help="steps per proxy (default 16)")
    p.add_argument("--loader-batches", type=int, default=40, help="batches timed (default 40)")
    p.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary trained on the pool")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: check the recipe and run the same commands at toy scale on the CPU",
    )
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"[gpu-smoke] {msg}", flush=True)


def prepare(work: Path, dry: bool, vocab: int) -> tuple[Path, Path, Path]:
    """A synthetic labelled pool, a params file and a BPE tokenizer in ``work`` (reused)."""
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.pool import pool_texts
    from quadmix_stream.synth import synth
    from quadmix_stream.training.tokenizer import train_tokenizer

    ds, params, tok = work / "pool", work / "params.json", work / "tokenizer.json"
    if not (ds / "quadmix.json").exists():
        # enough shards for 8 loader workers; ~1M tokens at full size
        synth(ds, "mds", docs_per_domain=200 if dry else 2000, seed=0, rows_per_shard=250)
    if not params.exists():
        m = Manifest.load(ds)
        p = SamplingParams.propose(1, m.domains, m.scorer_names, seed=0, ranges={"omega": (0.5, 1)})
        p[0].save(params)
    if not tok.exists():
        train_tokenizer(pool_texts(ds, 5000), 512 if dry else vocab, tok)
    return ds, params, tok


#: forward passes per step of the smoke's one GPU: the recipe's accumulation on 64 GPUs
SMOKE_ACCUM = 4


def derive_recipe(src: Path, work: Path, ds: Path, params: Path, tok: Path, steps: int) -> Path:
    """``src`` with the data, eval set and run folder in ``work`` and ``steps`` steps (one
    checkpoint and one evaluation, at the last step); model, micro-batch and workers unchanged,
    and the batch of one GPU at the recipe's scale (``SMOKE_ACCUM`` forward passes per step)."""
    raw = yaml.safe_load(src.read_text())
    body = raw.get("pretrain", raw)
    body["data"].update(dataset=str(ds), params=str(params), tokenizer=str(tok))
    body["train"].update(
        steps=steps,
        batch_size=int(body["train"]["micro_batch_size"]) * SMOKE_ACCUM,
        eval_set=str(ds / "eval_sets" / "target.jsonl"),
        eval_every=steps,
        checkpoint_every=steps,
        eval_max_blocks=16,
    )
    body["out"] = str(work / "pretrain")
    out = work / "pretrain.yaml"
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    return out


def toy_recipe(full: Path, work: Path) -> Path:
    """The derived recipe at toy scale for the CPU (``--dry-run``)."""
    body = yaml.safe_load(full.read_text())
    body["model"] = dict(TOY_MODEL)
    body["data"].update(seq_len=64, workers=1)
    body["train"].update(steps=2, batch_size=4, micro_batch_size=2, threads=1, eval_every=2)
    body["train"].update(checkpoint_every=2, warmup_steps=1)
    body["out"] = str(work / "pretrain-toy")
    out = work / "pretrain-toy.yaml"
    out.write_text(yaml.safe_dump(body, sort_keys=False))
    return out


def trainer_command(recipe: Path) -> list[str]:
    """torchrun with ONE rank: the trainer then opens a process group (NCCL on a GPU)."""
    from quadmix_stream.training.launch import torchrun_command

    return torchrun_command(1, "-m", "quadmix_stream.trainers.pretrain", str(recipe), always=True)


def proxies_command(ds: Path, steps: int, dry: bool, vocab: int) -> list[str]:
    cmd = [sys.executable, "-m", "quadmix_stream.cli", "bench", "proxies", "--dataset", str(ds)]
    if dry:
        return (
            cmd
            + ["--device", "cpu", "--proxies", "2", "--group", "2", "--steps", "2"]
            + [
                "--seq-len",
                "64",
                "--batch-size",
                "2",
                "--repeat",
                "1",
            ]
        )
    cmd += ["--device", "cuda", *PROXY_SHAPE, "--steps", str(steps), "--repeat", "1"]
    return cmd + ["--threads", "0", "--vocab", str(min(vocab, 4096))]


def run_trainer(recipe: Path, timeout: int) -> dict[str, Any]:
    from quadmix_stream.trainers.pretrain import load_config
    from quadmix_stream.trainers.runlog import read_log

    cfg = load_config(recipe)
    out = Path(cfg.out)
    shutil.rmtree(out, ignore_errors=True)  # measure fresh steps, not a finished run's resume
    cmd = trainer_command(recipe)
    _say("trainer: " + " ".join(cmd))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, timeout=timeout, env={**os.environ, "QUADMIX_PROGRESS_S": "10"})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"the trainer failed (exit {r.returncode}); its output is above")
    log = read_log(out / "log.jsonl")
    start = [x for x in log if x.get("event") == "start"][-1]
    steps = [x for x in log if "loss" in x]
    tps = sorted(x["tokens_per_s"] for x in steps[1:]) or [steps[-1]["tokens_per_s"]]
    return {
        "device": start["device"],
        "world": start["world"],
        "model_parameters": start["model_parameters"],
        "steps": len(steps),
        "tokens_per_step": cfg.train.batch_size * cfg.data.seq_len,
        "first_loss": steps[0]["loss"],
        "last_loss": steps[-1]["loss"],
        "eval_loss": steps[-1].get("eval_loss"),
        "tokens_per_s_median": tps[len(tps) // 2],
        "checkpoints": sorted(p.name for p in (out / "checkpoints").glob("step-*.pt")),
        "wall_s": round(wall, 1),
    }


def run_proxies(cmd: list[str], timeout: int) -> dict[str, Any]:
    _say("proxies: " + " ".join(cmd))
    r = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True)
    print(r.stdout, end="", flush=True)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"bench proxies failed (exit {r.returncode})")
    per_hour = [float(x.replace(",", "")) for x in re.findall(r"([\d,.]+) proxies/hour", r.stdout)]
    ratio = re.search(r"= ([\d.]+)×", r.stdout)
    return {
        "one_at_a_time_per_hour": per_hour[0] if per_hour else None,
        "batched_per_hour": per_hour[1] if len(per_hour) > 1 else None,
        "batched_over_one": float(ratio.group(1)) if ratio else None,
    }


def run_loader(recipe: Path, batches: int, device: str) -> dict[str, Any]:
    """Tokens/s of the packed stream copied to ``device`` (pinned memory on CUDA)."""
    import torch

    from quadmix_stream.loaders.stateful import make_loader
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.dataset import QuaDMixDataset
    from quadmix_stream.stream.packing import PackedDataset
    from quadmix_stream.trainers.pretrain import load_config

    cfg = load_config(recipe)
    d, tc = cfg.data, cfg.train
    ds = QuaDMixDataset(
        d.dataset,
        SamplingParams.load(d.params),
        seed=0,
        infinite=True,
        shuffle_block_shards=d.shuffle_block_shards,
    )
    packed = PackedDataset(ds, str(d.tokenizer), d.seq_len)
    cuda = device.startswith("cuda")
    kw: dict[str, Any] = {"pin_memory": cuda}
    if d.workers:
        kw["prefetch_factor"] = 2
    loader = make_loader(packed, tc.batch_size, d.workers, **kw)
    it = iter(loader)
    next(it)  # workers started, first shards open
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        x = next(it)["input_ids"].to(device, non_blocking=cuda)
        tokens += x.numel()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    del it, loader
    return {
        "device": str(x.device),
        "batches": batches,
        "workers": d.workers,
        "tokens_per_s": round(tokens / dt, 1),
    }


def run(a: argparse.Namespace) -> int:
    import torch

    from quadmix_stream.errors import UserError
    from quadmix_stream.trainers.pretrain import load_config

    dry = a.dry_run
    if not Path(a.recipe).is_file():
        raise UserError(
            f"bench gpu: recipe {a.recipe} not found; pass --recipe (the recipes/ folder is in "
            "the repository, not in an installed package: recipes/pretrain_gpu_530m.yaml)"
        )
    if not dry and not torch.cuda.is_available():
        raise UserError("bench gpu: no CUDA device here (--dry-run checks the set-up on a CPU)")
    work = Path(a.work or tempfile.mkdtemp(prefix="qms-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    _say(f"work folder {work}; {'dry run on the CPU' if dry else torch.cuda.get_device_name()}")
    ds, params, tok = prepare(work, dry, a.vocab)
    full = derive_recipe(Path(a.recipe), work, ds, params, tok, a.steps)
    cfg = load_config(full)  # the full-scale recipe parses and builds
    _say(
        f"recipe {a.recipe}: {cfg.model.num_hidden_layers}×{cfg.model.hidden_size}, seq "
        f"{cfg.data.seq_len}, batch {cfg.train.batch_size} (micro {cfg.train.micro_batch_size}), "
        f"{cfg.data.workers} workers, {a.steps} steps"
    )
    recipe = toy_recipe(full, work) if dry else full
    res: dict[str, Any] = {"dry_run": dry, "recipe": str(a.recipe)}
    res["trainer"] = run_trainer(recipe, 600 if dry else 270)
    _say(f"trainer: {res['trainer']}")
    res["proxies"] = run_proxies(proxies_command(ds, a.proxy_steps, dry, a.vocab), 300)
    _say(f"proxies: {res['proxies']}")
    res["loader"] = run_loader(recipe, 3 if dry else a.loader_batches, "cpu" if dry else "cuda")
    consumed = res["trainer"]["tokens_per_s_median"]
    res["loader"]["supply_over_trainer"] = round(res["loader"]["tokens_per_s"] / consumed, 2)
    _say(f"loader: {res['loader']}")
    res["wall_s"] = round(time.perf_counter() - t_all, 1)
    (work / "gpu_smoke.json").write_text(json.dumps(res, indent=1))
    t, p, lo = res["trainer"], res["proxies"], res["loader"]
    print(
        "\n".join(
            [
                f"GPU smoke check {'(DRY RUN, CPU, toy scale) ' if dry else ''}passed in "
                f"{res['wall_s']:.0f} s → {work / 'gpu_smoke.json'}",
                f"  trainer : {t['model_parameters']:,} parameters on {t['device']} (world "
                f"{t['world']}), {t['steps']} steps, loss {t['first_loss']:.3f} → "
                f"{t['last_loss']:.3f}, {t['tokens_per_s_median']:,.0f} tokens/s",
                f"  proxies : one at a time {p['one_at_a_time_per_hour']} /h, batched "
                f"{p['batched_per_hour']} /h ({p['batched_over_one']}×)",
                f"  loader  : {lo['tokens_per_s']:,.0f} tokens/s to {lo['device']} = "
                f"{lo['supply_over_trainer']}× what the trainer consumed",
            ]
        ),
        flush=True,
    )
    return 0
