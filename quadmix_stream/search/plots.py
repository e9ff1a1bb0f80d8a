"""The search report's PNG plots (matplotlib, Agg backend), each from the run folder's tables.

Predicted vs actual loss on held-out runs; regressor error vs number of runs; feature
importance; the regressor's partial dependence on its strongest inputs; per-domain expected
token shares and α of θ* against the pool; best objective per
round; proxy losses with θ* and the baselines marked. Each function writes one PNG and returns
its file name for the report's markdown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from quadmix_stream.storage.io import tmp_path


def _plt() -> Any:  # matplotlib.pyplot, imported on first use
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    from quadmix_stream.extras import pyplot

    return pyplot("the search report's figures")


def _save(fig: Any, path: Path) -> str:
    """Write ``fig`` atomically as ``path``, close it, and return the file name."""
    tmp = tmp_path(path)
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    tmp.replace(path)
    _plt().close(fig)
    return path.name


def plot_pred_vs_actual(metrics: dict, out: Path) -> str:
    """Out-of-fold (else held-out) predictions of the chosen model and of ridge on its inputs."""
    plt = _plt()
    split = "kfold" if "kfold_predictions" in metrics else "holdout"
    pr = metrics[f"{split}_predictions"]
    fig, ax = plt.subplots(figsize=(5, 5))
    y = np.array(pr["actual"])
    chosen = metrics["chosen"]
    shown = dict.fromkeys([chosen, f"linear/{metrics['features']}"])
    for kk, marker in zip(shown, ("o", "x"), strict=False):
        rho = metrics["scores"][kk][split]["spearman"]
        ax.scatter(y, pr[kk], marker=marker, alpha=0.7, label=f"{kk} (Spearman {rho:+.2f})")
    lo, hi = float(min(y.min(), *pr[chosen])), float(max(y.max(), *pr[chosen]))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    what = "out-of-fold (k-fold)" if split == "kfold" else "held-out split"
    ax.set(
        xlabel="actual proxy objective", ylabel="predicted", title=f"Predicted vs actual, {what}"
    )
    ax.legend()
    return _save(fig, out)


def plot_retest(res: dict, out: Path) -> str:
    """Each retested θ: its recorded objective against the objective with another data seed."""
    plt = _plt()
    a = np.array([p["recorded"] for p in res["pairs"]], dtype=float)
    b = np.array([p["retest"] for p in res["pairs"]], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(a, b, alpha=0.7, label=f"Spearman {res['spearman']:+.2f} over {res['runs']} θ")
    ok = np.isfinite(a) & np.isfinite(b)
    lo, hi = float(min(a[ok].min(), b[ok].min())), float(max(a[ok].max(), b[ok].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    seeds = res["data_seed"]
    ax.set(
        xlabel=f"proxy objective, data seed {seeds['recorded']} (recorded)",
        ylabel=f"same θ, data seed {seeds['retest']}",
        title="Test-retest of the proxy objective",
    )
    ax.legend()
    return _save(fig, out)


def plot_rounds(best: dict[int, float], marks: dict[str, float], out: Path) -> str:
    """Best actual proxy objective per search round, with θ* and the baselines as lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    rounds = list(best)
    ax.plot(rounds, list(best.values()), "o-", label="best proxy run of the round")
    ax.plot(rounds, np.minimum.accumulate(list(best.values())), "k:", label="best so far")
    for i, (name, v) in enumerate(marks.items()):
        ax.axhline(v, color=f"C{i + 1}", lw=1, label=f"{name} {v:.3f}")
    ax.set(
        xlabel="round (0: the recipe's proposals)",
        ylabel="actual proxy objective",
        title="Search rounds",
        xticks=rounds,
    )
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_error_vs_runs(metrics: dict, out: Path) -> str | None:
    """MAE and Spearman of LightGBM and ridge vs training runs; None without a learning curve."""
    plt = _plt()
    lc = metrics["learning_curve"]
    if not lc:
        return None
    runs = [r["runs"] for r in lc]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("lgbm", "linear"):
        a1.plot(runs, [r[f"{name}_mae"] for r in lc], "o-", label=name)
        a2.plot(runs, [r[f"{name}_spearman"] for r in lc], "o-", label=name)
    a1.plot(runs, [r["mae_of_mean"] for r in lc], ":", color="grey", label="predict the mean")
    a1.set(xlabel="training runs", ylabel="MAE on the other runs", title="Error vs number of runs")
    a2.set(xlabel="training runs", ylabel="Spearman on the other runs", ylim=(-1, 1))
    a2.axhline(0, color="k", lw=0.5)
    a1.legend()
    a2.legend()
    fig.tight_layout()
    return _save(fig, out)


def plot_importance(metrics: dict, out: Path, top: int = 20) -> str:
    """LightGBM's share of gain of the ``top`` features."""
    plt = _plt()
    imp = metrics["importance"][:top][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(imp) + 1))
    ax.barh([r["feature"] for r in imp], [r["gain"] for r in imp])
    ax.set(xlabel="share of LightGBM gain", title="Feature importance (inputs → objective)")
    return _save(fig, out)


def plot_partial_dependence(
    names: list[str], values: np.ndarray, pred: np.ndarray, out: Path, top: int = 8
) -> str:
    """The predicted objective along each of the ``top`` inputs it moves most with."""
    plt = _plt()
    order = np.argsort(-np.ptp(pred, axis=1), kind="stable")[:top]
    cols = min(4, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    for ax, j in zip(axes.ravel(), order, strict=False):
        ax.plot(values[j], pred[j], marker="o", ms=3)
        ax.set_title(names[j], fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(order) :]:
        ax.axis("off")
    fig.suptitle("Predicted objective along one input, the others as the proxied points have them")
    fig.tight_layout()
    return _save(fig, out)


def plot_mixture(
    shares: dict[str, dict[str, float]], alpha: np.ndarray, domains, scorers, out: Path
) -> str:
    """Expected per-domain token shares of each params set, and θ*'s α per domain."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(shares)
    width = 0.8 / len(names)
    x = np.arange(len(domains))
    for i, n in enumerate(names):
        a1.bar(x + i * width, [shares[n][d] for d in domains], width, label=n)
    a1.set_xticks(x + 0.4 - width / 2, domains, rotation=45, ha="right")
    a1.set(ylabel="expected share of selected tokens", title="Per-domain token shares")
    a1.legend(fontsize=8)
    bottom = np.zeros(len(domains))
    for j, s in enumerate(scorers):
        a2.bar(x, alpha[:, j], bottom=bottom, label=s)
        bottom += alpha[:, j]
    a2.axhline(1.0, color="k", lw=0.5)
    a2.set_xticks(x, domains, rotation=45, ha="right")
    a2.set(ylabel="α (merge weight)", title="α of θ* per domain (pool/random: uniform)")
    a2.legend(fontsize=8)
    return _save(fig, out)


def plot_losses(losses: np.ndarray, marks: dict[str, float], out: Path) -> str:
    """Histogram of the proxies' actual objective with θ* and the baselines marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(losses, bins=min(30, max(5, len(losses) // 3)), color="lightgrey", label="proposals")
    for i, (name, v) in enumerate(marks.items()):
        ax.axvline(v, color=f"C{i}", lw=2, label=f"{name} {v:.3f}")
    ax.set(xlabel="proxy objective", ylabel="runs", title="Actual proxy objective")
    ax.legend(fontsize=8)
    return _save(fig, out)
