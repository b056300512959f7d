"""Dead letters: messages that could not be delivered or handled, kept with their reason.

Every message the kernel gives up on lands here: sent to an actor that is stopped
(``undeliverable``), refused by a full mailbox whose policy is ``DROP`` (``dropped``), or whose
handler raised twice (``failed``, with the exception). The store keeps the most recent
``capacity`` letters and counts every letter ever recorded per reason, so a burst that pushes old
letters out is still visible in the counts (``evicted``).
"""

from __future__ import annotations

import enum
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._exceptions import ConfigError
from ._logging import get_logger

__all__ = ["DeadLetter", "DeadLetterReason", "DeadLetters", "DeadLetterStatistics"]

_log = get_logger("actors.dead_letters")


class DeadLetterReason(enum.Enum):
    """Why a message became a dead letter."""

    #: the recipient was stopped, or stopped before it took the message
    UNDELIVERABLE = "undeliverable"
    #: the recipient's mailbox was full and its overflow policy is ``DROP``
    DROPPED = "dropped"
    #: the handler raised, was retried once and raised again
    FAILED = "failed"
    #: a caller above the kernel rejected the message (for example, invalid input)
    REJECTED = "rejected"


@dataclass(frozen=True)
class DeadLetter:
    """One message the kernel gave up on."""

    #: the message as it was sent
    message: Any
    #: the name of the actor it was for
    recipient: str
    #: why it is here
    reason: DeadLetterReason
    #: the exception, for ``failed`` letters and for rejections that carry one
    error: BaseException | None = None
    #: a human-readable explanation
    detail: str = ""
    #: wall-clock time (``time.time()``) it was recorded
    timestamp: float = 0.0


@dataclass(frozen=True)
class DeadLetterStatistics:
    """Counts of dead letters."""

    #: letters recorded since the store was created
    total: int
    #: letters currently held (at most ``capacity``)
    held: int
    #: the most letters held at once
    capacity: int
    #: letters pushed out by newer ones
    evicted: int
    #: letters recorded per reason value
    by_reason: dict[str, int]


class DeadLetters:
    """A bounded store of dead letters with counts per reason.

    Args:
        capacity: the most letters kept; older ones are evicted but stay counted.

    Listeners added with :meth:`add_listener` are called synchronously for every letter; a
    listener that raises is logged and removed, never allowed to break the sender.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"dead letter capacity must be an int >= 1, got {capacity!r}")
        self._capacity = capacity
        self._letters: deque[DeadLetter] = deque(maxlen=capacity)
        self._counts: Counter[DeadLetterReason] = Counter()
        self._total = 0
        self._evicted = 0
        self._listeners: list[Callable[[DeadLetter], None]] = []

    def record(
        self,
        message: Any,
        recipient: str,
        reason: DeadLetterReason,
        *,
        error: BaseException | None = None,
        detail: str = "",
    ) -> DeadLetter:
        """Record a letter and tell the listeners. Returns the letter."""
        letter = DeadLetter(message, recipient, reason, error, detail, time.time())
        if len(self._letters) == self._capacity:
            self._evicted += 1
        self._letters.append(letter)
        self._counts[reason] += 1
        self._total += 1
        _log.debug(
            "dead_letter",
            recipient=recipient,
            reason=reason.value,
            detail=detail,
            error=repr(error) if error is not None else None,
        )
        for listener in tuple(self._listeners):
            try:
                listener(letter)
            except Exception:
                _log.exception("dead_letter_listener_failed", listener=repr(listener))
                self.remove_listener(listener)
        return letter

    def add_listener(self, listener: Callable[[DeadLetter], None]) -> None:
        """Call ``listener(letter)`` for every letter recorded from now on."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[DeadLetter], None]) -> None:
        """Stop calling ``listener``; a listener that is not there is ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def count(self, reason: DeadLetterReason | None = None) -> int:
        """Letters recorded since creation, of one reason or of all."""
        return self._total if reason is None else self._counts[reason]

    def letters(self, reason: DeadLetterReason | None = None) -> list[DeadLetter]:
        """The letters held, oldest first, of one reason or of all."""
        if reason is None:
            return list(self._letters)
        return [letter for letter in self._letters if letter.reason is reason]

    def clear(self) -> None:
        """Forget the letters held; the counts stay."""
        self._letters.clear()

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(tuple(self._letters))

    def statistics(self) -> DeadLetterStatistics:
        return DeadLetterStatistics(
            total=self._total,
            held=len(self._letters),
            capacity=self._capacity,
            evicted=self._evicted,
            by_reason={reason.value: n for reason, n in self._counts.items()},
        )
