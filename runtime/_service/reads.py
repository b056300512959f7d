"""Reads of single keys from concurrent requests, coalesced into one ``get_many``.

``GET /features/{key}`` asks the shard actors once per feature group; a ``get_many`` of many
keys asks them once too. So the reads that arrive while one is being answered wait for the
next round and go together (the DataLoader manner, as the kernel's ``BatchLoader``): under
light load a read goes alone at once; under heavy load rounds grow, up to
:data:`MAX_ROUND` keys, and the cost of the asks is shared. Reads with different ``features``
or ``as_of`` go in different calls of the same round.

Up to :data:`MAX_ROUNDS` rounds are answered at once: a slow round (a worker being started
again, a read as of a time that takes long) does not hold the reads that come after it,
which go in the next round as soon as one is free; while every round is busy, the reads
that come keep coalescing into the next.

Reads are answered only while :meth:`ReadBatcher.run` runs (the service's lifespan runs it):
a read asked before it starts or after it ends raises :class:`ReadsStopped` at once, and the
reads waiting when it ends (in a round or not yet) raise it too, rather than wait for ever
for a round that will not come.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

__all__ = ["MAX_ROUND", "MAX_ROUNDS", "ReadBatcher", "ReadsStopped"]

#: the most keys read in one round
MAX_ROUND = 1024
#: the most rounds answered at once
MAX_ROUNDS = 4

Pending = dict[tuple[tuple[str, ...] | None, Any], list["_Waiter"]]
Reader = Callable[[list[Any], "list[str] | None", Any], Awaitable[dict[Any, Any]]]


class ReadsStopped(RuntimeError):
    """The task that answers reads (:meth:`ReadBatcher.run`) is not running: not started
    yet, or ended."""


class _Waiter:
    __slots__ = ("done", "error", "key", "value")

    def __init__(self, key: Any) -> None:
        self.key = key
        self.done = anyio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ReadBatcher:
    """Coalesces reads into rounds; :meth:`run` is the task that answers them."""

    def __init__(self, read: Reader) -> None:
        self._read = read
        #: (features, as_of) -> waiters, in arrival order
        self._pending: Pending = {}
        self._count = 0
        self._wake = anyio.Event()
        #: whether :meth:`run` runs: a read while it does not would wait for ever
        self._active = False

    @property
    def active(self) -> bool:
        """Whether reads are answered (:meth:`run` runs)."""
        return self._active

    async def get(self, key: Any, features: list[str] | None, as_of: Any) -> Any:
        """The vector of ``key``, read in the next round.

        Raises:
            ReadsStopped: :meth:`run` is not running, or ended before the read was answered.
            Whatever ``read`` raises for it.
        """
        if not self._active:
            raise ReadsStopped("reads are not answered: the service is not running")
        waiter = _Waiter(key)
        group = (None if features is None else tuple(features), as_of)
        self._pending.setdefault(group, []).append(waiter)
        self._count += 1
        self._wake.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer rounds until cancelled (up to :data:`MAX_ROUNDS` at once, each in a task
        of this one's). Reads are taken from when it has started (``task_status``) until it
        ends; then every read not answered raises :class:`ReadsStopped`."""
        if self._active:
            raise RuntimeError("ReadBatcher.run is already running")
        free = anyio.Semaphore(MAX_ROUNDS)
        self._active = True
        try:
            async with anyio.create_task_group() as rounds:
                task_status.started()
                while True:
                    await self._wake.wait()
                    await free.acquire()  # while every round is busy, reads keep coalescing
                    self._wake = anyio.Event()
                    # every read that came while the rounds were busy (and, as this task runs
                    # a loop turn after the first of them, those of the same turn) is in it
                    pending, self._pending, self._count = self._pending, {}, 0
                    rounds.start_soon(self._round, pending, free)
        finally:
            # no read is taken from now on, and those not yet in a round are failed (those in
            # a round were failed by it, cancelled with this task)
            self._active = False
            pending, self._pending, self._count = self._pending, {}, 0
            self._wake = anyio.Event()
            _fail(pending)

    async def _round(self, pending: Pending, free: Any) -> None:
        try:
            calls = [
                (waiters[start : start + MAX_ROUND], None if names is None else list(names), at)
                for (names, at), waiters in pending.items()
                for start in range(0, len(waiters), MAX_ROUND)
            ]
            if len(calls) == 1:
                await self._answer(*calls[0])
                return
            async with anyio.create_task_group() as tg:
                for call in calls:
                    tg.start_soon(self._answer, *call)
        finally:
            free.release()
            _fail(pending)  # the round was cancelled (run ended): its readers must not wait

    async def _answer(self, waiters: list[_Waiter], features: list[str] | None, as_of: Any) -> None:
        try:
            found = await self._read([w.key for w in waiters], features, as_of)
        except Exception as exc:
            if len(waiters) > 1:
                # one bad key fails the call: each read alone, so that it fails only its own
                for waiter in waiters:
                    await self._answer([waiter], features, as_of)
                return
            waiters[0].error = exc
            waiters[0].done.set()
            return
        for waiter in waiters:
            waiter.value = found[waiter.key]
            waiter.done.set()


def _fail(pending: Pending) -> None:
    """Fail every read of ``pending`` not answered yet with :class:`ReadsStopped`."""
    for waiters in pending.values():
        for waiter in waiters:
            if not waiter.done.is_set():
                waiter.error = ReadsStopped("the service stopped before the read was answered")
                waiter.done.set()
