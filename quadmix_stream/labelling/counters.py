"""Token counters: whitespace words, UTF-8 bytes, or a tokenizers/transformers tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.labelling.labeler import Labeler
from quadmix_stream.labelling.paths import LabelerError, require_readable
from quadmix_stream.storage.locations import resolve_path


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
                from quadmix_stream.extras import require

                Tokenizer = require("tokenizers", "a token counter", "label").Tokenizer
                self.tok = Tokenizer.from_file(str(file))
                self.tok.no_truncation()
                self.tok.no_padding()
                self._fast = True
            else:
                from quadmix_stream.labelling.neural import offline_env

                offline_env()
                from quadmix_stream.extras import require

                AutoTokenizer = require("transformers", "a token counter").AutoTokenizer
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


__all__ = ["BytesCounter", "TokenizerCounter", "WhitespaceCounter"]
