"""Labellers trained on the real corpus (../shared/data), and the labelling benchmark."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from quadmix_stream.cli import main
from quadmix_stream.formats.labels import Manifest, load_labels
from tests.conftest import SHARED_DATA, requires_shared_data
from tests.support.labelling import synth_docs, write_recipe

CORPUS = SHARED_DATA / "corpus"


@requires_shared_data()
@pytest.mark.shared_data
def test_shared_corpus_domain_classifier_and_labelling(tmp_path, capsys):
    from quadmix_stream.labelling.inputs import InputSpec
    from quadmix_stream.labelling.read_raw import iter_documents
    from quadmix_stream.labelling.train_fasttext import train_fasttext_domain

    docs = list(iter_documents(InputSpec(paths=[str(CORPUS / "*.jsonl.gz")], limit=150)))
    assert len({d["domain"] for d in docs}) == 12
    rep = train_fasttext_domain(
        docs, tmp_path / "dom.bin", fasttext_params={"epoch": 10, "dim": 32, "bucket": 200_000}
    )
    assert rep["heldout_accuracy"] >= 0.8, rep
    out = tmp_path / "ds"
    d = {
        "input": {"paths": [str(CORPUS / "*.jsonl.gz")], "limit": 40},
        "output": {"dir": str(out), "format": "mds", "compression": "zstd", "rows_per_shard": 64},
        "labelers": {
            "domain": {"type": "fasttext", "path": str(tmp_path / "dom.bin")},
            "tokens": "whitespace",
            "scorers": [
                {"name": "legal", "type": "field", "field": "meta.legal_score_0_5", "default": 0}
            ],
        },
        "run": {"progress": False, "io_workers": 0},
    }
    assert main(["label", str(write_recipe(tmp_path / "r.yaml", d))]) == 0
    m = Manifest.load(out)
    sizes = _file_docs()
    assert m.rows == sum(min(40, n) for n in sizes.values()) and len(m.domains) == 12
    lab = load_labels(out, m, verify_shards=True)
    # the source's own domain field is kept in the shards: compare with the predicted domain
    from quadmix_stream.formats import open_shard
    from quadmix_stream.formats.mds import mds_index

    idx = mds_index(out)
    truth = []
    for s in range(len(m.shards)):
        r = open_shard(out, m, s, None, None, idx)
        truth += [r.read(i)["meta"]["domain"] for i in range(m.shards[s].rows)]
    agree = np.mean(np.array(m.domains)[lab.domain] == np.array(truth))
    assert agree >= 0.8
    missing = m.extra["labelling"]["issues"]["counts"]["missing_field[legal]"]
    assert missing == m.rows - 40  # only the FineWeb-legal sample carries the score


def _file_docs() -> dict[str, int]:
    """Documents per corpus file."""
    out = {}
    for p in sorted(CORPUS.glob("*.jsonl.gz")):
        with gzip.open(p, "rb") as f:
            out[p.name] = sum(1 for line in f if line.strip())
    return out


@pytest.mark.slow
def test_bench_label_runs_and_prints_ratios(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with gzip.open(corpus / "docs.jsonl.gz", "wt") as f:
        for doc in synth_docs(60, seed=9):
            f.write(json.dumps(doc) + "\n")
    assert main(["bench", "label", "--corpus", str(corpus), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "alone docs/s" in out and "in pipeline docs/s" in out
    assert "pipeline, all labellers" in out and "overhead" in out
    assert "vs bare fasttext predict" in out
