"""Several streams in one runtime: each feature sees its own stream's events."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Ratio,
    Sliding,
    SpecError,
    Sum,
)

ADS = FeatureSet(
    name="ads",
    key="ad",
    time="ts",
    streams=["impressions", "clicks"],
    features=[
        Count(name="impressions"),
        Count(name="clicks", stream="clicks"),
        Count(name="clicks_1m", stream="clicks", window=Sliding(size="1m")),
        Sum(name="spend", field="cost", stream="impressions"),
        Ratio(name="cpc_cost", numerator="spend", denominator="impressions"),
    ],
)


@pytest.mark.parametrize("shards", [1, 3])
async def test_each_feature_sees_its_own_stream(shards: int) -> None:
    async with FeatureRuntime(ADS, shards=shards, batch_size=4) as rt:
        impressions = [{"ad": f"a{i % 3}", "ts": i * 1_000, "cost": 2} for i in range(30)]
        clicks = [{"ad": f"a{i % 3}", "ts": i * 7_000} for i in range(5)]
        assert await rt.ingest_many(impressions) == 30  # the first stream by default
        assert await rt.ingest_many(clicks, stream="clicks") == 5
        assert await rt.ingest({"ad": "a0", "ts": 40_000}, stream="clicks")
        vectors = await rt.get_many(["a0", "a1", "a2"])
        assert [vectors[k]["impressions"] for k in ("a0", "a1", "a2")] == [10, 10, 10]
        assert [vectors[k]["clicks"] for k in ("a0", "a1", "a2")] == [3, 2, 1]
        assert vectors["a0"]["spend"] == 20 and vectors["a0"]["cpc_cost"] == 2.0
        # clicks of a0 at 0, 21 s and 40 s: the last minute holds all three
        assert vectors["a0"]["clicks_1m"] == 3
        stats = await rt.statistics()
        assert (stats.events_ingested, stats.events_processed) == (36, 36)


async def test_an_unknown_stream_is_a_clear_error() -> None:
    async with FeatureRuntime(ADS) as rt:
        with pytest.raises(ValueError, match="no stream named 'views'"):
            await rt.ingest({"ad": "a", "ts": 0}, stream="views")


async def test_features_registered_on_a_stream_see_it() -> None:
    async with FeatureRuntime(ADS) as rt:
        await rt.register(Sum(name="click_value", field="value", stream="clicks"))
        await rt.ingest({"ad": "a", "ts": 0, "value": 5}, stream="clicks")
        await rt.ingest({"ad": "a", "ts": 0, "value": 7})  # an impression: not counted
        assert (await rt.get("a"))["click_value"] == 5


def test_stream_rules_are_checked() -> None:
    base: dict[str, Any] = {"name": "s", "key": "k", "time": "t"}
    with pytest.raises(SpecError, match="no stream named 'views'"):
        FeatureSet(**base, features=[Count(name="c", stream="views")])
    with pytest.raises(SpecError, match="duplicate stream 'a'"):
        FeatureSet(**base, streams=["a", "a"], features=[Count(name="c")])
    with pytest.raises(SpecError, match="operands must be on one stream"):
        FeatureSet(
            **base,
            streams=["a", "b"],
            features=[
                Count(name="x"),
                Count(name="y", stream="b"),
                Ratio(name="r", numerator="x", denominator="y"),
            ],
        )
    with pytest.raises(SpecError, match="a ratio takes no stream"):
        Ratio(name="r", numerator="x", denominator="y", stream="a")
    spec = FeatureSet(**base, features=[Count(name="c")])
    assert spec.stream_names == ("events",)
    assert FeatureSet.from_json(ADS.to_json()) == ADS
