"""Bounded mailboxes: a user channel on an anyio memory object stream and a system channel.

A mailbox has two channels. User messages travel through an anyio memory object stream with a
fixed ``capacity``; what happens when it is full is the mailbox's :class:`Overflow` policy.
System messages (stop, restart, timer ticks, supervision) travel through a channel of their own
that the actor serves first, so a full user channel never keeps an actor from being stopped or
restarted. The system channel is bounded by construction: it holds at most one pending tick per
timer key plus a handful of control messages.

The actor never blocks inside the stream's ``receive``: it drains with ``receive_nowait`` and,
when both channels are empty, waits on an event that every put sets. That keeps a wake-up for a
system message from racing with a user message handed to a cancelled receiver.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._exceptions import ConfigError

__all__ = ["Mailbox", "MailboxConfig", "MailboxStatistics", "Overflow"]


class Overflow(enum.Enum):
    """What ``tell`` does when the user channel is full.

    If in doubt, use ``BLOCK``: it slows the producer down to the consumer's pace, which is what
    keeps memory bounded under overload.
    """

    #: ``tell`` waits for room (backpressure); ``tell_nowait`` raises :class:`MailboxFull`.
    BLOCK = "block"
    #: the message goes to dead letters with reason ``dropped``; the sender is not told.
    DROP = "drop"
    #: ``tell`` and ``tell_nowait`` raise :class:`MailboxFull`.
    FAIL = "fail"


@dataclass(frozen=True, kw_only=True)
class MailboxConfig:
    """Limits of one actor's mailbox.

    Args:
        capacity: user messages the mailbox holds before its overflow policy applies (>= 1).
        overflow: the :class:`Overflow` policy.
        max_batch_size: user messages the actor takes per turn (>= 1). After each turn the actor
            yields to the event loop, so this bounds how long one actor runs without a pause.

    Raises:
        ConfigError: a limit is out of range.
    """

    capacity: int = 1024
    overflow: Overflow = Overflow.BLOCK
    max_batch_size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.capacity, int) or self.capacity < 1:
            raise ConfigError(f"capacity must be an int >= 1, got {self.capacity!r}")
        if not isinstance(self.overflow, Overflow):
            raise ConfigError(f"overflow must be an Overflow member, got {self.overflow!r}")
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be an int >= 1, got {self.max_batch_size!r}")


@dataclass(frozen=True)
class MailboxStatistics:
    """A snapshot of one mailbox."""

    #: user messages waiting in the mailbox (including those given back by a cut-short turn)
    depth: int
    #: the most user messages the channel holds; ``depth`` exceeds it only by the messages a
    #: turn cut short gave back (at most ``max_batch_size``)
    capacity: int
    #: tasks blocked in ``tell`` waiting for room (each holds its one message, not counted in
    #: ``depth``)
    senders_waiting: int
    #: user and timer messages the actor has handled since it was spawned
    processed: int
    #: messages the ``DROP`` policy sent to dead letters
    dropped: int
    #: system messages waiting (stop, restart, timer ticks)
    system_depth: int


class Mailbox:
    """The two channels of one actor. Internal: actors and refs use it, users see statistics."""

    __slots__ = (
        "_closed",
        "_dropped",
        "_recv",
        "_send",
        "_wake",
        "config",
        "held",
        "processed",
        "system",
    )

    def __init__(self, config: MailboxConfig) -> None:
        self.config = config
        send, recv = anyio.create_memory_object_stream[Any](config.capacity)
        self._send: MemoryObjectSendStream[Any] = send
        self._recv: MemoryObjectReceiveStream[Any] = recv
        self.system: deque[Any] = deque()
        #: user messages taken out of the stream but given back unhandled (a turn cut short by
        #: a crash or a cancellation); they are served before the stream, in order
        self.held: deque[Any] = deque()
        self._wake: anyio.Event | None = None
        self.processed = 0
        self._dropped = 0
        self._closed = False

    # -- senders -------------------------------------------------------------------------------
    def put_nowait(self, item: Any) -> None:
        """Put a user message; raises ``anyio.WouldBlock`` when full, ``ClosedResourceError``
        or ``BrokenResourceError`` when the mailbox is closed."""
        self._send.send_nowait(item)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def put(self, item: Any) -> None:
        """Put a user message, waiting for room."""
        try:
            self.put_nowait(item)
        except anyio.WouldBlock:
            await self._send.send(item)
            self.notify()

    def put_system(self, message: Any) -> None:
        """Put a system message; it is served before any user message."""
        self.system.append(message)
        self.notify()

    def notify(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def count_drop(self) -> None:
        self._dropped += 1

    # -- the actor's side ------------------------------------------------------------------------
    def hold(self, messages: list[Any]) -> None:
        """Give back messages a turn did not handle; they come first in the next turn."""
        self.held.extendleft(reversed(messages))

    def take(self, limit: int, into: list[Any]) -> None:
        """Move up to ``limit`` waiting user messages into ``into``, held ones first."""
        held = self.held
        while held and len(into) < limit:
            into.append(held.popleft())
        receive = self._recv.receive_nowait
        try:
            for _ in range(limit - len(into)):
                into.append(receive())
        except anyio.WouldBlock:
            pass

    @property
    def idle(self) -> bool:
        """Whether the actor waits for a message: it has seen both channels empty and is
        parked until one comes (not in a turn, nothing queued)."""
        return self._wake is not None

    def has_user_messages(self) -> bool:
        stats = self._send.statistics()
        return bool(self.held) or stats.current_buffer_used > 0 or stats.tasks_waiting_send > 0

    async def wait(self) -> None:
        """Wait until a message of either channel may be there. Call with both seen empty."""
        wake = anyio.Event()
        self._wake = wake
        await wake.wait()

    def close(self) -> list[Any]:
        """Close both ends and return the user messages that were still waiting."""
        left: list[Any] = list(self.held)
        self.held.clear()
        if self._closed:
            return left
        self._closed = True
        # Drain to the end: the buffer, then each waiting sender's message (anyio moves it
        # into the buffer and tells that sender it was delivered, so it must be kept here).
        receive = self._recv.receive_nowait
        while True:
            try:
                left.append(receive())
            except anyio.WouldBlock:
                break
        self._send.close()
        self._recv.close()
        return left

    def statistics(self) -> MailboxStatistics:
        stats = self._send.statistics()
        return MailboxStatistics(
            depth=stats.current_buffer_used + len(self.held),
            capacity=self.config.capacity,
            senders_waiting=stats.tasks_waiting_send,
            processed=self.processed,
            dropped=self._dropped,
            system_depth=len(self.system),
        )
