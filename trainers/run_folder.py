"""The pretraining run folder: claimed by one trainer, checkpoints written atomically.

``OUT/.lock`` holds one trainer per folder; ``OUT/checkpoints/step-NNNNNNNN.pt`` holds the model,
optimiser, scheduler, step and loader state (rank 0 writes; every rank takes part in gathering
the loader state). A failed write (disk full) stops every rank with the file's name and keeps the
previous checkpoints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from quadmix_stream.trainers.runlog import RunLogger, redact_record
from quadmix_stream.training.runguard import (
    OutputError,
    RunLock,
    check_writable,
    remove_stale_tmp,
    write_file_atomic,
)


def log_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(redact_record(record)) + "\n")


def checkpoints(out: Path) -> list[Path]:
    """The folder's checkpoints, oldest first."""
    found = [
        p for p in (out / "checkpoints").glob("step-*.pt") if re.fullmatch(r"step-\d+\.pt", p.name)
    ]
    return sorted(found, key=lambda p: int(p.stem.split("-")[1]))


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file + rename; an error (disk full) names the file."""
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
            # left by a killed writer; the lock says none is running. OUT may hold the user's
            # files too (only our temporary names go); checkpoints/ holds only ours
            remove_stale_tmp(out)
            remove_stale_tmp(out / "checkpoints", own_folder=True)
        except OutputError as e:
            err = str(e)
    agree_on_error(err)
    return lock


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
    lr_steps: int | None = None,
    control: dict | None = None,
) -> None:
    """Model, optimiser, scheduler (and ``lr_steps``, the length it is planned over), step,
    the loader (each rank's own + the global state, which holds the params in force) and the
    params controller's state (``control``: its ``state_dict`` and the params it has pending).

    A failed write (disk full) raises :class:`OutputError` naming the file on every rank (not
    only on rank 0, whose peers would otherwise die in a collective with a gloo/NCCL error);
    the previous checkpoints stay, and no temporary file is left.
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
        if lr_steps is not None:
            ck["lr_steps"] = lr_steps
        if control is not None:
            ck["control"] = control
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
