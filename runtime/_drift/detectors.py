"""Drift detectors over one stream of values: the ``DriftDetector`` protocol, Page-Hinkley and
ADWIN (``docs/drift.md``).

A detector is a plain Python object made from a spec of ``runtime._spec.drift`` (by
``build_detector``); it takes one value at a time (``update(value, time)``, True while it finds
drift) and can be used alone. The detectors that compare a live window with a reference sample
(PSI, KS) are in ``runtime._drift.two_sample``; the actors that run detectors on feature values
are in ``runtime._drift.monitor``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from .._spec.drift import ADWIN, PageHinkley

__all__ = ["AdwinDetector", "DriftDetector", "PageHinkleyDetector"]


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
    #: called when a detector with a reference freezes it empty (its monitor says which)
    on_empty: Callable[[], None] | None = None
    #: the size of a reference too small for the detector ever to alert (KS: no window of its
    #: size reaches ``alpha`` against it), or None
    too_small: int | None = None
    #: called with that size when such a reference is set (its monitor says which)
    on_too_small: Callable[[int], None] | None = None

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
