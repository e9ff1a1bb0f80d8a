"""Training fasttext labellers: a domain classifier, and a DCLM-style quality classifier
(positives: a target-like set; negatives: a uniform sample of pool documents; score P(positive)).

fasttext trains on one thread with a fixed seed, each training in a fresh process (this module
run as ``python -m``, see :func:`_fit_fasttext`), so the same data give the same model.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.fasttext_labeler import FASTTEXT_PREFIX
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
from quadmix_stream.storage.io import open_tmp, tmp_path


def _ft_line(label: str, text: str, max_chars: int) -> str:
    return f"{FASTTEXT_PREFIX}{label} {text[:max_chars].replace(chr(10), ' ')}\n"


def check_label(label: str) -> str:
    if not label or any(c.isspace() for c in label):
        raise LabelerError(f"class name {label!r} is empty or has whitespace (fasttext labels)")
    return label


def _train_child(job: str) -> None:
    """Train one fasttext model and save it (a fresh process, see :func:`_fit_fasttext`)."""
    import fasttext

    d = json.loads(job)
    fasttext.FastText.eprint = lambda *a, **k: None
    fasttext.train_supervised(d["train"], verbose=0, **d["params"]).save_model(d["out"])


def _fit_fasttext(lines: list[str], out: Path, params: Mapping[str, Any]) -> Any:
    """Train on ``lines`` in a seeded random order and save atomically; returns the loaded model.

    * The order is shuffled: fasttext's SGD with a decaying learning rate over class-sorted input
      would mostly learn the last classes.
    * Each training runs in a fresh process: in the installed fasttext build a second
      ``train_supervised`` in the same process inherits corrupted state (it fails with
      "Encountered NaN" at any learning rate, or differs from the same training run alone),
      while one training per process is deterministic (one thread, fixed seed).
    * A diverging run ("Encountered NaN") is retried with half the learning rate, as the
      fasttext authors advise.
    """
    import subprocess
    import sys

    from quadmix_stream.extras import require

    fasttext = require("fasttext", "training a fasttext labeller")

    fasttext.FastText.eprint = lambda *a, **k: None
    order = np.random.default_rng(int(params.get("seed", 0))).permutation(len(lines))
    lines = [lines[i] for i in order]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, train_path = open_tmp(out.with_name(out.name + ".train.txt"))
    tmp = tmp_path(out)
    params = dict(params)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        for attempt in range(6):
            job = json.dumps({"train": str(train_path), "params": params, "out": str(tmp)})
            with heartbeat(f"train labeller: fasttext on {len(lines):,} docs → {out.name}"):
                res = subprocess.run(
                    [sys.executable, "-m", "quadmix_stream.labelling.train_fasttext", job],
                    capture_output=True,
                    text=True,
                )
            if res.returncode == 0:
                break
            if "Encountered NaN" not in res.stderr or attempt == 5:
                raise RuntimeError(f"fasttext training failed: {res.stderr.strip()[-2000:]}")
            params["lr"] = float(params.get("lr", 0.1)) / 2
        os.replace(tmp, out)
    finally:
        train_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    model = fasttext.load_model(str(out))
    model.lr_used = float(params.get("lr", 0.1))
    return model


def _ft_params(opts: Mapping[str, Any]) -> dict[str, Any]:
    p = {
        "epoch": 5,
        "lr": 0.5,
        "wordNgrams": 2,
        "dim": 64,
        "minCount": 1,
        "bucket": 1_000_000,
        "thread": 1,  # one thread + fixed seed: the same data give the same model
        "seed": 0,
    }
    for k, v in opts.items():
        p[k] = v
    return p


def _ft_predict(model: Any, texts: list[str], k: int = -1) -> tuple[list, list]:
    lines = [t.replace("\n", " ") + "\n" for t in texts]
    return model.f.multilinePredict(lines, k, 0.0, "replace")


def train_fasttext_domain(
    docs: Iterable[dict],
    out: str | Path,
    field: str = "domain",
    holdout: float = 0.1,
    seed: int = 0,
    max_per_class: int | None = None,
    max_chars: int = 100_000,
    fasttext_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a fasttext domain classifier on documents with a ``field`` label.

    Returns the report: held-out accuracy, macro-F1, per-class recall and support.
    """
    out = Path(out)
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    per_class: Counter[str] = Counter()
    skipped = 0
    for d in docs:
        try:
            label = check_label(str(get_field(d, field)))
        except KeyError:
            skipped += 1
            continue
        if is_heldout(d["id"], holdout, seed):
            test.append((label, d["text"]))
        elif max_per_class is None or per_class[label] < max_per_class:
            per_class[label] += 1
            train.append((label, d["text"]))
    if len(per_class) < 2:
        raise LabelerError(f"fasttext-domain: need ≥ 2 classes in field {field!r}, got {per_class}")
    lines = [_ft_line(lab, t, max_chars) for lab, t in train]
    model = _fit_fasttext(lines, out, _ft_params(fasttext_params or {}))
    rep: dict[str, Any] = {
        "type": "fasttext-domain",
        "lr": model.lr_used,
        "classes": sorted(per_class),
        "train_docs": len(train),
        "heldout_docs": len(test),
        "skipped_no_field": skipped,
        "train_per_class": dict(sorted(per_class.items())),
    }
    if test:
        labels, _ = _ft_predict(model, [t for _, t in test], 1)
        pred = [lab[0][len(FASTTEXT_PREFIX) :] if lab else "" for lab in labels]
        truth = [lab for lab, _ in test]
        rep.update(classification_report(truth, pred))
    return rep


