"""Prometheus: the runtime's collector (``rt.prometheus_collector()``) and its endpoint
(``FeatureRuntime(metrics_port=...)``), with prometheus-client.

:class:`FeatureCollector` serves the last :class:`Snapshot`: a :class:`~runtime.RuntimeMetrics`
and the histograms, cumulative since the start, that each refresh fills with the samples the
shard actors took since the previous one. A task of the runtime refreshes it every
``metrics_interval`` seconds on the event loop; ``collect()``, synchronous and called from
any thread, only reads that immutable snapshot, never an actor. The application registers the
collector in its own registry; the endpoint has a registry of its own with the same collector,
so two runtimes in one process do not clash. ``docs/metrics.md`` has the table of families.

The HTTP server is a small HTTP/1.1 server on the runtime's own event loop (anyio), in tasks
the runtime owns, so nothing of it outlives the runtime. It is bounded: at most
:data:`MAX_CONNECTIONS` connections are open at once (a new one pushes out the oldest that is
still waiting for its request; if none is waiting, it is answered ``503`` and closed), a
request must arrive within :data:`TIMEOUT` seconds and its head be at most
:data:`MAX_REQUEST_BYTES`, and each connection serves one request (``Connection: close``). The
text is rendered in a worker thread, one scrape at a time, so a scrape of a large runtime does
not stall the event loop.
"""

from __future__ import annotations

import bisect
import gzip
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from actors import get_logger

from .._messages import LATENCY_BUCKETS, ShardStats
from .metrics import RuntimeMetrics

__all__ = [
    "FeatureCollector",
    "Histograms",
    "MetricsServer",
    "Snapshot",
    "families",
    "import_prometheus",
    "render",
]

_log = get_logger("featurist.metrics")

#: connections open at once; a new one pushes out the oldest still waiting for its request
MAX_CONNECTIONS = 64
#: seconds a connection has to send its request, and then to take the response
TIMEOUT = 10.0
#: the most bytes of a request's head (request line and headers)
MAX_REQUEST_BYTES = 8192


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


# -- histograms --------------------------------------------------------------------------------
#: bucket bounds (seconds) of ``featurist_ingest_latency_seconds``: ingest-to-update of a batch
#: (the shard actors count into them)
INGEST_BUCKETS: tuple[float, ...] = LATENCY_BUCKETS
#: bucket bounds (seconds) of ``featurist_feature_compute_seconds``: time per event
COMPUTE_BUCKETS: tuple[float, ...] = (
    1e-8,
    2.5e-8,
    5e-8,
    1e-7,
    2.5e-7,
    5e-7,
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    1e-4,
    1e-3,
)


class HistogramValue(msgspec.Struct, frozen=True):
    """One series of a histogram: cumulative bucket counts (one per bound, then ``+Inf``) and
    the sum of the observations."""

    labels: tuple[str, ...]
    buckets: tuple[int, ...]
    total: float


