"""The core of a stream-stream join, per key (issue 5, ``docs/design/joins.md``).

A :class:`JoinEngine` applies batches of events to a dict of per-key :class:`JoinKeyState`
that its caller owns (the join's shard actor). It is pure computation: no actor, no I/O, so it
is tested directly against a nested-loop oracle. ``apply_tagged`` takes the runtime's batches
as they come (``(key, time_ms, event)`` with a stream index beside each); ``apply`` takes
``(key, time_ms, side, event)`` with ``side`` ``"left"`` or ``"right"``.

Semantics, per key:

- the clock is the key's greatest event time over both sides, the watermark the clock minus
  ``max_out_of_orderness``; an event older than ``watermark - allowed_lateness`` is late and
  dropped (counted) or handed to the side output;
- interval joins: an event is matched against the other side's buffered events whose times lie
  in the interval (``right.t`` in ``[left.t - before, left.t + after]``) and that satisfy the
  conditions, then buffered; each pair is produced once, by the second of its two events to
  arrive. A buffered event leaves when no future event can match it: a left event at ``t``
  once the watermark passes ``t + after + allowed_lateness``, a right one once it passes
  ``t + before + allowed_lateness``; for outer joins an event that never matched then gives
  its unmatched row;
- as-of joins (``how="asof"``): a left event waits until the watermark passes
  ``t + allowed_lateness`` (no right event at or before ``t`` can come after that), then gets
  the latest right event at or before ``t`` (the last to arrive among equal times), if within
  ``tolerance``, else an unmatched row. The right buffer keeps only what a pending or future
  left event can still pick: the newest right event at or before the watermark, and those
  after it.

Each key's state holds ``due``, the watermark beyond which something of the key expires, so
the per-event check is one comparison. Caps: ``max_buffered_per_key`` (per side) and
``max_buffered`` (the engine's keys together); past a cap the oldest event of the key (for the
total cap: of the least recently active key) is evicted, counted, and for an outer join an
unmatched evicted event gives its row at once (an as-of left event is answered with what is
buffered).
"""

from __future__ import annotations

import contextlib
import math
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import sub
from typing import Any, Literal

from .._stats.idle import IdleKeys
from .buffer import SideBuffer

__all__ = [
    "JoinConfig",
    "JoinCounters",
    "JoinEngine",
    "JoinKeyState",
    "JoinRows",
    "make_records",
]

How = Literal["inner", "left", "right", "full", "asof"]
Merge = Literal["prefix", "left_priority", "right_priority"]
Record = dict[str, Any]

#: ``due`` of a key with nothing buffered
_NEVER = 2**62


@dataclass(frozen=True)
class JoinConfig:
    """One join, as the engine needs it (the runtime builds it from a ``Join`` spec)."""

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
    merge: Merge | Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]] = "prefix"
    #: as-of joins: the greatest ``left.t - right.t`` that matches (None: any)
    tolerance: int | None = None
    max_out_of_orderness: int = 0
    allowed_lateness: int = 0
    #: buffered events per key and side beyond which the key's oldest is evicted (None: no cap)
    max_buffered_per_key: int | None = None
    #: buffered events of the engine's keys together beyond which one is evicted (None: no cap)
    max_buffered: int | None = None
    #: seconds of wall-clock quiet after which a key's clock advances with the wall clock
    idle_timeout: float | None = None
    #: seconds of wall-clock quiet after which a key's state is dropped (``drop_quiet``)
    state_ttl: float | None = None


@dataclass
class JoinCounters:
    """What a join engine counted."""

    #: events of the join's streams applied (late ones not included)
    events: int = 0
    records: int = 0
    unmatched: int = 0
    late_dropped: int = 0
    late_side_output: int = 0
    evicted: int = 0
    #: keys dropped after ``state_ttl``
    expired_keys: int = 0
    predicate_errors: int = 0
    merge_errors: int = 0


