"""``quadmix-stream run RECIPE``: a whole flow — label → search → train → report — in one command.

A flow recipe names the step recipes it chains and where everything goes::

    out: runs/quickstart
    label: label_synthetic.yaml      # a `quadmix-stream label` recipe → {out}/data
    # or, instead of `label:`, an already labelled dataset (a folder or s3://bucket/ds):
    # dataset: s3://bucket/ds
    target: {synthetic: {docs: 200}} # or {path: some.jsonl}: the search's target set
    search: search_synthetic.yaml    # a `quadmix-stream search` recipe → {out}/search
    train:                           # a pretrain recipe body (dataset/params/eval_set filled in)
      model: {...}
      train: {steps: 200}
    compare: [random]                # baselines trained the same way, for the report

For a fair comparison (``recipes/table1.yaml``), hold the evaluation sets out of the raw corpus
first and train every method with several seeds::

    split: {corpus: "data/*.jsonl.gz", seed: 0, sets: {target: {docs: 400, domains: [wiki]},
                                                       general: {docs: 400, exclude_domains: [wiki]},
                                                       target_search: {docs: 300, domains: [wiki]}}}
    target: {heldout: target}        # {out}/heldout/target.jsonl; the pool is {out}/heldout/pool
    evals: {general: {heldout: general}}   # more sets every trained model is evaluated on
    search_target: {heldout: target_search} # the search's own target, so `target` stays unseen
    seeds: [0, 1, 2]                 # model init and data order; the report gives mean ± sd

The dataset is ``{out}/data``, unless the labelling recipe labels shards in place
(``input.shards``) or writes to object storage (``output.dir: s3://…``): then it is the dataset
there, and the search and the trainings read it from there (a URL stays a URL; nothing is
copied to ``{out}``). ``dataset:`` skips labelling and uses a labelled dataset as it is.

Step recipes are relative to the flow recipe's folder. Every step resumes: labelling skips
finished shards, the search skips finished proxies, training resumes from its last checkpoint.
The report's wall time counts every invocation: each stage's time is added to
``{out}/times.json`` when it ends (normally or by an error or Ctrl-C), and each training's time
comes from its own ``log.jsonl`` (which also counts an invocation killed by SIGKILL).

This module runs the steps; the report (text, tables, plots) is :mod:`quadmix_stream.flow.report`.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quadmix_stream.flow.report import write_report
from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.progress import fmt_duration
from quadmix_stream.recipe import RecipeError, build, read_yaml
from quadmix_stream.storage.io import atomic_write_text
from quadmix_stream.storage.locations import dataset_location

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from quadmix_stream.search.config import SearchConfig


def _log(msg: str) -> None:
    log.info("[run] %s", msg)


def _add_time(out: Path, stage: str, seconds: float) -> float:
    """Add ``seconds`` to ``stage`` in ``{out}/times.json``; returns its total over invocations."""
    path = out / "times.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    times[stage] = float(times.get(stage, 0.0)) + seconds
    atomic_write_text(path, json.dumps(times, indent=1))
    return times[stage]


@contextmanager
def _stage(out: Path, name: str, times: dict[str, float]) -> Iterator[None]:
    """Time one stage of the flow, print how long it took, and keep the total across runs."""
    t = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t
        times[name] = _add_time(out, name, dt)
        _log(f"{name}: {fmt_duration(dt)} (all invocations: {fmt_duration(times[name])})")


def _heldout(name: Any, out: Path, where: str) -> Path:
    path = out / "heldout" / f"{name}.jsonl"
    if not path.exists():
        raise RecipeError(f"{where}: no held-out set {name!r} (give `split:` a set of that name)")
    return path


def _split(spec: Any, base: Path, out: Path) -> None:
    """Hold the evaluation sets out of the raw corpus: ``{out}/heldout/{pool/,NAME.jsonl}``."""
    import glob

    from quadmix_stream.training.holdout import parse_split, split_corpus, split_matches

    if not isinstance(spec, dict) or "corpus" not in spec:
        raise RecipeError("split: give {corpus: GLOB, seed: N, sets: {NAME: {docs: N, ...}}}")
    files = sorted(glob.glob(str(base / spec["corpus"])))
    if not files:
        raise RecipeError(f"split.corpus: no files match {base / spec['corpus']}")
    cfg = parse_split(spec)
    done = out / "heldout" / "split.json"
    if done.exists() and (out / "data").exists() and not split_matches(files, done, cfg):
        raise RecipeError(
            f"split: the settings or the corpus changed since {out} was labelled from its pool; "
            "run the flow with another --out (or delete the folder)"
        )
    summary = split_corpus([Path(f) for f in files], out / "heldout", cfg)
    _log(f"split: {summary['pool_docs']} pool documents; held out {summary['sets']}")


def _evals(spec: Any, base: Path, out: Path) -> dict[str, str]:
    """``evals: {name: {heldout: NAME} | {path: FILE}}`` → ``{name: path}`` (paths relative to
    the recipe's folder, like the target's)."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise RecipeError("evals: a mapping {name: {heldout: NAME} or {path: FILE.jsonl}}")
    found = {}
    for k, v in spec.items():
        found[str(k)] = str(_eval_set(v, base, out, f"evals.{k}"))
    return found


