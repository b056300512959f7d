"""Dimension sources: where enrichment reads rows by key (``docs/design/enrichment.md``).

A source is opened once, answers ``get_many(keys)`` with one call of its server per batch, and
is closed once. It leaves out the keys it does not have (missing), raises when the batch fails
(a connection error, a timeout, an HTTP error status: the fetcher around it retries, times out
and breaks the circuit), and gives a key whose row is unusable a `MalformedRow` instead of a row,
so one bad row never fails the batch.

Keys are matched as the server's key column types them: ``42`` and ``"42"`` find the same row
of an integer key column, and ``7`` the row ``"7"`` of a text column; a key that cannot be of
the column's type (``"x' OR '1'='1"`` for an integer column) is simply missing. Redis and HTTP
keys are ``str(key)``. The answer is keyed by the keys as given.

Keys never go into SQL text: they are bound parameters. Table and column names do, so the spec
accepts only plain names (`check_identifier`) and they are double-quoted (which makes them
case-sensitive in PostgreSQL: write them as the catalog has them, usually lower case).
"""

from __future__ import annotations

import bisect
import datetime
import errno
import math
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Hashable, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias
from uuid import UUID

import aiosqlite
import anyio
import msgspec

from ..._exceptions import MalformedRow
from ..._spec.enrich import HttpSource, PostgresSource, RedisSource, Source, SqliteSource

if TYPE_CHECKING:
    import httpx
    import redis.asyncio

__all__ = [
    "DimensionSource",
    "HttpDimensionSource",
    "MalformedRow",
    "PostgresDimensionSource",
    "RedisDimensionSource",
    "Row",
    "SqliteDimensionSource",
    "Value",
    "Version",
    "make_source",
    "version_at",
]

#: a row of a dimension table: column name -> value
Row: TypeAlias = dict[str, Any]


class Version(msgspec.Struct, frozen=True):
    """One version of a key's row in a versioned table: valid from ``valid_from`` (included)
    until ``valid_to`` (excluded; None: still valid), both in event-time milliseconds."""

    valid_from: int
    valid_to: int | None
    row: Row

    def covers(self, time: int) -> bool:
        """Whether this version is the valid one at ``time``."""
        return self.valid_from <= time and (self.valid_to is None or time < self.valid_to)


def version_at(versions: Sequence[Version], time: int) -> Version | None:
    """The version valid at ``time`` among ``versions`` sorted by ``valid_from`` (as sources
    give them), or None if none is. Where versions overlap, the one that starts last wins."""
    index = bisect.bisect_right(versions, time, key=lambda version: version.valid_from)
    if index == 0:
        return None
    version = versions[index - 1]
    return version if version.covers(time) else None


#: what ``get_many`` gives for a key it found
Value: TypeAlias = Row | list[Version] | MalformedRow


class DimensionSource(Protocol):
    """A table of rows by key that enrichment reads in batches."""

    async def open(self) -> None:
        """Connect (and check what can be checked before the first batch)."""

    async def close(self) -> None:
        """Release the connections; a source that is not open is left as it is."""

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        """The rows of ``keys`` that the source has (a versioned table: every version of each
        key's row), `MalformedRow` for rows it cannot read; raises when the batch fails."""


def make_source(spec: Source) -> DimensionSource:
    """The source a built-in source spec describes (not open yet).

    Raises:
        TypeError: a custom source (there is nothing to build: the runtime is given the object)
            or not a source spec.
    """
    if isinstance(spec, SqliteSource):
        return SqliteDimensionSource(spec)
    if isinstance(spec, PostgresSource):
        return PostgresDimensionSource(spec)
    if isinstance(spec, RedisSource):
        return RedisDimensionSource(spec)
    if isinstance(spec, HttpSource):
        return HttpDimensionSource(spec)
    if type(spec).__name__ == "CustomSource":
        raise TypeError(
            f"source {spec.name!r} is custom: give the object itself, as "
            f"FeatureRuntime(..., sources={{{spec.name!r}: obj}})"
        )
    raise TypeError(f"not a dimension source spec: {spec!r}")


