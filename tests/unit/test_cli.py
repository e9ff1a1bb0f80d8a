"""The command line: synth → inspect → sample, as documented."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import Manifest, load_labels
from quadmix_stream.mixing.params import SamplingParams

pytestmark = pytest.mark.core


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    for cmd in ("synth", "inspect", "sample", "bench"):
        assert cmd in out


def test_the_parser_imports_no_heavy_package():
    """Every command's `--help` (and every error in its flags) answers without loading torch or
    an extra: the parser imports only what its sub-commands need to describe themselves."""
    code = (
        "import sys, quadmix_stream.cli as c; c.build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers', 'lightgbm', 'matplotlib', 's3fs') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_synth_inspect_sample(tmp_path, capsys):
    ds = tmp_path / "ds"
    assert (
        main(
            [
                "synth",
                str(ds),
                "--format",
                "tar",
                "--docs-per-domain",
                "60",
                "--rows-per-shard",
                "50",
            ]
        )
        == 0
    )
    m = Manifest.load(ds)
    assert m.rows == 300 and m.format == "tar"
    assert (ds / "eval_sets" / "target.jsonl").exists()
    capsys.readouterr()
    assert main(["inspect", str(ds), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["docs"] == 300 and set(rep["domains"]) == set(m.domains)

    p = SamplingParams.propose(1, m.domains, m.scorer_names, seed=3, ranges={"omega": (0.5, 0.9)})[
        0
    ]
    p.save(tmp_path / "p.json")
    assert main(["inspect", str(ds), "--params", str(tmp_path / "p.json")]) == 0
    table = capsys.readouterr().out
    assert "repeats 0/1/2/3/4+" in table and "TOTAL" in table

    assert (
        main(
            [
                "sample",
                str(ds),
                "--params",
                str(tmp_path / "p.json"),
                "--seed",
                "4",
                "--out",
                str(tmp_path / "s.jsonl"),
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(rows) == 300
    assert (
        main(
            [
                "sample",
                str(ds),
                "--params",
                str(tmp_path / "p.json"),
                "--seed",
                "4",
                "--out",
                str(tmp_path / "s.parquet"),
                "--selected-only",
            ]
        )
        == 0
    )
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert Counter(dict(zip(t["key"], t["count"], strict=True))) == Counter(
        {r["key"]: r["count"] for r in rows if r["count"]}
    )
    lab = load_labels(ds, m)
    assert [r["key"] for r in rows] == lab.key.tolist()
    rep_json = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "quadmix_stream.cli",
                "inspect",
                str(ds),
                "--params",
                str(tmp_path / "p.json"),
                "--seed",
                "4",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert rep_json["totals"]["realised_docs"] == sum(r["count"] for r in rows)
    assert np.isclose(sum(d["realised_token_share"] for d in rep_json["domains"].values()), 1.0)


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no quadmix.json" in err and "Traceback" not in err
    ds = tmp_path / "ds"
    main(["synth", str(ds), "--format", "jsonl", "--docs-per-domain", "10"])
    p = SamplingParams.keep_all(["x", "y"], ["clean"])
    p.save(tmp_path / "p.json")
    assert (
        main(
            [
                "sample",
                str(ds),
                "--params",
                str(tmp_path / "p.json"),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "domains: params are for ['x', 'y']" in capsys.readouterr().err


def test_inspect_plot_and_mixture_meter(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # an extra's package: skipped in the core-only env
    from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs
    from quadmix_stream.stream.metrics import MixtureMeter

    ds_root = tmp_path / "ds"
    main(["synth", str(ds_root), "--format", "jsonl", "--docs-per-domain", "40"])
    m = Manifest.load(ds_root)
    p = SamplingParams.propose(1, m.domains, m.scorer_names, seed=2, ranges={"omega": (0.3, 0.8)})[
        0
    ]
    p.save(tmp_path / "p.json")
    assert (
        main(
            [
                "inspect",
                str(ds_root),
                "--params",
                str(tmp_path / "p.json"),
                "--plot",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    ds = QuaDMixDataset(ds_root, p, balance=None)
    meter = MixtureMeter(m.domains, ds.expected_mixture())
    items = list(ds)
    for i in range(0, len(items), 7):
        meter.update(collate_docs(items[i : i + 7]))
    s = meter.summary()
    real = ds.expected_mixture(epoch=0)
    for d in m.domains:
        assert s[d]["docs"] == real[d]["docs"] and s[d]["tokens"] == real[d]["tokens"]
    assert abs(sum(v["expected_share"] for v in s.values()) - 1) < 1e-9


def test_bench_scale_reads_counts_as_its_help_writes_them():
    import pytest

    from quadmix_stream.commands.bench import _counts
    from quadmix_stream.errors import UserError

    assert _counts("1M,10M,100000") == [1_000_000, 10_000_000, 100_000]
    with pytest.raises(UserError, match="--docs: 'MANY' is not a count"):
        _counts("many")
