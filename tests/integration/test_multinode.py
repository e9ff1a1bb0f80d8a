"""A simulated 2-node world on one machine: 2 torchrun agents × 2 processes, node ranks set.

Checks that the loader's partitioning and the checkpoint's global state are right across nodes:
4 ranks train, checkpoint, and the run resumes on one node with 2 ranks without a document
copy being started twice.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.training.launch import torchrun_command

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_then_one(tmp_path, mds_ds):
    m = Manifest.load(mds_ds)
    SamplingParams.keep_all(m.domains, m.scorer_names).save(tmp_path / "p.json")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "dataset": str(mds_ds),
                    "params": str(tmp_path / "p.json"),
                    "seq_len": 32,
                    "workers": 0,
                    "track_docs": True,
                    "vocab_size": 300,
                },
                "model": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
                "train": {
                    "steps": 4,
                    "batch_size": 8,  # 4 ranks × 2, then 2 ranks × 2 passes of 2
                    "micro_batch_size": 2,
                    "checkpoint_every": 4,
                    "threads": 1,
                },
                "out": str(tmp_path / "run"),
            }
        )
    )
    port = _port()
    mod = ["-m", "quadmix_stream.trainers.pretrain", str(recipe)]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(n),
                "--nproc_per_node",
                "2",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                *mod,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for p in nodes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x for x in log if x.get("event") == "start"][0]["world"] == 4
    first = [d for x in log if "loss" in x for d in x["docs"]]
    r = subprocess.run(
        torchrun_command(2, *mod, "--steps", "24"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    resume = [x for x in log if x.get("event") == "resume"][0]
    assert resume["switch"]["from_world"] == 4 and resume["switch"]["to_world"] == 2
    second = [d for x in log if "loss" in x and x["step"] > 4 for d in x["docs"]]
    docs = Counter(first + second)
    assert second and max(docs.values()) == 1
