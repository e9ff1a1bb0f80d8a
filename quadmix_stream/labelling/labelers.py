"""Labellers: one interface (a batch of texts → one array), each declaring its kind and direction.

Kinds: ``domain`` (an array of domain names), ``quality`` (float raw scores; ``higher_is_better``
declares the orientation used by σ) and ``tokens`` (int64 counts on the whole text).

Built-in types (:func:`build_labeler` turns a recipe entry into one):

=============  =====================================================================================
``fasttext``   a fasttext supervised ``.bin``: domain = argmax label, quality = P(``label``) (DCLM)
``transformers`` a sequence classifier / regressor folder (FineWeb-Edu style), see :mod:`.neural`
``embedding``  an embedding model + a trained linear head (``.npz``), see :mod:`.neural`
``field``      a value already in the document (``domain``, ``meta.score``, ...)
``tokenizer``  token counts from a tokenizers/transformers tokenizer (file or folder)
``whitespace`` whitespace-separated words; ``bytes``: UTF-8 bytes
``heuristic``  Gopher / C4 / FineWeb rules as a score (no model), see :mod:`.heuristic`
=============  =====================================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.paths import (
    LabelerError,
    fingerprint,
    require_readable,
    resolve_path,
)

KINDS = ("domain", "quality", "tokens")
FASTTEXT_PREFIX = "__label__"


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
            issues.add(f"truncated[{self.name}]", _where(docs, i))
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
                    f"labeller {self.name!r} returned {out[i]} for document {_where(docs, i)}"
                )
        elif self.kind == "tokens":
            out = np.asarray(out, dtype=np.int64)
        else:
            out = np.asarray(out, dtype=object)
        return out


def _where(docs: Sequence[Mapping[str, Any]] | None, i: int) -> str:
    if docs is not None and i < len(docs) and "id" in docs[i]:
        return str(docs[i]["id"])
    return f"#{i}"


# ---------------------------------------------------------------- fasttext
class FastTextLabeler(Labeler):
    """A fasttext supervised classifier from a ``.bin`` path.

    ``kind="domain"``: the argmax label (without ``__label__``) is the domain.
    ``kind="quality"``: the probability of ``label`` (DCLM style: ``label="hq"``), higher is better.

    Args:
        path: the model file.
        kind: ``"domain"`` or ``"quality"``.
        name: column name.
        label: quality only: the label whose probability is the score (with or without the
            ``__label__`` prefix). Optional for a two-label model whose labels include one of
            ``hq``/``pos``/``positive``/``1``.
        max_chars: texts are cut to this many characters before prediction (default 100k).
    """

    type_name = "fasttext"

    def __init__(
        self,
        path: str | Path,
        kind: str,
        name: str,
        label: str | None = None,
        max_chars: int | None = 100_000,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(name, kind, higher_is_better)
        if kind == "tokens":
            raise LabelerError(f"labeller {name!r}: fasttext gives domains or quality scores")
        self.path = require_readable(
            resolve_path(path), f"labeller {name!r} (fasttext)", want_dir=False
        )
        try:
            import fasttext

            fasttext.FastText.eprint = lambda *a, **k: None  # silence the load warning
            self.model = fasttext.load_model(str(self.path))
        except Exception as e:
            raise LabelerError(
                f"labeller {name!r} (fasttext): cannot load {self.path}: {e}"
            ) from None
        labels = list(self.model.get_labels())
        if not labels or not all(lab.startswith(FASTTEXT_PREFIX) for lab in labels):
            raise LabelerError(
                f"labeller {name!r} (fasttext): {self.path} is not a supervised model "
                f"(labels {labels[:5]})"
            )
        self.labels = [lab[len(FASTTEXT_PREFIX) :] for lab in labels]
        self.max_chars = max_chars
        self.label = None
        if kind == "quality":
            if label is None:
                guess = [x for x in self.labels if x in ("hq", "pos", "positive", "1", "high")]
                if len(self.labels) != 2 or len(guess) != 1:
                    raise LabelerError(
                        f"labeller {name!r} (fasttext): say which label is the score "
                        f"(label: one of {self.labels})"
                    )
                label = guess[0]
            label = label.removeprefix(FASTTEXT_PREFIX)
            if label not in self.labels:
                raise LabelerError(
                    f"labeller {name!r} (fasttext): label {label!r} is not in the model's "
                    f"labels {self.labels}"
                )
            self.label = label

    def settings(self) -> dict[str, Any]:
        return {"label": self.label, "max_chars": self.max_chars}

    def model_paths(self) -> list[Path]:
        return [self.path]

    def classes(self) -> list[str]:
        return sorted(self.labels) if self.kind == "domain" else []

    def predict(self, texts, docs, issues):
        # fasttext reads one line per text; newlines would split a document.
        lines = [t.replace("\n", " ") + "\n" for t in texts]
        n = len(lines)
        if self.kind == "domain":
            labels, _ = self.model.f.multilinePredict(lines, 1, 0.0, "replace")
            out = np.empty(n, dtype=object)
            first = self.labels[0]
            for i, lab in enumerate(labels):
                if lab:
                    out[i] = lab[0][len(FASTTEXT_PREFIX) :]
                else:
                    out[i] = first
                    issues.add(f"no_prediction[{self.name}]", _where(docs, i))
            return out
        target = FASTTEXT_PREFIX + str(self.label)
        labels, probs = self.model.f.multilinePredict(lines, -1, 0.0, "replace")
        out = np.empty(n, dtype=np.float64)
        uniform = 1.0 / len(self.labels)
        for i, (lab, pr) in enumerate(zip(labels, probs, strict=True)):
            if not lab:
                out[i] = uniform
                issues.add(f"no_prediction[{self.name}]", _where(docs, i))
                continue
            try:
                out[i] = pr[lab.index(target)]
            except ValueError:
                out[i] = 0.0
        # fasttext adds 1e-5 before the softmax-probability's log; clip into [0, 1]
        return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------- fields already in the data
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
                        f"labeller {self.name!r}: document {_where(docs, i)} has no field "
                        f"{self.field!r} (give the labeller a 'default' to count and fill these)"
                    ) from None
                issues.add(f"missing_field[{self.name}]", _where(docs, i))
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
                f"labeller {self.name!r}: field {self.field!r} of document {_where(docs, bad)} "
                f"is {out[bad]!r}, not a number"
            ) from None


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- token counters
class WhitespaceCounter(Labeler):
    """Tokens = whitespace-separated words (``len(text.split())``)."""

    type_name = "whitespace"

    def __init__(self, name: str = "tokens") -> None:
        super().__init__(name, "tokens")

    def settings(self) -> dict[str, Any]:
        return {}

    def predict(self, texts, docs, issues):
        return np.fromiter((len(t.split()) for t in texts), dtype=np.int64, count=len(texts))


class BytesCounter(Labeler):
    """Tokens = UTF-8 bytes of the text."""

    type_name = "bytes"

    def __init__(self, name: str = "tokens") -> None:
        super().__init__(name, "tokens")

    def settings(self) -> dict[str, Any]:
        return {}

    def predict(self, texts, docs, issues):
        return np.fromiter(
            (len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts)
        )


class TokenizerCounter(Labeler):
    """Token counts from a tokenizer: a ``tokenizer.json`` file, or a folder holding one (fast
    path, the ``tokenizers`` library) or any transformers tokenizer files (``AutoTokenizer``).

    Every token of the whole text is counted (no truncation, no special tokens).
    """

    type_name = "tokenizer"

    def __init__(self, path: str | Path, name: str = "tokens", batch_size: int = 256) -> None:
        super().__init__(name, "tokens")
        self.path = require_readable(resolve_path(path), f"labeller {name!r} (tokenizer)")
        self.batch_size = batch_size
        file = self.path if self.path.is_file() else self.path / "tokenizer.json"
        try:
            if file.is_file():
                from tokenizers import Tokenizer

                self.tok = Tokenizer.from_file(str(file))
                self.tok.no_truncation()
                self.tok.no_padding()
                self._fast = True
            else:
                from quadmix_stream.labelling.neural import offline_env

                offline_env()
                from transformers import AutoTokenizer

                self.tok = AutoTokenizer.from_pretrained(
                    str(self.path), local_files_only=True, trust_remote_code=False
                )
                self._fast = False
        except Exception as e:
            raise LabelerError(
                f"labeller {name!r} (tokenizer): cannot load {self.path}: {e}"
            ) from None

    def settings(self) -> dict[str, Any]:
        return {}

    def model_paths(self) -> list[Path]:
        return [self.path]

    def predict(self, texts, docs, issues):
        out = np.empty(len(texts), dtype=np.int64)
        for s in range(0, len(texts), self.batch_size):
            chunk = list(texts[s : s + self.batch_size])
            if self._fast:
                enc = self.tok.encode_batch(chunk, add_special_tokens=False)
                out[s : s + len(chunk)] = [len(e.ids) for e in enc]
            else:
                ids = self.tok(chunk, add_special_tokens=False, verbose=False)["input_ids"]
                out[s : s + len(chunk)] = [len(x) for x in ids]
        return out


# ---------------------------------------------------------------- from a recipe entry
TYPES = (
    "fasttext",
    "transformers",
    "embedding",
    "field",
    "tokenizer",
    "whitespace",
    "bytes",
    "heuristic",
)


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
    hib = bool(spec.pop("higher_is_better", True))

    def path(key: str = "path") -> Path:
        if key not in spec:
            raise LabelerError(f"labeller {name!r} ({typ}): needs a {key!r}")
        return resolve_path(spec.pop(key), base)

    def done(lab: Labeler) -> Labeler:
        if spec:
            raise LabelerError(f"labeller {name!r} ({typ}): unknown options {sorted(spec)}")
        return lab

    if typ == "fasttext":
        p = path()
        return done(
            FastTextLabeler(
                p,
                kind,
                name,
                label=spec.pop("label", None),
                max_chars=spec.pop("max_chars", 100_000),
                higher_is_better=hib,
            )
        )
    if typ == "field":
        if "field" not in spec:
            raise LabelerError(f"labeller {name!r} (field): needs a 'field'")
        return done(
            FieldLabeler(
                spec.pop("field"),
                kind,
                name,
                default=spec.pop("default", None),
                mapping=spec.pop("map", None),
                higher_is_better=hib,
            )
        )
    if typ in ("tokenizer", "whitespace", "bytes"):
        if kind != "tokens":
            raise LabelerError(f"labeller {name!r}: {typ} counts tokens; use it as 'tokens'")
        if typ == "whitespace":
            return done(WhitespaceCounter(name))
        if typ == "bytes":
            return done(BytesCounter(name))
        p = path()
        return done(TokenizerCounter(p, name, batch_size=int(spec.pop("batch_size", 256))))
    if typ == "heuristic":
        if kind != "quality":
            raise LabelerError(f"labeller {name!r}: heuristic is a quality scorer")
        from quadmix_stream.labelling.heuristic import HeuristicLabeler

        return done(HeuristicLabeler(name))
    from quadmix_stream.labelling import neural

    if typ == "transformers":
        p = path()
        return done(
            neural.TransformersLabeler(
                p,
                kind,
                name,
                label=spec.pop("label", None),
                max_length=int(spec.pop("max_length", 512)),
                batch_size=int(spec.pop("batch_size", 32)),
                device=spec.pop("device", None),
                higher_is_better=hib,
            )
        )
    model = path("model")
    head = path("head")
    return done(
        neural.EmbeddingHeadLabeler(
            model,
            head,
            kind,
            name,
            label=spec.pop("label", None),
            max_length=int(spec.pop("max_length", 256)),
            batch_size=int(spec.pop("batch_size", 32)),
            device=spec.pop("device", None),
            higher_is_better=hib,
        )
    )


def describe_all(labelers: Sequence[Labeler]) -> dict[str, Any]:
    """``{column: description}`` for the manifest."""
    return {lab.name: lab.describe() for lab in labelers}


__all__ = [
    "KINDS",
    "TYPES",
    "BytesCounter",
    "FastTextLabeler",
    "FieldLabeler",
    "Labeler",
    "LabelerError",
    "TokenizerCounter",
    "WhitespaceCounter",
    "build_labeler",
    "describe_all",
    "get_field",
]
