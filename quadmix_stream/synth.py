"""Synthetic corpus with planted structure: the embedded default data for tests and the quickstart.

Each domain's text comes from its own generative process (own vocabulary and grammar). Each
document has a quality level: level ``q`` replaces a fraction ``CORRUPTION[q]`` of its words with
noise words. Scorers are noisy measurements of that quality, so labels carry real signal.

The planted optimum is known by construction: the target set (``target.jsonl``) is clean text
(level 0) from :data:`TARGET_DOMAINS` only, so a good θ puts its weight on those domains and on
their best-scored documents. ``eval.jsonl`` is clean text from every domain (a second, broader
evaluation set).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from quadmix_stream.labels import Manifest, ScorerInfo
from quadmix_stream.shards import DatasetWriter

DOMAINS = ("arith", "facts", "story", "code", "chat")
TARGET_DOMAINS = ("arith", "facts")
CORRUPTION = (0.0, 0.15, 0.4, 0.8)
SCORERS = (
    ScorerInfo("clean", higher_is_better=True, fingerprint="synthetic:clean-v1"),
    ScorerInfo("noise_rate", higher_is_better=False, fingerprint="synthetic:noise_rate-v1"),
    ScorerInfo("length", higher_is_better=True, fingerprint="synthetic:length-v1"),
)

_NUM = [str(i) for i in range(40)]
_NOISE = [f"zx{i}q" for i in range(300)] + ["@@", "##", "%%", "~~", "<br>", "&nbsp;"]
_ENT = ["paris", "rome", "nile", "everest", "iron", "oxygen", "mars", "tokyo", "amazon", "gold"]
_REL = ["is in", "is near", "is larger than", "contains", "is part of", "is older than"]
_NAMES = ["anna", "bob", "cleo", "dan", "eve", "finn", "gus", "hana"]
_VERBS = ["walked", "found", "lost", "painted", "carried", "watched", "built", "opened"]
_OBJS = ["a door", "the river", "a red box", "the old map", "a small boat", "the garden"]
_CODE_KW = ["def", "return", "if", "else", "for", "in", "while", "import", "class", "print"]
_IDS = ["x", "y", "total", "items", "count", "value", "node", "result", "buf", "idx"]
_CHAT = ["hi", "hello", "lol", "ok", "sure", "thanks", "what", "why", "yeah", "no", "cool", "bye"]


def _sentence(domain: str, rng: np.random.Generator) -> list[str]:
    c = rng.choice
    if domain == "arith":
        a, b = rng.integers(0, 20, size=2)
        op = c(["plus", "times", "minus"])
        r = a + b if op == "plus" else a * b if op == "times" else a - b
        return [str(a), op, str(b), "equals", str(r), "."]
    if domain == "facts":
        return ["the", str(c(_ENT)), *str(c(_REL)).split(), "the", str(c(_ENT)), "."]
    if domain == "story":
        return [
            str(c(_NAMES)),
            str(c(_VERBS)),
            *str(c(_OBJS)).split(),
            "and",
            "then",
            str(c(_NAMES)),
            str(c(_VERBS)),
            ".",
        ]
    if domain == "code":
        return [str(c(_CODE_KW)), str(c(_IDS)), "=", str(c(_IDS)), "+", str(c(_NUM)), ";"]
    return [str(x) for x in rng.choice(_CHAT, size=int(rng.integers(2, 6)))] + [
        "?" if rng.random() < 0.3 else "!"
    ]


def make_text(domain: str, level: int, rng: np.random.Generator, n_words: int) -> str:
    words: list[str] = []
    while len(words) < n_words:
        words += _sentence(domain, rng)
    words = words[:n_words]
    p = CORRUPTION[level]
    if p > 0:
        mask = rng.random(len(words)) < p
        noise = rng.choice(_NOISE, size=len(words))
        words = [str(n) if m else w for w, m, n in zip(words, mask, noise, strict=True)]
    return " ".join(words)


def iter_docs(
    docs_per_domain: int, seed: int, levels: tuple[int, ...] | None = None
) -> Iterator[tuple[dict, str, int, list[float], int]]:
    """Yield (doc, domain, level, scores, tokens), domain by domain (domain-sorted shards)."""
    rng = np.random.default_rng(seed)
    levels = tuple(range(len(CORRUPTION))) if levels is None else levels
    for domain in DOMAINS:
        for i in range(docs_per_domain):
            level = int(levels[i % len(levels)])
            n_words = int(rng.integers(20, 160))
            text = make_text(domain, level, rng, n_words)
            noise_frac = sum(w in _NOISE_SET for w in text.split()) / max(n_words, 1)
            scores = [
                float(1.0 - CORRUPTION[level] + rng.normal(0, 0.08)),  # clean: noisy truth
                float(noise_frac + rng.normal(0, 0.03)),  # noise_rate: measured, lower is better
                float(np.log(n_words) + rng.normal(0, 0.5)),  # length: uninformative about quality
            ]
            doc = {
                "id": f"{domain}/{seed}/{i}",
                "text": text,
                "domain": domain,
                "quality_level": level,
            }
            yield doc, domain, level, scores, n_words


_NOISE_SET = frozenset(_NOISE)


def write_eval_set(path: Path, domains: tuple[str, ...], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            d = domains[i % len(domains)]
            text = make_text(d, 0, rng, int(rng.integers(40, 160)))
            f.write(json.dumps({"id": f"eval/{d}/{seed}/{i}", "text": text, "domain": d}) + "\n")


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
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
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
