"""Recipes read as YAML: an alias bomb is refused at once, aliases of a normal size still load,
and an error quotes at most ~200 characters of a value."""

from __future__ import annotations

import dataclasses
import time

import pytest

from quadmix_stream.recipe import REPR_LIMIT, RecipeError, build, read_yaml, short_repr

pytestmark = pytest.mark.core

# nine levels of nine aliases: 9**9 (387 million) strings once expanded
BILLION_LAUGHS = "\n".join(
    ['lol: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["train: {steps: *l8}"]
)


def test_a_billion_laughs_is_refused_quickly_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS)
    t0 = time.monotonic()
    with pytest.raises(RecipeError) as e:
        read_yaml(path)
    assert time.monotonic() - t0 < 0.5
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "aliases" in message
    assert "\n" not in message and len(message) < 300


def test_an_alias_inside_its_own_value_is_refused(tmp_path):
    path = tmp_path / "self.yaml"
    path.write_text("data: &d {paths: [a, *d]}\n")
    with pytest.raises(RecipeError, match=rf"^{path}: an alias \(\*name\) inside the value"):
        read_yaml(path)


def test_a_recipe_with_a_few_aliases_still_loads(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "defaults: &d {lr: 0.001, steps: 100, evals: [a.jsonl, b.jsonl]}\n"
        "train:\n  <<: *d\n  steps: 200\n"
        "proxy: *d\n"
    )
    data = read_yaml(path)
    assert data["train"] == {"lr": 0.001, "steps": 200, "evals": ["a.jsonl", "b.jsonl"]}
    assert data["proxy"] == data["defaults"]


def test_not_valid_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1\n  steps: {\n")
    with pytest.raises(RecipeError, match=rf"^{path}: not valid YAML \(line 2, column ") as e:
        read_yaml(path)
    assert "\n" not in str(e.value)


@dataclasses.dataclass(frozen=True)
class _Train:
    steps: int = 1
    name: str = "x"


def test_an_error_about_a_very_long_value_is_short(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(f"train: {{steps: [{', '.join(['123456789'] * 20_000)}]}}\n")
    raw = read_yaml(path)
    with pytest.raises(RecipeError) as e:
        build(_Train, raw["train"], str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: steps: expected an integer, got [123456789, ")
    assert len(message) < len(str(path)) + 40 + REPR_LIMIT
    assert "(220,000 characters)" in message  # the cut says how long the whole was
    with pytest.raises(RecipeError) as e:
        build(_Train, "s" * 100_000, "long.yaml: train")
    assert len(str(e.value)) < 60 + REPR_LIMIT


def test_short_values_are_quoted_whole():
    assert short_repr("many") == "'many'"
    assert short_repr([1, 2]) == "[1, 2]"
    long = short_repr("x" * 1000)
    assert len(long) == REPR_LIMIT and long.endswith("… (1,002 characters)")


def test_the_labelling_recipe_reads_through_the_checked_loader(tmp_path):
    from quadmix_stream.labelling.recipe import load_recipe

    path = tmp_path / "label.yaml"
    path.write_text(BILLION_LAUGHS.replace("train:", "input:"))
    with pytest.raises(RecipeError, match=rf"^{path}: its aliases"):
        load_recipe(path)
