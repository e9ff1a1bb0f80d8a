"""Label sidecars and the dataset manifest (docs/reference.md, "Label sidecars" and "The manifest").

A labelled dataset is a folder with shards, one columnar label sidecar per shard (row-aligned with
it, readable without touching the payload) and ``quadmix.json``, the manifest. Everything is
written atomically and validated on open; a problem is a :class:`LabelError` that names the shard
and the field.

The sidecar file itself (:class:`ShardLabels`, its writer and reader) is :mod:`.sidecar`,
re-exported here. This module holds the manifest (its shard entries, scorers and σ tables, each
validated field by field) and the reading of a pool's labels against it; they stay together
(~400 lines) because every label read is checked against the manifest's entry for its shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quadmix_stream.formats.sidecar import LabelError, ShardLabels, read_sidecar
from quadmix_stream.formats.sidecar import write_sidecar as write_sidecar  # re-exported
from quadmix_stream.mixing.sampling import SigmaTable
from quadmix_stream.storage.io import atomic_write_text, check_inside, sha256_file
from quadmix_stream.storage.store import StorageError, Store, as_store
from quadmix_stream.validate import (
    expect_bool,
    expect_int,
    expect_list,
    expect_names,
    expect_numbers,
    expect_object,
    expect_str,
)

MANIFEST_NAME = "quadmix.json"
MANIFEST_SCHEMA = "quadmix-stream/manifest"
MANIFEST_VERSION = 1
FORMATS = ("mds", "tar", "jsonl", "parquet", "arrow")


@dataclass(frozen=True)
class ScorerInfo:
    """A quality scorer: its name, orientation and a fingerprint of the model that produced it."""

    name: str
    higher_is_better: bool = True
    fingerprint: str = ""

    @classmethod
    def from_dict(cls, x: object, where: str) -> ScorerInfo:
        """A scorer entry of a manifest, validated (``where`` names it in errors)."""
        d = expect_object(x, where, LabelError, ("name",), ("higher_is_better", "fingerprint"))
        return cls(
            name=expect_str(d["name"], f"{where}.name", LabelError),
            higher_is_better=expect_bool(
                d.get("higher_is_better", True), f"{where}.higher_is_better", LabelError
            ),
            fingerprint=expect_str(
                d.get("fingerprint", ""), f"{where}.fingerprint", LabelError, non_empty=False
            ),
        )


# ---------------------------------------------------------------- manifest
_SHARD_FIELDS_ORDER = ("name", "sidecar", "rows", "shard_sha256", "sidecar_sha256", "shard_bytes")
_SHARD_FIELDS = frozenset(_SHARD_FIELDS_ORDER)


def _plain_name(n: object) -> bool:
    """A file name without folders (so it is inside the root without a syscall)."""
    return (
        type(n) is str
        and n not in ("", ".", "..")
        and "/" not in n
        and "\\" not in n
        and "\0" not in n
    )


@dataclass(frozen=True)
class ShardEntry:
    name: str  # shard file, relative to the dataset root
    sidecar: str  # sidecar file, relative to the dataset root
    rows: int
    shard_sha256: str
    sidecar_sha256: str
    shard_bytes: int

    @classmethod
    def from_dict(cls, x: object, where: str, root: str | Path) -> ShardEntry:
        """A shard entry of a manifest, validated; its file names must stay inside ``root``."""
        if (  # the common, valid case: nothing built per field (manifests list 100k shards)
            type(x) is dict
            and x.keys() == _SHARD_FIELDS
            and _plain_name(x["name"])
            and _plain_name(x["sidecar"])
            and type(x["rows"]) is int
            and x["rows"] >= 0
            and type(x["shard_bytes"]) is int
            and x["shard_bytes"] >= 0
            and type(x["shard_sha256"]) is str
            and type(x["sidecar_sha256"]) is str
            and x["shard_sha256"]
            and x["sidecar_sha256"]
        ):
            return cls(**x)
        d = expect_object(x, where, LabelError, _SHARD_FIELDS_ORDER)
        for f in ("name", "sidecar"):
            check_inside(root, d[f], f"{where}.{f}", LabelError)
        return cls(
            name=d["name"],
            sidecar=d["sidecar"],
            rows=expect_int(d["rows"], f"{where}.rows", LabelError, minimum=0),
            shard_sha256=expect_str(d["shard_sha256"], f"{where}.shard_sha256", LabelError),
            sidecar_sha256=expect_str(d["sidecar_sha256"], f"{where}.sidecar_sha256", LabelError),
            shard_bytes=expect_int(d["shard_bytes"], f"{where}.shard_bytes", LabelError, minimum=0),
        )


@dataclass
class Manifest:
    """Dataset manifest: domains, scorers, shards with hashes, σ tables."""

    format: str
    domains: list[str]
    scorers: list[ScorerInfo]
    shards: list[ShardEntry]
    sigma: dict[str, SigmaTable] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def scorer_names(self) -> list[str]:
        return [s.name for s in self.scorers]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def fingerprint(self) -> str:
        """Identity of the data: shard names, rows and content hashes, domains, scorers."""
        ident = {
            "format": self.format,
            "domains": self.domains,
            "scorers": [[s.name, s.fingerprint] for s in self.scorers],
            "shards": [[s.name, s.rows, s.shard_sha256, s.sidecar_sha256] for s in self.shards],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "schema": MANIFEST_SCHEMA,
            "version": MANIFEST_VERSION,
            "format": self.format,
            "domains": self.domains,
            "scorers": [s.__dict__ for s in self.scorers],
            "shards": [s.__dict__ for s in self.shards],
            "sigma": {k: v.to_dict() for k, v in self.sigma.items()},
            "extra": self.extra,
        }

    def save(self, root: str | Path) -> None:
        atomic_write_text(Path(root) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, root: str | Path | Store) -> Manifest:
        """Read and validate ``root/quadmix.json`` (``root``: a folder, a URL or a
        :class:`Store`); every problem is a :class:`LabelError` naming the file and the field
        (``shards[3].rows``, ``sigma['q'].knots[7]``, ...)."""
        store = as_store(root)
        path = store.where(MANIFEST_NAME)
        d = store.read_json(
            MANIFEST_NAME,
            LabelError,
            "manifest",
            missing=f"{store}: no {MANIFEST_NAME}; is this a labelled dataset? (see `quadmix-stream label`)",
        )
        d = expect_object(
            d,
            f"{path}",
            LabelError,
            required=("schema", "version", "format", "domains", "scorers", "shards"),
            optional=("sigma", "extra"),
        )
        if d["schema"] != MANIFEST_SCHEMA or d["version"] != MANIFEST_VERSION:
            raise LabelError(
                f"{path}: unsupported manifest schema/version {d['schema']!r}/{d['version']!r} "
                f"(this build reads {MANIFEST_SCHEMA!r}/{MANIFEST_VERSION})"
            )
        if d["format"] not in FORMATS:
            raise LabelError(
                f"{path}: field 'format' must be one of {FORMATS}, got {d['format']!r}"
            )
        domains = expect_names(d["domains"], f"{path}: domains", LabelError)
        scorers = [
            ScorerInfo.from_dict(s, f"{path}: scorers[{i}]")
            for i, s in enumerate(expect_list(d["scorers"], f"{path}: scorers", LabelError))
        ]
        names = [s.name for s in scorers]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise LabelError(f"{path}: scorers: duplicate names {dup}")
        shards = [
            ShardEntry.from_dict(s, f"{path}: shards[{i}]", store.url)
            for i, s in enumerate(expect_list(d["shards"], f"{path}: shards", LabelError))
        ]
        seen: dict[str, int] = {}
        for i, e in enumerate(shards):
            for f in (e.name, e.sidecar):
                if f in seen:
                    raise LabelError(
                        f"{path}: shards[{i}] names {f!r} again (also shards[{seen[f]}])"
                    )
                seen[f] = i
        sig = expect_object(d.get("sigma", {}), f"{path}: sigma", LabelError, optional=None)
        hib = {s.name: s.higher_is_better for s in scorers}
        unknown = sorted(set(sig) - set(hib))
        if unknown:
            raise LabelError(f"{path}: field 'sigma' has tables for unknown scorers {unknown}")
        missing = [n for n in names if n not in sig]
        if missing:
            raise LabelError(f"{path}: field 'sigma' has no table for scorers {missing}")
        sigma = {k: _sigma_table(v, f"{path}: sigma[{k!r}]", hib[k]) for k, v in sig.items()}
        extra = expect_object(d.get("extra", {}), f"{path}: extra", LabelError, optional=None)
        return cls(
            format=d["format"],
            domains=domains,
            scorers=scorers,
            shards=shards,
            sigma=sigma,
            extra=extra,
        )


def _sigma_table(x: object, where: str, higher_is_better: bool) -> SigmaTable:
    """A validated σ table: finite knots ordered best → worst, levels in [0, 1], same length."""
    d = expect_object(x, where, LabelError, required=("knots", "levels", "higher_is_better"))
    knots = np.array(expect_numbers(d["knots"], f"{where}.knots", LabelError), dtype=np.float64)
    levels = np.array(expect_numbers(d["levels"], f"{where}.levels", LabelError), dtype=np.float64)
    hib = expect_bool(d["higher_is_better"], f"{where}.higher_is_better", LabelError)
    if hib != higher_is_better:
        raise LabelError(
            f"{where}.higher_is_better: is {hib} but the scorer says {higher_is_better}"
        )
    if knots.size != levels.size:
        raise LabelError(f"{where}: {knots.size} knots but {levels.size} levels")
    oriented = -knots if hib else knots  # ascending when ordered best → worst
    if np.any(np.diff(oriented) <= 0):
        i = int(np.flatnonzero(np.diff(oriented) <= 0)[0]) + 1
        raise LabelError(f"{where}.knots[{i}]: knots must run from best to worst score")
    if np.any((levels < 0) | (levels > 1)) or np.any(np.diff(levels) < 0):
        raise LabelError(f"{where}.levels: must be non-decreasing and within [0, 1]")
    return SigmaTable(knots=knots, levels=levels, higher_is_better=hib)


# ---------------------------------------------------------------- all labels of a dataset
@dataclass
class DatasetLabels:
    """Every document's labels, concatenated in shard order (global row = position here)."""

    key: np.ndarray
    domain: np.ndarray
    tokens: np.ndarray
    scores: np.ndarray
    shard: np.ndarray  # int32 shard index of each row
    row: np.ndarray  # int64 row within its shard
    shard_start: np.ndarray  # int64 (n_shards + 1,) global row where each shard starts
    offset: np.ndarray | None = None
    length: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.key.size)


