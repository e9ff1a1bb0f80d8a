"""The synthetic corpus's text: one generative process per domain, quality as planted noise.

Each domain's text comes from its own generative process (own vocabulary and grammar). Each
document has a quality level: level ``q`` replaces a fraction ``CORRUPTION[q]`` of its words with
noise words; the three scores of :func:`iter_docs` are noisy measurements of that quality.
Pure numpy, so the labelling's ``synthetic`` input reads it without the dataset writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DOMAINS = ("arith", "facts", "story", "code", "chat")
TARGET_DOMAINS = ("arith", "facts")
CORRUPTION = (0.0, 0.15, 0.4, 0.8)

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
