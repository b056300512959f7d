"""The state of one sequence feature (``SequencePattern``) for one key: partial matches.

The window engine feeds it the key's events in time order (released by the key's watermark);
see the feature's docstring for the matching rules.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .._spec.windowed import SequencePattern

__all__ = ["PatternState"]


class PatternState:
    """One key's state of one sequence feature."""

    __slots__ = ("dropped", "matches", "partials", "pending", "serial")

    def __init__(self) -> None:
        #: events waiting for the watermark, as (t, serial, event), in time order
        self.pending: list[tuple[int, int, dict[str, Any]]] = []
        self.serial = 0
        #: partial matches, oldest first: [next step, times of the steps matched so far]
        self.partials: deque[list[Any]] = deque()
        self.matches = 0
        #: partial matches dropped by max_partial since the engine last counted them
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.pending) + len(self.partials)

    def step(self, feature: SequencePattern, t: int, ev: dict[str, Any]) -> list[tuple[int, ...]]:
        """Feed one event (in time order); return the matches it completes.

        Every condition is evaluated before anything changes, so an event whose condition
        raises (``FeatureValueError``, say for a string compared with a number) leaves the
        partial matches as they were.
        """
        if feature.where is not None and not feature.where.matches(ev):
            return []
        steps = feature.steps
        within = feature.within_ms
        partials = self.partials
        live = [partial for partial in partials if t - partial[1][0] <= within]
        hits = {stage: steps[stage].matches(ev) for stage in {partial[0] for partial in live}}
        starts = steps[0].matches(ev)
        matched: list[tuple[int, ...]] = []
        kept: deque[list[Any]] = deque()
        for partial in live:
            stage, times = partial
            if hits[stage]:
                times.append(t)
                partial[0] = stage + 1
                if partial[0] == len(steps):
                    matched.append(tuple(times))
                    continue
            kept.append(partial)
        if starts:
            kept.append([1, [t]])
            if len(kept) > feature.max_partial:
                kept.popleft()
                self.dropped += 1
        self.partials = kept
        self.matches += len(matched)
        return matched

    def prune(self, feature: SequencePattern, wm: int) -> None:
        """Drop partial matches that can no longer complete: every event still to come is at
        or after the watermark, past their time limit."""
        within = feature.within_ms
        partials = self.partials
        while partials and wm - partials[0][1][0] > within:
            partials.popleft()
        if partials and any(wm - partial[1][0] > within for partial in partials):
            self.partials = deque(p for p in partials if wm - p[1][0] <= within)
