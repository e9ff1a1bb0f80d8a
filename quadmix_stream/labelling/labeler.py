"""The labeller interface: a batch of texts → one array, of one kind and direction.

Kinds: ``domain`` (an array of domain names), ``quality`` (float raw scores; ``higher_is_better``
declares the orientation used by σ) and ``tokens`` (int64 counts on the whole text). Every kind of
labeller (:mod:`.fasttext_labeler`, :mod:`.fields`, :mod:`.counters`, :mod:`.heuristic`,
:mod:`.neural`) subclasses :class:`Labeler`; :mod:`.registry` builds them from recipe entries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.paths import LabelerError, fingerprint

KINDS = ("domain", "quality", "tokens")


class Labeler(ABC):
    """A batch of texts (and, for ``needs_docs`` labellers, their documents) → one array.

    Attributes:
        name: the column it fills: ``"domain"``, ``"tokens"`` or the scorer's name.
        kind: ``"domain"``, ``"quality"`` or ``"tokens"``.
        higher_is_better: orientation of a quality score (σ maps the best to 0).
        needs_docs: whether :meth:`predict` reads document fields (the pipeline then ships them).
        max_chars: texts longer than this are cut before the model sees them (counted as
            ``truncated[name]``); ``None``: never cut.
    """

    type_name = "abstract"
    needs_docs = False

    def __init__(self, name: str, kind: str, higher_is_better: bool = True) -> None:
        if kind not in KINDS:
            raise LabelerError(f"labeller {name!r}: kind must be one of {KINDS}, got {kind!r}")
        self.name, self.kind, self.higher_is_better = name, kind, bool(higher_is_better)
        self.max_chars: int | None = None
        self._fingerprint: str | None = None
        #: set by :meth:`predict` when the model cut texts by its own limit (e.g. tokens)
        self.last_truncated: np.ndarray | None = None

    # ---------------------------------------------------------------- what subclasses provide
    @abstractmethod
    def predict(
        self, texts: Sequence[str], docs: Sequence[Mapping[str, Any]] | None, issues: Issues
    ) -> np.ndarray:
        """Label a batch: domain names (object array), float64 scores or int64 token counts."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Settings that change the output (they enter the fingerprint and the manifest).

        Model locations are not settings: moving a model does not change its fingerprint."""

    def model_paths(self) -> list[Path]:
        """Model files/folders whose bytes enter the fingerprint."""
        return []

    def classes(self) -> list[str]:
        """Domain names this labeller can return (domain labellers only; ``[]`` when open-ended)."""
        return []

    # ---------------------------------------------------------------- shared behaviour
    def fingerprint(self) -> str:
        """Hash of the model bytes and output-changing settings (cached)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.type_name, self.settings(), *self.model_paths())
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the manifest and reports."""
        d: dict[str, Any] = {"type": self.type_name, "kind": self.kind, **self.settings()}
        paths = self.model_paths()
        if paths:
            d["paths"] = [str(p.resolve()) for p in paths]
        if self.kind == "quality":
            d["higher_is_better"] = self.higher_is_better
        d["fingerprint"] = self.fingerprint()
        return d

    def __call__(
        self,
        texts: Sequence[str],
        docs: Sequence[Mapping[str, Any]] | None = None,
        issues: Issues | None = None,
    ) -> np.ndarray:
        """Truncate for the model (counted), predict, and check the output's length and type."""
        issues = issues if issues is not None else Issues()
        cut = np.zeros(len(texts), dtype=bool)
        if self.max_chars is not None:
            m = self.max_chars
            cut = np.fromiter((len(t) > m for t in texts), dtype=bool, count=len(texts))
            if cut.any():
                texts = [t[:m] if c else t for t, c in zip(texts, cut, strict=True)]
        self.last_truncated = None
        out = self.predict(texts, docs, issues)
        if self.last_truncated is not None:
            cut |= self.last_truncated
        for i in np.flatnonzero(cut):
            issues.add(f"truncated[{self.name}]", doc_where(docs, i))
        if len(out) != len(texts):
            raise LabelerError(
                f"labeller {self.name!r} returned {len(out)} values for {len(texts)} texts"
            )
        if self.kind == "quality":
            out = np.asarray(out, dtype=np.float64)
            bad = ~np.isfinite(out)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LabelerError(
                    f"labeller {self.name!r} returned {out[i]} for document {doc_where(docs, i)}"
                )
        elif self.kind == "tokens":
            out = np.asarray(out, dtype=np.int64)
        else:
            out = np.asarray(out, dtype=object)
        return out


def doc_where(docs: Sequence[Mapping[str, Any]] | None, i: int) -> str:
    """Document ``i``'s id for messages (``#i`` when the documents are not at hand)."""
    if docs is not None and i < len(docs) and "id" in docs[i]:
        return str(docs[i]["id"])
    return f"#{i}"


__all__ = ["KINDS", "Labeler", "doc_where"]
