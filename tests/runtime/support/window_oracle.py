"""A brute-force oracle for windowed features: after every event it recomputes each window from
the list of events the key has applied so far. Slow and obviously right; the window engine must
agree with it.

It follows the semantics of ``docs/windows.md`` step by step, per key:

- clock = greatest event time (moved on by idle time, a function of the wall clock alone);
  watermark = clock - max_out_of_orderness;
- an event with ``t < watermark - allowed_lateness`` is late: dropped, side output, or (policy
  ``update``) applied if ``t >= watermark - allowed_lateness - correction_horizon``;
- the tumbling, hopping and session windows of a spec are made of the key's events (every
  feature of the spec sees the same windows and sessions, each over its own inputs);
- after applying: corrections for emitted windows the event is in, a first ``close`` for a
  window past its close that was empty until now, then ``close`` for every window with events
  whose ``end + allowed_lateness <= watermark`` (in order of end, then start), each with every
  feature of its spec, then (with ``emit="update"``) the vector. A session that a late event
  extends past the watermark is open again and closes later.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runtime import (
    Count,
    DistinctCount,
    First,
    Hopping,
    Last,
    Max,
    Mean,
    Min,
    Percentile,
    Ratio,
    Session,
    Sliding,
    Std,
    Sum,
    TopK,
    Tumbling,
    Variance,
    Where,
)
from runtime._stats.rolling import order_key

from .oracle import matches

Event = tuple[int, dict[str, Any]]

SLIDING = Sliding(size=1000)
TUMBLING = Tumbling(size=500)
HOPPING = Hopping(size=900, hop=300)
SESSION = Session(gap=250)
DECLINED = Where(field="status", op="==", value="declined")

#: every windowed aggregate over each window type, with filtered forms and a ratio: the set the
#: window oracle tests run
WINDOW_FEATURES: list[Any] = [
    Count(name="s_n", window=SLIDING),
    Sum(name="s_sum", field="amount", window=SLIDING),
    Mean(name="s_mean", field="amount", window=SLIDING),
    Min(name="s_min", field="amount", window=SLIDING),
    Max(name="s_max", field="amount", window=SLIDING),
    First(name="s_first", field="merchant", window=SLIDING),
    Last(name="s_last", field="merchant", window=SLIDING),
    Variance(name="s_var", field="amount", window=SLIDING),
    Std(name="s_std", field="amount", ddof=0, window=SLIDING),
    DistinctCount(name="s_merchants", field="merchant", window=SLIDING),
    Percentile(name="s_p90", field="amount", q=90, window=SLIDING),
    Percentile(name="s_p50", field="amount", q=50, method="linear", window=SLIDING),
    TopK(name="s_top", field="merchant", k=2, window=SLIDING),
    Count(name="s_declined", where=DECLINED, window=SLIDING),
    Ratio(name="s_avg", numerator="s_sum", denominator="s_n"),
    Count(name="t_n", window=TUMBLING),
    Sum(name="t_sum", field="amount", window=TUMBLING),
    Max(name="t_max", field="amount", window=TUMBLING),
    Last(name="t_last", field="merchant", window=TUMBLING),
    Percentile(name="t_p50", field="amount", q=50, window=TUMBLING),
    TopK(name="t_top", field="merchant", k=2, window=TUMBLING),
    Count(name="h_n", window=HOPPING),
    Sum(name="h_sum", field="amount", window=HOPPING),
    Min(name="h_min", field="amount", window=HOPPING),
    First(name="h_first", field="merchant", window=HOPPING),
    Percentile(name="h_p90", field="amount", q=90, window=HOPPING),
    Count(name="x_n", window=SESSION),
    Sum(name="x_sum", field="amount", window=SESSION),
    Last(name="x_last", field="merchant", window=SESSION),
    Count(name="x_declined", where=DECLINED, window=SESSION),
]


def _inputs(
    feature: Any, events: Iterable[tuple[int, int, dict[str, Any]]]
) -> list[tuple[int, Any]]:
    """``(t, value)`` of the events a feature takes, in arrival order."""
    result = []
    numeric = feature.takes_numbers if feature.type_name == "custom" else feature.numeric
    for t, _, ev in events:
        if not matches(feature.where, ev):
            continue
        if feature.type_name == "count":
            result.append((t, 1))
            continue
        v = ev.get(feature.field)
        if v is None:
            continue
        if numeric and (isinstance(v, bool) or not isinstance(v, int | float)):
            continue
        result.append((t, v))
    return result


def aggregate(feature: Any, items: list[tuple[int, Any]]) -> Any:
    """The feature's value over ``items`` (``(t, value)`` in arrival order)."""
    kind = feature.type_name
    values = [v for _, v in items]
    if kind == "count":
        return len(values)
    if kind == "sum":
        return sum(values)
    if kind == "distinct_count":
        return len(set(values))
    if kind == "custom":
        from ..udaf.aggregates import ORACLES  # each test aggregate's brute force

        return ORACLES[type(feature.aggregate)](values)
    if kind == "top_k":
        counts = Counter(values)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], order_key(kv[0])))
        return [[v, n] for v, n in ranked[: feature.k]]
    if not values:
        return None
    if kind == "mean":
        return sum(values) / len(values)
    if kind == "min":
        return min(values)
    if kind == "max":
        return max(values)
    if kind == "first":
        low = min(t for t, _ in items)
        return next(v for t, v in items if t == low)
    if kind == "last":
        high = max(t for t, _ in items)
        return [v for t, v in items if t == high][-1]
    if kind in ("variance", "std"):
        if len(values) <= feature.ddof:
            return None
        var = statistics.variance(values) if feature.ddof else statistics.pvariance(values)
        return math.sqrt(var) if kind == "std" else var
    if kind == "percentile":
        ordered = sorted(values)
        n = len(ordered)
        if feature.method == "nearest_rank":
            rank = max(1, math.ceil(round(feature.q * n / 100, 9)))
            return ordered[rank - 1]
        h = feature.q / 100 * (n - 1)
        i = int(h)
        if i + 1 >= n:
            return float(ordered[i])
        return ordered[i] + (h - i) * (ordered[i + 1] - ordered[i])
    raise NotImplementedError(kind)


