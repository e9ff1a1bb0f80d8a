"""sidecar.py: one shard's labels written as a deterministic ``.npz`` and read back without
unpickling; every bad sidecar is a ``LabelError`` naming the shard and the field."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quadmix_stream.errors import UserError
from quadmix_stream.formats.sidecar import LabelError, ShardLabels, read_sidecar, write_sidecar

pytestmark = pytest.mark.core

SCORERS = ["clean", "noise"]


def labels(rows: int = 4, tar: bool = False) -> ShardLabels:
    return ShardLabels(
        key=np.arange(rows, dtype=np.uint64) * np.uint64(2**61 + 7),
        domain=np.arange(rows, dtype=np.int32) % 3,
        tokens=np.arange(rows, dtype=np.int64) * 10 + 1,
        scores=np.arange(rows * 2, dtype=np.float64).reshape(rows, 2) / 7,
        offset=np.arange(rows, dtype=np.int64) * 2048 if tar else None,
        length=np.full(rows, 2048, dtype=np.int64) if tar else None,
    )


def save(path, **cols) -> None:
    """A sidecar written by numpy directly (not by ``write_sidecar``): for bad files."""
    base = {
        "key": np.arange(3, dtype=np.uint64),
        "domain": np.zeros(3, np.int32),
        "tokens": np.ones(3, np.int64),
        "scores": np.zeros((3, 2)),
        "scorers": np.frombuffer(json.dumps(SCORERS).encode(), dtype=np.uint8),
    }
    base.update(cols)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})


def test_label_error_is_a_user_error():
    assert issubclass(LabelError, UserError) and issubclass(LabelError, ValueError)


def test_rows():
    assert labels(5).rows == 5
    assert labels(0).rows == 0


def test_write_returns_the_files_sha256_and_reads_back(tmp_path):
    path = tmp_path / "shard.00000.labels.npz"
    lab = labels(4)
    sha = write_sidecar(path, lab, SCORERS)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    back = read_sidecar(path, "shard.00000.mds", SCORERS)
    assert back.key.dtype == np.uint64 and back.key.tolist() == lab.key.tolist()
    assert back.key[3] == np.uint64(3 * (2**61 + 7) % 2**64)  # full 64-bit keys survive
    assert back.domain.dtype == np.int32 and back.domain.tolist() == [0, 1, 2, 0]
    assert back.tokens.dtype == np.int64 and back.tokens.tolist() == [1, 11, 21, 31]
    assert back.scores.dtype == np.float64
    assert np.array_equal(back.scores, lab.scores)
    assert back.offset is None and back.length is None


def test_text_checksums_round_trip_and_are_optional(tmp_path):
    path = tmp_path / "s.labels.npz"
    lab = labels(3)
    lab.digest = np.array([0, 7, 2**32 - 1], dtype=np.uint32)
    write_sidecar(path, lab, SCORERS)
    back = read_sidecar(path, "s.mds", SCORERS)
    assert back.digest.dtype == np.uint32 and back.digest.tolist() == [0, 7, 2**32 - 1]
    save(tmp_path / "old.npz")  # a sidecar written before checksums existed
    assert read_sidecar(tmp_path / "old.npz", "s.mds", SCORERS).digest is None


def test_text_checksums_of_another_type(tmp_path):
    path = tmp_path / "s.npz"
    save(path, digest=np.zeros(3, np.float64))
    with pytest.raises(
        LabelError, match=r"^shard 's': sidecar field 'digest' must be uint32, got float64$"
    ):
        read_sidecar(path, "s", SCORERS)


def test_tar_offsets_round_trip(tmp_path):
    path = tmp_path / "s.labels.npz"
    write_sidecar(path, labels(3, tar=True), SCORERS)
    back = read_sidecar(path, "s.tar", SCORERS)
    assert back.offset.tolist() == [0, 2048, 4096]
    assert back.length.tolist() == [2048] * 3


def test_a_plain_npz_with_fixed_timestamps(tmp_path):
    path = tmp_path / "s.labels.npz"
    write_sidecar(path, labels(3, tar=True), SCORERS)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert sorted(i.filename for i in infos) == sorted(
        f"{n}.npy" for n in ("key", "domain", "tokens", "scores", "scorers", "offset", "length")
    )
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    with np.load(path, allow_pickle=False) as z:  # any numpy reads it, no pickle needed
        assert json.loads(z["scorers"].tobytes()) == SCORERS
        assert z["scores"].shape == (3, 2)


def test_same_labels_same_bytes(tmp_path, monkeypatch):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    sha_a = write_sidecar(a, labels(6), SCORERS)
    later = time.time() + 3 * 86400.0
    monkeypatch.setattr(time, "time", lambda: later)  # a write days later: no clock in the bytes
    sha_b = write_sidecar(b, labels(6), SCORERS)
    assert sha_a == sha_b and a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.npz"
    other = labels(6)
    other.tokens[0] += 1
    assert write_sidecar(c, other, SCORERS) != sha_a


def test_write_converts_dtypes_and_shapes(tmp_path):
    lab = ShardLabels(
        key=np.array([1, 2]),
        domain=[0, 1],
        tokens=[5.0, 6.0],
        scores=[0.5, 0.25],  # flat: one scorer
    )
    path = tmp_path / "s.npz"
    write_sidecar(path, lab, ["q"])
    with np.load(path) as z:
        assert z["key"].dtype == np.uint64
        assert z["domain"].dtype == np.int32
        assert z["tokens"].dtype == np.int64
        assert z["scores"].shape == (2, 1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.integers(0, 30),
    n_scorers=st.integers(1, 4),
    tar=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip(tmp_path, rows, n_scorers, tar, seed):
    rng = np.random.default_rng(seed)
    lab = ShardLabels(
        key=rng.integers(0, 2**64 - 1, rows, dtype=np.uint64, endpoint=True),
        domain=rng.integers(0, 100, rows).astype(np.int32),
        tokens=rng.integers(0, 10**12, rows),
        scores=rng.normal(size=(rows, n_scorers)) * 1e6,
        offset=rng.integers(0, 10**12, rows) if tar else None,
        length=rng.integers(0, 10**6, rows) if tar else None,
    )
    names = [f"s{i}" for i in range(n_scorers)]
    path = tmp_path / "r.npz"
    write_sidecar(path, lab, names)
    back = read_sidecar(path, "x", names)
    for f in ("key", "domain", "tokens", "scores", "offset", "length"):
        want, got = getattr(lab, f), getattr(back, f)
        if want is None:
            assert got is None
        else:
            assert np.array_equal(got, want) and got.shape == want.shape


# ---------------------------------------------------------------- bad sidecars
def test_missing_sidecar(tmp_path):
    with pytest.raises(
        LabelError, match=r"^shard 'shard\.00003\.tar': label sidecar gone\.labels\.npz is missing$"
    ):
        read_sidecar(tmp_path / "gone.labels.npz", "shard.00003.tar", SCORERS)


def test_corrupt_sidecar(tmp_path):
    path = tmp_path / "bad.labels.npz"
    write_sidecar(path, labels(3), SCORERS)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(
        LabelError, match=r"^shard 's': label sidecar bad\.labels\.npz is unreadable \("
    ):
        read_sidecar(path, "s", SCORERS)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(LabelError, match="is unreadable"):
        read_sidecar(path, "s", SCORERS)


def test_pickled_columns_are_never_loaded(tmp_path):
    path = tmp_path / "p.npz"
    buf = io.BytesIO()
    np.savez(buf, key=np.array([object()], dtype=object))  # an object array: needs pickle
    path.write_bytes(buf.getvalue())
    with pytest.raises(LabelError, match=r"p\.npz is unreadable \(.*allow_pickle"):
        read_sidecar(path, "s", SCORERS)


@pytest.mark.parametrize("field", ["key", "domain", "tokens", "scores", "scorers"])
def test_missing_field(tmp_path, field):
    path = tmp_path / "m.npz"
    save(path, **{field: None})
    with pytest.raises(LabelError, match=rf"^shard 's1': sidecar field '{field}' is missing$"):
        read_sidecar(path, "s1", SCORERS)


def test_scorers_differ_from_the_manifest(tmp_path):
    path = tmp_path / "s.npz"
    write_sidecar(path, labels(2), SCORERS)
    with pytest.raises(
        LabelError,
        match=r"^shard 's': sidecar field 'scores' has scorers \['clean', 'noise'\], "
        r"manifest has \['noise', 'clean'\]$",
    ):
        read_sidecar(path, "s", ["noise", "clean"])


@pytest.mark.parametrize("field", ["domain", "tokens", "offset", "length", "digest"])
def test_column_of_another_length(tmp_path, field):
    path = tmp_path / "s.npz"
    save(path, **{field: np.zeros(2, np.int64)})
    with pytest.raises(
        LabelError, match=rf"^shard 's': sidecar field '{field}' has 2 rows, key has 3$"
    ):
        read_sidecar(path, "s", SCORERS)


def test_scores_of_another_shape(tmp_path):
    path = tmp_path / "s.npz"
    save(path, scores=np.zeros((3, 1)))
    with pytest.raises(
        LabelError,
        match=r"^shard 's': sidecar field 'scores' has shape \(3, 1\), expected \(3, 2\)$",
    ):
        read_sidecar(path, "s", SCORERS)
    save(path, scores=np.zeros(6))
    with pytest.raises(LabelError, match=r"has shape \(6,\), expected \(3, 2\)"):
        read_sidecar(path, "s", SCORERS)


# ---------------------------------------------------------------- malformed columns
@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe"])
def test_bad_scorers_member_is_a_label_error(tmp_path, raw):
    path = tmp_path / "s.npz"
    save(path, scorers=np.frombuffer(raw, dtype=np.uint8))
    with pytest.raises(LabelError, match=r"shard 's': sidecar field 'scorers'"):
        read_sidecar(path, "s", SCORERS)


def test_scalar_column_is_a_label_error(tmp_path):
    path = tmp_path / "s.npz"
    save(path, domain=np.int32(1))
    with pytest.raises(LabelError, match=r"shard 's': sidecar field 'domain'"):
        read_sidecar(path, "s", SCORERS)


def test_non_numeric_key_is_a_label_error(tmp_path):
    path = tmp_path / "s.npz"
    save(path, key=np.array(["a", "b", "c"]))
    with pytest.raises(LabelError, match=r"shard 's': sidecar field 'key'"):
        read_sidecar(path, "s", SCORERS)


def test_two_dimensional_key_is_a_label_error(tmp_path):
    path = tmp_path / "s.npz"
    save(
        path,
        key=np.arange(6, dtype=np.uint64).reshape(3, 2),
        domain=np.zeros(6, np.int32),
        tokens=np.ones(6, np.int64),
        scores=np.zeros((6, 2)),
    )
    with pytest.raises(LabelError, match=r"shard 's': sidecar field 'key'"):
        read_sidecar(path, "s", SCORERS)


def test_sidecars_read_from_many_threads_at_once(tmp_path):
    """The stream reads sidecars from its prefetch threads while the main thread reads others."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(4):
        paths.append(tmp_path / f"s{i}.labels.npz")
        write_sidecar(paths[-1], labels(3 + i, tar=True), SCORERS)

    def read_many(path) -> int:
        return sum(read_sidecar(path, path.name, SCORERS).rows for _ in range(50))

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read_many, paths * 2))
    assert got == [50 * (3 + i) for i in range(4)] * 2


