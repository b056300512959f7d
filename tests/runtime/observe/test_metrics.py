"""``rt.metrics()``, ``rt.mailboxes()`` and the Prometheus endpoint.

The counts of ``rt.metrics()`` are checked against what the workload holds (events per feature,
errors, a join's buffers, a source's hits, late events, restarts after an injected crash), the
percentiles against the nearest rank over the expanded samples; the endpoint over HTTP, parsed
with prometheus-client's own parser.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from actors import ConfigError
from runtime import (
    ActorMailbox,
    Count,
    CustomSource,
    DriftMonitor,
    FeatureRuntime,
    FeatureSet,
    Join,
    Last,
    Lookup,
    PageHinkley,
    Ratio,
    RuntimeMetrics,
    Sum,
    Tumbling,
    Where,
)
from runtime._observe.metrics import weighted_quantile
from runtime._shard import GroupShard

FEATURES = FeatureSet(
    name="m",
    key="k",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="s", field="x"),
        Ratio(name="mean_x", numerator="s", denominator="n"),
        Sum(name="s_1s", field="x", window=Tumbling(size="1s")),
    ],
)


def _events(n: int, keys: int = 5) -> list[dict[str, Any]]:
    return [{"k": f"k{i % keys}", "ts": 1_000 + i, "x": i % 3} for i in range(n)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 3_000),
            st.one_of(st.integers(-5, 5), st.sampled_from(["bad", None])),
        ),
        max_size=60,
    ),
    shards=st.sampled_from([1, 3]),
    batch_size=st.sampled_from([1, 7, 512]),
)
async def test_each_feature_counts_the_events_and_its_errors(
    events: list[tuple[str, int, Any]], shards: int, batch_size: int
) -> None:
    async with FeatureRuntime(FEATURES, shards=shards, batch_size=batch_size, sample_every=1) as rt:
        await rt.ingest_many([{"k": k, "ts": t, "x": x} for k, t, x in events])
        await rt.flush()
        metrics = await rt.metrics()
    # the oracle: every event reaches every feature; a string fails the sums (None is
    # skipped), except in windows an event below its key's watermark (its newest time so far,
    # with no out-of-orderness allowed), which is dropped as late before any feature sees it
    newest: dict[str, int] = {}
    late = bad_on_time = 0
    for k, t, x in events:
        if t < newest.get(k, t):
            late += 1
        elif isinstance(x, str):
            bad_on_time += 1
        newest[k] = max(newest.get(k, t), t)
    bad = sum(1 for _, _, x in events if isinstance(x, str))
    for name in ("n", "s", "mean_x", "s_1s"):
        assert metrics.features[name].events == len(events)
    assert metrics.features["n"].errors == 0
    assert metrics.features["s"].errors == bad
    assert metrics.features["s_1s"].errors == bad_on_time
    assert metrics.groups["w1"].late_dropped == metrics.late_dropped == late
    assert metrics.events_ingested == metrics.events_processed == len(events)
    assert sum(g.events for g in metrics.groups.values()) == 2 * len(events)
    assert sum(a.mailbox_depth for a in metrics.actors) == 0


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.tuples(st.floats(0, 1e6), st.integers(0, 20)), max_size=30),
    q=st.sampled_from([0.0, 0.01, 0.5, 0.95, 0.99, 1.0]),
)
def test_weighted_quantile_is_the_nearest_rank_of_the_expanded_samples(
    samples: list[tuple[float, int]], q: float
) -> None:
    samples.sort()
    expanded = [value for value, weight in samples for _ in range(weight)]
    if not expanded:
        assert weighted_quantile(samples, q) is None
        return
    rank = max(1, -(-q * len(expanded) // 1))  # ceil(q * n), at least the first
    assert weighted_quantile(samples, q) == expanded[int(rank) - 1]


async def test_latency_percentiles_are_ordered_and_absent_for_a_ratio() -> None:
    async with FeatureRuntime(FEATURES, shards=2, batch_size=16, sample_every=1) as rt:
        await rt.ingest_many(_events(2_000))
        await rt.flush()
        metrics = await rt.metrics()
    for name in ("n", "s", "s_1s"):
        f = metrics.features[name]
        assert f.latency_p50_us is not None and f.latency_p95_us is not None
        assert f.latency_p99_us is not None
        assert 0 < f.latency_p50_us <= f.latency_p95_us <= f.latency_p99_us
        assert f.latency_sampled_events == 2_000  # every batch sampled
    ratio = metrics.features["mean_x"]
    assert (ratio.latency_p50_us, ratio.latency_p99_us, ratio.latency_sampled_events) == (
        None,
        None,
        0,
    )
    assert metrics.latency_p50_ms is not None and metrics.latency_p99_ms is not None


async def test_metrics_encode_and_list_every_actor() -> None:
    import msgspec

    async with FeatureRuntime(FEATURES, shards=3) as rt:
        await rt.ingest_many(_events(100))
        await rt.flush()
        metrics = await rt.metrics()
        boxes = rt.mailboxes()
    assert [(a.kind, a.group, a.shard) for a in metrics.actors] == [
        ("features", group, shard) for group in ("g0", "w1") for shard in range(3)
    ]
    assert [a.actor for a in metrics.actors] == [b.actor for b in boxes]
    assert all(isinstance(b, ActorMailbox) and b.capacity == 16 for b in boxes)
    assert all(a.errors == 0 and a.restarts == 0 for a in metrics.actors)
    again = msgspec.json.decode(msgspec.json.encode(metrics), type=RuntimeMetrics)
    assert again == metrics


async def test_the_watermark_lag_is_the_clock_minus_the_watermark() -> None:
    fs = FeatureSet(
        name="m",
        key="k",
        time="ts",
        max_out_of_orderness="500ms",
        features=[Count(name="n"), Sum(name="s", field="x", window=Tumbling(size="1s"))],
    )
    async with FeatureRuntime(fs, shards=2, clock=lambda: 10.0) as rt:
        await rt.ingest_many(
            [
                {"k": "a", "ts": 5_000, "x": 1},
                {"k": "b", "ts": 3_000, "x": 1},
                {"k": "a", "ts": 4_400, "x": 4},  # below a's watermark (4.5 s): late, dropped
            ]
        )
        await rt.flush()
        metrics = await rt.metrics()
    # the groups' watermark: the lowest of their shards' (b's shard, or both keys' one)
    watermark = metrics.groups["g0"].watermark
    assert watermark in (2_500, 4_500)
    assert metrics.groups["g0"].watermark_lag_ms == 10_000 - watermark
    windows = metrics.groups["w1"]
    assert (windows.kind, windows.late_dropped, windows.late_applied) == ("windowed", 1, 0)
    assert (metrics.late_dropped, metrics.late_side_output) == (1, 0)
    assert metrics.watermark_lag_ms == max(g.watermark_lag_ms or 0 for g in metrics.groups.values())


async def test_a_join_shows_its_buffered_events_and_records() -> None:
    fs = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["l", "r"],
        joins=[Join(name="lr", left="l", right="r", before=1_000, after=1_000)],
        features=[Count(name="lefts")],
    )
    async with FeatureRuntime(fs, shards=2) as rt:
        await rt.ingest_many([{"ad": "a", "ts": 100 + i} for i in range(5)], stream="l")
        await rt.ingest_many([{"ad": "a", "ts": 104 + i} for i in range(3)], stream="r")
        await rt.ingest_many([{"ad": "b", "ts": 100}], stream="r")
        await rt.flush()
        metrics = await rt.metrics()
        statistics = await rt.statistics()
    join = metrics.joins["lr"]
    assert (join.buffered_left, join.buffered_right, join.keys) == (5, 4, 2)
    assert (join.records, join.evicted, join.late_dropped) == (15, 0, 0)
    assert join == statistics.joins["lr"]
    assert [a.group for a in metrics.actors if a.kind == "join"] == ["lr", "lr"]


class _Rows:
    async def get_many(self, keys: list[Any]) -> dict[Any, Any]:
        return {key: {"tier": "gold"} for key in keys if key != "nobody"}


async def test_a_source_shows_its_hit_ratio() -> None:
    fs = FeatureSet(
        name="e",
        key="card",
        time="ts",
        sources=[CustomSource(name="cards")],
        lookups=[Lookup(name="card", field="card", source="cards")],
        features=[Count(name="gold", where=Where(field="card.tier", op="==", value="gold"))],
    )
    async with FeatureRuntime(fs, shards=2, sources={"cards": _Rows()}) as rt:
        await rt.ingest({"card": "a", "ts": 1})
        await rt.flush()  # the one miss: fetched, then cached
        await rt.ingest_many([{"card": "a", "ts": 2 + i} for i in range(9)])
        await rt.flush()
        metrics = await rt.metrics()
        statistics = await rt.statistics()
    source = metrics.sources["cards"]
    assert (source.cache_hits, source.cache_misses, source.hit_ratio) == (9, 1, 0.9)
    assert (source.calls, source.breaker_state) == (1, "closed")
    assert source == statistics.enrichment["cards"]
    assert [(a.kind, a.group) for a in metrics.actors if a.kind == "enricher"] == [
        ("enricher", "events"),
        ("enricher", "events"),
    ]


async def test_a_crashed_actor_shows_its_restart_and_its_failed_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    original = GroupShard._stats

    def failing(self: GroupShard) -> Any:
        calls.append(1)
        if len(calls) <= 2:  # the ask and its retry: the actor restarts
            raise RuntimeError("injected crash")
        return original(self)

    async with FeatureRuntime(FEATURES, shards=1, max_restarts=5) as rt:
        await rt.ingest_many(_events(10))
        await rt.flush()
        monkeypatch.setattr(GroupShard, "_stats", failing)
        with pytest.raises(RuntimeError, match="injected crash"):
            await rt.metrics()
        metrics = await rt.metrics()
    by_group = {a.group: a for a in metrics.actors}
    assert (by_group["g0"].restarts, by_group["g0"].errors) == (1, 1)
    assert (by_group["w1"].restarts, by_group["w1"].errors) == (0, 0)
    assert metrics.features["n"].events == 10  # the restarted actor kept its state
    assert metrics.dead_letters == {"failed": 1}


async def test_rejected_events_and_checkpoints_are_counted(tmp_path: Path) -> None:
    async with FeatureRuntime(FEATURES, checkpoints=str(tmp_path)) as rt:
        assert (await rt.metrics()).checkpoint is None
        await rt.ingest_many([*_events(4), {"ts": 1}, "not an event"])
        info = await rt.checkpoint()
        metrics = await rt.metrics()
    assert (metrics.events_ingested, metrics.events_rejected) == (4, 2)
    assert metrics.dead_letters == {"rejected": 2}
    checkpoint = metrics.checkpoint
    assert checkpoint is not None
    assert (checkpoint.sequence, checkpoint.size_bytes, checkpoint.keys) == (
        info.sequence,
        info.size_bytes,
        info.keys,
    )
    assert checkpoint.age_s >= 0 and checkpoint.pause_ms == info.pause_ms


async def test_drift_monitors_show_their_status() -> None:
    fs = FeatureSet(
        name="s",
        key="sensor",
        time="ts",
        features=[Last(name="reading", field="value")],
    )
    events = [{"sensor": "s1", "ts": i, "value": float(i % 10)} for i in range(200)]
    async with FeatureRuntime(fs, shards=2) as rt:
        await rt.monitor_drift(
            DriftMonitor(name="ph", feature="reading", detector=PageHinkley(threshold=25))
        )
        await rt.ingest_many(events)
        await rt.flush()
        metrics = await rt.metrics()
        status = await rt.drift_status()
    assert metrics.drift == status and metrics.drift["ph"].values == 200
    drift = [a for a in metrics.actors if a.kind == "drift"]
    assert [(a.group, a.shard) for a in drift] == [("ph", None)]


async def test_mailboxes_answer_while_an_actor_is_stuck() -> None:
    # an unread "block" subscription holds the shard actor in its publish: its mailbox fills,
    # then ingest waits; mailboxes() reads the counters without asking the stuck actor
    fs = FeatureSet(name="m", key="k", time="ts", features=[Count(name="n")])
    async with FeatureRuntime(fs, shards=1, batch_size=1, mailbox_capacity=2) as rt:
        subscription = rt.updates(buffer=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.ingest_many, _events(20))
            with anyio.fail_after(10):
                while True:
                    (box,) = rt.mailboxes()
                    if box.depth == 2 and box.senders_waiting == 1:
                        break
                    await anyio.sleep(0.001)
            assert (box.kind, box.group, box.shard, box.capacity) == ("features", "g0", 0, 2)
            await subscription.aclose()
        await rt.flush()
        assert rt.mailboxes()[0].depth == 0


# -- the Prometheus endpoint -----------------------------------------------------------------------
def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape_until(rt: FeatureRuntime, name: str, value: float) -> dict[Any, float]:
    """Scrape the runtime's endpoint until the sample ``name`` (no labels) shows ``value``."""
    assert rt.metrics_address is not None
    host, port = rt.metrics_address
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(10):
            while True:
                response = await client.get(f"http://{host}:{port}/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                samples = _parse(response.text)
                if samples.get((name, ())) == value:
                    return samples
                await anyio.sleep(0.01)


async def test_the_endpoint_serves_the_metrics_in_the_text_format() -> None:
    async with FeatureRuntime(
        FEATURES, shards=2, metrics_port=0, metrics_interval=0.01, sample_every=1
    ) as rt:
        await rt.ingest_many([*_events(300), {"k": "a", "ts": 5, "x": "bad"}, {"ts": 1}])
        await rt.flush()
        samples = await _scrape_until(rt, "featurist_events_processed_total", 301)
    assert samples[("featurist_events_ingested_total", ())] == 301
    assert samples[("featurist_events_rejected_total", ())] == 1
    assert samples[("featurist_feature_events_total", (("feature", "n"), ("group", "g0")))] == 301
    assert samples[("featurist_feature_errors_total", (("feature", "s"), ("group", "g0")))] == 1
    # computation time per event: a histogram (one sampled batch in sample_every=1: all)
    labels = (("feature", "n"), ("group", "g0"))
    count = samples[("featurist_feature_compute_seconds_count", labels)]
    assert count == samples[("featurist_feature_compute_seconds_bucket", (*labels, ("le", "+Inf")))]
    assert count == 301 and 0 < samples[("featurist_feature_compute_seconds_sum", labels)] < 1
    depth = samples[
        (
            "featurist_actor_mailbox_depth",
            (
                ("actor", "featurist/features/g0-shard-1"),
                ("group", "g0"),
                ("kind", "features"),
                ("shard", "1"),
            ),
        )
    ]
    assert depth == 0
    assert samples[("featurist_dead_letters_total", (("reason", "rejected"),))] == 1
    assert samples[("featurist_late_events_total", (("group", "w1"), ("outcome", "dropped")))] == 0


async def test_two_runtimes_in_one_process_serve_their_own_metrics() -> None:
    async with (
        FeatureRuntime(FEATURES, metrics_port=0, metrics_interval=0.01) as one,
        FeatureRuntime(FEATURES, metrics_port=0, metrics_interval=0.01) as two,
    ):
        assert one.metrics_address != two.metrics_address
        await one.ingest_many(_events(10))
        await two.ingest_many(_events(20))
        await one.flush()
        await two.flush()
        await _scrape_until(one, "featurist_events_processed_total", 10)
        await _scrape_until(two, "featurist_events_processed_total", 20)


async def test_shutdown_stops_the_server_and_frees_the_port() -> None:
    async with FeatureRuntime(FEATURES, metrics_port=0) as rt:
        assert rt.metrics_address is not None
        host, port = rt.metrics_address
        await _scrape_until(rt, "featurist_events_processed_total", 0)
    assert rt.metrics_address is None
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{host}:{port}/metrics")
    # the port is free: another runtime serves on it (a closed connection of the scrape may
    # linger in TIME_WAIT, which servers, binding with SO_REUSEADDR, do not mind)
    async with FeatureRuntime(FEATURES, metrics_port=port) as again:
        assert again.metrics_address == (host, port)


async def test_a_taken_port_fails_the_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"metrics_port: cannot listen on 127.0.0.1:{port}"):
            async with FeatureRuntime(FEATURES, metrics_port=port):
                pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metrics_port": 70_000}, "metrics_port must be an int between 0 and 65535, got 70000"),
        ({"metrics_port": "9000"}, "metrics_port must be an int between 0 and 65535, got '9000'"),
        ({"metrics_port": 0, "metrics_host": ""}, "metrics_host must be a host name or address"),
        ({"metrics_interval": 0}, "metrics_interval must be > 0 seconds, got 0"),
    ],
)
def test_metrics_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureRuntime(FEATURES, **options)


def test_the_endpoint_without_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'featurist\[metrics\]'"):
        FeatureRuntime(FEATURES, metrics_port=0)
    FeatureRuntime(FEATURES)  # without an endpoint, prometheus-client is not needed
