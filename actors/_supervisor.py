"""Supervisors in the Erlang/OTP manner.

A supervisor watches its children (actors and other supervisors) and decides what a failure
means for them:

- ``ONE_FOR_ONE``: restart the child that failed;
- ``ONE_FOR_ALL``: restart every child;
- ``REST_FOR_ONE``: restart the child that failed and every child started after it.

Each child has a :class:`Restart` policy (OTP's permanent, transient, temporary). Restarts are
counted over a sliding time window: more than ``max_restarts`` within ``period`` seconds and the
supervisor gives up, stops counting on itself and *escalates* to its parent, which treats it as a
failed child. At the root, escalation shuts the actor system down with :class:`Escalated`.
Restarts wait an exponential backoff with jitter, so a child that fails on start does not spin.

Decisions are taken synchronously when a child reports, in the child's task; the children get
their orders through their system channels. A supervisor therefore needs no mailbox or task of
its own.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, Union

import anyio

from ._actor import Actor, ActorRef, Directive
from ._cell import Cell, Decider
from ._exceptions import ConfigError
from ._logging import get_logger
from ._mailbox import MailboxConfig

if TYPE_CHECKING:
    from ._system import ActorSystem

__all__ = ["Backoff", "Restart", "Strategy", "Supervisor", "resume_always", "restart_always"]

_log = get_logger("actors.supervisor")

M = TypeVar("M")


class Strategy(enum.Enum):
    """Which children a failure restarts."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    """When a child is restarted (OTP's restart types)."""

    #: always, after a failure and after a normal exit
    PERMANENT = "permanent"
    #: only after a failure
    TRANSIENT = "transient"
    #: never; the child is forgotten when it exits or fails
    TEMPORARY = "temporary"


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter between restarts.

    The n-th restart within the supervisor's period waits
    ``min(maximum, initial * multiplier ** (n - 1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]``.
    """

    initial: float = 0.01
    maximum: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial < 0:
            raise ConfigError(f"initial must be >= 0, got {self.initial!r}")
        if self.maximum < self.initial:
            raise ConfigError(f"maximum must be >= initial, got {self.maximum!r}")
        if self.multiplier < 1:
            raise ConfigError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** max(attempt - 1, 0))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


def resume_always(error: BaseException) -> Directive:
    """The default decider: keep the actor and its state after a failed message."""
    return Directive.RESUME


def restart_always(error: BaseException) -> Directive:
    """A decider that restarts the actor after any failed message."""
    return Directive.RESTART


Child = Union[Cell, "Supervisor"]


class Supervisor:
    """A node of the supervision tree. Create with ``ActorSystem.supervisor`` or
    :meth:`Supervisor.supervisor`; spawn children with :meth:`spawn`.

    Args:
        strategy: which children a failure restarts.
        max_restarts: restarts allowed within ``period`` seconds before escalating (>= 0).
        period: the length of the sliding window, in seconds (> 0).
        backoff: delays between restarts.
        decider: the default decider for children: a failed message's exception to a
            :class:`Directive`. ``resume_always`` unless given.
        restart: this supervisor's own restart policy under its parent.
    """

    def __init__(
        self,
        system: ActorSystem,
        parent: Supervisor | None,
        name: str,
        *,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        period: float = 5.0,
        backoff: Backoff | None = None,
        decider: Decider = resume_always,
        restart: Restart = Restart.PERMANENT,
    ) -> None:
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ConfigError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if not period > 0:
            raise ConfigError(f"period must be > 0, got {period!r}")
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"strategy must be a Strategy member, got {strategy!r}")
        self.system = system
        self.parent = parent
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.period = period
        self.backoff = backoff if backoff is not None else Backoff()
        self.decider = decider
        self.restart_policy = restart
        self.children: list[Child] = []
        self._history: deque[float] = deque()
        self._stopped = False

    def __repr__(self) -> str:
        return f"<Supervisor {self.name} {self.strategy.value} children={len(self.children)}>"

    # -- building the tree -----------------------------------------------------------------------
    async def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str | None = None,
        mailbox: MailboxConfig | None = None,
        restart: Restart = Restart.PERMANENT,
        decider: Decider | None = None,
    ) -> ActorRef[M]:
        """Start an actor under this supervisor and return its ref once ``on_start`` is done.

        ``factory`` makes a fresh instance (a class or a function); it is called again for
        every restart.

        Raises:
            ActorStopped: the system is shutting down.
            Exception: whatever the first ``on_start`` raised; the child is not kept.
        """
        self.system.check_open()
        cell = Cell(
            self.system,
            self,
            factory,
            self.system.unique_name(self.name, name or _default_name(factory)),
            mailbox if mailbox is not None else self.system.default_mailbox,
            restart,
            decider if decider is not None else self.decider,
        )
        self.children.append(cell)
        try:
            await self.system.start_cell(cell)
        except BaseException:
            self.forget(cell)
            raise
        return cell.ref

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
        """Add a child supervisor (see :class:`Supervisor` for the arguments)."""
        self.system.check_open()
        child = Supervisor(
            self.system,
            self,
            self.system.unique_name(self.name, name),
            strategy=strategy,
            max_restarts=max_restarts,
            period=period,
            backoff=backoff,
            decider=decider if decider is not None else self.decider,
            restart=restart,
        )
        self.children.append(child)
        return child

    def forget(self, child: Child) -> None:
        if child in self.children:
            self.children.remove(child)

    def refs(self) -> list[ActorRef[Any]]:
        """The refs of the actors directly under this supervisor, in start order."""
        return [child.ref for child in self.children if isinstance(child, Cell)]

    # -- children report here --------------------------------------------------------------------
    def child_failed(self, child: Child, error: BaseException, directive: Directive) -> None:
        """A child's failure, with the directive its decider chose."""
        if self._stopped or self.system.stopping or child not in self.children:
            # stopping, or a child already removed (``ref.stop()``): it only has to stop
            child.request_stop(remove=True)
            return
        if directive is Directive.STOP:
            child.request_stop(remove=True)
        elif directive is Directive.ESCALATE:
            self._escalate(error)
        else:
            self._exit(child, error)

    def child_exited(self, child: Child) -> None:
        """A child's normal exit (it stopped itself)."""
        if self._stopped or self.system.stopping or child not in self.children:
            child.request_stop(remove=True)
            return
        self._exit(child, None)

    def _exit(self, child: Child, error: BaseException | None) -> None:
        policy = child.restart_policy
        if policy is Restart.TEMPORARY or (policy is Restart.TRANSIENT and error is None):
            child.request_stop(remove=True)
            return
        now = anyio.current_time()
        history = self._history
        history.append(now)
        while history and history[0] <= now - self.period:
            history.popleft()
        if len(history) > self.max_restarts:
            _log.error(
                "restart_budget_exceeded",
                supervisor=self.name,
                child=child.name,
                max_restarts=self.max_restarts,
                period=self.period,
            )
            self._escalate(error if error is not None else RuntimeError(f"{child.name} exited"))
            return
        delay = self.backoff.delay(len(history))
        if self.strategy is Strategy.ONE_FOR_ONE:
            targets = [child]
        elif self.strategy is Strategy.ONE_FOR_ALL:
            targets = list(self.children)
        else:
            targets = self.children[self.children.index(child) :]
        _log.info(
            "restarting",
            supervisor=self.name,
            child=child.name,
            strategy=self.strategy.value,
            targets=[t.name for t in targets],
            delay=round(delay, 4),
        )
        for target in targets:
            if target is not child and target.restart_policy is Restart.TEMPORARY:
                target.request_stop(remove=True)
            else:
                target.request_restart(error, delay)

    def _escalate(self, error: BaseException) -> None:
        if self.parent is None:
            self.system.escalate(self, error)
        else:
            self.parent.child_failed(self, error, Directive.RESTART)

    # -- orders from the parent (a supervisor is a child too) -------------------------------------
    def request_restart(self, error: BaseException | None, delay: float) -> None:
        """Restart the whole subtree with a fresh restart history."""
        self._history.clear()
        for child in self.children:
            child.request_restart(error, delay)

    def request_stop(self, *, remove: bool = False) -> None:
        """Stop every child, latest first."""
        if remove and self.parent is not None:
            self.parent.forget(self)
        self._stopped = True
        for child in reversed(list(self.children)):
            child.request_stop(remove=False)


def _default_name(factory: Callable[[], Any]) -> str:
    return getattr(factory, "__name__", type(factory).__name__)
