"""Sinks: where feature updates go out of the runtime, and the loop that writes them.

A :class:`Sink` writes lists of :class:`UpdateBatch` (``write``), makes what it holds durable
(``flush``) and releases what it holds (``aclose``). :func:`run_sink` attaches one to a running
runtime for the span of an ``async with`` block: it subscribes to ``rt.updates()`` with a
bounded buffer and the ``"block"`` policy, and a task of its own writes what arrives.

Nothing is dropped silently:

- **Backpressure.** While the sink is slower than the runtime, the subscription's buffer fills
  and the shards wait to publish, so ingest slows to the sink's pace; memory stays bounded by
  ``buffer`` updates (plus the batch being written).
- **Retries, then an error.** A write that raises (or takes longer than ``write_timeout``) is
  tried again with the same batches after a backoff, up to ``max_attempts`` times; then the
  subscription is closed (the runtime goes on without the sink), the block's body is cancelled
  and ``async with`` raises :class:`SinkError` with the count of updates not written.
- **Drain.** When the block ends, the runtime is flushed and every update published until then
  is written and the sink flushed, within ``drain_timeout`` (a :class:`SinkError` otherwise).

The runtime is seen through :class:`SinkHost`: this package does not import the runtime.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from actors import ActorStopped, get_logger

from .._batches import UpdateBatch
from .._exceptions import ConfigError, RuntimeClosed, SinkError
from .._spec.feature_set import FeatureSet
from .source import Closing

__all__ = ["RunningSink", "Sink", "SinkHost", "SinkStatistics", "run_sink"]

_log = get_logger("featurist.sinks")


class Sink(Closing, abc.ABC):
    """Where feature updates are written (:func:`run_sink` feeds it).

    Subclasses write :meth:`write`; :meth:`check`, :meth:`flush` and :meth:`aclose` do
    nothing by default. The caller owns a sink's lifetime (``async with sink:`` closes it);
    :func:`run_sink` writes to it and flushes it but does not close it.

    Attributes:
        name: the sink's name, for errors and logs.
    """

    name: str

    @abc.abstractmethod
    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        """Write the updates of ``batches``, in order (they may come from several feature
        groups: ``batch.group``). Returns once they are written (or buffered by the sink, to
        be written at the latest by :meth:`flush`).

        A write that raises is called again with the same list (the same object), so it
        must be safe to repeat: an update may then be written twice, never lost.
        """

    def check(self, feature_set: FeatureSet) -> None:
        """Called by :func:`run_sink` before it subscribes: raise :class:`ConfigError` if the
        sink cannot write the updates of ``feature_set``. The default accepts any."""
        return None

    async def flush(self) -> None:
        """Make every update written so far durable (write buffered rows, wait for acks).
        The default does nothing."""
        return None

    async def aclose(self) -> None:
        """Write what is buffered and release what the sink holds. The default does nothing."""
        return None

    def buffered(self) -> int:
        """Updates of writes that returned which are not durable yet (held for
        :meth:`flush`): a :class:`SinkError` counts them in its ``unwritten``, since a sink that
        fails loses them. The default, for a sink whose writes are durable, is 0."""
        return 0


class SinkHost(Protocol):
    """What :func:`run_sink` needs of a running ``FeatureRuntime``."""

    @property
    def feature_set(self) -> FeatureSet: ...

    def updates(self, *, buffer: int = ..., policy: Any = ...) -> Any: ...

    async def flush(self) -> None: ...

    def guard_checkpoints(self, guard: Callable[[], Awaitable[None]]) -> Callable[[], None]: ...


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    """A snapshot of a running sink (``running.statistics()``)."""

    #: updates written (each update of a batch the sink's ``write`` returned from)
    written: int
    #: calls of the sink's ``write`` that succeeded
    writes: int
    #: attempts that failed and were tried again
    retries: int
    #: updates waiting in the subscription's buffer
    pending: int
    #: the most updates the buffer holds
    capacity: int
    #: shards waiting for room in the buffer: ingest is held at the sink's pace while > 0
    publishers_waiting: int


def _check_number(name: str, value: Any, *, minimum: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or not math.isfinite(value)
        or value < minimum
    ):
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} >= {minimum:g}, got {value!r}")


def _describe(exc: BaseException, timed_out: float | None = None) -> str:
    """An error for people: its type and its message. Not ``repr``, which for some libraries'
    errors (redis-py's ``server:ResponseError``) leaves the message out, and with it what
    went wrong (``WRONGTYPE``, the key, ``DB index is out of range``). ``timed_out``: the
    ``write_timeout`` whose expiry raised ``exc`` (a ``TimeoutError`` without a message)."""
    if timed_out is not None:
        return f"TimeoutError (write_timeout={timed_out:g} s)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RunningSink:
    """A sink attached to a runtime by :func:`run_sink`: what ``async with`` gives."""

    def __init__(
        self,
        sink: Sink,
        subscription: Any,
        *,
        max_batch: int,
        max_attempts: int,
        backoff: float,
        max_backoff: float,
        write_timeout: float,
    ) -> None:
        #: the sink written to
        self.sink = sink
        self._subscription = subscription
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._write_timeout = write_timeout
        self._written = 0
        self._writes = 0
        self._retries = 0
        #: updates taken from the subscription and not written yet
        self._in_hand = 0
        #: updates taken from the subscription since the start
        self._taken = 0
        #: set (and replaced) after each write: a checkpoint's guard waits on it
        self._wrote = anyio.Event()
        #: held by each call of the sink: a guard's flush does not run during a write
        self._calls = anyio.Lock()
        self._done = anyio.Event()
        self._failure: SinkError | None = None
        self._scope = anyio.CancelScope(shield=True)

    def statistics(self) -> SinkStatistics:
        """Written, retried and waiting updates, and whether ingest waits for the sink."""
        stats = self._subscription.statistics()
        return SinkStatistics(
            written=self._written,
            writes=self._writes,
            retries=self._retries,
            pending=stats.depth,
            capacity=stats.capacity,
            publishers_waiting=stats.publishers_waiting,
        )

    def _unwritten(self) -> int:
        """Updates taken and not written, waiting in the buffer, and held by the sink (written
        to it but not durable: lost if it fails)."""
        try:
            held = int(self.sink.buffered())
        except Exception:  # a count for a message: never worth failing the failure
            held = 0
        return self._in_hand + int(self._subscription.statistics().depth) + held

    async def _run(self) -> None:
        """Write what the subscription brings until it ends, then flush the sink.

        Shielded: a cancellation of the code around the block must not stop the writer
        before the drain; only :meth:`_stop` does (a drain out of time)."""
        with self._scope:
            await self._write_all()

    def _stop(self) -> None:
        self._scope.cancel()

    async def _write_all(self) -> None:
        try:
            batches = self._subscription.batches()
            async for first in batches:
                taken = [first]
                count = len(first)
                # take what is already waiting, up to max_batch: one write under load
                while count < self._max_batch and self._subscription.statistics().depth:
                    batch = await anext(batches, None)
                    if batch is None:
                        break
                    taken.append(batch)
                    count += len(batch)
                self._in_hand = count
                self._taken += count
                async with self._calls:
                    await self._attempt("write", functools.partial(self.sink.write, taken))
                self._in_hand = 0
                self._written += count
                self._writes += 1
                self._wrote.set()
                self._wrote = anyio.Event()
            async with self._calls:
                await self._attempt("flush", self.sink.flush)
        except SinkError as exc:
            self._failure = exc
            # the runtime goes on without the sink: its shards must not wait for it
            await self._subscription.aclose()
            raise
        finally:
            self._done.set()
            self._wrote.set()

    async def guard(self) -> None:
        """A checkpoint's guard (``FeatureRuntime.guard_checkpoints``): returns once every
        update published before the call is written and the sink flushed, so that a
        checkpoint is never written ahead of what the sink holds.

        Raises:
            SinkError: the sink failed (its writes or this flush, after their retries): the
                checkpoint fails, until the block has ended and the guard is removed.
        """
        mark = self._taken + int(self._subscription.statistics().depth)
        while self._written < mark:
            if self._done.is_set():
                break
            await self._wrote.wait()
        if self._failure is not None:
            # the sink failed: until its block has ended (and the guard is gone), no
            # checkpoint may cover updates it did not write
            raise self._failure
        if self._done.is_set():
            return  # the writer ended after its drain: what was published is written
        async with self._calls:
            await self._attempt("flush", self.sink.flush)

    async def _attempt(self, what: str, call: Any) -> None:
        """Run ``call()`` until it succeeds, at most ``max_attempts`` times."""
        delay = self._backoff
        for attempt in range(1, self._max_attempts + 1):
            scope: anyio.CancelScope | None = None
            try:
                with anyio.fail_after(self._write_timeout) as scope:
                    await call()
                return
            except Exception as exc:
                ours = scope is not None and scope.cancelled_caught
                error = _describe(exc, self._write_timeout if ours else None)
                if attempt == self._max_attempts:
                    unwritten = self._unwritten()
                    lost = (
                        f"{unwritten} updates were not written"
                        if what == "write" or unwritten
                        else "what the sink buffered may not be written"
                    )
                    raise SinkError(
                        f"sink {self.sink.name!r}: {what} failed {attempt} times "
                        f"(last: {error}); {lost}",
                        sink=self.sink.name,
                        attempts=attempt,
                        unwritten=unwritten,
                    ) from exc
                self._retries += 1
                _log.warning(
                    "sink_retry",
                    sink=self.sink.name,
                    what=what,
                    attempt=attempt,
                    error=error,
                    delay_s=delay,
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _drain(self, rt: SinkHost, drain_timeout: float) -> SinkError | None:
        """Flush the runtime, end the subscription and wait for the rest to be written."""
        with anyio.move_on_after(drain_timeout):
            try:
                await rt.flush()
            except (RuntimeClosed, ActorStopped):
                # stopped, or its actors cancelled with the scope around the runtime: the
                # subscription holds the last updates published, written below
                pass
            await self._subscription.aclose()
            await self._done.wait()
            return None
        unwritten = self._unwritten()
        return SinkError(
            f"sink {self.sink.name!r}: the updates left when its block ended were not all "
            f"written within drain_timeout={drain_timeout:g} s ({unwritten} not written)",
            sink=self.sink.name,
            attempts=0,
            unwritten=unwritten,
        )


@asynccontextmanager
async def run_sink(
    rt: SinkHost,
    sink: Sink,
    *,
    buffer: int = 10_000,
    max_batch: int = 10_000,
    max_attempts: int = 5,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
    write_timeout: float = 30.0,
    drain_timeout: float = 60.0,
) -> AsyncIterator[RunningSink]:
    """Write every feature update of the running runtime ``rt`` to ``sink`` while the block
    runs; an async context manager::

        async with FeatureRuntime(feature_set) as rt:
            async with RedisSink("redis://127.0.0.1:6379") as sink, run_sink(rt, sink):
                await consume(rt, source)

    On entry it subscribes to ``rt.updates(buffer=buffer, policy="block")``: updates published
    from then on are written, none before. A task writes what arrives, taking the batches
    waiting into one ``sink.write`` call until it holds ``max_batch`` updates or more. When the
    sink is slower than the runtime, ingest waits (the buffer holds at most ``buffer`` updates).

    A write that raises, or does not return within ``write_timeout`` seconds, is tried again
    after ``backoff`` seconds (doubling up to ``max_backoff``), ``max_attempts`` times in
    all; then the sink is detached (the runtime goes on), the block's body is cancelled and
    the block raises :class:`SinkError`.

    When the block ends (even by an exception or a cancellation), the runtime is flushed and
    every update published until then is written and ``sink.flush()`` called, within
    ``drain_timeout`` seconds; a drain that fails or does not finish raises
    :class:`SinkError` (after the body's own exception, if it raised one, which then wins and
    the drain's failure is logged). The sink is not closed. Yields a :class:`RunningSink`
    (its ``statistics()``).

    Raises:
        ValueError: an option out of its range.
        ConfigError: a sink with no name, or one that cannot write this feature set's
            updates.
        SinkError: the sink failed (above).
        RuntimeClosed: the runtime is not running.
    """
    _check_number("buffer", buffer, minimum=1, integer=True)
    _check_number("max_batch", max_batch, minimum=1, integer=True)
    _check_number("max_attempts", max_attempts, minimum=1, integer=True)
    _check_number("backoff", backoff, minimum=0)
    _check_number("max_backoff", max_backoff, minimum=0)
    for option, seconds in (("write_timeout", write_timeout), ("drain_timeout", drain_timeout)):
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds <= 0:
            # every write (or the drain) would time out at once
            raise ValueError(f"{option} must be a number > 0 (seconds), got {seconds!r}")
        _check_number(option, seconds, minimum=0)
    name = getattr(sink, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"the sink's name must be a non-empty str, got {name!r}")
    sink.check(rt.feature_set)
    subscription = rt.updates(buffer=buffer, policy="block")
    running = RunningSink(
        sink,
        subscription,
        max_batch=max_batch,
        max_attempts=max_attempts,
        backoff=backoff,
        max_backoff=max_backoff,
        write_timeout=write_timeout,
    )
    drain_failure: SinkError | None = None
    body_failed = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(running._run, name=f"featurist sink {name}")
            unguard = rt.guard_checkpoints(running.guard)
            try:
                yield running
            except BaseException:
                body_failed = True
                raise
            finally:
                if running._failure is None:
                    # shielded: a cancelled body still writes what the runtime computed
                    with anyio.CancelScope(shield=True):
                        try:
                            drain_failure = await running._drain(rt, drain_timeout)
                        except BaseException:
                            running._stop()  # else the writer waits for ever on the rest
                            raise
                    if drain_failure is not None:
                        running._stop()
                        if body_failed:  # the body's exception goes on: say what else failed
                            _log.error("sink_drain_failed", sink=name, error=str(drain_failure))
                unguard()
    except BaseExceptionGroup as group:
        # One error from one place (the writer's SinkError, or the body's own): raise it as
        # itself, not wrapped in the group of this block's private task group.
        errors = [e for e in group.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        if len(errors) == 1:
            only = errors[0]
            raise only.with_traceback(only.__traceback__) from only.__cause__
        raise
    finally:
        await subscription.aclose()
    if drain_failure is not None:
        raise drain_failure
