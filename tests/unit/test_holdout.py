"""Held-out evaluation sets: disjoint from the pool, uniform by id hash, independent of file order."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.recipe import RecipeError
from quadmix_stream.training.holdout import (
    HeldOutSet,
    SplitConfig,
    choose_heldout,
    parse_split,
    split_corpus,
    split_matches,
)
from tests.conftest import requires_shared_data

pytestmark = pytest.mark.core


def _write(path: Path, docs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path


def _corpus(tmp: Path) -> list[Path]:
    a = [{"id": f"a/{i}", "text": f"alpha {i}", "domain": "wiki"} for i in range(60)]
    b = [
        {"id": f"b/{i}", "text": f"beta {i}", "domain": "web", "meta": {"x": i}} for i in range(90)
    ]
    return [_write(tmp / "a.jsonl.gz", a), _write(tmp / "b.jsonl.gz", b)]


CFG = SplitConfig(
    sets={
        "target": HeldOutSet(docs=10, domains=("wiki",)),
        "general": HeldOutSet(docs=15, exclude_domains=("wiki",)),
    },
    seed=3,
)


def _ids(path: Path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text().splitlines()]


def _pool_ids(folder: Path) -> list[str]:
    out = []
    for f in sorted((folder / "pool").glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            out += [json.loads(x)["id"] for x in fh]
    return out


def test_split_partitions_the_corpus(tmp_path):
    files = _corpus(tmp_path)
    summary = split_corpus(files, tmp_path / "out", CFG)
    target, general = _ids(tmp_path / "out/target.jsonl"), _ids(tmp_path / "out/general.jsonl")
    pool = _pool_ids(tmp_path / "out")
    assert len(target) == 10 and all(i.startswith("a/") for i in target)
    assert len(general) == 15 and all(i.startswith("b/") for i in general)
    # every document is in exactly one place, and the pool keeps its lines as they were
    assert sorted(pool + target + general) == sorted(
        [f"a/{i}" for i in range(60)] + [f"b/{i}" for i in range(90)]
    )
    assert summary["pool_docs"] == 125
    with gzip.open(tmp_path / "out/pool/b.jsonl.gz", "rt") as fh:
        assert "meta" in json.loads(fh.readline())


def test_split_is_independent_of_file_order_and_resumes(tmp_path):
    files = _corpus(tmp_path)
    split_corpus(files, tmp_path / "x", CFG)
    split_corpus(list(reversed(files)), tmp_path / "y", CFG)
    assert _ids(tmp_path / "x/target.jsonl") == _ids(tmp_path / "y/target.jsonl")
    done = tmp_path / "x/split.json"
    before = done.stat().st_mtime_ns
    split_corpus(files, tmp_path / "x", CFG)  # same settings: nothing is rewritten
    assert done.stat().st_mtime_ns == before
    assert split_matches(files, done, CFG)
    other = SplitConfig(sets=CFG.sets, seed=4)  # other settings: a new, different split
    assert not split_matches(files, done, other)
    split_corpus(files, tmp_path / "x", other)
    assert _ids(tmp_path / "x/target.jsonl") != _ids(tmp_path / "y/target.jsonl")
    assert json.loads(done.read_text())["ident"]["config"]["seed"] == 4


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(5, 80),
    k1=st.integers(1, 5),
    k2=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_choose_heldout_disjoint_admitted_and_order_free(n, k1, k2, seed):
    ids = [f"d{i}" for i in range(n)]
    doms = ["x" if i % 3 == 0 else "y" for i in range(n)]
    cfg = SplitConfig(
        sets={"a": HeldOutSet(docs=k1, domains=("x",)), "b": HeldOutSet(docs=k2)}, seed=seed
    )
    if k1 > doms.count("x") or k1 + k2 > n:
        with pytest.raises(ValueError, match="only"):
            choose_heldout(ids, doms, cfg)
        return
    got = choose_heldout(ids, doms, cfg)
    a, b = set(got["a"].tolist()), set(got["b"].tolist())
    assert len(a) == k1 and len(b) == k2 and not a & b
    assert all(doms[i] == "x" for i in a)
    perm = list(range(n))[::-1]  # the same documents in another order: the same choice
    got2 = choose_heldout([ids[i] for i in perm], [doms[i] for i in perm], cfg)
    assert {ids[perm[i]] for i in got2["a"]} == {ids[i] for i in a}


def test_bad_split_input_is_named(tmp_path):
    with pytest.raises(RecipeError, match="split.sets.t.docs"):
        parse_split({"sets": {"t": {"docs": 0}}})
    with pytest.raises(RecipeError, match="unknown key"):
        parse_split({"sets": {"t": {"docs": 3, "domain": ["x"]}}})
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write('{"id": "1", "text": "ok"}\n{"id": 2\n')
    with pytest.raises(ValueError, match=r"bad.jsonl.gz:2 is not a JSON document"):
        split_corpus([bad], tmp_path / "o", SplitConfig(sets={"t": HeldOutSet(docs=1)}))
    assert not (tmp_path / "o" / "split.json").exists()


@requires_shared_data()
def test_table1_recipe_split_of_the_real_corpus(tmp_path):
    """The split of recipes/table1.yaml: held-out sets as documented, none of them in the pool."""
    import glob

    from quadmix_stream.recipe import read_yaml

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "table1.yaml"
    spec = read_yaml(recipe)["split"]
    files = [Path(f) for f in glob.glob(str(recipe.parent / spec["corpus"]))]
    summary = split_corpus(files, tmp_path, parse_split(spec))
    assert summary["pool_docs"] == 35_187 - 1100
    assert set(summary["sets"]["target"]["domains"]) == {"encyclopedic", "academic"}
    for name in ("general", "general_search"):
        assert not {"encyclopedic", "academic"} & set(summary["sets"][name]["domains"])
    held = [set(_ids(tmp_path / f"{n}.jsonl")) for n in ("target", "general", "general_search")]
    assert sum(map(len, held)) == len(set().union(*held)) == 1100
    assert not set().union(*held) & set(_pool_ids(tmp_path))
