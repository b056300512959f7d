"""The actor that computes one feature group for the keys of one shard.

A ``GroupShard`` owns the state of its keys (a dict of compiled state structs) and nothing else,
so no lock is needed anywhere: the actor's turn is the only code that touches the state. It
receives batches of events, several per turn when it falls behind, and answers queries by ask.

Latency is measured per batch, never per event: the batch's compute time divided by its size
is each event's computation latency, and the time from the batch's creation at ingest to the
end of its update is the ingest-to-update latency of its oldest event (an upper bound for the
others). One batch in ``sample_every`` runs an instrumented variant of the compiled function that
also times each feature, for per-feature latency.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from actors import Actor, ActorContext, DeadLetterReason, get_logger

from ._kernel import CompiledGroup
from ._results import FeatureError, FeatureUpdate
from ._updates import UpdateHub

__all__ = [
    "Batch",
    "GetStates",
    "GetStats",
    "GroupShard",
    "IdleTick",
    "Ping",
    "ShardStats",
    "Tick",
    "fail_batch",
]

_log = get_logger("featurist.shard")

_time_of = itemgetter(1)
_RECENT_ERRORS = 100
_LATENCY_WINDOW = 4096


class Batch:
    """Events for one shard: ``(key, time_ms, event)`` tuples, shared by every group's actor."""

    __slots__ = ("created", "events", "parts", "stream", "tags")

    def __init__(
        self, events: list[tuple[Any, int, dict[str, Any]]], created: float, stream: str = ""
    ) -> None:
        self.events = events
        #: ``time.perf_counter()`` when the batch's first event was accepted
        self.created = created
        #: the stream the events came on
        self.stream = stream
        #: with several streams: each event's stream index (a join reads them all)
        self.tags: list[int] | None = None
        #: with several streams: the part of each stream, made once for its groups
        self.parts: dict[str, Batch] | None = None


@dataclass(frozen=True)
class GetStates:
    """Ask: for each key, ``(values, last_event_time, shard_updated_at, shard_max_time,
    key_watermark)``; the first three are None for a key the shard has not seen, and the last
    is the key's own watermark where the group keeps one (window groups), else None."""

    keys: tuple[Any, ...]


@dataclass(frozen=True)
class Ping:
    """Ask: answered at once; a reply means every batch told before it has been applied."""


@dataclass(frozen=True)
class Tick:
    """Timer message: expire quiet keys (and, in window groups, advance idle keys)."""


@dataclass(frozen=True)
class IdleTick:
    """Ask: run a :class:`Tick` now (``rt.flush()`` sends it, so tests need not wait)."""


@dataclass(frozen=True)
class GetStats:
    """Ask: the actor's :class:`ShardStats`."""


@dataclass(frozen=True)
class ShardStats:
    """The reply to :class:`GetStats`: a snapshot of a shard actor's counters."""

    events: int
    batches: int
    keys: int
    max_time: int | None
    errors: dict[str, int]
    #: sampled nanoseconds per event per feature, and the number of events sampled
    feature_ns: list[int]
    sampled_events: int
    compute_ns: int
    #: (ingest-to-update seconds, events) of recent batches
    latencies: list[tuple[float, int]]
    state_bytes: int
    recent_errors: list[FeatureError]
    #: keys whose state was dropped after ``state_ttl``
    expired_keys: int
    first_event_at: float | None
    last_event_at: float | None


def fail_batch(context: ActorContext, batch: Batch, error: Exception, **where: Any) -> None:
    """A batch that raised out of a shard actor's engine: log it and put its events in dead
    letters. Engines catch every per-feature error, so this is a bug; the actor kernel must not
    retry the batch, which may be partly applied already."""
    _log.exception("batch_failed", **where)
    context.dead_letters.record(
        batch.events,
        context.name,
        DeadLetterReason.FAILED,
        error=error,
        detail="a batch failed in a shard actor; it may be partly applied",
    )


