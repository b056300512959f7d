"""``rt.updates()``: one update per event, with the oracle's values, per-feature results and
errors, buffer policies, and the subscription's lifecycle."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    Count,
    FeatureResult,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    RuntimeClosed,
    UpdateSubscription,
)

from .support.oracle import ORACLE_FEATURES, ORACLE_NUMERIC, key_values, same

FEATURES = ORACLE_FEATURES
NAMES = [f.name for f in FEATURES]
NUMERIC = ORACLE_NUMERIC
FEATURE_SET = FeatureSet(name="up", key="card", time="ts", features=FEATURES)
T0 = 1_700_000_000_000


async def collect(subscription: UpdateSubscription, count: int) -> list[FeatureUpdate]:
    got: list[FeatureUpdate] = []
    with anyio.fail_after(10):
        async for update in subscription:
            got.append(update)
            if len(got) == count:
                break
    return got


amounts = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False),
    st.none(),
    st.just("oops"),
    st.just(math.nan),
    st.just(True),
)
streams = st.lists(
    st.fixed_dictionaries(
        {
            "card": st.sampled_from(["c0", "c1", "c2", 7, 8]),
            "ts": st.integers(min_value=T0, max_value=T0 + 10_000),
            "amount": amounts,
            "merchant": st.sampled_from(["m1", "m2", "m3", None]),
            "status": st.sampled_from(["ok", "declined"]),
        }
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, shards=st.sampled_from([1, 3]), batch_size=st.sampled_from([1, 5, 512]))
async def test_each_event_gives_one_update_with_the_oracles_values_in_key_order(
    stream: list[dict[str, Any]], shards: int, batch_size: int
) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=shards, batch_size=batch_size) as rt:
        subscription = rt.updates()
        await rt.ingest_many(stream)
        updates = await collect(subscription, len(stream))
        await subscription.aclose()
        extra = [u async for u in subscription]
    assert extra == []
    by_key: dict[Any, list[FeatureUpdate]] = {}
    for update in updates:
        by_key.setdefault(update.key, []).append(update)
    histories: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for event in stream:
        key = event["card"]
        history = histories.setdefault(key, [])
        history.append((event["ts"], event))
        update = by_key[key].pop(0)
        assert update.event_time == event["ts"]
        assert update.group == "g0"
        expected = key_values(FEATURES, history)
        assert list(update.values) == NAMES
        for name in NAMES:
            assert same(update.values[name], expected[name]), (name, update, expected[name])
    assert all(not rest for rest in by_key.values())


async def test_an_update_carries_latency_per_feature_and_when_it_was_processed() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            subscription = rt.updates()
            before = time.time()
            await rt.ingest({"card": "c1", "ts": T0, "amount": 5, "merchant": "m1"})
            [update] = await collect(subscription, 1)
            after = time.time()
    assert update.key == "c1"
    assert update.event_time == T0
    assert update.errors is None
    assert set(update.latency_ms) == set(NAMES)
    assert all(isinstance(v, float) and v >= 0 for v in update.latency_ms.values())
    assert before <= update.processed_at <= after


async def test_results_give_each_features_value_latency_timestamp_and_no_error() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            subscription = rt.updates()
            await rt.ingest({"card": "c1", "ts": T0, "amount": 5, "merchant": "m1"})
            await rt.ingest({"card": "c1", "ts": T0 + 250, "amount": 7, "merchant": "m2"})
            _, update = await collect(subscription, 2)
    results = update.results()
    assert list(results) == NAMES
    for name, result in results.items():
        assert isinstance(result, FeatureResult)
        assert result == update.result(name)
        assert result.value == update.values[name]
        assert result.computation_latency_ms == update.latency_ms[name]
        assert result.timestamp == T0 + 250
        assert result.error is None
    assert results["total"].value == 12
    assert results["gap"].value == 250
    assert results["last_merchant"].value == "m2"


@pytest.mark.parametrize("bad", ["12.5", math.nan, True, math.inf, b"5"], ids=repr)
async def test_a_bad_value_is_an_error_of_the_numeric_features_only(bad: Any) -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            subscription = rt.updates()
            await rt.ingest({"card": "c1", "ts": T0, "amount": 60, "merchant": "m1"})
            await rt.ingest({"card": "c1", "ts": T0 + 10, "amount": bad, "merchant": "m2"})
            _, update = await collect(subscription, 2)
    assert update.errors is not None
    # big_total's condition (amount > 50) may already reject the value: then it is no error
    assert NUMERIC - {"big_total"} <= set(update.errors) <= NUMERIC
    for name in NUMERIC - {"big_total"}:
        result = update.result(name)
        assert result.value is None
        assert result.timestamp == T0 + 10
        assert result.error is not None
        assert "'amount'" in result.error
    assert update.values["n"] == 2
    assert update.values["last_merchant"] == "m2"
    assert update.values["merchants"] == 2
    assert update.values["gap"] == 10
    assert update.result("n") == FeatureResult(2, update.latency_ms["n"], T0 + 10, None)
    # the failed features kept their state: their values are those before the event
    assert update.values["total"] == 60
    assert update.values["hi"] == 60


async def test_a_condition_that_cannot_compare_its_value_is_an_error_naming_the_field() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
            subscription = rt.updates()
            await rt.ingest({"card": "c1", "ts": T0, "amount": "12.5"})
            [update] = await collect(subscription, 1)
    assert update.errors is not None
    error = update.errors["big_total"]
    assert error.startswith("FeatureValueError")
    assert "amount" in error


async def test_drop_oldest_keeps_the_newest_updates_and_counts_the_dropped() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1, batch_size=4) as rt:
            subscription = rt.updates(buffer=3, policy="drop_oldest")
            await rt.ingest_many({"card": "c1", "ts": T0 + i, "amount": i} for i in range(20))
            await rt.flush()
            assert subscription.dropped == 17
            vector = await rt.get("c1")
            await subscription.aclose()
            kept = [u async for u in subscription]
    assert [u.event_time for u in kept] == [T0 + 17, T0 + 18, T0 + 19]
    assert vector["n"] == 20


async def test_iteration_ends_when_the_runtime_exits() -> None:
    seen: list[FeatureUpdate] = []
    ended = anyio.Event()

    async def read(subscription: UpdateSubscription) -> None:
        async for update in subscription:
            seen.append(update)
        ended.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
                tg.start_soon(read, rt.updates())
                await rt.ingest_many({"card": "c1", "ts": T0 + i} for i in range(5))
            await ended.wait()
    assert len(seen) == 5


async def test_a_subscription_is_an_async_context_manager_that_closes_on_exit() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            async with rt.updates() as subscription:
                await rt.ingest({"card": "c1", "ts": T0})
                [update] = await collect(subscription, 1)
            await rt.ingest({"card": "c1", "ts": T0 + 1})
            await rt.flush()
            after = [u async for u in subscription]
    assert update.event_time == T0
    assert after == []


async def test_aclose_unsubscribes_but_keeps_what_was_buffered() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            subscription = rt.updates()
            await rt.ingest({"card": "c1", "ts": T0})
            await rt.flush()
            await subscription.aclose()
            await rt.ingest_many({"card": "c1", "ts": T0 + i} for i in range(1, 50))
            await rt.flush()
            buffered = [u async for u in subscription]
            vector = await rt.get("c1")
    assert [u.event_time for u in buffered] == [T0]
    assert vector["n"] == 50


async def test_an_abandoned_blocking_subscription_does_not_stall_the_runtime() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1, batch_size=1, mailbox_capacity=1) as rt:
            rt.updates(buffer=1)  # dropped at once: garbage collected, so unsubscribed
            await rt.ingest_many({"card": "c1", "ts": T0 + i} for i in range(20))
            vector = await rt.get("c1")
    assert vector["n"] == 20


async def test_every_subscriber_gets_every_update() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=3) as rt:
            first, second = rt.updates(), rt.updates()
            await rt.ingest_many({"card": f"c{i % 4}", "ts": T0 + i} for i in range(30))
            a = await collect(first, 30)
            b = await collect(second, 30)
    assert sorted((u.key, u.event_time) for u in a) == sorted((u.key, u.event_time) for u in b)


async def test_updates_validates_buffer_and_policy() -> None:
    async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
        with pytest.raises(ValueError, match="buffer must be >= 1"):
            rt.updates(buffer=0)
        with pytest.raises(ValueError, match="policy must be 'block' or 'drop_oldest'"):
            rt.updates(policy="newest")  # type: ignore[arg-type]


async def test_updates_outside_the_runtime_raises_runtime_closed() -> None:
    rt = FeatureRuntime(FEATURE_SET, shards=1)
    with pytest.raises(RuntimeClosed):
        rt.updates()
    async with rt:
        pass
    with pytest.raises(RuntimeClosed):
        rt.updates()


async def test_a_registered_group_publishes_its_own_updates() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            await rt.register(Count(name="later"))
            subscription = rt.updates()
            await rt.ingest({"card": "c1", "ts": T0})
            updates = await collect(subscription, 2)
    by_group = {u.group: u for u in updates}
    assert set(by_group) == {"g0", "g1"}
    assert by_group["g1"].values == {"later": 1}
    assert by_group["g0"].values["n"] == 1


async def test_every_task_reading_one_subscription_ends_when_the_runtime_exits() -> None:
    ended: list[int] = []
    both = anyio.Event()

    async def read(subscription: UpdateSubscription) -> None:
        async for _ in subscription:
            pass
        ended.append(1)
        if len(ended) == 2:
            both.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
                subscription = rt.updates()
                tg.start_soon(read, subscription)
                tg.start_soon(read, subscription)
                await anyio.wait_all_tasks_blocked()
                await rt.ingest_many({"card": "c1", "ts": T0 + i} for i in range(10))
            with anyio.move_on_after(2):
                await both.wait()
            tg.cancel_scope.cancel()  # release a reader that hangs, so the test can end
    assert len(ended) == 2


async def test_a_partial_batch_reaches_subscribers_after_linger_without_a_read() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2, batch_size=1000, linger=0.01) as rt:
            subscription = rt.updates()
            await rt.ingest({"card": "c1", "ts": T0})
            [update] = await collect(subscription, 1)
    assert update.event_time == T0
