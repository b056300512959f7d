"""A small actor kernel on anyio: bounded mailboxes, supervisors, timers and dead letters.

The kernel knows nothing of what its actors compute. See ``docs/actors.md`` for a guide.
"""

# General layout. Every public name is re-exported here and says it is ``actors.X``; the code
# lives in flat private modules, each one idea:
#
# - _actor.py: Actor, its context and the ActorRef others hold; _cell.py: the task that runs
#   one actor (its turns, failures, restarts and stop).
# - _system.py: ActorSystem, which owns every task and shuts them down in order, and run().
# - _mailbox.py: bounded mailboxes and their overflow policy; _timers.py: timers as messages.
# - _supervisor.py: supervisors and restart strategies, in the Erlang/OTP manner.
# - _deadletters.py: the messages the kernel gave up on, with their reason.
# - _router.py: stable routing of keys to key groups and of key groups to shards.
# - _loader.py: BatchLoader, which gathers the keys asked for at once into one call.
# - _exceptions.py: the kernel's error tree; _logging.py: structlog loggers over stdlib ones.

from ._actor import Actor as Actor
from ._actor import ActorContext as ActorContext
from ._actor import ActorRef as ActorRef
from ._actor import Directive as Directive
from ._deadletters import DeadLetter as DeadLetter
from ._deadletters import DeadLetterReason as DeadLetterReason
from ._deadletters import DeadLetters as DeadLetters
from ._deadletters import DeadLetterStatistics as DeadLetterStatistics
from ._exceptions import ActorError as ActorError
from ._exceptions import ActorStopped as ActorStopped
from ._exceptions import AskTimeout as AskTimeout
from ._exceptions import BatchResultError as BatchResultError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import Escalated as Escalated
from ._exceptions import LoaderError as LoaderError
from ._exceptions import LoadTimeout as LoadTimeout
from ._exceptions import MailboxFull as MailboxFull
from ._exports import fixup_module_metadata as _fixup_module_metadata
from ._loader import BatchFunction as BatchFunction
from ._loader import BatchLoader as BatchLoader
from ._loader import LoaderCache as LoaderCache
from ._loader import LoaderStatistics as LoaderStatistics
from ._logging import get_logger as get_logger
from ._mailbox import MailboxConfig as MailboxConfig
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._mailbox import Overflow as Overflow
from ._router import Key as Key
from ._router import KeyRouter as KeyRouter
from ._router import stable_hash as stable_hash
from ._supervisor import Backoff as Backoff
from ._supervisor import Restart as Restart
from ._supervisor import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor
from ._supervisor import restart_always as restart_always
from ._supervisor import resume_always as resume_always
from ._system import ActorSystem as ActorSystem
from ._system import SystemStatistics as SystemStatistics
from ._system import run as run

__all__ = [
    # actors, the references others hold, and the system that runs them
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorSystem",
    "Directive",
    "SystemStatistics",
    "run",
    # mailboxes
    "MailboxConfig",
    "MailboxStatistics",
    "Overflow",
    # supervision
    "Backoff",
    "Restart",
    "Strategy",
    "Supervisor",
    "restart_always",
    "resume_always",
    # dead letters
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterStatistics",
    "DeadLetters",
    # routing keys to shards
    "Key",
    "KeyRouter",
    "stable_hash",
    # batched loading
    "BatchFunction",
    "BatchLoader",
    "LoaderCache",
    "LoaderStatistics",
    # errors
    "ActorError",
    "ActorStopped",
    "AskTimeout",
    "BatchResultError",
    "ConfigError",
    "Escalated",
    "LoadTimeout",
    "LoaderError",
    "MailboxFull",
    # logging
    "get_logger",
]


_fixup_module_metadata(__name__, __all__, globals())
