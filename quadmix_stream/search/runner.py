"""Train the pending proxies of a run folder: one by one or in groups, on this rank's share or
as Ray tasks.

Used in-process by ``quadmix-stream search proxies`` and, one process per rank, by
``python -m quadmix_stream.trainers.proxy`` under ``torchrun``. Pending runs are dealt to ranks
round-robin (``pending[rank::world]``); each result is written atomically as soon as its proxy
(or its group) ends, so a killed process loses only the proxies it was training. With the
``ray`` executor each group is a Ray task (a free worker takes the next, a task whose worker
died is retried) and the driver writes each result as it arrives: a killed driver loses only
the proxies in flight, and the same command resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from quadmix_stream.executors import ExecutorConfig
from quadmix_stream.search.batched import train_group
from quadmix_stream.search.config import ProxyConfig
from quadmix_stream.search.proxy import ProxyContext, ProxyJob, run_seed, train_one
from quadmix_stream.search.runfolder import RunFolder, now
from quadmix_stream.search.tokenizer import TextTokenizer


class ContextSource(Protocol):
    """Something small and picklable that builds a :class:`ProxyContext` where it is called."""

    def context(self) -> ProxyContext: ...


@dataclass(frozen=True)
class ProxySource:
    """How to build the :class:`ProxyContext` of a run folder's proxies, in whichever process
    trains them (this one, or a Ray worker: it is small and picklable).

    ``data_seed`` replaces the recipe's data seed for training only (a retest): the evaluation
    blocks stay those drawn with the recipe's seed. ``decide``: train with the deciding runs'
    settings (``decide.proxy``) instead of the proxies'.
    """

    run_dir: str
    dataset: str | None = None
    device: str | None = None
    threads: int | None = None
    data_seed: int | None = None
    decide: bool = False

    @classmethod
    def of(
        cls,
        folder: RunFolder,
        device: str | None = None,
        threads: int | None = None,
        decide: bool = False,
    ) -> ProxySource:
        ds = folder.dataset_override
        return cls(str(folder.path), None if ds is None else str(ds), device, threads, None, decide)

    def config(self, folder: RunFolder) -> ProxyConfig:
        changes = {k: v for k, v in (("device", self.device), ("threads", self.threads)) if v}
        cfg = folder.config
        base = cfg.decide.proxy if self.decide and cfg.decide is not None else cfg.proxy
        return dataclasses.replace(base, **changes)

    def context(self) -> ProxyContext:
        folder = RunFolder(self.run_dir, self.dataset)
        tok = TextTokenizer(folder.tokenizer_path, folder.config.tokenizer.eos_token)
        ctx = ProxyContext.create(
            folder.dataset, tok, self.config(folder), folder.target, folder.eval_paths
        )
        if self.data_seed is not None:
            ctx.cfg = dataclasses.replace(ctx.cfg, data_seed=self.data_seed)
        return ctx


def context(
    folder: RunFolder, device: str | None = None, threads: int | None = None
) -> ProxyContext:
    """The proxies' context for ``folder`` in this process."""
    return ProxySource.of(folder, device, threads).context()


def _train_chunk(chunk: list[ProxyJob], ctx: ProxyContext, group: int) -> list[dict]:
    return [train_one(chunk[0], ctx)] if group <= 1 else train_group(chunk, ctx)


def _line(rec: dict) -> str:
    loss = f"loss {rec['loss']:.4f}" if rec["status"] == "ok" else rec.get("reason")
    return f"{rec['name']}: {rec['status']} ({loss}, {rec.get('seconds', 0):.1f}s)"


