"""Do proxies rank a flow's methods as its full-size trainings did?

    python scripts/rank_check.py runs/table1_repeat [CONFIG ...]   # → runs/table1_repeat/rank_check/

``verification`` (first, and free) reads the search's own verification proxies (its
``select.seeds`` data seeds; "quadmix" is the contender that shipped), as the flow's report does. For each other proxy
configuration (below: the recipe's, 4× the tokens over half the pool, the
full-size model's width), the flow's params files (its baselines and what shipped) are trained as
proxies with data seeds 0-2 in a run folder of their own over the flow's labels, and their mean
objective is compared with the full-size trainings' (``results.json``): Spearman over methods.
An exploratory measurement (docs/results.md, the repetition regime), not a step of the flow.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from quadmix_stream.flow.report import full_objective, rank_agreement
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.decide import rank_table
from quadmix_stream.search.pipeline import step_propose
from quadmix_stream.search.proxy import ProxyJob
from quadmix_stream.search.runfolder import RunFolder, objective_of
from quadmix_stream.search.runner import context, run_jobs

FULL_WIDTH = {
    "hidden_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 256,
}
CONFIGS = {
    "recipe": {},
    "4x_tokens_half_pool": {"tokens": 131072, "pool_fraction": 0.5},
    "full_width": {"model": FULL_WIDTH},
}
SEEDS = [0, 1, 2]
VERIFICATION = "verification"


def main(flow: Path, names: list[str]) -> dict:
    base = RunFolder(flow / "search").config
    full = json.loads((flow / "results.json").read_text())
    files = {p.stem: p for p in (flow / "search" / "baselines").glob("*.json")}
    files["quadmix"] = flow / "search" / "params.json"
    files = {k: v for k, v in files.items() if k in full}

    def objective(name: str) -> float:
        return full_objective(full[name], dict(base.objective))

    out: dict = {}
    for name in names:
        if name == VERIFICATION:
            out[name] = rank_agreement(flow / "search", full)["screening"]
        else:
            out[name] = _train(flow, base, files, name, objective)
        _print(name, out[name])
        (flow / "rank_check").mkdir(exist_ok=True)
        (flow / "rank_check" / "rank_check.json").write_text(json.dumps(out, indent=1))
    return out


def _train(flow: Path, base, files: dict[str, Path], name: str, objective) -> dict:
    """Train every method's params as proxies of configuration ``name`` with seeds 0-2."""
    change = dict(CONFIGS[name])
    model = change.pop("model", None)
    proxy = dataclasses.replace(base.proxy, **change)
    if model is not None:
        proxy = dataclasses.replace(proxy, model=dataclasses.replace(proxy.model, **model))
    path = flow / "rank_check" / name
    proposals = dataclasses.replace(base.proposals, n=4)  # the folder needs a few; unused
    cfg = base.replace(out=str(path), proxy=proxy, regmix=None, proposals=proposals)
    if not (path / "search.json").exists():
        step_propose(path, cfg)
    folder = RunFolder(path)
    jobs = [
        ProxyJob(f"{m}.s{s}", SamplingParams.load(f), data_seed=s)
        for m, f in sorted(files.items())
        for s in SEEDS
    ]
    t0 = time.time()
    recs = run_jobs(jobs, context(folder), folder.config.proxy.group, lambda r: None)
    per: dict[str, list[float]] = {}
    for job, rec in zip(jobs, recs, strict=True):
        per.setdefault(job.name.split(".s")[0], []).append(objective_of(rec, base.objective))
    out = rank_table({m: float(np.mean(v)) for m, v in per.items()}, {m: objective(m) for m in per})
    out["seed_sd"] = float(np.mean([np.std(v, ddof=1) for v in per.values()]))
    out["seconds_per_proxy"] = (time.time() - t0) / len(jobs)
    return out


def _print(name: str, r: dict) -> None:
    print(
        f"{name}: Spearman vs full size {r['spearman_vs_full']:+.3f} over {len(r['proxy'])} methods"
    )
    for m in sorted(r["proxy"], key=r["proxy"].get):
        print(f"  {m:18s} proxy {r['proxy'][m]:.4f}  full {r['full'][m]:.4f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or [VERIFICATION, *CONFIGS])
