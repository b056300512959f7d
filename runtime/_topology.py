"""The runtime's topology: its feature groups, joins and enrichers (one actor per shard each),
the streams they read, and the sources the enrichers share.

Events flow ingest -> enrichers -> joins -> feature groups; the lists here keep that order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from actors import ActorRef, MailboxConfig, Supervisor

from ._enrich.cache import DimensionCache
from ._enrich.fetch import NOT_FOUND, Fetcher
from ._enrich.shard import EnrichShard, EnrichShardStats, SourceRuntime
from ._enrich.sources import make_source
from ._exceptions import SourceError, UnknownFeature
from ._ingest.router import Ingest
from ._joins.engine import JoinConfig, JoinEngine
from ._joins.shard import JoinShard
from ._keyed.kernel import CompiledGroup, compile_group
from ._messages import GetEnrichStats, GetStates, IdleTick, Ping
from ._results import EnrichedEvent, FeatureUpdate, FeatureVector, JoinRecord, LateEvent
from ._shard import GroupShard
from ._spec.feature_set import FeatureSet, encode_spec, enriched_stream
from ._spec.joins import Join
from ._updates import UpdateHub
from ._windows.engine import WindowEngine
from ._windows.shard import WindowShard

__all__ = ["Clock", "EnrichGroup", "Group", "JoinGroup", "KeyState", "Topology", "signature"]


@dataclass
class Group:
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


@dataclass
class JoinGroup:
    """A join's actors, one per shard."""

    name: str
    join: Join
    refs: list[ActorRef[Any]] = field(default_factory=list)
    #: a join reads every stream's events, tagged
    stream: str = ""
    #: the subscribers of this join's records alone
    hub: UpdateHub[JoinRecord] = field(default_factory=UpdateHub)


@dataclass
class EnrichGroup:
    """An enricher's actors, one per shard."""

    stream: str
    refs: list[ActorRef[Any]] = field(default_factory=list)


class Clock(Protocol):
    """The runtime's wall clock, which a replay can set (``_replay.history.ReplayClock``)."""

    #: the replay's time (seconds since the epoch), or None to read the base clock
    now: float | None

    def __call__(self) -> float: ...


class KeyState:
    """A key's replies from the groups of its shard, merged (``Topology.read``)."""

    __slots__ = ("as_of", "high", "last", "updated", "values", "watermark")

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.last: int | None = None
        self.updated: float | None = None
        self.high: int | None = None
        #: the key's own watermark, from a window group
        self.watermark: int | None = None
        #: a read as of a time: the latest time a group's values are as of (ms)
        self.as_of: int | None = None

    def add(self, group: Group, reply: tuple[Any, ...]) -> None:
        state_values, last, updated, high, watermark, as_of = reply
        if as_of is not None and (self.as_of is None or as_of > self.as_of):
            self.as_of = as_of
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

    def vector(self, key: Any, names: Sequence[str], lateness: int, now_ms: float) -> FeatureVector:
        """The key's vector of the features ``names``, with its freshness at ``now_ms``: its
        own watermark where a window group keeps one, else the shard's newest event time less
        ``lateness``."""
        values = {name: self.values[name] for name in names if name in self.values}
        if self.watermark is not None:
            watermark: int | None = self.watermark
        else:
            watermark = None if self.high is None else self.high - lateness
        lag = None if self.last is None else now_ms - self.last
        return FeatureVector(key, values, self.last, watermark, self.updated, lag, self.as_of)


def signature(target: Group | JoinGroup) -> str:
    """What must be equal between the runtime that wrote a state and the one restoring it:
    the specs of the group's features (and its stream), or of the join."""
    if isinstance(target, JoinGroup):
        return "join:" + encode_spec(target.join).decode()
    # functions (a derived feature's) and aggregates (a custom feature's) by name
    specs = encode_spec(list(target.features)).decode()
    kind = "keyed" if target.compiled is not None else "windowed"
    return f"{kind}:{target.stream}:{specs}"


