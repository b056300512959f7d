"""Per-window statistics: small state objects that windows add values to and evict them from.

Every class here follows one protocol, River's ``update``/``get`` shape adapted to windows:

- ``add(...)`` takes one value (River's ``update``, named to pair with ``remove``);
- ``remove(x)`` undoes one earlier ``add(x)`` where the maths allows, for sliding windows that
  evict (``MonotonicExtremes`` evicts by time instead: ``evict_until``);
- ``merge(other)`` folds another partial state into this one in place, for hopping windows built
  from panes and for re-sharding; ``other`` is not modified;
- ``copy()``, and ``len()``: the number of values held;
- ``to_record()`` returns plain data (dicts, lists, numbers, and the values held as they are)
  that ``msgspec`` encodes, and ``Class.from_record(record)`` rebuilds an equal state, for
  checkpoints. Untyped JSON turns ``bytes`` values into base64 strings: use msgpack, or a typed
  decoder, where values may be bytes.

There is no single ``get()``: each state answers several questions (``mean()``, ``variance()``,
``min()``, ``top(k)``, ...), so each has its own method.

Numeric states expect finite ``int`` or ``float`` values, as the kernel's ``coerce_number``
delivers them; they do not check each value on the hot path. ``remove(x)`` must be given a value
that was added and not yet removed: the dict-based states raise ``ValueError`` otherwise,
``RunningMoments`` cannot tell.

The quantile states (``SortedValues``, ``QuantileSketch``) live in ``runtime._stats.quantiles``.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping
from typing import Any, Self

from sortedcontainers import SortedList  # type: ignore[import-untyped]

__all__ = [
    "DistinctWindowCount",
    "FrequentValues",
    "MonotonicExtremes",
    "RunningMoments",
    "order_key",
]


def order_key(value: Any) -> tuple[Any, ...]:
    """A total order over the values a window may hold, that depends on the value alone.

    Real numbers (``bool``, ``int``, ``float`` other than NaN, ``Fraction``) come first in numeric
    order, then ``str``, then ``bytes``, each in its natural order; every other value sorts after
    them by its type's qualified name and then its ``repr``. Two distinct values can only get the
    same key in that last group (two NaNs, or objects whose ``repr`` hides their difference).
    """
    if isinstance(value, numbers.Real) and value == value:
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, bytes):
        return (2, value)
    kind = type(value)
    return (3, f"{kind.__module__}.{kind.__qualname__}", repr(value))


def _hashable(value: Any) -> Any:
    """A value decoded from a record: msgspec gives tuples back as lists, which are unhashable."""
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    return value


def _positive_count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"record field {field!r} must hold counts >= 1, got {value!r}")
    return value


class RunningMoments:
    """Count, sum, mean, variance and standard deviation, with O(1) ``add``, ``remove`` and
    ``merge``.

    While every value held is an ``int``, the state is exact: the sum and the sum of squares
    are Python ints, and the variance is one correctly rounded division of exact integers, so
    ints beyond 2**53 keep their low digits (the sliding window's ``WindowMoments`` gives the
    same float). The first ``float`` turns the state into Welford's online algorithm for good
    (until it is emptied); ``remove`` is then its exact algebraic inverse, and ``merge`` is
    Chan et al.'s pairwise formula. The mean is ``sum / count``, as for the ``mean``
    aggregate, so it is exact for integers while their sum fits a float's precision.

    Floating-point caveat: adding and later subtracting a value does not always restore the
    earlier float bit for bit, so after many evictions the sum, mean and variance carry a rounding
    error that grows with the number of operations and with the magnitude of the values that
    passed through (not only those still held). It stays near ``ops * 1e-16`` relative to the
    largest value (squared, for the variance) seen, which is negligible for real data; a value of
    ``1e16`` passing through a window of small values will, however, leave its mark on the sum.
    A variance that rounding drives below zero is clamped to zero, and the state resets exactly
    whenever it becomes empty. Integer sums stay exact.
    """

    __slots__ = ("_mean", "_n", "_q", "_sum")

    def __init__(self) -> None:
        self._n = 0
        self._sum: float = 0
        #: Welford's running mean and sum of squared deviations from it (M2); while every
        #: value is an int, ``_q`` is instead the exact int sum of squares (its type says
        #: which) and ``_mean`` is unused
        self._mean = 0.0
        self._q: float = 0

    def __len__(self) -> int:
        return self._n

    def _welford(self) -> tuple[float, float]:
        """Welford's mean and M2 of the values held, converted from the exact form if need be
        (each correctly rounded; ``OverflowError`` beyond a float's range)."""
        q, n = self._q, self._n
        if q.__class__ is float:
            return self._mean, q
        if not n:
            return 0.0, 0.0
        total = self._sum
        return total / n, (n * q - total * total) / n

    def add(self, x: float) -> None:
        q = self._q
        if q.__class__ is int:
            if x.__class__ is int:
                self._q = q + x * x
                self._n += 1
                self._sum += x
                return
            self._mean, self._q = self._welford()
        n = self._n + 1
        d = x - self._mean
        self._mean += d / n
        self._q += d * (x - self._mean)
        self._n = n
        self._sum += x

    def remove(self, x: float) -> None:
        """Undo one ``add(x)``. Raises ``ValueError`` when empty."""
        n = self._n - 1
        if n <= 0:
            if n < 0:
                raise ValueError("remove from an empty RunningMoments")
            # Empty again: start from exact zeros rather than from accumulated rounding.
            self._n, self._sum, self._mean, self._q = 0, 0, 0.0, 0
            return
        if self._q.__class__ is int:
            if x.__class__ is int:
                self._q -= x * x
                self._n = n
                self._sum -= x
                return
            self._mean, self._q = self._welford()
        mean = self._mean
        earlier = mean - (x - mean) / n
        q = self._q - (x - earlier) * (x - mean)
        self._q = q if q > 0.0 else 0.0
        self._mean = earlier
        self._n = n
        self._sum -= x

    def merge(self, other: RunningMoments) -> None:
        if not other._n:
            return
        if not self._n:
            self._n, self._sum, self._mean, self._q = other._n, other._sum, other._mean, other._q
            return
        if self._q.__class__ is int and other._q.__class__ is int:
            self._q += other._q
            self._sum += other._sum
            self._n += other._n
            return
        mean_a, q_a = self._welford()
        mean_b, q_b = other._welford()
        n = self._n + other._n
        d = mean_b - mean_a
        self._mean = mean_a + d * other._n / n
        self._q = q_a + q_b + d * d * self._n * other._n / n
        self._sum += other._sum
        self._n = n

    def copy(self) -> RunningMoments:
        clone = RunningMoments()
        clone.merge(self)
        return clone

    def count(self) -> int:
        return self._n

    def sum(self) -> float:
        return self._sum

    def mean(self) -> float | None:
        """``None`` when empty."""
        return self._sum / self._n if self._n else None

    def variance(self, ddof: int = 1) -> float | None:
        """The sample variance (``ddof=1``, the default, as ``statistics.variance``) or the
        population variance (``ddof=0``, as ``statistics.pvariance``).

        ``None`` until there are more than ``ddof`` values. Raises ``ValueError`` unless ``ddof``
        is 0 or 1.
        """
        if ddof != 0 and ddof != 1:
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        n, q = self._n, self._q
        if n <= ddof:
            return None
        if q.__class__ is float:
            return q / (n - ddof)
        total = self._sum
        try:
            # exact: one correctly rounded division, as WindowMoments.variance
            return (n * q - total * total) / (n * (n - ddof))
        except OverflowError:
            return None  # beyond a float's range

    def std(self, ddof: int = 1) -> float | None:
        """The square root of ``variance(ddof)``."""
        variance = self.variance(ddof)
        return None if variance is None else math.sqrt(variance)

    def to_record(self) -> dict[str, Any]:
        return {"n": self._n, "sum": self._sum, "mean": self._mean, "m2": self._q}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        state = cls()
        n = record["n"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"record field 'n' must be an int >= 0, got {n!r}")
        state._n = n
        state._sum = record["sum"]
        state._mean = float(record["mean"])
        m2 = record["m2"]
        # an int M2 with an int sum is the exact form (a sum of squares), kept as it is
        exact = m2.__class__ is int and state._sum.__class__ is int
        state._q = m2 if exact else float(m2)
        return state


class MonotonicExtremes:
    """The minimum and maximum of a sliding window of events that arrive in time order.

    Each side keeps a monotonic deque of ``(time, value)``: an entry leaves the back when a newer
    value is at least as good, and the front when its time falls out of the window. ``add`` and
    ``evict_until`` are amortized O(1); ``min`` and ``max`` are O(1). Values on one side must be
    mutually comparable (finite numbers, or strings, ...).

    Times must be non-decreasing over the life of the state (equal times are fine): ``add``
    raises ``ValueError`` for a time earlier than the last one added and changes nothing. For
    windows that accept out-of-order events, use ``SortedValues`` instead.

    The state also keeps every held time (a deque, O(1) per event) so that ``len`` is exact.
    """

    __slots__ = ("_highs", "_last", "_lows", "_times")

    def __init__(self) -> None:
        self._times: deque[float] = deque()
        #: values strictly increasing from front to back: the front is the minimum
        self._lows: deque[tuple[float, Any]] = deque()
        #: values strictly decreasing from front to back: the front is the maximum
        self._highs: deque[tuple[float, Any]] = deque()
        self._last: float | None = None

    def __len__(self) -> int:
        return len(self._times)

    def add(self, t: float, x: Any) -> None:
        """Add value ``x`` at time ``t``; raises ``ValueError`` if ``t`` is earlier than the last
        time added."""
        last = self._last
        if last is not None and t < last:
            raise ValueError(
                f"t={t!r} is earlier than the last time added ({last!r}): MonotonicExtremes "
                "needs non-decreasing times"
            )
        self._last = t
        self._times.append(t)
        lows = self._lows
        while lows and lows[-1][1] >= x:
            lows.pop()
        lows.append((t, x))
        highs = self._highs
        while highs and highs[-1][1] <= x:
            highs.pop()
        highs.append((t, x))

    def evict_until(self, t_cutoff: float) -> int:
        """Remove the values with time ``<= t_cutoff``; returns how many were removed."""
        times = self._times
        held = len(times)
        while times and times[0] <= t_cutoff:
            times.popleft()
        lows = self._lows
        while lows and lows[0][0] <= t_cutoff:
            lows.popleft()
        highs = self._highs
        while highs and highs[0][0] <= t_cutoff:
            highs.popleft()
        return held - len(times)

    def min(self) -> Any:
        """The smallest value held, or ``None`` when empty."""
        return self._lows[0][1] if self._lows else None

    def max(self) -> Any:
        """The largest value held, or ``None`` when empty."""
        return self._highs[0][1] if self._highs else None

    def merge(self, other: MonotonicExtremes) -> None:
        """Append ``other``, whose held times must not be earlier than this state's last time
        (``ValueError`` otherwise): the state then equals one that saw both streams in turn.
        O(len(other))."""
        if other is self:
            other = self.copy()
        if other._times and self._last is not None and other._times[0] < self._last:
            raise ValueError(
                f"cannot merge: other's earliest time {other._times[0]!r} is earlier than this "
                f"state's last time {self._last!r}"
            )
        for t, x in other._lows:
            while self._lows and self._lows[-1][1] >= x:
                self._lows.pop()
            self._lows.append((t, x))
        for t, x in other._highs:
            while self._highs and self._highs[-1][1] <= x:
                self._highs.pop()
            self._highs.append((t, x))
        self._times.extend(other._times)
        if other._last is not None and (self._last is None or other._last > self._last):
            self._last = other._last

    def copy(self) -> MonotonicExtremes:
        clone = MonotonicExtremes()
        clone.merge(self)
        return clone

    def to_record(self) -> dict[str, Any]:
        return {
            "last": self._last,
            "times": list(self._times),
            "lows": [[t, x] for t, x in self._lows],
            "highs": [[t, x] for t, x in self._highs],
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        state = cls()
        state._last = record["last"]
        state._times.extend(record["times"])
        state._lows.extend((t, x) for t, x in record["lows"])
        state._highs.extend((t, x) for t, x in record["highs"])
        return state


class FrequentValues:
    """How often each value occurs, with the ``k`` most frequent values on demand.

    Values must be hashable; values equal in Python (``1 == 1.0``) count as one, reported as
    the first spelling seen. ``add``, ``remove`` and ``top(k)`` cost O(log d + k) for ``d``
    distinct values: a sorted list of entries is kept in answer order, so no query scans.

    Order of ``top(k)``: by count, highest first; equal counts by ``order_key`` of the value,
    ascending (numbers, then strings, then bytes, then other values by type name and ``repr``).
    The answer therefore depends only on the multiset of values held, never on the order they
    came in, the shard that saw them or how partial states were merged, except between distinct
    values that ``order_key`` cannot tell apart (NaNs, objects with identical ``repr``), which
    stay in first-seen order.
    """

    __slots__ = ("_entries", "_ranked", "_serial", "_total")

    def __init__(self) -> None:
        #: value -> (-count, order_key(value), serial, value); the serial makes entries unique
        self._entries: dict[Any, tuple[Any, ...]] = {}
        self._ranked: Any = SortedList()
        self._serial = 0
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def _add(self, x: Any, n: int) -> None:
        entry = self._entries.get(x)
        if entry is None:
            entry = (-n, order_key(x), self._serial, x)
            self._serial += 1
        else:
            self._ranked.remove(entry)
            entry = (entry[0] - n, entry[1], entry[2], entry[3])
        self._ranked.add(entry)
        self._entries[x] = entry
        self._total += n

    def add(self, x: Any) -> None:
        """Count one ``x``; raises ``TypeError`` for an unhashable value."""
        self._add(x, 1)

    def remove(self, x: Any) -> None:
        """Uncount one ``x``; raises ``ValueError`` if ``x`` is not held."""
        entry = self._entries.get(x)
        if entry is None:
            raise ValueError(f"x={x!r} is not held: remove only values that were added")
        self._ranked.remove(entry)
        if entry[0] == -1:
            del self._entries[x]
        else:
            entry = (entry[0] + 1, entry[1], entry[2], entry[3])
            self._ranked.add(entry)
            self._entries[x] = entry
        self._total -= 1

    def top(self, k: int) -> list[tuple[Any, int]]:
        """The ``k`` most frequent values as ``(value, count)``, in the order stated above
        (fewer when fewer are held). Raises ``ValueError`` if ``k < 1``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        return [(entry[3], -entry[0]) for entry in self._ranked.islice(0, k)]

    def count(self, x: Any) -> int:
        """How many times ``x`` is held (0 if never)."""
        entry = self._entries.get(x)
        return 0 if entry is None else -int(entry[0])

    def distinct(self) -> int:
        """The number of distinct values held."""
        return len(self._entries)

    def merge(self, other: FrequentValues) -> None:
        for entry in list(other._ranked):
            self._add(entry[3], -entry[0])

    def copy(self) -> FrequentValues:
        clone = FrequentValues()
        clone.merge(self)
        return clone

    def to_record(self) -> dict[str, Any]:
        """``{"counts": [[value, count], ...]}`` in ``top`` order."""
        return {"counts": [[entry[3], -entry[0]] for entry in self._ranked]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Rebuild from ``to_record()``; lists among the values become tuples again."""
        state = cls()
        for value, count in record["counts"]:
            state._add(_hashable(value), _positive_count(count, "counts"))
        return state


class DistinctWindowCount:
    """The exact number of distinct values in a window: a dict of counts, O(1) per operation.

    Values must be hashable; values equal in Python (``1 == 1.0``) count as one.
    """

    __slots__ = ("_counts", "_total")

    def __init__(self) -> None:
        self._counts: dict[Any, int] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def add(self, x: Any) -> None:
        """Count one ``x``; raises ``TypeError`` for an unhashable value."""
        counts = self._counts
        counts[x] = counts.get(x, 0) + 1
        self._total += 1

    def remove(self, x: Any) -> None:
        """Uncount one ``x``; raises ``ValueError`` if ``x`` is not held."""
        counts = self._counts
        n = counts.get(x)
        if n is None:
            raise ValueError(f"x={x!r} is not held: remove only values that were added")
        if n == 1:
            del counts[x]
        else:
            counts[x] = n - 1
        self._total -= 1

    def distinct(self) -> int:
        """The number of distinct values held."""
        return len(self._counts)

    def merge(self, other: DistinctWindowCount) -> None:
        counts = self._counts
        for x, n in other._counts.items():
            counts[x] = counts.get(x, 0) + n
        self._total += other._total

    def copy(self) -> DistinctWindowCount:
        clone = DistinctWindowCount()
        clone.merge(self)
        return clone

    def to_record(self) -> dict[str, Any]:
        """``{"counts": [[value, count], ...]}`` in ``order_key`` order, so that equal states
        give equal records."""
        items = sorted(self._counts.items(), key=lambda item: order_key(item[0]))
        return {"counts": [[x, n] for x, n in items]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Rebuild from ``to_record()``; lists among the values become tuples again."""
        state = cls()
        counts = state._counts
        for value, n in record["counts"]:
            x = _hashable(value)
            counts[x] = counts.get(x, 0) + _positive_count(n, "counts")
            state._total += n
        return state