def _eval_set(
    spec: Any, base: Path, out: Path, where: str, heldout_where: str | None = None
) -> Path:
    """``{heldout: NAME}`` (a set of ``split:``) or ``{path: FILE}`` (relative to the recipe)."""
    if isinstance(spec, dict) and "heldout" in spec:
        return _heldout(spec["heldout"], out, heldout_where or where)
    if isinstance(spec, dict) and "path" in spec and (base / spec["path"]).exists():
        return (base / spec["path"]).resolve()
    raise RecipeError(f"{where}: give {{heldout: NAME}} or {{path: EXISTING.jsonl}}")


def _seeds(spec: Any) -> list[int]:
    seeds = spec if isinstance(spec, list) else [spec]
    if not seeds or any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise RecipeError(f"seeds: a list of integers, got {spec!r}")
    return [int(x) for x in seeds]


def _target(spec: dict[str, Any], base: Path, out: Path) -> Path:
    """The target set as a JSONL file in ``out`` (or a held-out set of ``split:``)."""
    path = out / "target.jsonl"
    if "heldout" in spec:
        return _heldout(spec["heldout"], out, "target.heldout")
    if "path" in spec:
        src = (base / spec["path"]).resolve()
        if not src.exists():
            raise RecipeError(f"target.path: {src} does not exist")
        shutil.copyfile(src, path)
    elif "synthetic" in spec:
        from quadmix_stream.synth import DOMAINS, TARGET_DOMAINS, write_eval_set

        s = spec["synthetic"] or {}
        write_eval_set(
            path,
            tuple(s.get("domains", TARGET_DOMAINS)),
            int(s.get("docs", 200)),
            int(s.get("seed", 10_001)),
        )
        write_eval_set(
            out / "eval.jsonl", DOMAINS, int(s.get("docs", 200)), int(s.get("seed", 10_001)) + 1
        )
    elif "corpus" in spec:  # a uniform sample of some domains of a raw corpus (in the pool too)
        import glob
        import random

        from quadmix_stream.benchmarks.corpus import iter_shared_corpus

        c = spec["corpus"]
        files = sorted(glob.glob(str(base / c["glob"])))
        if not files:
            raise RecipeError(f"target.corpus.glob: no files match {base / c['glob']}")
        keep = set(c.get("domains", []))
        docs = [
            d
            for d in iter_shared_corpus(Path(files[0]).parent)
            if not keep or d.get("domain") in keep
        ]
        random.Random(int(c.get("seed", 0))).shuffle(docs)
        with open(path, "w") as f:
            for d in docs[: int(c.get("docs", 300))]:
                f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    else:
        raise RecipeError(
            "target: give {path: FILE.jsonl}, {synthetic: {...}}, {corpus: {...}} or {heldout: NAME}"
        )
    return path


def _search_target(spec: Any, base: Path, out: Path) -> Path | None:
    """``search_target: {heldout: NAME} | {path: FILE}``: the set the search's objective calls
    ``target`` when it must not be the one the trained models are judged on (None: the same)."""
    return (
        None
        if spec is None
        else _eval_set(spec, base, out, "search_target", "search_target.heldout")
    )


def _search_config(path: Path, evals: dict[str, str]) -> SearchConfig:
    """The search recipe, given the flow's evaluation sets its objective or constraints name."""
    from quadmix_stream.search.config import SearchConfig

    body = dict(read_yaml(path))
    body = dict(body.get("search", body))
    named = set(body.get("objective") or {}) | set(body.get("constraints") or {})
    own = dict(body.get("evals") or {})
    add = {k: v for k, v in evals.items() if k in named and k not in own}
    if add:
        body["evals"] = {**own, **add}
    return SearchConfig.from_dict(body, str(path))


FLOW_KEYS = {
    "out",
    "label",
    "dataset",
    "split",
    "target",
    "search_target",
    "evals",
    "search",
    "train",
    "compare",
    "seeds",
}


