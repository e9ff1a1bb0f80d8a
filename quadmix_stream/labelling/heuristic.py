"""A rule-based quality score: the Gopher / C4 / FineWeb quality heuristics as one number.

Rule filters (Rae et al. 2021 "Gopher" §A.1.1; Raffel et al. 2020 "C4"; Penedo et al. 2024
"FineWeb") are usually applied as hard drops. As a QuaDMix scorer they become a score: the
fraction of rules a document passes, plus a small tie-breaker (the share of its words that are
common English function words, divided by the rule count + 1, so it orders documents that pass
the same number of rules and never outweighs one rule). No model, no training: it is the
"heuristic" scorer kind, next to the classifier (fasttext) and embedding kinds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.labeler import Labeler

_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]")
_STOP = frozenset("the be to of and that have with".split())  # Gopher's stop-word rule
_FUNCTION = frozenset(
    "the be to of and a in that have i it for not on with he as you do at this but his by from "
    "they we say her she or an will my one all would there their what so up out if about who get "
    "which go me is are was were been has had".split()
)
_TERMINAL = (".", "!", "?", '"', "'", "”", "’")
_BULLETS = ("•", "-", "*", "·", "‣", "◦")
RULES = (
    "words_50_100k",
    "mean_word_len_3_10",
    "symbol_word_ratio_le_0.1",
    "bullet_lines_le_0.9",
    "ellipsis_lines_le_0.3",
    "alpha_words_ge_0.8",
    "stop_words_ge_2",
    "duplicate_lines_le_0.3",
    "terminal_punct_lines_ge_0.12",
)


def _words(text: str) -> tuple[list[str], list[str]]:
    """Whitespace words, and the same lower-cased without surrounding punctuation."""
    words = _WORD.findall(text)
    return words, [w.lower().strip(".,;:!?\"'()[]") for w in words]


def rule_passes(text: str, words: tuple[list[str], list[str]] | None = None) -> np.ndarray:
    """Which of :data:`RULES` ``text`` passes (bool array, in that order)."""
    words, lower = words or _words(text)
    n = len(words)
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    nl = max(len(lines), 1)
    symbols = text.count("#") + text.count("...") + text.count("…")
    return np.array(
        [
            50 <= n <= 100_000,
            n > 0 and 3 <= sum(len(w) for w in words) / n <= 10,
            symbols / max(n, 1) <= 0.1,
            sum(ln.startswith(_BULLETS) for ln in lines) / nl <= 0.9,
            sum(ln.endswith(("...", "…")) for ln in lines) / nl <= 0.3,
            n > 0 and sum(bool(_ALPHA.search(w)) for w in words) / n >= 0.8,
            len(_STOP.intersection(lower)) >= 2,
            (len(lines) - len(set(lines))) / nl <= 0.3,
            sum(ln.endswith(_TERMINAL) for ln in lines) / nl >= 0.12,
        ],
        dtype=bool,
    )


def heuristic_score(text: str) -> float:
    """Fraction of rules passed + function-word share / (len(RULES) + 1), in [0, 1 + 1/10)."""
    words = _words(text)
    func = sum(w in _FUNCTION for w in words[1]) / max(len(words[1]), 1)
    return float(rule_passes(text, words).mean() + func / (len(RULES) + 1))


class HeuristicLabeler(Labeler):
    """Quality = :func:`heuristic_score` (higher is better)."""

    type_name = "heuristic"

    def __init__(self, name: str) -> None:
        super().__init__(name, "quality", higher_is_better=True)

    def settings(self) -> dict[str, Any]:
        return {"rules": "gopher-c4-fineweb-v1"}

    def predict(
        self, texts: Sequence[str], docs: Sequence[Mapping[str, Any]] | None, issues: Issues
    ) -> np.ndarray:
        return np.fromiter((heuristic_score(t) for t in texts), dtype=np.float64, count=len(texts))
