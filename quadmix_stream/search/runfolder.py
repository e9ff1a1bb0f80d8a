"""The run folder of a search: every table and artefact, each file written atomically.

Layout::

    search.json          frozen settings, dataset location (folder or URL) and fingerprint,
                         target-set hash, feature names
    eval_sets/           local copies of target/evaluation sets given as URLs (NAME-SHA.jsonl)
    tokenizer.json       the proxies' tokenizer
    proposals.jsonl      θ table: {"run": i, "batch": b, "round": r, "theta": [...]} per line
                         (round 0: the recipe's proposals; 1, 2, …: search rounds)
    proxies/run-00012.json   one proxy result each (status ok/failed, loss, timings, reason)
    results.jsonl        all proxy results, rebuilt from proxies/ after each proxies step
    logs/proxies-*.json  one record per proxies invocation (rank, runs trained, wall time)
    model/               lgbm.txt (LightGBM text model), train.json, metrics.json
    model-SET/           the same for a constrained set's loss (``constraints:``)
    params.json          what ships: the best *measured* of θ*, the verified candidates, the
                         baselines and the proxy runs, with provenance; selection.json
    candidates/*.json    θ* (mean of the best k predicted) and the best predicted candidates
    baselines/*.json     baseline params; evals/*.json proxy results of candidates and baselines
    report/report.md     the report and its PNG plots
    regmix/              the RegMix-style domain-only search (a nested run folder)

A proxy is *finished* when its result file exists (atomic write: all or nothing). A proxy
killed mid-training has no file and is trained again; a finished one is never retrained. No two
processes write the same file (proxies are dealt to ranks), so nothing needs a lock.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.config import SearchConfig
from quadmix_stream.search.space import coordinate_names, space_of
from quadmix_stream.search.tokenizer import run_tokenizer_path
from quadmix_stream.storage.io import atomic_write_bytes, atomic_write_text, sha256_file
from quadmix_stream.storage.locations import dataset_location, location_str, read_location
from quadmix_stream.storage.store import is_remote

if TYPE_CHECKING:
    from quadmix_stream.search.pool import Pool
    from quadmix_stream.search.space import Space

SCHEMA = "quadmix-stream/search"
VERSION = 1


class RunFolderError(UserError):
    """A run folder that does not fit the request (other dataset, other settings, missing step)."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _same_tokenizer(run_dir: Path, new: str) -> bool:
    """Whether the tokenizer at ``new`` has the content of the run folder's copy (a run folder
    that moved, like the nested RegMix search whose tokenizer is its parent's, still resumes)."""
    mine = run_tokenizer_path(run_dir)
    new_path = Path(new)
    if new_path.is_dir() and (new_path / "tokenizer.json").is_file():
        new_path = new_path / "tokenizer.json"
    if not (mine.exists() and new_path.exists()) or mine.is_dir() != new_path.is_dir():
        return False
    if mine.is_dir():
        files = sorted(f.relative_to(mine) for f in mine.rglob("*") if f.is_file())
        theirs = sorted(f.relative_to(new_path) for f in new_path.rglob("*") if f.is_file())
        return files == theirs and all(
            sha256_file(mine / f) == sha256_file(new_path / f) for f in files
        )
    return sha256_file(mine) == sha256_file(new_path)


def objective_of(rec: dict, weights: dict[str, float]) -> float:
    """Σ weight · loss of the record's eval sets; NaN for a failed record or a missing set."""
    if rec.get("status") != "ok":
        return float("nan")
    losses = dict(rec.get("losses") or {})
    losses.setdefault("target", rec.get("loss", float("nan")))
    total = 0.0
    for name, w in weights.items():
        if w:
            total += w * float(losses.get(name, float("nan")))
    return total


