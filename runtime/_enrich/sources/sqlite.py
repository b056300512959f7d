"""The SQLite source: a table of a SQLite file, read-only, over one aiosqlite connection."""

from __future__ import annotations

import errno
import math
import sqlite3
from collections.abc import Hashable, Sequence
from typing import Any

import aiosqlite
import anyio

from ..._exceptions import MalformedRow
from ..._spec.enrich import SqliteSource
from ..rows import Row, Value
from .base import SKIP, Base, group_keys
from .sql import SqlRows, parse_number, quote, select_statement

__all__ = ["SqliteDimensionSource"]

_INT64 = 2**63


class _Undecodable(bytes):
    """TEXT that is not UTF-8: the row's error (the default text factory fails the query)."""


def _decode_text(data: bytes) -> str | _Undecodable:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return _Undecodable(data)


def _check_text(row: Row) -> MalformedRow | None:
    for name, value in row.items():
        if type(value) is _Undecodable:
            return MalformedRow(f"column {name!r} is not UTF-8 text: {bytes(value)[:40]!r}")
    return None


def _sqlite_affinity(declared: str) -> str:
    """The column affinity of a declared type (SQLite's rules, section 3.1 of its datatypes)."""
    declared = declared.upper()
    if "INT" in declared:
        return "INTEGER"
    if "CHAR" in declared or "CLOB" in declared or "TEXT" in declared:
        return "TEXT"
    if "BLOB" in declared or not declared:
        return "BLOB"
    if "REAL" in declared or "FLOA" in declared or "DOUB" in declared:
        return "REAL"
    return "NUMERIC"


class SqliteDimensionSource(Base):
    """A table of a SQLite file, read-only over one aiosqlite connection (its own thread).

    A batch is a ``SELECT ... WHERE key IN (?, ...)`` per ``chunk_size`` keys (under SQLite's
    limit of bound parameters). ``timeout`` is SQLite's wait for a locked database.

    Raises (at `open`):
        FileNotFoundError: the file does not exist.
        sqlite3.OperationalError: no such table or column (named with the file).
    """

    kind = "sqlite"

    def __init__(self, spec: SqliteSource, *, chunk_size: int = 500) -> None:
        self.spec = spec
        self.name = spec.name
        self._chunk_size = chunk_size
        self._select, self._head = select_statement(spec)
        self._connection: aiosqlite.Connection | None = None
        self._affinity = "BLOB"

    async def open(self) -> None:
        if self._connection is not None:
            raise self._already_open()
        path = anyio.Path(self.spec.path)
        if not await path.is_file():
            raise FileNotFoundError(
                errno.ENOENT, f"the file of SQLite source {self.name!r} does not exist", str(path)
            )
        uri = (await path.resolve()).as_uri() + "?mode=ro"
        connection = await aiosqlite.connect(uri, uri=True, timeout=self.spec.ms("timeout") / 1000)
        try:
            connection.text_factory = _decode_text
            self._affinity = await self._key_affinity(connection)
        except sqlite3.Error as exc:
            await connection.close()
            raise sqlite3.OperationalError(
                f"SQLite source {self.name!r} ({self.spec.path}): {exc}"
            ) from exc
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def _key_affinity(self, connection: aiosqlite.Connection) -> str:
        """Checks the table and the columns, and gives the key column's affinity.

        A double-quoted name that is no column is a string literal for SQLite (its "double-quoted
        string literal" leniency), so a misspelt column would read as its own name: hence here.
        """
        schema, _, table = self.spec.table.rpartition(".")
        pragma = f"PRAGMA {quote(schema)}.table_info" if schema else "PRAGMA table_info"
        declared = {
            str(column[1]).lower(): str(column[2] or "")
            for column in await connection.execute_fetchall(f'{pragma}("{table}")')
        }
        if not declared:
            raise sqlite3.OperationalError(f"no such table: {self.spec.table}")
        spec = self.spec
        for name in (spec.key, *spec.columns, spec.valid_from, spec.valid_to):
            if name is not None and name.lower() not in declared:
                raise sqlite3.OperationalError(f"no such column: {name} in {spec.table}")
        return _sqlite_affinity(declared[spec.key.lower()])

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def _coerce(self, key: Hashable) -> Any:
        """A key as SQLite compares it with the key column (its affinity)."""
        if isinstance(key, str):
            if self._affinity in ("INTEGER", "REAL", "NUMERIC"):
                number = parse_number(key)
                if number is not SKIP and not (isinstance(number, int) and abs(number) >= _INT64):
                    return number
            return key
        if isinstance(key, int):
            if self._affinity == "TEXT":
                return str(key)
            return key if abs(key) < _INT64 else SKIP
        if isinstance(key, float):
            if math.isnan(key):
                return SKIP
            return str(key) if self._affinity == "TEXT" else key
        if isinstance(key, bytes):
            return key
        return str(key)

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        connection = self._connection
        if connection is None:
            raise self._not_open()
        groups = group_keys(keys, self._coerce)
        values = list(groups)
        rows = SqlRows(self.spec, self._head, groups)
        for start in range(0, len(values), self._chunk_size):
            chunk = values[start : start + self._chunk_size]
            marks = ", ".join("?" * len(chunk))
            async with connection.execute(f"{self._select} IN ({marks})", chunk) as cursor:
                names = [column[0] for column in cursor.description]
                records = await cursor.fetchall()
            rows.add(names, records, _check_text)
        return rows.result()
