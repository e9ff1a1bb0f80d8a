"""The labeller registry: recipe type name → the builder of that kind of labeller.

Built-in types (:func:`build_labeler` turns a recipe entry into one):

=============  =====================================================================================
``fasttext``   a fasttext supervised ``.bin``: domain = argmax label, quality = P(``label``) (DCLM)
``transformers`` a sequence classifier / regressor folder (FineWeb-Edu style), see :mod:`.neural`
``embedding``  an embedding model + a trained linear head (``.npz``), see :mod:`.embedding`
``field``      a value already in the document (``domain``, ``meta.score``, ...)
``tokenizer``  token counts from a tokenizers/transformers tokenizer (file or folder)
``whitespace`` whitespace-separated words; ``bytes``: UTF-8 bytes
``heuristic``  Gopher / C4 / FineWeb rules as a score (no model), see :mod:`.heuristic`
=============  =====================================================================================

Every kind imports only :mod:`.labeler` (the interface); this module imports the kinds, so the
labellers form no import circle. Heavy libraries still load only when a labeller is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quadmix_stream.labelling.counters import BytesCounter, TokenizerCounter, WhitespaceCounter
from quadmix_stream.labelling.embedding import EmbeddingHeadLabeler
from quadmix_stream.labelling.fasttext_labeler import FastTextLabeler
from quadmix_stream.labelling.fields import FieldLabeler
from quadmix_stream.labelling.heuristic import HeuristicLabeler
from quadmix_stream.labelling.labeler import Labeler
from quadmix_stream.labelling.neural import TransformersLabeler
from quadmix_stream.labelling.paths import LabelerError
from quadmix_stream.storage.locations import resolve_path


class Options:
    """A recipe entry's options being consumed by a builder (what is left over is an error).

    Attributes:
        spec: the options not consumed yet.
        typ, kind, name: the entry's type, role and column name (for messages).
        base: folder that relative model paths are taken against.
        higher_is_better: the entry's orientation (default True).
    """

    def __init__(
        self, spec: dict[str, Any], typ: str, kind: str, name: str, base: Path | None
    ) -> None:
        self.spec, self.typ, self.kind, self.name, self.base = spec, typ, kind, name, base
        self.higher_is_better = bool(spec.pop("higher_is_better", True))

    def pop(self, key: str, default: Any = None) -> Any:
        """Consume an optional option."""
        return self.spec.pop(key, default)

    def path(self, key: str = "path") -> Path:
        """Consume a required model path, resolved against :attr:`base`."""
        if key not in self.spec:
            raise LabelerError(f"labeller {self.name!r} ({self.typ}): needs a {key!r}")
        return resolve_path(self.spec.pop(key), self.base)

    def done(self, lab: Labeler) -> Labeler:
        """``lab``, once every option was consumed."""
        if self.spec:
            raise LabelerError(
                f"labeller {self.name!r} ({self.typ}): unknown options {sorted(self.spec)}"
            )
        return lab


def _fasttext(o: Options) -> Labeler:
    p = o.path()
    return FastTextLabeler(
        p,
        o.kind,
        o.name,
        label=o.pop("label"),
        max_chars=o.pop("max_chars", 100_000),
        higher_is_better=o.higher_is_better,
    )


def _field(o: Options) -> Labeler:
    if "field" not in o.spec:
        raise LabelerError(f"labeller {o.name!r} (field): needs a 'field'")
    return FieldLabeler(
        o.pop("field"),
        o.kind,
        o.name,
        default=o.pop("default"),
        mapping=o.pop("map"),
        higher_is_better=o.higher_is_better,
    )


def _counter(o: Options) -> None:
    if o.kind != "tokens":
        raise LabelerError(f"labeller {o.name!r}: {o.typ} counts tokens; use it as 'tokens'")


def _whitespace(o: Options) -> Labeler:
    _counter(o)
    return WhitespaceCounter(o.name)


def _bytes(o: Options) -> Labeler:
    _counter(o)
    return BytesCounter(o.name)


def _tokenizer(o: Options) -> Labeler:
    _counter(o)
    p = o.path()
    return TokenizerCounter(p, o.name, batch_size=int(o.pop("batch_size", 256)))


def _heuristic(o: Options) -> Labeler:
    if o.kind != "quality":
        raise LabelerError(f"labeller {o.name!r}: heuristic is a quality scorer")
    return HeuristicLabeler(o.name)


def _model_options(o: Options, max_length: int) -> dict[str, Any]:
    """The options every neural labeller takes (consumed in this order)."""
    return {
        "label": o.pop("label"),
        "max_length": int(o.pop("max_length", max_length)),
        "batch_size": int(o.pop("batch_size", 32)),
        "device": o.pop("device"),
        "higher_is_better": o.higher_is_better,
    }


def _transformers(o: Options) -> Labeler:
    p = o.path()
    return TransformersLabeler(p, o.kind, o.name, **_model_options(o, 512))


def _embedding(o: Options) -> Labeler:
    model = o.path("model")
    head = o.path("head")
    return EmbeddingHeadLabeler(model, head, o.kind, o.name, **_model_options(o, 256))


#: recipe ``type`` → builder (in the order the error message lists them).
BUILDERS: dict[str, Callable[[Options], Labeler]] = {
    "fasttext": _fasttext,
    "transformers": _transformers,
    "embedding": _embedding,
    "field": _field,
    "tokenizer": _tokenizer,
    "whitespace": _whitespace,
    "bytes": _bytes,
    "heuristic": _heuristic,
}
TYPES = tuple(BUILDERS)


def build_labeler(
    spec: Mapping[str, Any] | str, kind: str, name: str, base: Path | None = None
) -> Labeler:
    """Build a labeller from a recipe entry.

    Args:
        spec: a dict with ``type`` and its options, or a bare type name (``"whitespace"``).
        kind: the role it fills (``domain``/``quality``/``tokens``).
        name: its column name.
        base: folder that relative model paths are taken against.
    """
    if isinstance(spec, str):
        spec = {"type": spec}
    spec = dict(spec)
    typ = spec.pop("type", None)
    spec.pop("name", None)
    if typ not in TYPES:
        raise LabelerError(f"labeller {name!r}: type must be one of {TYPES}, got {typ!r}")
    opts = Options(spec, typ, kind, name, base)
    return opts.done(BUILDERS[typ](opts))


def describe_all(labelers: Sequence[Labeler]) -> dict[str, Any]:
    """``{column: description}`` for the manifest."""
    return {lab.name: lab.describe() for lab in labelers}


__all__ = ["BUILDERS", "TYPES", "Options", "build_labeler", "describe_all"]
