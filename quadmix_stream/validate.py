"""Typed checks of JSON data read from the user's files: one error per problem, naming the field.

Every reader of a JSON document we do not fully trust (manifests, params, MDS indexes, loader
states) goes through these helpers, so a malformed file gives the same kind of message whatever
its role: ``<file>: <field path>: expected <what>, got <value>``. Each helper takes the error class
to raise, so the caller's own error type (``LabelError``, ``ParamsError``, ...) is what users see.

Example::

    d = read_json(path, LabelError, "manifest")
    obj = expect_object(d, str(path), LabelError, required=("rows",), optional=("name",))
    rows = expect_int(obj["rows"], f"{path}: rows", LabelError, minimum=0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: How much of a bad value an error message shows.
_SHOW = 80


def show(x: object) -> str:
    """A short ``repr`` of a value for an error message."""
    r = repr(x)
    return r if len(r) <= _SHOW else r[: _SHOW - 3] + "..."


def type_name(x: object) -> str:
    """The JSON name of a Python value's type (``object``, ``array``, ``string``, ...)."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int | float):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, Mapping):
        return "object"
    if isinstance(x, list | tuple):
        return "array"
    return type(x).__name__


def read_json(path: str | Path, error: type[Exception], what: str) -> Any:
    """Parse a JSON file; every failure (missing, a folder, not UTF-8, not JSON) is ``error``.

    Args:
        path: the file.
        error: the exception class to raise.
        what: what the file is, for messages (``"manifest"``, ``"params file"``, ...).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a {what} (a JSON file)") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    return parse_json(data, path, error, what)


def parse_json(data: bytes, path: str | Path, error: type[Exception], what: str) -> Any:
    """Parse a JSON file's bytes (read by :func:`read_json` or fetched from object storage);
    every failure is ``error`` naming ``path``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{path}: the {what} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 4]!r}); "
            "is it a binary file?"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(
            f"{path}: the {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except RecursionError:
        raise error(f"{path}: the {what} is nested too deeply to be valid") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts (4,300)
        raise error(f"{path}: the {what} holds a value that cannot be read ({e})") from None


def expect_object(
    x: object,
    where: str,
    error: type[Exception],
    required: Iterable[str] = (),
    optional: Iterable[str] | None = (),
) -> dict[str, Any]:
    """``x`` as a JSON object with every ``required`` key and no key outside ``required`` +
    ``optional`` (``optional=None``: any other key is allowed)."""
    if not isinstance(x, Mapping):
        raise error(f"{where}: expected an object, got {type_name(x)} {show(x)}")
    req = list(required)
    missing = [k for k in req if k not in x]
    if missing:
        raise error(
            f"{where}: missing field{'s' if len(missing) > 1 else ''} "
            + ", ".join(repr(k) for k in missing)
        )
    if optional is not None:
        known = set(req) | set(optional)
        extra = sorted(str(k) for k in x.keys() - known)
        if extra:
            raise error(
                f"{where}: unknown field{'s' if len(extra) > 1 else ''} {extra} "
                f"(known: {sorted(known)})"
            )
    return dict(x)


def expect_list(x: object, where: str, error: type[Exception], non_empty: bool = False) -> list:
    """``x`` as a JSON array (optionally non-empty)."""
    if not isinstance(x, list):
        raise error(f"{where}: expected an array, got {type_name(x)} {show(x)}")
    if non_empty and not x:
        raise error(f"{where}: expected a non-empty array")
    return x


def expect_str(x: object, where: str, error: type[Exception], non_empty: bool = True) -> str:
    """``x`` as a string (non-empty unless told otherwise)."""
    if type(x) is str and (x or not non_empty):  # the common case, fast
        return x
    if not isinstance(x, str):
        raise error(f"{where}: expected a string, got {type_name(x)} {show(x)}")
    if non_empty and not x:
        raise error(f"{where}: expected a non-empty string")
    return x


def expect_bool(x: object, where: str, error: type[Exception]) -> bool:
    """``x`` as a boolean (``true``/``false``; 0 and 1 are refused)."""
    if not isinstance(x, bool):
        raise error(f"{where}: expected true or false, got {type_name(x)} {show(x)}")
    return x


def expect_int(x: object, where: str, error: type[Exception], minimum: int | None = None) -> int:
    """``x`` as an integer (a float with an integral value is accepted), ≥ ``minimum``."""
    if type(x) is int and (minimum is None or x >= minimum):  # the common case, fast
        return x
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise error(f"{where}: expected an integer, got {type_name(x)} {show(x)}")
    if isinstance(x, float):
        if not x.is_integer():
            raise error(f"{where}: expected an integer, got {show(x)}")
        x = int(x)
    if minimum is not None and x < minimum:
        raise error(f"{where}: expected an integer ≥ {minimum}, got {x}")
    return int(x)


def expect_number(
    x: object, where: str, error: type[Exception], minimum: float | None = None
) -> float:
    """``x`` as a finite number (booleans, strings and NaN/inf refused), ≥ ``minimum``."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise error(f"{where}: expected a number, got {type_name(x)} {show(x)}")
    try:
        v = float(x)
    except OverflowError:  # an int beyond any float
        raise error(f"{where}: expected a finite number, got {show(x)}") from None
    if not math.isfinite(v):
        raise error(f"{where}: expected a finite number, got {v}")
    if minimum is not None and v < minimum:
        raise error(f"{where}: expected a number ≥ {minimum}, got {v}")
    return v


def expect_numbers(
    x: object, where: str, error: type[Exception], non_empty: bool = True
) -> list[float]:
    """``x`` as an array of finite numbers; a bad element is named by its index."""
    items = expect_list(x, where, error, non_empty=non_empty)
    # σ tables hold thousands of knots: check a list of plain numbers in one go, and walk it
    # element by element only to name what is wrong
    if set(map(type, items)) <= {float, int}:
        try:
            values = np.asarray(items, dtype=np.float64)
        except OverflowError:  # an int too large for a float: named below
            values = None
        if values is not None and np.isfinite(values).all():
            return values.tolist()
    return [expect_number(v, f"{where}[{i}]", error) for i, v in enumerate(items)]


def expect_names(
    x: object, where: str, error: type[Exception], non_empty: bool = True
) -> list[str]:
    """``x`` as an array of distinct non-empty strings (domain or scorer names)."""
    items = expect_list(x, where, error, non_empty=non_empty)
    names = [expect_str(v, f"{where}[{i}]", error) for i, v in enumerate(items)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise error(f"{where}: duplicate names {dup}")
    return names
