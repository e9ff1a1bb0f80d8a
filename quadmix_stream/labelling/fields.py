"""Labels already in the data: a document field (dotted path) as domain, score or count."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from quadmix_stream.labelling.labeler import Labeler, doc_where
from quadmix_stream.labelling.paths import LabelerError


def get_field(doc: Mapping[str, Any], path: str) -> Any:
    """``doc["a"]["b"]`` for ``path="a.b"``; raises KeyError when absent (or None)."""
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur or cur[part] is None:
            raise KeyError(path)
        cur = cur[part]
    return cur


class FieldLabeler(Labeler):
    """Take the label from a document field (dotted path, e.g. ``domain`` or ``meta.score``).

    Args:
        field: dotted path into the document (``id``/``text`` and every other field).
        kind: ``"domain"``, ``"quality"`` or ``"tokens"``.
        default: value used when the field is absent (counted as ``missing_field[name]``);
            without a default an absent field is an error naming the document.
        mapping: optional value → value map applied first (e.g. source → domain).
    """

    type_name = "field"
    needs_docs = True

    def __init__(
        self,
        field: str,
        kind: str,
        name: str,
        default: Any = None,
        mapping: Mapping[str, Any] | None = None,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(name, kind, higher_is_better)
        self.field, self.default = field, default
        self.mapping = {str(k): v for k, v in (mapping or {}).items()}

    def settings(self) -> dict[str, Any]:
        return {"field": self.field, "default": self.default, "mapping": self.mapping}

    def classes(self) -> list[str]:
        if self.kind != "domain" or not self.mapping:
            return []
        vals = {str(v) for v in self.mapping.values()}
        if self.default is not None:
            vals.add(str(self.default))
        return sorted(vals)

    def predict(self, texts, docs, issues):
        if docs is None:
            raise LabelerError(f"labeller {self.name!r} (field) needs the documents")
        out = []
        for i, doc in enumerate(docs):
            try:
                v = get_field(doc, self.field)
            except KeyError:
                if self.default is None:
                    raise LabelerError(
                        f"labeller {self.name!r}: document {doc_where(docs, i)} has no field "
                        f"{self.field!r} (give the labeller a 'default' to count and fill these)"
                    ) from None
                issues.add(f"missing_field[{self.name}]", doc_where(docs, i))
                v = self.default
            if self.mapping and str(v) in self.mapping:
                v = self.mapping[str(v)]
            out.append(v)
        if self.kind == "domain":
            return np.array([str(v) for v in out], dtype=object)
        try:
            return np.array([float(v) for v in out], dtype=np.float64)
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(out) if not _is_number(v))
            raise LabelerError(
                f"labeller {self.name!r}: field {self.field!r} of document {doc_where(docs, bad)} "
                f"is {out[bad]!r}, not a number"
            ) from None


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


__all__ = ["FieldLabeler", "get_field"]
