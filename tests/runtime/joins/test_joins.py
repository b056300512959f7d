"""Joins in the runtime: the records of a join actor per shard against the nested-loop oracle
of ``support.join_oracle``, for 1, 2, 7 and 16 shards; join records feeding features."""

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
from runtime._joins.engine import JoinConfig

from ..support.clock import FakeClock
from ..support.join_oracle import asof_oracle, oracle, pairs, streams


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
    lateness=st.sampled_from([0, 30]),
    batch_size=st.sampled_from([1, 5, 64]),
)
async def test_join_records_match_nested_loops_for_any_shard_count(
    events: list[Any], how: str, on: tuple[str, ...], ooo: int, lateness: int, batch_size: int
) -> None:
    join = Join(name="lr", left="l", right="r", before=10, after=30, how=how, on=on)  # type: ignore[arg-type]
    config = JoinConfig(
        name="lr",
        before=10,
        after=30,
        how=how,
        on=on,
        max_out_of_orderness=ooo,  # type: ignore[arg-type]
        allowed_lateness=lateness,
    )
    want, late = oracle(config, events)
    reference = None
    for shards in (1, 2, 7, 16):
        fs = _feature_set(join, max_out_of_orderness=ooo, allowed_lateness=lateness)
        async with FeatureRuntime(fs, shards=shards, batch_size=batch_size) as rt:
            sub = rt.join_records(buffer=100_000)
            for key, t, side, ev in events:
                await rt.ingest({"ad": key, "ts": t, **ev}, stream="l" if side == "left" else "r")
            await rt.flush()
            stats = await rt.statistics()
            vectors = await rt.get_many({e[0] for e in events})
            await sub.aclose()
            records = [r async for r in sub]
        got = pairs({**r.record, "key": r.key} for r in records)
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
    clock = FakeClock()
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=streams(),
    tolerance=st.sampled_from([None, 20]),
    lateness=st.sampled_from([0, 30]),
)
async def test_asof_join_records_match_the_oracle_for_any_shard_count(
    events: list[Any], tolerance: int | None, lateness: int
) -> None:
    join = Join(name="lr", left="l", right="r", how="asof", tolerance=tolerance)
    config = JoinConfig(
        name="lr", before=0, after=0, how="asof", tolerance=tolerance, allowed_lateness=lateness
    )
    want, late = asof_oracle(config, events)
    for shards in (1, 2, 7, 16):
        fs = _feature_set(join, allowed_lateness=lateness)
        async with FeatureRuntime(fs, shards=shards, batch_size=5) as rt:
            sub = rt.join_records(buffer=100_000)
            # one call for the merged source: each event's stream named beside it
            await rt.ingest_many(
                [{"ad": key, "ts": t, **ev} for key, t, _, ev in events],
                stream=["l" if side == "left" else "r" for _, _, side, _ in events],
            )
            await rt.flush()
            stats = (await rt.statistics()).joins["lr"]
            await sub.aclose()
            records = [r async for r in sub]
        got = pairs({**r.record, "key": r.key} for r in records)
        assert got == want, shards
        assert stats.late_dropped == late
        assert stats.events == len(events) - late


async def test_a_feature_set_of_joins_alone() -> None:
    fs = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["impressions", "clicks"],
        joins=[Join(name="j", left="impressions", right="clicks", after="10m")],
        features=[],
    )
    async with FeatureRuntime(fs, shards=3) as rt:
        sub = rt.join_records()
        await rt.ingest_many(
            [{"ad": "a", "ts": 0}, {"ad": "a", "ts": 1_000}, {"ad": "b", "ts": 5}],
            stream=["impressions", "clicks", "clicks"],
        )
        await rt.flush()
        stats = await rt.statistics()
        assert (stats.events_processed, stats.keys, stats.groups) == (3, 0, 0)
        assert (stats.joins["j"].records, stats.joins["j"].events) == (1, 3)
        assert (await rt.get("a")).values == {}
        await sub.aclose()
        assert [r.record["time_difference_ms"] async for r in sub] == [1_000]


