"""Every shipped recipe parses with the loader of its kind (typos are errors, not defaults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from quadmix_stream.recipe import read_yaml

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses(path):
    name = path.stem
    if name.startswith("pretrain"):
        from quadmix_stream.trainers.pretrain import load_config

        cfg = load_config(path)
        assert cfg.train.steps > 0 and cfg.data.seq_len > 0
    elif name.startswith("search"):
        from quadmix_stream.flow.run import _search_config

        raw = read_yaml(path)
        body = raw.get("search", raw)
        named = set(body.get("objective") or {}) | set(body.get("constraints") or {})
        # a search run by a flow gets the sets its objective names from the flow's `evals:`
        flow_sets = {k: f"{k}.jsonl" for k in named - {"target"} - set(body.get("evals") or {})}
        assert _search_config(path, flow_sets).proposals.n > 0
    elif name.startswith("label"):
        from quadmix_stream.labelling.recipe import load_recipe

        assert load_recipe(path).scorers
    else:  # a flow: its step recipes exist
        raw = read_yaml(path)
        for key in ("label", "search"):
            assert (path.parent / raw[key]).exists()


def test_recipe_errors_name_the_key(tmp_path):
    from quadmix_stream.recipe import RecipeError
    from quadmix_stream.trainers.pretrain import load_config

    bad = tmp_path / "r.yaml"
    bad.write_text("train: {steps: many}\n")
    with pytest.raises(RecipeError, match="r.yaml: train.steps: expected an integer, got 'many'"):
        load_config(bad)
    bad.write_text("train: {stepz: 3}\n")
    with pytest.raises(RecipeError, match=r"r.yaml: train: unknown key\(s\) \['stepz'\]"):
        load_config(bad)
    bad.write_text("train: {eval_sets: [a.jsonl]}\n")
    with pytest.raises(RecipeError, match=r"r.yaml: train: eval_sets: a mapping"):
        load_config(bad)
    bad.write_text("data: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "argv,body,where",
    [
        (
            ["label"],
            {"output": {"dri": "x"}},
            "output: unknown key(s) ['dri']; known: ['compression',",
        ),
        (["label"], {"run": {"progress": "false"}}, "run.progress: expected true or false"),
        (["search", "run"], {"proxy": {"stepz": 3}}, "proxy: unknown key(s) ['stepz']; known: ["),
        (["train"], {"train": {"stepz": 3}}, "train: unknown key(s) ['stepz']; known: ["),
        (["run"], {"labl": "x.yaml"}, "unknown key(s) ['labl']"),
    ],
)
def test_a_misspelt_key_is_one_line_naming_file_and_key(tmp_path, capsys, argv, body, where):
    """Every recipe kind (labelling, search, trainer, flow) goes through one checked loader."""
    from quadmix_stream.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main([*argv, str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(path) in line and where in line, line
