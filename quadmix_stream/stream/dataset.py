"""QuaDMixDataset: the QuaDMix sampling function applied on the fly in a PyTorch IterableDataset.

Per epoch, every document's realised copies c(x) come from its labels, small global tables,
params, seed and epoch alone (:mod:`quadmix_stream.stream.tables`); the epoch's item order and each
consumer's (rank × DataLoader worker) contiguous share come from :mod:`quadmix_stream.stream.order`.
Only kept documents are ever read (decide before decode).
See :mod:`quadmix_stream.stream.state` for checkpointing and resuming.

Why one module of ~580 lines: what is left here is the one class whose iterator, resumable
state (``state_dict``/``load_state_dict``) and window reads share per-process instance state
(the live progress of the running iteration, the cached epoch sequences, the labels' LRU, the
background fetch and prefetch threads). Everything pure is already elsewhere: the order in
:mod:`.order`, the tables in :mod:`.tables`, state merging in :mod:`.state`, shard reading in
:mod:`quadmix_stream.formats`, files in :mod:`quadmix_stream.storage`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from quadmix_stream.errors import UserError
from quadmix_stream.formats import (
    ShardReader,
    ShardReadError,
    get_format,
    open_shard,
    read_error,
)
from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.formats.mds import mds_index
from quadmix_stream.mixing.hashing import doc_key, text_digest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.store import StorageConfig, StorageError, Store
from quadmix_stream.stream.consumed import capped_counts, untouched
from quadmix_stream.stream.dockey import DocKey
from quadmix_stream.stream.kept import RowLabels
from quadmix_stream.stream.order import (
    COPY_BITS,
    EpochSequence,
    Piece,
    balanced_length,
    consumer_range,
    full_epoch,
    get_balance,
    shard_items,
    shard_order,
    split_ids,
)
from quadmix_stream.stream.selection import RankConfig
from quadmix_stream.stream.state import (
    STATE_MARK,
    STATE_VERSION,
    StateError,
    check_complete,
    check_progress,
    find_states,
    merge_states,
    pieces_of,
    rebase,
    switches_of,
    validate_state,
)
from quadmix_stream.stream.tables import PoolTables
from quadmix_stream.stream.window import (
    IN_FLIGHT,
    WINDOW_DOCS,
    auto_window,
    bound_window,
    is_window,
)

READ_CHUNK = 4096  # items turned into Python objects at a time

#: an epoch's earlier switches: (params of the layer, pieces left at its end), oldest first
Switches = list[tuple[SamplingParams, list[Piece]]]


def _resolve_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None or not 0 <= rank < world_size:
            raise UserError(
                f"give both rank and world_size with 0 ≤ rank < world_size (got {rank}, {world_size})"
            )
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    # torchrun sets these before the process group exists (and in DataLoader workers it never does)
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class QuaDMixDataset(IterableDataset):
    """Stream a labelled dataset (MDS, WebDataset tar, JSONL.zst, Parquet or HF Arrow) through QuaDMix sampling.

    Each item is a dict: ``id``, ``text``, ``meta`` (the document's other fields), ``key`` (stable
    64-bit document key), ``row`` (global row in the dataset), ``domain`` (name), ``domain_id``,
    ``tokens``, ``copy`` (0-based copy index of this document in this epoch) and ``epoch``. Use
    :func:`collate_docs` as the DataLoader's ``collate_fn``, or
    :class:`quadmix_stream.stream.packing.PackedDataset` for token blocks.

    Memory per process is bounded by the shards in flight plus small tables (per-shard metadata,
    σ tables, Eq. 2's reference sample): the pool's labels are read one shard at a time, and the
    pool-wide passes (per-shard item totals of an epoch) run once per node, shared by every rank
    and worker through ``cache_dir`` (see :mod:`quadmix_stream.stream.tables`).

    Args:
        dataset: folder of a labelled dataset (has ``quadmix.json``).
        params: :class:`SamplingParams` or a path to params.json (checked against the dataset).
        seed: stream seed: draws and order are pure functions of (seed, epoch, document).
        infinite: stream epoch after epoch (no balancing needed); else one epoch per iteration
            (call :meth:`set_epoch` between epochs, as with ``DistributedSampler``).
        balance: finite mode only: ``"drop"`` (default) drops at most ``consumers − 1`` items at
            the epoch's tail so every rank and worker yields the same count (no DDP hang);
            ``"pad"`` instead adds as many items from the next epoch's order; ``None`` yields
            every item exactly c(x) times (counts may then differ by one between consumers).
        shuffle_block_shards: each consumer reads its own run of shards and emits them this many
            shard positions at a time, interleaved (documents of those shards mix; a
            document's copies spread apart). Larger mixes more; memory per consumer is one
            window's items (~16 bytes each). ``None``: the consumer's whole share is one window
            (memory ∝ its share of the pool: small pools only). ``"auto"``: 256 shards, or from
            object storage the largest window whose shards in flight (two windows per
            consumer) fit ``storage.cache_limit`` (see :mod:`quadmix_stream.stream.window`; the choice
            is in :attr:`window_note`). A number or ``"auto"`` is lowered to fit
            ``max_window_docs``.
        max_window_docs: the most documents a window holds (per consumer, ~50 bytes each),
            as far as whole shards allow: with large shards a window is fewer shards. ``None``:
            no bound.
        consumers_per_node: with ``"auto"``: readers sharing this node's cache (ranks on the
            node × DataLoader workers); default ``LOCAL_WORLD_SIZE`` (else 1) × 1 worker.
        rank, world_size: explicit distributed position (default: torch.distributed, else the
            ``RANK``/``WORLD_SIZE`` environment, else a single process).
        resume_with_new_params: accept a loader state saved under other params (the remainder of
            the epoch then follows ``params``); otherwise such a state is refused.
        count_consumed_copies: at a switch of params mid-epoch, count the copies each document
            already had in the epoch against the new params' counts, so none gets more than the
            params in force allow (:mod:`quadmix_stream.stream.consumed`). Off: a document whose
            count the new params lower may get up to its old count that epoch. The choice is
            recorded in the loader state; a state with counted switches needs it on.
        rank_config: how Eq. 2 is computed (exact per domain when it fits the reference sample,
            else a rank table).
        verify_documents: check each document read against the text checksum its sidecar
            recorded at labelling (XXH3, about 1 µs per document): a shard changed in place (bit
            rot, zeroed bytes, an edited letter) stops the stream with the shard and row named.
            Sidecars written before checksums existed have none; their documents are not checked.
        verify_shards: also hash each whole shard file on its first use in each process (local
            datasets; remote shards are hashed when fetched whole).
        cache_dir: where pool-wide tables are cached (default ``$QUADMIX_CACHE`` or
            ~/.cache/quadmix-stream); node-local is right.
        storage: how a remote dataset (``s3://…``, ``gs://…``) is read: local cache folder and
            its size limit, retries, when to read byte ranges (:class:`StorageConfig`). Each
            consumer fetches the shards of its next window while the current one streams.
    """

    def __init__(
        self,
        dataset: str | Path,
        params: SamplingParams | str | Path,
        seed: int = 0,
        *,
        infinite: bool = False,
        balance: str | None = "drop",
        shuffle_block_shards: int | str | None = 16,
        max_window_docs: int | None = WINDOW_DOCS,
        consumers_per_node: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        resume_with_new_params: bool = False,
        count_consumed_copies: bool = False,
        rank_config: RankConfig = RankConfig(),
        verify_documents: bool = True,
        verify_shards: bool = False,
        cache_dir: str | Path | None = None,
        storage: StorageConfig | None = None,
    ) -> None:
        super().__init__()
        get_balance(balance)  # an unknown name is refused here, listing the valid ones
        if not is_window(shuffle_block_shards):
            raise UserError(
                f"shuffle_block_shards must be ≥ 1, 'auto' or None, got {shuffle_block_shards!r}"
            )
        self.store = Store(dataset, storage)
        self.root = self.store.url  # for messages
        self.manifest = Manifest.load(self.store)
        get_format(self.manifest.format).prepare()
        #: why the window is not what was asked (``"auto"``: not 256 shards); ``None``: it is
        self.window_note: str | None = None
        if shuffle_block_shards == "auto":
            node = consumers_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            shuffle_block_shards, self.window_note = auto_window(
                [s.shard_bytes for s in self.manifest.shards],
                self.store.remote,
                self.store.limit if self.store.remote else None,
                node,
            )
        self.params = params if isinstance(params, SamplingParams) else SamplingParams.load(params)
        self.params = self._aligned(self.params)
        self.seed, self.infinite, self.balance = int(seed), bool(infinite), balance
        # None: a consumer's whole range is one window (memory ∝ its share: small pools only)
        self.block_shards = int(shuffle_block_shards or len(self.manifest.shards) or 1)
        if shuffle_block_shards is not None:
            self.block_shards, bounded = bound_window(
                self.block_shards, [s.rows for s in self.manifest.shards], max_window_docs
            )
            self.window_note = bounded or self.window_note
        self.rank, self.world_size = _resolve_world(rank, world_size)
        self.resume_with_new_params = resume_with_new_params
        self.count_consumed_copies = bool(count_consumed_copies)
        self.rank_config = rank_config
        self.verify_documents = bool(verify_documents)
        self.epoch = 0
        self.fingerprint = self.manifest.fingerprint()
        self.tables = PoolTables(self.store, self.manifest, rank_config, cache_dir, verify_shards)
        # the labels of the window being read (and from object storage of the next one): the
        # window's reads hold them anyway; more would grow memory with large shards
        self.tables.keep_shards = (IN_FLIGHT if self.store.remote else 1) * self.block_shards + 2
        self._resume: dict | None = None
        self._rebased: tuple[int, dict[str, list], dict[int, Switches]] | None = None
        self._mds: dict[str, dict] | None = None  # MDS index.json entries, read once per process
        self._live: dict | None = None  # progress of the iteration running in this process
        self._sequences: OrderedDict[tuple, EpochSequence] = OrderedDict()
        self._prefetch: threading.Thread | None = None
        self._fetcher: ThreadPoolExecutor | None = None  # remote: the next window's shards
        self.reads = 0  # rows read by this process (decide-before-decode is testable)

    def _aligned(self, params: SamplingParams) -> SamplingParams:
        m = self.manifest
        if set(params.domains) == set(m.domains) and set(params.scorers) == set(m.scorer_names):
            params = params.reorder(m.domains, m.scorer_names)
        params.check_names(m.domains, m.scorer_names)
        return params

    def set_params(self, params: SamplingParams | str | Path) -> None:
        """Make ``params`` the params in force, for a switch mid-run.

        Call it between iterations, then :meth:`load_state_dict` the state taken at the switch
        point (every consumer's, gathered): the rest of the epoch is re-dealt under ``params``,
        nothing consumed comes back, and every rank and worker switches at that same point.
        :func:`quadmix_stream.loaders.stateful.switch_params` does all three for a
        ``StatefulDataLoader``.
        """
        new = params if isinstance(params, SamplingParams) else SamplingParams.load(params)
        self.params = self._aligned(new)
        self.resume_with_new_params = True

    # ------------------------------------------------------------ pickling for workers
    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_sequences"], d["_live"], d["_mds"], d["_prefetch"] = OrderedDict(), None, None, None
        d["_fetcher"] = None
        return d

    # ------------------------------------------------------------ the epoch's sequence
    def sequence(
        self,
        epoch: int,
        pieces: list[Piece] | None = None,
        params: SamplingParams | None = None,
        history: Switches | None = None,
    ) -> EpochSequence:
        """What is left of ``epoch`` (default: all of it) in key order, under ``params``.

        ``history``: the epoch's earlier switches whose consumed copies count against
        ``params`` (``count_consumed_copies``), as ``(params of the layer, pieces left at its
        end)``; shards a switch cut part-way deal only what that leaves
        (:func:`~quadmix_stream.stream.consumed.capped_counts`).
        """
        params = self.params if params is None else self._aligned(params)
        history = history or []
        ident = (
            epoch,
            params.fingerprint(),
            None if pieces is None else tuple(pieces),
            tuple((p.fingerprint(), tuple(cut)) for p, cut in history),
        )
        seq = self._sequences.get(ident)
        if seq is None:
            tables, seed = self.tables, self.seed
            order = shard_order(tables.n_shards, seed, epoch)
            position = np.empty_like(order)
            position[order] = np.arange(order.size)

            def items(shard: int) -> tuple[np.ndarray, np.ndarray]:
                counts = tables.counts(shard, params, seed, epoch)
                row0 = int(tables.shard_start[shard])
                q = int(position[shard])
                if history and not untouched(history[-1][1], q):
                    # earlier layers dealt rows these params drop: every row's key is needed
                    keys = tables.labels(shard).key
                    layers = [tables.counts(shard, p, seed, epoch) for p, _ in history]
                    cuts = [cut for _, cut in history]
                    counts = capped_counts(q, keys, row0, seed, epoch, [*layers, counts], cuts)
                    return shard_items(row0, keys, counts, seed, epoch)
                lab = tables.read_labels(shard, params, seed, epoch)
                if lab.row is not None:  # only the kept rows' labels
                    counts = counts[lab.row]
                return shard_items(row0, lab.key, counts, seed, epoch, lab.row)

            seq = EpochSequence(
                full_epoch(tables.n_shards) if pieces is None else pieces,
                order,
                tables.totals(params, seed, epoch),
                items,
            )
            self._sequences[ident] = seq
            if len(self._sequences) > 3:
                self._sequences.popitem(last=False)
        return seq

    def epoch_total(self, epoch: int) -> int:
        """Items of a whole ``epoch`` over all consumers (before balancing), from the cached totals."""
        return int(self.tables.totals(self.params, self.seed, epoch).sum())

    def counts(self, shard: int, epoch: int, params: SamplingParams | None = None) -> np.ndarray:
        """Realised copies (uint8) of each document of one shard in ``epoch``."""
        p = self.params if params is None else self._aligned(params)
        return self.tables.counts(shard, p, self.seed, epoch)

    # ------------------------------------------------------------ epochs and consumers
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + worker, self.world_size * workers

    # ------------------------------------------------------------ state
    def _base_state(self, consumers: int) -> dict:
        return {
            STATE_MARK: STATE_VERSION,
            "dataset": self.fingerprint,
            "seed": self.seed,
            "params": self.params.to_dict(),
            "params_fingerprint": self.params.fingerprint(),
            "rank_config": self.rank_config.fingerprint(),
            "consumers": consumers,
            "balance": self.balance,
            "infinite": self.infinite,
            "block_shards": self.block_shards,
            "count_consumed": self.count_consumed_copies,
        }

    def state_dict(self) -> dict:
        """This consumer's snapshot (inside a worker: that worker's; in-process: this rank's).

        Gather all of them with :func:`quadmix_stream.stream.checkpoint.gather_state` into one global state.
        """
        # not iterating yet: where this consumer *would* start (a loaded state re-dealt to it)
        return self._live_state(self._live if self._live is not None else self._start())

    def _start(self) -> dict:
        """This consumer's starting point: epoch, pieces left per epoch, items already consumed."""
        consumer, consumers = self._consumer()
        first, pieces, progress, history = self._resolve_resume(consumer, consumers)
        # finite: the epoch is the user's (set_epoch); a state only applies to the epochs it names
        epoch = first if self.infinite else self.epoch
        pe, done = progress.get(str(consumer), (epoch, 0))
        return {
            "consumer": consumer,
            "consumers": consumers,
            "epoch": max(epoch, pe),
            "consumed": done if pe >= epoch else 0,
            "pieces": pieces,
            "progress": progress,
            "history": history,
            "start_epoch": epoch,
        }

    def _live_state(self, live: dict) -> dict:
        st = self._base_state(live["consumers"])
        st.update(
            epoch=live["epoch"],
            pieces={
                str(e): [p.to_dict() for p in ps]
                for e, ps in live["pieces"].items()
                if int(e) >= live["epoch"]
            },
            progress={str(live["consumer"]): [live["epoch"], live["consumed"]]},
            consumer=live["consumer"],
        )
        history = {
            str(e): [{"params": p.to_dict(), "pieces": [x.to_dict() for x in cut]} for p, cut in sw]
            for e, sw in live["history"].items()
            if int(e) >= live["epoch"]
        }
        if history:  # only a run that counted a switch has it (older readers need not know it)
            st["history"] = history
        return st

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state (global, or one consumer's own); works before or between iterations.

        A state from another dataset is refused; one saved under other params is refused unless
        ``resume_with_new_params`` was set.
        """
        states = find_states(state)
        if not states:
            raise StateError("not a quadmix-stream loader state (no 'quadmix_state' marker found)")
        st = merge_states(states) if len(states) > 1 else dict(states[0])
        validate_state(st)
        if st["dataset"] != self.fingerprint:
            raise StateError(
                f"loader state is for dataset {st['dataset']}, this dataset is {self.fingerprint} "
                "(different shards, labels or scorers); start a fresh stream instead"
            )
        if (
            st["params_fingerprint"] != self.params.fingerprint()
            and not self.resume_with_new_params
        ):
            raise StateError(
                "loader state was saved under other params; pass resume_with_new_params=True to "
                "continue the epoch with the new params (what was consumed stays consumed)"
            )
        if st["seed"] != self.seed or st["rank_config"] != self.rank_config.fingerprint():
            raise StateError(
                f"loader state has seed={st['seed']}, rank_config={st['rank_config']}; this dataset "
                f"has seed={self.seed}, rank_config={self.rank_config.fingerprint()}"
            )
        if st.get("history") and not self.count_consumed_copies:
            raise StateError(
                "loader state counts consumed copies across its switches of params; pass "
                "count_consumed_copies=True (data.count_consumed_copies: true) until its epoch ends"
            )
        self._resume = st
        self._rebased = None
        self.epoch = int(st["epoch"])

    def _resolve_resume(
        self, consumer: int, consumers: int
    ) -> tuple[int, dict[int, list[Piece]], dict[str, list[int]], dict[int, Switches]]:
        """(start epoch, pieces left per epoch, progress, switches per epoch) for this consumer,
        re-dealt if needed."""
        st = self._resume
        if st is None:
            return self.epoch, {}, {}, {}
        history = {
            e: [(self._aligned(SamplingParams.from_dict(p)), cut) for p, cut in sw]
            for e, sw in switches_of(st).items()
        }
        same = (
            st["consumers"] == consumers
            and st["params_fingerprint"] == self.params.fingerprint()
            and st["balance"] == self.balance
            and st["infinite"] == self.infinite
            and st["block_shards"] == self.block_shards
        )
        if same and str(consumer) in st["progress"]:
            pieces = {int(e): pieces_of(st, int(e)) for e in st["pieces"]}
            return int(st["epoch"]), pieces, st["progress"], history
        if "consumer" in st and not ("progress" in st and len(st["progress"]) == st["consumers"]):
            raise StateError(
                f"this is one consumer's state (of {st['consumers']}); a different topology, params, "
                "window or balance needs the global state from gather_state()"
            )
        if self._rebased is None:  # independent of the consumer: re-deal once per process
            check_complete(st)
            old = SamplingParams.from_dict(st["params"])
            first, left = rebase(st, lambda e, ps: self.sequence(e, ps, old, history.get(e)))
            switched = st["params_fingerprint"] != self.params.fingerprint()
            if switched and self.count_consumed_copies:
                # a new layer for every epoch a consumer is in: what it dealt under the old
                # params and what was left of it counts against the new params
                last = max(int(p[0]) for p in st["progress"].values())
                for e in range(first, last + 1):
                    cut = pieces_of({"pieces": left}, e)
                    if cut is not None:
                        history[e] = [*history.get(e, []), (self._aligned(old), cut)]
            self._rebased = (first, left, history)
        first, left, history = self._rebased
        pieces = {int(e): pieces_of({"pieces": left}, int(e)) for e in left}
        return first, pieces, {}, history

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        live = self._live = self._start()
        consumer, consumers = live["consumer"], live["consumers"]
        epoch, pieces, progress = live["start_epoch"], live["pieces"], live["progress"]
        history = live["history"]
        while True:
            pe, done = progress.get(str(consumer), (epoch, 0))
            skip = done if pe == epoch else (1 << 62 if pe > epoch else 0)
            live["epoch"], live["consumed"] = epoch, min(skip, 1 << 62)
            yield from self._epoch_items(
                epoch, pieces.get(epoch), history, consumer, consumers, skip, live
            )
            if not self.infinite:
                break
            epoch += 1

    def _epoch_items(
        self,
        epoch: int,
        pieces: list[Piece] | None,
        history: dict[int, Switches],
        consumer: int,
        consumers: int,
        skip: int,
        live: dict,
    ) -> Iterator[dict[str, Any]]:
        seq = self.sequence(epoch, pieces, history=history.get(epoch))
        if self.infinite and pieces is None and seq.total == 0:
            # every consumer sees the same totals, so every rank stops here: nobody waits
            raise UserError(
                f"{self.root}: the params select no document in epoch {epoch} (every realised "
                "count is 0); an infinite stream would wait forever. Check the params "
                "(`quadmix-stream inspect --params`)."
            )
        length = seq.total if self.infinite else balanced_length(seq.total, consumers, self.balance)
        self._prefetch_totals(epoch + 1)
        a, b = consumer_range(length, consumer, consumers)
        if skip < 1 << 62:  # an exact resume's count (larger: the whole epoch was consumed)
            check_progress(consumer, epoch, skip, b - a)
        skip = min(skip, b - a)
        live["consumed"] = skip
        runs = [(seq, a, min(b, seq.total), epoch)]
        if b > seq.total:  # "pad": the first items of the next epoch's order
            runs.append(
                (
                    self.sequence(epoch + 1, history=history.get(epoch + 1)),
                    max(a, seq.total) - seq.total,
                    b - seq.total,
                    epoch + 1,
                )
            )
        todo = []  # (items of a window, epoch) still to emit, after the resume skip
        for s, lo, hi, e in runs:
            for win in s.windows(lo, hi, self.block_shards):
                size = s.window_size(win)
                if skip >= size:
                    skip -= size
                    continue
                todo.append((s, win, skip, e))
                skip = 0
        ahead = None  # remote: the next window's items and its shards being fetched
        for i, (s, win, first, e) in enumerate(todo):
            ids, readers = ahead if ahead is not None else (s.window_items(win)[1][first:], None)
            ahead = None
            if self.store.remote and i + 1 < len(todo):
                ns, nwin, nfirst, ne = todo[i + 1]
                nids = ns.window_items(nwin)[1][nfirst:]
                ahead = (nids, self._fetch_window(nids, ne))
            yield from self._read(ids, e, live, readers)

    def _prefetch_totals(self, epoch: int) -> None:
        """Compute the next epoch's per-shard totals in the background (cooperatively with the
        other processes of the node), so the epoch boundary finds them cached."""
        if self._prefetch is not None and self._prefetch.is_alive():
            return
        if self.tables.has_totals(self.params, self.seed, epoch):  # a warm cache: nothing to do
            return
        tables, params, seed = self.tables.fork(), self.params, self.seed

        def work() -> None:
            try:
                tables.totals(params, seed, epoch)
            except Exception:  # the epoch that needs them computes them again and reports
                pass

        self._prefetch = threading.Thread(target=work, name="quadmix-next-epoch", daemon=True)
        self._prefetch.start()

    def _shard_rows(self, ids: np.ndarray) -> tuple[np.ndarray, ...]:
        """(global rows, copy indices, shards, rows within the shard) of items."""
        rows, ks = split_ids(ids)
        shards = np.searchsorted(self.tables.shard_start, rows, side="right") - 1
        return rows, ks, shards, rows - self.tables.shard_start[shards]

    def _fetch_window(self, ids: np.ndarray, epoch: int) -> dict[int, Future]:
        """Start opening (fetching) every shard of a window's items in background threads."""
        if self._fetcher is None:
            self._fetcher = ThreadPoolExecutor(
                self.store.config.prefetch_threads, thread_name_prefix="quadmix-fetch"
            )
        _, _, shards, local = self._shard_rows(ids)
        self._mds_index()
        out = {}
        for s in np.unique(shards).tolist():
            rows = local[shards == s]
            # labels here, in this thread: the tables' caches are not shared with the fetchers
            lab = self.tables.read_labels(s, self.params, self.seed, epoch)
            out[s] = self._fetcher.submit(self._open, s, int(rows[0]), rows, lab)
        return out

    def _read(
        self,
        ids: np.ndarray,
        epoch: int,
        live: dict,
        fetching: dict[int, Future] | None = None,
    ) -> Iterator[dict[str, Any]]:
        names = self.manifest.domains
        readers: dict[int, ShardReader] = {}
        if self.store.remote and fetching is None:  # the first window: fetched here, in parallel
            fetching = self._fetch_window(ids, epoch)
        # the window's labels, held while it streams; per-item arrays are built a chunk at a time
        # (a window can hold millions of items: its ids are all it keeps per item)
        in_shard = np.searchsorted(self.tables.shard_start, ids >> COPY_BITS, side="right") - 1
        in_window, n_reads = np.unique(in_shard, return_counts=True)
        del in_shard
        reads = dict(zip(in_window.tolist(), n_reads.tolist(), strict=True))
        labs = {s: self.tables.read_labels(s, self.params, self.seed, epoch) for s in reads}
        try:
            for c in range(0, ids.size, READ_CHUNK):
                rows, ks, shards, local = self._shard_rows(ids[c : c + READ_CHUNK])
                dom = np.empty(rows.size, dtype=np.int64)
                tok = np.empty(rows.size, dtype=np.int64)
                key = np.empty(rows.size, dtype=np.uint64)
                digest = np.full(rows.size, -1, dtype=np.int64)  # -1: not checked
                # the chunk's items grouped by shard: one slice of labels per shard
                o = np.argsort(shards, kind="stable")
                cut = np.flatnonzero(np.diff(shards[o])) + 1
                for g in np.split(o, cut):
                    lab = labs[int(shards[g[0]])]
                    at = lab.at(local[g])
                    dom[g], tok[g], key[g] = lab.domain[at], lab.tokens[at], lab.key[at]
                    if self.verify_documents and lab.digest is not None:
                        digest[g] = lab.digest[at]
                for row, k, shard, lrow, d, t, kk, dg in zip(
                    rows.tolist(),
                    ks.tolist(),
                    shards.tolist(),
                    local.tolist(),
                    dom.tolist(),
                    tok.tolist(),
                    key.tolist(),
                    digest.tolist(),
                    strict=True,
                ):
                    reader = readers.get(shard)
                    if reader is None:
                        if fetching is not None:
                            reader = readers[shard] = fetching.pop(shard).result()
                        else:
                            reader = readers[shard] = self._open(
                                shard, lrow, lab=labs[shard], reads=reads[shard]
                            )
                    doc = self._read_one(reader, shard, lrow)
                    self._check_doc(doc, kk, dg, shard, lrow)
                    self.reads += 1
                    doc.update(
                        key=DocKey(kk),  # collates as a list under default_collate (uint64)
                        row=row,
                        domain=names[d],
                        domain_id=d,
                        tokens=t,
                        copy=k,
                        epoch=epoch,
                    )
                    live["consumed"] += 1
                    yield doc
        finally:
            for r in readers.values():
                r.close()
            for f in (fetching or {}).values():  # stopped early: close what was fetched
                f.add_done_callback(_close_reader)

    def read_row(self, row: int) -> dict[str, Any]:
        """Read one document by global row (e.g. to restore a partly packed document).

        The dict also has ``domain_id`` and ``tokens`` from the labels.
        """
        shard, local = self.tables.shard_of_row(row)
        reader = self._open(shard, local)
        try:
            doc = self._read_one(reader, shard, local)
        finally:
            reader.close()
        lab = self.tables.labels(shard)
        digest = -1 if lab.digest is None or not self.verify_documents else int(lab.digest[local])
        self._check_doc(doc, int(lab.key[local]), digest, shard, local)
        doc.update(domain_id=int(lab.domain[local]), tokens=int(lab.tokens[local]))
        return doc

    def _mds_index(self) -> dict[str, dict] | None:
        if self._mds is None and self.manifest.format == "mds":
            self._mds = mds_index(self.store)
        return self._mds

    def _open(
        self,
        shard: int,
        row: int,
        rows: np.ndarray | None = None,
        lab: RowLabels | None = None,
        reads: int | None = None,
    ) -> ShardReader:
        """A reader of one shard (``rows``: the rows about to be read, for range reads;
        ``reads``: how many, when only that is known)."""
        self._mds_index()
        lab = lab if lab is not None else RowLabels.of(self.tables.labels(shard))
        try:
            return open_shard(
                self.store,
                self.manifest,
                shard,
                lab.dense("offset"),
                lab.dense("length"),
                self._mds,
                rows,
                reads,
            )
        except (LabelError, StorageError):  # already name the shard or its URL
            raise
        except Exception as e:  # a corrupt file: one error naming it, not a decoder's traceback
            raise read_error(self.manifest.shards[shard].name, row, e) from e

    def _check_doc(self, doc: dict[str, Any], key: int, digest: int, shard: int, row: int) -> None:
        """The labels used for this document are its own: the sidecar's key is the hash of the
        id read from the shard (a sidecar swapped with another shard's fails here, not silently),
        and the text is the one labelled (``digest``: its recorded checksum; -1: not checked).
        """
        if doc_key(str(doc["id"])) != key:
            name = self.manifest.shards[shard].name
            raise LabelError(
                f"shard {name!r}, row {row}: the sidecar's key does not match the document read "
                f"there (id {str(doc['id'])[:80]!r}); the sidecar belongs to another shard or the "
                "shard changed after labelling (relabel it)"
            )
        if digest >= 0 and text_digest(doc["text"]) != digest:
            name = self.manifest.shards[shard].name
            raise LabelError(
                f"shard {name!r}, row {row}: the document's text does not match the checksum "
                "recorded at labelling (the shard is corrupt or changed in place); restore the "
                "shard or relabel it"
            )

    def _read_one(self, reader: ShardReader, shard: int, row: int) -> dict[str, Any]:
        try:
            return reader.read(row)
        except ShardReadError:
            raise
        except Exception as e:
            raise read_error(self.manifest.shards[shard].name, row, e) from e

    # ------------------------------------------------------------ observability
    def expected_mixture(self, epoch: int | None = None) -> dict[str, dict[str, float]]:
        """Per domain: expected (``epoch=None``) or realised documents, tokens, unique documents.

        A pool-wide pass, cached per node like the epoch totals.
        """
        mix = self.tables.mixture(self.params, self.seed, epoch)
        return {
            d: {k: float(v[i]) for k, v in mix.items()} for i, d in enumerate(self.manifest.domains)
        }


def _close_reader(f: Future) -> None:
    if not f.cancelled() and f.exception() is None:
        f.result().close()


def collate_docs(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate document dicts into a dict of lists (keys are uint64 and ``meta`` varies)."""
    return {k: [it[k] for it in items] for k in items[0]} if items else {}


__all__ = ["QuaDMixDataset", "collate_docs"]
