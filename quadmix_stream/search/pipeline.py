"""The search steps on a run folder, and ``run_all`` for a whole recipe.

What the steps print and the ``status`` summary live in :mod:`.summaries`, the report in
:mod:`.report`. The steps stay in one module (~430 lines): each is short, and they share the
run folder's conventions (proposal batches and rounds, the nested RegMix folder).

Each step is idempotent and resumable: ``propose`` only adds missing proposals, ``proxies``
only trains proxies without a result, a search round only draws its proposals once and trains
what is missing, ``evaluate`` only trains what is missing or stale (a contender whose stream
changed); ``fit``, ``select`` and ``report`` are cheap and recomputed from the tables each time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quadmix_stream.executors import ExecutorConfig
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search import regressor
from quadmix_stream.search.config import (
    ProposalConfig,
    RoundsConfig,
    SearchConfig,
    SearchConfigError,
    TokenizerConfig,
)
from quadmix_stream.search.data import load_target_texts
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.runfolder import RunFolder, RunFolderError
from quadmix_stream.search.space import batch_seed
from quadmix_stream.search.summaries import (
    Log,
    best_per_round,
    coverage_lines,
    log_eval_coverage,
    summary,
)
from quadmix_stream.search.tokenizer import run_tokenizer_path

if TYPE_CHECKING:
    from quadmix_stream.search.proxy import ProxyJob
    from quadmix_stream.search.runner import ProxySource

REGMIX = "regmix"
#: proposal batch of search round r is ROUND_BATCH + r (its seed; round-0 batches are 0, 1, …)
ROUND_BATCH = 100_000


# ---------------------------------------------------------------- propose
def regmix_config(cfg: SearchConfig, parent: Path) -> SearchConfig:
    """The nested RegMix-style search: same dataset, target, objective, tokenizer and proxies.

    Constraints stay with the QuaDMix search (they steer it and decide what ships): the RegMix
    baseline is RegMix's own choice, measured against them like every other contender."""
    assert cfg.regmix is not None
    return cfg.replace(
        constraints={},
        space="domain_mixture",
        proposals=ProposalConfig(
            n=cfg.regmix.proposals, seed=cfg.regmix.seed, dirichlet=cfg.regmix.dirichlet
        ),
        tokenizer=TokenizerConfig(
            path=str(run_tokenizer_path(parent).resolve()), eos_token=cfg.tokenizer.eos_token
        ),
        regmix=None,
        rounds=RoundsConfig(),
        evaluate=False,
        out=None,
    )


def step_propose(
    path: str | Path,
    cfg: SearchConfig | None = None,
    dataset: str | Path | None = None,
    log: Log = print,
) -> RunFolder:
    """Create/reopen the run folder, prepare the tokenizer, draw the missing proposals.

    Only round-0 proposals count against ``proposals.n``; search rounds append their own.
    """
    path = Path(path)
    if cfg is not None:
        folder = RunFolder.create(path, cfg)
    else:
        folder = RunFolder(path, dataset)
    cfg = folder.config
    texts = load_target_texts(folder.target)  # a target set without text is refused here
    for name, p in folder.eval_paths.items():
        if name != "target":
            load_target_texts(p)
    if not folder.tokenizer_path.exists():
        from quadmix_stream.search.tokenizer import prepare_tokenizer

        info = prepare_tokenizer(cfg.tokenizer, folder.dataset, folder.path)
        folder.update_meta(tokenizer=info)
        log(f"tokenizer: {info['how']} (vocab {info['vocab_size']})")
    log_eval_coverage(folder, log)
    pool = Pool(folder.dataset)
    try:
        ids, batches, theta = folder.proposals()
        rounds = folder.rounds()
    except RunFolderError:
        ids, batches, theta = np.zeros(0, np.int64), np.zeros(0, np.int64), None
        rounds = np.zeros(0, np.int64)
    have, want = int((rounds == 0).sum()), cfg.proposals.n
    if have < want:
        b = int(batches[rounds == 0].max()) + 1 if have else 0
        new = folder.space(pool).first_batch(want - have, batch_seed(cfg.proposals.seed, b))
        start = int(ids.max()) + 1 if len(ids) else 0
        theta = new if theta is None else np.concatenate([theta, new])
        ids = np.concatenate([ids, np.arange(start, start + want - have, dtype=np.int64)])
        batches = np.concatenate([batches, np.full(want - have, b, dtype=np.int64)])
        rounds = np.concatenate([rounds, np.zeros(want - have, dtype=np.int64)])
        folder.write_proposals(ids, batches, theta, rounds)
        log(f"{path}: {want - have} new {cfg.space} proposals (total {want})")
    else:
        log(f"{path}: {have} proposals already drawn (recipe asks for {want})")
    folder.update_meta(target_docs=len(texts))
    if cfg.regmix is not None and cfg.space != "domain_mixture":
        step_propose(path / REGMIX, regmix_config(cfg, path), log=log)
    return folder


