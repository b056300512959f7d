"""The source protocol: what a runtime needs of an input to consume it.

A source hands out its input in batches of raw payloads (dicts, or JSON/MessagePack bytes the
runtime decodes), each batch with the *position* just after its last record. A position is the
source's own value (a file and a row, a stream id, a dict of partition offsets); it must be one
a checkpoint can hold (msgpack: None, bools, numbers, strings, bytes, lists and dicts), because
:func:`consume` records it with the runtime's state. A checkpoint restores it as msgpack gives
it back (a tuple comes back as a list), and :meth:`Source.seek` must take that form.

Three promises make restarts exact:

- ``read`` returns records in a fixed order, and ``seek(p)`` makes the next ``read`` start
  with the record just after the one ``p`` was reported with;
- ``commit(p)`` tells the input that everything up to ``p`` is safe: a broker may forget it
  (acknowledge, ``XACK``, commit an offset). :func:`consume` calls it only once a checkpoint
  holding ``p`` is written (or, for a runtime without checkpoints, once the batch is accepted);
- ``read`` returns None only at the end of a finite input, never for "nothing yet": a live
  source waits a little for records and returns an empty batch if none came.

A new broker is one short class: subclass :class:`Source` and write ``read`` and ``seek``
(and ``commit`` and ``lag`` if it has them); ``docs/connectors.md`` shows one.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from actors import DeadLetterReason, get_logger

from .._exceptions import InvalidEvent
from .._spec.feature_set import FeatureSet

__all__ = ["Closing", "RejectedRecord", "Source", "SourceBatch", "record_rejected"]

_log = get_logger("featurist.connectors")


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record the source read but could not make an event of (a CSV row whose ``ts`` is not
    an int, a line that is not JSON). :func:`consume` puts it in the runtime's dead letters.

    Attributes:
        payload: the record as it was read (a line's bytes, a CSV row as a dict of strings).
        reason: why, naming the field when one is at fault.
        where: where it was read, for people (``orders.csv line 7``).
        field: the field at fault, or None when the record as a whole is.
    """

    payload: Any
    reason: str
    where: str
    field: str | None = None

    def error(self) -> InvalidEvent:
        """The :class:`InvalidEvent` its dead letter carries: ``where: reason``."""
        return InvalidEvent(f"{self.where}: {self.reason}", field=self.field, payload=self.payload)


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """What one :meth:`Source.read` returns.

    Attributes:
        payloads: the events, in the source's order: dicts, or bytes in the runtime's
            ``payload_format``.
        position: the position just after the last record of the batch (rejected ones
            included): ``seek`` there to read on from the next record.
        rejected: records that could not be made events, for the dead letters.
    """

    payloads: Sequence[Any]
    position: Any
    rejected: Sequence[RejectedRecord] = field(default=())


class Closing:
    """``async with``: the object itself, its :meth:`aclose` at the end (sources and
    sinks).

    An :meth:`aclose` that fails while an exception leaves the block does not replace it:
    that exception is what went wrong first (a sink's ``SinkError``, whose aclose then fails
    the same way when it writes what it buffered), so it goes on, with aclose's error added as
    a note (and logged). With nothing leaving the block, aclose's error is raised."""

    async def aclose(self) -> None:
        """Release what it holds. The default does nothing."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.aclose()
            return
        try:
            await self.aclose()
        except Exception as error:  # a cancellation or an interrupt still goes on as itself
            what = f"{type(self).__name__} {getattr(self, 'name', None)!r}"
            message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            exc.add_note(f"while it propagated, closing {what} failed too: {message}")
            _log.error(
                "close_failed",
                closing=what,
                error=message,
                propagating=type(exc).__name__,
                exc_info=error,
            )


class Source(Closing, abc.ABC):
    """An input a runtime consumes (:func:`consume`): batches of payloads with positions.

    Subclasses write :meth:`read` and :meth:`seek`; :meth:`check`, :meth:`commit`,
    :meth:`lag` and :meth:`aclose` do nothing by default. The caller owns a source's lifetime
    (``async with source:`` closes it); :func:`consume` reads it but neither opens nor closes
    it, so two ``consume`` calls in a row go on where the first stopped.

    Attributes:
        name: the source's name, unique among the sources of one runtime: a checkpoint
            records each source's position under its name.
    """

    name: str

    @abc.abstractmethod
    async def read(self, max_records: int) -> SourceBatch | None:
        """The next records, at most ``max_records`` (>= 1) of them, payloads and rejected
        counted together; None at the end of a finite input. A live input with nothing new
        waits briefly (a fraction of a second) and returns an empty batch, so that its
        consumer can commit and stop in time. Reads never run blocking I/O on the event
        loop. A read that is cancelled loses nothing: it returns its batch, or raises
        without having moved on."""

    @abc.abstractmethod
    async def seek(self, position: Any) -> None:
        """Go to ``position``, a value a batch reported (possibly as msgpack gave it back, a
        list for a tuple): the next :meth:`read` starts just after it.

        Raises:
            ValueError: ``position`` is not a position of this source.
        """

    def check(self, feature_set: FeatureSet) -> None:
        """Called by :func:`consume` before it reads: raise :class:`ConfigError` if the
        source cannot feed ``feature_set`` (a file source converting times to another unit
        than the feature set's). The default accepts any."""
        return None

    async def commit(self, position: Any) -> None:
        """Tell the input that every record up to ``position`` is safely held (a broker
        acknowledges or commits them). Called with positions in increasing order; the default
        does nothing (a file needs no commits)."""
        return None

    async def lag(self) -> int | None:
        """Records between the current position and the end of the input as it is now, or
        None when the source cannot tell (the default)."""
        return None

    async def aclose(self) -> None:
        """Release what the source holds (files, connections). The default does nothing."""
        return None

    async def iterate(
        self, *, dead_letters: Any = None, batch_size: int = 1024
    ) -> AsyncIterator[Any]:
        """The payloads from the current position to the end, one at a time: a finite source
        as the async iterable ``rt.replay`` takes (``rt.replay(source.iterate(
        dead_letters=rt.dead_letters))``). Rejected records go to ``dead_letters`` (an
        ``actors.DeadLetters``, such as ``rt.dead_letters``), or are skipped when it is None.
        Nothing is committed. On an endless source it never ends."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        while True:
            batch = await self.read(batch_size)
            if batch is None:
                return
            if dead_letters is not None:
                for record in batch.rejected:
                    record_rejected(dead_letters, self.name, record)
            for payload in batch.payloads:
                yield payload


def record_rejected(dead_letters: Any, source: str, record: RejectedRecord) -> None:
    """Put a record a source rejected in ``dead_letters``: reason ``REJECTED``, recipient
    ``featurist/source/<name>``, the record's payload as the message, and an
    :class:`InvalidEvent` whose message says where it was read and why."""
    error = record.error()
    dead_letters.record(
        record.payload,
        f"featurist/source/{source}",
        DeadLetterReason.REJECTED,
        error=error,
        detail=str(error),
    )
