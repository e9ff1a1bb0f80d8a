"""The reference trainer's command line, shared with ``quadmix-stream train`` (argparse only)."""

from __future__ import annotations

import argparse


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """The trainer's command-line arguments (here and in ``quadmix-stream train``)."""
    ap.add_argument("recipe", help="YAML recipe (sections data, model, train, logging, out)")
    ap.add_argument("--out", help="run folder (default: the recipe's `out`)")
    ap.add_argument(
        "--params",
        help="switch to a new params.json: the rest of the epoch follows it, and later plain "
        "resumes keep it (the params in force are part of each checkpoint)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        help="override train.steps; on a resume the LR schedule keeps the length it was planned "
        "with (the floor after it) unless --replan-lr",
    )
    ap.add_argument(
        "--replan-lr",
        action="store_true",
        help="with --steps on a resume: stretch the cosine decay to the new train.steps",
    )
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
