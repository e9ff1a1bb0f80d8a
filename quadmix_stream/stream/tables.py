"""A labelled pool seen one shard at a time, with its small global tables (docs/design.md, "The stream").

:class:`PoolTables` is what every process of the stream holds about the pool: the manifest's
per-shard metadata, the σ tables, the Eq. 2 reference (bounded sample) and, per epoch, one item
total per shard. Everything of size O(pool documents) stays on disk: a shard's labels are read
when that shard is needed and dropped after. The three pool-wide passes (domain sizes, the
reference, an epoch's per-shard totals) run once per node through :func:`cache.cooperative`,
split over every process that needs them, and are cached by (dataset, params, rank config, seed,
epoch), so a start, an epoch boundary or a resume with warm caches reads a few small files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.formats.labels import (
    LabelError,
    Manifest,
    ShardLabels,
    read_shard_labels,
    shard_starts,
)
from quadmix_stream.mixing.hashing import SALT_SAMPLE, hash64
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.sampling import realize
from quadmix_stream.storage.cache import (
    Throttle,
    cooperative,
    release_free_memory,
    result_path,
)
from quadmix_stream.storage.io import atomic_write_bytes, default_cache_dir, map_bytes
from quadmix_stream.storage.store import Store, as_store
from quadmix_stream.stream.kept import SPARSE, KeptFile, RowLabels, records, write_kept
from quadmix_stream.stream.order import MAX_COPIES
from quadmix_stream.stream.selection import (
    RankConfig,
    RankModel,
    Reference,
    expected_of,
    mixture_sums,
    reference_threshold,
    sigma_scores,
)

log = logging.getLogger(__name__)

CHUNK_ROWS = 1 << 21  # rows per chunk of a pool-wide pass (each chunk is one unit of work)


class PoolTables:
    """Per-shard labels and counts, and the pool's global tables, for one labelled dataset.

    Args:
        root: dataset folder, URL or :class:`Store`.
        manifest: its manifest.
        config: how Eq. 2 is computed.
        cache_dir: where pool-wide results are cached (default :func:`default_cache_dir`); a
            node-local folder is right: each node computes what it needs once.
        verify_shards: hash each shard file on its first use in this process.
    """

    def __init__(
        self,
        root: str | Path | Store,
        manifest: Manifest,
        config: RankConfig = RankConfig(),
        cache_dir: str | Path | None = None,
        verify_shards: bool = False,
    ) -> None:
        self.root, self.manifest, self.config = as_store(root), manifest, config
        self.verify_shards = verify_shards
        self.n_shards = len(manifest.shards)
        if not self.n_shards:
            raise LabelError(f"{root}: the manifest lists no shards")
        self.shard_start = shard_starts(manifest)
        self.folder = Path(cache_dir or default_cache_dir()) / "pools" / manifest.fingerprint()
        per = max(1, CHUNK_ROWS // max(1, int(np.diff(self.shard_start).max())))
        self.chunk_bounds = list(range(0, self.n_shards, per)) + [self.n_shards]
        self._labels: OrderedDict[int, ShardLabels] = OrderedDict()
        self.keep_shards = 8  # shards whose labels stay in memory (LRU)
        self._counts: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._count_files: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._kept_files: OrderedDict[Path, KeptFile | None] = OrderedDict()
        self._read_labels: OrderedDict[tuple, RowLabels] = OrderedDict()
        self._models: dict[bytes, RankModel] = {}
        self._totals: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._sizes: np.ndarray | None = None

    def fork(self) -> PoolTables:
        """A copy with caches of its own (for a background thread)."""
        other = PoolTables.__new__(PoolTables)
        other.__dict__ = self.__getstate__()
        other._models, other._totals = {}, OrderedDict()
        return other

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)  # spawn workers: ship the small tables, not the shard caches
        for name in ("_labels", "_counts", "_count_files", "_kept_files", "_read_labels"):
            d[name] = OrderedDict()
        return d

    # ------------------------------------------------------------ one shard
    def shard_of_row(self, row: int) -> tuple[int, int]:
        """(shard, row within it) of a global row."""
        s = int(np.searchsorted(self.shard_start, row, side="right") - 1)
        return s, int(row - self.shard_start[s])

    def labels(self, shard: int) -> ShardLabels:
        """The validated labels of one shard (a few recent shards are kept)."""
        return _lru(
            self._labels,
            shard,
            self.keep_shards,
            lambda: read_shard_labels(self.root, self.manifest, shard, self.verify_shards),
        )

    def read_labels(self, shard: int, params: SamplingParams, seed: int, epoch: int) -> RowLabels:
        """The labels the stream reads of one shard's documents with items in ``epoch``.

        A sparse selection's come from the node cache's kept labels (:mod:`.kept`), written by
        the epoch's totals pass, so the sidecar is not read again; otherwise, or with
        ``verify_shards``, from the sidecar. A few recent shards are kept.
        """

        def load() -> RowLabels:
            kept = None if self.verify_shards else self._kept(shard, params, seed, epoch)
            return kept or RowLabels.of(self.labels(shard))

        key = (shard, params.fingerprint(), seed, epoch)
        return _lru(self._read_labels, key, self.keep_shards, load)

    def _kept(self, shard: int, params: SamplingParams, seed: int, epoch: int) -> RowLabels | None:
        i = int(np.searchsorted(self.chunk_bounds, shard, side="right") - 1)
        path = self._counts_dir(params, seed, epoch) / f"{i}.kept"

        def load() -> KeptFile | None:
            try:
                return KeptFile(path, len(self._chunk(i)))
            except (OSError, ValueError):  # not sparse, not written (yet), pruned, or damaged
                return None

        kept = _lru(self._kept_files, path, 2, load)
        if kept is None:
            return None
        return kept.labels(shard - self.chunk_bounds[i], self.counts(shard, params, seed, epoch))

    def expected(self, shard: int, params: SamplingParams) -> np.ndarray:
        """S(x) of every document of a shard."""
        lab = self.labels(shard)
        sig = sigma_scores(lab.scores, self.manifest)
        return expected_of(sig, lab.domain, params, self.rank_model(params))

    def counts(self, shard: int, params: SamplingParams, seed: int, epoch: int) -> np.ndarray:
        """Realised copies c(x) (uint8) of every document of a shard in ``epoch``.

        From memory, else from the node cache that the epoch's totals pass wrote (no labels read,
        no S(x) computed), else computed from the shard's labels.
        """

        def load() -> np.ndarray:
            c = self._cached_counts(shard, params, seed, epoch)
            return c if c is not None else self._compute_counts(shard, params, seed, epoch)

        return _lru(self._counts, (shard, params.fingerprint(), seed, epoch), 16, load)

    def _compute_counts(self, shard: int, params: SamplingParams, seed: int, epoch: int):
        lab = self.labels(shard)
        c = realize(self.expected(shard, params), lab.key, seed, epoch)
        if c.size and c.max() > MAX_COPIES:
            raise UserError(
                f"shard {self.manifest.shards[shard].name!r}: a document gets {int(c.max())} "
                f"copies under these params; at most {MAX_COPIES} are supported (lower η)"
            )
        return c.astype(np.uint8)

    # ------------------------------------------------------------ counts in the node cache
    def _counts_dir(self, params: SamplingParams, seed: int, epoch: int) -> Path:
        name = f"counts-{params.fingerprint()}-{self.config.fingerprint()}-s{seed}-e{epoch}"
        return self.folder / name

    def _cached_counts(self, shard: int, params: SamplingParams, seed: int, epoch: int):
        """The shard's counts from its chunk's file (one byte per document), or None."""
        i = int(np.searchsorted(self.chunk_bounds, shard, side="right") - 1)
        path = self._counts_dir(params, seed, epoch) / f"{i}.u8"
        first, last = self.chunk_bounds[i], self.chunk_bounds[i + 1]
        chunk = self._count_files.get(path)
        if chunk is None:
            try:  # mapped once per chunk: the page cache is shared by the node's processes
                chunk = map_bytes(path)
            except (OSError, ValueError):  # not written (yet), pruned, or empty: compute instead
                return None
            # a file of another length is not this chunk's counts (the cache was damaged)
            if chunk.size != self.shard_start[last] - self.shard_start[first]:
                return None
            self._count_files[path] = chunk
            if len(self._count_files) > 2:
                self._count_files.popitem(last=False)
        offset = int(self.shard_start[shard] - self.shard_start[first])
        return np.array(chunk[offset : offset + int(self.manifest.shards[shard].rows)])

    def _write_counts(self, params, seed: int, epoch: int, i: int, parts: list[np.ndarray]):
        folder = self._counts_dir(params, seed, epoch)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / f"{i}.u8", b"".join(p.tobytes() for p in parts))
        except OSError as e:  # a full disk, or the set pruned meanwhile: consumers compute them
            log.debug("counts of chunk %d not cached: %s", i, e)

    def _prune_counts(self, keep: int = 6) -> None:
        """Keep the newest ``keep`` sets of cached counts (1 byte per pool document each)."""
        sets = sorted(self.folder.glob("counts-*"), key=_mtime, reverse=True)
        for old in sets[keep:]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------ global tables
    def _pass(self, name: str, compute, combine) -> dict[str, np.ndarray]:
        n = len(self.chunk_bounds) - 1
        t0 = time.monotonic()
        say = Throttle(log.info, 5.0)

        def progress(done: int, total: int) -> None:
            say(
                f"quadmix-stream: {name}: {done} chunks of {total} done here ({time.monotonic() - t0:.0f} s)"
            )

        return cooperative(self.folder, name, n, compute, combine, progress)

    def _chunk(self, i: int) -> range:
        return range(self.chunk_bounds[i], self.chunk_bounds[i + 1])

    def _chunk_rows(self, i: int) -> int:
        return int(
            self.shard_start[self.chunk_bounds[i + 1]] - self.shard_start[self.chunk_bounds[i]]
        )

    def domain_sizes(self) -> np.ndarray:
        """(M,) documents per domain in the pool (one cached pool-wide pass)."""
        if self._sizes is None:
            m = len(self.manifest.domains)

            def compute(i: int) -> dict[str, np.ndarray]:
                tot = np.zeros(m, dtype=np.int64)
                for s in self._chunk(i):
                    tot += np.bincount(self.labels(s).domain, minlength=m)
                return {"sizes": tot}

            def combine(parts: list[dict]) -> dict[str, np.ndarray]:
                return {"sizes": np.sum([p["sizes"] for p in parts], axis=0)}

            self._sizes = self._pass("domains", compute, combine)["sizes"]
        return self._sizes

    def reference(self) -> Reference:
        """The Eq. 2 reference sample (one cached pool-wide pass; O(domains × sample) rows).

        Not kept in memory: only the rank models built from it are (a table per sampled domain).
        """
        sizes = self.domain_sizes()
        thr = reference_threshold(sizes, self.config.per_domain)
        n_s = len(self.manifest.scorers)

        def compute(i: int) -> dict[str, np.ndarray]:
            sig, dom, tok = (
                [np.zeros((0, n_s))],
                [np.zeros(0, np.int64)],
                [np.zeros(0, np.int64)],
            )
            for s in self._chunk(i):
                lab = self.labels(s)
                h = hash64(lab.key, SALT_SAMPLE)
                pick = np.flatnonzero(h <= thr[lab.domain.astype(np.int64)])
                sig.append(sigma_scores(lab.scores[pick], self.manifest))
                dom.append(lab.domain[pick].astype(np.int64))
                tok.append(lab.tokens[pick].astype(np.int64))
            return {
                "sigma": np.concatenate(sig),
                "domain": np.concatenate(dom),
                "tokens": np.concatenate(tok),
            }

        def combine(parts: list[dict]) -> dict[str, np.ndarray]:
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        r = self._pass(f"reference-{self.config.fingerprint()}", compute, combine)
        return Reference(
            sigma=r["sigma"].reshape(-1, n_s),
            domain=r["domain"],
            tokens=r["tokens"],
            domain_sizes=sizes,
        )

    def rank_model(self, params: SamplingParams) -> RankModel:
        """Eq. 2's rank function under ``params``, built once per node and α (node cache)."""
        # Eq. 2 depends on α alone (the quality merge): params that differ only in λ, ω, η, ε
        # (a controller's switches scale η and ε) share one model
        key = params.alpha.tobytes()
        if key not in self._models:
            if len(self._models) >= 4:
                self._models.pop(next(iter(self._models)))
            name = f"rank-model-{self.config.fingerprint()}-{hashlib.sha256(key).hexdigest()[:16]}"
            # one chunk: the first process on the node builds it, the others (its ranks and
            # DataLoader workers, and later runs) load it instead of sorting the reference
            arrays = cooperative(
                self.folder,
                name,
                1,
                lambda _: RankModel.build(self.reference(), params, self.config).to_arrays(),
                lambda parts: parts[0],
            )
            self._models[key] = RankModel.from_arrays(arrays)
            release_free_memory()  # the reference is transient: only the model stays
        return self._models[key]

    def totals(self, params: SamplingParams, seed: int, epoch: int) -> np.ndarray:
        """(n_shards,) items of each shard in ``epoch`` (one cached pool-wide pass per epoch)."""
        key = (params.fingerprint(), seed, epoch)
        t = self._totals.get(key)
        if t is None:

            def compute(i: int) -> dict[str, np.ndarray]:
                # the counts are a by-product: kept in the node cache, every consumer reads its
                # shards' counts from there instead of recomputing them from the labels; so are
                # a sparse selection's kept labels (.kept), while the chunk stays sparse
                parts, kept, room = [], [], self._chunk_rows(i) // SPARSE
                for s in self._chunk(i):
                    parts.append(self._compute_counts(s, params, seed, epoch))
                    room -= np.count_nonzero(parts[-1])
                    if room >= 0:
                        kept.append(records(self.labels(s), parts[-1]))
                self._write_counts(params, seed, epoch, i, parts)
                if room >= 0:
                    write_kept(self._counts_dir(params, seed, epoch) / f"{i}.kept", kept)
                return {"totals": np.array([int(p.sum(dtype=np.int64)) for p in parts])}

            def combine(parts: list[dict]) -> dict[str, np.ndarray]:
                return {"totals": np.concatenate([p["totals"] for p in parts])}

            name = self._totals_name(params, seed, epoch)
            t = self._pass(name, compute, combine)["totals"]
            if t.shape != (self.n_shards,):
                raise OSError(
                    f"{self.folder / name}.npz: wrong shape {t.shape}; delete it to recompute"
                )
            self._totals[key] = t
            self._prune_counts()
            if len(self._totals) > 4:
                self._totals.popitem(last=False)
        return t

    def _totals_name(self, params: SamplingParams, seed: int, epoch: int) -> str:
        return f"totals-{params.fingerprint()}-{self.config.fingerprint()}-s{seed}-e{epoch}"

    def has_totals(self, params: SamplingParams, seed: int, epoch: int) -> bool:
        """Whether ``epoch``'s totals are in memory or in the node cache already."""
        if (params.fingerprint(), seed, epoch) in self._totals:
            return True
        return result_path(self.folder, self._totals_name(params, seed, epoch)).exists()

    def mixture(
        self, params: SamplingParams, seed: int, epoch: int | None
    ) -> dict[str, np.ndarray]:
        """Per-domain documents, tokens and unique documents: expected (``epoch=None``) or
        realised in ``epoch`` (one cached pool-wide pass)."""
        m = len(self.manifest.domains)

        def compute(i: int) -> dict[str, np.ndarray]:
            tot = {k: np.zeros(m) for k in ("docs", "tokens", "unique_docs")}
            for s in self._chunk(i):
                lab = self.labels(s)
                w = (
                    self.expected(s, params)
                    if epoch is None
                    else self.counts(s, params, seed, epoch).astype(np.float64)
                )
                part = mixture_sums(lab.domain, lab.tokens, w, m, realised=epoch is not None)
                for k in tot:
                    tot[k] += part[k]
            return tot

        def combine(parts: list[dict]) -> dict[str, np.ndarray]:
            return {k: np.sum([p[k] for p in parts], axis=0) for k in parts[0]}

        when = "expected" if epoch is None else f"s{seed}-e{epoch}"
        name = f"mixture-{params.fingerprint()}-{self.config.fingerprint()}-{when}"
        return self._pass(name, compute, combine)

    def iter_counts(self, params: SamplingParams, seed: int, epoch: int):
        """(shard, labels, expected, counts) for every shard in order, one shard in memory."""
        for s in range(self.n_shards):
            yield s, self.labels(s), self.expected(s, params), self.counts(s, params, seed, epoch)


def _lru(cache: OrderedDict, key: Any, size: int, load: Callable[[], Any]) -> Any:
    """``cache[key]``, loaded on a miss; beyond ``size`` entries the least recently used go."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = load()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