class _Histogram:
    """Counts observations into buckets, from the samples the shard actors keep."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], counts: Sequence[int], total: float) -> None:
        """Add counts per bucket (one per bound, then ``+Inf``; not cumulative) and their
        sum."""
        mine = self._counts.get(labels)
        if mine is None:
            mine = self._counts[labels] = [0] * (len(self.bounds) + 1)
            self._sums[labels] = 0.0
        for i, n in enumerate(counts):
            mine[i] += n
        self._sums[labels] += total

    def observe(self, labels: tuple[str, ...], value: float, weight: int) -> None:
        counts = self._counts.get(labels)
        if counts is None:
            counts = self._counts[labels] = [0] * (len(self.bounds) + 1)
            self._sums[labels] = 0.0
        counts[bisect.bisect_left(self.bounds, value)] += weight
        self._sums[labels] += value * weight

    def values(self) -> tuple[HistogramValue, ...]:
        """An immutable copy, cumulative."""
        out = []
        for labels, counts in self._counts.items():
            running = 0
            cumulative = []
            for n in counts:
                running += n
                cumulative.append(running)
            out.append(HistogramValue(labels, tuple(cumulative), self._sums[labels]))
        return tuple(out)


def _newest(samples: Sequence[tuple[Any, int]], weight: int) -> Sequence[tuple[Any, int]]:
    """The newest samples whose weights make up ``weight`` (all of them if they weigh less)."""
    taken = 0
    start = len(samples)
    while start > 0 and taken < weight:
        start -= 1
        taken += samples[start][1]
    return samples[start:]


class Histograms:
    """The runtime's histograms, cumulative since it started. Ingest latency: each shard
    actor counts every batch into the buckets, and each refresh adds what its counts grew by
    since the previous one (none is missed). Compute time: each refresh observes the sampled
    batches the shard actors took since the previous one; a shard keeps its last 256 only, so
    a refresh more than that many sampled batches behind misses the older ones. Internal."""

    def __init__(self) -> None:
        self.ingest = _Histogram(INGEST_BUCKETS)
        self.compute = _Histogram(COMPUTE_BUCKETS)
        #: per (group, shard): batches and sampled events already observed
        self._seen: dict[tuple[str, int], tuple[int, int]] = {}
        #: per (group, shard): the latency counts and sum already added
        self._latency: dict[tuple[str, int], tuple[tuple[int, ...], float]] = {}

    def observe(
        self, group: str, names: Sequence[str], types: Sequence[str], stats: Sequence[ShardStats]
    ) -> None:
        """The new samples of a group's shards."""
        for shard, s in enumerate(stats):
            batches, sampled = self._seen.get((group, shard), (0, 0))
            if s.batches < batches or s.sampled_events < sampled:  # restarted: count afresh
                batches, sampled = 0, 0
            self._seen[group, shard] = (s.batches, s.sampled_events)
            counts = s.latency_buckets
            if counts:
                before, total = self._latency.get((group, shard), ((), 0.0))
                if len(before) != len(counts) or any(
                    now < then for now, then in zip(counts, before, strict=True)
                ):
                    before, total = (0,) * len(counts), 0.0  # a new actor: count afresh
                self._latency[group, shard] = (counts, s.latency_sum)
                self.ingest.add(
                    (group,),
                    [now - then for now, then in zip(counts, before, strict=True)],
                    s.latency_sum - total,
                )
            if s.sampled_events > sampled:
                for ns, n in _newest(
                    [(ns, n) for n, ns in s.feature_samples], s.sampled_events - sampled
                ):
                    if not n:
                        continue
                    for name, type_name, spent in zip(names, types, ns, strict=False):
                        if type_name not in ("ratio", "derived"):
                            self.compute.observe((name, group), spent / n / 1e9, n)


class Snapshot(msgspec.Struct, frozen=True):
    """What a scrape reads: a metrics snapshot and the histograms at that time."""

    metrics: RuntimeMetrics
    ingest: tuple[HistogramValue, ...]
    compute: tuple[HistogramValue, ...]


def _histogram_family(
    name: str,
    doc: str,
    labels: Sequence[str],
    bounds: Sequence[float],
    values: Sequence[HistogramValue],
) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    family = HistogramMetricFamily(name, doc, labels=list(labels))
    edges = [*(repr(float(b)) for b in bounds), "+Inf"]
    for value in values:
        family.add_metric(
            list(value.labels), list(zip(edges, value.buckets, strict=True)), value.total
        )
    return family


