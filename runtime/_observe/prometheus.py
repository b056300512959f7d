"""The Prometheus endpoint: ``FeatureRuntime(metrics_port=...)``, with prometheus-client.

It serves the last :class:`~runtime.RuntimeMetrics` snapshot: a task of the runtime takes one
every ``metrics_interval`` seconds and hands it to a collector, which turns it into metric
families when a scrape comes, in the HTTP server's thread. The collector only reads that
immutable snapshot; it never touches an actor. Each runtime has a registry of its own, so two
runtimes in one process do not clash. ``docs/metrics.md`` has the table of families.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
import anyio.to_thread

from .metrics import RuntimeMetrics

__all__ = ["MetricsServer", "families", "import_prometheus"]


def import_prometheus() -> Any:
    """The ``prometheus_client`` module.

    Raises:
        ImportError: prometheus-client is not installed.
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "metrics_port: the Prometheus endpoint needs prometheus-client; install it with "
            "the 'metrics' extra: pip install 'featurist[metrics]'"
        ) from exc
    return prometheus_client


def _shard_label(shard: int | None) -> str:
    return "" if shard is None else str(shard)


def families(snapshot: RuntimeMetrics, now: float) -> list[Any]:
    """The Prometheus metric families of a snapshot (see ``docs/metrics.md`` for the table).
    Latencies are in seconds, as Prometheus's conventions want."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out: list[Any] = []

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
        family = GaugeMetricFamily(f"featurist_{name}", doc, labels=list(labels))
        out.append(family)
        return family

    def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
        family = CounterMetricFamily(f"featurist_{name}", doc, labels=list(labels))
        out.append(family)
        return family

    m = snapshot
    gauge("metrics_age_seconds", "Seconds since this snapshot was taken").add_metric(
        [], max(now - m.taken_at, 0.0)
    )
    gauge("uptime_seconds", "Seconds the runtime had run at the snapshot").add_metric(
        [], m.uptime_s
    )
    for name, count, doc in (
        ("events_ingested", m.events_ingested, "Events accepted by ingest"),
        ("events_rejected", m.events_rejected, "Events rejected as invalid (dead letters)"),
        ("events_processed", m.events_processed, "Events applied by the feature groups"),
    ):
        counter(name, doc).add_metric([], count)
    latency = gauge(
        "ingest_latency_seconds", "Ingest-to-update latency of recent batches", ["quantile"]
    )
    for q, ms in (("0.5", m.latency_p50_ms), ("0.99", m.latency_p99_ms)):
        if ms is not None:
            latency.add_metric([q], ms / 1000)

    labels = ["actor", "kind", "group", "shard"]
    depth = gauge("actor_mailbox_depth", "Messages waiting in the actor's mailbox", labels)
    capacity = gauge("actor_mailbox_capacity", "Messages the mailbox holds", labels)
    waiting = gauge("actor_senders_waiting", "Tasks waiting for room in the mailbox", labels)
    processed = counter("actor_messages_processed", "Messages the actor handled", labels)
    errors = counter("actor_errors", "Messages the actor failed on (dead letters)", labels)
    restarts = counter("actor_restarts", "Restarts of the actor after a failure", labels)
    for actor in m.actors:
        values = [actor.actor, actor.kind, actor.group, _shard_label(actor.shard)]
        depth.add_metric(values, actor.mailbox_depth)
        capacity.add_metric(values, actor.mailbox_capacity)
        waiting.add_metric(values, actor.senders_waiting)
        processed.add_metric(values, actor.processed)
        errors.add_metric(values, actor.errors)
        if actor.restarts is not None:
            restarts.add_metric(values, actor.restarts)

    labels = ["feature", "group"]
    events = counter("feature_events", "Events the feature's group applied", labels)
    rate = gauge("feature_events_per_second", "Events per second since the first", labels)
    feature_errors = counter("feature_errors", "Events on which the feature failed", labels)
    feature_latency = gauge(
        "feature_latency_seconds",
        "Computation time per event over sampled batches",
        [*labels, "quantile"],
    )
    for f in m.features.values():
        values = [f.feature, f.group]
        events.add_metric(values, f.events)
        feature_errors.add_metric(values, f.errors)
        if f.events_per_second is not None:
            rate.add_metric(values, f.events_per_second)
        for q, us in (
            ("0.5", f.latency_p50_us),
            ("0.95", f.latency_p95_us),
            ("0.99", f.latency_p99_us),
        ):
            if us is not None:
                feature_latency.add_metric([*values, q], us / 1e6)

    keys = gauge("group_keys", "Keys with state in the group", ["group"])
    state = gauge("group_state_bytes", "Estimated bytes of the group's state", ["group"])
    lag = gauge(
        "watermark_lag_seconds", "The runtime's clock minus the group's watermark", ["group"]
    )
    late = counter("late_events", "Late events of windowed groups", ["group", "outcome"])
    for g in m.groups.values():
        keys.add_metric([g.group], g.keys)
        state.add_metric([g.group], g.state_bytes)
        if g.watermark_lag_ms is not None:
            lag.add_metric([g.group], g.watermark_lag_ms / 1000)
        if g.kind == "windowed":
            for outcome, n in (
                ("dropped", g.late_dropped),
                ("side_output", g.late_side_output),
                ("applied", g.late_applied),
            ):
                late.add_metric([g.group, outcome], n)

    buffered = gauge("join_buffered", "Events buffered by the join now", ["join", "side"])
    join_keys = gauge("join_keys", "Keys with join state", ["join"])
    join_bytes = gauge("join_state_bytes", "Estimated bytes of the join's buffers", ["join"])
    records = counter("join_records", "Records the join made (matched pairs)", ["join"])
    unmatched = counter("join_unmatched", "Unmatched rows of outer joins", ["join"])
    evicted = counter("join_evicted", "Buffered events evicted by a cap", ["join"])
    join_late = counter("join_late_events", "Late events of the join", ["join", "outcome"])
    for name, j in m.joins.items():
        buffered.add_metric([name, "left"], j.buffered_left)
        buffered.add_metric([name, "right"], j.buffered_right)
        join_keys.add_metric([name], j.keys)
        join_bytes.add_metric([name], j.state_bytes)
        records.add_metric([name], j.records)
        unmatched.add_metric([name], j.unmatched)
        evicted.add_metric([name], j.evicted)
        join_late.add_metric([name, "dropped"], j.late_dropped)
        join_late.add_metric([name, "side_output"], j.late_side_output)

    ratio = gauge("source_cache_hit_ratio", "Cache hits over lookups", ["source"])
    hits = counter("source_cache_hits", "Lookups the cache answered", ["source"])
    misses = counter("source_cache_misses", "Lookups that waited for a fetch", ["source"])
    size = gauge("source_cache_size", "Entries in the cache", ["source"])
    calls = counter("source_calls", "Calls of the source", ["source"])
    failures = counter("source_failures", "Calls that failed after retries", ["source"])
    mean = gauge("source_call_mean_seconds", "Mean latency of successful calls", ["source"])
    slowest = gauge("source_call_max_seconds", "Max latency of successful calls", ["source"])
    breaker = gauge("source_breaker_state", "1 for the breaker's state", ["source", "state"])
    for name, s in m.sources.items():
        ratio.add_metric([name], s.hit_ratio)
        hits.add_metric([name], s.cache_hits)
        misses.add_metric([name], s.cache_misses)
        size.add_metric([name], s.cache_size)
        calls.add_metric([name], s.calls)
        failures.add_metric([name], s.failures)
        if s.mean_call_ms is not None:
            mean.add_metric([name], s.mean_call_ms / 1000)
        if s.max_call_ms is not None:
            slowest.add_metric([name], s.max_call_ms / 1000)
        for position in ("closed", "open", "half_open"):
            breaker.add_metric([name, position], 1.0 if s.breaker_state == position else 0.0)

    labels = ["monitor", "feature", "segment"]
    score = gauge("drift_score", "The detector's latest score", labels)
    threshold = gauge("drift_threshold", "The threshold of the score", labels)
    drifting = gauge("drift_drifting", "1 while the detector is beyond its threshold", labels)
    alerts = counter("drift_alerts", "Drift alerts raised", labels)
    dropped = counter("drift_dropped", "Updates a monitor dropped behind", ["monitor"])
    for name, d in m.drift.items():
        dropped.add_metric([name], d.dropped)
        for segment in d.segments:
            values = [name, d.feature, "" if segment.segment is None else str(segment.segment)]
            if segment.score is not None:
                score.add_metric(values, segment.score)
            if segment.threshold is not None:
                threshold.add_metric(values, segment.threshold)
            drifting.add_metric(values, 1.0 if segment.drifting else 0.0)
            alerts.add_metric(values, segment.alerts)

    c = m.checkpoint
    if c is not None:
        gauge("checkpoint_sequence", "Number of the last checkpoint").add_metric([], c.sequence)
        gauge("checkpoint_age_seconds", "Seconds since the last checkpoint").add_metric(
            [], c.age_s + max(now - m.taken_at, 0.0)
        )
        gauge("checkpoint_pause_seconds", "Ingest paused by the last checkpoint").add_metric(
            [], c.pause_ms / 1000
        )
        gauge("checkpoint_size_bytes", "Size of the last checkpoint").add_metric([], c.size_bytes)
    letters = counter("dead_letters", "Dead letters recorded", ["reason"])
    for reason, n in sorted(m.dead_letters.items()):
        letters.add_metric([reason], n)
    return [family for family in out if family.samples]


class _Collector:
    """Hands the last snapshot to the registry; runs in the HTTP server's threads."""

    def __init__(self) -> None:
        self.snapshot: RuntimeMetrics | None = None

    def collect(self) -> Iterator[Any]:
        snapshot = self.snapshot  # one read: the runtime may replace it meanwhile
        if snapshot is not None:
            yield from families(snapshot, time.time())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line on stderr per scrape."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """The Prometheus endpoint of one runtime: a registry of its own with one collector, and
    an HTTP server in a thread of its own, stopped by :meth:`stop`. Internal."""

    def __init__(self, host: str, port: int) -> None:
        prometheus = import_prometheus()
        self.host = host
        self.port = port
        self._collector = _Collector()
        self.registry = prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._app = prometheus.make_wsgi_app(self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def serving(self) -> bool:
        """Between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def update(self, snapshot: RuntimeMetrics) -> None:
        """Serve ``snapshot`` from now on."""
        self._collector.snapshot = snapshot

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: a free port, then in :attr:`port`).

        Raises:
            OSError: the address cannot be listened on (the port is taken, say).
        """
        server_class = _Server6 if ":" in self.host else _Server
        try:
            server = await anyio.to_thread.run_sync(
                lambda: make_server(
                    self.host, self.port, self._app, server_class, handler_class=_QuietHandler
                )
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics_port: cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"featurist-metrics-{self.port}",
            daemon=True,
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop serving and close the socket (the port is free once this returns)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.shutdown)
            server.server_close()
            await anyio.to_thread.run_sync(thread.join)
