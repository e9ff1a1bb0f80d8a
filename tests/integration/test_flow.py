"""`quadmix-stream run` with held-out sets and seeds, end to end on a tiny raw corpus."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from quadmix_stream.flow.run import run_flow
from quadmix_stream.formats.labels import Manifest, load_labels
from quadmix_stream.mixing.hashing import doc_key
from quadmix_stream.mixing.params import SamplingParams, domain_mixture
from quadmix_stream.recipe import RecipeError
from quadmix_stream.search.runfolder import RunFolder
from quadmix_stream.synth import iter_docs


def _flow(tmp: Path) -> Path:
    raw = tmp / "raw"
    raw.mkdir()
    docs = [d for d, *_ in iter_docs(60, seed=0)]
    for k, part in enumerate((docs[:150], docs[150:])):
        with gzip.open(raw / f"part{k}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(d) + "\n" for d in part)
    label = {
        "input": {"paths": ["{out}/../heldout/pool/*.jsonl.gz"]},
        "output": {"format": "mds", "rows_per_shard": 100},
        "domains": ["arith", "chat", "code", "facts", "story"],
        "labelers": {
            "domain": {"type": "field", "field": "domain"},
            "tokens": "whitespace",
            "scorers": [
                {"name": "gopher", "type": "heuristic"},
                {
                    "name": "level",
                    "type": "field",
                    "field": "quality_level",
                    "higher_is_better": False,
                },
            ],
        },
        "run": {"io_workers": 0, "progress": False},
    }
    proxy = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    search = {
        "search": {
            "dataset": "unused",
            "proposals": {"n": 12, "seed": 1},
            "tokenizer": {"vocab_size": 300, "max_docs": 200},
            "proxy": {
                "model": proxy,
                "seq_len": 32,
                "batch_size": 4,
                "tokens": 4 * 32 * 8,
                "eval_max_tokens": 1024,
                "group": 4,
                "threads": 1,
                "device": "cpu",
            },
            "regressor": {"features": "profile", "kfold": 2},
            "select": {"n": 2000, "top_k": 3, "verify": 1},
            "regmix": {"proposals": 12},
            "objective": {"target": 1.0, "general": 0.5},  # the flow passes its `general` set
            "evaluate": True,
        }
    }
    flow = {
        "out": str(tmp / "out"),
        "split": {
            "corpus": "raw/*.jsonl.gz",
            "seed": 0,
            "sets": {
                "target": {"docs": 20, "domains": ["arith", "facts"]},
                "general": {"docs": 20, "exclude_domains": ["arith", "facts"]},
                "target_search": {"docs": 20, "domains": ["arith", "facts"]},
            },
        },
        "label": "label.yaml",
        "target": {"heldout": "target"},
        "search_target": {"heldout": "target_search"},  # the search never sees `target`
        "evals": {"general": {"heldout": "general"}},
        "search": "search.yaml",
        "train": {
            "data": {"seq_len": 32, "workers": 0, "vocab_size": 300},
            "model": {
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
            },
            "train": {
                "steps": 4,
                "batch_size": 4,
                "eval_every": 2,
                "eval_doc_tokens": 8,
                "checkpoint_every": 4,
                "threads": 1,
            },
        },
        "compare": ["random", "theta-star"],  # a baseline, and a search candidate
        "seeds": [0, 1],
    }
    for name, body in (("label", label), ("search", search), ("flow", flow)):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(body))
    return tmp / "flow.yaml"


@pytest.mark.slow
def test_flow_holds_out_evaluates_every_set_and_reports_seeds(tmp_path):
    out = run_flow(_flow(tmp_path))
    held = [
        json.loads(x)["id"]
        for name in ("target", "general", "target_search")
        for x in (out / "heldout" / f"{name}.jsonl").read_text().splitlines()
    ]
    lab = load_labels(out / "data", Manifest.load(out / "data"))
    assert len(lab.key) == 300 - 60  # the pool is the corpus minus the held-out sets
    searched = json.loads((out / "search" / "search.json").read_text())
    assert searched["target"]["path"] == str(out / "heldout" / "target_search.jsonl")
    assert not np.isin(np.array([doc_key(i) for i in held], dtype=np.uint64), lab.key).any()
    res = json.loads((out / "results.json").read_text())
    assert set(res) == {"quadmix", "random", "theta-star"}
    for r in res.values():
        assert set(r["seeds"]) == {"0", "1"}
        for losses in r["seeds"].values():
            assert set(losses) == {"target", "general"} and all(
                math.isfinite(v) for v in losses.values()
            )
        assert 0 < r["selected"]["unique"] <= r["selected"]["pool"]
    # seeds differ (init and data order), methods share the tokenizer and the token budget
    assert res["random"]["seeds"]["0"] != res["random"]["seeds"]["1"]
    assert res["random"]["selected"]["unique"] == res["random"]["selected"]["pool"]
    report = (out / "report.md").read_text()
    assert "| random | " in report and " ± " in report and (out / "results.png").exists()
    # every held-out document is evaluated (8 tokens of each), and the report says so
    assert "over target: 20 of 20 documents" in report and "general: 20 of 20" in report
    # passes over the unique selection: training tokens / (unique label tokens × ratio)
    row = next(x for x in report.splitlines() if x.startswith("| random | "))
    ratio = float(re.search(r"unique tokens × ([0-9.]+),", report).group(1))
    passes = res["random"]["tokens"] / (res["random"]["selected"]["unique"] * ratio)
    assert row.endswith(f" {passes:.1f} |") and 0.5 < ratio < 10
    assert (out / "train-quadmix-seed1" / "log.jsonl").exists()
    # θ* trained once when it is what shipped (the same stream), else beside it
    from quadmix_stream.search.select import STAR  # the search extra: imported where it is used

    if json.loads((out / "search" / "selection.json").read_text())["shipped"]["name"] == STAR:
        assert res["theta-star"]["same_stream_as"] == "quadmix"
        assert res["theta-star"]["seeds"] == res["quadmix"]["seeds"]
        assert not (out / "train-theta-star-seed0").exists() and "theta-star (= quadmix)" in report
    else:
        assert (out / "train-theta-star-seed0" / "log.jsonl").exists()
    # the search's verification proxies ranked beside the full-size trainings
    agreement = json.loads((out / "rank_agreement.json").read_text())
    assert agreement["search_target"] == "target_search.jsonl"
    assert "The search's `target` is `target_search.jsonl`" in report
    ranks = agreement["screening"]
    shipped = json.loads((out / "search" / "selection.json").read_text())["shipped"]
    assert set(ranks["methods"]) == {"quadmix", "random", "theta-star"}
    assert ranks["proxy"]["quadmix"] == shipped["measured"][shipped["name"]]["objective"]
    full = np.mean([s["target"] + 0.5 * s["general"] for s in res["random"]["seeds"].values()])
    assert ranks["full"]["random"] == pytest.approx(full)
    assert "## Do the search's measurements rank the methods as these trainings do?" in report
    assert f"proxies: Spearman over 3 methods **{ranks['spearman_vs_full']:+.2f}**" in report
    first = json.loads((out / "times.json").read_text())
    assert set(first) == {"split", "label", "search"}
    assert "- train-quadmix-seed1: " in report and "- label: " in report
    _, y, recs = RunFolder(out / "search").table()
    for v, r in zip(y, recs, strict=True):  # the search minimised target + 0.5 · general
        assert v == pytest.approx(r["losses"]["target"] + 0.5 * r["losses"]["general"])
    # a re-run resumes every step; with other training settings it refuses the old checkpoints
    recipe = tmp_path / "flow.yaml"

    def records(event: str | None) -> dict:  # training steps (event None), or one event
        return {
            p.parent.name: [
                x for x in map(json.loads, p.read_text().splitlines()) if x.get("event") == event
            ]
            for p in out.glob("train-*/log.jsonl")
        }

    before = records(None)
    run_flow(recipe)
    assert records(None) == before  # no step trained again
    resumed = [r for rs in records("resume").values() for r in rs]
    assert len(resumed) == 6 and all(r["exact"] and "switch" not in r for r in resumed)
    assert (
        json.loads((out / "results.json").read_text())["quadmix"]["seeds"]
        == res["quadmix"]["seeds"]
    )
    # a flow folder moved elsewhere resumes every step: labelling, search and trainings
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.copytree(out, moved)
    done = [*moved.glob("data/.quadmix-label/done/*.json"), *moved.glob("search/proxies/*.json")]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    run_flow(recipe, moved)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no unit or proxy done again
    assert len(stamps) > 10
    relocated = {
        p.parent.name: [x for x in map(json.loads, p.read_text().splitlines()) if "event" not in x]
        for p in moved.glob("train-*/log.jsonl")
    }
    assert relocated == before  # no step trained again
    # … and with other training settings it refuses the old checkpoints
    body = yaml.safe_load(recipe.read_text())
    body["train"]["train"]["steps"] = 6
    recipe.write_text(yaml.safe_dump(body))
    with pytest.raises(RecipeError, match="trained with other settings"):
        run_flow(recipe)
    again = json.loads((out / "times.json").read_text())  # the failed re-run's time counts too
    assert all(again[k] > first[k] for k in ("split", "label", "search"))


def test_params_of_the_same_stream_are_trained_once(tmp_path):
    from quadmix_stream.flow.run import same_streams

    d, sc = ["a", "b"], ["q"]
    SamplingParams.keep_all(d, sc).save(tmp_path / "x.json")
    dataclasses.replace(SamplingParams.keep_all(d, sc), provenance="other words").save(
        tmp_path / "y.json"
    )
    domain_mixture(d, sc, [2.0, 1.0], "more of a").save(tmp_path / "z.json")
    runs = {k: tmp_path / f"{k}.json" for k in "xzy"}
    assert same_streams(runs) == {"y": "x"}


def test_flow_recipe_errors_name_the_key(tmp_path):
    from quadmix_stream.flow.run import _evals, _search_target, _seeds

    with pytest.raises(RecipeError, match="seeds"):
        _seeds(["a"])
    with pytest.raises(RecipeError, match="no held-out set 'x'"):
        _evals({"g": {"heldout": "x"}}, tmp_path, tmp_path)
    (tmp_path / "e.jsonl").write_text('{"text": "x"}\n')
    assert _evals({"e": {"path": "e.jsonl"}}, tmp_path, tmp_path / "out") == {
        "e": str(tmp_path / "e.jsonl")
    }
    assert _search_target(None, tmp_path, tmp_path) is None
    with pytest.raises(RecipeError, match="search_target.heldout: no held-out set 'x'"):
        _search_target({"heldout": "x"}, tmp_path, tmp_path)
    with pytest.raises(RecipeError, match="search_target: give"):
        _search_target("x.jsonl", tmp_path, tmp_path)
    (tmp_path / "f.yaml").write_text("label: l.yaml\nsplits: {}\n")
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['splits'\]"):
        run_flow(tmp_path / "f.yaml")
