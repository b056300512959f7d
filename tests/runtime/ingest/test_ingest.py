"""The ingest path: order, routing, and the cache of checked keys."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from actors import DeadLetters, KeyRouter
from runtime import FeatureRuntime, FeatureSet, Last
from runtime._ingest.events import EventReader
from runtime._ingest.router import Ingest


async def test_ingest_many_keeps_a_keys_order_across_fast_and_slow_events() -> None:
    features = FeatureSet(name="o", key="k", time="ts", features=[Last(name="last_v", field="v")])
    async with FeatureRuntime(features, shards=2) as rt:
        await rt.ingest({"k": "a", "ts": 1, "v": 0})  # "a" is now in the route cache
        await rt.ingest_many(
            [
                {"k": "a", "ts": 1000.0, "v": "first-arrival"},  # a float time: the full reader
                {"k": "a", "ts": 1000, "v": "second-arrival"},  # the fast path
            ]
        )
        assert (await rt.get("a"))["last_v"] == "second-arrival"  # ties: the later arrival


# -- the key cache of the fast path --------------------------------------------------------------
def _ingest(shards: int, known_keys: int, max_key_length: int = 4) -> Ingest:
    reader = EventReader(key="k", time="ts", max_key_length=max_key_length)
    router = KeyRouter(shards=shards, key_groups=16)
    return Ingest(reader, router, [], 1_000, DeadLetters(), known_keys=known_keys)


keys = st.one_of(
    st.sampled_from(["a", "bb", "ccc", "dddd", "eeeee", "é", "\ud800", 7, 10**4, -(10**4)]),
    st.sampled_from([b"ab", b"abcde", 1.5, None, True]),
)


@settings(max_examples=200, deadline=None)
@given(
    stream=st.lists(keys, max_size=40),
    shards=st.sampled_from([1, 3]),
    known_keys=st.sampled_from([0, 1, 2, 1 << 20]),
    chunk=st.integers(min_value=1, max_value=8),
)
def test_every_path_accepts_the_keys_the_reader_accepts_and_routes_them_alike(
    stream: list[Any], shards: int, known_keys: int, chunk: int
) -> None:
    ingest = _ingest(shards, known_keys)
    events = [{"k": key, "ts": 1_000 + i} for i, key in enumerate(stream)]
    for start in range(0, len(events), chunk):  # the same key comes new, known, or forgotten
        ingest.route(events[start : start + chunk])
    expected = [event for event in events if ingest._reader.valid_key(event["k"])]
    got = sorted((item for buffer in ingest.buffers for item in buffer), key=lambda i: i[1])
    assert [item[2] for item in got] == expected
    router = KeyRouter(shards=shards, key_groups=16, cache_size=0)
    for shard, buffer in enumerate(ingest.buffers):
        assert all(router.shard_of(key) == shard for key, _, _ in buffer)
    assert ingest.rejected == len(events) - len(expected) == ingest._dead_letters.count()
    assert len(ingest._known) <= known_keys


def test_the_key_cache_is_cleared_when_full() -> None:
    ingest = _ingest(shards=2, known_keys=3)
    ingest.route([{"k": key, "ts": 0} for key in ("a", "b", "c")])
    assert set(ingest._known) == {"a", "b", "c"}
    ingest.route([{"k": "d", "ts": 0}])
    assert set(ingest._known) == {"d"}
