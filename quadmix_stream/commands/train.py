"""``quadmix-stream train``: the reference trainer (``trainers/pretrain.py``) on ``--nproc`` ranks.

The recipe, the params file, the dataset's manifest and the evaluation sets are checked here,
in seconds and before any rank starts, so a mistake in them is one line. The ranks then run under
torchrun's elastic agent in this process: a rank's own error is one line from rank 0, and a
failed run ends with one line saying so instead of the agent's report.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid

from quadmix_stream.errors import UserError
from quadmix_stream.trainers.args import add_run_arguments

ENTRY = "quadmix_stream.trainers.pretrain"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="pretrain a small LM on a QuaDMix stream (torchrun ranks; kill it and rerun to resume)",
        description=(
            "Train the reference model of a recipe (sections data, model, train, logging, out) on "
            "a QuaDMix stream, with --nproc torchrun ranks on this machine. Checkpoints go to the "
            "run folder; the same command resumes from the latest one (also on another --nproc). "
            "On several nodes, launch the trainer with torchrun yourself: "
            f"torchrun --nnodes N ... -m {ENTRY} RECIPE."
        ),
    )
    add_run_arguments(p)
    p.add_argument("--nproc", type=int, default=1, help="ranks on this machine (default 1)")
    p.set_defaults(func=_train)


def _train(a: argparse.Namespace) -> int:
    from quadmix_stream.trainers.pretrain import check_inputs, load_config, micro_batches, overrides

    if a.nproc < 1:
        raise UserError(f"--nproc: at least 1, got {a.nproc}")
    cfg = load_config(a.recipe, overrides(a.params, a.steps))
    check_inputs(cfg)
    micro_batches(cfg.train, a.nproc)
    args = ["-m", ENTRY, a.recipe]
    for flag, value in (("--out", a.out), ("--params", a.params), ("--steps", a.steps)):
        if value is not None:
            args += [flag, str(value)]
    if a.no_resume:
        args.append("--no-resume")
    if a.replan_lr:
        args.append("--replan-lr")
    return _launch(a.nproc, args)


def _launch(nproc: int, args: list[str]) -> int:
    """Run ``python ARGS`` on ``nproc`` local ranks under torchrun's elastic agent."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # what `torchrun --standalone` uses: a free port
        max_restarts=0,
    )
    # the agent reports a failed rank with a page of its own; the rank said what went wrong
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)(*args)
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        print(
            f"quadmix-stream train: the trainer stopped (exit {code}); its output is above",
            file=sys.stderr,
        )
        return code if code > 0 else 1
    return 0
