"""The windowed features of a feature group: per-key window state, event time, emission.

A :class:`WindowEngine` is built once per group from its windowed features and applied by the
group's shard actors (``runtime._windows.shard``) to batches of ``(key, time_ms, event)``. It
owns no state itself: each shard passes its own dict of :class:`KeyWindows`.

Time, per key (``docs/windows.md`` has the timelines):

- the key's *clock* is its greatest event time, moved on by idle time when ``idle_timeout`` is
  set; its *watermark* is the clock minus ``max_out_of_orderness``;
- an event is *late* when its time is below the watermark by more than ``allowed_lateness``:
  ``late_policy`` then drops it (counted), sends it to the side output, or applies it and emits
  corrections for the closed windows it changes (while their state is kept, for
  ``correction_horizon`` past their close);
- a tumbling or hopping window ``[start, end)`` closes when the watermark reaches
  ``end + allowed_lateness``, a session when it reaches ``last event + gap +
  allowed_lateness``: the final value is emitted, and the state dropped;
- the windows of a tumbling, hopping or session spec (a *frame*) are made of the key's events,
  not of each feature's inputs: every event of the key opens or extends them, so the features
  of one spec always agree on the key's windows and sessions, and a close or correction
  carries every feature of the spec;
- the clock of a quiet key is a function of the wall clock alone: it is brought up to date
  when an event of the key arrives and when the key is read, not only by the idle timer.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import itertools
import linecache
import math
import weakref
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from .._exceptions import CheckpointError, FeatureValueError, FeaturistError, SpecError
from .._keyed.custom import CustomCell, CustomRunner
from .._keyed.kinds import coerce_number, name_error, ratio_of
from .._spec.keyed import Derived, Ratio
from .._spec.windowed import SequencePattern
from .._spec.windows import Hopping, Session, Sliding, Tumbling
from .._stats.idle import IdleKeys
from .._stats.quantiles import SortedValues, nearest_rank_index
from .patterns import PatternState
from .state import (
    EMPTY,
    READERS,
    Accumulator,
    CustomAccumulator,
    CustomSlidingState,
    Needs,
    SlidingState,
    accumulator,
    check_value,
    sliding_state,
    value_reader,
)

__all__ = ["KeyWindows", "WindowCounters", "WindowEngine", "WindowOutput"]

#: later than any event time
NEVER = 2**62
_INF = float("inf")
#: the largest int a window takes as a number: larger ones have no float
_MAX_INT = 2**1023
_NUMERIC_TYPES = frozenset(
    {"sum", "mean", "min", "max", "variance", "std", "percentile", "quantile", "zscore"}
)


@dataclass
class _Buffer:
    """Features that read the same input over the same window share one buffer."""

    index: int
    kind: str  # "sliding", "panes" or "session"
    field: str | None
    where: Any
    numeric: bool
    needs: Needs
    size: int = 0
    hop: int = 0
    gap: int = 0
    #: the indexes of its features in the engine
    features: list[int] = dataclass_field(default_factory=list)
    #: the zscore features among them (scored before each event is added)
    scores: list[int] = dataclass_field(default_factory=list)
    #: values must be checked before they are added (hashable, in the sketch's range)
    checks: bool = False
    #: a sliding window keeps the sum of its values (for a sum, a mean or a zscore)
    sums: bool = False
    #: the window spec
    window: Any = None
    #: where its state is in ``KeyWindows.buffers``: its own index (sliding), or its frame's
    slot: int = 0
    #: tumbling, hopping and session buffers: their frame, and their place among its buffers
    frame: int = -1
    position: int = 0


@dataclass
class _Frame:
    """The buffers of one tumbling, hopping or session spec. A key's windows (or sessions) of
    the spec are made of all its events, whatever each buffer takes of them: each window holds
    one accumulator per buffer (None while the buffer took nothing in it), so every feature of
    the spec sees the same windows, and a close or correction carries all of them."""

    index: int
    kind: str  # "panes" or "session"
    size: int
    hop: int
    gap: int
    buffers: list[_Buffer]
    #: its state's place in ``KeyWindows.buffers``: the index of its first buffer
    slot: int
    #: (feature index, position of its buffer), in feature order: what its values hold
    members: list[tuple[int, int]] = dataclass_field(default_factory=list)
    #: its buffers' needs, by position
    needs: tuple[Needs, ...] = ()
    #: tumbling and hopping: ``size // hop``
    panes_per_window: int = 1


#: a window's accumulators, one per buffer of its frame (None: the buffer took nothing)
Accumulators = list[Accumulator | None]


class _Panes:
    """One key's panes of a tumbling or hopping frame."""

    __slots__ = ("accumulators", "closed", "current", "order")

    def __init__(self, closed: int) -> None:
        #: pane index (``t // hop``) -> its accumulators; a pane is here once it has an event
        self.accumulators: dict[int, Accumulators] = {}
        #: the pane indexes as a min-heap: the oldest pane in O(1), purges in O(log n)
        self.order: list[int] = []
        #: the newest window index past its close (windows start at ``index * hop``): the
        #: windows up to it that held events have been emitted
        self.closed = closed
        #: hopping windows: (k, the merged panes of window k, None if empty): the window a read
        #: shows, kept up to date by each event and rebuilt when the clock moves into another
        #: window (once per hop), so a read does not merge ``size / hop`` panes again. Only
        #: events and clock moves change it, never reads: its floats do not depend on when
        #: reads happen.
        self.current: tuple[int, Accumulators | None] | None = None

    def __len__(self) -> int:
        return len(self.accumulators)


class _Sessions:
    """One key's sessions of a session frame: ``[start, last, accumulators, emitted]``, sorted
    by start (and so by end: sessions are disjoint)."""

    __slots__ = ("sessions",)

    def __init__(self) -> None:
        self.sessions: list[list[Any]] = []

    def __len__(self) -> int:
        return len(self.sessions)


class KeyWindows:
    """The window state of one key."""

    __slots__ = ("buffers", "clock", "finals", "latest", "next_close", "patterns", "seen")

    def __init__(self, buffers: int, t: int, now: float) -> None:
        #: the key's event-time clock: its greatest event time, or later after idle time
        self.clock = t
        #: the key's greatest event time
        self.latest = t
        #: wall-clock time of the key's last event
        self.seen = now
        #: one slot per buffer of the engine: a sliding buffer's state at its index, a
        #: frame's (``_Panes`` or ``_Sessions``) at the index of its first buffer, else None
        self.buffers: list[Any] = [None] * buffers
        #: the smallest watermark at which some window of the key closes or is purged
        self.next_close = NEVER
        #: with ``emit="close"``: frame index -> (end, values) of its newest emitted window
        self.finals: dict[int, tuple[int, dict[str, Any]]] | None = None
        #: the state of each sequence feature, or None before its first event
        self.patterns: list[PatternState] | None = None


