"""Shards in worker processes give the same results as in-process shards: for workers in
{0, 1, 2, 3} times shards in {1, 4, 7}, on random out-of-order streams over many keys, keyed
aggregates, sliding windows and a tumbling window (whose closes are rows of another kind)
give identical ``get`` values and, per key and group, the identical stream of updates (each
with its kind and window).

The twelve runtimes are started once for the module (process starts cost) and every example
ingests keys of its own (a prefix per example): a key's results depend on its own events
alone."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings

from runtime import Count, FeatureRuntime, FeatureSet, Last, Max, Mean, Sliding, Sum, Tumbling

FEATURE_SET = FeatureSet(
    name="w",
    key="card",
    time="ts",
    max_out_of_orderness=200,
    features=[
        Sum(name="total", field="amount"),
        Count(name="n"),
        Mean(name="avg", field="amount"),
        Max(name="top", field="amount"),
        Last(name="last", field="amount"),
        Sum(name="w_sum", field="amount", window=Sliding(size=500)),
        Mean(name="w_avg", field="amount", window=Sliding(size=500)),
        Count(name="w_n", window=Sliding(size=500)),
        # a tumbling window's closes travel as rows of another kind (the batch's extras)
        Sum(name="t_sum", field="amount", window=Tumbling(size=700)),
    ],
)
SETTINGS = [(workers, shards) for workers in (0, 1, 2, 3) for shards in (1, 4, 7)]

events = st.lists(
    st.fixed_dictionaries(
        {
            "card": st.integers(0, 40),
            "ts": st.integers(1_000_000, 1_003_000),
            "amount": st.one_of(
                st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False), st.none()
            ),
        }
    ),
    min_size=1,
    max_size=200,
)


@pytest.fixture(scope="module")
def runtimes() -> Iterator[tuple[BlockingPortal, list[Any]]]:
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        started = []
        for workers, shards in SETTINGS:
            rt = FeatureRuntime(FEATURE_SET, shards=shards, workers=workers, batch_size=16)
            stack.enter_context(portal.wrap_async_context_manager(rt))
            started.append((rt, rt.updates(buffer=1_000_000)))
        yield portal, started


_examples = itertools.count()


async def _results(rt: Any, subscription: Any, payloads: list[Any], keys: list[Any]) -> Any:
    await rt.ingest_many(payloads)
    await rt.flush()
    updates: dict[tuple[Any, str], list[Any]] = {}
    depth = subscription.statistics().depth
    iterator = aiter(subscription)
    for _ in range(depth):
        update = await anext(iterator)
        updates.setdefault((update.key, update.group), []).append(
            (update.event_time, update.values, update.errors, update.kind, update.window)
        )
    vectors = await rt.get_many(keys)
    values = {key: (v.values, v.last_event_time) for key, v in vectors.items()}
    return values, updates


def own_keys(
    stream: list[dict[str, Any]], prefix: str, as_bytes: bool
) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """An example's events with keys of its own (``prefix``), as given to ``ingest_many``
    (JSON bytes or dicts), and its keys."""
    stream = [{**event, "card": f"{prefix}{event['card']}"} for event in stream]
    payloads: list[Any] = [msgspec.json.encode(e) for e in stream] if as_bytes else stream
    return stream, payloads, sorted({e["card"] for e in stream})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=events, as_bytes=st.booleans())
def test_workers_and_shards_give_identical_values_and_updates(
    runtimes: tuple[BlockingPortal, list[Any]], stream: list[dict[str, Any]], as_bytes: bool
) -> None:
    portal, started = runtimes
    stream, payloads, keys = own_keys(stream, f"e{next(_examples)}-", as_bytes)
    reference = None
    for (rt, subscription), setting in zip(started, SETTINGS, strict=True):
        got = portal.call(_results, rt, subscription, payloads, keys)
        if reference is None:
            reference = got
            # the keyed group updates on every event (the windows not on a late one)
            assert sum(len(u) for (_, g), u in got[1].items() if g == "g0") == len(stream)
            continue
        assert got[0] == reference[0], f"get values differ at workers, shards = {setting}"
        assert got[1] == reference[1], f"updates differ at workers, shards = {setting}"


def test_window_closes_travel_back_from_the_workers_alike(
    runtimes: tuple[BlockingPortal, list[Any]],
) -> None:
    portal, started = runtimes
    stream = [
        {"card": "closes", "ts": ts, "amount": amount}
        for ts, amount in ((1_000_100, 1), (1_000_200, 2), (1_000_900, 4), (1_001_500, 8))
    ]
    results = [portal.call(_results, rt, sub, stream, ["closes"]) for rt, sub in started]
    kinds = [u[3] for updates in results[0][1].values() for u in updates]
    assert kinds.count("close") == 2  # the windows [999_600, 1_000_300) and up to 1_001_000
    assert all(got == results[0] for got in results[1:])
