"""The search end to end on the planted synthetic corpus, with tiny proxies, and its bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.cli import main
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search import runner
from quadmix_stream.search.config import SearchConfig
from quadmix_stream.search.pipeline import (
    run_all,
    step_fit,
    step_propose,
    step_proxies,
    step_report,
)
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.proxy import stream_fingerprint
from quadmix_stream.search.regressor import MODELS
from quadmix_stream.search.runfolder import RunFolder, RunFolderError
from quadmix_stream.synth import TARGET_DOMAINS


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(dataset: Path, **over) -> SearchConfig:
    """A search that runs in about a minute on 2 busy cores."""
    base = {
        "dataset": str(dataset),
        "proposals": {
            "n": 40,
            "seed": 1,
            "ranges": {"lam": [0, 100], "omega": [0, 1], "eta": [0, 1], "eps": [0, 0.02]},
        },
        "tokenizer": {"vocab_size": 384, "max_docs": 1200},
        "proxy": {
            "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64},
            "seq_len": 64,
            "batch_size": 8,
            "tokens": 8 * 64 * 32,  # 32 steps
            "lr": 0.003,
            "eval_max_tokens": 4096,
            "group": 8,
            "threads": 1,
            "device": "cpu",
            "max_epochs": 200,
        },
        "regressor": {"features": "profile"},
        "select": {"n": 20000, "top_k": 10},
        "regmix": {"proposals": 12},
        "evaluate": True,
    }
    return SearchConfig.from_dict(_merge(base, over))


@pytest.fixture(scope="module")
def searched(mds_ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    run_all(tiny_config(mds_ds), out, log=lambda s: None)
    return out


def _target_share(profile: dict) -> float:
    return sum(profile["token_share"][d] for d in TARGET_DOMAINS)


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_pipeline_writes_params_report_and_plots(searched):
    params = SamplingParams.load(searched / "params.json")
    info = params.extra["search"]
    assert str(searched.resolve()) in params.provenance and "shipped: " in params.provenance
    assert info["candidates"] == 20000 and info["top_k"] == 10 and info["proxy_runs"] == 40
    assert math.isfinite(info["predicted_loss"]) and info["regressor"]["chosen"] == "lgbm/profile"
    star = SamplingParams.load(searched / "candidates" / "theta-star.json")
    assert "predicted objective" in star.provenance
    # the regressor's figure is named by the split it was measured on
    split = info["regressor"]["headline"]["split"]
    assert split in ("out-of-fold (k-fold)", "held-out split")
    assert f"regressor, {split}: Spearman" in star.provenance
    assert sorted(f.stem for f in (searched / "candidates").glob("*.json")) == [
        "best-round-0",
        "cand-01",
        "cand-02",
        "cand-03",
        "cand-04",
        "theta-star",
    ]
    rows = [json.loads(x) for x in (searched / "results.jsonl").read_text().splitlines()]
    assert [r["run"] for r in rows] == list(range(40)) and all(r["status"] == "ok" for r in rows)
    # the best proxy run is a contender; one data seed for all: its record is reused, not retrained
    best = min(rows, key=lambda r: r["loss"])
    again = json.loads((searched / "evals" / "best-round-0.json").read_text())
    assert again["copied_from"] == best["name"] and again["loss"] == best["loss"]
    report = (searched / "report" / "report.md").read_text()
    for section in (
        "## Regressor",
        "## Coverage",
        "Distinct documents each proxy trained on",
        "## θ*",
        "Shipped as params.json",
        "Throughput",
        "proxies/hour",
        "criteria-mix",
        "regmix",
    ):
        assert section in report
    for png in ("pred_vs_actual", "error_vs_runs", "feature_importance", "mixture", "losses"):
        f = searched / "report" / f"{png}.png"
        assert f.stat().st_size > 5000 and f.read_bytes()[:4] == b"\x89PNG"
        assert f"({png}.png)" in report
    names = {f.stem for f in (searched / "baselines").glob("*.json")}
    assert names == {
        "random",
        "topk-clean",
        "topk-noise_rate",
        "topk-length",
        "criteria-mix",
        "regmix",
    }
    assert (searched / "model" / "lgbm.txt").read_text().startswith("tree")


@pytest.mark.slow
def test_regressor_ranks_held_out_runs(searched):
    m = json.loads((searched / "model" / "metrics.json").read_text())
    k = m["scores"]["lgbm/profile"]["kfold"]
    assert k["n"] == 40 and k["spearman"] > 0.4, k
    assert k["mae"] < k["mae_of_mean"]
    # every model on the paper's inputs and on the profile, reported next to each other
    assert set(m["scores"]) == {f"{a}/{b}" for a in MODELS for b in ("theta", "profile")}
    assert m["importance"][0]["feature"].startswith(("share[", "sigma[", "log_tokens"))


@pytest.mark.slow
def test_theta_star_prefers_the_planted_domains_and_quality(searched, mds_ds):
    folder, pool = RunFolder(searched), Pool(mds_ds)
    _, _, theta = folder.proposals()
    props = [pool.profile(folder.params_of(t)) for t in theta]
    star = pool.profile(SamplingParams.load(searched / "candidates" / "theta-star.json"))
    assert _target_share(star) > np.median([_target_share(p) for p in props])
    assert _target_share(star) > 0.4  # the pool's share of the two target domains
    for scorer in ("clean", "noise_rate"):  # better-scored tokens (σ: 0 = best)
        assert star["sigma_mean"][scorer] < np.median([p["sigma_mean"][scorer] for p in props])
    regmix = pool.profile(SamplingParams.load(searched / "baselines" / "regmix.json"))
    assert _target_share(regmix) > 0.4


@pytest.mark.slow
def test_theta_star_actual_loss_beats_the_median_proposal(searched):
    _, y, _ = RunFolder(searched).table()
    evals = RunFolder(searched).finished("evals")
    star = evals["theta-star"]
    params = SamplingParams.load(searched / "candidates" / "theta-star.json")
    assert star["status"] == "ok" and star["stream_fingerprint"] == stream_fingerprint(params)
    assert star["loss"] < np.median(y), (star["loss"], np.median(y), y.min())
    assert star["loss"] < evals["random"]["loss"]


@pytest.mark.slow
def test_params_json_is_the_best_measured(searched):
    """What ships is never worse than anything the search measured (θ*, candidates, baselines,
    proxy runs), and it says which it is and by how much."""
    folder = RunFolder(searched)
    _, y, _ = folder.table()
    measured = {k: v["loss"] for k, v in folder.finished("evals").items() if v["status"] == "ok"}
    assert {"theta-star", "cand-01", "random", "criteria-mix", "regmix"} <= set(measured)
    shipped = SamplingParams.load(searched / "params.json")
    info = shipped.extra["search"]["shipped"]
    best = min([*measured.values(), float(y.min())])
    assert info["objective"] == pytest.approx(best)
    assert info["margin_vs_theta_star"] == pytest.approx(measured["theta-star"] - best)
    assert "shipped: " in shipped.provenance and f"{best:.4f}" in shipped.provenance
    assert "not verified" not in shipped.provenance  # it was measured, whatever it is
    src = info["name"]
    if src.startswith("run-"):
        ids, _, theta = folder.proposals()
        expect = folder.params_of(theta[list(ids).index(int(src[4:]))])
    else:
        sub = "baselines" if (searched / "baselines" / f"{src}.json").exists() else "candidates"
        expect = SamplingParams.load(searched / sub / f"{src}.json")
    assert stream_fingerprint(shipped) == stream_fingerprint(expect)


@pytest.mark.slow
def test_rerunning_steps_redoes_nothing(searched):
    before = {f.name: f.stat().st_mtime_ns for f in (searched / "proxies").glob("*.json")}
    evals = {f.name: f.stat().st_mtime_ns for f in (searched / "evals").glob("*.json")}
    shipped = (searched / "params.json").read_bytes()
    summary = step_proxies(searched, log=lambda s: None)
    assert summary["trained"] == 0 and summary["runs"] == []
    # select again: candidates are rewritten with a new `selected` time stamp; same streams
    old = SamplingParams.load(searched / "candidates" / "theta-star.json")
    time.sleep(1.1)
    assert main(["search", "select", str(searched)]) == 0
    new = SamplingParams.load(searched / "candidates" / "theta-star.json")
    assert new.extra["search"]["selected"] != old.extra["search"]["selected"]
    assert main(["search", "evaluate", str(searched)]) == 0
    assert (searched / "params.json").read_bytes() == shipped
    assert {f.name: f.stat().st_mtime_ns for f in (searched / "proxies").glob("*.json")} == before
    assert {f.name: f.stat().st_mtime_ns for f in (searched / "evals").glob("*.json")} == evals
    assert main(["search", "status", str(searched)]) == 0


# ---------------------------------------------------------------- bad input
@pytest.mark.slow
def test_a_run_folder_of_another_dataset_is_refused(searched, mds_ds, jsonl_ds, capsys):
    with pytest.raises(RunFolderError, match="was made for dataset .* fingerprint"):
        RunFolder(searched, dataset=jsonl_ds)
    with pytest.raises(RunFolderError, match="belongs to another dataset"):
        RunFolder.create(searched, tiny_config(jsonl_ds))
    capsys.readouterr()
    assert main(["search", "fit", str(searched), "--dataset", str(jsonl_ds)]) == 2
    err = capsys.readouterr().err
    assert "was made for dataset" in err and "Traceback" not in err
    # other proxy settings would make old and new results incomparable
    with pytest.raises(RunFolderError, match="other proxy settings.*proxy"):
        RunFolder.create(searched, tiny_config(mds_ds, proxy={"lr": 0.01}))
    # regressor/selection settings may change
    RunFolder.create(searched, tiny_config(mds_ds, select={"top_k": 5}))
    RunFolder.create(searched, tiny_config(mds_ds))


def test_a_target_set_without_text_is_refused(mds_ds, tmp_path, capsys):
    target = tmp_path / "target.jsonl"
    target.write_text('{"text": ""}\n{"id": 1}\n')
    with pytest.raises(ValueError, match="no text"):
        step_propose(tmp_path / "run", tiny_config(mds_ds, target=str(target)), log=lambda s: None)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"dataset: {mds_ds}\ntarget: {target}\n")
    assert main(["search", "propose", str(tmp_path / "run2"), "--recipe", str(recipe)]) == 2
    assert "no text" in capsys.readouterr().err


def test_proposals_grow_without_redrawing(mds_ds, tmp_path):
    small = tiny_config(mds_ds, proposals={"n": 4}).replace(regmix=None)
    folder = step_propose(tmp_path / "run", small, log=lambda s: None)
    _, _, first = folder.proposals()
    folder = step_propose(
        tmp_path / "run",
        small.replace(proposals=dataclasses.replace(small.proposals, n=9)),
        log=lambda s: None,
    )
    ids, batches, theta = folder.proposals()
    assert ids.tolist() == list(range(9)) and batches.tolist() == [0] * 4 + [1] * 5
    np.testing.assert_array_equal(theta[:4], first)  # existing proposals are kept as they were
    assert not np.allclose(theta[4:8], first)  # the new batch has its own draws
    assert folder.pending() == list(range(9))


@pytest.mark.slow
def test_empty_selection_and_divergence_fail_only_their_proxy(mds_ds, tmp_path, monkeypatch):
    """Run 3 selects nothing; run 5 really diverges (its proxy trains with lr=1e6)."""
    cfg = tiny_config(mds_ds, proposals={"n": 12}, proxy={"group": 1, "tokens": 8 * 64 * 12})
    folder = step_propose(tmp_path / "run", cfg.replace(regmix=None), log=lambda s: None)
    ids, batches, theta = folder.proposals()
    m = len(folder.domains)
    eta = slice(m * len(folder.scorers) + 2 * m, m * len(folder.scorers) + 3 * m)
    theta[3, eta] = 0.0
    theta[3, eta.stop :] = 0.0  # η = ε = 0: nothing selected
    folder.write_proposals(ids, batches, theta)

    real = runner.train_one

    def train_one(job, ctx):
        if job.name == "run-00005":
            hot = dataclasses.replace(
                ctx, cfg=dataclasses.replace(ctx.cfg, lr=1e6, warmup_fraction=0.0)
            )
            return real(job, hot)
        return real(job, ctx)

    monkeypatch.setattr(runner, "train_one", train_one)
    summary = step_proxies(folder.path, log=lambda s: None)
    assert summary["trained"] == 12 and summary["failed"] == 2
    done = folder.finished()
    assert (
        done["run-00003"]["status"] == "failed" and "selects nothing" in done["run-00003"]["reason"]
    )
    assert done["run-00005"]["status"] == "failed" and "diverged" in done["run-00005"]["reason"]
    rep = step_fit(folder.path, log=lambda s: None)
    assert rep["n_runs"] == 10 and rep["failed_runs"] == 2
    step_report(folder.path, log=lambda s: None)
    report = (folder.path / "report" / "report.md").read_text()
    assert "run-00003" in report and "run-00005" in report and "excluded from the fit" in report


@pytest.mark.slow
def test_retest_reproduces_its_own_seed_and_reports_another(searched, capsys):
    """``search retest``: the recorded seed gives back every recorded objective (Spearman 1);
    another seed writes retest.json, and the report shows its verdict."""
    from quadmix_stream.search.retest import retest

    same = retest(searched, runs=4, data_seed=0, log=lambda s: None)
    assert same["runs"] == 4 and same["spearman"] == pytest.approx(1.0)
    assert all(p["recorded"] == pytest.approx(p["retest"], abs=1e-6) for p in same["pairs"])
    # the regressor's out-of-fold predictions, ranked against both draws (here the same draw)
    reg = same["regressor"]
    assert reg["model"] == "lgbm/profile" and reg["folds"] == 5
    assert reg["vs_recorded"] == pytest.approx(reg["vs_retest"]) and -1 <= reg["vs_retest"] <= 1
    assert main(["search", "retest", str(searched), "--runs", "4"]) == 0
    res = json.loads((searched / "retest.json").read_text())
    assert res["data_seed"] == {"recorded": 0, "retest": 1} and res["runs"] == 4
    assert -1 <= res["spearman"] <= 1 and res["sd_of_difference"] > 0  # other draws, other losses
    assert "test-retest Spearman" in capsys.readouterr().out
    step_report(searched, log=lambda s: None)
    report = (searched / "report" / "report.md").read_text()
    assert "out-of-fold predictions) ranks" in report
    assert "## Test-retest" in report and (searched / "report" / "retest.png").stat().st_size > 0


@pytest.mark.slow
def test_a_shares_space_search_decided_at_a_higher_fidelity_ships_params_the_loader_reads(
    mds_ds, tmp_path
):
    from quadmix_stream.search.decide import DECIDE, decide_contenders
    from quadmix_stream.search.pipeline import step_decide
    from quadmix_stream.stream.dataset import QuaDMixDataset

    over = {
        "space": "shares",
        # staged: the first 16 search the shares alone, round 1 pairs the best with quality
        "proposals": {"n": 16, "max_share_ratio": 4.0, "staged": True},
        "rounds": {"k": 1, "n": 4, "top": 2, "candidates": 500},
        "regressor": {"features": "theta"},
        "select": {"n": 4000, "top_k": 5, "verify": 2, "seeds": 1},
        # the deciding runs: a model twice as wide on twice the tokens, 2 seeds
        "decide": {
            "contenders": 1,
            "seeds": 2,
            "proxy": {"model": {"hidden_size": 64}, "tokens": 8 * 64 * 64},
        },
    }
    cfg = tiny_config(mds_ds, **over).replace(regmix=None)
    out = run_all(cfg, tmp_path / "run", log=lambda s: None)
    folder = RunFolder(out)
    pool = Pool(mds_ds)
    m, a = len(pool.domains), len(pool.domains) * len(pool.scorers)
    # the run folder holds points: shares on the simplex, capped at 4× the pool's share
    _, _, pts = folder.proposals()
    share = pool.domain_tokens / pool.domain_tokens.sum()
    w = pts[:, a + 2 * m : a + 3 * m]
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert np.all(w <= 4.0 * share + 1e-12)
    # staged: the first batch selects every document of a domain alike; round 1 keeps shares
    # of the first stage's best and draws the quality parameters afresh
    rounds = folder.rounds()
    lam, omega = pts[:, a : a + m], pts[:, a + m : a + 2 * m]
    assert np.all(lam[rounds == 0] == 0) and np.all(omega[rounds == 0] == 1)
    assert (rounds == 1).sum() == 4 and np.all(lam[rounds == 1] > 0)
    x, y, _ = folder.table()
    stage1 = np.all(x[:, a : a + m] == 0, axis=1)  # the first batch's points (λ = 0)
    best = x[stage1][np.argsort(y[stage1], kind="stable")[:2]]  # the measured best: anchors
    measured_best = {tuple(np.round(v, 9)) for v in best[:, a + 2 * m : a + 3 * m]}
    assert any(tuple(np.round(x, 9)) in measured_best for x in w[rounds == 1])
    sel = json.loads((out / "selection.json").read_text())
    assert sel["point_names"][a + 2 * m] == f"share[{pool.domains[0]}]"
    assert sel["theta_names"] == SamplingParams.vector_names(pool.domains, pool.scorers)
    # θ* is the mean of points; its params realise the mean's shares
    star = SamplingParams.load(out / "candidates" / "theta-star.json")
    realised = pool.profile(star)
    np.testing.assert_allclose(
        list(realised["token_share"].values()),
        np.array(sel["point"])[a + 2 * m : a + 3 * m],
        atol=1e-9,
    )
    # the planted target domains get more than their share of the pool
    assert _target_share(realised) > sum(share[pool.domains.index(d)] for d in TARGET_DOMAINS)
    # what ships is ordinary params: the loader reads them unchanged
    shipped = SamplingParams.load(out / "params.json")
    items = list(zip(range(20), QuaDMixDataset(mds_ds, shipped, seed=0), strict=False))
    assert len(items) == 20
    report = (out / "report" / "report.md").read_text()
    assert "| domain | pool | proposals min | median | max | θ*" in report
    assert "## What the regressor learned: partial dependence" in report
    assert (out / "report" / "partial_dependence.png").read_bytes()[:4] == b"\x89PNG"
    # decided at a higher fidelity: θ*, the best other verified contender, Random and the best
    # top-k, each at 2 seeds with the wider model; what ships is the best there
    cfg = folder.config
    assert cfg.decide.proxy.model.hidden_size == 64 and cfg.decide.proxy.seq_len == 64
    names = decide_contenders(folder)
    assert list(names)[0] == "theta-star" and "random" in names and len(names) == 4
    assert any(k.startswith("topk-") for k in names)
    recs = folder.finished(DECIDE)
    assert set(recs) == {n if s == 0 else f"{n}.s1" for n in names for s in (0, 1)}
    assert {r["data_seed"] for r in recs.values()} == {0, 1}
    shipped = SamplingParams.load(out / "params.json").extra["search"]["shipped"]
    assert shipped["stage"] == "decide" and set(shipped["measured"]) == set(names)
    m = shipped["measured"]
    assert shipped["name"] == min(m, key=lambda k: (m[k]["objective"], k != "theta-star"))
    assert shipped["screened"]["name"] in shipped["screened"]["measured"]
    agree = shipped["rank_agreement"]
    assert set(agree["methods"]) == set(names) and -1 <= agree["spearman_vs_full"] <= 1
    assert "**Decided at a higher fidelity** (2×64 model, 32,768 tokens" in report
    # a second decide trains nothing
    lines: list[str] = []
    step_decide(out, log=lines.append)
    assert any("already measured at the deciding fidelity" in x for x in lines)
