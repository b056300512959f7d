"""Stable key routing: keys to key groups, key groups to shards.

Routing is two steps, as in Flink. A key is hashed to one of a fixed number of *key groups*
(256 by default), and the key groups are dealt out to the shards in contiguous ranges::

    group = crc32(key_bytes(key)) % key_groups
    shard = group * shards // key_groups

The number of key groups is fixed for the life of the data: it is the unit of re-sharding.
Changing the number of shards moves whole key groups from one shard to another, never single
keys, so state kept per key group can be handed over as a block (see
:meth:`KeyRouter.moved_groups`).
``shards`` can therefore never exceed ``key_groups``.

The hash is ``zlib.crc32``, never the builtin ``hash()``: that one is salted per process, so two
processes (or one process before and after a restart) would route the same key differently.
CRC-32 is stable across processes, platforms and Python versions, cheap, and spreads even
sequential keys such as ``"user-1"``, ``"user-2"`` evenly over the key groups. It is not a
cryptographic hash: keys chosen by an adversary can all be sent to one shard.

Keys are ``str``, ``int`` or ``bytes``; see :func:`stable_hash` for how each becomes bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TypeAlias, TypeVar

from ._exceptions import ConfigError

__all__ = ["Key", "KeyRouter", "stable_hash"]

#: The types a routing key may have. ``bool`` is excluded although it is an ``int``.
Key: TypeAlias = str | int | bytes

T = TypeVar("T")

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# Exact types whose values may be served from the shard cache. A cache hit only proves that the
# key *equals* a cached key, and ``True == 1``, ``1.0 == 1``: checking the exact type first keeps
# rejected types from sneaking in through the cache.
_CACHEABLE: frozenset[type] = frozenset((str, int, bytes))


def _key_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        if _INT64_MIN <= key <= _INT64_MAX:
            return key.to_bytes(8, "little", signed=True)
        return str(key).encode("utf-8")
    raise TypeError(f"a routing key must be str, int or bytes, got {type(key).__name__}")


def stable_hash(key: Key) -> int:
    """Return the stable 32-bit hash of a routing key.

    The hash is ``zlib.crc32`` of the key's bytes:

    - ``str``: its UTF-8 encoding;
    - ``bytes``: the bytes as they are;
    - ``int``: its signed 8-byte little-endian two's complement form if it fits in 64 bits,
      otherwise the UTF-8 of its decimal string.

    The type is not part of the hash: ``"4"`` and ``b"4"`` hash alike, as do ``4`` and
    ``(4).to_bytes(8, "little")``. Use one key type per key space.

    Args:
        key: the key.

    Returns:
        An integer in ``range(2**32)``, the same in every process and on every platform.

    Raises:
        TypeError: if the key is not a ``str``, ``int`` or ``bytes``, or is a ``bool``.
    """
    return zlib.crc32(_key_bytes(key))


class KeyRouter:
    """Maps keys to key groups and key groups to shards, stably across processes.

    Args:
        shards: number of shards, between 1 and ``key_groups``.
        key_groups: number of key groups, at least 1. Keep it fixed for the life of any state
            partitioned by it, and a good deal larger than the largest shard count you expect:
            shards get ``key_groups // shards`` or one more groups each, so 256 groups over 7
            shards is already uneven by one group in 36.
        cache_size: how many ``key -> shard`` answers :meth:`shard_of` remembers; 0 turns the
            cache off. When the cache is full it is cleared, which keeps memory bounded without
            the cost of tracking recency.

    Raises:
        ConfigError: if a limit is out of range.
    """

    __slots__ = ("_cache", "_cache_size", "_group_shard", "_key_groups", "_shards")

    def __init__(self, *, shards: int, key_groups: int = 256, cache_size: int = 65536) -> None:
        for name, value in (
            ("shards", shards),
            ("key_groups", key_groups),
            ("cache_size", cache_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an int, got {value!r}")
        if key_groups < 1:
            raise ConfigError(f"key_groups must be >= 1, got {key_groups}")
        if not 1 <= shards <= key_groups:
            raise ConfigError(
                f"shards must be between 1 and key_groups ({key_groups}), got {shards}"
            )
        if cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0, got {cache_size}")
        self._shards = shards
        self._key_groups = key_groups
        self._cache_size = cache_size
        self._group_shard = tuple(group * shards // key_groups for group in range(key_groups))
        self._cache: dict[Key, int] = {}

    def __repr__(self) -> str:
        return f"KeyRouter(shards={self._shards}, key_groups={self._key_groups})"

    @property
    def shards(self) -> int:
        """The number of shards."""
        return self._shards

    @property
    def key_groups(self) -> int:
        """The number of key groups."""
        return self._key_groups

    def key_group(self, key: Key) -> int:
        """Return the key group of a key, in ``range(key_groups)``.

        Raises:
            TypeError: if the key is not a ``str``, ``int`` or ``bytes``, or is a ``bool``.
        """
        return zlib.crc32(_key_bytes(key)) % self._key_groups

    def shard_of(self, key: Key) -> int:
        """Return the shard of a key, in ``range(shards)``.

        Answers are cached (see ``cache_size``), so routing a hot key costs one dict lookup.

        Raises:
            TypeError: if the key is not a ``str``, ``int`` or ``bytes``, or is a ``bool``.
        """
        cacheable = type(key) in _CACHEABLE
        if cacheable:
            shard = self._cache.get(key)
            if shard is not None:
                return shard
        shard = self._group_shard[zlib.crc32(_key_bytes(key)) % self._key_groups]
        if cacheable and self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = shard
        return shard

    def cached_lookup(self) -> Callable[[Key], int | None]:
        """A cache-only lookup for hot loops: ``lookup(key)`` is the key's shard if it is cached,
        else ``None`` (call :meth:`shard_of` then).

        The caller must check the key's exact type first (``str``, ``int`` or ``bytes``): the
        cache compares by equality, and ``True == 1``.
        """
        return self._cache.get

    def shard_of_group(self, group: int) -> int:
        """Return the shard that owns a key group.

        Raises:
            ValueError: if ``group`` is not in ``range(key_groups)``.
        """
        if not 0 <= group < self._key_groups:
            raise ValueError(f"group must be between 0 and {self._key_groups - 1}, got {group}")
        return self._group_shard[group]

    def groups_of_shard(self, shard: int) -> range:
        """Return the key groups a shard owns: one contiguous, non-empty range.

        Raises:
            ValueError: if ``shard`` is not in ``range(shards)``.
        """
        if not 0 <= shard < self._shards:
            raise ValueError(f"shard must be between 0 and {self._shards - 1}, got {shard}")
        # group * shards // key_groups == shard  <=>  ceil(shard * kg / shards) <= group < ...
        n, kg = self._shards, self._key_groups
        return range(-(-shard * kg // n), -(-(shard + 1) * kg // n))

    def split(self, items: Sequence[T], key: Callable[[T], Key]) -> list[list[T]]:
        """Group items by shard.

        Args:
            items: the items to route.
            key: returns the routing key of an item; called once per item.

        Returns:
            One list per shard (``result[shard]``), holding that shard's items in their order
            in ``items``. Every item appears exactly once; lists of idle shards are empty.

        Raises:
            TypeError: if ``key`` returns something that is not a ``str``, ``int`` or ``bytes``.
        """
        buckets: list[list[T]] = [[] for _ in range(self._shards)]
        appends = [bucket.append for bucket in buckets]
        cached = self._cache.get
        shard_of = self.shard_of
        cacheable = _CACHEABLE
        for item in items:
            k = key(item)
            shard = cached(k) if type(k) in cacheable else None
            if shard is None:
                shard = shard_of(k)
            appends[shard](item)
        return buckets

    def with_shards(self, shards: int) -> KeyRouter:
        """Return a router with the same key groups and cache size over ``shards`` shards.

        Raises:
            ConfigError: if ``shards`` is not between 1 and ``key_groups``.
        """
        return KeyRouter(shards=shards, key_groups=self._key_groups, cache_size=self._cache_size)

    def moved_groups(self, other: KeyRouter) -> list[int]:
        """Return, in ascending order, the key groups whose shard differs in ``other``.

        These are the groups whose state has to move when re-sharding from this router to
        ``other``; keys move with their group.

        Raises:
            ValueError: if the two routers have different numbers of key groups, which makes
                their key groups incomparable.
        """
        if other._key_groups != self._key_groups:
            raise ValueError(
                "cannot compare routers with different key_groups "
                f"({self._key_groups} and {other._key_groups})"
            )
        return [
            group
            for group, (mine, theirs) in enumerate(
                zip(self._group_shard, other._group_shard, strict=True)
            )
            if mine != theirs
        ]
