"""The core of a stream-stream interval join, per key (issue 5, ``docs/design/joins.md``).

A :class:`JoinEngine` applies batches of ``(key, time_ms, side, event)`` (``side`` is
``"left"`` or ``"right"``) to a dict of per-key :class:`JoinKeyState` that its caller owns (the
join's shard actor, once it is wired into the runtime). It is pure computation: no actor, no
I/O, so it is tested directly against a nested-loop oracle.

Semantics, per key:

- the clock is the key's greatest event time over both sides, the watermark the clock minus
  ``max_out_of_orderness``; an event older than ``watermark - allowed_lateness`` is late and
  dropped (counted);
- an event is matched against the other side's buffered events whose times lie in the interval
  (``right.t`` in ``[left.t - before, left.t + after]``) and that satisfy the conditions, then
  buffered; each pair is produced once, by the second of its two events to arrive;
- a buffered event leaves when no future event can match it: a left event at ``t`` once the
  watermark passes ``t + after + allowed_lateness``, a right one once it passes
  ``t + before + allowed_lateness``; for outer joins an event that never matched then gives
  its unmatched row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._idle import IdleKeys
from ._join_buffer import SideBuffer

__all__ = ["JoinConfig", "JoinCounters", "JoinEngine", "JoinKeyState"]

How = Literal["inner", "left", "right", "full"]
Merge = Literal["prefix", "left_priority", "right_priority"]


@dataclass(frozen=True)
class JoinConfig:
    """One join, as the engine needs it (the spec classes will build it)."""

    name: str
    #: the interval: ``right.t`` in ``[left.t - before, left.t + after]``, milliseconds
    before: int
    after: int
    how: How = "inner"
    #: further fields that must be equal on both sides (a missing or None field never is)
    on: tuple[str, ...] = ()
    #: ``(left field, right field, min, max)``: ``min <= |left - right| <= max``
    range: tuple[str, str, float, float] | None = None
    predicate: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None
    merge: Merge | Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] = "prefix"
    max_out_of_orderness: int = 0
    allowed_lateness: int = 0
    #: buffered events per key and side beyond which the oldest is evicted (None: no cap)
    max_buffered_per_key: int | None = None
    #: seconds of wall-clock quiet after which a key's clock advances with the wall clock
    idle_timeout: float | None = None


@dataclass
class JoinCounters:
    """What a join engine counted."""

    records: int = 0
    unmatched: int = 0
    late_dropped: int = 0
    late_side_output: int = 0
    evicted: int = 0
    predicate_errors: int = 0


class JoinKeyState:
    """One key's join state: both sides' buffers and the key's clock."""

    __slots__ = ("clock", "latest", "left", "right", "seen")

    def __init__(self, t: int, now: float = 0.0) -> None:
        #: the key's clock: its greatest event time, or later after idle time
        self.clock = t
        #: its greatest event time, and the wall-clock time of its last event
        self.latest = t
        self.seen = now
        self.left = SideBuffer()
        self.right = SideBuffer()

    def __len__(self) -> int:
        return len(self.left) + len(self.right)


