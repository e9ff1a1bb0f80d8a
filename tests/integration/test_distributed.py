"""Real multi-process runs: torchrun ranks (gloo) × DataLoader workers."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.training.launch import torchrun_command
from tests.support.streamutil import expected_items, wide_params

pytestmark = pytest.mark.core

SCRIPT = Path(__file__).with_name("dist_stream_script.py")


def torchrun(nproc: int, *args: str, timeout: int = 240) -> None:
    subprocess.run(
        torchrun_command(nproc, *args), check=True, timeout=timeout, capture_output=True, text=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("balance", ["none", "drop"])
def test_torchrun_ranks_and_workers(mds_ds, tmp_path, balance):
    p = wide_params(mds_ds)
    p.save(tmp_path / "p.json")
    try:
        torchrun(2, str(SCRIPT), str(mds_ds), str(tmp_path / "p.json"), str(tmp_path), balance, "2")
    except subprocess.CalledProcessError as e:
        raise AssertionError(e.stderr[-3000:]) from None
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    got = Counter(tuple(x) for r in runs for x in r["items"])
    want = expected_items(QuaDMixDataset(mds_ds, p, seed=11), 0)
    if balance == "none":
        assert got == want  # exact multiplicity over 2 ranks × 2 workers
    else:
        assert runs[0]["batches"] == runs[1]["batches"]  # and the all_reduces did not hang
        assert len({len(r["items"]) for r in runs}) == 1
        assert got <= want and sum(want.values()) - sum(got.values()) < 4
