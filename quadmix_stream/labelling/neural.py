"""Transformers sequence classifiers/regressors from local folders, and what neural labellers share.

Everything loads with no network (``HF_HUB_OFFLINE=1``, ``local_files_only=True``, no remote
code). Weights are read from safetensors, or by transformers' own ``torch.load(weights_only=True)``.
Batches are formed by length (longest first) so padding is small; fp32 on CPU, bf16 on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.labeler import Labeler
from quadmix_stream.labelling.paths import (
    LabelerError,
    require_readable,
)
from quadmix_stream.storage.locations import resolve_path

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


def dtype_name(dtype: Any) -> str:
    """A torch dtype's short name (``bfloat16``) for settings and fingerprints."""
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

            from quadmix_stream.extras import require

            transformers = require("transformers", "a classifier labeller")
            AutoModelForSequenceClassification = transformers.AutoModelForSequenceClassification
            AutoTokenizer = transformers.AutoTokenizer

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
            "dtype": dtype_name(self.dtype),
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


__all__ = ["TransformersLabeler", "dtype_name", "length_batches", "offline_env", "pick_device"]
