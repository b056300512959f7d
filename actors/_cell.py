"""The cell: the task that runs one actor, its turns, failures, restarts and stop.

A cell outlives the actor instances it runs: a restart replaces the instance (a fresh one from
the factory) but keeps the cell, its mailbox, its ref and its task. Each turn serves the system
channel first, then takes up to ``max_batch_size`` user messages, handles them, and yields to the
event loop.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import anyio.lowlevel

from ._actor import Actor, ActorContext, ActorRef, Ask, Directive
from ._deadletters import DeadLetterReason
from ._exceptions import ActorStopped, MailboxFull
from ._logging import get_logger
from ._mailbox import Mailbox, MailboxConfig, Overflow
from ._timers import Timer

if TYPE_CHECKING:
    from ._supervisor import Restart, Supervisor
    from ._system import ActorSystem

__all__ = ["Cell", "current_cell"]

_log = get_logger("actors")

#: the cell whose task is running, or None outside actors
current_cell: contextvars.ContextVar[Cell | None] = contextvars.ContextVar(
    "featurist_current_cell", default=None
)

Decider = Callable[[BaseException], Directive]


class _Crash(Exception):
    def __init__(self, error: BaseException, directive: Directive) -> None:
        super().__init__(error)
        self.error = error
        self.directive = directive


class RestartMessage:
    """System message: replace the instance. Internal."""

    __slots__ = ("delay", "error")

    def __init__(self, error: BaseException | None, delay: float) -> None:
        self.error = error
        self.delay = delay


class StopMessage:
    """System message: stop for good. Internal."""

    __slots__ = ()


_STOP = StopMessage()

#: seconds an actor's on_stop may take when its cell was cancelled at the shutdown deadline
_ON_STOP_GRACE = 1.0

RUNNING, SUSPENDED, STOPPED = "running", "suspended", "stopped"


class Cell:
    """Runs one actor. Internal: users hold an :class:`ActorRef`."""

    def __init__(
        self,
        system: ActorSystem,
        parent: Supervisor,
        factory: Callable[[], Actor[Any]],
        name: str,
        mailbox: MailboxConfig,
        restart: Restart,
        decider: Decider,
    ) -> None:
        self.system = system
        self.parent = parent
        self.factory = factory
        self.name = name
        self.mailbox = Mailbox(mailbox)
        self.restart_policy = restart
        self.decider = decider
        self.ref: ActorRef[Any] = ActorRef(self)
        self.actor: Actor[Any] | None = None
        self.timers: dict[Hashable, Timer] = {}
        self.state = SUSPENDED
        self.restarts = 0
        self.accepting = True
        self.stop_requested = False
        self.restart_pending = False
        self.stop_pending = False
        self.stopped = anyio.Event()
        self.idle = False
        self._consumed = 0
        self._batched = False
        self._previous: Actor[Any] | None = None
        self._scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Cell {self.name} {self.state}>"

    # -- senders' side ----------------------------------------------------------------------------
    def refuse(self, message: Any) -> None:
        """Called by refs when the cell is not accepting (shutdown): raise unless an actor of the
        system is the sender, since actors must be able to finish their work while draining."""
        sender = current_cell.get()
        if self.stopped.is_set() or sender is None or sender.system is not self.system:
            self.undeliverable(message)

    def undeliverable(self, message: Any) -> NoReturn:
        self.system.dead_letters.record(
            message, self.name, DeadLetterReason.UNDELIVERABLE, detail="actor is stopped"
        )
        raise ActorStopped(f"{self.name} is stopped or shutting down")

    def drop(self, message: Any) -> None:
        self.mailbox.count_drop()
        self.system.dead_letters.record(
            message, self.name, DeadLetterReason.DROPPED, detail="mailbox full"
        )

    async def overflow(self, message: Any) -> None:
        policy = self.mailbox.config.overflow
        if policy is Overflow.BLOCK:
            try:
                await self.mailbox.put(message)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.undeliverable(message)
        elif policy is Overflow.DROP:
            self.drop(message)
        else:
            raise MailboxFull(f"mailbox of {self.name} is full")

    def deliver_timer(self, timer: Timer) -> None:
        self.mailbox.put_system(timer)

    def request_restart(self, error: BaseException | None, delay: float) -> None:
        if not self.restart_pending and not self.stop_pending and not self.stopped.is_set():
            self.restart_pending = True
            self.mailbox.put_system(RestartMessage(error, delay))

    def request_stop(self, *, remove: bool = False) -> None:
        if remove:
            self.parent.forget(self)
        if not self.stop_pending and not self.stopped.is_set():
            self.stop_pending = True
            self.mailbox.put_system(_STOP)

    def cancel(self) -> None:
        """Cancel the cell's task (shutdown past its deadline)."""
        if self._scope is not None:
            self._scope.cancel()

    def drained(self) -> bool:
        """True when the cell has nothing left to do (for the shutdown drain)."""
        if self.stopped.is_set():
            return True
        if self.state is not RUNNING:
            return not self.mailbox.has_user_messages()
        return self.idle and not self.mailbox.has_user_messages()

    # -- the task ---------------------------------------------------------------------------
    async def run(self, *, task_status: anyio.abc.TaskStatus[BaseException | None]) -> None:
        current_cell.set(self)
        try:
            with anyio.CancelScope() as self._scope:
                try:
                    await self._start_instance(None)
                except Exception as exc:
                    task_status.started(exc)
                    return
                task_status.started(None)
                await self._loop()
        finally:
            if self.actor is not None:
                # cancelled (the shutdown deadline passed) before the actor was retired: its
                # on_stop still runs, briefly, so that what it holds is not lost unsaid
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + _ON_STOP_GRACE
                    await self._retire_instance()
            self.state = STOPPED
            self.accepting = False
            self.timers.clear()
            self._flush()
            self.stopped.set()
            self.system.cell_stopped(self)

    async def _start_instance(self, error: BaseException | None) -> None:
        actor = self.factory()
        if not isinstance(actor, Actor):
            raise TypeError(f"factory of {self.name} returned {actor!r}, not an Actor")
        actor.context = ActorContext(self)
        self._batched = type(actor).receive_batch is not Actor.receive_batch
        previous, self._previous = self._previous, None
        if previous is not None:
            actor.carry_over(previous)
        if error is not None or self.restarts:
            await actor.on_restart(error if error is not None else ActorStopped("normal exit"))
        await actor.on_start()
        self.actor = actor
        self.state = RUNNING

    async def _retire_instance(self) -> None:
        actor, self.actor = self.actor, None
        self.timers.clear()
        if actor is not None:
            #: the instance a restart replaces, for the next one's ``carry_over``
            self._previous = actor
            try:
                await actor.on_stop()
            except Exception:
                _log.exception("on_stop_failed", actor=self.name)

    async def _loop(self) -> None:
        mailbox = self.mailbox
        system = mailbox.system
        limit = mailbox.config.max_batch_size
        while True:
            if system:
                # Serve the system messages there are now, then a user turn: a periodic timer
                # whose handler is slower than its interval must not starve the mailbox.
                for _ in range(len(system)):
                    if await self._on_system(system.popleft()):
                        return
                    if self.stop_requested and self.state is RUNNING:
                        await self._exited()
            if self.state is not RUNNING:
                if not system:
                    await mailbox.wait()
                continue
            batch: list[Any] = []
            mailbox.take(limit, batch)
            if batch:
                await self._turn(batch)
                await anyio.lowlevel.checkpoint()
                continue
            if system:
                continue
            self.idle = True
            if not self.accepting:
                self.system.cell_idle()
            await mailbox.wait()
            self.idle = False

    async def _turn(self, batch: list[Any]) -> None:
        """Handle one turn's messages. Whatever ends the turn early (a crash, a cancellation),
        the messages not yet handled go back to the mailbox, in order, and nothing is lost."""
        self._consumed = 0
        try:
            if self._batched:
                await self._handle_batched(batch)
            else:
                await self._handle_single(batch)
        except _Crash as crash:
            await self._crashed(crash.error, crash.directive)
        finally:
            consumed = self._consumed
            if consumed < len(batch):
                self.mailbox.hold(batch[consumed:])
            self.mailbox.processed += consumed
        if self.stop_requested and self.state is RUNNING:
            await self._exited()

    # -- handling -------------------------------------------------------------------------------
    # ``self._consumed`` counts the messages of the turn that are done with: handled, answered,
    # or given up on (dead-lettered). A message is consumed *before* a retry that may crash.
    async def _handle_single(self, batch: list[Any]) -> None:
        actor = self.actor
        assert actor is not None
        receive = actor.receive
        for index, message in enumerate(batch):
            self._consumed = index
            if type(message) is Ask:
                self._consumed = index + 1  # answered or failed, whatever happens
                await self._handle_ask(message)
                continue
            try:
                await receive(message)
            except Exception:
                self._consumed = index + 1
                await self._retry(message)
        self._consumed = len(batch)

    async def _handle_batched(self, batch: list[Any]) -> None:
        actor = self.actor
        assert actor is not None
        size = len(batch)
        index = 0
        while index < size:
            message = batch[index]
            if type(message) is Ask:
                self._consumed = index = index + 1
                await self._handle_ask(message)
                continue
            end = index + 1
            while end < size and type(batch[end]) is not Ask:
                end += 1
            self._consumed = index
            await self._run_batch(actor, batch if end - index == size else batch[index:end], index)
            self._consumed = index = end
        self._consumed = size

    async def _run_batch(self, actor: Actor[Any], messages: list[Any], offset: int) -> None:
        try:
            await actor.receive_batch(messages)
            return
        except Exception as exc:
            _log.debug("batch_failed_retrying_singly", actor=self.name, error=repr(exc))
        for index, message in enumerate(messages):
            self._consumed = offset + index
            try:
                await actor.receive_batch([message])
            except Exception as exc:
                self._consumed = offset + index + 1
                self._give_up(message, exc)

    async def _retry(self, message: Any) -> None:
        actor = self.actor
        assert actor is not None
        try:
            await actor.receive(message)
        except Exception as exc:
            self._give_up(message, exc)

    def _give_up(self, message: Any, error: BaseException) -> None:
        self.system.dead_letters.record(
            message,
            self.name,
            DeadLetterReason.FAILED,
            error=error,
            detail=f"handler raised {type(error).__name__} twice",
        )
        directive = self.decider(error)
        if directive is not Directive.RESUME:
            raise _Crash(error, directive)

    async def _handle_ask(self, envelope: Ask) -> None:
        actor = self.actor
        assert actor is not None
        reply = envelope.reply
        try:
            try:
                result = await actor.receive(envelope.message)
            except Exception:
                result = await actor.receive(envelope.message)
        except Exception as exc:
            reply.fail(exc)
            self._give_up(envelope.message, exc)
            return
        except BaseException:
            # cancelled (shutdown past its deadline): the asker must not wait forever
            reply.fail(ActorStopped(f"{self.name} stopped while answering"))
            raise
        reply.succeed(result)

    # -- system messages -----------------------------------------------------------------------
    async def _on_system(self, message: Any) -> bool:
        """Serve one system message; True when the cell has stopped."""
        if type(message) is Timer:
            message.pending = False
            if self.timers.get(message.key) is not message or self.state is not RUNNING:
                return False
            if message.interval is None:
                del self.timers[message.key]
            self._consumed = 0
            try:
                await self._handle_single([message.message])
            except _Crash as crash:
                await self._crashed(crash.error, crash.directive)
            return False
        if type(message) is RestartMessage:
            self.restart_pending = False
            await self._restart(message)
            return False
        if type(message) is StopMessage:
            await self._stop()
            return True
        raise TypeError(f"unknown system message {message!r}")  # pragma: no cover

    async def _crashed(self, error: BaseException, directive: Directive) -> None:
        _log.warning("actor_failed", actor=self.name, error=repr(error), directive=directive.value)
        self.stop_requested = False
        await self._retire_instance()
        self.state = SUSPENDED
        self.parent.child_failed(self, error, directive)

    async def _exited(self) -> None:
        self.stop_requested = False
        await self._retire_instance()
        self.state = SUSPENDED
        self.parent.child_exited(self)

    async def _restart(self, message: RestartMessage) -> None:
        self.timers.clear()
        if message.delay > 0 and not self.stop_pending:
            # Wait out the whole backoff; only a stop cuts it short.
            with anyio.move_on_after(message.delay):
                while not self.stop_pending:
                    await self.mailbox.wait()
        if self.stop_pending:
            return
        await self._retire_instance()
        self.restarts += 1
        _log.info("actor_restarting", actor=self.name, restarts=self.restarts)
        try:
            await self._start_instance(message.error)
        except Exception as exc:
            await self._crashed(exc, Directive.RESTART)

    async def _stop(self) -> None:
        self.accepting = False
        await self._retire_instance()
        self._flush()
        self.state = STOPPED

    def _flush(self) -> None:
        """Send what is left in the mailbox to dead letters and fail its asks."""
        left = self.mailbox.close()
        for item in left:
            message = item
            if type(item) is Ask:
                item.reply.fail(ActorStopped(f"{self.name} stopped before it answered"))
                message = item.message
            self.system.dead_letters.record(
                message, self.name, DeadLetterReason.UNDELIVERABLE, detail="actor stopped"
            )
