"""The ``quadmix-stream`` command line: one sub-command per step of the flow.

Each sub-command lives next to the code it runs and registers itself through a
``register(subparsers)`` function listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that add sub-commands, in the order ``--help`` lists them.
COMMANDS = [
    "quadmix_stream.commands.data",
    "quadmix_stream.commands.label",
    "quadmix_stream.commands.search",
    "quadmix_stream.commands.bench",
    "quadmix_stream.flow",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quadmix-stream",
        description=(
            "QuaDMix quality-diversity sampling on the fly in the PyTorch data loader.\n\n"
            "Flow: synth/label → inspect → search → train. Every command has its own --help."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        # Our errors name the file/shard/field; a traceback would bury that.
        print(f"quadmix-stream {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
