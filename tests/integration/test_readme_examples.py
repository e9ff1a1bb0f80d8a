"""The docs' Python examples run as written (blocks that start with ``# example: NAME``).

They are looked for in README.md, docs/*.md and docs/guides/*.md; each runs in a folder that
holds the synthetic corpus at ``data/synth``, as the docs say.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "docs" / "guides").glob("*.md")),
]
FOUND = [
    (m.group(1), m.group(0), doc)
    for doc in DOCS
    for m in re.finditer(r"# example: ([\w-]+)\n.*?(?=\n```)", doc.read_text(), re.S)
]
BLOCKS = {name: block for name, block, _ in FOUND}
NAMES = [
    "plain-loop",
    "params-by-hand",
    "packed-loop",
    "stateful",
    "switch",
    "controller",
    "hf-trainer",
    "lightning",
    "torchtitan",
    "grain",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "quadmix_stream.cli",
            "synth",
            "data/synth",
            "--docs-per-domain",
            "100",
            "--rows-per-shard",
            "100",
        ],
        cwd=d,
        check=True,
        capture_output=True,
    )
    return d


def test_examples_found():
    assert set(NAMES) <= set(BLOCKS)
    assert len(FOUND) == len(BLOCKS), "two examples share a name"
    assert "plain-loop" in (ROOT / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_example_runs(workdir, name):
    r = subprocess.run(
        [sys.executable, "-c", BLOCKS[name]],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    if name == "hf-trainer":  # the resumed run continued the stream instead of restarting it
        # (that it continues batch for batch is tests/integration/test_hf_trainer.py's check)
        import torch

        def consumed(step: int) -> int:
            ck = torch.load(
                workdir / f"data/hf-run/checkpoint-{step}/quadmix_loader.pt", weights_only=True
            )
            return sum(p[1] for p in ck["global"]["inner"]["progress"].values())

        assert 0 < consumed(3) < consumed(6) < consumed(9)
        assert consumed(12) > 0  # counted from the re-deal under the new params

        def params_of(step: int) -> str:
            ck = torch.load(
                workdir / f"data/hf-run/checkpoint-{step}/quadmix_loader.pt", weights_only=True
            )
            return ck["global"]["inner"]["params_fingerprint"]

        # the last resume took the new params: its checkpoint's state was saved under them
        assert params_of(6) == params_of(9) != params_of(12)
    if name == "lightning":  # each checkpoint holds the state of exactly the batches trained on
        import torch

        def batches_in_state(step: int) -> int:
            ck = torch.load(workdir / f"data/pl-run/step={step}.ckpt", weights_only=False)
            st = ck["QuaDMixDataModule"]["rank_states"][0]  # a StatefulDataLoader state
            return st["_snapshot"]["_snapshot_step"] + st["_steps_since_snapshot"]

        assert "resumed exactly: True" in r.stdout
        assert "re-dealt under new params: True" in r.stdout
        # Lightning's own saving of the loader would record one batch more (its fetch-ahead);
        # step 9 was reached by resuming at 6, so its count continues the restored state
        assert [batches_in_state(s) for s in (3, 6, 9)] == [3, 6, 9]
