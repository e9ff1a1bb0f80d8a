"""quadmix-stream: QuaDMix quality-diversity sampling on the fly in the PyTorch data loader."""

import logging

from quadmix_stream.formats.labels import LabelError, Manifest, ScorerInfo
from quadmix_stream.mixing.params import ParamsError, SamplingParams
from quadmix_stream.stream.selection import RankConfig

__version__ = "0.1.0"

# quiet when imported: messages reach stderr only where the application (or our CLI) asks
logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):  # keep `import quadmix_stream` light: torch loads on first use
    if name in ("QuaDMixDataset", "collate_docs"):
        from quadmix_stream.stream import dataset

        return getattr(dataset, name)
    if name == "gather_state":
        from quadmix_stream.stream.checkpoint import gather_state

        return gather_state
    if name == "PackedDataset":
        from quadmix_stream.stream.packing import PackedDataset

        return PackedDataset
    if name == "DatasetWriter":
        from quadmix_stream.formats.shards import DatasetWriter

        return DatasetWriter
    if name == "StateError":
        from quadmix_stream.stream.state import StateError

        return StateError
    raise AttributeError(f"module 'quadmix_stream' has no attribute {name!r}")


__all__ = [
    "DatasetWriter",
    "LabelError",
    "PackedDataset",
    "Manifest",
    "ParamsError",
    "QuaDMixDataset",
    "RankConfig",
    "SamplingParams",
    "ScorerInfo",
    "StateError",
    "collate_docs",
    "gather_state",
]
