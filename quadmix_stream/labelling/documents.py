"""Flat documents (``id``, ``text`` and every other field) from parsed records and shard rows.

Problems are counted in :class:`~.issues.Issues` (never dropped silently): missing or non-string
ids and texts, invalid UTF-8, empty texts.
"""

from __future__ import annotations

import re
from typing import Any

from quadmix_stream.labelling.fields import get_field
from quadmix_stream.labelling.inputs import InputSpec
from quadmix_stream.labelling.issues import Issues, clean_str, decode_bytes, fix_surrogates

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


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


def shard_doc(d: dict[str, Any], where: str, issues: Issues) -> dict[str, Any]:
    """A flat document from a shard row as :meth:`~quadmix_stream.formats.ShardFormat.scan`
    found it: bytes text decoded (invalid UTF-8 counted), a null text counted as missing, an id
    that is not a string counted and converted."""
    text = d["text"]
    if isinstance(text, bytes):
        text = decode_bytes(text, issues, where)
    elif text is None:
        issues.add("missing_text", where)
        text = ""
    doc_id = d["id"]
    if not isinstance(doc_id, str):
        issues.add("non_string_id", where)
        doc_id = str(doc_id)
    return flat_doc({"id": doc_id, "text": text, "meta": d["meta"]}, where, issues)


def flat_doc(d: dict[str, Any], where: str, issues: Issues) -> dict[str, Any]:
    """``{"id", "text", **meta}`` of a shard row (text cleaned, empty text counted)."""
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


__all__ = ["flat_doc", "normalize_doc", "shard_doc"]
