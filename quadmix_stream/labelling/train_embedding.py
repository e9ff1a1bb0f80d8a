"""Training an embedding labeller: a linear head (logistic regression) on sentence embeddings,
for a domain or a quality label."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.fields import get_field
from quadmix_stream.labelling.paths import LabelerError
from quadmix_stream.labelling.train_data import (
    auc,
    classification_report,
    has_field,
    is_heldout,
    quality_sets,
)
from quadmix_stream.progress import heartbeat


def train_embedding_head(
    model_path: str | Path,
    out: str | Path,
    kind: str,
    docs: Iterable[dict] | None = None,
    field: str = "domain",
    positives: Iterable[dict] | None = None,
    negatives: Iterable[dict] | None = None,
    pos_label: str = "hq",
    neg_label: str = "cc",
    holdout: float = 0.1,
    seed: int = 0,
    max_negatives: int | None = None,
    max_per_class: int | None = None,
    max_length: int = 256,
    batch_size: int = 32,
    c: float = 1.0,
) -> dict[str, Any]:
    """Fit a logistic-regression head on embeddings; ``kind="domain"`` (from ``docs[field]``) or
    ``kind="quality"`` (positives vs a uniform sample of negatives). Writes the head ``.npz``."""
    from quadmix_stream.extras import require
    from quadmix_stream.labelling.embedding import Embedder, save_head
    from quadmix_stream.labelling.paths import content_hash

    LogisticRegression = require(
        "sklearn.linear_model", "training an embedding head", "label"
    ).LogisticRegression

    emb_model = Embedder(model_path, max_length=max_length, batch_size=batch_size)
    rows: list[tuple[str, dict]] = []
    if kind == "domain":
        if docs is None:
            raise LabelerError("embedding head (domain): give documents with a domain field")
        rows = _domain_rows(docs, field, max_per_class, holdout, seed)
    elif kind == "quality":
        if positives is None or negatives is None:
            raise LabelerError("embedding head (quality): give positives and negatives")
        pos, neg = quality_sets(positives, negatives, max_negatives, seed)
        rows = [(pos_label, d) for d in pos] + [(neg_label, d) for d in neg]
    else:
        raise LabelerError(f"embedding head: kind must be 'domain' or 'quality', got {kind!r}")
    held = np.array([is_heldout(d["id"], holdout, seed) for _, d in rows], dtype=bool)
    y = np.array([lab for lab, _ in rows], dtype=object)
    with heartbeat(f"train labeller: embedding {len(rows):,} docs"):
        x, _ = emb_model.encode([d["text"] for _, d in rows])
    if len(set(y[~held].tolist())) < 2:
        raise LabelerError("embedding head: the training split needs ≥ 2 classes")
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(x[~held], y[~held])
    classes = [str(k) for k in clf.classes_]
    rep: dict[str, Any] = {
        "type": "embedding",
        "kind": kind,
        "classes": classes,
        "train_docs": int((~held).sum()),
        "heldout_docs": int(held.sum()),
    }
    if held.any():
        if kind == "quality":
            s = clf.predict_proba(x[held])[:, classes.index(pos_label)]
            yt = (y[held] == pos_label).astype(np.int64)
            rep["heldout_auc"] = round(auc(yt, s), 4)
            rep["heldout_accuracy"] = round(float(np.mean((s > 0.5) == (yt == 1))), 4)
        else:
            rep.update(classification_report(list(y[held]), list(clf.predict(x[held]))))
    save_head(
        out,
        clf.coef_,
        clf.intercept_,
        classes,
        kind,
        emb_model.fingerprint(),
        positive=pos_label if kind == "quality" else None,
        report=rep,
        embedder_model=content_hash(emb_model.path),
    )
    return rep


def _domain_rows(
    docs: Iterable[dict], field: str, max_per_class: int | None, holdout: float, seed: int
) -> list[tuple[str, dict]]:
    """(class, document) of the documents with a ``field``; training documents of a class past
    ``max_per_class`` are left out (held-out ones are always kept)."""
    rows: list[tuple[str, dict]] = []
    per: Counter[str] = Counter()
    for d in docs:
        if not has_field(d, field):
            continue
        lab = str(get_field(d, field))
        if (
            max_per_class is not None
            and per[lab] >= max_per_class
            and not is_heldout(d["id"], holdout, seed)
        ):
            continue
        per[lab] += 1
        rows.append((lab, d))
    return rows


__all__ = ["train_embedding_head"]
