"""Labelling on object storage, against a real S3 API (moto's server on loopback: LocalS3).

* shards in a bucket are labelled in place, and the stream over the bucket yields exactly what
  the same shards labelled locally yield;
* a run SIGKILLed mid-way leaves no manifest (or a consistent one), and a re-run (with a fresh
  local cache, as on another machine) finishes with the bytes of an uninterrupted run;
* raw ``s3://…/*.jsonl.gz`` (and Parquet) input gives the dataset the local files give, written
  to a local ``--out`` or to a remote one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import Manifest
from tests.support.labelling import (  # noqa: F401
    REPO,
    dataset_files,
    ft_models,
    recipe_dict,
    synth_docs,
    write_recipe,
)

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "qms-label"
_NOT_OURS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


# ---------------------------------------------------------------- a real S3 API on loopback
@pytest.fixture(scope="module")
def server() -> Iterator:
    """moto's S3 server on 127.0.0.1; the AWS_* variables point every client at it (this
    process, and the subprocesses it starts)."""
    from tests.support.s3local import LocalS3

    with LocalS3() as srv, pytest.MonkeyPatch.context() as mp:
        for k, v in srv.env().items():
            mp.setenv(k, v)
        for k in (*_NOT_OURS, "S3_ENDPOINT_URL"):
            mp.delenv(k, raising=False)
        yield srv


@pytest.fixture(scope="module")
def s3(server) -> Any:
    """An s3fs filesystem on the local server, for the tests' own checks."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())


def _bucket_files(fs, url: str) -> dict[str, bytes]:
    """The dataset files under ``url`` (shards, sidecars, index.json, manifest), by name."""
    fs.invalidate_cache()
    base = url.removeprefix("s3://")
    names = [p[len(base) + 1 :] for p in fs.find(base)]
    keep = [n for n in names if n.startswith("shard.") or n in ("index.json", "quadmix.json")]
    return {n: fs.cat_file(f"{base}/{n}") for n in sorted(keep)}


