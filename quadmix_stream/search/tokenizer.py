"""The proxies' tokenizer, kept inside the run folder (all proxies of a search must share it).

Either a byte-level BPE trained on the pool with ``tokenizers``, or a tokenizer given by path
(a ``tokenizer.json``, or a folder: its ``tokenizer.json`` is copied, else the whole folder is,
for transformers tokenizers without one). Encoding lives in :mod:`quadmix_stream.training.tokenizer`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from quadmix_stream.search.config import SearchConfigError, TokenizerConfig
from quadmix_stream.storage.io import tmp_path
from quadmix_stream.stream.pool import pool_texts
from quadmix_stream.training.tokenizer import TextTokenizer, train_tokenizer

__all__ = ["TextTokenizer", "prepare_tokenizer", "run_tokenizer_path"]


def run_tokenizer_path(run_dir: str | Path) -> Path:
    """Where a run folder keeps its tokenizer: ``tokenizer.json`` or a ``tokenizer/`` folder."""
    run_dir = Path(run_dir)
    folder = run_dir / "tokenizer"
    return folder if folder.is_dir() else run_dir / "tokenizer.json"


def prepare_tokenizer(cfg: TokenizerConfig, dataset: str | Path, run_dir: str | Path) -> dict:
    """Put the run's tokenizer into ``run_dir`` (trained or copied); returns its description."""
    run_dir = Path(run_dir)
    out = run_dir / "tokenizer.json"
    if cfg.path:
        src = Path(cfg.path)
        if src.is_dir() and not (src / "tokenizer.json").is_file():
            tmp = tmp_path(run_dir / "tokenizer")
            shutil.copytree(src, tmp)
            tmp.rename(run_dir / "tokenizer")
            out = run_dir / "tokenizer"
        else:
            src = src / "tokenizer.json" if src.is_dir() else src
            if not src.is_file():
                raise SearchConfigError(
                    f"tokenizer.path: {cfg.path} is neither a tokenizer.json nor a tokenizer folder"
                )
            tmp = tmp_path(out)
            shutil.copyfile(src, tmp)
            tmp.replace(out)
        how = f"copied from {cfg.path}"
    else:
        train_tokenizer(pool_texts(dataset, cfg.max_docs), cfg.vocab_size, out)
        how = f"byte-level BPE trained on up to {cfg.max_docs} pool documents"
    tok = TextTokenizer(out, cfg.eos_token)  # validates it (end-of-text token present)
    return {"how": how, "vocab_size": tok.vocab_size, "eos_token": tok.eos_token}