async def test_ingest_many_checks_the_names_of_a_merged_source() -> None:
    fs = _feature_set(Join(name="j", left="l", right="r", after=10))
    async with FeatureRuntime(fs) as rt:
        with pytest.raises(ValueError, match=r"stream\[1\]: no stream named 'x'"):
            await rt.ingest_many([{"ad": "a", "ts": 0}, {"ad": "a", "ts": 1}], stream=["l", "x"])
        with pytest.raises(ValueError, match="2 names for 1 events"):
            await rt.ingest_many([{"ad": "a", "ts": 0}], stream=["l", "r"])
        with pytest.raises(ValueError, match="2 names for generator events"):
            await rt.ingest_many(({"ad": "a", "ts": t} for t in range(2)), stream=["l", "r"])
        # the names may come from any iterable
        names = (name for name in ["l", "r"])
        assert await rt.ingest_many([{"ad": "a", "ts": 0}, {"ad": "a", "ts": 1}], stream=names) == 2
        assert (await rt.statistics()).events_ingested == 2


def same_region(left: dict[str, Any], right: dict[str, Any]) -> bool:
    return bool(left.get("region") == right.get("region"))


def merge_totals(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    return {"total": left["amount"] + right["amount"]}


async def test_predicate_and_merge_functions_by_value_or_by_name() -> None:
    for predicate, merge in (
        (same_region, merge_totals),
        (f"{__name__}:same_region", f"{__name__}:merge_totals"),
    ):
        join = Join(name="j", left="l", right="r", after=100, predicate=predicate, merge=merge)
        fs = _feature_set(join)
        async with FeatureRuntime(fs, shards=2) as rt:
            sub = rt.join_records()
            await rt.ingest({"ad": "a", "ts": 0, "region": "eu", "amount": 2}, stream="l")
            await rt.ingest({"ad": "a", "ts": 5, "region": "us", "amount": 3}, stream="r")
            await rt.ingest({"ad": "a", "ts": 6, "region": "eu", "amount": 4}, stream="r")
            await rt.flush()
            await sub.aclose()
            assert [r.record["total"] async for r in sub] == [6]
        # a function is written out by name, and read back where the application allows it
        back = FeatureSet.from_json(fs.to_json(), modules=[__name__])
        assert back.joins[0].predicate_function is same_region
        assert back.joins[0].merge_strategy is merge_totals


class Matcher:
    def same(self, left: dict[str, Any], right: dict[str, Any]) -> bool:
        return True


def test_join_functions_are_checked() -> None:
    with pytest.raises(SpecError, match="predicate: cannot import module 'no_such_module'"):
        Join(name="j", left="a", right="b", after=1, predicate="no_such_module:f")
    with pytest.raises(SpecError, match="has no 'nothing'"):
        Join(name="j", left="a", right="b", after=1, merge=f"{__name__}:nothing")
    with pytest.raises(SpecError, match="unknown merge 'mixed'"):
        Join(name="j", left="a", right="b", after=1, merge="mixed")
    with pytest.raises(SpecError, match="expected a function"):
        Join(name="j", left="a", right="b", after=1, predicate=3)
    with pytest.raises(SpecError, match="tolerance: applies to as-of joins only"):
        Join(name="j", left="a", right="b", after=1, tolerance="1s")
    with pytest.raises(SpecError, match="takes no on, range or predicate"):
        Join(name="j", left="a", right="b", how="asof", on=["x"])
    with pytest.raises(SpecError, match="has no interval"):
        Join(name="j", left="a", right="b", how="asof", after="1m")
    with pytest.raises(SpecError, match="max_buffered: "):
        Join(name="j", left="a", right="b", after=1, max_buffered=0)
    fs = _feature_set(Join(name="j", left="l", right="r", after=1, predicate=lambda a, b: True))
    with pytest.raises(TypeError, match="cannot be found again by its name"):
        fs.to_json()
    # a bound method's name leads to its class's plain function: refused too
    bound = _feature_set(Join(name="j", left="l", right="r", after=1, predicate=Matcher().same))
    with pytest.raises(TypeError, match="cannot be found again by its name"):
        bound.to_json()
    with pytest.raises(SpecError, match="not a 'module:function' name: 'os:path:join'"):
        Join(name="j", left="a", right="b", after=1, merge="os:path:join")
    # a zero interval, however it is spelled, is no interval
    assert Join(name="j", left="a", right="b", how="asof", before="0s").before_ms == 0
    with pytest.raises(SpecError, match=r"Join\.before: an as-of join has no interval"):
        Join(name="j", left="a", right="b", how="asof", before="1s")


async def test_evictions_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    join = Join(name="j", left="l", right="r", after="1h", max_buffered=4)
    async with FeatureRuntime(_feature_set(join), shards=2) as rt:
        await rt.ingest_many([{"ad": f"a{i}", "ts": i} for i in range(20)], stream="l")
        await rt.flush()
        stats = (await rt.statistics()).joins["j"]
    assert stats.buffered_left <= 4 and stats.evicted == 20 - stats.buffered_left
    lines = [r for r in caplog.records if "join_buffer_evicted" in r.getMessage()]
    assert lines and all(r.levelname == "WARNING" for r in lines)


async def test_unmatched_rows_reach_windowed_features_of_the_join_in_time() -> None:
    from runtime import Tumbling

    minute = 60_000
    join = Join(name="j", left="l", right="r", after="10m", how="left", on=["i"])
    fs = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["l", "r"],
        joins=[join],
        features=[Count(name="rows_1h", stream="j", window=Tumbling(size="1h"))],
        max_out_of_orderness="1m",
        late_policy="side_output",
    )
    async with FeatureRuntime(fs) as rt:
        late = rt.late_events()
        # impressions every 3 minutes, a click on every other one a minute later: the
        # unmatched rows come out 10 minutes after their impression, behind the records of
        # newer clicks; the features see them at the end of their interval, not late
        events, streams = [], []
        for i in range(12):
            events.append({"ad": "a", "ts": 3 * i * minute, "i": i})
            streams.append("l")
            if i % 2:
                events.append({"ad": "a", "ts": (3 * i + 1) * minute, "i": i})
                streams.append("r")
        events.append({"ad": "a", "ts": 59 * minute})  # moves the clock past most intervals
        streams.append("l")
        await rt.ingest_many(events, stream=streams)
        await rt.flush()
        stats = (await rt.statistics()).joins["j"]
        await late.aclose()
        assert [e async for e in late] == []
        assert (stats.records, stats.unmatched) == (6, 6)  # the impression at 59 m waits
        assert (await rt.get("a"))["rows_1h"] == 12