# ---------------------------------------------------------------- proxies
def step_proxies(
    path: str | Path,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    limit: int | None = None,
    executor: ExecutorConfig | None = None,
    log: Log = print,
) -> dict:
    """Train the pending proxies in this process, or as Ray tasks with a ``ray`` executor (the
    recipe's ``executor:``, or ``executor``); torchrun: ``quadmix_stream.trainers.proxy``."""
    from quadmix_stream.search.runner import run_pending

    folder = RunFolder(path, dataset)
    (executor or folder.config.executor).check_installed()
    pending = folder.pending()
    log(f"{path}: {len(pending)} proxies to train ({len(folder.finished())} finished)")
    summary = run_pending(
        folder,
        group=group,
        device=device,
        threads=threads,
        limit=limit,
        progress=log,
        executor=executor or folder.config.executor,
    )
    folder.consolidate()
    if summary.get("trained"):
        log(
            f"trained {summary['trained']} proxies ({summary['ok']} ok, {summary['failed']} "
            f"failed) in {summary['seconds']:.1f}s on {summary['device']}, group {summary['group']}: "
            f"{summary['proxies_per_hour']:.0f} proxies/hour"
        )
    for line in coverage_lines(folder):
        log(line)
    return summary


# ---------------------------------------------------------------- fit
def step_fit(path: str | Path, dataset: str | Path | None = None, log: Log = print) -> dict:
    """Score LightGBM, ridge and a Gaussian process on θ and on the selection profile; keep the
    best allowed pair by k-fold Spearman, refit on every run (``model/``). Each constrained set's
    loss gets a regressor of its own the same way (``model-SET/``): it steers the selection."""
    from quadmix_stream.search.features import featurizer_for
    from quadmix_stream.search.select import constraint_model_dir

    folder = RunFolder(path, dataset)
    rc = folder.config.regressor
    x, y, _ = folder.table()
    done = folder.finished()
    failed = sum(r.get("status") != "ok" for r in done.values())
    pool = Pool(folder.dataset)
    kinds = ["theta", "profile"] if rc.features == "auto" else [rc.features]
    xs, names = {}, {}
    for kind in dict.fromkeys([*kinds, "theta", "profile"]):  # both always, for the report
        feat = featurizer_for(kind, pool, folder.config.form, rc.profile_sample, folder.space(pool))
        xs[kind], names[kind] = feat(x), feat.names
    res = regressor.fit(xs, y, names, rc, kinds)
    rep = res.report
    rep.update(failed_runs=failed, objective=dict(folder.config.objective))
    regressor.save(res, folder.sub("model"))
    _log_scores(rep, log)
    top = ", ".join(f"{r['feature']} {r['gain']:.2f}" for r in rep["importance"][:5])
    log(
        f"fitted {rep['chosen']} on {rep['n_runs']} runs ({failed} failed runs excluded); "
        f"LightGBM's top features: {top}"
    )
    for s in folder.config.constraints:
        # the same runs: a record with every objective set has the constrained one too
        _, ys, _ = folder.table({s: 1.0})
        if len(ys) != len(y):
            raise RunFolderError(f"{path}: some proxy records lack the loss on {s!r}")
        cres = regressor.fit(xs, ys, names, rc, kinds)
        cres.report.update(failed_runs=failed, objective={s: 1.0})
        regressor.save(cres, constraint_model_dir(folder, s))
        head = regressor.headline(cres.report)
        log(
            f"constraint {s}: fitted {cres.report['chosen']} on its loss (Spearman "
            f"{head['spearman']:+.3f}); the selection keeps to θ predicted within the bound"
        )
    return rep