def families(snapshot: Snapshot) -> list[Any]:
    """The Prometheus metric families of a snapshot (see ``docs/metrics.md`` for the table):
    counters since the start, gauges, histograms; times in seconds, sizes in bytes; moments
    as timestamps (seconds since the epoch), not ages."""
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

    m = snapshot.metrics
    gauge(
        "metrics_snapshot_timestamp_seconds", "When the snapshot served was taken (Unix time)"
    ).add_metric([], m.taken_at)
    gauge("start_time_seconds", "When the runtime started (Unix time)").add_metric(
        [], m.taken_at - m.uptime_s
    )
    for name, count, doc in (
        ("events_ingested", m.events_ingested, "Events accepted by ingest"),
        ("events_rejected", m.events_rejected, "Events rejected as invalid (dead letters)"),
        ("events_processed", m.events_processed, "Events applied by the feature groups"),
    ):
        counter(name, doc).add_metric([], count)
    out.append(
        _histogram_family(
            "featurist_ingest_latency_seconds",
            "Ingest-to-update latency of the group's batches, per event",
            ["group"],
            INGEST_BUCKETS,
            snapshot.ingest,
        )
    )

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
    feature_errors = counter("feature_errors", "Events on which the feature failed", labels)
    for f in m.features.values():
        values = [f.feature, f.group]
        events.add_metric(values, f.events)
        feature_errors.add_metric(values, f.errors)
    out.append(
        _histogram_family(
            "featurist_feature_compute_seconds",
            "Computation time per event of the sampled batches (one in sample_every)",
            labels,
            COMPUTE_BUCKETS,
            snapshot.compute,
        )
    )

    keys = gauge("group_keys", "Keys with state in the group", ["group"])
    state = gauge("group_state_bytes", "Estimated bytes of the group's state", ["group"])
    watermark = gauge(
        "group_watermark_timestamp_seconds",
        "The group's watermark: event time (Unix time) below which it holds no more events",
        ["group"],
    )
    late = counter("late_events", "Late events of windowed groups", ["group", "outcome"])
    for g in m.groups.values():
        keys.add_metric([g.group], g.keys)
        state.add_metric([g.group], g.state_bytes)
        if g.watermark is not None:
            watermark.add_metric([g.group], g.watermark / 1000)
        if g.kind == "windowed":
            for outcome, n in (
                ("dropped", g.late_dropped),
                ("side_output", g.late_side_output),
                ("applied", g.late_applied),
            ):
                late.add_metric([g.group, outcome], n)

    buffered = gauge("join_buffered_events", "Events buffered by the join now", ["join", "side"])
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

    hits = counter("source_cache_hits", "Lookups the cache answered", ["source"])
    misses = counter("source_cache_misses", "Lookups that waited for a fetch", ["source"])
    size = gauge("source_cache_entries", "Entries in the cache", ["source"])
    calls = counter("source_calls", "Calls of the source", ["source"])
    failures = counter("source_failures", "Calls that failed after retries", ["source"])
    breaker = gauge("source_breaker_state", "1 for the breaker's state", ["source", "state"])
    for name, s in m.sources.items():
        hits.add_metric([name], s.cache_hits)
        misses.add_metric([name], s.cache_misses)
        size.add_metric([name], s.cache_size)
        calls.add_metric([name], s.calls)
        failures.add_metric([name], s.failures)
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
        for segment, label in zip(d.segments, _segment_labels(d.segments), strict=True):
            values = [name, d.feature, label]
            if segment.score is not None:
                score.add_metric(values, segment.score)
            if segment.threshold is not None:
                threshold.add_metric(values, segment.threshold)
            drifting.add_metric(values, 1.0 if segment.drifting else 0.0)
            alerts.add_metric(values, segment.alerts)

    c = m.checkpoint
    if c is not None:
        gauge("last_checkpoint_sequence", "Number of the last checkpoint").add_metric(
            [], c.sequence
        )
        gauge(
            "last_checkpoint_timestamp_seconds", "When the last checkpoint was taken (Unix time)"
        ).add_metric([], m.taken_at - c.age_s)
        gauge("last_checkpoint_pause_seconds", "Ingest paused by the last checkpoint").add_metric(
            [], c.pause_ms / 1000
        )
        gauge("last_checkpoint_duration_seconds", "Time the last checkpoint took").add_metric(
            [], c.duration_ms / 1000
        )
        gauge("last_checkpoint_size_bytes", "Size of the last checkpoint").add_metric(
            [], c.size_bytes
        )
    letters = counter("dead_letters", "Dead letters recorded", ["reason"])
    for reason, n in sorted(m.dead_letters.items()):
        letters.add_metric([reason], n)
    return [family for family in out if family.samples]


