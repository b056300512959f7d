"""Joins and enrichment in worker processes give the same results as in process: for workers
in {0, 1, 2, 3} times shards in {1, 4, 7}, on random out-of-order streams of two streams over
many keys, with a join of the two (its records, and a feature of its records), lookups in a
real SQLite file (rows found, and missing keys given the default), keyed aggregates and a
sliding window over an enriched field: identical ``get`` values, and per key the identical
stream of updates of every group, of join records and of enriched events.

The twelve runtimes are started once for the module and every example ingests keys of its
own (a prefix per example): a key's results depend on its own events alone (the dimension
rows are the same for every example)."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack, closing
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Join,
    Last,
    Lookup,
    Mean,
    Sliding,
    SqliteSource,
    Sum,
)

SETTINGS = [(workers, shards) for workers in (0, 1, 2, 3) for shards in (1, 4, 7)]
MERCHANTS = 12  # m0..m9 in the table; m10 and m11 missing: the default


def _feature_set(path: str) -> FeatureSet:
    return FeatureSet(
        name="wj",
        key="card",
        time="ts",
        max_out_of_orderness=200,
        streams=["tx", "clicks"],
        sources=[SqliteSource(name="merchants", path=path, table="merchants", key="merchant_id")],
        lookups=[
            Lookup(
                name="m",
                field="merchant_id",
                source="merchants",
                stream="tx",
                default={"risk": -1.0, "cat": "none"},
            )
        ],
        joins=[Join(name="tc", left="tx", right="clicks", before=100, after=400, how="left")],
        features=[
            Count(name="n", stream="tx"),
            Sum(name="spent", field="amount", stream="tx"),
            Mean(name="risk", field="m.risk", stream="tx"),
            Last(name="cat", field="m.cat", stream="tx"),
            Sum(name="w_risk", field="m.risk", stream="tx", window=Sliding(size=500)),
            Count(name="clicks", stream="clicks"),
            Count(name="w_clicks", stream="clicks", window=Sliding(size=700)),
            Count(name="matched", stream="tc"),
        ],
    )


events = st.lists(
    st.tuples(
        st.sampled_from(["tx", "tx", "clicks"]),
        st.integers(0, 30),
        st.integers(1_000_000, 1_003_000),
        st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False)),
        st.integers(0, MERCHANTS - 1),
    ),
    min_size=1,
    max_size=150,
)


@pytest.fixture(scope="module")
def runtimes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BlockingPortal, list[Any]]]:
    path = tmp_path_factory.mktemp("dim") / "merchants.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE merchants (merchant_id TEXT PRIMARY KEY, risk REAL, cat TEXT)")
        db.executemany(
            "INSERT INTO merchants VALUES (?, ?, ?)",
            [(f"m{i}", i / 10, "bet" if i % 3 == 0 else "shop") for i in range(10)],
        )
        db.commit()
    fs = _feature_set(str(path))
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        started = []
        for workers, shards in SETTINGS:
            rt = FeatureRuntime(fs, shards=shards, workers=workers, batch_size=16)
            stack.enter_context(portal.wrap_async_context_manager(rt))
            started.append(
                (
                    rt,
                    rt.updates(buffer=1_000_000),
                    rt.join_records(buffer=1_000_000),
                    rt.enriched_events(buffer=1_000_000),
                )
            )
        yield portal, started


_examples = itertools.count()


async def _read(subscription: Any) -> list[Any]:
    items = []
    iterator = aiter(subscription)
    for _ in range(subscription.statistics().depth):
        items.append(await anext(iterator))
    return items


async def _results(outputs: Any, payloads: list[Any], streams: list[str], keys: list[Any]) -> Any:
    rt, updates, records, enriched = outputs
    await rt.ingest_many(payloads, stream=streams)
    await rt.flush()
    by_group: dict[tuple[Any, str], list[Any]] = {}
    for update in await _read(updates):
        by_group.setdefault((update.key, update.group), []).append(
            (update.event_time, update.values, update.errors, update.kind)
        )
    by_join: dict[Any, list[Any]] = {}
    for record in await _read(records):
        by_join.setdefault(record.key, []).append(record.record)
    by_key: dict[Any, list[Any]] = {}
    for item in await _read(enriched):
        event = item.event
        by_key.setdefault(item.key, []).append(
            (item.event_time, event["amount"], event["enrichment"], event["m.risk"])
        )
    vectors = await rt.get_many(keys)
    values = {key: (v.values, v.last_event_time) for key, v in vectors.items()}
    return values, by_group, by_join, by_key


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=events, as_bytes=st.booleans())
def test_joins_and_lookups_give_identical_results_for_every_workers_and_shards(
    runtimes: tuple[BlockingPortal, list[Any]],
    stream: list[tuple[str, int, int, Any, int]],
    as_bytes: bool,
) -> None:
    portal, started = runtimes
    prefix = f"e{next(_examples)}-"
    dicts: list[dict[str, Any]] = []
    names: list[str] = []
    for name, card, ts, amount, merchant in stream:
        event: dict[str, Any] = {"card": f"{prefix}{card}", "ts": ts}
        if name == "tx":
            event.update(amount=amount, merchant_id=f"m{merchant}")
        dicts.append(event)
        names.append(name)
    payloads: list[Any] = [msgspec.json.encode(e) for e in dicts] if as_bytes else dicts
    keys = sorted({e["card"] for e in dicts})
    reference = None
    for outputs, setting in zip(started, SETTINGS, strict=True):
        got = portal.call(_results, outputs, payloads, names, keys)
        if reference is None:
            reference = got
            tx = names.count("tx")
            assert sum(len(v) for v in got[3].values()) == tx  # each tx event enriched once
            continue
        assert got[0] == reference[0], f"get values differ at workers, shards = {setting}"
        assert got[1] == reference[1], f"updates differ at workers, shards = {setting}"
        assert got[2] == reference[2], f"join records differ at workers, shards = {setting}"
        assert got[3] == reference[3], f"enriched events differ at workers, shards = {setting}"
