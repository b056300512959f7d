"""The state of one window buffer of one key: what windowed features read their values from.

Features of a feature set that read the same input (field, condition, numeric or not) over the
same window share one *buffer*; :class:`Needs` says which statistics the buffer keeps for them.

- :class:`SlidingState` holds the events of a sliding window in time order (a deque) and keeps
  its statistics incrementally: running sums and moments subtract on eviction, min and max are
  monotonic deques, percentiles a sorted list, quantiles a sketch that forgets, top-k and
  distinct counts dicts of counts. Each event costs amortized O(1), or O(log w) with a sorted
  list; nothing rescans the window.
- :class:`Accumulator` only adds and merges: the state of one pane of a tumbling or hopping
  window, or of one session. A hopping window's value merges its ``size / hop`` panes.

Both answer the same questions (:data:`READERS`), so a feature's value is one function of
either. A user-defined aggregate (``runtime._spec.aggregate``) has a buffer of its own, whose
states are the subclasses :class:`CustomSlidingState` and :class:`CustomAccumulator`
(:func:`sliding_state` and :func:`accumulator` make the right one).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._keyed.custom import CustomCell, CustomRunner
from .._stats.quantiles import QuantileSketch, SortedValues
from .._stats.rolling import DistinctWindowCount, FrequentValues, RunningMoments

__all__ = [
    "READERS",
    "Accumulator",
    "CustomAccumulator",
    "CustomSlidingState",
    "Needs",
    "SlidingState",
    "WindowMoments",
    "accumulator",
    "check_value",
    "sliding_state",
    "value_reader",
]


@dataclass(frozen=True)
class Needs:
    """The statistics a buffer keeps, for the features that share it."""

    moments: bool = False
    extremes: bool = False
    ends: bool = False
    sorted: bool = False
    #: the relative accuracy of the quantile sketch, or None for no sketch
    sketch: float | None = None
    frequent: bool = False
    distinct: bool = False
    #: a user-defined aggregate's runner (its buffer holds nothing else), or None
    custom: CustomRunner | None = None

    @property
    def trackers(self) -> bool:
        """Whether a sliding window keeps any structure that adds and removes each value."""
        return bool(
            self.moments or self.sorted or self.sketch is not None or self.frequent or self.distinct
        )


def _entry_bytes(value: Any) -> int:
    return 64 + (sys.getsizeof(value) if type(value) is not int else 28)


class WindowMoments:
    """The variance of a sliding window, with O(1) ``add`` and ``remove``.

    It keeps the count and the sums of ``x - K`` and ``(x - K) ** 2`` for a shift ``K`` taken
    from the data (the shifted-data algorithm), so the subtraction that gives the variance does
    not cancel catastrophically when the mean is large against the spread. Integers stay
    integers, so a window of ints has an exact variance however many values passed through it.
    For floats, rounding accumulates with each add and remove; :meth:`rebuild` recomputes the
    sums from the values held. The sliding window calls it once ``w + 64`` values have left a
    window of ``w`` (amortized O(1)), so the error stays that of the last ``2 w + 128``
    operations or so, and whenever the sums have cancelled (:meth:`cancelled`: the values
    left are close together and far from the shift, so their variance would be mostly
    rounding).
    """

    __slots__ = ("mass", "n", "removed", "s1", "s2", "shift")

    def __init__(self) -> None:
        self.n = 0
        self.shift: Any = 0
        self.s1: Any = 0
        self.s2: Any = 0
        self.removed = 0
        #: the squared deviations added since the last rebuild: the scale of the rounding
        #: that the sums carry
        self.mass: Any = 0

    def add(self, x: Any) -> None:
        if not self.n:
            self.shift, self.s1, self.s2 = x, 0, 0
        d = x - self.shift
        self.s1 += d
        self.s2 += d * d
        self.mass += d * d
        self.n += 1

    def remove(self, x: Any) -> None:
        self.n -= 1
        self.removed += 1
        if not self.n:
            self.shift, self.s1, self.s2 = 0, 0, 0
            return
        d = x - self.shift
        self.s1 -= d
        self.s2 -= d * d

    def rebuild(self, values: Iterable[Any]) -> None:
        """Recompute from the values held, shifted by their first value."""
        self.n = 0
        self.removed = 0
        self.shift, self.s1, self.s2, self.mass = 0, 0, 0, 0
        for x in values:
            self.add(x)

    def cancelled(self) -> bool:
        """Whether the float sums may be mostly rounding: the squared spread they give is
        below a billionth of the squared deviations that went through them since the last
        rebuild (never for integers, whose sums are exact)."""
        s1, s2, n = self.s1, self.s2, self.n
        if type(s2) is int or not n:
            return False
        return bool(s2 - s1 * s1 / n < 1e-9 * self.mass)

    def variance(self, ddof: int) -> float | None:
        n = self.n
        if n <= ddof:
            return None
        s1, s2 = self.s1, self.s2
        if type(s1) is int and type(s2) is int:
            # exact: (n * s2 - s1 ** 2) / (n * (n - ddof)), one correctly rounded division
            try:
                return (n * s2 - s1 * s1) / (n * (n - ddof))
            except OverflowError:
                return None  # beyond a float's range
        q = s2 - s1 * s1 / n
        return (q if q > 0 else 0.0) / (n - ddof)


class _ValueReaders:
    """The readers of the structures both states keep alike (``values``, ``sketch``,
    ``frequent``, ``distinct``), for the features that need them."""

    __slots__ = ()

    values: SortedValues | None
    sketch: QuantileSketch | None
    frequent: FrequentValues | None
    distinct: DistinctWindowCount | None

    def percentile(self, q: float, method: Any) -> Any:
        assert self.values is not None
        return self.values.percentile(q, method)

    def quantile(self, q: float) -> float | None:
        assert self.sketch is not None
        return self.sketch.quantile(q)

    def top(self, k: int) -> list[list[Any]]:
        assert self.frequent is not None
        return [[value, n] for value, n in self.frequent.top(k)]

    def distinct_count(self) -> int:
        assert self.distinct is not None
        return self.distinct.distinct()


class SlidingState(_ValueReaders):
    """A sliding window's events in time order, with incremental statistics.

    ``add(t, v)`` inserts in time order: O(1) for an event at or after the newest, O(d) for one
    ``d`` places from the end. ``evict(cutoff)`` drops the events with time ``<= cutoff`` from
    the front. Equal times keep their arrival order, so ``first`` is the earliest event (the
    first to arrive among equals) and ``last`` the latest (the last to arrive).
    """

    __slots__ = (
        "distinct",
        "frequent",
        "highs",
        "items",
        "lows",
        "moments",
        "numeric",
        "plain",
        "removed",
        "scores",
        "sketch",
        "sum",
        "trackers",
        "values",
    )

    def __init__(self, needs: Needs, numeric: bool = False) -> None:
        self.items: deque[tuple[int, Any]] = deque()
        #: whether it keeps the sum of its values (numbers; for a sum, a mean or a zscore)
        self.numeric = numeric
        #: zscore feature name -> the z-score of the latest value scored (None: no zscore)
        self.scores: dict[str, float | None] | None = None
        self.sum: Any = 0
        self.moments = WindowMoments() if needs.moments else None
        #: monotonic deques of (t, v): values increasing (lows) or decreasing (highs)
        self.lows: deque[tuple[int, Any]] | None = deque() if needs.extremes else None
        self.highs: deque[tuple[int, Any]] | None = deque() if needs.extremes else None
        self.values = SortedValues() if needs.sorted else None
        self.sketch = QuantileSketch(needs.sketch) if needs.sketch is not None else None
        self.frequent = FrequentValues() if needs.frequent else None
        self.distinct = DistinctWindowCount() if needs.distinct else None
        trackers = needs.trackers
        #: the structures that add and remove each value, so a plain count or sum checks none
        self.trackers: tuple[Any, ...] = ()
        #: no structure beside the deque and the sum: the engine appends in line
        self.plain = not trackers and not needs.extremes
        #: values evicted since the sums were last recomputed from the values held
        self.removed = 0
        if trackers:
            held = (self.moments, self.values, self.sketch, self.frequent, self.distinct)
            self.trackers = tuple([tracker for tracker in held if tracker is not None])

    def __len__(self) -> int:
        return len(self.items)

    def add(self, t: int, v: Any) -> None:
        """Add an event; ``check_value`` it first when the buffer counts or sketches values."""
        if self.removed and self.removed >= len(self.items) + 64:
            self._recompute()
        items = self.items
        if not items or t >= items[-1][0]:
            items.append((t, v))
        else:
            i = len(items) - 1
            while i > 0 and items[i - 1][0] > t:
                i -= 1
            items.insert(i, (t, v))
        if self.numeric:
            self.sum += v
        for tracker in self.trackers:
            tracker.add(v)
        moments = self.moments
        if moments is not None and moments.removed and moments.n > 1 and moments.cancelled():
            # only removals leave residue: sums built by adds alone are as good as a rebuild
            moments.rebuild([x for _, x in items])
        if self.lows is not None:
            _monotonic_insert(self.lows, t, v, _ge)
            _monotonic_insert(self.highs, t, v, _le)  # type: ignore[arg-type]

    def evict(self, cutoff: int) -> None:
        """Drop the events with time ``<= cutoff``."""
        items = self.items
        if not items or items[0][0] > cutoff:
            return
        trackers = self.trackers
        popleft = items.popleft
        if self.numeric:
            total = self.sum
            held = len(items)
            while items and items[0][0] <= cutoff:
                v = popleft()[1]
                total -= v
                for tracker in trackers:
                    tracker.remove(v)
            # an empty window sums to exactly zero, whatever rounding the subtractions left
            self.sum = total if items else 0
            self.removed += held - len(items)
        elif trackers:
            while items and items[0][0] <= cutoff:
                v = popleft()[1]
                for tracker in trackers:
                    tracker.remove(v)
        else:
            while items and items[0][0] <= cutoff:
                popleft()
        if not items:
            self.removed = 0
            if self.moments is not None:
                self.moments.rebuild(())
            if self.scores:
                self.scores = None
        lows, highs = self.lows, self.highs
        if lows is not None and highs is not None:
            while lows and lows[0][0] <= cutoff:
                lows.popleft()
            while highs and highs[0][0] <= cutoff:
                highs.popleft()

    # -- readers ---------------------------------------------------------------------------
    def count(self) -> int:
        return len(self.items)

    def total(self) -> Any:
        return self.sum

    def mean(self) -> float | None:
        n = len(self.items)
        return self.sum / n if n else None

    def _recompute(self) -> None:
        """Recompute the sum and the moments from the values held: the rounding that adds and
        subtracts of floats left is gone. Called by ``add`` (never by a read, so that values
        do not depend on when reads happen) once ``w + 64`` values left a window of ``w``:
        amortized O(1)."""
        held = [v for _, v in self.items]
        if self.numeric:
            self.sum = sum(held)
        if self.moments is not None:
            self.moments.rebuild(held)
        self.removed = 0

    def variance(self, ddof: int, *, repair: bool = False) -> float | None:
        """The variance of the values held. If the shifted sums have cancelled (the values
        are now close together, far from the value they were shifted by), it is recomputed
        from the values held: stored with ``repair`` (the event path), else only returned."""
        moments = self.moments
        assert moments is not None
        variance = moments.variance(ddof)
        if variance is not None and moments.cancelled():
            if repair:
                moments.rebuild([v for _, v in self.items])
                return moments.variance(ddof)
            exact = WindowMoments()
            exact.rebuild([v for _, v in self.items])
            return exact.variance(ddof)
        return variance

    def minimum(self) -> Any:
        return self.lows[0][1] if self.lows else None

    def maximum(self) -> Any:
        return self.highs[0][1] if self.highs else None

    def first(self) -> Any:
        return self.items[0][1] if self.items else None

    def last(self) -> Any:
        return self.items[-1][1] if self.items else None

    def nbytes(self) -> int:
        """Estimated bytes held: the deque's entries and the structures beside them."""
        n = len(self.items)
        if not n:
            return 200
        per = _entry_bytes(self.items[-1][1])
        extra = 0
        if self.lows is not None and self.highs is not None:
            extra += (len(self.lows) + len(self.highs)) * 72
        if self.values is not None:
            extra += n * 8
        if self.frequent is not None or self.distinct is not None:
            extra += n * 100
        if self.sketch is not None:
            extra += len(self.sketch._sketch._store.bins) * 8
        return 200 + n * per + extra


