"""The enricher: an actor per shard that gives events their dimension rows (issue 6,
``docs/design/enrichment.md``).

It reads the batches of one ingested stream and hands the enriched events, as batches of the
stream's enriched form, to the feature groups that read lookup fields, on the same shard.
Groups that read none get their batches from ingest directly, so a fetch never delays them.

An event whose lookups the caches can answer (a fresh row, or a key known to be missing) is
enriched at once. Any other goes to the stash while its keys are fetched; so does every later
event of the same routing key, so a key's events keep their order. The fetches run as tasks
of the runtime (``spawn``), through each source's :class:`Fetcher` (batched, one fetch in
flight per key, retries, a circuit breaker).

A fetch task touches nothing of the actor: it sends what it found as a :class:`Fetched`
message and tells the actor. The actor, in its own turn, stores the rows in the cache and in
``landed`` (so an eviction from a small cache cannot make the stash wait again) and releases
the stash from the front as far as each key can go. A key whose fetch failed gets its stale
row (``stale_if_error``) or the lookup's default.

``Fetched`` messages do not travel through the mailbox but through the actor's
:class:`_Inbox`, which is unbounded: a full mailbox can neither drop a result nor keep its
task waiting for room, and the actor reads the inbox while it waits for room in the stash,
in the middle of a turn, where no message of its mailbox can reach it. The task then tells
the actor (through the mailbox) only to wake it when it is idle. A refresh-ahead fetch, which
nothing waits for, tells nothing: its rows are taken in before the next batch.

The stash is bounded (``enrich_stash``): past it, the actor waits for fetches to land before it
takes another batch, and its full mailbox slows ingest.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeAlias

import anyio

from actors import Actor, ActorRef, ActorStopped, DeadLetterReason, get_logger

from .._batches import EnrichedBatch
from .._exceptions import SourceError
from .._messages import Batch, GetEnrichStats, Ping, fail_batch
from .._results import EnrichedEvent
from .._spec.enrich import Lookup
from .._updates import UpdateHub
from .cache import CacheStatus, DimensionCache
from .fetch import NOT_FOUND, Fetcher, KeyRefused
from .rows import version_at

__all__ = ["EnrichShard", "EnrichShardStats", "Fetched", "SourceRuntime"]

_log = get_logger("featurist.enrich")


class _Target(Protocol):
    refs: list[ActorRef[Any]]


@dataclass
class SourceRuntime:
    """One source as the enrichers use it: its cache and its fetcher (shared by the shards).

    The rows the source answers, and the keys it has not, are cached as the answer comes (in
    the fetcher's batch call), before any enricher's turn: a shard that looks at a key between
    the end of its fetch and the turn of the enricher that asked finds it cached, rather than
    neither cached nor in flight, and asking again. Failures and malformed rows are each
    enricher's to record."""

    name: str
    cache: DimensionCache
    fetcher: Fetcher
    #: events enriched with a stale row, or with a default because the fetch failed
    stale_served: int = 0
    defaults_after_error: int = 0
    #: the time a row is stored at: the enrichers' clock (each enricher sets it, to its own)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.fetcher.on_answers = self._store

    def _store(self, answers: dict[Hashable, Any]) -> None:
        now, cache = self.clock(), self.cache
        put = cache.put
        for key, value in answers.items():
            if isinstance(value, dict | list):  # a row, or versions
                put(key, value, now)
            elif value is NOT_FOUND:
                cache.put_missing(key, now)
            # else a failure or a malformed row: the enricher's to record, in its turn

    @property
    def malformed(self) -> int:
        """Rows the source returned malformed, each counted once by the fetcher that got it
        (not once per shard that waited for it)."""
        return self.fetcher.statistics().malformed

    @property
    def keys_refused(self) -> int:
        """Keys the source refused (it cannot take them), once per call that refused them."""
        return self.fetcher.statistics().keys_refused


@dataclass(frozen=True)
class EnrichShardStats:
    stashed: int
    fetching: int
    #: the most events the stash held at the end of a batch since the actor started
    stash_peak: int = 0


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetch ended: each key's answer from :meth:`Fetcher.fetch_many` (a row, versions,
    ``NOT_FOUND`` or an exception instance). A fetch that will not happen (cancelled at
    shutdown, or refused) gives each of its keys a :class:`SourceError`."""

    source: SourceRuntime
    results: dict[Hashable, Any]
    #: stashed events wait for it (False: a refresh-ahead fetch, which nothing waits for)
    stash: bool
    #: its rows and missing keys are in the cache already (stored by :class:`SourceRuntime`
    #: as the source answered)
    cached: bool = False


@dataclass(frozen=True)
class _Landed:
    """Fetches ended: their results are in the inbox (told by their tasks, to wake the actor)."""


class _Inbox:
    """Where fetch tasks put their :class:`Fetched` messages for the enricher: unbounded and
    never closed, so putting one neither waits nor fails."""

    __slots__ = ("_messages", "_wake")

    def __init__(self) -> None:
        self._messages: deque[Fetched] = deque()
        self._wake = anyio.Event()

    def __bool__(self) -> bool:
        return bool(self._messages)

    def put(self, message: Fetched) -> None:
        self._messages.append(message)
        self._wake.set()

    def take(self) -> Fetched | None:
        return self._messages.popleft() if self._messages else None

    async def wait(self) -> None:
        """Wait until a message is in the inbox."""
        if not self._messages:
            self._wake = anyio.Event()
            await self._wake.wait()


#: what is known of an event's lookups so far: (rows, ages, stale, defaulted) by lookup name
_Partial = tuple[dict[str, Any], dict[str, Any], list[str], list[str]]


class _Pending(NamedTuple):
    """Where an event that waits stands: kept so that an outcome once seen is kept (a small
    cache may evict it before the others land), and its lookups are counted once."""

    hits: int
    misses: int
    #: None: nothing known yet (a miss that waits for its fetch)
    partial: _Partial | None
    #: a (source, key) it waits for: while that is being fetched, it need not be looked at
    blocker: tuple[str, Hashable] | None
    #: with one lookup, the fields the event gets, known when it came (its row was cached, or
    #: known missing) while an earlier event of its key waited: it needs no look when its
    #: turn comes (``partial`` says the same, for an enriched event built whole)
    fields: dict[str, Any] | None = None


@dataclass(slots=True)
class _Waiting:
    """A stashed event."""

    key: Any
    t: int
    event: Any
    created: float
    arrived: float
    pending: _Pending


@dataclass(slots=True)
class _Scan:
    """One pass of enrichment over events: a batch that came, or the stash."""

    #: the wall clock, read once per pass
    now: float
    #: the events come for the first time: their lookups are counted (in the cache's statistics
    #: and the events' metadata) now, not again when they come back from the stash
    first: bool
    #: the ``perf_counter`` time the pass ends (one reading for the stash), for the events'
    #: latency; None: read per event
    done: float | None
    #: the enriched events are built whole (``enrichment`` and ``enrichment_metadata``): only
    #: while ``rt.enriched_events()`` has subscribers
    full: bool
    #: keys to fetch for the events that wait, by source
    wanted: dict[str, set[Hashable]] = field(default_factory=dict)
    #: keys whose cached rows are due for a refresh-ahead fetch, by source; None: not looked
    #: for (events from the stash were, when they came)
    refresh: dict[str, set[Hashable]] | None = None


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
        #: with one lookup, for the hot path: its (name, field, cache), and the fields its
        #: default adds to an event
        self._single: tuple[str, str, SourceRuntime, _Plan] | None = None
        self._default_fields: dict[str, Any] = {}
        if len(self.plans) == 1:
            plan = self.plans[0]
            self._single = (plan.name, plan.event_field, plan.source, plan)
            self._default_fields = _flat(plan.name, plan.default or {})
        for source in sources.values():
            source.clock = clock  # the rows it caches as they come are stored at this time
        self.shard = shard
        #: the name of the enriched stream (the batches it sends)
        self.stream = stream
        self.targets = targets
        #: whether the events passed on may be the lookup's fields alone (:meth:`_projects`),
        #: and the targets that was decided for (groups are added as features are registered)
        self._project = False
        self._project_for: tuple[int, ...] | None = None
        self.spawn = spawn
        self.stash_size = stash_size
        #: ``rt.enriched_events()`` subscribers
        self.hub = hub
        self.clock = clock
        self.stash: deque[_Waiting] = deque()
        #: the most events the stash held after a batch
        self.stash_peak = 0
        #: routing keys with events in the stash, and how many (a plain dict: a ``Counter``'s
        #: ``__missing__`` and ``__delitem__`` are Python calls on the hot path)
        self.stashed: dict[Any, int] = {}
        #: (source, key) being fetched for this shard
        self.fetching: set[tuple[str, Hashable]] = set()
        #: outcomes of fetches that ended, until the next release
        self.landed: dict[tuple[str, Hashable], Any] = {}
        #: what the fetch tasks send
        self.inbox = _Inbox()

    # -- messages ------------------------------------------------------------------------------
    async def receive_batch(self, messages: list[Any]) -> None:
        for message in messages:  # batches, and the fetches' news (asks come to ``receive``)
            if isinstance(message, _Landed):
                self._take_fetched()
                await self._release()
                continue
            # the rows fetched so far serve this batch (a fetch may end during a turn)
            self._take_fetched()
            # before each batch, not once per turn: a turn takes several batches, and the
            # stash would go past its size by all but one of them
            await self._wait_for_room()
            try:
                await self._apply(message)
            except Exception as exc:
                fail_batch(self.context, message, exc, enricher=self.stream, shard=self.shard)
            if len(self.stash) > self.stash_peak:
                self.stash_peak = len(self.stash)
        await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        """A full stash takes no more batches until fetches land (the mailbox then fills, and
        ingest waits: backpressure); so the stash holds at most ``enrich_stash`` events and one
        batch. The inbox is read here, not the mailbox: the fetches' news in the mailbox sits
        behind this turn."""
        while len(self.stash) >= self.stash_size:
            self._take_fetched()
            if self.landed or self._any_failed() or not self.fetching:
                before = len(self.stash)
                await self._release()
                if len(self.stash) >= before and not self.fetching:
                    break  # nothing in flight and nothing released: do not spin
                continue
            await self.inbox.wait()

    async def receive(self, message: Any) -> Any:
        self._take_fetched()
        if isinstance(message, _Landed):
            await self._release()
            return None
        if isinstance(message, Ping):
            return None
        if isinstance(message, GetEnrichStats):
            return EnrichShardStats(
                stashed=len(self.stash),
                fetching=len(self.fetching),
                stash_peak=self.stash_peak,
            )
        raise TypeError(f"EnrichShard cannot handle {message!r}")

    async def on_stop(self) -> None:
        self._take_fetched()  # what the fetches found still reaches the cache
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

    def _projects(self) -> bool:
        """Whether an event enriched on the hot path may be passed on as the fields its one
        lookup adds (``"<lookup>.<column>"``), shared by every event of the same row, instead
        of a copy of the event with them: when every group fed is a keyed group and every
        feature of those reads lookup fields only (``feature.inputs()``; a count or a ratio
        reads none). Such a group reads nothing else of the event, so it computes the same;
        the copy (a cold read of the event and an allocation per event) was a third of the
        enricher's time. Decided again when a group is added (features registered)."""
        targets = self.targets
        ids = tuple(map(id, targets))
        if ids != self._project_for:
            self._project_for = ids
            self._project = self._single is not None and _reads_lookup_only(
                targets, self._single[0]
            )
        return self._project

    # -- enriching -----------------------------------------------------------------------------
    async def _apply(self, batch: Batch) -> None:
        full = self.hub is not None and self.hub.active
        scan = _Scan(self.clock(), first=True, done=None, full=full, refresh={})
        ready: list[tuple[Any, int, Any]] = []
        if self._single is not None and not full:
            self._apply_one(scan, batch, self._single, ready)
        else:
            arrived = time.perf_counter()
            stashed, take = self.stashed, self._take
            for key, t, event in batch.events:
                take(scan, key, t, event, batch.created, arrived, key in stashed, ready)
        self._fetch(scan.wanted, stash=True)
        if scan.refresh:
            self._fetch(scan.refresh, stash=False)
        if ready:
            await self._send(ready, batch.created)

    def _apply_one(
        self,
        scan: _Scan,
        batch: Batch,
        single: tuple[str, str, SourceRuntime, _Plan],
        ready: list[tuple[Any, int, Any]],
    ) -> None:
        """The hot path, with one lookup and nobody reading whole enriched events: an event
        whose row the cache holds fresh (or whose key it knows to be missing) is enriched here,
        at the cost of a dict lookup, a ``move_to_end`` and a dict of the event's fields and
        the row's, or the row's alone (:meth:`_projects`). The row's are made once per cached
        entry, kept in the entry's ``derived`` with the age below which it may be served so
        (:data:`_Derived`). If an earlier event of its key waits in the stash, it goes there
        with those fields, and is passed on as soon as its turn comes. An event whose key the
        cache does not hold goes to the stash, and the key to ``scan.wanted``. Any other event
        (versions, a stale row, an event that is not a mapping, a fetch that just ended) goes
        to :meth:`_take`."""
        name, event_field, source, plan = single
        cache = source.cache
        entries, ttl, refresh_after, negative_ttl, negative_refresh_after = cache.hot()
        # younger than these, a row (a missing entry) is fresh and not due for refresh
        fresh = min(ttl, refresh_after)
        negative_fresh = min(negative_ttl, negative_refresh_after)
        get_entry, move = entries.get, entries.move_to_end
        default_fields = self._default_fields
        now, created = scan.now, batch.created
        arrived = time.perf_counter()
        stashed, stash, take, add = self.stashed, self.stash, self._take, ready.append
        stashed_get = stashed.get
        project = self._projects()
        # outcomes of fetches that ended since the last release: ``_enrich`` reads them
        landed, failed = self.landed, plan.failed
        fetching, source_name = self.fetching, source.name
        wanted: set[Hashable] | None = None
        served = negative_hits = misses = 0
        for key, t, event in batch.events:
            try:
                value = event.get(event_field)
                entry = get_entry(value)
            except Exception:  # not a mapping, an unhashable key: ``_enrich`` says why
                value = entry = None
            if entry is not None:
                derived = entry.derived
                # the usual event: a fresh entry whose fields are made, and no earlier event
                # of its key waiting
                if (
                    derived is not None
                    and now - entry.fetched_at < derived[2]
                    and derived[0] == name
                    and key not in stashed
                ):
                    move(value)
                    served += 1
                    negative_hits += derived[3]
                    add((key, t, derived[1] if project else {**event, **derived[1]}))
                    continue
                age = now - entry.fetched_at
                fields = None
                if entry.missing:
                    if age < negative_ttl and (
                        age < negative_refresh_after or entry.refresh_requested
                    ):
                        served += 1
                        negative_hits += 1
                        fields = default_fields
                        if derived is None or derived[0] != name:
                            entry.derived = (name, default_fields, negative_fresh, 1)
                elif age < ttl and (age < refresh_after or entry.refresh_requested):
                    if derived is None or derived[0] != name:
                        row = entry.value
                        # versions (a list): the row valid at each event's time, not here
                        derived = entry.derived = (
                            (name, _flat(name, row), fresh, 0) if row.__class__ is dict else None
                        )
                    if derived is not None:
                        served += 1
                        fields = derived[1]
                if fields is not None:
                    move(value)
                    if key in stashed:  # an earlier event of its key waits: so must it
                        pending = _known(
                            plan, None if entry.missing else entry.value, age * 1000, fields, None
                        )
                        stash.append(_Waiting(key, t, event, created, arrived, pending))
                        stashed[key] += 1
                    else:
                        add((key, t, fields if project else {**event, **fields}))
                    continue
            elif value is not None and (
                not (landed or failed)
                or ((source_name, value) not in landed and value not in failed)
            ):
                misses += 1
                blocker = (source_name, value)
                if blocker not in fetching:
                    if wanted is None:
                        wanted = scan.wanted.setdefault(source_name, set())
                    wanted.add(value)
                stash.append(_Waiting(key, t, event, created, arrived, _missed(blocker)))
                stashed[key] = stashed_get(key, 0) + 1
                continue
            take(scan, key, t, event, created, arrived, key in stashed, ready)
        if served or misses:
            cache.count_hits(served - negative_hits, negative_hits, misses)

    def _take(
        self,
        scan: _Scan,
        key: Any,
        t: int,
        event: Any,
        created: float,
        arrived: float,
        behind: bool,
        ready: list[tuple[Any, int, Any]],
    ) -> None:
        """An event come for the first time: enriched into ``ready``, or stashed (``behind``:
        an earlier event of its key is in the stash), or in dead letters if it cannot be."""
        try:
            enriched = self._enrich(scan, t, event, arrived, None, behind)
        except Exception as exc:
            self._reject(event, exc)
            return
        if enriched.__class__ is dict:
            ready.append((key, t, enriched))
            return
        self.stash.append(_Waiting(key, t, event, created, arrived, enriched))
        self.stashed[key] = self.stashed.get(key, 0) + 1

    def _enrich(
        self,
        scan: _Scan,
        t: int,
        event: Any,
        arrived: float,
        pending: _Pending | None,
        keep: bool,
    ) -> Any:
        """The enriched event (a dict), or a :class:`_Pending` if a lookup waits for a fetch
        (whose keys go to ``scan.wanted``) or ``keep`` asks to keep it.

        ``arrived`` is the ``perf_counter`` time the event came, for its latency; ``pending``
        where it stood when it was last kept (None: it comes for the first time).
        The hot path of enrichment: plain dict work, one pass over the lookups.
        """
        rows: dict[str, Any]
        ages: dict[str, Any]
        stale: list[str]
        defaulted: list[str]
        if pending is None:
            hits = misses = 0
            rows, ages, stale, defaulted = {}, {}, _NONE, _NONE
        else:
            hits, misses = pending.hits, pending.misses
            if pending.partial is None:  # nothing known yet
                rows, ages, stale, defaulted = {}, {}, _NONE, _NONE
            else:
                rows, ages, stale, defaulted = pending.partial
        now, first, wanted, refresh = scan.now, scan.first, scan.wanted, scan.refresh
        blocker: tuple[str, Hashable] | None = None
        landed = self.landed
        get = event.get
        for name, event_field, source, cache, default, failed in self._plans:
            if pending is not None and name in rows:
                continue  # known since an earlier look
            value = get(event_field)
            if value is None:
                rows[name] = default
                ages[name] = None
                defaulted = [*defaulted, name]
                continue
            age: float | None = 0.0
            if first:
                # An event's first look asks the cache even when the key's fetch has just
                # landed (a fetch may land between two batches of one turn): every lookup is
                # counted once, as a hit or a miss. A row evicted since it landed is still
                # served from ``landed``, after a miss.
                hit = cache.lookup(value, now)
                row = (
                    _NOTHING
                    if hit is not None or not landed
                    else landed.get((source.name, value), _NOTHING)
                )
                if row is not _NOTHING:
                    misses += 1
            else:
                row = landed.get((source.name, value), _NOTHING) if landed else _NOTHING
                hit = cache.peek(value, now) if row is _NOTHING else None
            if row is _NOTHING:
                if hit is None:
                    error = failed.get(value) if failed else None
                    if error is None:
                        if first:
                            misses += 1
                        if blocker is None:
                            blocker = (source.name, value)
                        if (source.name, value) not in self.fetching:
                            wanted.setdefault(source.name, set()).add(value)
                        continue
                    # the fetch failed: a stale row if the cache holds one, else the default
                    fallback = cache.lookup_stale(value, now)
                    if fallback is None or fallback[0] is CacheStatus.MISSING:
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
                    # a missing entry's row is None: the default, below
                    _, row, age, due = hit
                    if due and refresh is not None:
                        refresh.setdefault(source.name, set()).add(value)
            if row.__class__ is list:  # versions: the one valid at the event's time
                version = version_at(row, t)
                row = None if version is None else version.row
            if row is None or row is NOT_FOUND or isinstance(row, Exception):
                row = default
                defaulted = [*defaulted, name]
            rows[name] = row
            ages[name] = age * 1000 if age is not None else None
        if blocker is not None or keep:
            return _Pending(hits, misses, (rows, ages, stale, defaulted), blocker)
        out = dict(event)
        for name, row in rows.items():
            if row:
                for column, cell in row.items():
                    out[f"{name}.{column}"] = cell
        if not scan.full:  # nobody reads the enriched events: the features need the fields
            return out
        done = scan.done
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

    # -- fetching ------------------------------------------------------------------------------
    def _fetch(self, wanted: dict[str, set[Hashable]], *, stash: bool) -> None:
        for name, keys in wanted.items():
            keys = {key for key in keys if (name, key) not in self.fetching}
            if not keys:
                continue
            source = next(plan.source for plan in self.plans if plan.source.name == name)
            if stash:
                self.fetching.update((name, key) for key in keys)
            task = _FetchTask(self.inbox, self.context.self, source, list(keys), stash)
            try:
                self.spawn(task.run)
            except RuntimeError as exc:  # the runtime stopped taking tasks: shutting down
                failed = task.failed(exc)
                if failed is not None:
                    self._landed(failed)

    def _take_fetched(self) -> None:
        """Take in what the fetch tasks sent."""
        take = self.inbox.take
        while (message := take()) is not None:
            self._landed(message)

    def _landed(self, fetched: Fetched) -> None:
        """A fetch ended: store what it found, and note what failed."""
        now = self.clock()
        source, stash = fetched.source, fetched.stash
        cache, name = source.cache, source.name
        put, landed, fetching = cache.put, self.landed, self.fetching
        cached = fetched.cached
        for key, value in fetched.results.items():
            ident = (name, key)
            if value.__class__ is dict:  # a row: the usual answer
                if not cached:
                    put(key, value, now)
                if stash:
                    landed[ident] = value
                    fetching.discard(ident)
                continue
            if isinstance(value, SourceError):
                if stash:
                    for plan in self.plans:
                        if plan.source is source:
                            plan.failed[key] = value
                    self.fetching.discard(ident)
                else:
                    # a refresh-ahead fetch: the cached row stays, and is refreshed again
                    cache.rearm_refresh(key)
                continue
            if value is NOT_FOUND:
                if not cached:
                    cache.put_missing(key, now)
            elif isinstance(value, Exception):
                # a malformed row or a refused key (the fetcher counts them, once per key and
                # call): the default, and no call for it before the negative entry expires
                if isinstance(value, KeyRefused) and not value.recorded:
                    self._refused(value)
                cache.put_missing(key, now)
                value = NOT_FOUND
            elif not (cached and isinstance(value, dict | list)):
                cache.put(key, value, now)  # versions, or a row of a dict's subclass
            if stash:
                self.landed[ident] = value
                self.fetching.discard(ident)

    async def _release(self) -> None:
        """Release the stash from the front, as far as each routing key can go."""
        if not self.stash:
            self._forget_outcomes()
            return
        if not self.landed and not self._any_failed():
            # Nothing ended since the last release (several fetches that end together wake
            # the actor once each, and the first wake takes them all): no event can move. A
            # release leaves each event waiting for a fetch in flight, or for one before it
            # (which waits for a fetch in flight, or failed and is taken now with it); until
            # one lands or fails, each stays where it is.
            return
        scan = _Scan(
            self.clock(),
            first=False,
            done=time.perf_counter(),
            full=self.hub is not None and self.hub.active,
        )
        kept: deque[_Waiting] = deque()
        blocked: set[Any] = set()
        fetching, landed, stashed = self.fetching, self.landed, self.stashed
        ready: list[tuple[Any, int, Any]] = []
        created = None
        # With one lookup (and nobody reading whole enriched events), an event whose one key
        # landed with a row or as missing is enriched here, with the fields each landed key
        # adds made once, first (and kept with its cached row, for the events that hit it);
        # any other goes to ``_enrich``.
        plan = self.plans[0]
        fields_of: dict[tuple[str, Hashable], dict[str, Any]] = {}
        project = False
        if self._single is not None and not scan.full:
            fields_of = self._landed_fields()
            project = self._projects()
        for waiting in self.stash:
            key = waiting.key
            behind = key in blocked
            pending = waiting.pending
            fields = pending.fields
            if fields is None or scan.full:
                fields = None
                blocker = pending.blocker
                if blocker is not None:
                    fields = fields_of.get(blocker) if fields_of else None
                    if fields is None:
                        if blocker in fetching and blocker not in landed:
                            # its fetch has not landed: nothing new to learn of it yet
                            kept.append(waiting)
                            blocked.add(key)
                            continue
                    elif behind:  # its row landed: it goes when the events before it do
                        row = landed.get(blocker)
                        row = row if row.__class__ is dict else None
                        waiting.pending = _known(plan, row, 0.0, fields, pending)
                        kept.append(waiting)
                        continue
            elif behind:
                # its fields were known when it came: it goes when the events before it do
                kept.append(waiting)
                continue
            if fields is not None:
                # the event goes on, with the fields of its lookup
                ready.append((key, waiting.t, fields if project else {**waiting.event, **fields}))
                if created is None or waiting.created < created:
                    created = waiting.created
                count = stashed[key] - 1
                if count:
                    stashed[key] = count
                else:
                    del stashed[key]
                continue
            if behind and not landed:
                kept.append(waiting)
                continue
            try:
                # an event behind its key's others is still looked at when fetches landed,
                # so that it keeps their outcomes (``keep``) and starts the fetches it needs
                enriched = self._enrich(
                    scan, waiting.t, waiting.event, waiting.arrived, waiting.pending, behind
                )
            except Exception as exc:
                self._reject(waiting.event, exc)
                self._unstash(waiting.key)
                continue
            if enriched.__class__ is not dict:
                waiting.pending = enriched
                kept.append(waiting)
                blocked.add(waiting.key)
                continue
            ready.append((waiting.key, waiting.t, enriched))
            created = waiting.created if created is None else min(created, waiting.created)
            self._unstash(waiting.key)
        self.stash = kept
        self._forget_outcomes()
        self._fetch(scan.wanted, stash=True)
        if ready:
            assert created is not None
            await self._send(ready, created)

    def _landed_fields(self) -> dict[tuple[str, Hashable], dict[str, Any]]:
        """With one lookup: the fields each key that landed with a row, or as missing, adds
        to its events; a row's are kept with its cached entry too (``derived``)."""
        assert self._single is not None
        name, _, source, _ = self._single
        entries, ttl, refresh_after, _, _ = source.cache.hot()
        fresh = min(ttl, refresh_after)
        entries_get, default_fields = entries.get, self._default_fields
        fields_of: dict[tuple[str, Hashable], dict[str, Any]] = {}
        for blocker, value in self.landed.items():
            if value.__class__ is dict:
                fields = fields_of[blocker] = _flat(name, value)
                entry = entries_get(blocker[1])
                if entry is not None and entry.value is value:
                    entry.derived = (name, fields, fresh, 0)
            elif value is NOT_FOUND:
                fields_of[blocker] = default_fields
        return fields_of

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

    def _refused(self, error: KeyRefused) -> None:
        """A key the source cannot take: in dead letters once (the shards that waited for it
        share the error), its events get the lookup's default."""
        error.recorded = True
        _log.warning(
            "enrich_key_refused", stream=self.stream, source=error.source, error=str(error)
        )
        self.context.dead_letters.record(
            error.key,
            self.context.name,
            DeadLetterReason.REJECTED,
            error=error,
            detail=f"a lookup key that source {error.source!r} cannot take: its events get "
            "the lookup's default",
        )

    def _forget_outcomes(self) -> None:
        """Outcomes serve the release that follows them only: later events ask the cache (and
        a key that failed is fetched again: the circuit breaker keeps that cheap)."""
        self.landed.clear()
        for plan in self.plans:
            plan.failed.clear()

    async def _send(self, ready: list[tuple[Any, int, Any]], created: float) -> None:
        if self.hub is not None and self.hub.active:
            await self.hub.publish(EnrichedBatch(ready, time.time()))
        batch = Batch(ready, created, self.stream)
        for target in self.targets:
            try:
                await target.refs[self.shard].tell(batch)
            except ActorStopped:
                _log.warning("enriched_events_undelivered", stream=self.stream, events=len(ready))


