"""The regressor θ → objective: three scikit-learn-style models on two kinds of inputs, scored on
runs they did not see, the best by k-fold Spearman used for selection.

Models: **LightGBM** (the paper's and RegMix's choice), **ridge** regression on standardised
features (linear) and a **Gaussian process** (Matern 5/2 + white noise, standardised features:
smooth, data-efficient at a few dozen runs). Inputs: the raw θ vector (the paper's) and the
expected selection profile of θ on the pool (:mod:`.features`), and ``theta+profile`` when the
recipe asks for it. Every model × inputs pair is scored by

* **held-out split**: a seeded ``valid_fraction`` of the successful runs (paper: 200 of 3000);
* **k-fold** (when there are fewer than ``kfold_below`` runs): out-of-fold predictions of every
  run (``sklearn.model_selection.cross_val_predict``), so the metrics use all runs at small scale.

The pair with the best k-fold Spearman (held-out when there is no k-fold) among those the recipe
allows (``regressor.model``/``features``, ``auto`` = any) is refit on all runs and predicts. A
learning curve (error vs number of runs) is drawn for LightGBM and ridge on the chosen inputs.
Nothing is pickled: LightGBM is stored in its own text format; ridge and the Gaussian process are
refit on load from ``train.json`` (the stored training table; both fits are deterministic).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from quadmix_stream.errors import UserError
from quadmix_stream.search.config import RegressorConfig
from quadmix_stream.storage.io import atomic_write_text

MIN_RUNS = 8
MODELS = ("lgbm", "linear", "gp")


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


def make_model(name: str, n: int, cfg: RegressorConfig):
    """An unfitted scikit-learn-compatible regressor ``name`` for ``n`` training runs."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "lgbm":
        import lightgbm as lgb

        return lgb.LGBMRegressor(**lgbm_params(n, cfg))
    if name == "linear":
        from sklearn.linear_model import Ridge

        return make_pipeline(StandardScaler(), Ridge(alpha=cfg.ridge_alpha))
    if name == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(1.0, (1e-2, 1e3), nu=2.5) + WhiteKernel(
            0.1, (1e-6, 1e1)
        )
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=cfg.seed)
        return make_pipeline(StandardScaler(), gp)
    raise UserError(f"unknown regressor model {name!r}; expected one of {MODELS}")


def fit_model(name: str, x: np.ndarray, y: np.ndarray, cfg: RegressorConfig, n: int | None = None):
    with warnings.catch_warnings():  # GP hyper-parameters at a bound; LightGBM feature names
        warnings.simplefilter("ignore")
        return make_model(name, n or len(y), cfg).fit(x, y)


def metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    y, pred = np.asarray(y, float), np.asarray(pred, float)
    rho = spearmanr(y, pred).statistic if len(y) > 2 and np.ptp(pred) > 0 else float("nan")
    return {
        "n": int(len(y)),
        "mae": float(np.mean(np.abs(y - pred))),
        "spearman": float(rho),
        "mae_of_mean": float(np.mean(np.abs(y - y.mean()))),  # predicting the mean loss
    }


def key(model: str, features: str) -> str:
    return f"{model}/{features}"


# ---------------------------------------------------------------- evaluation
@dataclass
class FitResult:
    model: object  # the chosen model, refit on all runs
    chosen: str  # "model/features"
    x: np.ndarray  # the chosen features of every run (what the model was fitted on)
    y: np.ndarray
    report: dict  # scores of every pair, predictions on held-out runs, learning curve, importance


