"""formats/tar.py: the tar writer's byte spans, WebDataset sample parsing (ours and foreign,
long names, gzip), the scan, the seek-by-offset reader and byte-range decoding.

Expected tars are built and read with :mod:`tarfile` directly, never through the module.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from quadmix_stream.formats.base import ShardSpec
from quadmix_stream.formats.labels import LabelError, Manifest
from quadmix_stream.formats.sidecar import read_sidecar
from quadmix_stream.formats.tar import (
    FORMAT,
    TarBackend,
    TarShardReader,
    _sample_key_ext,
    scan_tar,
    shard_name,
    tar_sample_doc,
    ustar_members,
    webdataset_doc,
    webdataset_members,
)

pytestmark = pytest.mark.core

DOCS = [
    ("d1", "hello", {"domain": "a"}),
    ("d2", "x" * 600, {"domain": "b", "q": 3}),  # text over one 512-byte block
    ("d3", "héllo wörld", {"domain": "a", "note": "ünï"}),
]


def tar_bytes(members: list[tuple[str, bytes]], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    """A tar of regular files (a name ending in ``/`` is a folder)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, payload in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def write_ours(root) -> tuple[str, list[tuple[int, int]]]:
    backend = TarBackend(root)
    spans = [backend.add(*d) for d in DOCS]
    return backend.end_shard(), spans


def spec_of(path, spans=None, **extra) -> ShardSpec:
    return ShardSpec(
        name=path.name,
        rows=len(spans or []),
        sha256="",
        nbytes=path.stat().st_size,
        offset=None if spans is None else np.array([s for s, _ in spans], dtype=np.int64),
        length=None if spans is None else np.array([n for _, n in spans], dtype=np.int64),
        extra=extra,
    )


# ---------------------------------------------------------------- names
def test_shard_name():
    assert shard_name(0) == "shard.00000.tar"
    assert shard_name(123) == "shard.00123.tar"


@pytest.mark.parametrize(
    "name,want",
    [
        ("key.txt", ("key", "txt")),
        ("dir/sub/key.ext.ext2", ("dir/sub/key", "ext.ext2")),
        ("a.b/key.json", ("a.b/key", "json")),  # dots in folders are not extensions
        ("noext", ("noext", "")),
    ],
)
def test_sample_key_ext(name, want):
    assert _sample_key_ext(name) == want


# ---------------------------------------------------------------- the writer
def test_writer_spans_are_the_samples_bytes(tmp_path):
    name, spans = write_ours(tmp_path)
    assert name == "shard.00000.tar"
    # header + data block per member: "hello" 512+512, its JSON 512+512; d2's text 512+1024
    assert spans == [(0, 2048), (2048, 2560), (4608, 2048)]
    data = (tmp_path / name).read_bytes()
    with tarfile.open(tmp_path / name) as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [
            f"s{i:08d}.{ext}" for i in range(3) for ext in ("txt", "json")
        ]
        assert {m.mtime for m in members} == {0}
        texts = [tf.extractfile(m).read() for m in members]
    for i, (doc_id, text, meta) in enumerate(DOCS):
        assert texts[2 * i].decode("utf-8") == text
        assert json.loads(texts[2 * i + 1]) == {"id": doc_id, **meta}
        start, length = spans[i]
        assert webdataset_members(data[start : start + length]) == (
            f"s{i:08d}",
            {"txt": texts[2 * i], "json": texts[2 * i + 1]},
        )


def test_writer_numbers_shards_and_restarts_sample_keys(tmp_path):
    backend = TarBackend(tmp_path)
    backend.add("a", "one", {})
    backend.add("b", "two", {})
    assert backend.end_shard() == "shard.00000.tar"
    assert backend.add("c", "three", {}) == (0, 2048)  # a new shard starts at byte 0
    assert backend.end_shard() == "shard.00001.tar"
    assert backend.end_shard() == "shard.00002.tar"  # an empty shard is a valid empty tar
    with tarfile.open(tmp_path / "shard.00001.tar") as tf:
        assert tf.getnames() == ["s00000000.txt", "s00000000.json"]
    with tarfile.open(tmp_path / "shard.00002.tar") as tf:
        assert tf.getnames() == []


# ---------------------------------------------------------------- sample parsing
def test_webdataset_members_skips_folders_and_reads_long_names():
    long_dir = "d" * 120  # over USTAR's 100-character name: a pax header
    data = tar_bytes(
        [
            (f"{long_dir}/", b""),
            (f"{long_dir}/k1.txt", b"text"),
            (f"{long_dir}/k1.meta.json", b"{}"),
        ],
        tarfile.PAX_FORMAT,
    )
    assert webdataset_members(data) == (f"{long_dir}/k1", {"txt": b"text", "meta.json": b"{}"})