def _known(
    plan: _Plan,
    row: dict[str, Any] | None,
    age_ms: float,
    fields: dict[str, Any],
    pending: _Pending | None,
) -> _Pending:
    """Where an event stands whose one lookup is answered (``row``, or None: the key is
    missing, and ``fields`` are the default's) while an earlier event of its key waits: with
    its row kept as :meth:`EnrichShard._enrich` keeps it (for an enriched event built whole
    when its turn comes), and counted as a hit if it comes for the first time (no
    ``pending``)."""
    name, ages = plan.name, {plan.name: age_ms}
    hits, misses = (1, 0) if pending is None else (pending.hits, pending.misses)
    if row is None:
        return _Pending(hits, misses, ({name: plan.default}, ages, _NONE, [name]), None, fields)
    return _Pending(hits, misses, ({name: row}, ages, _NONE, _NONE), None, fields)


def _missed(blocker: tuple[str, Hashable]) -> _Pending:
    """``_Pending(0, 1, None, blocker)``: an event come for the first time whose key the cache
    does not hold (one miss, nothing known yet). Built with ``tuple.__new__``: a named tuple's
    own ``__new__`` is a Python function, a third of the cost of stashing such an event."""
    pending: _Pending = _new_tuple(_Pending, (0, 1, None, blocker, None))
    return pending


