"""Consuming a source: read batches, ingest them, record positions, commit covered ones.

:func:`consume` is the loop every user would otherwise write around a consumer. Per batch it
ingests the payloads with ``ingest_many`` (which waits while the runtime is full: that is the
backpressure, the source is not read faster than the runtime applies), puts rejected records
in dead letters, and hands the runtime the position reached as its input ``offset``.

Positions in checkpoints: the runtime's offset is a dict, one position per source name, and a
call of ``ingest_many`` given an offset is never split by a checkpoint, so a checkpoint holds
the state of exactly the records before each source's recorded position. On start, ``consume``
seeks the source to the position the runtime holds for it (restored from a checkpoint, or
reached by an earlier ``consume``), so after a restart it goes on from the checkpoint's
records and the state is as if nothing had stopped. Several ``consume`` loops may feed one
runtime at once (one per source): they take turns to hand the offset over, so none loses the
other's position.

Commits: with checkpoints, a position is committed to the source only once a checkpoint that
holds it is written (the runtime's last checkpoint is looked at after every batch, and the one
restored at the start); delivery is then at least once and the state exactly once. Without
checkpoints there is no state to resume, and a batch's position is committed once the runtime
accepted the batch. A commit goes on beside the loop (the next batch is ingested while the
broker answers it), one at a time and in order.

The runtime is seen through :class:`ConsumeHost`, the few things of it this needs: this
package does not import the runtime.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from .._exceptions import ConfigError
from .._spec.feature_set import FeatureSet
from .source import Source, SourceBatch, record_rejected

__all__ = ["ConsumeHost", "ConsumeResult", "consume"]

#: per runtime, the lock under which a consume loop reads and hands over the offset dict
_LOCKS: weakref.WeakKeyDictionary[Any, anyio.Lock] = weakref.WeakKeyDictionary()
#: per runtime, the names of the sources a consume loop reads now
_READING: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


class ConsumeHost(Protocol):
    """What :func:`consume` needs of a running ``FeatureRuntime``."""

    @property
    def offset(self) -> Any: ...

    @property
    def checkpoints(self) -> Any: ...

    @property
    def restored(self) -> Any: ...

    @property
    def last_checkpoint(self) -> Any: ...

    @property
    def dead_letters(self) -> Any: ...

    @property
    def feature_set(self) -> FeatureSet: ...

    async def ingest_many(
        self, events: Any, *, stream: str | None = None, offset: Any = None
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    """What one :func:`consume` call did."""

    #: records read from the source: events handed to the runtime and records it rejected
    records: int
    #: events the runtime accepted
    accepted: int
    #: records that went to dead letters, rejected by the source or by the runtime
    rejected: int
    #: batches read
    batches: int
    #: the source's position reached (the last batch's), or None if nothing was read
    position: Any
    #: True if the source ended (a finite source read to its end)
    ended: bool


def _positions(rt: ConsumeHost) -> dict[Any, Any]:
    """The runtime's offset as consume records it: a dict of positions by source name."""
    offset = rt.offset
    if offset is None:
        return {}
    if not isinstance(offset, dict):
        raise ConfigError(
            f"the runtime's offset is {offset!r}, not the positions consume records (a dict "
            "by source name): do not give ingest offsets of your own to a runtime that "
            "consumes sources"
        )
    return offset


