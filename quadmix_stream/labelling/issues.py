"""Per-document problems: counted, located, reported; never a silently dropped or shifted row.

Every oddity met while reading or labelling a document (empty text, invalid UTF-8, a missing
field, text truncated for a model, an unparseable input line) is counted by kind, with the first
few locations kept so the report can point at them. Counts are deterministic (no timings), so they
can live in the manifest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: How many example locations are kept per kind.
MAX_EXAMPLES = 5

#: What each kind means, for the report. Kinds marked "skipped" are the only ones that drop input.
KINDS = {
    "empty_text": "document text is empty or whitespace only (labelled; 0 tokens)",
    "missing_text": "no text field (labelled as empty text)",
    "non_string_text": "text field is not a string (converted with str())",
    "missing_id": "no id field (id made from the input location)",
    "non_string_id": "id is not a string (a number, object, ...; converted with str())",
    "invalid_utf8": "invalid UTF-8 / lone surrogates (replaced with U+FFFD)",
    "invalid_json": "input line is not a JSON object (skipped: not a document)",
    "blank_line": "input line is empty or whitespace only (skipped: not a document)",
    "truncated": "text truncated for a model (tokens are counted on the whole text)",
    "no_prediction": "model saw no known token (fasttext: uniform output, first class for domains)",
    "missing_field": "a field labeller's field is absent (its default was used)",
    "unknown_domain": "a domain labeller returned a domain outside the list (mapped by policy)",
    "duplicate_id": "document id seen before in the pool (same document key)",
}


@dataclass
class Issues:
    """Counts and example locations of per-document problems, by kind (``kind`` or ``kind[labeller]``)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str, n: int = 1) -> None:
        """Count ``n`` occurrences of ``kind``; remember ``where`` if examples are still wanted."""
        self.counts[kind] = self.counts.get(kind, 0) + n
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)

    def update(self, other: Issues | Mapping) -> None:
        """Add the counts (and examples, up to the cap) of another :class:`Issues` or its dict."""
        o = other if isinstance(other, Issues) else Issues.from_dict(other)
        for k, n in o.counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
            ex = self.examples.setdefault(k, [])
            ex.extend(o.examples.get(k, [])[: max(0, MAX_EXAMPLES - len(ex))])

    def to_dict(self) -> dict:
        return {
            "counts": dict(sorted(self.counts.items())),
            "examples": {k: v for k, v in sorted(self.examples.items()) if v},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Issues:
        return cls(
            dict(d.get("counts", {})), {k: list(v) for k, v in d.get("examples", {}).items()}
        )

    @classmethod
    def merged(cls, parts: Iterable[Issues | Mapping]) -> Issues:
        out = cls()
        for p in parts:
            out.update(p)
        return out

    def report(self) -> list[str]:
        """Human-readable lines, one per kind, with example locations."""
        lines = []
        for k, n in sorted(self.counts.items()):
            base = k.split("[", 1)[0]
            what = KINDS.get(base, "")
            ex = ", ".join(self.examples.get(k, [])[:3])
            lines.append(f"  {k:<28}{n:>9}  {what}" + (f"  e.g. {ex}" if ex else ""))
        return lines


def clean_str(s: str, issues: Issues, where: str) -> str:
    """``s`` as valid UTF-8-encodable text; lone surrogates become U+FFFD and are counted."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        issues.add("invalid_utf8", where)
        return fix_surrogates(s)


_SURROGATES = re.compile("[\ud800-\udfff]")


def fix_surrogates(s: str) -> str:
    """Each lone surrogate (from a ``\\ud800``-style JSON escape) becomes U+FFFD."""
    return _SURROGATES.sub("\ufffd", s)


def decode_bytes(b: bytes, issues: Issues, where: str) -> str:
    """UTF-8 decode; invalid bytes become U+FFFD and are counted."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        issues.add("invalid_utf8", where)
        return b.decode("utf-8", "replace")
