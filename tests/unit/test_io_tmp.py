"""Temporary files carry one recognisable name, and cleanups delete only those: a user's own
``.notes.tmp`` in an output folder survives a resumed run."""

from __future__ import annotations

import os
import stat

import pytest

from quadmix_stream.storage import io
from quadmix_stream.storage.io import atomic_write_bytes, is_stale_tmp, is_tmp_name, open_tmp
from quadmix_stream.training.runguard import remove_stale_tmp, write_file_atomic

pytestmark = pytest.mark.core


def _stale(folder, name: str = "x.json"):
    """A temporary file our writers would leave if killed before the rename."""
    fd, tmp = open_tmp(folder / name)
    os.close(fd)
    return tmp


def test_our_temporary_names_are_recognised_and_a_users_are_not(tmp_path):
    target = tmp_path / "ck.pt"
    ours = io.tmp_path(target)
    assert ours.parent == target.parent and ours.name.startswith(".ck.pt.")
    assert is_tmp_name(ours.name) and ours != io.tmp_path(target)
    for users in (".notes.tmp", ".ck.pt.tmp", ".backup.20240101.tmp", "notes.qms.tmp", ".qms.tmp"):
        assert not is_tmp_name(users), users
        assert not is_stale_tmp(users), users
    # in a folder only we write to, the older names (``.NAME.tmp``, mkstemp's) go too
    assert is_stale_tmp(".step-00000004.pt.tmp", own_folder=True)
    assert is_stale_tmp(".unit-00001.json.k3j_x9a2.tmp", own_folder=True)
    assert not is_stale_tmp("unit-00001.json", own_folder=True)


def test_the_writers_leave_nothing_but_the_file(tmp_path):
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    write_file_atomic(tmp_path / "b.bin", lambda f: f.write(b"b"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]
    # a checkpoint keeps the permissions the umask gives (not mkstemp's 0o600)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from quadmix_stream.training.runguard import OutputError

    def boom(f) -> None:
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(OutputError, match=r"cannot write .*/c.bin: RuntimeError: killed"):
        write_file_atomic(tmp_path / "c.bin", boom)
    assert list(tmp_path.iterdir()) == []


def test_the_trainer_cleanup_keeps_a_users_dotfile(tmp_path):
    out, ck = tmp_path, tmp_path / "checkpoints"
    ck.mkdir()
    (out / ".notes.tmp").write_text("mine")
    (ck / ".notes.tmp").write_text("mine")  # checkpoints/ is ours: an older temp name
    ours = [_stale(out, "log.jsonl"), _stale(ck, "step-00000008.pt")]
    gone = remove_stale_tmp(out) + remove_stale_tmp(ck, own_folder=True)
    assert sorted(gone) == sorted([*ours, ck / ".notes.tmp"])
    assert (out / ".notes.tmp").read_text() == "mine"
    assert not any(p.exists() for p in ours)


def test_the_labelling_cleanup_keeps_a_users_dotfile(tmp_path):
    from quadmix_stream.labelling.records import clean_tmp, work_dir

    done = work_dir(tmp_path) / "done"
    done.mkdir(parents=True)
    (tmp_path / ".notes.tmp").write_text("mine")
    (tmp_path / "shard-00000.mds").write_bytes(b"data")
    ours = [_stale(tmp_path, "shard-00001.mds"), _stale(done, "unit-00001.json")]
    old_name = done / ".unit-00002.json.k3j_x9a2.tmp"  # an earlier version's atomic writer
    old_name.write_text("{")
    assert clean_tmp(tmp_path) == 3
    assert (tmp_path / ".notes.tmp").read_text() == "mine"
    assert (tmp_path / "shard-00000.mds").exists()
    assert not any(p.exists() for p in [*ours, old_name])


def test_every_writer_renames_from_our_temporary_name(tmp_path, monkeypatch, mds_ds):
    """`sample --out`, `synth` and the decompression cache write under our temporary names, so
    a killed run's leftovers are cleaned up and a user's own files never are."""
    import gzip
    import tarfile

    from quadmix_stream.formats.decompress import gunzip_copy
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.materialize import write_sample
    from quadmix_stream.synth import synth

    renamed: list[str] = []
    for fn in ("replace", "rename"):
        real = getattr(os, fn)

        def spy(src, dst, _real=real):
            renamed.append(os.path.basename(os.fspath(src)))
            return _real(src, dst)

        monkeypatch.setattr(os, fn, spy)
    m = Manifest.load(mds_ds)
    write_sample(
        mds_ds, SamplingParams.keep_all(m.domains, m.scorer_names), 0, 0, tmp_path / "s.jsonl"
    )
    synth(tmp_path / "synth", "jsonl", docs_per_domain=2, seed=0, rows_per_shard=10)
    tar = tmp_path / "a.tar"
    with tarfile.open(tar, "w"):
        pass
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(tar.read_bytes()))
    gunzip_copy(tmp_path / "a.tar.gz", "", tmp_path / "cache")
    assert len(renamed) >= 3 and all(is_tmp_name(n) for n in renamed), renamed
