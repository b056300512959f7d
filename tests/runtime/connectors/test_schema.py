"""Column types of file sources: what each takes and gives, checked against Python's own
conversions with hypothesis; what does not fit is refused naming the column and the type."""

from __future__ import annotations

import datetime as dt
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given

from runtime import ConfigError
from runtime._connectors.schema import Schema


def one(kind: Any, value: Any, **options: Any) -> Any:
    return Schema({"x": kind}, **options).convert({"x": value})["x"]


@given(st.integers(-(2**70), 2**70), st.sampled_from(["", " ", "+"]))
def test_int_reads_what_int_wrote(number: int, pad: str) -> None:
    text = f"{pad}{number}" if number >= 0 else f" {number}"
    assert one("int", text) == one(int, number) == number


@given(st.floats(allow_nan=False))
def test_float_reads_what_repr_wrote(number: float) -> None:
    assert one("float", repr(number)) == one(float, number) == number


@given(st.sampled_from(["true", "T", "Yes", "y", "1", " TRUE "]))
def test_bool_reads_true_words(text: str) -> None:
    assert one("bool", text) is True


@given(st.sampled_from(["false", "F", "No", "n", "0"]))
def test_bool_reads_false_words(text: str) -> None:
    assert one("bool", text) is False


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1),
        max_value=dt.datetime(2300, 1, 1),
        timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-5))]),
    )
)
def test_an_iso_time_is_its_epoch_milliseconds(when: dt.datetime) -> None:
    when = when.replace(microsecond=when.microsecond // 1000 * 1000)
    expected = round(when.timestamp() * 1000)
    assert one("time", when.isoformat()) == one("time", when) == expected
    assert one("time", when.isoformat(), time_unit="us") == expected * 1000
    assert one("time", when.isoformat(), time_unit="ns") == expected * 1_000_000
    assert one("time", when.isoformat(), time_unit="s") == pytest.approx(expected / 1000)


def test_a_naive_time_is_utc_and_numbers_are_kept() -> None:
    assert one("time", "2023-11-14T22:13:20") == 1_700_000_000_000
    assert one("time", "2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert one("time", "1796592768393") == 1796592768393
    assert one("time", "1700000000.5", time_unit="s") == 1700000000.5
    assert one("time", 1700000000) == 1700000000


def test_other_conversions() -> None:
    assert one("int", 12.0) == 12 and one("float", 3) == 3.0 and one("str", 7) == "7"
    assert one("bool", 1) is True and one("bool", 0) is False
    row = {"x": None, "y": ""}
    assert Schema({"x": "int", "y": "int"}).convert(row, drop_empty=True) == {"x": None}


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("int", "1.5", "'1.5' is not an int"),
        ("int", 1.5, "1.5 is not an int"),
        ("int", True, "True is not an int"),
        ("int", "", "'' is not an int"),
        ("float", "x", "'x' is not a float"),
        ("float", [1], "[1] is not a float"),
        ("bool", "maybe", "'maybe' is not a bool"),
        ("bool", 2, "2 is not a bool"),
        ("time", "yesterday", "'yesterday' is not a time (ISO 8601 or a number)"),
        ("time", "inf", "'inf' is not a finite time"),
        ("time", True, "True is not a time (ISO 8601 or a number)"),
    ],
)
def test_a_value_that_does_not_fit_names_the_column(kind: str, value: Any, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        one(kind, value)
    assert caught.value.args == (f"field 'x' ({kind}): {reason}", "x")


def test_bad_schemas_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown type 'date'"):
        Schema({"x": "date"})
    with pytest.raises(ConfigError, match="unknown type"):
        Schema({"x": list})
    with pytest.raises(ConfigError, match="non-empty str"):
        Schema({"": "int"})
    with pytest.raises(ConfigError, match="time_unit"):
        Schema({}, time_unit="h")  # type: ignore[arg-type]
