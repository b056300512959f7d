"""``FeatureRuntime``: reading vectors, per-feature errors, registering while running, the
lifecycle (closed runtime, draining exit, no task left, backpressure) and constructor checks."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import anyio
import pytest

from actors import ActorStopped, ConfigError, DeadLetterReason
from runtime import (
    CostEstimate,
    Count,
    DistinctCount,
    FeatureDescription,
    FeatureError,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    FeatureVector,
    Last,
    Max,
    Mean,
    MeasuredCost,
    Ratio,
    RuntimeClosed,
    SpecError,
    Sum,
    TimeSince,
    UnknownFeature,
    UpdateSubscription,
    Where,
)

FEATURES = [
    Count(name="n"),
    Sum(name="total", field="amount"),
    Mean(name="avg", field="amount"),
    Max(name="hi", field="amount"),
    Last(name="merchant", field="merchant"),
    DistinctCount(name="merchants", field="merchant"),
    TimeSince(name="gap"),
]
NAMES = tuple(f.name for f in FEATURES)
NUMERIC = {"total", "avg", "hi"}
FEATURE_SET = FeatureSet(
    name="tx", key="card", time="ts", max_out_of_orderness="5s", features=FEATURES
)
T0 = 1_700_000_000_000
EMPTY = {
    "n": 0,
    "total": 0,
    "avg": None,
    "hi": None,
    "merchant": None,
    "merchants": 0,
    "gap": None,
}


def tx(key: Any, ts: int, amount: Any = 1, merchant: str | None = "m1") -> dict[str, Any]:
    return {"card": key, "ts": ts, "amount": amount, "merchant": merchant}


async def count_updates(subscription: UpdateSubscription, counts: dict[Any, int]) -> None:
    async for update in subscription:
        counts[update.key] = counts.get(update.key, 0) + 1


# -- get -----------------------------------------------------------------------------------------
async def test_get_returns_the_keys_values_and_freshness() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
            before = time.time()
            await rt.ingest(tx("c1", T0 + 30_000, 10, "m1"))
            await rt.ingest(tx("c1", T0 + 10_000, 20, "m2"))  # late: last_event_time stays
            await rt.ingest(tx("c2", T0 + 60_000, 5, "m3"))
            start_ms = time.time() * 1000
            vector = await rt.get("c1")
            end_ms = time.time() * 1000
            after = time.time()
    assert isinstance(vector, FeatureVector)
    assert vector.key == "c1"
    assert vector.known
    assert vector.values == {
        "n": 2,
        "total": 30,
        "avg": 15.0,
        "hi": 20,
        "merchant": "m1",  # the latest by event time, not by arrival
        "merchants": 2,
        "gap": 20_000,  # the two newest event times, whatever the arrival order
    }
    assert vector["total"] == 30
    assert vector.last_event_time == T0 + 30_000
    # one shard: its greatest event time is c2's, minus max_out_of_orderness (5 s)
    assert vector.watermark == T0 + 60_000 - 5_000
    assert vector.updated_at is not None
    assert before <= vector.updated_at <= after
    assert vector.lag_ms is not None
    assert start_ms - (T0 + 30_000) <= vector.lag_ms <= end_ms - (T0 + 30_000)


async def test_get_reads_its_own_writes_still_in_a_partial_batch() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=4, batch_size=10_000, linger=3600) as rt:
            for i in range(5):
                await rt.ingest(tx("c1", T0 + i, amount=i))
            vector = await rt.get("c1")
            await rt.ingest_many([tx("c1", T0 + 10, amount=100)])
            again = await rt.get("c1")
    assert vector["n"] == 5
    assert vector["total"] == 10
    assert again["n"] == 6
    assert again["total"] == 110


async def test_an_event_for_idle_actors_leaves_at_once_not_after_linger() -> None:
    # Latency first: with nothing else to do, the shard's actors get the event now, though the
    # batch is far from full and linger is an hour; busy actors let the next batch grow.
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1, batch_size=10_000, linger=3600) as rt:
            updates = rt.updates()
            await rt.ingest(tx("c1", T0, amount=5))
            with anyio.fail_after(2):
                first = await updates.__anext__()
            assert first.key == "c1"
            await anyio.sleep(0.05)  # the actor ends its turn and waits for work again
            await rt.ingest_many([tx("c1", T0 + i, amount=1) for i in range(1, 4)])
            with anyio.fail_after(2):
                assert [(await updates.__anext__()).key for _ in range(3)] == ["c1"] * 3
            await updates.aclose()


async def test_get_of_an_unknown_key_gives_empty_values_and_known_false() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.ingest(tx("c1", T0))
            vector = await rt.get("never-seen")
            numeric_key = await rt.get(12345)
    for v in (vector, numeric_key):
        assert v.values == EMPTY
        assert not v.known
        assert v.last_event_time is None
        assert v.updated_at is None
        assert v.lag_ms is None


async def test_get_with_features_selects_them_in_the_order_asked() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.ingest(tx("c1", T0, 7, "m9"))
            vector = await rt.get("c1", features=["merchant", "n"])
    assert list(vector.values) == ["merchant", "n"]
    assert vector.values == {"merchant": "m9", "n": 1}
    assert vector.last_event_time == T0


async def test_get_of_an_unknown_feature_raises_unknown_feature_listing_known_names() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            with pytest.raises(UnknownFeature) as info:
                await rt.get("c1", features=["n", "nope"])
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "'nope'" in message
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize("key", [1.5, None, True, ("c1",)], ids=repr)
async def test_get_of_a_key_of_the_wrong_type_raises_type_error(key: Any) -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            with pytest.raises(TypeError):
                await rt.get(key)


async def test_updated_at_is_no_earlier_than_the_keys_last_change() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
            await rt.ingest(tx("c1", T0))
            first = await rt.get("c1")
            changed = time.time()
            await rt.ingest(tx("c1", T0 + 1))
            second = await rt.get("c1")
    assert first.updated_at is not None and second.updated_at is not None
    assert second.updated_at >= changed


# -- per-feature errors --------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["12.5", math.nan, False], ids=repr)
async def test_a_bad_value_fails_only_the_numeric_features_and_keeps_their_state(
    bad: Any,
) -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.ingest(tx("c1", T0, 10, "m1"))
            await rt.ingest(tx("c1", T0 + 1, bad, "m2"))
            middle = await rt.get("c1")
            await rt.ingest(tx("c1", T0 + 2, 20, "m3"))
            vector = await rt.get("c1")
            stats = await rt.statistics()
            errors = await rt.recent_errors()
    assert middle.values == {
        "n": 2,
        "total": 10,
        "avg": 10.0,
        "hi": 10,
        "merchant": "m2",
        "merchants": 2,
        "gap": 1,
    }
    assert vector.values == {
        "n": 3,
        "total": 30,
        "avg": 15.0,
        "hi": 20,
        "merchant": "m3",
        "merchants": 3,
        "gap": 1,
    }
    assert stats.feature_errors == dict.fromkeys(NUMERIC, 1)
    assert stats.events_processed == 3
    assert sorted(e.feature for e in errors) == sorted(NUMERIC)
    for error in errors:
        assert isinstance(error, FeatureError)
        assert error.key == "c1"
        assert error.event_time == T0 + 1
        assert error.error.startswith("FeatureValueError")
        assert "'amount'" in error.error


async def test_time_since_is_the_gap_between_the_two_newest_times() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
            for ts in (T0 + 10_000, T0 + 30_000, T0 + 20_000):
                await rt.ingest(tx("c1", ts))
            vector = await rt.get("c1")
    assert vector["gap"] == 10_000  # newest 30 s, second-newest 20 s


async def test_a_missing_or_null_value_is_skipped_without_error() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.ingest(tx("c1", T0, 10))
            await rt.ingest({"card": "c1", "ts": T0 + 1})
            await rt.ingest(tx("c1", T0 + 2, None, None))
            vector = await rt.get("c1")
            stats = await rt.statistics()
    assert vector["n"] == 3
    assert vector["total"] == 10
    assert vector["merchant"] == "m1"
    assert stats.feature_errors == {}


RATIO_SET = FeatureSet(
    name="ratio",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Last(name="merchant", field="merchant"),
        Ratio(name="weird", numerator="merchant", denominator="n"),
    ],
)


async def test_a_ratio_of_a_non_numeric_operand_does_not_break_get() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(RATIO_SET, shards=1) as rt:
            await rt.ingest({"card": "c1", "ts": T0, "merchant": "m1"})
            vector = await rt.get("c1")
    assert vector["n"] == 1
    assert vector["merchant"] == "m1"
    assert vector["weird"] is None


async def test_a_ratio_of_a_non_numeric_operand_never_counts_an_event_twice() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(RATIO_SET, shards=1, batch_size=1) as rt:
            subscription = rt.updates(policy="drop_oldest")
            await rt.ingest({"card": "c1", "ts": T0})
            await rt.ingest({"card": "c1", "ts": T0 + 1, "merchant": "m1"})
            await rt.ingest({"card": "c1", "ts": T0 + 2, "merchant": 6})  # a number again
            await rt.flush()
            await subscription.aclose()
            updates = [u async for u in subscription]
    assert [u.values["n"] for u in updates] == [1, 2, 3]
    assert updates[1].errors is not None and "weird" in updates[1].errors
    assert updates[2].values["weird"] == 2.0


# -- register and describe -----------------------------------------------------------------------
BIG = Where(field="amount", op=">", value=50)


async def test_register_returns_descriptions_with_estimated_cost() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2, expected_event_rate=2_000) as rt:
            [sum_big, n_big] = await rt.register(
                Sum(name="big_total", field="amount", where=BIG),
                Count(name="n_big", where=BIG),
            )
    assert isinstance(sum_big, FeatureDescription)
    assert (sum_big.name, sum_big.type, sum_big.group) == ("big_total", "sum", "g1")
    assert sum_big.inputs == ("amount",)
    assert n_big.group == "g1"
    assert sum_big.measured_cost is None
    cost = sum_big.estimated_cost
    assert isinstance(cost, CostEstimate)
    assert cost.feature == "big_total"
    assert cost.category == "simple_aggregate"
    assert cost.operations_per_second == 2_000 * 3  # sum: 2 ops, +1 for the condition
    assert cost.state_bytes_per_key > 0
    assert 0 <= cost.cpu_utilization <= 1
    assert cost.bottleneck == "none"


async def test_a_registered_feature_sees_only_events_ingested_after_it() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=3, batch_size=4, linger=3600) as rt:
            await rt.ingest_many(tx("c1", T0 + i, amount=1) for i in range(5))
            await rt.register(Count(name="later"), Sum(name="later_total", field="amount"))
            await rt.ingest_many(tx("c1", T0 + 10 + i, amount=10) for i in range(3))
            vector = await rt.get("c1")
            unknown = await rt.get("c9")
            stats = await rt.statistics()
    assert vector["n"] == 8
    assert vector["later"] == 3
    assert vector["later_total"] == 30
    assert list(vector.values) == [*NAMES, "later", "later_total"]
    assert unknown.values == {**EMPTY, "later": 0, "later_total": 0}
    assert stats.groups == 2


async def test_a_ratio_registered_with_its_operands_works() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.ingest(tx("c1", T0, 100))
            await rt.register(
                Count(name="seen"),
                Count(name="big", where=BIG),
                Ratio(name="big_share", numerator="big", denominator="seen"),
            )
            for amount in (10, 60, 70, 80):
                await rt.ingest(tx("c1", T0 + amount, amount))
            vector = await rt.get("c1", features=["big_share", "big", "seen"])
    assert vector.values == {"big_share": 0.75, "big": 3, "seen": 4}


async def test_registering_a_name_in_use_raises_spec_error_and_changes_nothing() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            with pytest.raises(SpecError, match="duplicate feature name 'total'"):
                await rt.register(Count(name="total"))
            with pytest.raises(SpecError, match="duplicate feature name 'x'"):
                await rt.register(Count(name="x"), Count(name="x"))
            with pytest.raises(SpecError):
                await rt.register()
            await rt.ingest(tx("c1", T0, 5))
            vector = await rt.get("c1")
            stats = await rt.statistics()
    assert list(vector.values) == list(NAMES)
    assert vector["total"] == 5
    assert stats.groups == 1


async def test_describe_gives_measured_cost_once_events_have_flowed() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2, batch_size=8) as rt:
            await rt.ingest_many(tx(f"c{i % 3}", T0 + i) for i in range(40))
            [registered] = await rt.register(Sum(name="later_total", field="amount"))
            before = await rt.describe("later_total")
            await rt.ingest_many(tx(f"c{i % 3}", T0 + 100 + i, amount=2) for i in range(20))
            await rt.flush()
            after = await rt.describe("later_total")
            initial = await rt.describe("total")
    assert registered.measured_cost is None
    assert before.measured_cost is None
    assert before.estimated_cost == registered.estimated_cost
    measured = after.measured_cost
    assert isinstance(measured, MeasuredCost)
    assert measured.feature == "later_total"
    assert measured.events == 20
    assert measured.mean_latency_us is not None and measured.mean_latency_us >= 0
    assert initial.measured_cost is not None
    assert initial.measured_cost.events == 60
    assert initial.group == "g0"


async def test_describe_of_an_unknown_feature_raises_unknown_feature() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            with pytest.raises(UnknownFeature, match="'nope'"):
                await rt.describe("nope")


async def test_describe_gives_a_mean_latency_while_a_subscriber_is_active() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1, batch_size=1) as rt:
            subscription = rt.updates(policy="drop_oldest")
            await rt.ingest_many(tx("c1", T0 + i) for i in range(50))
            await rt.flush()
            description = await rt.describe("total")
            await subscription.aclose()
    assert description.measured_cost is not None
    assert description.measured_cost.mean_latency_us is not None


async def test_concurrent_registrations_keep_every_feature() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.register, Count(name="x"))
                tg.start_soon(rt.register, Count(name="y"))
            await rt.ingest(tx("c1", T0))
            vector = await rt.get("c1")
    assert "x" in rt.feature_set.names and "y" in rt.feature_set.names
    assert vector["x"] == 1 and vector["y"] == 1


async def test_concurrent_registrations_of_one_name_let_only_one_succeed() -> None:
    outcomes: list[str] = []

    async def register() -> None:
        try:
            await rt.register(Count(name="x"))
        except SpecError:
            outcomes.append("refused")
        else:
            outcomes.append("registered")

    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(register)
                tg.start_soon(register)
    assert sorted(outcomes) == ["refused", "registered"]


# -- lifecycle -----------------------------------------------------------------------------------
OPERATIONS: dict[str, Any] = {
    "ingest": lambda rt: rt.ingest(tx("c1", T0)),
    "ingest_many": lambda rt: rt.ingest_many([tx("c1", T0)]),
    "get": lambda rt: rt.get("c1"),
    "register": lambda rt: rt.register(Count(name="later")),
    "describe": lambda rt: rt.describe("n"),
    "statistics": lambda rt: rt.statistics(),
    "recent_errors": lambda rt: rt.recent_errors(),
    "flush": lambda rt: rt.flush(),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_runtime_not_yet_entered_raises_runtime_closed(operation: str) -> None:
    rt = FeatureRuntime(FEATURE_SET, shards=2)
    with pytest.raises(RuntimeClosed, match="not running") as info:
        await OPERATIONS[operation](rt)
    assert isinstance(info.value, ActorStopped)


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_a_runtime_that_has_exited_raises_runtime_closed(operation: str) -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.ingest(tx("c1", T0))
    with pytest.raises(RuntimeClosed) as info:
        await OPERATIONS[operation](rt)
    assert isinstance(info.value, ActorStopped)


async def test_a_runtime_can_be_entered_only_once() -> None:
    rt = FeatureRuntime(FEATURE_SET, shards=1)
    async with rt:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with rt:
            pass


async def test_exit_drains_every_accepted_event() -> None:
    counts: dict[Any, int] = {}
    total = 2_500
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            async with FeatureRuntime(FEATURE_SET, shards=4, batch_size=1000, linger=3600) as rt:
                tg.start_soon(count_updates, rt.updates(), counts)
                for i in range(total):
                    assert await rt.ingest(tx(f"c{i % 7}", T0 + i))
                accepted = await rt.ingest_many(tx(f"c{i % 7}", T0 + i) for i in range(total))
    assert accepted == total
    assert sum(counts.values()) == 2 * total
    assert counts == {f"c{k}": 2 * len(range(k, total, 7)) for k in range(7)}


async def test_exit_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=4, batch_size=3) as rt:
            subscription = rt.updates(policy="drop_oldest")
            await rt.ingest_many(tx(f"c{i % 5}", T0 + i) for i in range(50))
            await rt.register(Count(name="later"))
            await rt.ingest(tx("c1", T0))
            assert len(asyncio.all_tasks()) > len(before)
            await subscription.aclose()
    assert asyncio.all_tasks() == before


async def test_ingest_waits_while_the_runtime_is_full_and_resumes_when_it_drains() -> None:
    total = 30
    done = anyio.Event()

    async def produce(rt: FeatureRuntime) -> None:
        for i in range(total):
            await rt.ingest(tx("c1", T0 + i))
        done.set()

    with anyio.fail_after(20):
        async with FeatureRuntime(FEATURE_SET, shards=1, batch_size=1, mailbox_capacity=1) as rt:
            subscription = rt.updates(buffer=1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce, rt)
                with anyio.move_on_after(0.2):
                    await done.wait()
                assert not done.is_set()  # blocked: the subscriber reads nothing
                seen: list[FeatureUpdate] = []
                async for update in subscription:
                    seen.append(update)
                    if len(seen) == total:
                        break
                await done.wait()
            vector = await rt.get("c1")
    assert [u.values["n"] for u in seen] == list(range(1, total + 1))
    assert vector["n"] == total


async def test_a_cancelled_ingest_loses_no_event_already_accepted() -> None:
    accepted = 0
    with anyio.fail_after(20):
        async with FeatureRuntime(
            FEATURE_SET, shards=1, batch_size=2, mailbox_capacity=1, linger=3600
        ) as rt:
            subscription = rt.updates(buffer=1)
            with anyio.move_on_after(0.2):
                for i in range(100):
                    await rt.ingest(tx("c1", T0 + i))
                    accepted += 1
            await subscription.aclose()  # unblocks the shard
            vector = await rt.get("c1")
    # the cancelled call may or may not count; every call that returned True must
    assert vector["n"] >= accepted


async def test_a_batch_whose_send_was_cancelled_goes_out_within_linger() -> None:
    accepted = 0
    seen = 0
    with anyio.fail_after(20):
        async with FeatureRuntime(
            FEATURE_SET, shards=1, batch_size=2, mailbox_capacity=1, linger=0.01
        ) as rt:
            subscription = rt.updates(buffer=1)
            with anyio.move_on_after(0.2):
                for i in range(100):
                    await rt.ingest(tx("c1", T0 + i))
                    accepted += 1
            # read without get or flush: only the flusher can send what is still waiting
            with anyio.move_on_after(2):
                async for _ in subscription:
                    seen += 1
                    if seen >= accepted + 1:
                        break
            await subscription.aclose()
    assert seen >= accepted


async def stall_and_cancel_a_send(rt: FeatureRuntime) -> int:
    """With ``batch_size=2, mailbox_capacity=1`` and one shard: stall the shard behind a
    subscriber that does not read, cancel the ``ingest`` whose send waits for room, then close
    the subscriber. Returns the events passed to ``ingest`` (the cancelled one included)."""
    subscription = rt.updates(buffer=1)
    passed = 0
    with anyio.move_on_after(0.2):
        for i in range(100):
            passed += 1
            await rt.ingest(tx("c1", T0 + i))
    await subscription.aclose()
    return passed


async def test_get_reads_its_own_writes_after_a_cancelled_send() -> None:
    with anyio.fail_after(20):
        async with FeatureRuntime(
            FEATURE_SET, shards=1, batch_size=2, mailbox_capacity=1, linger=3600
        ) as rt:
            passed = await stall_and_cancel_a_send(rt)
            assert await rt.ingest(tx("c1", T0 + 1_000))
            vector = await rt.get("c1")
    assert vector["n"] == passed + 1
    assert vector.last_event_time == T0 + 1_000


async def test_exit_drains_an_event_accepted_after_a_cancelled_send() -> None:
    seen: list[FeatureUpdate] = []

    async def read(subscription: UpdateSubscription) -> None:
        async for update in subscription:
            seen.append(update)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            async with FeatureRuntime(
                FEATURE_SET, shards=1, batch_size=2, mailbox_capacity=1, linger=3600
            ) as rt:
                await stall_and_cancel_a_send(rt)
                tg.start_soon(read, rt.updates())
                assert await rt.ingest(tx("c1", T0 + 1_000))
    assert T0 + 1_000 in [u.event_time for u in seen]
    assert rt.dead_letters.count() == 0


async def test_a_cancelled_get_loses_no_accepted_event() -> None:
    with anyio.fail_after(20):
        async with FeatureRuntime(
            FEATURE_SET, shards=1, batch_size=2, mailbox_capacity=1, linger=3600
        ) as rt:
            subscription = rt.updates(buffer=1)
            for i in range(5):  # 2 batches sent, the shard is stuck; the 5th waits in a buffer
                assert await rt.ingest(tx("c1", T0 + i))
            with anyio.move_on_after(0.2) as scope:
                await rt.get("c1")
            assert scope.cancelled_caught
            await subscription.aclose()  # unblocks the shard
            vector = await rt.get("c1")
    assert vector["n"] == 5


async def test_exit_finishes_within_shutdown_timeout_despite_a_stalled_subscriber() -> None:
    exited = anyio.Event()
    subscriptions: list[UpdateSubscription] = []
    runtimes: list[FeatureRuntime] = []

    async def run_runtime() -> None:
        async with FeatureRuntime(
            FEATURE_SET,
            shards=1,
            batch_size=2,
            mailbox_capacity=1,
            linger=3600,
            shutdown_timeout=0.2,
        ) as rt:
            runtimes.append(rt)
            subscriptions.append(rt.updates(buffer=1))  # never read while the runtime runs
            for i in range(5):
                await rt.ingest(tx("c1", T0 + i))
        exited.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_runtime)
            with anyio.move_on_after(5):  # 25 times shutdown_timeout
                await exited.wait()
            finished = exited.is_set()
            async for _ in subscriptions[0]:  # unblock the runtime so the test can end
                pass
    assert finished
    # what could not be applied before the deadline is in dead letters, not silently dropped
    assert runtimes[0].dead_letters.count(DeadLetterReason.UNDELIVERABLE) > 0


async def test_an_ingest_many_in_flight_at_exit_loses_no_accepted_event() -> None:
    outcome: dict[str, Any] = {}
    seen: list[FeatureUpdate] = []

    async def produce(rt: FeatureRuntime) -> None:
        try:
            outcome["accepted"] = await rt.ingest_many(tx("c1", T0 + i) for i in range(9))
        except Exception as error:
            outcome["error"] = error

    async def read(subscription: UpdateSubscription) -> None:
        async for update in subscription:
            seen.append(update)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            async with FeatureRuntime(
                FEATURE_SET, shards=1, batch_size=2, mailbox_capacity=1, linger=3600
            ) as rt:
                subscription = rt.updates(buffer=1)
                tg.start_soon(produce, rt)
                await anyio.wait_all_tasks_blocked()  # the producer waits for room
                tg.start_soon(read, subscription)
                # leaving the block begins the exit while the producer is still blocked
    if "error" in outcome:
        assert isinstance(outcome["error"], RuntimeClosed)
    else:
        assert len(seen) == outcome["accepted"]


# -- constructor ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"shards": 0}, ConfigError, "shards must be an int between 1 and 256, got 0"),
        ({"shards": 257}, ConfigError, "shards must be an int between 1 and 256, got 257"),
        ({"shards": 5, "key_groups": 4}, ConfigError, "shards must be an int between 1 and 4"),
        ({"shards": 2.0}, ConfigError, "shards must be an int"),
        ({"batch_size": 0}, ConfigError, "batch_size must be an int >= 1, got 0"),
        ({"mailbox_capacity": 0}, ConfigError, "mailbox_capacity must be an int >= 1"),
        ({"key_groups": 0}, ConfigError, "key_groups must be an int >= 1"),
        ({"sample_every": 0}, ConfigError, "sample_every must be an int >= 1"),
        ({"linger": 0}, ConfigError, "linger must be > 0 seconds, got 0"),
        ({"linger": -1.0}, ConfigError, "linger must be > 0 seconds"),
        ({"linger": math.inf}, ConfigError, "linger must be > 0 seconds"),
        ({"linger": math.nan}, ConfigError, "linger must be > 0 seconds"),
        ({"payload_format": "xml"}, ValueError, "payload_format must be 'json' or 'msgpack'"),
        ({"shutdown_timeout": 0}, ConfigError, "shutdown_timeout must be > 0"),
        # runtime's own ConfigError (the actor system's is not a FeaturistError), and not a
        # TypeError from a comparison deep in it
        ({"shutdown_timeout": "5"}, ConfigError, "shutdown_timeout must be > 0 seconds, got '5'"),
        ({"shutdown_timeout": None}, ConfigError, "shutdown_timeout must be > 0 seconds"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else "",
)
def test_an_invalid_limit_raises_an_error_naming_the_parameter(
    kwargs: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as info:
        FeatureRuntime(FEATURE_SET, **kwargs)
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", ["5", None, -1, 0])
def test_a_bad_shutdown_timeout_is_the_runtimes_config_error(value: Any) -> None:
    import runtime

    with pytest.raises(runtime.ConfigError, match="shutdown_timeout must be > 0 seconds"):
        FeatureRuntime(FEATURE_SET, shutdown_timeout=value)


async def test_a_read_names_a_bad_key_and_a_str_of_features() -> None:
    async with FeatureRuntime(FEATURE_SET) as rt:
        for key, shown in ((1.5, "float: 1.5"), (["c1"], "list: ['c1']"), (True, "bool: True")):
            with pytest.raises(TypeError) as info:
                await rt.get(key)
            assert str(info.value) == (
                f"a key is a str, int or bytes (the value of key field 'card'), got {shown}"
            )
        with pytest.raises(TypeError, match=r"features is a list of names, got str 'n' \("):
            await rt.get("c1", "n")  # type: ignore[arg-type]
        assert (await rt.get(b"c1")).values is not None  # bytes keys are keys

        class Big(int):
            pass

        with pytest.raises(ValueError, match="is an int beyond 64 bits"):
            await rt.get(Big(2**70))  # an int subclass is bounded as an int


@pytest.mark.parametrize("feature_set", [None, {"name": "tx"}, FEATURES], ids=repr)
def test_a_feature_set_that_is_not_a_feature_set_raises_type_error(feature_set: Any) -> None:
    with pytest.raises(TypeError, match="feature_set must be a FeatureSet"):
        FeatureRuntime(feature_set)


@pytest.mark.parametrize(
    "kwargs",
    [{"expected_event_rate": -1.0}, {"expected_keys": 0}],
    ids=["expected_event_rate", "expected_keys"],
)
def test_an_invalid_expected_load_raises_an_error_naming_the_parameter(
    kwargs: dict[str, Any],
) -> None:
    [name] = kwargs
    with pytest.raises(ValueError, match=name):
        FeatureRuntime(FEATURE_SET, **kwargs)


@pytest.mark.parametrize("many", [False, True])
async def test_an_idle_runtime_runs_no_timer_and_wakes_for_a_buffered_event(
    monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    """Once nothing has been buffered for a while the flusher waits to be woken; an event
    left buffered behind a busy shard (made to look busy here) still leaves after linger."""
    import runtime._runtime as module

    monkeypatch.setattr(module, "FLUSHER_IDLE_TICKS", 2)
    features = FeatureSet(name="idle", key="k", time="ts", features=[Count(name="n")])
    async with FeatureRuntime(features, shards=2, linger=0.005) as rt:
        await rt.ingest({"k": "a", "ts": 1})
        with anyio.fail_after(5):
            while rt._flusher_wake is None:  # parked
                await anyio.sleep(0.005)
        idle = time.process_time()
        await anyio.sleep(0.3)
        assert time.process_time() - idle < 0.05  # no timer ticks while parked
        monkeypatch.setattr(rt._ingest, "idle", lambda shard: False)  # "busy": it waits
        event = {"k": "a", "ts": 2}
        if many:
            await rt.ingest_many([event])
        else:
            await rt.ingest(event)
        assert rt._ingest.pending()
        with anyio.fail_after(5):  # no flush, no read (a read sends what is buffered first)
            while rt._ingest.pending():  # the flusher sends it after linger
                await anyio.sleep(0.005)
        assert (await rt.get("a"))["n"] == 2
