"""`quadmix-stream label`: new shards from raw documents, sidecars beside existing shards, bad
input, stale columns; every row checked against the bare labellers."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import Manifest, load_labels, read_sidecar
from quadmix_stream.labelling import FastTextLabeler, FieldLabeler, WhitespaceCounter
from quadmix_stream.labelling.recipe import parse_recipe
from tests.support.labelling import (  # noqa: F401
    FT_SMALL,
    check_alignment,
    dataset_files,
    ft_models,
    recipe_dict,
    synth_docs,
    write_jsonl,
    write_recipe,
)


def _labelers(models: dict) -> dict:
    return {
        "domain": FastTextLabeler(models["domain"], "domain", "domain"),
        "tokens": WhitespaceCounter(),
        "dclm": FastTextLabeler(models["quality"], "quality", "dclm", label="hq"),
        "level": FieldLabeler("quality_level", "quality", "level", higher_is_better=False),
    }


@pytest.mark.parametrize("fmt", ["mds", "tar", "jsonl"])
def test_label_synthetic_new_shards_row_aligned(tmp_path, ft_models, fmt, capsys):  # noqa: F811
    out = tmp_path / "ds"
    d = recipe_dict(ft_models, out)
    d["output"]["format"] = fmt
    d["run"]["io_workers"] = 1 if fmt == "mds" else 0  # the helper process and inline paths
    rec = write_recipe(tmp_path / "r.yaml", d)
    assert main(["label", str(rec)]) == 0
    printed = capsys.readouterr().out
    assert "labelled 200 documents in 5 of 5 units" in printed and "docs/s" in printed
    m = Manifest.load(out)
    assert m.format == fmt and m.rows == 200 and len(m.shards) == 5
    assert m.domains == ["arith", "chat", "code", "facts", "story"]
    assert [s.name for s in m.scorers] == ["dclm", "level"]
    assert m.scorers[1].higher_is_better is False and m.scorers[0].fingerprint.startswith(
        "fasttext:"
    )
    assert check_alignment(out, _labelers(ft_models)) == 200
    # documents in input order, nothing dropped
    lab = load_labels(out, m)
    from quadmix_stream.mixing.hashing import doc_key

    want = [doc_key(x["id"]) for x in synth_docs(40, seed=0)]
    assert lab.key.tolist() == want
    # the dataset opens in the loader and in inspect
    from quadmix_stream import QuaDMixDataset
    from quadmix_stream.mixing.params import SamplingParams

    p = SamplingParams.propose(1, m.domains, m.scorer_names, 0, ranges={"omega": (0.6, 0.9)})[0]
    items = list(QuaDMixDataset(out, p, seed=0, balance=None))
    assert items and all(set(it) >= {"id", "text", "meta", "domain"} for it in items)
    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    assert "arith" in table and "dclm" in table and "TOTAL" in table


def test_raw_inputs_jsonl_zst_parquet_and_bad_documents(tmp_path, ft_models):  # noqa: F811
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = synth_docs(8, seed=4)
    big = "word " * 30_000  # 150k chars: cut for fasttext (100k), every token counted
    lines = [json.dumps(d).encode() for d in docs[:10]]
    lines += [
        json.dumps({"id": "empty", "text": "", "domain": "chat"}).encode(),
        b'{"id": "latin1", "text": "caf\xe9 au lait", "domain": "chat"}',
        b"this is not json",
        json.dumps({"text": "no id here", "domain": "chat"}).encode(),
        json.dumps({"id": "notext", "domain": "chat"}).encode(),
        json.dumps({"id": "number", "text": 12345, "domain": "chat"}).encode(),
        b'{"id": "surrogate", "text": "bad \\ud800 half", "domain": "chat"}',
        json.dumps({"id": "huge", "text": big, "domain": "story"}).encode(),
        b"",
        b"[1, 2, 3]",
        json.dumps(docs[0]).encode(),  # the same document again: kept, and counted
    ]
    raw = tmp_path / "in"
    raw.mkdir()
    (raw / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines)))
    pq.write_table(pa.Table.from_pylist(docs[10:30]), raw / "b.parquet", row_group_size=7)
    with gzip.open(raw / "c.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(d) for d in docs[30:]))  # no trailing newline
    out = tmp_path / "ds"
    d = recipe_dict(ft_models, out, input={"paths": ["in/*"]})
    d["output"]["rows_per_shard"] = 8
    d["labelers"]["scorers"][1]["default"] = -1  # documents without quality_level: counted
    rec = write_recipe(tmp_path / "r.yaml", d)
    assert main(["label", str(rec)]) == 0
    m = Manifest.load(out)
    issues = m.extra["labelling"]["issues"]["counts"]
    assert issues == {
        "empty_text": 2,  # "" and the missing text
        "blank_line": 1,  # the empty line: not a document, skipped, counted
        "duplicate_id": 1,
        "invalid_json": 2,  # "this is not json" and a JSON array: not documents, skipped
        "invalid_utf8": 2,  # the Latin-1 byte and the lone surrogate
        "missing_id": 1,
        "missing_text": 1,
        "non_string_text": 1,
        "missing_field[level]": 7,
        "truncated[dclm]": 1,
        "truncated[domain]": 1,
    }
    ex = m.extra["labelling"]["issues"]["examples"]
    assert ex["invalid_json"] == ["a.jsonl.zst:13", "a.jsonl.zst:20"]
    assert ex["missing_id"] == ["a.jsonl.zst:14"]
    assert m.rows == 40 + 8  # every document kept: 10 + 7 odd ones + 1 repeated, 20, 10
    lab = load_labels(out, m)
    from quadmix_stream.formats import open_shard
    from quadmix_stream.formats.labels import Manifest as _M  # noqa: F401
    from quadmix_stream.formats.mds import mds_index

    rows = []
    idx = mds_index(out)
    for s in range(len(m.shards)):
        r = open_shard(out, m, s, None, None, idx)
        rows += [r.read(i) for i in range(m.shards[s].rows)]
    by_id = {r["id"]: (i, r) for i, r in enumerate(rows)}
    assert by_id["latin1"][1]["text"] == "caf\ufffd au lait"
    assert by_id["surrogate"][1]["text"] == "bad \ufffd half"
    assert by_id["number"][1]["text"] == "12345" and by_id["notext"][1]["text"] == ""
    assert "a.jsonl.zst:14" in by_id  # the id made from the location
    assert lab.tokens[by_id["huge"][0]] == 30_000 and lab.tokens[by_id["empty"][0]] == 0
    check_alignment(
        out,
        {
            **_labelers(ft_models),
            "level": FieldLabeler("quality_level", "quality", "level", default=-1),
        },
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("fmt", ["mds", "tar", "jsonl", "parquet"])
def test_sidecars_beside_existing_shards(tmp_path, ft_models, fmt, request):  # noqa: F811
    src = request.getfixturevalue(f"{fmt}_ds")
    ds = _copy(src, tmp_path / "ds")
    before = {p.name: p.read_bytes() for p in ds.iterdir() if p.name.startswith("shard.")}
    old = Manifest.load(ds)
    old_lab = load_labels(ds, old)
    d = recipe_dict(ft_models, tmp_path / "unused")
    d["input"] = {"shards": str(ds)}
    d["output"] = {}
    rec = write_recipe(tmp_path / "r.yaml", d)
    assert main(["label", str(rec)]) == 0
    m = Manifest.load(ds)
    for name, data in before.items():  # payload untouched; sidecars replaced
        if ".labels." not in name:
            assert (ds / name).read_bytes() == data
    assert [s.name for s in m.shards] == [s.name for s in old.shards]
    lab = load_labels(ds, m, verify_shards=True)
    assert np.array_equal(lab.key, old_lab.key) and m.rows == old.rows
    if fmt == "tar":
        assert np.array_equal(lab.offset, old_lab.offset)
        assert np.array_equal(lab.length, old_lab.length)
    assert m.extra["synthetic"] == old.extra["synthetic"]  # carried over
    assert check_alignment(ds, _labelers(ft_models)) == old.rows


def test_foreign_webdataset_tar_and_mds(tmp_path, ft_models):  # noqa: F811
    """Shards not written by us: WebDataset .text members without JSON, MDS without id/meta."""
    docs = synth_docs(6, seed=7)
    wds = tmp_path / "wds"
    wds.mkdir()
    for k in range(2):
        with tarfile.open(wds / f"part-{k}.tar", "w", format=tarfile.PAX_FORMAT) as tf:
            for i, doc in enumerate(docs[k * 15 : (k + 1) * 15]):
                key = f"sample{k}{i:03d}" + ("x" * 120 if i == 3 else "")  # a pax long name
                for ext, payload in (("text", doc["text"].encode()), ("cls", b"1")):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    d = recipe_dict(ft_models, tmp_path / "unused")
    d["input"] = {"shards": str(wds), "tar_text_ext": "text", "tar_json_ext": None}
    d["output"] = {}
    d["labelers"]["scorers"] = d["labelers"]["scorers"][:1]
    assert main(["label", str(write_recipe(tmp_path / "r.yaml", d))]) == 0
    m = Manifest.load(wds)
    assert m.format == "tar" and m.rows == 30 and m.extra["tar_members"]["text_ext"] == "text"
    labs = _labelers(ft_models)
    labs.pop("level")
    check_alignment(wds, labs)
    from quadmix_stream import QuaDMixDataset
    from quadmix_stream.mixing.params import SamplingParams

    p = SamplingParams.propose(1, m.domains, m.scorer_names, 0, ranges={"omega": (0.8, 0.9)})[0]
    got = {it["id"]: it["text"] for it in QuaDMixDataset(wds, p, balance=None)}
    want = {
        f"sample{k}{i:03d}" + ("x" * 120 if i == 3 else ""): docs[k * 15 + i]["text"]
        for k in range(2)
        for i in range(15)
    }
    assert got and all(want[k] == v for k, v in got.items())

    from streaming import MDSWriter

    mds = tmp_path / "mds"
    with MDSWriter(out=str(mds), columns={"text": "str", "url": "str", "n": "int"}) as w:
        for i, doc in enumerate(docs[:12]):
            w.write({"text": doc["text"], "url": f"http://x/{i}", "n": i})
    d["input"] = {"shards": str(mds)}
    assert main(["label", str(write_recipe(tmp_path / "r2.yaml", d))]) == 0
    m = Manifest.load(mds)
    assert m.format == "mds" and m.rows == 12
    rows = check_alignment(mds, labs)
    assert rows == 12


def test_stale_column_is_recomputed_not_mixed(tmp_path, ft_models, capsys):  # noqa: F811
    from quadmix_stream.labelling.train_fasttext import train_fasttext_quality

    out = tmp_path / "ds"
    d = recipe_dict(ft_models, out)
    rec = write_recipe(tmp_path / "r.yaml", d)
    assert main(["label", str(rec)]) == 0
    first = Manifest.load(out)
    lab1 = load_labels(out, first)
    capsys.readouterr()
    # a re-run with nothing changed skips everything
    assert main(["label", str(rec)]) == 0
    assert "skipped 5 finished unit(s)" in capsys.readouterr().out
    assert dataset_files(out)  # unchanged below
    # retrain the quality model differently: its column is stale in every shard
    q2 = tmp_path / "quality2.bin"
    pos = synth_docs(200, seed=31, levels=[0], domains=["arith", "facts"])
    train_fasttext_quality(pos, synth_docs(80, seed=32), q2, fasttext_params=FT_SMALL)
    d["labelers"]["scorers"][0]["path"] = str(q2)
    write_recipe(rec, d)
    assert main(["label", str(rec), "--status"]) == 0
    status = capsys.readouterr().out
    assert "5 stale" in status and "columns ['dclm']" in status
    assert main(["label", str(rec)]) == 0
    assert "relabelled stale columns in 5" in capsys.readouterr().out
    m = Manifest.load(out)
    lab2 = load_labels(out, m)
    assert m.scorers[0].fingerprint != first.scorers[0].fingerprint
    assert np.array_equal(lab1.domain, lab2.domain) and np.array_equal(lab1.tokens, lab2.tokens)
    assert np.array_equal(lab1.scores[:, 1], lab2.scores[:, 1])
    assert not np.array_equal(lab1.scores[:, 0], lab2.scores[:, 0])
    # identical to a fresh run with the new model
    fresh = tmp_path / "fresh"
    d2 = recipe_dict(ft_models, fresh)
    d2["labelers"]["scorers"][0]["path"] = str(q2)
    assert main(["label", str(write_recipe(tmp_path / "r2.yaml", d2))]) == 0
    assert dataset_files(fresh) == dataset_files(out)
    # a scorer added later is computed alone, in its own column
    d["labelers"]["scorers"].append({"name": "ws", "type": "field", "field": "quality_level"})
    write_recipe(rec, d)
    assert main(["label", str(rec)]) == 0
    m3 = Manifest.load(out)
    assert m3.scorer_names == ["dclm", "level", "ws"]
    lab3 = load_labels(out, m3)
    assert np.array_equal(lab3.scores[:, :2], lab2.scores) and np.array_equal(
        lab3.scores[:, 2], lab3.scores[:, 1]
    )


def test_clear_errors(tmp_path, ft_models, capsys):  # noqa: F811
    out = tmp_path / "ds"
    d = recipe_dict(ft_models, out)
    d["labelers"]["scorers"][0]["path"] = str(tmp_path / "nope.bin")
    assert main(["label", str(write_recipe(tmp_path / "r.yaml", d))]) == 2
    err = capsys.readouterr().err
    assert "labeller 'dclm' (fasttext): model path" in err and "nope.bin does not exist" in err
    d = recipe_dict(ft_models, out, domains=["arith", "facts"])
    assert main(["label", str(write_recipe(tmp_path / "r.yaml", d))]) == 2
    assert "not in ['arith', 'facts']" in capsys.readouterr().err
    d["unknown_domain"] = "facts"
    assert main(["label", str(write_recipe(tmp_path / "r.yaml", d))]) == 0
    m = Manifest.load(out)
    assert m.domains == ["arith", "facts"]
    assert m.extra["labelling"]["issues"]["counts"]["unknown_domain[domain]"] > 100
    # a folder that holds another run is refused
    d = recipe_dict(ft_models, out)
    d["output"]["rows_per_shard"] = 7
    assert main(["label", str(write_recipe(tmp_path / "r.yaml", d))]) == 2
    assert "another plan" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['oops'\]"):
        parse_recipe({"input": {"paths": ["x"]}, "oops": 1}, tmp_path)


def test_recipes_in_repo_parse():
    root = Path(__file__).resolve().parents[2] / "recipes"
    for name in ("label_synthetic.yaml", "label_shared_corpus.yaml"):
        r = parse_recipe(yaml.safe_load((root / name).read_text()), root)
        r.check()
        assert r.out is not None and r.scorers and r.domain and r.train


def test_flags_only_and_train_labeler_cli(tmp_path, capsys):
    docs = synth_docs(60, seed=3)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    assert (
        main(
            [
                "train-labeler",
                "fasttext-domain",
                "--input",
                str(src),
                "--out",
                str(tmp_path / "dom.bin"),
                "--epoch",
                "10",
            ]
        )
        == 0
    )
    cap = capsys.readouterr()
    rep = cap.out
    assert "heldout_accuracy=" in rep
    # a short summary on stdout; the full JSON report in a file beside the model
    assert len(rep.splitlines()) <= 4
    assert rep.splitlines()[-1] == f"  full report (JSON): {tmp_path / 'dom.bin.train.json'}"
    full = json.loads((tmp_path / "dom.bin.train.json").read_text())["report"]
    assert full["heldout_accuracy"] == float(rep.split("heldout_accuracy=")[1].split()[0])
    # progress on stderr: documents read, and the fasttext child's start and end
    assert "[train labeller: reading input] doc 300 | elapsed " in cap.err
    assert "[train labeller: fasttext on " in cap.err and "→ dom.bin] done in " in cap.err
    assert (
        main(
            [
                "train-labeler",
                "fasttext-quality",
                "--positives",
                str(src),
                "--positives-where",
                "quality_level=0",
                "--negatives",
                str(src),
                "--out",
                str(tmp_path / "q.bin"),
            ]
        )
        == 0
    )
    assert "heldout_auc=" in capsys.readouterr().out
    out = tmp_path / "ds"
    args = ["label", "--input", str(src), "--out", str(out), "--format", "jsonl"]
    args += ["--domain", f"type=fasttext,path={tmp_path / 'dom.bin'}"]
    args += ["--scorer", f"name=q,type=fasttext,path={tmp_path / 'q.bin'},label=hq"]
    args += ["--tokens", "bytes", "--rows-per-shard", "100", "--no-progress", "--io-workers", "0"]
    assert main(args) == 0
    m = Manifest.load(out)
    assert m.rows == 300 and m.format == "jsonl" and m.scorer_names == ["q"]
    side = read_sidecar(out / m.shards[0].sidecar, m.shards[0].name, ["q"])
    assert side.tokens[0] == len(docs[0]["text"].encode())


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_mds_codec_matches_mdswriter(tmp_path, compression):
    """Our MDS writer (no `streaming` import) gives MDSWriter's bytes and index entry, and
    DatasetWriter's MDS backend (which uses it) gives MDSWriter's shard and index.json."""
    from streaming import MDSWriter

    from quadmix_stream.formats.mds import MDS_COLUMNS, MDSBackend, encode_shard, read_shard

    docs = [
        ("a/1", "héllo wörld\nline 2", {"domain": "x", "q": [1, 2]}),
        ("b", "", {}),
        ("c", "t" * 5000, {"meta": {"u": "é"}}),
    ]
    ref = tmp_path / "ref"
    with MDSWriter(
        out=str(ref), columns=MDS_COLUMNS, compression=compression, size_limit=1 << 31
    ) as w:
        for doc_id, text, meta in docs:
            w.write({"id": doc_id, "text": text, "meta": meta})
    (entry,) = json.loads((ref / "index.json").read_text())["shards"]
    _raw, stored, ours = encode_shard(docs, compression)
    name = (entry["zip_data"] or entry["raw_data"])["basename"]
    assert (ref / name).read_bytes() == stored
    ours["raw_data"]["basename"] = entry["raw_data"]["basename"]
    if compression:
        ours["zip_data"]["basename"] = entry["zip_data"]["basename"]
    assert json.dumps(ours, sort_keys=True) == json.dumps(entry, sort_keys=True)
    got = read_shard(ref / name, entry)
    assert [(s["id"], s["text"], s["meta"]) for s in got] == docs
    (tmp_path / "ours").mkdir()
    b = MDSBackend(tmp_path / "ours", compression)
    for d in docs:
        b.add(*d)
    assert b.end_shard() == name
    b.close()
    for f in ("index.json", name):
        assert (tmp_path / "ours" / f).read_bytes() == (ref / f).read_bytes()


def test_a_plan_is_the_same_after_its_inputs_move_not_after_they_change():
    from quadmix_stream.labelling.plan import portable

    def plan(*files: tuple[str, int]) -> dict:
        units = [
            {"index": i, "source": f, "start": 0, "stop": 5, "offset": 0}
            for i, (f, _) in enumerate(files)
        ]
        return {
            "mode": "new",
            "format": "mds",
            "compression": None,
            "rows_per_shard": 5,
            "units": units,
            "inputs": [list(f) for f in files],
        }

    here = plan(("/a/run/pool/x.jsonl.gz", 10), ("/a/run/pool/sub/y.jsonl", 20))
    assert portable(here) == portable(
        plan(("/b/c/pool/x.jsonl.gz", 10), ("/b/c/pool/sub/y.jsonl", 20))
    )
    assert portable(plan(("s3://bkt/p/x.jsonl.gz", 10), ("s3://bkt/p/sub/y.jsonl", 20))) == (
        portable(here)
    )
    for changed in (
        plan(("/a/run/pool/x.jsonl.gz", 11), ("/a/run/pool/sub/y.jsonl", 20)),  # resized
        plan(("/a/run/pool/z.jsonl.gz", 10), ("/a/run/pool/sub/y.jsonl", 20)),  # renamed
        plan(
            ("/a/run/pool/x.jsonl.gz", 10),
        ),  # removed
    ):
        assert portable(changed) != portable(here)
    one = plan(("/a/run/pool/x.jsonl.gz", 10))
    assert portable(one)["inputs"] == [["x.jsonl.gz", 10]]
    synthetic = {**one, "inputs": [["synthetic", "{}"]], "units": []}
    assert portable(synthetic) == synthetic
    assert portable({"mode": "sidecar", "inputs": [["shard.00000.mds", 5]]})["inputs"][0][0] == (
        "shard.00000.mds"
    )
