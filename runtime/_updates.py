"""Fan-out of the runtime's outputs to subscribers: ``rt.updates()``, ``rt.join_records()``,
``rt.enriched_events()``, ``rt.late_events()`` and ``rt.drift_alerts()`` share this machinery.

Outputs travel in batches (``runtime._batches``): an actor publishes one batch per batch of
events it applied, and a subscriber wakes once per batch. A subscription reads either one item
at a time (``async for update in subscription``: each item is built from its batch as it is
reached) or a batch at a time (``async for batch in subscription.batches()``: columns, no
object per event).

Each subscription has a bounded buffer, counted in items (events), not batches: a batch that
would overflow it is split. When a subscriber falls behind, the policy decides: ``"block"`` (the
default) makes the publishing actor wait, which slows ingest down to the subscriber's pace and
loses nothing; ``"drop_oldest"`` keeps the newest items and counts what it drops. A
subscription that is garbage-collected without being closed unsubscribes itself, so an
abandoned iterator cannot stall the runtime.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio

__all__ = ["OutputBatch", "SubscriptionStatistics", "UpdateHub", "UpdateSubscription"]

Policy = Literal["block", "drop_oldest"]
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class OutputBatch(Protocol[T_co]):
    """What a hub carries: a sized, sliceable batch that iterates as its items."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T_co]: ...

    def __getitem__(self, index: slice) -> Any: ...


@dataclass(frozen=True)
class SubscriptionStatistics:
    """A snapshot of one subscription (``subscription.statistics()``)."""

    #: items waiting to be read (the rest of a batch being read included)
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
        "current",
        "dropped",
        "held",
        "held_batch",
        "policy",
        "readable",
        "size",
        "waiting",
        "writable",
    )

    def __init__(self, capacity: int, policy: Policy) -> None:
        #: batches, oldest first; ``size`` is the items they hold, with those of the batch
        #: being read one item at a time (``held``, out of the buffer): the reader's
        #: items count against the capacity until they are read
        self.buffer: deque[Any] = deque()
        self.size = 0
        self.held = 0
        #: the batch being read one item at a time and the iterator over it (its last
        #: ``held`` items are not read yet)
        self.held_batch: Any = None
        self.current: Iterator[Any] | None = None
        self.capacity = capacity
        self.policy = policy
        self.closed = False
        self.dropped = 0
        #: publishers waiting for room
        self.waiting = 0
        self.readable = anyio.Event()
        self.writable = anyio.Event()


