"""QuaDMixDataset: the QuaDMix sampling function applied on the fly in a PyTorch IterableDataset.

Per epoch, every document's realised copies c(x) come from (labels, params, seed, epoch) alone;
the epoch's item order comes from :mod:`quadmix_stream.order`; items are dealt round-robin to the
consumers (ranks × DataLoader workers). Only kept documents are ever read (decide before decode).
See :mod:`quadmix_stream.state` for checkpointing and resuming.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from quadmix_stream.dockey import DocKey
from quadmix_stream.labels import DatasetLabels, Manifest, load_labels
from quadmix_stream.order import EpochPlan, Segment, balanced_length, split_ids
from quadmix_stream.params import SamplingParams
from quadmix_stream.selection import PreparedLabels, RankConfig, Selection, sigma_scores
from quadmix_stream.shards import ShardReader, mds_index, open_shard
from quadmix_stream.state import (
    STATE_MARK,
    STATE_VERSION,
    StateError,
    check_complete,
    find_states,
    merge_states,
    rebase,
)

BALANCES = ("drop", "pad", None)


def _resolve_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        if rank is None or world_size is None or not 0 <= rank < world_size:
            raise ValueError(
                f"give both rank and world_size with 0 ≤ rank < world_size (got {rank}, {world_size})"
            )
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    # torchrun sets these before the process group exists (and in DataLoader workers it never does)
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class QuaDMixDataset(IterableDataset):
    """Stream a labelled dataset (MDS, WebDataset tar or JSONL.zst) through QuaDMix sampling.

    Each item is a dict: ``id``, ``text``, ``meta`` (the document's other fields), ``key`` (stable
    64-bit document key), ``row`` (global row in the dataset), ``domain`` (name), ``domain_id``, ``tokens``, ``copy`` (0-based copy
    index of this document in this epoch) and ``epoch``. Use :func:`collate_docs` as the
    DataLoader's ``collate_fn``, or :class:`quadmix_stream.packing.PackedDataset` for token blocks.

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
        shuffle_block_shards: shards whose items are shuffled together (``None``: the whole
            epoch). Larger mixes domains better when shards are domain-sorted; memory per
            consumer is ~16 bytes per item of a block.
        rank, world_size: explicit distributed position (default: torch.distributed, else the
            ``RANK``/``WORLD_SIZE`` environment, else a single process).
        resume_with_new_params: accept a loader state saved under other params (the remainder of
            the epoch then follows ``params``); otherwise such a state is refused.
        rank_config: how Eq. 2 is computed (exact or table-based).
        verify_shards: hash every shard file on open (slow on big data; sizes are always checked).
    """

    def __init__(
        self,
        dataset: str | Path,
        params: SamplingParams | str | Path,
        seed: int = 0,
        *,
        infinite: bool = False,
        balance: str | None = "drop",
        shuffle_block_shards: int | None = 256,
        rank: int | None = None,
        world_size: int | None = None,
        resume_with_new_params: bool = False,
        rank_config: RankConfig = RankConfig(),
        verify_shards: bool = False,
    ) -> None:
        super().__init__()
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        self.root = Path(dataset)
        self.manifest = Manifest.load(self.root)
        self.params = params if isinstance(params, SamplingParams) else SamplingParams.load(params)
        self.params = self._aligned(self.params)
        self.seed, self.infinite, self.balance = int(seed), bool(infinite), balance
        self.block_shards = shuffle_block_shards
        self.rank, self.world_size = _resolve_world(rank, world_size)
        self.resume_with_new_params = resume_with_new_params
        self.rank_config = rank_config
        self.epoch = 0
        self.fingerprint = self.manifest.fingerprint()
        self._resume: dict | None = None
        self._rebased: tuple[int, dict[str, dict]] | None = None
        self._mds: dict[str, dict] | None = None  # MDS index.json entries, read once per process
        self._live: dict | None = None  # progress of the iteration running in this process
        self._labels: DatasetLabels | None = load_labels(self.root, self.manifest, verify_shards)
        self._selections: dict[str, Selection] = {}
        self._prepared: PreparedLabels | None = None
        self.reads = 0  # rows read by this process (decide-before-decode is testable)

    def _aligned(self, params: SamplingParams) -> SamplingParams:
        m = self.manifest
        if set(params.domains) == set(m.domains) and set(params.scorers) == set(m.scorer_names):
            params = params.reorder(m.domains, m.scorer_names)
        params.check_names(m.domains, m.scorer_names)
        return params

    # ------------------------------------------------------------ pickling for workers
    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_labels"], d["_selections"], d["_prepared"], d["_live"] = None, {}, None, None
        return d

    @property
    def labels(self) -> DatasetLabels:
        if self._labels is None:  # in a worker: re-read (validated) labels instead of pickling them
            self._labels = load_labels(self.root, self.manifest)
        return self._labels

    def selection(self, params: SamplingParams | None = None) -> Selection:
        """Expected/realised copies under ``params`` (default: this dataset's params), cached."""
        params = self.params if params is None else self._aligned(params)
        fp = params.fingerprint()
        if fp not in self._selections:
            if self._prepared is None:  # once per process: σ applied, columns sorted by domain
                lab = self.labels
                self._prepared = PreparedLabels.build(
                    sigma_scores(lab.scores, self.manifest),
                    lab.domain,
                    lab.tokens,
                    lab.key,
                    len(self.manifest.domains),
                    self.rank_config,
                )
            self._selections[fp] = Selection(
                self.labels,
                self.manifest,
                params,
                self.seed,
                self.rank_config,
                prepared=self._prepared,
            )
        return self._selections[fp]

    def plan(
        self, epoch: int, segment: Segment | None = None, params: SamplingParams | None = None
    ) -> EpochPlan:
        """The ordered items of ``epoch`` (all consumers together)."""
        lab = self.labels
        counts = self.selection(params).counts(epoch)
        return EpochPlan(
            lab.shard_start, lab.key, counts, self.seed, epoch, self.block_shards, segment
        )

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
            "consumers": consumers,
            "balance": self.balance,
            "infinite": self.infinite,
            "block_shards": self.block_shards,
        }

    def state_dict(self) -> dict:
        """This consumer's snapshot (inside a worker: that worker's; in-process: this rank's).

        Gather all of them with :func:`quadmix_stream.checkpoint.gather_state` into one global state.
        """
        # not iterating yet: where this consumer *would* start (a loaded state re-dealt to it)
        return self._live_state(self._live if self._live is not None else self._start())

    def _start(self) -> dict:
        """This consumer's starting point: epoch, remaining segments, items already consumed."""
        consumer, consumers = self._consumer()
        first, segments, progress = self._resolve_resume(consumer, consumers)
        # finite: the epoch is the user's (set_epoch); a state only applies to the epochs it names
        epoch = first if self.infinite else self.epoch
        pe, done = progress.get(str(consumer), (epoch, 0))
        return {
            "consumer": consumer,
            "consumers": consumers,
            "epoch": max(epoch, pe),
            "consumed": done if pe >= epoch else 0,
            "segments": segments,
            "progress": progress,
            "start_epoch": epoch,
        }

    def _live_state(self, live: dict) -> dict:
        st = self._base_state(live["consumers"])
        st.update(
            epoch=live["epoch"],
            segments={
                str(e): s.to_dict() for e, s in live["segments"].items() if e >= live["epoch"]
            },
            progress={str(live["consumer"]): [live["epoch"], live["consumed"]]},
            consumer=live["consumer"],
        )
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
        if st["seed"] != self.seed or st["block_shards"] != self.block_shards:
            raise StateError(
                f"loader state has seed={st['seed']}, shuffle_block_shards={st['block_shards']}; "
                f"this dataset has seed={self.seed}, shuffle_block_shards={self.block_shards}"
            )
        self._resume = st
        self._rebased = None
        self.epoch = int(st["epoch"])

    def _resolve_resume(
        self, consumer: int, consumers: int
    ) -> tuple[int, dict[int, Segment], dict[str, list[int]]]:
        """(start epoch, segments, progress) for this consumer, re-dealing the state if needed."""
        st = self._resume
        if st is None:
            return self.epoch, {}, {}
        same = (
            st["consumers"] == consumers
            and st["params_fingerprint"] == self.params.fingerprint()
            and st["balance"] == self.balance
            and st["infinite"] == self.infinite
        )
        if same and str(consumer) in st["progress"]:
            segs = {int(e): Segment.from_dict(s) for e, s in st["segments"].items()}
            return int(st["epoch"]), segs, st["progress"]
        if "consumer" in st and not ("progress" in st and len(st["progress"]) == st["consumers"]):
            raise StateError(
                f"this is one consumer's state (of {st['consumers']}); a different topology, params or "
                "balance needs the global state from gather_state()"
            )
        if self._rebased is None:  # independent of the consumer: re-deal once per process
            check_complete(st)
            old = SamplingParams.from_dict(st["params"])
            self._rebased = rebase(st, lambda e, seg: self.plan(e, seg, old))
        first, segs = self._rebased
        return first, {int(e): Segment.from_dict(s) for e, s in segs.items()}, {}

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        live = self._live = self._start()
        consumer, consumers = live["consumer"], live["consumers"]
        epoch, segments, progress = live["start_epoch"], live["segments"], live["progress"]
        while True:
            pe, done = progress.get(str(consumer), (epoch, 0))
            skip = done if pe == epoch else (1 << 62 if pe > epoch else 0)
            live["epoch"], live["consumed"] = epoch, min(skip, 1 << 62)
            yield from self._epoch_items(
                epoch, segments.get(epoch, Segment()), consumer, consumers, skip, live
            )
            if not self.infinite:
                break
            epoch += 1

    def _epoch_items(
        self, epoch: int, segment: Segment, consumer: int, consumers: int, skip: int, live: dict
    ) -> Iterator[dict[str, Any]]:
        plan = self.plan(epoch, segment)
        length = (
            plan.total if self.infinite else balanced_length(plan.total, consumers, self.balance)
        )
        share = len(range(consumer, length, consumers))
        live["consumed"] = min(skip, share)
        first = consumer + min(skip, share) * consumers  # first position still to emit
        pad_plan = None
        for b in range(len(plan.blocks) + (1 if length > plan.total else 0)):
            lo, hi = (
                (plan.starts[b], plan.starts[b + 1])
                if b < len(plan.blocks)
                else (plan.total, length)
            )
            hi = min(hi, length)
            if hi <= first or lo >= hi:
                continue
            p0 = max(first, lo)
            p0 += (consumer - p0) % consumers
            pos = np.arange(p0, hi, consumers, dtype=np.int64)
            if not pos.size:
                continue
            if b < len(plan.blocks):
                ids = plan.block_items(b)[pos - lo]
            else:  # "pad": the first items of the next epoch's order
                pad_plan = pad_plan or self.plan(epoch + 1)
                ids = pad_plan.items_at(pos - plan.total)
            yield from self._read(ids, epoch, live)

    def _read(self, ids: np.ndarray, epoch: int, live: dict) -> Iterator[dict[str, Any]]:
        lab = self.labels
        rows, ks = split_ids(ids)
        names = self.manifest.domains
        readers: dict[int, ShardReader] = {}
        try:
            for row, k, shard, lrow, dom, tok, key in zip(
                rows.tolist(),
                ks.tolist(),
                lab.shard[rows].tolist(),
                lab.row[rows].tolist(),
                lab.domain[rows].tolist(),
                lab.tokens[rows].tolist(),
                lab.key[rows].tolist(),
                strict=True,
            ):
                reader = readers.get(shard)
                if reader is None:
                    reader = readers[shard] = self._open(shard)
                doc = reader.read(lrow)
                self.reads += 1
                doc.update(
                    key=DocKey(key),  # collates as a list under default_collate (uint64)
                    row=row,
                    domain=names[dom],
                    domain_id=dom,
                    tokens=tok,
                    copy=k,
                    epoch=epoch,
                )
                live["consumed"] += 1
                yield doc
        finally:
            for r in readers.values():
                r.close()

    def read_row(self, row: int) -> dict[str, Any]:
        """Read one document by global row (e.g. to restore a partly packed document)."""
        lab = self.labels
        shard = int(lab.shard[row])
        reader = self._open(shard)
        try:
            return reader.read(int(lab.row[row]))
        finally:
            reader.close()

    def _open(self, shard: int) -> ShardReader:
        if self._mds is None and self.manifest.format == "mds":
            self._mds = mds_index(self.root)
        lab = self.labels
        a, b = lab.shard_start[shard], lab.shard_start[shard + 1]
        off = None if lab.offset is None else lab.offset[a:b]
        ln = None if lab.length is None else lab.length[a:b]
        return open_shard(self.root, self.manifest, shard, off, ln, self._mds)

    # ------------------------------------------------------------ observability
    def expected_mixture(self, epoch: int | None = None) -> dict[str, dict[str, float]]:
        """Per domain: expected (``epoch=None``) or realised documents, tokens, unique documents."""
        mix = self.selection().mixture(epoch)
        return {
            d: {k: float(v[i]) for k, v in mix.items()} for i, d in enumerate(self.manifest.domains)
        }


def collate_docs(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate document dicts into a dict of lists (keys are uint64 and ``meta`` varies)."""
    return {k: [it[k] for it in items] for k in items[0]} if items else {}


__all__ = ["QuaDMixDataset", "collate_docs"]
