"""How many shards a consumer reads at a time (``shuffle_block_shards``).

A consumer (rank × worker) emits its shards one window at a time, interleaved, and fetches the
next window's shards while it emits this one: from object storage up to two windows of whole
shards per consumer sit in the node-local cache at once. Larger windows mix documents more, so
``"auto"`` takes :data:`MIX_WINDOW` shards, unless that many would not fit the cache: then the
largest window that does.

Whatever the spec, a window holds at most ``max_docs`` documents (:data:`WINDOW_DOCS` by
default) as far as whole shards allow: a consumer holds its window's item ids and labels
(~50 bytes per document), so a window of 16 shards of 100k-row shards would cost ~80 MB per
consumer while 16 shards of 500 rows cost 0.4 MB. Shard counts are what a window is dealt in,
so the bound is on the mean shard's rows.

A pure function of the manifest's shard sizes and rows, the cache limit and the consumers on
the node, so every rank of a launch computes the same window (a different launch may compute
another: a resume re-deals the remainder exactly, see :mod:`quadmix_stream.stream.state`).
"""

from __future__ import annotations

from collections.abc import Sequence

#: shards per window when nothing bounds it: documents of 256 shards mix
MIX_WINDOW = 256
#: windows in flight per consumer: the one being emitted and the one being prefetched
IN_FLIGHT = 2
#: documents a window holds at most by default (~25 MB per consumer)
WINDOW_DOCS = 1 << 19


def is_window(x: object) -> bool:
    """Whether ``x`` is a valid ``shuffle_block_shards``: a whole number ≥ 1, ``"auto"`` or
    ``None`` (a consumer's whole share is one window)."""
    if x is None or x == "auto":
        return True
    return isinstance(x, int | float) and not isinstance(x, bool) and x >= 1 and int(x) == x


def fit_window(
    shard_bytes: Sequence[int],
    cache_limit: int | None,
    consumers_per_node: int,
    cap: int = MIX_WINDOW,
) -> int:
    """The largest window (≤ ``cap`` shards, ≥ 1) whose in-flight shards fit ``cache_limit``.

    Args:
        shard_bytes: size of every shard file (the manifest's ``shard_bytes``).
        cache_limit: bytes the node-local cache may hold; ``None``: no limit (``cap``).
        consumers_per_node: ranks on the node × DataLoader workers per rank (≥ 1 each).
        cap: the window when the cache does not bound it.
    """
    if cache_limit is None or not shard_bytes:
        return cap
    mean = max(1.0, sum(shard_bytes) / len(shard_bytes))
    per_window = IN_FLIGHT * max(1, consumers_per_node) * mean
    return int(max(1, min(cap, cache_limit // per_window)))


def auto_window(
    shard_bytes: Sequence[int],
    remote: bool,
    cache_limit: int | None,
    consumers_per_node: int,
) -> tuple[int, str | None]:
    """``"auto"``: (window, a line to log when it is not :data:`MIX_WINDOW` or does not fit).

    A local dataset is read in place (nothing is cached), so it always gets :data:`MIX_WINDOW`.
    """
    if not remote:
        return MIX_WINDOW, None
    w = fit_window(shard_bytes, cache_limit, consumers_per_node)
    if w == MIX_WINDOW:
        return w, None
    mean_mb = sum(shard_bytes) / len(shard_bytes) / 2**20
    need = IN_FLIGHT * max(1, consumers_per_node) * w * mean_mb
    fits = need <= (cache_limit or 0) / 2**20
    line = (
        f"shuffle_block_shards auto: {w} shards per window (not {MIX_WINDOW}) so that "
        f"{IN_FLIGHT} windows × {consumers_per_node} consumers on this node × {mean_mb:.1f} MiB "
        f"per shard = {need:,.0f} MiB fit cache_limit ({(cache_limit or 0) / 2**20:,.0f} MiB)"
    )
    if not fits:
        line += (
            "; even one shard per window does not fit: raise data.cache_limit, or use fewer "
            "workers or smaller shards"
        )
    return w, line


def bound_window(
    window: int, shard_rows: Sequence[int], max_docs: int | None
) -> tuple[int, str | None]:
    """``window`` shards, or fewer so that a window of mean-sized shards holds at most
    ``max_docs`` documents (``None``: no bound); with a line saying so when it lowers it."""
    if max_docs is None or not shard_rows:
        return window, None
    mean = max(1.0, sum(shard_rows) / len(shard_rows))
    w = int(max(1, min(window, max_docs // mean)))
    if w == window:
        return w, None
    return w, (
        f"shuffle_block_shards: {w} shards per window (not {window}) so that a window holds at "
        f"most {max_docs:,} documents ({mean:,.0f} per shard; max_window_docs sets it)"
    )