_VERIFIED: set[tuple] = set()  # (path, size, mtime, inode, sha256) of sidecars hashed here


def _identity(path: Path, sha256: str, st: os.stat_result | None = None) -> tuple:
    st = st or path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino, sha256)


def read_shard_labels(
    root: str | Path | Store, manifest: Manifest, index: int, verify_shard: bool = False
) -> ShardLabels:
    """Read and validate the labels of one shard (nothing else of the pool is touched).

    Checks: the sidecar exists and hashes to the manifest's value (hashed once per process and
    file identity, so a long run does not re-hash), its row count matches, scores are finite,
    domain ids are known, tokens are not negative; the shard file exists with the recorded size
    (and, with ``verify_shard``, the recorded sha256). Any failure names the shard and the field.
    On object storage the sidecar is fetched into the node's cache and verified as it lands; the
    shard's size and hash are checked when the stream fetches it.
    """
    store = as_store(root)
    entry = manifest.shards[index]
    if store.remote:
        try:
            side = store.fetch(entry.sidecar, sha256=entry.sidecar_sha256)
        except StorageError as e:
            raise LabelError(f"shard {entry.name!r}: sidecar {e}") from None
        try:
            lab = read_sidecar(side, entry.name, manifest.scorer_names)
        finally:
            store.release(side)
    else:
        lab = _read_local_labels(store.path(""), entry, manifest.scorer_names, verify_shard)
    return _checked(lab, manifest, entry)


