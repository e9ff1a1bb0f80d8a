"""A data seed per proposal, and contenders verified over several seeds.

With ``proxy.seed_per_run`` each proposal reads its θ's stream with its own seed (the draw is
noise between proposals, not a smooth function of θ a regressor would fit); with
``select.seeds: N`` θ*, the candidates, the round bests and the baselines are each trained with
N seeds and the lowest *mean* ships.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.pipeline import step_evaluate
from quadmix_stream.search.proxy import ProxyJob, run_seed, train_one
from quadmix_stream.search.retest import retest_jobs
from quadmix_stream.search.runfolder import RunFolder
from quadmix_stream.search.runner import context
from quadmix_stream.search.select import eval_name, verify_seeds

from .test_search_rounds import rounds_config, run_rounds


def test_run_seeds_are_per_run_stable_and_off_unless_asked(mds_ds):
    shared = rounds_config(mds_ds, Path("g.jsonl")).proxy
    per = dataclasses.replace(shared, seed_per_run=True)
    assert {run_seed(shared, i) for i in range(50)} == {shared.data_seed}
    seeds = [run_seed(per, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and seeds == [run_seed(per, i) for i in range(1000)]
    other = dataclasses.replace(per, data_seed=per.data_seed + 1)
    assert not set(seeds) & {run_seed(other, i) for i in range(1000)}
    # verification seeds are small integers, none a proposal's seed
    assert not set(range(per.data_seed, per.data_seed + 8)) & set(seeds)


@pytest.fixture(scope="module")
def seeded_run(mds_ds, tmp_path_factory) -> tuple[Path, list[str]]:
    return run_rounds(
        mds_ds,
        tmp_path_factory.mktemp("seeds"),
        proposals={"n": 12},
        rounds={"k": 1, "n": 4, "top": 2, "candidates": 1000, "shrink": 0.5},
        proxy={"seed_per_run": True},
        select={"n": 2000, "top_k": 4, "verify": 1, "seeds": 2},
    )


@pytest.mark.slow
def test_each_proposal_trains_on_its_own_seed(seeded_run):
    out, _ = seeded_run
    folder = RunFolder(out)
    cfg = folder.config.proxy
    recs = sorted(folder.finished().values(), key=lambda r: r["run"])
    assert [r["data_seed"] for r in recs] == [run_seed(cfg, r["run"]) for r in recs]
    # the recorded seed reproduces a proxy exactly; another seed draws other data
    ctx = context(folder)
    ids, _, theta = folder.proposals()
    params = folder.params_of(theta[0])
    again = train_one(ProxyJob("again", params, data_seed=recs[0]["data_seed"]), ctx)
    assert again["loss"] == pytest.approx(recs[0]["loss"], abs=1e-6)
    other = train_one(ProxyJob("other", params, data_seed=recs[0]["data_seed"] + 1), ctx)
    assert other["loss"] != pytest.approx(recs[0]["loss"], abs=1e-6)
    # a retest draws every proposal's seed again, from another base
    jobs, _ = retest_jobs(folder, 4, dataclasses.replace(cfg, data_seed=cfg.data_seed + 1))
    assert all(j.data_seed != r["data_seed"] for j, r in zip(jobs, recs, strict=False))
    assert "a data seed of its own per proposal" in (out / "report" / "report.md").read_text()


@pytest.mark.slow
def test_contenders_ship_by_their_mean_over_seeds(seeded_run):
    out, lines = seeded_run
    folder = RunFolder(out)
    seeds = verify_seeds(folder.config)
    assert seeds == [0, 1]
    evals = folder.finished("evals")
    shipped = SamplingParams.load(out / "params.json").extra["search"]["shipped"]
    names = {"theta-star", "cand-01", "best-round-0", "best-round-1", "random"}
    assert names <= set(shipped["measured"]) and shipped["seeds"] == seeds
    for name, m in shipped["measured"].items():
        recs = [evals[eval_name(name, s)] for s in range(2)]
        assert [r["data_seed"] for r in recs] == seeds
        objs = [r["losses"]["target"] + 0.5 * r["losses"]["general"] for r in recs]
        assert m["objectives"] == pytest.approx(objs) and m["objective"] == pytest.approx(
            np.mean(objs)
        )
        assert objs[0] != pytest.approx(objs[1], abs=1e-6)  # two draws, two measurements
    # the round bests were trained again on the verification seeds (none is a proposal's seed)
    best0 = evals["best-round-0"]
    assert "copied_from" not in best0
    assert json.loads((out / "selection.json").read_text())["round_bests"][0]["name"] == (
        "best-round-0"
    )
    text = SamplingParams.load(out / "params.json").provenance
    assert "(mean of 2 data seeds)" in text and "round bests on the same seeds: 0: " in text
    report = (out / "report" / "report.md").read_text()
    assert "trained with 2 data seeds (0, 1)" in report and "| sd | θ* − it" in report
    # constraints and the runner-up decided by a paired test over the seeds, and said
    assert set(shipped["constraint_checks"]) == set(shipped["measured"])
    assert shipped["constraints"]["general"]["test"].startswith("one-sided paired t-test")
    runner = shipped["runner_up"]
    assert runner["name"] in shipped["measured"] and runner["separable"] in (True, False)
    assert "Constraints (one-sided paired t-test" in report
    assert f"Runner-up {runner['name']}: " in report
    # θ* against each contender, paired by seed
    star = shipped["measured"]["theta-star"]["objectives"]
    for name, d in shipped["theta_star_minus"].items():
        diff = np.subtract(star, shipped["measured"][name]["objectives"])
        assert d["mean"] == pytest.approx(diff.mean())
        assert d["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(2))
    # a resumed evaluate trains nothing; a lost record is trained again, only that one
    lines.clear()
    step_evaluate(out, log=lines.append)
    assert any("already measured" in line for line in lines)
    (out / "evals" / "theta-star.s1.json").unlink()
    lines.clear()
    step_evaluate(out, log=lines.append)
    assert any(line.startswith("evaluate: training 1 proxies (theta-star.s1)") for line in lines)
    resumed = SamplingParams.load(out / "params.json").extra["search"]["shipped"]
    assert resumed["measured"]["theta-star"]["objectives"] == pytest.approx(
        shipped["measured"]["theta-star"]["objectives"], abs=1e-6
    )
    # a contender whose stream is θ*'s (θ equal to the 7th digit) is trained once
    star_p = SamplingParams.load(out / "candidates" / "theta-star.json")
    nudged = dataclasses.replace(star_p, eta=star_p.eta * (1 + 1e-7), lam=star_p.lam * (1 + 1e-7))
    nudged.save(out / "candidates" / "zz-twin.json")
    for s in range(2):
        (out / "evals" / f"{eval_name('theta-star', s)}.json").unlink()
    lines.clear()
    step_evaluate(out, log=lines.append)
    assert "evals: 2 of 4 runs read another run's stream; trained once" in lines
    evals = RunFolder(out).finished("evals")
    for s in range(2):
        twin, star = evals[eval_name("zz-twin", s)], evals[eval_name("theta-star", s)]
        assert twin["same_stream_as"] == star["name"] and twin["losses"] == star["losses"]
        assert twin["stream_fingerprint"] != star["stream_fingerprint"]


def test_a_moved_run_folder_resumes_and_a_changed_tokenizer_is_refused(mds_ds, tmp_path):
    """The nested RegMix search names its parent's tokenizer by path; a copied or moved run
    folder compares it by content, so it resumes; another tokenizer there is refused."""
    import shutil

    from quadmix_stream.search.pipeline import step_propose
    from quadmix_stream.search.runfolder import RunFolderError

    from .test_search_pipeline import tiny_config

    def cfg(out: Path):
        return tiny_config(mds_ds, proposals={"n": 4}, regmix={"proposals": 4}).replace(
            out=str(out)
        )

    step_propose(tmp_path / "a", cfg(tmp_path / "a"), log=lambda s: None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    lines: list[str] = []
    step_propose(tmp_path / "b", cfg(tmp_path / "b"), log=lines.append)
    assert any("4 proposals already drawn" in line for line in lines)
    tok = tmp_path / "b" / "tokenizer.json"
    tok.write_text(json.dumps(json.loads(tok.read_text()), indent=2))  # same vocab, other bytes
    with pytest.raises(RunFolderError, match="tokenizer differ"):
        step_propose(tmp_path / "b", cfg(tmp_path / "b"), log=lambda s: None)
