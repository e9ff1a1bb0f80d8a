"""Pick one of a few alternative algorithms by name from a small table of pure functions.

As mosaicml/streaming does for its shuffles (``algos = {...}``, ``get_shuffle(algo, ...)``):
each place with alternatives (the balancing of an epoch's tail in :mod:`quadmix_stream.stream.order`, the rank
method in :mod:`quadmix_stream.stream.selection`, the form of Eq. 3 in :mod:`.sampling`) keeps one name → function
table, and an unknown name is refused with the list of valid ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

from quadmix_stream.errors import UserError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def choose(table: Mapping[K, V], name: object, what: str, error: type[Exception] = UserError) -> V:
    """``table[name]``, or ``error`` naming ``what`` and every valid name.

    Args:
        table: the alternatives by name.
        name: the name asked for (anything: an unhashable one is refused like an unknown one).
        what: what is chosen, for the message (``"balance"``, ``"rank method"``).
        error: the exception class to raise.
    """
    try:
        return table[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise error(f"{what} must be one of {tuple(table)}, got {name!r}") from None