def _eval_set(name: str, location: str | Path, run_dir: Path, missing: str) -> dict:
    """``{"path", "sha256"}`` of an evaluation set, plus ``"url"`` for one on object storage.

    A URL (``{dataset}/eval_sets/target.jsonl`` of a remote dataset) is downloaded into
    ``run_dir/eval_sets/NAME-SHA.jsonl``: proxies on every rank, re-runs and the hash check then
    read a local file, and a copy named by its content is never overwritten by a changed object
    (the change is reported against the copy the search started with).
    """
    if isinstance(location, Path):
        if not location.is_file():
            raise FileNotFoundError(missing)
        return {"path": str(location.resolve()), "sha256": sha256_file(location)}
    try:
        data = read_location(location)
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    sha = hashlib.sha256(data).hexdigest()
    local = run_dir / "eval_sets" / f"{name}-{sha[:16]}.jsonl"
    if not local.is_file():
        atomic_write_bytes(local, data)
    return {"path": str(local.resolve()), "url": location, "sha256": sha}


def _eval_hashes(cfg: SearchConfig, run_dir: Path) -> dict[str, dict]:
    out = {}
    for name, p in cfg.eval_paths.items():
        if name == "target":
            continue
        out[name] = _eval_set(name, p, run_dir, f"evaluation set {name} ({p}): no such file")
    return out