def _ge(a: Any, b: Any) -> bool:
    return bool(a >= b)


def _le(a: Any, b: Any) -> bool:
    return bool(a <= b)


def _monotonic_insert(
    dq: deque[tuple[int, Any]], t: int, v: Any, dominated: Callable[[Any, Any], bool]
) -> None:
    """Insert ``(t, v)`` into a monotonic deque of window candidates, in time order.

    An entry is a candidate while no entry at least as late has a value at least as good
    (``dominated(old, new)``: old is no better). For an event in time order this is the usual
    pop-from-the-back; for an out-of-order one, the entries it dominates are the run just before
    its place, and it is itself dominated if the first later entry is at least as good.
    """
    end = len(dq)
    if not end or t >= dq[-1][0]:
        while dq and dominated(dq[-1][1], v):
            dq.pop()
        dq.append((t, v))
        return
    place = end
    while place > 0 and dq[place - 1][0] > t:
        place -= 1
    if dominated(v, dq[place][1]):
        return  # a later entry is at least as good: the new one never answers
    while place > 0 and dominated(dq[place - 1][1], v):
        del dq[place - 1]
        place -= 1
    dq.insert(place, (t, v))


class Accumulator(_ValueReaders):
    """The statistics of one pane or session: add and merge, never remove."""

    __slots__ = (
        "distinct",
        "first_t",
        "first_v",
        "frequent",
        "high",
        "last_t",
        "last_v",
        "low",
        "moments",
        "n",
        "sketch",
        "sum",
        "values",
    )

    def __init__(self, needs: Needs) -> None:
        self.n = 0
        self.sum: Any = 0
        self.moments = RunningMoments() if needs.moments else None
        self.low: Any = None
        self.high: Any = None
        self.first_t = -1
        self.first_v: Any = None
        self.last_t = -1
        self.last_v: Any = None
        self.values = SortedValues() if needs.sorted else None
        self.sketch = QuantileSketch(needs.sketch) if needs.sketch is not None else None
        self.frequent = FrequentValues() if needs.frequent else None
        self.distinct = DistinctWindowCount() if needs.distinct else None

    def __len__(self) -> int:
        return self.n

    def add(self, t: int, v: Any, numeric: bool, needs: Needs) -> None:
        self.n += 1
        if numeric:
            self.sum += v
        if self.moments is not None:
            self.moments.add(v)
        if needs.extremes:
            if self.low is None or v < self.low:
                self.low = v
            if self.high is None or v > self.high:
                self.high = v
        if self.first_t < 0 or t < self.first_t:
            self.first_t, self.first_v = t, v
        if t >= self.last_t:
            self.last_t, self.last_v = t, v
        if self.values is not None:
            self.values.add(v)
        if self.sketch is not None:
            self.sketch.add(v)
        if self.frequent is not None:
            self.frequent.add(v)
        if self.distinct is not None:
            self.distinct.add(v)

    def merge(self, other: Accumulator, needs: Needs) -> None:
        """Fold ``other`` in. Panes merge oldest first, so that ``first`` and ``last`` keep
        their arrival order among equal times."""
        if not other.n:
            return
        self.n += other.n
        self.sum += other.sum
        if self.moments is not None and other.moments is not None:
            self.moments.merge(other.moments)
        if needs.extremes:
            if self.low is None or other.low < self.low:
                self.low = other.low
            if self.high is None or other.high > self.high:
                self.high = other.high
        if self.first_t < 0 or other.first_t < self.first_t:
            self.first_t, self.first_v = other.first_t, other.first_v
        if other.last_t >= self.last_t:
            self.last_t, self.last_v = other.last_t, other.last_v
        if self.values is not None and other.values is not None:
            self.values.merge(other.values)
        if self.sketch is not None and other.sketch is not None:
            self.sketch.merge(other.sketch)
        if self.frequent is not None and other.frequent is not None:
            self.frequent.merge(other.frequent)
        if self.distinct is not None and other.distinct is not None:
            self.distinct.merge(other.distinct)

    # -- readers ---------------------------------------------------------------------------
    def count(self) -> int:
        return self.n

    def total(self) -> Any:
        return self.sum

    def mean(self) -> float | None:
        return self.sum / self.n if self.n else None

    def variance(self, ddof: int) -> float | None:
        assert self.moments is not None
        return self.moments.variance(ddof)

    def minimum(self) -> Any:
        return self.low

    def maximum(self) -> Any:
        return self.high

    def first(self) -> Any:
        return self.first_v

    def last(self) -> Any:
        return self.last_v

    def nbytes(self) -> int:
        size = 240
        if self.values is not None:
            size += len(self.values) * 40
        if self.frequent is not None or self.distinct is not None:
            size += self.n * 100
        if self.sketch is not None:
            size += len(self.sketch._sketch._store.bins) * 8
        return size


