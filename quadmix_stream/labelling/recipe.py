"""Labelling recipes: a YAML file (``yaml.safe_load``, never evaluated) plus command-line overrides.

Example (``recipes/label_synthetic.yaml`` has a complete one)::

    input:
      paths: ["data/*.jsonl.gz"]         # or synthetic: {...}, or shards: DIR (label in place)
    output:
      dir: ../runs/my_labels             # --out overrides
      format: mds                        # mds | tar | jsonl (new shards)
      rows_per_shard: 2000
    domains: [web, news, code]           # optional: default = the domain labeller's classes
    unknown_domain: error                # or the name of a domain that takes unknown ones
    executor: {kind: ray, address: auto} # optional: where units run (default local; see
                                         # quadmix_stream.executors)
    train:                               # optional: labellers trained before labelling
      - {type: fasttext-domain, out: "{out}/models/domain.bin", input: {paths: [...]}}
    labelers:
      domain: {type: fasttext, path: "{out}/models/domain.bin"}
      tokens: whitespace
      scorers:
        - {name: dclm, type: fasttext, path: "{out}/models/quality.bin", label: hq}

Relative paths are taken against the recipe's folder; ``{out}`` is the output folder (in input
paths, training jobs and labellers) and
``{recipe_dir}`` the recipe's folder; ``package://pkg/path`` is a file inside an installed package.

Inputs, ``input.shards`` and ``output.dir`` may be object-storage URLs (``s3://bucket/prefix``,
see :mod:`.roots`); labeller models and training outputs stay local files, so a recipe with a
remote output cannot use ``{out}`` in its training jobs or labellers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from quadmix_stream.executors import ExecutorConfig
from quadmix_stream.labelling.inputs import InputSpec
from quadmix_stream.labelling.outputs import OUTPUT_FORMATS
from quadmix_stream.recipe import RecipeError, build, read_yaml, short_repr
from quadmix_stream.storage.store import is_remote

RESERVED = ("domain", "tokens")


@dataclass
class Recipe:
    """A parsed, validated labelling recipe (paths not yet resolved against ``out``).

    ``out`` is a local folder (a resolved path) or an object-storage URL (a string).
    """

    name: str = "label"
    base: Path = field(default_factory=Path.cwd)
    input: InputSpec = field(default_factory=InputSpec)
    out: Path | str | None = None
    format: str = "mds"
    rows_per_shard: int = 2000
    compression: str | None = None
    domains: list[str] | None = None
    unknown_domain: str = "error"
    train: list[dict[str, Any]] = field(default_factory=list)
    domain: dict[str, Any] | None = None
    tokens: dict[str, Any] = field(default_factory=lambda: {"type": "whitespace"})
    scorers: list[dict[str, Any]] = field(default_factory=list)
    io_workers: int = 1
    progress: bool = True
    barrier_timeout_s: float = 6 * 3600.0
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def expand(self, x: Any) -> Any:
        """Replace ``{out}`` / ``{recipe_dir}`` in strings (no evaluation of any kind)."""
        if isinstance(x, str):
            out = str(self.out) if self.out is not None else "{out}"
            return x.replace("{out}", out).replace("{recipe_dir}", str(self.base))
        if isinstance(x, list):
            return [self.expand(v) for v in x]
        if isinstance(x, dict):
            return {k: self.expand(v) for k, v in x.items()}
        return x

    def check(self) -> None:
        self.input.check()
        if self.out is None:
            if self.input.shards:
                self.out = _resolve(self.input.shards, self.base)
            else:
                raise RecipeError("output: give output.dir in the recipe or --out")
        self.input.paths = self.expand(list(self.input.paths or []))
        if is_remote(self.out):
            self.out = str(self.out).rstrip("/")
            used = [x for x in (self.train, self.domain, self.tokens, self.scorers) if x]
            if "{out}" in repr(used):
                raise RecipeError(
                    f"output {self.out} is on object storage, but the recipe's training jobs or "
                    "labellers use {out}: models are local files; put them in a local folder "
                    "(e.g. {recipe_dir}/models/...)"
                )
        if self.input.shards and _resolve(self.input.shards, self.base) != self.out:
            raise RecipeError(
                f"input.shards labels shards in place: the output folder is the shards' folder "
                f"({_resolve(self.input.shards, self.base)}), not {self.out}"
            )
        if self.format not in OUTPUT_FORMATS:
            raise RecipeError(
                f"output.format must be one of {OUTPUT_FORMATS}, got {short_repr(self.format)}"
            )
        if self.rows_per_shard < 1:
            raise RecipeError("output.rows_per_shard must be ≥ 1")
        if self.compression not in (None, "zstd"):
            raise RecipeError("output.compression must be null or 'zstd' (MDS only)")
        if self.domain is None:
            raise RecipeError(
                "labelers.domain: give a domain labeller (e.g. {type: field, field: domain} in "
                "the recipe or --domain type=field,field=domain for documents that carry one, "
                "or a fasttext/transformers/embedding classifier)"
            )
        names = [s.get("name") for s in self.scorers]
        if not names:
            raise RecipeError(
                "labelers.scorers: give at least one quality scorer (--scorer SPEC, repeatable)"
            )
        for n in names:
            if not n or not isinstance(n, str):
                raise RecipeError("labelers.scorers: every scorer needs a 'name'")
            if n in RESERVED:
                raise RecipeError(f"labelers.scorers: {short_repr(n)} is a reserved column name")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RecipeError(f"labelers.scorers: duplicate names {short_repr(dup)}")


def _resolve(p: str | Path, base: Path) -> Path | str:
    if is_remote(p):
        return str(p).rstrip("/")  # a URL: as given, without a trailing slash
    q = Path(p).expanduser()
    return (q if q.is_absolute() else base / q).resolve()


@dataclass(frozen=True, kw_only=True)
class OutputSection:
    """``output:`` where the labelled dataset goes."""

    dir: str | None = None
    format: str = "mds"
    rows_per_shard: int = 2000
    compression: str | None = None


@dataclass(frozen=True, kw_only=True)
class LabelersSection:
    """``labelers:`` the domain labeller, the token counter and the quality scorers."""

    domain: dict[str, Any] | None = None
    tokens: dict[str, Any] | str = "whitespace"  # a type name, or a labeller spec
    scorers: list[dict[str, Any]] | None = None


@dataclass(frozen=True, kw_only=True)
class RunSection:
    """``run:`` how the job runs."""

    io_workers: int = 1
    progress: bool = True
    barrier_timeout_s: float = 6 * 3600.0


@dataclass(frozen=True, kw_only=True)
class LabelRecipeFile:
    """A labelling recipe file as written (checked by :func:`quadmix_stream.recipe.build`)."""

    name: str | None = None
    input: InputSpec | None = None
    output: OutputSection | None = None
    domains: list[str] | None = None
    unknown_domain: str = "error"
    train: list[dict[str, Any]] | None = None
    labelers: LabelersSection | None = None
    run: RunSection | None = None
    executor: ExecutorConfig | None = None


def _paths(value: Any, where: str) -> list[str]:
    """``input.paths``: one glob or a list of them."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{where}: expected a glob or a list of globs, got {short_repr(value)}")
    return list(value)


