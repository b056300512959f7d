"""The enricher: an actor per shard that gives events their dimension rows (issue 6,
``docs/design/enrichment.md``).

It reads the batches of one ingested stream and hands the enriched events, as batches of the
stream's enriched form, to the feature groups that read lookup fields, on the same shard.
Groups that read none get their batches from ingest directly, so a fetch never delays them.

An event whose lookups the caches can answer (a fresh row, or a key known to be missing) is
enriched at once. Any other goes to the stash while its keys are fetched; so does every later
event of the same routing key, so a key's events keep their order. The fetches run as tasks
of the runtime (``spawn``), through each source's :class:`Fetcher` (batched, one fetch in
flight per key, retries, a circuit breaker); when one ends, it stores what it found in the
cache and in ``landed`` (so an eviction from a small cache cannot make the stash wait again),
and tells the actor, which releases the stash from the front as far as each key can go. A key
whose fetch failed gets its stale row (``stale_if_error``) or the lookup's default.

The stash is bounded (``enrich_stash``): past it, the actor waits for fetches to land before it
takes another batch, and its full mailbox slows ingest.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from actors import Actor, ActorRef, ActorStopped, DeadLetterReason, get_logger

from .._exceptions import SourceError
from .._messages import Batch, GetEnrichStats, Ping, fail_batch
from .._results import EnrichedEvent
from .._spec.enrich import Lookup
from .._updates import UpdateHub
from .cache import MISSING as CACHED_MISSING
from .cache import DimensionCache
from .fetch import MISSING as FETCHED_MISSING
from .fetch import Fetcher
from .sources import Version, version_at

__all__ = ["EnrichShard", "EnrichShardStats", "SourceRuntime"]

_log = get_logger("featurist.enrich")


class _Target(Protocol):
    refs: list[ActorRef[Any]]


@dataclass
class SourceRuntime:
    """One source as the enrichers use it: its cache and its fetcher (shared by the shards)."""

    name: str
    cache: DimensionCache
    fetcher: Fetcher
    #: events enriched with a stale row, or with a default because the fetch failed
    stale_served: int = 0
    defaults_after_error: int = 0
    malformed: int = 0


@dataclass(frozen=True)
class EnrichShardStats:
    stashed: int
    fetching: int


@dataclass(frozen=True)
class _Landed:
    """A fetch ended (told by its task)."""


_Partial = tuple[dict[str, Any], dict[str, Any], list[str], list[str]]


@dataclass
class _Waiting:
    """A stashed event."""

    key: Any
    t: int
    event: Any
    created: float
    arrived: float
    hits: int
    misses: int
    #: what is known of its lookups so far: (rows, ages, stale, defaulted) by lookup name, so
    #: that an outcome once seen is kept (a small cache may evict it before the others land)
    partial: _Partial | None = None
    #: a (source, key) it waits for: while that is being fetched, it need not be looked at
    blocker: tuple[str, Hashable] | None = None


@dataclass
class _Plan:
    """One lookup as the enricher runs it."""

    name: str
    event_field: str
    source: SourceRuntime
    default: dict[str, Any] | None
    failed: dict[Hashable, Exception] = field(default_factory=dict)


class EnrichShard(Actor[Any]):
    """Enriches one stream's events for the keys of one shard. Internal."""

    def __init__(
        self,
        lookups: Sequence[Lookup],
        sources: dict[str, SourceRuntime],
        shard: int,
        stream: str,
        targets: Sequence[_Target],
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
        stash_size: int,
        hub: UpdateHub[EnrichedEvent] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plans = [
            _Plan(lookup.name, lookup.field, sources[lookup.source], lookup.default)
            for lookup in lookups
        ]
        #: the plans as tuples, for the hot loop: (name, field, source, cache, default, failed)
        self._plans = [
            (p.name, p.event_field, p.source, p.source.cache, p.default, p.failed)
            for p in self.plans
        ]
        self.shard = shard
        #: the name of the enriched stream (the batches it sends)
        self.stream = stream
        self.targets = targets
        self.spawn = spawn
        self.stash_size = stash_size
        #: ``rt.enriched_events()`` subscribers
        self.hub = hub
        self.clock = clock
        self.stash: deque[_Waiting] = deque()
        #: routing keys with events in the stash, and how many
        self.stashed: Counter[Any] = Counter()
        #: (source, key) being fetched for this shard
        self.fetching: set[tuple[str, Hashable]] = set()
        #: outcomes of fetches that ended, until the next release
        self.landed: dict[tuple[str, Hashable], Any] = {}
        self.progress = anyio.Event()

    # -- messages ------------------------------------------------------------------------------
    async def receive_batch(self, messages: list[Any]) -> None:
        for message in messages:  # batches, and the fetches' news (asks come to ``receive``)
            if isinstance(message, _Landed):
                await self._release()
                continue
            # before each batch, not once per turn: a turn takes several batches, and the
            # stash would go past its size by all but one of them
            await self._wait_for_room()
            try:
                await self._apply(message)
            except Exception as exc:
                fail_batch(self.context, message, exc, enricher=self.stream, shard=self.shard)
        await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        """A full stash takes no more batches until fetches land (the mailbox then fills, and
        ingest waits: backpressure); so the stash holds at most ``enrich_stash`` events and one
        batch. The state is checked, not only the event: a fetch may have landed while a send
        waited, and its news sits behind this turn in the mailbox."""
        while len(self.stash) >= self.stash_size:
            if self.landed or self._any_failed() or not self.fetching:
                before = len(self.stash)
                await self._release()
                if len(self.stash) >= before and not self.fetching:
                    break  # nothing in flight and nothing released: do not spin
                continue
            self.progress = anyio.Event()
            await self.progress.wait()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, _Landed):
            await self._release()
            return None
        if isinstance(message, Ping):
            return None
        if isinstance(message, GetEnrichStats):
            return EnrichShardStats(
                stashed=len(self.stash),
                fetching=len(self.fetching),
            )
        raise TypeError(f"EnrichShard cannot handle {message!r}")

    async def on_stop(self) -> None:
        # what could not be enriched before the end is not lost silently
        for waiting in self.stash:
            self.context.dead_letters.record(
                waiting.event,
                self.context.name,
                DeadLetterReason.UNDELIVERABLE,
                detail="waiting for a dimension fetch when the runtime stopped",
            )
        if self.stash:
            _log.warning("enrich_stash_abandoned", stream=self.stream, events=len(self.stash))
        self.stash.clear()

    def _any_failed(self) -> bool:
        return any(plan.failed for plan in self.plans)

    # -- enriching -----------------------------------------------------------------------------
    async def _apply(self, batch: Batch) -> None:
        self._full = self.hub is not None and self.hub.active
        now = self.clock()
        arrived = time.perf_counter()
        ready: list[tuple[Any, int, Any]] = []
        wanted: dict[str, set[Hashable]] = {}
        refresh: dict[str, set[Hashable]] = {}
        stashed, stash = self.stashed, self.stash
        for key, t, event in batch.events:
            behind = key in stashed  # an earlier event of its key waits: so must it
            try:
                enriched = self._enrich(
                    t, event, now, arrived, wanted, refresh, 0, 0, True, arrived, None, behind
                )
            except Exception as exc:
                self._reject(event, exc)
                continue
            if enriched is not None:
                ready.append((key, t, enriched))
                continue
            hits, misses = self._counts
            stash.append(
                _Waiting(
                    key,
                    t,
                    event,
                    batch.created,
                    arrived,
                    hits,
                    misses,
                    self._partial,
                    self._blocker,
                )
            )
            stashed[key] += 1
        self._fetch(wanted, stash=True)
        self._fetch(refresh, stash=False)
        if ready:
            await self._send(ready, batch.created)

    def _enrich(
        self,
        t: int,
        event: Any,
        now: float,
        arrived: float,
        wanted: dict[str, set[Hashable]] | None,
        refresh: dict[str, set[Hashable]] | None,
        hits: int,
        misses: int,
        first: bool = True,
        done: float | None = None,
        partial: _Partial | None = None,
        keep: bool = False,
    ) -> dict[str, Any] | None:
        """The enriched event, or None if a lookup waits for a fetch (whose keys go to
        ``wanted``) or ``keep`` asks to keep it: ``self._counts`` then holds the hits and
        misses so far, ``self._partial`` what is known of its lookups (give it back as
        ``partial`` next time) and ``self._blocker`` a fetch it waits for (or None).

        ``first`` is false for an event coming back from the stash: its lookups were counted
        (in the cache's statistics and the event's metadata) when it came. ``done`` is the
        ``perf_counter`` time its enrichment ends (one reading per batch), for its latency.
        The hot path of enrichment: plain dict work, one pass over the lookups.
        """
        rows: dict[str, Any]
        ages: dict[str, Any]
        stale: list[str]
        defaulted: list[str]
        if partial is None:
            rows, ages, stale, defaulted = {}, {}, _NONE, _NONE
        else:
            rows, ages, stale, defaulted = partial
        waiting = False
        landed = self.landed
        get = event.get
        for name, event_field, source, cache, default, failed in self._plans:
            if partial is not None and name in rows:
                continue  # known since an earlier look
            value = get(event_field)
            if value is None:
                rows[name] = default
                ages[name] = None
                defaulted = [*defaulted, name]
                continue
            age: float | None = 0.0
            row = landed.get((source.name, value), _NOTHING) if landed else _NOTHING
            if row is _NOTHING:
                hit = cache.lookup(value, now) if first else cache.peek(value, now)
                if hit is None:
                    error = failed.get(value) if failed else None
                    if error is None:
                        if first:
                            misses += 1
                        if not waiting:
                            self._blocker = (source.name, value)
                        waiting = True
                        if wanted is not None and (source.name, value) not in self.fetching:
                            wanted.setdefault(source.name, set()).add(value)
                        continue
                    # the fetch failed: a stale row if the cache holds one, else the default
                    fallback = cache.lookup_stale(value, now)
                    if fallback is None or fallback[0] is CACHED_MISSING:
                        source.defaults_after_error += 1
                        rows[name] = default
                        ages[name] = None
                        defaulted = [*defaulted, name]
                        continue
                    source.stale_served += 1
                    stale = [*stale, name]
                    row, age = fallback[1], fallback[2]
                else:
                    if first:
                        hits += 1
                    status, row, age, due = hit
                    if due and refresh is not None:
                        refresh.setdefault(source.name, set()).add(value)
                    if status is CACHED_MISSING:
                        row = FETCHED_MISSING
            if row.__class__ is list:  # versions: the one valid at the event's time
                version = version_at(row, t)
                row = None if version is None else version.row
            if row is None or row is FETCHED_MISSING or isinstance(row, Exception):
                row = default
                defaulted = [*defaulted, name]
            rows[name] = row
            ages[name] = age * 1000 if age is not None else None
        if waiting or keep:
            self._counts = (hits, misses)
            self._partial = (rows, ages, stale, defaulted)
            if not waiting:
                self._blocker = None
            return None
        out = dict(event)
        for name, row in rows.items():
            if row:
                for column, cell in row.items():
                    out[f"{name}.{column}"] = cell
        if not self._full:  # nobody reads the enriched events: the features need the fields
            return out
        latency = ((time.perf_counter() if done is None else done) - arrived) * 1000
        out["enrichment"] = rows
        out["enrichment_metadata"] = {
            "timestamp": t,
            "cache_hits": hits,
            "cache_misses": misses,
            "enrichment_latency_ms": latency,
            "cache_age_ms": ages,
            "stale": list(stale),
            "defaulted": list(defaulted),
        }
        return out

    _counts: tuple[int, int] = (0, 0)
    #: whether the enriched events are built whole (``enrichment`` and
    #: ``enrichment_metadata``): only while ``rt.enriched_events()`` has subscribers
    _full = True
    _blocker: tuple[str, Hashable] | None = None
    _partial: _Partial | None = None

    # -- fetching ------------------------------------------------------------------------------
    def _fetch(self, wanted: dict[str, set[Hashable]], *, stash: bool) -> None:
        for name, keys in wanted.items():
            keys = {key for key in keys if (name, key) not in self.fetching}
            if not keys:
                continue
            source = next(plan.source for plan in self.plans if plan.source.name == name)
            if stash:
                self.fetching.update((name, key) for key in keys)
            task = _FetchTask(self, source, list(keys), stash)
            try:
                self.spawn(task.run)
            except RuntimeError as exc:  # the runtime stopped taking tasks: shutting down
                task.give_up(exc)

    async def _landed(
        self, source: SourceRuntime, results: dict[Hashable, Any], stash: bool
    ) -> None:
        """A fetch ended: store what it found, note what failed, and wake the actor."""
        now = self.clock()
        cache = source.cache
        for key, value in results.items():
            ident = (source.name, key)
            if value is FETCHED_MISSING:
                cache.put_missing(key, now)
            elif isinstance(value, SourceError):
                if stash:
                    for plan in self.plans:
                        if plan.source is source:
                            plan.failed[key] = value
                    self.fetching.discard(ident)
                else:
                    # a refresh-ahead fetch: the cached row stays, and is refreshed again
                    cache.rearm_refresh(key)
                continue
            elif isinstance(value, Exception) or not (
                isinstance(value, dict)
                or (isinstance(value, list) and all(isinstance(v, Version) for v in value))
            ):
                # a malformed row (a custom source may return anything): the default, and
                # no retry before the negative entry expires
                source.malformed += 1
                cache.put_missing(key, now)
                value = FETCHED_MISSING
            else:
                cache.put(key, value, now)
            if stash:
                self.landed[ident] = value
                self.fetching.discard(ident)
        self.progress.set()
        if stash:
            try:
                await self.context.self.tell(_Landed())
            except ActorStopped:
                pass

    async def _release(self) -> None:
        """Release the stash from the front, as far as each routing key can go."""
        if not self.stash:
            self._forget_outcomes()
            return
        self._full = self.hub is not None and self.hub.active
        now = self.clock()
        done = time.perf_counter()
        kept: deque[_Waiting] = deque()
        blocked: set[Any] = set()
        fetching, landed = self.fetching, self.landed
        ready: list[tuple[Any, int, Any]] = []
        created = None
        wanted: dict[str, set[Hashable]] = {}
        for waiting in self.stash:
            behind = waiting.key in blocked
            blocker = waiting.blocker
            if blocker is not None and blocker in fetching and blocker not in landed:
                # its fetch has not landed: nothing new to learn of it yet
                kept.append(waiting)
                blocked.add(waiting.key)
                continue
            if behind and not landed:
                kept.append(waiting)
                continue
            try:
                # an event behind its key's others is still looked at when fetches landed,
                # so that it keeps their outcomes (``keep``) and starts the fetches it needs
                enriched = self._enrich(
                    waiting.t,
                    waiting.event,
                    now,
                    waiting.arrived,
                    wanted,
                    None,
                    waiting.hits,
                    waiting.misses,
                    False,
                    done,
                    waiting.partial,
                    behind,
                )
            except Exception as exc:
                self._reject(waiting.event, exc)
                self._unstash(waiting.key)
                continue
            if enriched is None:
                waiting.partial = self._partial
                waiting.blocker = self._blocker
                kept.append(waiting)
                blocked.add(waiting.key)
                continue
            ready.append((waiting.key, waiting.t, enriched))
            created = waiting.created if created is None else min(created, waiting.created)
            self._unstash(waiting.key)
        self.stash = kept
        self._forget_outcomes()
        self._fetch(wanted, stash=True)
        if ready:
            assert created is not None
            await self._send(ready, created)

    def _unstash(self, key: Any) -> None:
        count = self.stashed[key] - 1
        if count:
            self.stashed[key] = count
        else:
            del self.stashed[key]

    def _reject(self, event: Any, error: Exception) -> None:
        """An event that could not be enriched (a bug, or an event that is not a mapping):
        logged, and in dead letters with the error; the others go on."""
        _log.exception("enrich_event_failed", stream=self.stream, shard=self.shard)
        self.context.dead_letters.record(
            event,
            self.context.name,
            DeadLetterReason.FAILED,
            error=error,
            detail="the event could not be enriched",
        )

    def _forget_outcomes(self) -> None:
        """Outcomes serve the release that follows them only: later events ask the cache (and
        a key that failed is fetched again: the circuit breaker keeps that cheap)."""
        self.landed.clear()
        for plan in self.plans:
            plan.failed.clear()

    async def _send(self, ready: list[tuple[Any, int, Any]], created: float) -> None:
        if self.hub is not None and self.hub.active:
            await self.hub.publish([EnrichedEvent(key, t, event) for key, t, event in ready])
        batch = Batch(ready, created, self.stream)
        for target in self.targets:
            try:
                await target.refs[self.shard].tell(batch)
            except ActorStopped:
                _log.warning("enriched_events_undelivered", stream=self.stream, events=len(ready))


