"""The Prometheus endpoint: ``FeatureRuntime(metrics_port=...)``, with prometheus-client.

It serves the last :class:`~runtime.RuntimeMetrics` snapshot: a task of the runtime takes one
every ``metrics_interval`` seconds and hands it to a collector, which turns it into metric
families when a scrape comes. The collector only reads that immutable snapshot; it never
touches an actor. Each runtime has a registry of its own, so two runtimes in one process do not
clash. ``docs/metrics.md`` has the table of families.

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

import gzip
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc
import anyio.to_thread

from actors import get_logger

from .metrics import RuntimeMetrics

__all__ = ["MetricsServer", "families", "import_prometheus"]

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
        self._collector = _Collector()
        self.registry = self._prometheus.CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
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

    def update(self, snapshot: RuntimeMetrics) -> None:
        """Serve ``snapshot`` from now on."""
        self._collector.snapshot = snapshot

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
