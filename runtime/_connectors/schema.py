"""The schema of a file source: a type for each column, and the conversions it makes.

CSV values are strings and JSON has no time type, so a file source is told what each column
holds: ``{"ts": "int", "amount": "float", "seen": "time"}``. A type is one of ``"int"``,
``"float"``, ``"str"``, ``"bool"``, ``"time"`` (or the Python types ``int``, ``float``,
``str`` and ``bool``). A column the schema does not name is left as it was read (a string,
from CSV). A null value (JSON ``null``, a Parquet null) stays None; a CSV cell that is empty is
left out of the event, so a feature sees the field missing.

What each type takes (anything else is an error naming the column, and the record goes to
dead letters):

- ``int``: an int; a string of an int (``"1796592768393"``, surrounding blanks allowed); a
  float with no fractional part.
- ``float``: an int or a float; a string that ``float()`` reads.
- ``str``: a string; another value is written out with ``str()``.
- ``bool``: a bool; 0 or 1; the strings ``true``/``false``, ``t``/``f``, ``yes``/``no``,
  ``y``/``n``, ``1``/``0`` in any case.
- ``time``: an ISO-8601 time (naive means UTC) or a ``datetime``, made a number in the
  source's ``time_unit`` (milliseconds by default: an int); a number, or a string of one,
  taken as already in that unit. Give the source the feature set's ``time_unit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .._exceptions import ConfigError

__all__ = ["COLUMN_TYPES", "ColumnType", "Converter", "Schema", "TimeUnit"]

ColumnType = Literal["int", "float", "str", "bool", "time"]
TimeUnit = Literal["ms", "s", "us", "ns"]
#: the names of the column types
COLUMN_TYPES: tuple[str, ...] = ("int", "float", "str", "bool", "time")
_PYTHON_TYPES: dict[Any, str] = {int: "int", float: "float", str: "str", bool: "bool"}

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: one unit of each time unit, and its count per second for a float unit
_ONE = {
    "ms": timedelta(milliseconds=1),
    "us": timedelta(microseconds=1),
    "s": timedelta(seconds=1),
}

#: a conversion: the value read -> the event's value; raises ValueError with the reason
Converter = Callable[[Any], Any]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any) -> Any:
    cls = value.__class__
    if cls is int:
        return value
    if cls is str:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{_short(value)} is not an int") from None
    if cls is float and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"{_short(value)} is not an int")


def _float(value: Any) -> Any:
    cls = value.__class__
    if cls is float:
        return value
    if cls is str:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{_short(value)} is not a float") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{_short(value)} is not a float")


def _str(value: Any) -> Any:
    return value if value.__class__ is str else str(value)


def _bool(value: Any) -> Any:
    if value.__class__ is bool:
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    elif isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{_short(value)} is not a bool")


def _time_converter(unit: TimeUnit) -> Converter:
    """``time`` in ``unit``: datetimes and ISO strings converted, numbers kept."""

    def from_datetime(value: datetime) -> Any:
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        elapsed = value - _EPOCH
        if unit == "ns":
            return (elapsed // _ONE["us"]) * 1000
        if unit == "s":
            return elapsed / _ONE["s"]
        return elapsed // _ONE[unit]

    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return from_datetime(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                pass
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
                raise ValueError(f"{_short(value)} is not a finite time")
            try:
                return from_datetime(datetime.fromisoformat(text))
            except ValueError:
                raise ValueError(f"{_short(value)} is not a time (ISO 8601 or a number)") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        raise ValueError(f"{_short(value)} is not a time (ISO 8601 or a number)")

    return convert


class Schema:
    """Column types, checked and compiled to conversions. Internal: sources take a mapping.

    Raises:
        ConfigError: a type is not one of :data:`COLUMN_TYPES`, a column name is not a
            non-empty string, or ``time_unit`` is unknown.
    """

    __slots__ = ("columns", "converters", "time_unit", "types")

    def __init__(
        self, columns: Mapping[str, ColumnType | type] | None, time_unit: TimeUnit = "ms"
    ) -> None:
        if time_unit not in ("ms", "s", "us", "ns"):
            raise ConfigError(f"time_unit must be 'ms', 's', 'us' or 'ns', got {time_unit!r}")
        self.time_unit = time_unit
        made: dict[str, Converter] = {}
        types: dict[str, str] = {}
        named = {"int": _int, "float": _float, "str": _str, "bool": _bool}
        for column, kind in (columns or {}).items():
            if not isinstance(column, str) or not column:
                raise ConfigError(f"schema: a column name must be a non-empty str, got {column!r}")
            name = _PYTHON_TYPES.get(kind, kind)
            if name == "time":
                made[column] = _time_converter(time_unit)
            elif isinstance(name, str) and name in named:
                made[column] = named[name]
            else:
                known = ", ".join(COLUMN_TYPES)
                raise ConfigError(f"schema: column {column!r}: unknown type {kind!r} ({known})")
            types[column] = name
        #: column -> conversion
        self.converters = made
        #: column -> type name
        self.types = types
        #: the columns, in the order given
        self.columns = tuple(made)

    def convert(self, row: dict[str, Any], *, drop_empty: bool = False) -> dict[str, Any]:
        """``row`` with its typed columns converted (the same dict, changed in place). With
        ``drop_empty`` (CSV), an empty string is left out instead, whatever the column.

        Raises:
            ValueError: a value does not fit its column; ``args`` are ``(reason, column)``.
        """
        if drop_empty:
            for column in [c for c, v in row.items() if v == ""]:
                del row[column]
        for column, convert in self.converters.items():
            value = row.get(column)
            if value is None:
                continue
            try:
                row[column] = convert(value)
            except ValueError as exc:
                reason = f"field {column!r} ({self.types[column]}): {exc}"
                raise ValueError(reason, column) from None
        return row