class _Base:
    """Opening and closing as an async context manager, and the check that a source is open."""

    kind = "dimension"
    #: the source's name (its spec's)
    name = ""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _not_open(self) -> RuntimeError:
        return RuntimeError(f"the {self.kind} source {self.name!r} is not open")

    def _already_open(self) -> RuntimeError:
        return RuntimeError(f"the {self.kind} source {self.name!r} is already open")


def _missing_extra(module: str, extra: str) -> ImportError:
    return ImportError(f"a {extra} source needs {module}: pip install 'featurist[{extra}]'")


# --- SQL: the statement, the keys as the key column types them, the rows back by key -----------

_SqlSpec: TypeAlias = SqliteSource | PostgresSource
#: what a key coercion gives for a key that cannot be of the key column's type
_SKIP = object()
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT64 = 2**63
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MS = datetime.timedelta(milliseconds=1)


def _quote(name: str) -> str:
    """A checked name (`check_identifier`: no quotes in it) as SQL text."""
    return ".".join(f'"{part}"' for part in name.split("."))


def _select(spec: _SqlSpec) -> tuple[str, int]:
    """``SELECT ... WHERE "<key>"`` (the caller adds the condition) and how many leading columns
    are for the source alone: the key and the validity columns, the row being the rest."""
    head = [spec.key]
    if spec.valid_from is not None and spec.valid_to is not None:
        head += [spec.valid_from, spec.valid_to]
    if spec.columns:
        body = ", ".join(_quote(name) for name in dict.fromkeys([spec.key, *spec.columns, *head]))
    else:
        body = "*"
    columns = ", ".join([*(_quote(name) for name in head), body])
    return f"SELECT {columns} FROM {_quote(spec.table)} WHERE {_quote(spec.key)}", len(head)


def _number(text: str) -> int | float | object:
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else _SKIP
    return _SKIP


def _group(
    keys: Iterable[Hashable], coerce: Callable[[Hashable], Any]
) -> dict[Any, list[Hashable]]:
    """The keys by their value as the key column types it (keys that cannot be left out)."""
    groups: dict[Any, list[Hashable]] = {}
    for key in keys:
        value = coerce(key)
        if value is not _SKIP:
            groups.setdefault(value, []).append(key)
    return groups


def _spread(found: dict[Any, Value], groups: dict[Any, list[Hashable]]) -> dict[Hashable, Value]:
    """The answer by the keys as asked: keys asked in two spellings (42 and "42") get their own
    copy of the row, never one object that a caller could change for both."""
    answer: dict[Hashable, Value] = {}
    for value, row in found.items():
        for index, key in enumerate(groups[value]):
            answer[key] = row.copy() if index and isinstance(row, dict | list) else row
    return answer


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


class _Rows:
    """The answer of a SQL source, gathered from the records of one or more queries."""

    def __init__(self, spec: _SqlSpec, head: int, groups: dict[Any, list[Hashable]]) -> None:
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
        return _spread(found, self._groups)


# --- SQLite -------------------------------------------------------------------------------------


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


class SqliteDimensionSource(_Base):
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
        self._select, self._head = _select(spec)
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
        pragma = f"PRAGMA {_quote(schema)}.table_info" if schema else "PRAGMA table_info"
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
                number = _number(key)
                if number is not _SKIP and not (isinstance(number, int) and abs(number) >= _INT64):
                    return number
            return key
        if isinstance(key, int):
            if self._affinity == "TEXT":
                return str(key)
            return key if abs(key) < _INT64 else _SKIP
        if isinstance(key, float):
            if math.isnan(key):
                return _SKIP
            return str(key) if self._affinity == "TEXT" else key
        if isinstance(key, bytes):
            return key
        return str(key)

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        connection = self._connection
        if connection is None:
            raise self._not_open()
        groups = _group(keys, self._coerce)
        values = list(groups)
        rows = _Rows(self.spec, self._head, groups)
        for start in range(0, len(values), self._chunk_size):
            chunk = values[start : start + self._chunk_size]
            marks = ", ".join("?" * len(chunk))
            async with connection.execute(f"{self._select} IN ({marks})", chunk) as cursor:
                names = [column[0] for column in cursor.description]
                records = await cursor.fetchall()
            rows.add(names, records, _check_text)
        return rows.result()