async def consume(
    rt: ConsumeHost,
    source: Source,
    *,
    stream: str | None = None,
    batch_size: int = 1024,
    until: Literal["end", "idle"] | int = "end",
) -> ConsumeResult:
    """Read ``source`` into the running runtime ``rt`` until it ends, or until ``until``.

    Each batch of at most ``batch_size`` records is ingested into ``stream`` (default: the
    feature set's first) with ``ingest_many``, which waits while the runtime is full; records
    the source rejected (and events the runtime rejects) go to ``rt.dead_letters``, and the run
    goes on. The position reached is recorded as ``rt.offset[source.name]``, so a checkpoint
    holds it; the source starts from the position the runtime holds for it, if any (after a
    restore: the checkpoint's). Positions are committed to the source once a checkpoint holds
    them, or at once for a runtime without checkpoints.

    ``until``: ``"end"`` (the default) reads to the end of a finite source and forever from a
    live one (cancel the call to stop it; what was ingested stays ingested); ``"idle"`` stops
    at the first batch that brings nothing (for a broker, caught up); an int stops after that
    many records. The source is not closed. Cancelling the call stops it at once while it
    waits for a read; a batch already read is first ingested whole with its position (this
    waits while the runtime is full), so the runtime never holds events without the position
    after them.

    Returns a :class:`ConsumeResult`.

    Raises:
        ValueError: ``batch_size`` is not an int >= 1, ``until`` is not one of its forms, or
            ``stream`` is not a stream of the feature set.
        ConfigError: the source has no name, another ``consume`` call (or an input of
            ``inputs=``) reads a source of that name into the runtime now, the source cannot
            feed the feature set (its ``check`` says why), or the runtime's offset was given by
            something else than ``consume``.
        RuntimeClosed: the runtime is not running, or stops meanwhile.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(until, bool) or not (
        until in ("end", "idle") or (isinstance(until, int) and until >= 0)
    ):
        raise ValueError(f"until must be 'end', 'idle' or an int >= 0, got {until!r}")
    name = getattr(source, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"the source's name must be a non-empty str, got {name!r}")
    feature_set = rt.feature_set
    if stream is not None and stream not in feature_set.stream_names:
        known = ", ".join(feature_set.stream_names)
        raise ValueError(f"stream: no stream named {stream!r} (known: {known})")
    source.check(feature_set)
    reading = _READING.setdefault(rt, set())
    if name in reading:
        raise ConfigError(
            f"a source named {name!r} is read into this runtime already: two loops on one name "
            "would record each other's positions as their own (give each source its own name)"
        )
    reading.add(name)
    try:
        return await _consume(rt, source, name, stream, batch_size, until)
    finally:
        reading.discard(name)


async def _consume(
    rt: ConsumeHost,
    source: Source,
    name: str,
    stream: str | None,
    batch_size: int,
    until: Literal["end", "idle"] | int,
) -> ConsumeResult:
    """:func:`consume`'s loop, its arguments checked and its source's name taken."""
    lock = _LOCKS.setdefault(rt, anyio.Lock())
    held = _positions(rt).get(name)
    if held is not None:
        await source.seek(held)
    commits = _Commits(rt, source)
    await commits.after_checkpoints()
    records = accepted = rejected = batches = 0
    position = held
    ended = False
    try:
        async with anyio.create_task_group() as tasks:
            commits.tasks = tasks  # commits go on beside the loop from now on
            # the next read, under way while the batch before it is ingested and committed
            ahead: _Ahead | None = None
            while True:
                # a cancellation point and a turn for the others, whatever the source's read does
                await anyio.lowlevel.checkpoint()
                if ahead is not None:
                    batch = await ahead.result()
                    ahead = None
                else:
                    want = _wanted(batch_size, until, records)
                    if want <= 0:
                        break
                    batch = await source.read(want)
                if batch is None:
                    ended = True
                    break
                batches += 1
                count = len(batch.payloads) + len(batch.rejected)
                if count == 0 and batch.position == position:
                    await commits.after_checkpoints()
                    if until == "idle":
                        break
                    continue
                # the next read goes while this batch is ingested (none after an empty one, so
                # "idle" stops with nothing read ahead, nor past a count)
                want = _wanted(batch_size, until, records + count)
                if want > 0:
                    ahead = _Ahead(source, want)
                    tasks.start_soon(ahead.run)
                # A batch read is ingested whole, with its position, even if the call is cancelled
                # meanwhile: cut short, its events would be in the state but not its position, and
                # the next call (which seeks to the runtime's position) would count them twice.
                with anyio.CancelScope(shield=True):
                    for record in batch.rejected:
                        record_rejected(rt.dead_letters, name, record)
                    async with lock:
                        offsets = dict(_positions(rt))
                        offsets[name] = batch.position
                        taken = await rt.ingest_many(batch.payloads, stream=stream, offset=offsets)
                records += count
                accepted += taken
                rejected += count - taken
                position = batch.position
                await commits.after_batch(position)
    except BaseExceptionGroup as group:
        # the loop's own error (the read ahead and the commits keep theirs for the loop to
        # raise), not wrapped by the task group that runs them
        if len(group.exceptions) == 1:
            error = group.exceptions[0]
            raise error from error.__cause__
        raise
    finally:
        commits.tasks = None
    commits.check()
    await commits.after_checkpoints()
    return ConsumeResult(
        records=records,
        accepted=accepted,
        rejected=rejected,
        batches=batches,
        position=position,
        ended=ended,
    )


def _wanted(batch_size: int, until: Literal["end", "idle"] | int, records: int) -> int:
    """Records the next read may bring, ``records`` read so far."""
    if isinstance(until, int):
        return min(batch_size, until - records)
    return batch_size


class _Ahead:
    """One read of the source, run while the batch before it is ingested: the source waits
    for its broker (a round trip) while the runtime computes. A call cancelled meanwhile drops
    what it read ahead: the runtime's position does not cover it, and the next call seeks
    there, so those records are read again."""

    __slots__ = ("_batch", "_done", "_error", "_source", "_want")

    def __init__(self, source: Source, want: int) -> None:
        self._source = source
        self._want = want
        self._done = anyio.Event()
        self._batch: SourceBatch | None = None
        self._error: Exception | None = None

    async def run(self) -> None:
        try:
            self._batch = await self._source.read(self._want)
        except Exception as exc:  # raised by result(), in the consume loop's turn
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> SourceBatch | None:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._batch


class _Commits:
    """When to commit: after the checkpoint that holds a position, or after each batch for a
    runtime without checkpoints.

    While the consume loop runs (:attr:`tasks` set), a commit goes on in a task of its own, so
    that the loop ingests the next batch meanwhile rather than wait for the broker's reply: one
    commit at a time, in order, and a position due while one is under way replaces any other
    waiting (the newest covers the older ones). A commit's error is raised by the loop's next
    call, or by :meth:`check` once the loop ended."""

    __slots__ = ("_busy", "_committed", "_due", "_error", "_rt", "_seen", "_source", "tasks")

    def __init__(self, rt: ConsumeHost, source: Source) -> None:
        self._rt = rt
        self._source = source
        #: the checkpoint whose position was looked at last (its sequence)
        self._seen: int | None = None
        self._committed: Any = None
        #: the consume loop's task group while it runs: commits then go on beside it
        self.tasks: anyio.abc.TaskGroup | None = None
        #: the position to commit next (_NONE: none), and whether a commit task runs
        self._due: Any = _NONE
        self._busy = False
        self._error: Exception | None = None

    async def after_batch(self, position: Any) -> None:
        self.check()
        if self._rt.checkpoints is None:
            await self._commit(position)
        else:
            await self.after_checkpoints()

    def check(self) -> None:
        """Raise the error of a commit that ran beside the loop, if one failed."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    async def after_checkpoints(self) -> None:
        """Commit the source's position in the newest checkpoint written or restored, once."""
        self.check()
        rt = self._rt
        info = rt.last_checkpoint or rt.restored
        if info is None or info.sequence == self._seen:
            return
        self._seen = info.sequence
        offset = info.offset
        if isinstance(offset, dict) and offset.get(self._source.name) is not None:
            await self._commit(offset[self._source.name])

    async def _commit(self, position: Any) -> None:
        if self.tasks is None:
            if position != self._committed:
                await self._source.commit(position)
                self._committed = position
            return
        self._due = position
        if not self._busy:
            self._busy = True
            self.tasks.start_soon(self._run)

    async def _run(self) -> None:
        """Commit the due positions, one at a time, until none is due."""
        try:
            while self._due is not _NONE:
                position, self._due = self._due, _NONE
                if position != self._committed:
                    await self._source.commit(position)
                    self._committed = position
        except Exception as exc:  # raised by the consume loop (check)
            self._error = exc
            self._due = _NONE
        finally:
            self._busy = False


#: no position due (a position may be None)
_NONE: Any = object()
