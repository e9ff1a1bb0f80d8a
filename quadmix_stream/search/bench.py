"""``quadmix-stream bench proxies``: proxies per hour, one at a time vs batched, in one run."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def add_parser(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser(
        "proxies",
        help="proxy trainings per hour: one at a time vs batched (vmap) on the same hardware",
        description=(
            "Train the same N proxies (same θ, data, initial weights) twice on this machine: one "
            "after the other (plain module + AdamW), then G at a time (stacked weights, "
            "torch.func.vmap). Prints proxies/hour of each, the ratio, and the largest difference "
            "between the two runs' losses (they compute the same thing). The modes alternate "
            "--repeat times and each keeps its fastest time. Without --dataset a small "
            "planted synthetic corpus is written to a temporary folder."
        ),
    )
    p.add_argument(
        "--dataset", help="labelled dataset folder or URL (default: a temporary synthetic corpus)"
    )
    p.add_argument("--target", help="target JSONL (default: DATASET/eval_sets/target.jsonl)")
    p.add_argument("--proxies", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="proxies per batched group")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared CPU, multi-threaded tiny ops stall on "
        "contention and make the timings meaningless; 0: torch's default)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="alternate the two modes this many times and keep each one's fastest (default 2)",
    )
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="ray: also train the proxies one per Ray task on a local Ray instance one and two "
        "tasks at a time (the executor's overhead over one at a time here, and its speed-up)",
    )
    p.set_defaults(func=bench_proxies)


@dataclass(frozen=True)
class _BenchSource:
    """The benchmark's proxy context, rebuilt in a Ray worker."""

    dataset: str
    tokenizer: str
    cfg: Any
    target: str

    def context(self) -> Any:
        from quadmix_stream.search.proxy import ProxyContext
        from quadmix_stream.search.tokenizer import TextTokenizer

        return ProxyContext.create(
            self.dataset, TextTokenizer(self.tokenizer), self.cfg, self.target
        )


def bench_proxies(a: argparse.Namespace) -> int:
    import torch

    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.search.batched import train_group
    from quadmix_stream.search.config import ModelConfig, ProxyConfig, TokenizerConfig
    from quadmix_stream.search.proxy import (
        ProxyContext,
        ProxyJob,
        build_model,
        count_params,
        train_one,
    )
    from quadmix_stream.search.space import to_params
    from quadmix_stream.search.tokenizer import TextTokenizer, prepare_tokenizer
    from quadmix_stream.storage.locations import dataset_location, local_copy

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # a folder, or a URL kept as the string (its target set is fetched into tmp)
        ds = dataset_location(a.dataset) if a.dataset else tmp / "synthetic"
        if not a.dataset:
            from quadmix_stream.synth import synth

            synth(ds, "mds", docs_per_domain=300, seed=0)
        target = (
            Path(a.target)
            if a.target
            else local_copy(f"{ds}/eval_sets/target.jsonl", tmp / "target.jsonl")
        )
        prepare_tokenizer(TokenizerConfig(vocab_size=a.vocab, max_docs=2000), ds, tmp)
        tok = TextTokenizer(tmp / "tokenizer.json")
        cfg = ProxyConfig(
            model=ModelConfig(
                hidden_size=a.hidden,
                num_hidden_layers=a.layers,
                num_attention_heads=a.heads,
                intermediate_size=2 * a.hidden,
            ),
            seq_len=a.seq_len,
            batch_size=a.batch_size,
            tokens=a.steps * a.batch_size * a.seq_len,
            lr=3e-3,
            eval_max_tokens=8192,
            device=a.device,
            threads=a.threads,
        )
        ctx = ProxyContext.create(ds, tok, cfg, target)
        m = Manifest.load(ds)
        ranges = {"lam": (0.0, 100.0), "omega": (0.2, 1.0), "eps": (0.0, 0.02)}
        vecs = SamplingParams.propose_vectors(
            a.proxies, len(m.domains), len(m.scorer_names), 7, ranges
        )
        jobs = [
            ProxyJob(f"p{i}", to_params(v, m.domains, m.scorer_names, "multiplicative"))
            for i, v in enumerate(vecs)
        ]
        n_params = count_params(build_model(cfg, tok.vocab_size))
        print(
            f"device={ctx.device} threads={torch.get_num_threads()} proxies={a.proxies} "
            f"model={n_params['total']:,} params ({a.layers}×{a.hidden}, vocab {tok.vocab_size}) "
            f"steps={cfg.steps} × batch {a.batch_size} × seq {a.seq_len} "
            f"= {cfg.steps * a.batch_size * a.seq_len:,} tokens each"
        )
        train_one(ProxyJob("warmup", jobs[0].params), ctx)  # imports, allocator, caches
        t_seq = t_bat = float("inf")
        ray_runs = None
        if a.executor == "ray":
            src = _BenchSource(str(ds), str(tmp / "tokenizer.json"), cfg, str(target))
            ray_runs = _RayRuns(src, jobs)
        for _ in range(max(1, a.repeat)):  # alternate, keep the fastest: load spikes hit both
            if ray_runs is not None:
                ray_runs.round()
            _sync(ctx.device)
            t0 = time.perf_counter()
            seq = [train_one(j, ctx) for j in jobs]
            _sync(ctx.device)
            t_seq = min(t_seq, time.perf_counter() - t0)
            t0 = time.perf_counter()
            bat = []
            for s in range(0, len(jobs), a.group):
                bat += train_group(jobs[s : s + a.group], ctx)
            _sync(ctx.device)
            t_bat = min(t_bat, time.perf_counter() - t0)
    ls = np.array([r.get("loss", np.nan) for r in seq])
    lb = np.array([r.get("loss", np.nan) for r in bat])
    ph_seq, ph_bat = 3600 * len(jobs) / t_seq, 3600 * len(jobs) / t_bat
    print(f"  one at a time : {t_seq:7.2f}s  {ph_seq:9.0f} proxies/hour  (fastest of {a.repeat})")
    print(f"  batched (G={a.group:<3}): {t_bat:7.2f}s  {ph_bat:9.0f} proxies/hour")
    print(
        f"  batched / one at a time = {ph_bat / ph_seq:.2f}×; max |Δ loss| between the two runs "
        f"{np.nanmax(np.abs(ls - lb)):.2e} (losses {np.nanmin(ls):.3f}…{np.nanmax(ls):.3f})"
    )
    if ray_runs is not None:
        ray_runs.report(t_seq, ls)
    return 0