async def test_state_ttl_drops_quiet_keys_of_a_join() -> None:
    clock = FakeClock()
    join = Join(name="j", left="l", right="r", after="10m", how="left")
    fs = _feature_set(join, state_ttl="1h")
    async with FeatureRuntime(fs, clock=clock, shards=2) as rt:
        sub = rt.join_records()
        await rt.ingest({"ad": "a", "ts": 0, "id": 1}, stream="l")
        await rt.ingest({"ad": "b", "ts": 0, "id": 2}, stream="l")
        await rt.ingest({"ad": "b", "ts": 5, "id": 3}, stream="r")
        await rt.flush()
        clock.now += 1_800
        await rt.ingest({"ad": "c", "ts": 0, "id": 4}, stream="r")
        await rt.flush()
        assert (await rt.statistics()).joins["j"].keys == 3
        clock.now += 1_801  # a and b quiet for an hour; c for half of one
        await rt.flush()
        stats = (await rt.statistics()).joins["j"]
        assert (stats.keys, stats.expired_keys, stats.buffered_right) == (1, 2, 1)
        assert (stats.records, stats.unmatched, stats.buffered_left) == (1, 1, 0)
        await sub.aclose()
        rows = [(r.key, r.record.get("left_id"), r.record.get("right_id")) async for r in sub]
        # a's unmatched impression comes out as its key goes; b's matched one does not
        assert sorted(rows, key=str) == [("a", 1, None), ("b", 2, 3)]


async def test_join_records_of_one_join() -> None:
    fs = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["l", "r"],
        joins=[
            Join(name="near", left="l", right="r", after=10),
            Join(name="far", left="l", right="r", after=1_000),
        ],
        features=[],
    )
    async with FeatureRuntime(fs, shards=2) as rt:
        near, every = rt.join_records("near"), rt.join_records()
        with pytest.raises(ValueError, match="no join named 'nope' \\(known: near, far\\)"):
            rt.join_records("nope")
        await rt.ingest_many([{"ad": "a", "ts": 0}, {"ad": "a", "ts": 500}], stream=["l", "r"])
        await rt.flush()
        stats = await rt.statistics()
    assert [r.join async for r in near] == []
    assert [r.join async for r in every] == ["far"]
    assert (stats.joins["near"].records, stats.joins["far"].records) == (0, 1)