def _read_local_labels(
    root: Path, entry: ShardEntry, names: list[str], verify_shard: bool
) -> ShardLabels:
    shard_path = root / entry.name
    try:
        size = os.stat(shard_path).st_size
    except FileNotFoundError:
        raise LabelError(f"shard {entry.name!r}: shard file is missing") from None
    if size != entry.shard_bytes:
        raise LabelError(
            f"shard {entry.name!r}: field 'shard_bytes' is {entry.shard_bytes} in the manifest but the file has {size} bytes (shard changed after labelling?)"
        )
    if verify_shard and _identity(shard_path, entry.shard_sha256) not in _VERIFIED:
        if sha256_file(shard_path) != entry.shard_sha256:
            raise LabelError(
                f"shard {entry.name!r}: field 'shard_sha256' does not match the file (shard changed after labelling?)"
            )
        _VERIFIED.add(_identity(shard_path, entry.shard_sha256))
    side = root / entry.sidecar
    try:
        st = os.stat(side)
    except FileNotFoundError:
        st = None  # read_sidecar names it
    if st is not None:
        ident = _identity(side, entry.sidecar_sha256, st)
        if ident not in _VERIFIED:
            if sha256_file(side) != entry.sidecar_sha256:
                raise LabelError(
                    f"shard {entry.name!r}: field 'sidecar_sha256' does not match {entry.sidecar} (sidecar corrupted or from another run)"
                )
            _VERIFIED.add(ident)
    return read_sidecar(side, entry.name, names)


