"""Training labellers from a small labelled seed set, with a held-out report.

* ``fasttext-domain``: a fasttext classifier from documents carrying a domain field.
* ``fasttext-quality``: a DCLM-style fasttext classifier, positives (a target-like set) vs
  negatives (a uniform sample of pool documents); the score is P(positive).
* ``embedding``: a linear head (logistic regression) on sentence embeddings, for a domain or a
  quality label.

Splits are by a hash of the document id (deterministic, no RNG state); fasttext trains on one
thread with a fixed seed, so the same data give the same model. A job spec is stored beside the
model (``<model>.train.json``, with the report): re-running an identical job reuses the model.
"""

from __future__ import annotations

import heapq
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.hashing import doc_key, uniform
from quadmix_stream.io import atomic_write_text
from quadmix_stream.labelling.fasttext_labeler import FASTTEXT_PREFIX
from quadmix_stream.labelling.fields import get_field
from quadmix_stream.labelling.inputs import InputSpec
from quadmix_stream.labelling.paths import LabelerError, resolve_path
from quadmix_stream.labelling.read_raw import iter_documents
from quadmix_stream.progress import Progress, counted, heartbeat

SALT_SPLIT = 0x51A7_0101
SALT_NEG = 0x51A7_0102
TRAIN_TYPES = ("fasttext-domain", "fasttext-quality", "embedding")


# ---------------------------------------------------------------- data helpers
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


def _ft_line(label: str, text: str, max_chars: int) -> str:
    return f"{FASTTEXT_PREFIX}{label} {text[:max_chars].replace(chr(10), ' ')}\n"


def _check_label(label: str) -> str:
    if not label or any(c.isspace() for c in label):
        raise LabelerError(f"class name {label!r} is empty or has whitespace (fasttext labels)")
    return label


