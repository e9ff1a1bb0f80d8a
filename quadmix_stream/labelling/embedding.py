"""Embedding labellers: a local sentence-embedding model plus a trained linear head (``.npz``).

The embeddings come from :class:`Embedder` (sentence-transformers or mean-pooled transformers
encoders, offline); :func:`save_head` / :func:`load_head` keep the head :mod:`.train` fits.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.labeler import Labeler
from quadmix_stream.labelling.neural import (
    CHARS_PER_TOKEN,
    dtype_name,
    length_batches,
    offline_env,
    pick_device,
)
from quadmix_stream.labelling.paths import (
    LabelerError,
    content_hash,
    fingerprint,
    require_readable,
)
from quadmix_stream.storage.io import atomic_write_bytes, read_npz
from quadmix_stream.storage.locations import resolve_path


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
                from quadmix_stream.extras import require

                SentenceTransformer = require(
                    "sentence_transformers", "an embedding labeller"
                ).SentenceTransformer
                self.st = SentenceTransformer(
                    str(self.path), device=str(self.device), local_files_only=True
                )
                self.st.to(self.dtype)
                self.max_length = int(min(max_length, self.st.max_seq_length or max_length))
                self.st.max_seq_length = self.max_length
                self.tok = self.st.tokenizer
            else:
                from quadmix_stream.extras import require

                transformers = require("transformers", "an embedding labeller")
                AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

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
            {"max_length": self.max_length, "dtype": dtype_name(self.dtype)},
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
        z = read_npz(path)
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


__all__ = ["Embedder", "EmbeddingHeadLabeler", "head_probs", "load_head", "save_head"]
