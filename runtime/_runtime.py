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

import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from itertools import islice
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

from actors import (
    ActorRef,
    ActorSystem,
    ConfigError,
    KeyRouter,
    MailboxConfig,
    Supervisor,
    get_logger,
)

from ._cost import CostEstimate, MeasuredCost, estimate_cost
from ._enrich_cache import DimensionCache
from ._enrich_fetch import MISSING as FETCHED_MISSING
from ._enrich_fetch import Fetcher, SourceError
from ._enrich_shard import EnrichShard, EnrichShardStats, GetEnrichStats, SourceRuntime
from ._enrich_sources import make_source
from ._events import EventReader, PayloadFormat
from ._exceptions import RuntimeClosed, SpecError, UnknownFeature
from ._ingest import Ingest
from ._join_engine import JoinConfig, JoinEngine
from ._join_shard import GetJoinStats, JoinShard, JoinShardStats
from ._kernel import CompiledGroup, compile_group
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
from ._shard import GetStates, GetStats, GroupShard, IdleTick, Ping, ShardStats
from ._spec import Feature, FeatureSet, enriched_stream
from ._spec_enrich import CustomSource
from ._spec_join import Join
from ._updates import Policy, UpdateHub, UpdateSubscription
from ._window_engine import WindowEngine
from ._window_shard import WindowShard, WindowStats, WindowStatsRequest

__all__ = ["FeatureRuntime"]

_log = get_logger("featurist")


