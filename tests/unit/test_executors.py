"""The executor seam: its config, the command-line overrides, how labelling units become Ray
tasks, and the one-line error without the ray extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from quadmix_stream.executors import ExecutorConfig, ExecutorError
from quadmix_stream.labelling.inputs import Unit
from quadmix_stream.labelling.plan import Plan
from quadmix_stream.labelling.recipe import RecipeError, parse_recipe
from quadmix_stream.labelling.records import UnitState
from quadmix_stream.recipe import build

pytestmark = pytest.mark.core
HAVE_RAY = importlib.util.find_spec("ray") is not None


def test_defaults_are_local_and_bad_settings_say_which_key():
    assert ExecutorConfig().kind == "local"
    for bad, key in (
        ({"kind": "slurm"}, "executor.kind"),
        ({"cpus_per_task": -1}, "cpus_per_task"),
        ({"cpus_per_task": 0, "gpus_per_task": 0}, "some CPUs or GPUs"),
        ({"max_retries": -1}, "max_retries"),
        ({"num_cpus": 0}, "num_cpus"),
    ):
        with pytest.raises(ExecutorError, match=key):
            ExecutorConfig(**bad)
    assert ExecutorConfig(cpus_per_task=0, gpus_per_task=0.25).gpus_per_task == 0.25


def test_command_line_overrides_the_recipe():
    rec = ExecutorConfig(kind="ray", address="auto", gpus_per_task=0.5)
    assert rec.with_overrides() is rec
    assert rec.with_overrides("local").kind == "local"
    assert rec.with_overrides("local").gpus_per_task == 0.5
    joined = ExecutorConfig().with_overrides(address="ray://head:10001")
    assert (joined.kind, joined.address) == ("ray", "ray://head:10001")


def test_label_recipe_reads_the_executor_section(tmp_path: Path):
    base = {
        "input": {"synthetic": {"docs_per_domain": 2}},
        "output": {"dir": str(tmp_path / "o")},
        "labelers": {"domain": {"type": "field", "field": "domain"}, "scorers": [{"name": "q"}]},
    }
    assert parse_recipe(base, tmp_path).executor == ExecutorConfig()
    r = parse_recipe({**base, "executor": {"kind": "ray", "cpus_per_task": 2}}, tmp_path)
    assert (r.executor.kind, r.executor.cpus_per_task) == ("ray", 2)
    with pytest.raises(RecipeError, match="executor"):
        parse_recipe({**base, "executor": {"kind": "ray", "adress": "auto"}}, tmp_path)
    with pytest.raises(RecipeError, match="recipe.executor: executor.kind must be one of"):
        parse_recipe({**base, "executor": {"kind": "dask"}}, tmp_path)


def test_search_recipe_reads_the_executor_section():
    from quadmix_stream.search.config import SearchConfig

    cfg = SearchConfig.from_dict(
        {"dataset": "/d", "executor": {"kind": "ray", "gpus_per_task": 0.25}}
    )
    assert (cfg.executor.kind, cfg.executor.gpus_per_task) == ("ray", 0.25)
    assert "executor" not in cfg.proxy_identity()  # an executor change keeps finished proxies
    assert build(ExecutorConfig, {"kind": "ray"}, "x", ExecutorError).kind == "ray"


def _plan(units: list[Unit]) -> Plan:
    return Plan(
        mode="new", format="mds", compression=None, rows_per_shard=10, units=units, inputs=[]
    )


def test_units_become_tasks_and_sequential_inputs_stay_together():
    from quadmix_stream.labelling.ray_run import task_groups

    units = [
        Unit(0, "a.jsonl", 0, 10, byte_start=0),  # plain JSONL: seekable, a task each
        Unit(1, "a.jsonl", 10, 20, byte_start=400),
        Unit(2, "b.jsonl.gz", 0, 10),  # compressed: read front to back, one task
        Unit(3, "b.jsonl.gz", 10, 20),
        Unit(4, "c.parquet", 0, 10),  # row groups: a task each
        Unit(5, "c.parquet", 10, 20),
        Unit(6, "d.jsonl.gz", 0, 10),
    ]
    work = [UnitState(u.index, "pending") for u in units]
    groups = [[s.unit for s in g] for g in task_groups(work, _plan(units))]
    assert groups == [[0], [1], [2, 3], [4], [5], [6]]
    # finished units are not in the work list: the rest of a compressed file still shares a task
    groups = [[s.unit for s in g] for g in task_groups(work[3:], _plan(units))]
    assert groups == [[3], [4], [5], [6]]


@pytest.mark.skipif(HAVE_RAY, reason="checks the message shown when the ray extra is missing")
def test_executor_ray_without_the_extra_is_one_line(tmp_path: Path, capsys):
    from quadmix_stream.cli import main

    d = tmp_path / "docs.jsonl"
    d.write_text('{"id": "a", "text": "one two", "domain": "x", "q": 1}\n')
    rc = main(
        [
            "label",
            "--input",
            str(d),
            "--out",
            str(tmp_path / "o"),
            "--executor",
            "ray",
            "--domain",
            "type=field,field=domain",
            "--domains",
            "x",
            "--scorer",
            "type=field,field=q,name=q",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "pip install 'quadmix-stream[ray]'" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was planned or written
