"""fasttext supervised classifiers as domain labellers or DCLM-style quality scorers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.labeler import Labeler, doc_where
from quadmix_stream.labelling.paths import LabelerError, require_readable
from quadmix_stream.storage.locations import resolve_path

FASTTEXT_PREFIX = "__label__"


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
            from quadmix_stream.extras import require

            fasttext = require("fasttext", "a fasttext labeller")
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
                    issues.add(f"no_prediction[{self.name}]", doc_where(docs, i))
            return out
        target = FASTTEXT_PREFIX + str(self.label)
        labels, probs = self.model.f.multilinePredict(lines, -1, 0.0, "replace")
        out = np.empty(n, dtype=np.float64)
        uniform = 1.0 / len(self.labels)
        for i, (lab, pr) in enumerate(zip(labels, probs, strict=True)):
            if not lab:
                out[i] = uniform
                issues.add(f"no_prediction[{self.name}]", doc_where(docs, i))
                continue
            try:
                out[i] = pr[lab.index(target)]
            except ValueError:
                out[i] = 0.0
        # fasttext adds 1e-5 before the softmax-probability's log; clip into [0, 1]
        return np.clip(out, 0.0, 1.0)


__all__ = ["FASTTEXT_PREFIX", "FastTextLabeler"]
