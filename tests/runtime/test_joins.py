"""Joins in the runtime: the records of a join actor per shard against the nested-loop oracle
of ``test_join_engine``, for 1, 2, 7 and 16 shards; join records feeding features."""

from __future__ import annotations

from collections import Counter
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Join,
    JoinRange,
    Mean,
    SpecError,
)
from runtime._join_engine import JoinConfig

from .test_join_engine import oracle, streams


def _feature_set(join: Join, **options: Any) -> FeatureSet:
    return FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["l", "r"],
        joins=[join],
        features=[
            Count(name="lefts"),
            Count(name="pairs", stream=join.name),
        ],
        **options,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=streams(),
    how=st.sampled_from(["inner", "left", "right", "full"]),
    on=st.sampled_from([(), ("c",)]),
    ooo=st.sampled_from([0, 50]),
)
async def test_join_records_match_nested_loops_for_any_shard_count(
    events: list[Any], how: str, on: tuple[str, ...], ooo: int
) -> None:
    join = Join(name="lr", left="l", right="r", before=10, after=30, how=how, on=on)  # type: ignore[arg-type]
    config = JoinConfig(
        name="lr",
        before=10,
        after=30,
        how=how,
        on=on,
        max_out_of_orderness=ooo,  # type: ignore[arg-type]
    )
    want, late = oracle(config, events)
    reference = None
    for shards in (1, 2, 7, 16):
        fs = _feature_set(join, max_out_of_orderness=ooo)
        async with FeatureRuntime(fs, shards=shards, batch_size=5) as rt:
            sub = rt.join_records(buffer=100_000)
            for key, t, side, ev in events:
                await rt.ingest({"ad": key, "ts": t, **ev}, stream="l" if side == "left" else "r")
            await rt.flush()
            stats = await rt.statistics()
            vectors = await rt.get_many({e[0] for e in events})
            await sub.aclose()
            records = [r async for r in sub]
        got = Counter(
            (
                r.key,
                r.record["left_event_timestamp"],
                r.record["right_event_timestamp"],
                r.record.get("left_id"),
                r.record.get("right_id"),
            )
            for r in records
        )
        assert got == want, shards
        assert stats.joins["lr"].late_dropped == late
        assert stats.joins["lr"].records + stats.joins["lr"].unmatched == sum(want.values())
        # every record, matched or not, is an event of the join's stream for the features
        per_key = Counter(r.key for r in records)
        for key, vector in vectors.items():
            assert vector["pairs"] == per_key.get(key, 0)
        if reference is None:
            reference = [(r.key, r.record) for r in records]
        else:
            assert sorted(map(repr, reference)) == sorted(repr((r.key, r.record)) for r in records)


async def test_a_join_feeds_features_of_its_records() -> None:
    join = Join(name="imp_click", left="impressions", right="clicks", after="10m")
    fs = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["impressions", "clicks"],
        joins=[join],
        features=[
            Count(name="impressions"),
            Count(name="clicks_10m", stream="imp_click"),
            Mean(name="time_to_click_ms", field="time_difference_ms", stream="imp_click"),
        ],
    )
    minute = 60_000
    async with FeatureRuntime(fs, shards=2) as rt:
        # in event-time order: a click that came after a later impression would be late
        await rt.ingest_many([{"ad": "a", "ts": 0}, {"ad": "b", "ts": 0}])
        await rt.ingest({"ad": "a", "ts": 2 * minute}, stream="clicks")
        await rt.ingest({"ad": "a", "ts": 20 * minute})
        await rt.ingest({"ad": "a", "ts": 25 * minute}, stream="clicks")
        await rt.ingest({"ad": "b", "ts": 15 * minute}, stream="clicks")  # too late for b's
        a, b = (await rt.get("a")), (await rt.get("b"))
        assert (a["impressions"], a["clicks_10m"], a["time_to_click_ms"]) == (2, 2, 3.5 * minute)
        assert (b["impressions"], b["clicks_10m"]) == (1, 0)
        stats = await rt.statistics()
        assert stats.joins["imp_click"].records == 2
        assert stats.joins["imp_click"].buffered_left >= 1


