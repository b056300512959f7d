"""Tests of the key router: stable hashing, key groups, shards, re-sharding and splitting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors._exceptions import ConfigError
from actors._router import Key, KeyRouter, stable_hash

ROOT = Path(__file__).resolve().parents[2]

keys = st.one_of(st.text(), st.integers(), st.binary())

# Pinned once from the implementation: a change of hash or of the key encoding breaks these,
# and with them every routing decision already persisted.
PINNED: list[tuple[Key, int, int, int, int]] = [
    # key, stable_hash, key_group (256), shard_of (4 shards), shard_of (7 shards)
    ("card-42", 2426728902, 198, 3, 5),
    (42, 227844599, 247, 3, 6),
    (b"\x00\x01", 920527465, 105, 1, 2),
    ("", 0, 0, 0, 0),
    ("é", 235179326, 62, 0, 1),
    (-1, 558161692, 28, 0, 0),
    (2**70, 2771154679, 247, 3, 6),
]


@pytest.mark.parametrize(("key", "hash_", "group", "shard4", "shard7"), PINNED)
def test_fixed_keys_route_to_pinned_hash_group_and_shards(
    key: Key, hash_: int, group: int, shard4: int, shard7: int
) -> None:
    assert stable_hash(key) == hash_
    assert KeyRouter(shards=4).key_group(key) == group
    assert KeyRouter(shards=4).shard_of(key) == shard4
    assert KeyRouter(shards=7).shard_of(key) == shard7


@pytest.mark.parametrize("seed", ["0", "1", "12345"])
def test_stable_hash_is_the_same_under_another_pythonhashseed(seed: str) -> None:
    sample: list[Key] = ["card-42", "user-7", "é", "", 42, -1, 2**70, b"\x00\x01"]
    script = (
        "import ast, json, sys\n"
        "from actors._router import stable_hash\n"
        "print(json.dumps([stable_hash(k) for k in ast.literal_eval(sys.argv[1])]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, repr(sample)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert json.loads(out) == [stable_hash(k) for k in sample]


def test_int_keys_in_64_bits_hash_their_signed_8_byte_little_endian_form() -> None:
    for key in (0, 1, -1, 2**63 - 1, -(2**63)):
        assert stable_hash(key) == zlib.crc32(key.to_bytes(8, "little", signed=True))


def test_int_keys_outside_64_bits_hash_their_decimal_string() -> None:
    for key in (2**63, -(2**63) - 1, 10**40):
        assert stable_hash(key) == zlib.crc32(str(key).encode())


def test_100k_user_keys_fill_every_key_group_within_15_percent_of_the_mean() -> None:
    """Tolerance: every one of the 256 groups holds the mean (390.6 keys) +/- 15%."""
    router = KeyRouter(shards=1)
    counts = Counter(router.key_group(f"user-{i}") for i in range(100_000))
    mean = 100_000 / 256
    assert len(counts) == 256
    assert all(0.85 * mean <= n <= 1.15 * mean for n in counts.values())


@given(key=keys, shards=st.integers(1, 256))
def test_shard_of_is_the_shard_of_the_key_group(key: Key, shards: int) -> None:
    router = KeyRouter(shards=shards)
    group = router.key_group(key)
    assert 0 <= group < 256
    assert router.shard_of(key) == router.shard_of_group(group)
    assert group in router.groups_of_shard(router.shard_of(key))


@given(key_list=st.lists(keys, max_size=50), shards=st.integers(1, 16))
def test_cached_answers_equal_uncached_answers(key_list: list[Key], shards: int) -> None:
    cached = KeyRouter(shards=shards, cache_size=3)
    uncached = KeyRouter(shards=shards, cache_size=0)
    for key in key_list + key_list:
        assert cached.shard_of(key) == uncached.shard_of(key)


def test_shard_cache_is_cleared_when_full_so_it_never_exceeds_cache_size() -> None:
    router = KeyRouter(shards=4, cache_size=10)
    for i in range(1000):
        router.shard_of(f"k{i}")
        assert len(router._cache) <= 10


@pytest.mark.parametrize(("shards", "key_groups"), [(1, 256), (3, 256), (7, 256), (5, 5), (4, 10)])
def test_groups_of_shard_are_contiguous_ranges_covering_every_group_once(
    shards: int, key_groups: int
) -> None:
    router = KeyRouter(shards=shards, key_groups=key_groups)
    covered: list[int] = []
    for shard in range(shards):
        groups = router.groups_of_shard(shard)
        assert len(groups) >= 1
        assert all(router.shard_of_group(g) == shard for g in groups)
        covered.extend(groups)
    assert covered == list(range(key_groups))


def test_resharding_4_to_8_moves_whole_groups_and_keys_follow_their_group() -> None:
    four = KeyRouter(shards=4)
    eight = four.with_shards(8)
    moved = set(four.moved_groups(eight))
    assert moved == {g for g in range(256) if four.shard_of_group(g) != eight.shard_of_group(g)}
    # Each new shard takes its groups from exactly one old shard: state splits, never mixes.
    for shard in range(8):
        assert len({four.shard_of_group(g) for g in eight.groups_of_shard(shard)}) == 1
    for i in range(2000):
        key = f"user-{i}"
        group = four.key_group(key)
        assert eight.key_group(key) == group
        assert eight.shard_of(key) == eight.shard_of_group(group)
        assert (four.shard_of(key) != eight.shard_of(key)) == (group in moved)


def test_moved_groups_is_empty_when_the_shard_count_is_unchanged() -> None:
    assert KeyRouter(shards=5).moved_groups(KeyRouter(shards=5)) == []


def test_moved_groups_rejects_a_router_with_other_key_groups() -> None:
    with pytest.raises(ValueError, match=r"different key_groups \(256 and 128\)"):
        KeyRouter(shards=2).moved_groups(KeyRouter(shards=2, key_groups=128))


def test_with_shards_keeps_the_key_groups() -> None:
    router = KeyRouter(shards=2, key_groups=64).with_shards(3)
    assert (router.shards, router.key_groups) == (3, 64)


@given(
    items=st.lists(st.tuples(keys, st.integers()), max_size=200),
    shards=st.integers(1, 12),
)
def test_split_preserves_order_per_shard_and_covers_every_item_once(
    items: list[tuple[Key, int]], shards: int
) -> None:
    router = KeyRouter(shards=shards, cache_size=8)
    tagged = [(key, i) for i, (key, _) in enumerate(items)]
    buckets = router.split(tagged, lambda item: item[0])
    assert len(buckets) == shards
    assert sorted(i for bucket in buckets for _, i in bucket) == list(range(len(tagged)))
    for shard, bucket in enumerate(buckets):
        assert bucket == [item for item in tagged if router.shard_of(item[0]) == shard]


def test_split_rejects_an_item_with_an_unsupported_key_type() -> None:
    with pytest.raises(TypeError, match="got float"):
        KeyRouter(shards=2).split(["a", 1.5], lambda item: item)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shards": 0}, "shards must be between 1 and key_groups (256), got 0"),
        ({"shards": 257}, "shards must be between 1 and key_groups (256), got 257"),
        ({"shards": 9, "key_groups": 8}, "shards must be between 1 and key_groups (8), got 9"),
        ({"shards": 1, "key_groups": 0}, "key_groups must be >= 1, got 0"),
        ({"shards": 1, "cache_size": -1}, "cache_size must be >= 0, got -1"),
    ],
)
def test_constructor_rejects_out_of_range_limits_naming_the_parameter(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRouter(**kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_bool_key_is_rejected_even_when_its_int_twin_is_cached() -> None:
    router = KeyRouter(shards=4)
    router.shard_of(1)
    for call in (router.shard_of, router.key_group, stable_hash):
        with pytest.raises(TypeError, match="got bool"):
            call(True)


def test_float_key_is_rejected_even_when_its_int_twin_is_cached() -> None:
    router = KeyRouter(shards=4)
    router.shard_of(1)
    with pytest.raises(TypeError, match="must be str, int or bytes, got float"):
        router.shard_of(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [None, bytearray(b"a"), ("a",), 1j])
def test_unsupported_key_types_raise_type_error_naming_the_type(key: object) -> None:
    with pytest.raises(TypeError, match=f"got {type(key).__name__}"):
        KeyRouter(shards=4).shard_of(key)  # type: ignore[arg-type]


def test_shard_of_group_and_groups_of_shard_reject_out_of_range_numbers() -> None:
    router = KeyRouter(shards=4, key_groups=16)
    with pytest.raises(ValueError, match="group must be between 0 and 15, got 16"):
        router.shard_of_group(16)
    with pytest.raises(ValueError, match="shard must be between 0 and 3, got -1"):
        router.groups_of_shard(-1)