def _tarfile_members(data: bytes) -> tuple[str, dict[str, bytes]]:
    out, key = {}, ""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if m.isfile():
                key, ext = _sample_key_ext(m.name)
                out[ext] = tf.extractfile(m).read()
    return key, out


def test_plain_ustar_samples_are_parsed_without_tarfile_and_alike(tmp_path):
    name, spans = write_ours(tmp_path)
    data = (tmp_path / name).read_bytes()
    for start, n in spans:
        sample = data[start : start + n]
        assert ustar_members(sample) == _tarfile_members(sample)
    prefixed = tar_bytes([("p" * 90 + "/" + "k" * 40 + ".txt", b"t")])  # USTAR name prefix
    assert ustar_members(prefixed) == _tarfile_members(prefixed)


@pytest.mark.parametrize(
    "sample",
    [
        tar_bytes([("d" * 120 + "/k.txt", b"t")], tarfile.PAX_FORMAT),  # a pax header
        tar_bytes([("dir/", b""), ("dir/k.txt", b"t")]),  # a folder member
        tar_bytes([("k.txt", b"text")])[:514],  # truncated payload
        bytes([0x31]) + tar_bytes([("k.txt", b"text")])[1:],  # header checksum no longer holds
    ],
    ids=["pax", "folder", "truncated", "checksum"],
)
def test_anything_else_is_left_to_tarfile(sample):
    assert ustar_members(sample) is None
    try:  # and webdataset_members gives tarfile's answer, parsed or refused
        want = _tarfile_members(sample)
    except tarfile.TarError as e:
        with pytest.raises(type(e)):
            webdataset_members(sample)
    else:
        assert webdataset_members(sample) == want


def test_webdataset_doc_fields():
    data = tar_bytes([("k.txt", "héllo".encode()), ("k.json", b'{"id": 7, "lang": "fr"}')])
    assert webdataset_doc(data, "txt", "json") == {
        "id": "7",  # always a string
        "text": "héllo",
        "meta": {"lang": "fr"},
    }


def test_webdataset_doc_without_json_or_id_uses_the_sample_key():
    only_text = tar_bytes([("dir/k9.md", b"body")])
    assert webdataset_doc(only_text, "md", "json") == {"id": "dir/k9", "text": "body", "meta": {}}
    no_id = tar_bytes([("k.md", b"body"), ("k.json", b'{"a": 1}')])
    assert webdataset_doc(no_id, "md", "json") == {"id": "k", "text": "body", "meta": {"a": 1}}
    assert webdataset_doc(no_id, "md", None)["meta"] == {}  # no JSON member named
    a_list = tar_bytes([("k.md", b"body"), ("k.json", b"[1, 2]")])
    assert webdataset_doc(a_list, "md", "json")["meta"] == {"json": [1, 2]}


def test_webdataset_doc_replaces_invalid_utf8():
    data = tar_bytes([("k.txt", b"ab\xffcd")])
    assert webdataset_doc(data, "txt", None)["text"] == "ab\ufffdcd"


def test_webdataset_doc_without_its_text_member():
    data = tar_bytes([("k7.json", b"{}"), ("k7.cls", b"3")])
    with pytest.raises(
        LabelError, match=r"^tar sample 'k7' has no \.txt member \(has \['cls', 'json'\]\)$"
    ):
        webdataset_doc(data, "txt", "json")


def test_tar_sample_doc_ours_and_foreign():
    ours = tar_bytes([("s1.txt", b"t"), ("s1.json", b'{"id": "x", "d": 1}')])
    assert tar_sample_doc(ours, None, "w", 0, 0) == {"id": "x", "text": "t", "meta": {"d": 1}}
    foreign = tar_bytes([("k.md", b"t")])
    doc = tar_sample_doc(foreign, {"text_ext": "md", "json_ext": None}, "w", 0, 0)
    assert doc == {"id": "k", "text": "t", "meta": {}}


def test_tar_sample_doc_refuses_a_sample_that_is_not_ours():
    data = tar_bytes([("s1.txt", b"t")])
    with pytest.raises(
        LabelError,
        match=r"^shard\.tar: sample at byte 4096 \(row 2\) is not a txt\+json pair; "
        "tar and sidecar disagree$",
    ):
        tar_sample_doc(data, None, "shard.tar", 4096, 2)


