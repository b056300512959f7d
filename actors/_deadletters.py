"""Dead letters: messages that could not be delivered or handled, kept with their reason.

Every message the kernel gives up on lands here: sent to an actor that is stopped
(``undeliverable``), refused by a full mailbox whose policy is ``DROP`` (``dropped``), or whose
handler raised twice (``failed``, with the exception). The store keeps the most recent letters
within two bounds, ``capacity`` letters and ``max_bytes`` estimated bytes, and counts every
letter ever recorded per reason, so a burst that pushes old letters out is still visible in the
counts (``evicted``).

A letter must not keep alive more than itself. So it holds:

- the message whole if it is small (its estimated size at most ``max_bytes / 1024``, 64 KiB by
  default), else only its start (the first bytes or characters, or a shortened ``repr``) with
  its size and ``truncated`` set;
- a *copy* of the exception without its traceback: a traceback's frames hold every local of
  the code that raised, which can be a decoded payload or a whole batch of input. The copy has
  the exception's type, ``args`` and attributes (large ones shortened as the message is), and
  copies of its ``__cause__`` and ``__context__`` made the same way. The exception the caller
  holds is left as it was, traceback included, so it can still be logged or raised.
"""

from __future__ import annotations

import enum
import itertools
import reprlib
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ._exceptions import ConfigError
from ._logging import get_logger

__all__ = ["DeadLetter", "DeadLetterReason", "DeadLetters", "DeadLetterStatistics"]

_log = get_logger("actors.dead_letters")

#: the default bound on the bytes the letters held take
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: characters (or bytes) kept of a truncated message
PREFIX = 1024
#: characters kept of a letter's ``detail``
DETAIL_LIMIT = 4096
#: links of an exception's ``__cause__``/``__context__`` chain copied with it
CHAIN_LIMIT = 8
#: objects the size walk of a truncated message visits before it gives a lower bound
WALK_LIMIT = 100_000
#: what a letter costs beside its message and error (the record, its deque slot)
LETTER_OVERHEAD = 256

# The walk of a message's size: builtin containers are walked, strings, bytes and numbers are
# leaves, and any other object counts its own size only: it may be a handle on live state (an
# actor's reference, a reply channel) that the letter does not own, and walking it would
# measure half the process.
_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), memoryview)
_ATOM_TYPES = frozenset(_ATOMS)
_MAPPINGS = (dict,)
_SEQUENCES = (list, tuple, set, frozenset, deque)


