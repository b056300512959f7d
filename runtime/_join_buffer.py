"""One side of a stream-stream join for one key: its buffered events, in event-time order.

The join actors (issue 5, ``docs/design/joins.md``) keep one :class:`SideBuffer` per side and
key. An event is matched against the other side's buffer over an interval of time, then added
to its own; the watermark expires events from the front. Everything is O(log n) or amortized
O(1) per event; nothing scans a buffer or the keys:

- ``add`` appends in O(1) for an event at or after the newest, and inserts in place (O(d) for
  ``d`` places from the end) for one out of order; equal times keep their arrival order;
- ``between(low, high)`` finds the events with ``low <= t <= high`` by bisection;
- ``expire(cutoff)`` drops the events with ``t < cutoff`` from the front (a head index, with the
  list compacted once the dead part outweighs the live one), and returns them, so that an
  outer join can emit the unmatched ones;
- ``evict_oldest`` drops the oldest event, for the buffer caps.

Each entry is a small list ``[t, event, matches]``: ``matches`` counts the records the event
took part in, which outer joins read to find the unmatched.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

__all__ = ["SideBuffer"]


def _time(entry: list[Any]) -> int:
    return int(entry[0])


class SideBuffer:
    """A key's buffered events of one side, ordered by time."""

    __slots__ = ("_entries", "_head")

    def __init__(self) -> None:
        self._entries: list[list[Any]] = []
        #: entries before this index are expired
        self._head = 0

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def __iter__(self) -> Iterator[list[Any]]:
        entries = self._entries
        for i in range(self._head, len(entries)):
            yield entries[i]

    @property
    def oldest(self) -> int | None:
        """The oldest buffered event time, or None when empty."""
        return self._entries[self._head][0] if len(self) else None

    @property
    def newest(self) -> int | None:
        """The newest buffered event time, or None when empty."""
        return self._entries[-1][0] if len(self) else None

    def add(self, t: int, event: Any) -> list[Any]:
        """Buffer an event at time ``t``; returns its entry ``[t, event, matches]``."""
        entry = [t, event, 0]
        entries = self._entries
        if len(entries) == self._head or t >= entries[-1][0]:
            entries.append(entry)
        else:
            # after every entry with a time <= t: arrival order among equal times
            entries.insert(bisect_right(entries, t, lo=self._head, key=_time), entry)
        return entry

    def between(self, low: int, high: int) -> list[list[Any]]:
        """The entries with ``low <= t <= high``, in time order (arrival order for ties)."""
        entries = self._entries
        start = bisect_left(entries, low, lo=self._head, key=_time)
        end = bisect_right(entries, high, lo=start, key=_time)
        return entries[start:end]

    def count_between(self, low: int, high: int) -> int:
        """How many entries have ``low <= t <= high`` (two bisections, no list built)."""
        entries = self._entries
        start = bisect_left(entries, low, lo=self._head, key=_time)
        return bisect_right(entries, high, lo=start, key=_time) - start

    def expire(self, cutoff: int) -> list[list[Any]]:
        """Drop and return the entries with ``t < cutoff``, oldest first."""
        entries = self._entries
        head = self._head
        end = head
        stop = len(entries)
        while end < stop and entries[end][0] < cutoff:
            end += 1
        if end == head:
            return []
        gone = entries[head:end]
        self._advance(end)
        return gone

    def evict_oldest(self) -> list[Any] | None:
        """Drop and return the oldest entry (for a buffer cap), or None when empty."""
        if not len(self):
            return None
        entry = self._entries[self._head]
        self._advance(self._head + 1)
        return entry

    def _advance(self, head: int) -> None:
        entries = self._entries
        if head >= len(entries):
            entries.clear()
            self._head = 0
        elif head > len(entries) - head:
            # the dead prefix outweighs the live part: compact (amortized O(1) per entry)
            del entries[:head]
            self._head = 0
        else:
            self._head = head

    def nbytes(self) -> int:
        """Estimated bytes held: each entry's list, its slot, and the event's dict."""
        live = len(self)
        if not live:
            return sys.getsizeof(self._entries)
        sample = self._entries[-1][1]
        per_event = 88 + 8 + (sys.getsizeof(sample) if isinstance(sample, dict) else 64)
        return sys.getsizeof(self._entries) + live * per_event