# ---------------------------------------------------------------- scanning
def test_scan_tar_finds_each_sample_span(tmp_path):
    long_key = "k" * 110
    members = [
        ("a/", b""),
        ("a/x1.txt", b"one"),
        ("a/x1.json", b"{}"),
        ("a/x2.txt", b"two" * 300),
        (f"a/{long_key}.txt", b"three"),
        (f"a/{long_key}.json", b"[]"),
    ]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / "f.tar"
        data = tar_bytes(members, fmt)
        path.write_bytes(data)
        found = scan_tar(path)
        assert [k for k, _, _ in found] == ["a/x1", "a/x2", f"a/{long_key}"]
        for (key, off, n), want in zip(
            found, [{"txt", "json"}, {"txt"}, {"txt", "json"}], strict=True
        ):
            assert off % 512 == 0 and n % 512 == 0
            got_key, got = webdataset_members(data[off : off + n])
            assert got_key == key and set(got) == want
        assert found[0][1] > 0  # after the folder's header
        # spans are consecutive: each sample starts where the one before ended
        assert [o for _, o, _ in found[1:]] == [o + n for _, o, n in found[:-1]]


def test_scan_tar_of_an_empty_tar(tmp_path):
    path = tmp_path / "e.tar"
    path.write_bytes(tar_bytes([]))
    assert scan_tar(path) == []


@pytest.mark.parametrize("data,why", [(b"", "empty file"), (b"garbage" * 100, "invalid header")])
def test_scan_tar_refuses_what_is_not_a_tar(tmp_path, data, why):
    path = tmp_path / "bad.tar"
    path.write_bytes(data)
    with pytest.raises(LabelError, match=rf"bad\.tar: not a readable uncompressed tar \({why}\)"):
        scan_tar(path)


def test_format_scan_of_our_shard(tmp_path):
    name, spans = write_ours(tmp_path)
    path = tmp_path / name
    out = FORMAT.scan(path, spec_of(path))
    assert out.keys == ["s00000000", "s00000001", "s00000002"]
    assert list(zip(out.offset, out.length, strict=True)) == spans
    assert out.docs == [
        {"id": doc_id, "text": text.encode("utf-8"), "meta": meta} for doc_id, text, meta in DOCS
    ]


def test_format_scan_of_a_foreign_webdataset(tmp_path):
    path = tmp_path / "web.tar"
    path.write_bytes(
        tar_bytes(
            [
                ("p/a.md", b"alpha"),
                ("p/a.info", b'{"id": 5, "src": "w"}'),
                ("p/b.md", b"beta"),
                ("p/c.md", b"gamma"),
                ("p/c.info", b'"just a string"'),
            ]
        )
    )
    spec = spec_of(path, tar_members={"text_ext": "md", "json_ext": "info"})
    out = FORMAT.scan(path, spec)
    assert out.keys == ["p/a", "p/b", "p/c"]
    # the id as found (not made a string), else the sample key
    assert out.docs == [
        {"id": 5, "text": b"alpha", "meta": {"src": "w"}},
        {"id": "p/b", "text": b"beta", "meta": {}},
        {"id": "p/c", "text": b"gamma", "meta": {"json": "just a string"}},
    ]
    assert list(zip(out.offset, out.length, strict=True)) == [(o, n) for _, o, n in scan_tar(path)]


def test_format_scan_without_the_text_member(tmp_path):
    path = tmp_path / "web.tar"
    path.write_bytes(tar_bytes([("k.md", b"x"), ("k.json", b"{}")]))
    with pytest.raises(
        LabelError,
        match=r"^shard 'web\.tar': sample 'k' has no \.txt member \(has \['json', 'md'\]\); "
        r"set input\.tar_text_ext$",
    ):
        FORMAT.scan(path, spec_of(path))


def test_format_scan_and_read_of_a_gzipped_tar(tmp_path, monkeypatch):
    monkeypatch.setenv("QUADMIX_CACHE", str(tmp_path / "node-cache"))
    name, spans = write_ours(tmp_path)
    gz = tmp_path / "shard.00000.tar.gz"
    gz.write_bytes(gzip.compress((tmp_path / name).read_bytes()))
    out = FORMAT.scan(gz, spec_of(gz), cache_dir=tmp_path / "scan-cache")
    assert list(zip(out.offset, out.length, strict=True)) == spans  # offsets into the plain tar
    assert [d["id"] for d in out.docs] == ["d1", "d2", "d3"]
    spec = ShardSpec(
        name=gz.name,
        rows=3,
        sha256=hashlib.sha256(gz.read_bytes()).hexdigest(),
        nbytes=gz.stat().st_size,
        offset=np.array(out.offset),
        length=np.array(out.length),
    )
    reader = FORMAT.open_local(gz, spec)
    try:
        assert reader.read(2) == {"id": "d3", "text": DOCS[2][1], "meta": DOCS[2][2]}
    finally:
        reader.close()
    assert any((tmp_path / "node-cache").iterdir())  # read from a decompressed copy
    assert FORMAT.row_spans(None, spec, np.array([0])) is None  # gzip: no byte ranges


