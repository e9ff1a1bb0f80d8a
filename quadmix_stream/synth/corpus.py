"""Writing the synthetic corpus: labelled shards, scorers, the target and evaluation sets.

The planted optimum is known by construction: the target set (``target.jsonl``) is clean text
(level 0) from :data:`TARGET_DOMAINS` only, so a good θ puts its weight on those domains and on
their best-scored documents. ``eval.jsonl`` is clean text from every domain (a second, broader
evaluation set).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quadmix_stream.formats.labels import Manifest, ScorerInfo
from quadmix_stream.formats.shards import DatasetWriter
from quadmix_stream.storage.io import tmp_path
from quadmix_stream.synth.text import CORRUPTION, DOMAINS, TARGET_DOMAINS, iter_docs, write_eval_set

SCORERS = (
    ScorerInfo("clean", higher_is_better=True, fingerprint="synthetic:clean-v1"),
    ScorerInfo("noise_rate", higher_is_better=False, fingerprint="synthetic:noise_rate-v1"),
    ScorerInfo("length", higher_is_better=True, fingerprint="synthetic:length-v1"),
)


def synth(
    out: str | Path,
    fmt: str = "mds",
    docs_per_domain: int = 2000,
    seed: int = 0,
    rows_per_shard: int = 500,
    target_docs: int = 200,
) -> Manifest:
    """Write the planted synthetic corpus to ``out`` and its target/eval sets beside the shards.

    Everything is written into a temporary folder beside ``out`` and renamed to ``out`` at the end,
    so a failed or interrupted run leaves nothing behind and can simply be run again.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not empty; refusing to mix datasets")
    out.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (not mkdtemp, which makes it private): the folder keeps the usual mode
    tmp = tmp_path(out)
    tmp.mkdir()
    try:
        manifest = _write_synth(tmp, fmt, docs_per_domain, seed, rows_per_shard, target_docs)
        os.rename(tmp, out)  # atomic; replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_synth(
    out: Path, fmt: str, docs_per_domain: int, seed: int, rows_per_shard: int, target_docs: int
) -> Manifest:
    extra = {
        "synthetic": {
            "seed": seed,
            "target_domains": list(TARGET_DOMAINS),
            "corruption": list(CORRUPTION),
            "planted_optimum": "weight on target domains, best 'clean' / lowest 'noise_rate'",
        }
    }
    with DatasetWriter(out, fmt, DOMAINS, SCORERS, rows_per_shard=rows_per_shard, extra=extra) as w:
        for doc, domain, _level, scores, tokens in iter_docs(docs_per_domain, seed):
            w.write(doc, domain, scores, tokens)
    evals = out / "eval_sets"
    evals.mkdir()
    write_eval_set(evals / "target.jsonl", TARGET_DOMAINS, target_docs, seed + 10_001)
    write_eval_set(evals / "eval.jsonl", DOMAINS, target_docs, seed + 20_002)
    assert w.manifest is not None
    return w.manifest
