"""Label format: shards + sidecars + manifest in every format, and every documented error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.formats import open_shard
from quadmix_stream.formats.labels import (
    LabelError,
    Manifest,
    ScorerInfo,
    load_labels,
    read_sidecar,
    write_sidecar,
)
from quadmix_stream.formats.shards import DatasetWriter
from quadmix_stream.mixing.hashing import doc_key

pytestmark = pytest.mark.core


def _write(root: Path, fmt: str, n: int = 25) -> list[dict]:
    docs = [
        {"id": f"doc-{i}", "text": f"text {i} ünïcode " * (i % 4 + 1), "source": "t", "n": i}
        for i in range(n)
    ]
    with DatasetWriter(
        root, fmt, ["a", "b"], [ScorerInfo("q"), ScorerInfo("r", False)], rows_per_shard=10
    ) as w:
        for i, d in enumerate(docs):
            w.write(d, "a" if i % 3 else "b", [i * 0.1, -i], tokens=i + 1)
    return docs


@pytest.mark.parametrize("fmt", ["mds", "tar", "jsonl", "parquet", "arrow"])
def test_round_trip_every_row(tmp_path, fmt):
    docs = _write(tmp_path / "ds", fmt)
    m = Manifest.load(tmp_path / "ds")
    assert m.format == fmt and [s.rows for s in m.shards] == [10, 10, 5]
    lab = load_labels(tmp_path / "ds", m, verify_shards=True)
    assert lab.rows == 25
    for g, doc in enumerate(docs):  # row alignment, document by document
        s, r = int(lab.shard[g]), int(lab.row[g])
        a, b = lab.shard_start[s], lab.shard_start[s + 1]
        off = None if lab.offset is None else lab.offset[a:b]
        ln = None if lab.length is None else lab.length[a:b]
        got = open_shard(tmp_path / "ds", m, s, off, ln).read(r)
        assert got["id"] == doc["id"] and got["text"] == doc["text"]
        assert got["meta"] == {"source": "t", "n": g}
        assert lab.key[g] == doc_key(doc["id"])
        assert lab.tokens[g] == g + 1 and lab.domain[g] == (0 if g % 3 else 1)
        assert lab.scores[g].tolist() == [g * 0.1, -g]
    assert set(m.sigma) == {"q", "r"}


def test_tar_is_plain_webdataset(tmp_path):
    pytest.importorskip("webdataset")  # an extra's package: skipped in the core-only env
    import webdataset as wds

    docs = _write(tmp_path / "ds", "tar")
    shards = sorted(str(p) for p in (tmp_path / "ds").glob("*.tar"))
    got = [s["txt"].decode() for s in wds.WebDataset(shards, shardshuffle=False)]
    assert got == [d["text"] for d in docs]


def test_mds_is_plain_streaming(tmp_path):
    pytest.importorskip("streaming")  # an extra's package: skipped in the core-only env
    from streaming import StreamingDataset

    docs = _write(tmp_path / "ds", "mds")
    sd = StreamingDataset(local=str(tmp_path / "ds"), shuffle=False, batch_size=1)
    assert [sd.get_item(i)["id"] for i in range(sd.num_samples)] == [d["id"] for d in docs]


def test_mds_columns_decode_as_streaming_does(tmp_path):
    """The one MDS sample decoder: strict gives MDSReader.decode_sample's values and types for
    every common encoding; lenient (the labelling's, no streaming import) gives text and Python
    scalars and leaves other encodings out."""
    pytest.importorskip("streaming")  # an extra's package: skipped in the core-only env
    from decimal import Decimal

    from PIL import Image
    from streaming import MDSWriter
    from streaming.base.format.mds.reader import MDSReader

    from quadmix_stream.formats.mds import MDSColumns, read_shard

    cols = {"text": "str", "n": "int", "f": "float32", "u": "uint8", "si": "str_int"}
    cols |= {"j": "json", "b": "bytes", "arr": "ndarray:int16:3"}
    cols |= {"d": "float64", "h": "float16", "i8": "int8", "u64": "uint64", "sf": "str_float"}
    cols |= {"sd": "str_decimal", "nd": "ndarray", "ndt": "ndarray:float32", "png": "png"}
    cols |= {"pil": "pil", "pngs": "list[png]"}
    with MDSWriter(out=str(tmp_path), columns=cols, compression=None) as w:
        for i in range(5):
            img = Image.new("RGB", (i + 1, 2), (i, 2 * i, 3 * i))
            w.write(
                {"text": f"héllo {i}", "n": i, "f": i / 3, "u": i, "si": i * 7, "j": {"a": [i]}}
                | {"b": bytes([i]) * i, "arr": np.arange(3, dtype=np.int16) + i}
                | {"d": i / 7, "h": i / 5, "i8": -i, "u64": 2**63 + i, "sf": i / 9}
                | {"sd": Decimal(i) / 3, "nd": np.arange(i + 1).reshape(1, -1)}
                | {"ndt": np.ones(i + 2, np.float32), "png": img, "pil": img, "pngs": [img, img]}
            )
    (entry,) = json.loads((tmp_path / "index.json").read_text())["shards"]
    name = entry["raw_data"]["basename"]
    data = (tmp_path / name).read_bytes()
    offs = np.frombuffer(data, np.uint32, count=6, offset=4)
    ref, ours = MDSReader.from_json("", None, entry), MDSColumns(name, entry, strict=True)
    for i in range(5):
        a, b = (
            ref.decode_sample(data[offs[i] : offs[i + 1]]),
            ours.decode(data[offs[i] : offs[i + 1]]),
        )
        assert a.keys() == b.keys()
        for k in a:
            assert type(a[k]) is type(b[k]), k
            if k in ("png", "pil"):
                assert a[k].tobytes() == b[k].tobytes()
            elif k == "pngs":
                assert [x.tobytes() for x in a[k]] == [x.tobytes() for x in b[k]]
            elif isinstance(a[k], np.ndarray):
                assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k
    lenient = read_shard(tmp_path / name, entry)[3]
    assert {k: lenient[k] for k in ("text", "n", "f", "u", "si", "j")} == {
        "text": "héllo 3",
        "n": 3,
        "f": np.float32(1.0).item(),
        "u": 3,
        "si": "21",
        "j": {"a": [3]},
    }
    entry["column_encodings"][entry["column_names"].index("b")] = "pkl"
    with pytest.raises(LabelError, match="pickled; refusing to unpickle"):
        MDSColumns(name, entry, strict=True)


@pytest.fixture
def ds(tmp_path):
    _write(tmp_path / "ds", "jsonl")
    return tmp_path / "ds"


def test_missing_sidecar(ds):
    (ds / "shard.00001.labels.npz").unlink()
    with pytest.raises(
        LabelError,
        match=r"shard 'shard.00001.jsonl.zst': label sidecar shard.00001.labels.npz is missing",
    ):
        load_labels(ds, Manifest.load(ds))


def test_corrupted_sidecar(ds):
    p = ds / "shard.00000.labels.npz"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(
        LabelError, match=r"shard 'shard.00000.jsonl.zst': field 'sidecar_sha256' does not match"
    ):
        load_labels(ds, Manifest.load(ds))


def test_sidecar_from_another_shard_has_wrong_row_count(ds):
    m = Manifest.load(ds)
    shutil.copy(ds / "shard.00000.labels.npz", ds / "shard.00002.labels.npz")
    m.shards[2] = m.shards[2].__class__(
        **{**m.shards[2].__dict__, "sidecar_sha256": m.shards[0].sidecar_sha256}
    )
    m.save(ds)
    with pytest.raises(
        LabelError,
        match=r"shard 'shard.00002.jsonl.zst': field 'rows' is 5 in the manifest but the sidecar has 10",
    ):
        load_labels(ds, Manifest.load(ds))


def _rewrite_sidecar(ds: Path, shard: int, **changes) -> None:
    m = Manifest.load(ds)
    e = m.shards[shard]
    lab = read_sidecar(ds / e.sidecar, e.name, m.scorer_names)
    for k, v in changes.items():
        getattr(lab, k)[...] = v
    h = write_sidecar(ds / e.sidecar, lab, m.scorer_names)
    m.shards[shard] = e.__class__(**{**e.__dict__, "sidecar_sha256": h})
    m.save(ds)


def test_nan_score(ds):
    m = Manifest.load(ds)
    e = m.shards[1]
    lab = read_sidecar(ds / e.sidecar, e.name, m.scorer_names)
    scores = lab.scores.copy()
    scores[3, 1] = np.nan
    _rewrite_sidecar(ds, 1, scores=scores)
    with pytest.raises(
        LabelError,
        match=r"shard 'shard.00001.jsonl.zst': field 'scores' has nan for scorer 'r' at row 3",
    ):
        load_labels(ds, Manifest.load(ds))


def test_unknown_domain(ds):
    m = Manifest.load(ds)
    lab = read_sidecar(ds / m.shards[0].sidecar, m.shards[0].name, m.scorer_names)
    dom = lab.domain.copy()
    dom[4] = 7
    _rewrite_sidecar(ds, 0, domain=dom)
    with pytest.raises(
        LabelError,
        match=r"shard 'shard.00000.jsonl.zst': field 'domain' has unknown domain id 7 at row 4",
    ):
        load_labels(ds, Manifest.load(ds))


def test_shard_changed_after_labelling(ds):
    p = ds / "shard.00000.jsonl.zst"
    p.write_bytes(p.read_bytes() + b"x")
    with pytest.raises(LabelError, match=r"shard 'shard.00000.jsonl.zst': field 'shard_bytes'"):
        load_labels(ds, Manifest.load(ds))


def test_missing_manifest_and_bad_manifest(tmp_path, ds):
    with pytest.raises(LabelError, match="the folder .*nowhere does not exist"):
        Manifest.load(tmp_path / "nowhere")
    with pytest.raises(LabelError, match="no quadmix.json"):
        Manifest.load(tmp_path)
    d = json.loads((ds / "quadmix.json").read_text())
    del d["sigma"]["q"]
    (ds / "quadmix.json").write_text(json.dumps(d))
    with pytest.raises(LabelError, match=r"no table for scorers \['q'\]"):
        Manifest.load(ds)


def test_writer_refuses_bad_labels_and_non_empty_dir(tmp_path):
    with DatasetWriter(tmp_path / "w", "jsonl", ["a"], [ScorerInfo("q")]) as w:
        with pytest.raises(LabelError, match="unknown domain 'z'"):
            w.write({"id": "1", "text": "x"}, "z", [0.0], 1)
        with pytest.raises(LabelError, match="finite scores"):
            w.write({"id": "1", "text": "x"}, "a", [float("nan")], 1)
        w.write({"id": "1", "text": "x"}, "a", [0.0], 1)
    with pytest.raises(FileExistsError):
        DatasetWriter(tmp_path / "w", "jsonl", ["a"], [ScorerInfo("q")])


def test_no_manifest_until_close(tmp_path):
    w = DatasetWriter(tmp_path / "w", "tar", ["a"], [ScorerInfo("q")], rows_per_shard=2)
    for i in range(5):
        w.write({"id": str(i), "text": "x"}, "a", [0.0], 1)
    assert not (
        tmp_path / "w" / "quadmix.json"
    ).exists()  # an unfinished dataset is never taken for one
    w.close()
    assert Manifest.load(tmp_path / "w").rows == 5