_new_tuple: Any = tuple.__new__


def _reads_lookup_only(targets: Sequence[_Target], name: str) -> bool:
    """Whether every target is a keyed group (a compiled kernel, no window engine, no join)
    whose features read no event field but lookup ``name``'s (``"<name>.<column>"``)."""
    prefix = f"{name}."
    for target in targets:
        features = getattr(target, "features", None)
        if (
            getattr(target, "compiled", None) is None
            or getattr(target, "engine", None) is not None
            or features is None
        ):
            return False
        for feature in features:
            if not all(field.startswith(prefix) for field in feature.inputs()):
                return False
    return True


def _flat(name: str, row: dict[str, Any]) -> dict[str, Any]:
    """The fields a lookup's row adds to an event: ``"<lookup>.<column>"``."""
    names = _field_names.get(name)
    if names is None:
        names = _field_names[name] = {}
    try:
        return {names[column]: cell for column, cell in row.items()}
    except KeyError:
        # a column not seen yet: remember its field's name (a few hundred per lookup at
        # most; past that, each row's names are made anew)
        if len(names) < _FIELD_NAMES_MAX:
            for column in row:
                if column not in names and len(names) < _FIELD_NAMES_MAX:
                    names[column] = f"{name}.{column}"
        return {names.get(column) or f"{name}.{column}": cell for column, cell in row.items()}


