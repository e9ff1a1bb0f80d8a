"""Inputs of a labelling run: where documents come from, cut into units of work.

Two modes:

* ``new``: raw documents (JSONL, JSONL.gz, JSONL.zst, Parquet, or the built-in synthetic
  generator) are cut into units of at most ``rows_per_shard`` input rows of one file; each unit
  becomes one new output shard. Files may be local or on object storage (``s3://bucket/*.jsonl.gz``:
  globbed with fsspec and streamed, see :mod:`.remote`).
* ``sidecar``: existing shards (a labelled dataset, an MDS dataset, WebDataset tars (also
  ``.tar.gz``), our JSONL.zst shards, Parquet files or Hugging Face ``save_to_disk`` Arrow files)
  are labelled in place; each shard is one unit and gets a sidecar beside it. The shards may be
  on object storage (``s3://bucket/ds``): each is fetched, read and deleted locally, and its
  sidecar is written beside it in the bucket.

The plan (list of units) is a pure function of the inputs and options, so every rank derives the
same one and a re-run can check it is resuming the same job. Reading a unit returns flat
documents (``id``, ``text`` and every other field) plus counted :class:`Issues`; a document is
never dropped silently (only input lines that are blank or not JSON objects are skipped, and
counted).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

from quadmix_stream.io import resolve_inside
from quadmix_stream.labelling.issues import Issues, clean_str, decode_bytes, fix_surrogates
from quadmix_stream.labelling.labelers import get_field
from quadmix_stream.labels import MANIFEST_NAME, LabelError, Manifest
from quadmix_stream.recipe import RecipeError
from quadmix_stream.storage import is_remote

RAW_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".parquet")
SHARD_FORMATS = ("auto", "mds", "tar", "jsonl", "parquet", "arrow")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Unit:
    """One unit of work: rows ``[start, stop)`` of ``source`` (a file, a shard, or synthetic).

    ``byte_start`` lets plain JSONL seek straight to the unit's first line. For existing shards
    ``start``/``stop`` are 0/-1 (all rows).
    """

    index: int
    source: str
    start: int = 0
    stop: int = -1
    byte_start: int = -1


@dataclass
class InputSpec:
    """What to read (one of ``paths``, ``synthetic``, ``shards``) and how.

    Attributes:
        paths: globs of raw document files.
        synthetic: options of :func:`quadmix_stream.synth.iter_docs` (``docs_per_domain``,
            ``seed``, optional ``domains`` and ``levels`` filters).
        shards: folder of existing shards, labelled in place (sidecar mode).
        shard_format: ``auto`` (detect), ``mds``, ``tar``, ``jsonl`` (our JSONL.zst shards),
            ``parquet`` (``*.parquet`` files, subfolders included) or ``arrow`` (Hugging Face
            ``save_to_disk`` folders).
        text_field, id_field: raw documents' field names (dotted paths allowed); for Parquet and
            Arrow shards, column names (no ``id_field`` column: the id is ``"<file>:<row>"``).
        tar_text_ext, tar_json_ext: WebDataset member extensions of foreign tar shards.
        limit: read at most this many rows per file (quick trials).
    """

    paths: list[str] = field(default_factory=list)
    synthetic: dict[str, Any] | None = None
    shards: str | None = None
    shard_format: str = "auto"
    text_field: str = "text"
    id_field: str = "id"
    tar_text_ext: str = "txt"
    tar_json_ext: str | None = "json"
    limit: int | None = None

    @property
    def mode(self) -> str:
        return "sidecar" if self.shards else "new"

    def check(self) -> None:
        given = [bool(self.paths), self.synthetic is not None, bool(self.shards)]
        if sum(given) != 1:
            raise RecipeError(
                "input: give exactly one of 'paths' (raw documents), 'synthetic' or 'shards' "
                "(existing shards to label in place)"
            )
        if self.shard_format not in SHARD_FORMATS:
            raise RecipeError(f"input.shard_format must be one of {SHARD_FORMATS}")


# ---------------------------------------------------------------- raw files
def _basename(path: str | Path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def expand_paths(patterns: list[str], base: Path | None = None) -> list[Path | str]:
    """Sorted, de-duplicated files matching ``patterns`` (relative ones against ``base``).

    A pattern that is a URL (``s3://bucket/raw/*.jsonl.gz``) is globbed with the fsspec
    filesystem; its files are returned as URL strings, local ones as resolved paths.
    """
    out: list[Path | str] = []
    for pat in patterns:
        if is_remote(pat):
            from quadmix_stream.labelling.remote import expand_remote

            out.extend(expand_remote(pat, RAW_SUFFIXES))
            continue
        p = Path(pat).expanduser()
        if base is not None and not p.is_absolute():
            p = base / p
        p = Path(os.path.normpath(p))  # "{out}/../x" must work before {out} exists
        hits = sorted(glob.glob(str(p), recursive=True)) if glob.has_magic(str(p)) else [str(p)]
        if not hits or not Path(hits[0]).exists():
            raise FileNotFoundError(f"input: no file matches {pat!r} (looked for {p})")
        for h in hits:
            hp = Path(h)
            if hp.is_dir():
                hp_files = sorted(x for x in hp.iterdir() if x.name.endswith(RAW_SUFFIXES))
                out.extend(hp_files)
            else:
                out.append(hp)
    seen: set[Path | str] = set()
    uniq: list[Path | str] = []
    for f in out:
        r = f.resolve() if isinstance(f, Path) else f
        if r not in seen:
            seen.add(r)
            uniq.append(r)
    for f in uniq:
        if not _basename(f).endswith(RAW_SUFFIXES):
            raise RecipeError(f"input: {f} is not one of {RAW_SUFFIXES}")
    return uniq


def open_lines(path: Path | str) -> IO[bytes]:
    """A binary line stream over a (possibly gzip/zstd-compressed) JSONL file, local or remote
    (a URL: streamed through fsspec, decompressed on the fly)."""
    if is_remote(path):
        from quadmix_stream.labelling.remote import open_remote

        return open_remote(str(path))
    path = Path(path)
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 (owned by the returned stream)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")  # noqa: SIM115


def input_size(path: Path | str) -> int:
    """Bytes of a raw input file, local or remote (part of a run's plan)."""
    if is_remote(path):
        from quadmix_stream.labelling.remote import remote_size

        return remote_size(str(path))
    return Path(path).stat().st_size


def open_parquet(path: Path | str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` over a local or remote file (remote: ranged reads of
    the footer and the row groups asked for). Close it with ``.close(force=True)``."""
    import pyarrow.parquet as pq

    if is_remote(path):
        from quadmix_stream.labelling.remote import open_remote

        return pq.ParquetFile(open_remote(str(path), compression=None))
    return pq.ParquetFile(path)


def count_rows(path: Path | str, every: int, limit: int | None = None) -> tuple[int, list[int]]:
    """(rows, byte offset of rows 0, every, 2·every, ...) of a raw file (offsets: plain JSONL only).

    A JSONL row is a line (blank and invalid lines included: they keep their place so locations in
    reports are line numbers).
    """
    name = _basename(path)
    if name.endswith(".parquet"):
        pf = open_parquet(path)
        try:
            n = pf.metadata.num_rows
        finally:
            pf.close(force=True)
        return (min(n, limit) if limit is not None else n), []
    plain = not name.endswith((".gz", ".zst"))
    offsets: list[int] = []
    n, pos = 0, 0
    try:
        with open_lines(path) as f:
            if limit is not None:  # line by line, stop early
                for line in f:
                    if n >= limit:
                        break
                    if plain and n % every == 0:
                        offsets.append(pos)
                    pos += len(line)
                    n += 1
                return n, offsets
            # big blocks + bytes.count: ~10x faster than iterating lines
            newlines, last = 0, b"\n"
            next_row = 0  # next row whose start offset (plain files) we want
            while block := f.read(1 << 22):
                if plain:
                    k = block.count(b"\n")
                    while next_row <= newlines + k:
                        if next_row == 0:
                            offsets.append(0)
                        else:
                            i, need = -1, next_row - newlines
                            for _ in range(need):
                                i = block.index(b"\n", i + 1)
                            offsets.append(pos + i + 1)
                        next_row += every
                    newlines += k
                else:
                    newlines += block.count(b"\n")
                pos += len(block)
                last = block[-1:]
            n = newlines + (last != b"\n")
            if plain:  # an offset at the very end is not a row
                offsets = [o for o in offsets if o < pos]
    except (OSError, EOFError) as e:
        raise LabelError(f"input {path}: cannot read ({e})") from None
    return n, offsets


def normalize_doc(
    obj: Any,
    where: str,
    spec: InputSpec,
    issues: Issues,
    raw: bytes | None = None,
) -> dict[str, Any] | None:
    """A flat document ``{"id", "text", **other fields}`` from a parsed record, issues counted.

    Returns ``None`` only for a record that is not a JSON object (counted ``invalid_json``).
    """
    if not isinstance(obj, dict):
        issues.add("invalid_json", where)
        return None
    if raw is not None and _SURROGATE_ESCAPE.search(raw):
        obj, changed = _deep_clean(obj)
        if changed:
            issues.add("invalid_utf8", where)
    if spec.id_field == "id" and spec.text_field == "text":  # fast path: already flat and typed
        doc_id, text = obj.get("id"), obj.get("text")
        if type(doc_id) is str and type(text) is str:
            if not text or text.isspace():
                issues.add("empty_text", doc_id)
            return obj
    try:
        doc_id = get_field(obj, spec.id_field)
    except KeyError:
        doc_id = where
        issues.add("missing_id", where)
    try:
        text = get_field(obj, spec.text_field)
    except KeyError:
        text = ""
        issues.add("missing_text", where)
    if not isinstance(text, str):
        if isinstance(text, bytes):
            text = decode_bytes(text, issues, where)
        else:
            issues.add("non_string_text", where)
            text = str(text)
    if not isinstance(doc_id, str):
        issues.add("non_string_id", where)
        doc_id = str(doc_id)
    doc_id = clean_str(doc_id, Issues(), where)
    doc = {"id": doc_id, "text": text}
    for k, v in obj.items():
        if k not in (spec.id_field, spec.text_field, "id", "text"):
            doc[k] = v
    if not text or text.isspace():
        issues.add("empty_text", doc_id)
    return doc


def _deep_clean(x: Any) -> tuple[Any, bool]:
    if isinstance(x, str):
        try:
            x.encode("utf-8")
            return x, False
        except UnicodeEncodeError:
            return fix_surrogates(x), True
    if isinstance(x, dict):
        changed = False
        out = {}
        for k, v in x.items():
            k2, c1 = _deep_clean(k)
            v2, c2 = _deep_clean(v)
            out[k2] = v2
            changed |= c1 or c2
        return out, changed
    if isinstance(x, list):
        items = [_deep_clean(v) for v in x]
        return [v for v, _ in items], any(c for _, c in items)
    return x, False


class LineCursor:
    """Sequential reader of one compressed/plain JSONL file that can continue across units."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.stream: IO[bytes] | None = None
        self.line = 0

    def read(self, unit: Unit) -> Iterator[tuple[int, bytes]]:
        """(line number, line bytes) of the unit's rows."""
        if unit.byte_start >= 0:  # plain file: seek
            self.close()
            self.stream = open_lines(self.path)
            self.stream.seek(unit.byte_start)
            self.line = unit.start
        elif self.stream is None or self.line > unit.start:
            self.close()
            self.stream = open_lines(self.path)
            self.line = 0
        assert self.stream is not None
        try:
            while self.line < unit.start:  # skip (finished units before this one)
                if not self.stream.readline():
                    break
                self.line += 1
            while self.line < unit.stop:
                line = self.stream.readline()
                if not line:
                    raise LabelError(
                        f"input {self.path}: ended at line {self.line}, the plan expected "
                        f"{unit.stop} lines (file changed since planning?)"
                    )
                yield self.line, line
                self.line += 1
        except (OSError, EOFError) as e:
            raise LabelError(f"input {self.path}: cannot read ({e})") from None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def read_raw_unit(
    unit: Unit, spec: InputSpec, cursors: dict[str, Any]
) -> tuple[list[dict[str, Any]], Issues]:
    """Documents of a raw-input unit, in input order, with their issues."""
    issues = Issues()
    docs: list[dict[str, Any]] = []
    if unit.source == "synthetic":
        return _read_synthetic(unit, spec, issues, cursors), issues
    path: Path | str = unit.source if is_remote(unit.source) else Path(unit.source)
    name = _basename(path)
    if name.endswith(".parquet"):
        return _read_parquet(unit, spec, issues), issues
    cur = cursors.get(unit.source)
    if cur is None:
        for c in cursors.values():  # one open input at a time
            c.close()
        cursors.clear()
        cur = cursors[unit.source] = LineCursor(path)
    for lineno, line in cur.read(unit):
        where = f"{name}:{lineno + 1}"
        if not line.strip():
            issues.add("blank_line", where)  # not a document, but the user should know
            continue
        try:
            line_s = line.decode("utf-8")
        except UnicodeDecodeError:
            issues.add("invalid_utf8", where)
            line_s = line.decode("utf-8", "replace")
        try:
            obj = json.loads(line_s)
        except json.JSONDecodeError:
            issues.add("invalid_json", where)
            continue
        doc = normalize_doc(obj, where, spec, issues, raw=line)
        if doc is not None:
            docs.append(doc)
    return docs, issues


def _read_parquet(unit: Unit, spec: InputSpec, issues: Issues) -> list[dict[str, Any]]:
    name = _basename(unit.source)
    pf = open_parquet(unit.source)
    try:
        md = pf.metadata
        groups, first, row0 = [], None, 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if row0 + n > unit.start and row0 < unit.stop:
                groups.append(g)
                first = row0 if first is None else first
            row0 += n
        if not groups:
            return []
        table = pf.read_row_groups(groups).slice(unit.start - first, unit.stop - unit.start)
    finally:
        pf.close(force=True)
    docs = []
    for i, rec in enumerate(table.to_pylist()):
        doc = normalize_doc(rec, f"{name}:row{unit.start + i}", spec, issues)
        if doc is not None:
            docs.append(doc)
    return docs


def _synthetic_docs(opts: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    from quadmix_stream.synth import iter_docs

    domains = opts.get("domains")
    levels = opts.get("levels")
    for doc, _domain, level, _scores, _tokens in iter_docs(
        int(opts.get("docs_per_domain", 200)), int(opts.get("seed", 0))
    ):
        if domains is not None and doc["domain"] not in domains:
            continue
        if levels is not None and level not in levels:
            continue
        yield doc


class SynthCursor:
    """The synthetic generator, continued across consecutive units (restarted when going back)."""

    def __init__(self, opts: Mapping[str, Any]) -> None:
        self.opts = opts
        self.it: Iterator[dict[str, Any]] = _synthetic_docs(opts)
        self.pos = 0

    def read(self, start: int, stop: int) -> list[dict[str, Any]]:
        if start < self.pos:
            self.it, self.pos = _synthetic_docs(self.opts), 0
        out = list(islice(self.it, start - self.pos, stop - self.pos))
        self.pos = stop
        return out

    def close(self) -> None:
        pass


def _read_synthetic(
    unit: Unit, spec: InputSpec, issues: Issues, cursors: dict[str, Any]
) -> list[dict[str, Any]]:
    assert spec.synthetic is not None
    cur = cursors.get("synthetic")
    if cur is None:
        cur = cursors["synthetic"] = SynthCursor(spec.synthetic)
    docs = []
    for i, obj in enumerate(cur.read(unit.start, unit.stop)):
        doc = normalize_doc(obj, f"synthetic:{unit.start + i}", spec, issues)
        if doc is not None:
            docs.append(doc)
    return docs


def iter_documents(spec: InputSpec, base: Path | None = None) -> Iterator[dict[str, Any]]:
    """Every document of a raw input spec (``paths`` or ``synthetic``), e.g. for training."""
    spec.check()
    if spec.shards:
        raise RecipeError("training reads raw documents ('paths' or 'synthetic'), not shards")
    units = plan_raw(spec, 1 << 62, base)
    cursors: dict[str, LineCursor] = {}
    for u in units:
        docs, _ = read_raw_unit(u, spec, cursors)
        yield from docs
    for c in cursors.values():
        c.close()


def plan_raw(spec: InputSpec, rows_per_shard: int, base: Path | None = None) -> list[Unit]:
    """Units of a raw-input run: per file, consecutive slices of ``rows_per_shard`` rows."""
    if spec.synthetic is not None:
        n = sum(1 for _ in _synthetic_docs(spec.synthetic))
        if spec.limit is not None:
            n = min(n, spec.limit)
        return [
            Unit(i, "synthetic", s, min(s + rows_per_shard, n))
            for i, s in enumerate(range(0, n, rows_per_shard))
        ]
    units: list[Unit] = []
    for path in expand_paths(spec.paths, base):
        n, offsets = count_rows(path, rows_per_shard, spec.limit)
        for j, s in enumerate(range(0, n, rows_per_shard)):
            off = offsets[j] if offsets else -1
            units.append(Unit(len(units), str(path), s, min(s + rows_per_shard, n), off))
    return units


# ---------------------------------------------------------------- existing shards
def detect_shards(root: Path, fmt: str = "auto") -> tuple[str, list[str], dict[str, Any]]:
    """(format, shard names in dataset order, extra) of a folder of existing shards.

    ``extra`` carries a labelled dataset's manifest ``extra`` (kept on relabelling) and, for MDS,
    ``mds_index`` (name → index.json entry).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"input.shards: {root} is not a folder")
    extra: dict[str, Any] = {}
    if (root / MANIFEST_NAME).exists():
        m = Manifest.load(root)  # validated: shard names stay inside root
        if fmt in ("auto", m.format):
            extra["manifest_extra"] = m.extra
            names = [s.name for s in m.shards]
            if m.format == "mds":
                extra["mds_index"] = _mds_entries(root)
            return m.format, names, extra
    if fmt in ("auto", "mds") and (root / "index.json").exists():
        entries = _mds_entries(root)  # validated: every basename stays inside root
        # one name per shard, in index order: the compressed file when there is one
        names = list(
            dict.fromkeys(
                (s.get("zip_data") or s["raw_data"])["basename"] for s in entries.values()
            )
        )
        extra["mds_index"] = entries
        return "mds", names, extra
    tars = sorted(p.name for p in root.iterdir() if p.name.endswith(TAR_SUFFIXES))
    if fmt in ("auto", "tar") and tars:
        return "tar", tars, extra
    jsonl = sorted(p.name for p in root.iterdir() if p.name.endswith(".jsonl.zst"))
    if fmt in ("auto", "jsonl") and jsonl:
        return "jsonl", jsonl, extra
    parquet = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    if fmt in ("auto", "parquet") and parquet:
        return "parquet", parquet, extra
    arrow = _arrow_files(root)
    if fmt in ("auto", "arrow") and arrow:
        return "arrow", arrow, extra
    raise FileNotFoundError(
        f"input.shards: no "
        f"{fmt if fmt != 'auto' else 'MDS (index.json), .tar(.gz), .jsonl.zst, .parquet or .arrow'} "
        f"shards in {root}"
    )


def _arrow_files(root: Path) -> list[str]:
    """A ``save_to_disk`` folder's Arrow files in dataset order (its ``state.json``), else sorted."""
    state = root / "state.json"
    if state.exists():
        files = json.loads(state.read_text()).get("_data_files") or []
        names = [f["filename"] for f in files if isinstance(f, dict) and "filename" in f]
        if names:
            return names
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".arrow"))


def table_columns(path: Path, fmt: str) -> list[str]:
    """Column names of a Parquet (footer only) or Arrow file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    from quadmix_stream.formats.table import open_arrow_table

    return list(open_arrow_table(path).schema.names)


def _mds_entries(root: Path) -> dict[str, dict]:
    from quadmix_stream.formats.mds import mds_index

    return mds_index(root)


def read_shard_unit(
    root: Path,
    fmt: str,
    name: str,
    spec: InputSpec,
    mds_entries: dict[str, dict] | None,
    need_fields: bool = True,
    cache_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], Issues, tuple[list[int], list[int]] | None]:
    """Every row of an existing shard as a flat document, with issues and (tar) byte offsets.

    Rows are never dropped: the sidecar must stay row-aligned with the shard. Parquet/Arrow
    shards read only the text and id columns unless ``need_fields`` (a labeller reads fields).
    ``cache_dir``: where a ``.tar.gz`` shard is decompressed (default: the node's cache).
    """
    from quadmix_stream.formats.jsonl import JsonlShardReader
    from quadmix_stream.formats.tar import scan_tar, webdataset_members

    issues = Issues()
    path = resolve_inside(root, name, f"shard {name!r}", LabelError)
    if not path.exists():
        raise LabelError(f"shard {name!r}: shard file is missing")
    docs: list[dict[str, Any]] = []
    offsets = None
    if fmt == "mds":
        if not mds_entries or name not in mds_entries:
            raise LabelError(f"shard {name!r}: not listed in {root}/index.json")
        from quadmix_stream.formats.mds import mds_doc, read_shard

        for row, sample in enumerate(read_shard(path, mds_entries[name])):
            if "id" in sample and not isinstance(sample["id"], str):
                issues.add("non_string_id", f"{name}:{row}")
            docs.append(_flat(mds_doc(sample, name, row), f"{name}:{row}", issues))
    elif fmt == "jsonl":
        reader = JsonlShardReader(path)
        for row in range(len(reader.lines)):
            docs.append(_flat(reader.read(row), f"{name}:{row}", issues))
    elif fmt in ("parquet", "arrow"):
        docs = _read_table_shard(path, fmt, name, spec, issues, need_fields)
    else:
        if name.endswith((".gz", ".tgz")):  # offsets are into the decompressed tar (cached)
            from quadmix_stream.formats.decompress import gunzip_copy
            from quadmix_stream.io import default_cache_dir, sha256_file

            path = gunzip_copy(path, sha256_file(path), cache_dir or default_cache_dir())
        samples = scan_tar(path)
        offs, lens = [], []
        with open(path, "rb") as f:
            for key, off, length in samples:
                f.seek(off)
                _key, members = webdataset_members(f.read(length))
                where = f"{name}:{key}"
                if spec.tar_text_ext not in members:
                    raise LabelError(
                        f"shard {name!r}: sample {key!r} has no .{spec.tar_text_ext} member "
                        f"(has {sorted(members)}); set input.tar_text_ext"
                    )
                text = decode_bytes(members[spec.tar_text_ext], issues, where)
                meta: dict[str, Any] = {}
                jx = spec.tar_json_ext
                if jx and jx in members:
                    meta = json.loads(members[jx])
                    if not isinstance(meta, dict):
                        meta = {"json": meta}
                doc_id = meta.pop("id", key)
                if not isinstance(doc_id, str):
                    issues.add("non_string_id", where)
                    doc_id = str(doc_id)
                docs.append(_flat({"id": doc_id, "text": text, "meta": meta}, where, issues))
                offs.append(off)
                lens.append(length)
        offsets = (offs, lens)
    return docs, issues, offsets


def _read_table_shard(
    path: Path, fmt: str, name: str, spec: InputSpec, issues: Issues, need_fields: bool
) -> list[dict[str, Any]]:
    """Every row of a Parquet/Arrow file as a flat document (row group by row group)."""
    from quadmix_stream.formats.table import TableDocs, open_arrow_table

    names = table_columns(path, fmt)
    if spec.id_field != "id" and spec.id_field not in names:
        raise LabelError(f"shard {name!r}: no id column {spec.id_field!r} (columns {names})")
    cols = TableDocs(names, name, spec.text_field, spec.id_field, None if need_fields else [])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        tables = (pf.read_row_group(g, columns=cols.columns) for g in range(pf.num_row_groups))
    else:
        tables = iter([open_arrow_table(path).select(cols.columns)])
    docs: list[dict[str, Any]] = []
    for table in tables:  # one conversion per column, not one per value
        text, *rest = (table.column(c).to_pylist() for c in cols.columns)
        ids = rest.pop(0) if cols.id else [None] * len(text)
        for i, t in enumerate(text):
            row = len(docs)
            where = f"{name}:{row}"
            if t is None:
                issues.add("missing_text", where)
            doc_id = f"{name}:{row}" if ids[i] is None else str(ids[i])
            meta = {c: v[i] for c, v in zip(cols.meta, rest, strict=True)}
            d = {"id": doc_id, "text": "" if t is None else str(t), "meta": meta}
            docs.append(_flat(d, where, issues))
    return docs


def _flat(d: dict[str, Any], where: str, issues: Issues) -> dict[str, Any]:
    text = d["text"] if isinstance(d["text"], str) else str(d["text"])
    text = clean_str(text, issues, where)
    doc = {"id": str(d["id"]), "text": text}
    meta = d.get("meta") or {}
    if isinstance(meta, dict):
        for k, v in meta.items():
            if k not in ("id", "text"):
                doc[k] = v
    if not text or text.isspace():
        issues.add("empty_text", doc["id"])
    return doc


def plan_shards(root: Path | Any, fmt: str) -> tuple[str, list[Unit], dict[str, Any]]:
    """(format, units, extra) of a sidecar-mode run over the shards in ``root`` (a folder, or
    a :class:`~quadmix_stream.labelling.remote.RemoteRoot`)."""
    from quadmix_stream.labelling.remote import RemoteRoot, detect_remote_shards

    if isinstance(root, RemoteRoot):
        fmt, names, extra = detect_remote_shards(root, fmt)
    else:
        fmt, names, extra = detect_shards(Path(getattr(root, "path", root)), fmt)
    return fmt, [Unit(i, name) for i, name in enumerate(names)], extra
