"""Does changing the mixture while training runs beat the static shipped θ? (a flow's evidence)

    python scripts/mixing_schedules.py runs/table1_shares [--anneal-from STEP] [--within NAME]

For every seed of a finished flow, trains two more runs with the flow's own training settings
(its ``train-quadmix-seed*/flow-train.json``), beside the flow's static runs:

* ``anneal``: what shipped, then from ``--anneal-from`` (default: the last 10% of the steps) the
  anneal params of ``scripts/anneal_params.py``: the shipped domain shares with the selection of
  the baseline ``--within`` inside each domain (default: the best top-k by the search's
  verification proxies), through ``data.params_schedule``;
* ``odm``: what shipped, re-weighted every ``--odm-every`` steps (default 20; the run is named
  ``odm-everyN`` for another N) by the ODM controller (``data.controller``). ODM's exploration
  floor keeps the shares uniform for its first K·ln K updates (K domains): with 12 domains
  and every 20 steps that is 600 steps.

Then prints each method minus the static shipped θ and minus Random, paired by seed, per
evaluation set, and writes ``{flow}/schedules.json``. Runs resume: rerunning trains only what is
missing. An experiment, not a step of the flow.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anneal_params import main as anneal_params  # noqa: E402


def best_topk(flow: Path) -> str:
    measured = json.loads((flow / "search" / "selection.json").read_text())["shipped"]["measured"]
    return min(
        (k for k in measured if k.startswith("topk-")), key=lambda k: measured[k]["objective"]
    )


def final_losses(run: Path) -> dict[str, float]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    last = [r for r in rows if "eval_loss" in r][-1]
    return {"target": last["eval_loss"], **last.get("eval_losses", {})}


def train(flow: Path, seed: str, name: str, data: dict) -> Path:
    out = flow / f"train-{name}-seed{seed}"
    body = json.loads((flow / f"train-quadmix-seed{seed}" / "flow-train.json").read_text())["train"]
    body["data"].update(data)
    body["out"] = str(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(body, sort_keys=False))
    done = out / "log.jsonl"
    steps = int(body["train"]["steps"])
    if done.exists() and any(
        r.get("step") == steps and "eval_loss" in r
        for r in map(json.loads, done.read_text().splitlines())
    ):
        return out
    print(f"[schedules] training {out.name}", flush=True)
    subprocess.run([sys.executable, "-m", "quadmix_stream.cli", "train", str(recipe)], check=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flow", type=Path)
    ap.add_argument("--anneal-from", type=int, default=None)
    ap.add_argument("--within", default=None)
    ap.add_argument("--odm-every", type=int, default=20)
    a = ap.parse_args()
    flow = a.flow.resolve()
    results = json.loads((flow / "results.json").read_text())
    seeds = sorted(results["quadmix"]["seeds"])
    body = json.loads((flow / f"train-quadmix-seed{seeds[0]}" / "flow-train.json").read_text())
    steps = int(body["train"]["train"]["steps"])
    start = a.anneal_from or steps - steps // 10 + 1
    within = a.within or best_topk(flow)
    anneal = flow / "schedules" / "anneal.json"
    anneal.parent.mkdir(exist_ok=True)
    anneal_params(
        body["train"]["data"]["dataset"],
        str(flow / "search" / "params.json"),
        str(flow / "search" / "baselines" / f"{within}.json"),
        str(anneal),
    )
    odm = "odm" if a.odm_every == 20 else f"odm-every{a.odm_every}"
    runs = {
        "anneal": {"params_schedule": {start: str(anneal)}},
        odm: {"controller": {"name": "odm", "every": a.odm_every}},
    }
    losses = {m: {s: results[m]["seeds"][s] for s in seeds} for m in ("quadmix", "random")}
    for name, data in runs.items():
        losses[name] = {s: final_losses(train(flow, s, name, data)) for s in seeds}
    sets = list(losses["quadmix"][seeds[0]])
    out = {"anneal_from": start, "within": within, "seeds": seeds, "losses": losses, "diff": {}}
    for m in ("anneal", odm, "quadmix"):
        for ref in ("quadmix", "random"):
            if m == ref:
                continue
            for s_ in sets:
                d = np.array([losses[m][s][s_] - losses[ref][s][s_] for s in seeds])
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
                out["diff"][f"{m} - {ref} / {s_}"] = {
                    "per_seed": d.tolist(),
                    "mean": d.mean(),
                    "se": se,
                }
                print(
                    f"{m:>12} − {ref:<8} {s_:<15} "
                    + " / ".join(f"{x:+.3f}" for x in d)
                    + f"   mean {d.mean():+.3f} ± {se:.3f}"
                )
    path = flow / ("schedules.json" if odm == "odm" else f"schedules-{odm}.json")
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"→ {path}")


if __name__ == "__main__":
    main()
