"""The actor system: owns the tasks, spawns actors, and shuts everything down in order.

``ActorSystem`` is an async context manager around an anyio task group. Every actor's task, the
timer scheduler and the escalation guardian live in that group, so leaving the ``async with``
block leaves no task behind.

Shutdown, on leaving the block or on :meth:`ActorSystem.shutdown`:

1. stop accepting: ``tell`` and ``ask`` from outside the system raise :class:`ActorStopped`
   (actors may still message each other, so work in flight can finish);
2. drain: wait until every mailbox is empty and every actor idle, up to ``shutdown_timeout``;
3. stop actors in reverse start order (``on_stop`` runs; what is left in a mailbox goes to dead
   letters and pending asks fail with :class:`ActorStopped`);
4. past the deadline, cancel whatever is still running, with the same bookkeeping.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc

from ._actor import Actor, ActorRef
from ._cell import Cell, Decider, current_cell
from ._deadletters import DEFAULT_MAX_BYTES, DeadLetters, DeadLetterStatistics
from ._exceptions import ActorStopped, ConfigError, Escalated
from ._logging import get_logger
from ._mailbox import MailboxConfig, MailboxStatistics
from ._supervisor import Backoff, Restart, Strategy, Supervisor, resume_always
from ._timers import TimerService

__all__ = ["ActorSystem", "SystemStatistics", "run"]

_log = get_logger("actors.system")

M = TypeVar("M")


@dataclass(frozen=True)
class SystemStatistics:
    """A snapshot of an actor system."""

    #: actors running (not stopped)
    actors: int
    #: restarts of all actors since the system started
    restarts: int
    #: each running actor's mailbox, by name
    mailboxes: dict[str, MailboxStatistics]
    #: the dead letter counts
    dead_letters: DeadLetterStatistics


class ActorSystem:
    """Owns actors and their tasks.

    Args:
        name: the root of every actor's path.
        shutdown_timeout: seconds to drain and stop before cancelling what is left (> 0).
        dead_letters_capacity: dead letters kept (older ones are counted, not kept).
        dead_letters_max_bytes: the most bytes the dead letters kept may take, by estimate
            (64 MiB by default; older ones are counted, not kept). A message larger than
            1/1024 of it is kept as its start and its size (see :class:`DeadLetters`).
        mailbox: the default mailbox of spawned actors.
        strategy: the root supervisor's strategy. This and the four below are the root
            supervisor's settings (see :class:`Supervisor`). Exceeding the root's restart
            budget shuts the system down and raises :class:`Escalated` out of the
            ``async with`` block.
        max_restarts: the root's restarts allowed within ``period`` seconds (>= 0).
        period: the length of the root's restart window, in seconds (> 0).
        backoff: delays between the root's restarts.
        decider: the default decider of the root's children (``resume_always``).

    Example::

        async with ActorSystem() as system:
            ref = await system.spawn(Counter)
            await ref.tell(1)
            print(await ref.ask("total"))
    """

    def __init__(
        self,
        name: str = "system",
        *,
        shutdown_timeout: float = 10.0,
        dead_letters_capacity: int = 10_000,
        dead_letters_max_bytes: int = DEFAULT_MAX_BYTES,
        mailbox: MailboxConfig | None = None,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        decider: Decider = resume_always,
    ) -> None:
        if not shutdown_timeout > 0:
            raise ConfigError(f"shutdown_timeout must be > 0, got {shutdown_timeout!r}")
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self.default_mailbox = mailbox if mailbox is not None else MailboxConfig()
        self.dead_letters = DeadLetters(dead_letters_capacity, max_bytes=dead_letters_max_bytes)
        self.timers = TimerService()
        self.root = Supervisor(
            self,
            None,
            name,
            strategy=strategy,
            max_restarts=max_restarts,
            period=period,
            backoff=backoff,
            decider=decider,
        )
        self.stopping = False
        self._cells: list[Cell] = []
        self._names: set[str] = set()
        self._counter = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._closed = anyio.Event()
        self._idle: anyio.Event | None = None
        self._escalated = anyio.Event()
        self._escalation: BaseException | None = None
        self._service_scope: anyio.CancelScope | None = None
        self._restarts_of_stopped = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> ActorSystem:
        if self._tg is not None:
            raise RuntimeError("an ActorSystem can be entered once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._service_scope = anyio.CancelScope()
        tg.start_soon(self._services, name=f"{self.name}-services")
        _log.debug("system_started", system=self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            if self._escalation is None:
                with anyio.CancelScope(shield=True):
                    await self.shutdown()
        finally:
            if self._service_scope is not None:
                self._service_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The body runs in the task group's host task, so anyio wraps what it raises. A lone
            # error (the body's own, or Escalated) is raised as it is: callers catch it by type.
            leaves = _leaves(group)
            if len(leaves) == 1:
                raise leaves[0] from leaves[0].__cause__
            raise

    async def _services(self) -> None:
        assert self._service_scope is not None
        with self._service_scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.timers.run, name=f"{self.name}-timers")
                await self._escalated.wait()
                tg.cancel_scope.cancel()
        if self._escalation is not None:
            with anyio.CancelScope(shield=True):
                await self.shutdown(drain=False)
            raise Escalated(
                f"restart budget of the root supervisor exceeded: {self._escalation!r}"
            ) from self._escalation

    @property
    def escalation(self) -> BaseException | None:
        """The failure that exceeded the root's restart budget (the system is then stopping
        and raises :class:`Escalated` out of its ``async with`` block), or None."""
        return self._escalation

    def escalate(self, supervisor: Supervisor, error: BaseException) -> None:
        """Called by the root supervisor when its restart budget is exceeded."""
        if self._escalation is None:
            _log.error("escalated_to_root", system=self.name, error=repr(error))
            self._escalation = error
            self._escalated.set()

    async def shutdown(self, *, drain: bool = True) -> None:
        """Drain and stop every actor (see the module docs); idempotent.

        ``drain=False`` skips waiting for mailboxes to empty: what is left goes to dead letters.

        Raises:
            RuntimeError: called from inside one of the system's actors, which would wait for
                itself; stop the system from outside, or have the actor ``context.stop()``.
        """
        caller = current_cell.get()
        if caller is not None and caller.system is self:
            raise RuntimeError("shutdown() cannot be awaited from inside one of its actors")
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        for cell in self._cells:
            cell.accepting = False
        with anyio.move_on_after(self.shutdown_timeout) as scope:
            if drain:
                await self._drain()
            # Supervisors see ``stopping`` and restart nobody from now on; actors are stopped
            # one at a time, latest first, so an actor's on_stop may still use earlier ones.
            self.stopping = True
            for cell in reversed(list(self._cells)):
                cell.request_stop()
                await cell.stopped.wait()
        if scope.cancelled_caught:
            late = [cell.name for cell in self._cells]
            _log.warning("shutdown_deadline_passed", system=self.name, cancelled=late)
            self.stopping = True
            for cell in list(self._cells):
                cell.cancel()
            with anyio.CancelScope(shield=True):
                for cell in list(self._cells):
                    await cell.stopped.wait()
        self._closed.set()
        if self._service_scope is not None and self._escalation is None:
            self._service_scope.cancel()
        _log.debug("system_stopped", system=self.name)

    async def _drain(self) -> None:
        while not all(cell.drained() for cell in self._cells):
            self._idle = anyio.Event()
            await self._idle.wait()

    # -- spawning ------------------------------------------------------------------------------
    async def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        restart: Restart = Restart.PERMANENT,
        decider: Decider | None = None,
    ) -> ActorRef[M]:
        """Spawn an actor under the root supervisor; see :meth:`Supervisor.spawn`."""
        return await self.root.spawn(
            factory, name=name, mailbox=mailbox, restart=restart, decider=decider
        )

    def supervisor(
        self,
        name: str,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        decider: Decider | None = None,
        restart: Restart = Restart.PERMANENT,
    ) -> Supervisor:
        """Add a supervisor under the root; see :class:`Supervisor`."""
        return self.root.supervisor(
            name,
            strategy=strategy,
            max_restarts=max_restarts,
            period=period,
            backoff=backoff,
            decider=decider,
            restart=restart,
        )

    # -- for cells and supervisors -------------------------------------------------------------
    def check_open(self) -> None:
        if self._tg is None:
            raise ActorStopped(f"actor system {self.name!r} is not running (use 'async with')")
        if self._closing:
            raise ActorStopped(f"actor system {self.name!r} is shutting down")

    def unique_name(self, parent: str, name: str) -> str:
        base = f"{parent}/{name}"
        candidate = base
        while candidate in self._names:
            candidate = f"{base}-{next(self._counter)}"
        self._names.add(candidate)
        return candidate

    async def start_cell(self, cell: Cell) -> None:
        assert self._tg is not None
        self._cells.append(cell)
        error = await self._tg.start(cell.run, name=cell.name)
        if error is not None:
            raise error

    def cell_idle(self) -> None:
        idle = self._idle
        if idle is not None:
            self._idle = None
            idle.set()

    def cell_stopped(self, cell: Cell) -> None:
        if cell in self._cells:
            self._cells.remove(cell)
            self._restarts_of_stopped += cell.restarts
        self._names.discard(cell.name)
        self.cell_idle()

    # -- looking at it ---------------------------------------------------------------------------
    def actors(self) -> list[ActorRef[Any]]:
        """Refs of the running actors, in start order."""
        return [cell.ref for cell in self._cells]

    def statistics(self) -> SystemStatistics:
        return SystemStatistics(
            actors=len(self._cells),
            restarts=self._restarts_of_stopped + sum(cell.restarts for cell in self._cells),
            mailboxes={cell.name: cell.mailbox.statistics() for cell in self._cells},
            dead_letters=self.dead_letters.statistics(),
        )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        else:
            leaves.append(error)
    return leaves


def run(main: Callable[[], Any], *, use_uvloop: bool | None = None) -> Any:
    """Run ``main()`` (an async function) on asyncio, with uvloop when it is installed.

    ``use_uvloop=None`` uses uvloop if it can be imported; ``True`` requires it.
    """
    if use_uvloop is None:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            use_uvloop = False
        else:
            use_uvloop = True
    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})
