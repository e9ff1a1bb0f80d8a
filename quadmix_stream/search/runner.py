"""Train the pending proxies of a run folder: one by one or in groups, on this rank's share.

Used in-process by ``quadmix-stream search proxies`` and, one process per rank, by
``python -m quadmix_stream.trainers.proxy`` under ``torchrun``. Pending runs are dealt to ranks
round-robin (``pending[rank::world]``); each result is written atomically as soon as its proxy
(or its group) ends, so a killed process loses only the proxies it was training.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from quadmix_stream.search.batched import train_group
from quadmix_stream.search.proxy import ProxyContext, ProxyJob, run_seed, train_one
from quadmix_stream.search.runfolder import RunFolder, now
from quadmix_stream.search.tokenizer import TextTokenizer


def context(
    folder: RunFolder, device: str | None = None, threads: int | None = None
) -> ProxyContext:
    cfg = folder.config.proxy
    changes = {}
    if device is not None:
        changes["device"] = device
    if threads is not None:
        changes["threads"] = threads
    if changes:
        import dataclasses

        cfg = dataclasses.replace(cfg, **changes)
    tok = TextTokenizer(folder.tokenizer_path, folder.config.tokenizer.eos_token)
    return ProxyContext.create(folder.dataset, tok, cfg, folder.target, folder.eval_paths)


def run_jobs(
    jobs: list[ProxyJob],
    ctx: ProxyContext,
    group: int,
    on_result: Callable[[dict], None],
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Train ``jobs`` (``group`` at a time with :func:`.batched.train_group` when > 1).

    ``progress`` gets one line per finished proxy and, while training, a line every
    ``ctx.progress_every`` seconds (step, training loss, tokens/s, ETA).
    """
    out = []
    if progress is not None:
        ctx.progress = progress
    for start in range(0, len(jobs), max(1, group)):
        chunk = jobs[start : start + max(1, group)]
        recs = [train_one(chunk[0], ctx)] if group <= 1 else train_group(chunk, ctx)
        for rec in recs:
            on_result(rec)
            out.append(rec)
            if progress:
                loss = f"loss {rec['loss']:.4f}" if rec["status"] == "ok" else rec.get("reason")
                progress(f"{rec['name']}: {rec['status']} ({loss}, {rec.get('seconds', 0):.1f}s)")
    return out


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
) -> dict:
    """Train this rank's share of the pending proxies; returns (and logs) a summary."""
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
    ctx = context(folder, device, threads)
    jobs = [
        ProxyJob(
            folder.run_name(i),
            folder.params_of(theta[row[i]], f"search proposal {i}"),
            {"run": i, "rank": rank},
            run_seed(ctx.cfg, i),
        )
        for i in mine
    ]
    recs = run_jobs(jobs, ctx, group, folder.record, progress)
    seconds = time.perf_counter() - t0
    summary.update(
        device=str(ctx.device),
        trained=len(recs),
        ok=sum(r["status"] == "ok" for r in recs),
        failed=sum(r["status"] != "ok" for r in recs),
        seconds=seconds,
        proxies_per_hour=3600.0 * len(recs) / seconds if seconds > 0 else None,
        finished=now(),
    )
    folder.log(summary)
    return summary
