"""Controllers by name, built from a recipe's ``controller:`` mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from quadmix_stream.control.base import Controller
from quadmix_stream.control.odm import ODMConfig, ODMController
from quadmix_stream.errors import UserError
from quadmix_stream.mixing.choices import choose
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.recipe import build

#: name → (its options, the controller); ``schedule`` is built from ``data.params_schedule``
CONTROLLERS: dict[str, tuple[type, type]] = {"odm": (ODMConfig, ODMController)}


def controller_config(spec: Any, where: str = "controller") -> tuple[str, Any]:
    """The name and the options of a ``controller:`` mapping, checked (a one-line error)."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise UserError(f"{where}: a mapping with a name, e.g. {{name: odm}}, got {spec!r}")
    config_cls, _ = choose(CONTROLLERS, spec["name"], f"{where}.name")
    opts = {k: v for k, v in spec.items() if k != "name"}
    return spec["name"], build(config_cls, opts, where)


def build_controller(
    spec: Mapping[str, Any],
    base: SamplingParams,
    base_tokens: np.ndarray,
    where: str = "controller",
) -> Controller:
    """The controller ``spec`` names (``{"name": "odm", "every": 20, …}``), adapting ``base``
    (whose per-domain expected output tokens are ``base_tokens``)."""
    name, config = controller_config(spec, where)
    return CONTROLLERS[name][1](config, base, base_tokens)


__all__ = ["CONTROLLERS", "build_controller", "controller_config"]