@dataclass
class JoinEngine:
    """Applies events to per-key join state and produces records. Internal."""

    config: JoinConfig
    counters: JoinCounters = field(default_factory=JoinCounters)

    def apply(
        self,
        events: list[tuple[Any, int, str, dict[str, Any]]],
        states: dict[Any, JoinKeyState],
        out: list[dict[str, Any]] | None,
        now: float = 0.0,
        idle: IdleKeys | None = None,
        late: list[Any] | None = None,
    ) -> None:
        """Apply a batch in order; append the records (and unmatched rows) to ``out``, or only
        count them when ``out`` is None (nobody reads them: no record is built).

        ``now`` is the wall-clock time and ``idle`` (with idle time) is told of each key's
        event, for ``tick``.
        """
        config = self.config
        ooo, lateness = config.max_out_of_orderness, config.allowed_lateness
        before, after = config.before, config.after
        counters = self.counters
        count_only = (
            config.how == "inner"
            and not config.on
            and config.range is None
            and config.predicate is None
        )
        for key, t, side, ev in events:
            st = states.get(key)
            if st is None:
                st = states[key] = JoinKeyState(t, now)
            elif t < st.clock - ooo - lateness:
                if late is not None:
                    late.append((key, t, st.clock - ooo, ev))  # the side output
                    counters.late_side_output += 1
                else:
                    counters.late_dropped += 1
                continue
            else:
                if t > st.clock:
                    st.clock = t
                if t > st.latest:
                    st.latest = t
                st.seen = now
            if idle is not None:
                idle.touch(key)
            if side == "left":
                other, low, high, own = st.right, t - before, t + after, st.left
            else:
                other, low, high, own = st.left, t - after, t + before, st.right
            if out is None and count_only:
                # nobody reads the records and no pair needs a test or a match count: count
                matched = other.count_between(low, high)
                counters.records += matched
                own.add(t, ev)
                self._cap(key, side, own, out)
                self.expire(key, st, out)
                continue
            partners = other.between(low, high)
            matched = 0
            for partner in partners:
                if side == "left":
                    left, right, tl, tr = ev, partner[1], t, partner[0]
                else:
                    left, right, tl, tr = partner[1], ev, partner[0], t
                if not self._matches(left, right):
                    continue
                partner[2] += 1
                matched += 1
                if out is not None:
                    out.append(self._record(key, left, right, tl, tr))
            counters.records += matched
            entry = own.add(t, ev)
            entry[2] = matched
            self._cap(key, side, own, out)
            self.expire(key, st, out)

    def _cap(self, key: Any, side: str, own: SideBuffer, out: list[dict[str, Any]] | None) -> None:
        cap = self.config.max_buffered_per_key
        if cap is not None and len(own) > cap:
            evicted = own.evict_oldest()
            self.counters.evicted += 1
            if evicted is not None:
                self._unmatched(key, side, evicted, out)

    def expire(self, key: Any, st: JoinKeyState, out: list[dict[str, Any]] | None) -> None:
        """Drop the buffered events no future event can match; emit unmatched rows."""
        config = self.config
        wm = st.clock - config.max_out_of_orderness - config.allowed_lateness
        for entry in st.left.expire(wm - config.after):
            self._unmatched(key, "left", entry, out)
        for entry in st.right.expire(wm - config.before):
            self._unmatched(key, "right", entry, out)

    def tick(
        self,
        states: dict[Any, JoinKeyState],
        idle: IdleKeys,
        now: float,
        out: list[dict[str, Any]] | None,
    ) -> None:
        """Advance the clocks of idle keys, so their buffered events expire and their
        unmatched rows come out without new events (as ``WindowEngine.tick`` does for
        windows): a key quiet for ``idle_timeout`` has its clock at its newest event time
        plus the time quiet beyond ``idle_timeout``. A key left with nothing buffered is
        dropped."""
        quiet = self.config.idle_timeout
        if quiet is None:
            return
        for key in idle.due(states, now, quiet):
            st = states[key]
            target = st.latest + int((now - st.seen - quiet) * 1000)
            if target > st.clock:
                st.clock = target
                self.expire(key, st, out)
            if not len(st):
                del states[key]
                continue
            idle.schedule(key, st, self._wake(st, now))

    def _wake(self, st: JoinKeyState, now: float) -> float:
        """When (wall clock) the key's oldest buffered event expires with idle time."""
        config = self.config
        idle = config.idle_timeout
        assert idle is not None
        slack = config.max_out_of_orderness + config.allowed_lateness + 1
        due = min(
            (
                t + span + slack
                for t, span in ((st.left.oldest, config.after), (st.right.oldest, config.before))
                if t is not None
            ),
            default=None,
        )
        if due is None:
            return now + idle
        return max(st.seen + idle + (due - st.latest) / 1000, now + 0.001)

    def _unmatched(
        self, key: Any, side: str, entry: list[Any], out: list[dict[str, Any]] | None
    ) -> None:
        if entry[2]:
            return
        how = self.config.how
        if how == "full" or how == side:
            self.counters.unmatched += 1
            if out is None:
                return
            t, ev = entry[0], entry[1]
            if side == "left":
                out.append(self._record(key, ev, None, t, None))
            else:
                out.append(self._record(key, None, ev, None, t))

    def _matches(self, left: Mapping[str, Any], right: Mapping[str, Any]) -> bool:
        config = self.config
        for name in config.on:
            value = left.get(name)
            if value is None or value != right.get(name):
                return False
        if config.range is not None:
            a, b, low, high = config.range
            x, y = left.get(a), right.get(b)
            if not _is_number(x) or not _is_number(y):
                return False
            assert x is not None and y is not None
            if not low <= abs(x - y) <= high:
                return False
        if config.predicate is not None:
            try:
                return bool(config.predicate(left, right))
            except Exception:
                self.counters.predicate_errors += 1
                return False
        return True

    def _record(
        self,
        key: Any,
        left: Mapping[str, Any] | None,
        right: Mapping[str, Any] | None,
        tl: int | None,
        tr: int | None,
    ) -> dict[str, Any]:
        """A join record as the seed defines it, the fields merged by the join's strategy."""
        times = [t for t in (tl, tr) if t is not None]
        record: dict[str, Any] = {}
        merge = self.config.merge
        left_fields = left or {}
        right_fields = right or {}
        if merge == "prefix":
            record.update({f"left_{k}": v for k, v in left_fields.items()})
            record.update({f"right_{k}": v for k, v in right_fields.items()})
        elif merge == "left_priority":
            record.update(right_fields)
            record.update(left_fields)
        elif merge == "right_priority":
            record.update(left_fields)
            record.update(right_fields)
        else:
            record.update(merge(left_fields, right_fields))
        # the join's own fields come last: an event field of the same name does not hide them
        record["join"] = self.config.name
        record["key"] = key
        record["join_timestamp"] = max(times)
        record["left_event_timestamp"] = tl
        record["right_event_timestamp"] = tr
        record["time_difference_ms"] = abs(tl - tr) if tl is not None and tr is not None else None
        return record


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