def run_jobs(
    jobs: list[ProxyJob],
    source: ContextSource | ProxyContext,
    group: int,
    on_result: Callable[[dict], None],
    progress: Callable[[str], None] | None = None,
    executor: ExecutorConfig | None = None,
) -> list[dict]:
    """Train ``jobs`` (``group`` at a time with :func:`.batched.train_group` when > 1); returns
    their records in the order they finished, each passed to ``on_result`` as it comes.

    ``progress`` gets one line per finished proxy and, in this process, a line every
    ``ctx.progress_every`` seconds while training (step, loss, tokens/s, ETA). With a ``ray``
    ``executor`` each group is a Ray task; ``on_result`` runs here, on the driver.
    """
    size = max(1, group)
    chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    out: list[dict] = []
    with contextlib.ExitStack() as stack:
        if executor is not None and executor.kind == "ray" and chunks:
            if isinstance(source, ProxyContext):
                raise TypeError(
                    "the ray executor rebuilds the context in each worker: pass a source"
                )
            from quadmix_stream.executors.ray import RayExecutor

            ex = stack.enter_context(RayExecutor(executor))
            calls = [(source, c, group, executor.cpus_per_task) for c in chunks]
            done = ex.run(
                train_remote,
                calls,
                desc="proxies (ray)",
                name="qms-proxy",
                unit="proxy",
                total=len(jobs),
                weight=lambda args: len(args[1]),
                progress=progress is not None,
            )
            batches: Iterable[list[dict]] = (recs for _, recs in done)
        else:
            ctx = source if isinstance(source, ProxyContext) else source.context()
            if progress is not None:
                ctx.progress = progress
            batches = (_train_chunk(chunk, ctx, group) for chunk in chunks)
        for recs in batches:
            for rec in recs:
                on_result(rec)
                out.append(rec)
                if progress:
                    progress(_line(rec))
    return out


def train_remote(
    source: ContextSource, chunk: list[ProxyJob], group: int, cpus: float
) -> list[dict]:
    """A Ray task: train one group of proxies with this worker's context (built once)."""
    import torch

    from quadmix_stream.executors.ray import cached

    ctx = cached("proxy:" + repr(source), source.context)
    # proxy.threads when set, else the task's CPUs (not every core of the node)
    torch.set_num_threads(ctx.cfg.threads if ctx.cfg.threads > 0 else max(1, int(cpus)))
    return _train_chunk(chunk, ctx, group)


def run_pending(
    folder: RunFolder,
    rank: int = 0,
    world: int = 1,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
    pending: list[int] | None = None,
    executor: ExecutorConfig | None = None,
) -> dict:
    """Train this rank's share of the pending proxies (with a ``ray`` executor: all of them, as
    Ray tasks); returns (and logs) a summary."""
    t0 = time.perf_counter()
    pending = folder.pending() if pending is None else pending
    mine = pending[rank::world]
    if limit is not None:
        mine = mine[:limit]
    ids, _, theta = folder.proposals()
    row = {int(i): k for k, i in enumerate(ids)}
    group = folder.config.proxy.group if group is None else group
    summary = {
        "started": now(),
        "rank": rank,
        "world_size": world,
        "group": group,
        "pending_before": len(pending),
        "runs": mine,
    }
    if not mine:
        summary.update(trained=0, seconds=0.0, proxies_per_hour=None)
        return summary
    source = ProxySource.of(folder, device, threads)
    cfg = source.config(folder)
    jobs = [
        ProxyJob(
            folder.run_name(i),
            folder.params_of(theta[row[i]], f"search proposal {i}"),
            {"run": i, "rank": rank},
            run_seed(cfg, i),
        )
        for i in mine
    ]
    if executor is not None and executor.kind == "ray":
        where = f"ray ({executor.cpus_per_task:g} CPU, {executor.gpus_per_task:g} GPU per task)"
        recs = run_jobs(jobs, source, group, folder.record, progress, executor)
    else:
        ctx = source.context()
        where = str(ctx.device)
        recs = run_jobs(jobs, ctx, group, folder.record, progress)
    seconds = time.perf_counter() - t0
    summary.update(
        executor="ray" if where.startswith("ray") else "local",
        device=where,
        trained=len(recs),
        ok=sum(r["status"] == "ok" for r in recs),
        failed=sum(r["status"] != "ok" for r in recs),
        seconds=seconds,
        proxies_per_hour=3600.0 * len(recs) / seconds if seconds > 0 else None,
        finished=now(),
    )
    folder.log(summary)
    return summary