async def test_range_condition_and_merge_strategy() -> None:
    join = Join(
        name="j",
        left="l",
        right="r",
        after=100,
        range=JoinRange(left="price", right="bid", max=5),
        merge="left_priority",
    )
    fs = _feature_set(join)
    async with FeatureRuntime(fs) as rt:
        sub = rt.join_records()
        await rt.ingest({"ad": "a", "ts": 0, "price": 10, "x": "left"}, stream="l")
        await rt.ingest({"ad": "a", "ts": 5, "bid": 12, "x": "right"}, stream="r")
        await rt.ingest({"ad": "a", "ts": 6, "bid": 30, "x": "far"}, stream="r")
        await rt.flush()
        await sub.aclose()
        records = [r.record async for r in sub]
    assert len(records) == 1
    assert records[0]["x"] == "left" and records[0]["bid"] == 12
    assert records[0]["time_difference_ms"] == 5


def test_join_rules_are_checked() -> None:
    base: dict[str, Any] = {"name": "s", "key": "k", "time": "t", "streams": ["a", "b"]}
    with pytest.raises(SpecError, match="no stream named 'c'"):
        FeatureSet(
            **base, joins=[Join(name="j", left="a", right="c", after=1)], features=[Count(name="n")]
        )
    with pytest.raises(SpecError, match="already names a stream"):
        FeatureSet(
            **base, joins=[Join(name="a", left="a", right="b", after=1)], features=[Count(name="n")]
        )
    with pytest.raises(SpecError, match="must differ from left"):
        Join(name="j", left="a", right="a", after=1)
    with pytest.raises(SpecError, match=r"joins\[0\].how: unknown how .outer."):
        FeatureSet.from_dict(
            {
                **base,
                "joins": [{"name": "j", "left": "a", "right": "b", "after": 1, "how": "outer"}],
                "features": [{"type": "count", "name": "n"}],
            }
        )
    spec = FeatureSet(
        **base,
        joins=[Join(name="j", left="a", right="b", after="1m")],
        features=[Count(name="n", stream="j")],
    )
    assert FeatureSet.from_json(spec.to_json()) == spec


async def test_idle_time_emits_unmatched_rows_without_new_events() -> None:
    class Clock:
        now = 1_000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    join = Join(name="j", left="l", right="r", after="10m", how="left")
    fs = _feature_set(join, idle_timeout="1m")
    async with FeatureRuntime(fs, clock=clock) as rt:
        sub = rt.join_records()
        await rt.ingest({"ad": "a", "ts": 0, "id": 1}, stream="l")
        await rt.flush()
        clock.now += 60 + 5 * 60  # quiet 6 min: the key's clock is at 5 min, the row waits
        await rt.flush()
        assert (await rt.statistics()).joins["j"].unmatched == 0
        clock.now += 6 * 60  # 11 min: past the end of the interval
        await rt.flush()
        await sub.aclose()
        records = [r.record async for r in sub]
        assert [(r["left_id"], r["right_event_timestamp"]) for r in records] == [(1, None)]
        stats = (await rt.statistics()).joins["j"]
        assert (stats.unmatched, stats.keys, stats.buffered_left) == (1, 0, 0)
        assert (await rt.get("a"))["pairs"] == 1  # the unmatched row is a record of the stream


async def test_the_timer_applies_idle_time_without_flush() -> None:
    import anyio

    join = Join(name="j", left="l", right="r", after=100, how="left")
    fs = _feature_set(join, idle_timeout="100ms")
    async with FeatureRuntime(fs, linger=0.001) as rt:
        sub = rt.join_records()
        await rt.ingest({"ad": "a", "ts": 0, "id": 1}, stream="l")
        with anyio.fail_after(10):  # the real timer fires every 25 ms; the row comes soon
            record = await sub.__anext__()
        assert (record.record["left_id"], record.record["right_event_timestamp"]) == (1, None)
        assert rt.dead_letters.count() == 0


async def test_late_events_of_a_join_go_to_the_side_output() -> None:
    join = Join(name="j", left="l", right="r", after=100)
    fs = _feature_set(join, late_policy="side_output")
    async with FeatureRuntime(fs) as rt:
        late = rt.late_events()
        await rt.ingest({"ad": "a", "ts": 1_000}, stream="l")
        await rt.ingest({"ad": "a", "ts": 10}, stream="r")  # behind the key's watermark
        await rt.flush()
        await late.aclose()
        events = [e async for e in late]
        assert [(e.group, e.event_time) for e in events] == [("j", 10)]
        assert (await rt.statistics()).joins["j"].late_side_output == 1
