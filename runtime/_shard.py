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
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from actors import Actor, get_logger

from ._batches import UpdateBatch
from ._checkpoints.codec import state_codec
from ._keyed.kernel import CompiledGroup
from ._messages import (
    Batch,
    GetStates,
    GetStats,
    IdleTick,
    LatencyCounts,
    Ping,
    RestoreSnapshot,
    ShardSnapshot,
    ShardStats,
    TakeSnapshot,
    Tick,
    fail_batch,
    log_left_out,
    poison_count,
    set_aside,
)
from ._results import FeatureError, FeatureUpdate
from ._updates import UpdateHub

__all__ = ["GroupShard"]

_log = get_logger("featurist.shard")

_time_of = itemgetter(1)
_first = itemgetter(0)
_RECENT_ERRORS = 100
_LATENCY_WINDOW = 4096
#: sampled batches kept for the per-feature latency percentiles of ``rt.metrics()``
_FEATURE_SAMPLES = 256


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
        #: every batch's latency, counted in the histogram's buckets (``rt.metrics``' window
        #: above keeps only the recent ones)
        self.latency_counts = LatencyCounts()
        self.feature_samples: deque[tuple[int, list[int]]] = deque(maxlen=_FEATURE_SAMPLES)
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
        if self.seen is not None:
            # keys quiet for state_ttl lose their state before an event of theirs counts, not
            # only at the next tick (as the window engines do): else a key's count went on
            # from its expired state when its event came between expiry and the tick
            self._expire()
        now = time.time()
        errors: list[Any] = []
        out: list[Any] | None = None
        sampled = self.batches % self.sample_every == 0
        timings = [0] * len(group.names) if sampled else None
        poison: list[Any] = []
        start = time.perf_counter_ns()
        if self.hub.active:
            out = []
            if timings is None:
                group.apply_emit(events, self.states, errors, now, out, poison)
            else:
                group.apply_emit_timed(events, self.states, errors, now, out, timings, poison)
        elif timings is None:
            group.apply(events, self.states, errors, now, poison)
        else:
            group.apply_timed(events, self.states, errors, now, timings, poison)
        elapsed = time.perf_counter_ns() - start
        if timings is not None:
            feature_ns = self.feature_ns
            for i, ns in enumerate(timings):
                feature_ns[i] += ns
            self.sampled_events += n
            self.feature_samples.append((n, timings))
            self.feature_latency_ms = {
                name: feature_ns[i] / self.sampled_events / 1e6
                for i, name in enumerate(group.names)
            }
        self.compute_ns += elapsed
        if poison:  # from here on, the events applied
            events = set_aside(self, poison, events, group=self.group_name, shard=self.shard)
            n = len(events)
        seen = self.seen
        if seen is not None:
            wall = self.clock()
            move = seen.move_to_end
            for key, _, _ in events:
                seen[key] = wall
                move(key)
        latency = time.perf_counter() - batch.created
        self.latencies.append((latency, n))
        self.latency_counts.add(latency, n)
        self.events += n
        self.batches += 1
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        high = max(map(_time_of, events), default=None)
        if high is not None and (self.max_time is None or high > self.max_time):
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
        by_position: dict[int, dict[str, str]] | None = None
        if errors:
            by_position = {}
            for position, _key, _t, name, exc in errors:
                if position >= 0:  # -1: an error of a poison event, which has no update
                    by_position.setdefault(position, {})[name] = f"{type(exc).__name__}: {exc}"
        # per-feature latency is set by the first batch, which is always sampled
        batch = UpdateBatch(
            self.group_name, self.group.names, out, by_position, self.feature_latency_ms, now
        )
        await self.hub.publish(batch)

    async def receive(self, message: Any) -> Any:
        if isinstance(message, GetStates):
            # keyed aggregates fold every event in: as of a time at or after the key's last
            # event they are exact; before it, they are as of the last event (said in as_of)
            self._expire()  # a read sees no state expired since the last tick
            replies: list[tuple[Any, ...]] = []
            get, values = self.states.get, self.group.values
            at = message.as_of
            for key in message.keys:
                state = get(key)
                if state is None or state.t_ < 0:
                    replies.append((None, None, None, self.max_time, None, at))
                else:
                    t = state.t_
                    replies.append(
                        (
                            values(state),
                            t,
                            self.last_event_at,
                            self.max_time,
                            None,
                            None if at is None else max(at, t),
                        )
                    )
            return replies
        if isinstance(message, Ping):
            return None
        if isinstance(message, IdleTick | Tick):  # the timer's Tick comes here, one at a time
            self._expire()
            return None
        if isinstance(message, GetStats):
            return self._stats()
        if isinstance(message, TakeSnapshot):
            return self.take_snapshot(message.key_group)
        if isinstance(message, RestoreSnapshot):
            self.restore(message.groups, message.extras)
            return None
        raise TypeError(f"GroupShard cannot handle {message!r}")

    # -- checkpoints and restarts ------------------------------------------------------------------
    def carry_over(self, previous: Actor[Any]) -> None:
        """A restarted shard actor goes on with the state of the one it replaces: the engines
        leave a key's state consistent when an event fails (its error is recorded, the poison
        event goes to dead letters), so that state is the last good one."""
        assert isinstance(previous, type(self))
        context = self.__dict__.get("context")
        self.__dict__.update(previous.__dict__)
        if context is not None:
            self.context = context

    def snapshot_entry(self, key: Any, state: Any) -> Any:
        """What a checkpoint holds of one key (its compiled state's slots, and when it was
        last seen when keys expire)."""
        seen = self.seen
        return (
            [getattr(state, slot) for slot in self._slots],
            None if seen is None else seen.get(key),
        )

    def restore_entry(self, key: Any, entry: Any) -> float | None:
        """Put back one key from :meth:`snapshot_entry`; returns its last-seen time."""
        values, seen = entry
        state = self.group.new_state()
        for slot, value in zip(self._slots, values, strict=True):
            setattr(state, slot, value)
        self.states[key] = state
        return seen  # type: ignore[no-any-return]

    @property
    def _slots(self) -> tuple[str, ...]:
        slots: tuple[str, ...] = self.group.state_type.__slots__  # type: ignore[attr-defined]
        return slots

    def snapshot_extra(self) -> dict[str, Any]:
        """The actor's state beside its keys."""
        return {
            "events": self.events,
            "batches": self.batches,
            "max_time": self.max_time,
            "errors": dict(self.errors),
            "expired_keys": self.expired_keys,
            "first_event_at": self.first_event_at,
            "last_event_at": self.last_event_at,
        }

    def restore_extra(self, extra: dict[str, Any]) -> None:
        """Add an old actor's counters to this one's (a rescaled restore merges several)."""
        self.events += extra["events"]
        self.batches += extra["batches"]
        self.expired_keys += extra["expired_keys"]
        self.errors.update(extra["errors"])
        self.max_time = _latest(self.max_time, extra["max_time"])
        first = extra["first_event_at"]
        if first is not None and (self.first_event_at is None or first < self.first_event_at):
            self.first_event_at = first
        self.last_event_at = _latest(self.last_event_at, extra["last_event_at"])

    def restored(self, seen: list[tuple[float, Any]]) -> None:
        """After the keys are back: rebuild what orders them by their last event."""
        if self.seen is not None:
            seen.sort(key=_first)
            for at, key in seen:
                self.seen[key] = at

    def take_snapshot(self, key_group: Callable[[Any], int]) -> ShardSnapshot | Exception:
        """:meth:`snapshot`, or the exception it raised, as the reply: a snapshot that fails is
        the checkpoint's failure, not the actor's (raised, it would count as a crash against
        ``max_restarts``, and the actor's state is intact)."""
        try:
            return self.snapshot(key_group)
        except Exception as exc:
            _log.exception("snapshot_failed", group=self.group_name, shard=self.shard)
            return exc

    def snapshot(self, key_group: Callable[[Any], int]) -> ShardSnapshot:
        """The actor's state, its keys split by key group, encoded (see
        ``runtime._checkpoints.codec``). A key whose state cannot be encoded is left out of
        the snapshot alone, logged with its key and the reason (its live state is kept)."""
        by_group: dict[int, list[Any]] = {}
        entry = self.snapshot_entry
        for key, state in self.states.items():
            group = key_group(key)
            items = by_group.get(group)
            if items is None:
                items = by_group[group] = []
            items.append((key, entry(key, state)))
        codec = state_codec()
        groups, left_out = codec.encode_key_groups(by_group)
        if left_out:
            log_left_out(left_out, group=self.group_name, shard=self.shard)
        return ShardSnapshot(
            groups,
            codec.encode(self.snapshot_extra()),
            len(self.states) - len(left_out),
            len(left_out),
        )

    def restore(self, groups: list[list[tuple[Any, Any]]], extras: list[dict[str, Any]]) -> None:
        """Add the keys and counters of a checkpoint (see :meth:`snapshot`), decoded and
        checked by the coordinator (:meth:`check_entry`, :meth:`check_extra`)."""
        seen: list[tuple[float, Any]] = []
        restore = self.restore_entry
        for items in groups:
            for key, entry in items:
                at = restore(key, entry)
                if at is not None:
                    seen.append((at, key))
        for extra in extras:
            self.restore_extra(extra)
        self.restored(seen)

    @staticmethod
    def check_entry(group: Any, entry: Any) -> str | None:
        """Why ``entry``, decoded from a checkpoint, is not one :meth:`snapshot_entry` of
        ``group`` makes, or None: the slots in number, each of the type of its initial value
        where that is a number (a count, a time, a sum), and a last-seen time."""
        if type(entry) is not tuple or len(entry) != 2:
            return "an entry is not (slots, last seen)"
        values, seen = entry
        if seen is not None and type(seen) not in _NUMBERS:
            return f"a last-seen time is a {type(seen).__name__}"
        kinds = _slot_kinds(group)
        if type(values) is not list or len(values) != len(kinds):
            return f"an entry does not have the {len(kinds)} slots of the group"
        for (slot, kind), value in zip(kinds, values, strict=True):
            if kind is not None and type(value) not in kind:
                return f"slot {slot} holds a {type(value).__name__}"
        return None

    @staticmethod
    def check_extra(extra: Any) -> str | None:
        """Why ``extra``, decoded from a checkpoint, is not one :meth:`snapshot_extra` makes."""
        if type(extra) is not dict:
            return "an actor's counters are not a map"
        for name in ("events", "batches", "expired_keys"):
            if type(extra.get(name)) is not int:
                return f"an actor's counter {name} is not an int"
        errors = extra.get("errors")
        if type(errors) is not dict or any(
            type(k) is not str or type(v) is not int for k, v in errors.items()
        ):
            return "an actor's error counts are not names and ints"
        for name in ("max_time", "first_event_at", "last_event_at"):
            if name not in extra or (extra[name] is not None and type(extra[name]) not in _NUMBERS):
                return f"an actor's {name} is not a number"
        return None

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
            feature_samples=tuple(self.feature_samples),
            restarts=self.context.restarts,
            poison=poison_count(self),
            latency_buckets=tuple(self.latency_counts.counts),
            latency_sum=self.latency_counts.total,
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


_NUMBERS = frozenset({int, float})


def _slot_kinds(group: CompiledGroup) -> list[tuple[str, frozenset[type] | None]]:
    """Each slot of ``group``'s state and the types a checkpoint may give it: numbers for a
    slot that starts as a number, anything for one that starts as None (a first or last value,
    a min, a distinct set). Made once per state class."""
    kinds = _SLOT_KINDS.get(group.state_type)
    if kinds is None:
        fresh = group.new_state()
        kinds = []
        for slot in group.state_type.__slots__:  # type: ignore[attr-defined]
            initial = getattr(fresh, slot, None)
            kinds.append((slot, _NUMBERS if type(initial) in _NUMBERS else None))
        _SLOT_KINDS[group.state_type] = kinds
    return kinds


#: per compiled state class, its slots' kinds (weak: a group's class goes with the group)
_SLOT_KINDS: weakref.WeakKeyDictionary[type, list[tuple[str, frozenset[type] | None]]] = (
    weakref.WeakKeyDictionary()
)


def _latest(a: Any, b: Any) -> Any:
    """The greater of two optional values."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