def validate(xs: dict[str, np.ndarray], y: np.ndarray, cfg: RegressorConfig) -> dict:
    """Held-out split and (few runs) k-fold scores of every model on every kind of inputs."""
    from sklearn.model_selection import KFold, cross_val_predict

    n = len(y)
    if n < MIN_RUNS:
        raise UserError(
            f"fit: {n} successful proxy runs; at least {MIN_RUNS} are needed to fit and validate "
            "a regressor (train more proxies: raise proposals.n and run `proxies` again)"
        )
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_valid = int(max(2, round(cfg.valid_fraction * n)))
    valid, train = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    rep: dict = {"n_runs": n, "n_train": len(train), "n_valid": len(valid), "scores": {}}
    rep["holdout_predictions"] = {"index": valid.tolist(), "actual": y[valid].tolist()}
    kfold = n < cfg.kfold_below
    if kfold:
        k = int(min(cfg.kfold, n))
        rep["kfold"] = {"k": k}
        rep["kfold_predictions"] = {"actual": y.tolist()}
        cv = KFold(k, shuffle=True, random_state=cfg.seed)
    for kind, x in xs.items():
        for name in MODELS:
            kk = key(name, kind)
            p = fit_model(name, x[train], y[train], cfg, n).predict(x[valid])
            score = {"model": name, "features": kind, "holdout": metrics(y[valid], p)}
            rep["holdout_predictions"][kk] = p.tolist()
            if kfold:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    oof = cross_val_predict(make_model(name, n, cfg), x, y, cv=cv)
                score["kfold"] = metrics(y, oof)
                rep["kfold_predictions"][kk] = oof.tolist()
            rep["scores"][kk] = score
    return rep


def choose(rep: dict, models: list[str], kinds: list[str]) -> str:
    """The allowed pair with the best k-fold (else held-out) Spearman; ties: lower MAE."""
    split = "kfold" if "kfold" in rep else "holdout"

    def rank(kk: str) -> tuple[float, float]:
        m = rep["scores"][kk][split]
        rho = m["spearman"] if np.isfinite(m["spearman"]) else -np.inf
        return (-rho, m["mae"])

    allowed = [key(m, f) for f in kinds for m in models]
    return min(allowed, key=rank)


def fit(
    xs: dict[str, np.ndarray],
    y: np.ndarray,
    names: dict[str, list[str]],
    cfg: RegressorConfig,
    kinds: list[str] | None = None,
) -> FitResult:
    """Score every pair, pick one (``kinds``: inputs it may use; default every kind given),
    refit it on all runs; LightGBM's importance and the learning curve on the chosen inputs."""
    n = len(y)
    rep = validate(xs, y, cfg)
    models = list(MODELS) if cfg.model == "auto" else [cfg.model]
    chosen = choose(rep, models, kinds or list(xs))
    name, kind = chosen.split("/")
    x = xs[kind]
    rep.update(chosen=chosen, model=name, features=kind)
    rep["learning_curve"] = learning_curve(x, y, cfg)
    lg = fit_model("lgbm", x, y, cfg, n)
    gain = lg.booster_.feature_importance(importance_type="gain")
    split = lg.booster_.feature_importance(importance_type="split")
    tot = float(gain.sum()) or 1.0
    rep["importance"] = sorted(
        (
            {"feature": nm, "gain": float(g) / tot, "splits": int(s)}
            for nm, g, s in zip(names[kind], gain, split, strict=True)
        ),
        key=lambda r: -r["gain"],
    )
    rep["feature_names"] = list(names[kind])
    rep["lgbm_params"] = lgbm_params(n, cfg)
    rep["loss"] = {"min": float(y.min()), "median": float(np.median(y)), "max": float(y.max())}
    final = lg if name == "lgbm" else fit_model(name, x, y, cfg, n)
    return FitResult(final, chosen, x, y, rep)


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
            for name in ("lgbm", "linear"):
                m = metrics(y[te], fit_model(name, x[tr], y[tr], cfg, s).predict(x[te]))
                acc.setdefault(f"{name}_mae", []).append(m["mae"])
                acc.setdefault(f"{name}_spearman", []).append(m["spearman"])
                acc.setdefault("mae_of_mean", []).append(m["mae_of_mean"])
        out.append({"runs": s, **{k: float(np.nanmean(v)) for k, v in acc.items()}})
    return out


