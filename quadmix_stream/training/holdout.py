"""Hold evaluation sets out of a raw JSONL corpus before anything is trained on it.

A comparison of data-selection methods is only fair when the sets it is judged on were never
in the pool: not in the documents a scorer was trained on, not in the documents a model could
select. :func:`split_corpus` reads a corpus of ``*.jsonl.gz`` files once, picks each held-out
set as the documents with the smallest hash-uniforms of their ids (among those whose ``domain``
matches), and writes

* ``OUT/pool/<file>.jsonl.gz``: every other document, line for line as it was;
* ``OUT/<name>.jsonl``: one file per held-out set (``{"id", "text", "domain", "source"}``);
* ``OUT/split.json``: the settings and counts (written last: its presence means "done").

Re-running with the same settings does nothing; other settings rewrite everything.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.hashing import SALT_HOLDOUT, doc_key, uniform
from quadmix_stream.storage.io import atomic_write_text, tmp_path


class HoldoutError(UserError):
    """A corpus or held-out-set spec that cannot be split as asked; the message names it."""


@dataclass(frozen=True, kw_only=True)
class HeldOutSet:
    """One held-out set: ``docs`` documents drawn uniformly (by id hash) from some domains.

    Attributes:
        docs: how many documents.
        domains: draw only from these ``domain`` values (empty: any).
        exclude_domains: never draw from these.
    """

    docs: int
    domains: tuple[str, ...] = ()
    exclude_domains: tuple[str, ...] = ()

    def admits(self, domain: str) -> bool:
        return (not self.domains or domain in self.domains) and domain not in self.exclude_domains


@dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """Held-out sets by name (drawn in this order, each from what the previous ones left)."""

    sets: Mapping[str, HeldOutSet] = field(default_factory=dict)
    seed: int = 0


def parse_split(spec: Mapping[str, Any], where: str = "split") -> SplitConfig:
    """A :class:`SplitConfig` from a recipe mapping ``{seed, sets: {name: {docs, domains, ...}}}``."""
    from quadmix_stream.recipe import RecipeError

    unknown = set(spec) - {"seed", "sets", "corpus"}
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {sorted(unknown)}")
    sets = {}
    for name, s in dict(spec.get("sets") or {}).items():
        if not isinstance(s, Mapping) or "docs" not in s:
            raise RecipeError(f"{where}.sets.{name}: give at least {{docs: N}}")
        bad = set(s) - {"docs", "domains", "exclude_domains"}
        if bad:
            raise RecipeError(f"{where}.sets.{name}: unknown key(s) {sorted(bad)}")
        docs = s["docs"]
        if isinstance(docs, bool) or not isinstance(docs, int) or docs < 1:
            raise RecipeError(
                f"{where}.sets.{name}.docs: expected a positive integer, got {docs!r}"
            )
        sets[str(name)] = HeldOutSet(
            docs=docs,
            domains=tuple(map(str, s.get("domains") or ())),
            exclude_domains=tuple(map(str, s.get("exclude_domains") or ())),
        )
    if not sets:
        raise RecipeError(f"{where}.sets: name at least one held-out set")
    return SplitConfig(sets=sets, seed=int(spec.get("seed", 0)))


def _read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def choose_heldout(
    ids: Sequence[str], domains: Sequence[str], cfg: SplitConfig
) -> dict[str, np.ndarray]:
    """Indices of each held-out set: the smallest hash-uniforms among the admitted documents,
    in that (random) order.

    Pure function of the ids, their domains and the config (no file order dependence).
    """
    keys = np.array([doc_key(i) for i in ids], dtype=np.uint64)
    u = uniform(keys, cfg.seed, SALT_HOLDOUT)
    dom = np.asarray(domains, dtype=object)
    taken = np.zeros(len(ids), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for name, s in cfg.sets.items():
        ok = ~taken & np.array([s.admits(d) for d in dom], dtype=bool)
        cand = np.flatnonzero(ok)
        if len(cand) < s.docs:
            raise HoldoutError(
                f"held-out set {name!r}: wants {s.docs} documents, only {len(cand)} are admitted "
                f"(domains={list(s.domains) or 'any'}, exclude={list(s.exclude_domains)})"
            )
        # ties in u are broken by the id so the choice never depends on the order of the files
        order = np.lexsort((np.asarray(ids, dtype=object)[cand].astype(str), u[cand]))
        pick = cand[order[: s.docs]]  # in hash order: any prefix of the set is a uniform sample
        taken[pick] = True
        out[name] = pick
    return out


def _ident(files: Sequence[Path], cfg: SplitConfig) -> dict[str, Any]:
    """What a split depends on: the corpus files (name, size) and the settings."""
    return {
        "files": [[f.name, f.stat().st_size] for f in sorted(Path(x) for x in files)],
        "config": json.loads(json.dumps(asdict(cfg), default=list)),
    }


def split_matches(files: Sequence[str | Path], done: Path, cfg: SplitConfig) -> bool:
    """Whether the finished split recorded in ``done`` (``split.json``) is this one."""
    saved = json.loads(Path(done).read_text())
    return saved.get("ident") == _ident([Path(f) for f in files], cfg)


def split_corpus(files: Sequence[Path], out: Path, cfg: SplitConfig) -> dict[str, Any]:
    """Write the pool and the held-out sets (see the module docstring); returns ``split.json``."""
    out = Path(out)
    files = sorted(Path(f) for f in files)
    if not files:
        raise FileNotFoundError("split: no corpus files given")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise HoldoutError(f"split: corpus file names must be unique, got {names}")
    done = out / "split.json"
    if done.exists():
        if split_matches(files, done, cfg):
            return json.loads(done.read_text())
        done.unlink()  # other settings: nothing of the old split may be taken for the new one
    for old in (out / "pool").glob("*.jsonl.gz") if (out / "pool").exists() else ():
        if old.name not in names:
            old.unlink()

    lines: list[list[str]] = [_read(f) for f in files]
    docs: list[dict[str, Any]] = []
    for f, ls in zip(files, lines, strict=True):
        for i, line in enumerate(ls):
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                d = None
            if not isinstance(d, dict) or "id" not in d or "text" not in d:
                raise HoldoutError(
                    f"split: {f}:{i + 1} is not a JSON document with 'id' and 'text'"
                )
            docs.append(d)
    ids = [str(d["id"]) for d in docs]
    if len(set(ids)) != len(ids):
        raise HoldoutError("split: document ids must be unique across the corpus")
    held = choose_heldout(ids, [str(d.get("domain", "")) for d in docs], cfg)
    in_set = np.zeros(len(docs), dtype=bool)
    for idx in held.values():
        in_set[idx] = True

    (out / "pool").mkdir(parents=True, exist_ok=True)
    for name, idx in held.items():
        text = "".join(
            json.dumps(
                {k: docs[i].get(k) for k in ("id", "text", "domain", "source")}, ensure_ascii=False
            )
            + "\n"
            for i in idx
        )
        atomic_write_text(out / f"{name}.jsonl", text)
    start, pool_docs = 0, 0
    for f, ls in zip(files, lines, strict=True):
        keep = [x for j, x in enumerate(ls) if not in_set[start + j]]
        start += len(ls)
        pool_docs += len(keep)
        tmp = tmp_path(out / "pool" / f.name)
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as g:
            g.writelines(x if x.endswith("\n") else x + "\n" for x in keep)
        tmp.replace(out / "pool" / f.name)
    summary = {
        "ident": _ident(files, cfg),
        "pool_docs": pool_docs,
        "sets": {
            name: {
                "docs": len(idx),
                "domains": dict(
                    zip(
                        *np.unique(
                            [str(docs[i].get("domain", "")) for i in idx], return_counts=True
                        ),
                        strict=True,
                    )
                ),
            }
            for name, idx in held.items()
        },
    }
    summary = json.loads(json.dumps(summary, default=int))
    atomic_write_text(done, json.dumps(summary, indent=1))
    return summary
