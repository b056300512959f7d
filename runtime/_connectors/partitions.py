"""Partitioned input: which partition a key's events go to, and which key groups a partition
holds, by the hash the runtime routes with.

Several featurist processes share one input without overlap when each key's events are
published to one partition (a JetStream subject ``<prefix>.<partition>``, a Redis stream
``<prefix>:<partition>``) and each process reads its own partitions. A partition is a contiguous
range of key groups, dealt out as shards are (``actors.KeyRouter``)::

    group = crc32(key bytes) % key_groups
    partition = group * partitions // key_groups

so a process that reads partitions ``S`` holds the state of exactly the key groups of ``S``
(:func:`partition_key_groups`), and moving a partition to another process moves whole key
groups. ``key_groups`` must be the runtime's (256 by default).
"""

from __future__ import annotations

from actors import Key, KeyRouter, stable_hash

from .._exceptions import ConfigError

__all__ = ["partition_key_groups", "partition_of"]


def partition_of(key: Key, partitions: int, *, key_groups: int = 256) -> int:
    """The partition, in ``range(partitions)``, that a key's events are published to.

    Raises:
        ConfigError: ``partitions`` is not between 1 and ``key_groups``.
        TypeError: the key is not a ``str``, ``int`` or ``bytes``.
    """
    for name, value in (("partitions", partitions), ("key_groups", key_groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    if partitions > key_groups:
        raise ConfigError(f"partitions must be at most key_groups ({key_groups}), got {partitions}")
    return stable_hash(key) % key_groups * partitions // key_groups


def partition_key_groups(partition: int, partitions: int, *, key_groups: int = 256) -> range:
    """The key groups a partition holds: one contiguous range.

    Raises:
        ConfigError: ``partitions`` is not between 1 and ``key_groups``.
        ValueError: ``partition`` is not in ``range(partitions)``.
    """
    router = KeyRouter(shards=partitions, key_groups=key_groups, cache_size=0)
    return router.groups_of_shard(partition)