def _label(raw: dict[str, Any], base: Path, out: Path) -> str | Path:
    """Label the pool, or take the recipe's labelled ``dataset:``; returns where the dataset is.

    New shards go to ``{out}/data``. A labelling recipe that labels shards in place, or writes
    to object storage, keeps its own location: the dataset is then a folder elsewhere or a URL
    (kept as the string, never copied into ``{out}``).
    """
    from quadmix_stream.labelling.pipeline import run_label
    from quadmix_stream.labelling.recipe import load_recipe
    from quadmix_stream.storage.store import is_remote

    if "dataset" in raw:
        given = raw["dataset"]
        if "label" in raw:
            raise RecipeError("give `label:` (a labelling recipe) or `dataset:`, not both")
        if not isinstance(given, str) or not given.strip():
            raise RecipeError(f"dataset: a labelled dataset's folder or URL, got {given!r}")
        data = dataset_location(given)
        if isinstance(data, Path):  # relative to the recipe's folder, like the step recipes
            data = (base / data.expanduser()).resolve()
        m = Manifest.load(data)  # a missing or unlabelled dataset fails here, not mid-flow
        _log(f"dataset: {data} ({m.rows} labelled documents; no labelling step)")
        return data
    if "label" not in raw:
        raise RecipeError("give `label:` (a labelling recipe) or `dataset:` (a labelled dataset)")
    lr = load_recipe(base / raw["label"])
    if not lr.input.shards and not (lr.out is not None and is_remote(lr.out)):
        lr.out = out / "data"
    _log(f"label: {base / raw['label']} → {lr.out or 'the shards, in place'}")
    labelled = run_label(lr)  # checks the recipe: `lr.out` is now set (the shards' folder)
    if getattr(labelled, "manifest", None) is not None:
        log.info(labelled.summary())  # throughput per labeller, issues found
    assert lr.out is not None
    return dataset_location(lr.out)


def run_flow(recipe: str | Path, out: str | Path | None = None) -> Path:
    """Run every step of a flow recipe; returns the folder holding ``report.md``."""
    from quadmix_stream.search.pipeline import run_all

    recipe = Path(recipe)
    raw = read_yaml(recipe)
    unknown = set(raw) - FLOW_KEYS
    if unknown:
        raise RecipeError(f"{recipe}: unknown key(s) {sorted(unknown)}")
    base = recipe.resolve().parent
    out = Path(out or raw.get("out") or "runs/flow").resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = _seeds(raw.get("seeds", [0]))
    times: dict[str, float] = {}

    if "split" in raw:
        with _stage(out, "split", times):
            _split(raw["split"], base, out)

    with _stage(out, "label", times):
        data = _label(raw, base, out)

    with _stage(out, "search", times):
        target = _target(raw.get("target") or {"synthetic": {}}, base, out)
        evals = _evals(raw.get("evals"), base, out)
        cfg = _search_config(base / raw["search"], evals).replace(
            dataset=str(data),
            target=str(_search_target(raw.get("search_target"), base, out) or target),
            out=str(out / "search"),
            synth=None,
        )
        _log(f"search: {base / raw['search']} → {out / 'search'}")
        run_all(cfg, out / "search")

    runs = {"quadmix": out / "search" / "params.json"}
    # baselines, or the search's own contenders (θ*, candidates, round bests) to train next to
    # what shipped: e.g. θ* when the search shipped something else
    where = [out / "search" / "baselines", out / "search" / "candidates"]
    for name in raw.get("compare", []):
        found = [d / f"{name}.json" for d in where if (d / f"{name}.json").exists()]
        if not found:
            have = sorted(x.stem for d in where for x in d.glob("*.json"))
            raise RecipeError(f"compare: no baseline or search candidate {name!r} (have {have})")
        runs[name] = found[0]
    results = _train_all(raw.get("train") or {}, out, data, runs, target, evals, seeds, times)
    report = write_report(out, data, runs, results, times)
    _log(f"report: {report}")
    return out


def same_streams(runs: dict[str, Path]) -> dict[str, str]:
    """``{name: the earlier name whose params make the same stream}``: e.g. ``theta-star`` in
    ``compare:`` when θ* is what shipped. Compared by what changes the stream, not provenance."""
    from quadmix_stream.search.proxy import stream_fingerprint

    first: dict[str, str] = {}
    out = {}
    for name, path in runs.items():
        fp = stream_fingerprint(SamplingParams.load(path))
        if fp in first:
            out[name] = first[fp]
        else:
            first[fp] = name
    return out


