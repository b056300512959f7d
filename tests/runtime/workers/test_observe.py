"""Observing and replaying a runtime with workers: ``late_events()`` forwarded from the
workers, ``recent_errors()`` of every worker, ``metrics()`` merged over the workers (and the
Prometheus endpoint serving the merged view), and ``replay`` through the front, its clock
passed on to the workers: each gives what an in-process runtime gives."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Last,
    Sliding,
    Sum,
    Tumbling,
    UnknownFeature,
)

T0 = 1_700_000_000_000


def _late_set() -> FeatureSet:
    return FeatureSet(
        name="l",
        key="card",
        time="ts",
        max_out_of_orderness=100,
        late_policy="side_output",
        features=[
            Count(name="n"),
            Sum(name="t_sum", field="amount", window=Tumbling(size=1000)),
        ],
    )


def _late_events() -> list[dict[str, Any]]:
    events = []
    for i in range(400):
        ts = T0 + i * 50
        if i % 9 == 0 and i:
            ts -= 2_000  # far behind the key's watermark: late
        events.append({"card": f"c{i % 8}", "ts": ts, "amount": i})
    return events


async def _late_run(**options: Any) -> tuple[Any, ...]:
    async with FeatureRuntime(_late_set(), batch_size=16, **options) as rt:
        late = rt.late_events(buffer=100_000)
        for start in range(0, 400, 50):
            await rt.ingest_many(_late_events()[start : start + 50])
        await rt.flush()
        found: dict[Any, list[Any]] = {}
        while late.statistics().depth:
            event = await anext(aiter(late))
            found.setdefault(event.key, []).append((event.event_time, event.watermark, event.group))
        stats = await rt.statistics()
        return found, stats.windows.late_side_output if stats.windows else None


async def test_late_events_come_from_the_workers_as_in_process() -> None:
    want = await _late_run()
    assert want[0] and want[1] == sum(len(v) for v in want[0].values())
    assert await _late_run(workers=2, shards=2) == want


FAILING = FeatureSet(
    name="f",
    key="card",
    time="ts",
    features=[Count(name="n"), Sum(name="total", field="amount"), Last(name="last", field="x")],
)


async def test_recent_errors_and_metrics_are_merged_over_the_workers() -> None:
    events = [{"card": f"c{i % 6}", "ts": T0 + i, "amount": i, "x": i} for i in range(120)]
    bad = [{"card": f"c{i}", "ts": T0 + 200 + i, "amount": "lots", "x": 1} for i in range(6)]
    results = []
    for options in ({}, {"workers": 2, "shards": 2}):
        async with FeatureRuntime(FAILING, **options) as rt:
            await rt.ingest_many(events)
            await rt.ingest_many(bad)
            assert not await rt.ingest({"card": "c1"})  # no time: refused at the front
            await rt.flush()
            errors = await rt.recent_errors()
            metrics = await rt.metrics()
            results.append((errors, metrics))
    (want_errors, want), (got_errors, got) = results
    assert [(e.key, e.event_time, e.feature) for e in got_errors] == [
        (e.key, e.event_time, e.feature) for e in want_errors
    ]
    assert len(got_errors) == 6
    assert (got.events_ingested, got.events_rejected) == (want.events_ingested, 1)
    assert got.events_processed == want.events_processed == 126
    assert got.features["total"].events == want.features["total"].events
    assert got.features["total"].errors == want.features["total"].errors == 6
    assert got.groups["g0"].keys == want.groups["g0"].keys == 6
    assert got.dead_letters == want.dead_letters
    # every worker's actors, named by their worker
    assert {a.actor.split("/")[0] for a in got.actors} == {"w0", "w1"}
    assert got.uptime_s > 0


async def test_the_metrics_endpoint_serves_the_merged_metrics() -> None:
    pytest.importorskip("prometheus_client")
    events = [{"card": f"c{i % 5}", "ts": T0 + i, "amount": 1, "x": 1} for i in range(50)]
    async with FeatureRuntime(FAILING, workers=2, metrics_port=0, metrics_interval=0.05) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        assert rt.metrics_address is not None
        host, port = rt.metrics_address
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(10):
                while True:
                    text = (await client.get(f"http://{host}:{port}/metrics")).text
                    if "featurist_events_processed_total 50.0" in text:
                        break
                    await anyio.sleep(0.02)
    assert rt.metrics_address is None


IDLE = FeatureSet(
    name="r",
    key="card",
    time="ts",
    idle_timeout="2s",
    state_ttl="5s",
    max_out_of_orderness=0,
    features=[
        Count(name="n"),
        Sum(name="w_sum", field="amount", window=Sliding(size="1s")),
    ],
)


async def _replay(**options: Any) -> tuple[Any, ...]:
    # two bursts with a quiet gap: idle time moves the quiet keys' windows on in the gap,
    # and their state expires in it (state_ttl), as the history's clock says
    history = [
        {"card": f"c{i % 4}", "ts": T0 + i * 10 + (10_000 if i >= 40 else 0), "amount": i}
        for i in range(80)
    ]
    async with FeatureRuntime(IDLE, batch_size=8, **options) as rt:
        updates = rt.updates(buffer=100_000)
        result = await rt.replay(history, until=(T0 + 12_000) / 1000)
        vectors = await rt.get_many([f"c{k}" for k in range(4)])
        await updates.aclose()
        found: dict[Any, list[Any]] = {}
        async for update in updates:
            found.setdefault((update.key, update.group), []).append(
                (update.event_time, update.values, update.kind)
            )
        return (
            (result.accepted, result.rejected, result.steps),
            {key: (v.values, v.last_event_time) for key, v in vectors.items()},
            found,
        )


async def test_a_replay_through_the_front_gives_what_it_gives_in_process() -> None:
    want = await _replay()
    assert want[0][2] > 1  # the clock moved in steps (idle time)
    assert want[1]["c0"][0]["n"] == 10  # the keys expired in the gap: the second burst's
    assert await _replay(workers=2, shards=1) == want


async def test_describe_merges_the_workers_measured_cost() -> None:
    events = [{"card": f"c{i % 9}", "ts": T0 + i, "amount": i, "x": i} for i in range(300)]
    described = []
    for options in ({}, {"workers": 2, "shards": 2}):
        async with FeatureRuntime(FAILING, sample_every=1, **options) as rt:
            await rt.ingest_many(events)
            await rt.flush()
            described.append(await rt.describe("total"))
            with pytest.raises(UnknownFeature):
                await rt.describe("nope")
    want, got = described
    assert (got.name, got.type, got.group, got.inputs) == (
        want.name,
        want.type,
        want.group,
        want.inputs,
    )
    assert got.estimated_cost == want.estimated_cost  # for all the events and keys
    assert got.measured_cost is not None and want.measured_cost is not None
    assert got.measured_cost.events == want.measured_cost.events == 300
    assert got.measured_cost.mean_latency_us is not None
