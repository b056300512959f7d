"""Drift detectors, and the monitor actors that run them on feature values (``docs/drift.md``).

The detectors are plain Python objects made from the specs of ``_drift_spec`` by
:func:`build_detector`; each takes one value at a time (``update(value, time)``, True while
it finds drift) and can be used alone. ``ks_statistic`` and ``ks_pvalue`` are the
Kolmogorov-Smirnov computations, ``psi`` the index from two samples.

Feeding a monitor: each monitor has its own subscription to the runtime's feature updates with
the ``drop_oldest`` policy and a bounded ``buffer``, so a slow monitor never holds a shard
back: when it falls behind, the oldest updates go and are counted. The monitor's actor reads
the subscription in its own turns, on a periodic timer (every ``POLL_INTERVAL`` seconds),
when asked for its status and when it stops. No task of its own: the actor system owns the
actor, and at shutdown the actor stops after the shards have applied everything, so its
``on_stop`` reads what they published last. Reading in its turns rather than in a task of
the runtime also means a status ask sees every update published before it.

Order: a key's updates reach the monitor in the order its events were applied, so a monitor
with ``segment="key"`` gives the same alerts whatever the shard count. One detector over
many keys sees their values in the order the shards published them, which can vary from run
to run (the same values, interleaved differently).
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Any

import anyio.lowlevel

from actors import (
    Actor,
    ActorRef,
    ActorSystem,
    DeadLetterReason,
    MailboxConfig,
    Supervisor,
    get_logger,
    resume_always,
)

from .._exceptions import SpecError
from .._messages import GetDriftStatus
from .._results import FeatureUpdate
from .._spec.drift import (
    ADWIN,
    KS,
    PSI,
    Detector,
    DriftAlert,
    DriftMonitor,
    DriftSegmentStatus,
    DriftStatus,
    PageHinkley,
)
from .._spec.feature_set import FeatureSet
from .._updates import Policy, UpdateHub, UpdateSubscription

__all__ = [
    "POLL_INTERVAL",
    "AdwinDetector",
    "DriftDetector",
    "DriftMonitors",
    "KSDetector",
    "PSIDetector",
    "PageHinkleyDetector",
    "build_detector",
    "kolmogorov_sf",
    "ks_critical",
    "ks_pvalue",
    "ks_statistic",
    "psi",
]

_log = get_logger("featurist.drift")

#: Seconds between two reads of a monitor's subscription.
POLL_INTERVAL = 0.02
#: Updates a monitor handles before it lets the other tasks run.
_CHUNK = 2048


# -- the detectors ---------------------------------------------------------------------------------


class DriftDetector:
    """What every detector offers: ``update`` one value at a time, and its state."""

    #: the spec's ``type`` tag
    kind = ""
    #: the latest score (None before the first test)
    score: float | None = None
    _threshold: float | None = None
    #: KS's p-value
    p_value: float | None = None
    #: beyond its threshold after the latest value
    drifting = False

    @property
    def threshold(self) -> float | None:
        """What ``score`` is compared with (as in :class:`DriftAlert`), or None."""
        return self._threshold

    def update(self, value: float, time: int = 0) -> bool:
        """Take one value (``time``: its event time in ms); return whether the detector finds
        drift now."""
        raise NotImplementedError

    def reset(self) -> None:
        """The live state starts over (the reference, if any, stays)."""
        raise NotImplementedError

    def adopt_reference(self) -> None:
        """The values from now on become the reference (as each detector explains)."""
        raise NotImplementedError

    @property
    def phase(self) -> str:
        """``"reference"``, ``"no_reference"``, ``"warming"`` or ``"live"``."""
        raise NotImplementedError

    @property
    def reference_size(self) -> int:
        raise NotImplementedError

    @property
    def window_size(self) -> int:
        raise NotImplementedError


class PageHinkleyDetector(DriftDetector):
    """The Page-Hinkley test (see :class:`PageHinkley`). O(1) per value."""

    kind = "page_hinkley"

    def __init__(self, spec: PageHinkley) -> None:
        self.delta = spec.delta
        self.limit = self._threshold = spec.threshold
        self.min_instances = spec.min_instances
        self.up = spec.direction in ("up", "both")
        self.down = spec.direction in ("down", "both")
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        #: ``m_T`` and its minimum, for increases; ``l_T`` and its minimum, for decreases
        self.sum_up = 0.0
        self.min_up = math.inf
        self.sum_down = 0.0
        self.min_down = math.inf
        self.score = None
        self.drifting = False

    def adopt_reference(self) -> None:
        # the running mean is Page-Hinkley's reference: adopting the new level is starting over
        self.reset()

    def update(self, value: float, time: int = 0) -> bool:
        self.n += 1
        mean = self.mean = self.mean + (value - self.mean) / self.n
        score = 0.0
        if self.up:
            self.sum_up += value - mean - self.delta
            if self.sum_up < self.min_up:
                self.min_up = self.sum_up
            score = self.sum_up - self.min_up
        if self.down:
            self.sum_down += mean - value - self.delta
            if self.sum_down < self.min_down:
                self.min_down = self.sum_down
            score = max(score, self.sum_down - self.min_down)
        self.score = score
        self.drifting = self.n >= self.min_instances and score > self.limit
        return self.drifting

    @property
    def phase(self) -> str:
        return "warming" if self.n < self.min_instances else "live"

    @property
    def reference_size(self) -> int:
        return self.n

    @property
    def window_size(self) -> int:
        return self.n


class AdwinDetector(DriftDetector):
    """ADWIN2 over an exponential histogram (see :class:`ADWIN`).

    ``rows[i]`` holds the buckets of ``2 ** i`` values, oldest first, each as ``(total,
    variance)`` with ``variance`` the sum of squared deviations from the bucket's mean; every
    bucket of a row is newer than every bucket of the rows above it. The window's own total
    and variance are kept alongside. ``score`` and ``threshold`` are the gap between the means
    and ``eps_cut`` of the cut nearest to firing at the latest check (the one that fired after
    a detection).
    """

    kind = "adwin"

    def __init__(self, spec: ADWIN) -> None:
        self.delta = spec.delta
        self.clock = spec.clock
        self.max_buckets = spec.max_buckets
        self.min_window = spec.min_window
        self.grace_period = spec.grace_period
        self.reset()

    def reset(self) -> None:
        self.rows: list[deque[tuple[float, float]]] = [deque()]
        self.width = 0
        self.total = 0.0
        self.variance = 0.0
        self.ticks = 0
        #: detections since the detector was made or reset
        self.detections = 0
        self.score = None
        self._threshold = None
        self.drifting = False

    def adopt_reference(self) -> None:
        # a detection already dropped the window's older part: what is left, the values since
        # the change, is the reference the next cut is measured against
        self.drifting = False

    def update(self, value: float, time: int = 0) -> bool:
        width = self.width
        if width:
            deviation = value - self.total / width
            self.variance += width * deviation * deviation / (width + 1)
        self.width = width + 1
        self.total += value
        self.rows[0].append((value, 0.0))
        self._compress()
        self.ticks += 1
        self.drifting = False
        if self.ticks % self.clock == 0 and self.width >= self.grace_period:
            fired: tuple[float | None, float | None] | None = None
            while self._cut():
                fired = fired or (self.score, self._threshold)
                self._drop_oldest()
            if fired is not None:
                # the cut that fired, not what the last look (no cut) left behind
                self.score, self._threshold = fired
                self.drifting = True
                self.detections += 1
        return self.drifting

    def _compress(self) -> None:
        rows = self.rows
        level = 0
        while len(rows[level]) > self.max_buckets:
            older_total, older_var = rows[level].popleft()
            newer_total, newer_var = rows[level].popleft()
            gap = older_total - newer_total
            merged = (older_total + newer_total, older_var + newer_var + gap * gap / (2 << level))
            if level + 1 == len(rows):
                rows.append(deque())
            rows[level + 1].append(merged)
            level += 1

    def buckets(self) -> list[tuple[int, float, float]]:
        """``(size, total, variance)`` of each bucket, oldest first."""
        return [
            (1 << level, total, variance)
            for level in range(len(self.rows) - 1, -1, -1)
            for total, variance in self.rows[level]
        ]

    def _cut(self) -> bool:
        """Look at every cut between two buckets; True if one shows a change."""
        n = self.width
        if n < 2 * self.min_window:
            return False
        ln_term = math.log(2 * math.log(n) / self.delta)
        variance = self.variance / n
        total = self.total
        n0 = 0
        total0 = 0.0
        best: tuple[float, float, float] | None = None  # (gap / eps, gap, eps)
        for size, bucket_total, _ in self.buckets():
            n0 += size
            total0 += bucket_total
            n1 = n - n0
            if n1 < self.min_window:
                break  # and so are the newer parts of every later cut
            if n0 < self.min_window:
                continue
            inverse_m = 1 / n0 + 1 / n1  # 1 / m, with m the harmonic mean of the sizes
            eps = math.sqrt(2 * inverse_m * variance * ln_term) + 2 / 3 * inverse_m * ln_term
            gap = abs(total0 / n0 - (total - total0) / n1)
            if gap > eps:
                self.score, self._threshold = gap, eps
                return True
            if best is None or gap / eps > best[0]:
                best = (gap / eps, gap, eps)
        if best is not None:
            self.score, self._threshold = best[1], best[2]
        return False

    def _drop_oldest(self) -> None:
        rows = self.rows
        rows[-1].popleft()
        while len(rows) > 1 and not rows[-1]:
            rows.pop()
        # the window's total and variance again from its buckets (Chan et al.'s merge), so
        # that rounding errors of subtractions do not pile up
        width, total, variance = 0, 0.0, 0.0
        for size, bucket_total, bucket_var in self.buckets():
            if width:
                gap = bucket_total / size - total / width
                variance += bucket_var + gap * gap * width * size / (width + size)
            else:
                variance = bucket_var
            width += size
            total += bucket_total
        self.width, self.total, self.variance = width, total, variance

    @property
    def phase(self) -> str:
        return "warming" if self.width < self.grace_period else "live"

    @property
    def reference_size(self) -> int:
        return self.width

    @property
    def window_size(self) -> int:
        return self.width


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
    the values ``x`` with ``edges[i - 1] < x <= edges[i]``."""
    m = len(values)
    edges = {values[max(math.ceil(k * m / bins) - 1, 0)] for k in range(1, bins)}
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


