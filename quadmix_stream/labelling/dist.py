"""Running under ``torchrun``: ranks split the shards, and agree on success before rank 0 merges.

Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) everything is a single process and
torch is never imported. With it, a gloo process group is used for the (CPU) synchronisation even
when each rank labels on its own GPU: only a few integers travel between ranks.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any


@dataclass
class World:
    """This process's place: ``rank`` of ``size``; ``local_rank`` picks the GPU."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    _pg: Any = None

    @property
    def distributed(self) -> bool:
        return self._pg is not None

    def all_ok(self, ok: bool) -> bool:
        """A barrier that also tells every rank whether all ranks succeeded."""
        if not self.distributed:
            return ok
        import torch
        import torch.distributed as dist

        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        dist.all_reduce(t)
        return int(t.item()) == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            gc.collect()  # free gloo-bound objects before tearing the group down
            dist.destroy_process_group()
            self._pg = None


def init_world(timeout_s: float = 6 * 3600.0) -> World:
    """Join the ``torchrun`` process group if there is one (gloo), else a single-process world."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=size
        )
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    if not torch.cuda.is_available():  # share the CPU cores between the ranks of this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_size, 1)))
    return World(rank, size, local, dist.group.WORLD)


def split_units(items: list[Any], rank: int, size: int) -> list[Any]:
    """Contiguous, near-equal blocks: rank r gets ``items[r·n/size:(r+1)·n/size]`` (keeps each
    rank's reads sequential within an input file)."""
    n = len(items)
    return items[rank * n // size : (rank + 1) * n // size]
