"""``FeatureRuntime``: the facade a service embeds.

Layout: events are read and validated at ``ingest`` (bad ones go to dead letters), routed by key
to one of ``shards`` buffers, and sent as batches to the shard's actor of each feature group. A
feature group is a set of features compiled together (the initial feature set is one group;
each ``register`` call adds one); each group runs as one actor per shard, under a one-for-one
supervisor. A key's events always go to the same shard in arrival order, so results do not
depend on the shard count or the batch size.

Backpressure: a shard's actors have bounded mailboxes (``mailbox_capacity`` batches); when they
are full, ``ingest`` waits. A shard's buffer is sent at once when its actors wait for work
(latency first); while they are busy it grows, and a partial batch is sent between ``linger``
and 1.5 x ``linger`` seconds after its first event, or at once by ``get`` (so a read sees the
caller's own writes), ``flush`` and shutdown. ``batch_size`` is the threshold at which a shard's
buffer is sent; ``ingest_many`` routes up to ``batch_size`` events before it checks, so a batch
holds fewer than twice ``batch_size`` events.
"""

from __future__ import annotations

import functools
import os
import pickle
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, nullcontext
from itertools import islice
from types import TracebackType
from typing import Any, Literal, NoReturn, overload

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import msgspec

from actors import (
    ActorStopped,
    ActorSystem,
    KeyRouter,
    MailboxConfig,
    get_logger,
    restart_always,
)

from ._checkpoints.coordinator import CheckpointCoordinator, Progress
from ._checkpoints.guards import CheckpointGuards
from ._checkpoints.store import (
    CheckpointConfig,
    CheckpointInfo,
)
from ._connectors.consume import ConsumeResult
from ._connectors.consume import consume as consume_source
from ._connectors.inputs import Input, Inputs, InputsStopped
from ._connectors.source import Source
from ._drift.monitor import DriftMonitors
from ._exceptions import (
    ConfigError,
    RuntimeClosed,
    SpecError,
)
from ._gc import DEFAULT_GC_THRESHOLD, GcThreshold
from ._ingest.events import EventReader, PayloadFormat, keeps_of
from ._ingest.result import IngestResult, rejections_of
from ._ingest.router import Ingest
from ._observe.collect import Observer
from ._observe.metrics import ActorMailbox, RuntimeMetrics, checkpoint_metrics
from ._observe.prometheus import FeatureCollector, Histograms, MetricsServer
from ._options import RuntimeOptions, check_sources, check_workers
from ._replay.history import ReplayClock, ReplayOptions, ReplayResult, replay_history
from ._results import (
    EnrichedEvent,
    FeatureDescription,
    FeatureError,
    FeatureUpdate,
    FeatureVector,
    JoinRecord,
    LateEvent,
    RuntimeStatistics,
)
from ._spec.cost import estimate_cost
from ._spec.drift import DriftAlert, DriftMonitor, DriftStatus
from ._spec.feature_set import Feature, FeatureSet
from ._topology import Topology
from ._updates import Policy, UpdateSubscription
from ._workers.backends import RayBackend, backend_of
from ._workers.front import WorkerFront

__all__ = ["FeatureRuntime", "RuntimeReplayHost"]

_log = get_logger("featurist")

#: ticks of the flusher (every ``linger / 2``) with nothing buffered, after which it waits to
#: be woken instead (0.1 s at the default linger)
FLUSHER_IDLE_TICKS = 40
#: seconds the exit gives the ingest calls it cut short past its deadline to unwind
CUT_GRACE = 0.1
#: what an application's checkpoint that the shutdown ended raises (``RuntimeClosed``)
_STOPPED_IN_CHECKPOINT = (
    "the runtime stopped while the checkpoint was taken ({why}); none was written"
)
#: what an ingest call cut short by the exit's deadline raises (``RuntimeClosed``)
_CUT = (
    "the runtime stopped: its shutdown deadline passed while this call was under way; "
    "{accepted} of its events were accepted (those still buffered in this process by then, "
    "not yet sent to a shard or a worker, are in dead letters), the rest were not read"
)
_metrics_decoder = msgspec.msgpack.Decoder(RuntimeMetrics)


