"""Run under torchrun: each rank streams its share through DataLoader workers, DDP-style.

Every batch ends with an all_reduce, as a DDP backward would: a rank that ran out of batches
early would hang the others, so finishing at all proves the counts are equal.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs


def main() -> None:
    root, params, out, balance, workers = sys.argv[1:6]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ds = QuaDMixDataset(
        root, SamplingParams.load(params), seed=11, balance=None if balance == "none" else balance
    )
    loader = DataLoader(ds, batch_size=5, num_workers=int(workers), collate_fn=collate_docs)
    items, batches = [], 0
    for b in loader:
        items += list(zip(b["key"], b["copy"], strict=True))
        batches += 1
        if balance != "none":  # unbalanced counts would hang here, exactly like DDP
            t = torch.ones(1)
            dist.all_reduce(t)  # the DDP gradient sync of this step
    Path(out, f"rank{rank}.json").write_text(json.dumps({"items": items, "batches": batches}))
    del loader, ds
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
