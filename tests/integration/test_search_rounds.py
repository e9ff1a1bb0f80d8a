"""Search rounds, a multi-set objective with a constraint, coverage and range-boundary warnings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.baselines import random_params
from quadmix_stream.search.config import RegmixConfig, SearchConfigError
from quadmix_stream.search.pipeline import (
    best_per_round,
    coverage_lines,
    regmix_config,
    run_all,
    step_propose,
    step_round,
    step_select,
)
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.runfolder import RunFolder
from quadmix_stream.search.select import (
    _steering,
    boundary,
    load_constraints,
    load_predictor,
    measured_within,
    steer,
)
from quadmix_stream.search.space import spread_best

from .test_search_pipeline import tiny_config


def general_set(path: Path) -> Path:
    """An evaluation set unlike the target (plain prose)."""
    words = "the river runs past an old mill where children play in summer".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, 30)) for _ in range(60)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return path


def rounds_config(dataset: Path, general: Path, **over):
    base = {
        "proposals": {"n": 16},
        "rounds": {"k": 2, "n": 8, "top": 3, "candidates": 2000, "shrink": 0.5},
        "evals": {"general": str(general)},
        "objective": {"target": 1.0, "general": 0.5},
        "constraints": {"general": "random"},
        "select": {"n": 4000, "top_k": 5, "verify": 2},
        "regressor": {"features": "auto", "model": "auto"},
        "coverage_min_docs": 10_000,
    }
    return tiny_config(dataset, **{**base, **over}).replace(regmix=None)


def run_rounds(dataset: Path, root: Path, **over) -> tuple[Path, list[str]]:
    """A whole search of :func:`rounds_config` (``over`` replaces its sections) in ``root/run``,
    and the lines it printed."""
    cfg = rounds_config(dataset, general_set(root / "general.jsonl"), **over)
    lines: list[str] = []
    return run_all(cfg, root / "run", log=lines.append), lines


@pytest.fixture(scope="module")
def rounds_run(mds_ds, tmp_path_factory) -> tuple[Path, list[str]]:
    return run_rounds(mds_ds, tmp_path_factory.mktemp("rounds"))


@pytest.mark.slow
def test_rounds_add_proposals_near_the_best_and_resume(rounds_run):
    out, lines = rounds_run
    folder = RunFolder(out)
    assert folder.rounds().tolist() == [0] * 16 + [1] * 8 + [2] * 8
    ids, _, theta = folder.proposals()
    assert ids.tolist() == list(range(32)) and len(folder.finished()) == 32
    best = best_per_round(folder)
    assert set(best) == {0, 1, 2} and all(np.isfinite(v) for v in best.values())
    assert any(line.startswith("best actual objective per round") for line in lines)
    # round 2 stays closer to the anchors than round 1 (its reach is half)
    x, y, _ = folder.table()
    top = x[np.argsort(y)[:3]]
    dist = [np.abs(theta[folder.rounds() == r][:, None] - top[None]).sum(-1).min(1) for r in (1, 2)]
    assert np.median(dist[1]) < np.median(dist[0])
    # a finished round is never redone; a killed one (a result missing) trains only that proxy
    stamps = {f.name: f.stat().st_mtime_ns for f in (out / "proxies").glob("*.json")}
    step_round(out, 1, log=lambda s: None)
    assert {f.name: f.stat().st_mtime_ns for f in (out / "proxies").glob("*.json")} == stamps
    (out / "proxies" / "run-00030.json").unlink()
    step_round(out, 2, log=lambda s: None)
    assert folder.rounds().tolist() == [0] * 16 + [1] * 8 + [2] * 8
    after = {f.name: f.stat().st_mtime_ns for f in (out / "proxies").glob("*.json")}
    assert {k for k in after if after[k] != stamps.get(k)} == {"run-00030.json"}
    np.testing.assert_array_equal(folder.proposals()[2], theta)


@pytest.mark.slow
def test_objective_is_a_weighted_sum_and_the_constraint_holds(rounds_run):
    out, _ = rounds_run
    folder = RunFolder(out)
    _, y, recs = folder.table()
    for v, r in zip(y, recs, strict=True):
        assert set(r["losses"]) == {"target", "general"}
        assert v == pytest.approx(r["losses"]["target"] + 0.5 * r["losses"]["general"])
    shipped = SamplingParams.load(out / "params.json").extra["search"]["shipped"]
    random_general = shipped["measured"]["random"]["losses"]["general"]
    assert shipped["constraints"]["general"]["from"] == "random"
    assert shipped["measured"][shipped["name"]]["losses"]["general"] <= random_general + 1e-12
    feasible = [
        m["objective"]
        for m in shipped["measured"].values()
        if m["losses"]["general"] <= random_general + 1e-12
    ]
    assert shipped["objective"] == pytest.approx(min(feasible))
    star = shipped["measured"]["theta-star"]
    text = SamplingParams.load(out / "params.json").provenance
    if shipped["name"] != "theta-star" and star["losses"]["general"] > random_general + 1e-12:
        assert "fails general" in text and "worse than" not in text.split("(θ*")[1].split(")")[0]
    else:
        assert "fails general" not in text
    report = (out / "report" / "report.md").read_text()
    for text in ("## Search rounds", "(rounds.png)", "1·target + 0.5·general", "general ≤ random"):
        assert text in report, text
    assert (out / "report" / "rounds.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.slow
def test_the_constraint_steers_rounds_and_selection(rounds_run):
    out, lines = rounds_run
    folder = RunFolder(out)
    pool = Pool(folder.dataset)
    assert (out / "model-general" / "metrics.json").exists()
    constraints, notes = load_constraints(folder, pool)
    assert notes == [] and [c.name for c in constraints] == ["general"]
    (c,) = constraints
    # the bound is the constraint regressor's prediction for Random's θ
    assert c.bound == pytest.approx(c.predictor.predict(random_params(pool).to_vector()[None])[0])
    cand = folder.space(pool).propose(3000, 7)
    pred = load_predictor(folder, pool).predict(cand)
    key, ok = steer(constraints, cand, pred)
    assert ok.tolist() == (c.predictor.predict(cand) <= c.bound).tolist()
    assert 0 < ok.sum() < len(ok)  # the synthetic Random sits inside the proposals' range
    order = np.argsort(key, kind="stable")
    assert ok[order[: ok.sum()]].all()  # every point predicted within ranks first…
    np.testing.assert_array_equal(key[ok], pred[ok])  # …by its predicted objective
    np.testing.assert_array_equal(order[ok[order]], np.flatnonzero(ok)[np.argsort(pred[ok])])
    # a margin only removes points; no constraints leave the ranking as it was
    _, ok_margin = steer([dataclasses.replace(c, margin=0.01)], cand, pred)
    assert not (ok_margin & ~ok).any() and ok_margin.sum() < ok.sum()
    key0, ok0 = steer([], cand, pred)
    assert key0 is pred and ok0.all()
    # what the steps said and recorded
    steering = json.loads((out / "selection.json").read_text())["steering"]
    general = steering["constraints"]["general"]
    assert general["from"] == "random" and general["predicted_bound"] == pytest.approx(c.bound)
    outside = general["theta_star_predicted"] > c.bound
    assert steering["candidates_predicted_within"] > 0
    assert len(steering["notes"]) == outside and all("θ* " in n for n in steering["notes"])
    # θ* (a mean of candidates) predicted outside a bound is said, not hidden
    star = SamplingParams.load(out / "candidates" / "theta-star.json")
    p = float(c.predictor.predict(star.to_vector()[None])[0])
    for bound, said in ((p - 0.01, True), (p + 0.01, False)):
        point = star.to_vector()  # a point of the quadmix space is θ
        notes = _steering([dataclasses.replace(c, bound=bound)], [], point, 1)["notes"]
        assert bool(notes) == said and all(
            "outside constraint general ≤ random" in n for n in notes
        )
    assert any(line.startswith("constraint general: fitted ") for line in lines)
    assert any(line.startswith("constraint general ≤ random: θ* predicted") for line in lines)
    drawn = [line for line in lines if line.startswith("round ")]
    assert len(drawn) == 2 and all("predicted within the constraints" in d for d in drawn)
    report = (out / "report" / "report.md").read_text()
    assert "Constraints steer the search" in report and "| general | random |" in report


@pytest.mark.slow
def test_a_rounds_best_is_its_best_run_within_the_constraints(rounds_run, tmp_path):
    out, _ = rounds_run
    folder = RunFolder(out)
    (c,) = load_constraints(folder, Pool(folder.dataset))[0]
    _, y, recs = folder.table()
    rounds = np.array([r.get("round", 0) for r in recs])
    within = np.array([r["losses"]["general"] <= c.bound for r in recs])
    np.testing.assert_array_equal(measured_within([c], recs), within)
    bests = json.loads((out / "selection.json").read_text())["round_bests"]
    assert [b["name"] for b in bests] == ["best-round-0", "best-round-1", "best-round-2"]
    for r, b in enumerate(bests):
        mine = (rounds == r) & within if ((rounds == r) & within).any() else rounds == r
        i = np.flatnonzero(mine)[np.argmin(y[mine])]
        assert (b["run"], b["within_constraints"]) == (recs[i]["run"], bool(within[i]))
        assert b["objective"] == pytest.approx(y[i])
        written = SamplingParams.load(out / "candidates" / f"{b['name']}.json")
        assert f"proxy run {b['run']}, the best of round {r}" in written.provenance
    # an impossible bound: no run is within, and each round falls back to its best overall
    none = dataclasses.replace(c, bound=-1.0)
    assert not measured_within([none], recs).any()
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cfg = RunFolder(copy).config.replace(constraints={"general": -1.0}, evaluate=False)
    RunFolder.create(copy, cfg)
    step_select(copy, log=lambda _: None)
    again = json.loads((copy / "selection.json").read_text())["round_bests"]
    for r, b in enumerate(again):
        assert not b["within_constraints"] and b["objective"] == pytest.approx(y[rounds == r].min())
    report = (out / "report" / "report.md").read_text()
    assert "best within the constraints (verified as `best-round-R`)" in report


@pytest.mark.slow
def test_search_round_cli_runs_one_more_round(rounds_run, tmp_path, capsys):
    from quadmix_stream.cli import main

    out, _ = rounds_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = RunFolder(copy).rounds()
    assert main(["search", "round", str(copy), "3"]) == 0
    rounds = RunFolder(copy).rounds()
    assert (rounds[: len(before)] == before).all() and (rounds == 3).sum() == 8
    assert len(RunFolder(copy).finished()) == len(rounds)  # its proxies were trained
    printed = capsys.readouterr().out
    assert "round 3: 8 θ near the best" in printed and "best actual objective per round" in printed
    assert main(["search", "round", str(copy), "3"]) == 0  # drawn: nothing new
    assert len(RunFolder(copy).rounds()) == len(rounds)
    assert main(["search", "round", str(copy), "5"]) == 2
    assert "round 4 was never drawn" in capsys.readouterr().err
    assert main(["search", "round", str(copy), "0"]) == 2


@pytest.mark.slow
def test_a_margin_that_no_candidate_meets_is_warned(rounds_run, tmp_path):
    out, _ = rounds_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cfg = RunFolder(copy).config.replace(constraint_margin=10.0, evaluate=False)
    RunFolder.create(copy, cfg)  # constraints are not proxy settings: the folder resumes
    lines: list[str] = []
    step_select(copy, log=lines.append)
    assert any("fewer than top_k=5 candidates are predicted within" in x for x in lines)
    steering = json.loads((copy / "selection.json").read_text())["steering"]
    assert steering["candidates_predicted_within"] == 0
    assert steering["constraints"]["general"]["margin"] == 10.0


def test_the_regmix_baseline_is_not_steered(mds_ds, tmp_path):
    cfg = rounds_config(mds_ds, general_set(tmp_path / "general.jsonl"))
    cfg = cfg.replace(regmix=RegmixConfig(proposals=4))
    assert dict(cfg.constraints) == {"general": "random"}
    assert dict(regmix_config(cfg, tmp_path).constraints) == {}  # RegMix as published


def test_the_constraint_margin_must_not_be_negative(mds_ds):
    with pytest.raises(SearchConfigError, match="constraint_margin"):
        tiny_config(mds_ds, constraint_margin=-0.01)


def test_coverage_is_reported_and_warned(rounds_run):
    out, lines = rounds_run
    cov = RunFolder(out).coverage()
    assert cov["proxies"] == 32 and 0 < cov["min"] <= cov["median"] <= cov["max"]
    assert any(line.startswith("documents per proxy: min") for line in lines)
    warn = [line for line in lines if line.startswith("WARNING: proxies saw a median")]
    assert warn and "proxy.doc_tokens" in warn[-1]  # the threshold (10,000) is above any median
    assert "WARNING: proxies saw a median" in (out / "report" / "report.md").read_text()


def test_no_coverage_warning_above_the_threshold(mds_ds, tmp_path):
    cfg = tiny_config(mds_ds, proposals={"n": 2}, coverage_min_docs=20).replace(regmix=None)
    folder = step_propose(tmp_path / "run", cfg, log=lambda s: None)
    for i, docs in enumerate((30, 50)):
        folder.record(
            {"name": folder.run_name(i), "status": "ok", "loss": 1.0, "unique_docs": docs}
        )
    assert coverage_lines(folder) == ["documents per proxy: min 30, median 40, max 50 (2 proxies)"]
    folder.record({"name": folder.run_name(1), "status": "ok", "loss": 1.0, "unique_docs": 8})
    assert "median of 19 documents (< coverage_min_docs=20)" in coverage_lines(folder)[1]


def test_a_best_region_at_a_range_bound_is_flagged(mds_ds, tmp_path):
    ranges = {"lam": [0, 100], "omega": [0, 0.1], "eta": [0, 1], "eps": [0, 0.02]}
    cfg = tiny_config(mds_ds, proposals={"n": 2, "ranges": ranges}).replace(regmix=None)
    folder = step_propose(tmp_path / "run", cfg, log=lambda s: None)
    m, n = len(folder.domains), len(folder.scorers)
    best = np.tile(folder.proposals()[2][:1], (10, 1))
    omega = slice(m * n + m, m * n + 2 * m)
    best[:, omega] = 0.05
    assert boundary(folder, best) == [] or all(
        b["param"] != "omega" for b in boundary(folder, best)
    )
    best[:, omega] = 0.099  # the best region presses on ω's cap
    flags = {b["param"]: b for b in boundary(folder, best)}
    assert "omega" in flags and "widen proposals.ranges.omega" in flags["omega"]["message"]
    assert "[0, 0.2]" in flags["omega"]["message"]
    # ω's range ending at 1 cannot be widened: no flag
    wide = tiny_config(mds_ds, proposals={"n": 2}).replace(regmix=None)
    folder = step_propose(tmp_path / "run2", wide, log=lambda s: None)
    best[:, omega] = 1.0
    assert all(b["param"] != "omega" for b in boundary(folder, best))


def test_a_round_spreads_its_proxies_over_the_anchors():
    pred = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    groups = np.array([0, 0, 0, 0, 1, 2, 1])
    assert spread_best(pred, groups, 3).tolist() == [0, 4, 5]  # one per anchor, best first
    assert spread_best(pred, groups, 6).tolist() == [0, 1, 2, 4, 5, 6]  # caps, then the best
    assert spread_best(pred, np.zeros(7, dtype=int), 2).tolist() == [0, 1]