class FeatureRuntime:
    """Computes a feature set over a stream of events, in this process.

    Args:
        feature_set: what to compute (see :class:`FeatureSet`).
        shards: shard actors per feature group (1..key_groups); with ``workers``, per worker.
            Shards share one event loop, so more shards do not add parallelism; they bound
            each actor's state and mailbox. Workers add parallelism.
        workers: worker processes the shards run in (0, the default: none, every shard runs
            on this process's event loop). With ``workers >= 1`` each worker process runs
            ``shards`` shard actors on its own event loop over a fixed share of the key
            groups, and this process only routes events to them and republishes their
            updates (``docs/scaling.md``). So far: keyed aggregates, windowed features,
            several streams, joins and lookups (each worker opens the sources and has its
            own caches; custom ``sources`` are pickled to each worker), with ``ingest``,
            ``ingest_many``, ``flush``, ``get``, ``get_many``, ``updates``,
            ``join_records``, ``enriched_events``, ``late_events``, ``statistics``,
            ``metrics`` (and ``metrics_port``), ``recent_errors``, ``describe``,
            ``register``, ``replay``, ``warm_up`` and ``checkpoint``; the rest raises
            :class:`ConfigError` naming it.
            With
            ``checkpoints``, checkpoints are aligned across the workers, and a worker that
            dies is started again (within ``max_restarts``), restores its key groups and is
            replayed the events since.
        batch_size: events per batch sent to a shard (>= 1).
        linger: seconds a partial batch may wait, while its actors are busy, before it is
            sent (> 0); for idle actors it leaves at once.
        mailbox_capacity: batches each shard actor holds before ``ingest`` waits (>= 1).
        key_groups: the fixed number of key groups (the unit of re-sharding).
        payload_format: how ``bytes`` events are decoded: ``"json"`` or ``"msgpack"``.
        sample_every: one batch in this many is timed per feature (>= 1).
        expected_event_rate: events per second used for cost estimates at registration.
        expected_keys: distinct keys used for memory estimates at registration.
        shutdown_timeout: seconds to drain at shutdown before cancelling.
        dead_letters_capacity: dead letters kept (all are counted).
        dead_letters_max_bytes: the most bytes the dead letters kept may take, by estimate
            (64 MiB by default; all are counted). A letter keeps a copy of its error without
            the traceback, and of a payload larger than 1/1024 of this bound (64 KiB by
            default) its first 1,024 bytes or characters and its size.
        route_cache_size: keys whose shard is remembered, so routing a known key costs one
            dict lookup instead of a hash (the cache is cleared when full).
        clock: the wall clock (seconds) that idle time and state expiry are measured with;
            tests pass a fake one and call :meth:`flush` to apply it, and a replay of history
            one that follows the replay (``docs/windows.md``, "Replaying history").
        sources: the objects behind the feature set's ``CustomSource`` specs, by name: each
            with ``async get_many(keys) -> dict`` (and optionally ``open`` and ``close``).
        checkpoints: where and how often to checkpoint the state: a directory, or a
            :class:`CheckpointConfig`; None (the default) takes none. The newest checkpoint of
            the directory is restored on start (``docs/operations.md``). The runtime holds
            the directory alone while it runs: a second one on it fails at start with a
            :class:`CheckpointError` naming the owner (a lock left by a dead process does not
            count).
        max_restarts: restarts of a failed actor allowed within ``restart_period`` seconds;
            one more stops the runtime (its calls raise :class:`RuntimeClosed` naming the
            failure). With workers and checkpoints, the same budget holds for restarts of
            the worker processes.
        restart_period: the sliding window of ``max_restarts``, in seconds.
        metrics_port: serve Prometheus metrics over HTTP on this port (0: a free one, see
            :attr:`metrics_address`); None (the default) serves none. Needs prometheus-client
            (the ``metrics`` extra; without it the constructor raises ``ImportError``). See
            ``docs/metrics.md``.
        metrics_host: the address the metrics endpoint listens on.
        metrics_interval: seconds between two snapshots of the metrics the endpoint serves.
        backfill: the input from its start (an iterable or async iterable of events, with
            several streams of ``(stream, event)`` pairs; or a connector's ``Source`` at its
            start, such as a ``JsonLinesSource`` of the files read): when a checkpoint is
            restored into a feature set with features it did not hold, its first
            ``position`` events (what the checkpoint had read) are replayed into a runtime of
            those features, whose state they take; without it they start empty. See
            "Changing the feature set" in ``docs/operations.md``. Not with ``workers`` yet.
        backend: where the ``workers`` run: ``"processes"`` (the default: processes on this
            machine), or ``"ray"`` or a :class:`RayBackend` (``featurist[ray]``): Ray actors
            on a Ray cluster, placed with the resources the backend asks for; the API is the
            same (``docs/scaling.md``, "On a Ray cluster").
        gc_threshold: while the runtime runs, Python's garbage collector's first threshold
            is raised to at least this many allocations (Python's own is 700), so that the
            containers of a batch in flight die young instead of filling the older
            generations, whose collections walk every key's state: 15 to 25% of the CPU at
            100,000 keys (``docs/embedding.md``, "The garbage collector"). A process-wide
            setting: put back when the last running runtime stops, unless the application
            set its own meanwhile. Worker processes keep it for their life. None leaves the
            collector alone.
        inputs: sources the runtime consumes itself while it runs (``NatsSource``,
            ``RedisStreamSource``, ``CsvSource``...; or an :class:`Input` to name the stream
            and the batch size): each read as :meth:`consume` reads it, in a task the runtime
            owns, from the position the restored checkpoint holds for it, until the source
            ends or the runtime stops; when it stops, they stop first, then each commits the
            last checkpoint's position and is closed. An input that fails stops alone,
            logged: :meth:`wait_inputs` raises its error, or else leaving the ``async with``
            block does (``docs/connectors.md``, "Inputs the runtime reads itself").

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
        dead_letters_max_bytes: int = 64 * 1024 * 1024,
        route_cache_size: int = 1 << 20,
        clock: Callable[[], float] = time.time,
        sources: Mapping[str, Any] | None = None,
        checkpoints: CheckpointConfig | str | os.PathLike[str] | None = None,
        max_restarts: int = 3,
        restart_period: float = 60.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_interval: float = 5.0,
        workers: int = 0,
        backfill: Iterable[Any] | AsyncIterable[Any] | None = None,
        backend: str | RayBackend = "processes",
        gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
        inputs: Iterable[Source | Input] | None = None,
    ) -> None:
        if not isinstance(feature_set, FeatureSet):
            raise TypeError(f"feature_set must be a FeatureSet, got {type(feature_set).__name__}")
        custom_sources = check_sources(feature_set, sources)
        #: the sources the runtime consumes itself (checked here, read while it runs)
        self._inputs = Inputs(inputs, feature_set)
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
            dead_letters_max_bytes=dead_letters_max_bytes,
            route_cache_size=route_cache_size,
            max_restarts=max_restarts,
            restart_period=restart_period,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_interval=metrics_interval,
            workers=workers,
            gc_threshold=gc_threshold,
        )
        #: the collector's first threshold, raised while the runtime runs
        self._gc = GcThreshold(gc_threshold)
        #: where the workers run (checked even without workers: a backend needs them)
        self._backend = backend_of(backend, workers)
        if workers:
            check_workers(
                feature_set,
                custom_clock=clock is not time.time,
                sources=custom_sources,
            )
        self.workers = workers
        self.max_restarts = max_restarts
        self.restart_period = float(restart_period)
        self.metrics_interval = float(metrics_interval)
        #: the Prometheus endpoint (made here, so a missing prometheus-client fails early)
        self._metrics_server = (
            None if metrics_port is None else MetricsServer(metrics_host, metrics_port)
        )
        #: with workers and no metrics_port: rt.prometheus_collector()'s collector
        self._front_collector: FeatureCollector | None = None
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
            dead_letters_max_bytes=dead_letters_max_bytes,
            mailbox=self._mailbox,
            # the "features" supervisor holds the restart budget (max_restarts): when it is
            # exceeded, the runtime stops rather than restart every actor once more
            max_restarts=0,
        )
        # read through an object that a replay can set to the history's time (``replay``)
        self._clock = ReplayClock(clock)
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
            custom_sources=custom_sources,
            start_task=self._start_fetch,
        )
        #: the drift monitors and the hub of their alerts (``monitor_drift``)
        self._drift = DriftMonitors()
        self._register_lock = anyio.Lock()
        #: what sinks must write before a checkpoint's file is (``guard_checkpoints``)
        self._guards = CheckpointGuards()
        self._coordinator = CheckpointCoordinator(
            self.checkpoints,
            topology=self._topology,
            router=self._router,
            progress=self._progress,
            ingest=self._ingest,
            register_lock=self._register_lock,
            guards=self._guards,
        )
        if backfill is not None:
            if workers:
                raise ConfigError("backfill= is not supported with workers >= 1 yet")
            # the features a restored checkpoint did not hold read the history up to it
            self._coordinator.backfill = functools.partial(self._backfill, backfill)
        self._active_ingests = 0
        self._ingests_done: anyio.Event | None = None
        #: a scope per ingest call under way, which the exit cancels past its deadline: a call
        #: that waits for room then (a batch held by backpressure, shielded by its caller as
        #: ``consume`` shields a batch read) raises ``RuntimeClosed`` instead of holding the
        #: exit
        self._ingest_scopes: set[anyio.CancelScope] = set()
        #: set as a call of those ends (the exit waits for them once it cut them)
        self._cut_done: anyio.Event | None = None
        #: the scopes of the calls given an offset that wait at a checkpoint's gate, cut as
        #: the exit begins
        self._gate_scopes: set[anyio.CancelScope] = set()
        #: set while the flusher waits to be woken (nothing buffered for a while): the end of
        #: an ingest call that leaves something buffered sets it
        self._flusher_wake: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._running = False
        #: statistics, metrics, descriptions, and the Prometheus endpoint
        self._observer = Observer(
            self._topology,
            self._ingest,
            self._system.dead_letters,
            self._drift,
            self._clock,
            lateness=self._lateness,
            last_checkpoint=lambda: self.last_checkpoint,
            expected_event_rate=expected_event_rate,
            expected_keys=expected_keys,
            server=self._metrics_server,
            interval=self.metrics_interval,
            check_running=self._check_running,
        )
        #: with workers: the front that routes events to them (and the rest above is unused)
        self._front: WorkerFront | None = None
        if workers:
            make_runtime = functools.partial(
                FeatureRuntime,
                feature_set,
                # each worker's runtime has shards x workers shards, of which the worker's
                # key groups fill its ``shards``: KeyRouter deals key groups out in ranges
                shards=shards * workers,
                batch_size=batch_size,
                linger=linger,
                mailbox_capacity=mailbox_capacity,
                key_groups=key_groups,
                payload_format=payload_format,
                sample_every=sample_every,
                expected_event_rate=expected_event_rate / workers,
                expected_keys=max(1, expected_keys // workers),
                shutdown_timeout=shutdown_timeout,
                dead_letters_capacity=dead_letters_capacity,
                dead_letters_max_bytes=dead_letters_max_bytes,
                route_cache_size=route_cache_size,
                max_restarts=max_restarts,
                restart_period=restart_period,
                gc_threshold=gc_threshold,
                # each worker gets a copy of each custom source (checked picklable above)
                sources=custom_sources or None,
            )
            self._front = WorkerFront(
                workers=workers,
                make_runtime=make_runtime,
                reader=self._reader,
                key_groups=key_groups,
                batch_size=batch_size,
                linger=self.linger,
                dead_letters=self._system.dead_letters,
                route_cache_size=route_cache_size,
                names=feature_set.names,
                shards=shards * workers,
                progress=self._progress,
                checkpoints=self.checkpoints,
                feature_set=feature_set.name,
                max_restarts=max_restarts,
                restart_period=restart_period,
                streams=feature_set.stream_names,
                joins=tuple(join.name for join in feature_set.joins),
                clock=self._clock,
                sources=tuple(dict.fromkeys(lookup.source for lookup in feature_set.lookups)),
                backend=self._backend,
            )
            if self._front.checkpoints is not None:
                self._front.checkpoints.guards = self._guards

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
        # put back last, once everything else has stopped
        self._gc.raise_()
        stack.callback(self._gc.release)
        if self._front is not None:
            return await self._enter_front(stack, self._front)
        try:
            if self._coordinator.store is not None:
                # one runtime per checkpoint directory, held until the last checkpoint is written
                await stack.enter_async_context(self._coordinator.store.lock(self.feature_set.name))
            stack.callback(self._topology.close_hubs)
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
            await self._observer.serve(stack, self._tg)
            self._coordinator.start(self._tg)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        return await self._begin(stack)

    async def _begin(self, stack: AsyncExitStack) -> FeatureRuntime:
        """Mark the runtime as running, then start reading its inputs."""
        self._started(stack)
        if self._inputs:
            try:
                await self._inputs.start(
                    self, stack, self._final_positions, self._shutdown_left, self._shutdown_spent
                )
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        return self

    def _started(self, stack: AsyncExitStack) -> FeatureRuntime:
        """Mark the runtime as running (in process or over workers), and say so."""
        self._stack = stack
        self._running = True
        self._observer.started_at = time.time()
        _log.info(
            "runtime_started",
            feature_set=self.feature_set.name,
            features=len(self.feature_set.features),
            shards=self.shards,
            workers=self.workers,
            batch_size=self.batch_size,
        )
        return self

    async def _enter_front(self, stack: AsyncExitStack, front: WorkerFront) -> FeatureRuntime:
        try:
            # the groups each worker makes of the feature set (for the drift monitors here)
            self._topology.layout(self.feature_set.features, self.feature_set)
            # the drift monitors run here, on the workers' updates as the front republishes
            # them: their alerts end last, after the monitors stopped
            stack.callback(self._drift.close)
            await stack.enter_async_context(self._system)
            await front.start(stack)
            if self._metrics_server is not None:
                # the endpoint serves the workers' metrics, merged (as ``metrics``)
                await front.serve_metrics(
                    self._metrics_server, stack, self.metrics_interval, self._front_metrics
                )
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        return await self._begin(stack)

    async def _exit_front(
        self,
        front: WorkerFront,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        self._running = False
        self._cut_gate_waits()
        timeout = self._system.shutdown_timeout
        deadline = anyio.current_time() + timeout
        try:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(timeout) as scope:
                    while self._active_ingests:
                        self._ingests_done = anyio.Event()
                        await self._ingests_done.wait()
                if scope.cancelled_caught:
                    await self._cut_ingests()
                    front.abandon_unsent()
                await front.stop(deadline)
        finally:
            # what is left of the deadline is the rest's (the inputs' closing, the actors')
            self._system.shutdown_timeout = max(deadline - anyio.current_time(), 0.001)
            result = await self._stack.__aexit__(exc_type, exc, tb)
        _log.info(
            "runtime_stopped",
            feature_set=self.feature_set.name,
            ingested=front.ingested,
            rejected=front.rejected,
        )
        return result

    def _local(self, what: str) -> None:
        """Refuse ``what`` with workers (not supported there yet)."""
        if self._front is not None:
            raise ConfigError(f"{what} is not supported with workers >= 1 yet (docs/scaling.md)")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._inputs and self._running:
            # The inputs stop first (a batch read is ingested whole), within half the one
            # deadline: the rest is the runtime's, for its last batches and checkpoint. A read
            # still under way then (shielded, bounded by the source's own timeouts) ends with
            # the inputs' task group; its batch is refused, the runtime having stopped, and
            # read again after a restart.
            timeout = self._system.shutdown_timeout
            began = anyio.current_time()
            with anyio.CancelScope(shield=True), anyio.move_on_after(timeout / 2):
                await self._inputs.stop()
            spent = anyio.current_time() - began
            self._system.shutdown_timeout = max(timeout - spent, 0.001)
        try:
            if self._front is not None:
                result = await self._exit_front(self._front, exc_type, exc, tb)
            else:
                result = await self._exit_here(exc_type, exc, tb)
        except BaseException as error:
            # the runtime's own error (Escalated...) goes out; an input's, not raised yet, is
            # named on it rather than only logged
            failure = self._inputs.untold_failure()
            if failure is not None:
                error.add_note(f"an input of the runtime failed too: {failure!r}")
            raise
        failure = self._inputs.untold_failure()
        if failure is not None:
            if exc is not None and not result:  # the block's error goes out: named on it
                exc.add_note(f"an input of the runtime failed too: {failure!r}")
            else:
                raise failure  # an input that failed, which nothing raised yet
        return result

    async def wait_inputs(self) -> list[ConsumeResult | None]:
        """Wait until every input of ``inputs=`` ended (each a finite source, such as a file,
        read to its end) and return what each consumed (a :class:`ConsumeResult`, None for
        an input that failed), in the order given; or until one fails, and raise its error
        (the others go on). Each failure is raised once: call again to wait for the others.

        Raises:
            Exception: the error of an input that failed (each raised once).
            RuntimeClosed: the runtime is not running, or failed while the inputs were read.
            RuntimeError: the runtime has no inputs, or it stopped before they ended.
        """
        self._check_running()
        try:
            return await self._inputs.wait()
        except InputsStopped:
            self._check_running()  # the runtime failed meanwhile: that says why
            raise

    def _shutdown_left(self) -> float:
        """What is left of the shutdown deadline (while the runtime stops)."""
        return self._system.shutdown_timeout

    def _shutdown_spent(self, seconds: float) -> None:
        """``seconds`` of the shutdown deadline were used (by the inputs' closing)."""
        self._system.shutdown_timeout = max(self._system.shutdown_timeout - seconds, 0.001)

    def _final_positions(self) -> Any:
        """What the inputs may commit once the runtime stopped: the offset of its last
        checkpoint (with checkpoints), or its offset (without: each batch is committed once
        accepted)."""
        if self.checkpoints is None:
            return self.offset
        info = self.last_checkpoint
        return None if info is None else info.offset

    async def _exit_here(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """``__aexit__`` of the in-process runtime."""
        assert self._stack is not None and self._tg is not None
        self._running = False
        self._cut_gate_waits()
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
                    await self._cut_ingests()
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

    def _cut_gate_waits(self) -> None:
        """As the exit begins: end the waits of calls given an offset at a checkpoint's gate
        (not under way yet: refused once it opens anyway)."""
        for scope in self._gate_scopes:
            scope.cancel()

    async def _cut_ingests(self) -> None:
        """Past the shutdown deadline: end the ingest calls given an offset still under way
        (each waits for room, or the gate of a checkpoint), which then raise
        ``RuntimeClosed``, and give them a moment to unwind (a call whose wait ended in the
        same turn as the cut goes on until its next check) before what they left unsent is
        dead-lettered. Shielded: the caller runs past its deadline."""
        for scope in self._ingest_scopes:
            scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CUT_GRACE):
            while self._ingest_scopes:
                self._cut_done = anyio.Event()
                await self._cut_done.wait()

    def _stopped_under(self, accepted: int) -> NoReturn:
        """An ingest call met the actors (or the workers) stopped under it: the runtime
        failed (the escalation, or the worker's failure, says why), or the call waited for
        room past the shutdown deadline. Raises ``RuntimeClosed`` saying which."""
        if self._system.escalation is not None:
            self._check_running()
        front = self._front
        if front is not None and front.failure is not None and not front.failed_at_deadline:
            front.check()  # a worker failed (not at the shutdown's deadline): that says why
        raise RuntimeClosed(_CUT.format(accepted=accepted)) from None

    def _enter_ingest(self) -> None:
        self._check_running()
        self._active_ingests += 1

    def _leave_ingest(self) -> None:
        self._active_ingests -= 1
        if not self._active_ingests and self._ingests_done is not None:
            self._ingests_done.set()
        wake = self._flusher_wake
        if wake is not None and self._ingest.pending():
            wake.set()  # something waits for its linger (or a send cancelled half-way)

    async def _flusher(self) -> None:
        """Every ``linger / 2``, send the buffers that waited ``linger`` behind busy shards.
        Once nothing has been buffered for :data:`FLUSHER_IDLE_TICKS` ticks, it waits to be
        woken by the end of an ingest call that leaves something buffered: an idle runtime
        runs no timer (it took about 3% of a core waking every 2.5 ms)."""
        linger = self.linger
        ingest = self._ingest
        quiet = 0
        while True:
            if quiet >= FLUSHER_IDLE_TICKS:
                wake = self._flusher_wake = anyio.Event()
                try:
                    if not ingest.pending():  # looked at again once the event is published
                        await wake.wait()
                finally:
                    self._flusher_wake = None
                quiet = 0
            await anyio.sleep(linger / 2)
            assert self._tg is not None
            for shard in ingest.due(time.perf_counter() - linger):
                # Each send in a task of its own, and none for a shard that is already sending:
                # a shard whose mailbox is full delays only itself, not the others' lingers.
                if not ingest.sending(shard):
                    self._tg.start_soon(ingest.send, shard)
            quiet = 0 if ingest.pending() else quiet + 1

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
        if self._front is not None:
            self._front.check()

    # -- ingest --------------------------------------------------------------------------------
    @overload
    async def ingest(
        self,
        event: Any,
        *,
        stream: str | None = None,
        offset: Any = None,
        explain: Literal[False] = False,
    ) -> bool: ...
    @overload
    async def ingest(
        self,
        event: Any,
        *,
        stream: str | None = None,
        offset: Any = None,
        explain: Literal[True],
    ) -> IngestResult: ...
    async def ingest(
        self, event: Any, *, stream: str | None = None, offset: Any = None, explain: bool = False
    ) -> bool | IngestResult:
        """Accept one event; wait if the runtime is full (backpressure).

        ``stream`` names the feature set's stream the event belongs to (default: the first);
        only that stream's features see it. ``offset``: the event's position in your input
        (any msgpack-able value, e.g. a Kafka offset); checkpoints record the last one given,
        to resume from after a restart (see :attr:`offset`).

        Returns True if the event was accepted, False if it was invalid: it is then in
        :attr:`dead_letters` with the reason and the raw payload, and the runtime goes on.
        With ``explain=True``, an :class:`IngestResult` instead: ``accepted`` 1 or 0, and for
        a refused event a :class:`Rejection` with the field at fault and the reason (what a
        service answers a bad request with; the event is in dead letters all the same).

        Raises:
            RuntimeClosed: the runtime is not running, or the shutdown deadline passed
                while the call waited for room.
            ValueError: ``stream`` is not a stream of the feature set.
        """
        if explain:
            tag = self._ingest.stream_index(stream)
            accepted = await self.ingest(event, stream=stream, offset=offset)
            # read again for the reason (ingest records it in dead letters only)
            why = () if accepted else tuple(rejections_of(self._reader, (event,), tag))
            return IngestResult(int(accepted), why)
        tag = self._ingest.stream_index(stream)
        if self._front is not None:
            return await self._ingest_all((event,), offset, tag) == 1
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
            ingest = self._ingest
            if len(ingest.buffers[shard]) >= self.batch_size:
                await ingest.send(shard, partial=False)
            elif ingest.idle(shard):
                await ingest.send(shard)  # its actors wait: no reason to make the event wait
            return True
        except ActorStopped:
            self._stopped_under(1)
        finally:
            self._leave_ingest()

    @overload
    async def ingest_many(
        self,
        events: Any,
        *,
        stream: str | Iterable[str] | None = None,
        offset: Any = None,
        explain: Literal[False] = False,
    ) -> int: ...
    @overload
    async def ingest_many(
        self,
        events: Any,
        *,
        stream: str | Iterable[str] | None = None,
        offset: Any = None,
        explain: Literal[True],
    ) -> IngestResult: ...
    async def ingest_many(
        self,
        events: Any,
        *,
        stream: str | Iterable[str] | None = None,
        offset: Any = None,
        explain: bool = False,
    ) -> int | IngestResult:
        """Accept many events in order; wait when the runtime is full.

        ``events`` is any iterable of events of one ``stream`` (default: the first), or a
        sequence of events of several streams with ``stream`` an iterable of as many names,
        each event's stream (a merged source, as a join reads it, in one call).

        ``offset``: the position in your input after the last of ``events``, recorded by
        checkpoints (see :attr:`offset`); a checkpoint then waits for the whole call, so that
        it never records the offset with half of the call's events, and a call under way when
        the runtime stops goes on to its end (the exit waits for it, within
        ``shutdown_timeout``). Without it, a checkpoint may fall between two batches of the
        call (:attr:`position` counts the events read), and a call under way when the runtime
        stops ends there with :class:`RuntimeClosed`.

        Returns the number accepted; invalid events go to dead letters as with :meth:`ingest`.
        With ``explain=True`` (``events`` are then read into a list first), an
        :class:`IngestResult`: the number accepted, and a :class:`Rejection` for each event
        refused, with its index in ``events``, the field at fault and the reason. The reasons
        are found by reading each event before the call ingests it: an event whose time
        crosses a ``max_future`` or ``max_past`` bound in between (the bounds move with the
        wall clock, and a long call waits while the runtime is full) can be refused without a
        rejection, or have one though it was accepted.

        Raises:
            RuntimeClosed: the runtime is not running; or it is stopping and the call, given
                no ``offset``, stops at its next batch; or the shutdown deadline passed while
                the call was under way (its offset then not recorded). The message says how
                many of its events were accepted.
            ValueError: a stream is not a stream of the feature set, or ``stream`` names a
                number of streams other than the number of ``events``.
        """
        if explain:
            events = list(events)
        if stream is None or isinstance(stream, str):
            tags: int | list[int] = self._ingest.stream_index(stream)
        else:
            tags = self._ingest.stream_indexes(events, list(stream))
        if explain:
            rejections = rejections_of(self._reader, events, tags)
            return IngestResult(await self._ingest_all(events, offset, tags), tuple(rejections))
        return await self._ingest_all(events, offset, tags)

    async def _ingest_all(self, events: Iterable[Any], offset: Any, tags: int | list[int]) -> int:
        """``events`` (of stream ``tags``, or ``tags[i]`` each) into the shards, or the
        workers; returns the number accepted."""
        front = self._front
        if front is None:
            return await self._ingest_chunks(events, offset, tags, self._ingest.route, self._sent)
        accepted = await self._ingest_chunks(events, offset, tags, front.route, self._front_sent)
        if offset is not None and front.log_full and self._running:
            await front.relieve_log()
        return accepted

    async def _ingest_chunks(
        self,
        events: Iterable[Any],
        offset: Any,
        tags: int | list[int],
        route: Callable[[list[Any], int | list[int]], int],
        sent: Callable[[Any], Awaitable[None]],
    ) -> int:
        """``ingest_many``'s loop, in process and with workers: each chunk of ``batch_size``
        events (of stream ``tags``, or ``tags[i]`` each) is routed (``route``: into the
        shards' or the workers' buffers), then ``sent(offset)`` sends what is due. A
        checkpoint falls between two chunks, or, for a call given an ``offset``, before or
        after the whole call."""
        progress = self._progress
        if progress.gate is not None:
            if offset is None:
                await progress.wait()
            else:
                await self._wait_gate_cuttable()
        self._enter_ingest()
        if offset is not None:
            progress.enter_offset_call()
        # A call given an offset runs in a scope that the exit cancels past its deadline
        # (its caller may shield it: ``consume`` does), checked again before each chunk and
        # before the offset is recorded, in case the call was between waits when cut. One
        # without needs none (about 7 us a call): it stops at its next chunk once the runtime
        # stops, and a wait for room meets the actors stopped at the latest.
        scope = None if offset is None else anyio.CancelScope()  # (4 us to make one)
        if scope is not None:
            self._ingest_scopes.add(scope)
        accepted = 0
        try:
            with nullcontext() if scope is None else scope:
                size = self.batch_size
                iterator = iter(events)
                done = 0
                while True:
                    if progress.gate is not None and offset is None:
                        await progress.wait()  # a checkpoint between two chunks of the call
                    if scope is not None and scope.cancel_called:
                        break
                    chunk = list(islice(iterator, size))
                    if not chunk:
                        if offset is not None:
                            progress.offset = offset
                        return accepted
                    if isinstance(tags, int):
                        accepted += route(chunk, tags)
                    else:
                        accepted += route(chunk, tags[done : done + len(chunk)])
                    done += len(chunk)
                    progress.position += len(chunk)
                    await sent(offset)
                    # A call given an offset goes on to its end (the exit waits for it within
                    # its deadline): cut short, the state would hold its first chunks without
                    # the offset after them, and a restart would read them again.
                    if not self._running and offset is None:
                        raise RuntimeClosed(
                            f"the runtime is shutting down; {accepted} events of this call "
                            "were accepted (they will be applied), the rest were not read"
                        )
        except ActorStopped:
            self._stopped_under(accepted)
        finally:
            if scope is not None:
                self._ingest_scopes.discard(scope)
                if self._cut_done is not None:
                    self._cut_done.set()
                progress.leave_offset_call()
            self._leave_ingest()
        # only when the exit cut the call short, past its deadline (its offset not recorded:
        # no checkpoint is taken then, and a source reads the call's events again)
        raise RuntimeClosed(_CUT.format(accepted=accepted))

    async def _wait_gate_cuttable(self) -> None:
        """Wait for a checkpoint under way to open the gate, in a scope the exit cuts as it
        begins: such a call is not under way yet, and would be refused once the gate opens
        anyway (a checkpoint stuck, say its capture behind a subscription nobody reads, would
        otherwise hold a shielded call, and the exit with it). Cut, it goes on to
        ``_enter_ingest``, which raises ``RuntimeClosed``."""
        self._check_running()
        scope = anyio.CancelScope()
        self._gate_scopes.add(scope)
        try:
            with scope:
                await self._progress.wait()
        finally:
            self._gate_scopes.discard(scope)

    async def _sent(self, offset: Any) -> None:
        """In process, after a chunk: send each shard's full buffer, and the partial one of an
        idle shard (its actors wait for work: it leaves now rather than after ``linger``)."""
        ingest = self._ingest
        size = self.batch_size
        buffers = ingest.buffers
        sent = False
        for shard in range(self.shards):
            buffer = buffers[shard]
            if len(buffer) >= size:
                await ingest.send(shard, partial=False)
                sent = True
            elif buffer and ingest.idle(shard):
                await ingest.send(shard)
                sent = True
        if sent:
            # Let the shard actors apply the batch now, while its events are still in the
            # CPU's caches, rather than after the mailboxes fill up.
            await anyio.lowlevel.checkpoint()

    async def _front_sent(self, offset: Any) -> None:
        """With workers, after a chunk: send the full buffers and those of idle workers
        (waiting while a worker's socket is full); when the front's log of events since the
        last checkpoint is full, take one and wait for it (a call given an ``offset``: after
        the whole call)."""
        front = self._front
        assert front is not None
        await front.send_due()
        if offset is None and front.log_full:
            await front.relieve_log()

    async def consume(
        self,
        source: Source,
        *,
        stream: str | None = None,
        batch_size: int = 1024,
        until: Literal["end", "idle"] | int = "end",
    ) -> ConsumeResult:
        """Read ``source`` into the runtime until it ends, or until ``until``: batches of at
        most ``batch_size`` records ingested into ``stream`` with :meth:`ingest_many` (so it
        waits while the runtime is full), rejected records to :attr:`dead_letters`, the
        position reached recorded in :attr:`offset` under the source's name (checkpoints hold
        it; the source starts from the position the runtime holds for it), positions committed
        to the source once a checkpoint holds them. See :func:`runtime.consume` and
        ``docs/connectors.md``.

        Raises:
            RuntimeClosed: the runtime is not running.
            ValueError: ``batch_size``, ``until`` or ``stream`` is not valid.
            ConfigError: :attr:`offset` was given by ``ingest`` calls, not by ``consume``.
        """
        self._check_running()
        return await consume_source(self, source, stream=stream, batch_size=batch_size, until=until)

    async def flush(self) -> None:
        """Send every partial batch and wait until every actor has applied what it was sent.

        With ``idle_timeout`` or ``state_ttl`` set, windowed groups also apply idle time and
        expiry at once, rather than at their next timer tick.
        """
        self._check_running()
        if self._front is not None:
            return await self._front.flush()
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
        if self._front is not None:
            checkpoints = self._front.checkpoints
            return None if checkpoints is None else checkpoints.restored
        return self._coordinator.restored

    @property
    def last_checkpoint(self) -> CheckpointInfo | None:
        """The last checkpoint taken, or None."""
        if self._front is not None:
            checkpoints = self._front.checkpoints
            return None if checkpoints is None else checkpoints.last
        return self._coordinator.last

    def guard_checkpoints(self, guard: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Make every checkpoint await ``guard()`` once the state is captured and before its
        file is written (with workers, before it is committed); returns a function that
        removes the guard. ``guard()`` returns once everything the runtime published before
        the call is durable downstream; if it raises, the checkpoint fails.

        For sinks: without a guard, a process that dies after a checkpoint is written but
        before a sink wrote the updates of the events it covers would lose them (the restored
        state holds those events, so their updates are not published again).
        :func:`runtime.run_sink` adds one for its sink, so delivery to sinks is at least once
        across a crash.
        """
        return self._guards.add(guard)

    async def checkpoint(self) -> CheckpointInfo:
        """Take a checkpoint now: a consistent snapshot of every actor's state with the input
        position, written atomically to the checkpoint directory.

        Ingest waits (at a batch boundary) while every event accepted before is applied and
        the state is captured; the file is written after, while ingest goes on. With
        workers, the checkpoint is aligned: ingest waits only while a barrier is queued to
        every worker at one input position; each worker writes its key groups' state as of
        that position to a part file, and the checkpoint's own file, written last, commits
        them (``docs/scaling.md``, "How recovery works").

        Raises:
            ConfigError: the runtime has no ``checkpoints`` directory.
            CheckpointError: the state could not be encoded.
            OSError: the file could not be written.
            RuntimeClosed: the runtime is not running, or stopped while the checkpoint was
                taken (its actors, or its workers, stopped before they answered).
        """
        self._check_running()
        front = self._front
        if front is not None:
            try:
                return await front.checkpoint()
            except RuntimeClosed as exc:
                if not front.failed_at_deadline:
                    raise  # a worker failed: that says why
                why = str(exc).removeprefix("the runtime stopped: ")
                raise RuntimeClosed(_STOPPED_IN_CHECKPOINT.format(why=why)) from None
        try:
            return await self._coordinator.checkpoint()
        except ActorStopped as exc:
            if self._system.escalation is not None:
                self._check_running()  # an actor failed beyond its restarts: that says why
            raise RuntimeClosed(_STOPPED_IN_CHECKPOINT.format(why=exc)) from None

    # -- reading -------------------------------------------------------------------------------
    async def get(
        self, key: Any, features: list[str] | None = None, *, as_of: Any = None
    ) -> FeatureVector:
        """The key's current feature vector with its freshness.

        Events of this key accepted before the call are included. A key never seen gets the
        features' empty values (0 for counts, sums and distinct counts, None otherwise) and
        ``last_event_time=None``.

        ``as_of``: the time the windowed features are read as of (``docs/serving.md``): a
        time as an event's (a number in the feature set's ``time_unit``, a datetime, an
        ISO-8601 string), ``"now"`` (the runtime's clock) or ``"last_event"`` (each key's own
        clock: its newest event). None: the feature set's ``serve_as_of``, ``"last_event"``
        by default. Windows are read as the key's state would show them had its clock moved
        on to that time with no further event; a time before a key's clock (or, for keyed
        aggregates, its last event) gives the values at that clock, and the vector's
        ``as_of`` says so. A read never changes state.

        Raises:
            UnknownFeature: a name in ``features`` is not a feature of the runtime.
            TypeError: the key is not a str, int or bytes, ``features`` is a str (not a list
                of names), or ``as_of`` not a time.
            ValueError: the key is an int beyond 64 bits, which ingest refuses, or ``as_of``
                is not a usable time.
        """
        return (await self.get_many([key], features, as_of=as_of))[key]

    async def get_many(
        self, keys: Iterable[Any], features: list[str] | None = None, *, as_of: Any = None
    ) -> dict[Any, FeatureVector]:
        """Vectors of many keys, in the order given (duplicates once): one ask per shard and
        feature group instead of one per key. Same rules as :meth:`get`."""
        self._check_running()
        if isinstance(features, str):
            # a str is an iterable of one-letter names: refused, naming the likely intent
            raise TypeError(
                f"features is a list of names, got str {features!r} (did you mean [{features!r}]?)"
            )
        at = self._reader.read_time(
            self.feature_set.serve_as_of if as_of is None else as_of, self._clock
        )
        return await self._get_many_at(keys, features, at)

    async def _get_many_at(
        self, keys: Iterable[Any], features: list[str] | None, at: int | None
    ) -> dict[Any, FeatureVector]:
        """:meth:`get_many` as of ``at``, an event time in ms already read (None:
        as of each key's last event). With workers, each worker is asked as of the same
        ``at`` (read once, here); a worker answers the front with this too."""
        if self._front is not None:
            return await self._front.get_many(keys, features, at)
        # an int key ingest refuses (beyond 64 bits) is refused here too, before a dict of
        # keys is made: such keys can be chosen to collide in Python's hash
        wanted = list(dict.fromkeys(self._reader.lookup_key(key) for key in keys))
        by_shard: dict[int, list[Any]] = {}
        for key in wanted:
            by_shard.setdefault(self._router.shard_of(key), []).append(key)
        found = await self._topology.read(by_shard, features, at)
        names = features if features is not None else self.feature_set.names
        now_ms = time.time() * 1000
        return {key: found[key].vector(key, names, self._lateness, now_ms) for key in wanted}

    def updates(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[FeatureUpdate]:
        """Subscribe to every change, as it happens: an async iterator of ``FeatureUpdate``.

        Updates travel in batches, one :class:`UpdateBatch` per batch of events a shard
        applied: ``subscription.batches()`` reads them as they are (columns and rows, no
        object per event: the cheapest way to read every update), and iterating the
        subscription builds each ``FeatureUpdate`` as it is reached. Subscribing costs the
        runtime one row tuple per event and group. ``policy``: ``"block"`` slows ingest to the
        subscriber's pace (nothing lost); ``"drop_oldest"`` keeps the newest ``buffer``
        updates. Iteration ends at shutdown or on ``aclose()``.

        A ``"block"`` subscription that is held but no longer read stalls the shards that
        publish to it, and so ingest, and at shutdown it holds the drain until
        ``shutdown_timeout``: close subscriptions you stop reading, or use ``"drop_oldest"``.
        ``buffer`` is an int >= 1; the subscription's ``statistics()`` shows its depth, its
        drops and whether publishers wait for it.
        """
        self._check_running()
        if self._front is not None:
            return self._front.updates.subscribe(buffer, policy)
        return self._topology.updates.subscribe(buffer, policy)

    @property
    def dead_letters(self) -> Any:
        """Rejected events and undeliverable messages (``actors.DeadLetters``)."""
        return self._system.dead_letters

    # -- registering ---------------------------------------------------------------------------
    async def register(
        self, *features: Feature, backfill: Iterable[Any] | AsyncIterable[Any] | None = None
    ) -> list[FeatureDescription]:
        """Add features while running; they see events accepted from now on.

        Features registered together form one group (so a ratio can be registered with its
        operands). Returns a description of each with its estimated cost.

        ``backfill``: the input from its start (events, with several streams ``(stream,
        event)`` pairs; or a connector's ``Source`` at its start): its first :attr:`position`
        events, all the runtime has read, are replayed into a runtime of the new features,
        whose state they then take, so that they hold the values of features that ran from
        the start. Ingest waits meanwhile. Features whose state a restored checkpoint held
        (registered again) take that instead.

        Raises:
            SpecError: a feature is invalid or its name is taken.
            Exception: what reading ``backfill`` raised: the features are registered then,
                and hold only the events from the call on (a note on the error says so).
        """
        self._check_running()
        if not features:
            raise SpecError("register() needs at least one feature")
        if backfill is not None and self.workers:
            raise ConfigError("register(backfill=) is not supported with workers >= 1 yet")
        if self._front is not None:
            return await self._front_register(features)
        async with self._register_lock:
            feature_set = msgspec.structs.replace(
                self.feature_set, features=(*self.feature_set.features, *features)
            )
            await self._ingest.send_all()
            groups = await self._topology.add_groups(list(features), feature_set)
            await self._topology.wait_idle()
            # the new features may keep event values as they are: screen those from now on
            self._reader.keep(keeps_of(feature_set))
            empty = [group for group in groups if not await self._coordinator.adopt(group)]
            if backfill is not None and empty:
                try:
                    await self._coordinator.fill(empty, functools.partial(self._backfill, backfill))
                except Exception as exc:
                    names = ", ".join(name for group in empty for name in group.names)
                    exc.add_note(
                        f"register(backfill=): the backfill failed; the features ({names}) are "
                        "registered and run, but hold only the events from now on"
                    )
                    _log.error("backfill_failed", features=names, error=repr(exc))
                    raise
        for group in groups:
            _log.info("features_registered", group=group.name, features=list(group.names))
        return [self._observer.description(f, self._topology.group_of(f.name)) for f in features]

    async def _backfill(self, history: Any, names: list[str], upto: int) -> list[Any]:
        """The state of a runtime of the features ``names`` (and the features they read) that
        read the first ``upto`` events of ``history`` (``backfill=``), as the feature groups of
        a checkpoint (``ActorState``s)."""
        wanted = set(names)
        features = self.feature_set.features
        while True:  # ratios and derived features need their operands
            more = {n for f in features if f.name in wanted for n in f.depends_on()} - wanted
            if not more:
                break
            wanted |= more
        # without the wall-clock bounds of event times (max_past, max_future): online they
        # judged each event at its arrival; applied now, max_past refuses the older history
        feature_set = msgspec.structs.replace(
            self.feature_set,
            features=tuple(f for f in features if f.name in wanted),
            max_past=None,
            max_future=None,
        )
        several = len(feature_set.stream_names) > 1
        async with FeatureRuntime(
            feature_set,
            shards=self.shards,
            key_groups=self._router.key_groups,
            payload_format=self._options.payload_format,
            clock=self._clock,
            sources=dict(self._topology._custom_sources) or None,
            gc_threshold=self._options.gc_threshold,
        ) as rt:
            read = 0
            chunk: list[Any] = []
            if callable(getattr(history, "iterate", None)) and hasattr(history, "seek"):
                # a connector's Source, at its start: its payloads (rejected records are
                # not events: ``position`` does not count them); refused whole, as by
                # ``consume``, if it cannot feed the feature set (a file without the key column)
                history.check(self.feature_set)
                items = history.iterate()
            elif isinstance(history, AsyncIterable):
                items = history
            else:
                items = _aiter(history)
            async for item in items:
                if read >= upto:
                    break
                read += 1
                chunk.append(item)
                if len(chunk) >= self.batch_size:
                    await _ingest_chunk(rt, chunk, several)
                    chunk = []
            if chunk:
                await _ingest_chunk(rt, chunk, several)
            await rt.flush()
            checkpoint = await rt._coordinator.capture(0)
        if read < upto:
            _log.warning("backfill_short", read=read, position=upto)
        return [state for state in checkpoint.actors if state.kind == "features"]

    async def _front_register(self, features: tuple[Feature, ...]) -> list[FeatureDescription]:
        """``register`` with workers: checked here (the feature set with them), registered
        in every worker at one point of its events (and again at that point by a worker
        started again), then the front's feature set and reader follow."""
        front = self._front
        assert front is not None
        try:
            blob = pickle.dumps(features)
        except Exception as exc:
            raise SpecError(
                f"register(): the features cannot be sent to the workers ({exc})"
            ) from exc
        async with self._register_lock:
            feature_set = msgspec.structs.replace(
                self.feature_set, features=(*self.feature_set.features, *features)
            )
            await front.register(blob, feature_set.names)
            self._topology.layout(features, feature_set)
            self._topology.feature_set = feature_set
            self._reader.keep(keeps_of(feature_set))
        _log.info("features_registered", features=[f.name for f in features])
        return [await self.describe(f.name) for f in features]

    def _start_fetch(self, task: Callable[[], Any]) -> None:
        """Run a fetch of an enricher as a task of the runtime."""
        assert self._tg is not None
        self._tg.start_soon(task)

    async def describe(self, name: str) -> FeatureDescription:
        """A feature's description, with its measured cost once events have flowed.

        Raises:
            UnknownFeature: no feature has that name.
        """
        self._check_running()
        if self._front is not None:
            # measured by every worker, merged; estimated here, for all the events and keys
            described = await self._front.describe(name)
            spec = next(f for f in self.feature_set.features if f.name == name)
            estimate = estimate_cost(
                spec, event_rate=self.expected_event_rate, keys=self.expected_keys
            )
            return msgspec.structs.replace(described, estimated_cost=estimate)
        return await self._observer.describe(name)

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
        self._local("rt.mailboxes()")
        return self._observer.mailboxes()

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
        if self._front is not None:
            return await self._front_metrics()
        return await self._observer.metrics()

    async def _front_metrics(self) -> RuntimeMetrics:
        """``metrics`` with workers: the workers' merged, with the front's own counts,
        uptime, checkpoint and dead letters."""
        front = self._front
        assert front is not None
        now = time.time()
        started = self._observer.started_at
        merged: RuntimeMetrics = await front.metrics(
            _metrics_decoder.decode,
            dict(self._system.dead_letters.statistics().by_reason),
            taken_at=now,
            uptime_s=now - started if started else 0.0,
            events_ingested=front.ingested_before + front.ingested,
            events_rejected=front.rejected_before + front.rejected,
            checkpoint=checkpoint_metrics(self.last_checkpoint, now),
        )
        # the drift monitors run here, in the application's process, not in the workers
        return msgspec.structs.replace(
            merged,
            drift=await self._drift.status(),
            actors=merged.actors + self._observer.drift_actors(),
        )

    async def prometheus_collector(self) -> FeatureCollector:
        """The runtime's metrics as a prometheus-client collector, for the application's own
        registry: ``prometheus_client.REGISTRY.register(await rt.prometheus_collector())``.

        The first call takes a snapshot; a task of the runtime then takes one every
        ``metrics_interval`` seconds, and a scrape (in any thread) reads the last one, never an
        actor. The families are ``metrics_port``'s, listed in ``docs/metrics.md``. Needs
        prometheus-client (the ``metrics`` extra) to collect.

        With workers, it serves the workers' merged metrics, without histograms (the
        samples stay in the workers): with ``metrics_port`` it is the endpoint's collector,
        refreshed by its task; without, a task of the runtime refreshes it every
        ``metrics_interval`` too.

        Raises:
            RuntimeClosed: the runtime is not running.
        """
        self._check_running()
        if self._front is not None:
            server = self._metrics_server
            if server is not None and server.collector is not None:
                return server.collector
            if self._front_collector is None:
                front_metrics = self._front_metrics

                async def gather(_histograms: Histograms) -> RuntimeMetrics:
                    return await front_metrics()

                self._front_collector = FeatureCollector(gather)
                self._front.start_task(
                    self._refresh_front_collector, self._front_collector, name="featurist-metrics"
                )
            await self._front_collector.refresh()
            return self._front_collector
        return await self._observer.prometheus_collector()

    async def _refresh_front_collector(self, collector: FeatureCollector) -> None:
        """With workers and no ``metrics_port``: a snapshot every ``metrics_interval``."""
        while True:
            await anyio.sleep(self.metrics_interval)
            try:
                await collector.refresh()
            except RuntimeClosed:
                return
            except Exception:  # a worker that does not answer now: the next round may
                _log.exception("metrics_refresh_failed")

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the Prometheus endpoint while it serves (the port it took, for
        ``metrics_port=0``), else None."""
        return self._observer.metrics_address

    async def statistics(self) -> RuntimeStatistics:
        """A snapshot of counters, state size and latency (asks every actor; with workers,
        every worker, summed)."""
        self._check_running()
        if self._front is not None:
            return await self._front.statistics()
        return await self._observer.statistics()

    def join_records(
        self, join: str | None = None, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[JoinRecord]:
        """Subscribe to the records of the join named ``join``, or of every join
        (``JoinRecord.join`` names it): matched pairs, and for outer and as-of joins the
        unmatched rows, in one :class:`JoinRecordBatch` per batch of events
        (``subscription.batches()``). ``buffer`` and ``policy`` as for :meth:`updates`.

        Raises:
            ValueError: the feature set has no join named ``join``.
        """
        self._check_running()
        if self._front is not None:
            return self._front.records_hub(join).subscribe(buffer, policy)
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
        if self._front is not None:
            # every worker warms its own cache (each fetches ``keys``)
            given = None if rows is None else {key: dict(row) for key, row in rows.items()}
            return await self._front.warm_up(source, list(dict.fromkeys(keys)), given)
        return await self._topology.warm_up(source, keys, rows)

    def invalidate(self, source: str, key: Any) -> bool:
        """Forget ``key``'s cached row of ``source`` (its row changed): the next event that
        needs it fetches it again. Returns whether a row was cached."""
        self._check_running()
        self._local("rt.invalidate()")
        return self._topology.source(source).cache.invalidate(key)

    def enriched_events(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[EnrichedEvent]:
        """Subscribe to the enriched events: each event of a stream with lookups, with its
        ``enrichment``, ``enrichment_metadata`` and ``"<lookup>.<column>"`` fields, once its
        fetches landed (a key's events in order), in batches
        (:class:`EnrichedBatch`, from ``subscription.batches()``). ``buffer`` and ``policy``
        as for :meth:`updates`."""
        self._check_running()
        if self._front is not None:
            return self._front.enriched.subscribe(buffer, policy)
        return self._topology.enriched.subscribe(buffer, policy)

    def late_events(
        self, *, buffer: int = 10_000, policy: Policy = "block"
    ) -> UpdateSubscription[LateEvent]:
        """Subscribe to events later than ``allowed_lateness`` (with
        ``late_policy="side_output"``): an async iterator of :class:`LateEvent`, in
        batches (:class:`LateEventBatch`, from ``subscription.batches()``). ``buffer``
        and ``policy`` as for :meth:`updates`; late events that arrive while nobody is
        subscribed are counted in ``statistics().windows.late_side_output`` only."""
        self._check_running()
        if self._front is not None:
            return self._front.late.subscribe(buffer, policy)
        return self._topology.late.subscribe(buffer, policy)

    async def recent_errors(self) -> list[FeatureError]:
        """Recent feature errors (the last 100 of each shard actor), by event time."""
        self._check_running()
        if self._front is not None:
            return await self._front.recent_errors()
        return await self._observer.recent_errors()

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
        updates = self._topology.updates if self._front is None else self._front.updates
        async with self._register_lock:
            planned = self._drift.plan(monitors, self.feature_set, self._drift_group)
            await self._drift.start(self._system, planned, updates, self._clock)

    def _drift_group(self, feature: str) -> tuple[str, tuple[str, ...]]:
        """The name of the group that computes ``feature``, and its features' names."""
        if self._front is not None:  # the groups the workers run, as laid out by the front
            for name, names in self._topology.laid_out:
                if feature in names:
                    return name, names
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
        front = self._rt._front
        if front is not None:
            return front.events_read
        ingest = self._rt._ingest
        return ingest.ingested + ingest.rejected

    async def step(self, now: float) -> None:
        """What was sent is applied at the clock's time (as ``flush`` does), then the clock
        moves to ``now`` and idle time and expiry are applied at it: half the asks of two
        flushes; a timer tick meanwhile reads one time or the other and finds nothing more
        to do."""
        self._rt._check_running()
        if self._rt._front is not None:
            await self._rt._front.step(now)  # each worker steps, its clock as this one
            return
        await self._rt._topology.settle(at=now)


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def _ingest_chunk(rt: FeatureRuntime, chunk: list[Any], several: bool) -> None:
    """A backfill's events, or ``(stream, event)`` pairs with several streams."""
    if several:
        await rt.ingest_many([event for _, event in chunk], stream=[s for s, _ in chunk])
    else:
        await rt.ingest_many(chunk)