# ---------------------------------------------------------------- fasttext
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

    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None
    order = np.random.default_rng(int(params.get("seed", 0))).permutation(len(lines))
    lines = [lines[i] for i in order]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, train_path = tempfile.mkstemp(dir=out.parent, prefix=".train.", suffix=".txt")
    tmp = out.parent / f".{out.name}.tmp"
    params = dict(params)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(lines)
        for attempt in range(6):
            job = json.dumps({"train": train_path, "params": params, "out": str(tmp)})
            with heartbeat(f"train labeller: fasttext on {len(lines):,} docs → {out.name}"):
                res = subprocess.run(
                    [sys.executable, "-m", "quadmix_stream.labelling.train", job],
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
        Path(train_path).unlink(missing_ok=True)
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
            label = _check_label(str(get_field(d, field)))
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


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(set(y.tolist())) < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def _quality_sets(
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
    pos_label, neg_label = _check_label(pos_label), _check_label(neg_label)
    pos, neg = _quality_sets(positives, negatives, max_negatives, seed)
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
        rep["heldout_auc"] = round(_auc(y, s), 4)
        rep["heldout_accuracy"] = round(float(np.mean((s > 0.5) == (y == 1))), 4)
    if eval_docs is not None and eval_field:
        docs = [d for d in eval_docs if _has(d, eval_field)]
        s = _ft_prob(model, [d["text"] for d in docs], pos_label)
        y = np.array([str(get_field(d, eval_field)) == str(eval_positive) for d in docs])
        rep["external_eval"] = {
            "field": eval_field,
            "docs": len(docs),
            "positives": int(y.sum()),
            "auc": round(_auc(y.astype(np.int64), s), 4),
        }
    return rep


def _has(d: dict, field: str) -> bool:
    try:
        get_field(d, field)
        return True
    except KeyError:
        return False


def _ft_prob(model: Any, texts: list[str], label: str) -> np.ndarray:
    labels, probs = _ft_predict(model, texts, -1)
    target = FASTTEXT_PREFIX + label
    out = np.zeros(len(texts))
    for i, (lab, pr) in enumerate(zip(labels, probs, strict=True)):
        if target in lab:
            out[i] = pr[lab.index(target)]
    return out


# ---------------------------------------------------------------- embedding + linear head
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
    from sklearn.linear_model import LogisticRegression

    from quadmix_stream.labelling.embedding import Embedder, save_head
    from quadmix_stream.labelling.paths import content_hash

    emb_model = Embedder(model_path, max_length=max_length, batch_size=batch_size)
    rows: list[tuple[str, dict]] = []
    if kind == "domain":
        if docs is None:
            raise LabelerError("embedding head (domain): give documents with a domain field")
        per: Counter[str] = Counter()
        for d in docs:
            if not _has(d, field):
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
    elif kind == "quality":
        if positives is None or negatives is None:
            raise LabelerError("embedding head (quality): give positives and negatives")
        pos, neg = _quality_sets(positives, negatives, max_negatives, seed)
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
            rep["heldout_auc"] = round(_auc(yt, s), 4)
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


# ---------------------------------------------------------------- jobs (recipe / CLI)
def _expand(x: Any, out: Path, base: Path) -> Any:
    if isinstance(x, str):
        return x.replace("{out}", str(out)).replace("{recipe_dir}", str(base))
    if isinstance(x, list):
        return [_expand(v, out, base) for v in x]
    if isinstance(x, dict):
        return {k: _expand(v, out, base) for k, v in x.items()}
    return x


def report_path(model: Path) -> Path:
    """Where a trained model's job spec and full report are kept: ``<model>.train.json``."""
    return model.parent / (model.name + ".train.json")


def job_identity(job: Mapping[str, Any], base: Path) -> Any:
    """What decides a trained model: the job with each input's files and each model path
    replaced by content hashes, so ``a/../b`` and ``b`` (or a moved copy) are the same job."""
    from quadmix_stream.labelling.paths import content_hash
    from quadmix_stream.labelling.raw_files import expand_paths

    def walk(x: Any, name: str | None = None) -> Any:
        if isinstance(x, Mapping):
            d = {k: walk(v, k) for k, v in x.items()}
            pats = x.get("paths")
            if isinstance(pats, str | list):
                try:
                    files = expand_paths([pats] if isinstance(pats, str) else list(pats), base)
                    # a remote file by its URL (object stores version by name)
                    d["paths"] = [content_hash(f) if isinstance(f, Path) else f for f in files]
                except (FileNotFoundError, ValueError):
                    pass  # reported by name when the job reads its inputs
            return d
        if isinstance(x, list):
            return [walk(v) for v in x]
        if name == "model" and isinstance(x, str):
            p = resolve_path(x, base)
            return content_hash(p) if p.exists() else x
        return x

    return json.loads(json.dumps(walk(job), default=str))


def run_train_job(
    job: Mapping[str, Any], base: Path, out: Path | None = None, force: bool = False
) -> tuple[Path, dict[str, Any], bool]:
    """Run one training job (a recipe ``train:`` entry); returns (model path, report, trained).

    Skips the work when the model exists and its ``.train.json`` holds the same job (inputs and
    models compared by content, see :func:`job_identity`).
    """
    job = dict(_expand(dict(job), out or base, base))
    typ = job.pop("type", None)
    if typ not in TRAIN_TYPES:
        raise LabelerError(f"train: type must be one of {TRAIN_TYPES}, got {typ!r}")
    if "out" not in job:
        raise LabelerError(f"train ({typ}): needs 'out' (the model file to write)")
    model_out = resolve_path(job.pop("out"), base)
    spec_path = report_path(model_out)
    ident = job_identity({"type": typ, **job}, base)
    if not force and model_out.exists() and spec_path.exists():
        saved = json.loads(spec_path.read_text())
        if saved.get("job") == ident:
            return model_out, saved.get("report", {}), False

    def docs(key: str, where_key: str | None = None) -> Iterator[dict]:
        if key not in job:
            raise LabelerError(f"train ({typ}): needs {key!r}")
        spec = input_spec(job.pop(key))
        it = iter_documents(spec, base)
        it = where_filter(it, job.pop(where_key, None)) if where_key else it
        return counted(it, Progress(f"train labeller: reading {key}", unit="doc"))

    seed = int(job.pop("seed", 0))
    holdout = float(job.pop("holdout", 0.1))
    ft = dict(job.pop("fasttext", {}) or {})
    if typ == "fasttext-domain":
        rep = train_fasttext_domain(
            docs("input", "where"),
            model_out,
            field=job.pop("field", "domain"),
            holdout=holdout,
            seed=seed,
            max_per_class=job.pop("max_per_class", None),
            fasttext_params=ft,
        )
    elif typ == "fasttext-quality":
        ev = job.pop("eval", None)
        eval_docs = eval_field = None
        eval_pos: Any = 1
        if ev:
            ev = dict(ev)
            eval_field = ev.pop("field")
            eval_pos = ev.pop("positive", 1)
            eval_docs = where_filter(iter_documents(input_spec(ev.pop("input")), base), ev)
        rep = train_fasttext_quality(
            docs("positives", "positives_where"),
            docs("negatives", "negatives_where"),
            model_out,
            pos_label=job.pop("pos_label", "hq"),
            neg_label=job.pop("neg_label", "cc"),
            holdout=holdout,
            seed=seed,
            max_negatives=job.pop("max_negatives", None),
            fasttext_params=ft,
            eval_docs=eval_docs,
            eval_field=eval_field,
            eval_positive=eval_pos,
        )
    else:
        kind = job.pop("kind", "quality")
        model_path = resolve_path(job.pop("model"), base)
        common = {
            "holdout": holdout,
            "seed": seed,
            "max_length": int(job.pop("max_length", 256)),
            "batch_size": int(job.pop("batch_size", 32)),
        }
        if kind == "domain":
            rep = train_embedding_head(
                model_path,
                model_out,
                "domain",
                docs=docs("input", "where"),
                field=job.pop("field", "domain"),
                max_per_class=job.pop("max_per_class", None),
                **common,
            )
        else:
            rep = train_embedding_head(
                model_path,
                model_out,
                "quality",
                positives=docs("positives", "positives_where"),
                negatives=docs("negatives", "negatives_where"),
                pos_label=job.pop("pos_label", "hq"),
                neg_label=job.pop("neg_label", "cc"),
                max_negatives=job.pop("max_negatives", None),
                **common,
            )
    if job:
        raise LabelerError(f"train ({typ}): unknown options {sorted(job)}")
    atomic_write_text(
        spec_path,
        json.dumps({"job": ident, "report": rep}, indent=1),
    )
    return model_out, rep, True


def format_report(model: Path, rep: Mapping[str, Any]) -> str:
    """A few lines summarising a training report."""
    lines = [f"{rep.get('type')}: {model}"]
    keys = (
        "train_docs",
        "heldout_docs",
        "heldout_accuracy",
        "heldout_macro_f1",
        "heldout_auc",
        "positives",
        "negatives",
    )
    lines.append("  " + "  ".join(f"{k}={rep[k]}" for k in keys if k in rep))
    if "heldout_recall" in rep:
        rec = rep["heldout_recall"]
        sup = rep.get("heldout_support", {})
        lines.append(
            "  held-out recall: "
            + ", ".join(f"{c} {r:.2f} (n={sup.get(c, '?')})" for c, r in rec.items())
        )
    if "external_eval" in rep:
        e = rep["external_eval"]
        lines.append(
            f"  external eval on {e['field']}: AUC {e['auc']} over {e['docs']} docs "
            f"({e['positives']} positive)"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # one fasttext training per process (see _fit_fasttext)
    import sys

    _train_child(sys.argv[1])
