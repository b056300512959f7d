"""The two-sample drift detectors, PSI and KS, and the statistics they compute
(``docs/drift.md``).

Each holds a reference sample (captured from the first values, or given) and a live window, and
compares the two: ``psi`` is the population stability index of two samples, ``ks_statistic``
and ``ks_pvalue`` the Kolmogorov-Smirnov computations. The functions can be used alone.
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
import random
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import repeat

from actors import get_logger

from .._spec.drift import KS, PSI
from .detectors import DriftDetector

__all__ = [
    "KSDetector",
    "PSIDetector",
    "kolmogorov_sf",
    "ks_critical",
    "ks_pvalue",
    "ks_statistic",
    "psi",
    "quantile_edges",
]

_log = get_logger("featurist.drift")

_Entry = tuple[int, float, int, int]
_VALUE = operator.itemgetter(1)
_BELOW = operator.itemgetter(2)
_UPTO = operator.itemgetter(3)


class _TwoSampleDetector(DriftDetector):
    """A reference sample, captured or given, and a live window compared with it."""

    def __init__(self, spec: PSI | KS) -> None:
        reference = spec.reference
        self.reference_spec = reference
        self.window_max = spec.window
        self.span = spec.span_ms
        self.min_window = spec.min_window
        self.every = spec.every
        #: the live window: ``(time, value, a, b)`` in arrival order, with ``a`` and ``b``
        #: what the detector keeps of the value against its reference (``_entered``)
        self.window: deque[_Entry] = deque()
        self.newest: int | None = None
        self.since_test = 0
        self.reference: list[float] = []
        #: ``None`` while the reference is being captured, then True (False: none captured)
        self.ready: bool | None = None
        #: how the reference being captured ends: ``"range"`` (at ``reference.end``), or
        #: after ``_span`` ms of event time from its first value or ``_count`` values; it
        #: keeps at most ``_max`` (a uniform sample beyond)
        self._mode = reference.mode
        self._span = reference.first_ms if reference.first is not None else None
        self._count = reference.count
        self._max = reference.max_size
        self._first: int | None = None
        self._offered = 0
        self._rng = random.Random(0)
        if reference.mode == "values":
            assert reference.values is not None
            self._set_reference(_thin(sorted(reference.values), reference.max_size))

    # capturing the reference
    def _offer(self, value: float, time: int) -> bool:
        """Take ``value`` into the reference being captured; False once it is complete (the
        value is then a live one)."""
        if self._mode == "range":
            start, end = self.reference_spec.start, self.reference_spec.end
            assert start is not None and end is not None
            if time < start:
                return True  # before the range: neither reference nor live
            if time >= end:
                self._freeze()
                return False
        elif self._span is not None:
            if self._first is None:
                self._first = time
            if time >= self._first + self._span:
                self._freeze()
                return False
        self._offered += 1
        if len(self.reference) < self._max:
            self.reference.append(value)
        else:
            slot = self._rng.randrange(self._offered)
            if slot < self._max:
                self.reference[slot] = value
        if self._count is not None and len(self.reference) == self._count:
            self._freeze()
        return True

    def _freeze(self) -> None:
        if self.reference:
            self._set_reference(sorted(self.reference))
        else:
            self.ready = False
            if self.on_empty is not None:
                self.on_empty()
                return
            _log.warning(
                "drift_reference_empty",
                detail="no value in the reference's range: this segment is not monitored",
            )

    def _set_reference(self, values: list[float]) -> None:
        """``values`` sorted."""
        self.reference = values
        self.ready = True

    # the live window
    def update(self, value: float, time: int = 0) -> bool:
        if not self.ready:
            if self.ready is False or self._offer(value, time) or not self.ready:
                return False
        window = self.window
        first, second = self._entered(value)
        window.append((time, value, first, second))
        if self.newest is None or time > self.newest:
            self.newest = time
        if self.span is not None:
            horizon = self.newest - self.span
            while window and window[0][0] <= horizon:
                self._left(window.popleft())
        if len(window) > self.window_max:
            self._left(window.popleft())
        self.since_test += 1
        if self.since_test >= self.every and len(window) >= self.min_window:
            self.since_test = 0
            self._test()
        return self.drifting

    def _entered(self, value: float) -> tuple[int, int]:
        return 0, 0

    def _left(self, entry: _Entry) -> None:
        pass

    def _test(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        self.window.clear()
        self._cleared()
        self.newest = None
        self.since_test = 0
        self.score = None
        self.p_value = None
        self.drifting = False

    def _cleared(self) -> None:
        pass

    def adopt_reference(self) -> None:
        """The next window of values becomes the reference: the next ``window`` values, or
        with ``span`` those within ``span`` of event time of the first (at most ``window``).
        Not the window at the alert: it still holds values from before the change, and the
        new level would be compared with a mix of old and new, and alert again."""
        self.reset()
        self.reference = []
        self.ready = None
        self._mode = "window"
        self._span = self.span
        self._count = self._max = self.window_max
        self._first = None
        self._offered = 0

    @property
    def phase(self) -> str:
        if self.ready is None:
            return "reference"
        if self.ready is False:
            return "no_reference"
        return "warming" if len(self.window) < self.min_window else "live"

    @property
    def reference_size(self) -> int:
        return len(self.reference)

    @property
    def window_size(self) -> int:
        return len(self.window)


def _thin(values: list[float], size: int) -> list[float]:
    """At most ``size`` evenly spaced order statistics of ``values`` (sorted)."""
    n = len(values)
    if n <= size:
        return values
    if size == 1:
        return [values[n // 2]]
    return [values[round(i * (n - 1) / (size - 1))] for i in range(size)]


class PSIDetector(_TwoSampleDetector):
    """The population stability index (see :class:`PSI`). The live window's count per bin is
    kept as values enter and leave, so a value costs a bisection, and a test ``bins`` terms."""

    kind = "psi"

    def __init__(self, spec: PSI) -> None:
        self.bins = spec.bins
        self.epsilon = spec.epsilon
        self.scale = 1.0
        self.edges: list[float] = []
        self.expected: list[float] = []
        self.counts: list[int] = []
        super().__init__(spec)
        self.limit = self._threshold = spec.threshold

    def _set_reference(self, values: list[float]) -> None:
        super()._set_reference(values)
        self.edges = quantile_edges(values, self.bins)
        counts = [0] * (len(self.edges) + 1)
        for value in values:
            counts[bisect.bisect_left(self.edges, value)] += 1
        self.expected = _shares(counts, len(values), self.epsilon)
        self.scale = 1 + len(counts) * self.epsilon
        self.counts = [0] * len(counts)

    def _entered(self, value: float) -> tuple[int, int]:
        index = bisect.bisect_left(self.edges, value)
        self.counts[index] += 1
        return index, 0

    def _left(self, entry: _Entry) -> None:
        self.counts[entry[2]] -= 1

    def _cleared(self) -> None:
        self.counts = [0] * len(self.counts)

    def _test(self) -> None:
        n = len(self.window)
        epsilon, scale, log = self.epsilon, self.scale, math.log
        score = 0.0
        for count, ref in zip(self.counts, self.expected, strict=True):
            live = (count / n + epsilon) / scale
            score += (live - ref) * log(live / ref)
        self.score = score
        self.drifting = score > self.limit


def quantile_edges(values: Sequence[float], bins: int) -> list[float]:
    """The inner edges of ``bins`` bins from the quantiles of ``values`` (sorted): the value at
    rank ``ceil(k * m / bins)`` for ``k`` in 1 .. bins - 1, without repeats. Bin ``i`` holds
    the values ``x`` with ``edges[i - 1] < x <= edges[i]``.

    When the least value is an edge itself (a tenth of the reference or more at its least
    value: a count often 0, a constant), one more edge just below it: values below the whole
    reference then have a bin of their own, as values above a top edge that is the greatest
    value have. Without it they fell in the bin of that least value, unseen: a reference all
    5.0 read a live window all 4.0 as no change (PSI 0), though all 6.0 scored 18. (Not for
    a continuous reference, whose bottom bin spans a tenth of it down to minus infinity: a
    bin of its own for the rare value below its least would be mostly noise.)"""
    m = len(values)
    edges = {values[max(math.ceil(k * m / bins) - 1, 0)] for k in range(1, bins)}
    if m and values[0] in edges:
        edges.add(math.nextafter(values[0], -math.inf))
    return sorted(edges)


def _shares(counts: Sequence[int], n: int, epsilon: float) -> list[float]:
    scale = 1 + len(counts) * epsilon
    return [(count / n + epsilon) / scale for count in counts]


def psi(
    reference: Sequence[float], live: Sequence[float], *, bins: int = 10, epsilon: float = 1e-4
) -> float:
    """The population stability index of ``live`` against ``reference``, binned and smoothed
    as :class:`PSI` does."""
    edges = quantile_edges(sorted(reference), bins)
    expected = [0] * (len(edges) + 1)
    actual = [0] * (len(edges) + 1)
    for value in reference:
        expected[bisect.bisect_left(edges, value)] += 1
    for value in live:
        actual[bisect.bisect_left(edges, value)] += 1
    ref = _shares(expected, len(reference), epsilon)
    now = _shares(actual, len(live), epsilon)
    return sum((a - e) * math.log(a / e) for a, e in zip(now, ref, strict=True))


class KSDetector(_TwoSampleDetector):
    """The two-sample Kolmogorov-Smirnov test (see :class:`KS`)."""

    kind = "ks"

    def __init__(self, spec: KS) -> None:
        self.alpha = spec.alpha
        self.exact_below = spec.exact_below
        super().__init__(spec)

    def _set_reference(self, values: list[float]) -> None:
        super()._set_reference(values)
        m = len(values)
        # The least p-value a window of n values can give against m is that of D = 1 (every
        # value on one side). It falls as n grows, but for a jump up where n * m passes
        # exact_below (exact below, asymptotic above): so the largest exact window is looked
        # at too. Closed forms, no search: this runs in the monitor's turn.
        sizes = {self.window_max, min(self.window_max, self.exact_below // m)}
        least = min(
            ks_least_pvalue(n, m, exact_below=self.exact_below)
            for n in sizes
            if n >= max(1, self.min_window)
        )
        self.too_small = m if least >= self.alpha else None
        if self.too_small is not None and self.on_too_small is not None:
            self.on_too_small(self.too_small)

    def _entered(self, value: float) -> tuple[int, int]:
        # the value's place in the reference, just below it and at it: each test then needs
        # no search (the window empties whenever the reference changes)
        reference = self.reference
        below = bisect.bisect_left(reference, value)
        if below < len(reference) and reference[below] == value:
            return below, bisect.bisect_right(reference, value, below)
        return below, below

    def _test(self) -> None:
        entries = sorted(self.window, key=_VALUE)
        n, m = len(entries), len(self.reference)
        gap = _gap_of_places(map(_BELOW, entries), map(_UPTO, entries), n, m)
        self.score = gap / (n * m)
        self.p_value = ks_pvalue(n, m, gap, exact_below=self.exact_below)
        self.drifting = self.p_value < self.alpha

    @property
    def threshold(self) -> float | None:
        """The statistic at which the p-value of the current sizes falls below ``alpha``."""
        n, m = len(self.window), len(self.reference)
        if not n or not m or self.ready is not True:
            return None
        return ks_critical(n, m, self.alpha, exact_below=self.exact_below)


def _ks_gap(a: Sequence[float], b: Sequence[float]) -> int:
    """``D * len(a) * len(b)``, an int: the largest gap between the distribution functions of
    ``a`` and ``b`` (both sorted), scaled."""
    below = map(functools.partial(bisect.bisect_left, b), a)
    upto = map(functools.partial(bisect.bisect_right, b), a)
    return _gap_of_places(below, upto, len(a), len(b))


def _gap_of_places(below: Iterable[int], upto: Iterable[int], n: int, m: int) -> int:
    """The scaled KS gap from the places in ``b`` (size ``m``) of the values of ``a`` (size
    ``n``), in the order of ``a``: ``below`` counts the values of ``b`` less than each,
    ``upto`` those less or equal.

    The gap between two step functions is largest just below or at a jump. Between two jumps
    of ``a``, ``F_b - F_a`` only grows, so its highest points are just below the values of
    ``a`` and its lowest at them: with ``a[i]`` in place ``i``, ``F_a`` is ``i / n`` just
    below and ``(i + 1) / n`` at it (in a run of equal values, the first place gives the
    highest point and the last the lowest; the places between give points in between). The
    loops run in C.
    """
    high: int = max(map(operator.sub, map(operator.mul, below, repeat(n)), range(0, n * m, m)))
    low: int = min(map(operator.sub, map(operator.mul, upto, repeat(n)), range(m, (n + 1) * m, m)))
    return max(high, -low, 0)


def ks_statistic(a: Iterable[float], b: Iterable[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic ``D`` of two non-empty samples."""
    first, second = sorted(a), sorted(b)
    if not first or not second:
        raise ValueError("ks_statistic needs two non-empty samples")
    return _ks_gap(first, second) / (len(first) * len(second))


