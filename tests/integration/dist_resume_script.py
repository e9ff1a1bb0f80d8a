"""Run under torchrun: consume part of an epoch, gather one global state; or resume from it.

``first``: every rank streams a different number of batches through a StatefulDataLoader with
workers, then all ranks gather the global state (rank 0 saves it). ``rest``: every rank loads
that state (possibly under new params, another world size, another worker count or start method)
and streams the remainder of the epoch. Each rank writes the (key, copy) pairs it consumed.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from torchdata.stateful_dataloader import StatefulDataLoader

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.stream.checkpoint import gather_state
from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs


def main() -> None:
    root, params, out, phase, workers, context, window = sys.argv[1:8]
    distributed = "RANK" in os.environ  # one process is launched without torchrun
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    ds = QuaDMixDataset(
        root,
        SamplingParams.load(params),
        seed=5,
        balance=None,
        shuffle_block_shards=int(window),
        resume_with_new_params=True,
    )
    if phase == "rest":
        ds.load_state_dict(json.loads(Path(out, "state.json").read_text()))
    loader = StatefulDataLoader(
        ds,
        batch_size=5,
        num_workers=int(workers),
        collate_fn=collate_docs,
        multiprocessing_context=context if int(workers) else None,
    )
    items = []
    it = iter(loader)
    steps = 20 + 9 * rank if phase == "first" else None
    while steps is None or steps > 0:
        try:
            b = next(it)
        except StopIteration:
            break
        items += [[int(k), int(c)] for k, c in zip(b["key"], b["copy"], strict=True)]
        steps = None if steps is None else steps - 1
    if phase == "first":
        state = gather_state(loader=loader)
        if rank == 0:
            Path(out, "state.json").write_text(json.dumps(state))
    Path(out, f"{phase}-rank{rank}.json").write_text(json.dumps(items))
    del it, loader, ds
    gc.collect()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
