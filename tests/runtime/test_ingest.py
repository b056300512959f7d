"""The ingest path: order, routing."""

from __future__ import annotations

from runtime import FeatureRuntime, FeatureSet, Last


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
