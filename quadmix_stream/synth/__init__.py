"""Synthetic corpus with planted structure: the embedded default data for tests and the quickstart.

:mod:`.text` generates the text (pure numpy); :mod:`.corpus` writes the labelled dataset with its
target and evaluation sets.
"""

from quadmix_stream.synth.corpus import SCORERS, synth
from quadmix_stream.synth.text import (
    CORRUPTION,
    DOMAINS,
    TARGET_DOMAINS,
    iter_docs,
    make_text,
    write_eval_set,
)

__all__ = [
    "CORRUPTION",
    "DOMAINS",
    "SCORERS",
    "TARGET_DOMAINS",
    "iter_docs",
    "make_text",
    "synth",
    "write_eval_set",
]
