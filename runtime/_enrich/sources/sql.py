"""What the two SQL sources share: the statement, keys read as numbers, the rows back by key.

Keys never go into SQL text: they are bound parameters. Table and column names do, so the spec
accepts only plain names (`check_identifier`) and they are double-quoted (which makes them
case-sensitive in PostgreSQL: write them as the catalog has them, usually lower case).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeAlias

from ..._exceptions import MalformedRow
from ..._spec.enrich import PostgresSource, SqliteSource
from ..rows import Row, Value, Version
from .base import SKIP, spread

__all__ = ["INTEGER", "SqlRows", "SqlSpec", "parse_number", "quote", "select_statement"]

SqlSpec: TypeAlias = SqliteSource | PostgresSource
INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MS = datetime.timedelta(milliseconds=1)


def quote(name: str) -> str:
    """A checked name (`check_identifier`: no quotes in it) as SQL text."""
    return ".".join(f'"{part}"' for part in name.split("."))


def select_statement(spec: SqlSpec) -> tuple[str, int]:
    """``SELECT ... WHERE "<key>"`` (the caller adds the condition) and how many leading columns
    are for the source alone: the key and the validity columns, the row being the rest."""
    head = [spec.key]
    if spec.valid_from is not None and spec.valid_to is not None:
        head += [spec.valid_from, spec.valid_to]
    if spec.columns:
        body = ", ".join(quote(name) for name in dict.fromkeys([spec.key, *spec.columns, *head]))
    else:
        body = "*"
    columns = ", ".join([*(quote(name) for name in head), body])
    return f"SELECT {columns} FROM {quote(spec.table)} WHERE {quote(spec.key)}", len(head)


def parse_number(text: str) -> int | float | object:
    if INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else SKIP
    return SKIP


def _millis(value: object) -> int | None:
    """A validity column's value as event-time milliseconds (None: not a time)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return (value - _EPOCH) // _MS
    return None


class SqlRows:
    """The answer of a SQL source, gathered from the records of one or more queries."""

    def __init__(self, spec: SqlSpec, head: int, groups: dict[Any, list[Hashable]]) -> None:
        self._versioned = spec.versioned
        self._head = head
        self._groups = groups
        self._found: dict[Any, Row | MalformedRow | list[Version]] = {}

    def add(
        self,
        names: Sequence[str],
        records: Iterable[Sequence[Any]],
        check: Callable[[Row], MalformedRow | None] | None = None,
    ) -> None:
        head = self._head
        row_names = names[head:]
        found = self._found
        for record in records:
            value = record[0]
            if value not in self._groups:
                continue  # equal for the server, not for Python (a collation): not asked for
            row: Row = dict(zip(row_names, record[head:], strict=True))
            bad = check(row) if check is not None else None
            if not self._versioned:
                found.setdefault(value, bad or row)  # a duplicate key: the first row wins
                continue
            versions = found.setdefault(value, [])
            if isinstance(versions, MalformedRow):
                continue
            assert isinstance(versions, list)
            valid_from, valid_to = _millis(record[1]), _millis(record[2])
            if bad is None and (valid_from is None or (valid_to is None and record[2] is not None)):
                bad = MalformedRow(
                    f"validity columns not event-time milliseconds: {record[1]!r}, {record[2]!r}"
                )
            if bad is not None:
                found[value] = bad
            else:
                assert valid_from is not None
                versions.append(Version(valid_from, valid_to, row))

    def result(self) -> dict[Hashable, Value]:
        found = {
            value: sorted(row, key=lambda version: version.valid_from)
            if isinstance(row, list)
            else row
            for value, row in self._found.items()
        }
        return spread(found, self._groups)