class _Short(reprlib.Repr):
    """A bounded ``repr`` that keeps a dict's items in their order (reprlib sorts them), so
    the start of a message reads as the message does."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = itertools.islice(x.items(), self.maxdict)
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in items]
        if len(x) > self.maxdict:
            pieces.append("...")
        return "{" + ", ".join(pieces) + "}"


_repr = _Short()
_repr.maxlevel = 3
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = 16
_repr.maxdeque = _repr.maxarray = 16
_repr.maxstring = _repr.maxother = 256
_repr.maxlong = 64


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

    #: the message as it was sent; if ``truncated``, only its start: the first
    #: :data:`PREFIX` bytes of a bytes-like message or characters of a str, else a
    #: shortened ``repr`` (a str)
    message: Any
    #: the name of the actor it was for
    recipient: str
    #: why it is here
    reason: DeadLetterReason
    #: the exception, for ``failed`` letters and for rejections that carry one: a copy of
    #: the exception raised, of the same type, with its ``args`` and attributes but no
    #: traceback (see the module's docs)
    error: BaseException | None = None
    #: a human-readable explanation (its first :data:`DETAIL_LIMIT` characters)
    detail: str = ""
    #: wall-clock time (``time.time()``) it was recorded
    timestamp: float = 0.0
    #: the message's estimated size in bytes as it was sent (``sys.getsizeof`` summed over the
    #: builtin containers, strings and bytes it is made of; a lower bound when a truncated
    #: message has more than :data:`WALK_LIMIT` parts)
    size: int = 0
    #: True if ``message`` holds only the start of a message too large to keep
    truncated: bool = False


@dataclass(frozen=True)
class DeadLetterStatistics:
    """Counts of dead letters."""

    #: letters recorded since the store was created
    total: int
    #: letters currently held (at most ``capacity``)
    held: int
    #: the most letters held at once
    capacity: int
    #: letters pushed out by newer ones, or too large to hold at all
    evicted: int
    #: letters recorded per reason value
    by_reason: dict[str, int]
    #: estimated bytes of the letters held (at most ``max_bytes``)
    held_bytes: int = 0
    #: the most bytes the letters held may take
    max_bytes: int = DEFAULT_MAX_BYTES
    #: letters whose message was too large to keep whole (since creation)
    truncated: int = 0


class DeadLetters:
    """A bounded store of dead letters with counts per reason.

    Args:
        capacity: the most letters kept; older ones are evicted but stay counted.
        max_bytes: the most bytes the letters kept may take, by estimate (64 MiB by default);
            older ones are evicted but stay counted. A message larger than
            ``max_bytes / 1024`` (at least 1 KiB) is kept as its start and its size.

    Raises:
        ConfigError: ``capacity`` or ``max_bytes`` is not an int >= 1.

    Listeners added with :meth:`add_listener` are called synchronously for every letter; a
    listener that raises is logged and removed, never allowed to break the sender.
    """

    def __init__(self, capacity: int = 10_000, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"dead letter capacity must be an int >= 1, got {capacity!r}")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ConfigError(f"dead letters max_bytes must be an int >= 1, got {max_bytes!r}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        #: a message estimated larger than this is kept as its start
        self._message_limit = max(max_bytes // 1024, 1024)
        #: the letters held, each with the bytes it is charged
        self._letters: deque[tuple[DeadLetter, int]] = deque()
        self._bytes = 0
        self._counts: Counter[DeadLetterReason] = Counter()
        self._total = 0
        self._evicted = 0
        self._truncated = 0
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
        """Record a letter and tell the listeners. Returns the letter, as it is kept.

        The letter keeps a bounded form of ``message`` and a copy of ``error`` without its
        traceback (see the module's docs); ``error`` itself is not changed.
        """
        limit = self._message_limit
        size = _size(message, limit)
        truncated = size > limit
        kept = message
        if truncated:
            kept = _prefix(message)
            size = max(size, _size(message, sys.maxsize, WALK_LIMIT))
            self._truncated += 1
        if len(detail) > DETAIL_LIMIT:
            detail = f"{detail[:DETAIL_LIMIT]}... ({len(detail)} characters)"
        # what the letter holds: an error that carries the message shares the letter's
        cost = LETTER_OVERHEAD + sys.getsizeof(detail)
        cost += size if not truncated else sys.getsizeof(kept)
        copied = None
        if error is not None:
            copier = _Copier(message, kept, limit)
            copied = copier.copy(error)
            cost += copier.cost
        letter = DeadLetter(kept, recipient, reason, copied, detail, time.time(), size, truncated)
        self._hold(letter, cost)
        self._counts[reason] += 1
        self._total += 1
        _log.debug(
            "dead_letter",
            recipient=recipient,
            reason=reason.value,
            detail=detail,
            error=repr(copied) if copied is not None else None,
        )
        for listener in tuple(self._listeners):
            try:
                listener(letter)
            except Exception:
                _log.exception("dead_letter_listener_failed", listener=repr(listener))
                self.remove_listener(listener)
        return letter

    def _hold(self, letter: DeadLetter, cost: int) -> None:
        """Keep the letter, evicting the oldest ones to stay within both bounds; a letter
        larger than ``max_bytes`` alone is counted as evicted at once."""
        if cost > self._max_bytes:
            self._evicted += 1
            return
        letters = self._letters
        while letters and (len(letters) >= self._capacity or self._bytes + cost > self._max_bytes):
            _, freed = letters.popleft()
            self._bytes -= freed
            self._evicted += 1
        letters.append((letter, cost))
        self._bytes += cost

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
            return [letter for letter, _ in self._letters]
        return [letter for letter, _ in self._letters if letter.reason is reason]

    def clear(self) -> None:
        """Forget the letters held; the counts stay."""
        self._letters.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._letters)

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter([letter for letter, _ in self._letters])

    def statistics(self) -> DeadLetterStatistics:
        return DeadLetterStatistics(
            total=self._total,
            held=len(self._letters),
            capacity=self._capacity,
            evicted=self._evicted,
            by_reason={reason.value: n for reason, n in self._counts.items()},
            held_bytes=self._bytes,
            max_bytes=self._max_bytes,
            truncated=self._truncated,
        )


def _size(value: Any, limit: int, objects: int = sys.maxsize) -> int:
    """The estimated bytes of ``value``. The walk stops as soon as the sum passes ``limit`` or
    ``objects`` objects were visited (the sum is then a lower bound); a container's own size
    is counted before its items, so a huge one stops it at once. Containers are counted once
    (a cycle ends the walk); a str or number met twice is counted twice, which only errs
    high."""
    getsizeof = sys.getsizeof
    total = getsizeof(value)
    if value.__class__ in _ATOM_TYPES or total > limit:
        return total
    seen: set[int] = set()
    stack = [value]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _MAPPINGS):
            items: Any = itertools.chain(obj.keys(), obj.values())
        elif isinstance(obj, _SEQUENCES):
            items = obj
        else:
            continue  # another object: its own size only (see _ATOMS)
        for item in items:
            total += getsizeof(item)
            objects -= 1
            if total > limit or objects <= 0:
                return total
            if item.__class__ not in _ATOM_TYPES and not isinstance(item, _ATOMS):
                ident = id(item)
                if ident in seen:
                    total -= getsizeof(item)
                else:
                    seen.add(ident)
                    stack.append(item)
    return total


def _prefix(message: Any) -> Any:
    """The start of a message too large to keep."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message[:PREFIX])
    if isinstance(message, str):
        return message[:PREFIX]
    try:
        text = _repr.repr(message)
    except Exception as exc:  # a repr that raises says so rather than failing the record
        text = f"<{type(message).__qualname__}: repr raised {type(exc).__name__}>"
    return text[:PREFIX]


class _Copier:
    """Copies an exception and its chain without tracebacks, their large values shortened,
    and adds up the bytes the copies hold (:attr:`cost`).

    A value that is the message itself becomes the letter's message (whole or shortened), so
    an error that carries its payload shares it with the letter instead of holding it twice.
    """

    __slots__ = ("copies", "cost", "kept", "limit", "message")

    def __init__(self, message: Any, kept: Any, limit: int) -> None:
        self.message = message
        self.kept = kept
        self.limit = limit
        #: the copies made so far, by the id of their original (a chain may share links)
        self.copies: dict[int, BaseException] = {}
        #: the estimated bytes of the copies, the message they share left out
        self.cost = 0

    def copy(self, error: BaseException, depth: int = 0) -> BaseException:
        done = self.copies.get(id(error))
        if done is not None:
            return done
        cls = type(error)
        copy: BaseException
        try:
            if cls.__module__ == "builtins":
                # a builtin exception rebuilds its own fields (errno and filename, a
                # UnicodeError's positions) from the arguments it pickles with; its
                # constructor runs no code of anyone's
                reduced: Any = error.__reduce__()
                copy = reduced[0](*[self.value(arg) for arg in reduced[1]])
            else:
                # not the constructor: it may take other arguments than its args, or format
                # them again; the attributes are copied below
                args = tuple([self.value(arg) for arg in error.args])
                copy = cls.__new__(cls, *args)
                copy.args = args
            attributes = getattr(error, "__dict__", None)
            if attributes:
                for name, value in attributes.items():
                    setattr(copy, name, self.value(value))
                self.cost += sys.getsizeof(attributes)
        except Exception:
            # a type that cannot be copied this way: a plain exception that says what it was
            copy = Exception(f"{cls.__module__}.{cls.__qualname__}: {self.text(error)}")
        self.cost += sys.getsizeof(copy) + sys.getsizeof(copy.args)
        self.copies[id(error)] = copy
        if depth < CHAIN_LIMIT:
            if error.__cause__ is not None:
                copy.__cause__ = self.copy(error.__cause__, depth + 1)
            if error.__context__ is not None:
                copy.__context__ = self.copy(error.__context__, depth + 1)
        copy.__suppress_context__ = error.__suppress_context__
        return copy

    def value(self, value: Any) -> Any:
        """``value`` if small, else its start; the message's own form if it is the message."""
        if value is self.message:
            return self.kept
        size = _size(value, self.limit)
        if size > self.limit:
            value = _prefix(value)
            size = sys.getsizeof(value)
        self.cost += size
        return value

    @staticmethod
    def text(error: BaseException) -> str:
        try:
            return _repr.repr(str(error))[1:-1]
        except Exception:
            return "(str() raised)"
