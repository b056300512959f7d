"""The Prometheus collector (issue 21, item 2): ``rt.prometheus_collector()`` in an application's
own registry, histograms cumulative and consistent, counters that only grow, timestamps, and
names per the Prometheus conventions (``docs/metrics.md``).

The bounded standalone server (cap, timeouts, no thread per connection) is tested in
``tests/runtime/hostile/test_metrics_endpoint.py``; here it answers many scrapes at once.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from runtime import Count, FeatureRuntime, FeatureSet, RuntimeClosed, Sum, Tumbling

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

FEATURES = FeatureSet(
    name="m",
    key="k",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="s", field="x"),
        Sum(name="s_1s", field="x", window=Tumbling(size="1s")),
    ],
)
DOCS = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


def _events(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"k": f"k{i % 7}", "ts": 1_000 + i, "x": i % 3} for i in range(start, start + n)]


def _families(registry: Any) -> dict[str, Any]:
    text = prometheus_client.generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _check_histograms(families: dict[str, Any]) -> int:
    """Each histogram series: buckets cumulative, ``+Inf`` equal to ``_count``; the number of
    series checked."""
    checked = 0
    for family in families.values():
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": []})
            if sample.name.endswith("_bucket"):
                entry["buckets"].append((float(sample.labels["le"]), sample.value))
            else:
                entry[sample.name.rsplit("_", 1)[1]] = sample.value
        for entry in series.values():
            buckets = sorted(entry["buckets"])
            assert buckets[-1][0] == float("inf")
            counts = [n for _, n in buckets]
            assert counts == sorted(counts), "buckets are cumulative"
            assert counts[-1] == entry["count"]
            assert entry["sum"] >= 0
            checked += 1
    return checked


async def test_the_collector_in_a_fresh_registry_is_cumulative_and_only_grows() -> None:
    async with FeatureRuntime(FEATURES, shards=2, sample_every=1, metrics_interval=60) as rt:
        await rt.ingest_many(_events(500))
        await rt.flush()
        collector = await rt.prometheus_collector()
        assert await rt.prometheus_collector() is collector
        registry = prometheus_client.CollectorRegistry()  # auto_describe: collects on register
        registry.register(collector)
        first = _families(registry)
        await rt.ingest_many(_events(700, start=500))
        await rt.flush()
        await collector.refresh()
        second = _families(registry)
    assert _check_histograms(first) >= 3 and _check_histograms(second) >= 3
    # every event observed once in its group's ingest latency histogram
    for families, total in ((first, 500), (second, 1200)):
        latency = families["featurist_ingest_latency_seconds"]
        counts = {s.labels["group"]: s.value for s in latency.samples if s.name.endswith("_count")}
        assert counts == {"g0": total, "w1": total}
        compute = families["featurist_feature_compute_seconds"]
        counts = {
            s.labels["feature"]: s.value for s in compute.samples if s.name.endswith("_count")
        }
        assert counts == {"n": total, "s": total, "s_1s": total}
    # counters (and histogram series) only grow
    for name, family in first.items():
        if family.type not in ("counter", "histogram"):
            continue
        later = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in second[name].samples}
        for sample in family.samples:
            assert later[sample.name, tuple(sorted(sample.labels.items()))] >= sample.value
    assert second["featurist_events_processed"].samples[0].value == 1200


async def test_the_latency_histogram_counts_every_batch_however_many_between_refreshes() -> None:
    async with FeatureRuntime(FEATURES, shards=1, batch_size=1, metrics_interval=60) as rt:
        collector = await rt.prometheus_collector()
        for start in range(5000):  # 5,000 batches of one event: more than a shard keeps
            await rt.ingest(_events(1, start=start)[0])
        await rt.flush()
        await collector.refresh()
        registry = prometheus_client.CollectorRegistry()
        registry.register(collector)
        latency = _families(registry)["featurist_ingest_latency_seconds"]
    counts = {s.labels["group"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts == {"g0": 5000, "w1": 5000}


async def test_names_follow_the_conventions_and_are_all_documented(tmp_path: Path) -> None:
    async with FeatureRuntime(FEATURES, checkpoints=tmp_path, metrics_interval=60) as rt:
        await rt.ingest_many(_events(50))
        await rt.flush()
        before = time.time()
        await rt.checkpoint()
        collector = await rt.prometheus_collector()
        await collector.refresh()
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(collector)
        text = prometheus_client.generate_latest(registry).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    documented = set(re.findall(r"^\| `(featurist_[a-z_]+)`", DOCS.read_text(), re.MULTILINE))
    for family in families.values():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in documented, name
        assert family.type in ("counter", "gauge", "histogram"), name
        assert not name.endswith(("_per_second", "_age_seconds", "_ms", "_ratio")), name
        for sample in family.samples:
            assert "quantile" not in sample.labels, name
    # moments as timestamps
    checkpoint = families["featurist_last_checkpoint_timestamp_seconds"].samples[0].value
    assert before - 1 <= checkpoint <= time.time()
    start = families["featurist_start_time_seconds"].samples[0].value
    assert start <= checkpoint
    taken = families["featurist_metrics_snapshot_timestamp_seconds"].samples[0].value
    assert checkpoint <= taken <= time.time()
    assert "featurist_last_checkpoint_size_bytes" in families


async def test_a_scrape_from_another_thread_reads_the_snapshot_only() -> None:
    async with FeatureRuntime(FEATURES, metrics_interval=0.01) as rt:
        collector = await rt.prometheus_collector()
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(collector)
        stop = threading.Event()
        errors: list[BaseException] = []

        def scrape() -> None:
            try:
                while not stop.is_set():
                    text = prometheus_client.generate_latest(registry).decode()
                    list(text_string_to_metric_families(text))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=scrape)
        thread.start()
        try:
            for i in range(10):
                await rt.ingest_many(_events(100, start=100 * i))
                await anyio.sleep(0.02)
        finally:
            stop.set()
            await anyio.to_thread.run_sync(thread.join)
        assert not errors
    with pytest.raises(RuntimeClosed):
        await rt.prometheus_collector()


async def test_the_endpoint_answers_many_scrapes_at_once() -> None:
    async with FeatureRuntime(FEATURES, metrics_port=0, metrics_interval=0.05) as rt:
        await rt.ingest_many(_events(100))
        await rt.flush()
        await (await rt.prometheus_collector()).refresh()  # the endpoint's collector
        assert rt.metrics_address is not None
        host, port = rt.metrics_address
        threads_before = threading.active_count()
        results: list[int] = []
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=40)) as client:

            async def scrape() -> None:
                response = await client.get(f"http://{host}:{port}/metrics")
                assert "featurist_ingest_latency_seconds_bucket" in response.text
                results.append(response.status_code)

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for _ in range(40):
                        tg.start_soon(scrape)
        assert results == [200] * 40
        # rendered in at most one worker thread at a time, not a thread per connection
        assert threading.active_count() <= threads_before + 1


async def test_with_workers_the_collector_serves_the_merged_metrics() -> None:
    async with FeatureRuntime(FEATURES, workers=2, metrics_interval=0.05) as rt:
        await rt.ingest_many(_events(60))
        await rt.flush()
        collector = await rt.prometheus_collector()
        registry = prometheus_client.CollectorRegistry()
        registry.register(collector)
        families = _families(registry)
        # and refreshed by the runtime's task, with no call: the later events show
        await rt.ingest_many(_events(40, start=60))
        await rt.flush()
        with anyio.fail_after(5):
            while _families(registry)["featurist_events_processed"].samples[0].value < 100:
                await anyio.sleep(0.02)
    assert families["featurist_events_processed"].samples[0].value == 60
    assert "featurist_ingest_latency_seconds" not in families  # the samples stay in the workers


async def test_drift_segments_whose_text_is_one_are_two_series() -> None:
    """Keys 7 and "7" are two keys, so two drift segments: labelled "int:7" and "7", not two
    series of one name and labels, which an OpenMetrics scrape refuses whole (a non-str
    segment is always labelled with its type: its series keeps its labels whatever comes)."""
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )

    from runtime import DriftMonitor, PageHinkley

    events = [{"k": k, "ts": 1_000 + i, "x": i % 3} for i in range(40) for k in (7, "7")]
    async with FeatureRuntime(FEATURES) as rt:
        await rt.monitor_drift(
            DriftMonitor(name="d", feature="s", detector=PageHinkley(), segment="key")
        )
        await rt.ingest_many(events)
        await rt.flush()
        registry = prometheus_client.CollectorRegistry()
        registry.register(await rt.prometheus_collector())
        text = openmetrics(registry).decode()
    families = {family.name: family for family in parse_openmetrics(text)}
    segments = sorted(s.labels["segment"] for s in families["featurist_drift_alerts"].samples)
    assert segments == ["7", "int:7"]