def _checked(lab: ShardLabels, manifest: Manifest, entry: ShardEntry) -> ShardLabels:
    """The sidecar's content checks (row count, finite scores, known domains, tokens ≥ 0)."""
    names, m = manifest.scorer_names, len(manifest.domains)
    if lab.rows != entry.rows:
        raise LabelError(
            f"shard {entry.name!r}: field 'rows' is {entry.rows} in the manifest but the sidecar has {lab.rows}"
        )
    bad = ~np.isfinite(lab.scores)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise LabelError(
            f"shard {entry.name!r}: field 'scores' has {lab.scores[r, c]} for scorer {names[c]!r} at row {r}"
        )
    if lab.rows and (lab.domain.min() < 0 or lab.domain.max() >= m):
        r = int(np.flatnonzero((lab.domain < 0) | (lab.domain >= m))[0])
        raise LabelError(
            f"shard {entry.name!r}: field 'domain' has unknown domain id {lab.domain[r]} at row {r} (dataset has {m} domains)"
        )
    if lab.rows and lab.tokens.min() < 0:
        raise LabelError(
            f"shard {entry.name!r}: field 'tokens' is negative at row {int(np.argmin(lab.tokens))}"
        )
    if manifest.format == "tar" and lab.offset is None:
        raise LabelError(
            f"shard {entry.name!r}: field 'offset' is missing (tar sidecars need byte offsets)"
        )
    return lab


def shard_starts(manifest: Manifest) -> np.ndarray:
    """(n_shards + 1,) global row where each shard starts, from the manifest alone."""
    rows = np.array([s.rows for s in manifest.shards], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)


def load_labels(
    root: str | Path | Store, manifest: Manifest, verify_shards: bool = False
) -> DatasetLabels:
    """Read and validate every sidecar of a dataset (the whole pool: for tools on small pools).

    The stream never calls this: it reads one shard's labels at a time (:func:`read_shard_labels`).
    """
    root = as_store(root)
    if not manifest.shards:
        raise LabelError(f"{root}: the manifest lists no shards")
    parts = [
        read_shard_labels(root, manifest, i, verify_shards) for i in range(len(manifest.shards))
    ]
    names = manifest.scorer_names
    counts = np.array([p.rows for p in parts], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def cat(f: str) -> np.ndarray:
        return np.concatenate([getattr(p, f) for p in parts])

    return DatasetLabels(
        key=cat("key"),
        domain=cat("domain"),
        tokens=cat("tokens"),
        scores=cat("scores").reshape(-1, len(names)),
        shard=np.repeat(np.arange(len(parts), dtype=np.int32), counts),
        row=np.arange(start[-1], dtype=np.int64) - np.repeat(start[:-1], counts),
        shard_start=start,
        offset=cat("offset") if manifest.format == "tar" else None,
        length=cat("length") if manifest.format == "tar" else None,
    )