def build_detector(spec: Detector) -> DriftDetector:
    """A fresh detector for ``spec``."""
    if isinstance(spec, PageHinkley):
        return PageHinkleyDetector(spec)
    if isinstance(spec, ADWIN):
        return AdwinDetector(spec)
    if isinstance(spec, PSI):
        return PSIDetector(spec)
    if isinstance(spec, KS):
        return KSDetector(spec)
    raise TypeError(f"detector: expected PageHinkley, ADWIN, PSI or KS, got {type(spec).__name__}")


# -- monitors --------------------------------------------------------------------------------------


class _Segment:
    __slots__ = ("alerts", "detector", "drifting", "last_alert_time", "value", "values")

    def __init__(self, value: Any, detector: DriftDetector) -> None:
        self.value = value
        self.detector = detector
        self.drifting = False
        self.values = 0
        self.alerts = 0
        self.last_alert_time: int | None = None


class _Drain:
    """The timer message: read the subscription."""


_DRAIN = _Drain()
_ABSENT = object()


class MonitorState:
    """A monitor's subscription, detectors and counters: what its actor works on. Kept out of
    the actor so that an instance made by a restart goes on with it."""

    def __init__(
        self,
        spec: DriftMonitor,
        group: str,
        subscription: UpdateSubscription[FeatureUpdate],
        alerts: UpdateHub[DriftAlert],
        clock: Callable[[], float],
    ) -> None:
        self.spec = spec
        self.group = group
        self.subscription = subscription
        self.alerts_hub = alerts
        self.clock = clock
        self.segments: dict[Any, _Segment] = {}
        self.values = 0
        self.skipped = 0
        self.refused = 0
        self.alerts = 0
        #: updates whose value a detector failed on, with the error, for dead letters
        self.failures: list[tuple[FeatureUpdate, Exception]] = []
        self.failed = 0

    async def drain(self) -> None:
        """Handle the updates waiting now (not those that come meanwhile: a busy stream must
        not keep the actor from its asks), letting other tasks run between chunks."""
        subscription = self.subscription
        pending = subscription.statistics().depth
        while pending:
            size = min(pending, _CHUNK)
            pending -= size
            updates = [await subscription.__anext__() for _ in range(size)]
            alerts = self.handle(updates)
            if alerts:
                await self.alerts_hub.publish(alerts)
            if pending:
                await anyio.lowlevel.checkpoint()

    def handle(self, updates: Iterable[FeatureUpdate]) -> list[DriftAlert]:
        """Run the monitor's values of ``updates`` through its detectors; return the alerts."""
        spec = self.spec
        feature, segment_by, kind, group = spec.feature, spec.segment, spec.on, self.group
        alerts: list[DriftAlert] = []
        segments = self.segments
        skipped = 0
        for update in updates:
            if update.group != group or update.kind != kind:
                continue
            values = update.values
            value = values.get(feature, _ABSENT)
            if value is _ABSENT:
                continue  # a close of another window of the group
            kind_of = type(value)
            if not (
                (kind_of is float and -math.inf < value < math.inf)
                or kind_of is int
                or (
                    value is not None
                    and not isinstance(value, bool)
                    and isinstance(value, int | float)
                    and math.isfinite(value)
                )
            ) or (update.errors is not None and feature in update.errors):
                skipped += 1
                continue
            if segment_by is None:
                segment_value = None
            elif segment_by == "key":
                segment_value = update.key
            else:
                segment_value = values.get(segment_by)
                if segment_value is None or not _hashable(segment_value):
                    skipped += 1
                    continue
            segment = segments.get(segment_value)
            if segment is None:
                if len(segments) >= spec.max_segments:
                    self.refused += 1
                    continue
                segment = segments[segment_value] = _Segment(
                    segment_value, build_detector(spec.detector)
                )
            detector = segment.detector
            try:
                drifting = detector.update(float(value), update.event_time)
            except Exception as exc:
                # a detector's bug: this value is lost, not the chunk, and the actor goes on
                self.failures.append((update, exc))
                continue
            self.values += 1
            segment.values += 1
            if drifting and not segment.drifting:
                alerts.append(self._alert(segment, update))
                if spec.action == "reset":
                    detector.reset()
                    drifting = False
                elif spec.action == "adopt_reference":
                    detector.adopt_reference()
                    drifting = False
            segment.drifting = drifting
        self.skipped += skipped
        return alerts

    def _alert(self, segment: _Segment, update: FeatureUpdate) -> DriftAlert:
        spec = self.spec
        detector = segment.detector
        segment.alerts += 1
        segment.last_alert_time = update.event_time
        self.alerts += 1
        threshold = detector.threshold
        alert = DriftAlert(
            monitor=spec.name,
            feature=spec.feature,
            detector=detector.kind,
            segment=segment.value,
            key=update.key,
            event_time=update.event_time,
            wall_time=self.clock(),
            score=detector.score if detector.score is not None else math.nan,
            threshold=threshold if threshold is not None else math.nan,
            p_value=detector.p_value,
            reference_size=detector.reference_size,
            window_size=detector.window_size,
            action=spec.action,
            count=segment.alerts,
        )
        _log.info(
            "drift_detected",
            monitor=spec.name,
            segment=repr(segment.value),
            detector=detector.kind,
            score=alert.score,
            threshold=alert.threshold,
            event_time=update.event_time,
            action=spec.action,
        )
        return alert

    def status(self) -> DriftStatus:
        spec = self.spec
        segments = []
        for segment in self.segments.values():
            detector = segment.detector
            segments.append(
                DriftSegmentStatus(
                    segment=segment.value,
                    phase=detector.phase,
                    score=detector.score,
                    threshold=detector.threshold,
                    p_value=detector.p_value,
                    drifting=detector.drifting,
                    values=segment.values,
                    alerts=segment.alerts,
                    reference_size=detector.reference_size,
                    window_size=detector.window_size,
                    last_alert_time=segment.last_alert_time,
                )
            )
        return DriftStatus(
            monitor=spec.name,
            feature=spec.feature,
            detector=spec.detector.type_name,
            action=spec.action,
            segment_by=spec.segment,
            values=self.values,
            skipped=self.skipped,
            dropped=self.subscription.dropped,
            segments_refused=self.refused,
            failed=self.failed + len(self.failures),
            alerts=self.alerts,
            segments=tuple(segments),
        )


