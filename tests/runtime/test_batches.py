"""Batch-first outputs: the batch types (columns, slices, errors and window rows by index,
lazy iteration as the per-event types) and the subscription that carries them (one batch per
batch of events, a buffer counted in items, both policies, reading by item and by batch)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from runtime import (
    Count,
    EnrichedBatch,
    EnrichedEvent,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    LateEvent,
    LateEventBatch,
    Sum,
    UpdateBatch,
)
from runtime._batches import ItemBatch
from runtime._updates import UpdateHub

T0 = 1_700_000_000_000
NAMES = ("n", "total")
LATENCY = {"n": 0.001, "total": 0.002}


def a_batch() -> UpdateBatch:
    rows = [("a", T0, 1, 5.0), ("b", T0 + 1, 1, None), ("a", T0 + 2, 2, 7.5), ("c", T0 + 3, 1, 2)]
    close = FeatureUpdate(
        "c", T0 + 3, {"total": 2}, None, LATENCY, 9.0, "g1", "close", (T0, T0 + 3)
    )
    return UpdateBatch(
        "g1",
        NAMES,
        rows,
        {1: {"total": "FeatureValueError: amount"}},
        LATENCY,
        9.0,
        {3: close},
    )


def test_an_update_batch_is_columnar() -> None:
    batch = a_batch()
    assert len(batch) == 4
    assert batch.keys == ("a", "b", "a", "c")
    assert batch.event_times == (T0, T0 + 1, T0 + 2, T0 + 3)
    assert batch.column("n") == (1, 1, 2, 1)
    assert batch.columns() == {"n": (1, 1, 2, 1), "total": (5.0, None, 7.5, 2)}
    assert batch.errors == {1: {"total": "FeatureValueError: amount"}}
    assert batch.kinds == ["update", "update", "update", "close"]
    with pytest.raises(KeyError, match="no feature 'nope'"):
        batch.column("nope")


def test_an_update_batch_iterates_as_feature_updates_built_as_they_are_reached() -> None:
    updates = list(a_batch())
    assert updates[0] == FeatureUpdate("a", T0, {"n": 1, "total": 5.0}, None, LATENCY, 9.0, "g1")
    assert updates[1].errors == {"total": "FeatureValueError: amount"}
    assert updates[1].result("total").error == "FeatureValueError: amount"
    assert updates[3].kind == "close" and updates[3].window == (T0, T0 + 3)
    assert updates[3].values == {"total": 2}
    # the same objects through ``update(i)``
    batch = a_batch()
    assert [batch.update(i) for i in range(len(batch))] == updates


def test_a_slice_keeps_its_rows_errors_and_window_rows() -> None:
    batch = a_batch()
    tail = batch[1:]
    assert isinstance(tail, UpdateBatch)
    assert list(tail) == list(batch)[1:]
    assert tail.errors == {0: {"total": "FeatureValueError: amount"}}
    assert tail.kinds == ["update", "update", "close"]
    assert list(batch[2:3]) == [list(batch)[2]]
    assert batch[2:3].errors == {}
    assert len(batch[4:]) == 0 and batch[4:].keys == () and batch[4:].column("n") == ()
    with pytest.raises(ValueError, match="step 1"):
        batch[::2]


def test_enriched_and_late_batches_iterate_as_their_per_event_types() -> None:
    enriched = EnrichedBatch([("k", T0, {"x": 1})], 5.0)
    assert list(enriched) == [EnrichedEvent("k", T0, {"x": 1})]
    assert enriched.keys == ("k",) and enriched.events == ({"x": 1},)
    assert enriched.event_times == (T0,) and EnrichedBatch([], 5.0).events == ()
    late = LateEventBatch("g0", [("k", T0, T0 + 10, {"x": 1})])
    assert list(late) == [LateEvent("k", T0, T0 + 10, {"x": 1}, "g0")]
    assert list(late[0:1]) == list(late)


# -- the hub and its subscriptions -------------------------------------------------------------


async def read_all(subscription: Any, by_batch: bool) -> list[Any]:
    got: list[Any] = []
    if by_batch:
        async for batch in subscription.batches():
            got.extend(batch)
    else:
        async for item in subscription:
            got.append(item)
    return got


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    capacity=st.integers(min_value=1, max_value=50),
    by_batch=st.booleans(),
)
def test_block_delivers_every_item_in_order_and_never_holds_more_than_its_buffer(
    sizes: list[int], capacity: int, by_batch: bool
) -> None:
    async def main() -> None:
        hub: UpdateHub[int] = UpdateHub()
        subscription = hub.subscribe(capacity, "block")
        published: list[int] = []
        deepest = 0

        async def publisher() -> None:
            nonlocal deepest
            for size in sizes:
                items = list(range(len(published), len(published) + size))
                published.extend(items)
                await hub.publish(ItemBatch(items))
                deepest = max(deepest, subscription.statistics().depth)
                await anyio.lowlevel.checkpoint()
            await subscription.aclose()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publisher)
                got = await read_all(subscription, by_batch)
        assert got == published
        assert deepest <= capacity
        assert subscription.dropped == 0

    anyio.run(main)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=30),
    capacity=st.integers(min_value=1, max_value=50),
    read_first=st.integers(min_value=0, max_value=5),
)
def test_drop_oldest_keeps_the_newest_items_and_counts_each_dropped(
    sizes: list[int], capacity: int, read_first: int
) -> None:
    async def main() -> None:
        hub: UpdateHub[int] = UpdateHub()
        subscription = hub.subscribe(capacity, "drop_oldest")
        published: list[int] = []
        got: list[int] = []
        first = 0
        for i, size in enumerate(sizes):
            items = list(range(len(published), len(published) + size))
            published.extend(items)
            await hub.publish(ItemBatch(items))
            assert subscription.statistics().depth <= capacity
            if i == 0:  # read a few items first: the rest of that batch is held
                first = min(read_first, size, capacity)
                for _ in range(first):
                    got.append(await subscription.__anext__())
        await subscription.aclose()
        got.extend(await read_all(subscription, by_batch=True))
        assert len(got) + subscription.dropped == len(published)
        # what is read is in order, and after what was read first comes the newest
        assert got == sorted(got)
        kept = got[first:]
        assert kept == published[len(published) - len(kept) :]

    anyio.run(main)


async def test_reading_by_batch_after_some_items_yields_the_rest_of_that_batch_first() -> None:
    hub: UpdateHub[int] = UpdateHub()
    subscription = hub.subscribe(100, "block")
    await hub.publish(ItemBatch([1, 2, 3, 4]))
    await hub.publish(ItemBatch([5, 6]))
    assert await subscription.__anext__() == 1
    assert subscription.statistics().depth == 5
    await subscription.aclose()
    batches = [list(batch) async for batch in subscription.batches()]
    assert batches == [[2, 3, 4], [5, 6]]
    assert subscription.statistics().depth == 0


FEATURE_SET = FeatureSet(
    name="b", key="card", time="ts", features=[Count(name="n"), Sum(name="total", field="x")]
)


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_subscription_gets_one_batch_per_batch_of_events(shards: int) -> None:
    events = [{"card": f"c{i % 7}", "ts": T0 + i, "x": i} for i in range(2_000)]
    async with FeatureRuntime(FEATURE_SET, shards=shards, batch_size=250) as rt:
        subscription = rt.updates()
        await rt.ingest_many(events)
        await rt.flush()
        await subscription.aclose()
        batches = [batch async for batch in subscription.batches()]
    assert all(isinstance(batch, UpdateBatch) for batch in batches)
    assert sum(len(batch) for batch in batches) == len(events)
    # batches of events, not events: at most a batch per 250 events per shard, give or take
    # the partial ones that leave at once
    assert len(batches) < len(events) / 10
    totals: dict[str, tuple[int, int]] = {}
    for batch in batches:
        assert batch.names == ("n", "total") and batch.group == "g0"
        for key, _t, n, total in batch.rows:
            totals[key] = (n, total)
    assert totals == {
        f"c{k}": (
            sum(1 for i in range(2_000) if i % 7 == k),
            sum(i for i in range(2_000) if i % 7 == k),
        )
        for k in range(7)
    }
