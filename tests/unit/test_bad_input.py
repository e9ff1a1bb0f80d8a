"""Bad input gives one clear error naming the file and the field, never a traceback or a write
outside the dataset folder."""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import (
    LabelError,
    Manifest,
    ScorerInfo,
    ShardEntry,
    ShardLabels,
    write_sidecar,
)
from quadmix_stream.formats.mds import mds_index
from quadmix_stream.formats.shards import DatasetWriter
from quadmix_stream.mixing.params import ParamsError, SamplingParams
from quadmix_stream.mixing.sampling import SigmaTable
from quadmix_stream.synth import iter_docs

REPO = Path(__file__).resolve().parents[2]
LABEL_FLAGS = [
    "--domain",
    "type=field,field=domain",
    "--domains",
    "arith,facts,code,story,chat",
    "--scorer",
    "name=h,type=heuristic",
    "--tokens",
    "whitespace",
    "--io-workers",
    "0",
    "--no-progress",
]


def _write_ds(root: Path, fmt: str, n: int = 6, rows_per_shard: int = 3) -> Path:
    """A small labelled dataset of synthetic documents."""
    with DatasetWriter(
        root, fmt, ["arith", "facts", "code", "story", "chat"], [ScorerInfo("q")], rows_per_shard
    ) as w:
        for i, (doc, domain, _level, scores, tokens) in enumerate(iter_docs(2, 0)):
            if i == n:
                break
            w.write(doc, domain, scores[:1], tokens)
    return root


def _unlabelled_mds(root: Path) -> Path:
    """An MDS dataset as another tool would leave it: shards and index.json, no labels."""
    _write_ds(root, "mds")
    for p in root.iterdir():
        if p.name == "quadmix.json" or p.name.endswith(".labels.npz"):
            p.unlink()
    return root


