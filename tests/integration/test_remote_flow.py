"""The tools on a dataset in object storage: the trainer killed and resumed, the search, inspect.

Everything reads ``s3://`` through moto's real S3 server on the loopback interface, behind a
fault-injecting proxy (dropped connections, 503s, truncated bodies). torchrun ranks find the
endpoint in the environment, as they would find AWS credentials. What each tool does with the
URL must be what it does with the same dataset on local disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.training.launch import torchrun_command
from tests.support.s3local import FaultProxy, LocalS3
from tests.support.streamutil import kill_tree

BUCKET = "qms-flow"
STEPS = 20
BATCH, SEQ_LEN = 4, 32


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A tiny JSONL.zst dataset on local disk and at ``s3://qms-flow/jsonl``, read through a fault proxy
    by this process and its children."""
    from quadmix_stream.synth import synth

    root = tmp_path_factory.mktemp("remote-flow")
    with LocalS3() as server, FaultProxy(server.endpoint_url, seed=7) as proxy:
        saved = dict(os.environ)
        os.environ.update(server.env(proxy.endpoint_url))
        try:
            synth(root / "jsonl", "jsonl", docs_per_domain=60, seed=0, rows_per_shard=30)
            server.upload_dir(root / "jsonl", f"s3://{BUCKET}/jsonl")
            yield server, proxy, root
        finally:
            os.environ.clear()
            os.environ.update(saved)


# ---------------------------------------------------------------- the trainer
def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]


def _trainer(recipe: Path, cache: Path, **popen) -> subprocess.Popen:
    # each invocation its own node-local cache: the resumed run reads S3 again, not the files
    # the killed one left behind
    env = {**os.environ, "QUADMIX_CACHE": str(cache)}
    cmd = torchrun_command(2, "-m", "quadmix_stream.trainers.pretrain", str(recipe))
    return subprocess.Popen(cmd, env=env, start_new_session=True, **popen)


def _uninterrupted(local: Path, params: SamplingParams, tokenizer: Path) -> list[dict]:
    """Per step, what an uninterrupted 2-rank run trains on: the trainer's loader of each rank on
    the local copy, without the model (the documents do not depend on it). The trainer's one
    DataLoader worker per rank is the rank's only consumer, as the loading process is here.
    Returns ``[{"docs": [...], "batch_sha": ...}]`` gathered as the trainer logs them."""
    from quadmix_stream.loaders.stateful import make_loader
    from quadmix_stream.stream.dataset import QuaDMixDataset
    from quadmix_stream.stream.packing import PackedDataset
    from quadmix_stream.training.tokenizer import TextTokenizer

    tok = TextTokenizer(tokenizer)
    per_rank = []
    for rank in range(2):
        ds = QuaDMixDataset(
            local, params, seed=0, infinite=True, shuffle_block_shards=256, rank=rank, world_size=2
        )
        packed = PackedDataset(ds, tok, SEQ_LEN, track_docs=True)
        it = iter(make_loader(packed, BATCH, 0))
        per_rank.append([next(it) for _ in range(STEPS)])
    steps = []
    for batches in zip(*per_rank, strict=True):
        digests = [hashlib.sha256(b["input_ids"].numpy().tobytes()).hexdigest() for b in batches]
        docs = [v for b in batches for v in b["doc_ids"].flatten().tolist() if v >= 0]
        sha = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
        steps.append({"docs": docs, "batch_sha": sha})
    return steps


