"""``quadmix-stream run RECIPE``: a whole flow — label → search → train → report — in one command.

A flow recipe names the step recipes it chains and where everything goes::

    out: runs/quickstart
    label: label_synthetic.yaml      # a `quadmix-stream label` recipe → {out}/data
    target: {synthetic: {docs: 200}} # or {path: some.jsonl}: the search's target set
    search: search_synthetic.yaml    # a `quadmix-stream search` recipe → {out}/search
    train:                           # a pretrain recipe body (dataset/params/eval_set filled in)
      model: {...}
      train: {steps: 200}
    compare: [random]                # baselines trained the same way, for the report

Step recipes are relative to the flow recipe's folder. Every step resumes: labelling skips
finished shards, the search skips finished proxies, training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from quadmix_stream.recipe import RecipeError, build, read_yaml


def _log(msg: str) -> None:
    print(f"[run] {msg}", flush=True)


def _target(spec: dict[str, Any], base: Path, out: Path) -> Path:
    """The target set as a JSONL file in ``out``."""
    path = out / "target.jsonl"
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
        raise RecipeError("target: give {path: FILE.jsonl}, {synthetic: {...}} or {corpus: {...}}")
    return path


def run_flow(recipe: str | Path, out: str | Path | None = None) -> Path:
    """Run every step of a flow recipe; returns the folder holding ``report.md``."""
    from quadmix_stream.labelling.pipeline import run_label
    from quadmix_stream.labelling.recipe import load_recipe
    from quadmix_stream.search.config import SearchConfig
    from quadmix_stream.search.pipeline import run_all
    from quadmix_stream.trainers.pretrain import PretrainConfig, train

    recipe = Path(recipe)
    raw = read_yaml(recipe)
    unknown = set(raw) - {"out", "label", "target", "search", "train", "compare"}
    if unknown:
        raise RecipeError(f"{recipe}: unknown key(s) {sorted(unknown)}")
    base = recipe.resolve().parent
    out = Path(out or raw.get("out") or "runs/flow").resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}

    t = time.perf_counter()
    data = out / "data"
    lr = load_recipe(base / raw["label"])
    lr.out = data
    _log(f"label: {base / raw['label']} → {data}")
    run_label(lr)
    times["label"] = time.perf_counter() - t

    t = time.perf_counter()
    target = _target(raw.get("target") or {"synthetic": {}}, base, out)
    cfg = SearchConfig.load(base / raw["search"]).replace(
        dataset=str(data), target=str(target), out=str(out / "search"), synth=None
    )
    _log(f"search: {base / raw['search']} → {out / 'search'}")
    run_all(cfg, out / "search")
    times["search"] = time.perf_counter() - t

    results: dict[str, Any] = {}
    runs = {"quadmix": out / "search" / "params.json"}
    for name in raw.get("compare", []):
        p = out / "search" / "baselines" / f"{name}.json"
        if not p.exists():
            raise RecipeError(
                f"compare: no baseline {name!r} in {p.parent} (have {sorted(x.stem for x in p.parent.glob('*.json'))})"
            )
        runs[name] = p
    for name, params in runs.items():
        t = time.perf_counter()
        body = dict(raw.get("train") or {})
        body.setdefault("data", {})
        body["data"] = {**body["data"], "dataset": str(data), "params": str(params)}
        body.setdefault("train", {})
        body["train"] = {**body["train"], "eval_set": str(target)}
        body["out"] = str(out / f"train-{name}")
        pc = build(PretrainConfig, body, "train")
        _log(f"train with {name} params → {body['out']}")
        train(pc, Path(body["out"]))
        log = [json.loads(x) for x in (Path(body["out"]) / "log.jsonl").read_text().splitlines()]
        evals = [x["eval_loss"] for x in log if "eval_loss" in x]
        results[name] = {"final_target_loss": evals[-1] if evals else None, "steps": pc.train.steps}
        times[f"train-{name}"] = time.perf_counter() - t
    report = write_report(out, data, runs, results, times)
    _log(f"report: {report}")
    return out


def write_report(
    out: Path, data: Path, runs: dict[str, Path], results: dict[str, Any], times: dict[str, float]
) -> Path:
    from quadmix_stream.inspect import format_report, inspect_dataset
    from quadmix_stream.labels import Manifest
    from quadmix_stream.params import SamplingParams
    from quadmix_stream.plots import plot_selection

    m = Manifest.load(data)
    lines = [
        "# quadmix-stream run",
        "",
        f"Data: `{data}` ({m.rows} documents, {len(m.shards)} {m.format} shards).",
        "",
    ]
    lines += [
        "## Target loss after training (same steps and tokens)",
        "",
        "| params | final target loss |",
        "|---|---:|",
    ]
    for name, r in results.items():
        v = r["final_target_loss"]
        lines.append(f"| {name} | {v:.4f} |" if v is not None else f"| {name} | – |")
    for name, p in runs.items():
        params = SamplingParams.load(p).reorder(m.domains, m.scorer_names)
        png = plot_selection(data, params, out / f"selection-{name}.png")
        lines += [
            "",
            f"## Selection: {name}",
            "",
            f"![{name}]({png.name})",
            "",
            "```",
            format_report(inspect_dataset(data, params)),
            "```",
        ]
    lines += [
        "",
        "## Search",
        "",
        f"See `{out / 'search' / 'report' / 'report.md'}`.",
        "",
        "## Wall time",
        "",
    ]
    lines += [f"- {k}: {v:.0f} s" for k, v in times.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))
    return path


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
