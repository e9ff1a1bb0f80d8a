"""Labelling: domain, quality scores and token counts for every document (DESIGN.md §2, §4).

* :mod:`.labelers` / :mod:`.neural`: one interface (texts → array) over fasttext, transformers
  classifiers/regressors, embedding + linear head, document fields and token counters;
* :mod:`.train`: train fasttext domain / DCLM-style quality classifiers and embedding heads;
* :mod:`.pipeline`: the resumable, torchrun-aware ``quadmix-stream label`` run (plan → label units
  → merge manifest), fed by :mod:`.inputs` and :mod:`.worker`, committed by :mod:`.records`;
* :mod:`.recipe`: YAML recipes; :mod:`.bench`: ``quadmix-stream bench label``.

Heavy libraries (fasttext, torch, transformers) load only when a labeller that needs them does.
"""

from quadmix_stream.labelling.counters import BytesCounter, TokenizerCounter, WhitespaceCounter
from quadmix_stream.labelling.fasttext_labeler import FastTextLabeler
from quadmix_stream.labelling.fields import FieldLabeler
from quadmix_stream.labelling.issues import Issues
from quadmix_stream.labelling.labeler import Labeler
from quadmix_stream.labelling.paths import LabelerError
from quadmix_stream.labelling.recipe import Recipe, load_recipe, parse_recipe
from quadmix_stream.labelling.registry import build_labeler


def run_label(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy wrapper
    """See :func:`quadmix_stream.labelling.pipeline.run_label`."""
    from quadmix_stream.labelling.pipeline import run_label as _run

    return _run(*args, **kwargs)


__all__ = [
    "BytesCounter",
    "FastTextLabeler",
    "FieldLabeler",
    "Issues",
    "Labeler",
    "LabelerError",
    "Recipe",
    "TokenizerCounter",
    "WhitespaceCounter",
    "build_labeler",
    "load_recipe",
    "parse_recipe",
    "run_label",
]
