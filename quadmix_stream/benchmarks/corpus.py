"""Write a corpus (the real one in ../shared/data, or the synthetic one) as labelled shards.

Benchmarks need the same documents as MDS and as WebDataset tar. Labels here are cheap and
deterministic (domain from the corpus's own field, two heuristic scores), which is all a reading
benchmark needs; real labelling is ``quadmix-stream label``.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

from quadmix_stream.formats.labels import Manifest, ScorerInfo
from quadmix_stream.formats.shards import DatasetWriter

HEURISTIC_SCORERS = (
    ScorerInfo("alpha_frac", True, "heuristic:alpha_frac-v1"),
    ScorerInfo("mean_word_len", True, "heuristic:mean_word_len-v1"),
)
_WORD = re.compile(r"\S+")


def iter_shared_corpus(corpus_dir: str | Path) -> Iterator[dict]:
    """Documents of ../shared/data/corpus/*.jsonl.gz in file order."""
    files = sorted(Path(corpus_dir).glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl.gz files in {corpus_dir}")
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)


def bench_docs(corpus: str | Path | None, docs_per_domain: int) -> list[dict]:
    """A benchmark's documents: the real corpus when given, else the synthetic one."""
    if corpus:
        return list(iter_shared_corpus(corpus))
    from quadmix_stream.synth import iter_docs

    return [d for d, *_ in iter_docs(docs_per_domain, seed=0)]


def heuristic_scores(text: str) -> tuple[list[float], int]:
    words = _WORD.findall(text)
    n = max(len(text), 1)
    alpha = sum(ch.isalpha() for ch in text) / n
    mwl = sum(len(w) for w in words) / max(len(words), 1)
    return [alpha, mwl], len(words)


def write_corpus(
    out: str | Path,
    fmt: str,
    docs: Iterator[dict],
    rows_per_shard: int = 2000,
    compression: str | None = None,
) -> Manifest:
    docs = list(docs)
    domains = sorted({d["domain"] for d in docs})
    with DatasetWriter(
        out, fmt, domains, HEURISTIC_SCORERS, rows_per_shard=rows_per_shard, compression=compression
    ) as w:
        for d in docs:
            scores, tokens = heuristic_scores(d["text"])
            w.write(
                {"id": d["id"], "text": d["text"], "source": d.get("source", "")},
                d["domain"],
                scores,
                tokens,
            )
    assert w.manifest is not None
    return w.manifest
