"""Which keys have gone quiet, and when each next needs a visit: the bookkeeping of idle time
and expiry that the window and join engines share.

Keys are kept in ``recent`` in order of their last event (a touch moves a key to the end,
O(1)). A tick moves the keys quiet for long enough from its front into a heap of
``(wake, serial, key, seen)``, and hands back those whose wake time has come; the engine
visits each (advances its clock, closes or expires what it can) and schedules its next wake.
An entry whose ``seen`` no longer matches the key's is stale: the key had an event since and
is in ``recent`` again. Stale entries are dropped when popped, and the heap is compacted
whenever it holds more than twice the keys, so it stays bounded.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

__all__ = ["IdleKeys"]

#: tie-breaker for the heap's entries (keys of different types do not compare)
_SERIAL = itertools.count()


class _Quiet(Protocol):
    #: wall-clock time of the key's last event
    seen: float


class IdleKeys:
    """The quiet-key bookkeeping of one shard actor's engine."""

    __slots__ = ("recent", "sleepers")

    def __init__(self) -> None:
        #: keys in order of their last event
        self.recent: OrderedDict[Any, None] = OrderedDict()
        #: (wake, serial, key, seen): keys out of ``recent``, by when they next need a visit
        self.sleepers: list[tuple[float, int, Any, float]] = []

    def touch(self, key: Any) -> None:
        """The key had an event."""
        recent = self.recent
        if key in recent:
            recent.move_to_end(key)
        else:
            recent[key] = None

    def due(self, states: Mapping[Any, _Quiet], now: float, quiet: float) -> Iterator[Any]:
        """The keys to visit now: quiet for ``quiet`` seconds, or past the wake time the engine
        last gave them with :meth:`schedule`. The engine may drop a key it is given from
        ``states``; it must schedule a wake later than ``now`` for a key it keeps."""
        recent, sleepers = self.recent, self.sleepers
        while recent:
            key = next(iter(recent))
            st = states.get(key)
            if st is None:
                recent.popitem(last=False)
                continue
            if now - st.seen < quiet:
                break
            recent.popitem(last=False)
            heapq.heappush(sleepers, (st.seen + quiet, next(_SERIAL), key, st.seen))
        while sleepers and sleepers[0][0] <= now:
            _, _, key, seen = heapq.heappop(sleepers)
            st = states.get(key)
            if st is None or st.seen != seen or key in recent:
                continue
            yield key
        if len(sleepers) > 2 * len(states) + 1024:
            # each key has at most one entry that is not stale
            sleepers[:] = [
                entry
                for entry in sleepers
                if (st := states.get(entry[2])) is not None
                and st.seen == entry[3]
                and entry[2] not in recent
            ]
            heapq.heapify(sleepers)

    def schedule(self, key: Any, st: _Quiet, wake: float) -> None:
        """Visit the key again at wall-clock time ``wake`` (never, for infinity)."""
        if wake < float("inf"):
            heapq.heappush(self.sleepers, (wake, next(_SERIAL), key, st.seen))
