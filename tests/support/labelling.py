"""Shared helpers and fixtures of the labelling tests (real, tiny models trained here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quadmix_stream.labelling.inputs import InputSpec
from quadmix_stream.labelling.read_raw import iter_documents

REPO = Path(__file__).resolve().parents[2]
#: small fasttext models: the tests need real ones, not big ones
FT_SMALL = {"epoch": 8, "dim": 16, "bucket": 20000, "wordNgrams": 2}


def synth_docs(docs_per_domain: int, seed: int, **kw) -> list[dict]:
    spec = InputSpec(synthetic={"docs_per_domain": docs_per_domain, "seed": seed, **kw})
    return list(iter_documents(spec))


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path


@pytest.fixture(scope="session")
def ft_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fasttext domain + DCLM-style quality classifiers trained on synthetic documents."""
    from quadmix_stream.labelling.train_fasttext import (
        train_fasttext_domain,
        train_fasttext_quality,
    )

    d = tmp_path_factory.mktemp("ft_models")
    rep_d = train_fasttext_domain(
        synth_docs(120, seed=11), d / "domain.bin", fasttext_params=FT_SMALL
    )
    pos = synth_docs(200, seed=12, levels=[0], domains=["arith", "facts"])
    neg = synth_docs(80, seed=13)
    rep_q = train_fasttext_quality(
        pos, neg, d / "quality.bin", fasttext_params={**FT_SMALL, "epoch": 25}
    )
    (d / "reports.json").write_text(json.dumps({"domain": rep_d, "quality": rep_q}))
    return {"domain": d / "domain.bin", "quality": d / "quality.bin", "dir": d}


def recipe_dict(models: dict[str, Path], out: Path, **over) -> dict:
    """A small synthetic-input recipe using the session's fasttext models."""
    r = {
        "name": "test",
        "input": {"synthetic": {"docs_per_domain": 40, "seed": 0}},
        "output": {"dir": str(out), "format": "mds", "rows_per_shard": 45},
        "labelers": {
            "domain": {"type": "fasttext", "path": str(models["domain"])},
            "tokens": "whitespace",
            "scorers": [
                {"name": "dclm", "type": "fasttext", "path": str(models["quality"]), "label": "hq"},
                {
                    "name": "level",
                    "type": "field",
                    "field": "quality_level",
                    "higher_is_better": False,
                },
            ],
        },
        "run": {"io_workers": 0, "progress": False},
    }
    for k, v in over.items():
        r[k] = v
    return r


def write_recipe(path: Path, d: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(d))
    return path


def dataset_files(root: Path) -> dict[str, bytes]:
    """Every file of a labelled dataset (shards, sidecars, index.json, manifest), by name."""
    out = {}
    for p in sorted(root.iterdir()):
        if p.is_file() and (
            p.name.startswith("shard.") or p.name in ("index.json", "quadmix.json")
        ):
            out[p.name] = p.read_bytes()
    return out


def run_cli(
    args: list[str], env: dict | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "quadmix_stream.cli", *args],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_alignment(root: Path, labelers: dict, fields_for: dict | None = None) -> int:
    """Read every row of a labelled dataset and check each label against the bare labeller.

    ``labelers``: column → labeller (domain, tokens, scorers); returns the rows checked.
    """
    from quadmix_stream.formats import open_shard
    from quadmix_stream.formats.labels import Manifest, load_labels
    from quadmix_stream.formats.mds import mds_index
    from quadmix_stream.mixing.hashing import doc_key

    m = Manifest.load(root)
    lab = load_labels(root, m, verify_shards=True)
    idx = mds_index(root) if m.format == "mds" else None
    n = 0
    for s in range(len(m.shards)):
        lo, hi = lab.shard_start[s], lab.shard_start[s + 1]
        off = lab.offset[lo:hi] if lab.offset is not None else None
        ln = lab.length[lo:hi] if lab.length is not None else None
        r = open_shard(root, m, s, off, ln, idx)
        docs = [r.read(i) for i in range(hi - lo)]
        r.close()
        texts = [d["text"] for d in docs]
        flat = [{"id": d["id"], "text": d["text"], **d["meta"]} for d in docs]
        assert [doc_key(str(d["id"])) for d in docs] == lab.key[lo:hi].tolist()
        for col, labeler in labelers.items():
            got = labeler(texts, flat)
            if col == "domain":
                want = np.array([m.domains.index(x) for x in got])
                assert np.array_equal(want, lab.domain[lo:hi]), f"shard {s}: domain"
            elif col == "tokens":
                assert np.array_equal(got, lab.tokens[lo:hi]), f"shard {s}: tokens"
            else:
                j = m.scorer_names.index(col)
                assert np.allclose(got, lab.scores[lo:hi, j], rtol=0, atol=1e-12), col
        n += hi - lo
    return n
