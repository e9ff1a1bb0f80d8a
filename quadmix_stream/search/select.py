"""Selection: N fresh proposals, predicted by the regressor; θ* = element-wise mean of the best k.

As in the paper (100,000 candidates, k = 10). The mean of α rows that are on the simplex stays
on the simplex; θ* is re-predicted as a check (averaging can land between good regions), and
params.json records where it came from: run folder, predicted loss, regressor metrics.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from quadmix_stream.search.pool import Pool
from quadmix_stream.search.regressor import Predictor
from quadmix_stream.search.runfolder import RunFolder, now, write_json
from quadmix_stream.search.space import batch_seed, propose, to_params

#: proposal batch index of the selection candidates (proxy proposals use batches 0, 1, …)
CANDIDATE_BATCH = 1_000_000


def headline_metrics(metrics: dict) -> dict:
    """The regressor's held-out figures that travel with θ*."""
    out = {"n_runs": metrics["n_runs"], "holdout": metrics["holdout"]}
    if "kfold" in metrics:
        out["kfold"] = metrics["kfold"]
    return out


def load_predictor(folder: RunFolder, pool: Pool) -> Predictor:
    """The run folder's fitted regressor with the features it was fitted on."""
    from quadmix_stream.search.features import Featurizer

    pred = Predictor(folder.path / "model")
    kind = pred.metrics.get("features", "theta")
    sample = folder.config.regressor.profile_sample
    pred.featurize = Featurizer(kind, pool, folder.config.form, sample)
    return pred


def info_features(predictor: Predictor) -> str:
    return str(predictor.metrics.get("features", "theta"))


def select(folder: RunFolder, pool: Pool | None = None) -> dict:
    cfg = folder.config
    pool = pool or Pool(folder.dataset)
    predictor = load_predictor(folder, pool)
    n, k = cfg.select.n, cfg.select.top_k
    cand = propose(
        cfg.space,
        cfg.proposals,
        n,
        batch_seed(cfg.select.seed, CANDIDATE_BATCH),
        folder.domains,
        folder.scorers,
        pool.domain_tokens,
    )
    pred = predictor.predict(cand)
    top = np.argsort(pred, kind="stable")[:k]
    theta = cand[top].mean(axis=0)
    params = to_params(theta, folder.domains, folder.scorers, cfg.form)
    vec = params.to_vector()
    star_pred = float(predictor.predict(vec[None])[0])
    star_lin = float(predictor.predict_linear(vec[None])[0])
    _, y, _ = folder.table()
    head = headline_metrics(predictor.metrics)
    held = head.get("kfold", head["holdout"])["lgbm"]
    provenance = (
        f"quadmix-stream search ({cfg.space}): θ* = element-wise mean of the {k} best of {n} "
        f"fresh proposals by LightGBM ({info_features(predictor)} features) fitted on {len(y)} "
        f"proxy runs in {folder.path.resolve()}; "
        f"predicted target loss {star_pred:.4f} (best proxy run {y.min():.4f}, median "
        f"{np.median(y):.4f}); regressor on held-out runs: Spearman {held['spearman']:.3f}, "
        f"MAE {held['mae']:.4f}"
    )
    info = {
        "run_folder": str(folder.path.resolve()),
        "dataset_fingerprint": folder.meta["dataset"]["fingerprint"],
        "space": cfg.space,
        "features": predictor.metrics.get("features", "theta"),
        "candidates": n,
        "top_k": k,
        "predicted_loss": star_pred,
        "predicted_loss_linear": star_lin,
        "top_k_predicted": [float(pred[i]) for i in top],
        "proxy_runs": int(len(y)),
        "proxy_loss": {"min": float(y.min()), "median": float(np.median(y))},
        "regressor": head,
        "selected": now(),
    }
    params = replace(params, provenance=provenance, extra={"search": info})
    params.save(folder.path / "params.json")
    sel = {
        **info,
        "theta": vec.tolist(),
        "theta_names": folder.meta["features"],
        "candidate_prediction": {
            "min": float(pred.min()),
            "median": float(np.median(pred)),
            "max": float(pred.max()),
        },
        "profile": pool.profile(params),
        "pool_profile": pool.pool_profile(),
    }
    write_json(folder.path / "selection.json", sel)
    return sel