# ---------------------------------------------------------------- data
@pytest.fixture(scope="module")
def plain_mds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unlabelled MDS shards (index.json + 8 shards of 10 documents)."""
    from quadmix_stream.synth import synth

    root = tmp_path_factory.mktemp("remote-label")
    synth(root / "synth", "mds", docs_per_domain=16, seed=0, rows_per_shard=10)
    out = root / "plain"
    out.mkdir()
    for p in (root / "synth").iterdir():
        if p.name == "index.json" or (p.name.startswith("shard.") and p.suffix == ".mds"):
            shutil.copy(p, out / p.name)
    assert len(list(out.glob("shard.*.mds"))) == 8
    return out


def _shards_recipe(path: Path, models: dict, shards: str, io_workers: int = 0) -> Path:
    d = recipe_dict(models, Path("unused"))
    d["input"] = {"shards": shards}
    d["output"] = {}
    d["run"]["io_workers"] = io_workers
    return write_recipe(path, d)


@pytest.fixture(scope="module")
def labelled_local(plain_mds: Path, ft_models, tmp_path_factory) -> Path:  # noqa: F811
    """The plain shards labelled in place on the local disk: the reference."""
    tmp = tmp_path_factory.mktemp("local-ref")
    ds = shutil.copytree(plain_mds, tmp / "ds")
    assert main(["label", str(_shards_recipe(tmp / "r.yaml", ft_models, str(ds)))]) == 0
    return ds


def _params(m: Manifest):
    from quadmix_stream.mixing.params import SamplingParams

    return SamplingParams.propose(1, m.domains, m.scorer_names, 3, ranges={"omega": (0.5, 0.9)})[0]


# ---------------------------------------------------------------- tests
def test_label_remote_mds_in_place_streams_like_local(
    server,
    s3,
    plain_mds: Path,
    labelled_local: Path,
    ft_models,  # noqa: F811
    tmp_path: Path,
    capsys,
) -> None:
    from quadmix_stream import QuaDMixDataset
    from quadmix_stream.labelling.roots import default_scratch

    url = f"s3://{BUCKET}/inplace"
    server.upload_dir(plain_mds, url)
    rec = _shards_recipe(tmp_path / "r.yaml", ft_models, url, io_workers=1)
    assert main(["label", str(rec)]) == 0
    assert f"dataset: {url} (mds, 8 shards, 80 documents" in capsys.readouterr().out
    # payload untouched, sidecars and manifest beside it: the bytes of the local run
    assert _bucket_files(s3, url) == dataset_files(labelled_local)
    # every shard was fetched, read and deleted: nothing is left in the local scratch folder
    scratch = default_scratch(url)
    assert not (scratch.exists() and [p for p in scratch.rglob("*") if p.is_file()])

    m = Manifest.load(url)
    p = _params(m)
    remote = [it["id"] for it in QuaDMixDataset(url, p, seed=0, balance=None)]
    local = [it["id"] for it in QuaDMixDataset(labelled_local, p, seed=0, balance=None)]
    assert remote and Counter(remote) == Counter(local)
    assert remote == local  # same order too: it depends on the shard metadata only
    assert len(set(remote)) < len(remote) or len(remote) < m.rows  # θ did select and repeat


def _records(fs, url: str) -> dict[str, dict]:
    fs.invalidate_cache()
    base = url.removeprefix("s3://") + "/.quadmix-label/done"
    try:
        paths = fs.find(base)
    except FileNotFoundError:
        return {}
    return {p: json.loads(fs.cat_file(p)) for p in paths if p.endswith(".json")}


@pytest.mark.slow
def test_kill_mid_run_then_resume_on_another_machine(
    server,
    s3,
    plain_mds: Path,
    labelled_local: Path,
    ft_models,  # noqa: F811
    tmp_path: Path,
    capsys,
    monkeypatch,
) -> None:
    url = f"s3://{BUCKET}/killed"
    server.upload_dir(plain_mds, url)
    rec = _shards_recipe(tmp_path / "r.yaml", ft_models, url, io_workers=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["QUADMIX_CACHE"] = str(tmp_path / "cache-machine-a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "quadmix_stream.cli", "label", str(rec), "--no-progress"]
        + ["--throttle", "0.5"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(_records(s3, url)) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"labelling ended before it could be killed: {proc.stdout.read()!r}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    time.sleep(0.5)  # the I/O helper died with its parent

    records = _records(s3, url)
    assert 2 <= len(records) < 8, sorted(records)
    base = url.removeprefix("s3://")
    s3.invalidate_cache()
    manifest_url = f"{base}/quadmix.json"
    if s3.exists(manifest_url):  # never the case here; if it were, it must be consistent
        m = json.loads(s3.cat_file(manifest_url))
        for s in m["shards"]:
            data = s3.cat_file(f"{base}/{s['sidecar']}")
            assert hashlib.sha256(data).hexdigest() == s["sidecar_sha256"]
    for r in records.values():  # every committed unit's sidecar is in the bucket, whole
        data = s3.cat_file(f"{base}/{r['shard']['sidecar']}")
        assert hashlib.sha256(data).hexdigest() == r["sidecar_sha256"]
    assert not s3.exists(manifest_url)

    # re-run on "another machine": a fresh local cache, everything else from the bucket
    monkeypatch.setenv("QUADMIX_CACHE", str(tmp_path / "cache-machine-b"))
    assert main(["label", str(rec), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(records)} finished unit(s)" in out, out
    assert f"in {8 - len(records)} of 8 units" in out, out
    assert _bucket_files(s3, url) == dataset_files(labelled_local)
    assert Manifest.load(url).rows == 80


def test_raw_remote_input_gives_the_local_dataset(
    server,
    s3,
    ft_models,  # noqa: F811
    tmp_path: Path,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = synth_docs(8, seed=3)  # 40 documents in 3 files: 2 JSONL.gz, 1 Parquet
    raw = tmp_path / "raw"
    raw.mkdir()
    for k, part in enumerate((docs[:15], docs[15:28])):
        body = "".join(json.dumps(d) + "\n" for d in part).encode()
        (raw / f"part-{k}.jsonl.gz").write_bytes(gzip.compress(body, mtime=0))
    pq.write_table(pa.Table.from_pylist(docs[28:]), raw / "part-2.parquet", row_group_size=5)
    server.upload_dir(raw, f"s3://{BUCKET}/raw")

    def label(inputs: list[str], out: str, name: str) -> None:
        d = recipe_dict(ft_models, Path("unused"))
        d["input"] = {"paths": inputs}
        d["output"] = {"dir": out, "format": "mds", "rows_per_shard": 6}
        assert main(["label", str(write_recipe(tmp_path / f"{name}.yaml", d))]) == 0

    label([str(raw / "*.jsonl.gz"), str(raw / "*.parquet")], str(tmp_path / "local"), "a")
    remote_in = [f"s3://{BUCKET}/raw/*.jsonl.gz", f"s3://{BUCKET}/raw/*.parquet"]
    label(remote_in, str(tmp_path / "from-s3"), "b")
    want = dataset_files(tmp_path / "local")
    assert Manifest.load(tmp_path / "local").rows == 40
    assert dataset_files(tmp_path / "from-s3") == want
    # a remote --out too: shards, sidecars, index.json and manifest in the bucket
    label(remote_in, f"s3://{BUCKET}/labelled", "c")
    assert _bucket_files(s3, f"s3://{BUCKET}/labelled") == want
