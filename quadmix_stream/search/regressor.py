"""The regressor θ → target loss: LightGBM (as in the paper and RegMix) against a linear baseline.

Honest evaluation, on runs the model did not see:

* **held-out split**: a seeded ``valid_fraction`` of the successful runs (paper: 200 of 3000);
* **k-fold** (when there are fewer than ``kfold_below`` runs): every run is predicted once by a
  model trained on the other folds, so the metrics use all runs at small scale;
* **learning curve**: MAE/Spearman of models trained on growing random subsets of the runs,
  scored on the runs left out ("how many proxies do I need?");
* the same for a ridge regression on standardised θ (the linear baseline).

The model used for selection is then refit on all successful runs. Models are stored as text
(LightGBM's own model format and JSON): nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from quadmix_stream.io import atomic_write_text
from quadmix_stream.search.config import RegressorConfig

MIN_RUNS = 8


def lgbm_params(n: int, cfg: RegressorConfig) -> dict:
    """LightGBM settings that stay sensible from a few dozen runs up to thousands."""
    base = {
        "objective": "regression",
        "n_estimators": 500,
        "learning_rate": 0.03,
        "num_leaves": 15,
        "min_child_samples": int(max(3, min(20, n // 10))),
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "n_jobs": 1,
        "random_state": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }
    return {**base, **dict(cfg.lgbm)}


# ---------------------------------------------------------------- the two models
class Linear:
    """Ridge regression on standardised features (closed form; constant features ignored)."""

    def __init__(self, mean=None, scale=None, coef=None, intercept: float = 0.0) -> None:
        self.mean, self.scale, self.coef, self.intercept = mean, scale, coef, intercept

    def fit(self, x: np.ndarray, y: np.ndarray, alpha: float) -> Linear:
        self.mean = x.mean(0)
        sd = x.std(0)
        self.scale = np.where(sd > 1e-12, sd, 1.0)
        z = (x - self.mean) / self.scale
        self.intercept = float(y.mean())
        a = z.T @ z + alpha * np.eye(z.shape[1])
        self.coef = np.linalg.solve(a, z.T @ (y - self.intercept))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(x) - self.mean) / self.scale) @ self.coef + self.intercept

    def to_dict(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Linear:
        return cls(np.array(d["mean"]), np.array(d["scale"]), np.array(d["coef"]), d["intercept"])


def fit_lgbm(x: np.ndarray, y: np.ndarray, cfg: RegressorConfig, n_total: int | None = None):
    import lightgbm as lgb

    model = lgb.LGBMRegressor(**lgbm_params(n_total or len(y), cfg))
    model.fit(x, y)
    return model


def metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    rho = spearmanr(y, pred).statistic if len(y) > 2 and np.ptp(pred) > 0 else float("nan")
    return {
        "n": int(len(y)),
        "mae": float(np.mean(np.abs(y - pred))),
        "spearman": float(rho),
        "mae_of_mean": float(np.mean(np.abs(y - y.mean()))),  # predicting the mean loss
    }


# ---------------------------------------------------------------- evaluation
@dataclass
class FitResult:
    booster: object  # lightgbm.Booster of the model refit on all runs
    linear: Linear
    report: dict  # metrics, predictions on held-out runs, learning curve, importance


def validate(x: np.ndarray, y: np.ndarray, cfg: RegressorConfig) -> dict:
    """Held-out split and (few runs) k-fold metrics of LightGBM and the linear baseline."""
    n = len(y)
    if n < MIN_RUNS:
        raise ValueError(
            f"fit: {n} successful proxy runs; at least {MIN_RUNS} are needed to fit and validate "
            "a regressor (train more proxies: raise proposals.n and run `proxies` again)"
        )
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_valid = int(max(2, round(cfg.valid_fraction * n)))
    valid, train = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    rep: dict = {"n_runs": n, "n_train": len(train), "n_valid": len(valid)}
    p_lg = fit_lgbm(x[train], y[train], cfg, n).predict(x[valid])
    p_lin = Linear().fit(x[train], y[train], cfg.ridge_alpha).predict(x[valid])
    rep["holdout"] = {"lgbm": metrics(y[valid], p_lg), "linear": metrics(y[valid], p_lin)}
    rep["holdout_predictions"] = {
        "index": valid.tolist(),
        "actual": y[valid].tolist(),
        "lgbm": p_lg.tolist(),
        "linear": p_lin.tolist(),
    }
    if n < cfg.kfold_below:
        k = int(min(cfg.kfold, n))
        folds = np.array_split(rng.permutation(n), k)
        oof_lg, oof_lin = np.empty(n), np.empty(n)
        for f in folds:
            tr = np.setdiff1d(np.arange(n), f)
            oof_lg[f] = fit_lgbm(x[tr], y[tr], cfg, n).predict(x[f])
            oof_lin[f] = Linear().fit(x[tr], y[tr], cfg.ridge_alpha).predict(x[f])
        rep["kfold"] = {"k": k, "lgbm": metrics(y, oof_lg), "linear": metrics(y, oof_lin)}
        rep["kfold_predictions"] = {
            "actual": y.tolist(),
            "lgbm": oof_lg.tolist(),
            "linear": oof_lin.tolist(),
        }
    return rep


def fit(x: np.ndarray, y: np.ndarray, names: list[str], cfg: RegressorConfig) -> FitResult:
    """Validate, draw the learning curve, refit on all runs; importance of the final model."""
    n = len(y)
    rep = validate(x, y, cfg)
    rep["learning_curve"] = learning_curve(x, y, cfg)
    final = fit_lgbm(x, y, cfg, n)
    gain = final.booster_.feature_importance(importance_type="gain")
    split = final.booster_.feature_importance(importance_type="split")
    tot = float(gain.sum()) or 1.0
    rep["importance"] = sorted(
        (
            {"feature": nm, "gain": float(g) / tot, "splits": int(s)}
            for nm, g, s in zip(names, gain, split, strict=True)
        ),
        key=lambda r: -r["gain"],
    )
    rep["feature_names"] = list(names)
    rep["lgbm_params"] = lgbm_params(n, cfg)
    rep["loss"] = {"min": float(y.min()), "median": float(np.median(y)), "max": float(y.max())}
    return FitResult(final.booster_, Linear().fit(x, y, cfg.ridge_alpha), rep)


def learning_curve(
    x: np.ndarray, y: np.ndarray, cfg: RegressorConfig, repeats: int = 5
) -> list[dict]:
    """Error vs number of runs: models trained on ``s`` random runs, scored on all the others
    (``repeats`` draws per size, averaged)."""
    n = len(y)
    top = n - max(4, n // 5)
    if top < MIN_RUNS:
        return []
    sizes = sorted({int(s) for s in np.geomspace(MIN_RUNS, top, num=6).round()})
    rng = np.random.default_rng(cfg.seed + 1)
    out = []
    for s in sizes:
        acc: dict[str, list[float]] = {}
        for _ in range(repeats):
            perm = rng.permutation(n)
            tr, te = perm[:s], perm[s:]
            for name, pred in (
                ("lgbm", fit_lgbm(x[tr], y[tr], cfg, s).predict(x[te])),
                ("linear", Linear().fit(x[tr], y[tr], cfg.ridge_alpha).predict(x[te])),
            ):
                m = metrics(y[te], pred)
                acc.setdefault(f"{name}_mae", []).append(m["mae"])
                acc.setdefault(f"{name}_spearman", []).append(m["spearman"])
                acc.setdefault("mae_of_mean", []).append(m["mae_of_mean"])
        out.append({"runs": s, **{k: float(np.nanmean(v)) for k, v in acc.items()}})
    return out


# ---------------------------------------------------------------- persistence
def save(result: FitResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "lgbm.txt", result.booster.model_to_string())
    atomic_write_text(folder / "linear.json", json.dumps(result.linear.to_dict()) + "\n")
    atomic_write_text(folder / "metrics.json", json.dumps(result.report, indent=1) + "\n")


class Predictor:
    """The fitted models of a run folder, loaded from text (LightGBM model file, JSON).

    ``featurize`` maps θ vectors to the features the models were fitted on (see :mod:`.features`).
    """

    def __init__(self, folder: Path, featurize=None) -> None:
        import lightgbm as lgb

        path = folder / "lgbm.txt"
        if not path.exists():
            raise FileNotFoundError(f"{folder}: no fitted regressor (run the `fit` step)")
        self.booster = lgb.Booster(model_str=path.read_text())
        self.linear = Linear.from_dict(json.loads((folder / "linear.json").read_text()))
        self.metrics = json.loads((folder / "metrics.json").read_text())
        self.featurize = featurize or (lambda v: np.atleast_2d(v))

    def predict(self, theta: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """LightGBM's predicted loss of each θ vector."""
        theta = np.atleast_2d(theta)
        return np.concatenate(
            [
                self.booster.predict(self.featurize(theta[i : i + chunk]))
                for i in range(0, len(theta), chunk)
            ]
        )

    def predict_linear(self, theta: np.ndarray) -> np.ndarray:
        return self.linear.predict(self.featurize(np.atleast_2d(theta)))
