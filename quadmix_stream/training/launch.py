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
