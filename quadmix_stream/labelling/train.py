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

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from quadmix_stream.labelling.paths import LabelerError
from quadmix_stream.labelling.read_raw import iter_documents
from quadmix_stream.labelling.train_data import input_spec, where_filter
from quadmix_stream.labelling.train_embedding import train_embedding_head
from quadmix_stream.labelling.train_fasttext import train_fasttext_domain, train_fasttext_quality
from quadmix_stream.progress import Progress, counted
from quadmix_stream.storage.io import atomic_write_text
from quadmix_stream.storage.locations import resolve_path


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


class _Job:
    """A training job's options being consumed (what is left over is an error)."""

    def __init__(self, job: dict[str, Any], typ: str, base: Path) -> None:
        self.job, self.typ, self.base = job, typ, base

    def pop(self, key: str, default: Any = None) -> Any:
        """Consume an option."""
        return self.job.pop(key, default)

    def docs(self, key: str, where_key: str | None = None) -> Iterator[dict]:
        """The documents of input ``key``, filtered by option ``where_key``, counted."""
        if key not in self.job:
            raise LabelerError(f"train ({self.typ}): needs {key!r}")
        spec = input_spec(self.job.pop(key))
        it = iter_documents(spec, self.base)
        it = where_filter(it, self.job.pop(where_key, None)) if where_key else it
        return counted(it, Progress(f"train labeller: reading {key}", unit="doc"))


def _fasttext_domain(
    j: _Job, model_out: Path, holdout: float, seed: int, ft: dict[str, Any]
) -> dict[str, Any]:
    return train_fasttext_domain(
        j.docs("input", "where"),
        model_out,
        field=j.pop("field", "domain"),
        holdout=holdout,
        seed=seed,
        max_per_class=j.pop("max_per_class"),
        fasttext_params=ft,
    )


def _fasttext_quality(
    j: _Job, model_out: Path, holdout: float, seed: int, ft: dict[str, Any]
) -> dict[str, Any]:
    ev = j.pop("eval")
    eval_docs = eval_field = None
    eval_pos: Any = 1
    if ev:
        ev = dict(ev)
        eval_field = ev.pop("field")
        eval_pos = ev.pop("positive", 1)
        eval_docs = where_filter(iter_documents(input_spec(ev.pop("input")), j.base), ev)
    return train_fasttext_quality(
        j.docs("positives", "positives_where"),
        j.docs("negatives", "negatives_where"),
        model_out,
        pos_label=j.pop("pos_label", "hq"),
        neg_label=j.pop("neg_label", "cc"),
        holdout=holdout,
        seed=seed,
        max_negatives=j.pop("max_negatives"),
        fasttext_params=ft,
        eval_docs=eval_docs,
        eval_field=eval_field,
        eval_positive=eval_pos,
    )


def _embedding(
    j: _Job, model_out: Path, holdout: float, seed: int, ft: dict[str, Any]
) -> dict[str, Any]:
    kind = j.pop("kind", "quality")
    model_path = resolve_path(j.pop("model"), j.base)
    common = {
        "holdout": holdout,
        "seed": seed,
        "max_length": int(j.pop("max_length", 256)),
        "batch_size": int(j.pop("batch_size", 32)),
    }
    if kind == "domain":
        data = {
            "docs": j.docs("input", "where"),
            "field": j.pop("field", "domain"),
            "max_per_class": j.pop("max_per_class"),
        }
    else:
        data = {
            "positives": j.docs("positives", "positives_where"),
            "negatives": j.docs("negatives", "negatives_where"),
            "pos_label": j.pop("pos_label", "hq"),
            "neg_label": j.pop("neg_label", "cc"),
            "max_negatives": j.pop("max_negatives"),
        }
    role = "domain" if kind == "domain" else "quality"
    return train_embedding_head(model_path, model_out, role, **data, **common)


#: training job ``type`` → the function that runs it
_TRAINERS = {
    "fasttext-domain": _fasttext_domain,
    "fasttext-quality": _fasttext_quality,
    "embedding": _embedding,
}
TRAIN_TYPES = tuple(_TRAINERS)


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

    j = _Job(job, typ, base)
    seed = int(job.pop("seed", 0))
    holdout = float(job.pop("holdout", 0.1))
    ft = dict(job.pop("fasttext", {}) or {})
    rep = _TRAINERS[typ](j, model_out, holdout, seed, ft)
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


__all__ = ["TRAIN_TYPES", "format_report", "job_identity", "report_path", "run_train_job"]