class Topology:
    """What runs: the feature groups, joins and enrichers, and the sources they read.

    It plans and starts them (one actor per shard each, under the runtime's supervisor) and
    knows the order events flow through them, which :meth:`settle` follows.

    Args:
        feature_set: the runtime's feature set (``add_groups`` replaces it by a larger one).
        ingest: what buffers the events and sends them to ``targets``.
        targets: the live list ``ingest`` sends batches to; the topology fills it.
        shards: actors per group, join and enricher.
        mailbox: each actor's mailbox.
        clock: the wall clock the actors read (a replay sets it).
        sample_every: one batch in this many is timed per feature.
        custom_sources: the objects behind the feature set's ``CustomSource`` specs, by name.
        start_task: runs a task (an enricher's fetch) in the runtime's task group.
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        *,
        ingest: Ingest,
        targets: list[Any],
        shards: int,
        mailbox: MailboxConfig,
        clock: Clock,
        sample_every: int,
        custom_sources: Mapping[str, Any],
        start_task: Callable[[Callable[[], Any]], None],
    ) -> None:
        self.feature_set = feature_set
        #: the names of the features the runtime started with (``register`` adds others)
        self.started_with = frozenset(feature_set.names)
        self.groups: list[Group] = []
        #: with workers: the groups the workers run, laid out by the front (``layout``)
        self.laid_out: list[tuple[str, tuple[str, ...]]] = []
        #: per stream (the ingested ones, then the joins' records): its feature groups
        self.stream_groups: dict[str, list[Group]] = {
            name: [] for name in feature_set.group_streams
        }
        #: what the Ingest sends batches to: the groups of the ingested streams (each gets its
        #: stream's events), then the enrichers and the joins (tagged by stream); the live list
        self.targets = targets
        self.joins: list[JoinGroup] = []
        #: the enrichers (one per ingested stream with lookups) and the sources they share
        self.enrichers: list[EnrichGroup] = []
        self.sources: dict[str, SourceRuntime] = {}
        ttl = feature_set.duration_ms("state_ttl")
        #: seconds after which a quiet key's state is dropped, or None
        self.ttl = None if ttl is None else ttl / 1000
        self.shards = shards
        self._ingest = ingest
        self._mailbox = mailbox
        self._clock = clock
        self._sample_every = sample_every
        #: what the actors publish, for the subscriptions: the feature groups' updates, the
        #: late events (of windowed groups, and of joins with ``late_policy="side_output"``),
        #: every join's records (each join also has a hub of its own) and the enriched events
        self.updates: UpdateHub[FeatureUpdate] = UpdateHub()
        self.late: UpdateHub[LateEvent] = UpdateHub()
        self.records: UpdateHub[JoinRecord] = UpdateHub()
        self.enriched: UpdateHub[EnrichedEvent] = UpdateHub()
        self._custom_sources = custom_sources
        self._start_task = start_task
        self._supervisor: Supervisor | None = None

    def enriched_groups(self, stream: str) -> list[Group]:
        """The feature groups of ``stream``'s enriched form."""
        return self.stream_groups.get(enriched_stream(stream), [])

    def layout(
        self, features: Sequence[Any], feature_set: FeatureSet
    ) -> list[tuple[str, tuple[str, ...]]]:
        """The groups :meth:`add_groups` would make of ``features`` (after those made so far
        and those laid out before), each as ``(name, feature names)``, without compiling or
        starting any: with workers, the front's view of the groups its workers run."""
        out: list[tuple[str, tuple[str, ...]]] = []
        for stream in feature_set.group_streams:
            mine = [f for f in features if feature_set.group_stream_of(f) == stream]
            keyed = [f.name for f in mine if not feature_set.is_windowed(f.name)]
            windowed = [f.name for f in mine if feature_set.is_windowed(f.name)]
            for prefix, names in (("g", keyed), ("w", windowed)):
                if names:
                    number = len(self.groups) + len(self.laid_out) + len(out)
                    out.append((f"{prefix}{number}", tuple(names)))
        self.laid_out.extend(out)
        return out

    def group_of(self, name: str) -> Group:
        """The group that computes the feature ``name``.

        Raises:
            UnknownFeature: no feature has that name.
        """
        for group in self.groups:
            if name in group.names:
                return group
        raise UnknownFeature(
            f"no feature named {name!r} (known: {', '.join(self.feature_set.names)})"
        )

    def records_hub(self, join: str | None) -> UpdateHub[JoinRecord]:
        """The hub of the records of the join named ``join``, or of every join for None.

        Raises:
            ValueError: the feature set has no join named ``join``.
        """
        if join is None:
            return self.records
        for target in self.joins:
            if target.name == join:
                return target.hub
        known = ", ".join(target.name for target in self.joins) or "none"
        raise ValueError(f"join: no join named {join!r} (known: {known})")

    def source(self, name: str) -> SourceRuntime:
        """The source with lookups named ``name``: its cache and its fetcher.

        Raises:
            ValueError: no source of the feature set's lookups has that name.
        """
        found = self.sources.get(name)
        if found is None:
            known = ", ".join(self.sources) or "none"
            raise ValueError(f"source: no source with lookups named {name!r} (known: {known})")
        return found

    async def warm_up(
        self, name: str, keys: Iterable[Any], rows: Mapping[Any, Mapping[str, Any]] | None
    ) -> int:
        """Fill the cache of the source ``name`` with ``rows``, then with the rows of ``keys``
        fetched (``FeatureRuntime.warm_up``); returns the number of keys cached.

        Raises:
            ValueError: no source of the feature set's lookups has that name.
            SourceError: the source failed (after its retries) for some of ``keys``.
        """
        runtime = self.source(name)
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
                if value is NOT_FOUND or isinstance(value, Exception):
                    runtime.cache.put_missing(key, now)
                else:
                    runtime.cache.put(key, value, now)
                cached += 1
        return cached

    # -- starting ------------------------------------------------------------------------------
    async def open_sources(self, stack: AsyncExitStack) -> None:
        """Open each source with lookups, its cache and its fetcher; ``stack`` closes them."""
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
            self.sources[spec.name] = SourceRuntime(
                spec.name, DimensionCache.for_source(spec), fetcher, clock=self._clock
            )

    async def start(self, supervisor: Supervisor) -> None:
        """Start the feature set's groups, joins and enrichers under ``supervisor``."""
        self._supervisor = supervisor
        feature_set = self.feature_set
        await self.add_groups(list(feature_set.features), feature_set)
        for join in feature_set.joins:
            await self._add_join(join)
        for stream in feature_set.stream_names:
            if feature_set.lookups_of(stream):
                await self._add_enricher(stream)
        await self.wait_idle()

    async def wait_idle(self, limit: float = 0.1) -> None:
        """Let the actors just started reach their first wait for a message, for at most
        ``limit`` seconds: ingest sends a partial batch at once only to idle actors, so the
        first events then do not wait for ``linger``."""
        refs = [ref for target in self.targets for ref in target.refs]
        with anyio.move_on_after(limit):
            while not all(ref.idle for ref in refs):
                await anyio.lowlevel.checkpoint()  # each actor parks at its first turn

    async def add_groups(self, features: list[Any], feature_set: FeatureSet) -> list[Group]:
        """Add the features as groups: per stream, keyed aggregates, then windowed features;
        ``feature_set`` (which holds them) is then the topology's.

        Every group is compiled (and so validated) before any is started, so a feature that
        is refused leaves the runtime as it was.
        """
        planned: list[tuple[Group, Callable[..., Any]]] = []
        for stream in feature_set.group_streams:
            mine = [f for f in features if feature_set.group_stream_of(f) == stream]
            windowed = [f for f in mine if feature_set.is_windowed(f.name)]
            keyed = [f for f in mine if not feature_set.is_windowed(f.name)]
            if keyed:
                planned.append(self._plan_keyed(keyed, len(self.groups) + len(planned)))
            if windowed:
                number = len(self.groups) + len(planned)
                planned.append(self._plan_windowed(windowed, feature_set, number))
            for group, _ in planned:
                group.stream = group.stream or stream
        for planned_group, planned_factory in planned:
            await self._spawn(planned_group, planned_factory)
        self.feature_set = feature_set
        return [group for group, _ in planned]

    def _plan_keyed(self, keyed: list[Any], number: int) -> tuple[Group, Callable[..., Any]]:
        name = f"g{number}"
        compiled = compile_group(keyed, group=name)
        group = Group(name, keyed, compiled, defaults=compiled.values(compiled.new_state()))
        factory: Callable[..., Any] = functools.partial(
            GroupShard,
            compiled,
            name,
            hub=self.updates,
            sample_every=self._sample_every,
            state_ttl=self.ttl,
            clock=self._clock,
        )
        return group, factory

    def _plan_windowed(
        self, windowed: list[Any], feature_set: FeatureSet, number: int
    ) -> tuple[Group, Callable[..., Any]]:
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
        group = Group(name, windowed, None, engine, defaults=engine.defaults)
        factory = functools.partial(
            WindowShard,
            engine,
            name,
            hub=self.updates,
            late_hub=self.late,
            sample_every=self._sample_every,
            clock=self._clock,
        )
        return group, factory

    async def _spawn(self, group: Group, factory: Callable[..., Any]) -> None:
        assert self._supervisor is not None
        for shard in range(self.shards):
            ref = await self._supervisor.spawn(
                functools.partial(factory, shard=shard),
                name=f"{group.name}-shard-{shard}",
                mailbox=self._mailbox,
            )
            group.refs.append(ref)
        self.groups.append(group)
        self.stream_groups[group.stream].append(group)
        if group.stream in self.feature_set.stream_names:
            # before the joins: a batch reaches the features of its stream first
            targets = self.targets
            joins = [t for t in targets if isinstance(t, JoinGroup)]
            targets[:] = [t for t in targets if not isinstance(t, JoinGroup)] + [group] + joins

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
            state_ttl=self.ttl,
        )
        target = JoinGroup(join.name, join)
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
                    self.stream_groups[join.name],
                    (self.records, target.hub),
                    self._clock,
                    self.late if feature_set.late_policy == "side_output" else None,
                ),
                name=f"join-{join.name}-shard-{shard}",
                mailbox=self._mailbox,
            )
            target.refs.append(ref)
        self.joins.append(target)
        self.targets.append(target)

    async def _add_enricher(self, stream: str) -> None:
        """Start the enricher of one stream: an actor per shard, fed by the Ingest with the
        stream's events, feeding the groups of the stream's enriched form."""
        assert self._supervisor is not None
        lookups = self.feature_set.lookups_of(stream)
        target = EnrichGroup(stream)
        for shard in range(self.shards):
            ref = await self._supervisor.spawn(
                functools.partial(
                    EnrichShard,
                    lookups,
                    self.sources,
                    shard,
                    enriched_stream(stream),
                    self.stream_groups[enriched_stream(stream)],
                    self._start_task,
                    self.feature_set.enrich_stash,
                    self.enriched,
                    self._clock,
                ),
                name=f"enrich-{stream}-shard-{shard}",
                mailbox=self._mailbox,
            )
            target.refs.append(ref)
        self.enrichers.append(target)
        self.targets.append(target)

    # -- the flow of events --------------------------------------------------------------------
    async def settle(
        self, *, idle: bool = False, at: float | None = None, shard: int | None = None
    ) -> None:
        """Send every partial batch and wait until each actor applied what it was sent, in the
        order events flow: enrichers (their stashes empty as their fetches land), joins (what
        they hand to the features of their records is then on its way), then feature groups.
        A reply to a ``Ping`` means every earlier batch is applied.

        Args:
            idle: each join and group also applies idle time and expiry, right after its
                ``Ping`` (``flush`` with ``idle_timeout`` or ``state_ttl``).
            at: once all are settled, move the clock to ``at`` and have each join and group
                apply idle time and expiry at it: a replay's step, half the asks of two
                settles (a timer tick meanwhile reads one time or the other and finds nothing
                more to do).
            shard: settle that shard's batch only, as far as its enrichers and joins (a read
                of the groups' states, asked next, comes after what they handed on); an event
                still waiting for a fetch is not waited for.
        """
        if shard is not None:
            await self._ingest.send(shard)
            for enricher in self.enrichers:
                await enricher.refs[shard].ask(Ping(), timeout=None)
            for join in self.joins:
                await join.refs[shard].ask(Ping(), timeout=None)
            return
        await self._ingest.send_all()
        await self.drain_enrichers()
        for ref in self._joins_then_groups():
            await ref.ask(Ping(), timeout=None)
            if idle:
                await ref.ask(IdleTick(), timeout=None)
        if at is not None:
            self._clock.now = at
            for ref in self._joins_then_groups():
                await ref.ask(IdleTick(), timeout=None)

    def _joins_then_groups(self) -> Iterator[ActorRef[Any]]:
        """The joins' actors, then the feature groups' (read from the live lists)."""
        for join in self.joins:
            yield from join.refs
        for group in self.groups:
            yield from group.refs

    async def read(
        self,
        by_shard: Mapping[int, list[Any]],
        features: Collection[str] | None,
        as_of: int | None = None,
    ) -> dict[Any, KeyState]:
        """The state of each key of ``by_shard`` (keys by shard) in the groups that compute
        ``features`` (every group for None): one ask per shard and group. ``as_of``: the
        values as of that event time (ms), see ``GetStates``.

        Raises:
            UnknownFeature: a name in ``features`` is not a feature of the runtime.
        """
        if features is not None:
            known = set(self.feature_set.names)
            for name in features:
                if name not in known:
                    self.group_of(name)  # raises UnknownFeature, naming the known features
        found = {key: KeyState() for keys in by_shard.values() for key in keys}
        groups = [
            group
            for group in self.groups
            if features is None or any(name in features for name in group.names)
        ]
        for shard, shard_keys in by_shard.items():
            # enrichers and joins first: what they hand to the features of their streams is
            # then on its way (an event still waiting for a fetch is not: flush waits for it)
            await self.settle(shard=shard)
            for group in groups:
                replies = await group.refs[shard].ask(
                    GetStates(tuple(shard_keys), as_of), timeout=None
                )
                for key, reply in zip(shard_keys, replies, strict=True):
                    found[key].add(group, reply)
        return found

    async def drain_enrichers(self) -> None:
        """Wait until every enricher has applied what it was sent and emptied its stash."""
        for enricher in self.enrichers:
            for ref in enricher.refs:
                while True:
                    stats: EnrichShardStats = await ref.ask(GetEnrichStats(), timeout=None)
                    if not stats.stashed:
                        break
                    await anyio.sleep(0.001)

    def close_hubs(self) -> None:
        """End every subscription: to updates, late events, join records and enriched events."""
        for hub in (self.updates, self.late, self.records, self.enriched):
            hub.close()
        for join in self.joins:
            join.hub.close()
