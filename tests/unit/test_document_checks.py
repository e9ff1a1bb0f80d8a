"""Every document read is checked against the text checksum its sidecar recorded at labelling:
a shard changed in place at the same size, whose rows still decode, stops the stream naming the
shard and the row; shards labelled in place with texts the readers normalise raise no false
alarm."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from quadmix_stream import QuaDMixDataset
from quadmix_stream.cli import main
from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.formats.sidecar import read_sidecar, write_sidecar
from quadmix_stream.mixing.hashing import text_digest
from quadmix_stream.mixing.params import SamplingParams

pytestmark = pytest.mark.core


def _keep_all(ds: Path) -> SamplingParams:
    m = Manifest.load(ds)
    return SamplingParams.keep_all(m.domains, m.scorer_names)


def _change_one_letter(ds: Path, row: int) -> str:
    """Change one letter of document ``row`` of the first shard in place; returns the shard."""
    text = QuaDMixDataset(ds, _keep_all(ds)).read_row(row)["text"]
    shard = Manifest.load(ds).shards[0].name
    data = bytearray((ds / shard).read_bytes())
    at = data.find(text[:60].encode())
    assert at >= 0 and text[:60].count("e")
    at += text[:60].index("e")
    data[at] = ord("E")  # the same size, still valid UTF-8
    (ds / shard).write_bytes(bytes(data))
    return shard


@pytest.mark.parametrize("fmt", ["mds", "tar"])
def test_a_letter_changed_in_place_stops_the_stream_naming_shard_and_row(fmt, request, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(request.getfixturevalue(f"{fmt}_ds"), ds)
    shard = _change_one_letter(ds, row=5)
    p = _keep_all(ds)
    with pytest.raises(LabelError) as e:
        list(QuaDMixDataset(ds, p, balance=None))
    msg = str(e.value)
    assert msg.startswith(
        f"shard {shard!r}, row 5: the document's text does not match the checksum"
    )
    assert "\n" not in msg and "relabel" in msg
    with pytest.raises(LabelError, match="row 5: the document's text"):
        QuaDMixDataset(ds, p).read_row(5)
    # without the check the changed text streams unnoticed: the check is what stops it
    items = list(QuaDMixDataset(ds, p, balance=None, verify_documents=False))
    changed = [it for it in items if it["row"] == 5]
    assert (
        len(changed) == 1
        and text_digest(changed[0]["text"])
        != read_sidecar(
            ds / Manifest.load(ds).shards[0].sidecar, shard, Manifest.load(ds).scorer_names
        ).digest[5]
    )


def test_sidecars_without_checksums_still_stream(mds_ds, tmp_path):
    """A dataset labelled before checksums existed: read as before, its documents unchecked."""
    ds = tmp_path / "ds"
    shutil.copytree(mds_ds, ds)
    m = Manifest.load(ds)
    entries = []
    for e in m.shards:
        lab = read_sidecar(ds / e.sidecar, e.name, m.scorer_names)
        lab.digest = None
        entries.append(
            dataclasses.replace(
                e, sidecar_sha256=write_sidecar(ds / e.sidecar, lab, m.scorer_names)
            )
        )
    dataclasses.replace(m, shards=entries).save(ds)
    _change_one_letter(ds, row=5)
    items = list(QuaDMixDataset(ds, _keep_all(ds), balance=None))
    assert len(items) == m.rows


def _foreign_shards(root: Path) -> dict[str, Path]:
    """Shards not written by us, with texts a reader normalises: invalid UTF-8 bytes (tar), a
    lone surrogate escape (JSONL), a null text (JSONL, Parquet)."""
    texts = ["plain text", "bad \xff\xfe bytes", "lone \ud800 surrogate", None, "ünïcödé ✓"]
    rows = [
        {"id": f"d{i}", "text": t, "dom": "a" if i % 2 else "b", "q": float(i)}
        for i, t in enumerate(texts)
    ]
    out = {}
    jl = root / "jsonl"
    jl.mkdir(parents=True)
    lines = []
    for r in rows:
        r = dict(r, text=None if r["text"] is None else r["text"].replace("\xff\xfe", "??"))
        lines.append(json.dumps(r))  # ensure_ascii: the surrogate travels as \ud800
    data = ("\n".join(lines) + "\n").encode()
    (jl / "part-0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    out["jsonl"] = jl
    pqd = root / "parquet"
    pqd.mkdir()
    safe = [
        dict(r, text=None if r["text"] is None else r["text"].replace("\ud800", "?")) for r in rows
    ]
    pq.write_table(pa.Table.from_pylist(safe), pqd / "part-0.parquet")
    out["parquet"] = pqd
    tard = root / "tar"
    tard.mkdir()
    with tarfile.open(tard / "part-0.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for r in rows:
            t = r["text"] or ""
            body = (
                t.replace("\ud800", "?").encode("utf-8").replace("\xff\xfe".encode(), b"\xff\xfe")
            )  # raw invalid bytes in the member
            meta = json.dumps({k: v for k, v in r.items() if k != "text"}).encode()
            for ext, payload in (("txt", body), ("json", meta)):
                info = tarfile.TarInfo(f"{r['id']}.{ext}")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    out["tar"] = tard
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tar"])
def test_shards_labelled_in_place_raise_no_false_alarm(tmp_path, fmt):
    root = _foreign_shards(tmp_path)[fmt]
    args = ["label", "--shards", str(root), "--domain", "type=field,field=dom", "--domains", "a,b"]
    args += ["--scorer", "type=field,field=q,name=q", "--io-workers", "0", "--no-progress"]
    assert main(args) == 0
    items = list(QuaDMixDataset(root, _keep_all(root), balance=None))
    assert sorted(it["id"] for it in items) == [f"d{i}" for i in range(5)]
    by_id = {it["id"]: it["text"] for it in items}
    assert by_id["d3"] == ""  # a null text reads as empty
    m = Manifest.load(root)
    lab = read_sidecar(root / m.shards[0].sidecar, m.shards[0].name, m.scorer_names)
    assert lab.digest is not None and lab.digest.size == 5
