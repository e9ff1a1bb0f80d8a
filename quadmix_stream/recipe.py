"""Recipes: YAML (``yaml.safe_load`` only, never evaluated) into frozen config dataclasses.

Unknown keys are errors that name the key and the section, so a typo never silently falls back
to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from quadmix_stream.errors import UserError

T = TypeVar("T")


class RecipeError(UserError):
    """A recipe that cannot be used; the message names the section and key."""


def key_path(where: str, key: str) -> str:
    """``where`` + ``key`` in errors: ``recipes/x.yaml: train.steps`` (a file starts the path)."""
    return f"{where}: {key}" if where.endswith((".yaml", ".yml")) else f"{where}.{key}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: no such recipe")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    return dict(data)


def check_number(x: Any, where: str, error: type[ValueError] = RecipeError) -> float:
    """``x`` as a float; booleans and strings are errors naming ``where``."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise error(f"{where}: expected a number, got {x!r}")
    return float(x)


def check_scalar(
    f: dataclasses.Field, value: Any, where: str, error: type[ValueError] = RecipeError
) -> Any:
    """``value`` checked (and converted) against the annotation of dataclass field ``f``."""
    t = str(f.type)
    if value is None:
        if "None" in t:
            return None
        raise error(f"{where}: may not be null")
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise error(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if t.startswith("float"):
        return check_number(value, where, error)
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise error(f"{where}: expected true or false, got {value!r}")
        return value
    if t.startswith("str"):
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise error(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds: ``C`` for ``C`` or ``C | None``; else ``None``."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    inner = [
        a for a in typing.get_args(hint) if dataclasses.is_dataclass(a) and isinstance(a, type)
    ]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return inner[0] if len(inner) == 1 else None
    return None


def build(
    cls: type[T],
    data: Mapping[str, Any] | None,
    where: str,
    error: type[ValueError] = RecipeError,
    convert: Mapping[str, Callable[[Any, str], Any]] | None = None,
) -> T:
    """Build dataclass ``cls`` from ``data``; nested dataclass fields are built recursively.

    Args:
        cls: the (frozen) config dataclass.
        data: its mapping from YAML; ``None`` means all defaults.
        where: the section's name, for error messages (``"pretrain.train"``).
        error: the exception raised for every problem (a ``ValueError`` subclass).
        convert: field name → ``f(value, where)`` for fields that need more than a scalar check
            (ranges, tuples, free-form mappings), at any nesting level.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a mapping, got {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise error(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        sub = key_path(where, k)
        nested = _dataclass_in(hints[k])
        if convert and k in convert:
            v = convert[k](v, sub)
        elif nested is not None and v is not None:
            v = build(nested, v, sub, error, convert)
        else:
            v = check_scalar(names[k], v, sub, error)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise error(f"{where}: {e}") from None
