"""Writing a labelled dataset: shards, their label sidecars, σ tables and the manifest.

:class:`DatasetWriter` writes documents with their labels in any shard format; the shards
themselves are written by the format's backend (:mod:`quadmix_stream.formats`), and the rows are
read back through :func:`quadmix_stream.formats.open_shard`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.formats import WriterBackend, sidecar_name, split_doc, writer_backend
from quadmix_stream.formats.labels import (
    FORMATS,
    LabelError,
    Manifest,
    ScorerInfo,
    ShardEntry,
    ShardLabels,
    write_sidecar,
)
from quadmix_stream.mixing.hashing import doc_key, text_digest
from quadmix_stream.mixing.sampling import build_sigma_tables
from quadmix_stream.storage.io import sha256_file


class DatasetWriter:
    """Write documents with their labels as shards + sidecars + manifest.

    Example::

        with DatasetWriter(out, "mds", domains=["web", "code"], scorers=[ScorerInfo("q")]) as w:
            w.write({"id": "a", "text": "hello"}, domain="web", scores=[0.3], tokens=2)

    Args:
        root: output folder (created).
        fmt: ``"mds"``, ``"tar"``, ``"jsonl"``, ``"parquet"`` or ``"arrow"``.
        domains: domain names; labels may give a name or an id.
        scorers: scorer descriptions, in score column order.
        rows_per_shard: documents per shard.
        compression: MDS shard compression (``None`` or ``"zstd"``).
        extra: free-form manifest ``extra``.
        row_group_rows: Parquet rows per row group (Arrow: rows per record batch).
    """

    def __init__(
        self,
        root: str | Path,
        fmt: str,
        domains: Sequence[str],
        scorers: Sequence[ScorerInfo],
        rows_per_shard: int = 4096,
        compression: str | None = None,
        extra: dict | None = None,
        row_group_rows: int = 1000,
    ) -> None:
        if fmt not in FORMATS:
            raise UserError(f"format must be one of {FORMATS}, got {fmt!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if any(self.root.iterdir()):
            raise FileExistsError(f"{self.root} is not empty; refusing to mix datasets")
        self.fmt, self.domains, self.scorers = fmt, list(domains), list(scorers)
        self.rows_per_shard, self.extra = rows_per_shard, extra or {}
        self._dom = {d: i for i, d in enumerate(self.domains)}
        self._backend: WriterBackend = writer_backend(self.root, fmt, compression, row_group_rows)
        self._cur: dict[str, list] = self._empty()
        self._pending: list[tuple[str, ShardLabels]] = []
        self._all_scores: list[np.ndarray] = []
        self._all_tokens: list[np.ndarray] = []
        self.manifest: Manifest | None = None

    def _empty(self) -> dict[str, list]:
        return {k: [] for k in ("key", "digest", "domain", "tokens", "scores", "offset", "length")}

    def write(
        self, doc: dict[str, Any], domain: str | int, scores: Sequence[float], tokens: int
    ) -> None:
        doc_id, text, meta = split_doc(doc)
        d = self._dom.get(domain, domain) if isinstance(domain, str) else int(domain)
        if isinstance(d, str) or not 0 <= d < len(self.domains):
            raise LabelError(
                f"document {doc_id!r}: unknown domain {domain!r}; known {self.domains}"
            )
        scores = [float(s) for s in scores]
        if len(scores) != len(self.scorers) or not all(np.isfinite(scores)):
            raise LabelError(
                f"document {doc_id!r}: need {len(self.scorers)} finite scores, got {scores}"
            )
        off = self._backend.add(doc_id, text, meta)
        c = self._cur
        c["key"].append(doc_key(doc_id))
        c["digest"].append(text_digest(text))
        c["domain"].append(d)
        c["tokens"].append(int(tokens))
        c["scores"].append(scores)
        if off is not None:
            c["offset"].append(off[0])
            c["length"].append(off[1])
        if len(c["key"]) >= self.rows_per_shard:
            self._end_shard()

    def _end_shard(self) -> None:
        c = self._cur
        if not c["key"]:
            return
        name = self._backend.end_shard()
        labels = ShardLabels(
            key=np.array(c["key"], dtype=np.uint64),
            domain=np.array(c["domain"], dtype=np.int32),
            tokens=np.array(c["tokens"], dtype=np.int64),
            scores=np.array(c["scores"], dtype=np.float64).reshape(-1, len(self.scorers)),
            offset=np.array(c["offset"], dtype=np.int64) if c["offset"] else None,
            length=np.array(c["length"], dtype=np.int64) if c["length"] else None,
            digest=np.array(c["digest"], dtype=np.uint32),
        )
        self._pending.append((name, labels))
        self._cur = self._empty()

    def close(self) -> Manifest:
        """Finish the last shard, write sidecars, σ tables and the manifest (atomically, last)."""
        self._end_shard()
        self._backend.close()
        names = [s.name for s in self.scorers]
        entries = []
        for name, labels in self._pending:
            side = sidecar_name(name)
            side_hash = write_sidecar(self.root / side, labels, names)
            path = self.root / name
            entries.append(
                ShardEntry(
                    name, side, labels.rows, sha256_file(path), side_hash, path.stat().st_size
                )
            )
        if not entries:
            raise LabelError(f"{self.root}: no documents were written")
        scores = np.concatenate([lab.scores for _, lab in self._pending])
        tokens = np.concatenate([lab.tokens for _, lab in self._pending])
        sigma = build_sigma_tables(scores, tokens, self.scorers)
        self.manifest = Manifest(self.fmt, self.domains, self.scorers, entries, sigma, self.extra)
        self.manifest.save(self.root)  # last: a dataset without a manifest is unfinished
        return self.manifest

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.close()
