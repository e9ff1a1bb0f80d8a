"""The deciding step: the few best contenders trained again closer to the final run's scale.

Proxies screen: they rank many θ cheaply, but a small proxy's ranking can disagree with the
final run's (on the Table 1 corpus, Spearman −0.49 over the methods). With ``decide:`` in the
recipe, after the verification proxies, θ*, the ``decide.contenders`` best other verified
contenders (by mean proxy objective, within the constraints), Random, RegMix and the best top-k
baseline are trained again with ``decide.proxy`` (a larger model, more tokens: up to the final
run's) at ``decide.seeds`` data seeds, on the search's evaluation sets, and the best there ships
by the same rule as the verification (paired by seed, constraints by a paired t-test). Both
rankings and their Spearman are recorded (``selection.json`` → ``shipped.rank_agreement``) and
shown in the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.config import ProxyConfig, SearchConfig
from quadmix_stream.search.runfolder import RunFolder

#: where the deciding runs' records are (beside ``evals/``)
DECIDE = "decide"
#: settings that place a run but do not change what it measures
PLACEMENT = ("device", "threads", "group")


def decide_seeds(cfg: SearchConfig) -> list[int]:
    """The deciding runs' data seeds (``decide.proxy.data_seed + s``, s < ``decide.seeds``)."""
    assert cfg.decide is not None
    return [cfg.decide.proxy.data_seed + s for s in range(cfg.decide.seeds)]


def fidelity(cfg: SearchConfig) -> str:
    """A fingerprint of the deciding settings: records made with others are trained again."""
    assert cfg.decide is not None
    d = {k: v for k, v in dataclasses.asdict(cfg.decide.proxy).items() if k not in PLACEMENT}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe(cfg: SearchConfig) -> str:
    """The deciding runs' scale in words, beside the screening proxies'."""
    assert cfg.decide is not None
    x, p = cfg.decide.proxy, cfg.proxy

    def one(c: ProxyConfig) -> str:
        m = c.model
        return f"{m.num_hidden_layers}×{m.hidden_size} model, {c.tokens:,} tokens"

    return f"{one(x)}; proxies: {one(p)}"


def decide_contenders(folder: RunFolder) -> dict[str, SamplingParams]:
    """θ*, the best other verified contenders, Random, RegMix and the best top-k baseline."""
    from quadmix_stream.search.select import (
        EVALS,
        STAR,
        check_constraints,
        constraint_bounds,
        contenders,
        measured_contenders,
    )

    cfg = folder.config
    assert cfg.decide is not None
    files = contenders(folder)
    measured, _ = measured_contenders(folder, EVALS)
    bounds, _ = constraint_bounds(cfg.constraints, measured)
    within = [
        k
        for k, w in measured.items()
        if not any(c["fails"] for c in check_constraints(w, bounds).values())
    ]
    by_objective = sorted(within or measured, key=lambda k: measured[k]["objective"])
    baseline = {k for k in files if (folder.path / "baselines" / f"{k}.json").exists()}
    objectives = {k: measured[k]["objectives"] for k in measured}
    others = [k for k in by_objective if k not in baseline and k != STAR]
    best = distinct(others, objectives, cfg.decide.contenders, [STAR] if STAR in measured else [])
    topk = sorted(
        (k for k in measured if k.startswith("topk-")), key=lambda k: measured[k]["objective"]
    )
    pick = [STAR, *best, "random", "regmix", *topk[:1]]
    return {k: files[k] for k in dict.fromkeys(pick) if k in files}


def distinct(
    names: list[str], objectives: dict[str, list[float]], n: int, taken: list[str]
) -> list[str]:
    """The first ``n`` of ``names`` measured unlike each other and unlike ``taken`` at some seed:
    identical per-seed objectives mean the same stream (:mod:`.twins`), not another contender."""
    seen = {tuple(objectives[k]) for k in taken}
    out: list[str] = []
    for k in names:
        if len(out) == n:
            break
        if tuple(objectives[k]) not in seen:
            seen.add(tuple(objectives[k]))
            out.append(k)
    return out


def rank_table(first: dict[str, float], second: dict[str, float]) -> dict:
    """Spearman over the methods in both ``first`` and ``second`` (an objective per method,
    lower is better), and each method's objective and rank in both (``proxy`` and ``full``)."""
    from scipy.stats import rankdata, spearmanr

    methods = sorted(set(first) & set(second))
    p, f = [first[m] for m in methods], [second[m] for m in methods]
    rho = float(spearmanr(p, f).statistic) if len(methods) >= 3 else float("nan")
    rp, rf = rankdata(p), rankdata(f)
    return {
        "spearman_vs_full": rho,
        "methods": {
            m: {"proxy": p[i], "full": f[i], "proxy_rank": float(rp[i]), "full_rank": float(rf[i])}
            for i, m in enumerate(methods)
        },
        "proxy": dict(zip(methods, p, strict=True)),
        "full": dict(zip(methods, f, strict=True)),
    }


def screened(folder: RunFolder, decided: dict) -> dict:
    """What the verification proxies measured and would have shipped, beside the decision."""
    from quadmix_stream.search.select import EVALS, decision

    _, screen, _ = decision(folder, EVALS)
    proxy = {k: w["objective"] for k, w in screen["measured"].items()}
    deciding = {k: w["objective"] for k, w in decided["measured"].items()}
    return {
        "screened": {"name": screen["name"], "objective": screen["objective"], "measured": proxy},
        "rank_agreement": rank_table(proxy, deciding),
        "fidelity": describe(folder.config),
    }
