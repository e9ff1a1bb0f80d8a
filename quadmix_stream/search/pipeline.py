"""The search steps on a run folder, and ``run_all`` for a whole recipe.

Each step is idempotent and resumable: ``propose`` only adds missing proposals, ``proxies``
only trains proxies without a result, ``evaluate`` only trains what is missing or stale; ``fit``,
``select`` and ``report`` are cheap and recomputed from the tables each time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quadmix_stream.params import SamplingParams
from quadmix_stream.search import regressor
from quadmix_stream.search.config import ProposalConfig, SearchConfig, TokenizerConfig
from quadmix_stream.search.data import load_target_texts
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.runfolder import RunFolder, RunFolderError, read_jsonl
from quadmix_stream.search.space import batch_seed, propose
from quadmix_stream.search.tokenizer import run_tokenizer_path

Log = Callable[[str], None]
REGMIX = "regmix"


# ---------------------------------------------------------------- propose
def regmix_config(cfg: SearchConfig, parent: Path) -> SearchConfig:
    """The nested RegMix-style search: same dataset, target, tokenizer and proxies."""
    assert cfg.regmix is not None
    return cfg.replace(
        space="domain_mixture",
        proposals=ProposalConfig(
            n=cfg.regmix.proposals, seed=cfg.regmix.seed, dirichlet=cfg.regmix.dirichlet
        ),
        tokenizer=TokenizerConfig(
            path=str(run_tokenizer_path(parent).resolve()), eos_token=cfg.tokenizer.eos_token
        ),
        regmix=None,
        evaluate=False,
        out=None,
    )


def step_propose(
    path: str | Path,
    cfg: SearchConfig | None = None,
    dataset: str | Path | None = None,
    log: Log = print,
) -> RunFolder:
    """Create/reopen the run folder, prepare the tokenizer, draw the missing proposals."""
    path = Path(path)
    if cfg is not None:
        folder = RunFolder.create(path, cfg)
    else:
        folder = RunFolder(path, dataset)
    cfg = folder.config
    texts = load_target_texts(folder.target)  # a target set without text is refused here
    if not folder.tokenizer_path.exists():
        from quadmix_stream.search.tokenizer import prepare_tokenizer

        info = prepare_tokenizer(cfg.tokenizer, folder.dataset, folder.path)
        folder.update_meta(tokenizer=info)
        log(f"tokenizer: {info['how']} (vocab {info['vocab_size']})")
    pool = Pool(folder.dataset)
    try:
        ids, batches, theta = folder.proposals()
    except RunFolderError:
        ids, batches, theta = np.zeros(0, np.int64), np.zeros(0, np.int64), None
    have, want = len(ids), cfg.proposals.n
    if have < want:
        b = int(batches.max()) + 1 if have else 0
        new = propose(
            cfg.space,
            cfg.proposals,
            want - have,
            batch_seed(cfg.proposals.seed, b),
            folder.domains,
            folder.scorers,
            pool.domain_tokens,
        )
        theta = new if theta is None else np.concatenate([theta, new])
        ids = np.arange(want, dtype=np.int64)
        batches = np.concatenate([batches, np.full(want - have, b, dtype=np.int64)])
        folder.write_proposals(ids, batches, theta)
        log(f"{path}: {want - have} new {cfg.space} proposals (total {want})")
    else:
        log(f"{path}: {have} proposals already drawn (recipe asks for {want})")
    folder.update_meta(target_docs=len(texts))
    if cfg.regmix is not None and cfg.space == "quadmix":
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
    log: Log = print,
) -> dict:
    """Train the pending proxies in this process (torchrun: ``quadmix_stream.trainers.proxy``)."""
    from quadmix_stream.search.runner import run_pending

    folder = RunFolder(path, dataset)
    pending = folder.pending()
    log(f"{path}: {len(pending)} proxies to train ({len(folder.finished())} finished)")
    summary = run_pending(
        folder, group=group, device=device, threads=threads, limit=limit, progress=log
    )
    folder.consolidate()
    if summary.get("trained"):
        log(
            f"trained {summary['trained']} proxies ({summary['ok']} ok, {summary['failed']} "
            f"failed) in {summary['seconds']:.1f}s on {summary['device']}, group {summary['group']}: "
            f"{summary['proxies_per_hour']:.0f} proxies/hour"
        )
    return summary


# ---------------------------------------------------------------- fit
def step_fit(path: str | Path, dataset: str | Path | None = None, log: Log = print) -> dict:
    from quadmix_stream.search.features import Featurizer

    folder = RunFolder(path, dataset)
    rc = folder.config.regressor
    x, y, _ = folder.table()
    done = folder.finished()
    failed = sum(r.get("status") != "ok" for r in done.values())
    feat = Featurizer(rc.features, Pool(folder.dataset), folder.config.form, rc.profile_sample)
    res = regressor.fit(feat(x), y, feat.names, rc)
    rep = res.report
    rep.update(features=rc.features, failed_runs=failed)
    if rc.features != "theta":  # the paper's inputs, for comparison
        th = regressor.validate(x, y, rc)
        rep["theta_only"] = {k: th[k] for k in ("holdout", "kfold") if k in th}
    regressor.save(res, folder.sub("model"))
    for split in ("holdout", "kfold"):
        if split in rep:
            for name in ("lgbm", "linear"):
                m = rep[split][name]
                log(
                    f"{split:<8} {name:<6} n={m['n']:<4} MAE {m['mae']:.4f} (predicting the mean: "
                    f"{m['mae_of_mean']:.4f})  Spearman {m['spearman']:+.3f}   [{rc.features}]"
                )
            if "theta_only" in rep and split in rep["theta_only"]:
                m = rep["theta_only"][split]["lgbm"]
                log(
                    f"{split:<8} lgbm   n={m['n']:<4} MAE {m['mae']:.4f}"
                    f"{'':<26}Spearman {m['spearman']:+.3f}   [theta only, for comparison]"
                )
    top = ", ".join(f"{r['feature']} {r['gain']:.2f}" for r in rep["importance"][:5])
    log(f"fitted on {rep['n_runs']} runs ({failed} failed runs excluded); top features: {top}")
    return rep


# ---------------------------------------------------------------- select (+ baselines)
def step_select(path: str | Path, dataset: str | Path | None = None, log: Log = print) -> dict:
    from quadmix_stream.search.baselines import all_baselines
    from quadmix_stream.search.select import select

    folder = RunFolder(path, dataset)
    pool = Pool(folder.dataset)
    sel = select(folder, pool)
    log(
        f"θ* = mean of the best {sel['top_k']} of {sel['candidates']} candidates: predicted loss "
        f"{sel['predicted_loss']:.4f} (candidates: min {sel['candidate_prediction']['min']:.4f}, "
        f"median {sel['candidate_prediction']['median']:.4f}; proxy runs: min "
        f"{sel['proxy_loss']['min']:.4f}, median {sel['proxy_loss']['median']:.4f})"
    )
    share = ", ".join(f"{d} {v:.2f}" for d, v in sel["profile"]["token_share"].items())
    log(f"θ* expected token shares: {share}  → {folder.path / 'params.json'}")
    if folder.config.space == "quadmix":
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
    return sel


# ---------------------------------------------------------------- evaluate
def evaluation_targets(folder: RunFolder) -> dict[str, SamplingParams]:
    out = {}
    if (folder.path / "params.json").exists():
        out["theta-star"] = SamplingParams.load(folder.path / "params.json")
    for f in sorted((folder.path / "baselines").glob("*.json")):
        out[f.stem] = SamplingParams.load(f)
    return out


def step_evaluate(
    path: str | Path,
    dataset: str | Path | None = None,
    group: int | None = None,
    device: str | None = None,
    threads: int | None = None,
    log: Log = print,
) -> dict[str, dict]:
    """Train proxies on θ* and the baselines (skips those already evaluated for the same θ)."""
    from quadmix_stream.search.proxy import ProxyJob
    from quadmix_stream.search.runner import context, run_jobs

    folder = RunFolder(path, dataset)
    targets = evaluation_targets(folder)
    if not targets:
        raise RunFolderError(f"{path}: nothing to evaluate (run `select` first)")
    done = folder.finished("evals")
    jobs = [
        ProxyJob(name, p, {"evaluation": name})
        for name, p in targets.items()
        if done.get(name, {}).get("params_fingerprint") != p.fingerprint()
    ]
    if jobs:
        ctx = context(folder, device, threads)
        run_jobs(
            jobs,
            ctx,
            folder.config.proxy.group if group is None else group,
            lambda r: folder.record(r, "evals"),
            log,
        )
    evals = folder.finished("evals")
    _, y, _ = folder.table()
    for name in targets:
        r = evals[name]
        val = f"{r['loss']:.4f}" if r["status"] == "ok" else f"failed: {r.get('reason')}"
        log(f"{name:<16} actual proxy loss {val}")
    log(f"proposals' proxy loss: min {y.min():.4f}, median {np.median(y):.4f}")
    return {k: evals[k] for k in targets}


# ---------------------------------------------------------------- report
def step_report(path: str | Path, dataset: str | Path | None = None, log: Log = print) -> Path:
    from quadmix_stream.search.report import write_report

    folder = RunFolder(path, dataset)
    out = write_report(folder)
    log(f"report: {out}")
    return out


# ---------------------------------------------------------------- everything
def ensure_dataset(cfg: SearchConfig, log: Log = print) -> None:
    from quadmix_stream.labels import MANIFEST_NAME

    if (Path(cfg.dataset) / MANIFEST_NAME).exists() or cfg.synth is None:
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
) -> Path:
    cfg = recipe if isinstance(recipe, SearchConfig) else SearchConfig.load(recipe)
    out = Path(out or cfg.out or "")
    if not str(out):
        raise RunFolderError("no run folder: give --out or set `out:` in the recipe")
    ensure_dataset(cfg, log)
    step_propose(out, cfg, log=log)
    kw = dict(group=group, device=device, threads=threads, log=log)
    step_proxies(out, **kw)
    nested = out / REGMIX
    if cfg.regmix is not None:
        step_proxies(nested, **kw)
        log("--- RegMix-style domain-only search")
        step_fit(nested, log=log)
        step_select(nested, log=log)
    log("--- QuaDMix search")
    step_fit(out, log=log)
    step_select(out, log=log)
    if cfg.evaluate:
        step_evaluate(out, **kw)
    step_report(out, log=log)
    return out


def summary(path: str | Path) -> dict:
    """A small status of a run folder (what the `status` step prints)."""
    folder = RunFolder(path)
    ids, _, _ = folder.proposals()
    done = folder.finished()
    failed = {k: v.get("reason") for k, v in done.items() if v.get("status") != "ok"}
    return {
        "run_folder": str(folder.path),
        "space": folder.config.space,
        "proposals": int(len(ids)),
        "finished": len(done),
        "ok": len(done) - len(failed),
        "failed": failed,
        "fitted": (folder.path / "model" / "lgbm.txt").exists(),
        "selected": (folder.path / "params.json").exists(),
        "evaluated": sorted(folder.finished("evals")),
        "results_rows": len(read_jsonl(folder.path / "results.jsonl")),
        "invocations": len(folder.logs()),
    }


__all__ = [
    "run_all",
    "step_propose",
    "step_proxies",
    "step_fit",
    "step_select",
    "step_evaluate",
    "step_report",
    "summary",
]
