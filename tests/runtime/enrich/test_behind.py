"""Events behind a waiting event of their key: they wait in the stash with what the cache said
when they came (or what landed while they waited), and go on in order once the events before
them do, counted once, with the same enriched event and metadata as any other."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import anyio
import pytest

from runtime import CustomSource, FeatureRuntime, FeatureSet, Lookup, Mean

pytestmark = pytest.mark.anyio


class GatedSource:
    """Rows for any key; a call waits until ``gate`` is set (the first call does not)."""

    def __init__(self, missing: Sequence[str] = ()) -> None:
        self.gate = anyio.Event()
        self.missing = set(missing)
        self.calls: list[list[Hashable]] = []

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls.append(list(keys))
        if len(self.calls) > 1:
            await self.gate.wait()
        return {k: {"risk": float(str(k)[1:]) / 10} for k in keys if k not in self.missing}


FEATURES = FeatureSet(
    name="tx",
    key="card",
    time="ts",
    sources=[CustomSource(name="m", cache_size=100, ttl="1h")],
    lookups=[Lookup(name="merchant", field="mid", source="m", default={"risk": 0.0})],
    features=[Mean(name="risk", field="merchant.risk")],
)


async def _warm(rt: FeatureRuntime, merchants: Sequence[str]) -> None:
    """Cache the rows of ``merchants`` (one call, not gated)."""
    await rt.ingest_many([{"card": "warm", "ts": 1, "mid": m} for m in merchants])
    await rt.flush()


async def test_a_cached_event_behind_a_waiting_one_goes_on_after_it_in_order() -> None:
    source = GatedSource(missing=["m5"])
    async with FeatureRuntime(FEATURES, sources={"m": source}) as rt:
        await _warm(rt, ["m2", "m5"])  # m5: known to be missing
        updates = rt.updates()
        await rt.ingest_many(
            [
                {"card": "c1", "ts": 10, "mid": "m1"},  # a miss: waits for the gated call
                {"card": "c1", "ts": 11, "mid": "m2"},  # cached, but behind it
                {"card": "c1", "ts": 12, "mid": "m5"},  # known missing, behind it too
                {"card": "c2", "ts": 13, "mid": "m2"},  # another key: goes at once
            ]
        )
        with anyio.fail_after(5):
            first = await updates.__anext__()
        assert (first.key, first.event_time) == ("c2", 13)
        source.gate.set()
        await rt.flush()
        await updates.aclose()
        rest = [(u.key, u.event_time, u.values["risk"]) async for u in updates]
        assert rest == [
            ("c1", 10, pytest.approx(0.1)),
            ("c1", 11, pytest.approx(0.15)),
            ("c1", 12, pytest.approx(0.1)),  # the default's 0.0
        ]
        stats = (await rt.statistics()).enrichment["m"]
        assert stats.calls == 2


async def test_events_behind_whose_row_lands_while_they_wait_are_counted_once() -> None:
    source = GatedSource()
    async with FeatureRuntime(FEATURES, sources={"m": source}) as rt:
        await _warm(rt, ["m9"])
        before = (await rt.statistics()).enrichment["m"]
        await rt.ingest_many(
            [
                {"card": "c1", "ts": 10, "mid": "m1"},
                {"card": "c1", "ts": 11, "mid": "m3"},  # a miss too, behind the first
                {"card": "c1", "ts": 12, "mid": "m9"},  # a hit, behind both
            ]
        )
        source.gate.set()
        await rt.flush()
        vector = await rt.get("c1")
        assert vector["risk"] == pytest.approx((0.1 + 0.3 + 0.9) / 3)
        after = (await rt.statistics()).enrichment["m"]
        assert after.cache_hits - before.cache_hits == 1
        assert after.cache_misses - before.cache_misses == 2


async def test_a_subscriber_that_comes_while_events_wait_gets_them_whole() -> None:
    source = GatedSource()
    async with FeatureRuntime(FEATURES, sources={"m": source}) as rt:
        await _warm(rt, ["m2"])
        await rt.ingest_many(
            [{"card": "c1", "ts": 10, "mid": "m1"}, {"card": "c1", "ts": 11, "mid": "m2"}]
        )
        await anyio.sleep(0.05)  # both in the stash: the first waits, the second behind it
        enriched = rt.enriched_events()
        source.gate.set()
        await rt.flush()
        await enriched.aclose()
        events = [e async for e in enriched]
        assert [e.event_time for e in events] == [10, 11]
        for event, hits, misses in zip(events, (0, 1), (1, 0), strict=True):
            assert event.event["merchant.risk"] == event.event["enrichment"]["merchant"]["risk"]
            metadata = event.event["enrichment_metadata"]
            assert (metadata["cache_hits"], metadata["cache_misses"]) == (hits, misses)
            assert metadata["defaulted"] == [] and metadata["stale"] == []
