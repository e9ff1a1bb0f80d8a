"""``quadmix-stream search …``: the offline parameter search, step by step or all at once."""

from __future__ import annotations

import argparse
import json
import subprocess

from quadmix_stream.executors import ExecutorConfig, add_executor_arguments

STEPS = {
    "propose": "create/reopen the run folder (with --recipe), train the tokenizer, draw θ proposals",
    "proxies": "train the pending proxies (resumable; --nproc N spreads them over torchrun ranks)",
    "fit": "score LightGBM, ridge and a Gaussian process on θ and on the selection profile "
    "(k-fold/held-out Spearman); keep the best",
    "round": "search round R (1, 2, …): refit, draw rounds.n θ near the best runs, train their "
    "proxies (resumable; `run` does rounds 1…rounds.k, this runs one, or one more)",
    "select": "predict fresh proposals, θ* = mean of the best k, the best candidates, baselines; "
    "then (evaluate: true) train their proxies and ship the best measured as params.json",
    "evaluate": "train proxies on θ*, the candidates and the baselines; ship the best measured "
    "(then, with `decide:` in the recipe, the deciding step)",
    "decide": "train θ*, the best verified contenders, Random, RegMix and the best top-k again at "
    "the recipe's `decide:` scale (a larger model, more tokens); ship the best there",
    "retest": "train some proposals again with another data seed: is a proxy's loss θ's, or its "
    "draw's? (test-retest Spearman → retest.json, shown in the report)",
    "report": "write report/report.md and its PNG plots",
    "status": "print what the run folder holds",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="offline parameter search: proposals → proxies → LightGBM → θ* (params.json)",
        description=(
            "The paper's search in a resumable run folder. `search run RECIPE` does every step; "
            "each step can also be run alone on RUN_DIR. Example: quadmix-stream search run "
            "recipes/search_synthetic.yaml"
        ),
    )
    ssub = p.add_subparsers(dest="step", metavar="STEP", required=True)
    r = ssub.add_parser("run", help="every step of a recipe (resumes an existing run folder)")
    r.add_argument("recipe", help="YAML recipe (e.g. recipes/search_synthetic.yaml)")
    r.add_argument("--out", help="run folder (default: the recipe's `out`)")
    _placement(r)
    r.set_defaults(func=_run)
    for step, text in STEPS.items():
        s = ssub.add_parser(step, help=text, description=text)
        s.add_argument("run_dir")
        s.add_argument(
            "--dataset",
            help="the dataset's current folder or URL if it moved (its fingerprint is checked)",
        )
        if step == "propose":
            s.add_argument("--recipe", help="recipe for a new run folder (or changed settings)")
        if step == "round":
            s.add_argument("round", type=int, help="the round (1 after the first batch, then 2 …)")
        if step in ("proxies", "round", "select", "evaluate", "decide", "retest"):
            _placement(s)
        if step == "retest":
            s.add_argument("--runs", type=int, default=48, help="proposals to retrain (default 48)")
            s.add_argument(
                "--data-seed", type=int, help="the retest's data seed (default: the recipe's + 1)"
            )
        if step == "proxies":
            s.add_argument("--limit", type=int, help="train at most this many proxies now")
            s.add_argument(
                "--nproc",
                type=int,
                default=1,
                help="launch this many torchrun ranks on this machine (default 1: in-process)",
            )
        s.set_defaults(func=_step)


def _placement(p: argparse.ArgumentParser) -> None:
    add_executor_arguments(p)
    p.add_argument(
        "--group", type=int, help="proxies trained at once (default: recipe proxy.group)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: recipe proxy.device)")
    p.add_argument("--threads", type=int, help="torch threads (default: recipe proxy.threads)")


def register_bench(bsub: argparse._SubParsersAction) -> None:
    """Add ``bench proxies`` to the ``bench`` command."""
    from quadmix_stream.search.bench import add_parser

    add_parser(bsub)


def _run(a: argparse.Namespace) -> int:
    from quadmix_stream.search.config import SearchConfig
    from quadmix_stream.search.pipeline import run_all

    cfg = SearchConfig.load(a.recipe)
    out = run_all(
        cfg, a.out, group=a.group, device=a.device, threads=a.threads, executor=_executor(a, cfg)
    )
    print(f"done: {out / 'params.json'}, {out / 'report' / 'report.md'}")
    return 0


def _executor(a: argparse.Namespace, cfg=None) -> ExecutorConfig | None:
    """The executor the flags ask for, on top of the recipe's (``cfg``) or the run folder's;
    ``None`` when no flag is given (the run folder's recipe decides)."""
    if a.executor is None and a.ray_address is None:
        return None
    if cfg is None:
        from quadmix_stream.search.runfolder import RunFolder

        cfg = RunFolder(a.run_dir, getattr(a, "dataset", None)).config
    return cfg.executor.with_overrides(a.executor, a.ray_address)


def _step(a: argparse.Namespace) -> int:
    from quadmix_stream.search import pipeline
    from quadmix_stream.search.config import SearchConfigError

    step = a.step
    if step == "propose":
        from quadmix_stream.search.config import SearchConfig

        cfg = SearchConfig.load(a.recipe) if a.recipe else None
        if cfg is not None and a.dataset:
            cfg = cfg.replace(dataset=a.dataset)
        pipeline.step_propose(a.run_dir, cfg, None if cfg else a.dataset)
    elif step == "proxies" and a.nproc > 1:
        if _executor(a) is not None and _executor(a).kind == "ray":
            raise SearchConfigError(
                "search proxies: --nproc launches torchrun ranks on this machine; with the ray "
                "executor Ray places the proxies (drop --nproc)"
            )
        from quadmix_stream.training.launch import torchrun_command

        cmd = torchrun_command(a.nproc, "-m", "quadmix_stream.trainers.proxy", a.run_dir)
        for flag in ("dataset", "group", "device", "threads", "limit"):
            if getattr(a, flag) is not None:
                cmd += [f"--{flag}", str(getattr(a, flag))]
        print(" ".join(cmd), flush=True)
        return subprocess.call(cmd)
    elif step == "proxies":
        pipeline.step_proxies(
            a.run_dir, a.dataset, a.group, a.device, a.threads, a.limit, executor=_executor(a)
        )
    elif step == "round":
        if a.round < 1:
            raise SearchConfigError("search round: R must be 1 or more (round 0 is `proxies`)")
        pipeline.step_round(
            a.run_dir, a.round, a.dataset, a.group, a.device, a.threads, executor=_executor(a)
        )
    elif step in ("select", "evaluate", "decide"):
        fn = {
            "select": pipeline.step_select,
            "evaluate": pipeline.step_evaluate,
            "decide": pipeline.step_decide,
        }[step]
        fn(a.run_dir, a.dataset, a.group, a.device, a.threads, executor=_executor(a))
    elif step == "retest":
        from quadmix_stream.search.retest import retest

        retest(
            a.run_dir,
            a.runs,
            a.data_seed,
            a.dataset,
            a.group,
            a.device,
            a.threads,
            executor=_executor(a),
        )
    elif step == "status":
        print(json.dumps(pipeline.summary(a.run_dir), indent=1))
    else:
        getattr(pipeline, f"step_{step}")(a.run_dir, a.dataset)
    return 0
