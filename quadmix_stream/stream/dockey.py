"""The type of an item's ``key``: a plain ``int`` that PyTorch's default collate keeps as a list.

Document keys are unsigned 64-bit, so half of them do not fit the int64 tensor that
``default_collate`` builds from Python ints ("Overflow when unpacking long long"). Items carry
their key as :class:`DocKey`, an ``int`` subclass (equal, hashable and JSON-serialisable like the
int it holds) that ``default_collate`` collates into a list of keys, as
:func:`quadmix_stream.stream.dataset.collate_docs` does. Registering it uses the extension point that
``torch.utils.data.default_collate`` documents (``default_collate_fn_map``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class DocKey(int):
    """A document's unsigned 64-bit key (an ``int``)."""

    __slots__ = ()


def collate_keys(
    batch: Sequence[DocKey], *, collate_fn_map: dict[Any, Callable] | None = None
) -> list[int]:
    """Keys of a batch as a list (no tensor: uint64 keys overflow int64)."""
    return list(batch)


def _register() -> None:
    try:
        from torch.utils.data._utils.collate import default_collate_fn_map
    except ImportError:  # an older/newer torch without the registry: collate_docs still works
        return
    default_collate_fn_map.setdefault(DocKey, collate_keys)


_register()
