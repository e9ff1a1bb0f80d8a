"""Recipes: YAML (``yaml.safe_load`` only, never evaluated) into frozen config dataclasses.

Unknown keys are errors that name the key and the section, so a typo never silently falls back
to a default. A document whose aliases expand it enormously (a "billion laughs") is refused
before anything walks it, and an error quotes at most ~200 characters of a value.
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


#: How many values aliases (``*name``) may add to what a recipe writes out. Far above any real
#: recipe's reuse of a section; far below a "billion laughs" document, whose nested aliases
#: expand a few lines to 10**9 values that every later walk (the checks, an error's quote of a
#: value, ``json.dumps``) would visit: the process hangs or runs out of memory.
MAX_ALIAS_VALUES = 100_000

#: the most characters of a value an error message quotes (:func:`short_repr`)
REPR_LIMIT = 200


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` for a message, cut to at most ``limit`` characters (the cut says how long
    the whole was): one line stays readable whatever the recipe holds."""
    return _clip(repr(value), limit)


def _clip(text: str, limit: int = 2 * REPR_LIMIT) -> str:
    if len(text) <= limit:
        return text
    tail = f"… ({len(text):,} characters)"
    return text[: max(limit - len(tail), 0)] + tail


class _SelfReference(Exception):
    """An alias inside the value it names (``&a [*a]``): a recipe that contains itself."""


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """``(nodes written, nodes once every alias is expanded)`` of a composed YAML document.

    An alias is the composed node itself, reused: each node's expanded size is counted once
    (memoised), so this costs the nodes written, never the expansion.
    """
    cap = MAX_ALIAS_VALUES * 1000  # a bound on the counts; exact values past it do not matter
    sizes: dict[int, int] = {}
    walking: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in walking:
            raise _SelfReference
        walking.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        sizes[key] = min(1 + sum(size(c) for c in children), cap)
        walking.discard(key)
        return sizes[key]

    expanded = size(root)
    return len(sizes), expanded


def _load_checked(text: str, path: Path) -> Any:
    """``yaml.safe_load(text)``, refusing alias bombs and self-references before construction."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # an empty document
            return None
        written, expanded = _expanded_size(node)
        if expanded - written > MAX_ALIAS_VALUES:
            raise RecipeError(
                f"{path}: its aliases (*name) expand it by more than {MAX_ALIAS_VALUES:,} values "
                "(nested aliases, as in a 'billion laughs' document); write the values out"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_why(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line: ``line L, column C: problem (context)`` (its own message
    spans lines, quoting the source under a caret)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({e.context})" if e.context else ""
        return _clip(" ".join(f"{at}{e.problem}{context}".split()))
    return _clip(" ".join(str(e).split()))


def key_path(where: str, key: str) -> str:
    """``where`` + ``key`` in errors: ``recipes/x.yaml: train.steps`` (a file starts the path)."""
    return f"{where}: {key}" if where.endswith((".yaml", ".yml")) else f"{where}.{key}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: no such recipe")
    try:
        data = _load_checked(path.read_text(), path)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({_yaml_why(e)})") from None
    except _SelfReference:
        raise RecipeError(f"{path}: an alias (*name) inside the value it names") from None
    except RecursionError:
        raise RecipeError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    return dict(data)


def check_number(x: Any, where: str, error: type[ValueError] = RecipeError) -> float:
    """``x`` as a float; booleans and strings are errors naming ``where``."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise error(f"{where}: expected a number, got {short_repr(x)}")
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
            raise error(f"{where}: expected an integer, got {short_repr(value)}")
        return int(value)
    if t.startswith("float"):
        return check_number(value, where, error)
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise error(f"{where}: expected true or false, got {short_repr(value)}")
        return value
    if t.startswith("str"):
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise error(f"{where}: expected a string, got {short_repr(value)}")
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
        raise error(f"{where}: expected a mapping, got {short_repr(data)}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise error(f"{where}: unknown key(s) {short_repr(unknown)}; known: {sorted(names)}")
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
    except (TypeError, ValueError) as e:  # a config's own check, which may quote the value
        raise error(f"{where}: {_clip(str(e), 5 * REPR_LIMIT)}") from None