class WindowOutput:
    """What applying events (or a tick, or a read's catch-up) emitted, in order, in the shape
    of an ``UpdateBatch``: a row ``(key, event_time, *values)`` per output (values in the
    engine's ``names`` order), and beside the rows, by row index, what few of them carry more.

    Most outputs are ``"update"`` rows with nothing beside them; ``failures`` holds the
    features that failed on an update's event, ``extras`` the outputs of other kinds (a
    close, a correction, a match, an anomaly) as ``(kind, values, window, errors, parts)``,
    their row holding None for the features they do not report.
    """

    __slots__ = ("extras", "failures", "names", "rows")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.rows: list[tuple[Any, ...]] = []
        #: row index -> {feature name: error message}
        self.failures: dict[int, dict[str, str]] | None = None
        #: row index -> (kind, values by name, window, errors, parts)
        self.extras: dict[int, tuple[str, dict[str, Any], Any, Any, Any]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def fail(self, errors: list[Any], mark: int) -> None:
        """The next row's event failed: ``errors[mark:]``, ``(key, t, feature, exception)``."""
        if self.failures is None:
            self.failures = {}
        self.failures[len(self.rows)] = {
            name: f"{type(exc).__name__}: {exc}" for _, _, name, exc in errors[mark:]
        }

    def other(
        self,
        key: Any,
        t: int,
        values: dict[str, Any],
        kind: str,
        window: tuple[int, int] | None,
        parts: tuple[int, ...] | None = None,
    ) -> None:
        """An output of another kind than ``"update"``."""
        if self.extras is None:
            self.extras = {}
        self.extras[len(self.rows)] = (kind, values, window, None, parts)
        get = values.get
        self.rows.append((key, t, *[get(name) for name in self.names]))


@dataclass
class WindowCounters:
    """What a shard's window engine counted."""

    late_dropped: int = 0
    late_side_output: int = 0
    late_applied: int = 0
    corrections: int = 0
    windows_closed: int = 0
    expired_keys: int = 0
    idle_advances: int = 0
    pattern_matches: int = 0
    pattern_late: int = 0
    partials_dropped: int = 0
    anomalies: int = 0


class WindowEngine:
    """The windowed features of one group, compiled for batch application. Internal.

    Args:
        features: the windowed features (ratios among them read windowed operands).
        max_out_of_orderness, allowed_lateness, correction_horizon: milliseconds.
        late_policy: ``"drop"``, ``"side_output"`` or ``"update"``.
        emit: ``"update"`` or ``"close"``.
        idle_timeout, state_ttl: seconds, or None.
    """

    def __init__(
        self,
        features: Sequence[Any],
        *,
        max_out_of_orderness: int = 0,
        allowed_lateness: int = 0,
        late_policy: str = "drop",
        correction_horizon: int = 3_600_000,
        emit: str = "update",
        idle_timeout: float | None = None,
        state_ttl: float | None = None,
    ) -> None:
        self.features = list(features)
        self.names = tuple(f.name for f in self.features)
        self.types = tuple(f.type_name for f in self.features)
        self.ooo = max_out_of_orderness
        self.lateness = allowed_lateness
        self.late_policy = late_policy
        self.horizon = correction_horizon if late_policy == "update" else 0
        self.emit = emit
        self.idle_timeout = idle_timeout
        self.state_ttl = state_ttl
        #: keys are tracked in order of their last event (for idle time and expiry)
        self.tracks_idle = idle_timeout is not None or state_ttl is not None
        #: a key quiet for this long (seconds) is brought up to the wall clock before its next
        #: event or read is served: idle time, expiry (None: neither is on)
        limits = [x for x in (idle_timeout, state_ttl) if x is not None]
        self.quiet: float | None = min(limits) if limits else None
        self.buffers: list[_Buffer] = []
        #: the tumbling, hopping and session specs, and the sliding buffers
        self.frames: list[_Frame] = []
        self.sliding: list[_Buffer] = []
        #: the sequence features, with their index
        self.sequences: list[tuple[int, SequencePattern]] = []
        self._readers: list[Callable[[Any], Any] | None] = []
        self._buffer_of: list[int] = []
        #: each custom feature's runner, by feature index
        self._runners: dict[int, CustomRunner] = {}
        self._build()
        self.defaults = self.values(None)
        #: the source of the compiled ``apply`` (None: the generic loop applies events)
        self.source: str | None = None
        self._compiled = _compile_sliding(self)

    # -- compilation -------------------------------------------------------------------------
    def _build(self) -> None:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, feature in enumerate(self.features):
            if isinstance(feature, Ratio | Derived):
                continue
            if isinstance(feature, SequencePattern):
                self.sequences.append((index, feature))
                continue
            if feature.type_name == "custom":
                # a buffer of its own: its states are the aggregate's
                self._runners[index] = CustomRunner(feature)
                groups[("custom", index)] = [index]
                continue
            numeric = feature.type_name in _NUMERIC_TYPES
            fld = None if feature.type_name == "count" else feature.field
            groups.setdefault((feature.window, fld, feature.where, numeric), []).append(index)
        buffer_of = [-1] * len(self.features)
        for group, members in groups.items():
            if group[0] == "custom":
                feature = self.features[members[0]]
                self._add_buffer(
                    feature.window,
                    feature.field,
                    feature.where,
                    self._runners[members[0]].numeric,
                    members,
                    buffer_of,
                    self._runners[members[0]],
                )
                continue
            window, fld, where, numeric = group
            # one sketch per relative accuracy: quantiles of another accuracy get buffers of
            # their own
            alphas = sorted(
                {
                    self.features[i].relative_accuracy
                    for i in members
                    if self.features[i].type_name == "quantile"
                }
            )
            for alpha in alphas[1:]:
                part = [
                    i
                    for i in members
                    if self.features[i].type_name == "quantile"
                    and self.features[i].relative_accuracy == alpha
                ]
                self._add_buffer(window, fld, where, numeric, part, buffer_of)
                members = [i for i in members if i not in part]
            self._add_buffer(window, fld, where, numeric, members, buffer_of)
        self._buffer_of = buffer_of
        self._readers = [
            None
            if isinstance(f, Ratio | Derived | SequencePattern)
            else value_reader(f, self._runners.get(i))
            for i, f in enumerate(self.features)
        ]
        self._ratio_order = self._order_ratios()
        #: per ratio or derived feature: the function of its operands' values, and their
        #: indexes
        self._combine: dict[int, tuple[Callable[..., Any], tuple[int, ...]]] = {
            i: _combiner(self.features[i], self.names) for i in self._ratio_order
        }
        self._build_frames()
        #: hopping frames: their merged current window is refreshed when the clock moves
        self._hopping = [f for f in self.frames if f.kind == "panes" and f.panes_per_window > 1]
        #: the buffers as tuples, unpacked in the event loop: a sliding buffer's slot and size,
        #: a frame buffer's frame and position in their places
        self._plan = [
            (
                b.slot if b.kind == "sliding" else b.frame,
                b.kind,
                b.field,
                b.where,
                b.numeric,
                b.size if b.kind == "sliding" else b.position,
                b.scores,
                b.checks,
                b,
            )
            for b in self.buffers
        ]

    def _build_frames(self) -> None:
        """One frame per tumbling, hopping or session spec, over the buffers of that spec."""
        by_window: dict[Any, list[_Buffer]] = {}
        for buffer in self.buffers:
            if buffer.kind == "sliding":
                buffer.slot = buffer.index
                self.sliding.append(buffer)
            else:
                by_window.setdefault(buffer.window, []).append(buffer)
        for buffers in by_window.values():
            first = buffers[0]
            frame = _Frame(
                len(self.frames),
                first.kind,
                first.size,
                first.hop,
                first.gap,
                buffers,
                first.index,
            )
            for position, buffer in enumerate(buffers):
                buffer.slot, buffer.frame, buffer.position = first.index, frame.index, position
                frame.members.extend((i, position) for i in buffer.features)
            frame.members.sort()
            frame.needs = tuple(b.needs for b in buffers)
            if frame.kind == "panes":
                frame.panes_per_window = frame.size // frame.hop
            self.frames.append(frame)

    def _add_buffer(
        self,
        window: Any,
        fld: str | None,
        where: Any,
        numeric: bool,
        members: list[int],
        buffer_of: list[int],
        runner: CustomRunner | None = None,
    ) -> None:
        types = {self.features[i].type_name for i in members}
        alphas = [
            self.features[i].relative_accuracy
            for i in members
            if self.features[i].type_name == "quantile"
        ]
        needs = Needs(
            moments=bool(types & {"variance", "std", "zscore"}),
            extremes=bool(types & {"min", "max"}),
            ends=bool(types & {"first", "last"}),
            sorted=bool(types & {"percentile"}),
            sketch=alphas[0] if alphas else None,
            frequent="top_k" in types,
            distinct="distinct_count" in types,
            custom=runner,
        )
        buffer = _Buffer(
            len(self.buffers), "", fld, where, numeric, needs, features=members, window=window
        )
        if isinstance(window, Sliding):
            buffer.kind, buffer.size = "sliding", window.size_ms
        elif isinstance(window, Tumbling | Hopping):
            buffer.kind, buffer.size, buffer.hop = "panes", window.size_ms, window.hop_ms
        elif isinstance(window, Session):
            buffer.kind, buffer.gap = "session", window.gap_ms
        else:  # pragma: no cover - the spec admits no other window
            raise FeaturistError(f"unknown window {window!r}")
        for i in members:
            buffer_of[i] = buffer.index
        buffer.scores = [i for i in members if self.features[i].type_name == "zscore"]
        buffer.checks = needs.frequent or needs.distinct or needs.sketch is not None
        buffer.sums = numeric and bool(types & {"sum", "mean", "zscore"})
        self.buffers.append(buffer)

    def _order_ratios(self) -> list[int]:
        """Ratios in an order where each comes after the ratios it reads."""
        position = {name: i for i, name in enumerate(self.names)}
        for feature in self.features:
            for operand in feature.depends_on():
                if operand not in position:
                    raise SpecError(
                        f"{feature.name}: operand {operand!r} is not a windowed feature of the "
                        "same group: register a ratio in the same call as its operands"
                    )
        done: set[int] = set()
        order: list[int] = []

        def visit(i: int) -> None:
            if i in done:
                return
            done.add(i)
            for operand in self.features[i].depends_on():
                j = position[operand]
                if isinstance(self.features[j], Ratio | Derived):
                    visit(j)
            order.append(i)

        for i, feature in enumerate(self.features):
            if isinstance(feature, Ratio | Derived):
                visit(i)
        return order

    # -- applying events ---------------------------------------------------------------------
    def apply(
        self,
        events: list[tuple[Any, int, dict[str, Any]]],
        states: dict[Any, KeyWindows],
        errors: list[Any],
        now: float,
        out: WindowOutput | None,
        late: list[Any] | None,
        counters: WindowCounters,
        idle: IdleKeys | None,
        poison: list[Any] | None = None,
    ) -> None:
        """Apply a batch in order.

        ``errors`` receives ``(key, t, feature, exception)``; ``out`` (when not None)
        receives the outputs (:class:`WindowOutput`);
        ``late`` (when not None) receives side-output ``(key, t, watermark, event)``;
        ``idle`` (when idle time or expiry is on) is told of each key's event.

        ``poison`` (when not None) receives ``(key, t, event, exception)`` for each event
        whose processing raised past the features' own guards, and the batch goes on (with
        None the exception propagates). A key the event created is dropped; for a key that
        existed, what the event changed before the failure stays (its clock, the buffers
        before the one that failed, what it emitted).

        A key quiet for long enough is first brought up to ``now`` (:meth:`catch_up`), so
        whether its event is late depends on the wall clock, not on when ticks ran.

        An engine of sliding windows alone runs a compiled loop (``_compile_sliding``) that
        does the same; others, and that loop's rare events, run :meth:`_apply_generic`.
        """
        compiled = self._compiled
        if compiled is not None:
            compiled(events, states, errors, now, out, late, counters, idle, poison)
        else:
            self._apply_generic(events, states, errors, now, out, late, counters, idle, poison)

    def _apply_generic(
        self,
        events: list[tuple[Any, int, dict[str, Any]]],
        states: dict[Any, KeyWindows],
        errors: list[Any],
        now: float,
        out: WindowOutput | None,
        late: list[Any] | None,
        counters: WindowCounters,
        idle: IdleKeys | None,
        poison: list[Any] | None = None,
    ) -> None:
        plan = self._plan
        frames = self.frames
        quiet = self.quiet
        nbuf = len(self.buffers)
        ooo = self.ooo
        lateness = self.lateness
        policy = self.late_policy
        emit_updates = out is not None and self.emit == "update"
        sequences = self.sequences
        hopping = self._hopping
        get = states.get
        recent = idle.recent if idle is not None else None
        st: KeyWindows | None = None
        wm_before: int | None = 0
        for key, t, ev in events:
            try:
                st = get(key)
                if (
                    quiet is not None
                    and st is not None
                    and now - st.seen >= quiet
                    and self._visit(key, st, states, now, out, counters) is None
                ):
                    st = None  # expired: the event starts the key afresh
                if st is None:
                    st = KeyWindows(nbuf, t, now)
                    states[key] = st
                    late_event = False
                    wm_before = None
                else:
                    clock = st.clock
                    wm_before = clock - ooo
                    late_event = t < wm_before - lateness
                    if late_event:
                        if policy == "drop":
                            counters.late_dropped += 1
                            continue
                        if policy == "side_output":
                            counters.late_side_output += 1
                            if late is not None:
                                late.append((key, t, st.clock - ooo, ev))
                            continue
                        if t < st.clock - ooo - lateness - self.horizon:
                            counters.late_dropped += 1  # its windows' state is gone
                            continue
                        counters.late_applied += 1
                    if t > clock:
                        st.clock = t
                    if t > st.latest:
                        st.latest = t  # below the clock after idle time moved it
                    if recent is not None:
                        st.seen = now
                if recent is not None:
                    if key in recent:
                        recent.move_to_end(key)
                    else:
                        recent[key] = None
                late_out: _LateOut | None = None
                anomalies: list[Any] | None = None
                mark = len(errors)
                clock = st.clock
                states_of = st.buffers
                # every frame takes the event (its window or session), whatever its buffers
                # take of it below
                targets = self._locate(st, t) if frames else None
                for index, kind, fld, where, numeric, size, scores, checks, buffer in plan:
                    if fld is None:
                        v: Any = 1
                    else:
                        v = ev.get(fld)
                        if v is None:
                            continue
                    if where is not None:
                        try:
                            if not where.matches(ev):
                                continue
                        except FeaturistError as exc:
                            self._errors(errors, buffer, key, t, exc)
                            continue
                    if numeric and (v.__class__ is not float or not -_INF < v < _INF):
                        if v.__class__ is not int or not -_MAX_INT <= v <= _MAX_INT:
                            v = self._number(errors, buffer, key, t, v)
                            if v is None:
                                continue
                    try:
                        if checks:
                            check_value(buffer.needs, v)  # refuse before anything changes
                        if kind == "sliding":
                            state = states_of[index]
                            cutoff = clock - size
                            if state is not None:
                                items = state.items
                                if items and items[0][0] <= cutoff:
                                    state.evict(cutoff)
                            if t > cutoff:
                                if state is None:
                                    state = sliding_state(buffer.needs, buffer.sums)
                                    states_of[index] = state
                                if scores:
                                    anomalies = self._score(key, t, v, buffer, state, anomalies)
                                items = state.items
                                if (
                                    state.plain
                                    and (not items or t >= items[-1][0])
                                    and state.removed < len(items) + 64
                                ):
                                    # a count or sum, in time order: the common case, inline
                                    items.append((t, v))
                                    if state.numeric:
                                        state.sum += v
                                else:
                                    state.add(t, v)
                        else:
                            # index: the buffer's frame, size: its position in it
                            target = targets[index]  # type: ignore[index]
                            accs, merged = target[0], target[1]
                            position, needs = size, buffer.needs
                            acc = accs[position]
                            if acc is None:
                                acc = accs[position] = accumulator(needs)
                            acc.add(t, v, numeric, needs)
                            if merged is not None:
                                # the pane is in the hopping window reads show
                                acc = merged[position]
                                if acc is None:
                                    acc = merged[position] = accumulator(needs)
                                acc.add(t, v, numeric, needs)
                    except Exception as exc:
                        self._errors(errors, buffer, key, t, name_error(exc, fld or "count"))
                if late_event and targets is not None:
                    # only an event below the watermark can land in a window past its close
                    late_out = self._late(st, targets, late_out)
                if hopping:
                    self._refresh(st)
                if anomalies is not None:
                    counters.anomalies += len(anomalies)
                    if out is not None:
                        for name, z in anomalies:
                            out.other(key, t, {name: z}, "anomaly", None, (t,))
                if sequences:
                    if wm_before is not None and t < wm_before:
                        counters.pattern_late += 1
                    else:
                        self._pattern_event(key, st, t, ev, errors, out, counters)
                pending: list[tuple[int, int, dict[str, Any]]] | None = None
                if late_out is not None:
                    for (kind, window), values in late_out.items():
                        if kind == "close":
                            # emitted with the closes of this event, merged by window
                            pending = pending or []
                            pending.append((window[0], window[1], values))
                            continue
                        counters.corrections += 1
                        if out is not None:
                            self._add_ratios(values)
                            out.other(key, window[1], values, kind, window)
                if pending is not None or st.clock - ooo >= st.next_close:
                    self.close(key, st, out, counters, pending)
                if emit_updates:
                    assert out is not None
                    if len(errors) > mark:
                        out.fail(errors, mark)
                    out.rows.append((key, t, *self.values(st)))
            except Exception as exc:
                if poison is None:
                    raise
                # ``wm_before`` is None for a new key (``st``, unless making it failed)
                _poisoned(states, key, t, ev, exc, poison, st if wm_before is None else None)

    def _score(
        self,
        key: Any,
        t: int,
        v: Any,
        buffer: _Buffer,
        state: SlidingState,
        anomalies: list[Any] | None,
    ) -> list[Any] | None:
        """Score ``v`` against the window before it is added: each zscore feature's value."""
        moments = state.moments
        assert moments is not None
        n = moments.n
        try:
            variance = state.variance(1, repair=True)
            mean = state.sum / n if n else None
            std = math.sqrt(variance) if variance else 0.0
        except ArithmeticError:  # ints beyond a float's range: no score
            mean, std = None, 0.0
        for i in buffer.scores:
            feature = self.features[i]
            if mean is None or n < feature.min_count or not std:
                z = None
            else:
                z = (v - mean) / std
            if state.scores is None:
                state.scores = {}
            state.scores[feature.name] = z
            if z is not None and abs(z) >= feature.threshold:
                if anomalies is None:
                    anomalies = []
                anomalies.append((feature.name, z))
        return anomalies

    def _pattern_event(
        self,
        key: Any,
        st: KeyWindows,
        t: int,
        ev: dict[str, Any],
        errors: list[Any],
        out: WindowOutput | None,
        counters: WindowCounters,
    ) -> None:
        """Queue an event for the key's sequence features and run what the watermark releases."""
        if st.patterns is None:
            st.patterns = [PatternState() for _ in self.sequences]
        for pattern in st.patterns:
            pattern.serial += 1
            insort(pattern.pending, (t, pattern.serial, ev), key=_time_serial)
        self._release(key, st, errors, out, counters)

    def _release(
        self,
        key: Any,
        st: KeyWindows,
        errors: list[Any] | None,
        out: WindowOutput | None,
        counters: WindowCounters,
    ) -> None:
        """Feed the sequence features, in time order, the queued events the watermark passed."""
        if st.patterns is None:
            return
        wm = st.clock - self.ooo
        for (_, feature), pattern in zip(self.sequences, st.patterns, strict=True):
            pending = pattern.pending
            released = 0
            while released < len(pending) and pending[released][0] <= wm:
                t, _, ev = pending[released]
                released += 1
                try:
                    matched = pattern.step(feature, t, ev)
                except Exception as exc:
                    if errors is not None:
                        errors.append((key, t, feature.name, name_error(exc, feature.name)))
                    continue
                counters.partials_dropped += pattern.dropped
                pattern.dropped = 0
                for parts in matched:
                    counters.pattern_matches += 1
                    if out is not None:
                        window = (parts[0], parts[-1])
                        values = {feature.name: pattern.matches}
                        out.other(key, parts[-1], values, "match", window, parts)
            if released:
                del pending[:released]
            pattern.prune(feature, wm)

    def _refresh(self, st: KeyWindows) -> None:
        """Rebuild the merged window of each hopping frame whose window moved with the clock."""
        for frame in self._hopping:
            state = st.buffers[frame.slot]
            if state is None:
                continue
            k = (st.clock - frame.size) // frame.hop + 1
            current = state.current
            if current is None or current[0] != k:
                state.current = (k, self._merge_panes(frame, state, k))

    def _errors(self, errors: list[Any], buffer: _Buffer, key: Any, t: int, exc: Any) -> None:
        names = self.names
        for i in buffer.features:
            errors.append((key, t, names[i], exc))

    def _number(self, errors: list[Any], buffer: _Buffer, key: Any, t: int, v: Any) -> Any:
        """A numeric buffer's value that is not a finite float nor an int a float can hold:
        converted (``coerce_number``), or None with the error reported for its features."""
        fld = buffer.field or ""
        if v.__class__ is int:
            error: FeatureValueError | None = FeatureValueError(
                f"field {fld!r} is an int too large for a float ({v.bit_length()} bits)",
                field=fld,
            )
        else:
            v, error = coerce_number(fld, v)
            if error is None:
                return v
        self._errors(errors, buffer, key, t, error)
        return None

    # -- frames: tumbling, hopping and session windows ----------------------------------------
    def _locate(self, st: KeyWindows, t: int) -> list[tuple[Any, ...]]:
        """Each frame's window (or session) for an event at ``t``, made if it is new: per
        frame, ``(accumulators, merged, state, pane or session, had events)``, where
        ``merged`` is the hopping window reads show when the event is in it (else None)."""
        targets: list[tuple[Any, ...]] = []
        buffers = st.buffers
        for frame in self.frames:
            state = buffers[frame.slot]
            if frame.kind == "session":
                if state is None:
                    state = buffers[frame.slot] = _Sessions()
                targets.append(self._session_of(st, frame, state, t))
                continue
            if state is None:
                limit = (st.clock - self.ooo - self.lateness - frame.size) // frame.hop
                state = buffers[frame.slot] = _Panes(limit)
            hop = frame.hop
            p = t // hop
            panes = state.accumulators
            accs = panes.get(p)
            had = accs is not None
            if accs is None:
                accs = panes[p] = [None] * len(frame.buffers)
                heapq.heappush(state.order, p)
            merged = None
            current = state.current
            if current is not None and current[0] <= p < current[0] + frame.panes_per_window:
                # the event is in the window reads show: keep its merged state up to date (if
                # the event moves the clock to another window, _refresh rebuilds it after)
                merged = current[1]
                if merged is None:
                    merged = [None] * len(frame.buffers)
                    state.current = (current[0], merged)
            # the first window holding pane p ends at (p + 1) * hop
            close_at = (p + 1) * hop + self.lateness
            if close_at < st.next_close:
                st.next_close = close_at
            targets.append((accs, merged, state, p, had))
        return targets

    def _session_of(
        self, st: KeyWindows, frame: _Frame, state: _Sessions, t: int
    ) -> tuple[Any, ...]:
        """The session an event at ``t`` lands in, merging the sessions it bridges.

        Sessions are disjoint and sorted by start (so by end too): the ones the event's
        ``[t, t + gap)`` overlaps are a run found by bisection, never a scan. A session is
        *emitted* once its final values went out; one the event joins to others is emitted if
        one of its parts was. If the session is open (a late event may have joined a closed
        session to an open one), it is open again, and closes later like any other; if not,
        :meth:`_late` emits it.
        """
        gap = frame.gap
        items = state.sessions
        # sessions starting before t + gap; of those, the ones ending after t touch the event
        high = bisect_left(items, t + gap, key=_start_of)
        low = high
        while low > 0 and items[low - 1][1] + gap > t:
            low -= 1
        session: list[Any]
        if low == high:
            session = [t, t, [None] * len(frame.buffers), False]
            items.insert(low, session)
            emitted = False
        elif high - low == 1:
            session = items[low]
            if t < session[0]:
                session[0] = t
            if t > session[1]:
                session[1] = t
            emitted = session[3]
        else:
            touching = items[low:high]
            merged = self._merge(frame, [part[2] for part in touching])
            assert merged is not None
            emitted = any(part[3] for part in touching)
            session = [min(touching[0][0], t), max(touching[-1][1], t), merged, False]
            items[low:high] = [session]
        close_at = session[1] + gap + self.lateness
        if close_at > st.clock - self.ooo:
            session[3] = False  # open (again)
            if close_at < st.next_close:
                st.next_close = close_at
        return (session[2], None, state, session, emitted)

    def _late(
        self, st: KeyWindows, targets: list[tuple[Any, ...]], late_out: _LateOut | None
    ) -> _LateOut | None:
        """After an event is added to its frames: the windows it landed in that are past their
        close. Those that held events were emitted, and get a correction; one empty until now
        is emitted for the first time, as a close. Either carries every feature of its frame.
        Called for late events only: no other lands in a window past its close."""
        wm = st.clock - self.ooo
        lateness = self.lateness
        for frame, target in zip(self.frames, targets, strict=True):
            if frame.kind == "session":
                session, emitted = target[3], target[4]
                end = session[1] + frame.gap
                if end + lateness > wm:
                    continue  # open: _session_of saw to it
                session[3] = True
                values = self._frame_values(frame, session[2])
                window = (session[0], end)
                if late_out is None:
                    late_out = {}
                kind = "correction" if emitted else "close"
                late_out.setdefault((kind, window), {}).update(values)
                self._set_final(st, frame, end, values)
                purge_at = end + lateness + self.horizon
                if purge_at < st.next_close:
                    st.next_close = purge_at
                continue
            state, p, had = target[2], target[3], target[4]
            r = frame.panes_per_window
            if p - r >= state.closed:
                continue
            # windows p - r + 1 .. min(p, closed) hold the event and are past their close
            panes, hop = state.accumulators, frame.hop
            for k in range(p - r + 1, min(p, state.closed) + 1):
                had_events = had or any(q in panes for q in range(k, k + r) if q != p)
                values = self._frame_values(frame, self._merge_panes(frame, state, k))
                window = (k * hop, k * hop + frame.size)
                if late_out is None:
                    late_out = {}
                kind = "correction" if had_events else "close"
                late_out.setdefault((kind, window), {}).update(values)
                self._set_final(st, frame, window[1], values)
        return late_out

    def _set_final(self, st: KeyWindows, frame: _Frame, end: int, values: dict[str, Any]) -> None:
        """With ``emit="close"``: remember the values of the frame's newest emitted window."""
        if self.emit != "close":
            return
        if st.finals is None:
            st.finals = {}
        current = st.finals.get(frame.index)
        if current is None or end >= current[0]:
            st.finals[frame.index] = (end, values)

    # -- closing windows ---------------------------------------------------------------------
    def close(
        self,
        key: Any,
        st: KeyWindows,
        out: WindowOutput | None,
        counters: WindowCounters,
        pending: list[tuple[int, int, dict[str, Any]]] | None = None,
    ) -> None:
        """Close the windows of ``st`` that its watermark has passed, emit their final values
        (in order of window end, with the ``pending`` first closes of a late event merged in),
        purge what is no longer needed, and compute the next threshold."""
        wm = st.clock - self.ooo
        finished: list[tuple[int, int, dict[str, Any]]] = list(pending or ())
        next_close = NEVER
        buffers = st.buffers
        for buffer in self.sliding:
            state = buffers[buffer.slot]
            if state is not None:
                state.evict(st.clock - buffer.size)
                if not len(state):
                    buffers[buffer.slot] = None
        for frame in self.frames:
            state = buffers[frame.slot]
            if state is None:
                continue
            mark = len(finished)
            if frame.kind == "panes":
                next_close = min(next_close, self._close_panes(frame, state, wm, finished))
            else:
                next_close = min(next_close, self._close_sessions(frame, state, wm, finished))
            for _, end, values in finished[mark:]:
                self._set_final(st, frame, end, values)
            if not len(state):
                buffers[frame.slot] = None
        st.next_close = next_close
        if not finished:
            return
        finished.sort(key=_end_then_start)
        merged: dict[tuple[int, int], dict[str, Any]] = {}
        for start, end, values in finished:
            merged.setdefault((start, end), {}).update(values)
        counters.windows_closed += len(merged)
        if out is not None:
            for (start, end), values in merged.items():
                self._add_ratios(values)
                out.other(key, end, values, "close", (start, end))

    def _close_panes(self, frame: _Frame, state: _Panes, wm: int, finished: list[Any]) -> int:
        hop, size, r = frame.hop, frame.size, frame.panes_per_window
        lateness = self.lateness
        # window k closes when k * hop + size + lateness <= wm
        limit = (wm - lateness - size) // hop
        panes = state.accumulators
        if limit > state.closed:
            low = state.closed + 1
            # the panes of windows low..limit are low..limit + r - 1: look those up, or scan
            # the panes when there are fewer of them (after a long silence)
            top = limit + r - 1
            if top - low + 1 <= len(panes):
                candidates: Iterable[int] = (p for p in range(low, top + 1) if p in panes)
            else:
                candidates = (p for p in panes if low <= p <= top)
            due: set[int] = set()
            for p in candidates:
                due.update(range(max(p - r + 1, low), min(p, limit) + 1))
            for k in sorted(due):
                values = self._frame_values(frame, self._merge_panes(frame, state, k))
                finished.append((k * hop, k * hop + size, values))
            state.closed = limit
        # pane p is purged once its last window (k = p) is closed and past the horizon
        purge_limit = (wm - lateness - size - self.horizon) // hop
        order = state.order
        while order and order[0] <= purge_limit:
            del panes[heapq.heappop(order)]
        if not panes:
            return NEVER
        # next: the next window to close, or the next pane to purge
        oldest = order[0]
        next_k = max(state.closed + 1, oldest - r + 1)
        next_close = next_k * hop + size + lateness
        if self.horizon:
            next_close = min(next_close, oldest * hop + size + lateness + self.horizon)
        return next_close

    def _close_sessions(self, frame: _Frame, state: _Sessions, wm: int, finished: list[Any]) -> int:
        """Emit the sessions past their close and purge the emitted ones past the horizon.

        Only the ends of the list are visited: sessions not yet emitted are a suffix (a late
        event that lands past a session's close emits it at once, so no unemitted closed
        session sits among emitted ones), and emitted sessions past the horizon a prefix (the
        oldest). Closing comes first, so that with no horizon a session is purged as it closes.
        """
        gap, lateness, horizon = frame.gap, self.lateness, self.horizon
        items = state.sessions
        first_open = len(items)
        while first_open > 0 and not items[first_open - 1][3]:
            first_open -= 1
        for session in items[first_open:]:
            end = session[1] + gap
            if end + lateness > wm:
                break
            session[3] = True
            finished.append((session[0], end, self._frame_values(frame, session[2])))
            first_open += 1
        cut = 0
        while cut < first_open and items[cut][1] + gap + lateness + horizon <= wm:
            cut += 1
        if cut:
            del items[:cut]
            first_open -= cut
        next_close = NEVER
        if first_open < len(items):
            next_close = items[first_open][1] + gap + lateness
        if first_open:
            next_close = min(next_close, items[0][1] + gap + lateness + horizon)
        return next_close

    # -- values ------------------------------------------------------------------------------
    def _frame_values(self, frame: _Frame, accs: Accumulators | None) -> dict[str, Any]:
        """The values of every feature of ``frame`` over a window's accumulators (None: a
        window without events); a feature whose buffer took nothing in it has the value of an
        empty window (0 for a count or sum, None for a mean)."""
        readers, names = self._readers, self.names
        values = {}
        for i, position in frame.members:
            reader = readers[i]
            assert reader is not None
            values[names[i]] = _read(reader, accs[position] if accs is not None else None)
        return values

    def _merge(self, frame: _Frame, parts: Iterable[Accumulators | None]) -> Accumulators | None:
        """The accumulators of windows (panes or sessions; None: no such window) merged, oldest
        first, into new ones; None if there is none."""
        needs = frame.needs
        if len(needs) == 1:  # the common case, without the loop over positions
            need = needs[0]
            into: Accumulator | None = None
            found = False
            for accs in parts:
                if accs is not None:
                    found = True
                    acc = accs[0]
                    if acc is not None:
                        if into is None:
                            into = accumulator(need)
                        into.merge(acc, need)
            return [into] if found else None
        merged: Accumulators | None = None
        for accs in parts:
            if accs is None:
                continue
            if merged is None:
                merged = [None] * len(accs)
            for position, acc in enumerate(accs):
                if acc is not None:
                    part = merged[position]
                    if part is None:
                        part = merged[position] = accumulator(needs[position])
                    part.merge(acc, needs[position])
        return merged

    def _merge_panes(self, frame: _Frame, state: _Panes, k: int) -> Accumulators | None:
        """Window ``k``'s accumulators: its panes merged (None: no event in it)."""
        panes = state.accumulators
        r = frame.panes_per_window
        if r == 1:
            return panes.get(k)
        return self._merge(frame, [panes.get(p) for p in range(k, k + r)])

    def _current(self, frame: _Frame, st: KeyWindows) -> Accumulators | None:
        """The window a read of ``frame``'s features shows (update mode), or None if empty:
        the tumbling or hopping window holding the clock that closes first, the open session
        with the latest start."""
        state = st.buffers[frame.slot]
        if state is None:
            return None
        if frame.kind == "panes":
            k = (st.clock - frame.size) // frame.hop + 1
            current = state.current
            if current is not None and current[0] == k:
                return current[1]  # type: ignore[no-any-return]
            return self._merge_panes(frame, state, k)  # not kept: a read changes nothing
        for session in reversed(state.sessions):
            if not session[3]:
                return session[2]  # type: ignore[no-any-return]
        return None

    def values(self, st: KeyWindows | None, at: int | None = None) -> tuple[Any, ...]:
        """Every feature's value for a key (its defaults for None).

        ``at``: the values as of that event time (ms), later than the key's clock: what a read
        would show had the key's clock moved on to ``at`` with no further event (as idle time
        moves it), computed without changing the key's state (:meth:`as_of`)."""
        if at is not None and st is not None and at > st.clock:
            return self._values_at(st, at)
        names, readers = self.names, self._readers
        result: list[Any] = [None] * len(names)
        for buffer in self.sliding:
            state = None
            if st is not None:
                state = st.buffers[buffer.slot]
                if state is not None:
                    state.evict(st.clock - buffer.size)
            for i in buffer.features:
                result[i] = _read(readers[i], state)  # type: ignore[arg-type]
        finals = st.finals if st is not None else None
        for frame in self.frames:
            if st is not None and self.emit == "close":
                final = finals.get(frame.index) if finals is not None else None
                if final is not None:
                    for i, _ in frame.members:
                        result[i] = final[1][names[i]]
                    continue
                accs = None
            else:
                accs = self._current(frame, st) if st is not None else None
            for i, position in frame.members:
                state = accs[position] if accs is not None else None
                result[i] = _read(readers[i], state)  # type: ignore[arg-type]
        if self.sequences:
            patterns = st.patterns if st is not None else None
            for position, (i, _) in enumerate(self.sequences):
                result[i] = patterns[position].matches if patterns is not None else 0
        return self._with_ratio_values(result)

    def _with_ratio_values(self, result: list[Any]) -> tuple[Any, ...]:
        """``result`` with the ratios filled in from their operands."""
        for i in self._ratio_order:
            combine, operands = self._combine[i]
            try:
                result[i] = combine(*[result[j] for j in operands])
            except FeaturistError:
                result[i] = None
        return tuple(result)

    # -- reads as of a time --------------------------------------------------------------------
    def as_of(self, st: KeyWindows, at: int) -> int:
        """The event time (ms) a read of ``st`` as of ``at`` shows the values at: ``at`` itself
        when it is at or after the key's clock, else the key's clock (a key's state holds no
        record of what it was before its clock: a read cannot go back, see
        ``docs/serving.md``)."""
        return max(at, st.clock)

    def _values_at(self, st: KeyWindows, at: int) -> tuple[Any, ...]:
        """The values of a key as of ``at`` (later than its clock), its state untouched: each
        sliding window over the events held in ``(at - size, at]``; with ``emit="update"``
        the tumbling or hopping window holding ``at`` and the open session (none if the
        watermark at ``at`` closes it), with ``emit="close"`` the newest window or session
        closed by the watermark at ``at``; sequence features with the matches the events that
        watermark releases would complete."""
        names, readers = self.names, self._readers
        result: list[Any] = [None] * len(names)
        wm = at - self.ooo
        for buffer in self.sliding:
            state = st.buffers[buffer.slot]
            if state is not None:
                state = _sliding_at(state, buffer, at - buffer.size)
            for i in buffer.features:
                result[i] = _read(readers[i], state)  # type: ignore[arg-type]
        for frame in self.frames:
            if self.emit == "close":
                closed = self._closed_at(frame, st, wm)
                if closed is not None:
                    for i, _ in frame.members:
                        result[i] = closed[names[i]]
                    continue
                accs = None
            else:
                accs = self._open_at(frame, st, at, wm)
            for i, position in frame.members:
                part = accs[position] if accs is not None else None
                result[i] = _read(readers[i], part)  # type: ignore[arg-type]
        if self.sequences:
            for position, (i, feature) in enumerate(self.sequences):
                pattern = st.patterns[position] if st.patterns is not None else None
                result[i] = 0 if pattern is None else _matches_at(pattern, feature, wm)
        return self._with_ratio_values(result)

    def _open_at(self, frame: _Frame, st: KeyWindows, at: int, wm: int) -> Accumulators | None:
        """``emit="update"``: the window of ``frame`` a read as of ``at`` shows. A window that
        holds ``at`` closes after it, so its panes are all still held; a session shows while
        the watermark at ``at`` has not closed it."""
        state = st.buffers[frame.slot]
        if state is None:
            return None
        if frame.kind == "panes":
            return self._merge_panes(frame, state, (at - frame.size) // frame.hop + 1)
        for session in reversed(state.sessions):
            if not session[3]:
                if session[1] + frame.gap + self.lateness > wm:
                    return session[2]  # type: ignore[no-any-return]
                return None  # the newest open session closes by then, and so do older ones
        return None

    def _closed_at(self, frame: _Frame, st: KeyWindows, wm: int) -> dict[str, Any] | None:
        """``emit="close"``: the values of ``frame``'s newest window or session closed by the
        watermark ``wm``: one the key's state has emitted, or one ``wm`` would close."""
        final = st.finals.get(frame.index) if st.finals is not None else None
        newest: tuple[int, dict[str, Any]] | None = final
        state = st.buffers[frame.slot]
        if state is not None:
            if frame.kind == "panes":
                hop, size, r = frame.hop, frame.size, frame.panes_per_window
                limit = (wm - self.lateness - size) // hop
                if limit > state.closed:
                    # the newest window up to ``limit`` with an event, not emitted yet
                    low, top = state.closed + 1, limit + r - 1
                    held = [p for p in state.accumulators if low <= p <= top]
                    if held:
                        k = min(max(held), limit)
                        end = k * hop + size
                        if newest is None or end >= newest[0]:
                            accs = self._merge_panes(frame, state, k)
                            newest = (end, self._frame_values(frame, accs))
            else:
                gap, lateness = frame.gap, self.lateness
                for session in reversed(state.sessions):
                    if session[3]:
                        break  # emitted: its values are in the finals already
                    end = session[1] + gap
                    if end + lateness <= wm:
                        if newest is None or end >= newest[0]:
                            newest = (end, self._frame_values(frame, session[2]))
                        break
        return None if newest is None else newest[1]

    def _add_ratios(self, values: dict[str, Any]) -> None:
        names = self.names
        for i in self._ratio_order:
            combine, operands = self._combine[i]
            if all(names[j] in values for j in operands):
                try:
                    values[names[i]] = combine(*[values[names[j]] for j in operands])
                except FeaturistError:
                    values[names[i]] = None

    # -- idle time and expiry ----------------------------------------------------------------
    def tick(
        self,
        states: dict[Any, KeyWindows],
        idle: IdleKeys,
        now: float,
        out: WindowOutput | None,
        counters: WindowCounters,
    ) -> None:
        """Advance the clocks of idle keys and expire quiet ones: keys quiet for the smaller of
        ``idle_timeout`` and ``state_ttl`` are visited, and again when their next window
        closes or their state expires (``IdleKeys``)."""
        assert self.quiet is not None
        ttl = self.state_ttl
        for key in idle.due(states, now, self.quiet):
            st = states[key]
            wake = self._visit(key, st, states, now, out, counters)
            if wake is None:
                continue
            if ttl is not None:
                wake = min(wake, st.seen + ttl)
            # a wake at or before ``now`` would be visited again in this same loop
            idle.schedule(key, st, max(wake, now + 0.001))

    def catch_up(
        self,
        keys: Iterable[Any],
        states: dict[Any, KeyWindows],
        now: float,
        out: WindowOutput | None,
        counters: WindowCounters,
    ) -> None:
        """Before a read: bring each of ``keys`` that is quiet up to wall time ``now``, as the
        next tick would (its clock, the windows that closes, expiry), so that what a read
        shows is a function of the wall clock, not of when ticks ran."""
        quiet = self.quiet
        if quiet is None:
            return
        for key in keys:
            st = states.get(key)
            if st is not None and now - st.seen >= quiet:
                self._visit(key, st, states, now, out, counters)

    def _visit(
        self,
        key: Any,
        st: KeyWindows,
        states: dict[Any, KeyWindows],
        now: float,
        out: WindowOutput | None,
        counters: WindowCounters,
    ) -> float | None:
        """Bring a quiet key up to wall time ``now``: expire it past ``state_ttl``, move its
        clock with idle time, and expire it when nothing is left to come. Return when it next
        needs a visit (wall-clock seconds, or infinity), or None if its state was dropped."""
        ttl = self.state_ttl
        # the same sum as the tick's wake: ``now - seen >= ttl`` can differ from it in floats,
        # and the key was then woken at ``now`` again and again
        if ttl is not None and st.seen + ttl <= now:
            del states[key]
            counters.expired_keys += 1
            return None
        wake = self._advance_idle(key, st, now, out, counters)
        if self._empty(st):
            del states[key]
            counters.expired_keys += 1
            return None
        return wake

    def _advance_idle(
        self,
        key: Any,
        st: KeyWindows,
        now: float,
        out: WindowOutput | None,
        counters: WindowCounters,
    ) -> float:
        """Move an idle key's clock to where wall time has taken it; return when it next
        needs a visit (wall-clock seconds), or infinity."""
        idle = self.idle_timeout
        if idle is None:
            return _INF
        # to the microsecond first, as event times are read: 45.0 - 37.921 - 5 is
        # 2.0789999..., whose milliseconds would truncate to 2078, a window boundary missed
        target = st.latest + int(round((now - st.seen - idle) * 1000, 3))
        if target > st.clock:
            st.clock = target
            counters.idle_advances += 1
            self.close(key, st, out, counters)
            self._refresh(st)
            self._release(key, st, None, out, counters)
        # the clock value at which something next changes: a window closes, or a sliding
        # window loses its newest event
        due = st.next_close + self.ooo if st.next_close < NEVER else NEVER
        for buffer in self.sliding:
            state = st.buffers[buffer.slot]
            if state is not None and len(state):
                due = min(due, state.items[0][0] + buffer.size)
        for (_, feature), pattern in zip(self.sequences, st.patterns or (), strict=False):
            if pattern.pending:
                due = min(due, pattern.pending[0][0] + self.ooo)
            if pattern.partials:
                # the clock at which the oldest partial match can no longer complete
                oldest = min(partial[1][0] for partial in pattern.partials)
                due = min(due, oldest + feature.within_ms + self.ooo + 1)
        if due >= NEVER:
            return _INF
        # never at or before now: the millisecond rounding of the clock must not spin the loop
        return max(st.seen + idle + (due - st.latest) / 1000, now + 0.001)

    def _empty(self, st: KeyWindows) -> bool:
        """Whether the key holds nothing still to come: no open window, no event waiting for
        the watermark, no partial match that can complete, no event left in a sliding window
        (one not evicted yet counts as gone). The last closed values (with ``emit="close"``)
        and sequence match counts do not keep a quiet key."""
        if st.patterns is not None and any(p.pending or p.partials for p in st.patterns):
            return False
        buffers = st.buffers
        for buffer in self.sliding:
            state = buffers[buffer.slot]
            if state is not None and len(state) and state.items[-1][0] > st.clock - buffer.size:
                return False
        for frame in self.frames:
            state = buffers[frame.slot]
            if state is not None and len(state):
                return False
        return True

    # -- restored state ------------------------------------------------------------------------
    def attach(self, st: KeyWindows) -> None:
        """Give the custom features' states of a key restored from a checkpoint back to their
        runners, which ``load`` them (``runtime._keyed.custom``).

        Raises:
            CheckpointError: an aggregate's ``load`` raised, or a state is not a custom
                feature's.
        """
        for buffer in self.buffers:
            runner = buffer.needs.custom
            if runner is None:
                continue
            state = st.buffers[buffer.slot]
            if state is None:
                continue
            if buffer.kind == "sliding":
                _attach(runner, state)
                continue
            if isinstance(state, _Panes):
                windows = list(state.accumulators.values())
                if state.current is not None and state.current[1] is not None:
                    windows.append(state.current[1])
            else:
                windows = [session[2] for session in state.sessions]
            for accs in windows:
                acc = accs[buffer.position]
                if acc is not None:
                    _attach(runner, acc)

    # -- statistics --------------------------------------------------------------------------
    def state_bytes(self, states: dict[Any, KeyWindows]) -> int:
        """Estimated bytes held for ``states``, summed over every key: window state is too
        skewed for a sample (one busy key can hold more than thousands of quiet ones). Each
        key costs O(1) per buffer (O(panes) for panes), about a microsecond."""
        if not states:
            return 0
        measured = 0
        for st in states.values():
            size = 120 + 8 * len(st.buffers)
            for state in st.buffers:
                if state is None:
                    continue
                if isinstance(state, SlidingState):
                    size += state.nbytes()
                elif isinstance(state, _Panes):
                    size += 100 + sum(_accs_bytes(accs) for accs in state.accumulators.values())
                    if state.current is not None and state.current[1] is not None:
                        size += _accs_bytes(state.current[1])
                else:
                    size += 60 + sum(_accs_bytes(s[2]) + 80 for s in state.sessions)
            for pattern in st.patterns or ():
                size += 100 + 120 * len(pattern) + 8 * sum(len(p[1]) for p in pattern.partials)
            measured += size
        return measured

    def held_events(self, states: dict[Any, KeyWindows]) -> int:
        """Events held in sliding windows, pane and session accumulators, over all keys."""
        total = 0
        for st in states.values():
            for state in st.buffers:
                if state is None:
                    continue
                if isinstance(state, SlidingState):
                    total += len(state)
                elif isinstance(state, _Panes):
                    total += sum(_held(accs) for accs in state.accumulators.values())
                else:
                    total += sum(_held(s[2]) for s in state.sessions)
            for pattern in st.patterns or ():
                total += len(pattern.pending)
        return total


#: late emissions of one event: (kind, window) -> values
_LateOut = dict[tuple[str, tuple[int, int]], dict[str, Any]]


def _poisoned(
    states: dict[Any, KeyWindows],
    key: Any,
    t: int,
    ev: Any,
    exc: Exception,
    poison: list[Any],
    made: KeyWindows | None,
) -> None:
    """Set a poison event aside: ``(key, t, ev, exc)`` goes to ``poison``; ``made``, the state
    the event created for its key, is dropped (it may hold part of the event and nothing
    else). A key left in ``IdleKeys.recent`` without a state is skipped there."""
    with contextlib.suppress(Exception):  # a key whose hash raises never got a state
        if made is not None and states.get(key) is made:
            del states[key]
    poison.append((key, t, ev, exc))


def _attach(runner: CustomRunner, state: Any) -> None:
    """Attach one restored window state's cell to ``runner``."""
    if not isinstance(state, CustomSlidingState | CustomAccumulator) or not isinstance(
        state.custom, CustomCell
    ):
        raise CheckpointError(
            f"custom feature {runner.name!r}: a window state is a {type(state).__name__}"
        )
    try:
        runner.attach(state.custom)
    except FeatureValueError as exc:
        raise CheckpointError(str(exc)) from exc


def _accs_bytes(accs: Accumulators) -> int:
    """Estimated bytes of one window's accumulators."""
    return 56 + 8 * len(accs) + sum(acc.nbytes() + 100 for acc in accs if acc is not None)


def _held(accs: Accumulators) -> int:
    """The values held in one window's accumulators."""
    return sum(acc.n for acc in accs if acc is not None)


def _read(reader: Callable[[Any], Any], state: Any) -> Any:
    """A feature's value, or None where computing it fails (a mean of ints whose sum is
    beyond a float's range, say: the event that caused it was reported when it came)."""
    try:
        return reader(state)
    except (ArithmeticError, TypeError, ValueError):
        return None


def _sliding_at(state: SlidingState, buffer: _Buffer, cutoff: int) -> SlidingState | None:
    """A sliding window's state with the events after ``cutoff`` only: ``state`` itself when
    it holds none older, else a new state of those events, built in bulk (a sort for the
    sorted values, a rebuild of the moments, the monotonic deques filtered); ``state`` is not
    changed."""
    items = state.items
    if not items or items[0][0] > cutoff:
        return state
    if items[-1][0] <= cutoff:
        return None
    kept = sliding_state(buffer.needs, buffer.sums)
    held = list(itertools.islice(items, bisect_left(items, cutoff + 1, key=_first_of), None))
    kept.items = deque(held)
    if isinstance(kept, CustomSlidingState):
        kept.invalidate()  # folded from the values kept when read
    values = [v for _, v in held]
    if kept.numeric:
        kept.sum = sum(values)
    if kept.moments is not None:
        kept.moments.rebuild(values)
    if kept.values is not None:
        kept.values = SortedValues(values)
    for tracker in (kept.sketch, kept.frequent, kept.distinct):
        if tracker is not None:
            for v in values:
                tracker.add(v)
    if state.lows is not None and state.highs is not None:
        kept.lows = deque([low for low in state.lows if low[0] > cutoff])
        kept.highs = deque([high for high in state.highs if high[0] > cutoff])
    if state.scores:
        kept.scores = state.scores  # the latest event's scores, still in the window
    return kept


def _first_of(item: tuple[int, Any]) -> int:
    return item[0]


def _matches_at(pattern: PatternState, feature: SequencePattern, wm: int) -> int:
    """A sequence feature's matches once the watermark ``wm`` released the events queued up
    to it, counted on a copy of its state (``pattern`` is not changed)."""
    pending = pattern.pending
    if not pending or pending[0][0] > wm:
        return pattern.matches
    trial = copy.deepcopy(pattern)
    for t, _, ev in trial.pending:
        if t > wm:
            break
        # an event that fails is reported when the watermark releases it, not by a read
        with contextlib.suppress(Exception):
            trial.step(feature, t, ev)
    return trial.matches


def _time_serial(item: tuple[int, int, Any]) -> tuple[int, int]:
    return item[0], item[1]


def _start_of(session: list[Any]) -> int:
    return int(session[0])


def _end_then_start(item: tuple[int, int, Any]) -> tuple[int, int]:
    return item[1], item[0]


# -- the compiled path of sliding windows ----------------------------------------------------
#
# An engine whose windows are all sliding (no tumbling, hopping or session frame, no sequence,
# no zscore: no window ever closes) is compiled into one function, as the keyed kernel
# compiles its groups (``runtime/_keyed/kernel.py``): per event, one dict lookup for the key,
# then straight-line code per buffer (read, check, evict, add) and per feature (its value, read
# from the buffer's state in place), and the output row ``(key, t, *values)``. It does what the
# generic loop does with the same floats in the same order (``tests/runtime/windows/
# test_compiled.py`` holds the two to the bit), for every event but the rare ones: an event to
# drop, set aside or apply late, and one for a key quiet long enough to be brought up to the
# wall clock, go through the generic loop, one at a time, in their place.
#
# User input never becomes source text: fields, conditions and features are bound in the
# function's namespace under generated names.

#: numbers the compiled engines, so that each has a file name of its own in ``linecache``
_COMPILED = itertools.count(1)


def _compile_sliding(engine: WindowEngine) -> Callable[..., None] | None:
    """The compiled ``apply`` of ``engine`` (see above), or None if it has frames, sequences
    or zscore features."""
    if engine.frames or engine.sequences or any(b.scores for b in engine.buffers):
        return None
    margin = engine.ooo + engine.lateness
    if type(margin) is not int or any(type(b.size) is not int for b in engine.buffers):
        return None
    namespace: dict[str, Any] = {
        "_KeyWindows": KeyWindows,
        "_SlidingState": SlidingState,
        "_CustomSlidingState": CustomSlidingState,
        "_FeaturistError": FeaturistError,
        "_name_error": name_error,
        "_check_value": check_value,
        "_ratio_of": ratio_of,
        "_poisoned": _poisoned,
        "_generic": engine._apply_generic,
        "_errors": engine._errors,
        "_number": engine._number,
        "_INF": _INF,
        "_MAX_INT": _MAX_INT,
        "_EMIT": engine.emit == "update",
        "_QUIET": engine.quiet,
        "_LIMIT": SortedValues.LIST_LIMIT,
        "_insort": insort,
        "_bisect_left": bisect_left,
        "_rank": _rank,
    }
    # a key's event is late below its clock minus ``margin``; a quiet key's is brought up to
    # the wall clock first: both by the generic loop
    late_test = f"t < clock - {margin}"
    if engine.quiet is not None:
        late_test += " or now - st.seen >= _QUIET"
    lines = [
        "def apply(events, states, errors, now, out, late, counters, idle, poison=None):",
        "    get = states.get",
        "    rows = out.rows if out is not None and _EMIT else None",
    ]
    if engine.tracks_idle:
        lines.append("    recent = idle.recent")
    lines += [
        "    for key, t, ev in events:",
        "        made = None",
        "        try:",
        "            st = get(key)",
        "            if st is None:",
        f"                st = made = states[key] = _KeyWindows({len(engine.buffers)}, t, now)",
        "                clock = t",
        "            else:",
        "                clock = st.clock",
        f"                if {late_test}:",
        "                    _generic(",
        "                        [(key, t, ev)], states, errors, now, out, late, counters, idle,"
        " poison",
        "                    )",
        "                    continue",
        "                if t > clock:",
    ]
    if engine.idle_timeout is None:
        # the clock is the greatest event time
        lines.append("                    st.clock = st.latest = clock = t")
    else:
        # idle time moves the clock past the greatest event time
        lines += [
            "                    st.clock = clock = t",
            "                if t > st.latest:",
            "                    st.latest = t",
        ]
    if engine.tracks_idle:
        lines += [
            "                st.seen = now",
            "            if key in recent:",
            "                recent.move_to_end(key)",
            "            else:",
            "                recent[key] = None",
        ]
    # mark: where this event's errors begin in ``errors`` (-1: none yet)
    body = ["buffers = st.buffers", "mark = -1"]
    reads = []
    for buffer in engine.buffers:
        event_lines, read_lines = _buffer_lines(buffer, engine.features, namespace)
        body += event_lines
        reads += read_lines
    ratios = []
    for i in engine._ratio_order:
        combine, operands = engine._combine[i]
        namespace[f"_combine{i}"] = combine
        args = ", ".join(f"v{j}" for j in operands)
        ratios += [
            "try:",
            f"    v{i} = _combine{i}({args})",
            "except _FeaturistError:",
            f"    v{i} = None",
        ]
    values = "".join(f", v{i}" for i in range(len(engine.features)))
    body += [
        "if rows is not None:",
        *_indent(reads, 1),
        *_indent(ratios, 1),
        "    if mark >= 0 and len(errors) > mark:",
        "        out.fail(errors, mark)",
        f"    rows.append((key, t{values}))",
    ]
    lines += _indent(body, 3)
    lines += [
        "        except Exception as exc:",
        "            if poison is None:",
        "                raise",
        "            _poisoned(states, key, t, ev, exc, poison, made)",
    ]
    source = "\n".join(lines) + "\n"
    filename = f"<featurist windows #{next(_COMPILED)}>"
    exec(compile(source, filename, "exec"), namespace)
    apply: Callable[..., None] = namespace["apply"]
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    forget = weakref.finalize(engine, linecache.cache.pop, filename, None)
    forget.atexit = False
    engine.source = source
    return apply


def _indent(lines: list[str], levels: int) -> list[str]:
    pad = "    " * levels
    return [pad + line for line in lines]


def _rank(table: list[int], q: float, n: int) -> int:
    """``table[n]``, the place of the nearest-rank ``q``-th percentile among ``n`` values,
    the table grown to hold it: ranks are computed once per window size, not per event."""
    table.extend(nearest_rank_index(q, m) for m in range(len(table), n + 1))
    return table[n]


def _buffer_lines(
    buffer: _Buffer, features: list[Any], namespace: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """What an event does to one sliding buffer (the generic loop's body for it), and what
    reads its features' values after the event into locals ``v<i>`` (``WindowEngine.values``),
    run when the event's values are emitted. The window is evicted once for both, when the
    event's value goes in or the values are read (as they each do). The buffer's locals end
    in its index: every buffer's are there to read once all took the event."""
    j = buffer.index
    needs = buffer.needs
    namespace[f"_B{j}"] = buffer
    namespace[f"_N{j}"] = needs
    if buffer.field is None:
        name = "'count'"
        lines = ["v = 1"]
    else:
        name = f"_F{j}"
        namespace[name] = buffer.field
        lines = [f"v = ev.get({name})"]
    # an error of the buffer's features: reported for each of them, the value left out
    report = ["if mark < 0:", "    mark = len(errors)"]
    if buffer.where is not None:
        namespace[f"_W{j}"] = buffer.where
        lines += [
            "if v is not None:",
            "    try:",
            f"        if not _W{j}.matches(ev):",
            "            v = None",
            "    except _FeaturistError as exc:",
            *_indent(report, 2),
            f"        _errors(errors, _B{j}, key, t, exc)",
            "        v = None",
        ]
    if buffer.numeric:
        lines += [
            "if v is not None and (v.__class__ is not float or not -_INF < v < _INF):",
            "    if v.__class__ is not int or not -_MAX_INT <= v <= _MAX_INT:",
            *_indent(report, 2),
            f"        v = _number(errors, _B{j}, key, t, v)",
        ]
    if buffer.checks:
        lines += [
            "if v is not None:",
            "    try:",
            f"        _check_value(_N{j}, v)",
            "    except Exception as exc:",
            *_indent(report, 2),
            f"        _errors(errors, _B{j}, key, t, _name_error(exc, {name}))",
            "        v = None",
        ]
    # the structures kept beside the events (and their sum): none, or their values sorted; a
    # custom feature's state is the aggregate's, changed by its own add and evict
    if needs.custom is not None:
        shape = "other"
    elif not needs.trackers and not needs.extremes:
        shape = "plain"
    elif needs == Needs(sorted=True):
        shape = "sorted"
    else:
        shape = "other"
    sums = buffer.sums
    state, items, values = f"state{j}", f"items{j}", f"values{j}"
    cls = "_SlidingState" if needs.custom is None else "_CustomSlidingState"
    lines += [
        f"{state} = buffers[{j}]",
        f"cutoff = clock - {buffer.size}",
        f"if {state} is not None:",
        f"    {items} = {state}.items",
    ]
    if shape == "sorted":
        lines.append(f"    {values} = {state}.values._values")
    lines += [
        f"    if {items} and {items}[0][0] <= cutoff and (v is not None or rows is not None):",
        *_indent(_evict_lines(shape, sums, j), 2),
        "if v is not None and t > cutoff:",
        "    try:",
        f"        if {state} is None:",
        f"            {state} = buffers[{j}] = {cls}(_N{j}, {sums})",
        f"            {items} = {state}.items",
    ]
    if shape == "sorted":
        lines.append(f"            {values} = {state}.values._values")
    lines += [
        *_indent(_add_lines(shape, sums, j), 2),
        "    except Exception as exc:",
        *_indent(report, 2),
        f"        _errors(errors, _B{j}, key, t, _name_error(exc, {name}))",
    ]
    if shape == "sorted":
        # a failed add may have replaced the list (SortedValues.add past LIST_LIMIT)
        lines += [
            f"        if {state} is not None:",
            f"            {values} = {state}.values._values",
        ]
    full: list[str] = []
    empty: list[str] = []
    kinds = {features[i].type_name for i in buffer.features}
    if kinds & {"sum", "mean"}:
        full.append(f"total = {state}.sum")
    for i in buffer.features:
        feature = features[i]
        kind = feature.type_name
        if kind == "count":
            full.append(f"v{i} = n")
        elif kind == "sum":
            full.append(f"v{i} = total")
        elif kind == "mean":
            full += [
                "try:",
                f"    v{i} = total / n",
                "except (ArithmeticError, TypeError, ValueError):",
                f"    v{i} = None",
            ]
        elif kind == "percentile" and feature.method == "nearest_rank":
            # SortedValues.percentile, its list indexed in place at a rank looked up by size
            namespace[f"_Q{i}"] = feature.q
            namespace[f"_R{i}"] = [0]
            held = values if shape == "sorted" else f"{state}.values._values"
            full += [
                "try:",
                f"    rank = _R{i}[n]",
                "except IndexError:",
                f"    rank = _rank(_R{i}, _Q{i}, n)",
                f"v{i} = {held}[rank]",
            ]
        else:
            namespace[f"_read{i}"] = READERS[kind]
            namespace[f"_f{i}"] = feature
            full += [
                "try:",
                f"    v{i} = _read{i}({state}, _f{i})",
                "except (ArithmeticError, TypeError, ValueError):",
                f"    v{i} = None",
            ]
        if kind == "custom":
            assert needs.custom is not None
            namespace[f"_empty{i}"] = needs.custom.empty_value  # the aggregate's, made anew
            empty.append(f"v{i} = _empty{i}()")
            continue
        default = EMPTY.get(kind)
        empty.append(f"v{i} = {'[]' if isinstance(default, list) else repr(default)}")
    read = [
        f"if {state} is not None and {items}:",
        f"    n = len({items})",
        *_indent(full, 1),
        "else:",
        *_indent(empty, 1),
    ]
    return lines, read


def _evict_lines(shape: str, sums: bool, j: int) -> list[str]:
    """``state.evict(cutoff)`` (``SlidingState.evict``), in line for a plain buffer (its
    events, and their sum if it keeps one) and for a sorted one (its events and their values
    sorted, in a list while they are few)."""
    state, items, values = f"state{j}", f"items{j}", f"values{j}"
    if shape == "other":
        return [f"{state}.evict(cutoff)"]
    # the events leave from the front; with a sum, it is taken down by each value
    if shape == "sorted":
        loop = [
            f"x = {items}.popleft()[1]",
            *(["total -= x"] if sums else []),
            f"i = _bisect_left({values}, x)",
            f"if i < len({values}) and {values}[i] == x:",
            f"    del {values}[i]",
            "else:",
            f"    {state}.values.remove(x)  # raises: x is not held",
        ]
    elif sums:
        loop = [f"total -= {items}.popleft()[1]"]
    else:
        loop = [f"{items}.popleft()"]
    lines = [f"while {items} and {items}[0][0] <= cutoff:", *_indent(loop, 1)]
    if sums:
        # an empty window sums to exactly zero, whatever rounding the subtractions left
        lines = [
            f"total = {state}.sum",
            f"held = len({items})",
            *lines,
            f"if {items}:",
            f"    {state}.sum = total",
            f"    {state}.removed += held - len({items})",
            "else:",
            f"    {state}.sum = 0",
            f"    {state}.removed = 0",
        ]
    else:
        lines += [f"if not {items}:", f"    {state}.removed = 0"]
    if shape == "sorted":
        # the values are in a SortedList past LIST_LIMIT: SlidingState.evict removes them
        lines = [
            f"if {values}.__class__ is list:",
            *_indent(lines, 1),
            "else:",
            f"    {state}.evict(cutoff)",
            f"    {values} = {state}.values._values",
        ]
    return lines


def _add_lines(shape: str, sums: bool, j: int) -> list[str]:
    """``state.add(t, v)`` (``SlidingState.add``), in line for a plain or a sorted buffer
    (see ``_evict_lines``) while no recompute of the sum is due."""
    state, items, values = f"state{j}", f"items{j}", f"values{j}"
    if shape == "other":
        return [f"{state}.add(t, v)"]
    lines = [
        # in time order, or in its place from the end (after the events of the same time)
        f"if not {items} or t >= {items}[-1][0]:",
        f"    {items}.append((t, v))",
        "else:",
        f"    i = len({items}) - 1",
        f"    while i > 0 and {items}[i - 1][0] > t:",
        "        i -= 1",
        f"    {items}.insert(i, (t, v))",
    ]
    if sums:
        lines.append(f"{state}.sum += v")
    if shape == "sorted":
        lines += [
            f"if {values}.__class__ is list and len({values}) < _LIMIT:",
            f"    _insort({values}, v)",
            "else:",
            f"    {state}.values.add(v)",
            f"    {values} = {state}.values._values",
        ]
    if sums:
        # without a sum nothing is ever recomputed (``removed`` stays 0)
        recompute = [f"{state}.add(t, v)"]
        if shape == "sorted":
            recompute.append(f"{values} = {state}.values._values")
        lines = [
            f"if {state}.removed >= len({items}) + 64:",
            *_indent(recompute, 1),
            "else:",
            *_indent(lines, 1),
        ]
    return lines


def _combiner(feature: Any, names: Sequence[str]) -> tuple[Callable[..., Any], tuple[int, ...]]:
    """The function that computes a ratio or derived feature from its operands' values, and
    the indexes of those operands."""
    operands = tuple(names.index(name) for name in feature.depends_on())
    if isinstance(feature, Ratio):
        return ratio_of, operands
    return feature.combiner(), operands
