"""The actor that runs one join for the keys of one shard: its join buffers.

It receives the runtime's batches, every stream's events tagged (``Batch.tags``), applies
them to its :class:`JoinEngine`, and hands the records, as a batch of the join's own stream, to
the feature groups of that stream on the same shard (a join feeding features costs no routing)
and to ``rt.join_records`` subscribers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any, Protocol

from actors import Actor, ActorRef, ActorStopped, get_logger

from .._batches import JoinRecordBatch, LateEventBatch
from .._checkpoints.codec import state_codec
from .._messages import (
    Batch,
    GetJoinStats,
    IdleTick,
    Ping,
    RestoreSnapshot,
    ShardSnapshot,
    TakeSnapshot,
    Tick,
    fail_batch,
    log_left_out,
    poison_count,
    set_aside,
)
from .._results import JoinRecord, LateEvent
from .._stats.idle import IdleKeys
from .._updates import UpdateHub
from .buffer import SideBuffer
from .engine import JoinCounters, JoinEngine, JoinKeyState, JoinRows, Record, make_records

__all__ = ["JoinShard", "JoinShardStats"]

_log = get_logger("featurist.joins")

#: seconds between two log lines of evictions (or of failing functions) of one join actor
_LOG_INTERVAL = 10.0


class _Target(Protocol):
    refs: list[ActorRef[Any]]


@dataclass(frozen=True)
class JoinShardStats:
    counters: JoinCounters
    keys: int
    buffered_left: int
    buffered_right: int
    largest_key: int
    state_bytes: int
    #: times the actor was restarted after a failure
    restarts: int = 0
    #: poison events set aside (in dead letters)
    poison: int = 0


class JoinShard(Actor[Any]):
    """Runs one join for one shard's keys. Internal."""

    def __init__(
        self,
        engine: JoinEngine,
        shard: int,
        sides: tuple[int, int],
        targets: Sequence[_Target],
        hubs: Sequence[UpdateHub[JoinRecord]],
        clock: Callable[[], float] = time.time,
        late_hub: UpdateHub[LateEvent] | None = None,
    ) -> None:
        self.engine = engine
        self.shard = shard
        #: the stream indexes of the join's left and right streams
        self.sides = sides
        #: the feature groups of the join's stream (the runtime's live list)
        self.targets = targets
        #: where records go: every join's subscribers, and this join's
        self.hubs = hubs
        #: where late events go with late_policy="side_output" (None: they are only counted)
        self.late_hub = late_hub
        self.clock = clock
        self.states: dict[Any, JoinKeyState] = {}
        idle = engine.config.idle_timeout
        self.idle: IdleKeys | None = IdleKeys() if idle else None
        self._evictions_logged = 0
        self._evictions_logged_at = self._errors_logged_at = -_LOG_INTERVAL
        config = engine.config
        #: builds the records of a published batch when a subscriber reads them; None for a
        #: merge function, which may fail: its records are built in the actor's turn, where
        #: a failure is counted
        self._build = None if callable(config.merge) else partial(make_records, config)

    async def on_start(self) -> None:
        config = self.engine.config
        periods = [t / 4 for t in (config.idle_timeout, config.state_ttl) if t is not None]
        if periods:
            self.context.start_periodic_timer("tick", Tick(), min(max(min(periods), 0.01), 1.0))

    async def _tick(self) -> None:
        """Idle time and state_ttl: quiet keys' clocks advance, keys quiet for the ttl go."""
        out = JoinRows() if self._wanted() else None
        now = self.clock()
        if self.idle is not None:
            self.engine.tick(self.states, self.idle, now, out)
        self.engine.drop_quiet(self.states, now, out)
        if out:
            records = self._records(out)
            await self._emit(out, records, time.perf_counter())

    async def receive_batch(self, messages: list[Any]) -> None:
        for batch in messages:  # batches only: Ticks and asks come to ``receive``
            try:
                await self._apply(batch)
            except Exception as exc:
                fail_batch(self.context, batch, exc, join=self.engine.config.name, shard=self.shard)

    async def _apply(self, batch: Batch) -> None:
        tags = batch.tags
        assert tags is not None, "a join reads a batch of tagged streams"
        # records are built only for someone to read: the features of the join's stream, or
        # subscribers; else they are only counted
        out = JoinRows() if self._wanted() else None
        # with side_output, late events are counted as such whether or not anyone reads them
        late: list[Any] | None = [] if self.late_hub is not None else None
        engine = self.engine
        counters = engine.counters
        evicted, errors = counters.evicted, counters.predicate_errors + counters.merge_errors
        poison: list[Any] = []
        engine.apply_tagged(
            batch.events, tags, self.sides, self.states, out, self.clock(), self.idle, late, poison
        )
        if poison:
            set_aside(self, poison, batch.events, join=engine.config.name, shard=self.shard)
        records = self._records(out) if out else None
        if counters.evicted != evicted:
            self._log_evictions()
        if counters.predicate_errors + counters.merge_errors != errors:
            self._log_errors()
        if late and self.late_hub is not None and self.late_hub.active:
            name = self.engine.config.name
            await self.late_hub.publish(LateEventBatch(name, late))
        if out:
            await self._emit(out, records, batch.created)

    def _wanted(self) -> bool:
        """Whether anyone reads the records: the features of the join's stream, or
        subscribers (else they are only counted)."""
        return bool(self.targets) or any(hub.active for hub in self.hubs)

    def _log_evictions(self) -> None:
        """Evictions are logged: the first at once, then at most one line per interval with
        the count since the last line."""
        now = time.monotonic()
        if now - self._evictions_logged_at < _LOG_INTERVAL:
            return
        total = self.engine.counters.evicted
        config = self.engine.config
        _log.warning(
            "join_buffer_evicted",
            join=config.name,
            shard=self.shard,
            evicted=total - self._evictions_logged,
            evicted_total=total,
            max_buffered_per_key=config.max_buffered_per_key,
            max_buffered=config.max_buffered,
        )
        self._evictions_logged, self._evictions_logged_at = total, now

    def _log_errors(self) -> None:
        """A predicate or merge function that raises: logged like evictions."""
        now = time.monotonic()
        if now - self._errors_logged_at < _LOG_INTERVAL:
            return
        counters = self.engine.counters
        _log.warning(
            "join_function_failed",
            join=self.engine.config.name,
            shard=self.shard,
            predicate_errors=counters.predicate_errors,
            merge_errors=counters.merge_errors,
            detail="a failing predicate matches nothing; a failing merge prefixes the fields",
        )
        self._errors_logged_at = now

    def _records(self, out: JoinRows) -> list[Record] | None:
        """The record dicts of ``out`` when they must be built now: for the features of the
        join's stream (they read events as dicts), or with a merge function (whose failures
        are counted in the actor's turn). Else None: subscribers get the rows, and a record
        is built only when one of them reads it."""
        if self.targets or self._build is None:
            return self.engine.records(out)
        return None

    async def _emit(self, out: JoinRows, records: list[Record] | None, created: float) -> None:
        name = self.engine.config.name
        if self.targets:
            assert records is not None
            batch = Batch(list(zip(out.keys, out.times(), records, strict=True)), created, name)
            for target in self.targets:
                try:
                    await target.refs[self.shard].tell(batch)
                except ActorStopped:
                    # shutting down, and a group of the join's stream stopped first
                    _log.warning("join_records_undelivered", join=name, records=len(out))
        hubs = [hub for hub in self.hubs if hub.active]
        if hubs:
            wall = time.time()
            published = JoinRecordBatch(
                name,
                out.keys,
                out.lefts,
                out.rights,
                out.left_times,
                out.right_times,
                out.join_times,
                out.differences,
                wall,
                records=records,
                build=self._build,
            )
            for hub in hubs:
                await hub.publish(published)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            return None
        if isinstance(message, IdleTick | Tick):  # the timer's Tick comes here, one at a time
            await self._tick()
            return None
        if isinstance(message, GetJoinStats):
            states = self.states.values()
            left = sum(len(st.left) for st in states)
            right = sum(len(st.right) for st in states)
            return JoinShardStats(
                counters=JoinCounters(**vars(self.engine.counters)),
                keys=len(self.states),
                buffered_left=left,
                buffered_right=right,
                largest_key=max(self.engine.largest, max((len(st) for st in states), default=0)),
                state_bytes=sum(st.left.nbytes() + st.right.nbytes() + 120 for st in states),
                restarts=self.context.restarts,
                poison=poison_count(self),
            )
        if isinstance(message, TakeSnapshot):
            try:
                return self.snapshot(message.key_group)
            except Exception as exc:  # the checkpoint's failure, not the actor's: a reply
                _log.exception("snapshot_failed", join=self.engine.config.name, shard=self.shard)
                return exc
        if isinstance(message, RestoreSnapshot):
            self.restore(message.groups, message.extras)
            return None
        raise TypeError(f"JoinShard cannot handle {message!r}")

    # -- checkpoints and restarts ------------------------------------------------------------------
    def carry_over(self, previous: Actor[Any]) -> None:
        """A restarted join actor goes on with its predecessor's buffers (its engine, with the
        counters and the key order of the caps, is the same object)."""
        assert isinstance(previous, JoinShard)
        self.states = previous.states
        self.idle = previous.idle
        self._evictions_logged = previous._evictions_logged

    def snapshot(self, key_group: Callable[[Any], int]) -> ShardSnapshot:
        """The join's buffers by key group, and the engine's counters. A key whose buffered
        events cannot be encoded is left out alone, logged (its live buffers are kept)."""
        by_group: dict[int, list[Any]] = {}
        for key, state in self.states.items():
            by_group.setdefault(key_group(key), []).append((key, state))
        engine = self.engine
        extra = {"counters": dict(vars(engine.counters)), "largest": engine.largest}
        codec = state_codec()
        groups, left_out = codec.encode_key_groups(by_group)
        if left_out:
            log_left_out(left_out, join=engine.config.name, shard=self.shard)
        return ShardSnapshot(
            groups, codec.encode(extra), len(self.states) - len(left_out), len(left_out)
        )

    def restore(self, groups: list[list[tuple[Any, Any]]], extras: list[dict[str, Any]]) -> None:
        """Add the keys and counters of a checkpoint, decoded and checked by the coordinator
        (:meth:`check_entry`, :meth:`check_extra`); the engine's total of buffered events and
        its order of keys (for the caps) are rebuilt from them, oldest last event first."""
        engine = self.engine
        restored: list[tuple[float, Any]] = []
        for items in groups:
            for key, state in items:
                self.states[key] = state
                engine.buffered += len(state)
                restored.append((state.seen, key))
        restored.sort(key=itemgetter(0))
        lru = engine._lru  # the key order of the caps and of state_ttl
        if lru is not None:
            for _, key in restored:
                lru[key] = None
        if self.idle is not None:
            for _, key in restored:
                self.idle.touch(key)
        counters = engine.counters
        for extra in extras:
            for name, n in extra["counters"].items():
                setattr(counters, name, getattr(counters, name) + n)
            engine.largest = max(engine.largest, extra["largest"])

    @staticmethod
    def check_entry(group: Any, entry: Any) -> str | None:
        """Why ``entry``, decoded from a checkpoint, is not a key's join state, or None (its
        classes and their layouts the codec has checked: here the clocks and the buffers'
        parallel lists)."""
        if type(entry) is not JoinKeyState:
            return f"an entry is a {type(entry).__name__}, not a key's join state"
        for name in ("clock", "latest", "due"):
            if type(getattr(entry, name, None)) is not int:
                return f"a key's {name} is not an int"
        if type(getattr(entry, "seen", None)) not in (int, float):
            return "a key's last-seen time is not a number"
        for side in ("left", "right"):
            buffer = getattr(entry, side, None)
            if type(buffer) is not SideBuffer:
                return f"a key's {side} buffer is not a buffer"
            times = getattr(buffer, "times", None)
            events = getattr(buffer, "events", None)
            matches = getattr(buffer, "matches", None)
            head = getattr(buffer, "head", None)
            if (
                type(times) is not list
                or type(events) is not list
                or type(matches) is not list
                or not len(times) == len(events) == len(matches)
                or type(head) is not int
                or not 0 <= head <= len(times)
                or any(type(t) is not int for t in times)
                or any(type(m) is not int for m in matches)
            ):
                return f"a key's {side} buffer is not consistent"
        return None

    @staticmethod
    def check_extra(extra: Any) -> str | None:
        """Why ``extra``, decoded from a checkpoint, is not the counters of a join actor."""
        if type(extra) is not dict or type(extra.get("largest")) is not int:
            return "a join actor's counters are not a map with the largest buffer"
        counters = extra.get("counters")
        known = vars(JoinCounters())
        if type(counters) is not dict or any(
            name not in known or type(n) is not int for name, n in counters.items()
        ):
            return "a join actor's counters are not its counters"
        return None
