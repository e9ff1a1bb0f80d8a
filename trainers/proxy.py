"""Proxy training for a search run folder, one process per rank under ``torchrun``.

    torchrun --nproc_per_node 8 -m quadmix_stream.trainers.proxy RUN_DIR [--group 16]
    python -m torch.distributed.run --nproc_per_node 2 -m quadmix_stream.trainers.proxy RUN_DIR

Rank 0 lists the pending proxies and broadcasts the list; rank r trains ``pending[r::world]``
(on ``cuda:LOCAL_RANK`` when there is a GPU, several at once with ``--group``) and writes each
result atomically into the run folder as soon as it ends. After a barrier rank 0 rebuilds
``results.jsonl`` and prints the throughput of all ranks. Without torchrun it is a single rank.
Killed? Run the same command again: finished proxies are skipped, unfinished ones are redone.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m quadmix_stream.trainers.proxy", description=__doc__)
    p.add_argument("run_dir")
    p.add_argument(
        "--dataset", help="the dataset's current folder or URL, if it moved (fingerprint checked)"
    )
    p.add_argument("--group", type=int, help="proxies trained at once per rank (default: recipe)")
    p.add_argument("--device", help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--threads", type=int, help="torch threads per rank")
    p.add_argument("--limit", type=int, help="train at most this many proxies per rank")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from quadmix_stream.search.runfolder import RunFolder
    from quadmix_stream.search.runner import run_pending

    a = parse(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (a.device is None or a.device.startswith("cuda"))
    device = a.device or (f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    distributed = world > 1
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        folder = RunFolder(a.run_dir, a.dataset)
        box = [folder.pending() if rank == 0 else None]
        if distributed:
            dist.broadcast_object_list(box, src=0)
        log = (lambda s: print(f"[rank {rank}] {s}", flush=True)) if world > 1 else print
        summary = run_pending(
            folder,
            rank=rank,
            world=world,
            group=a.group,
            device=device,
            threads=a.threads,
            limit=a.limit,
            progress=log,
            pending=box[0],
        )
        summaries = [summary]
        if distributed:
            summaries = [None] * world
            dist.all_gather_object(summaries, summary)
        if rank == 0:
            folder.consolidate()
            trained = sum(s["trained"] for s in summaries)
            wall = max(s["seconds"] for s in summaries)
            rate = f"{3600 * trained / wall:.0f} proxies/hour" if wall > 0 else "nothing to do"
            print(
                f"trained {trained} proxies on {world} rank(s) in {wall:.1f}s: {rate} "
                f"(per rank: {[s['trained'] for s in summaries]})",
                flush=True,
            )
    finally:
        gc.collect()  # proxies' models and optimisers are gone before the process group is
        if distributed:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
