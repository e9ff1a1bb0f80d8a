"""validate.py: typed checks of JSON read from user files; every failure is the caller's error
class with a message ``<where>: expected <what>, got <value>``; JSON files round-trip."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.errors import UserError
from quadmix_stream.validate import (
    expect_bool,
    expect_int,
    expect_list,
    expect_names,
    expect_number,
    expect_numbers,
    expect_object,
    expect_str,
    parse_json,
    read_json,
    show,
    type_name,
)

pytestmark = pytest.mark.core


class MyError(UserError):
    """The caller's own error class: what the helpers must raise."""


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


# ---------------------------------------------------------------- show / type_name
def test_show_keeps_short_reprs_and_cuts_long_ones():
    assert show("abc") == "'abc'"
    assert show([1, 2]) == "[1, 2]"
    long = "x" * 200
    s = show(long)
    assert len(s) == 80 and s.endswith("...") and s.startswith("'xxx")
    assert show("y" * 78) == "'" + "y" * 78 + "'"  # exactly 80 characters: kept whole


def test_type_name_uses_json_names():
    assert [type_name(x) for x in (None, True, 3, 2.5, "s", {}, [], ())] == [
        "null",
        "boolean",
        "number",
        "number",
        "string",
        "object",
        "array",
        "array",
    ]
    assert type_name(b"x") == "bytes"


# ---------------------------------------------------------------- read_json / parse_json
@settings(max_examples=60)
@given(value=json_values)
def test_parse_json_round_trip(value):
    assert parse_json(json.dumps(value).encode("utf-8"), "f.json", MyError, "manifest") == value