def kolmogorov_sf(x: float) -> float:
    """``P(K > x)`` for the Kolmogorov distribution (the limit of ``sqrt(n) * D``).

    Two series of the same function: ``2 * sum (-1)^(j-1) exp(-2 j^2 x^2)`` converges fast
    for large ``x``; ``1 - sqrt(2 pi) / x * sum exp(-(2j - 1)^2 pi^2 / (8 x^2))`` for small.
    """
    if x <= 0:
        return 1.0
    if x < 1.18:
        y = math.exp(-math.pi * math.pi / (8 * x * x))
        total = 0.0
        j = 1
        while True:
            term = y ** (j * j)
            total += term
            if term < 1e-17:
                break
            j += 2
        return min(1.0, max(0.0, 1 - math.sqrt(2 * math.pi) / x * total))
    total = 0.0
    for j in range(1, 101):
        term = math.exp(-2 * j * j * x * x)
        total += term if j % 2 else -term
        if term < 1e-17:
            break
    return min(1.0, max(0.0, 2 * total))


def _stephens(n: int, m: int) -> float:
    root = math.sqrt(n * m / (n + m))
    return root + 0.12 + 0.11 / root


@functools.lru_cache(maxsize=4096)
def _ks_exact(n: int, m: int, gap: int) -> float:
    """``P(D * n * m >= gap)`` for two samples of sizes ``n`` and ``m`` of one continuous
    distribution: one minus the share of the ``C(n + m, n)`` orderings of the samples whose
    lattice path stays strictly inside the band ``|i * m - j * n| < gap`` (Hodges, 1957).
    Exact integer counts, O(n * m)."""
    if gap <= 0:
        return 1.0
    row = [0] * (m + 1)
    for i in range(n + 1):
        im = i * m
        for j in range(m + 1):
            if abs(im - j * n) >= gap:
                row[j] = 0
            elif i == 0 and j == 0:
                row[j] = 1
            else:
                row[j] = (row[j] if i else 0) + (row[j - 1] if j else 0)
    total = math.comb(n + m, n)
    return (total - row[m]) / total


