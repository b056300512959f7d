"""The actor base class, the context an actor sees, and the reference others hold.

An actor is an object with a mailbox whose messages are handled one turn at a time by a task
the actor system owns. Subclass :class:`Actor`, override :meth:`Actor.receive` (and
:meth:`Actor.receive_batch` to take user messages in batches), and spawn it with
``ActorSystem.spawn(factory)``. Others talk to it through its :class:`ActorRef`.

An actor's methods are never called concurrently: ``on_start``, every handler call and
``on_stop`` of one actor run one after another in its own task.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from ._exceptions import AskTimeout, ConfigError, MailboxFull
from ._mailbox import MailboxStatistics, Overflow

if TYPE_CHECKING:
    from ._cell import Cell
    from ._deadletters import DeadLetters
    from ._system import ActorSystem

__all__ = ["Actor", "ActorContext", "ActorRef", "Directive"]

M = TypeVar("M")


class Directive(enum.Enum):
    """What a supervisor does when a child's handler fails a message twice.

    The message is in dead letters whatever the directive; the directive decides the actor's
    fate. A *decider* is a function ``(exception) -> Directive``.
    """

    #: keep the actor and its state; go on with the next message
    RESUME = "resume"
    #: restart the actor (a fresh instance from its factory) under the supervisor's strategy
    RESTART = "restart"
    #: stop the actor for good
    STOP = "stop"
    #: fail the supervisor itself and let its parent decide
    ESCALATE = "escalate"


class Actor(Generic[M]):
    """Base class of actors.

    Override :meth:`receive`; optionally :meth:`receive_batch`, :meth:`on_start`,
    :meth:`on_stop` and :meth:`on_restart`. ``self.context`` is set before ``on_start``.

    Message handling errors: a handler that raises is called again with the same message once;
    if it raises again the message goes to dead letters with the exception and the
    supervisor's decider chooses a :class:`Directive` (by default ``RESUME``: the actor lives on
    with its state). Handlers should therefore leave state unchanged when they raise.
    """

    context: ActorContext

    async def on_start(self) -> None:
        """Called once per instance before its first message. If it raises, the start fails."""

    async def on_stop(self) -> None:
        """Called once per instance when it is stopped or replaced by a restart."""

    def carry_over(self, previous: Actor[M]) -> None:
        """Called on the *new* instance after a restart, before :meth:`on_restart`, with the
        instance it replaces (already stopped): the hook to keep the state that is still good,
        so that a restart does not start from nothing. The default keeps nothing.

        An actor whose handlers leave its state consistent when they raise (as they should)
        can take it all over; a state that a failure may have corrupted is better rebuilt.
        """

    async def on_restart(self, error: BaseException) -> None:
        """Called on the *new* instance after a restart, before ``on_start``.

        This is the hook to restore state (for example from the last checkpoint).
        ``error`` is the failure that caused the restart.
        """

    async def receive(self, message: M) -> Any:
        """Handle one message. The return value is the reply to an ``ask``.

        Asks and timer messages always arrive here, also for actors that take batches.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement receive()")

    async def receive_batch(self, messages: list[M]) -> None:
        """Handle several user messages sent with ``tell``, in order.

        Override it to pay per-message costs once per batch; the mailbox's ``max_batch_size``
        bounds the batch. If it raises, each message of the batch is retried alone (one message
        per call), and those that fail again go to dead letters. The default calls
        :meth:`receive` for each message.
        """
        for message in messages:
            await self.receive(message)


class ActorContext:
    """What an actor knows of its surroundings: its own ref, its system and its timers."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def self(self) -> ActorRef[Any]:
        """This actor's ref."""
        return self._cell.ref

    @property
    def name(self) -> str:
        """This actor's unique path in the system, e.g. ``"root/shards/shard-3"``."""
        return self._cell.name

    @property
    def system(self) -> ActorSystem:
        return self._cell.system

    @property
    def dead_letters(self) -> DeadLetters:
        return self._cell.system.dead_letters

    @property
    def restarts(self) -> int:
        """How many times this actor has been restarted."""
        return self._cell.restarts

    def start_timer(self, key: Hashable, message: Any, delay: float) -> None:
        """Deliver ``message`` to ``receive`` once, ``delay`` seconds from now.

        A timer with the same key is replaced. Raises ``ConfigError`` for a negative delay.
        """
        self._cell.system.timers.schedule(self._cell, key, message, delay, None)

    def start_periodic_timer(
        self, key: Hashable, message: Any, interval: float, *, initial_delay: float | None = None
    ) -> None:
        """Deliver ``message`` every ``interval`` seconds (first after ``initial_delay``,
        which defaults to ``interval``). Ticks do not pile up behind a busy actor."""
        delay = interval if initial_delay is None else initial_delay
        self._cell.system.timers.schedule(self._cell, key, message, delay, interval)

    def cancel_timer(self, key: Hashable) -> bool:
        """Cancel a timer; True if one was active. A tick already queued is not delivered."""
        return self._cell.timers.pop(key, None) is not None

    def is_timer_active(self, key: Hashable) -> bool:
        return key in self._cell.timers

    def stop(self) -> None:
        """Stop this actor after the current turn: a normal exit.

        Under a supervisor, a ``PERMANENT`` child is restarted even after a normal exit (as
        in OTP); make actors that finish their work ``TRANSIENT``.
        """
        self._cell.stop_requested = True