# --- PostgreSQL ---------------------------------------------------------------------------------

_PG_INTEGERS = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
_PG_TEXTS = {"text", "varchar", "bpchar", "name", "citext"}


def _pg_coercion(type_name: str) -> Callable[[Hashable], Any]:
    """How a key is given as a parameter of the key column's type (by the type's name)."""

    bound = _PG_INTEGERS.get(type_name, 0)

    def integer(key: Hashable) -> Any:
        if isinstance(key, str) and _INTEGER.fullmatch(key):
            key = int(key)
        elif isinstance(key, float) and key.is_integer():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool) and -bound <= key < bound:
            return key
        return _SKIP

    def text(key: Hashable) -> Any:
        if isinstance(key, bytes | bool):
            return _SKIP
        key = key if isinstance(key, str) else str(key)
        return _SKIP if "\x00" in key else key  # PostgreSQL text cannot hold NUL

    def uuid(key: Hashable) -> Any:
        if isinstance(key, UUID):
            return key
        try:
            return UUID(key) if isinstance(key, str) else _SKIP
        except ValueError:
            return _SKIP

    def numeric(key: Hashable) -> Any:
        if isinstance(key, bool) or not isinstance(key, int | float | str | Decimal):
            return _SKIP
        try:
            value = Decimal(str(key))
        except InvalidOperation:
            return _SKIP
        return value if value.is_finite() else _SKIP

    def floating(key: Hashable) -> Any:
        if isinstance(key, str):
            key = _number(key)
        if isinstance(key, int | float) and not isinstance(key, bool) and math.isfinite(key):
            return key
        return _SKIP

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
    return lambda key: key  # asyncpg encodes it, or the batch fails with its error


class PostgresDimensionSource(_Base):
    """A table of PostgreSQL, read through an asyncpg pool of ``pool_size`` connections.

    A batch is one ``SELECT ... WHERE key = ANY($1)``; `open` prepares it once to learn the key
    column's type, by which keys are converted (a key that cannot be of that type is missing;
    for a type other than integers, text, uuid, numeric and floats, keys are passed as they are).
    ``timeout`` bounds connecting and each query.

    Raises: TimeoutError (no answer within ``timeout``); at `open`, OSError (the server is
    down) or asyncpg's errors (no such table or column, authentication).
    """

    kind = "postgres"

    def __init__(self, spec: PostgresSource) -> None:
        self.spec = spec
        self.name = spec.name
        select, self._head = _select(spec)
        self._sql = f"{select} = ANY($1)"
        self._pool: Any = None
        self._coerce: Callable[[Hashable], Any] = lambda key: key

    async def open(self) -> None:
        if self._pool is not None:
            raise self._already_open()
        try:
            import asyncpg  # type: ignore[import-untyped]
        except ImportError as exc:
            raise _missing_extra("asyncpg", "postgres") from exc
        timeout = self.spec.ms("timeout") / 1000
        pool = await asyncpg.create_pool(
            self.spec.dsn,
            min_size=1,
            max_size=self.spec.pool_size,
            timeout=timeout,
            command_timeout=timeout,
        )
        try:
            async with pool.acquire(timeout=timeout) as connection:
                statement = await connection.prepare(self._sql, timeout=timeout)
                key_type = statement.get_attributes()[0].type.name
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
        groups = _group(keys, self._coerce)
        rows = _Rows(self.spec, self._head, groups)
        if groups:
            timeout = self.spec.ms("timeout") / 1000
            async with pool.acquire(timeout=timeout) as connection:
                records = await connection.fetch(self._sql, list(groups), timeout=timeout)
            if records:
                rows.add(list(records[0].keys()), [tuple(record) for record in records])
        return rows.result()


