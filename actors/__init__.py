"""A small actor kernel on anyio: bounded mailboxes, supervisors, timers and dead letters.

The kernel knows nothing of what its actors compute. See ``docs/actors.md`` for a guide.
"""

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
    "Actor",
    "ActorContext",
    "ActorError",
    "ActorRef",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "BatchFunction",
    "BatchLoader",
    "BatchResultError",
    "ConfigError",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterStatistics",
    "DeadLetters",
    "Directive",
    "Escalated",
    "Key",
    "KeyRouter",
    "LoadTimeout",
    "LoaderCache",
    "LoaderError",
    "LoaderStatistics",
    "MailboxConfig",
    "MailboxFull",
    "MailboxStatistics",
    "Overflow",
    "Restart",
    "Strategy",
    "Supervisor",
    "SystemStatistics",
    "restart_always",
    "resume_always",
    "get_logger",
    "run",
    "stable_hash",
]
