"""Reading a raw-input unit: its rows of a JSONL/Parquet file or of the synthetic generator,
as flat documents in input order with their counted issues."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import IO, Any

from quadmix_stream.formats.labels import LabelError
from quadmix_stream.labelling.documents import normalize_doc
from quadmix_stream.labelling.inputs import InputSpec, Unit
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.plan import plan_raw
from quadmix_stream.labelling.raw_files import basename, open_lines, open_parquet, synthetic_docs
from quadmix_stream.recipe import RecipeError
from quadmix_stream.storage.store import is_remote


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
    name = basename(path)
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
    name = basename(unit.source)
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


class SynthCursor:
    """The synthetic generator, continued across consecutive units (restarted when going back)."""

    def __init__(self, opts: Mapping[str, Any]) -> None:
        self.opts = opts
        self.it: Iterator[dict[str, Any]] = synthetic_docs(opts)
        self.pos = 0

    def read(self, start: int, stop: int) -> list[dict[str, Any]]:
        if start < self.pos:
            self.it, self.pos = synthetic_docs(self.opts), 0
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


__all__ = ["LineCursor", "SynthCursor", "iter_documents", "read_raw_unit"]