# --- Redis --------------------------------------------------------------------------------------


def _json_row(data: bytes | str, where: str) -> Row | MalformedRow:
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        return MalformedRow(f"{where}: not JSON: {exc}")
    if not isinstance(value, dict):
        return MalformedRow(f"{where}: a JSON {type(value).__name__}, not an object")
    return value


def _hash_row(fields: dict[bytes, bytes], where: str) -> Row | MalformedRow:
    try:
        return {name.decode(): value.decode() for name, value in fields.items()}
    except UnicodeDecodeError as exc:
        return MalformedRow(f"{where}: a field that is not UTF-8: {exc}")


class RedisDimensionSource(_Base):
    """Rows in Redis under ``<prefix><str(key)>``: hashes (one pipeline of ``HGETALL``; an empty
    hash is missing; values are strings, as Redis keeps them) or JSON objects (one ``MGET``).

    ``timeout`` bounds connecting and each reply; redis-py's own retries are off. A key holding
    another type is a `MalformedRow` for hashes, missing for JSON (``MGET`` gives nil).

    Raises (from `open`, which pings the server, and `get_many`): TimeoutError (the server did
    not answer within ``timeout``), redis.exceptions.ConnectionError (it is down).
    """

    kind = "redis"

    def __init__(self, spec: RedisSource) -> None:
        self.spec = spec
        self.name = spec.name
        self._client: redis.asyncio.Redis | None = None
        self._timeout_error: type[Exception] = TimeoutError

    async def open(self) -> None:
        if self._client is not None:
            raise self._already_open()
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import TimeoutError as RedisTimeout
        except ImportError as exc:
            raise _missing_extra("redis", "redis") from exc
        self._timeout_error = RedisTimeout
        timeout = self.spec.ms("timeout") / 1000
        client = redis.asyncio.Redis.from_url(
            self.spec.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await client.ping()
        except RedisTimeout as exc:
            await client.aclose()
            raise TimeoutError(f"redis source {self.name!r}: {exc}") from exc
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        client = self._client
        if client is None:
            raise self._not_open()
        groups = _group(keys, lambda key: self.spec.prefix + str(key))
        if not groups:
            return {}
        try:
            return await self._get_many(client, groups)
        except self._timeout_error as exc:  # as the other sources: a builtin TimeoutError
            raise TimeoutError(f"redis source {self.name!r}: {exc}") from exc

    async def _get_many(
        self, client: redis.asyncio.Redis, groups: dict[str, list[Hashable]]
    ) -> dict[Hashable, Value]:
        names = list(groups)
        found: list[Row | MalformedRow | None] = []
        if self.spec.format == "json":
            for name, data in zip(names, await client.mget(names), strict=True):
                found.append(None if data is None else _json_row(data, name))
        else:
            async with client.pipeline(transaction=False) as pipeline:
                for name in names:
                    pipeline.hgetall(name)
                replies = await pipeline.execute(raise_on_error=False)
            for name, reply in zip(names, replies, strict=True):
                if isinstance(reply, Exception):  # a key of another type: WRONGTYPE
                    found.append(MalformedRow(f"{name}: {reply}"))
                else:
                    found.append(_hash_row(reply, name) if reply else None)
        rows: dict[str, Value] = {
            name: row for name, row in zip(names, found, strict=True) if row is not None
        }
        return _spread(rows, groups)


# --- HTTP ---------------------------------------------------------------------------------------


class HttpDimensionSource(_Base):
    """Rows from an HTTP API through one httpx client (redirects followed, no retries).

    ``batch=False``: one GET per key at ``url`` with ``{key}`` replaced by the URL-quoted
    ``str(key)``, at most ``max_concurrency`` at once; 404 is missing, any other status but 2xx
    fails the batch. ``batch=True``: one POST of ``{"keys": [...]}`` (strings and integers as
    they are, other keys as ``str(key)``), answered by a JSON object ``{"<str(key)>": row}``.
    A row that is not a JSON object (``null`` included) is a `MalformedRow`. ``timeout`` is
    httpx's (connecting, each read and write).

    Raises (from `get_many`): TimeoutError (no answer within ``timeout``), httpx.HTTPError
    (httpx.ConnectError: the server is down; httpx.HTTPStatusError: an error status),
    ValueError (a batch answer that is not an object).
    """

    kind = "http"

    def __init__(self, spec: HttpSource) -> None:
        self.spec = spec
        self.name = spec.name
        self._client: httpx.AsyncClient | None = None
        self._timeout_error: type[Exception] = TimeoutError
        self._url_parts = spec.url.split("{key}")

    async def open(self) -> None:
        if self._client is not None:
            raise self._already_open()
        try:
            import httpx
        except ImportError as exc:
            raise _missing_extra("httpx", "http") from exc
        self._timeout_error = httpx.TimeoutException
        self._client = httpx.AsyncClient(
            timeout=self.spec.ms("timeout") / 1000,
            headers=self.spec.headers,
            follow_redirects=True,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        client = self._client
        if client is None:
            raise self._not_open()
        groups = _group(keys, str)
        if not groups:
            return {}
        try:
            if self.spec.batch:
                found = await self._post(client, groups)
            else:
                found = await self._get_each(client, groups)
        except self._timeout_error as exc:  # as the other sources: a builtin TimeoutError
            raise TimeoutError(f"http source {self.name!r}: {exc!r}") from exc
        return _spread(found, groups)

    async def _post(
        self, client: httpx.AsyncClient, groups: dict[str, list[Hashable]]
    ) -> dict[str, Value]:
        keys = [
            key if isinstance(key, str) or type(key) is int else text
            for text, (key, *_) in groups.items()
        ]
        response = await client.post(
            self.spec.url,
            content=msgspec.json.encode({"keys": keys}),
            headers={"content-type": "application/json"},
        )
        response.raise_for_status()
        try:
            answer = msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{self.spec.url}: the batch answer is not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise ValueError(
                f"{self.spec.url}: the batch answer is a JSON {type(answer).__name__}, "
                "not an object of rows by key"
            )
        found: dict[str, Value] = {}
        for text in groups:
            if text in answer:
                row = answer[text]
                found[text] = (
                    row
                    if isinstance(row, dict)
                    else MalformedRow(f"{text}: a JSON {type(row).__name__}, not an object")
                )
        return found

    async def _get_each(
        self, client: httpx.AsyncClient, groups: dict[str, list[Hashable]]
    ) -> dict[str, Value]:
        found: dict[str, Value] = {}
        failures: list[Exception] = []
        pending = iter(groups)

        async def worker(scope: anyio.CancelScope) -> None:
            for text in pending:  # shared by the workers: each key is taken once
                url = urllib.parse.quote(text, safe="").join(self._url_parts)
                try:
                    response = await client.get(url)
                    if response.status_code == 404:
                        continue
                    response.raise_for_status()
                except Exception as exc:
                    failures.append(exc)
                    scope.cancel()
                    return
                found[text] = _json_row(response.content, url)

        # The first failure is raised as it is, not in an ExceptionGroup: the others are cancelled.
        async with anyio.create_task_group() as group:
            for _ in range(min(self.spec.max_concurrency, len(groups))):
                group.start_soon(worker, group.cancel_scope)
        if failures:
            raise failures[0]
        return found
