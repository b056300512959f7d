"""Reading many keys at once."""

from __future__ import annotations

import pytest

from runtime import Count, FeatureRuntime, FeatureSet, Sum, UnknownFeature

FEATURES = FeatureSet(
    name="t",
    key="card",
    time="ts",
    features=[Count(name="n"), Sum(name="total", field="amount")],
)
T0 = 1_700_000_000_000


async def test_get_many_gives_the_same_vectors_as_get_in_the_order_asked() -> None:
    async with FeatureRuntime(FEATURES, shards=3) as rt:
        await rt.ingest_many({"card": f"c{i % 7}", "ts": T0 + i, "amount": i} for i in range(100))
        keys = ["c3", "c0", "unknown", "c6", "c3"]
        many = await rt.get_many(keys)
        assert list(many) == ["c3", "c0", "unknown", "c6"]
        for key in many:
            single = await rt.get(key)
            assert many[key].values == single.values
            assert many[key].last_event_time == single.last_event_time
        assert many["unknown"].values == {"n": 0, "total": 0}
        assert not many["unknown"].known


async def test_get_many_selects_features_and_rejects_unknown_names() -> None:
    async with FeatureRuntime(FEATURES, shards=2) as rt:
        await rt.ingest({"card": "c1", "ts": T0, "amount": 5})
        many = await rt.get_many(["c1"], features=["total"])
        assert many["c1"].values == {"total": 5}
        with pytest.raises(UnknownFeature, match="no feature named 'nope'"):
            await rt.get_many(["c1"], features=["nope"])