def _train_all(
    train_body: dict[str, Any],
    out: Path,
    data: str | Path,
    runs: dict[str, Path],
    target: Path,
    evals: dict[str, str],
    seeds: list[int],
    times: dict[str, float],
) -> dict[str, dict[str, Any]]:
    """Train one model per (params, seed); every run resumes from its own last checkpoint.

    All runs share one tokenizer (trained once on the pool) so their losses are comparable.
    Returns ``{name: {"seeds": {seed: {eval name: final loss}}, "steps", "tokens"}}``.
    """
    from quadmix_stream.storage.store import StorageConfig
    from quadmix_stream.stream.pool import pool_texts
    from quadmix_stream.trainers.pretrain import PretrainConfig, train
    from quadmix_stream.trainers.runlog import read_log, wall_time
    from quadmix_stream.training.tokenizer import train_tokenizer

    body0 = {k: dict(v) if isinstance(v, dict) else v for k, v in train_body.items()}
    data_body = dict(body0.get("data") or {})
    if not data_body.get("tokenizer"):
        tok = out / "tokenizer.json"
        if not tok.exists():
            _log(f"tokenizer: a BPE on the pool → {tok}")
            storage = StorageConfig(cache_limit=data_body.get("cache_limit"))
            texts = pool_texts(data, 5000, storage=storage)
            train_tokenizer(texts, int(data_body.get("vocab_size", 512)), tok)
        data_body["tokenizer"] = str(tok)
    results: dict[str, dict[str, Any]] = {}
    twins = same_streams(runs)
    n_runs, i_run = (len(runs) - len(twins)) * len(seeds), 0
    for name, params in runs.items():
        if name in twins:  # one training per stream: the same batches would give the same losses
            _log(f"{name}: the same stream as {twins[name]}; its trainings are {twins[name]}'s")
            results[name] = {
                **copy.deepcopy(results[twins[name]]),
                "same_stream_as": twins[name],
            }
            continue
        for seed in seeds:
            i_run += 1
            folder = out / (f"train-{name}" if seeds == [0] else f"train-{name}-seed{seed}")
            body = dict(body0)
            body["data"] = {**data_body, "dataset": str(data), "params": str(params), "seed": seed}
            body["train"] = {
                **dict(body0.get("train") or {}),
                "eval_set": str(target),
                "eval_sets": evals or None,
                "seed": seed,
            }
            body["out"] = str(folder)
            pc = build(PretrainConfig, body, "train")
            _same_run_or_fail(folder, body, params)
            _log(f"train {i_run}/{n_runs}: {name} params, seed {seed} → {folder}")
            train(pc, folder)
            log = read_log(folder / "log.jsonl")
            last = [x for x in log if "eval_loss" in x][-1]
            r = results.setdefault(name, {"seeds": {}})
            r["seeds"][seed] = {"target": last["eval_loss"], **last.get("eval_losses", {})}
            r["steps"] = pc.train.steps
            r["tokenizer"] = data_body["tokenizer"]
            start = [x for x in log if x.get("event") == "start"][-1]
            r["model_parameters"] = start["model_parameters"]
            if "eval_coverage" in start:  # logs written before it was recorded lack it
                r["eval_coverage"] = start["eval_coverage"]
            r["tokens"] = pc.train.steps * pc.train.batch_size * pc.data.seq_len
            # the trainer's log spans every invocation of this training, killed ones included
            times[f"train-{name}-seed{seed}"] = wall_time(log)
    return results


def _same_run_or_fail(folder: Path, body: dict[str, Any], params: Path) -> None:
    """Resume a training folder only for the same settings and the same sampling parameters.

    A re-run after editing ``train:`` (or after a new search changed θ*) must not quietly
    continue old checkpoints under new settings. The params are compared by what changes the
    stream (not provenance or timestamps: a resumed search rewrites params.json unchanged).
    """
    from quadmix_stream.search.proxy import stream_fingerprint

    fp = stream_fingerprint(SamplingParams.load(params))
    ident = json.loads(json.dumps({"train": body, "params_stream": fp}))
    path = folder / "flow-train.json"
    if path.exists():
        old = json.loads(path.read_text())
        if "params_sha256" in old:  # written before params were compared by stream
            from quadmix_stream.storage.io import sha256_file

            same = old.pop("params_sha256") == sha256_file(params)
            old["params_stream"] = fp if same else None
        if _in_flow(old, folder) != _in_flow(ident, folder):
            raise RecipeError(
                f"{folder} was trained with other settings or another params file; delete the "
                "folder to retrain it, or run the flow with another --out"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(ident, indent=1))


def _in_flow(ident: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A training's identity with the paths inside its flow folder written relative to it, so a
    flow folder moved or copied elsewhere resumes its trainings. The flow folder is the one
    that held the training folder when ``ident`` was written (its ``out``), else ``folder``'s."""
    prefix = str(Path(ident["train"].get("out", folder)).parent).rstrip("/") + "/"

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return "{flow}/" + v[len(prefix) :] if isinstance(v, str) and v.startswith(prefix) else v

    return walk(ident)


def register(sub) -> None:  # noqa: ANN001 (argparse sub-parsers)
    p = sub.add_parser(
        "run",
        help="run a whole flow recipe: label → search → train → report",
        description=__doc__,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", help="flow recipe, e.g. recipes/quickstart.yaml")
    p.add_argument("--out", help="output folder (default: the recipe's `out`)")
    p.set_defaults(func=lambda a: run_flow(a.recipe, a.out) and 0)