_NOTHING = object()
#: no stale or defaulted lookups (never mutated: lists are rebuilt to add to them)
_NONE: list[str] = []


class _FetchTask:
    """One fetch of some keys of one source for one enricher, run as a task of the runtime."""

    __slots__ = ("keys", "owner", "source", "stash")

    def __init__(
        self, owner: EnrichShard, source: SourceRuntime, keys: list[Hashable], stash: bool
    ) -> None:
        self.owner = owner
        self.source = source
        self.keys = keys
        self.stash = stash

    async def run(self) -> None:
        try:
            results = await self.source.fetcher.fetch_many(self.keys)
        except ActorStopped as exc:  # the fetcher stopped: the runtime is shutting down
            self.give_up(exc)
            return
        except anyio.get_cancelled_exc_class():
            # cancelled at shutdown: the events waiting for these keys get their stale rows
            # or defaults, rather than wait for a fetch that will not end
            self.give_up(
                SourceError("the fetch was cancelled", source=self.source.name, attempts=0)
            )
            raise
        await self.owner._landed(self.source, results, self.stash)

    def give_up(self, cause: Exception) -> None:
        """The fetch will not happen: its keys count as failed, and the enricher is woken."""
        owner = self.owner
        if not self.stash:
            return
        error = (
            cause
            if isinstance(cause, SourceError)
            else SourceError(str(cause), source=self.source.name, attempts=0)
        )
        for plan in owner.plans:
            if plan.source is self.source:
                for key in self.keys:
                    plan.failed[key] = error
        for key in self.keys:
            owner.fetching.discard((self.source.name, key))
        owner.progress.set()