class SlidingStacks:
    """Two-stacks sliding aggregation (as in Tangwongsan et al.'s survey of sliding-window
    aggregation) for an aggregate with ``merge`` and no ``remove``: amortized O(1) merges per
    event instead of a fold of the window.

    The window's values are split in two: the oldest ``len(front)`` ones, held in ``front`` as
    suffix states (``front[-1]`` is the state of all of them, ``front[-2]`` of all but the
    oldest, ...), and the rest, folded into ``back`` (``n_back`` values). Evicting the oldest
    value pops ``front``; once ``front`` is used up, the values held are *flipped* into new
    suffix states (each value is flipped once). A read merges ``front[-1]`` with ``back``.

    A checkpoint holds none of it (``valid`` is False when restored): the states are rebuilt
    from the window's values on first use, so the aggregate's states need no ``dump`` here.
    """

    __slots__ = ("back", "front", "n_back", "valid")

    def __init__(self, back: Any = None, valid: bool = True) -> None:
        self.front: list[Any] = []
        self.back = back
        self.n_back = 0
        #: False: rebuild from the window's values before use
        self.valid = valid


def reduce_stacks(stacks: SlidingStacks) -> tuple[()]:
    """A checkpoint holds no stacks (``runtime._checkpoints.codec``)."""
    return ()