def ks_pvalue(n: int, m: int, gap: int, *, exact_below: int = 10_000) -> float:
    """The p-value of a two-sample KS statistic ``D = gap / (n * m)``: exact when ``n * m <=
    exact_below``, else asymptotic with Stephens' correction."""
    if gap <= 0:
        return 1.0
    if n * m <= exact_below:
        return _ks_exact(n, m, gap)
    return kolmogorov_sf(_stephens(n, m) * gap / (n * m))


def ks_least_pvalue(n: int, m: int, *, exact_below: int = 10_000) -> float:
    """The least p-value two samples of sizes ``n`` and ``m`` can give (``D = 1``, every value
    of one below every value of the other): ``2 / C(n + m, n)`` when exact (the two orderings
    that separate the samples), else the asymptotic one's."""
    if n * m <= exact_below:
        return min(1.0, 2 / math.comb(n + m, n))
    return kolmogorov_sf(_stephens(n, m))


@functools.lru_cache(maxsize=1024)
def ks_critical(n: int, m: int, alpha: float, *, exact_below: int = 10_000) -> float | None:
    """The smallest ``D`` whose p-value is below ``alpha`` for sizes ``n`` and ``m``: a value
    ``D`` can take when exact; None if no ``D`` is (samples too small)."""
    if n * m <= exact_below:
        if _ks_exact(n, m, n * m) >= alpha:
            return None
        low, high = 1, n * m  # the p-value falls as the gap grows: the first gap below alpha
        while low < high:
            middle = (low + high) // 2
            if _ks_exact(n, m, middle) < alpha:
                high = middle
            else:
                low = middle + 1
        # gaps are multiples of gcd(n, m): the first gap past ``low`` that can happen
        step = math.gcd(n, m)
        return -(-low // step) * step / (n * m)
    low_x, high_x = 0.0, 10.0
    for _ in range(60):
        middle_x = (low_x + high_x) / 2
        if kolmogorov_sf(middle_x) < alpha:
            high_x = middle_x
        else:
            low_x = middle_x
    critical = high_x / _stephens(n, m)
    return critical if critical <= 1 else None