class JoinKeyState:
    """One key's join state: both sides' buffers and the key's clock."""

    __slots__ = ("clock", "due", "latest", "left", "right", "seen")

    def __init__(self, t: int, now: float = 0.0) -> None:
        #: the key's clock: its greatest event time, or later after idle time
        self.clock = t
        #: its greatest event time, and the wall-clock time of its last event
        self.latest = t
        self.seen = now
        self.left = SideBuffer()
        self.right = SideBuffer()
        #: something expires once the watermark (less the lateness) passes this
        self.due = _NEVER

    def __len__(self) -> int:
        return len(self.left) + len(self.right)


class JoinRows:
    """What the engine emits, in columns: per row its key, its left and right events and
    their times (None for the side an unmatched row lacks), in the order the rows were made.

    Columns rather than a record per row: a probing event's pairs are a run of the other
    side's buffer, added with a few list extensions, and the record dicts are built only for
    someone who reads them (:func:`make_records`). A row's time for the features of the
    join's stream is the later of its two times, or for an unmatched row the time kept in
    ``at`` (see ``JoinEngine._unmatched``).
    """

    __slots__ = (
        "at",
        "differences",
        "join_times",
        "keys",
        "left_times",
        "lefts",
        "right_times",
        "rights",
    )

    def __init__(self) -> None:
        # the engine binds these lists to locals on its hot path: they are never replaced
        self.keys: list[Any] = []
        self.lefts: list[Any] = []
        self.rights: list[Any] = []
        self.left_times: list[int | None] = []
        self.right_times: list[int | None] = []
        #: the later of the two times (the one there is, for an unmatched row)
        self.join_times: list[int] = []
        #: the distance between the two times (None for an unmatched row)
        self.differences: list[int | None] = []
        #: row index -> time for the features, where it is not the later of the row's times
        self.at: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(
        self, key: Any, left: Any, right: Any, tl: int | None, tr: int | None, at: int | None
    ) -> None:
        """One row (``at``: its time for the features, when not the later of tl and tr)."""
        if at is not None:
            self.at[len(self.keys)] = at
        self.keys.append(key)
        self.lefts.append(left)
        self.rights.append(right)
        self.left_times.append(tl)
        self.right_times.append(tr)
        if tl is None or (tr is not None and tr > tl):
            assert tr is not None
            self.join_times.append(tr)
        else:
            self.join_times.append(tl)
        self.differences.append(None if tl is None or tr is None else abs(tl - tr))

    def add_in_time_order(self, rows: JoinRows) -> None:
        """Add the rows of ``rows`` (unmatched rows, each with its ``at``) in the order of
        their times, arrival order for ties."""
        at = rows.at
        for i in sorted(range(len(rows)), key=at.__getitem__):
            self.add(
                rows.keys[i],
                rows.lefts[i],
                rows.rights[i],
                rows.left_times[i],
                rows.right_times[i],
                at[i],
            )

    def times(self) -> list[int]:
        """Each row's time for the features of the join's stream."""
        at = self.at
        if not at:  # pairs only
            return self.join_times
        times = self.join_times.copy()
        for i, t in at.items():
            times[i] = t
        return times