def ratio(numerator: Any, denominator: Any) -> Any:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass
class KeyOracle:
    """The expected behaviour of one key.

    Tumbling, hopping and session windows are made of the key's events, not of a feature's
    inputs: every applied event of the key is in the windows of each such spec (a window
    ``[start, end)`` that holds it, the session of its spec it opens or extends), and a close
    or a correction carries every feature of the spec, each over its own inputs among the
    window's events.

    With ``idle`` (seconds), the key's clock is a function of the wall clock alone: at each
    ``feed`` and ``vector`` (given the wall time), a key quiet for at least ``idle`` has its
    clock moved to ``latest + (quiet - idle)``, its due windows closed, and if nothing is left
    to come, its state dropped (counted in ``expired``): its next event starts afresh.
    """

    features: list[Any]
    ooo: int
    lateness: int
    policy: str
    horizon: int
    emit: str
    idle: float | None = None
    applied: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    clock: int | None = None
    #: the greatest event time applied, and the wall time of the last event applied
    latest: int = 0
    seen: float = 0.0
    #: emitted pane windows: (window spec, start)
    emitted: set[tuple[Any, int]] = field(default_factory=set)
    #: session specs: the arrival indexes of the events in sessions that have closed
    closed_events: dict[Any, set[int]] = field(default_factory=dict)
    #: emit="close": window spec -> (end, values of its features) of its newest emitted window
    finals: dict[Any, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    out: list[tuple[str, int, tuple[int, int] | None, dict[str, Any]]] = field(default_factory=list)
    dropped: int = 0
    side: int = 0
    applied_late: int = 0
    expired: int = 0

    @property
    def windowed(self) -> list[Any]:
        return [f for f in self.features if f.type_name != "ratio"]

    @property
    def frames(self) -> dict[Any, list[Any]]:
        """Tumbling, hopping and session specs -> their features."""
        frames: dict[Any, list[Any]] = {}
        for feature in self.windowed:
            if feature.window.type_name != "sliding":
                frames.setdefault(feature.window, []).append(feature)
        return frames

    def feed(self, index: int, t: int, ev: dict[str, Any], wall: float = 0.0) -> None:
        self.advance(wall)
        horizon = self.horizon if self.policy == "update" else 0
        if self.clock is not None:
            wm = self.clock - self.ooo
            if t < wm - self.lateness:
                if self.policy == "drop":
                    self.dropped += 1
                    return
                if self.policy == "side_output":
                    self.side += 1
                    return
                if t < wm - self.lateness - horizon:
                    self.dropped += 1
                    return
                self.applied_late += 1
        wm_before = None if self.clock is None else self.clock - self.ooo
        self.clock = t if self.clock is None else max(self.clock, t)
        self.latest = t if not self.applied else max(self.latest, t)
        self.seen = wall
        self.applied.append((t, index, ev))
        late: dict[tuple[str, tuple[int, int]], dict[str, Any]] = {}
        for window, features in self.frames.items():
            if window.type_name == "session":
                self._late_session(window, features, index, late)
            else:
                self._late_panes(window, features, t, wm_before, late)
        pending: dict[tuple[int, int], dict[str, Any]] = {}
        for (kind, win), values in late.items():
            if kind == "close":  # emitted with the closes of this event, merged by window
                pending.setdefault(win, {}).update(values)
                continue
            self._with_ratios(values)
            self.out.append((kind, win[1], win, values))
        self._close(pending)
        if self.emit == "update":
            self.out.append(("update", t, None, self._vector()))

    def advance(self, wall: float) -> None:
        """Move the clock of a key quiet for ``idle`` to where wall time has taken it."""
        if self.idle is None or self.clock is None or wall - self.seen < self.idle:
            return
        target = self.latest + int(round((wall - self.seen - self.idle) * 1000, 3))
        if target > self.clock:
            self.clock = target
            self._close({})
        if self._empty():
            self.expired += 1
            self.applied = []
            self.clock = None
            self.emitted = set()
            self.closed_events = {}
            self.finals = {}

    def _empty(self) -> bool:
        """Whether nothing of the key is still to come: every sliding window empty, every
        window closed and past the correction horizon."""
        assert self.clock is not None
        clock, wm = self.clock, self.clock - self.ooo
        horizon = self.horizon if self.policy == "update" else 0
        for feature in self.windowed:
            window = feature.window
            if window.type_name == "sliding" and any(
                t > clock - window.size_ms for t, _ in _inputs(feature, self.applied)
            ):
                return False
        for window in self.frames:
            if window.type_name == "session":
                for session in self._sessions(window):
                    if session[-1][0] + window.gap_ms + self.lateness + horizon > wm:
                        return False
            else:
                size, hop = window.size_ms, window.hop_ms
                purged = (wm - self.lateness - size - horizon) // hop
                if any(t // hop > purged for t, _, _ in self.applied):
                    return False
        return True

    def _values(self, features: list[Any], events: list[Any]) -> dict[str, Any]:
        return {f.name: aggregate(f, _inputs(f, events)) for f in features}

    def _late_panes(
        self,
        window: Any,
        features: list[Any],
        t: int,
        wm_before: int | None,
        late: dict[Any, dict[str, Any]],
    ) -> None:
        if wm_before is None:
            return
        size, hop = window.size_ms, window.hop_ms
        for k in range((t - size) // hop + 1, t // hop + 1):
            start, end = k * hop, k * hop + size
            if end + self.lateness > wm_before:
                continue  # still open
            values = self._values(features, self._in(start, end))
            kind = "correction" if (window, start) in self.emitted else "close"
            self.emitted.add((window, start))
            late.setdefault((kind, (start, end)), {}).update(values)
            self._final(window, end, values)

    def _sessions(self, window: Any) -> list[list[tuple[int, int, dict[str, Any]]]]:
        """The key's sessions of a spec: its events sorted by time, split where a gap >= gap."""
        gap = window.gap_ms
        sessions: list[list[tuple[int, int, dict[str, Any]]]] = []
        for item in sorted(self.applied, key=lambda a: (a[0], a[1])):
            if sessions and item[0] - sessions[-1][-1][0] < gap:
                sessions[-1].append(item)
            else:
                sessions.append([item])
        return sessions

    def _session_values(
        self, features: list[Any], session: list[tuple[int, int, dict[str, Any]]]
    ) -> dict[str, Any]:
        # arrival order within the session, for first/last ties
        return self._values(features, sorted(session, key=lambda item: item[1]))

    def _late_session(
        self, window: Any, features: list[Any], index: int, late: dict[Any, dict[str, Any]]
    ) -> None:
        """The session the event lands in: open (again), or past its close and emitted now,
        as a correction if any of its events had been emitted, else as a first close."""
        assert self.clock is not None
        wm = self.clock - self.ooo
        emitted = self.closed_events.setdefault(window, set())
        for session in self._sessions(window):
            ids = {i for _, i, _ in session}
            if index not in ids:
                continue
            start, end = session[0][0], session[-1][0] + window.gap_ms
            if end + self.lateness > wm:
                emitted.difference_update(ids)  # open again: it closes later
                return
            kind = "correction" if ids & emitted else "close"
            emitted.update(ids)
            values = self._session_values(features, session)
            late.setdefault((kind, (start, end)), {}).update(values)
            self._final(window, end, values)
            return

    def _close(self, pending: dict[tuple[int, int], dict[str, Any]]) -> None:
        assert self.clock is not None
        wm = self.clock - self.ooo
        due = pending
        for window, features in self.frames.items():
            if window.type_name == "session":
                closed = self.closed_events.setdefault(window, set())
                for session in self._sessions(window):
                    ids = {i for _, i, _ in session}
                    end = session[-1][0] + window.gap_ms
                    if not ids & closed and end + self.lateness <= wm:
                        closed.update(ids)
                        values = self._session_values(features, session)
                        due.setdefault((session[0][0], end), {}).update(values)
                        self._final(window, end, values)
                continue
            size, hop = window.size_ms, window.hop_ms
            starts = set()
            for t, _, _ in self.applied:
                for k in range((t - size) // hop + 1, t // hop + 1):
                    starts.add(k * hop)
            for start in sorted(starts):
                end = start + size
                if end + self.lateness <= wm and (window, start) not in self.emitted:
                    self.emitted.add((window, start))
                    values = self._values(features, self._in(start, end))
                    due.setdefault((start, end), {}).update(values)
                    self._final(window, end, values)
        for win in sorted(due, key=lambda w: (w[1], w[0])):
            values = due[win]
            self._with_ratios(values)
            self.out.append(("close", win[1], win, values))

    def _final(self, window: Any, end: int, values: dict[str, Any]) -> None:
        current = self.finals.get(window)
        if current is None or end >= current[0]:
            self.finals[window] = (end, dict(values))

    def _in(self, start: int, end: int) -> list[tuple[int, int, dict[str, Any]]]:
        """The key's applied events in ``[start, end)``, in arrival order."""
        return [a for a in self.applied if start <= a[0] < end]

    def vector(self, wall: float = 0.0) -> dict[str, Any]:
        """What a read at wall time ``wall`` shows."""
        self.advance(wall)
        return self._vector()

    def _vector(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        clock = self.clock
        for feature in self.windowed:
            window = feature.window
            kind = window.type_name
            if clock is None:
                values[feature.name] = aggregate(feature, [])
            elif kind == "sliding":
                items = [
                    (t, v)
                    for t, v in _inputs(feature, self.applied)
                    if clock - window.size_ms < t <= clock
                ]
                values[feature.name] = aggregate(feature, items)
            elif self.emit == "close":
                final = self.finals.get(window)
                values[feature.name] = final[1][feature.name] if final else aggregate(feature, [])
            elif kind in ("tumbling", "hopping"):
                size, hop = window.size_ms, window.hop_ms
                start = ((clock - size) // hop + 1) * hop
                values[feature.name] = aggregate(
                    feature, _inputs(feature, self._in(start, start + size))
                )
            else:
                wm = clock - self.ooo
                closed = self.closed_events.get(window, set())
                current = [
                    s
                    for s in self._sessions(window)
                    if not {i for _, i, _ in s} & closed
                    and s[-1][0] + window.gap_ms + self.lateness > wm
                ]
                values[feature.name] = (
                    self._session_values([feature], current[-1])[feature.name]
                    if current
                    else aggregate(feature, [])
                )
        self._with_ratios(values)
        return {f.name: values[f.name] for f in self.features if f.name in values}

    def _with_ratios(self, values: dict[str, Any]) -> None:
        for feature in self.features:
            if feature.type_name == "ratio":
                if feature.numerator in values and feature.denominator in values:
                    values[feature.name] = ratio(
                        values[feature.numerator], values[feature.denominator]
                    )
