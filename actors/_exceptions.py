"""Errors raised by the actor kernel.

The hierarchy::

    ActorError
    ├── ActorStopped              the actor or its system is stopped or stopping
    ├── MailboxFull               a mailbox has no room (also an ``anyio.WouldBlock``)
    ├── AskTimeout                no reply within the ask's timeout (also a ``TimeoutError``)
    ├── Escalated                 a supervisor exceeded its restart budget at the root
    ├── ConfigError               a limit or option is invalid (also a ``ValueError``)
    └── LoaderError               a batching loader could not answer a load
        ├── BatchResultError      the batch function returned a result of the wrong shape
        └── LoadTimeout           the batch call did not finish in time (also a ``TimeoutError``)

Catch ``ActorError`` to catch everything the kernel raises on its own account. Exceptions
raised by user code (an actor's handler, a loader's batch function) are passed on as they are,
or attached as ``__cause__`` where the kernel has to wrap them.
"""

from __future__ import annotations

import anyio

__all__ = [
    "ActorError",
    "ActorStopped",
    "AskTimeout",
    "BatchResultError",
    "ConfigError",
    "Escalated",
    "LoadTimeout",
    "LoaderError",
    "MailboxFull",
]


class ActorError(Exception):
    """Base class of every error the actor kernel raises on its own account."""


class ActorStopped(ActorError):
    """The actor is stopped, or stopped before it could answer.

    Raised by ``tell`` and ``ask`` on a stopped actor, by an ``ask`` that was pending when its
    actor stopped, and by ``tell`` from outside the system once shutdown has begun.
    """


class MailboxFull(ActorError, anyio.WouldBlock):
    """A mailbox has no room for the message.

    Raised by ``tell_nowait`` whatever the overflow policy (except ``DROP``, which sends the
    message to dead letters instead), and by ``tell`` when the policy is ``FAIL``.
    """


class AskTimeout(ActorError, TimeoutError):
    """An ``ask`` got no reply within its timeout.

    The message may still be handled later; its reply is then discarded.
    """


class Escalated(ActorError):
    """A supervisor exceeded its restart budget and had no parent to escalate to.

    Raised out of the ``ActorSystem`` context manager; ``__cause__`` is the child's last error.
    """


class ConfigError(ActorError, ValueError):
    """A limit or option is invalid; the message names the parameter and the accepted range."""


class LoaderError(ActorError):
    """A batching loader could not answer a load."""


class BatchResultError(LoaderError, ValueError):
    """The batch function returned a result of the wrong type or length."""


class LoadTimeout(LoaderError, TimeoutError):
    """The batch call that held this key did not finish within the loader's timeout."""
