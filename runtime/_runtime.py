"""``FeatureRuntime``: the facade a service embeds.

Layout: events are read and validated at ``ingest`` (bad ones go to dead letters), routed by key
to one of ``shards`` buffers, and sent as batches to the shard's actor of each feature group. A
feature group is a set of features compiled together (the initial feature set is one group;
each ``register`` call adds one); each group runs as one actor per shard, under a one-for-one
supervisor. A key's events always go to the same shard in arrival order, so results do not
depend on the shard count or the batch size.

Backpressure: a shard's actors have bounded mailboxes (``mailbox_capacity`` batches); when
they are full, ``ingest`` waits. Partial batches are sent between ``linger`` and 1.5 x ``linger``
seconds after their first event, or at once by ``get`` (so a read sees the caller's own
writes), ``flush`` and shutdown. ``batch_size`` is the threshold at which a shard's buffer is
sent; ``ingest_many`` routes up to ``batch_size`` events before it checks, so a batch holds
fewer than twice ``batch_size`` events.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from itertools import islice
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import msgspec

from actors import (
    ActorRef,
    ActorSystem,
    DeadLetter,
    DeadLetterReason,
    KeyRouter,
    MailboxConfig,
    get_logger,
    restart_always,
)

from ._checkpoints.coordinator import CheckpointCoordinator, Progress
from ._checkpoints.store import (
    CheckpointConfig,
    CheckpointInfo,
)
from ._enrich.shard import EnrichShardStats
from ._exceptions import (
    RuntimeClosed,
    SpecError,
    UnknownFeature,
)
from ._ingest.events import EventReader, PayloadFormat
from ._ingest.router import Ingest
from ._joins.shard import JoinShardStats
from ._messages import (
    GetEnrichStats,
    GetJoinStats,
    GetStats,
    GetWindowStats,
    ShardStats,
)
from ._observe.metrics import (
    ActorMailbox,
    GroupMetrics,
    RuntimeMetrics,
    actor_metrics,
    checkpoint_metrics,
    feature_metrics,
    group_watermark,
    join_totals,
)
from ._observe.prometheus import MetricsServer
from ._options import RuntimeOptions, check_sources
from ._replay.history import ReplayClock, ReplayOptions, ReplayResult, replay_history
from ._results import (
    EnrichedEvent,
    EnrichmentStatistics,
    FeatureDescription,
    FeatureError,
    FeatureUpdate,
    FeatureVector,
    JoinRecord,
    JoinStatistics,
    LateEvent,
    RuntimeStatistics,
    WindowStatistics,
)
from ._spec.cost import CostEstimate, MeasuredCost, estimate_cost
from ._spec.drift import DriftAlert, DriftMonitor, DriftStatus
from ._spec.feature_set import Feature, FeatureSet
from ._topology import Group, Topology
from ._updates import Policy, UpdateHub, UpdateSubscription
from ._windows.shard import WindowStats

__all__ = ["FeatureRuntime", "RuntimeReplayHost"]

_log = get_logger("featurist")


class FeatureRuntime:
    """Computes a feature set over a stream of events, in this process.

    Args:
        feature_set: what to compute (see :class:`FeatureSet`).
        shards: shard actors per feature group (1..key_groups). Shards share one event loop, so
            more shards do not add parallelism; they bound each actor's state and mailbox.
        batch_size: events per batch sent to a shard (>= 1).
        linger: seconds a partial batch may wait before it is sent (> 0).
        mailbox_capacity: batches each shard actor holds before ``ingest`` waits (>= 1).
        key_groups: the fixed number of key groups (the unit of re-sharding).
        payload_format: how ``bytes`` events are decoded: ``"json"`` or ``"msgpack"``.
        sample_every: one batch in this many is timed per feature (>= 1).
        expected_event_rate: events per second used for cost estimates at registration.
        expected_keys: distinct keys used for memory estimates at registration.
        shutdown_timeout: seconds to drain at shutdown before cancelling.
        dead_letters_capacity: dead letters kept (all are counted).
        route_cache_size: keys whose shard is remembered, so routing a known key costs one
            dict lookup instead of a hash (the cache is cleared when full).
        clock: the wall clock (seconds) that idle time and state expiry are measured with;
            tests pass a fake one and call :meth:`flush` to apply it, and a replay of history
            one that follows the replay (``docs/windows.md``, "Replaying history").
        sources: the objects behind the feature set's ``CustomSource`` specs, by name: each
            with ``async get_many(keys) -> dict`` (and optionally ``open`` and ``close``).
        checkpoints: where and how often to checkpoint the state: a directory, or a
            :class:`CheckpointConfig`; None (the default) takes none. The newest checkpoint of
            the directory is restored on start (``docs/operations.md``).
        max_restarts: restarts of a failed actor allowed within ``restart_period`` seconds;
            one more stops the runtime (its calls raise :class:`RuntimeClosed` naming the
            failure).
        restart_period: the sliding window of ``max_restarts``, in seconds.
        metrics_port: serve Prometheus metrics over HTTP on this port (0: a free one, see
            :attr:`metrics_address`); None (the default) serves none. Needs prometheus-client
            (the ``metrics`` extra; without it the constructor raises ``ImportError``). See
            ``docs/metrics.md``.
        metrics_host: the address the metrics endpoint listens on.
        metrics_interval: seconds between two snapshots of the metrics the endpoint serves.

    Example::

        async with FeatureRuntime(feature_set, shards=4) as rt:
            await rt.ingest({"card": "c1", "ts": 1_700_000_000_000, "amount": 12.5})
            vector = await rt.get("c1")
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        *,
        shards: int = 4,
        batch_size: int = 512,
        linger: float = 0.005,
        mailbox_capacity: int = 16,
        key_groups: int = 256,
        payload_format: PayloadFormat = "json",
        sample_every: int = 64,
        expected_event_rate: float = 1000.0,
        expected_keys: int = 10_000,
        shutdown_timeout: float = 30.0,
        dead_letters_capacity: int = 10_000,
        route_cache_size: int = 1 << 20,
        clock: Callable[[], float] = time.time,
        sources: Mapping[str, Any] | None = None,
        checkpoints: CheckpointConfig | str | os.PathLike[str] | None = None,
        max_restarts: int = 3,
        restart_period: float = 60.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_interval: float = 5.0,
    ) -> None:
        if not isinstance(feature_set, FeatureSet):
            raise TypeError(f"feature_set must be a FeatureSet, got {type(feature_set).__name__}")
        custom_sources = check_sources(feature_set, sources)
        #: the options, checked
        self._options = RuntimeOptions(
            shards=shards,
            batch_size=batch_size,
            linger=linger,
            mailbox_capacity=mailbox_capacity,
            key_groups=key_groups,
            payload_format=payload_format,
            sample_every=sample_every,
            expected_event_rate=expected_event_rate,
            expected_keys=expected_keys,
            shutdown_timeout=shutdown_timeout,
            dead_letters_capacity=dead_letters_capacity,
            route_cache_size=route_cache_size,
            max_restarts=max_restarts,
            restart_period=restart_period,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_interval=metrics_interval,
        )
        self.max_restarts = max_restarts
        self.restart_period = float(restart_period)
        self.metrics_interval = float(metrics_interval)
        #: the Prometheus endpoint (made here, so a missing prometheus-client fails early)
        self._metrics_server = (
            None if metrics_port is None else MetricsServer(metrics_host, metrics_port)
        )
        self.checkpoints = CheckpointConfig.of(checkpoints)
        #: the input's position and offset, and the gate a checkpoint closes on ingest
        self._progress = Progress()
        self.shards = shards
        self.batch_size = batch_size
        self.linger = float(linger)
        self.sample_every = sample_every
        self.expected_event_rate = expected_event_rate
        self.expected_keys = expected_keys
        self._mailbox = MailboxConfig(capacity=mailbox_capacity, max_batch_size=8)
        self._router = KeyRouter(shards=shards, key_groups=key_groups, cache_size=route_cache_size)
        self._reader = EventReader.of(feature_set, payload_format=payload_format)
        self._lateness = feature_set.max_out_of_orderness_ms
        self._system = ActorSystem(
            "featurist",
            shutdown_timeout=shutdown_timeout,
            dead_letters_capacity=dead_letters_capacity,
            mailbox=self._mailbox,
            # the "features" supervisor holds the restart budget (max_restarts): when it is
            # exceeded, the runtime stops rather than restart every actor once more
            max_restarts=0,
        )
        self._hub: UpdateHub[FeatureUpdate] = UpdateHub()
        self._late_hub: UpdateHub[LateEvent] = UpdateHub()
        # read through an object that a replay can set to the history's time (``replay``)
        self._clock = ReplayClock(clock)
        self._records_hub: UpdateHub[JoinRecord] = UpdateHub()
        self._enriched_hub: UpdateHub[EnrichedEvent] = UpdateHub()
        # the live list of what the ingest sends batches to, which the topology fills
        targets: list[Any] = []
        self._ingest = Ingest(
            self._reader,
            self._router,
            targets,
            batch_size,
            self._system.dead_letters,
            streams=feature_set.stream_names,
            known_keys=route_cache_size,
        )
        #: the actors: feature groups, joins and enrichers, and the sources they read
        self._topology = Topology(
            feature_set,
            ingest=self._ingest,
            targets=targets,
            shards=shards,
            mailbox=self._mailbox,
            clock=self._clock,
            sample_every=sample_every,
            hub=self._hub,
            late_hub=self._late_hub,
            records_hub=self._records_hub,
            enriched_hub=self._enriched_hub,
            custom_sources=custom_sources,
            start_task=self._start_fetch,
        )
        from ._drift.monitor import DriftMonitors

        #: the drift monitors and the hub of their alerts (``monitor_drift``)
        self._drift = DriftMonitors()
        self._register_lock = anyio.Lock()
        self._coordinator = CheckpointCoordinator(
            self.checkpoints,
            topology=self._topology,
            router=self._router,
            progress=self._progress,
            register_lock=self._register_lock,
        )
        self._active_ingests = 0
        self._ingests_done: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = False
        self._started_at = 0.0
        #: messages each actor failed on (dead letters with reason ``failed``), by actor name
        self._failed: dict[str, int] = {}
        self._system.dead_letters.add_listener(self._count_failure)

    @property
    def feature_set(self) -> FeatureSet:
        """The feature set computed: the one given, with the features registered since."""
        return self._topology.feature_set

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> FeatureRuntime:
        if self._stack is not None:
            raise RuntimeError("a FeatureRuntime can be entered once")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            stack.callback(self._hub.close)
            stack.callback(self._late_hub.close)
            stack.callback(self._topology.close_record_hubs)
            stack.callback(self._enriched_hub.close)
            # after the actors stopped: a monitor's last alerts come as it stops
            stack.callback(self._drift.close)
            # sources before the actors, so that they close after the actors stopped
            await self._topology.open_sources(stack)
            await stack.enter_async_context(self._system)
            supervisor = self._system.supervisor(
                "features",
                max_restarts=self.max_restarts,
                period=self.restart_period,
                decider=restart_always,
            )
            await self._topology.start(supervisor)
            await self._coordinator.restore()
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._flusher, name="featurist-flusher")
            await self._start_metrics_server(stack)
            self._coordinator.start(self._tg)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        self._running = True
        self._started_at = time.time()
        _log.info(
            "runtime_started",
            feature_set=self.feature_set.name,
            features=len(self.feature_set.features),
            shards=self.shards,
            batch_size=self.batch_size,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._tg is not None
        self._running = False
        timeout = self._system.shutdown_timeout
        deadline = anyio.current_time() + timeout
        try:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(timeout) as scope:
                    # Calls already inside ingest/ingest_many finish first: what they accept is
                    # accepted. Then every partial or unsent batch goes out.
                    while self._active_ingests:
                        self._ingests_done = anyio.Event()
                        await self._ingests_done.wait()
                    await self._ingest.send_all()
                    # events waiting for a fetch get it (or their fallback) while fetches can
                    # still run; what is left at the deadline goes to dead letters
                    await self._topology.drain_enrichers()
                    await self._coordinator.on_shutdown()
                if scope.cancelled_caught:
                    self._ingest.abandon_unsent()
        finally:
            # One shutdown_timeout for the whole exit: the actors' drain gets what is left.
            self._system.shutdown_timeout = max(deadline - anyio.current_time(), 0.001)
            self._tg.cancel_scope.cancel()
            result = await self._stack.__aexit__(exc_type, exc, tb)
        _log.info(
            "runtime_stopped",
            feature_set=self.feature_set.name,
            ingested=self._ingest.ingested,
            rejected=self._ingest.rejected,
        )
        return result

    def _enter_ingest(self) -> None:
        self._check_running()
        self._active_ingests += 1

    def _leave_ingest(self) -> None:
        self._active_ingests -= 1
        if not self._active_ingests and self._ingests_done is not None:
            self._ingests_done.set()

    async def _flusher(self) -> None:
        linger = self.linger
        while True:
            await anyio.sleep(linger / 2)
            assert self._tg is not None
            for shard in self._ingest.due(time.perf_counter() - linger):
                # Each send in a task of its own, and none for a shard that is already sending:
                # a shard whose mailbox is full delays only itself, not the others' lingers.
                if not self._ingest.sending(shard):
                    self._tg.start_soon(self._ingest.send, shard)

    def _check_running(self) -> None:
        failure = self._system.escalation
        if failure is not None:
            raise RuntimeClosed(
                f"the runtime stopped: an actor failed more than max_restarts={self.max_restarts} "
                f"times within {self.restart_period:g} s (last: {failure!r}); leaving its "
                "'async with' block raises actors.Escalated"
            ) from failure
        if not self._running:
            raise RuntimeClosed("the runtime is not running (use 'async with FeatureRuntime(...)')")

    # -- ingest --------------------------------------------------------------------------------
    def _tag(self, stream: str | None) -> int:
        """The index of ``stream`` among the ingested streams (the first for None)."""
        if stream is None:
            return 0
        names = self.feature_set.stream_names
        if stream not in names:
            known = ", ".join(names)
            raise ValueError(f"stream: no stream named {stream!r} (known: {known})")
        return names.index(stream)

    def _tags(self, events: Any, streams: Sequence[str]) -> list[int]:
        """The stream index of each event, from their streams' names."""
        if not hasattr(events, "__len__") or len(events) != len(streams):
            got = len(events) if hasattr(events, "__len__") else type(events).__name__
            raise ValueError(
                f"stream: a sequence of stream names needs a sequence of events of the same "
                f"length (got {len(streams)} names for {got} events)"
            )
        names = self.feature_set.stream_names
        index = {name: i for i, name in enumerate(names)}
        try:
            return [index[name] for name in streams]
        except KeyError as exc:
            position = next(i for i, name in enumerate(streams) if name not in index)
            known = ", ".join(names)
            raise ValueError(
                f"stream[{position}]: no stream named {exc.args[0]!r} (known: {known})"
            ) from None

    async def ingest(self, event: Any, *, stream: str | None = None, offset: Any = None) -> bool:
        """Accept one event; wait if the runtime is full (backpressure).

        ``stream`` names the feature set's stream the event belongs to (default: the first);
        only that stream's features see it. ``offset``: the event's position in your input
        (any msgpack-able value, e.g. a Kafka offset); checkpoints record the last one given,
        to resume from after a restart (see :attr:`offset`).

        Returns True if the event was accepted, False if it was invalid: it is then in
        :attr:`dead_letters` with the reason and the raw payload, and the runtime goes on.

        Raises:
            RuntimeClosed: the runtime is not running.
            ValueError: ``stream`` is not a stream of the feature set.
        """
        tag = self._tag(stream)
        progress = self._progress
        if progress.gate is not None:
            await progress.wait()
        self._enter_ingest()
        try:
            shard = self._ingest.route_one(event, tag)
            progress.position += 1
            if offset is not None:
                progress.offset = offset
            if shard is None:
                return False
            if len(self._ingest.buffers[shard]) >= self.batch_size:
                await self._ingest.send(shard, partial=False)
            return True
        finally:
            self._leave_ingest()

    async def ingest_many(
        self,
        events: Any,
        *,
        stream: str | Iterable[str] | None = None,
        offset: Any = None,
    ) -> int:
        """Accept many events in order; wait when the runtime is full.

        ``events`` is any iterable of events of one ``stream`` (default: the first), or a
        sequence of events of several streams with ``stream`` an iterable of as many names,
        each event's stream (a merged source, as a join reads it, in one call).

        ``offset``: the position in your input after the last of ``events``, recorded by
        checkpoints (see :attr:`offset`); a checkpoint then waits for the whole call, so that
        it never records the offset with half of the call's events. Without it, a checkpoint
        may fall between two batches of the call (:attr:`position` counts the events read).

        Returns the number accepted; invalid events go to dead letters as with :meth:`ingest`.

        Raises:
            ValueError: a stream is not a stream of the feature set, or ``stream`` names a
                number of streams other than the number of ``events``.
        """
        streams: list[int] | None = None
        if stream is None or isinstance(stream, str):
            tag = self._tag(stream)
        else:
            tag = 0
            streams = self._tags(events, list(stream))
        ingest = self._ingest
        progress = self._progress
        if progress.gate is not None:
            await progress.wait()
        self._enter_ingest()
        if offset is not None:
            progress.enter_offset_call()
        try:
            size = self.batch_size
            accepted = 0
            iterator = iter(events)
            done = 0
            while True:
                if progress.gate is not None and offset is None:
                    await progress.wait()  # a checkpoint between two batches of the call
                chunk = list(islice(iterator, size))
                if not chunk:
                    if offset is not None:
                        progress.offset = offset
                    return accepted
                if streams is not None:
                    accepted += ingest.route(chunk, streams[done : done + len(chunk)])
                else:
                    accepted += ingest.route(chunk, tag)
                done += len(chunk)
                progress.position += len(chunk)
                buffers = ingest.buffers
                sent = False
                for shard in range(self.shards):
                    if len(buffers[shard]) >= size:
                        await ingest.send(shard, partial=False)
                        sent = True
                if sent:
                    # Let the shard actors apply the batch now, while its events are still in
                    # the CPU's caches, rather than after the mailboxes fill up.
                    await anyio.lowlevel.checkpoint()
                if not self._running:
                    raise RuntimeClosed(
                        f"the runtime is shutting down; {accepted} events of this call were "
                        "accepted (they will be applied), the rest were not read"
                    )
        finally:
            if offset is not None:
                progress.leave_offset_call()
            self._leave_ingest()

    async def flush(self) -> None:
        """Send every partial batch and wait until every actor has applied what it was sent.

        With ``idle_timeout`` or ``state_ttl`` set, windowed groups also apply idle time and
        expiry at once, rather than at their next timer tick.
        """
        self._check_running()
        idle = self._topology.ttl is not None or self.feature_set.idle_timeout is not None
        await self._topology.settle(idle=idle)

    # -- checkpoints ---------------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Events read from the input since it began (accepted and rejected), counted across
        restarts: after a restore, the number of events the checkpoint covers. To resume a
        replayable input (a file, a list), skip this many events."""
        return self._progress.position

    @property
    def offset(self) -> Any:
        """The ``offset`` of the last ``ingest``/``ingest_many`` call that gave one (after a
        restore: the checkpoint's), or None: where to resume your input after a restart."""
        return self._progress.offset

    @property
    def restored(self) -> CheckpointInfo | None:
        """The checkpoint restored on start, or None."""
        return self._coordinator.restored

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        """The last checkpoint taken, or None."""
        return self._coordinator.last

    async def checkpoint(self) -> CheckpointInfo:
        """Take a checkpoint now: a consistent snapshot of every actor's state with the input
        position, written atomically to the checkpoint directory.

        Ingest waits (at a batch boundary) while every event accepted before is applied and
        the state is captured; the file is written after, while ingest goes on.

        Raises:
            ConfigError: the runtime has no ``checkpoints`` directory.
            CheckpointError: the state could not be encoded.
            OSError: the file could not be written.
        """
        self._check_running()
        return await self._coordinator.checkpoint()

    # -- reading -------------------------------------------------------------------------------
    async def get(self, key: Any, features: list[str] | None = None) -> FeatureVector:
        """The key's current feature vector with its freshness.

        Events of this key accepted before the call are included. A key never seen gets the
        features' empty values (0 for counts, sums and distinct counts, None otherwise) and
        ``last_event_time=None``.

        Raises:
            UnknownFeature: a name in ``features`` is not a feature of the runtime.
            TypeError: the key is not a str, int or bytes.
        """
        return (await self.get_many([key], features))[key]

    async def get_many(
        self, keys: Iterable[Any], features: list[str] | None = None
    ) -> dict[Any, FeatureVector]:
        """Vectors of many keys, in the order given (duplicates once): one ask per shard and
        feature group instead of one per key. Same rules as :meth:`get`."""
        self._check_running()
        if features is not None:
            known = set(self.feature_set.names)
            for name in features:
                if name not in known:
                    raise UnknownFeature(
                        f"no feature named {name!r} (known: {', '.join(self.feature_set.names)})"
                    )
        wanted = list(dict.fromkeys(keys))
        by_shard: dict[int, list[Any]] = {}
        for key in wanted:
            by_shard.setdefault(self._router.shard_of(key), []).append(key)
        found = await self._topology.read(by_shard, features)
        names = features if features is not None else self.feature_set.names
        now_ms = time.time() * 1000
        vectors = {}
        for key in wanted:
            item = found[key]
            values = {name: item.values[name] for name in names if name in item.values}
            if item.watermark is not None:
                watermark: int | None = item.watermark
            else:
                watermark = None if item.high is None else item.high - self._lateness
            lag = None if item.last is None else now_ms - item.last
            vectors[key] = FeatureVector(key, values, item.last, watermark, item.updated, lag)
        return vectors

    def updates(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[FeatureUpdate]:
        """Subscribe to every change, as it happens: an async iterator of ``FeatureUpdate``.

        Subscribing costs the runtime one update object per event and group. ``policy``:
        ``"block"`` slows ingest to the subscriber's pace (nothing lost); ``"drop_oldest"`` keeps
        the newest ``buffer`` updates. Iteration ends at shutdown or on ``aclose()``.

        A ``"block"`` subscription that is held but no longer read stalls the shards that
        publish to it, and so ingest, and at shutdown it holds the drain until
        ``shutdown_timeout``: close subscriptions you stop reading, or use ``"drop_oldest"``.
        ``buffer`` is an int >= 1; the subscription's ``statistics()`` shows its depth, its
        drops and whether publishers wait for it.
        """
        self._check_running()
        return self._hub.subscribe(buffer, policy)

    @property
    def dead_letters(self) -> Any:
        """Rejected events and undeliverable messages (``actors.DeadLetters``)."""
        return self._system.dead_letters

    # -- registering ---------------------------------------------------------------------------
    async def register(self, *features: Feature) -> list[FeatureDescription]:
        """Add features while running; they see events accepted from now on.

        Features registered together form one group (so a ratio can be registered with its
        operands). Returns a description of each with its estimated cost.

        Raises:
            SpecError: a feature is invalid or its name is taken.
        """
        self._check_running()
        if not features:
            raise SpecError("register() needs at least one feature")
        async with self._register_lock:
            feature_set = msgspec.structs.replace(
                self.feature_set, features=(*self.feature_set.features, *features)
            )
            await self._ingest.send_all()
            groups = await self._topology.add_groups(list(features), feature_set)
            for group in groups:
                await self._coordinator.adopt(group)
        for group in groups:
            _log.info("features_registered", group=group.name, features=list(group.names))
        return [self._description(f, self._topology.group_of(f.name), None) for f in features]

    def _start_fetch(self, task: Callable[[], Any]) -> None:
        """Run a fetch of an enricher as a task of the runtime."""
        assert self._tg is not None
        self._tg.start_soon(task)

    def _estimate(self, feature: Any) -> CostEstimate:
        return estimate_cost(feature, event_rate=self.expected_event_rate, keys=self.expected_keys)

    def _description(
        self, feature: Any, group: Group, measured: MeasuredCost | None
    ) -> FeatureDescription:
        return FeatureDescription(
            name=feature.name,
            type=group.types[group.names.index(feature.name)],
            group=group.name,
            inputs=tuple(feature.inputs()),
            estimated_cost=self._estimate(feature),
            measured_cost=measured,
        )

    async def describe(self, name: str) -> FeatureDescription:
        """A feature's description, with its measured cost once events have flowed.

        Raises:
            UnknownFeature: no feature has that name.
        """
        self._check_running()
        for group in self._topology.groups:
            if name in group.names:
                index = group.names.index(name)
                stats = await self._group_stats(group)
                feature = group.features[index]
                return self._description(feature, group, self._measure(group, index, stats))
        raise UnknownFeature(
            f"no feature named {name!r} (known: {', '.join(self.feature_set.names)})"
        )

    def _measure(self, group: Group, index: int, stats: list[ShardStats]) -> MeasuredCost | None:
        events = sum(s.events for s in stats)
        if not events:
            return None
        sampled = sum(s.sampled_events for s in stats)
        feature_ns = sum(s.feature_ns[index] for s in stats)
        is_ratio = group.types[index] == "ratio"  # computed when read, not per event
        mean_us = feature_ns / sampled / 1000 if sampled and not is_ratio else None
        starts = [s.first_event_at for s in stats if s.first_event_at is not None]
        ends = [s.last_event_at for s in stats if s.last_event_at is not None]
        span = max(ends) - min(starts) if starts and ends else 0.0
        keys = sum(s.keys for s in stats)
        state_bytes = sum(s.state_bytes for s in stats)
        if group.compiled is not None:
            share = _slots_of(group, index) / max(group.compiled.slot_count, 1)
        else:
            # windowed features share their buffers: each is charged an equal part
            share = 1 / len(group.names)
        return MeasuredCost(
            feature=group.names[index],
            events=events,
            mean_latency_us=mean_us,
            p99_latency_us=None,
            events_per_second=events / span if span > 0 else None,
            state_bytes_per_key=state_bytes / keys * share if keys else None,
        )

    # -- metrics ---------------------------------------------------------------------------------
    def mailboxes(self) -> list[ActorMailbox]:
        """Every actor's mailbox now: the feature groups' shard actors, then the joins', the
        enrichers' and the drift monitors'. Reads counters without asking the actors, so it
        answers at once even when their mailboxes are full (:meth:`statistics` and
        :meth:`metrics` ask each actor, and an ask waits behind a full mailbox).

        Raises:
            RuntimeClosed: the runtime is not running.
        """
        self._check_running()
        return self._mailboxes()

    def _mailboxes(self) -> list[ActorMailbox]:
        found: list[tuple[ActorRef[Any], str, str, int | None]] = []
        for group in self._topology.groups:
            found += [(ref, "features", group.name, i) for i, ref in enumerate(group.refs)]
        for join in self._topology.joins:
            found += [(ref, "join", join.name, i) for i, ref in enumerate(join.refs)]
        for enricher in self._topology.enrichers:
            found += [(ref, "enricher", enricher.stream, i) for i, ref in enumerate(enricher.refs)]
        found += [(ref, "drift", state.spec.name, None) for state, ref in self._drift.monitors]
        boxes = []
        for ref, kind, name, shard in found:
            stats = ref.statistics()
            boxes.append(
                ActorMailbox(
                    actor=ref.name,
                    kind=kind,
                    group=name,
                    shard=shard,
                    depth=stats.depth,
                    capacity=stats.capacity,
                    senders_waiting=stats.senders_waiting,
                    processed=stats.processed,
                    dropped=stats.dropped,
                )
            )
        return boxes

    async def metrics(self) -> RuntimeMetrics:
        """A snapshot of the runtime's metrics (:class:`RuntimeMetrics`): per actor its
        mailbox, messages, errors and restarts; per feature its events, events/s, latency
        percentiles and errors; per group its keys, watermark lag and late events; per join
        its buffers; per source its cache and calls; the drift monitors' scores; the last
        checkpoint; dead letters by reason. See ``docs/metrics.md``.

        It asks every actor, as :meth:`statistics` does, so under load it waits behind full
        mailboxes; :meth:`mailboxes` does not. Events ingested before the call may still be
        on their way: call :meth:`flush` first to count them all.

        Raises:
            RuntimeClosed: the runtime is not running.
        """
        self._check_running()
        return await self._collect_metrics()

    async def _collect_metrics(self) -> RuntimeMetrics:
        now = time.time()
        now_ms = self._clock() * 1000
        boxes = self._mailboxes()
        groups = list(self._topology.groups)
        all_stats = [await self._group_stats(group) for group in groups]
        restarts = {
            ref.name: s.restarts
            for group, stats in zip(groups, all_stats, strict=True)
            for ref, s in zip(group.refs, stats, strict=True)
        }
        joins: dict[str, JoinStatistics] = {}
        for join in list(self._topology.joins):
            shards: list[JoinShardStats] = [
                await ref.ask(GetJoinStats(), timeout=None) for ref in join.refs
            ]
            restarts.update(
                (ref.name, s.restarts) for ref, s in zip(join.refs, shards, strict=True)
            )
            joins[join.name] = join_totals(shards)
        sources = await self._enrichment_statistics()
        drift = await self._drift.status()
        features = {}
        group_metrics = {}
        for group, stats in zip(groups, all_stats, strict=True):
            for index, (name, type_name) in enumerate(zip(group.names, group.types, strict=True)):
                features[name] = feature_metrics(
                    name,
                    type_name,
                    group.name,
                    index,
                    stats,
                    timed=type_name != "ratio",
                )
            late: dict[str, int] = {}
            if group.engine is not None:
                for ref in group.refs:
                    reply: WindowStats = await ref.ask(GetWindowStats(), timeout=None)
                    for counter in ("late_dropped", "late_side_output", "late_applied"):
                        late[counter] = late.get(counter, 0) + getattr(reply.counters, counter)
            watermark = group_watermark(stats, self._lateness)
            group_metrics[group.name] = GroupMetrics(
                group=group.name,
                kind="keyed" if group.engine is None else "windowed",
                stream=group.stream,
                events=sum(s.events for s in stats),
                keys=sum(s.keys for s in stats),
                state_bytes=sum(s.state_bytes for s in stats),
                watermark=watermark,
                watermark_lag_ms=None if watermark is None else now_ms - watermark,
                late_dropped=late.get("late_dropped", 0),
                late_side_output=late.get("late_side_output", 0),
                late_applied=late.get("late_applied", 0),
            )
        # events processed as statistics() counts them: by the first group of each stream
        firsts = [
            all_stats[groups.index(found[0])]
            for stream in self.feature_set.stream_names
            if (
                found := self._topology.stream_groups[stream]
                or self._topology.enriched_groups(stream)
            )
            and found[0] in groups
        ]
        processed = sum(s.events for stats in firsts for s in stats)
        if not groups:  # joins alone: the events they applied
            processed = max((j.events for j in joins.values()), default=0)
        latencies = sorted((lat, n) for stats in all_stats for s in stats for lat, n in s.latencies)
        lags = [
            g.watermark_lag_ms for g in group_metrics.values() if g.watermark_lag_ms is not None
        ]
        return RuntimeMetrics(
            taken_at=now,
            uptime_s=now - self._started_at if self._started_at else 0.0,
            events_ingested=self._ingest.ingested,
            events_rejected=self._ingest.rejected,
            events_processed=processed,
            latency_p50_ms=_weighted_quantile(latencies, 0.50),
            latency_p99_ms=_weighted_quantile(latencies, 0.99),
            watermark_lag_ms=max(lags) if lags else None,
            late_dropped=sum(g.late_dropped for g in group_metrics.values())
            + sum(j.late_dropped for j in joins.values()),
            late_side_output=sum(g.late_side_output for g in group_metrics.values())
            + sum(j.late_side_output for j in joins.values()),
            late_applied=sum(g.late_applied for g in group_metrics.values()),
            actors=actor_metrics(boxes, self._failed, restarts),
            features=features,
            groups=group_metrics,
            joins=joins,
            sources=sources,
            drift=drift,
            checkpoint=checkpoint_metrics(self.last_checkpoint, now),
            dead_letters=dict(self.dead_letters.statistics().by_reason),
        )

    def _count_failure(self, letter: DeadLetter) -> None:
        """Dead letters' listener: counts each actor's failed messages."""
        if letter.reason is DeadLetterReason.FAILED:
            self._failed[letter.recipient] = self._failed.get(letter.recipient, 0) + 1

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the Prometheus endpoint while it serves (the port it took, for
        ``metrics_port=0``), else None."""
        server = self._metrics_server
        return None if server is None or not server.serving else (server.host, server.port)

    async def _start_metrics_server(self, stack: AsyncExitStack) -> None:
        """With ``metrics_port``: take a first snapshot, listen, and refresh the snapshot every
        ``metrics_interval`` seconds; the server stops before the actors do."""
        server = self._metrics_server
        if server is None:
            return
        assert self._tg is not None
        try:
            server.update(await self._collect_metrics())
            await server.start()
        except BaseException:
            # the start fails: the runtime's tasks are running and must stop for the task
            # group to exit
            self._tg.cancel_scope.cancel()
            raise
        stack.push_async_callback(server.stop)
        self._tg.start_soon(self._refresh_metrics, server, name="featurist-metrics")
        _log.info("metrics_serving", host=server.host, port=server.port)

    async def _refresh_metrics(self, server: MetricsServer) -> None:
        """The endpoint's snapshots. A failure is logged and the last snapshot kept."""
        while True:
            await anyio.sleep(self.metrics_interval)
            try:
                server.update(await self.metrics())
            except RuntimeClosed:
                return
            except Exception:
                _log.exception("metrics_failed")

    # -- looking at it ---------------------------------------------------------------------------
    async def _group_stats(self, group: Group) -> list[ShardStats]:
        return [await ref.ask(GetStats(), timeout=None) for ref in group.refs]

    async def statistics(self) -> RuntimeStatistics:
        """A snapshot of counters, state size and latency (asks every actor)."""
        self._check_running()
        all_stats = [await self._group_stats(group) for group in self._topology.groups]
        # Every event of a stream goes to the stream's first group; later groups see events
        # from their registration.
        # (a stream whose features all read lookup fields: its enriched form's first group)
        firsts = [
            all_stats[self._topology.groups.index(groups[0])]
            for stream in self.feature_set.stream_names
            if (
                groups := self._topology.stream_groups[stream]
                or self._topology.enriched_groups(stream)
            )
        ]
        first = firsts[0] if firsts else (all_stats[0] if all_stats else [])
        errors: dict[str, int] = {}
        for stats in all_stats:
            for s in stats:
                for name, n in s.errors.items():
                    errors[name] = errors.get(name, 0) + n
        # Keyed and window groups keep (and expire) keys of their own: the larger count is shown.
        keys = max((sum(s.keys for s in stats) for stats in all_stats), default=0)
        state_bytes = sum(s.state_bytes for stats in all_stats for s in stats)
        latencies = sorted((lat, n) for stats in all_stats for s in stats for lat, n in s.latencies)
        highs = [s.max_time for s in first if s.max_time is not None]
        actors = [ref for group in self._topology.groups for ref in group.refs]
        actors += [ref for join in self._topology.joins for ref in join.refs]
        actors += [ref for enricher in self._topology.enrichers for ref in enricher.refs]
        depth = max((ref.statistics().depth for ref in actors), default=0)
        joins, join_poison = await self._join_statistics()
        enrichment = await self._enrichment_statistics()
        processed = sum(s.events for stats in firsts for s in stats)
        if not self._topology.groups:  # joins alone: the events they applied
            processed = max((j.events for j in joins.values()), default=0)
        return RuntimeStatistics(
            events_ingested=self._ingest.ingested,
            events_rejected=self._ingest.rejected,
            events_processed=processed,
            feature_errors=errors,
            keys=keys,
            state_bytes=state_bytes,
            state_bytes_per_key=state_bytes / keys if keys else 0.0,
            latency_p50_ms=_weighted_quantile(latencies, 0.50),
            latency_p99_ms=_weighted_quantile(latencies, 0.99),
            watermark=(min(highs) - self._lateness) if highs else None,
            groups=len(self._topology.groups),
            shards=self.shards,
            max_mailbox_depth=depth,
            windows=await self._window_statistics(all_stats),
            joins=joins,
            enrichment=enrichment,
            expired_keys=sum(
                s.expired_keys
                for group, stats in zip(self._topology.groups, all_stats, strict=True)
                if group.engine is None
                for s in stats
            ),
            poison_events=join_poison + sum(s.poison for stats in all_stats for s in stats),
        )

    async def _window_statistics(
        self, all_stats: list[list[ShardStats]]
    ) -> WindowStatistics | None:
        total = WindowStatistics()
        found = False
        for group, stats in zip(self._topology.groups, all_stats, strict=True):
            if group.engine is None:
                continue
            found = True
            keys = sum(s.keys for s in stats)
            state_bytes = sum(s.state_bytes for s in stats)
            counts: dict[str, int] = {}
            held = 0
            for ref in group.refs:
                reply: WindowStats = await ref.ask(GetWindowStats(), timeout=None)
                held += reply.held_events
                for name, n in vars(reply.counters).items():
                    counts[name] = counts.get(name, 0) + n
            total = msgspec.structs.replace(
                total,
                keys=total.keys + keys,
                state_bytes=total.state_bytes + state_bytes,
                events_held=total.events_held + held,
                **{name: getattr(total, name) + n for name, n in counts.items()},
            )
        if not found:
            return None
        per_key = total.state_bytes / total.keys if total.keys else 0.0
        return msgspec.structs.replace(total, state_bytes_per_key=per_key)

    async def _enrichment_statistics(self) -> dict[str, EnrichmentStatistics]:
        stashed = 0
        for enricher in self._topology.enrichers:
            for ref in enricher.refs:
                shard_stats: EnrichShardStats = await ref.ask(GetEnrichStats(), timeout=None)
                stashed += shard_stats.stashed
        result = {}
        for name, source in self._topology.sources.items():
            cache = source.cache.statistics()
            fetch = source.fetcher.statistics()
            hits = cache.hits + cache.negative_hits
            mean = fetch.mean_latency_ms if fetch.calls - fetch.failures > 0 else None
            result[name] = EnrichmentStatistics(
                cache_hits=hits,
                cache_misses=cache.misses,
                hit_ratio=cache.hit_ratio,
                stale_served=source.stale_served,
                defaults_after_error=source.defaults_after_error,
                malformed=source.malformed,
                cache_size=cache.size,
                cache_capacity=cache.capacity,
                cache_utilization=cache.utilization,
                evictions=cache.evictions,
                calls=fetch.calls,
                keys_requested=fetch.keys_requested,
                keys_found=fetch.keys_found,
                keys_missing=fetch.keys_missing,
                failures=fetch.failures,
                retries=fetch.retries,
                timeouts=fetch.timeouts,
                breaker_state=fetch.breaker_state.value,
                breaker_openings=fetch.breaker_openings,
                rejected_by_breaker=fetch.rejected_by_breaker,
                mean_call_ms=mean,
                max_call_ms=fetch.max_latency_ms if mean is not None else None,
                latency_saved_ms=hits * (mean or 0.0),
                # the stashes are the stream's, not the source's: each source shows them all
                stashed=stashed,
            )
        return result

    async def _join_statistics(self) -> tuple[dict[str, JoinStatistics], int]:
        """Each join's statistics, and the poison events its actors set aside."""
        result = {}
        poison = 0
        for join in self._topology.joins:
            shards: list[JoinShardStats] = [
                await ref.ask(GetJoinStats(), timeout=None) for ref in join.refs
            ]
            result[join.name] = join_totals(shards)
            poison += sum(s.poison for s in shards)
        return result, poison

    def join_records(
        self, join: str | None = None, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[JoinRecord]:
        """Subscribe to the records of the join named ``join``, or of every join
        (``JoinRecord.join`` names it): matched pairs, and for outer and as-of joins the
        unmatched rows. ``buffer`` and ``policy`` as for :meth:`updates`.

        Raises:
            ValueError: the feature set has no join named ``join``.
        """
        self._check_running()
        return self._topology.records_hub(join).subscribe(buffer, policy)

    async def warm_up(
        self,
        source: str,
        keys: Iterable[Any] = (),
        *,
        rows: Mapping[Any, Mapping[str, Any]] | None = None,
    ) -> int:
        """Fill a source's cache before the events that need it come: with ``rows`` as given
        (a bulk load you made), and with the rows of ``keys`` fetched from the source in
        batches (keys it does not have are cached as missing). The cache keeps at most its
        ``cache_size``; the last ones win. Returns the number of keys cached.

        Raises:
            ValueError: no source of the feature set's lookups is named ``source``.
            SourceError: the source failed (after its retries) for some of ``keys``.
        """
        self._check_running()
        return await self._topology.warm_up(source, keys, rows)

    def invalidate(self, source: str, key: Any) -> bool:
        """Forget ``key``'s cached row of ``source`` (its row changed): the next event that
        needs it fetches it again. Returns whether a row was cached."""
        self._check_running()
        return self._topology.source(source).cache.invalidate(key)

    def enriched_events(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[EnrichedEvent]:
        """Subscribe to the enriched events: each event of a stream with lookups, with its
        ``enrichment``, ``enrichment_metadata`` and ``"<lookup>.<column>"`` fields, once its
        fetches landed (a key's events in order). ``buffer`` and ``policy`` as for
        :meth:`updates`."""
        self._check_running()
        return self._enriched_hub.subscribe(buffer, policy)

    def late_events(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[LateEvent]:
        """Subscribe to events later than ``allowed_lateness`` (with
        ``late_policy="side_output"``): an async iterator of :class:`LateEvent`. ``buffer``
        and ``policy`` as for :meth:`updates`; late events that arrive while nobody is
        subscribed are counted in ``statistics().windows.late_side_output`` only."""
        self._check_running()
        return self._late_hub.subscribe(buffer, policy)

    async def recent_errors(self) -> list[FeatureError]:
        """Recent feature errors (the last 100 of each shard actor), by event time."""
        self._check_running()
        errors = [
            e
            for group in self._topology.groups
            for s in await self._group_stats(group)
            for e in s.recent_errors
        ]
        return sorted(errors, key=lambda e: e.event_time)

    # -- drift monitors --------------------------------------------------------------------------
    async def monitor_drift(self, *monitors: DriftMonitor) -> None:
        """Start drift monitors: each :class:`DriftMonitor` watches one feature's values with
        its detector, in an actor of its own, and raises a :class:`DriftAlert` (see
        :meth:`drift_alerts`) when it finds drift. They see the values of events applied from
        now on. See ``docs/drift.md``.

        A monitor reads the feature updates (as :meth:`updates` does, so the shards then make
        one update per event and group) through a bounded buffer that drops its oldest
        updates when the monitor falls behind: a monitor never slows the features down, and
        :meth:`drift_status` counts what it dropped. Monitors are not in checkpoints: after a
        restart, start them again.

        Raises:
            TypeError: an argument is not a ``DriftMonitor``.
            SpecError: no monitor given, a name already running, or a ``segment`` or ``on``
                that does not fit the feature.
            UnknownFeature: the feature or the segment feature does not exist.
        """
        self._check_running()
        async with self._register_lock:
            planned = self._drift.plan(monitors, self.feature_set, self._drift_group)
            await self._drift.start(self._system, planned, self._hub, self._clock)

    def _drift_group(self, feature: str) -> tuple[str, tuple[str, ...]]:
        """The name of the group that computes ``feature``, and its features' names."""
        group = self._topology.group_of(feature)
        return group.name, group.names

    def drift_alerts(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[DriftAlert]:
        """Subscribe to the monitors' alerts: an async iterator of :class:`DriftAlert`.
        ``buffer`` and ``policy`` as for :meth:`updates` (with ``"block"``, a full buffer
        holds the monitors back, never the features). Iteration ends at shutdown, after the
        alerts of the last values."""
        self._check_running()
        return self._drift.subscribe(buffer, policy)

    async def drift_status(self) -> dict[str, DriftStatus]:
        """Each monitor's :class:`DriftStatus` by name, in start order: per segment its phase,
        latest score, alerts, reference and live window sizes; per monitor the values seen,
        skipped and dropped. Every update published before the call is included (call
        :meth:`flush` first to include every event ingested)."""
        self._check_running()
        return await self._drift.status()

    # -- replaying history -----------------------------------------------------------------------
    async def replay(
        self,
        events: Iterable[Any] | AsyncIterable[Any],
        *,
        stream: str | Callable[[dict[str, Any]], str] | None = None,
        arrival: str | Callable[[dict[str, Any]], float] | None = None,
        resolution: float | None = None,
        until: float | None = None,
    ) -> ReplayResult:
        """Feed history through the runtime with its wall clock following the events, so that
        idle time and ``state_ttl`` act as they did online; return a :class:`ReplayResult`
        (events accepted and rejected, the event-time span, the clock's steps).

        ``events`` is an iterable, sync or async, of events in the order they arrived online,
        of one ``stream`` (a name; default: the first), or of several with ``stream`` a
        function giving each event's stream name. The clock is each event's arrival time:
        ``arrival`` (a field holding it in the forms of the event time, or a function giving
        seconds since the epoch), by default the newest event time seen so far. It moves in
        steps of ``resolution`` seconds (default: the period of the runtime's own idle
        timer, as live; 0 gives a step to every arrival time, exact but slower): at each, the
        events before are applied at their time, then idle time and expiry at the new one.
        At the end the clock moves on to ``until`` (seconds since the epoch) if it is later,
        for instance the time the online values you compare with were read. The clock stays
        there after the replay; ``get`` then reads the values at that time.

        An event whose ``stream`` function or ``arrival`` fails goes to dead letters with the
        reason, as an invalid one does. Replays of one runtime may follow one another (the
        history goes on); live traffic does not mix with a replay.

        Raises:
            RuntimeError: the runtime has accepted events other than a replay's, or events
                were ingested while the replay ran, or another replay of it is running.
            ValueError: ``stream`` names no stream of the feature set, or ``resolution`` or
                ``until`` is not a valid number of seconds.
            TypeError: ``stream`` or ``arrival`` is neither a name nor a function.
        """
        self._check_running()
        options = ReplayOptions(stream=stream, arrival=arrival, resolution=resolution, until=until)
        return await replay_history(RuntimeReplayHost(self), events, options)


class RuntimeReplayHost:
    """A running :class:`FeatureRuntime` as its replays see it: the ``ReplayHost`` of
    ``_replay/history.py`` (``rt.replay`` and ``check_parity`` replay through one)."""

    def __init__(self, rt: FeatureRuntime) -> None:
        self._rt = rt
        self.clock = rt._clock
        self.reader = rt._reader
        self.dead_letters = rt._system.dead_letters
        self.ingest_many = rt.ingest_many
        self.flush = rt.flush

    @property
    def feature_set(self) -> FeatureSet:
        return self._rt.feature_set  # ``register`` replaces it

    @property
    def events_read(self) -> int:
        ingest = self._rt._ingest
        return ingest.ingested + ingest.rejected

    async def step(self, now: float) -> None:
        """What was sent is applied at the clock's time (as ``flush`` does), then the clock
        moves to ``now`` and idle time and expiry are applied at it: half the asks of two
        flushes; a timer tick meanwhile reads one time or the other and finds nothing more
        to do."""
        self._rt._check_running()
        await self._rt._topology.settle(at=now)


def _slots_of(group: Group, index: int) -> int:
    prefix = f"f{index}_"
    assert group.compiled is not None
    fields = group.compiled.record_type.__struct_fields__
    return sum(1 for name in fields if name.startswith(prefix))


def _weighted_quantile(samples: list[tuple[float, int]], q: float) -> float | None:
    """``samples`` sorted ``(seconds, weight)``; returns milliseconds."""
    total = sum(n for _, n in samples)
    if not total:
        return None
    threshold = q * total
    running = 0
    for value, n in samples:
        running += n
        if running >= threshold:
            return value * 1000
    return samples[-1][0] * 1000
