"""Quantiles of a window: exact ones from a sorted container, approximate ones from DDSketch.

Both follow the protocol of ``runtime._stats.rolling`` (``add``, ``merge``, ``copy``, ``len``,
``to_record``/``from_record``) and have ``remove`` for sliding windows.

``SortedValues`` answers exactly in O(log n) per update and per query and holds every value: use
it for sliding windows. ``QuantileSketch`` holds only bin counts (a few hundred for most data)
and merges exactly: use it for large windows where an approximate answer will do.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self, cast

from ddsketch import LogarithmicMapping
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.store import DenseStore
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from .._spec.limits import PERCENTILE_METHODS

__all__ = ["QuantileSketch", "SortedValues", "nearest_rank_index"]

# A rank q * n / 100 this close (relatively) to an integer is that integer: the product of a
# percentage written in decimal (12.3, 64.4) and a count carries a rounding error of a few ulps,
# which must not move the rank by one (64.4 % of 250 is rank 161, not 162).
_RANK_SNAP = 1e-12


def _check_q(q: float, high: float) -> None:
    if not 0 <= q <= high:
        raise ValueError(f"q must be in [0, {high:g}], got {q!r}")


def nearest_rank_index(q: float, n: int) -> int:
    """The 0-based place of the nearest-rank ``q``-th percentile among ``n >= 1`` sorted
    values (see :meth:`SortedValues.percentile`)."""
    rank = q * n / 100
    whole = round(rank)
    if abs(rank - whole) > _RANK_SNAP * rank:
        whole = math.ceil(rank)
    return whole - 1 if whole else 0


class SortedValues:
    """Every value of a window in sorted order.

    Small windows keep a plain list kept sorted with ``bisect`` (cheap to create, and an
    insert moves a few pointers); past ``LIST_LIMIT`` values it becomes a
    ``sortedcontainers.SortedList`` (and stays one). ``add``, ``remove``, ``min``, ``max``
    and ``percentile`` cost O(log n) (plus a short memmove while small); ``merge`` costs
    O(m log(n + m)) for ``m`` values merged in. Values must be mutually comparable; the
    ``linear`` method also needs numbers.
    """

    __slots__ = ("_values",)

    #: the size past which the plain sorted list becomes a SortedList: a window's step (an
    #: insert, a remove and a percentile read) costs about the same in both at 12,000 floats
    #: (at 4,000: 1.6 us in the list against 3.1 us), the list's memmove growing past that
    LIST_LIMIT = 10_000

    def __init__(self, values: Iterable[Any] = ()) -> None:
        # sortedcontainers ships no type information: the list stays ``Any`` inside this class.
        if values.__class__ is tuple and not values:  # a new window (one per key): first
            self._values: Any = []
            return
        held = sorted(values)
        self._values = SortedList(held) if len(held) > self.LIST_LIMIT else held

    def __len__(self) -> int:
        return len(self._values)

    def add(self, x: Any) -> None:
        values = self._values
        if values.__class__ is list:
            insort(values, x)
            if len(values) > self.LIST_LIMIT:
                self._values = SortedList(values)
        else:
            values.add(x)

    def remove(self, x: Any) -> None:
        """Remove one ``x``; raises ``ValueError`` if ``x`` is not held."""
        values = self._values
        if values.__class__ is list:
            i = bisect_left(values, x)
            if i < len(values) and values[i] == x:
                del values[i]
                return
        else:
            try:
                values.remove(x)
                return
            except ValueError:
                pass
        raise ValueError(f"x={x!r} is not held: remove only values that were added")

    def min(self) -> Any:
        """The smallest value, or ``None`` when empty."""
        return self._values[0] if self._values else None

    def max(self) -> Any:
        """The largest value, or ``None`` when empty."""
        return self._values[-1] if self._values else None

    def percentile(
        self, q: float, method: Literal["nearest_rank", "linear"] = "nearest_rank"
    ) -> Any:
        """The ``q``-th percentile (``q`` in [0, 100]) of the ``n`` values held, or ``None`` when
        empty. With the values sorted as ``x[1] <= ... <= x[n]``:

        - ``"nearest_rank"`` (the default): ``x[ceil(q / 100 * n)]``, the smallest value such
          that at least ``q`` % of the values are ``<=`` it. The standard definition leaves
          ``q = 0`` out; here it gives the minimum ``x[1]``. The result is one of the values held,
          of its own type. ``q`` is taken as written in decimal: a rank within a relative 1e-12
          of an integer is that integer. numpy's ``"inverted_cdf"`` method is the same
          definition in plain floats, and differs where rounding moves its rank up by one
          (28 % of 25 values: 0.28 * 25 is 7.000000000000001 in floats).
        - ``"linear"``: interpolation between the closest ranks, as numpy's default method and
          ``statistics.quantiles(method="inclusive")``: with ``h = q / 100 * (n - 1)``
          (0-based), ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``,
          computed in the same float operations as numpy, so the results match bit for bit.
          Always a ``float``.

        Raises ``ValueError`` for ``q`` outside [0, 100] or an unknown ``method``.
        """
        values = self._values
        if method == "nearest_rank":
            _check_q(q, 100)
            n = len(values)
            if not n:
                return None
            return values[nearest_rank_index(q, n)]
        if method == "linear":
            _check_q(q, 100)
            n = len(values)
            if not n:
                return None
            h = q / 100 * (n - 1)
            i = int(h)
            t = h - i
            a = values[i]
            if not t:
                return float(a)
            b = values[i + 1]
            d = b - a
            # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
            return float(b - d * (1 - t)) if t >= 0.5 else float(a + d * t)
        raise ValueError(f"method must be one of {PERCENTILE_METHODS}, got {method!r}")

    def merge(self, other: SortedValues) -> None:
        values = self._values
        if values.__class__ is list:
            merged = sorted([*values, *other._values])
            self._values = SortedList(merged) if len(merged) > self.LIST_LIMIT else merged
        else:
            values.update(list(other._values))

    def copy(self) -> SortedValues:
        return SortedValues(self._values)

    def to_record(self) -> dict[str, Any]:
        return {"values": list(self._values)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        return cls(record["values"])


def _stores(sketch: BaseDDSketch) -> tuple[DenseStore, DenseStore, float]:
    """The positive store, the negative store and the zero count of a sketch.

    DDSketch exposes no accessor for its bins; its own protobuf module reads these private
    attributes the same way. Its annotations type them as the abstract ``Store``, which has no
    ``bins``: every sketch made here uses ``DenseStore``, hence the casts.
    """
    return (
        cast(DenseStore, sketch._store),
        cast(DenseStore, sketch._negative_store),
        float(sketch._zero_count),
    )


def _store_record(store: DenseStore) -> list[list[int]]:
    """The non-empty bins as ``[[key, count], ...]`` by key. Sparse, because a dense store spans
    every bin between its smallest and largest value (tens of thousands for values from 1e-300
    to 1e300), and canonical: sketches of the same values give the same record."""
    offset = store.offset
    return [[i + offset, int(count)] for i, count in enumerate(store.bins) if count]


def _store_from_record(bins: Any, field: str) -> DenseStore:
    store = DenseStore()
    for key, count in bins:
        if isinstance(key, bool) or not isinstance(key, int):
            raise ValueError(f"record field {field!r} must hold int keys, got {key!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"record field {field!r} must hold counts >= 1, got {count!r}")
        store.add(key, float(count))
    return store


def _mapping(alpha: float) -> LogarithmicMapping:
    """DDSketch's logarithmic mapping, with every non-zero magnitude in a bin of its own sign.

    DDSketch counts a magnitude at most ``min_possible`` (``sys.float_info.min * gamma``, about
    2.3e-308) as zero, which gives a subnormal value an answer of ``0.0``: a relative error of
    1. Its mapping handles them well: ``math.log`` is exact enough there, and a bin's value
    lands within ``alpha * |x|`` of ``x`` plus the rounding to the subnormal grid (at most one
    spacing, 4.9e-324, checked for every subnormal). So only exact zeros go to the zero count.
    """
    mapping = LogarithmicMapping(alpha)
    mapping.min_possible = 0.0
    return mapping


class QuantileSketch:
    """Approximate quantiles with a relative-error guarantee: a ``ddsketch.DDSketch``.

    Guarantee: with the ``n`` values added sorted as ``x[0] <= ... <= x[n-1]`` (0-based) and
    ``i = floor(q * (n - 1))``, ``quantile(q)`` returns ``y`` with ``|y - x[i]| <= alpha * |x[i]|``
    (up to float rounding, a few ulps). So the reference is numpy's ``"lower"`` quantile, not the
    nearest rank, and the error is relative to that value: ``y`` has the sign of ``x[i]``, and is
    exactly ``0.0`` when ``x[i]`` is zero. Negative values have their own store and the same
    guarantee. Two ends of the float range, where a float itself cannot do better:

    - a subnormal magnitude (below ``sys.float_info.min``, 2.2e-308) has fewer significant
      bits, so there the answer is within ``alpha * |x[i]|`` plus the spacing of subnormals
      (``5e-324``);
    - a magnitude above :attr:`limit` (``sys.float_info.max * (1 - alpha) / (1 + alpha)``,
      about 1.76e308 at ``alpha = 0.01``), the largest the sketch's bins reach, counts as
      ``limit`` (with its sign): an answer at such a rank is within ``alpha`` of ``limit``,
      below the value by at most a factor ``(1 + alpha) / (1 - alpha)``. Every other value and
      rank keeps the guarantee, and no finite value is refused.

    Values are binned on a logarithmic scale with ratio ``(1 + alpha) / (1 - alpha)``; each sign
    keeps a dense list of bins from its smallest to its largest magnitude, so memory grows with
    the logarithm of the range of magnitudes, not with the count: 551 bins for 1 to 60,000 at
    alpha 0.01, and at most 72,708 (the whole float range, subnormals too) however wild the
    data. ``add`` is O(1) amortized; ``quantile`` and ``merge`` are O(bins). Merging is exact:
    the merged sketch equals the sketch of all the values. ``remove(x)`` decrements the bin of
    ``x``, so a sliding window can forget values it added: the sketch then equals one built
    from the values left.
    """

    __slots__ = ("_alpha", "_limit", "_sketch")

    def __init__(self, alpha: float = 0.01) -> None:
        """``alpha``: the relative accuracy, in (0, 1). Raises ``ValueError`` otherwise."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self._alpha = float(alpha)
        mapping = _mapping(self._alpha)
        self._sketch: BaseDDSketch = BaseDDSketch(
            mapping=mapping, store=DenseStore(), negative_store=DenseStore(), zero_count=0.0
        )
        #: the largest magnitude the sketch can map to a bin
        self._limit: float = mapping.max_possible

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def count(self) -> int:
        """The number of values added."""
        return int(self._sketch.count)

    def __len__(self) -> int:
        return int(self._sketch.count)

    @property
    def limit(self) -> float:
        """The largest magnitude the bins reach; a larger one counts as this (see above)."""
        return self._limit

    def check(self, x: float) -> None:
        """Raise ``ValueError`` for a value ``add`` refuses: NaN or an infinity."""
        if not -math.inf < x < math.inf:
            raise ValueError(f"x must be a finite number, got {x!r}")

    def _clamped(self, x: float) -> float:
        """``x`` within ``[-limit, limit]``; ``ValueError`` for NaN or an infinity."""
        self.check(x)
        return self._limit if x > 0 else -self._limit

    def add(self, x: float) -> None:
        """Add a value; a magnitude above :attr:`limit` counts as ``limit``. Raises
        ``ValueError`` for NaN or an infinity (DDSketch would count NaN as zero)."""
        limit = self._limit
        self._sketch.add(x if -limit <= x <= limit else self._clamped(x))

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` in [0, 1], within the guarantee above; ``None`` when
        empty. Raises ``ValueError`` for ``q`` outside [0, 1]."""
        _check_q(q, 1)
        value = self._sketch.get_quantile_value(q)
        return None if value is None else float(value)

    def remove(self, x: float) -> None:
        """Undo one ``add(x)``: the caller guarantees ``x`` was added and not yet removed (a bin
        would otherwise go negative, which is checked: ``ValueError``).

        DDSketch has no public removal; its stores are counts per bin, so this decrements the
        bin that ``add`` incremented (the same private stores ``to_record`` reads). The running
        sum, min and max DDSketch keeps for itself go stale; this class never reads them.
        """
        sketch = self._sketch
        mapping = sketch._mapping
        limit = self._limit
        if not -limit <= x <= limit:
            x = self._clamped(x)  # as add counted it
        if x > mapping.min_possible:
            store, key = sketch._store, mapping.key(x)
        elif x < -mapping.min_possible:
            store, key = sketch._negative_store, mapping.key(-x)
        else:
            if sketch._zero_count < 1:
                raise ValueError(f"x={x!r} is not held: remove only values that were added")
            sketch._zero_count -= 1
            sketch._count -= 1
            return
        dense = cast(DenseStore, store)
        index = key - dense.offset
        if not 0 <= index < len(dense.bins) or dense.bins[index] < 1:
            raise ValueError(f"x={x!r} is not held: remove only values that were added")
        dense.bins[index] -= 1
        dense.count -= 1
        sketch._count -= 1

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s values; raises ``ValueError`` unless both have the same ``alpha``."""
        if other._alpha != self._alpha:
            raise ValueError(
                f"cannot merge sketches of different alpha: {self._alpha!r} and {other._alpha!r}"
            )
        self._sketch.merge(other._sketch)

    def copy(self) -> QuantileSketch:
        clone = QuantileSketch(self._alpha)
        clone.merge(self)
        return clone

    def to_record(self) -> dict[str, Any]:
        """``{"alpha", "zero", "positive", "negative"}``, the stores as ``[[key, count], ...]``.

        The running sum, min and max that DDSketch also keeps are not recorded (this class does
        not expose them), so a record depends only on the multiset of bins.
        """
        positive, negative, zero = _stores(self._sketch)
        return {
            "alpha": self._alpha,
            "zero": int(zero),
            "positive": _store_record(positive),
            "negative": _store_record(negative),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """Rebuild a sketch with the same bins, hence the same quantiles, as DDSketch's own
        protobuf decoder does. Raises ``ValueError`` for a bad ``alpha`` or count."""
        state = cls(record["alpha"])
        zero = record["zero"]
        if isinstance(zero, bool) or not isinstance(zero, int) or zero < 0:
            raise ValueError(f"record field 'zero' must be an int >= 0, got {zero!r}")
        state._sketch = BaseDDSketch(
            mapping=_mapping(state._alpha),
            store=_store_from_record(record["positive"], "positive"),
            negative_store=_store_from_record(record["negative"], "negative"),
            zero_count=float(zero),
        )
        return state
