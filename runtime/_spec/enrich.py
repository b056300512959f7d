"""Stream-table enrichment in feature specs (issue 6, ``docs/design/enrichment.md``).

A feature set names its dimension ``sources`` (SQLite, PostgreSQL, Redis, HTTP) and its
``lookups``: each lookup maps an event field to the key of one source's table, and gives the
event the row found under ``enrichment[<lookup>]`` (and, for features, the fields
``<lookup>.<column>``). Every source has its own cache and fetch settings.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeAlias

import msgspec
import msgspec.structs

from .._duration import Duration, parse_duration
from .checks import SpecMeta as _SpecMeta
from .checks import check_duration, check_int, check_name, check_str, fail, kind

__all__ = [
    "SOURCE_TYPES",
    "CustomSource",
    "HttpSource",
    "Lookup",
    "PostgresSource",
    "RedisSource",
    "Source",
    "SqliteSource",
    "check_identifier",
]

#: a SQL identifier the sources accept: a table or a column name, never quoted text
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_identifier(owner: object, path: str, value: object) -> None:
    """A table or column name: letters, digits and ``_``, not starting with a digit (a
    ``schema.table`` name is two of them). Names go into SQL text, so nothing else passes."""
    check_str(owner, path, value)
    assert isinstance(value, str)
    for part in value.split("."):
        if not _IDENTIFIER.fullmatch(part):
            fail(
                owner,
                path,
                f"not a valid SQL name: {value!r} (use letters, digits and _, at most 63 each)",
            )


class _Source(
    msgspec.Struct,
    metaclass=_SpecMeta,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
):
    """What every source has: its name, its cache and how it is called.

    Args:
        name: the source's name, which lookups give.
        cache_size: rows kept in the source's LRU cache (the least recently used go first).
        cache_max_bytes: the most bytes the cached rows may hold (an estimate: Python's size
            of each key and row and all they hold); the least recently used go first, and a
            row larger than the whole bound is not cached. None or 0 (the default): no bound
            but ``cache_size``. Set it when rows may be large.
        ttl: how long a cached row is fresh (a duration).
        negative_ttl: how long a key the source does not have is remembered as missing.
        refresh_ahead: the part of ``ttl`` after which a row still in use is fetched again
            before it expires (0.8: in its last fifth), so hot keys never miss; None or 0: off.
        stale_if_error: while the source fails (errors, timeouts, an open circuit), serve
            rows that expired less than ``max_stale`` ago, marked stale, rather than defaults.
        max_stale: how long past its ``ttl`` a row may be served stale.
        max_batch_size: the most keys one call of the source is given.
        max_in_flight: the most calls of the source under way at once.
        fetch_linger: how long a fetch waits for more keys before it calls the source (unless
            ``max_batch_size`` keys are waiting first): fewer, fuller calls, for that much
            more latency on a miss; 0 (the default) gathers the keys of one moment only.
        timeout: how long one call may take.
        retries: calls retried after a failure (with exponential backoff from ``backoff``).
        backoff: the wait before the first retry; each next one waits twice as long.
        breaker_failures: failed calls in a row after which the circuit opens: the source is
            not called, events get stale rows or defaults at once.
        breaker_reset: how long the circuit stays open before one probe call is let through
            (it closes again when the probe succeeds).
    """

    name: str
    cache_size: int = 10_000
    cache_max_bytes: int | None = None
    ttl: Duration = "5m"
    negative_ttl: Duration = "30s"
    refresh_ahead: float | None = 0.8
    stale_if_error: bool = True
    max_stale: Duration = "1h"
    max_batch_size: int = 100
    max_in_flight: int = 4
    fetch_linger: Duration = 0
    timeout: Duration = "1s"
    retries: int = 2
    backoff: Duration = "50ms"
    breaker_failures: int = 5
    breaker_reset: Duration = "5s"

    def __post_init__(self) -> None:
        check_name(self, "name", self.name)
        check_int(self, "cache_size", self.cache_size, 1, 10**9)
        if self.cache_max_bytes is not None:
            check_int(self, "cache_max_bytes", self.cache_max_bytes, 0, 2**50)
            if self.cache_max_bytes == 0:  # what a spec file (TOML has no null) says for "off"
                msgspec.structs.force_setattr(self, "cache_max_bytes", None)
        check_duration(self, "ttl", self.ttl, positive=True)
        check_duration(self, "negative_ttl", self.negative_ttl, positive=False)
        if self.refresh_ahead is not None:
            value = self.refresh_ahead
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                fail(self, "refresh_ahead", f"expected a number, got {kind(value)}")
            if not 0 <= value < 1:
                fail(self, "refresh_ahead", f"must be at least 0 and below 1, got {value}")
            if value == 0:  # what a spec file (TOML has no null) says for "off"
                msgspec.structs.force_setattr(self, "refresh_ahead", None)
        if not isinstance(self.stale_if_error, bool):
            fail(self, "stale_if_error", f"expected true or false, got {kind(self.stale_if_error)}")
        check_duration(self, "max_stale", self.max_stale, positive=False)
        check_int(self, "max_batch_size", self.max_batch_size, 1, 100_000)
        check_int(self, "max_in_flight", self.max_in_flight, 1, 1_000)
        check_duration(self, "fetch_linger", self.fetch_linger, positive=False)
        check_duration(self, "timeout", self.timeout, positive=True)
        check_int(self, "retries", self.retries, 0, 100)
        check_duration(self, "backoff", self.backoff, positive=False)
        check_int(self, "breaker_failures", self.breaker_failures, 1, 10**6)
        check_duration(self, "breaker_reset", self.breaker_reset, positive=True)

    def ms(self, name: str) -> int:
        """A duration option in milliseconds."""
        return parse_duration(getattr(self, name), field=name)


class _SqlSource(_Source, frozen=True, kw_only=True):
    """A table with one row per key, or with versions of each key valid over time.

    Args:
        table: the table (``name`` or ``schema.name``).
        key: its key column.
        columns: the columns to read (default: all of them).
        valid_from, valid_to: validity columns (event-time milliseconds; ``valid_to`` NULL
            for a version still valid): the row a lookup gets is the version valid at the
            event's time, so a replay enriches as it would have then. Both or neither.
    """

    table: str
    key: str
    columns: tuple[str, ...] = ()
    valid_from: str | None = None
    valid_to: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_identifier(self, "table", self.table)
        check_identifier(self, "key", self.key)
        if not isinstance(self.columns, list | tuple):
            fail(self, "columns", f"expected a list of column names, got {kind(self.columns)}")
        msgspec.structs.force_setattr(self, "columns", tuple(self.columns))
        for index, column in enumerate(self.columns):
            check_identifier(self, f"columns[{index}]", column)
        if (self.valid_from is None) != (self.valid_to is None):
            fail(self, "valid_to", "valid_from and valid_to go together: give both or neither")
        for name in ("valid_from", "valid_to"):
            value = getattr(self, name)
            if value is not None:
                check_identifier(self, name, value)

    @property
    def versioned(self) -> bool:
        """Whether rows have validity columns (a point-in-time lookup)."""
        return self.valid_from is not None


class SqliteSource(_SqlSource, tag="sqlite", frozen=True, kw_only=True):
    """A table of a SQLite database file (the embedded default; read through aiosqlite)."""

    path: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_str(self, "path", self.path)


class PostgresSource(_SqlSource, tag="postgres", frozen=True, kw_only=True):
    """A table of a PostgreSQL database (read through asyncpg).

    Args:
        dsn: the connection string (``postgresql://user@host:5432/db``).
        pool_size: connections in the source's pool.
    """

    dsn: str
    pool_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_str(self, "dsn", self.dsn)
        check_int(self, "pool_size", self.pool_size, 1, 1_000)


class RedisSource(_Source, tag="redis", frozen=True, kw_only=True):
    """Rows in Redis (through ``redis.asyncio``) under ``<prefix><key>``: hashes, or JSON
    strings (``format="json"``); a batch is one pipeline of ``HGETALL`` or one ``MGET``.
    """

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = ""
    format: Literal["hash", "json"] = "hash"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_str(self, "url", self.url)
        check_str(self, "prefix", self.prefix, empty=True)
        if self.format not in ("hash", "json"):
            fail(self, "format", f"expected 'hash' or 'json', got {self.format!r}")


class HttpSource(_Source, tag="http", frozen=True, kw_only=True):
    """Rows from an HTTP API (through httpx).

    Args:
        url: with ``batch=False``, a URL with ``{key}`` where the key goes (URL-quoted), one
            GET per key, at most ``max_concurrency`` at once; a 404 means the key is missing.
            With ``batch=True``, the URL of a batch endpoint: one POST of
            ``{"keys": [...]}`` per batch, answered with ``{"<key>": row, ...}`` (keys it
            does not have left out).
        headers: sent with every request.
    """

    url: str
    batch: bool = False
    max_concurrency: int = 8
    headers: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_str(self, "url", self.url)
        if not self.url.startswith(("http://", "https://")):
            fail(self, "url", f"expected an http:// or https:// URL, got {self.url!r}")
        if not self.batch and "{key}" not in self.url:
            fail(self, "url", "needs {key} where the key goes (or batch=true)")
        check_int(self, "max_concurrency", self.max_concurrency, 1, 1_000)


class CustomSource(_Source, tag="custom", frozen=True, kw_only=True):
    """A source of your own: any object with ``async get_many(keys) -> dict`` (keys it does
    not have left out; raising on failure), and optionally ``async open()`` and ``async
    close()``, given to the runtime as ``FeatureRuntime(..., sources={name: obj})``. The spec
    holds its cache and fetch settings, as for the built-in sources."""


Source: TypeAlias = SqliteSource | PostgresSource | RedisSource | HttpSource | CustomSource
#: the source types by their ``type`` tag
SOURCE_TYPES: dict[str, type[Any]] = {
    "sqlite": SqliteSource,
    "postgres": PostgresSource,
    "redis": RedisSource,
    "http": HttpSource,
    "custom": CustomSource,
}


class Lookup(
    msgspec.Struct, metaclass=_SpecMeta, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """One enrichment of each event: the row of ``source`` whose key is the event's ``field``.

    Args:
        name: the lookup's name: the event gets the row as ``enrichment[name]``, and features
            read its columns as ``"<name>.<column>"``.
        field: the event field holding the key.
        source: the name of one of the feature set's ``sources``.
        stream: the ingested stream whose events it enriches (default: the first).
        default: the row an event gets when the source has no row for its key, the key is
            missing from the event, or the source fails with nothing cached (None: the
            lookup's fields are then absent).
    """

    name: str
    field: str
    source: str
    default: dict[str, Any] | None = None
    stream: str | None = None

    def __post_init__(self) -> None:
        check_name(self, "name", self.name)
        check_str(self, "field", self.field)
        check_name(self, "source", self.source)
        if self.default is not None and not isinstance(self.default, dict):
            fail(self, "default", f"expected a table of values, got {kind(self.default)}")
        if self.stream is not None:
            check_name(self, "stream", self.stream)

    def stream_or(self, first: str) -> str:
        """The stream the lookup enriches: its ``stream``, else ``first``."""
        return self.stream or first
