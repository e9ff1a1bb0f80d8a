"""Selection: predict fresh proposals, θ* = element-wise mean of the best k; then ship the best
*measured* θ, never one worse than something the search measured.

As in the paper (100,000 candidates, k = 10). With search rounds, the candidates also include
points near the best runs (within the last round's reach, see :func:`.space.toward`). The mean
of α rows on the simplex stays on the simplex; θ* is re-predicted as a check (averaging can land
between good regions). The ``select.verify`` best predicted candidates and the best proxy run
of each search round (``best-round-R``) are written next to θ* (``candidates/``); after their
proxies and the baselines' are trained with each of the ``select.seeds`` verification seeds
(``evaluate``), :func:`ship` writes as ``params.json`` the contender with the lowest mean
objective over those seeds, and says which and by how much.

Constraints (``constraints:``, e.g. "general no worse than Random") steer the search as well as
the shipping: each constrained set's loss has a regressor of its own (``model-SET/``), and rounds
and θ* rank first the points predicted at least ``constraint_margin`` below the bound, which for
a baseline is the same regressor's prediction of the baseline's θ (its bias cancels). Without
this, the objective's optimum may lie where no θ meets the constraint, and the verification
then has only baselines to ship.

A proxy run's recorded objective is the lowest of many noisy measurements (the winner's curse),
so the round bests are measured again on the verification seeds: θ* is then compared with them
on the same draws. A verification that matches a proposal's record (same stream, same seed) is
copied from it, not trained again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.errors import UserError
from quadmix_stream.mixing.params import DEFAULT_RANGES, SamplingParams
from quadmix_stream.search.config import SearchConfig
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.proxy import stream_fingerprint
from quadmix_stream.search.regressor import Predictor, headline
from quadmix_stream.search.runfolder import RunFolder, now, write_json
from quadmix_stream.search.space import Space, batch_seed, toward

#: proposal batch index of the selection candidates (proxy proposals use batches 0, 1, …)
CANDIDATE_BATCH = 1_000_000
#: proposal batch of the local candidates near the best runs
LOCAL_BATCH = 1_000_001
STAR = "theta-star"
#: the best proxy run of round R is verified as ``best-round-R``
ROUND_BEST = "best-round-"
#: a bound counts as hit when the best region's values lie this close to it (share of the range)
EDGE = 0.05


#: how the provenance of θ* shipped without verification begins (``evaluate: false``)
UNVERIFIED = "not verified by a proxy (evaluate: false); "


def load_predictor(folder: RunFolder, pool: Pool, model_dir: Path | None = None) -> Predictor:
    """The run folder's fitted regressor (``model/``, or ``model_dir``) with the features it
    was fitted on."""
    from quadmix_stream.search.features import featurizer_for

    pred = Predictor(model_dir or folder.path / "model", cfg=folder.config.regressor)
    kind = pred.metrics.get("features", "theta")
    sample = folder.config.regressor.profile_sample
    pred.featurize = featurizer_for(kind, pool, folder.config.form, sample, folder.space(pool))
    return pred


# ---------------------------------------------------------------- constraints steer the search
@dataclass(frozen=True)
class Constraint:
    """A constrained set's regressor and its bound, both in predicted loss: a baseline's bound
    is the same regressor's prediction for the baseline's θ, so the regressor's bias cancels."""

    name: str  # the evaluation set
    predictor: Predictor
    bound: float
    source: str  # the baseline's name, or the number
    margin: float = 0.0  # steer to predictions at least this far below the bound


def constraint_model_dir(folder: RunFolder, name: str) -> Path:
    return folder.path / f"model-{name}"


def reference_params(folder: RunFolder, pool: Pool, name: str) -> SamplingParams | None:
    """The params of the baseline a constraint names (None: not a baseline this search has)."""
    from quadmix_stream.search.baselines import baseline_params

    if name == "regmix":
        nested = folder.path / "regmix" / "params.json"
        return SamplingParams.load(nested) if nested.exists() else None
    b = folder.config.baselines
    return baseline_params(pool, name, b.topk_fraction, b.criteria_grid)