@dataclass
class _Group:
    """A feature group: keyed aggregates (``compiled``) or windowed features (``engine``)."""

    name: str
    features: list[Any]
    compiled: CompiledGroup | None
    engine: WindowEngine | None = None
    refs: list[ActorRef[Any]] = field(default_factory=list)
    defaults: tuple[Any, ...] = ()
    #: the stream whose events the group sees
    stream: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        if self.engine is not None:
            return self.engine.names
        assert self.compiled is not None
        return self.compiled.names

    @property
    def types(self) -> tuple[str, ...]:
        if self.engine is not None:
            return self.engine.types
        assert self.compiled is not None
        return self.compiled.types


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an int {bound}, got {value!r}")


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
    ) -> None:
        if not isinstance(feature_set, FeatureSet):
            raise TypeError(f"feature_set must be a FeatureSet, got {type(feature_set).__name__}")
        if sources is not None and not isinstance(sources, Mapping):
            raise ConfigError(
                f"sources must map custom source names to objects, got {type(sources).__name__}"
            )
        self._custom_sources = dict(sources or {})
        custom = {s.name for s in feature_set.sources if isinstance(s, CustomSource)}
        for name in custom - set(self._custom_sources):
            raise ConfigError(f"sources: the custom source {name!r} needs an object here")
        for name, obj in self._custom_sources.items():
            if name not in custom:
                known = ", ".join(sorted(custom)) or "none"
                raise ConfigError(
                    f"sources: {name!r} is not a CustomSource of the feature set (custom: {known})"
                )
            if not callable(getattr(obj, "get_many", None)):
                raise ConfigError(f"sources: {name!r} has no get_many(keys) method")
        _check_int("key_groups", key_groups, 1)
        _check_int("shards", shards, 1, key_groups)
        _check_int("batch_size", batch_size, 1)
        _check_int("mailbox_capacity", mailbox_capacity, 1)
        _check_int("sample_every", sample_every, 1)
        if not (isinstance(linger, (int, float)) and 0 < linger < math.inf):
            raise ConfigError(f"linger must be > 0 seconds, got {linger!r}")
        if not (
            isinstance(expected_event_rate, (int, float)) and 0 <= expected_event_rate < math.inf
        ):
            raise ConfigError(
                f"expected_event_rate must be a number >= 0, got {expected_event_rate!r}"
            )
        _check_int("expected_keys", expected_keys, 1)
        self.feature_set = feature_set
        self.shards = shards
        self.batch_size = batch_size
        self.linger = float(linger)
        self.sample_every = sample_every
        self.expected_event_rate = expected_event_rate
        self.expected_keys = expected_keys
        self._mailbox = MailboxConfig(capacity=mailbox_capacity, max_batch_size=8)
        self._router = KeyRouter(shards=shards, key_groups=key_groups, cache_size=route_cache_size)
        self._reader = EventReader(
            key=feature_set.key,
            time=feature_set.time,
            time_unit=feature_set.time_unit,
            payload_format=payload_format,
        )
        self._lateness = feature_set.max_out_of_orderness_ms
        self._system = ActorSystem(
            "featurist",
            shutdown_timeout=shutdown_timeout,
            dead_letters_capacity=dead_letters_capacity,
            mailbox=self._mailbox,
        )
        self._hub: UpdateHub[FeatureUpdate] = UpdateHub()
        self._late_hub: UpdateHub[LateEvent] = UpdateHub()
        self._clock = clock
        ttl = feature_set.duration_ms("state_ttl")
        #: seconds after which a quiet key's state is dropped, or None
        self._ttl = None if ttl is None else ttl / 1000
        self._groups: list[_Group] = []
        #: per stream (the ingested ones, then the joins' records): its feature groups
        self._stream_groups: dict[str, list[_Group]] = {
            name: [] for name in feature_set.group_streams
        }
        #: what the Ingest sends batches to: the groups of the ingested streams (each gets its
        #: stream's events), then the joins (all of them, tagged by stream); the live list
        self._targets: list[Any] = []
        self._ingest = Ingest(
            self._reader,
            self._router,
            self._targets,
            batch_size,
            self._system.dead_letters,
            streams=feature_set.stream_names,
        )
        self._joins: list[_JoinGroup] = []
        self._records_hub: UpdateHub[JoinRecord] = UpdateHub()
        #: the enrichers (one per ingested stream with lookups) and the sources they share
        self._enrichers: list[_EnrichGroup] = []
        self._enriched_hub: UpdateHub[EnrichedEvent] = UpdateHub()
        self._sources: dict[str, SourceRuntime] = {}
        self._register_lock = anyio.Lock()
        self._active_ingests = 0
        self._ingests_done: anyio.Event | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._supervisor: Supervisor | None = None
        self._running = False
        self._started_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> FeatureRuntime:
        if self._stack is not None:
            raise RuntimeError("a FeatureRuntime can be entered once")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            stack.callback(self._hub.close)
            stack.callback(self._late_hub.close)
            stack.callback(self._close_record_hubs)
            stack.callback(self._enriched_hub.close)
            # sources before the actors, so that they close after the actors stopped
            await self._open_sources(stack)
            await stack.enter_async_context(self._system)
            self._supervisor = self._system.supervisor("features")
            await self._add_groups(list(self.feature_set.features), self.feature_set)
            for join in self.feature_set.joins:
                await self._add_join(join)
            for stream in self.feature_set.stream_names:
                if self.feature_set.lookups_of(stream):
                    await self._add_enricher(stream)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._flusher, name="featurist-flusher")
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
                    await self._drain_enrichers()
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

    async def ingest(self, event: Any, *, stream: str | None = None) -> bool:
        """Accept one event; wait if the runtime is full (backpressure).

        ``stream`` names the feature set's stream the event belongs to (default: the first);
        only that stream's features see it.

        Returns True if the event was accepted, False if it was invalid: it is then in
        :attr:`dead_letters` with the reason and the raw payload, and the runtime goes on.

        Raises:
            RuntimeClosed: the runtime is not running.
            ValueError: ``stream`` is not a stream of the feature set.
        """
        tag = self._tag(stream)
        self._enter_ingest()
        try:
            shard = self._ingest.route_one(event, tag)
            if shard is None:
                return False
            if len(self._ingest.buffers[shard]) >= self.batch_size:
                await self._ingest.send(shard, partial=False)
            return True
        finally:
            self._leave_ingest()

    async def ingest_many(self, events: Any, *, stream: str | Iterable[str] | None = None) -> int:
        """Accept many events in order; wait when the runtime is full.

        ``events`` is any iterable of events of one ``stream`` (default: the first), or a
        sequence of events of several streams with ``stream`` an iterable of as many names,
        each event's stream (a merged source, as a join reads it, in one call).

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
        self._enter_ingest()
        try:
            size = self.batch_size
            accepted = 0
            iterator = iter(events)
            offset = 0
            while True:
                chunk = list(islice(iterator, size))
                if not chunk:
                    return accepted
                if streams is not None:
                    accepted += ingest.route(chunk, streams[offset : offset + len(chunk)])
                    offset += len(chunk)
                else:
                    accepted += ingest.route(chunk, tag)
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
            self._leave_ingest()

    async def flush(self) -> None:
        """Send every partial batch and wait until every actor has applied what it was sent.

        With ``idle_timeout`` or ``state_ttl`` set, windowed groups also apply idle time and
        expiry at once, rather than at their next timer tick.
        """
        self._check_running()
        await self._ingest.send_all()
        # enrichers first: their stashes empty as their fetches land
        await self._drain_enrichers()
        # joins next: what they hand to the features of their records is then on its way
        for join in self._joins:
            for ref in join.refs:
                await ref.ask(Ping(), timeout=None)
                if self._ttl is not None or self.feature_set.idle_timeout is not None:
                    await ref.ask(IdleTick(), timeout=None)
        for group in self._groups:
            for ref in group.refs:
                await ref.ask(Ping(), timeout=None)  # a reply means every earlier batch is applied
                if self._ttl is not None or self.feature_set.idle_timeout is not None:
                    await ref.ask(IdleTick(), timeout=None)

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
        found: dict[Any, _Found] = {key: _Found() for key in wanted}
        groups = [
            group
            for group in self._groups
            if features is None or any(name in features for name in group.names)
        ]
        for shard, shard_keys in by_shard.items():
            await self._ingest.send(shard)
            # enrichers and joins first: what they hand to the features of their streams is
            # then on its way (an event still waiting for a fetch is not: flush waits for it)
            for enricher in self._enrichers:
                await enricher.refs[shard].ask(Ping(), timeout=None)
            for join in self._joins:
                await join.refs[shard].ask(Ping(), timeout=None)
            for group in groups:
                replies = await group.refs[shard].ask(GetStates(tuple(shard_keys)), timeout=None)
                for key, reply in zip(shard_keys, replies, strict=True):
                    found[key].add(group, reply)
        names = features if features is not None else self.feature_set.names
        now_ms = time.time() * 1000
        vectors = {}
        for key, item in found.items():
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
            groups = await self._add_groups(list(features), feature_set)
            self.feature_set = feature_set
        for group in groups:
            _log.info("features_registered", group=group.name, features=list(group.names))
        return [self._description(f, self._group_of(f.name), None) for f in features]

    def _group_of(self, name: str) -> _Group:
        for group in self._groups:
            if name in group.names:
                return group
        raise UnknownFeature(
            f"no feature named {name!r} (known: {', '.join(self.feature_set.names)})"
        )

    async def _add_groups(self, features: list[Any], feature_set: FeatureSet) -> list[_Group]:
        """Add the features as groups: per stream, keyed aggregates, then windowed features.

        Every group is compiled (and so validated) before any is started, so a feature that
        is refused leaves the runtime as it was.
        """
        planned: list[tuple[_Group, Callable[..., Any]]] = []
        for stream in feature_set.group_streams:
            mine = [f for f in features if feature_set.group_stream_of(f) == stream]
            windowed = [f for f in mine if feature_set.is_windowed(f.name)]
            keyed = [f for f in mine if not feature_set.is_windowed(f.name)]
            if keyed:
                planned.append(self._plan_keyed(keyed, len(self._groups) + len(planned)))
            if windowed:
                number = len(self._groups) + len(planned)
                planned.append(self._plan_windowed(windowed, feature_set, number))
            for group, _ in planned:
                group.stream = group.stream or stream
        for planned_group, planned_factory in planned:
            await self._spawn(planned_group, planned_factory)
        return [group for group, _ in planned]

    def _plan_keyed(self, keyed: list[Any], number: int) -> tuple[_Group, Callable[..., Any]]:
        name = f"g{number}"
        compiled = compile_group(keyed, group=name)
        group = _Group(name, keyed, compiled, defaults=compiled.values(compiled.new_state()))
        factory: Callable[..., Any] = functools.partial(
            GroupShard,
            compiled,
            name,
            hub=self._hub,
            sample_every=self.sample_every,
            state_ttl=self._ttl,
            clock=self._clock,
        )
        return group, factory

    def _plan_windowed(
        self, windowed: list[Any], feature_set: FeatureSet, number: int
    ) -> tuple[_Group, Callable[..., Any]]:
        name = f"w{number}"
        idle = feature_set.duration_ms("idle_timeout")
        ttl = feature_set.duration_ms("state_ttl")
        engine = WindowEngine(
            windowed,
            max_out_of_orderness=feature_set.max_out_of_orderness_ms,
            allowed_lateness=feature_set.duration_ms("allowed_lateness") or 0,
            late_policy=feature_set.late_policy,
            correction_horizon=feature_set.duration_ms("correction_horizon") or 0,
            emit=feature_set.emit,
            idle_timeout=None if idle is None else idle / 1000,
            state_ttl=None if ttl is None else ttl / 1000,
        )
        group = _Group(name, windowed, None, engine, defaults=engine.defaults)
        factory = functools.partial(
            WindowShard,
            engine,
            name,
            hub=self._hub,
            late_hub=self._late_hub,
            sample_every=self.sample_every,
            clock=self._clock,
        )
        return group, factory

    async def _spawn(self, group: _Group, factory: Callable[..., Any]) -> None:
        assert self._supervisor is not None
        for shard in range(self.shards):
            ref = await self._supervisor.spawn(
                functools.partial(factory, shard=shard),
                name=f"{group.name}-shard-{shard}",
                mailbox=self._mailbox,
            )
            group.refs.append(ref)
        self._groups.append(group)
        self._stream_groups[group.stream].append(group)
        if group.stream in self.feature_set.stream_names:
            # before the joins: a batch reaches the features of its stream first
            targets = self._targets
            joins = [t for t in targets if isinstance(t, _JoinGroup)]
            targets[:] = [t for t in targets if not isinstance(t, _JoinGroup)] + [group] + joins

    async def _add_join(self, join: Join) -> None:
        """Start one join: an actor per shard, fed by both of its streams' Ingests."""
        assert self._supervisor is not None
        feature_set = self.feature_set
        idle = feature_set.duration_ms("idle_timeout")
        config = JoinConfig(
            name=join.name,
            before=join.before_ms,
            after=join.after_ms,
            how=join.how,
            on=join.on,
            range=None
            if join.range is None
            else (join.range.left, join.range.right, join.range.min, join.range.max),
            predicate=join.predicate_function,
            merge=join.merge_strategy,  # type: ignore[arg-type]
            tolerance=join.tolerance_ms,
            max_buffered_per_key=join.max_buffered_per_key,
            # the total cap is split evenly among the shards' actors (never over the total)
            max_buffered=None
            if join.max_buffered is None
            else max(1, join.max_buffered // self.shards),
            max_out_of_orderness=feature_set.max_out_of_orderness_ms,
            allowed_lateness=feature_set.duration_ms("allowed_lateness") or 0,
            idle_timeout=None if idle is None else idle / 1000,
            state_ttl=self._ttl,
        )
        target = _JoinGroup(join.name, join)
        for shard in range(self.shards):
            ref = await self._supervisor.spawn(
                functools.partial(
                    JoinShard,
                    JoinEngine(config),
                    shard,
                    (
                        feature_set.stream_names.index(join.left),
                        feature_set.stream_names.index(join.right),
                    ),
                    self._stream_groups[join.name],
                    (self._records_hub, target.hub),
                    self._clock,
                    self._late_hub if feature_set.late_policy == "side_output" else None,
                ),
                name=f"join-{join.name}-shard-{shard}",
                mailbox=self._mailbox,
            )
            target.refs.append(ref)
        self._joins.append(target)
        self._targets.append(target)

    async def _open_sources(self, stack: AsyncExitStack) -> None:
        """Open each source with lookups, its cache and its fetcher."""
        used = {lookup.source for lookup in self.feature_set.lookups}
        for spec in self.feature_set.sources:
            if spec.name not in used:
                continue
            source: Any = self._custom_sources.get(spec.name)
            if source is None:
                source = make_source(spec)
            if hasattr(source, "open"):
                await source.open()
            if hasattr(source, "close"):
                stack.push_async_callback(source.close)
            fetcher = await stack.enter_async_context(Fetcher.from_spec(source, spec))
            self._sources[spec.name] = SourceRuntime(
                spec.name, DimensionCache.for_source(spec), fetcher
            )

    async def _add_enricher(self, stream: str) -> None:
        """Start the enricher of one stream: an actor per shard, fed by the Ingest with the
        stream's events, feeding the groups of the stream's enriched form."""
        assert self._supervisor is not None
        lookups = self.feature_set.lookups_of(stream)
        target = _EnrichGroup(stream)
        for shard in range(self.shards):
            ref = await self._supervisor.spawn(
                functools.partial(
                    EnrichShard,
                    lookups,
                    self._sources,
                    shard,
                    enriched_stream(stream),
                    self._stream_groups[enriched_stream(stream)],
                    self._start_fetch,
                    self.feature_set.enrich_stash,
                    self._enriched_hub,
                    self._clock,
                ),
                name=f"enrich-{stream}-shard-{shard}",
                mailbox=self._mailbox,
            )
            target.refs.append(ref)
        self._enrichers.append(target)
        self._targets.append(target)

    def _start_fetch(self, task: Callable[[], Any]) -> None:
        """Run a fetch of an enricher as a task of the runtime."""
        assert self._tg is not None
        self._tg.start_soon(task)

    async def _drain_enrichers(self) -> None:
        """Wait until every enricher has applied what it was sent and emptied its stash."""
        for enricher in self._enrichers:
            for ref in enricher.refs:
                while True:
                    stats: EnrichShardStats = await ref.ask(GetEnrichStats(), timeout=None)
                    if not stats.stashed:
                        break
                    await anyio.sleep(0.001)

    def _estimate(self, feature: Any) -> CostEstimate:
        return estimate_cost(feature, event_rate=self.expected_event_rate, keys=self.expected_keys)

    def _description(
        self, feature: Any, group: _Group, measured: MeasuredCost | None
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
        for group in self._groups:
            if name in group.names:
                index = group.names.index(name)
                stats = await self._group_stats(group)
                feature = group.features[index]
                return self._description(feature, group, self._measure(group, index, stats))
        raise UnknownFeature(
            f"no feature named {name!r} (known: {', '.join(self.feature_set.names)})"
        )

    def _measure(self, group: _Group, index: int, stats: list[ShardStats]) -> MeasuredCost | None:
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

    # -- looking at it ---------------------------------------------------------------------------
    async def _group_stats(self, group: _Group) -> list[ShardStats]:
        return [await ref.ask(GetStats(), timeout=None) for ref in group.refs]

    async def statistics(self) -> RuntimeStatistics:
        """A snapshot of counters, state size and latency (asks every actor)."""
        self._check_running()
        all_stats = [await self._group_stats(group) for group in self._groups]
        # Every event of a stream goes to the stream's first group; later groups see events
        # from their registration.
        # (a stream whose features all read lookup fields: its enriched form's first group)
        firsts = [
            all_stats[self._groups.index(groups[0])]
            for stream in self.feature_set.stream_names
            if (groups := self._stream_groups[stream] or self._enriched_groups(stream))
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
        actors = [ref for group in self._groups for ref in group.refs]
        actors += [ref for join in self._joins for ref in join.refs]
        actors += [ref for enricher in self._enrichers for ref in enricher.refs]
        depth = max((ref.statistics().depth for ref in actors), default=0)
        joins = await self._join_statistics()
        enrichment = await self._enrichment_statistics()
        processed = sum(s.events for stats in firsts for s in stats)
        if not self._groups:  # joins alone: the events they applied
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
            groups=len(self._groups),
            shards=self.shards,
            max_mailbox_depth=depth,
            windows=await self._window_statistics(all_stats),
            joins=joins,
            enrichment=enrichment,
            expired_keys=sum(
                s.expired_keys
                for group, stats in zip(self._groups, all_stats, strict=True)
                if group.engine is None
                for s in stats
            ),
        )

    async def _window_statistics(
        self, all_stats: list[list[ShardStats]]
    ) -> WindowStatistics | None:
        total = WindowStatistics()
        found = False
        for group, stats in zip(self._groups, all_stats, strict=True):
            if group.engine is None:
                continue
            found = True
            keys = sum(s.keys for s in stats)
            state_bytes = sum(s.state_bytes for s in stats)
            counts: dict[str, int] = {}
            held = 0
            for ref in group.refs:
                reply: WindowStats = await ref.ask(WindowStatsRequest(), timeout=None)
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
        for enricher in self._enrichers:
            for ref in enricher.refs:
                shard_stats: EnrichShardStats = await ref.ask(GetEnrichStats(), timeout=None)
                stashed += shard_stats.stashed
        result = {}
        for name, source in self._sources.items():
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

    async def _join_statistics(self) -> dict[str, JoinStatistics]:
        result = {}
        for join in self._joins:
            total: dict[str, int] = {}
            largest = 0
            for ref in join.refs:
                stats: JoinShardStats = await ref.ask(GetJoinStats(), timeout=None)
                for name, n in vars(stats.counters).items():
                    total[name] = total.get(name, 0) + n
                for name in ("keys", "buffered_left", "buffered_right", "state_bytes"):
                    total[name] = total.get(name, 0) + getattr(stats, name)
                largest = max(largest, stats.largest_key)
            result[join.name] = JoinStatistics(largest_key=largest, **total)
        return result

    def _enriched_groups(self, stream: str) -> list[_Group]:
        return self._stream_groups.get(enriched_stream(stream), [])

    def _close_record_hubs(self) -> None:
        self._records_hub.close()
        for join in self._joins:
            join.hub.close()

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
        if join is None:
            return self._records_hub.subscribe(buffer, policy)
        for target in self._joins:
            if target.name == join:
                return target.hub.subscribe(buffer, policy)
        known = ", ".join(target.name for target in self._joins) or "none"
        raise ValueError(f"join: no join named {join!r} (known: {known})")

    def _source(self, source: str) -> SourceRuntime:
        self._check_running()
        found = self._sources.get(source)
        if found is None:
            known = ", ".join(self._sources) or "none"
            raise ValueError(f"source: no source with lookups named {source!r} (known: {known})")
        return found

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
        runtime = self._source(source)
        now = self._clock()
        cached = 0
        if rows is not None:
            cached += runtime.cache.warm(((key, dict(row)) for key, row in rows.items()), now)
        wanted = list(dict.fromkeys(keys))
        if wanted:
            results = await runtime.fetcher.fetch_many(wanted)
            now = self._clock()
            for key, value in results.items():
                if isinstance(value, SourceError):
                    raise value
                if value is FETCHED_MISSING or isinstance(value, Exception):
                    runtime.cache.put_missing(key, now)
                else:
                    runtime.cache.put(key, value, now)
                cached += 1
        return cached

    def invalidate(self, source: str, key: Any) -> bool:
        """Forget ``key``'s cached row of ``source`` (its row changed): the next event that
        needs it fetches it again. Returns whether a row was cached."""
        return self._source(source).cache.invalidate(key)

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
            for group in self._groups
            for s in await self._group_stats(group)
            for e in s.recent_errors
        ]
        return sorted(errors, key=lambda e: e.event_time)


@dataclass
class _JoinGroup:
    """A join's actors, one per shard."""

    name: str
    join: Join
    refs: list[ActorRef[Any]] = field(default_factory=list)
    #: a join reads every stream's events, tagged
    stream: str = ""
    #: the subscribers of this join's records alone
    hub: UpdateHub[JoinRecord] = field(default_factory=UpdateHub)


@dataclass
class _EnrichGroup:
    """An enricher's actors, one per shard."""

    stream: str
    refs: list[ActorRef[Any]] = field(default_factory=list)


class _Found:
    """A key's replies from the groups of its shard, merged."""

    __slots__ = ("high", "last", "updated", "values", "watermark")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.last: int | None = None
        self.updated: float | None = None
        self.high: int | None = None
        #: the key's own watermark, from a window group
        self.watermark: int | None = None

    def add(self, group: _Group, reply: tuple[Any, ...]) -> None:
        state_values, last, updated, high, watermark = reply
        if watermark is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = watermark
        names = group.names
        self.values.update(zip(names, state_values or group.defaults, strict=True))
        if last is not None and (self.last is None or last > self.last):
            self.last = last
        if updated is not None and (self.updated is None or updated > self.updated):
            self.updated = updated
        if high is not None and (self.high is None or high > self.high):
            self.high = high


def _slots_of(group: _Group, index: int) -> int:
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
