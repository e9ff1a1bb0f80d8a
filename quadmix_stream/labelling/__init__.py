"""Labelling: domain, quality scores and token counts for every document (docs/guides/label.md; the formats in docs/reference.md).

* the labellers: one interface (:mod:`.labeler`: texts → array) over fasttext
  (:mod:`.fasttext_labeler`), transformers classifiers/regressors (:mod:`.neural`), embedding +
  linear head (:mod:`.embedding`), document fields (:mod:`.fields`), token counters
  (:mod:`.counters`) and heuristic rules (:mod:`.heuristic`), built by name by :mod:`.registry`;
* :mod:`.train`: train fasttext domain / DCLM-style quality classifiers (:mod:`.train_fasttext`)
  and embedding heads (:mod:`.train_embedding`) from sets made by :mod:`.train_data`;
* :mod:`.pipeline`: the resumable, torchrun-aware ``quadmix-stream label`` run, in steps:
  plan (:mod:`.plan`, :mod:`.discover`) → read (:mod:`.worker`, :mod:`.read_raw`,
  :mod:`.read_shards`) → label (:mod:`.label`, :mod:`.labeler_set`) → commit (:mod:`.commit`,
  :mod:`.records`, :mod:`.merge`), on a dataset root (:mod:`.roots`), with a report
  (:mod:`.run_report`);
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
