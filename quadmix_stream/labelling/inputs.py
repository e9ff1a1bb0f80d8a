"""What a labelling run reads: the input spec, and the unit of work it is cut into.

Two modes:

* ``new``: raw documents (JSONL, JSONL.gz, JSONL.zst, Parquet, or the built-in synthetic
  generator) are cut into units of at most ``rows_per_shard`` input rows of one file; each unit
  becomes one new output shard. Files may be local or on object storage (``s3://bucket/*.jsonl.gz``:
  globbed with fsspec and streamed, see :mod:`.remote_files`).
* ``sidecar``: existing shards (a labelled dataset, an MDS dataset, WebDataset tars (also
  ``.tar.gz``), our JSONL.zst shards, Parquet files or Hugging Face ``save_to_disk`` Arrow files)
  are labelled in place; each shard is one unit and gets a sidecar beside it. The shards may be
  on object storage (``s3://bucket/ds``): each is fetched, read and deleted locally, and its
  sidecar is written beside it in the bucket.

Planning (:mod:`.plan`) cuts the inputs into units; reading (:mod:`.read_raw`,
:mod:`.read_shards`) turns a unit into documents. The plan (list of units) is a pure function of
the inputs and options, so every rank derives the same one and a re-run can check it is resuming
the same job. Reading a unit returns flat documents (``id``, ``text`` and every other field) plus
counted :class:`~.issues.Issues`; a document is never dropped silently (only input lines that are
blank or not JSON objects are skipped, and counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quadmix_stream.recipe import RecipeError

RAW_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".parquet")
SHARD_FORMATS = ("auto", "mds", "tar", "jsonl", "parquet", "arrow")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass(frozen=True)
class Unit:
    """One unit of work: rows ``[start, stop)`` of ``source`` (a file, a shard, or synthetic).

    ``byte_start`` lets plain JSONL seek straight to the unit's first line. For existing shards
    ``start``/``stop`` are 0/-1 (all rows).
    """

    index: int
    source: str
    start: int = 0
    stop: int = -1
    byte_start: int = -1


@dataclass
class InputSpec:
    """What to read (one of ``paths``, ``synthetic``, ``shards``) and how.

    Attributes:
        paths: globs of raw document files.
        synthetic: options of :func:`quadmix_stream.synth.iter_docs` (``docs_per_domain``,
            ``seed``, optional ``domains`` and ``levels`` filters).
        shards: folder of existing shards, labelled in place (sidecar mode).
        shard_format: ``auto`` (detect), ``mds``, ``tar``, ``jsonl`` (our JSONL.zst shards),
            ``parquet`` (``*.parquet`` files, subfolders included) or ``arrow`` (Hugging Face
            ``save_to_disk`` folders).
        text_field, id_field: raw documents' field names (dotted paths allowed); for Parquet and
            Arrow shards, column names (no ``id_field`` column: the id is ``"<file>:<row>"``).
        tar_text_ext, tar_json_ext: WebDataset member extensions of foreign tar shards.
        limit: read at most this many rows per file (quick trials).
    """

    paths: list[str] = field(default_factory=list)
    synthetic: dict[str, Any] | None = None
    shards: str | None = None
    shard_format: str = "auto"
    text_field: str = "text"
    id_field: str = "id"
    tar_text_ext: str = "txt"
    tar_json_ext: str | None = "json"
    limit: int | None = None

    @property
    def mode(self) -> str:
        return "sidecar" if self.shards else "new"

    def check(self) -> None:
        given = [bool(self.paths), self.synthetic is not None, bool(self.shards)]
        if sum(given) != 1:
            raise RecipeError(
                "input: give exactly one of 'paths' (raw documents), 'synthetic' or 'shards' "
                "(existing shards to label in place)"
            )
        if self.shard_format not in SHARD_FORMATS:
            raise RecipeError(f"input.shard_format must be one of {SHARD_FORMATS}")


__all__ = ["RAW_SUFFIXES", "SHARD_FORMATS", "TAR_SUFFIXES", "InputSpec", "Unit"]