class _RayRuns:
    """The same proxies, one per Ray task, on a local 2-CPU Ray instance started here (its start
    is not timed), one task at a time and two at a time. Every task asks for one CPU: Ray keeps
    a pool of workers per request shape, and alternating shapes would restart workers."""

    def __init__(self, source: _BenchSource, jobs: list) -> None:
        from quadmix_stream.executors.ray import start_local_ray

        self.stack = contextlib.ExitStack()
        self.start_s = start_local_ray(self.stack, 2)
        self.source, self.jobs = source, jobs
        self.best: dict[int, float] = {}
        self.losses: dict[int, np.ndarray] = {}
        for slots in (2, 1):  # warm: workers started, context built and cached in each
            self._run(slots)

    def _run(self, slots: int) -> float:
        from quadmix_stream.executors import ExecutorConfig
        from quadmix_stream.search.runner import run_jobs

        ex = ExecutorConfig(kind="ray", cpus_per_task=1.0, max_in_flight=slots)
        t0 = time.perf_counter()
        recs = run_jobs(self.jobs, self.source, 1, lambda r: None, None, ex)
        dt = time.perf_counter() - t0
        by = {r["name"]: r.get("loss", np.nan) for r in recs}
        self.losses[slots] = np.array([by[j.name] for j in self.jobs])
        return dt

    def round(self) -> None:
        for slots in (1, 2):
            dt = self._run(slots)
            self.best[slots] = min(self.best.get(slots, dt), dt)

    def report(self, t_local: float, local_losses: np.ndarray) -> None:
        self.stack.close()  # stop the Ray instance
        n = len(self.jobs)
        t1, t2 = self.best[1], self.best[2]
        diff = max(float(np.nanmax(np.abs(v - local_losses))) for v in self.losses.values())
        print(
            f"  ray, 1 at a time : {t1:7.2f}s  {3600 * n / t1:9.0f} proxies/hour → overhead "
            f"{t1 / t_local - 1:+.1%} over one at a time in this process (target ≤ +10%)"
        )
        print(
            f"  ray, 2 at a time : {t2:7.2f}s  {3600 * n / t2:9.0f} proxies/hour → "
            f"speed-up {t1 / t2:.2f}× over 1 at a time; max |Δ loss| vs this process {diff:.2e}; "
            f"Ray start {self.start_s:.1f}s (once, not timed)"
        )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
