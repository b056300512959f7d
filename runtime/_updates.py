"""Fan-out of feature updates to subscribers of ``rt.updates()`` (and of late events to
subscribers of ``rt.late_events()``: the same machinery, another item type).

Each subscription has a bounded buffer. When a subscriber falls behind, the policy decides:
``"block"`` (the default) makes the shard wait, which slows ingest down to the subscriber's pace
and loses nothing; ``"drop_oldest"`` keeps the newest updates and counts what it drops. A
subscription that is garbage-collected without being closed unsubscribes itself, so an abandoned
iterator cannot stall the runtime.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import anyio

__all__ = ["SubscriptionStatistics", "UpdateHub", "UpdateSubscription"]

Policy = Literal["block", "drop_oldest"]
T = TypeVar("T")


@dataclass(frozen=True)
class SubscriptionStatistics:
    """A snapshot of one subscription (``subscription.statistics()``)."""

    #: items waiting to be read
    depth: int
    #: the most items it holds (its ``buffer``)
    capacity: int
    #: ``"block"`` or ``"drop_oldest"``
    policy: Policy
    #: items the ``drop_oldest`` policy dropped
    dropped: int
    #: publishers (shard actors) waiting for room: with ``"block"``, the runtime is held at
    #: this subscriber's pace while this is above 0
    publishers_waiting: int


class _Channel:
    __slots__ = (
        "buffer",
        "capacity",
        "closed",
        "dropped",
        "policy",
        "readable",
        "waiting",
        "writable",
    )

    def __init__(self, capacity: int, policy: Policy) -> None:
        self.buffer: deque[Any] = deque()
        self.capacity = capacity
        self.policy = policy
        self.closed = False
        self.dropped = 0
        #: publishers waiting for room
        self.waiting = 0
        self.readable = anyio.Event()
        self.writable = anyio.Event()


class UpdateSubscription(Generic[T]):
    """An async iterator of :class:`FeatureUpdate` (or of ``LateEvent`` from
    ``rt.late_events()``), also an async context manager.

    Iteration ends when the runtime shuts down or the subscription is closed.
    """

    def __init__(self, hub: UpdateHub[T], channel: _Channel) -> None:
        self._hub = hub
        self._channel = channel
        self._finalizer = weakref.finalize(self, hub.unsubscribe, channel)

    @property
    def dropped(self) -> int:
        """Updates dropped by the ``drop_oldest`` policy."""
        return self._channel.dropped

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of the subscription's buffer: its depth never exceeds its capacity."""
        channel = self._channel
        return SubscriptionStatistics(
            depth=len(channel.buffer),
            capacity=channel.capacity,
            policy=channel.policy,
            dropped=channel.dropped,
            publishers_waiting=channel.waiting,
        )

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        channel = self._channel
        while not channel.buffer:
            if channel.closed:
                raise StopAsyncIteration
            # Several tasks may read one subscription: they share the event of this round.
            if channel.readable.is_set():
                channel.readable = anyio.Event()
            await channel.readable.wait()
        update: T = channel.buffer.popleft()
        channel.writable.set()
        return update

    async def aclose(self) -> None:
        """Unsubscribe; updates already buffered can still be read."""
        self._finalizer()

    async def __aenter__(self) -> UpdateSubscription[T]:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class UpdateHub(Generic[T]):
    """Internal: the runtime's set of subscriptions."""

    def __init__(self) -> None:
        self._channels: list[_Channel] = []

    @property
    def active(self) -> bool:
        return bool(self._channels)

    def subscribe(self, capacity: int, policy: Policy) -> UpdateSubscription[T]:
        # an int only: a float such as math.inf would make the buffer unbounded
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"buffer must be >= 1 (an int), got {capacity!r}")
        if policy not in ("block", "drop_oldest"):
            raise ValueError(f"policy must be 'block' or 'drop_oldest', got {policy!r}")
        channel = _Channel(capacity, policy)
        self._channels.append(channel)
        return UpdateSubscription(self, channel)

    def unsubscribe(self, channel: _Channel) -> None:
        channel.closed = True
        channel.readable.set()
        channel.writable.set()
        if channel in self._channels:
            self._channels.remove(channel)

    async def publish(self, updates: list[T]) -> None:
        for channel in tuple(self._channels):
            buffer = channel.buffer
            for update in updates:
                if len(buffer) >= channel.capacity:
                    if channel.policy == "drop_oldest":
                        buffer.popleft()
                        channel.dropped += 1
                    else:
                        channel.waiting += 1
                        try:
                            while len(buffer) >= channel.capacity and not channel.closed:
                                # shard actors publishing at once share the event of this round
                                if channel.writable.is_set():
                                    channel.writable = anyio.Event()
                                channel.readable.set()
                                await channel.writable.wait()
                        finally:
                            channel.waiting -= 1
                        if channel.closed:
                            break
                buffer.append(update)
            channel.readable.set()

    def close(self) -> None:
        for channel in tuple(self._channels):
            self.unsubscribe(channel)
