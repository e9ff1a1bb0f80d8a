"""Neural labellers from local folders: transformers classifiers/regressors and embedding + head.

Everything loads with no network (``HF_HUB_OFFLINE=1``, ``local_files_only=True``, no remote
code). Weights are read from safetensors, or by transformers' own ``torch.load(weights_only=True)``.
Batches are formed by length (longest first) so padding is small; fp32 on CPU, bf16 on CUDA.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.io import atomic_write_bytes
from quadmix_stream.labelling.labelers import Labeler
from quadmix_stream.labelling.paths import (
    LabelerError,
    content_hash,
    fingerprint,
    require_readable,
    resolve_path,
)

#: characters kept per model token before tokenizing (a cut text still fills the model's window)
CHARS_PER_TOKEN = 16


def offline_env() -> None:
    """Make Hugging Face libraries stay off the network (set before they are imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_device(device: str | None) -> tuple[Any, Any]:
    """(torch.device, dtype): the given device, else the rank's CUDA device when present, else CPU.

    bf16 on CUDA, fp32 on CPU.
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
        else:
            device = "cpu"
    dev = torch.device(device)
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def length_batches(texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """Index batches of ``texts``, longest first, so each batch pads to similar lengths."""
    order = np.argsort(-np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- sequence classifier / regressor
class TransformersLabeler(Labeler):
    """A transformers sequence classifier or regressor from a local folder (FineWeb-Edu style).

    * regressor (one output, or ``problem_type == "regression"``): the score is the raw output
      (quality only).
    * classifier, ``kind="quality"``: the softmax probability of ``label`` (a name from the
      config's ``id2label`` or an index; for two classes the default is index 1).
    * classifier, ``kind="domain"``: the ``id2label`` name of the argmax.

    Args:
        path: folder with ``config.json``, weights and tokenizer files.
        max_length: tokens per document seen by the model (longer ones are cut and counted).
        batch_size: documents per forward pass (batches are formed by length).
        device: ``"cpu"``, ``"cuda:0"``...; default: this rank's GPU when present, else CPU.
    """

    type_name = "transformers"

    def __init__(
        self,
        path: str | Path,
        kind: str,
        name: str,
        label: str | int | None = None,
        max_length: int = 512,
        batch_size: int = 32,
        device: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(name, kind, higher_is_better)
        if kind == "tokens":
            raise LabelerError(f"labeller {name!r}: a classifier gives domains or quality scores")
        what = f"labeller {name!r} (transformers)"
        self.path = require_readable(resolve_path(path), what, want_dir=True)
        if not (self.path / "config.json").is_file():
            raise LabelerError(f"{what}: {self.path} has no config.json (not a transformers model)")
        offline_env()
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.device, self.dtype = pick_device(device)
            self.tok = AutoTokenizer.from_pretrained(
                str(self.path), local_files_only=True, trust_remote_code=False
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(self.path), local_files_only=True, trust_remote_code=False
            )
        except Exception as e:
            raise LabelerError(f"{what}: cannot load {self.path}: {e}") from None
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self._torch = torch
        cfg = self.model.config
        self.regression = cfg.num_labels == 1 or cfg.problem_type == "regression"
        limits = [max_length, getattr(cfg, "max_position_embeddings", None)]
        if getattr(self.tok, "model_max_length", None) and self.tok.model_max_length < 1e9:
            limits.append(self.tok.model_max_length)
        self.max_length = int(min(x for x in limits if x))
        self.batch_size = int(batch_size)
        self.max_chars = self.max_length * CHARS_PER_TOKEN
        self.id2label = {int(k): str(v) for k, v in cfg.id2label.items()}
        self.index: int | None = None
        if kind == "domain" and self.regression:
            raise LabelerError(f"{what}: a regressor cannot give domains")
        if kind == "quality" and not self.regression:
            if label is None:
                if cfg.num_labels != 2:
                    raise LabelerError(
                        f"{what}: say which class is the score (label: one of "
                        f"{list(self.id2label.values())})"
                    )
                label = 1
            names = {v: k for k, v in self.id2label.items()}
            if isinstance(label, int) or str(label).isdigit():
                self.index = int(label)
            elif str(label) in names:
                self.index = names[str(label)]
            else:
                raise LabelerError(f"{what}: label {label!r} not in {list(names)}")
            if not 0 <= self.index < cfg.num_labels:
                raise LabelerError(f"{what}: label index {self.index} out of range")

    def settings(self) -> dict[str, Any]:
        return {
            "label": self.index,
            "regression": self.regression,
            "max_length": self.max_length,
            "dtype": _dtype_name(self.dtype),
        }

    def model_paths(self) -> list[Path]:
        return [self.path]

    def classes(self) -> list[str]:
        return sorted(self.id2label.values()) if self.kind == "domain" else []

    def predict(self, texts, docs, issues):
        torch = self._torch
        n = len(texts)
        scores = np.empty(n, dtype=np.float64)
        best = np.empty(n, dtype=np.int64)
        truncated = np.zeros(n, dtype=bool)
        with torch.inference_mode():
            for idx in length_batches(texts, self.batch_size):
                enc = self.tok(
                    [texts[i] for i in idx],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                truncated[idx] = (enc["attention_mask"].sum(1) >= self.max_length).numpy()
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc).logits.float()
                if self.regression:
                    scores[idx] = logits[:, 0].cpu().numpy()
                elif self.kind == "quality":
                    scores[idx] = torch.softmax(logits, -1)[:, self.index].cpu().numpy()
                else:
                    best[idx] = logits.argmax(-1).cpu().numpy()
        self.last_truncated = truncated
        if self.kind == "domain":
            return np.array([self.id2label[int(b)] for b in best], dtype=object)
        return scores


# ---------------------------------------------------------------- embeddings
class Embedder:
    """Sentence embeddings from a local folder.

    A sentence-transformers folder (``modules.json``) is run by ``SentenceTransformer`` (its own
    pooling and normalisation); any other transformers encoder by ``AutoModel`` with mean pooling
    and L2 normalisation. Inputs are cut to ``max_length`` tokens.
    """

    def __init__(
        self,
        path: str | Path,
        max_length: int = 256,
        batch_size: int = 32,
        device: str | None = None,
        what: str = "embedding model",
    ) -> None:
        self.path = require_readable(resolve_path(path), what, want_dir=True)
        offline_env()
        self.batch_size = int(batch_size)
        try:
            import torch

            self._torch = torch
            self.device, self.dtype = pick_device(device)
            if (self.path / "modules.json").is_file():
                from sentence_transformers import SentenceTransformer

                self.st = SentenceTransformer(
                    str(self.path), device=str(self.device), local_files_only=True
                )
                self.st.to(self.dtype)
                self.max_length = int(min(max_length, self.st.max_seq_length or max_length))
                self.st.max_seq_length = self.max_length
                self.tok = self.st.tokenizer
            else:
                from transformers import AutoModel, AutoTokenizer

                self.st = None
                self.tok = AutoTokenizer.from_pretrained(
                    str(self.path), local_files_only=True, trust_remote_code=False
                )
                self.model = AutoModel.from_pretrained(
                    str(self.path), local_files_only=True, trust_remote_code=False
                )
                self.model.to(device=self.device, dtype=self.dtype).eval()
                cap = getattr(self.model.config, "max_position_embeddings", max_length)
                self.max_length = int(min(max_length, cap))
        except LabelerError:
            raise
        except Exception as e:
            raise LabelerError(f"{what}: cannot load {self.path}: {e}") from None
        self.max_chars = self.max_length * CHARS_PER_TOKEN

    def fingerprint(self) -> str:
        return fingerprint(
            "embedder",
            {"max_length": self.max_length, "dtype": _dtype_name(self.dtype)},
            self.path,
        )

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 (n, dim), truncated bool (n,)) for ``texts`` (cut to max_chars)."""
        torch = self._torch
        texts = [t[: self.max_chars] for t in texts]
        n = len(texts)
        truncated = np.zeros(n, dtype=bool)
        parts: dict[int, np.ndarray] = {}
        with torch.inference_mode():
            for idx in length_batches(texts, self.batch_size):
                batch = [texts[i] for i in idx]
                lens = self.tok(batch, truncation=True, max_length=self.max_length, verbose=False)[
                    "input_ids"
                ]
                truncated[idx] = [len(x) >= self.max_length for x in lens]
                if self.st is not None:
                    emb = self.st.encode(
                        batch,
                        batch_size=len(batch),
                        convert_to_numpy=False,
                        convert_to_tensor=True,
                        show_progress_bar=False,
                    )
                    emb = emb.float().cpu().numpy()
                else:
                    enc = self.tok(
                        batch,
                        truncation=True,
                        max_length=self.max_length,
                        padding=True,
                        return_tensors="pt",
                    )
                    enc = {k: v.to(self.device) for k, v in enc.items()}
                    hidden = self.model(**enc).last_hidden_state.float()
                    mask = enc["attention_mask"].unsqueeze(-1).float()
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                    emb = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
                for j, i in enumerate(idx):
                    parts[int(i)] = emb[j]
        if n == 0:
            return np.zeros((0, 0), dtype=np.float32), truncated
        return np.stack([parts[i] for i in range(n)]).astype(np.float32), truncated


# ---------------------------------------------------------------- linear heads
HEAD_SCHEMA = "quadmix-stream/linear-head"


def save_head(
    path: str | Path,
    weight: np.ndarray,
    bias: np.ndarray,
    classes: Sequence[str],
    kind: str,
    embedder_fingerprint: str,
    positive: str | None = None,
    report: dict | None = None,
    embedder_model: str | None = None,
) -> None:
    """Write a linear head (``.npz``, no pickles) atomically.

    ``weight`` is (C, dim) with C = 1 for a binary head (logit of ``classes[1]``) or one row
    per class (softmax).
    """
    meta = {
        "schema": HEAD_SCHEMA,
        "classes": list(classes),
        "kind": kind,
        "positive": positive,
        "embedder": embedder_fingerprint,
        "embedder_model": embedder_model,
        "report": report or {},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for key, arr in (
            ("weight", np.asarray(weight, dtype=np.float32)),
            ("bias", np.asarray(bias, dtype=np.float32)),
            ("meta", np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)),
        ):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with z.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def load_head(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight, bias, meta) of a head written by :func:`save_head` (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            weight, bias = z["weight"], z["bias"]
            meta = json.loads(z["meta"].tobytes().decode())
    except Exception as e:
        raise LabelerError(f"{what}: cannot read head {path}: {e}") from None
    if meta.get("schema") != HEAD_SCHEMA:
        raise LabelerError(f"{what}: {path} is not a quadmix-stream linear head")
    return weight.astype(np.float64), bias.astype(np.float64), meta


def head_probs(emb: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Class probabilities (n, C) of a head; a binary head gives (n, 2)."""
    z = emb.astype(np.float64) @ weight.T + bias
    if weight.shape[0] == 1:
        p1 = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -500, 500)))
        return np.column_stack([1.0 - p1, p1])
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class EmbeddingHeadLabeler(Labeler):
    """An embedding model + a trained linear head (see ``quadmix-stream train-labeler embedding``).

    ``kind="quality"``: the probability of ``label`` (default: the head's positive class);
    ``kind="domain"``: the argmax class.
    """

    type_name = "embedding"

    def __init__(
        self,
        model: str | Path,
        head: str | Path,
        kind: str,
        name: str,
        label: str | None = None,
        max_length: int = 256,
        batch_size: int = 32,
        device: str | None = None,
        higher_is_better: bool = True,
    ) -> None:
        super().__init__(name, kind, higher_is_better)
        what = f"labeller {name!r} (embedding)"
        self.head_path = require_readable(resolve_path(head), what, want_dir=False)
        self.weight, self.bias, meta = load_head(self.head_path, what)
        self.embedder = Embedder(model, max_length, batch_size, device, what)
        trained_on = meta.get("embedder_model")
        if trained_on and trained_on != content_hash(self.embedder.path):
            raise LabelerError(
                f"{what}: head {self.head_path} was trained on other embeddings than "
                f"{self.embedder.path} (model files differ)"
            )
        self.classes_ = list(meta["classes"])
        self.head_kind = meta["kind"]
        if kind != self.head_kind:
            raise LabelerError(f"{what}: head {self.head_path} was trained for {self.head_kind!r}")
        self.index = None
        if kind == "quality":
            label = label or meta.get("positive") or self.classes_[-1]
            if label not in self.classes_:
                raise LabelerError(f"{what}: label {label!r} not in head classes {self.classes_}")
            self.index = self.classes_.index(label)
        self.max_chars = None  # the embedder cuts and reports

    def settings(self) -> dict[str, Any]:
        return {
            "label": None if self.index is None else self.classes_[self.index],
            "embedder": self.embedder.fingerprint(),
        }

    def model_paths(self) -> list[Path]:
        return [self.head_path]

    def classes(self) -> list[str]:
        return sorted(self.classes_) if self.kind == "domain" else []

    def predict(self, texts, docs, issues):
        emb, truncated = self.embedder.encode(texts)
        self.last_truncated = truncated
        if not len(texts):
            return np.zeros(0) if self.kind == "quality" else np.zeros(0, dtype=object)
        p = head_probs(emb, self.weight, self.bias)
        if self.kind == "quality":
            return p[:, self.index]
        return np.array([self.classes_[int(i)] for i in p.argmax(1)], dtype=object)


__all__ = [
    "Embedder",
    "EmbeddingHeadLabeler",
    "TransformersLabeler",
    "head_probs",
    "load_head",
    "offline_env",
    "save_head",
]