@pytest.fixture(scope="module")
def manifest_dict(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = _write_ds(tmp_path_factory.mktemp("m") / "ds", "jsonl")
    return json.loads((root / "quadmix.json").read_text())


# ---------------------------------------------------------------- item 2: paths stay inside
@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_label_refuses_index_basename_outside_the_folder(tmp_path, capsys, how):
    ds = _unlabelled_mds(tmp_path / "ds")
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copy(ds / "shard.00000.mds", victim / "shard.00000.mds")
    index = json.loads((ds / "index.json").read_text())
    bad = "../victim/shard.00000.mds" if how == "dotdot" else str(victim / "shard.00000.mds")
    index["shards"][0]["raw_data"]["basename"] = bad
    (ds / "index.json").write_text(json.dumps(index))
    before = sorted(p.name for p in victim.iterdir())
    assert main(["label", "--shards", str(ds), *LABEL_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "index.json: shards[0].raw_data.basename" in err and bad in err
    assert "Traceback" not in err
    assert sorted(p.name for p in victim.iterdir()) == before  # nothing written outside
    assert not (ds / "quadmix.json").exists()


@pytest.mark.parametrize(
    "field,value",
    [("name", "../x/shard.jsonl.zst"), ("sidecar", "/tmp/x.labels.npz"), ("name", "")],
)
def test_manifest_refuses_shard_paths_outside_the_folder(tmp_path, manifest_dict, field, value):
    d = json.loads(json.dumps(manifest_dict))
    d["shards"][1][field] = value
    (tmp_path / "quadmix.json").write_text(json.dumps(d))
    with pytest.raises(LabelError, match=rf"quadmix.json: shards\[1\]\.{field}: "):
        Manifest.load(tmp_path)


def test_resolve_inside_refuses_symlinked_folder_out(tmp_path):
    from quadmix_stream.storage.io import UnsafePathError, resolve_inside

    (tmp_path / "root").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "root" / "sub").symlink_to(tmp_path / "out")
    assert resolve_inside(tmp_path / "root", "a/b.mds", "x") == tmp_path / "root" / "a" / "b.mds"
    with pytest.raises(UnsafePathError, match="x: 'sub/f.mds' lands outside"):
        resolve_inside(tmp_path / "root", "sub/f.mds", "x")


def test_labelling_record_with_a_path_outside_is_refused(tmp_path):
    from quadmix_stream.labelling.records import Record, unit_state, write_record

    root = tmp_path / "ds"
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "s.mds").write_bytes(b"x")
    shard = {"name": "../victim/s.mds", "sidecar": "s.labels.npz", "sha256": "0", "bytes": 1}
    write_record(root, Record(0, "s.mds", 1, shard, "0", {"q": "f"}, ["q"]))
    with pytest.raises(LabelError, match=r"unit-00000.json: shard.name: '../victim/s.mds'"):
        unit_state(root, 0, {"q": "f"}, ["q"])


# ---------------------------------------------------------------- item 6: malformed manifests
def _del(d: dict, *path: object) -> None:
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


def _set(d: dict, value: object, *path: object) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


MANIFEST_CASES = {
    "a list": (lambda d: [d], r"quadmix.json: expected an object, got array"),
    "no shards": (lambda d: _del(d, "shards"), r"quadmix.json: missing field 'shards'"),
    "no domains": (lambda d: _del(d, "domains"), r"quadmix.json: missing field 'domains'"),
    "shard without rows": (
        lambda d: _del(d, "shards", 0, "rows"),
        r"quadmix.json: shards\[0\]: missing field 'rows'",
    ),
    "extra key": (lambda d: _set(d, 1, "oops"), r"quadmix.json: unknown field \['oops'\]"),
    "extra shard key": (
        lambda d: _set(d, 1, "shards", 1, "oops"),
        r"quadmix.json: shards\[1\]: unknown field \['oops'\]",
    ),
    "string sigma knot": (
        lambda d: _set(d, "high", "sigma", "q", "knots", 2),
        r"quadmix.json: sigma\['q'\]\.knots\[2\]: expected a number, got string 'high'",
    ),
    "negative rows": (
        lambda d: _set(d, -3, "shards", 0, "rows"),
        r"quadmix.json: shards\[0\]\.rows: expected an integer ≥ 0, got -3",
    ),
    "scorers not a list": (
        lambda d: _set(d, "q", "scorers"),
        r"quadmix.json: scorers: expected an array, got string",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_malformed_manifest_is_a_label_error_naming_file_and_field(tmp_path, manifest_dict, case):
    change, pattern = MANIFEST_CASES[case]
    d = json.loads(json.dumps(manifest_dict))
    out = change(d)
    (tmp_path / "quadmix.json").write_text(json.dumps(d if out is None else out))
    with pytest.raises(LabelError, match=pattern) as e:
        Manifest.load(tmp_path)
    assert str(tmp_path / "quadmix.json") in str(e.value)


@pytest.mark.parametrize(
    "data,pattern",
    [
        (b'{"schema": "caf\xe9"}', r"quadmix.json: the manifest is not UTF-8 text \(byte 15"),
        (b"{]", r"quadmix.json: the manifest is not valid JSON \(line 1, column 2"),
        (b'{"rows": ' + b"9" * 5000 + b"}", r"quadmix.json: the manifest holds a value that"),
    ],
)
def test_unreadable_manifest_bytes(tmp_path, data, pattern):
    (tmp_path / "quadmix.json").write_bytes(data)
    with pytest.raises(LabelError, match=pattern):
        Manifest.load(tmp_path)


def test_manifest_round_trip_still_loads(tmp_path, manifest_dict):
    (tmp_path / "quadmix.json").write_text(json.dumps(manifest_dict))
    m = Manifest.load(tmp_path)
    assert m.to_dict() == manifest_dict
    assert isinstance(m.shards[0], ShardEntry) and m.scorers == [ScorerInfo("q")]


def test_malformed_mds_index_names_the_file(tmp_path, capsys):
    ds = _unlabelled_mds(tmp_path / "ds")
    (ds / "index.json").write_text("{]")
    with pytest.raises(LabelError, match=r"index.json: the MDS index is not valid JSON"):
        mds_index(ds)
    assert main(["label", "--shards", str(ds), *LABEL_FLAGS]) == 2
    err = capsys.readouterr().err
    assert f"{ds / 'index.json'}: the MDS index is not valid JSON" in err
    assert "Traceback" not in err
    (ds / "index.json").write_text(json.dumps({"shards": [{"raw_data": {"basename": 3}}]}))
    with pytest.raises(LabelError, match=r"index.json: shards\[0\]: missing fields 'column_names'"):
        mds_index(ds)


# ---------------------------------------------------------------- item 7: params files
def _params() -> SamplingParams:
    return SamplingParams.keep_all(["web", "code"], ["dclm", "edu"])


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("binary", r"p.json: the params file is not UTF-8 text .*binary file"),
        ("per_domain list", r"p.json: per_domain: expected an object, got array"),
        ("entry number", r"p.json: per_domain\['code'\]: expected an object, got number 3"),
        ("folder", r"p.json: is a folder, expected a params file"),
        ("list", r"p.json: params: expected an object, got array"),
        ("extra key", r"p.json: params: unknown field \['lamda'\]"),
        ("domains string", r"p.json: domains: expected an array, got string 'web'"),
    ],
)
def test_bad_params_files_name_file_and_field(tmp_path, case, pattern):
    path = tmp_path / "p.json"
    d = _params().to_dict()
    if case == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    elif case == "folder":
        path.mkdir()
    else:
        if case == "per_domain list":
            d["per_domain"] = list(d["per_domain"].values())
        elif case == "entry number":
            d["per_domain"]["code"] = 3
        elif case == "list":
            d = [d]
        elif case == "extra key":
            d["lamda"] = 1
        elif case == "domains string":
            d["domains"] = "web"
        path.write_text(json.dumps(d))
    with pytest.raises(ParamsError, match=pattern):
        SamplingParams.load(path)


def test_reorder_hint_only_when_the_names_are_the_same(tmp_path):
    p = _params()
    with pytest.raises(ParamsError) as e:  # same names in another order: the hint fits
        p.check_names(["code", "web"], ["edu", "dclm"])
    assert "use SamplingParams.reorder(domains, scorers)" in str(e.value)
    # domains only reordered, but a scorer differs: reorder() cannot help
    with pytest.raises(ParamsError) as e:
        p.reorder(["code", "web"], ["dclm", "fineweb"])
    msg = str(e.value)
    assert "reorder" not in msg and "regenerate the params" in msg
    assert "scorers: params are for ['dclm', 'edu']" in msg and "missing ['fineweb']" in msg
    with pytest.raises(ParamsError) as e:
        p.check_names(["web", "code"], ["dclm"])
    assert "reorder" not in str(e.value)


# ---------------------------------------------------------------- item 16: params fingerprint
def test_fingerprint_ignores_provenance_and_extra():
    from dataclasses import replace

    p = _params()
    assert replace(p, provenance="found by search 7", extra={"note": "x"}).fingerprint() == (
        p.fingerprint()
    )
    assert replace(p, eta=np.array([1.0, 0.5])).fingerprint() != p.fingerprint()
    assert replace(p, form="exponent").fingerprint() != p.fingerprint()
    q = p.reorder(["code", "web"], ["dclm", "edu"])
    assert q.fingerprint() != p.fingerprint()  # rows follow the names: another vector order


def test_resume_with_same_theta_and_other_provenance(tmp_path):
    from dataclasses import replace

    from quadmix_stream.stream.dataset import QuaDMixDataset

    ds_root = _write_ds(tmp_path / "ds", "jsonl", n=10, rows_per_shard=4)
    m = Manifest.load(ds_root)
    p = SamplingParams.keep_all(m.domains, m.scorer_names)
    full = [it["key"] for it in QuaDMixDataset(ds_root, p, seed=3, balance=None)]
    ds = QuaDMixDataset(ds_root, p, seed=3, balance=None)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(4)]
    state = json.loads(json.dumps(ds.state_dict()))
    resumed = QuaDMixDataset(
        ds_root, replace(p, provenance="same θ, saved again"), seed=3, balance=None
    )
    resumed.load_state_dict(state)  # not refused as "other params"
    assert head + [x["key"] for x in resumed] == full


