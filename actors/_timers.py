"""Timers delivered as messages.

One scheduler task per actor system keeps every timer in a heap ordered by deadline, so a timer
costs a heap entry, not a task. When a timer fires, its message goes to the actor's system
channel and is handled by the actor's ``receive`` ahead of user messages. A timer is identified
by a key per actor: starting a timer with a key that is in use replaces the old one. Timers are
cancelled when their actor stops or restarts.

A periodic timer does not pile up ticks behind a busy actor: while one tick is still waiting in
the actor's system channel, the next ones are skipped (counted in ``skipped``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import anyio

from ._exceptions import ConfigError

if TYPE_CHECKING:
    from ._cell import Cell

__all__ = ["Timer", "TimerService"]


class Timer:
    """One scheduled timer. Internal; actors use ``ActorContext.start_timer`` and friends."""

    __slots__ = ("cell", "deadline", "interval", "key", "message", "pending", "skipped")

    def __init__(
        self, cell: Cell, key: Hashable, message: Any, deadline: float, interval: float | None
    ) -> None:
        self.cell = cell
        self.key = key
        self.message = message
        self.deadline = deadline
        self.interval = interval
        #: a tick of this timer is waiting in the actor's system channel
        self.pending = False
        #: ticks skipped because the previous one was still pending
        self.skipped = 0

    @property
    def active(self) -> bool:
        return self.cell.timers.get(self.key) is self


class TimerService:
    """The per-system scheduler. Internal."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        #: heap size after the last compaction; replaced and cancelled timers leave entries
        #: behind until their deadline, so the heap is rebuilt when it doubles
        self._compacted = 0
        self._seq = itertools.count()
        self._wake: anyio.Event | None = None

    def schedule(
        self, cell: Cell, key: Hashable, message: Any, delay: float, interval: float | None
    ) -> Timer:
        if delay < 0:
            raise ConfigError(f"timer delay must be >= 0, got {delay!r}")
        if interval is not None and interval <= 0:
            raise ConfigError(f"timer interval must be > 0, got {interval!r}")
        timer = Timer(cell, key, message, anyio.current_time() + delay, interval)
        cell.timers[key] = timer
        self._push(timer)
        return timer

    def _push(self, timer: Timer) -> None:
        if len(self._heap) > 2 * max(self._compacted, 64):
            self._heap[:] = [entry for entry in self._heap if entry[2].active]
            heapq.heapify(self._heap)
            self._compacted = len(self._heap)
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
        if (earliest is None or timer.deadline < earliest) and self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Fire timers as they come due, until cancelled."""
        heap = self._heap
        while True:
            now = anyio.current_time()
            while heap and heap[0][0] <= now:
                _, _, timer = heapq.heappop(heap)
                if not timer.active:
                    continue
                if timer.pending:
                    timer.skipped += 1
                else:
                    timer.pending = True
                    timer.cell.deliver_timer(timer)
                # A one-shot timer stays in cell.timers until its tick is handled, so
                # ``is_timer_active`` is true until then and a cancel still prevents it.
                if timer.interval is not None:
                    timer.deadline = max(timer.deadline + timer.interval, now)
                    heapq.heappush(heap, (timer.deadline, next(self._seq), timer))
            self._wake = anyio.Event()
            if heap:
                with anyio.move_on_after(max(heap[0][0] - anyio.current_time(), 0)):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = None