def rebuild_stacks(data: Any) -> SlidingStacks:
    return SlidingStacks(valid=False)


class CustomSlidingState(SlidingState):
    """A sliding window's events, and a user-defined aggregate's state of their values.

    - With ``remove``, the state follows each value in (``update``) and each evicted one out
      (``remove``): O(1) each. A ``remove`` that raises makes the state ``stale``: it is
      folded again from the values held.
    - With ``merge`` and no ``remove``, :class:`SlidingStacks`: amortized O(1) ``update`` and
      ``merge`` calls per event, a few states per value held.
    - With neither, the state is the fold of the window's values in event-time order: kept up
      to date by values that arrive in order, and ``stale`` once a value leaves; the next read
      or event folds the window again (O(w)).

    A value that arrives out of order and belongs before others still held makes the state
    stale (or the stacks invalid) after a check that ``update`` takes it; the next read
    rebuilds. ``update`` is called on a value before anything changes, so one that raises
    leaves the window as it was.
    """

    __slots__ = ("custom", "stacks", "stale")

    def __init__(self, needs: Needs, numeric: bool = False) -> None:
        super().__init__(needs, numeric)
        runner = needs.custom
        assert runner is not None
        #: the aggregate's state of the values held (while not ``stale``); unused by stacks
        self.custom: CustomCell = runner.new_cell()
        self.stale = False
        self.plain = False
        #: the two stacks of an aggregate with merge and no remove (else None)
        self.stacks = (
            SlidingStacks(runner.empty()) if runner.merges and not runner.removes else None
        )

    def _runner(self) -> CustomRunner:
        runner = self.custom.runner
        assert runner is not None, "a restored window state is attached before use"
        return runner

    def invalidate(self) -> None:
        """Rebuild the state from the values held when next used (they were replaced)."""
        self.stale = True
        if self.stacks is not None:
            self.stacks.valid = False

    def refold(self) -> None:
        """The state again, from the values held."""
        values = [v for _, v in self.items]
        stacks = self.stacks
        if stacks is not None:
            runner = self._runner()
            stacks.front = _suffixes(runner, values)
            stacks.back, stacks.n_back, stacks.valid = runner.empty(), 0, True
            return
        self.custom.state = self._runner().fold(values)
        self.stale = False

    def add(self, t: int, v: Any) -> None:
        """Add an event; an ``update`` that raises leaves the window as it was."""
        runner = self._runner()
        items = self.items
        stacks = self.stacks
        if stacks is not None:
            if not stacks.valid:
                self.refold()
            front = len(stacks.front)
            if not front or items[front - 1][0] <= t:
                # after the front's values: folded into the back (in arrival order)
                stacks.back = runner.update(stacks.back, v)
                stacks.n_back += 1
            else:
                runner.update(runner.empty(), v)  # refused now, not at the rebuild
                stacks.valid = False
            super().add(t, v)
            return
        cell = self.custom
        if self.stale:
            self.refold()
        if not items or t >= items[-1][0] or runner.removes:
            cell.state = runner.update(cell.state, v)
        else:
            values = [x for _, x in items]
            i = len(items) - 1
            while i > 0 and items[i - 1][0] > t:
                i -= 1
            values.insert(i, v)
            cell.state = runner.fold(values)
        super().add(t, v)

    def evict(self, cutoff: int) -> None:
        items = self.items
        if not items or items[0][0] > cutoff:
            return
        runner = self._runner()
        stacks = self.stacks
        if stacks is not None:
            held = len(items)
            super().evict(cutoff)
            gone = held - len(items)
            if not items:
                stacks.front, stacks.back, stacks.n_back = [], runner.empty(), 0
                stacks.valid = True
            elif stacks.valid:
                front = stacks.front
                if gone <= len(front):
                    del front[len(front) - gone :]
                else:
                    try:  # the front is used up: flip the values left
                        self.refold()
                    except Exception:
                        stacks.valid = False  # a read rebuilds, and reports what raises
            return
        cell = self.custom
        if runner.removes and not self.stale:
            state = cell.state
            try:
                for t, v in items:
                    if t > cutoff:
                        break
                    state = runner.remove(state, v)
                cell.state = state
            except Exception:
                self.stale = True  # folded again from the values left
        else:
            self.stale = True
        super().evict(cutoff)
        if not items:
            cell.state = runner.empty()
            self.stale = False

    def custom_value(self) -> Any:
        runner = self._runner()
        stacks = self.stacks
        if stacks is not None:
            if not stacks.valid:
                self.refold()
            if not stacks.front:
                return runner.value(stacks.back)
            if not stacks.n_back:
                return runner.value(stacks.front[-1])
            # neither stack's state changes: a's copy takes b
            merged = runner.merge(runner.merge(runner.empty(), stacks.front[-1]), stacks.back)
            return runner.value(merged)
        if self.stale:
            self.refold()
        return runner.value(self.custom.state)

    def nbytes(self) -> int:
        hint = getattr(self._runner().aggregate, "state_bytes", None)
        size = hint if isinstance(hint, int) else 100
        states = 1 + (len(self.stacks.front) if self.stacks is not None else 0)
        return super().nbytes() + size * states


