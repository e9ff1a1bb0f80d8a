"""Test-retest of proxy losses: is a proxy's objective a property of θ, or of its seed's draw?

Every proxy of a search trains on the same data seed (common random numbers), so two nearby θ
read mostly the same documents and their losses are comparable. The price: what a proxy's loss
says about θ is mixed with which documents, windows and order that one seed drew, and because
the seed is shared, that part is a fixed, smooth function of θ too. A regressor can fit it as if
it were θ's effect, and its k-fold Spearman then measures how well it learned *that draw*, not
what a larger model trained on θ's selection would do.

:func:`retest` trains N finished proposals again with another data seed (same model init, same
evaluation blocks) and compares the objectives. Spearman near 1: the proxies measure θ. Near 0:
they mostly measure the draw; then no regressor ranks θ for a fresh draw better than that, and
θ* is a guess (raise ``proxy.tokens``, cover more documents, or use larger proxies).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from quadmix_stream.executors import ExecutorConfig
from quadmix_stream.search.config import ProxyConfig
from quadmix_stream.search.proxy import ProxyJob, run_seed
from quadmix_stream.search.runfolder import RunFolder, RunFolderError, objective_of, write_json
from quadmix_stream.search.runner import ProxySource, run_jobs

#: at least this test-retest Spearman for proxies that measure θ more than their draw
RELIABLE = 0.7
#: below this, a proxy's objective is mostly its draw
NOISY = 0.4


def retest_jobs(
    folder: RunFolder, runs: int, cfg: ProxyConfig
) -> tuple[list[ProxyJob], np.ndarray]:
    """The first ``runs`` successful first-round proposals (as jobs with ``cfg``'s data seeds)
    and their recorded objectives."""
    ids, _, theta = folder.proposals()
    rounds = folder.rounds()
    done = folder.finished()
    jobs, old = [], []
    for i in np.flatnonzero(rounds == 0):
        rec = done.get(folder.run_name(ids[i]))
        if rec is None or rec.get("status") != "ok":
            continue
        name, seed = folder.run_name(ids[i]), run_seed(cfg, ids[i])
        jobs.append(ProxyJob(name, folder.params_of(theta[i]), data_seed=seed))
        old.append(folder.objective(rec))
        if len(jobs) == runs:
            break
    if len(jobs) < 3:
        raise RunFolderError(
            f"{folder.path}: {len(jobs)} finished proposals to retest; run `proxies` first"
        )
    return jobs, np.array(old)


def retest(
    path: str | Path,
    runs: int = 48,
    data_seed: int | None = None,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    log=print,
    executor: ExecutorConfig | None = None,
) -> dict:
    """Retrain ``runs`` proposals with ``data_seed`` (default: the recipe's + 1); write and
    return ``retest.json`` (pairs of objectives, Spearman, Pearson, spreads)."""
    folder = RunFolder(path, dataset)
    source = ProxySource.of(folder, device, threads)
    cfg = source.config(folder)
    seed = cfg.data_seed + 1 if data_seed is None else int(data_seed)
    # the evaluation blocks were drawn with the recipe's seed and stay: only training changes
    # (with seed_per_run, each proposal's retest seed is drawn from the new base)
    source = dataclasses.replace(source, data_seed=seed)
    jobs, old = retest_jobs(folder, runs, dataclasses.replace(cfg, data_seed=seed))
    log(
        f"retest: {len(jobs)} proposals again with data seed {seed} (recorded: seed "
        f"{folder.config.proxy.data_seed})"
    )
    t0 = time.perf_counter()
    recs = run_jobs(
        jobs,
        source,
        group or folder.config.proxy.group,
        lambda r: None,
        log,
        executor or folder.config.executor,
    )
    by_name = {r["name"]: r for r in recs}  # Ray returns them as they finish
    recs = [by_name[j.name] for j in jobs]
    new = np.array([objective_of(r, folder.config.objective) for r in recs])
    ok = np.isfinite(new) & np.isfinite(old)
    res = {
        "runs": int(ok.sum()),
        "data_seed": {"recorded": folder.config.proxy.data_seed, "retest": seed},
        "spearman": float(spearmanr(old[ok], new[ok]).statistic),
        "pearson": float(np.corrcoef(old[ok], new[ok])[0, 1]),
        "sd_between_theta": float(old[ok].std()),
        "sd_of_difference": float((new[ok] - old[ok]).std()),
        "pairs": [
            {"name": j.name, "recorded": float(a), "retest": float(b)}
            for j, a, b in zip(jobs, old, new, strict=True)
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    reg = regressor_check(folder, [j.name for j in jobs], old, new)
    if reg is not None:
        res["regressor"] = reg
    write_json(folder.path / "retest.json", res)
    log(verdict(res))
    return res


def regressor_check(
    folder: RunFolder, names: list[str], old: np.ndarray, new: np.ndarray
) -> dict | None:
    """How the fitted regressor's out-of-fold predictions of the retested runs rank their
    recorded objectives and their retest objectives (a fresh draw); ``None`` before a fit, or
    when the fit saw other runs than the table now holds (fit again)."""
    import warnings

    from sklearn.model_selection import KFold, cross_val_predict

    from quadmix_stream.search.regressor import make_model

    try:
        met = json.loads((folder.path / "model" / "metrics.json").read_text())
        train = json.loads((folder.path / "model" / "train.json").read_text())
    except FileNotFoundError:
        return None
    _, y, recs = folder.table()
    if len(train["y"]) != len(y) or not np.allclose(train["y"], y):
        return None
    cfg = folder.config.regressor
    k = int(min(cfg.kfold, len(y)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oof = cross_val_predict(
            make_model(met["model"], len(y), cfg),
            np.asarray(train["x"]),
            y,
            cv=KFold(k, shuffle=True, random_state=cfg.seed),
        )
    row = {r["name"]: i for i, r in enumerate(recs)}
    pred = np.array([oof[row[n]] for n in names])
    ok = np.isfinite(old) & np.isfinite(new)
    return {
        "model": met["chosen"],
        "folds": k,
        "vs_recorded": float(spearmanr(pred[ok], old[ok]).statistic),
        "vs_retest": float(spearmanr(pred[ok], new[ok]).statistic),
    }


def verdict(res: dict) -> str:
    """One paragraph: the test-retest figures and what they mean for the search."""
    rho = res["spearman"]
    head = (
        f"test-retest Spearman {rho:.3f} over {res['runs']} proposals (seed "
        f"{res['data_seed']['recorded']} vs {res['data_seed']['retest']}); spread of the "
        f"objective between θ {res['sd_between_theta']:.4f}, between seeds of one θ "
        f"{res['sd_of_difference'] / np.sqrt(2):.4f}"
    )
    reg = res.get("regressor")
    tail = (
        f" The regressor ({reg['model']}, {reg['folds']}-fold out-of-fold predictions) ranks "
        f"these proposals' recorded objectives at {reg['vs_recorded']:.3f} and their retest "
        f"objectives at {reg['vs_retest']:.3f}: the second is what it can promise for a fresh "
        "draw."
        if reg
        else ""
    )
    if rho >= RELIABLE:
        return head + ": the proxies measure θ more than their draw." + tail
    fits = (
        "With one data seed for every proposal, a regressor learns that draw as if it were θ's "
        "effect (its k-fold Spearman does not show it), so θ* may not transfer: give each "
        "proposal its own seed (proxy.seed_per_run), proxies more tokens or documents, or "
        "larger models."
    )
    if rho >= NOISY:
        return (
            head + f": below {RELIABLE}, a large part of a proxy's loss is which documents its "
            f"seed drew. {fits}" + tail
        )
    return (
        head + f": below {NOISY}, a proxy's loss is mostly which documents its seed drew. "
        f"{fits}" + tail
    )