def test_read_json_round_trip(tmp_path):
    value = {"rows": 3, "name": "é", "xs": [1.5, None, True]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    assert read_json(path, MyError, "manifest") == value
    assert read_json(str(path), MyError, "manifest") == value


def test_read_json_missing_file(tmp_path):
    with pytest.raises(MyError, match=r"nope\.json: no such params file$"):
        read_json(tmp_path / "nope.json", MyError, "params file")


def test_read_json_folder(tmp_path):
    with pytest.raises(MyError, match=r": is a folder, expected a manifest \(a JSON file\)"):
        read_json(tmp_path, MyError, "manifest")


def test_read_json_unreadable(tmp_path):
    (tmp_path / "file").write_text("{}")
    with pytest.raises(
        MyError, match=r"file/m\.json: cannot read the manifest \(Not a directory\)$"
    ):
        read_json(tmp_path / "file" / "m.json", MyError, "manifest")


def test_read_json_binary_file(tmp_path):
    path = tmp_path / "b.json"
    path.write_bytes(b'{"a": 1}\xff\xfe')
    with pytest.raises(
        MyError, match=r"b\.json: the manifest is not UTF-8 text \(byte 8: b'\\xff\\xfe'\)"
    ):
        read_json(path, MyError, "manifest")


def test_parse_json_invalid_json_names_line_and_column():
    with pytest.raises(
        MyError, match=r"^x\.json: the state is not valid JSON \(line 2, column 7: Expecting"
    ):
        parse_json(b'{"a": 1,\n "b": }', "x.json", MyError, "state")


def test_parse_json_too_deep():
    with pytest.raises(MyError, match=r"x\.json: the index is nested too deeply to be valid"):
        parse_json(b"[" * 200_000 + b"]" * 200_000, "x.json", MyError, "index")


def test_parse_json_integer_too_long():
    with pytest.raises(MyError, match=r"x\.json: the index holds a value that cannot be read"):
        parse_json(b"[" + b"9" * 5000 + b"]", "x.json", MyError, "index")


def test_errors_are_the_callers_class_and_value_errors():
    with pytest.raises(ValueError) as e:  # UserError stays a ValueError
        parse_json(b"{", "x.json", MyError, "state")
    assert type(e.value) is MyError


# ---------------------------------------------------------------- expect_object
def test_expect_object_accepts_required_and_optional():
    d = {"rows": 1, "name": "a"}
    got = expect_object(d, "m.json", MyError, required=("rows",), optional=("name", "x"))
    assert got == d and got is not d  # a copy


def test_expect_object_refuses_a_non_object():
    with pytest.raises(MyError, match=r"^m\.json: expected an object, got array \[1, 2\]$"):
        expect_object([1, 2], "m.json", MyError)


def test_expect_object_names_missing_fields():
    with pytest.raises(MyError, match=r"^m\.json: missing field 'rows'$"):
        expect_object({"name": 1}, "m.json", MyError, required=("rows", "name"))
    with pytest.raises(MyError, match=r"^m\.json: missing fields 'rows', 'sha'$"):
        expect_object({}, "m.json", MyError, required=("rows", "sha"))


def test_expect_object_names_unknown_fields():
    with pytest.raises(
        MyError, match=r"^m\.json: unknown field \['rowz'\] \(known: \['name', 'rows'\]\)$"
    ):
        expect_object({"rows": 1, "rowz": 2}, "m.json", MyError, ("rows",), ("name",))
    with pytest.raises(MyError, match=r"unknown fields \['a', 'b'\]"):
        expect_object({"b": 1, "a": 2}, "m.json", MyError)
    # optional=None: any other key is allowed
    assert expect_object({"rows": 1, "z": 0}, "m", MyError, ("rows",), None) == {"rows": 1, "z": 0}


# ---------------------------------------------------------------- scalars
def test_expect_list():
    assert expect_list([], "w", MyError) == []
    with pytest.raises(MyError, match=r"^w: expected an array, got object \{'a': 1\}$"):
        expect_list({"a": 1}, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a non-empty array$"):
        expect_list([], "w", MyError, non_empty=True)


def test_expect_str():
    assert expect_str("a", "w", MyError) == "a"
    assert expect_str("", "w", MyError, non_empty=False) == ""
    with pytest.raises(MyError, match=r"^w: expected a non-empty string$"):
        expect_str("", "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a string, got number 3$"):
        expect_str(3, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a string, got null None$"):
        expect_str(None, "w", MyError)


def test_expect_bool_refuses_numbers():
    assert expect_bool(False, "w", MyError) is False
    with pytest.raises(MyError, match=r"^w: expected true or false, got number 1$"):
        expect_bool(1, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected true or false, got string 'true'$"):
        expect_bool("true", "w", MyError)


def test_expect_int():
    assert expect_int(5, "w", MyError) == 5
    got = expect_int(4.0, "w", MyError, minimum=0)
    assert got == 4 and type(got) is int
    assert expect_int(0, "w", MyError, minimum=0) == 0
    with pytest.raises(MyError, match=r"^w: expected an integer, got 4\.5$"):
        expect_int(4.5, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected an integer, got boolean True$"):
        expect_int(True, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected an integer, got string '3'$"):
        expect_int("3", "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected an integer ≥ 0, got -1$"):
        expect_int(-1, "w", MyError, minimum=0)
    with pytest.raises(MyError, match=r"^w: expected an integer ≥ 2, got 1$"):
        expect_int(1.0, "w", MyError, minimum=2)
    with pytest.raises(MyError, match=r"^w: expected an integer, got nan$"):
        expect_int(math.nan, "w", MyError)


@given(st.integers(-(2**80), 2**80), st.integers(-100, 100))
def test_expect_int_round_trip(x, minimum):
    if x >= minimum:
        assert expect_int(x, "w", MyError, minimum=minimum) == x
        if abs(x) < 2**53:  # integral floats are read as the integer
            assert expect_int(float(x), "w", MyError, minimum=minimum) == x
    else:
        with pytest.raises(MyError, match=f"expected an integer ≥ {minimum}, got {x}"):
            expect_int(x, "w", MyError, minimum=minimum)


def test_expect_number():
    assert expect_number(3, "w", MyError) == 3.0 and type(expect_number(3, "w", MyError)) is float
    assert expect_number(0.5, "w", MyError, minimum=0.5) == 0.5
    with pytest.raises(MyError, match=r"^w: expected a number, got boolean False$"):
        expect_number(False, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a number, got string '1'$"):
        expect_number("1", "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a finite number, got nan$"):
        expect_number(math.nan, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a finite number, got -inf$"):
        expect_number(-math.inf, "w", MyError)
    with pytest.raises(MyError, match=r"^w: expected a number ≥ 0\.0, got -0\.25$"):
        expect_number(-0.25, "w", MyError, minimum=0.0)


def test_expect_numbers_names_the_bad_index():
    assert expect_numbers([1, 2.5], "eta", MyError) == [1.0, 2.5]
    assert expect_numbers([], "eta", MyError, non_empty=False) == []
    with pytest.raises(MyError, match=r"^eta\[2\]: expected a number, got null None$"):
        expect_numbers([1, 2, None], "eta", MyError)
    with pytest.raises(MyError, match=r"^eta: expected a non-empty array$"):
        expect_numbers([], "eta", MyError)
    # the one-go check of plain numbers names the same element as the walk
    for bad, said in (
        ([1.0] * 500 + [float("nan")], r"^eta\[500\]: expected a finite number, got nan$"),
        ([1.0, True], r"^eta\[1\]: expected a number, got boolean True$"),
        ([1.0, 10**400], r"^eta\[1\]: expected a finite number, got 1000"),
    ):
        with pytest.raises(MyError, match=said):
            expect_numbers(bad, "eta", MyError)
    assert expect_numbers([0.25] * 1000 + [3], "eta", MyError) == [0.25] * 1000 + [3.0]


def test_expect_names():
    assert expect_names(["a", "b"], "domains", MyError) == ["a", "b"]
    with pytest.raises(MyError, match=r"^domains: duplicate names \['a', 'b'\]$"):
        expect_names(["b", "a", "b", "c", "a"], "domains", MyError)
    with pytest.raises(MyError, match=r"^domains\[1\]: expected a non-empty string$"):
        expect_names(["a", ""], "domains", MyError)
    with pytest.raises(MyError, match=r"^domains\[0\]: expected a string, got number 7$"):
        expect_names([7], "domains", MyError)
    with pytest.raises(MyError, match=r"^domains: expected a non-empty array$"):
        expect_names([], "domains", MyError)


@settings(max_examples=40)
@given(st.lists(st.text(min_size=1, max_size=5), max_size=8, unique=True))
def test_expect_names_round_trip_through_json(names):
    back = parse_json(json.dumps(names).encode(), "f", MyError, "names")
    assert expect_names(back, "domains", MyError, non_empty=False) == names