def _hashable(value: Any) -> bool:
    try:
        hash(value)  # only whether it can be a dict key: nothing is routed or kept by it
    except TypeError:
        return False
    return True


class DriftMonitorActor(Actor[Any]):
    """One monitor: reads its subscription on a timer, on a status ask and when it stops."""

    def __init__(self, state: MonitorState, interval: float = POLL_INTERVAL) -> None:
        self.state = state
        self.interval = interval

    async def on_start(self) -> None:
        self.context.start_periodic_timer("drain", _DRAIN, self.interval)

    async def receive(self, message: Any) -> Any:
        await self._drain()
        if isinstance(message, GetDriftStatus):
            return self.state.status()
        return None

    async def on_stop(self) -> None:
        # at shutdown, after the shards applied everything: what they published last
        await self._drain()

    async def _drain(self) -> None:
        state = self.state
        await state.drain()
        if state.failures:
            for update, error in state.failures:
                self.context.dead_letters.record(
                    update,
                    self.context.name,
                    DeadLetterReason.FAILED,
                    error=error,
                    detail=f"drift monitor {state.spec.name!r}: its detector failed on the "
                    f"value of {state.spec.feature!r} for key {update.key!r}: {error!r}",
                )
            state.failed += len(state.failures)
            state.failures.clear()