def _log_scores(rep: dict, log: Log) -> None:
    split = "kfold" if "kfold" in rep else "holdout"
    for kk, sc in rep["scores"].items():
        m = sc[split]
        mark = "  ← chosen" if kk == rep["chosen"] else ""
        log(
            f"{split:<8} {kk:<15} n={m['n']:<4} MAE {m['mae']:.4f} (mean: {m['mae_of_mean']:.4f})"
            f"  Spearman {m['spearman']:+.3f}  (held-out {sc['holdout']['spearman']:+.3f}){mark}"
        )


# ---------------------------------------------------------------- rounds
def step_round(
    path: str | Path,
    r: int,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    executor: ExecutorConfig | None = None,
    log: Log = print,
) -> dict:
    """Search round ``r`` (1, 2, …): refit on every run, draw ``rounds.n`` θ near the best, train.

    Resumable: a round whose proposals are drawn only trains what is missing (a killed round is
    redone from its drawn proposals, which never change); a finished round trains nothing.
    """
    from quadmix_stream.search.select import (
        load_constraints,
        load_predictor,
        local_candidates,
        staged_candidates,
        steer,
    )
    from quadmix_stream.search.space import spread_best

    folder = RunFolder(path, dataset)
    rc = folder.config.rounds
    rounds = folder.rounds()
    if not (rounds == r).any():
        if r > 1 and not (rounds == r - 1).any():
            raise RunFolderError(f"{path}: round {r - 1} was never drawn; run the rounds in order")
        if folder.pending():
            step_proxies(path, dataset, group, device, threads, executor=executor, log=log)
        step_fit(path, dataset, log=lambda s: None)
        pool = Pool(folder.dataset)
        pred = load_predictor(folder, pool)
        constraints, notes = load_constraints(folder, pool)
        for note in notes:
            log(f"WARNING: {note}")
        reach = rc.shrink ** (r - 1)
        staged = r == 1 and folder.config.proposals.staged
        if staged:  # the second stage: the best shares with fresh quality parameters
            cand, anchor = staged_candidates(
                folder, pred, pool, rc.n, batch_seed(rc.seed, r), constraints
            )
            p = pred.predict(cand)
            _, ok = steer(constraints, cand, p)
            pick = np.arange(rc.n)
        else:
            cand, anchor = local_candidates(
                folder, pred, pool, rc.candidates, reach, batch_seed(rc.seed, r), constraints
            )
            p = pred.predict(cand)
            key, ok = steer(constraints, cand, p)
            pick = spread_best(key, anchor, rc.n)
        new = cand[pick]
        ids, batches, theta = folder.proposals()
        start = int(ids.max()) + 1
        folder.write_proposals(
            np.concatenate([ids, np.arange(start, start + len(new))]),
            np.concatenate([batches, np.full(len(new), ROUND_BATCH + r)]),
            np.concatenate([theta, new]),
            np.concatenate([rounds, np.full(len(new), r)]),
        )
        how = (
            "pairing the best shares with fresh quality ("
            if staged
            else f"near the best (reach {reach:.3g}, "
        )
        log(
            f"round {r}: {len(new)} θ {how}from "
            f"{len(np.unique(anchor[pick]))} anchors), predicted {p[pick].min():.4f}–"
            f"{p[pick].max():.4f} by {pred.metrics['chosen']}"
            + (
                f"; {int(ok[pick].sum())} predicted within the constraints "
                f"({int(ok.sum())} of {len(ok)} candidates)"
                if constraints
                else ""
            )
        )
    step_proxies(path, dataset, group, device, threads, executor=executor, log=log)
    best = best_per_round(RunFolder(path, dataset))
    log("best actual objective per round: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()))
    return best


# ---------------------------------------------------------------- select (+ baselines)
def step_select(
    path: str | Path,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    executor: ExecutorConfig | None = None,
    log: Log = print,
) -> dict:
    """θ*, the best candidates and the baselines; with ``evaluate`` (default) their proxies are
    trained and the best measured ships as params.json."""
    from quadmix_stream.progress import heartbeat
    from quadmix_stream.search.baselines import all_baselines
    from quadmix_stream.search.select import select, write_star_only

    folder = RunFolder(path, dataset)
    pool = Pool(folder.dataset)
    with heartbeat(f"select: θ* from {folder.config.select.n:,}+ predicted candidates"):
        sel = select(folder, pool)
    log(
        f"θ* = mean of the best {sel['top_k']} of {sel['candidates']} candidates "
        f"({sel['local_candidates']} near the best runs): predicted {sel['predicted_loss']:.4f} "
        f"(candidates: min {sel['candidate_prediction']['min']:.4f}, median "
        f"{sel['candidate_prediction']['median']:.4f}; proxy runs: min "
        f"{sel['proxy_loss']['min']:.4f}, median {sel['proxy_loss']['median']:.4f})"
    )
    share = ", ".join(f"{d} {v:.2f}" for d, v in sel["profile"]["token_share"].items())
    log(f"θ* expected token shares: {share}")
    steering = sel.get("steering", {})
    for name, c in steering.get("constraints", {}).items():
        log(
            f"constraint {name} ≤ {c['from']}: θ* predicted {c['theta_star_predicted']:.4f}, "
            f"bound predicted {c['predicted_bound']:.4f}; "
            f"{steering['candidates_predicted_within']} of {sel['candidates']} candidates "
            "predicted within every bound, ranked first"
        )
    for note in steering.get("notes", []):
        log(f"WARNING: {note}")
    if steering.get("constraints") and steering["candidates_predicted_within"] < sel["top_k"]:
        log(
            f"WARNING: fewer than top_k={sel['top_k']} candidates are predicted within the "
            "constraints; θ* averages the best of the others too (lower constraint_margin, or "
            "widen proposals.ranges)"
        )
    for b in sel["boundary"]:
        log(f"WARNING: {b['message']}")
    if folder.config.space != "domain_mixture":
        bdir = folder.sub("baselines")
        b = folder.config.baselines
        for name, p in all_baselines(pool, b.topk_fraction, b.criteria_grid).items():
            p.save(bdir / f"{name}.json")
        nested = folder.path / REGMIX / "params.json"
        if nested.exists():
            rp = SamplingParams.load(nested)
            rp = dataclasses.replace(rp, provenance="baseline: RegMix-style " + rp.provenance)
            rp.save(bdir / "regmix.json")
        log(f"baselines: {sorted(p.stem for p in bdir.glob('*.json'))} → {bdir}")
    if folder.config.evaluate:
        step_evaluate(path, dataset, group, device, threads, executor=executor, log=log)
    else:
        write_star_only(folder)
    return sel


# ---------------------------------------------------------------- evaluate
def step_evaluate(
    path: str | Path,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    executor: ExecutorConfig | None = None,
    log: Log = print,
) -> dict:
    """Train proxies on θ*, the verified candidates, the round bests and the baselines at every
    verification seed (skipping those already trained on the same stream and seed; a proposal's
    record of the same stream and seed is copied), then ship the best measured as params.json."""
    from quadmix_stream.search.proxy import ProxyJob, stream_fingerprint
    from quadmix_stream.search.runner import ProxySource
    from quadmix_stream.search.select import (
        contenders,
        eval_name,
        measured_contenders,
        measures,
        record_seed,
        ship,
        verify_seeds,
    )

    folder = RunFolder(path, dataset)
    cfg = folder.config
    targets = contenders(folder)
    if not targets:
        raise RunFolderError(f"{path}: nothing to evaluate (run `select` first)")
    done = folder.finished("evals")
    runs = {
        (r.get("stream_fingerprint"), record_seed(r, cfg)): r for r in folder.finished().values()
    }
    jobs, copied = [], 0
    for name, p in targets.items():
        fp = stream_fingerprint(p)
        for s, seed in enumerate(verify_seeds(cfg)):
            ename = eval_name(name, s)
            if measures(done.get(ename), p, seed, cfg):
                continue
            job = ProxyJob(ename, p, {"evaluation": name, "seed_index": s}, seed)
            same = runs.get((fp, seed))
            if same is not None:  # this stream at this seed is a proposal already trained
                folder.record(
                    {**same, **job.info, "name": ename, "copied_from": same["name"]}, "evals"
                )
                copied += 1
            else:
                jobs.append(job)
    if copied:
        log(f"evaluate: {copied} contender proxies are proposals' records (same stream and seed)")
    if jobs:
        log(f"evaluate: training {len(jobs)} proxies ({', '.join(j.name for j in jobs)})")
        _train_once(
            jobs,
            folder,
            "evals",
            ProxySource.of(folder, device, threads),
            cfg.proxy.group if group is None else group,
            executor or cfg.executor,
            log,
        )
    else:
        log(f"evaluate: all {len(targets)} contenders already measured on their streams")
    measured, failed = measured_contenders(folder)
    _, y, _ = folder.table()
    for name in targets:
        if name in measured:
            m = measured[name]
            per = ", ".join(f"{k} {v:.4f}" for k, v in m["losses"].items())
            val = f"{m['objective']:.4f}" + (f" ({per})" if len(m["losses"]) > 1 else "")
            if len(m["objectives"]) > 1:
                val += f", sd over seeds {np.std(m['objectives'], ddof=1):.4f}"
        else:
            val = f"failed: {failed.get(name)}"
        log(f"{name:<16} actual proxy objective {val}")
    log(f"proposals' proxy objective: min {y.min():.4f}, median {np.median(y):.4f}")
    shipped = ship(folder)
    log(f"{shipped['text']} → {folder.path / 'params.json'}")
    if cfg.decide is not None:
        shipped = step_decide(path, dataset, group, device, threads, executor, log)
    return {k: measured.get(k) for k in targets} | {"shipped": shipped}


def _train_once(
    jobs: list[ProxyJob],
    folder: RunFolder,
    stage: str,
    source: ProxySource,
    group: int,
    executor: ExecutorConfig | None,
    log: Log,
) -> None:
    """Train ``jobs`` into ``stage``, each stream once: a job whose stream is an earlier job's
    at the same seed gets that job's record (:mod:`.twins`)."""
    from quadmix_stream.search.runner import run_jobs
    from quadmix_stream.search.twins import find_twins, twin_record

    proxy = source.config(folder)
    twins = find_twins(jobs, folder.dataset, proxy)
    if twins:
        log(f"{stage}: {len(twins)} of {len(jobs)} runs read another run's stream; trained once")

    def record(r: dict) -> None:
        folder.record(r, stage)

    run_jobs([j for j in jobs if j.name not in twins], source, group, record, log, executor)
    done, again = folder.finished(stage), []
    for job in jobs:
        if job.name in twins:
            first, epochs = twins[job.name]
            rec = twin_record(job, done.get(first), epochs)
            if rec is None:
                again.append(job)
            else:
                record(rec)
    if again:
        log(f"{stage}: {len(again)} runs read further than their twins were compared; training")
        run_jobs(again, source, group, record, log, executor)


def step_decide(
    path: str | Path,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    executor: ExecutorConfig | None = None,
    log: Log = print,
) -> dict:
    """Train θ*, the best verified contenders and the main baselines again at the deciding
    fidelity (``decide:``) at every deciding seed (skipping those already trained with the same
    stream, seed and settings), then ship the best there as params.json (:mod:`.decide`)."""
    from quadmix_stream.search.decide import DECIDE, decide_contenders, decide_seeds, fidelity
    from quadmix_stream.search.proxy import ProxyJob
    from quadmix_stream.search.runner import ProxySource
    from quadmix_stream.search.select import eval_name, measured_contenders, measures, ship

    folder = RunFolder(path, dataset)
    cfg = folder.config
    if cfg.decide is None:
        raise RunFolderError(f"{path}: the recipe has no `decide:` section")
    targets = decide_contenders(folder)
    done, fid = folder.finished(DECIDE), fidelity(cfg)
    jobs = [
        ProxyJob(
            eval_name(name, s),
            p,
            {"decide": name, "seed_index": s, "fidelity": fid},
            seed,
        )
        for name, p in targets.items()
        for s, seed in enumerate(decide_seeds(cfg))
        if not measures(done.get(eval_name(name, s)), p, seed, cfg, fid)
    ]
    if jobs:
        log(f"decide: training {len(jobs)} runs ({', '.join(targets)} × {cfg.decide.seeds} seeds)")
        _train_once(
            jobs,
            folder,
            DECIDE,
            ProxySource.of(folder, device, threads, decide=True),
            cfg.decide.proxy.group if group is None else group,
            executor or cfg.executor,
            log,
        )
    else:
        log(f"decide: all {len(targets)} contenders already measured at the deciding fidelity")
    measured, failed = measured_contenders(folder, DECIDE)
    for name in targets:
        m = measured.get(name)
        log(
            f"{name:<16} deciding objective "
            + (f"{m['objective']:.4f}" if m else f"failed: {failed.get(name)}")
        )
    shipped = ship(folder, DECIDE)
    agree = shipped["rank_agreement"]
    log(
        f"decide: the proxies' ranking of these {len(agree['methods'])} against the deciding "
        f"runs': Spearman {agree['spearman_vs_full']:+.2f}"
    )
    log(f"{shipped['text']} → {folder.path / 'params.json'}")
    return shipped


# ---------------------------------------------------------------- report
def step_report(path: str | Path, dataset: str | Path | None = None, log: Log = print) -> Path:
    from quadmix_stream.search.report import write_report

    folder = RunFolder(path, dataset)
    out = write_report(folder)
    log(f"report: {out}")
    return out


# ---------------------------------------------------------------- everything
def ensure_dataset(cfg: SearchConfig, log: Log = print) -> None:
    """Write the recipe's synthetic corpus (``synth:``) at ``dataset`` when it has no manifest."""
    from quadmix_stream.formats.labels import MANIFEST_NAME
    from quadmix_stream.storage.store import Store, is_remote

    if cfg.synth is None:
        return
    if is_remote(cfg.dataset):  # the corpus is written locally; uploading it is the user's call
        if not Store(cfg.dataset).exists(MANIFEST_NAME):
            raise SearchConfigError(
                f"synth: {cfg.dataset} has no {MANIFEST_NAME}, and a synthetic corpus is written "
                "to a local folder only; write it with `quadmix-stream synth DIR`, upload DIR, "
                "or give a local dataset"
            )
        return
    if (Path(cfg.dataset) / MANIFEST_NAME).exists():
        return
    from quadmix_stream.synth import synth

    s = cfg.synth
    m = synth(cfg.dataset, s.format, s.docs_per_domain, s.seed, s.rows_per_shard)
    log(f"synthetic corpus: {m.rows} documents → {cfg.dataset}")


def run_all(
    recipe: str | Path | SearchConfig,
    out: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    log: Log = print,
    executor: ExecutorConfig | None = None,
) -> Path:
    cfg = recipe if isinstance(recipe, SearchConfig) else SearchConfig.load(recipe)
    out = Path(out or cfg.out or "")
    if not str(out):
        raise RunFolderError("no run folder: give --out or set `out:` in the recipe")
    ensure_dataset(cfg, log)
    step_propose(out, cfg, log=log)
    kw = dict(group=group, device=device, threads=threads, executor=executor, log=log)
    step_proxies(out, **kw)
    nested = out / REGMIX
    if cfg.regmix is not None:
        step_proxies(nested, **kw)
        log("--- RegMix-style domain-only search")
        step_fit(nested, log=log)
        step_select(nested, executor=executor, log=log)
    log("--- QuaDMix search")
    for r in range(1, cfg.rounds.k + 1):
        log(f"--- search round {r} of {cfg.rounds.k}")
        step_round(out, r, **kw)
    step_fit(out, log=log)
    step_select(out, **kw)
    step_report(out, log=log)
    return out


__all__ = [
    "run_all",
    "step_propose",
    "step_proxies",
    "step_fit",
    "step_round",
    "step_select",
    "step_evaluate",
    "step_decide",
    "step_report",
    "summary",
]
