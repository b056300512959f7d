"""Keys chosen to collide in Python's hash (issue 15, item 6).

Python hashes an int modulo ``2**61 - 1``: ints that differ by a multiple of it share a hash, and
every dict that holds keys (the router's cache, each shard actor's state) degrades to a list
for them. 32,000 such keys took 10.2 s to ingest, against 0.08 s for as many plain keys. Int
keys are held to 64 bits, where at most a dozen ints share a hash: the others are refused, to
dead letters with a reason naming the key field, and ``rt.get`` refuses them too.
"""

from __future__ import annotations

from collections import Counter

import pytest

from actors import DeadLetterReason
from runtime import Count, FeatureRuntime, FeatureSet

T0 = 1_700_000_000_000
MODULUS = 2**61 - 1
FEATURES = FeatureSet(
    name="keys", key="card", time="ts", max_future="0s", features=[Count(name="n")]
)


def colliding(n: int) -> list[int]:
    """``n`` ints with one hash."""
    return [7 + i * MODULUS for i in range(n)]


@pytest.mark.parametrize("shards", [1, 3])
async def test_int_keys_beyond_64_bits_are_refused_naming_the_key_field(shards: int) -> None:
    keys = colliding(32_000)
    async with FeatureRuntime(FEATURES, shards=shards, dead_letters_capacity=100) as rt:
        accepted = await rt.ingest_many([{"card": key, "ts": T0} for key in keys])
        within = [key for key in keys if key < 2**64]
        assert accepted == len(within) <= 9
        stats = await rt.statistics()
        assert stats.events_rejected == len(keys) - len(within)
        letter = rt.dead_letters.letters(DeadLetterReason.REJECTED)[0]
        assert str(letter.error).startswith("key field 'card' is an int beyond 64 bits")
        assert (await rt.get(within[-1]))["n"] == 1


def test_ints_within_64_bits_share_a_hash_at_most_a_dozen_at_a_time() -> None:
    # the ints of one hash value within -2**63..2**64-1: every MODULUS apart
    low, high = -(2**63), 2**64 - 1
    counts = Counter(hash(v) for r in (0, 1, MODULUS - 1) for v in range(low + r, high, MODULUS))
    assert max(counts.values()) <= 12


async def test_get_refuses_an_int_key_beyond_64_bits_with_a_clear_error() -> None:
    async with FeatureRuntime(FEATURES, shards=2) as rt:
        with pytest.raises(ValueError, match="key field 'card' is an int beyond 64 bits"):
            await rt.get(2**70)
        with pytest.raises(ValueError, match="beyond 64 bits"):
            await rt.get_many(colliding(32_000))
        assert (await rt.get(2**64 - 1))["n"] == 0
        assert (await rt.get(-(2**63)))["n"] == 0
