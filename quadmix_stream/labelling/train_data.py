"""Training sets for labellers: inputs, filters, deterministic held-out splits and negative
samples (by a hash of the document id: no RNG state), and the held-out reports."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from quadmix_stream.labelling.fields import get_field
from quadmix_stream.labelling.inputs import InputSpec
from quadmix_stream.labelling.paths import LabelerError
from quadmix_stream.mixing.hashing import doc_key, uniform

SALT_SPLIT = 0x51A7_0101
SALT_NEG = 0x51A7_0102


def input_spec(d: Mapping[str, Any] | InputSpec) -> InputSpec:
    """An :class:`InputSpec` from a recipe mapping (``paths``/``synthetic`` + options)."""
    if isinstance(d, InputSpec):
        return d
    d = dict(d)
    if isinstance(d.get("paths"), str):
        d["paths"] = [d["paths"]]
    known = set(InputSpec.__dataclass_fields__)
    bad = sorted(set(d) - known)
    if bad:
        raise LabelerError(f"input: unknown keys {bad} (known: {sorted(known)})")
    spec = InputSpec(**d)
    spec.check()
    return spec


def where_filter(docs: Iterable[dict], where: Mapping[str, Any] | None) -> Iterator[dict]:
    """Documents whose fields match ``where`` (``{field: value or [values]}``, all must match)."""
    conds = {k: (v if isinstance(v, list) else [v]) for k, v in (where or {}).items()}
    for d in docs:
        ok = True
        for k, vals in conds.items():
            try:
                v = get_field(d, k)
            except KeyError:
                ok = False
                break
            if v not in vals and str(v) not in [str(x) for x in vals]:
                ok = False
                break
        if ok:
            yield d


def is_heldout(doc_id: str, holdout: float, seed: int) -> bool:
    """Deterministic split: a document is held out when its hash-uniform is below ``holdout``."""
    u = uniform(np.array([doc_key(doc_id)], dtype=np.uint64), seed, SALT_SPLIT)[0]
    return bool(u < holdout)


def bottom_k(docs: Iterable[dict], k: int, seed: int, exclude: set[str] | None = None) -> list:
    """A uniform sample of ``k`` documents (smallest hash-uniforms), in a single pass, O(k) memory."""
    heap: list[tuple[float, int, dict]] = []
    for i, d in enumerate(docs):
        if exclude and d["id"] in exclude:
            continue
        u = float(uniform(np.array([doc_key(d["id"])], dtype=np.uint64), seed, SALT_NEG)[0])
        item = (-u, i, d)
        if len(heap) < k:
            heapq.heappush(heap, item)
        elif -u > heap[0][0]:
            heapq.heapreplace(heap, item)
    return [d for _, _, d in sorted(heap, key=lambda t: t[1])]


def classification_report(truth: list[str], pred: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall/support of predicted vs true class names."""
    truth_a, pred_a = np.array(truth, dtype=object), np.array(pred, dtype=object)
    acc = float(np.mean(truth_a == pred_a))
    f1s, recall, support = [], {}, {}
    for c in sorted(set(truth)):
        tp = int(np.sum((truth_a == c) & (pred_a == c)))
        fp = int(np.sum((truth_a != c) & (pred_a == c)))
        fn = int(np.sum((truth_a == c) & (pred_a != c)))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
        recall[c] = round(tp / max(tp + fn, 1), 4)
        support[c] = tp + fn
    return {
        "heldout_accuracy": round(acc, 4),
        "heldout_macro_f1": round(float(np.mean(f1s)), 4),
        "heldout_recall": recall,
        "heldout_support": support,
    }


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(y.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def quality_sets(
    positives: Iterable[dict], negatives: Iterable[dict], max_negatives: int | None, seed: int
) -> tuple[list[dict], list[dict]]:
    pos = list(positives)
    if not pos:
        raise LabelerError("quality training: the positive set is empty")
    ids = {d["id"] for d in pos}
    k = max_negatives if max_negatives is not None else len(pos)
    neg = bottom_k(negatives, k, seed, exclude=ids)
    if not neg:
        raise LabelerError("quality training: the negative set is empty")
    return pos, neg


def has_field(d: dict, field: str) -> bool:
    try:
        get_field(d, field)
        return True
    except KeyError:
        return False


__all__ = [
    "auc",
    "bottom_k",
    "classification_report",
    "has_field",
    "input_spec",
    "is_heldout",
    "quality_sets",
    "where_filter",
]