@pytest.mark.parametrize("writer", [np.savez, np.savez_compressed])
def test_npz_reader_gives_numpys_arrays_and_refuses_what_numpy_refuses(tmp_path, writer):
    """``read_npz`` parses numpy's own headers without numpy's ``ast`` parse (thread-safe): every
    dtype and layout comes back as ``np.load`` gives it, writable; object arrays are refused."""
    import io

    from quadmix_stream.storage.io import read_npz

    rng = np.random.default_rng(0)
    arrays = {
        "f8": rng.normal(size=(50, 3)),
        "u8": np.arange(7, dtype=np.uint64),
        "scalar": np.array(3.5),
        "empty": np.zeros((0, 2), np.float32),
        "fortran": np.asfortranarray(rng.normal(size=(4, 5))),
        "text": np.array(["x", "yz"]),
        "bool": np.ones(3, bool),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
    }
    path = tmp_path / "a.npz"
    writer(path, **arrays)
    got = read_npz(path)
    assert sorted(got) == sorted(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert np.array_equal(got[k], v) and got[k].flags.writeable, k
    buf = io.BytesIO()
    np.savez(buf, o=np.array([{}], dtype=object))
    buf.seek(0)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npz(buf)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises((ValueError, OSError)):
        read_npz(tmp_path / "junk.npz")


@pytest.mark.parametrize("writer", ["sidecar", "savez", "savez_compressed"])
def test_stored_zips_are_walked_by_their_local_headers_and_a_flipped_byte_is_caught(
    tmp_path, writer
):
    """Sidecars (and ``np.savez`` files) are read by walking their local headers, each member's
    CRC-32 checked; compressed zips go to ``zipfile``; a flipped byte is an error either way."""
    from quadmix_stream.storage.io import _stored_members, read_npz

    path = tmp_path / "a.npz"
    if writer == "sidecar":
        write_sidecar(path, labels(50, tar=True), ["s0", "s1"])
    else:
        getattr(np, writer)(path, key=np.arange(50, dtype=np.uint64), scores=np.ones((50, 2)))
    data = path.read_bytes()
    members = _stored_members(data)
    assert (members is None) == (writer == "savez_compressed")
    if members is not None:
        with zipfile.ZipFile(path) as z:
            assert members == {i.filename: z.read(i) for i in z.infolist()}
    with zipfile.ZipFile(path) as z:  # the middle of the key member's (stored or packed) bytes
        info = z.getinfo("key.npy")
    head = data[info.header_offset + 26 : info.header_offset + 30]
    start = (
        info.header_offset
        + 30
        + int.from_bytes(head[:2], "little")
        + int.from_bytes(head[2:], "little")
    )
    at = start + info.compress_size // 2
    bad = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    assert _stored_members(bad) is None
    path.write_bytes(bad)
    with pytest.raises(Exception, match="CRC|crc|Error|error"):
        read_npz(path)