class DriftMonitors:
    """The runtime's monitors and the hub of their alerts. Internal: ``FeatureRuntime``'s
    ``monitor_drift``, ``drift_alerts`` and ``drift_status`` use it."""

    def __init__(self) -> None:
        self.hub: UpdateHub[DriftAlert] = UpdateHub()
        self.monitors: list[tuple[MonitorState, ActorRef[Any]]] = []
        self._supervisor: Supervisor | None = None

    def close(self) -> None:
        """End the alert subscriptions (at shutdown, once the monitors have stopped)."""
        self.hub.close()

    def plan(
        self,
        monitors: Sequence[Any],
        feature_set: FeatureSet,
        group_of: Callable[[str], tuple[str, tuple[str, ...]]],
    ) -> list[tuple[DriftMonitor, str]]:
        """Check ``monitors`` against the runtime; return each with its feature's group.

        Raises:
            TypeError: one is not a ``DriftMonitor``.
            SpecError: a name is taken, or ``segment`` or ``on`` does not fit the feature.
            UnknownFeature: the feature (or the segment feature) does not exist.
        """
        if not monitors:
            raise SpecError("monitor_drift() needs at least one DriftMonitor")
        taken = {state.spec.name for state, _ in self.monitors}
        planned = []
        for index, monitor in enumerate(monitors):
            where = f"monitors[{index}]"
            if not isinstance(monitor, DriftMonitor):
                raise TypeError(f"{where}: expected a DriftMonitor, got {type(monitor).__name__}")
            if monitor.name in taken:
                raise SpecError(f"{where}.name: a monitor named {monitor.name!r} is running")
            taken.add(monitor.name)
            group, names = group_of(monitor.feature)
            feature = feature_set.feature(monitor.feature)
            windowed = feature_set.is_windowed(monitor.feature)
            window = getattr(feature, "window", None)
            if monitor.on == "close":
                if window is None or window.type_name == "sliding":
                    raise SpecError(
                        f"{where}.on: 'close' needs a feature with tumbling, hopping or session "
                        f"windows; {monitor.feature!r} has "
                        + ("none" if window is None else "a sliding window, which never closes")
                    )
            elif windowed and feature_set.emit == "close":
                raise SpecError(
                    f"{where}.on: the feature set emits windowed features only when their "
                    f"windows close (emit='close'): watch {monitor.feature!r} with on='close'"
                )
            segment = monitor.segment
            if segment is not None and segment != "key":
                if segment not in names:
                    feature_set.feature(segment)  # UnknownFeature if there is none
                    raise SpecError(
                        f"{where}.segment: {segment!r} is computed in another group than "
                        f"{monitor.feature!r} (another stream, or windowed and not), so its "
                        "value does not come with the watched one: use a feature of the same "
                        "group, or segment='key'"
                    )
                if (
                    monitor.on == "close"
                    and getattr(feature_set.feature(segment), "window", None) != window
                ):
                    raise SpecError(
                        f"{where}.segment: with on='close', {segment!r} needs the same window "
                        f"as {monitor.feature!r}, to close with it"
                    )
            planned.append((monitor, group))
        return planned

    async def start(
        self,
        system: ActorSystem,
        planned: Sequence[tuple[DriftMonitor, str]],
        updates: UpdateHub[FeatureUpdate],
        clock: Callable[[], float],
    ) -> None:
        """Spawn an actor per planned monitor, each with its own subscription to ``updates``.

        The monitors have a supervisor of their own that resumes a monitor whose handler
        failed (the updates it was reading go to dead letters with the error): a monitor
        never stops the runtime.
        """
        if self._supervisor is None:
            self._supervisor = system.supervisor("drift", decider=resume_always)
        for monitor, group in planned:
            subscription = updates.subscribe(monitor.buffer, "drop_oldest")
            state = MonitorState(monitor, group, subscription, self.hub, clock)
            try:
                ref = await self._supervisor.spawn(
                    functools.partial(DriftMonitorActor, state),
                    name=f"drift-{monitor.name}",
                    mailbox=MailboxConfig(capacity=16, max_batch_size=1),
                )
            except BaseException:
                await subscription.aclose()
                raise
            self.monitors.append((state, ref))
            _log.info(
                "drift_monitor_started",
                monitor=monitor.name,
                feature=monitor.feature,
                detector=monitor.detector.type_name,
                segment=monitor.segment,
            )

    def subscribe(self, buffer: int, policy: Policy) -> UpdateSubscription[DriftAlert]:
        return self.hub.subscribe(buffer, policy)

    async def status(self) -> dict[str, DriftStatus]:
        return {
            state.spec.name: await ref.ask(GetDriftStatus(), timeout=None)
            for state, ref in self.monitors
        }
