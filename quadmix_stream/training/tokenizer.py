"""Tokenizers from a local path (no hub): ``tokenizers`` JSON files or transformers folders.

Also trains a small byte-level BPE on a pool with ``tokenizers``, for proxies and quickstarts
on a machine with no model downloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quadmix_stream.errors import UserError
from quadmix_stream.extras import require
from quadmix_stream.storage.io import atomic_write_text

EOS = "<|endoftext|>"
_EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


class TextTokenizer:
    """Encode documents followed by the end-of-text id.

    Accepts every tokenizer spec the labellers accept, so one spec works everywhere
    (``PackedDataset``, trainers, the ``tokenizer`` token counter).

    Args:
        path: a ``tokenizer.json`` file, a folder holding one, a transformers tokenizer folder
            (each also as ``package://pkg/sub/path``, a file shipped inside an installed
            package), or an already loaded ``tokenizers.Tokenizer`` or transformers tokenizer.
        eos_token: the end-of-text token (default: the first of ``<|endoftext|>``, ``</s>``, …,
            then a transformers tokenizer's own ``eos_token``).
    """

    def __init__(self, path: str | Path | Any, eos_token: str | None = None) -> None:
        own_eos = None
        if isinstance(path, str | Path):
            from quadmix_stream.storage.locations import resolve_path

            self.path: Path | None = resolve_path(path)
            if self.path.is_dir() and (self.path / "tokenizer.json").is_file():
                self.path = self.path / "tokenizer.json"
            if self.path.is_file():
                tok: Any = require("tokenizers", "a tokenizer.json").Tokenizer.from_file(
                    str(self.path)
                )
            elif self.path.is_dir():
                AutoTokenizer = require("transformers", "a tokenizer folder", "hf").AutoTokenizer
                tok = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            else:
                raise FileNotFoundError(
                    f"tokenizer: {path} is neither a tokenizer.json nor a tokenizer folder"
                )
        else:
            self.path = None
            tok = path
        # a tokenizers.Tokenizer has encode_batch; a transformers tokenizer is callable
        self._fast = hasattr(tok, "encode_batch") and not callable(tok)
        if self._fast:
            from tokenizers import Tokenizer

            # a copy without padding or truncation: every token of every document counts
            tok = Tokenizer.from_str(tok.to_str())
            tok.no_padding()
            tok.no_truncation()
            vocab = tok.get_vocab(with_added_tokens=True)
        elif callable(tok) and hasattr(tok, "get_vocab"):
            vocab = tok.get_vocab()
            own_eos = getattr(tok, "eos_token", None)
        else:
            raise TypeError(
                f"tokenizer: expected a path, a tokenizers.Tokenizer or a transformers tokenizer, "
                f"got {type(tok).__name__}"
            )
        self._tok = tok
        names = (eos_token,) if eos_token else (*_EOS_CANDIDATES, *([own_eos] if own_eos else []))
        found = [t for t in names if t in vocab]
        if not found:
            raise UserError(
                f"tokenizer {self.path or type(tok).__name__}: no end-of-text token among "
                f"{list(names)}; pass eos_token"
            )
        self.eos_token = found[0]
        self.eos_id = int(vocab[self.eos_token])
        self.vocab_size = max(len(vocab), max(vocab.values()) + 1)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self._fast:
            return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens)."""
        return self._encode(texts)

    def encode_docs(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text followed by the end-of-text id."""
        return [ids + [self.eos_id] for ids in self._encode(texts)]


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | Path) -> Path:
    """Train a byte-level BPE with ``vocab_size`` entries (EOS included); save it atomically."""
    require("tokenizers", "training a tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out)
    atomic_write_text(out, tok.to_str())
    return out
