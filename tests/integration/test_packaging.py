"""Packaging: every package folder is installed, under the quadmix_stream namespace only."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_and_namespaced():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {
        "quadmix_stream." + ".".join(p.parent.relative_to(ROOT / "quadmix_stream").parts)
        if p.parent != ROOT / "quadmix_stream"
        else "quadmix_stream"
        for p in (ROOT / "quadmix_stream").rglob("__init__.py")
    }
    found |= {"quadmix_stream.loaders", "quadmix_stream.trainers"}
    assert found == listed
    assert all(
        name.startswith("quadmix_stream") for name in listed
    )  # no top-level loaders/trainers
    assert cfg["package-dir"]["quadmix_stream.loaders"] == "loaders"
    assert cfg["package-dir"]["quadmix_stream.trainers"] == "trainers"
