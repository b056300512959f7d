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

One driver per module, as httpx keeps its transports: ``sqlite``, ``postgres`` (both on the
statement and row helpers of ``sql``), ``redis`` and ``http``, each on ``base.Base``. The rows
they give are described in ``runtime/_enrich/rows.py``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from ..._spec.enrich import HttpSource, PostgresSource, RedisSource, Source, SqliteSource
from ..rows import Value
from .http import HttpDimensionSource
from .postgres import PostgresDimensionSource
from .redis import RedisDimensionSource
from .sqlite import SqliteDimensionSource

__all__ = [
    "DimensionSource",
    "HttpDimensionSource",
    "PostgresDimensionSource",
    "RedisDimensionSource",
    "SqliteDimensionSource",
    "make_source",
]


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
