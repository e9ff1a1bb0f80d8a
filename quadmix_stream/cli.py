"""The ``quadmix-stream`` command line: one sub-command per step of the flow.

Each sub-command lives next to the code it runs and registers itself through a
``register(subparsers)`` function listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable

from quadmix_stream.errors import UserError

#: Modules that add sub-commands, in the order ``--help`` lists them.
COMMANDS = [
    "quadmix_stream.commands.data",
    "quadmix_stream.commands.label",
    "quadmix_stream.commands.search",
    "quadmix_stream.commands.bench",
    "quadmix_stream.flow",
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


#: Error classes of modules this package does not own the class hierarchy of (they may not
#: derive from :class:`UserError`), by module, so none of them is imported just to be checked.
_USER_ERRORS_ELSEWHERE = {
    "quadmix_stream.state": ("StateError",),
    "quadmix_stream.search.config": ("SearchConfigError",),
    "quadmix_stream.search.runfolder": ("RunFolderError",),
    "quadmix_stream.search.data": ("SelectionError",),
}

#: Modules (owned elsewhere) whose own ``raise ValueError(...)`` report bad input but that do not
#: raise a ``UserError`` subclass yet. A plain ``ValueError`` whose innermost frame is in one of them
#: is shown as one line. Transitional: each should raise a ``UserError`` subclass and leave the list.
_PLAIN_VALUE_ERRORS_FROM = frozenset(
    {
        "quadmix_stream.packing",
        "quadmix_stream.tokenizer",
        "quadmix_stream.search.data",
        "quadmix_stream.search.features",
        "quadmix_stream.search.proxy",
        "quadmix_stream.search.regressor",
        "quadmix_stream.search.space",
        "quadmix_stream.trainers.pretrain",
    }
)

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
    ``ParamsError``, ``RecipeError``, ``LabelerError``, ...), the error classes listed in
    :data:`_USER_ERRORS_ELSEWHERE`, and OS errors about a named path (missing file, existing
    output, permissions). A plain ``ValueError`` raised in one of the modules of
    :data:`_PLAIN_VALUE_ERRORS_FROM` also counts (until they raise a ``UserError``); anything else
    (a plain ``ValueError`` elsewhere, ``KeyError``, ``IndexError``, ...) is a bug.
    """
    if isinstance(e, (UserError, *_USER_OS_ERRORS)):
        return True
    if type(e) is ValueError and _raised_in(e) in _PLAIN_VALUE_ERRORS_FROM:
        return True
    for mod, names in _USER_ERRORS_ELSEWHERE.items():
        m = sys.modules.get(mod)  # not imported: cannot have raised
        if m is not None and any(isinstance(e, getattr(m, n, ())) for n in names):
            return True
    return False


def _raised_in(e: BaseException) -> str:
    """Module name of the innermost frame of ``e``'s traceback (``""`` when unknown)."""
    tb = e.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def run_command(command: str, fn: Callable[[], object], debug: bool = False) -> int:
    """Run one sub-command and turn its exception into an exit status.

    A user error is one line ``quadmix-stream CMD: error: …`` (exit 2): its message names the
    file and the field, and a traceback would bury that. Any other exception is a bug: its full
    traceback is printed (exit 1). ``debug`` prints the traceback for user errors too.
    """
    try:
        return int(fn() or 0)
    except Exception as e:
        user = is_user_error(e)
        if not user or debug:
            traceback.print_exc(file=sys.stderr)
        if user:
            print(f"quadmix-stream {command}: error: {e}", file=sys.stderr)
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
    return run_command(args.command, lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
