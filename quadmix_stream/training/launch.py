"""Launching torchrun from Python (the CLI's --nproc options and the multi-process tests)."""

from __future__ import annotations

import sys


def torchrun_command(nproc: int, *args: str, always: bool = False) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N ARGS``.

    One process runs without torchrun unless ``always`` (then it opens a process group too).
    """
    if nproc <= 1 and not always:
        return [sys.executable, *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *args,
    ]


def cpu_threads(requested: int | None = None) -> int:
    """Torch intra-op threads for this process: ``requested`` when set (> 0), else the cores this
    process may run on shared by the processes torchrun started on this node.

    Torch's default is every core of the machine in every process; with several ranks (or other
    jobs) on those cores, tiny models' multi-threaded ops then stall on each other (proxies ran
    6–10× slower than with one thread each).
    """
    import os

    if requested and requested > 0:
        return int(requested)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))
