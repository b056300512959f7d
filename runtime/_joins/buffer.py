"""One side of a stream-stream join for one key: its buffered events, in event-time order.

The join actors (issue 5, ``docs/design/joins.md``) keep one :class:`SideBuffer` per side and
key. An event is matched against the other side's buffer over an interval of time, then added
to its own; the watermark expires events from the front. Everything is O(log n) or amortized
O(1) per event; nothing scans a buffer or the keys.

The buffer is three parallel lists, ``times``, ``events`` and ``matches`` (how many records
each event took part in, which outer joins read to find the unmatched), live from index
``head`` on. Parallel lists rather than an entry object per event: bisection on ``times`` runs
in C with no key function, and an event costs no allocation of its own. The join engine reads
and appends to the lists directly on its hot path; the methods here are the rest:

- ``add`` appends in O(1) for an event at or after the newest, and inserts in place (O(d) for
  ``d`` places from the end) for one out of order; equal times keep their arrival order;
- ``span(low, high)`` gives the index range of the events with ``low <= t <= high``;
- ``expire(cutoff)`` drops the events with ``t < cutoff`` from the front (the head advances;
  the lists are compacted once the dead part outweighs the live one);
- ``evict_oldest`` drops the oldest event, for the buffer caps.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

__all__ = ["SideBuffer"]


class SideBuffer:
    """A key's buffered events of one side, ordered by time."""

    __slots__ = ("events", "head", "matches", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.events: list[Any] = []
        self.matches: list[int] = []
        #: entries before this index are gone
        self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head

    def __iter__(self) -> Iterator[tuple[int, Any, int]]:
        """``(t, event, matches)`` of the live events, oldest first."""
        for i in range(self.head, len(self.times)):
            yield self.times[i], self.events[i], self.matches[i]

    @property
    def oldest(self) -> int | None:
        """The oldest buffered event time, or None when empty."""
        return self.times[self.head] if len(self) else None

    @property
    def newest(self) -> int | None:
        """The newest buffered event time, or None when empty."""
        return self.times[-1] if len(self) else None

    def add(self, t: int, event: Any, matches: int = 0) -> int:
        """Buffer an event at time ``t``; returns its index."""
        times = self.times
        if len(times) == self.head or t >= times[-1]:
            times.append(t)
            self.events.append(event)
            self.matches.append(matches)
            return len(times) - 1
        # after every event with a time <= t: arrival order among equal times
        index = bisect_right(times, t, self.head)
        times.insert(index, t)
        self.events.insert(index, event)
        self.matches.insert(index, matches)
        return index

    def span(self, low: int, high: int) -> tuple[int, int]:
        """``(start, end)``: the indexes of the events with ``low <= t <= high``."""
        times = self.times
        start = bisect_left(times, low, self.head)
        return start, bisect_right(times, high, start)

    def between(self, low: int, high: int) -> list[tuple[int, Any, int]]:
        """``(t, event, matches)`` with ``low <= t <= high``, in time order (arrival order
        for ties)."""
        return self._entries(*self.span(low, high))

    def expire(self, cutoff: int) -> list[tuple[int, Any, int]]:
        """Drop and return ``(t, event, matches)`` of the events with ``t < cutoff``, oldest
        first."""
        head = self.head
        end = bisect_left(self.times, cutoff, head)
        if end == head:
            return []
        gone = self._entries(head, end)
        self.advance(end)
        return gone

    def _entries(self, start: int, end: int) -> list[tuple[int, Any, int]]:
        times, events, matches = self.times, self.events, self.matches
        return list(zip(times[start:end], events[start:end], matches[start:end], strict=True))

    def evict_oldest(self) -> tuple[int, Any, int] | None:
        """Drop and return the oldest ``(t, event, matches)`` (for a buffer cap), or None."""
        if not len(self):
            return None
        head = self.head
        entry = (self.times[head], self.events[head], self.matches[head])
        self.advance(head + 1)
        return entry

    def advance(self, head: int) -> None:
        """Drop the events before index ``head``."""
        times = self.times
        if head >= len(times):
            times.clear()
            self.events.clear()
            self.matches.clear()
            self.head = 0
        elif head > len(times) - head:
            # the dead prefix outweighs the live part: compact (amortized O(1) per event)
            del times[:head]
            del self.events[:head]
            del self.matches[:head]
            self.head = 0
        else:
            # let go of the dead events now, not at the next compaction
            old = self.head
            if head - old == 1:
                self.events[old] = None
            else:
                self.events[old:head] = [None] * (head - old)
            self.head = head

    def nbytes(self) -> int:
        """Estimated bytes held: the three lists' slots, each event's time, and the event's
        dict (sized from the newest)."""
        lists = sys.getsizeof(self.times) + sys.getsizeof(self.events)
        lists += sys.getsizeof(self.matches)
        live = len(self)
        if not live:
            return lists
        sample = self.events[-1]
        per_event = 32 + (sys.getsizeof(sample) if isinstance(sample, dict) else 64)
        return lists + live * per_event
