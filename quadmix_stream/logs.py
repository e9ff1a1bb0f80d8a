"""The library's one log: every message goes through the ``quadmix_stream`` logger.

Imported as a library it is quiet (a ``NullHandler``: nothing reaches stderr unless the
application configures logging). The command line and the trainer call :func:`show`, which
prints INFO and above on stderr as plain lines. A training script that embeds the loader routes
or silences it the usual way::

    logging.getLogger("quadmix_stream").setLevel(logging.WARNING)   # only warnings
    logging.getLogger("quadmix_stream").addHandler(my_handler)       # into your own log
"""

from __future__ import annotations

import logging
import sys
from typing import IO

ROOT = "quadmix_stream"
_HANDLER_NAME = "quadmix_stream.console"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (tools and tests replace it)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def show(level: int = logging.INFO) -> None:
    """Print the library's messages at ``level`` and above on stderr as plain lines."""
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    if any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        return
    handler = _Stderr()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.propagate = False  # shown here; not a second time by a root handler