def partial_dependence(
    predict: Callable[[np.ndarray], np.ndarray],
    points: np.ndarray,
    grid: int = 7,
    background: int = 32,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The regressor's partial dependence on each input coordinate of ``points``.

    For coordinate j, a grid of ``grid`` values from the 5th to the 95th percentile of the
    points' values; at each, the mean prediction over ``background`` of the points with
    coordinate j set to it (Friedman's partial dependence). Returns the grid ``(D, grid)`` and
    the mean predictions ``(D, grid)``: a flat row means the prediction does not move with j.
    """
    x = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    bg = x[rng.choice(len(x), size=min(background, len(x)), replace=False)]
    lo, hi = np.percentile(x, 5, axis=0), np.percentile(x, 95, axis=0)
    values = np.linspace(lo, hi, grid).T  # (D, grid)
    d = x.shape[1]
    batch = np.repeat(bg[None, None], d * grid, axis=0).reshape(d, grid, len(bg), d)
    for j in range(d):
        batch[j, :, :, j] = values[j][:, None]
    pred = np.asarray(predict(batch.reshape(-1, d)), dtype=np.float64)
    return values, pred.reshape(d, grid, len(bg)).mean(axis=2)


def headline(metrics_: dict) -> dict:
    """The chosen pair's k-fold (else held-out) metrics, with ``split`` naming which, in words
    (``"out-of-fold (k-fold)"`` or ``"held-out split"``)."""
    score = metrics_["scores"][metrics_["chosen"]]
    if "kfold" in score:
        return {**score["kfold"], "split": "out-of-fold (k-fold)"}
    return {**score["holdout"], "split": "held-out split"}


# ---------------------------------------------------------------- persistence
def save(result: FitResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if result.chosen.startswith("lgbm/"):
        atomic_write_text(folder / "lgbm.txt", result.model.booster_.model_to_string())
    else:
        (folder / "lgbm.txt").unlink(missing_ok=True)
    train = {"x": result.x.tolist(), "y": result.y.tolist()}
    atomic_write_text(folder / "train.json", json.dumps(train) + "\n")
    atomic_write_text(folder / "metrics.json", json.dumps(result.report, indent=1) + "\n")


class Predictor:
    """The chosen model of a run folder, loaded from text (LightGBM model file, JSON table).

    ``featurize`` maps θ vectors to the features the model was fitted on (see :mod:`.features`).
    """

    def __init__(self, folder: Path, featurize=None, cfg: RegressorConfig | None = None) -> None:
        path = folder / "metrics.json"
        if not path.exists() or not (folder / "train.json").exists():
            raise FileNotFoundError(f"{folder}: no fitted regressor (run the `fit` step)")
        self.metrics = json.loads(path.read_text())
        self.cfg = cfg or RegressorConfig()
        train = json.loads((folder / "train.json").read_text())
        self._x, self._y = np.array(train["x"], dtype=np.float64), np.array(train["y"])
        self.name = self.metrics["model"]
        if self.name == "lgbm":
            import lightgbm as lgb

            self.model = lgb.Booster(model_str=(folder / "lgbm.txt").read_text())
        else:
            self.model = fit_model(self.name, self._x, self._y, self.cfg)
        self._linear = None
        self.featurize = featurize or (lambda v: np.atleast_2d(v))

    def predict(self, theta: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """The chosen model's predicted objective of each θ vector."""
        theta = np.atleast_2d(theta)
        return np.concatenate(
            [
                self.model.predict(self.featurize(theta[i : i + chunk]))
                for i in range(0, len(theta), chunk)
            ]
        )

    def predict_linear(self, theta: np.ndarray) -> np.ndarray:
        """Ridge on the same inputs (a second opinion on θ*)."""
        if self._linear is None:
            self._linear = fit_model("linear", self._x, self._y, self.cfg)
        return self._linear.predict(self.featurize(np.atleast_2d(theta)))