class FeatureCollector:
    """The runtime's metrics as a prometheus-client collector, from
    ``await rt.prometheus_collector()``: register it in the application's registry
    (``prometheus_client.REGISTRY.register(collector)``) and the application's own
    ``/metrics`` serves featurist's families beside its own.

    :meth:`collect` is synchronous and may run in any thread (prometheus-client's servers
    call it from theirs): it only reads the last :class:`Snapshot`, one immutable object that
    :meth:`refresh` replaces. A task of the runtime refreshes it every ``metrics_interval``
    seconds, on the runtime's event loop; nothing a scrape does touches an actor or the loop.
    Put one runtime's collector in a registry: two would give the same series.
    """

    def __init__(
        self, gather: Callable[[Histograms], Awaitable[RuntimeMetrics]] | None = None
    ) -> None:
        #: takes a snapshot, observing the new samples into the histograms; None: the
        #: snapshots come from :meth:`MetricsServer.update` (with workers, without histograms)
        self._gather = gather
        self._histograms = Histograms()
        self._lock: anyio.Lock | None = None
        #: the last snapshot, None before the first refresh
        self.snapshot: Snapshot | None = None

    async def refresh(self) -> Snapshot:
        """Take a snapshot now (on the runtime's event loop) and serve it from now on."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # a sample is observed once: refreshes one at a time
            if self._gather is None:
                if self.snapshot is None:
                    raise RuntimeError("no snapshot yet")
                return self.snapshot
            histograms = self._histograms
            metrics = await self._gather(histograms)
            snapshot = Snapshot(metrics, histograms.ingest.values(), histograms.compute.values())
            self.snapshot = snapshot
            return snapshot

    def collect(self) -> Iterator[Any]:
        snapshot = self.snapshot  # one read: a refresh may replace it meanwhile
        if snapshot is not None:
            yield from families(snapshot)


def render(collector: FeatureCollector, accept: str = "") -> tuple[str, bytes]:
    """``(content type, text)`` of the collector's last snapshot (OpenMetrics if ``accept``
    asks for it), through a registry of its own.

    Raises:
        ImportError: prometheus-client is not installed.
    """
    prometheus = import_prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    encoder, content_type = prometheus.exposition.choose_encoder(accept)
    body: bytes = encoder(registry)
    return content_type, body


class _Request:
    """What the endpoint reads of a request."""

    __slots__ = ("headers", "method", "path", "query")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers


class _BadRequest(Exception):
    """A request the endpoint cannot read: answered with ``status`` and closed."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _parse(head: bytes) -> _Request:
    """The request line and headers of a request's head (without its blank line)."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _BadRequest("400 Bad Request") from None
    if not version.startswith("HTTP/1."):
        raise _BadRequest("505 HTTP Version Not Supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise _BadRequest("400 Bad Request")
        headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    return _Request(method, url.path, url.query, headers)


def _response(status: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{name}: {value}" for name, value in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class MetricsServer:
    """The Prometheus endpoint of one runtime: a registry of its own with one collector, and
    a bounded HTTP server in a task of the runtime's task group, stopped by :meth:`stop`.
    Internal.

    Args:
        host: the address to listen on.
        port: the port (0: a free one, then in :attr:`port`).
        max_connections: connections open at once (default :data:`MAX_CONNECTIONS`).
        timeout: seconds a connection has to send its request, and then to take the response
            (default :data:`TIMEOUT`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self._prometheus = import_prometheus()
        self.host = host
        self.port = port
        self.max_connections = MAX_CONNECTIONS if max_connections is None else max_connections
        self.timeout = TIMEOUT if timeout is None else timeout
        self.registry = self._prometheus.CollectorRegistry(auto_describe=False)
        #: the collector served
        self.collector: FeatureCollector | None = None
        #: one scrape rendered at a time, in a worker thread
        self._render_limiter = anyio.CapacityLimiter(1)
        self._scope: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        #: connections open now
        self.connections = 0
        #: the connections still waiting for their request, oldest first: their cancel scopes
        self._waiting: dict[int, anyio.CancelScope] = {}
        #: connections pushed out or refused at the cap, and those that timed out
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    @property
    def serving(self) -> bool:
        """Between :meth:`start` and :meth:`stop`."""
        return self._scope is not None

    def attach(self, collector: FeatureCollector) -> None:
        """Serve ``collector``'s snapshots."""
        self.collector = collector
        self.registry.register(collector)

    def update(self, metrics: RuntimeMetrics) -> None:
        """Serve ``metrics`` from now on, without histograms (the workers' merged metrics:
        their shard samples stay in the workers)."""
        if self.collector is None:
            self.attach(FeatureCollector())
        assert self.collector is not None
        self.collector.snapshot = Snapshot(metrics, (), ())

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Listen on ``host:port`` (port 0: a free port, then in :attr:`port`) and serve in a
        task of ``task_group`` until :meth:`stop`.

        Raises:
            OSError: the address cannot be listened on (the port is taken, say).
        """
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.host, local_port=self.port, reuse_port=False
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics_port: cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        scope, stopped = self._scope, self._stopped = anyio.CancelScope(), anyio.Event()
        task_group.start_soon(
            self._serve, listener, scope, stopped, name=f"featurist-metrics-{self.port}"
        )

    async def stop(self) -> None:
        """Stop serving, close every connection and the socket (the port is free once this
        returns)."""
        scope, stopped = self._scope, self._stopped
        self._scope = self._stopped = None
        if scope is None or stopped is None:
            return
        scope.cancel()
        with anyio.CancelScope(shield=True):
            await stopped.wait()

    async def _serve(
        self,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        scope: anyio.CancelScope,
        stopped: anyio.Event,
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as connections:
                    await listener.serve(self._connection, connections)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            stopped.set()

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        """One connection: read a request within the timeout, answer it, close."""
        self.connections += 1
        try:
            async with stream:
                if self.connections > self.max_connections and not self._make_room():
                    self.refused += 1
                    await self._send(stream, _response("503 Service Unavailable", [], b""))
                    return
                try:
                    request = await self._read(stream)
                except _BadRequest as bad:
                    await self._send(stream, _response(bad.status, [], b""))
                    return
                if request is not None:
                    await self._send(stream, await self._answer(request))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            self.connections -= 1

    def _make_room(self) -> bool:
        """At the cap: push out the oldest connection still waiting for its request, if any."""
        for key, scope in self._waiting.items():
            del self._waiting[key]
            scope.cancel()
            self.evicted += 1
            return True
        return False

    async def _read(self, stream: anyio.abc.SocketStream) -> _Request | None:
        """The request, or None if it did not come in time, the connection was pushed out or
        closed."""
        scope = anyio.CancelScope(deadline=anyio.current_time() + self.timeout)
        key = id(scope)
        self._waiting[key] = scope
        head = b""
        try:
            with scope:
                while b"\r\n\r\n" not in head:
                    if len(head) > MAX_REQUEST_BYTES:
                        raise _BadRequest("431 Request Header Fields Too Large")
                    try:
                        head += await stream.receive(4096)
                    except anyio.EndOfStream:
                        return None
        finally:
            self._waiting.pop(key, None)
        if scope.cancelled_caught:
            if not scope.cancel_called or scope.deadline <= anyio.current_time():
                self.timed_out += 1
            return None
        end = head.index(b"\r\n\r\n")
        if end > MAX_REQUEST_BYTES:
            raise _BadRequest("431 Request Header Fields Too Large")
        return _parse(head[:end])

    async def _send(self, stream: anyio.abc.SocketStream, data: bytes) -> None:
        """Send within the timeout: a client that does not read is dropped."""
        with anyio.move_on_after(self.timeout):
            await stream.send(data)

    async def _answer(self, request: _Request) -> bytes:
        """The response to a request, as prometheus-client's own server answers it."""
        allow = [("Allow", "OPTIONS,GET,HEAD")]
        if request.method == "OPTIONS":
            return _response("200 OK", allow, b"")
        if request.method not in ("GET", "HEAD"):
            body = f"# HTTP 405 Method Not Allowed: {request.method}; use GET\n".encode()
            return _response("405 Method Not Allowed", allow, body)
        if request.path == "/favicon.ico":
            return _response("200 OK", [], b"")
        headers, body = await anyio.to_thread.run_sync(
            self._render, request, limiter=self._render_limiter
        )
        return _response("200 OK", headers, b"" if request.method == "HEAD" else body)

    def _render(self, request: _Request) -> tuple[list[tuple[str, str]], bytes]:
        """The exposition text (OpenMetrics if the client asks for it), in a worker thread."""
        exposition = self._prometheus.exposition
        encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
        registry = self.registry
        names = parse_qs(request.query).get("name[]")
        if names:
            registry = registry.restricted_registry(names)
        body: bytes = encoder(registry)
        headers = [("Content-Type", content_type)]
        if exposition.gzip_accepted(request.headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return headers, body


def _segment_labels(segments: Sequence[Any]) -> list[str]:
    """The ``segment`` label of each segment: a str value as it is, "" for none, any other
    value with its type before it (``int:7``). Keys 7 and "7" are two segments (the runtime
    keeps them apart): labelled by their text alone they were two series of one name and
    labels, which a scrape refuses whole (OpenMetrics) or merges (text). Always so, not only
    once a colliding segment appears: a series must not change its labels mid-life."""
    return [
        ""
        if s.segment is None
        else s.segment
        if isinstance(s.segment, str)
        else f"{type(s.segment).__name__}:{s.segment}"
        for s in segments
    ]