class GroupShard(Actor[Any]):
    """Computes one compiled feature group for one shard's keys. Internal."""

    def __init__(
        self,
        group: CompiledGroup,
        group_name: str,
        shard: int,
        hub: UpdateHub[FeatureUpdate],
        sample_every: int,
        state_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.group = group
        #: seconds after which a quiet key's state is dropped, measured with ``clock``
        self.state_ttl = state_ttl
        self.clock = clock
        #: key -> wall time of its last event, oldest first (kept only with a state_ttl)
        self.seen: OrderedDict[Any, float] | None = OrderedDict() if state_ttl else None
        self.expired_keys = 0
        self.group_name = group_name
        self.shard = shard
        self.hub = hub
        self.sample_every = sample_every
        self.states: dict[Any, Any] = {}
        self.events = 0
        self.batches = 0
        self.max_time: int | None = None
        self.errors: Counter[str] = Counter()
        self.recent_errors: deque[FeatureError] = deque(maxlen=_RECENT_ERRORS)
        self.feature_ns = [0] * len(group.names)
        self.sampled_events = 0
        self.compute_ns = 0
        self.latencies: deque[tuple[float, int]] = deque(maxlen=_LATENCY_WINDOW)
        self.feature_latency_ms: dict[str, float] = {}
        self.first_event_at: float | None = None
        self.last_event_at: float | None = None

    async def on_start(self) -> None:
        if self.state_ttl is not None:
            period = min(max(self.state_ttl / 4, 0.01), 1.0)
            self.context.start_periodic_timer("tick", Tick(), period)

    def _expire(self) -> None:
        """Drop the state of keys quiet for ``state_ttl``: the oldest first, so this stops at
        the first key that is not."""
        seen = self.seen
        if seen is None or self.state_ttl is None:
            return
        limit = self.clock() - self.state_ttl
        states = self.states
        while seen:
            key, at = next(iter(seen.items()))
            if at > limit:
                break
            seen.popitem(last=False)
            if states.pop(key, None) is not None:
                self.expired_keys += 1

    async def receive_batch(self, messages: list[Any]) -> None:
        # Batches only: the timer's Tick, asks and other messages come one at a time, to
        # ``receive``.
        for batch in messages:
            try:
                await self._apply(batch)
            except Exception as exc:
                fail_batch(self.context, batch, exc, group=self.group_name, shard=self.shard)

    async def _apply(self, batch: Batch) -> None:
        group = self.group
        events = batch.events
        n = len(events)
        if not n:
            return
        now = time.time()
        errors: list[Any] = []
        out: list[Any] | None = None
        sampled = self.batches % self.sample_every == 0
        timings = [0] * len(group.names) if sampled else None
        start = time.perf_counter_ns()
        if self.hub.active:
            out = []
            if timings is None:
                group.apply_emit(events, self.states, errors, now, out)
            else:
                group.apply_emit_timed(events, self.states, errors, now, out, timings)
        elif timings is None:
            group.apply(events, self.states, errors, now)
        else:
            group.apply_timed(events, self.states, errors, now, timings)
        elapsed = time.perf_counter_ns() - start
        if timings is not None:
            feature_ns = self.feature_ns
            for i, ns in enumerate(timings):
                feature_ns[i] += ns
            self.sampled_events += n
            self.feature_latency_ms = {
                name: feature_ns[i] / self.sampled_events / 1e6
                for i, name in enumerate(group.names)
            }
        self.compute_ns += elapsed
        seen = self.seen
        if seen is not None:
            wall = self.clock()
            move = seen.move_to_end
            for key, _, _ in events:
                seen[key] = wall
                move(key)
        self.latencies.append((time.perf_counter() - batch.created, n))
        self.events += n
        self.batches += 1
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        high = max(map(_time_of, events))
        if self.max_time is None or high > self.max_time:
            self.max_time = high
        if errors:
            self._record_errors(errors, emit=out is not None)
        if out is not None:
            await self._publish(out, errors, now)

    def _record_errors(self, errors: list[Any], *, emit: bool) -> None:
        for error in errors:
            key, t, name, exc = error[1:] if emit else error
            self.errors[name] += 1
            self.recent_errors.append(FeatureError(name, key, t, f"{type(exc).__name__}: {exc}"))
        _log.debug("feature_errors", group=self.group_name, shard=self.shard, count=len(errors))

    async def _publish(self, out: list[Any], errors: list[Any], now: float) -> None:
        names = self.group.names
        latency = self.feature_latency_ms  # set by the first batch, which is always sampled
        by_position: dict[int, dict[str, str]] = {}
        for position, _key, _t, name, exc in errors:
            by_position.setdefault(position, {})[name] = f"{type(exc).__name__}: {exc}"
        group = self.group_name
        updates = [
            FeatureUpdate(
                key,
                t,
                dict(zip(names, values, strict=True)),
                by_position.get(i),
                latency,
                now,
                group,
            )
            for i, (key, t, values) in enumerate(out)
        ]
        await self.hub.publish(updates)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, GetStates):
            replies: list[tuple[Any, ...]] = []
            get, values = self.states.get, self.group.values
            for key in message.keys:
                state = get(key)
                if state is None or state.t_ < 0:
                    replies.append((None, None, None, self.max_time, None))
                else:
                    replies.append(
                        (values(state), state.t_, self.last_event_at, self.max_time, None)
                    )
            return replies
        if isinstance(message, Ping):
            return None
        if isinstance(message, IdleTick | Tick):  # the timer's Tick comes here, one at a time
            self._expire()
            return None
        if isinstance(message, GetStats):
            return self._stats()
        raise TypeError(f"GroupShard cannot handle {message!r}")

    def _stats(self) -> ShardStats:
        return ShardStats(
            events=self.events,
            batches=self.batches,
            keys=len(self.states),
            max_time=self.max_time,
            errors=dict(self.errors),
            feature_ns=list(self.feature_ns),
            sampled_events=self.sampled_events,
            compute_ns=self.compute_ns,
            latencies=list(self.latencies),
            state_bytes=self._state_bytes(),
            recent_errors=list(self.recent_errors),
            expired_keys=self.expired_keys,
            first_event_at=self.first_event_at,
            last_event_at=self.last_event_at,
        )

    def _state_bytes(self, sample: int = 200) -> int:
        """Estimated bytes held for this shard's keys: each key, its dict entry and its state
        struct with the objects it alone holds, measured on a sample of keys."""
        keys = len(self.states)
        if not keys:
            return 0
        measured = 0
        counted = 0
        for key, state in self.states.items():
            size = sys.getsizeof(key) + sys.getsizeof(state)
            seen: set[int] = set()
            for field in state.__slots__:
                item = getattr(state, field)
                if item is None or id(item) in seen or (type(item) is int and -5 <= item <= 256):
                    continue
                seen.add(id(item))
                size += sys.getsizeof(item)
            measured += size
            counted += 1
            if counted >= sample:
                break
        table = sys.getsizeof(self.states) / keys
        return int((measured / counted + table) * keys)