class UpdateSubscription(Generic[T]):
    """An async iterator of :class:`FeatureUpdate` (or of the items of another output:
    ``JoinRecord``, ``EnrichedEvent``, ``LateEvent``, ``DriftAlert``), also an async context
    manager. :meth:`batches` reads the same stream a batch at a time.

    Iteration ends when the runtime shuts down or the subscription is closed.
    """

    def __init__(self, hub: UpdateHub[T], channel: _Channel) -> None:
        self._hub = hub
        self._channel = channel
        self._finalizer = weakref.finalize(self, hub.unsubscribe, channel)

    @property
    def dropped(self) -> int:
        """Items dropped by the ``drop_oldest`` policy."""
        return self._channel.dropped

    def statistics(self) -> SubscriptionStatistics:
        """A snapshot of the subscription's buffer: its depth never exceeds its capacity."""
        channel = self._channel
        return SubscriptionStatistics(
            depth=channel.size,
            capacity=channel.capacity,
            policy=channel.policy,
            dropped=channel.dropped,
            publishers_waiting=channel.waiting,
        )

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def _next_batch(self) -> Any:
        """The oldest batch in the buffer (its items no longer counted)."""
        channel = self._channel
        while not channel.buffer:
            if channel.closed:
                raise StopAsyncIteration
            # Several tasks may read one subscription: they share the event of this round.
            if channel.readable.is_set():
                channel.readable = anyio.Event()
            await channel.readable.wait()
        batch = channel.buffer.popleft()
        channel.size -= len(batch)
        channel.writable.set()
        return batch

    async def __anext__(self) -> T:
        channel = self._channel
        if not channel.held:
            while True:
                batch = await self._next_batch()
                size = len(batch)
                if size:
                    break
            # its items count again until read, so that the buffer's bound holds
            channel.held_batch = batch
            channel.current = iter(batch)
            channel.held = size
            channel.size += size
        channel.size -= 1
        channel.held -= 1
        if channel.waiting:
            channel.writable.set()
        item: T = next(channel.current)  # type: ignore[arg-type]
        return item

    async def _batches(self) -> AsyncIterator[Any]:
        channel = self._channel
        while True:
            held = channel.held
            if held:
                # the rest of a batch partly read one item at a time
                batch = channel.held_batch
                channel.size -= held
                channel.held = 0
                channel.held_batch = channel.current = None
                channel.writable.set()
                yield batch[len(batch) - held :]
                continue
            try:
                batch = await self._next_batch()
            except StopAsyncIteration:
                return
            yield batch

    def batches(self) -> AsyncIterator[Any]:
        """The same stream, a batch at a time (``UpdateBatch``, ``JoinRecordBatch``,
        ``EnrichedBatch``, ``LateEventBatch``): one object per batch of events, with columns,
        the cheapest way to read every output. Ends when the subscription does."""
        return self._batches()

    async def aclose(self) -> None:
        """Unsubscribe; items already buffered can still be read."""
        self._finalizer()

    async def __aenter__(self) -> UpdateSubscription[T]:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class UpdateHub(Generic[T]):
    """Internal: the runtime's set of subscriptions to one output."""

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

    async def publish(self, batch: OutputBatch[T]) -> None:
        """Give ``batch`` to every subscription: one wake-up of each reader. With
        ``"block"`` it waits for room (a batch larger than the buffer goes in parts)."""
        size = len(batch)
        if not size:
            return
        for channel in tuple(self._channels):
            if channel.size + size <= channel.capacity:  # the usual case: room for it all
                channel.buffer.append(batch)
                channel.size += size
                channel.readable.set()
            elif channel.policy == "drop_oldest":
                _drop_into(channel, batch, size)
            else:
                await _wait_into(channel, batch, size)

    def close(self) -> None:
        for channel in tuple(self._channels):
            self.unsubscribe(channel)


def _drop_into(channel: _Channel, batch: Any, size: int) -> None:
    """Keep the newest ``capacity`` items: drop the oldest, those of the batch being read
    first, then the buffer's, then the head of ``batch``."""
    excess = channel.size + size - channel.capacity
    channel.dropped += excess
    held = channel.held
    if held:
        count = min(held, excess)
        rest = channel.held_batch
        rest = rest[len(rest) - held + count :]
        channel.held_batch = rest
        channel.current = iter(rest)
        channel.held -= count
        channel.size -= count
        excess -= count
    buffer = channel.buffer
    while excess and buffer:
        oldest = buffer[0]
        count = len(oldest)
        if count <= excess:
            buffer.popleft()
            channel.size -= count
            excess -= count
        else:
            buffer[0] = oldest[excess:]
            channel.size -= excess
            excess = 0
    if excess:  # nothing older is left: the batch's oldest items go too
        batch = batch[excess:]
        size -= excess
    if size:
        buffer.append(batch)
        channel.size += size
    channel.readable.set()


async def _wait_into(channel: _Channel, batch: Any, size: int) -> None:
    """Put ``batch`` in as room comes (in parts when it is larger than the room)."""
    start = 0
    channel.waiting += 1
    try:
        while start < size and not channel.closed:
            room = channel.capacity - channel.size
            if room <= 0:
                # shard actors publishing at once share the event of this round
                if channel.writable.is_set():
                    channel.writable = anyio.Event()
                channel.readable.set()
                await channel.writable.wait()
                continue
            part = batch if start == 0 and room >= size else batch[start : start + room]
            channel.buffer.append(part)
            taken = len(part)
            channel.size += taken
            start += taken
            channel.readable.set()
    finally:
        channel.waiting -= 1
