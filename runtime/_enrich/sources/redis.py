"""The Redis source: rows as hashes or JSON objects under a key prefix (the ``redis`` extra)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from ..._exceptions import MalformedRow
from ..._spec.enrich import RedisSource
from ..rows import Row, Value
from .base import Base, group_keys, json_row, missing_extra, spread

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisDimensionSource"]


def _hash_row(fields: dict[bytes, bytes], where: str) -> Row | MalformedRow:
    try:
        return {name.decode(): value.decode() for name, value in fields.items()}
    except UnicodeDecodeError as exc:
        return MalformedRow(f"{where}: a field that is not UTF-8: {exc}")


class RedisDimensionSource(Base):
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
            raise missing_extra("redis", "redis") from exc
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
        except Exception as exc:
            await client.aclose()
            raise self._named(exc) from exc
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    def _key_text(self, key: Hashable) -> str | None:
        return self.spec.prefix + str(key)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Value]:
        client = self._client
        if client is None:
            raise self._not_open()
        groups = group_keys(keys, self._key_text)
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
                found.append(None if data is None else json_row(data, name))
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
        return spread(rows, groups)
