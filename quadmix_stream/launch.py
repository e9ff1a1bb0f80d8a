"""Launching torchrun from Python (the CLI's --nproc options and the multi-process tests)."""

from __future__ import annotations

import sys


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N ARGS`` (one process: no torchrun)."""
    if nproc <= 1:
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