def _suffixes(runner: CustomRunner, values: list[Any]) -> list[Any]:
    """The suffix states of ``values`` (oldest first): the last is the state of them all, the
    one before of all but the first, ... Each is a state of its own (a copy by ``merge`` into
    an empty state, then ``update``), as mutable states are changed in place."""
    front: list[Any] = []
    state = None
    for v in reversed(values):
        state = runner.update(
            runner.empty() if state is None else runner.merge(runner.empty(), state), v
        )
        front.append(state)
    return front


class CustomAccumulator(Accumulator):
    """The state of one pane or session for a user-defined aggregate.

    An aggregate with ``merge`` merges states; one without keeps the values (``held``, in
    arrival order) and folds the other's into its state with ``update``. A ``merge`` (or a
    fold) that raises makes the accumulator ``broken``: its value is None from then on.
    """

    __slots__ = ("broken", "custom", "held")

    def __init__(self, needs: Needs) -> None:
        super().__init__(needs)
        runner = needs.custom
        assert runner is not None
        self.custom: CustomCell = runner.new_cell()
        #: the values added, for an aggregate without merge (else None)
        self.held: list[Any] | None = None if runner.merges else []
        self.broken = False

    def _runner(self) -> CustomRunner:
        runner = self.custom.runner
        assert runner is not None, "a restored window state is attached before use"
        return runner

    def add(self, t: int, v: Any, numeric: bool, needs: Needs) -> None:
        """Add a value; an ``update`` that raises leaves the accumulator as it was."""
        if not self.broken:
            cell = self.custom
            cell.state = self._runner().update(cell.state, v)
        if self.held is not None:
            self.held.append(v)
        super().add(t, v, numeric, needs)

    def merge(self, other: Accumulator, needs: Needs) -> None:
        if not other.n:
            return
        assert isinstance(other, CustomAccumulator)
        runner = self._runner()
        cell = self.custom
        if other.broken:
            self.broken = True
        elif not self.broken:
            try:
                if other.held is None or self.held is None:
                    cell.state = runner.merge(cell.state, other.custom.state)
                else:
                    state = cell.state
                    for v in other.held:
                        state = runner.update(state, v)
                    cell.state = state
            except Exception:
                self.broken = True
        if self.held is not None and other.held is not None:
            self.held.extend(other.held)
        super().merge(other, needs)

    def custom_value(self) -> Any:
        if self.broken:
            return None
        return self._runner().value(self.custom.state)

    def nbytes(self) -> int:
        hint = getattr(self._runner().aggregate, "state_bytes", None)
        size = super().nbytes() + (hint if isinstance(hint, int) else 100)
        return size + (len(self.held) * 40 if self.held is not None else 0)


