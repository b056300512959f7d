"""The PostgreSQL source: a table read through an asyncpg pool (the ``postgres`` extra)."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Hashable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID

import anyio

from ..._spec.enrich import PostgresSource
from ..rows import Value
from .base import SKIP, Base, group_keys, missing_extra
from .sql import INTEGER, SqlRows, parse_number, select_statement

__all__ = ["PostgresDimensionSource"]

_PG_INTEGERS = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
_PG_TEXTS = {"text", "varchar", "bpchar", "name", "citext"}


def _pg_coercion(type_name: str) -> Callable[[Hashable], Any]:
    """How a key is given as a parameter of the key column's type (by the type's name)."""

    bound = _PG_INTEGERS.get(type_name, 0)

    def integer(key: Hashable) -> Any:
        if isinstance(key, str) and INTEGER.fullmatch(key):
            key = int(key)
        elif isinstance(key, float) and key.is_integer():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool) and -bound <= key < bound:
            return key
        return SKIP

    def text(key: Hashable) -> Any:
        if isinstance(key, bytes | bool):
            return SKIP
        key = key if isinstance(key, str) else str(key)
        return SKIP if "\x00" in key else key  # PostgreSQL text cannot hold NUL

    def uuid(key: Hashable) -> Any:
        if isinstance(key, UUID):
            return key
        try:
            return UUID(key) if isinstance(key, str) else SKIP
        except ValueError:
            return SKIP

    def numeric(key: Hashable) -> Any:
        if isinstance(key, bool) or not isinstance(key, int | float | str | Decimal):
            return SKIP
        try:
            value = Decimal(str(key))
        except InvalidOperation:
            return SKIP
        return value if value.is_finite() else SKIP

    def floating(key: Hashable) -> Any:
        if isinstance(key, str):
            key = parse_number(key)
        if isinstance(key, int | float) and not isinstance(key, bool) and math.isfinite(key):
            return key
        return SKIP

    def day(key: Hashable) -> Any:
        # a date, or its ISO text; a datetime is not a day (its time would be dropped)
        if type(key) is datetime.date:
            return key
        if isinstance(key, str):
            try:
                return datetime.date.fromisoformat(key)
            except ValueError:
                return SKIP
        return SKIP

    def moment(key: Hashable) -> Any:
        if isinstance(key, datetime.datetime):
            return key
        if isinstance(key, str):
            try:
                return datetime.datetime.fromisoformat(key)
            except ValueError:
                return SKIP
        return SKIP

    if type_name in _PG_INTEGERS:
        return integer
    if type_name in _PG_TEXTS:
        return text
    if type_name == "uuid":
        return uuid
    if type_name == "numeric":
        return numeric
    if type_name in ("float4", "float8"):
        return floating
    if type_name == "date":
        return day
    if type_name in ("timestamp", "timestamptz"):
        return moment
    return lambda key: key  # asyncpg encodes it, or the batch fails with its error


class PostgresDimensionSource(Base):
    """A table of PostgreSQL, read through an asyncpg pool of ``pool_size`` connections.

    A batch is one ``SELECT ... WHERE key = ANY($1)``; `open` prepares it once to learn the key
    column's type, by which keys are converted (a key that cannot be of that type is missing;
    ``date`` and ``timestamp`` columns take ISO text; for a type other than integers, text,
    uuid, numeric, floats, dates and timestamps, keys are passed as they are, and a key that
    asyncpg cannot encode fails alone: the fetcher splits its batch).
    ``timeout`` bounds connecting and each query.

    Raises: TimeoutError (no answer within ``timeout``); at `open`, OSError (the server is
    down) or asyncpg's errors (no such table or column, authentication), their message
    naming the source.
    """

    kind = "postgres"

    def __init__(self, spec: PostgresSource) -> None:
        self.spec = spec
        self.name = spec.name
        select, self._head = select_statement(spec)
        self._sql = f"{select} = ANY($1)"
        self._pool: Any = None
        self._coerce: Callable[[Hashable], Any] = lambda key: key

    async def open(self) -> None:
        if self._pool is not None:
            raise self._already_open()
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ImportError as exc:
            raise missing_extra("asyncpg", "postgres") from exc
        timeout = self.spec.ms("timeout") / 1000
        try:
            pool = await asyncpg.create_pool(
                self.spec.dsn,
                min_size=1,
                max_size=self.spec.pool_size,
                timeout=timeout,
                command_timeout=timeout,
            )
        except Exception as exc:  # no server, no database, authentication: say which source
            raise self._named(exc) from exc
        try:
            async with pool.acquire(timeout=timeout) as connection:
                statement = await connection.prepare(self._sql, timeout=timeout)
                key_type = statement.get_attributes()[0].type.name
        except Exception as exc:  # no such table or column
            pool.terminate()
            raise self._named(exc) from exc
        except BaseException:
            pool.terminate()
            raise
        self._coerce = _pg_coercion(key_type)
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(self.spec.ms("timeout") / 1000) as scope:
                await pool.close()
            if scope.cancelled_caught:
                pool.terminate()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        pool = self._pool
        if pool is None:
            raise self._not_open()
        groups = group_keys(keys, self._coerce)
        rows = SqlRows(self.spec, self._head, groups)
        if groups:
            timeout = self.spec.ms("timeout") / 1000
            async with pool.acquire(timeout=timeout) as connection:
                records = await connection.fetch(self._sql, list(groups), timeout=timeout)
            if records:
                rows.add(list(records[0].keys()), [tuple(record) for record in records])
        return rows.result()