#: what the enricher keeps in a cache entry's ``derived``: ``(lookup name, the fields the
#: entry adds to an event, the age in seconds below which the entry is fresh and not due for
#: refresh, 1 for a missing entry (the fields are the lookup's default) else 0)``, so that the
#: hot path serves an entry with one comparison of its age
_Derived: TypeAlias = tuple[str, dict[str, Any], float, int]

#: per lookup, the field name of each column seen: ``"<lookup>.<column>"``
_field_names: dict[str, dict[Any, str]] = {}
_FIELD_NAMES_MAX = 512


_NOTHING = object()
#: no stale or defaulted lookups (never mutated: lists are rebuilt to add to them)
_NONE: list[str] = []


class _FetchTask:
    """One fetch of some keys of one source for one enricher, run as a task of the runtime.

    It changes nothing of the enricher's: it puts what it found in the enricher's inbox, then,
    if stashed events wait for it, tells the enricher to wake it. That ``tell`` may wait for room
    in the mailbox; the actor reads the inbox meanwhile, so the wait always ends (or the actor
    stops, and the tell fails at once). The rows found are in the cache already: the source's
    :class:`SourceRuntime` stores them as the source answers."""

    __slots__ = ("enricher", "inbox", "keys", "source", "stash")

    def __init__(
        self,
        inbox: _Inbox,
        enricher: ActorRef[Any],
        source: SourceRuntime,
        keys: list[Hashable],
        stash: bool,
    ) -> None:
        self.inbox = inbox
        self.enricher = enricher
        self.source = source
        self.keys = keys
        self.stash = stash

    async def run(self) -> None:
        try:
            results = await self._results()
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
        except Exception as exc:
            # the fetcher answers every key, so this is a bug: the fetch fails, the runtime
            # (whose task this is) goes on
            _log.exception("enrich_fetch_failed", source=self.source.name)
            error = SourceError(f"the fetch failed: {exc!r}", source=self.source.name, attempts=0)
            error.__cause__ = exc
            self.give_up(error)
            return
        # its rows and missing keys are cached already (SourceRuntime, as the source answered)
        self.inbox.put(Fetched(self.source, results, self.stash, cached=True))
        if self.stash:
            try:
                await self.enricher.tell(_Landed())
            except ActorStopped:
                pass

    async def _results(self) -> dict[Hashable, Any]:
        """Each key's answer: from the cache for a key cached since the enricher asked (a
        fetch of another shard's landed before this task began), else from the source."""
        keys, cached = self.keys, {}
        if self.stash:  # a refresh-ahead fetch is there to fetch again
            source = self.source
            peek, now = source.cache.peek, source.clock()
            wanted = []
            for key in keys:
                hit = peek(key, now)
                if hit is None:
                    wanted.append(key)
                else:
                    cached[key] = NOT_FOUND if hit[1] is None else hit[1]
            keys = wanted
        if not keys:
            await anyio.lowlevel.checkpoint()
            return cached
        results = await self.source.fetcher.fetch_many(keys)
        results.update(cached)
        return results

    def give_up(self, cause: Exception) -> None:
        """The fetch will not happen: its keys count as failed (the inbox wakes the enricher
        if it waits for room in its stash)."""
        failed = self.failed(cause)
        if failed is not None:
            self.inbox.put(failed)

    def failed(self, cause: Exception) -> Fetched | None:
        """The message that the fetch failed with ``cause``, or None for a refresh-ahead fetch
        (nothing waits for it: the cached row stays as it is)."""
        if not self.stash:
            return None
        error = (
            cause
            if isinstance(cause, SourceError)
            else SourceError(str(cause), source=self.source.name, attempts=0)
        )
        return Fetched(self.source, dict.fromkeys(self.keys, error), True)