def sliding_state(needs: Needs, numeric: bool = False) -> SlidingState:
    """A new sliding window state for a buffer with ``needs``."""
    if needs.custom is not None:
        return CustomSlidingState(needs, numeric)
    return SlidingState(needs, numeric)


def accumulator(needs: Needs) -> Accumulator:
    """A new pane or session accumulator for a buffer with ``needs``."""
    if needs.custom is not None:
        return CustomAccumulator(needs)
    return Accumulator(needs)


def check_value(needs: Needs, v: Any) -> None:
    """Raise for a value a buffer with ``needs`` would refuse, before anything changes:
    ``TypeError`` for an unhashable value where values are counted (``top_k``,
    ``distinct_count``). A quantile sketch refuses no number that reaches it (the engine has
    refused NaN, infinities and ints beyond a float's range): it counts a magnitude beyond its
    bins as its largest, so such a value never costs the features sharing its buffer."""
    if needs.frequent or needs.distinct:
        hash(v)


def _std(state: Any, ddof: int) -> float | None:
    variance = state.variance(ddof)
    return None if variance is None else variance**0.5


#: How each feature type reads its value from a buffer state (sliding or accumulator).
READERS: dict[str, Callable[[Any, Any], Any]] = {
    "count": lambda s, f: s.count(),
    "sum": lambda s, f: s.total(),
    "mean": lambda s, f: s.mean(),
    "min": lambda s, f: s.minimum(),
    "max": lambda s, f: s.maximum(),
    "first": lambda s, f: s.first(),
    "last": lambda s, f: s.last(),
    "variance": lambda s, f: s.variance(f.ddof),
    "std": lambda s, f: _std(s, f.ddof),
    "distinct_count": lambda s, f: s.distinct_count(),
    "percentile": lambda s, f: s.percentile(f.q, f.method),
    "quantile": lambda s, f: s.quantile(f.q),
    "top_k": lambda s, f: s.top(f.k),
    "zscore": lambda s, f: s.scores.get(f.name) if s.scores else None,
    "custom": lambda s, f: s.custom_value(),
}

#: The value of each feature type over an empty window.
EMPTY: dict[str, Any] = {"count": 0, "sum": 0, "distinct_count": 0, "top_k": []}


def value_reader(feature: Any, runner: CustomRunner | None = None) -> Callable[[Any], Any]:
    """The function from a buffer state (or None: an empty window) to ``feature``'s value;
    ``runner``: a custom feature's (the value of an empty state is its aggregate's)."""
    read = READERS[feature.type_name]
    empty = EMPTY.get(feature.type_name)
    if runner is not None:
        empty_value = runner.empty_value

        def custom(state: Any) -> Any:
            if state is None or not len(state):
                return empty_value()
            return read(state, feature)

        return custom

    def value(state: Any) -> Any:
        if state is None or not len(state):
            return list(empty) if isinstance(empty, list) else empty
        return read(state, feature)

    return value