# ---------------------------------------------------------------- reading rows
def test_reader_seeks_to_each_row(tmp_path):
    name, spans = write_ours(tmp_path)
    path = tmp_path / name
    reader = FORMAT.open_local(path, spec_of(path, spans))
    assert isinstance(reader, TarShardReader)
    try:
        for row in (2, 0, 1, 2):
            doc_id, text, meta = DOCS[row]
            assert reader.read(row) == {"id": doc_id, "text": text, "meta": meta}
        assert reader.rows_read == 4
    finally:
        reader.close()
    assert reader.file.closed


def test_reader_of_a_foreign_webdataset(tmp_path):
    path = tmp_path / "web.tar"
    path.write_bytes(tar_bytes([("a.md", b"alpha"), ("b.md", b"beta"), ("b.json", b'{"x": 1}')]))
    found = scan_tar(path)
    spans = [(o, n) for _, o, n in found]
    spec = spec_of(path, spans, tar_members={"text_ext": "md", "json_ext": "json"})
    reader = FORMAT.open_local(path, spec)
    try:
        assert reader.read(1) == {"id": "b", "text": "beta", "meta": {"x": 1}}
        assert reader.read(0) == {"id": "a", "text": "alpha", "meta": {}}
    finally:
        reader.close()


def test_reader_needs_the_sidecars_offsets(tmp_path):
    name, _ = write_ours(tmp_path)
    path = tmp_path / name
    with pytest.raises(
        LabelError, match=r"^shard 'shard\.00000\.tar': tar reads need the sidecar's byte offsets$"
    ):
        FORMAT.open_local(path, spec_of(path))


def test_reader_with_a_wrong_offset_names_the_row(tmp_path):
    name, spans = write_ours(tmp_path)
    path = tmp_path / name
    shifted = [(s + 1024, 1024) for s, _ in spans]  # just the JSON member of each sample
    reader = FORMAT.open_local(path, spec_of(path, shifted))
    try:
        with pytest.raises(LabelError, match=r"sample at byte 1024 \(row 0\) is not a txt\+json"):
            reader.read(0)
    finally:
        reader.close()


def test_row_spans_and_sample_decoder(tmp_path):
    name, spans = write_ours(tmp_path)
    path = tmp_path / name
    spec = spec_of(path, spans)
    start, end = FORMAT.row_spans(None, spec, np.array([2, 0]))
    assert start.tolist() == [4608, 0] and end.tolist() == [6656, 2048]
    data = path.read_bytes()
    decode = FORMAT.sample_decoder(spec, "s3://b/shard.00000.tar")
    assert decode(data[4608:6656], 2) == {"id": "d3", "text": DOCS[2][1], "meta": DOCS[2][2]}
    with pytest.raises(
        LabelError, match=r"^s3://b/shard\.00000\.tar: sample at byte 2048 \(row 1\)"
    ):
        decode(data[0:1024], 1)  # only the text member of row 0
    assert FORMAT.row_spans(None, spec_of(path), np.array([0])) is None  # no offsets


def test_reads_the_synthetic_tar_dataset_by_its_sidecar_offsets(tar_ds):
    manifest = Manifest.load(tar_ds)
    entry = manifest.shards[1]
    lab = read_sidecar(tar_ds / entry.sidecar, entry.name, manifest.scorer_names)
    path = tar_ds / entry.name
    with tarfile.open(path) as tf:
        members = tf.getmembers()
        payloads = [tf.extractfile(m).read() for m in members]
    want = [
        (json.loads(payloads[i + 1])["id"], payloads[i].decode("utf-8"))
        for i in range(0, len(members), 2)
    ]
    assert len(want) == entry.rows == lab.rows
    spec = ShardSpec(
        entry.name, entry.rows, entry.shard_sha256, entry.shard_bytes, lab.offset, lab.length
    )
    reader = FORMAT.open_local(path, spec)
    try:
        rows = [0, entry.rows - 1, entry.rows // 2]
        assert [(d["id"], d["text"]) for d in map(reader.read, rows)] == [want[r] for r in rows]
    finally:
        reader.close()
