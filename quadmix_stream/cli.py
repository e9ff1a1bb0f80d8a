"""The ``quadmix-stream`` command line: one sub-command per step of the flow.

Each sub-command lives next to the code it runs and registers itself through a
``register(subparsers)`` function listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import traceback
from collections.abc import Callable

from quadmix_stream.errors import UserError
from quadmix_stream.extras import missing_extra
from quadmix_stream.logs import show
from quadmix_stream.storage.redact import redact

#: Modules that add sub-commands, in the order ``--help`` lists them.
COMMANDS = [
    "quadmix_stream.commands.data",
    "quadmix_stream.commands.label",
    "quadmix_stream.commands.search",
    "quadmix_stream.commands.train",
    "quadmix_stream.commands.bench",
    "quadmix_stream.flow.run",
]


DEBUG_HELP = "show the traceback of every error (by default errors in your input are one line)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quadmix-stream",
        description=(
            "QuaDMix quality-diversity sampling on the fly in the PyTorch data loader.\n\n"
            "Flow: synth/label → inspect → search → train. Every command has its own --help."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=DEBUG_HELP,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    _add_debug(sub)
    return parser


def _add_debug(sub: argparse._SubParsersAction) -> None:
    """``--debug`` after any (sub-)command name too, e.g. ``search fit RUN --debug``."""
    for p in sub.choices.values():
        # SUPPRESS: a sub-parser's default would overwrite a --debug given before the command
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


#: OS errors about a path the user named: one line is enough.
_USER_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is an expected error in the user's input (shown as one line).

    Expected: :class:`~quadmix_stream.errors.UserError` and its subclasses (``LabelError``,
    ``ParamsError``, ``RecipeError``, ``StateError``, ``MissingExtraError``, ...), raised where
    the problem is detected, and OS errors about a named path (missing file, existing output,
    permissions, a read-only or full disk). Anything else is a bug.
    """
    if isinstance(e, (UserError, *_USER_OS_ERRORS)):
        return True
    return isinstance(e, OSError) and e.errno in _USER_ERRNOS


#: errno values of an OSError the user can fix (a read-only or full disk, a path too long);
#: a denied path (EACCES) is a PermissionError, in _USER_OS_ERRORS.
_USER_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG})


def run_command(command: str, fn: Callable[[], object], debug: bool = False) -> int:
    """Run one sub-command and turn its exception into an exit status.

    A user error is one line ``quadmix-stream CMD: error: …`` (exit 2): its message names the
    file and the field, and a traceback would bury that. Any other exception is a bug: its full
    traceback is printed (exit 1). ``debug`` prints the traceback for user errors too.

    What is printed goes through :func:`~quadmix_stream.storage.redact.redact`: a message or a
    traceback that quotes an object-storage URL shows it without its credentials (userinfo,
    a presigned URL's signature).
    """
    try:
        try:
            return int(fn() or 0)
        except BrokenPipeError:  # `quadmix-stream inspect … | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
            return 0
        except ModuleNotFoundError as e:  # a package of an extra that is not installed
            hint = missing_extra(e)
            if hint is None:
                raise
            raise hint from e
    except Exception as e:
        user = is_user_error(e)
        if not user or debug:
            print(redact(traceback.format_exc()), end="", file=sys.stderr)
        if user:
            print(redact(f"quadmix-stream {command}: error: {e}"), file=sys.stderr)
            return 2
        print(
            f"quadmix-stream {command}: internal error ({type(e).__name__}); the traceback above "
            "is a bug report: please file it",
            file=sys.stderr,
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    show()
    return run_command(args.command, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
