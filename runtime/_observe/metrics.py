"""Metrics: what ``rt.metrics()`` and ``rt.mailboxes()`` give, and the Prometheus endpoint.

``rt.mailboxes()`` reads every actor's mailbox counters without asking the actor, so it answers
at once even when the mailboxes are full. ``rt.metrics()`` asks every actor for its counters
and samples (as ``rt.statistics()`` does, so under load it waits behind full mailboxes) and
builds one :class:`RuntimeMetrics`, a frozen snapshot.

The Prometheus endpoint (``FeatureRuntime(metrics_port=...)``, needs prometheus-client) serves
the last snapshot: a task of the runtime takes one every ``metrics_interval`` seconds and hands
it to a collector, which turns it into metric families when a scrape comes, in the HTTP
server's thread. The collector only reads that immutable snapshot; it never touches an actor.
Each runtime has a registry of its own, so two runtimes in one process do not clash.

Per-feature computation latency comes from the sampled batches of each shard actor (one batch
in ``sample_every`` is timed per feature): each keeps its last 256 samples, ``(events,
nanoseconds per feature)``, and the quantiles are taken over the samples of all shards, each
weighing its batch's events. A sample is a batch's mean per event, so the quantiles describe
batches, not single events.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
import anyio.to_thread
import msgspec

from .._checkpoints.store import CheckpointInfo
from .._joins.shard import JoinShardStats
from .._messages import ShardStats
from .._results import EnrichmentStatistics, JoinStatistics
from .._spec.drift import DriftStatus

__all__ = [
    "ActorMailbox",
    "ActorMetrics",
    "CheckpointMetrics",
    "FeatureMetrics",
    "GroupMetrics",
    "MetricsServer",
    "RuntimeMetrics",
    "actor_metrics",
    "checkpoint_metrics",
    "families",
    "feature_metrics",
    "group_watermark",
    "import_prometheus",
    "join_totals",
    "weighted_quantile",
]


class ActorMailbox(msgspec.Struct, frozen=True, kw_only=True):
    """One actor's mailbox, from ``rt.mailboxes()``: read without asking the actor."""

    #: the actor's name in the actor system
    actor: str
    #: ``"features"`` (a feature group's shard), ``"join"``, ``"enricher"`` or ``"drift"``
    kind: str
    #: the feature group, join, stream (for an enricher) or drift monitor it runs
    group: str
    #: its shard; None for a drift monitor, which reads the updates of every shard
    shard: int | None
    #: batches (or other messages) waiting now, and the most the mailbox holds before its
    #: senders wait
    depth: int
    capacity: int
    #: tasks waiting for room to send (``ingest`` when the runtime is full)
    senders_waiting: int
    #: messages handled since the actor was spawned
    processed: int
    #: messages its full mailbox refused (0: the runtime's mailboxes make senders wait)
    dropped: int


class ActorMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One actor's part of :class:`RuntimeMetrics`."""

    #: as in :class:`ActorMailbox`
    actor: str
    kind: str
    group: str
    shard: int | None
    mailbox_depth: int
    mailbox_capacity: int
    senders_waiting: int
    processed: int
    #: messages it failed on, in dead letters with reason ``failed`` (poison events, a batch
    #: or an ask whose handler raised)
    errors: int
    #: times the actor was restarted after a failure (None where the actor does not say)
    restarts: int | None


class FeatureMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's part of :class:`RuntimeMetrics`."""

    feature: str
    #: the feature's type (``"count"``, ``"sum"``...) and the feature group computing it
    type: str
    group: str
    #: events its group applied, over all shards
    events: int
    #: ``events`` over the time between the group's first and last batch (None before two
    #: batches apart in time)
    events_per_second: float | None
    #: computation time per event in microseconds, over the sampled batches (see the module's
    #: notes): the median, 95th and 99th percentiles; None before a sampled batch, and for a
    #: ratio (computed when read, not per event). The features of a window group share one
    #: pass per event: each is charged an equal part of the group's time.
    latency_p50_us: float | None
    latency_p95_us: float | None
    latency_p99_us: float | None
    #: events in the samples behind the percentiles
    latency_sampled_events: int
    #: events on which it failed (its error reported, the other features went on)
    errors: int


class GroupMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One feature group's part of :class:`RuntimeMetrics`: its keys, time and lateness."""

    group: str
    #: ``"keyed"`` (aggregates) or ``"windowed"``
    kind: str
    #: the stream it reads
    stream: str
    #: events applied, keys with state, estimated bytes of state (over all shards)
    events: int
    keys: int
    state_bytes: int
    #: the lowest watermark of its shards that have seen events (ms; a shard's is its newest
    #: event time minus ``max_out_of_orderness``), and the runtime's clock now minus it (ms):
    #: how far event time is behind; None before any event
    watermark: int | None
    watermark_lag_ms: float | None
    #: late events (windowed groups): dropped, sent to the side output, applied
    late_dropped: int
    late_side_output: int
    late_applied: int


class CheckpointMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """The last checkpoint, in :class:`RuntimeMetrics`."""

    #: its number in the directory
    sequence: int
    #: seconds since it was taken
    age_s: float
    #: how long ingest waited while the state was captured, and the whole operation (ms)
    pause_ms: float
    duration_ms: float
    #: the file's size, and the keys it holds
    size_bytes: int
    keys: int


class RuntimeMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the runtime's metrics, from ``await rt.metrics()``.

    The dicts are keyed by name (feature, group, join, source, monitor); ``actors`` is in
    start order. It encodes to JSON or MessagePack as it is.
    """

    #: wall-clock time it was taken (seconds since the epoch), and seconds since the start
    taken_at: float
    uptime_s: float
    #: events accepted by ``ingest``, rejected as invalid (in dead letters), applied (as in
    #: ``rt.statistics()``)
    events_ingested: int
    events_rejected: int
    events_processed: int
    #: ingest-to-update latency over recent batches (ms)
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    #: the largest watermark lag of the groups (ms), None before any event
    watermark_lag_ms: float | None
    #: late events of windowed groups and joins: dropped, sent to the side output, applied
    #: (windows with ``late_policy="update"``)
    late_dropped: int
    late_side_output: int
    late_applied: int
    #: every actor: mailbox, messages, errors, restarts
    actors: tuple[ActorMetrics, ...]
    #: every feature: events, throughput, latency percentiles, errors
    features: dict[str, FeatureMetrics]
    #: every feature group: keys, state, watermark, lateness
    groups: dict[str, GroupMetrics]
    #: every join: buffered events per side, keys, records, evictions, late events
    joins: dict[str, JoinStatistics]
    #: every dimension source: cache hit ratio, calls, latency, circuit breaker
    sources: dict[str, EnrichmentStatistics]
    #: every drift monitor, with each segment's score (``rt.drift_status()``)
    drift: dict[str, DriftStatus]
    #: the last checkpoint taken by this runtime, or None
    checkpoint: CheckpointMetrics | None
    #: dead letters recorded, by reason (``"rejected"``, ``"failed"``, ``"undeliverable"``,
    #: ``"dropped"``)
    dead_letters: dict[str, int]


# -- building ----------------------------------------------------------------------------------
def weighted_quantile(samples: Sequence[tuple[float, int]], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of ``(value, weight)`` samples sorted by value (None
    when they weigh nothing)."""
    total = sum(weight for _, weight in samples)
    if not total:
        return None
    threshold = q * total
    running = 0
    for value, weight in samples:
        running += weight
        if weight and running >= threshold:
            return value
    return samples[-1][0]


def feature_metrics(
    name: str,
    type_name: str,
    group: str,
    index: int,
    stats: Sequence[ShardStats],
    *,
    timed: bool,
) -> FeatureMetrics:
    """Feature ``index`` of a group from its shards' stats; ``timed`` is False for a feature
    computed when read (a ratio), which has no latency."""
    events = sum(s.events for s in stats)
    starts = [s.first_event_at for s in stats if s.first_event_at is not None]
    ends = [s.last_event_at for s in stats if s.last_event_at is not None]
    span = max(ends) - min(starts) if starts and ends else 0.0
    samples = sorted(
        (ns[index] / n / 1000, n) for s in stats for n, ns in s.feature_samples if n and timed
    )
    p50, p95, p99 = (weighted_quantile(samples, q) for q in (0.50, 0.95, 0.99))
    return FeatureMetrics(
        feature=name,
        type=type_name,
        group=group,
        events=events,
        events_per_second=events / span if span > 0 else None,
        latency_p50_us=p50,
        latency_p95_us=p95,
        latency_p99_us=p99,
        latency_sampled_events=sum(n for _, n in samples),
        errors=sum(s.errors.get(name, 0) for s in stats),
    )


def group_watermark(stats: Sequence[ShardStats], lateness: int) -> int | None:
    """The lowest watermark of the shards that have seen events."""
    highs = [s.max_time for s in stats if s.max_time is not None]
    return min(highs) - lateness if highs else None


def join_totals(shards: Iterable[JoinShardStats]) -> JoinStatistics:
    """A join's statistics summed over its shards (the largest key: the largest of any)."""
    total: dict[str, int] = {}
    largest = 0
    for stats in shards:
        for name, n in vars(stats.counters).items():
            total[name] = total.get(name, 0) + n
        for name in ("keys", "buffered_left", "buffered_right", "state_bytes"):
            total[name] = total.get(name, 0) + getattr(stats, name)
        largest = max(largest, stats.largest_key)
    return JoinStatistics(largest_key=largest, **total)


def checkpoint_metrics(info: CheckpointInfo | None, now: float) -> CheckpointMetrics | None:
    if info is None:
        return None
    return CheckpointMetrics(
        sequence=info.sequence,
        age_s=max(now - info.created_at, 0.0),
        pause_ms=info.pause_ms,
        duration_ms=info.duration_ms,
        size_bytes=info.size_bytes,
        keys=info.keys,
    )


def actor_metrics(
    mailboxes: Iterable[ActorMailbox],
    failed: Mapping[str, int],
    restarts: Mapping[str, int],
) -> tuple[ActorMetrics, ...]:
    """Each mailbox with its actor's failed messages and restarts, by actor name (None for
    an actor whose restarts are not given)."""
    return tuple(
        ActorMetrics(
            actor=box.actor,
            kind=box.kind,
            group=box.group,
            shard=box.shard,
            mailbox_depth=box.depth,
            mailbox_capacity=box.capacity,
            senders_waiting=box.senders_waiting,
            processed=box.processed,
            errors=failed.get(box.actor, 0),
            restarts=restarts.get(box.actor),
        )
        for box in mailboxes
    )


# -- Prometheus --------------------------------------------------------------------------------
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
