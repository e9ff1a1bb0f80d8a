"""Shared fixtures: small planted synthetic datasets in every shard format."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# decompressed-shard cache of the tests: a fresh folder, not the user's ~/.cache
os.environ.setdefault("QUADMIX_CACHE", tempfile.mkdtemp(prefix="qms-test-cache-"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Test modules that import an extra's packages when collected: not collected where that extra is
# missing (CI's core-only environment runs `pytest -m core`; the dev environment has them all).
_COLLECT_NEEDS = {"*/test_search_*.py": "lightgbm", "*/test_s3local.py": "moto"}
collect_ignore_glob = [
    glob for glob, module in _COLLECT_NEEDS.items() if importlib.util.find_spec(module) is None
]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synth")


def _make(root: Path, fmt: str, docs: int = 240, rows: int = 100) -> Path:
    from quadmix_stream.synth import synth

    out = root / f"{fmt}-{docs}-{rows}"
    if not out.exists():
        synth(out, fmt, docs_per_domain=docs, seed=0, rows_per_shard=rows)
    return out


@pytest.fixture(scope="session")
def mds_ds(synth_root: Path) -> Path:
    return _make(synth_root, "mds")


@pytest.fixture(scope="session")
def tar_ds(synth_root: Path) -> Path:
    return _make(synth_root, "tar")


@pytest.fixture(scope="session")
def jsonl_ds(synth_root: Path) -> Path:
    return _make(synth_root, "jsonl")


@pytest.fixture(scope="session")
def parquet_ds(synth_root: Path) -> Path:
    return _make(synth_root, "parquet")


@pytest.fixture(scope="session", params=["mds", "tar", "jsonl", "parquet", "arrow"])
def any_ds(request: pytest.FixtureRequest, synth_root: Path) -> Path:
    return _make(synth_root, request.param)


def requires_shared_data() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")


@pytest.fixture(scope="session")
def many_shards_ds(synth_root: Path) -> Path:
    """1,000 JSONL shards of 8 documents: many windows per consumer, cheap to walk."""
    return _make(synth_root, "jsonl", docs=1600, rows=8)