def load_constraints(folder: RunFolder, pool: Pool) -> tuple[list[Constraint], list[str]]:
    """The fitted constraint regressors with their predicted bounds, and why any is missing."""
    out, notes = [], []
    margin = folder.config.constraint_margin
    for name, b in folder.config.constraints.items():
        mdir = constraint_model_dir(folder, name)
        if not (mdir / "metrics.json").exists():
            notes.append(f"constraint {name}: no regressor fitted (run `fit`); not steered")
            continue
        pred = load_predictor(folder, pool, mdir)
        if isinstance(b, str):
            ref = reference_params(folder, pool, b)
            if ref is None:
                notes.append(f"constraint {name} ≤ {b}: no such baseline here; not steered")
                continue
            point = folder.space(pool).coords(ref.to_vector()[None])
            bound = float(pred.predict(point)[0])
            out.append(Constraint(name, pred, bound, b, margin))
        else:
            out.append(Constraint(name, pred, float(b), f"{float(b):g}", margin))
    return out, notes


def steer(
    constraints: Sequence[Constraint], theta: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Ranking keys of ``theta`` (predicted objective ``pred``): unchanged where every
    constraint is predicted met, pushed behind all of those points (keeping their order)
    elsewhere; and the mask of points predicted to meet them all."""
    ok = np.ones(len(theta), dtype=bool)
    for c in constraints:
        ok &= c.predictor.predict(theta) <= c.bound - c.margin
    return _behind(pred, ok), ok


def _behind(value: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Ranking keys: ``value`` where ``ok``, pushed behind every ``ok`` point elsewhere (the
    others keep their order among themselves)."""
    if ok.all():
        return value
    return np.where(ok, value, value + float(np.ptp(value)) + 1.0)


def measured_within(constraints: Sequence[Constraint], recs: Sequence[dict]) -> np.ndarray:
    """Which proxy runs *measured* every constrained set's loss within its bound (no margin:
    the margin allows for the optimism of the best of many predictions, not of a measurement)."""
    ok = np.ones(len(recs), dtype=bool)
    for c in constraints:
        ok &= np.array([_losses(r).get(c.name, math.inf) <= c.bound for r in recs], dtype=bool)
    return ok


def anchors(
    folder: RunFolder,
    predictor: Predictor,
    pool: Pool,
    top: int,
    seed: int,
    constraints: Sequence[Constraint] = (),
    first_stage: bool = False,
) -> np.ndarray:
    """The ``top`` best runs by actual objective and the ``top`` best predicted of fresh
    proposals, those predicted to meet the constraints first: where a local search starts.
    ``first_stage``: fresh proposals like the first batch's (a staged search's shares alone)."""
    cfg = folder.config
    x, y, _ = folder.table()
    best = x[np.argsort(steer(constraints, x, y)[0], kind="stable")[:top]]
    space = folder.space(pool)
    draw = space.first_batch if first_stage else space.propose
    fresh = draw(cfg.rounds.candidates, seed)
    key, _ = steer(constraints, fresh, predictor.predict(fresh))
    return np.concatenate([best, fresh[np.argsort(key, kind="stable")[:top]]])


def local_candidates(
    folder: RunFolder,
    predictor: Predictor,
    pool: Pool,
    n: int,
    reach: float,
    seed: int,
    constraints: Sequence[Constraint] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points between the anchors and fresh proposals, at most ``reach`` of the way, and
    the index of each one's anchor."""
    cfg = folder.config
    a = anchors(folder, predictor, pool, cfg.rounds.top, batch_seed(seed, 0), constraints)
    fresh = folder.space(pool).propose(n, batch_seed(seed, 1))
    return toward(a, fresh, reach, np.random.default_rng(batch_seed(seed, 2)))


def staged_candidates(
    folder: RunFolder,
    predictor: Predictor,
    pool: Pool,
    n: int,
    seed: int,
    constraints: Sequence[Constraint] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """A staged search's second stage: ``n`` points pairing the best shares (the best runs and
    the best predicted of fresh shares-only proposals, dealt in turn) with fresh quality
    parameters from the whole ranges, and the index of each one's anchor. The first stage's
    regressor saw no quality varied, so it does not rank these: each anchor gets its turn."""
    cfg = folder.config
    a = anchors(folder, predictor, pool, cfg.rounds.top, batch_seed(seed, 0), constraints, True)
    space = folder.space(pool)
    fresh = space.propose(n, batch_seed(seed, 1))
    which = np.arange(n) % len(a)
    return space.with_shares(fresh, space.shares(a)[which]), which


def boundary(folder: RunFolder, best: np.ndarray) -> list[dict]:
    """Parameters whose best region sits at the upper end of its proposal range.

    ``best``: θ rows of the best region (the top-k predicted). A parameter is flagged when at
    least half of its per-domain values there lie within 5% of the range's top, and the range
    can be widened (ω is a rank fraction: its range ends at 1).
    """
    cfg = folder.config
    if cfg.space == "domain_mixture":
        return []
    m, n = len(folder.domains), len(folder.scorers)
    rg = {**DEFAULT_RANGES, **cfg.proposals.ranges}
    out = []
    for j, k in enumerate(("lam", "omega", "eta", "eps")):
        lo, hi = rg[k]
        if cfg.space == "shares" and k == "eta":
            continue  # η's place holds the share: the simplex has no range to widen
        if hi <= lo or (k == "omega" and hi >= 1.0):
            continue
        vals = best[:, m * n + j * m : m * n + (j + 1) * m]
        share = float(np.mean(vals >= hi - EDGE * (hi - lo)))
        if share >= 0.5:
            wider = min(1.0, 2 * hi) if k == "omega" else 2 * hi
            out.append(
                {
                    "param": k,
                    "high": hi,
                    "share_at_bound": share,
                    "message": (
                        f"{k} sits at its upper bound {hi:g} in the best region ({share:.0%} of "
                        f"the top candidates' per-domain values within {EDGE:.0%} of it): widen "
                        f"proposals.ranges.{k} (e.g. [{lo:g}, {wider:g}]) and search again"
                    ),
                }
            )
    return out


def select(folder: RunFolder, pool: Pool | None = None) -> dict:
    """θ* and the best predicted candidates → ``candidates/`` and ``selection.json``."""
    cfg = folder.config
    pool = pool or Pool(folder.dataset)
    predictor = load_predictor(folder, pool)
    constraints, notes = load_constraints(folder, pool)
    cand, local = _candidates(folder, predictor, pool, constraints)
    pred = predictor.predict(cand)
    key, ok = steer(constraints, cand, pred)
    order = np.argsort(key, kind="stable")
    top = order[: cfg.select.top_k]
    space = folder.space(pool)
    point = cand[top].mean(axis=0)
    params = space.params(point)
    provenance, model, info = _star_info(folder, predictor, point, len(cand), local, pred[top])
    if constraints or notes:
        info["steering"] = _steering(constraints, notes, point, int(ok.sum()))
    star = replace(params, provenance=provenance, extra={"search": info})
    cdir = folder.sub("candidates")
    for f in cdir.glob("*.json"):
        f.unlink()
    star.save(cdir / f"{STAR}.json")
    sel = {
        **info,
        "theta": params.to_vector().tolist(),
        "theta_names": SamplingParams.vector_names(folder.domains, folder.scorers),
        "point": point.tolist(),
        "point_names": space.names,
        "verify": _write_verified(folder, space, star, cand, order, pred, model),
        "round_bests": _write_round_bests(folder, constraints),
        "candidate_prediction": {
            "min": float(pred.min()),
            "median": float(np.median(pred)),
            "max": float(pred.max()),
        },
        "boundary": boundary(folder, cand[top]),
        "profile": pool.profile(params),
        "pool_profile": pool.pool_profile(),
    }
    write_json(folder.path / "selection.json", sel)
    return sel


def _steering(
    constraints: Sequence[Constraint], notes: list[str], star: np.ndarray, feasible: int
) -> dict:
    """How the constraints steered the selection (``selection.json``, θ*'s ``extra``); ``star``
    is θ*'s point."""
    vec = star[None]
    predicted = {c.name: float(c.predictor.predict(vec)[0]) for c in constraints}
    # θ* averages candidates predicted within the bounds, but the regressors are not convex in
    # θ, so the average itself can be predicted outside: say so (the verification decides)
    outside = [
        f"θ* (the mean of the best candidates, each predicted within) is itself predicted "
        f"outside constraint {c.name} ≤ {c.source} ({predicted[c.name]:.4f} > bound "
        f"{c.bound:.4f}); what ships is decided by the measured losses"
        for c in constraints
        if predicted[c.name] > c.bound
    ]
    return {
        "candidates_predicted_within": feasible,
        "constraints": {
            c.name: {
                "from": c.source,
                "predicted_bound": c.bound,
                "margin": c.margin,
                "theta_star_predicted": predicted[c.name],
                "regressor": c.predictor.metrics["chosen"],
                "spearman": headline(c.predictor.metrics)["spearman"],
            }
            for c in constraints
        },
        "notes": [*notes, *outside],
    }


def _candidates(
    folder: RunFolder, predictor: Predictor, pool: Pool, constraints: Sequence[Constraint] = ()
) -> tuple[np.ndarray, int]:
    """Fresh proposals, plus (with search rounds) points near the best runs; and how many of
    those local points there are."""
    cfg = folder.config
    seed = batch_seed(cfg.select.seed, CANDIDATE_BATCH)
    cand = folder.space(pool).propose(cfg.select.n, seed)
    if cfg.rounds.k <= 0:
        return cand, 0
    reach = cfg.rounds.shrink**cfg.rounds.k
    near, _ = local_candidates(
        folder,
        predictor,
        pool,
        cfg.rounds.candidates,
        reach,
        batch_seed(cfg.select.seed, LOCAL_BATCH),
        constraints,
    )
    return np.concatenate([cand, near]), len(near)


def _star_info(
    folder: RunFolder,
    predictor: Predictor,
    vec: np.ndarray,
    n_cand: int,
    local: int,
    top_pred: np.ndarray,
) -> tuple[str, str, dict]:
    """θ*'s provenance, the regressor in words, and the selection facts saved with θ* and in
    ``selection.json`` (``vec``: θ*'s point)."""
    cfg, k = folder.config, folder.config.select.top_k
    star_pred = float(predictor.predict(vec[None])[0])
    star_lin = float(predictor.predict_linear(vec[None])[0])
    _, y, _ = folder.table()
    met = predictor.metrics
    held = headline(met)
    model = f"{met['model']} on {met['features']} features"
    provenance = (
        f"quadmix-stream search ({cfg.space}): θ* = element-wise mean of the {k} best of "
        f"{n_cand} fresh proposals by {model} (chosen by k-fold Spearman) fitted on {len(y)} "
        f"proxy runs in {folder.path.resolve()}; predicted objective {star_pred:.4f} (best proxy "
        f"run {y.min():.4f}, median {np.median(y):.4f}); regressor, {held['split']}: Spearman "
        f"{held['spearman']:.3f}, MAE {held['mae']:.4f}"
    )
    return (
        provenance,
        model,
        {
            "run_folder": str(folder.path.resolve()),
            "dataset": folder.meta["dataset"]["path"],  # the folder, or a remote dataset's URL
            "dataset_fingerprint": folder.meta["dataset"]["fingerprint"],
            "space": cfg.space,
            "model": met["model"],
            "features": met["features"],
            "objective": dict(cfg.objective),
            "candidates": int(n_cand),
            "local_candidates": local,
            "top_k": k,
            "predicted_loss": star_pred,
            "predicted_loss_linear": star_lin,
            "top_k_predicted": [float(x) for x in top_pred],
            "proxy_runs": int(len(y)),
            "proxy_loss": {"min": float(y.min()), "median": float(np.median(y))},
            "regressor": {"chosen": met["chosen"], "n_runs": met["n_runs"], "headline": held},
            "selected": now(),
        },
    )


def _write_verified(
    folder: RunFolder,
    space: Space,
    star: SamplingParams,
    cand: np.ndarray,
    order: np.ndarray,
    pred: np.ndarray,
    model: str,
) -> list[dict]:
    """Write the ``select.verify`` best predicted candidates whose stream differs from θ*'s and
    from each other's as ``candidates/cand-NN.json``; returns their names and predictions."""
    cfg, cdir = folder.config, folder.path / "candidates"
    seen = {stream_fingerprint(star)}
    verified: list[dict] = []
    for i in order:
        if len(verified) >= cfg.select.verify:
            break
        p = space.params(cand[i])
        if stream_fingerprint(p) in seen:
            continue
        seen.add(stream_fingerprint(p))
        name = f"cand-{len(verified) + 1:02d}"
        p = replace(
            p,
            provenance=f"search candidate {name}: predicted objective {pred[i]:.4f} "
            f"(rank {len(verified) + 1} of {len(cand)} by {model})",
        )
        p.save(cdir / f"{name}.json")
        verified.append({"name": name, "predicted": float(pred[i])})
    return verified


def _write_round_bests(folder: RunFolder, constraints: Sequence[Constraint] = ()) -> list[dict]:
    """Write the best proxy run of each round as ``candidates/best-round-R.json``.

    Under constraints, a round's best is its lowest objective among the runs that measured
    within every bound (as steering sets it): a run that breaks a constraint is not a result
    the search could ship, so it is not the round's best proposal. A round where no run did
    gives its best overall (``within_constraints`` false).
    """
    x, y, recs = folder.table()
    rounds = np.array([rec.get("round", 0) for rec in recs])
    ok = measured_within(constraints, recs)
    key = _behind(y, ok)
    out = []
    for r in np.unique(rounds):
        i = int(np.flatnonzero(rounds == r)[np.argmin(key[rounds == r])])
        name = f"{ROUND_BEST}{int(r)}"
        within = (
            (" within the constraints" if ok[i] else ", none within the constraints")
            if constraints
            else ""
        )
        prov = (
            f"search proxy run {recs[i]['run']}, the best of round {int(r)}{within} (objective "
            f"{y[i]:.4f} at its data seed)"
        )
        folder.params_of(x[i], prov).save(folder.path / "candidates" / f"{name}.json")
        out.append({"name": name, "run": int(recs[i]["run"]), "objective": float(y[i])})
        if constraints:
            out[-1]["within_constraints"] = bool(ok[i])
    return out


# ---------------------------------------------------------------- verification seeds
def verify_seeds(cfg: SearchConfig) -> list[int]:
    """The data seeds every contender is trained with (``data_seed + s``, s < ``select.seeds``)."""
    return [cfg.proxy.data_seed + s for s in range(cfg.select.seeds)]


def eval_name(name: str, s: int) -> str:
    """The ``evals/`` record of contender ``name`` at verification seed ``s``."""
    return name if s == 0 else f"{name}.s{s}"


def record_seed(rec: dict, cfg: SearchConfig) -> int:
    """The data seed a proxy record was trained with (records made before per-record seeds
    were all trained with the recipe's ``data_seed``)."""
    return int(rec.get("data_seed", cfg.proxy.data_seed))


def measures(
    rec: dict | None,
    params: SamplingParams,
    seed: int,
    cfg: SearchConfig,
    fidelity: str | None = None,
) -> bool:
    """Whether ``rec`` is a proxy of exactly ``params``'s stream at ``seed`` (and, for a
    deciding run, of the deciding settings whose fingerprint is ``fidelity``)."""
    return (
        rec is not None
        and rec.get("stream_fingerprint") == stream_fingerprint(params)
        and record_seed(rec, cfg) == seed
        and rec.get("fidelity") == fidelity
    )


#: where the verification proxies' records are (``decide`` holds the deciding runs')
EVALS = "evals"


# ---------------------------------------------------------------- ship the best measured
def contenders(folder: RunFolder) -> dict[str, SamplingParams]:
    """θ*, the verified candidates and the baselines, by name (what ``evaluate`` trains)."""
    out = {}
    for sub in ("candidates", "baselines"):
        for f in sorted((folder.path / sub).glob("*.json")):
            out[f.stem] = SamplingParams.load(f)
    return out


def _losses(rec: dict) -> dict[str, float]:
    losses = dict(rec.get("losses") or {})
    losses.setdefault("target", rec.get("loss", math.nan))
    return losses


def measured_contenders(
    folder: RunFolder, stage: str = EVALS
) -> tuple[dict[str, dict], dict[str, str]]:
    """Every contender of ``stage`` measured at all its seeds on its current stream: its params,
    mean objective, per-seed objectives and mean loss per set; and why the others failed.

    ``stage``: ``evals`` (the verification proxies) or ``decide`` (the deciding runs,
    :mod:`.decide`)."""
    from quadmix_stream.search.decide import DECIDE, decide_contenders, decide_seeds, fidelity

    cfg = folder.config
    evals = folder.finished(stage)
    if stage == DECIDE:
        seeds, names, fid = decide_seeds(cfg), decide_contenders(folder), fidelity(cfg)
    else:
        seeds, names, fid = verify_seeds(cfg), contenders(folder), None
    out: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for name, p in names.items():
        recs = [evals.get(eval_name(name, s)) for s in range(len(seeds))]
        ok = (measures(r, p, seed, cfg, fid) for r, seed in zip(recs, seeds, strict=True))
        if not all(ok):
            continue  # not (yet) measured on this stream at every seed
        values = [folder.objective(r) for r in recs]
        if not all(math.isfinite(v) for v in values):
            bad = next(r for r, v in zip(recs, values, strict=True) if not math.isfinite(v))
            failed[name] = str(bad.get("reason", "a set's loss is missing"))
            continue
        per = [_losses(r) for r in recs]
        seed_losses = {k: [float(d.get(k, math.nan)) for d in per] for k in per[0]}
        out[name] = {
            "params": p,
            "objective": float(np.mean(values)),
            "objectives": values,
            "losses": {k: float(np.mean(v)) for k, v in seed_losses.items()},
            "seed_losses": seed_losses,
        }
    return out, failed


def ship(folder: RunFolder, stage: str = EVALS) -> dict:
    """Write as ``params.json`` the contender with the lowest mean measured objective.

    Contenders: every evaluated params file (θ*, candidates, the round bests, baselines), each
    trained at every verification seed on exactly its stream; with ``stage`` ``decide``, the
    few of them trained again at the deciding fidelity (:mod:`.decide`). Constraints
    (``constraints:``) drop contenders whose loss on a set is above the bound beyond the seeds'
    noise (a number, or a measured baseline's losses paired by seed; :func:`above`); when no
    contender meets them all, the best overall ships with a warning. Whether the winner is
    separable from the runner-up by the same test is recorded and, when it is not, said.
    """
    text, shipped, src = decision(folder, stage)
    star = SamplingParams.load(folder.path / "candidates" / f"{STAR}.json")
    info = dict(star.extra.get("search", {}))
    if stage != EVALS:
        from quadmix_stream.search.decide import screened

        shipped.update(screened(folder, shipped))
    info["shipped"] = shipped
    # a baseline from a nested search that shipped unmeasured was measured here: say so once
    own = (src if shipped["name"] != STAR else star).provenance.replace(UNVERIFIED, "")
    provenance = f"{text}. {own}"
    save_params(replace(src, provenance=provenance, extra={"search": info}), folder.path)
    sel_path = folder.path / "selection.json"
    sel = json.loads(sel_path.read_text())
    sel["shipped"] = info["shipped"]
    write_json(sel_path, sel)
    return {"text": text, **info["shipped"]}


def decision(folder: RunFolder, stage: str = EVALS) -> tuple[str, dict, SamplingParams]:
    """What :func:`ship` ships at ``stage``: the sentence that says it, the record of the
    decision (every contender's measurements, the tests) and the params."""
    cfg = folder.config
    measured, failed = measured_contenders(folder, stage)
    if not (folder.path / stage / f"{STAR}.json").exists():
        raise UserError(f"{folder.path}: θ* has no measured {stage} run yet (run `{stage}`)")
    if not measured:
        raise UserError(f"{folder.path}: no contender was measured at every seed (run `{stage}`)")
    notes = []
    if STAR not in measured:
        notes.append(f"θ*'s proxy failed ({failed.get(STAR, 'not measured at every seed')})")
    bounds, missing = constraint_bounds(cfg.constraints, measured)
    notes += missing
    checks = {k: check_constraints(w, bounds) for k, w in measured.items()}
    feasible = {
        k: v for k, v in measured.items() if not any(c["fails"] for c in checks[k].values())
    }
    if bounds and not feasible:
        notes.append("no measured contender meets every constraint; the best overall ships")
    pool_ = feasible or measured
    best = min(pool_, key=lambda k: (pool_[k]["objective"], k != STAR))
    runner = runner_up(pool_, best)
    if runner is not None and runner["separable"] is False:
        notes.append(
            f"{best} is not separable from the runner-up {runner['name']} at this many seeds: "
            f"{runner['name']} is {runner['mean']:+.4f} ± {runner['se']:.4f} worse ({TEST_NAME}, "
            f"p = {runner['p']:.3f})"
        )
    v = measured[best]["objective"]
    sv = measured[STAR]["objective"] if STAR in measured else math.nan
    base = {
        k: w["objective"]
        for k, w in measured.items()
        if (folder.path / "baselines" / f"{k}.json").exists()
    }
    best_base = min(base, key=base.get) if base else None
    what = "θ* (mean of the top-k predicted)" if best == STAR else best
    scope = f", of the {len(feasible)} that meet the constraints" if bounds and feasible else ""
    star_fails = _fails(checks[STAR]) if STAR in measured else []
    if best == STAR:
        star_note = ""
    elif star_fails and feasible:  # θ* measured lower but is outside the constraints
        star_note = f", fails {'; '.join(star_fails)}"
    else:
        star_note = f", {sv - v:.4f} worse than {best}"
    if stage == EVALS:
        seeds, scale = verify_seeds(cfg), "proxy objective"
    else:
        from quadmix_stream.search.decide import decide_seeds, describe

        seeds = decide_seeds(cfg)
        scale = f"objective at the deciding fidelity ({describe(cfg)})"
    over = f" (mean of {len(seeds)} data seeds)" if len(seeds) > 1 else ""
    rounds = {k: w["objective"] for k, w in measured.items() if k.startswith(ROUND_BEST)}
    text = (
        f"quadmix-stream search {folder.path.resolve()}: shipped: {what}, the lowest measured "
        f"{scale}{over} {v:.4f} of {len(measured)} measured{scope} (θ* {sv:.4f}"
        + star_note
        + (
            "; round bests on the same seeds: "
            + ", ".join(f"{k.removeprefix(ROUND_BEST)}: {w:.4f}" for k, w in sorted(rounds.items()))
            if rounds
            else ""
        )
        + (f"; best baseline {best_base} {base[best_base]:.4f}" if best_base else "")
        + ")"
        + (
            f"; constraints ({TEST_NAME}): "
            + ", ".join(f"{s} ≤ {b['from']}" for s, b in bounds.items())
            if bounds
            else ""
        )
        + ("; " + "; ".join(notes) if notes else "")
    )
    shipped = {
        "stage": stage,
        "name": best,
        "objective": v,
        "theta_star_objective": sv,
        "margin_vs_theta_star": sv - v,
        "best_baseline": best_base,
        "best_baseline_objective": base.get(best_base) if best_base else None,
        "constraints": {
            s: {"bound": b["bound"], "from": b["from"], "test": TEST_NAME}
            for s, b in bounds.items()
        },
        "constraint_checks": checks,
        "runner_up": runner,
        "notes": notes,
        "seeds": seeds,
        "theta_star_minus": paired_differences(measured, STAR),
        "measured": {
            k: {
                "objective": w["objective"],
                "objectives": w["objectives"],
                "losses": w["losses"],
                "seed_losses": w["seed_losses"],
            }
            for k, w in measured.items()
        },
    }
    return text, shipped, measured[best]["params"]


def paired_differences(measured: dict[str, dict], ref: str) -> dict[str, dict[str, float]]:
    """``ref``'s objective minus each other contender's, paired by verification seed: the mean
    and its standard error (NaN with one seed). Negative: ``ref`` is better."""
    if ref not in measured:
        return {}
    a = np.asarray(measured[ref]["objectives"])
    out = {}
    for k, w in measured.items():
        if k != ref:
            d = a - np.asarray(w["objectives"])
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else math.nan
            out[k] = {"mean": float(d.mean()), "se": se}
    return out


#: one-sided level of the paired tests that decide constraints and separability
LEVEL = 0.05
TEST_NAME = f"one-sided paired t-test over the verification seeds at {LEVEL:g}"


def above(a: Sequence[float], b: Sequence[float] | float) -> dict[str, float | bool]:
    """Whether ``a`` is above ``b`` (per seed, paired; or a number), beyond the seeds' noise.

    The differences a − b have a mean and a standard error; a one-sided paired t-test (n − 1
    degrees of freedom) gives p for "a is above b", and ``above`` is p < :data:`LEVEL`. With one
    seed there is no noise estimate: ``above`` is then mean > 0 (se and p are NaN)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "se": math.nan, "p": math.nan, "above": mean > 1e-12}
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    if se == 0.0:
        return {"mean": mean, "se": 0.0, "p": 0.0 if mean > 0 else 1.0, "above": mean > 1e-12}
    from scipy.stats import t as student_t

    p = float(student_t.sf(mean / se, len(d) - 1))
    return {"mean": mean, "se": se, "p": p, "above": p < LEVEL}


def constraint_bounds(
    constraints: Mapping[str, Any], measured: dict[str, dict]
) -> tuple[dict[str, dict], list[str]]:
    """Each constraint's bound: a number, or a measured baseline's per-seed losses on the set;
    and why any is not applied."""
    bounds, notes = {}, []
    for s, b in constraints.items():
        if isinstance(b, str):
            if b not in measured:
                notes.append(f"constraint {s} ≤ {b}: {b} was not measured; not applied")
                continue
            per = measured[b]["seed_losses"].get(s)
            bounds[s] = {"bound": measured[b]["losses"].get(s, math.nan), "from": b, "per": per}
        else:
            bounds[s] = {"bound": float(b), "from": f"{float(b):g}", "per": float(b)}
    return bounds, notes


def check_constraints(contender: dict, bounds: dict[str, dict]) -> dict[str, dict]:
    """Per constrained set: the contender's loss minus the bound (paired by seed with a
    baseline), and whether it fails: above the bound beyond the noise (:func:`above`)."""
    out = {}
    for s, b in bounds.items():
        mine = contender["seed_losses"].get(s)
        if mine is None or b["per"] is None or not np.all(np.isfinite(mine)):
            out[s] = {"mean": math.nan, "se": math.nan, "p": math.nan, "fails": True}
            continue
        r = above(mine, b["per"])
        out[s] = {"mean": r["mean"], "se": r["se"], "p": r["p"], "fails": bool(r["above"])}
        out[s]["loss"], out[s]["bound"], out[s]["from"] = (
            float(np.mean(mine)),
            b["bound"],
            b["from"],
        )
    return out


def runner_up(pool: dict[str, dict], best: str) -> dict | None:
    """The contender next to ``best`` by mean objective, how much worse it is paired by seed,
    and whether that is beyond the noise (``separable``; None with one seed: no noise estimate);
    None when ``best`` stands alone."""
    # a contender measured identically at every seed read ``best``'s stream: not a rival
    others = sorted(
        (k for k in pool if k != best and pool[k]["objectives"] != pool[best]["objectives"]),
        key=lambda k: pool[k]["objective"],
    )
    if not others:
        return None
    r = above(pool[others[0]]["objectives"], pool[best]["objectives"])
    if not math.isfinite(r["se"]):
        r["above"] = None
    return {
        "name": others[0],
        "mean": r["mean"],
        "se": r["se"],
        "p": r["p"],
        "separable": r["above"],
    }


def _fails(checks: dict[str, dict]) -> list[str]:
    """The constraints a contender breaks, in words
    (``general 5.4554 > 5.4315 (random): +0.0239 ± 0.0051, p 0.000``)."""
    out = []
    for s, c in checks.items():
        if not c["fails"]:
            continue
        if "loss" not in c:
            out.append(f"{s}: no loss measured")
            continue
        noise = f" ± {c['se']:.4f}, p {c['p']:.3f}" if math.isfinite(c["se"]) else ""
        out.append(f"{s} {c['loss']:.4f} > {c['bound']:.4f} ({c['from']}): {c['mean']:+.4f}{noise}")
    return out


def write_star_only(folder: RunFolder) -> None:
    """``evaluate: false``: θ* ships unmeasured (its provenance says so)."""
    path: Path = folder.path / "candidates" / f"{STAR}.json"
    star = SamplingParams.load(path)
    save_params(replace(star, provenance=UNVERIFIED + star.provenance), folder.path)


def save_params(params: SamplingParams, run_dir: Path) -> None:
    """Write ``params.json`` unless it already holds the same stream with the same provenance
    (a resumed search then leaves the file, and its timestamp, as they were)."""
    path = run_dir / "params.json"
    if path.exists():
        old = SamplingParams.load(path)
        if (
            stream_fingerprint(old) == stream_fingerprint(params)
            and old.provenance == params.provenance
        ):
            return
    params.save(path)