# ---------------------------------------------------------------- item 10: 0-row dataset
def test_inspect_empty_dataset_is_a_clear_error(tmp_path, capsys):
    import zstandard

    ds = tmp_path / "empty"
    ds.mkdir()
    (ds / "shard.00000.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b""))
    empty = ShardLabels(
        key=np.zeros(0, np.uint64),
        domain=np.zeros(0, np.int32),
        tokens=np.zeros(0, np.int64),
        scores=np.zeros((0, 1)),
    )
    side_sha = write_sidecar(ds / "shard.00000.labels.npz", empty, ["q"])
    from quadmix_stream.storage.io import sha256_file

    shard = ds / "shard.00000.jsonl.zst"
    entry = ShardEntry(
        "shard.00000.jsonl.zst",
        "shard.00000.labels.npz",
        0,
        sha256_file(shard),
        side_sha,
        shard.stat().st_size,
    )
    sigma = {"q": SigmaTable(np.array([0.0]), np.array([0.5]), True)}
    Manifest("jsonl", ["a"], [ScorerInfo("q")], [entry], sigma).save(ds)
    assert main(["inspect", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "the dataset has 0 documents" in err and "Traceback" not in err


# ---------------------------------------------------------------- item 13: labelling inputs
def test_blank_lines_and_object_ids_are_counted_and_reported(tmp_path, capsys):
    docs = [d for d, *_ in iter_docs(2, 0)][:6]
    lines = [json.dumps(d) for d in docs[:3]]
    lines += ["", "   "]
    lines += [json.dumps({**docs[3], "id": {"shard": 1, "row": 3}})]
    lines += [json.dumps({**docs[4], "id": 12345}), json.dumps(docs[5]), ""]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = ["label", "--input", str(tmp_path / "in.jsonl"), "--out", str(out), "--format"]
    assert main([*args, "jsonl", *LABEL_FLAGS]) == 0
    summary = capsys.readouterr().out
    issues = Manifest.load(out).extra["labelling"]["issues"]
    assert issues["counts"]["blank_line"] == 3
    assert issues["examples"]["blank_line"] == ["in.jsonl:4", "in.jsonl:5", "in.jsonl:9"]
    assert issues["counts"]["non_string_id"] == 2
    assert issues["examples"]["non_string_id"] == ["in.jsonl:6", "in.jsonl:7"]
    assert Manifest.load(out).rows == 6  # the odd ids are labelled, the blank lines are not docs
    for kind in ("blank_line", "non_string_id"):
        (line,) = [x for x in summary.splitlines() if x.strip().startswith(kind)]
        assert "skipped" in line if kind == "blank_line" else "converted" in line


def test_failed_synth_leaves_nothing_and_a_rerun_works(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--docs-per-domain", "0"]) == 2
    assert "no documents were written" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())  # no index.json, no temp folder
    assert main(["synth", str(out), "--docs-per-domain", "4", "--rows-per-shard", "8"]) == 0
    assert Manifest.load(out).rows == 20 and (out / "index.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_missing_model_fails_before_creating_the_output_folder(tmp_path, capsys):
    docs = [d for d, *_ in iter_docs(1, 0)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    out = tmp_path / "new-out"
    missing = tmp_path / "models" / "quality.bin"
    flags = [
        f if f != "name=h,type=heuristic" else f"name=q,type=fasttext,path={missing}"
        for f in LABEL_FLAGS
    ]
    assert main(["label", "--input", str(tmp_path / "in.jsonl"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert f"labeller 'q' (fasttext): model path {missing} does not exist" in err
    assert not out.exists()


# ---------------------------------------------------------------- item 14: the CLI's errors
def _bug() -> int:
    return {"a": 1}["b"]  # a KeyError: what a bug looks like


def test_unexpected_errors_show_a_traceback(capsys):
    from quadmix_stream.cli import run_command

    assert run_command("demo", _bug) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'b'" in err
    assert "quadmix-stream demo: internal error (KeyError)" in err.splitlines()[-1]

    def plain_value_error() -> int:
        raise ValueError("not one of ours")

    assert run_command("demo", plain_value_error) == 1  # a plain ValueError is a bug too
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_a_read_only_or_full_disk_is_one_line(capsys, code):
    from quadmix_stream.cli import run_command

    def write() -> int:
        raise OSError(code, os.strerror(code), "/data/out/counts.parquet")

    assert run_command("sample", write) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "/data/out/counts.parquet" in err


def test_user_error_raised_deep_inside_is_one_line(tmp_path, capsys):
    """A UserError is one line wherever it is raised (here: the search's target-set reader)."""
    from quadmix_stream.cli import run_command
    from quadmix_stream.search.data import load_target_texts

    (tmp_path / "t.jsonl").write_text('{"text": ""}\n')
    assert run_command("search", lambda: load_target_texts(tmp_path / "t.jsonl")) == 2
    err = capsys.readouterr().err
    assert "t.jsonl: no text" in err and "Traceback" not in err


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"quadmix-stream inspect: error: {tmp_path}: no quadmix.json; is this a labelled "
        "dataset? (see `quadmix-stream label`)"
    ]
    for argv in (["--debug", "inspect", str(tmp_path)], ["inspect", str(tmp_path), "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "LabelError" in err
        assert err.strip().splitlines()[-1].startswith("quadmix-stream inspect: error: ")
    from quadmix_stream.cli import build_parser

    assert build_parser().parse_args(["search", "fit", "RUN", "--debug"]).debug  # nested command
    assert not build_parser().parse_args(["search", "fit", "RUN"]).debug
    (tmp_path / "p.json").write_bytes(b"\xff\xfe\x00")
    _write_ds(tmp_path / "ds", "jsonl")
    assert main(["inspect", str(tmp_path / "ds"), "--params", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "p.json: the params file is not UTF-8 text" in err and "Traceback" not in err


# ---------------------------------------------------------------- item 15: declared imports
def _third_party_imports() -> dict[str, str]:
    """Top-level module → first file importing it, over the package's source."""
    found: dict[str, str] = {}
    for root in ("quadmix_stream", "loaders", "trainers"):
        for f in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    found.setdefault(mod.split(".")[0], str(f.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    import sys

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [
        r for rs in project["optional-dependencies"].values() for r in rs
    ]

    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    declared = {
        norm(r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip())
        for r in reqs
    }
    dists = packages_distributions()
    # `tests`: bench remote starts the test suite's loopback S3 server from a source checkout
    own = {"quadmix_stream", "loaders", "trainers", "tests"}
    undeclared = {}
    for mod, where in _third_party_imports().items():
        if mod in own or mod in sys.stdlib_module_names or mod == "__future__":
            continue
        names = {norm(d) for d in dists.get(mod, [])}
        if not names & declared:
            undeclared[mod] = (where, sorted(names))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_no_private_mdswriter_api():
    pkg = REPO / "quadmix_stream"
    src = (pkg / "formats" / "shards.py").read_text() + (pkg / "formats" / "mds.py").read_text()
    assert "._reset_cache(" not in src and ".flush_shard(" not in src


@pytest.mark.parametrize("fmt", ["mds", "jsonl"])
def test_swapped_sidecars_with_rewritten_hashes_are_caught(tmp_path, fmt, mds_ds, jsonl_ds):
    """Labels must belong to the documents they are used for. Two sidecars of
    shards with the same row count, swapped, with the manifest's hashes rewritten to match:
    every per-file check passes, and the stream catches the mismatch at the first row read."""
    from quadmix_stream.stream.dataset import QuaDMixDataset

    root = tmp_path / "ds"
    shutil.copytree(mds_ds if fmt == "mds" else jsonl_ds, root)
    d = json.loads((root / "quadmix.json").read_text())
    a, b = d["shards"][0], d["shards"][1]
    assert a["rows"] == b["rows"]
    a["sidecar"], b["sidecar"] = b["sidecar"], a["sidecar"]
    a["sidecar_sha256"], b["sidecar_sha256"] = b["sidecar_sha256"], a["sidecar_sha256"]
    (root / "quadmix.json").write_text(json.dumps(d))
    m = Manifest.load(root)
    ds = QuaDMixDataset(root, SamplingParams.keep_all(m.domains, m.scorer_names), balance=None)
    with pytest.raises(LabelError, match=r"row \d+: the sidecar's key does not match"):
        list(ds)
