"""Resumes that must not redo work: fingerprints of what changes results, not of spelling or time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from quadmix_stream.flow.run import _same_run_or_fail
from quadmix_stream.labelling.train import run_train_job
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.recipe import RecipeError
from quadmix_stream.search.proxy import stream_fingerprint
from tests.support.labelling import synth_docs, write_jsonl


def test_stream_fingerprint_ignores_provenance_and_extra_only():
    p = SamplingParams.keep_all(["a", "b"], ["q"])
    stamped = dataclasses.replace(
        p, provenance="selected again", extra={"search": {"selected": "2026-01-01T00:00:00"}}
    )
    assert stream_fingerprint(stamped) == stream_fingerprint(p)
    assert stamped.fingerprint() == p.fingerprint()  # the params fingerprint is the stream's too
    other = dataclasses.replace(p, omega=[1.0, 0.5])
    assert stream_fingerprint(other) != stream_fingerprint(p)
    assert stream_fingerprint(dataclasses.replace(p, form="exponent")) != stream_fingerprint(p)


def test_a_labeller_is_not_retrained_for_another_spelling_of_its_input(tmp_path: Path):
    src = write_jsonl(tmp_path / "data" / "docs.jsonl", synth_docs(40, seed=3))
    (tmp_path / "other").mkdir()
    job = {
        "type": "fasttext-domain",
        "input": {"paths": [str(src)]},
        "out": str(tmp_path / "dom.bin"),
        "fasttext": {"epoch": 2},
    }
    assert run_train_job(job, tmp_path)[2]  # trained
    stamp = (tmp_path / "dom.bin").stat().st_mtime_ns
    for spelling in ("other/../data/docs.jsonl", "./data/docs.jsonl", "data/*.jsonl"):
        again = dict(job, input={"paths": [spelling]})
        assert not run_train_job(again, tmp_path)[2], spelling
    assert (tmp_path / "dom.bin").stat().st_mtime_ns == stamp
    # the same spelling with other content is another job
    write_jsonl(src, synth_docs(30, seed=4))
    assert run_train_job(job, tmp_path)[2]


def test_a_flow_training_resumes_when_only_the_params_provenance_changed(tmp_path: Path):
    p = SamplingParams.keep_all(["a", "b"], ["q"])
    path = tmp_path / "params.json"
    p.save(path)
    body = {"train": {"steps": 10}}
    _same_run_or_fail(tmp_path / "train", body, path)
    # a resumed search rewrites params.json: new time stamp, same stream → same training
    dataclasses.replace(p, extra={"search": {"selected": "later"}}, provenance="again").save(path)
    _same_run_or_fail(tmp_path / "train", body, path)
    dataclasses.replace(p, omega=[1.0, 0.5]).save(path)  # another stream: refused
    with pytest.raises(RecipeError, match="another params file"):
        _same_run_or_fail(tmp_path / "train", body, path)