def parse_recipe(
    d: dict[str, Any], base: Path, name: str = "label", where: str = "recipe"
) -> Recipe:
    """A :class:`Recipe` from a mapping (as loaded from YAML); ``where`` names it in errors."""
    f = build(LabelRecipeFile, d, where, RecipeError, convert={"paths": _paths})
    out, labs, run = (
        f.output or OutputSection(),
        f.labelers or LabelersSection(),
        f.run or RunSection(),
    )
    return Recipe(
        name=f.name or name,
        base=base,
        input=f.input or InputSpec(),
        out=_resolve(out.dir, base) if out.dir else None,
        format=out.format,
        rows_per_shard=out.rows_per_shard,
        compression=out.compression,
        domains=list(f.domains) if f.domains else None,
        unknown_domain=f.unknown_domain,
        train=list(f.train or []),
        domain=labs.domain,
        tokens={"type": labs.tokens} if isinstance(labs.tokens, str) else dict(labs.tokens),
        scorers=[dict(s) for s in labs.scorers or []],
        io_workers=run.io_workers,
        progress=run.progress,
        barrier_timeout_s=run.barrier_timeout_s,
        executor=f.executor or ExecutorConfig(),
    )


def load_recipe(path: str | Path) -> Recipe:
    """Read a YAML recipe (safe loader only); errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    return parse_recipe(read_yaml(path), path.resolve().parent, path.stem, where=str(path))


def parse_kv(text: str) -> dict[str, Any]:
    """``"type=fasttext,path=m.bin,label=hq"`` → dict (values read as YAML scalars, safely)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            if not out:
                out["type"] = part
                continue
            raise RecipeError(f"expected key=value, got {short_repr(part)} in {short_repr(text)}")
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v else ""
    return out