class RunFolder:
    """An existing run folder, checked against its dataset and target set on open."""

    def __init__(self, path: str | Path, dataset: str | Path | None = None) -> None:
        self.path = Path(path)
        self.dataset_override = dataset  # the dataset's new place, if it moved
        meta_path = self.path / "search.json"
        if not meta_path.exists():
            raise RunFolderError(
                f"{self.path}: not a search run folder (no search.json); start one with "
                "`quadmix-stream search propose RUN_DIR --recipe RECIPE` or `search run RECIPE`"
            )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("schema") != SCHEMA or self.meta.get("version") != VERSION:
            raise RunFolderError(f"{meta_path}: unsupported schema/version")
        self.config = SearchConfig.from_dict(self.meta["config"], f"{meta_path}:config")
        if dataset is not None:
            self.config = self.config.replace(dataset=str(dataset))
        self.check_dataset(self.config.dataset)
        self._pool: Pool | None = None
        self.domains: list[str] = self.meta["dataset"]["domains"]
        self.scorers: list[str] = self.meta["dataset"]["scorers"]

    # ------------------------------------------------------------ creation
    @classmethod
    def create(cls, path: str | Path, cfg: SearchConfig, extra: dict | None = None) -> RunFolder:
        """Make the run folder for ``cfg``, or reopen it when it was made with the same settings.

        A folder made for another dataset, target set or proxy settings is refused (its proxy
        results would not mean the same); regressor/selection/report settings may change.
        """
        path = Path(path)
        m = Manifest.load(cfg.dataset)
        target = cfg.target_path
        target_meta = _eval_set("target", target, path, f"target set {target}: no such file")
        meta = {
            "schema": SCHEMA,
            "version": VERSION,
            "created": now(),
            "config": cfg.to_dict(),
            # a remote dataset is its URL (a local path would name this machine's cache)
            "dataset": {
                "path": location_str(cfg.dataset, resolve=True),
                "remote": is_remote(cfg.dataset),
                "fingerprint": m.fingerprint(),
                "domains": list(m.domains),
                "scorers": list(m.scorer_names),
                "rows": m.rows,
            },
            "target": target_meta,
            "evals": _eval_hashes(cfg, path),
            "features": coordinate_names(cfg.space, m.domains, m.scorer_names),
            **(extra or {}),
        }
        meta["config"]["dataset"] = meta["dataset"]["path"]
        meta_path = path / "search.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if old.get("dataset", {}).get("fingerprint") != meta["dataset"]["fingerprint"]:
                raise RunFolderError(
                    f"{path}: this run folder belongs to another dataset "
                    f"({old.get('dataset', {}).get('path')}, fingerprint "
                    f"{old.get('dataset', {}).get('fingerprint')}); {cfg.dataset} has fingerprint "
                    f"{meta['dataset']['fingerprint']}. Use a new run folder."
                )
            if old["target"]["sha256"] != meta["target"]["sha256"]:
                raise RunFolderError(
                    f"{path}: the target set changed since this search started "
                    f"({old['target']['path']}); use a new run folder"
                )
            changed = sorted(
                k
                for k, v in meta["evals"].items()
                if old.get("evals", {}).get(k, {}).get("sha256", v["sha256"]) != v["sha256"]
            )
            if changed:
                raise RunFolderError(
                    f"{path}: evaluation set(s) {changed} changed since this search started; "
                    "use a new run folder"
                )
            old_cfg = SearchConfig.from_dict(old["config"], str(meta_path))
            new_cfg = SearchConfig.from_dict(meta["config"], "recipe")
            a, b = old_cfg.proxy_identity(), new_cfg.proxy_identity()
            a["proposals"].pop("n"), b["proposals"].pop("n")  # more proposals may be added
            if a["tokenizer"].get("path") and b["tokenizer"].get("path"):
                # by content: a moved run folder resumes, another tokenizer at that path does not
                a["tokenizer"]["path"] = True
                b["tokenizer"]["path"] = _same_tokenizer(path, b["tokenizer"]["path"])
            if a != b:
                diff = sorted(k for k in a if a[k] != b[k])
                raise RunFolderError(
                    f"{path}: made with other proxy settings ({', '.join(diff)} differ); its "
                    "proxy results would not be comparable. Use a new run folder."
                )
            meta["created"] = old["created"]
            meta.update({k: v for k, v in old.items() if k not in meta})
        path.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, meta)
        return cls(path)

    def check_dataset(self, dataset: str | Path) -> None:
        """Refuse a dataset whose fingerprint, or a target set whose content, changed."""
        d = self.meta["dataset"]
        try:
            fp = Manifest.load(dataset).fingerprint()
        except ValueError as e:
            raise RunFolderError(f"{self.path}: cannot open its dataset {dataset}: {e}") from None
        if fp != d["fingerprint"]:
            raise RunFolderError(
                f"{self.path}: this run folder was made for dataset {d['path']} (fingerprint "
                f"{d['fingerprint']}), but {dataset} has fingerprint {fp} (different shards, "
                "labels or scorers); its proxy results do not apply. Use a new run folder."
            )
        target = Path(self.meta["target"]["path"])
        if target.exists() and sha256_file(target) != self.meta["target"]["sha256"]:
            raise RunFolderError(
                f"{self.path}: the target set {target} changed since this search started"
            )

    def update_meta(self, **kw: object) -> None:
        self.meta.update(kw)
        write_json(self.path / "search.json", self.meta)

    # ------------------------------------------------------------ paths
    @property
    def dataset(self) -> str | Path:
        """The dataset's folder, or its URL as the string (never a ``Path``: it would mangle it)."""
        return dataset_location(self.config.dataset)

    @property
    def target(self) -> Path:
        return Path(self.meta["target"]["path"])

    @property
    def eval_paths(self) -> dict[str, Path]:
        """Every evaluation set of the proxies (``target`` first), as recorded at creation."""
        out = {"target": self.target}
        out.update({k: Path(v["path"]) for k, v in self.meta.get("evals", {}).items()})
        return out

    @property
    def tokenizer_path(self) -> Path:
        from quadmix_stream.search.tokenizer import run_tokenizer_path

        return run_tokenizer_path(self.path)

    def sub(self, name: str) -> Path:
        p = self.path / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ------------------------------------------------------------ proposals
    def proposals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(run ids, batch ids, θ matrix) of every proposal."""
        rows = read_jsonl(self.path / "proposals.jsonl")
        if not rows:
            raise RunFolderError(f"{self.path}: no proposals yet (run the `propose` step)")
        ids = np.array([r["run"] for r in rows], dtype=np.int64)
        batches = np.array([r["batch"] for r in rows], dtype=np.int64)
        return ids, batches, np.array([r["theta"] for r in rows], dtype=np.float64)

    def rounds(self) -> np.ndarray:
        """The search round of every proposal (0: the recipe's proposals), in proposal order."""
        rows = read_jsonl(self.path / "proposals.jsonl")
        return np.array([r.get("round", 0) for r in rows], dtype=np.int64)

    def write_proposals(
        self,
        ids: np.ndarray,
        batches: np.ndarray,
        theta: np.ndarray,
        rounds: np.ndarray | None = None,
    ) -> None:
        rounds = np.zeros(len(ids), np.int64) if rounds is None else rounds
        write_jsonl(
            self.path / "proposals.jsonl",
            (
                {"run": int(i), "batch": int(b), "round": int(r), "theta": [float(x) for x in t]}
                for i, b, r, t in zip(ids, batches, rounds, theta, strict=True)
            ),
        )

    def space(self, pool: Pool | None = None) -> Space:
        """The search's proposal space (the ``shares`` space opens the pool if not given)."""
        from quadmix_stream.search.pool import Pool

        cfg = self.config
        if pool is None and cfg.space == "shares":
            if self._pool is None:
                self._pool = Pool(self.dataset)
            pool = self._pool
        return space_of(cfg.space, cfg.proposals, self.domains, self.scorers, cfg.form, pool)

    def params_of(self, point: np.ndarray, provenance: str = "") -> SamplingParams:
        """The params of a proposal's point (its coordinates in the proposal space)."""
        return self.space().params(point, provenance)

    # ------------------------------------------------------------ proxy results
    @staticmethod
    def run_name(run: int) -> str:
        return f"run-{int(run):05d}"

    def result_path(self, name: str) -> Path:
        return self.path / "proxies" / f"{name}.json"

    def record(self, rec: dict, kind: str = "proxies") -> None:
        write_json(self.path / kind / f"{rec['name']}.json", rec)

    def finished(self, kind: str = "proxies") -> dict[str, dict]:
        folder = self.path / kind
        if not folder.is_dir():
            return {}
        out = {}
        for f in sorted(folder.glob("*.json")):
            try:
                out[f.stem] = json.loads(f.read_text())
            except (json.JSONDecodeError, OSError):
                continue  # cannot happen with atomic writes; treat as not finished
        return out

    def pending(self) -> list[int]:
        ids, _, _ = self.proposals()
        done = self.finished()
        return [int(i) for i in ids if self.run_name(int(i)) not in done]

    def consolidate(self) -> list[dict]:
        """Rewrite results.jsonl (sorted by run) from the per-proxy files."""
        done = self.finished()
        ids, _, _ = self.proposals()
        rows = [
            dict(done[self.run_name(int(i))], run=int(i))
            for i in ids
            if self.run_name(int(i)) in done
        ]
        write_jsonl(self.path / "results.jsonl", rows)
        return rows

    def objective(self, rec: dict) -> float:
        """The search's objective of a proxy record (NaN when failed or a set is missing)."""
        return objective_of(rec, self.config.objective)

    def table(
        self, weights: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(θ matrix, objective vector, records) of the successful proxies, in run order.

        The objective is the recipe's weighted sum of eval-set losses (the target loss alone
        by default), recomputed from each record's per-set losses; ``weights`` (e.g.
        ``{"general": 1.0}``: one set's loss) replaces the recipe's.
        """
        ids, _, theta = self.proposals()
        rounds = self.rounds()
        done = self.finished()
        w = self.config.objective if weights is None else weights
        keep, loss, recs = [], [], []
        for k, i in enumerate(ids):
            rec = done.get(self.run_name(int(i)))
            value = objective_of(rec, w) if rec else float("nan")
            if np.isfinite(value):
                keep.append(k)
                loss.append(value)
                recs.append(dict(rec, run=int(i), round=int(rounds[k])))
        return theta[keep], np.array(loss), recs

    def coverage(self) -> dict | None:
        """Documents per successful proxy (distinct documents it trained on): min and median."""
        docs = [
            r["unique_docs"]
            for r in self.finished().values()
            if r.get("status") == "ok" and "unique_docs" in r
        ]
        if not docs:
            return None
        return {
            "proxies": len(docs),
            "min": int(min(docs)),
            "median": float(np.median(docs)),
            "max": int(max(docs)),
            "threshold": self.config.coverage_min_docs,
        }

    def log(self, rec: dict) -> None:
        rank = rec.get("rank", 0)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        write_json(self.path / "logs" / f"proxies-{stamp}-rank{rank}-{os.getpid()}.json", rec)

    def logs(self) -> list[dict]:
        folder = self.path / "logs"
        return (
            [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
            if folder.is_dir()
            else []
        )