class _Reply:
    __slots__ = ("done", "error", "event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None

    def succeed(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self.value = value
            self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self.error = error
            self.event.set()


class Ask:
    """An ask in a mailbox: the message and where its reply goes. Internal."""

    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: _Reply) -> None:
        self.message = message
        self.reply = reply


class ActorRef(Generic[M]):
    """A handle to send messages to an actor. Cheap to copy and valid across restarts."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def is_alive(self) -> bool:
        """False once the actor is stopped for good."""
        return not self._cell.stopped.is_set()

    @property
    def idle(self) -> bool:
        """True while the actor waits for a message: its mailbox is empty and it is not in a
        turn. A sender that batches can send at once to an idle actor (latency first) and let
        a batch grow only while the actor is busy (Nagle's algorithm turned around)."""
        return self._cell.mailbox.idle

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.name}>"

    async def tell(self, message: M) -> None:
        """Send a message, waiting for room if the mailbox is full and its policy is ``BLOCK``.

        It returns as soon as the message is in the mailbox and only yields to the event loop
        when it has to wait.

        Raises:
            ActorStopped: the actor is stopped, or the system is shutting down and the sender is
                not an actor of it. The message is recorded in dead letters.
            MailboxFull: the mailbox is full and its policy is ``FAIL``.
        """
        cell = self._cell
        if not cell.accepting:
            cell.refuse(message)
        try:
            cell.mailbox.put_nowait(message)
        except anyio.WouldBlock:
            await cell.overflow(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            cell.undeliverable(message)

    def tell_nowait(self, message: M) -> None:
        """Send a message without waiting.

        Raises:
            MailboxFull: the mailbox is full (policy ``BLOCK`` or ``FAIL``); with ``DROP`` the
                message goes to dead letters instead.
            ActorStopped: as for :meth:`tell`.
        """
        cell = self._cell
        if not cell.accepting:
            cell.refuse(message)
        try:
            cell.mailbox.put_nowait(message)
        except anyio.WouldBlock:
            if cell.mailbox.config.overflow is Overflow.DROP:
                cell.drop(message)
            else:
                raise MailboxFull(f"mailbox of {cell.name} is full") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            cell.undeliverable(message)

    # An explicit timeout is the ask contract (Akka, Orleans): a missing reply must not hang.
    async def ask(self, message: M, *, timeout: float | None = 10.0) -> Any:  # noqa: ASYNC109
        """Send a message and wait for the handler's return value.

        ``timeout`` covers both waiting for room in the mailbox and waiting for the reply;
        ``None`` waits forever. A full mailbox makes the ask wait (or fail with ``FAIL``) whatever
        the policy: an ask is never dropped.

        Raises:
            AskTimeout: no reply in time (also a ``TimeoutError``).
            ActorStopped: the actor stopped before it answered.
            Exception: whatever the handler raised on its retry.
        """
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 or None, got {timeout!r}")
        cell = self._cell
        if not cell.accepting:
            cell.refuse(message)
        reply = _Reply()
        envelope = Ask(message, reply)
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            try:
                cell.mailbox.put_nowait(envelope)
            except anyio.WouldBlock:
                if cell.mailbox.config.overflow is Overflow.FAIL:
                    raise MailboxFull(f"mailbox of {cell.name} is full") from None
                try:
                    await cell.mailbox.put(envelope)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    cell.undeliverable(message)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                cell.undeliverable(message)
            await reply.event.wait()
        if not reply.done:
            reply.fail(AskTimeout(f"no reply from {cell.name} within {timeout}s"))
            raise AskTimeout(f"no reply from {cell.name} within {timeout}s")
        if reply.error is not None:
            raise reply.error
        return reply.value

    async def stop(self) -> None:
        """Stop the actor for good and wait until it has stopped.

        Messages still in its mailbox go to dead letters; pending asks fail with
        :class:`ActorStopped`. Its supervisor forgets it and does not restart it. Called by the
        actor on itself, it returns at once and the actor stops after the current turn.
        """
        from ._cell import current_cell

        self._cell.request_stop(remove=True)
        if current_cell.get() is self._cell:
            return  # an actor stopping itself: it stops after this turn; waiting would deadlock
        await self._cell.stopped.wait()

    def statistics(self) -> MailboxStatistics:
        """A snapshot of the actor's mailbox."""
        return self._cell.mailbox.statistics()