def train_fasttext_quality(
    positives: Iterable[dict],
    negatives: Iterable[dict],
    out: str | Path,
    pos_label: str = "hq",
    neg_label: str = "cc",
    holdout: float = 0.1,
    seed: int = 0,
    max_negatives: int | None = None,
    max_chars: int = 100_000,
    fasttext_params: Mapping[str, Any] | None = None,
    eval_docs: Iterable[dict] | None = None,
    eval_field: str | None = None,
    eval_positive: Any = 1,
) -> dict[str, Any]:
    """Train a DCLM-style quality classifier: positives vs a uniform sample of pool negatives.

    Negatives are a hash-uniform sample of ``max_negatives`` pool documents (default: as many as
    positives), excluding the positives' ids. Returns held-out AUC/accuracy, and the AUC against
    an external labelled set (``eval_docs`` with a binary ``eval_field``) when given.
    """
    out = Path(out)
    pos_label, neg_label = check_label(pos_label), check_label(neg_label)
    pos, neg = quality_sets(positives, negatives, max_negatives, seed)
    rows = [(pos_label, d) for d in pos] + [(neg_label, d) for d in neg]
    train = [(lab, d["text"]) for lab, d in rows if not is_heldout(d["id"], holdout, seed)]
    test = [(lab, d["text"]) for lab, d in rows if is_heldout(d["id"], holdout, seed)]
    model = _fit_fasttext(
        [_ft_line(lab, t, max_chars) for lab, t in train], out, _ft_params(fasttext_params or {})
    )
    rep: dict[str, Any] = {
        "type": "fasttext-quality",
        "lr": model.lr_used,
        "positive_label": pos_label,
        "positives": len(pos),
        "negatives": len(neg),
        "train_docs": len(train),
        "heldout_docs": len(test),
    }
    if test:
        s = _ft_prob(model, [t for _, t in test], pos_label)
        y = np.array([lab == pos_label for lab, _ in test], dtype=np.int64)
        rep["heldout_auc"] = round(auc(y, s), 4)
        rep["heldout_accuracy"] = round(float(np.mean((s > 0.5) == (y == 1))), 4)
    if eval_docs is not None and eval_field:
        docs = [d for d in eval_docs if has_field(d, eval_field)]
        s = _ft_prob(model, [d["text"] for d in docs], pos_label)
        y = np.array([str(get_field(d, eval_field)) == str(eval_positive) for d in docs])
        rep["external_eval"] = {
            "field": eval_field,
            "docs": len(docs),
            "positives": int(y.sum()),
            "auc": round(auc(y.astype(np.int64), s), 4),
        }
    return rep


def _ft_prob(model: Any, texts: list[str], label: str) -> np.ndarray:
    labels, probs = _ft_predict(model, texts, -1)
    target = FASTTEXT_PREFIX + label
    out = np.zeros(len(texts))
    for i, (lab, pr) in enumerate(zip(labels, probs, strict=True)):
        if target in lab:
            out[i] = pr[lab.index(target)]
    return out


__all__ = ["train_fasttext_domain", "train_fasttext_quality"]


if __name__ == "__main__":  # one fasttext training per process (see _fit_fasttext)
    import sys

    _train_child(sys.argv[1])