@dataclass
class JoinEngine:
    """Applies events to per-key join state and produces records. Internal."""

    config: JoinConfig
    counters: JoinCounters = field(default_factory=JoinCounters)
    #: events buffered over all keys
    buffered: int = 0
    #: the most events one key had buffered, as seen at its expiries (``largest_key`` adds the
    #: sizes now: a key's buffers only shrink at an expiry or an eviction)
    largest: int = 0
    #: keys in order of their last event, kept only with a total cap (which evicts from the
    #: front) or a state_ttl (which drops from the front)
    _lru: OrderedDict[Any, None] | None = None

    #: whether unmatched events of each side give rows
    _outer_left: bool = False
    _outer_right: bool = False

    def __post_init__(self) -> None:
        if self.config.max_buffered is not None or self.config.state_ttl is not None:
            self._lru = OrderedDict()
        self._outer_left = self._outer("left")
        self._outer_right = self._outer("right")

    def apply(
        self,
        events: Sequence[tuple[Any, int, str, Any]],
        states: dict[Any, JoinKeyState],
        out: list[Record] | None,
        now: float = 0.0,
        idle: IdleKeys | None = None,
        late: list[Any] | None = None,
        poison: list[Any] | None = None,
    ) -> None:
        """``apply_tagged`` for ``(key, time_ms, side, event)`` with ``side`` ``"left"`` or
        ``"right"``; ``out`` gets the records alone."""
        rows = None if out is None else JoinRows()
        self.apply_tagged(
            [(key, t, ev) for key, t, _, ev in events],
            [0 if side == "left" else 1 for _, _, side, _ in events],
            (0, 1),
            states,
            rows,
            now,
            idle,
            late,
            poison,
        )
        if out is not None and rows is not None:
            out.extend(self.records(rows))

    def apply_tagged(
        self,
        events: Sequence[tuple[Any, int, Any]],
        tags: Sequence[int],
        sides: tuple[int, int],
        states: dict[Any, JoinKeyState],
        out: JoinRows | None,
        now: float = 0.0,
        idle: IdleKeys | None = None,
        late: list[Any] | None = None,
        poison: list[Any] | None = None,
    ) -> None:
        """Apply a batch in order: ``events[i]`` is of the stream ``tags[i]``, the join's
        left and right streams being ``sides``; events of other streams are skipped.

        Records (and unmatched rows) are added to ``out`` (their events and times: the
        record dicts are built by :meth:`records` for whoever reads them), or only counted
        when ``out`` is None (nobody reads them). ``now`` is the
        wall-clock time; ``idle`` (with idle time) is told of each key's event, for ``tick``;
        late events go to ``late`` as ``(key, t, watermark, event)`` when it is given.

        ``poison`` (when not None) receives ``(key, t, event, exception)`` for each event
        whose processing raised (a failing predicate or merge function is not that: it is
        counted), and the batch goes on; with None the exception propagates. A key the event
        created is dropped; for a key that existed, what the event did before the failure
        stays (its clock, expiries, the records of the pairs it had made). A poison event is
        not counted in ``events``.
        """
        config = self.config
        slack = config.max_out_of_orderness + config.allowed_lateness
        ooo = config.max_out_of_orderness
        before, after = config.before, config.after
        counters = self.counters
        asof = config.how == "asof"
        check = bool(config.on or config.range is not None or config.predicate is not None)
        inline_expiry = config.how == "inner"
        # whether the buffered events' counts of records are kept: outer joins read them
        track = self._outer_left or self._outer_right
        # no cap is the same as one that is never reached
        cap = config.max_buffered_per_key or _NEVER
        lru = self._lru
        matches_pair = self._matches
        if out is not None:
            keys_o, lefts_o, rights_o = out.keys, out.lefts, out.rights
            ltimes_o, rtimes_o, jtimes_o = out.left_times, out.right_times, out.join_times
            diffs_o = out.differences
        left_tag, right_tag = sides
        get = states.get
        records = 0
        added = 0  # events buffered (all that are not late)
        gone = 0  # events expired by the inlined expiry
        made: JoinKeyState | None = None  # the key state the event made, if it made one
        for (key, t, ev), tag in zip(events, tags, strict=True):
            if tag == left_tag:
                is_left = True
            elif tag == right_tag:
                is_left = False
            else:
                continue
            try:
                st = get(key)
                if st is None:
                    st = made = states[key] = JoinKeyState(t, now)
                    clock = t
                else:
                    made = None
                    clock = st.clock
                    if t > clock:
                        st.clock = st.latest = clock = t
                    elif t < clock - slack:
                        if late is not None:
                            late.append((key, t, clock - ooo, ev))  # the side output
                            counters.late_side_output += 1
                        else:
                            counters.late_dropped += 1
                        continue
                    elif t > st.latest:  # the clock is ahead of the events after idle time
                        st.latest = t
                # expire first: an unmatched row that this event makes due goes out before the
                # event's own records (an expired event cannot match a new one: it lies outside
                # the interval of every event that is not late)
                if clock - slack <= st.due:
                    pass
                elif inline_expiry:
                    # expire() of an inner join, inlined: the common case of the hot loop
                    wm = clock - slack
                    due = _NEVER
                    size = 0
                    for buffer, span in ((st.left, after), (st.right, before)):
                        times = buffer.times
                        if not times:
                            continue
                        head = buffer.head
                        size += len(times) - head
                        cut = wm - span
                        if times[-1] < cut:  # all of it: the common case of a quiet key
                            gone += len(times) - head
                            times.clear()
                            buffer.events.clear()
                            buffer.matches.clear()
                            buffer.head = 0
                            continue
                        if times[head] < cut:
                            end = bisect_left(times, cut, head)
                            gone += end - head
                            buffer.advance(end)
                            head = buffer.head
                        if times[head] + span < due:
                            due = times[head] + span
                    st.due = due
                    if size > self.largest:
                        self.largest = size
                else:
                    self.expire(key, st, out)
                if idle is not None:
                    st.seen = now
                    idle.touch(key)
                if lru is not None:
                    st.seen = now
                    if key in lru:
                        lru.move_to_end(key)
                    else:
                        lru[key] = None
                if is_left:
                    other = st.right
                    own = st.left
                    low = t - before
                    due = high = t + after
                else:
                    other = st.left
                    own = st.right
                    low = t - after
                    due = high = t + before
                if asof:
                    own.add(t, ev)
                    added += 1
                    if len(own) > cap:
                        self._evict(key, st, is_left, out)
                    due = self._asof_due(st)
                    if clock - slack > due:  # a right event that supersedes an older one
                        st.due = due
                        self.expire(key, st, out)
                        due = st.due
                else:
                    times = other.times
                    start = bisect_left(times, low, other.head)
                    end = bisect_right(times, high, start)
                    matched = end - start
                    if not matched:
                        pass
                    elif check:
                        matched = 0
                        events_o, matches_o = other.events, other.matches
                        for i in range(start, end):
                            partner = events_o[i]
                            if not (
                                matches_pair(ev, partner) if is_left else matches_pair(partner, ev)
                            ):
                                continue
                            matches_o[i] += 1
                            matched += 1
                            if out is not None:
                                keys_o.append(key)
                                at = times[i]
                                if is_left:
                                    lefts_o.append(ev)
                                    rights_o.append(partner)
                                    ltimes_o.append(t)
                                    rtimes_o.append(at)
                                else:
                                    lefts_o.append(partner)
                                    rights_o.append(ev)
                                    ltimes_o.append(at)
                                    rtimes_o.append(t)
                                if t >= at:
                                    jtimes_o.append(t)
                                    diffs_o.append(t - at)
                                else:
                                    jtimes_o.append(at)
                                    diffs_o.append(at - t)
                    else:
                        # every event of the run matches: its pairs go out as slices of the
                        # other side's lists, with no work per pair
                        if track:
                            matches_o = other.matches
                            for i in range(start, end):
                                matches_o[i] += 1
                        if out is not None:
                            keys_o += [key] * matched
                            run = times[start:end]
                            at_t = [t] * matched
                            if is_left:
                                lefts_o += [ev] * matched
                                ltimes_o += at_t
                                rights_o += other.events[start:end]
                                rtimes_o += run
                            else:
                                lefts_o += other.events[start:end]
                                ltimes_o += run
                                rights_o += [ev] * matched
                                rtimes_o += at_t
                            # each pair's time is the later of its two, mostly this event's
                            # (the run is in time order): one pass of C, not a max() per pair
                            if t >= run[-1]:
                                jtimes_o += at_t
                                diffs_o += map(sub, at_t, run)
                            elif t <= run[0]:
                                jtimes_o += run
                                diffs_o += map(sub, run, at_t)
                            else:
                                jtimes_o += [at if at > t else t for at in run]
                                diffs_o += [at - t if at > t else t - at for at in run]
                    records += matched
                    times = own.times
                    if len(times) == own.head or t >= times[-1]:
                        times.append(t)
                        own.events.append(ev)
                        own.matches.append(matched)
                    else:
                        own.add(t, ev, matched)
                    added += 1
                    if len(times) > cap and len(times) - own.head > cap:
                        self._evict(key, st, is_left, out)
                if due < st.due:
                    st.due = due
                if lru is not None and config.max_buffered is not None:
                    self.buffered += added - gone
                    counters.events += added
                    added = gone = 0
                    self._total_cap(states, out)
            except Exception as exc:
                if poison is None:
                    raise
                # what a key made by the event buffered was counted in ``added``
                added -= self._poisoned(states, key, t, ev, exc, poison, made)
        counters.records += records
        counters.events += added
        self.buffered += added - gone

    def _poisoned(
        self,
        states: dict[Any, JoinKeyState],
        key: Any,
        t: int,
        ev: Any,
        exc: Exception,
        poison: list[Any],
        made: JoinKeyState | None,
    ) -> int:
        """Set a poison event aside: ``(key, t, ev, exc)`` goes to ``poison``. ``made``, the
        state the event created for its key, is dropped (it holds this event at most); returns
        the events it had buffered, for the caller's count."""
        poison.append((key, t, ev, exc))
        with contextlib.suppress(Exception):  # a key whose hash raises never got a state
            if made is not None and states.get(key) is made:
                del states[key]
                self.forget(key)
                return len(made)
        return 0

    # -- expiry --------------------------------------------------------------------------------
    def expire(self, key: Any, st: JoinKeyState, out: JoinRows | None) -> None:
        """Drop the buffered events no future event can match; emit unmatched rows (and, for
        as-of joins, the rows of the left events whose time has come)."""
        config = self.config
        left, right = st.left, st.right
        left_times, right_times = left.times, right.times
        size = len(left_times) - left.head + len(right_times) - right.head
        if size > self.largest:
            self.largest = size
        wm = st.clock - config.max_out_of_orderness - config.allowed_lateness
        if config.how == "asof":
            self._expire_asof(key, st, wm, out)
        else:
            # a full join's rows of both sides go out in the order of their times
            rows = JoinRows() if out is not None and self._outer_left and self._outer_right else out
            head = left.head
            end = bisect_left(left_times, wm - config.after, head)
            if end > head:
                if self._outer_left:
                    self._unmatched_between(key, "left", left, head, end, rows)
                left.advance(end)
            head = right.head
            end = bisect_left(right_times, wm - config.before, head)
            if end > head:
                if self._outer_right:
                    self._unmatched_between(key, "right", right, head, end, rows)
                right.advance(end)
            if rows is not out and rows:
                assert out is not None
                out.add_in_time_order(rows)
            due = _NEVER
            if len(left_times) > left.head:
                due = left_times[left.head] + config.after
            if len(right_times) > right.head:
                due = min(due, right_times[right.head] + config.before)
            st.due = due
        self.buffered -= size - (len(left_times) - left.head + len(right_times) - right.head)

    def _unmatched_between(
        self,
        key: Any,
        side: str,
        buffer: SideBuffer,
        start: int,
        end: int,
        out: JoinRows | None,
        clock: int | None = None,
    ) -> None:
        matches, times, events = buffer.matches, buffer.times, buffer.events
        for i in range(start, end):
            if not matches[i]:
                self._unmatched(key, side, times[i], events[i], out, clock)

    def _expire_asof(self, key: Any, st: JoinKeyState, wm: int, out: JoinRows | None) -> None:
        left, right = st.left, st.right
        end = bisect_left(left.times, wm, left.head)
        for i in range(left.head, end):
            self._asof_row(key, st, left.times[i], left.events[i], out)
        if end > left.head:
            left.advance(end)
        # the right events a pending or future left event (all at >= wm) can still pick: the
        # newest at or before wm (unless beyond the tolerance), and the ones after it
        times = right.times
        newest = bisect_right(times, wm, right.head) - 1
        if newest > right.head:
            right.advance(newest)
        tolerance = self.config.tolerance
        if tolerance is not None and len(right) and wm - tolerance > times[right.head] <= wm:
            right.advance(right.head + 1)
        st.due = self._asof_due(st)

    def _asof_due(self, st: JoinKeyState) -> int:
        """The watermark beyond which a key of an as-of join has something to do: its oldest
        left event's row, or a right event to drop."""
        due = _NEVER
        left, right = st.left, st.right
        if len(left):
            due = left.times[left.head]
        if len(right) > 1:
            due = min(due, right.times[right.head + 1] - 1)
        tolerance = self.config.tolerance
        if len(right) and tolerance is not None:
            due = min(due, right.times[right.head] + tolerance)
        return due

    def _asof_row(self, key: Any, st: JoinKeyState, t: int, ev: Any, out: JoinRows | None) -> None:
        """The row of a left event of an as-of join: with the latest right event at or before
        it, within the tolerance, or unmatched."""
        right = st.right
        times = right.times
        i = bisect_right(times, t, right.head) - 1
        tolerance = self.config.tolerance
        if i >= right.head and (tolerance is None or t - times[i] <= tolerance):
            self.counters.records += 1
            if out is not None:
                out.add(key, ev, right.events[i], t, times[i], None)
        else:
            self._unmatched(key, "left", t, ev, out)

    def _outer(self, side: str) -> bool:
        how = self.config.how
        return how == "full" or how == side

    # -- caps ----------------------------------------------------------------------------------
    def _evict(self, key: Any, st: JoinKeyState, is_left: bool, out: JoinRows | None) -> None:
        """Evict the oldest event of one side of a key (a cap was hit)."""
        buffer = st.left if is_left else st.right
        size = len(st)
        if size > self.largest:  # the key may shrink without an expiry that would see it
            self.largest = size
        entry = buffer.evict_oldest()
        if entry is None:
            return
        self.counters.evicted += 1
        self.buffered -= 1
        t, ev, matches = entry
        side = "left" if is_left else "right"
        if self.config.how == "asof":
            if is_left:
                self._asof_row(key, st, t, ev, out)
        elif not matches and self._outer(side):
            self._unmatched(key, side, t, ev, out, st.clock)

    def _total_cap(self, states: dict[Any, JoinKeyState], out: JoinRows | None) -> None:
        """Past ``max_buffered``: evict the oldest events of the least recently active keys."""
        cap = self.config.max_buffered
        lru = self._lru
        assert cap is not None and lru is not None
        while self.buffered > cap and lru:
            key = next(iter(lru))
            st = states.get(key)
            if st is None or not len(st):
                del lru[key]
                continue
            left, right = st.left, st.right
            is_left = not len(right) or (
                len(left) > 0 and left.times[left.head] <= right.times[right.head]
            )
            self._evict(key, st, is_left, out)

    def drop_quiet(self, states: dict[Any, JoinKeyState], now: float, out: JoinRows | None) -> None:
        """Drop the keys without an event for ``state_ttl`` seconds, the quietest first (so
        this stops at the first key that is not due). What they buffered goes as if the
        watermark had passed it all: outer joins emit the unmatched rows, as-of joins the
        rows of the waiting left events; what an inner join buffered is dropped."""
        ttl = self.config.state_ttl
        lru = self._lru
        if ttl is None or lru is None:
            return
        limit = now - ttl
        while lru:
            key = next(iter(lru))
            st = states.get(key)
            if st is not None and st.seen > limit:
                break
            del lru[key]
            if st is None:
                continue
            del states[key]
            self.counters.expired_keys += 1
            self.buffered -= len(st)
            if len(st) > self.largest:
                self.largest = len(st)
            if self.config.how == "asof":
                for t, ev, _ in st.left:
                    self._asof_row(key, st, t, ev, out)
                continue
            for side, buffer in (("left", st.left), ("right", st.right)):
                if self._outer(side):
                    end = len(buffer.times)
                    self._unmatched_between(key, side, buffer, buffer.head, end, out, st.clock)

    def forget(self, key: Any) -> None:
        """The caller dropped ``key``'s state."""
        if self._lru is not None:
            self._lru.pop(key, None)

    # -- idle time -----------------------------------------------------------------------------
    def tick(
        self,
        states: dict[Any, JoinKeyState],
        idle: IdleKeys,
        now: float,
        out: JoinRows | None,
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
            target = st.latest + int(round((now - st.seen - quiet) * 1000, 3))
            if target > st.clock:
                st.clock = target
                self.expire(key, st, out)
            if not len(st):
                del states[key]
                self.forget(key)
                continue
            idle.schedule(key, st, self._wake(st, now))

    def _wake(self, st: JoinKeyState, now: float) -> float:
        """When (wall clock) the key's next expiry comes with idle time."""
        config = self.config
        idle = config.idle_timeout
        assert idle is not None
        if st.due >= _NEVER:
            # nothing will expire without a new event (an as-of key holding one right event):
            # no visit until then (the key's next event makes it recent again)
            return math.inf
        slack = config.max_out_of_orderness + config.allowed_lateness + 1
        return max(st.seen + idle + (st.due + slack - st.latest) / 1000, now + 0.001)

    # -- records -------------------------------------------------------------------------------
    def _unmatched(
        self, key: Any, side: str, t: int, ev: Any, out: JoinRows | None, clock: int | None = None
    ) -> None:
        """An unmatched row. The features of the join's stream see it at the end of its
        event's interval, when it became unmatched (timed by its event, it would come after
        the records of newer events and be late for a windowed feature), or at the key's
        clock if it comes out sooner (an eviction, a key dropped after state_ttl)."""
        self.counters.unmatched += 1
        if out is None:
            return
        at = t + (self.config.after if side == "left" else self.config.before)
        if clock is not None and at > clock:
            at = clock
        if side == "left":
            out.add(key, ev, None, t, None, at)
        else:
            out.add(key, None, ev, None, t, at)

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

    def records(self, rows: JoinRows) -> list[Record]:
        """The records of ``rows``, the fields merged by the join's strategy (a failing merge
        function is counted)."""
        return make_records(
            self.config,
            rows.keys,
            rows.lefts,
            rows.rights,
            rows.left_times,
            rows.right_times,
            rows.join_times,
            rows.differences,
            self.counters,
        )

    def timed(self, rows: JoinRows) -> list[tuple[int, Record]]:
        """``(time, record)`` of each row of ``rows``, the time being the row's time for the
        features of the join's stream."""
        return list(zip(rows.times(), self.records(rows), strict=True))


def make_records(
    config: JoinConfig,
    keys: Sequence[Any],
    lefts: Sequence[Mapping[str, Any] | None],
    rights: Sequence[Mapping[str, Any] | None],
    left_times: Sequence[int | None],
    right_times: Sequence[int | None],
    join_times: Sequence[int],
    differences: Sequence[int | None],
    counters: JoinCounters | None = None,
) -> list[Record]:
    """Join records as the seed defines them, the fields merged by the join's strategy; a
    failing merge function prefixes the fields instead, counted in ``counters``. Built-in
    strategies cannot fail: records of those are built wherever someone reads them."""
    merge = config.merge
    name = config.name
    built: list[Record] = []
    append = built.append
    for key, left, right, tl, tr, joined, difference in zip(
        keys, lefts, rights, left_times, right_times, join_times, differences, strict=True
    ):
        record: Record
        left_fields = left or {}
        right_fields = right or {}
        if merge == "prefix":
            record = {f"left_{k}": v for k, v in left_fields.items()}
            for k, v in right_fields.items():
                record[f"right_{k}"] = v
        elif merge == "left_priority":
            record = {**right_fields, **left_fields}
        elif merge == "right_priority":
            record = {**left_fields, **right_fields}
        else:
            try:
                record = dict(merge(left_fields, right_fields))
            except Exception:
                # a failing merge function costs the record its merge, not the record: the
                # fields are prefixed instead (counted; the join's actor logs it)
                if counters is not None:
                    counters.merge_errors += 1
                record = {f"left_{k}": v for k, v in left_fields.items()}
                for k, v in right_fields.items():
                    record[f"right_{k}"] = v
        # the join's own fields come last: an event field of the same name does not hide them
        record["join"] = name
        record["key"] = key
        record["join_timestamp"] = joined
        record["left_event_timestamp"] = tl
        record["right_event_timestamp"] = tr
        record["time_difference_ms"] = difference
        append(record)
    return built


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value