@pytest.mark.slow
def test_trainer_killed_and_resumed_on_s3_trains_each_document_once(s3, tmp_path):
    """The issue's "done when": torchrun, 2 ranks, ``data.dataset: s3://…`` through a faulty
    endpoint, SIGKILL mid-run, resume: the documents of every step are those of an
    uninterrupted run, none lost and none repeated."""
    _, proxy, root = s3
    url = f"s3://{BUCKET}/jsonl"
    m = Manifest.load(root / "jsonl")
    params = SamplingParams.propose(
        1, m.domains, m.scorer_names, seed=4, ranges={"omega": (0.4, 0.9), "lam": (1, 20)}
    )[0]
    params.save(tmp_path / "p.json")
    out = tmp_path / "run"
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "dataset": url,
                    "params": str(tmp_path / "p.json"),
                    "seq_len": SEQ_LEN,
                    "workers": 1,
                    "track_docs": True,
                    "vocab_size": 300,
                    "cache_limit": "20mb",
                },
                "model": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
                "train": {
                    "steps": STEPS,
                    "batch_size": 2 * BATCH,  # 2 ranks
                    "micro_batch_size": BATCH,
                    "checkpoint_every": 4,
                    "keep_last": 2,
                    "threads": 1,
                    "warmup_steps": 2,
                },
                "out": str(out),
            }
        )
    )
    proxy.reset_counters()
    proxy.faults, proxy.max_faults = {"drop": 0.04, "error": 0.04, "truncate": 0.04}, 8
    try:
        proc = _trainer(recipe, tmp_path / "cache-a", stdout=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (out / "log.jsonl").exists() and any(
                x.get("event") == "checkpoint" and x["step"] >= 4 for x in _log(out)
            ):
                break
            time.sleep(0.02)
        kill_tree(proc.pid)  # torchrun and both ranks, mid-run
        proc.wait()
        first = sum(proxy.faults_injected.values())
        done = max(x["step"] for x in _log(out) if "loss" in x)
        assert done < STEPS, "the run finished before it could be killed"
        proxy.reset_counters()  # a few more faults for the resumed run
        again = _trainer(recipe, tmp_path / "cache-b", stderr=subprocess.PIPE, text=True)
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err[-3000:]
    finally:
        proxy.faults = {}
    assert first + sum(proxy.faults_injected.values()) > 0

    log = _log(out)
    steps = {r["step"]: r for r in log if "loss" in r}
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert len([r for r in log if "loss" in r]) == STEPS  # the killed try's extra steps were cut
    resumed = [r for r in log if r.get("event") == "resume"]
    assert len(resumed) == 1 and resumed[0]["exact"] and resumed[0]["step"] < STEPS
    start = next(r for r in log if r.get("event") == "start")
    assert start["dataset"] == {"location": url, "fingerprint": m.fingerprint()}

    want = _uninterrupted(root / "jsonl", params, out / "tokenizer.json")
    for s in range(1, STEPS + 1):  # same documents and the same token blocks, step by step
        assert steps[s]["docs"] == want[s - 1]["docs"], s
        assert steps[s]["batch_sha"] == want[s - 1]["batch_sha"], s
    docs = Counter(d for s in range(1, STEPS + 1) for d in steps[s]["docs"])
    assert docs and max(docs.values()) == 1  # no document copy started twice


# ---------------------------------------------------------------- the search
def _small_search(dataset: str | Path):
    """The smallest search that fits a regressor: 8 proxies of 6 steps, trained as one batched
    group, no RegMix, no rounds, θ* shipped unmeasured. The target set is the default
    ``{dataset}/eval_sets/target.jsonl`` (on S3 for the remote run)."""
    from quadmix_stream.search.config import SearchConfig

    return SearchConfig.from_dict(
        {
            "dataset": str(dataset),
            "proposals": {"n": 8, "seed": 1},
            "tokenizer": {"vocab_size": 300, "max_docs": 300},
            "proxy": {
                "model": {
                    "hidden_size": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                    "intermediate_size": 64,
                },
                "seq_len": 32,
                "batch_size": 4,
                "tokens": 4 * 32 * 6,
                "lr": 0.003,
                "eval_max_tokens": 1024,
                "group": 8,
                "threads": 1,
                "device": "cpu",
                "max_epochs": 1000,
            },
            "select": {"n": 2000, "top_k": 5},
            "evaluate": False,
        }
    )


def _search(cfg, out: Path) -> Path:
    """``run_all`` without its report (plots: the slowest step, and not about the data)."""
    from quadmix_stream.search.pipeline import step_fit, step_propose, step_proxies, step_select

    quiet = dict(log=lambda s: None)
    step_propose(out, cfg, **quiet)
    step_proxies(out, **quiet)
    step_fit(out, **quiet)
    step_select(out, **quiet)
    return out


@pytest.mark.slow
def test_search_on_s3_ships_the_params_of_the_local_search(s3, tmp_path):
    """Same pool, same streams, same proxies: the search on the URL ships bit for bit the θ of
    the search on the local copy, and its run folder names the dataset by URL + fingerprint."""
    from quadmix_stream.search.config import SearchConfigError, SynthConfig
    from quadmix_stream.search.pipeline import ensure_dataset
    from quadmix_stream.search.proxy import stream_fingerprint
    from quadmix_stream.search.runfolder import RunFolder

    _, proxy, root = s3
    url = f"s3://{BUCKET}/jsonl"
    local = _search(_small_search(root / "jsonl"), tmp_path / "local")
    proxy.reset_counters()
    proxy.faults, proxy.max_faults = {"drop": 0.05, "error": 0.05, "truncate": 0.05}, 6
    try:
        remote = _search(_small_search(url), tmp_path / "remote")
    finally:
        proxy.faults = {}
    assert sum(proxy.faults_injected.values()) > 0

    assert (remote / "tokenizer.json").read_bytes() == (local / "tokenizer.json").read_bytes()
    losses = [
        [(r["name"], r["loss"]) for r in map(json.loads, (d / "results.jsonl").open())]
        for d in (local, remote)
    ]
    assert losses[0] == losses[1]  # every proxy saw the same tokens
    a = SamplingParams.load(local / "params.json")
    b = SamplingParams.load(remote / "params.json")
    assert b.to_vector().tobytes() == a.to_vector().tobytes()
    assert stream_fingerprint(b) == stream_fingerprint(a) and b.fingerprint() == a.fingerprint()
    ia, ib = a.extra["search"], b.extra["search"]
    assert ib["dataset"] == url and ia["dataset"] == str((root / "jsonl").resolve())
    assert ib["dataset_fingerprint"] == ia["dataset_fingerprint"]
    same = {k: v for k, v in ia.items() if k not in ("dataset", "run_folder", "selected")}
    assert same == {k: v for k, v in ib.items() if k in same}

    meta = json.loads((remote / "search.json").read_text())
    fp = Manifest.load(root / "jsonl").fingerprint()
    assert meta["dataset"]["path"] == url and meta["dataset"]["remote"] is True
    assert meta["dataset"]["fingerprint"] == fp and meta["config"]["dataset"] == url
    # the target set came from the bucket into the run folder, with the local file's hash
    local_target = root / "jsonl" / "eval_sets" / "target.jsonl"
    assert meta["target"]["url"] == f"{url}/eval_sets/target.jsonl"
    assert Path(meta["target"]["path"]).parent == remote / "eval_sets"
    assert (
        meta["target"]["sha256"]
        == json.loads((local / "search.json").read_text())["target"]["sha256"]
    )
    assert Path(meta["target"]["path"]).read_bytes() == local_target.read_bytes()
    folder = RunFolder(remote)  # reopening checks the fingerprint against the URL again
    assert folder.dataset == url
    # `synth:` writes local folders only: a URL without a dataset is an error naming it
    missing = f"s3://{BUCKET}/nothing-here"
    with pytest.raises(SearchConfigError, match=f"synth: {missing} has no quadmix.json"):
        ensure_dataset(_small_search(missing).replace(synth=SynthConfig()))


# ---------------------------------------------------------------- inspect
def test_inspect_cli_on_s3_is_the_local_report(s3, tmp_path, capsys):
    """``quadmix-stream inspect s3://…`` (labels only: manifest and sidecars) prints the local
    copy's statistics, with and without ``--params`` and ``--plot``."""
    from quadmix_stream.cli import main
    from tests.support.streamutil import wide_params

    _, proxy, root = s3
    proxy.faults = {}
    url = f"s3://{BUCKET}/jsonl"
    wide_params(root / "jsonl").save(tmp_path / "p.json")
    reports = []
    for ds in (str(root / "jsonl"), url):
        capsys.readouterr()
        assert main(["inspect", ds, "--params", str(tmp_path / "p.json"), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    local, remote = reports
    assert remote.pop("dataset") == url and local.pop("dataset") == str(root / "jsonl")
    assert remote == local and remote["totals"]["realised_docs"] > 0

    assert main(["inspect", url, "--params", str(tmp_path / "p.json")]) == 0
    table = capsys.readouterr().out
    assert table.startswith(f"{url}: jsonl, ") and "TOTAL" in table and "repeats" in table
    png = tmp_path / "selection.png"
    assert main(["inspect", url, "--params", str(tmp_path / "p.json"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", url]) == 0
    assert f"fingerprint {Manifest.load(root / 'jsonl').fingerprint()}" in capsys.readouterr().out


# ---------------------------------------------------------------- the flow
def test_flow_with_an_s3_dataset_reads_it_where_it_is(s3, tmp_path, monkeypatch):
    """``dataset: s3://…`` in a flow recipe: no labelling, the URL (not a local copy, not a
    mangled ``s3:/…`` path) goes to the search and the trainings, and the report reads the
    labels from the bucket. The search and the trainer themselves are the tests above; here
    they are stand-ins that record what they were given."""
    import quadmix_stream.flow.run as flow
    import quadmix_stream.search.pipeline as pipeline
    from quadmix_stream.recipe import RecipeError
    from quadmix_stream.search.baselines import random_params
    from quadmix_stream.search.pool import Pool
    from tests.support.streamutil import favouring

    _, proxy, root = s3
    proxy.faults = {}
    url = f"s3://{BUCKET}/jsonl"
    seen: dict[str, object] = {}

    def run_all(cfg, out, **kw):  # ships a domain mixture; the random baseline from the Pool
        seen["search"] = cfg.dataset
        favouring(cfg.dataset, "arith").save(Path(out) / "params.json")
        random_params(Pool(cfg.dataset)).save(Path(out) / "baselines" / "random.json")
        return Path(out)

    def train_all(body, out, data, runs, target, evals, seeds, times):
        seen["train"] = data
        one = {"seeds": {0: {"target": 1.0}}, "steps": 1, "tokens": 1, "model_parameters": 1}
        return {name: dict(one) for name in runs}

    monkeypatch.setattr(pipeline, "run_all", run_all)
    monkeypatch.setattr(flow, "_train_all", train_all)
    (tmp_path / "search.yaml").write_text("search: {dataset: unused}\n")
    recipe = {
        "out": str(tmp_path / "out"),
        "dataset": url,
        "target": {"synthetic": {"docs": 5}},
        "search": "search.yaml",
        "compare": ["random"],
    }
    (tmp_path / "flow.yaml").write_text(yaml.safe_dump(recipe))
    out = flow.run_flow(tmp_path / "flow.yaml")
    assert seen == {"search": url, "train": url}
    assert not (out / "data").exists()
    report = (out / "report.md").read_text()
    assert f"Data: `{url}` (300 documents, 10 jsonl shards)" in report
    assert (out / "selection-random.png").read_bytes()[:4] == b"\x89PNG"

    (tmp_path / "flow.yaml").write_text(yaml.safe_dump({**recipe, "label": "label.yaml"}))
    with pytest.raises(RecipeError, match="not both"):
        flow.run_flow(tmp_path / "flow.yaml")
