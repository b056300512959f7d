"""A batching loader in the manner of DataLoader, on anyio.

Callers ask for one key at a time (:meth:`BatchLoader.load`); the loader gathers the keys asked
for in the same moment and fetches them with one call of a *batch function*. The design:

- Every key waiting for an answer has one *slot* (an event plus the outcome) in a dict of
  pending keys. A second load of a key that is queued or in flight waits on the same slot, so
  a key is never asked twice at once. Callers only wait on slots; a cancelled caller walks away
  without touching the slot, so the other callers of that key still get their answer.
- New keys go to a queue and wake a dispatcher task. The dispatcher yields once before it
  takes the queue, so every load issued in the same event loop iteration lands in one batch.
  It cuts the queue into batches of at most ``max_batch_size`` keys and starts one task per
  batch, holding a semaphore slot per batch so at most ``max_in_flight`` calls run at once.
  While all slots are taken, the queue grows and the next batches come out fuller.
- The queue is bounded by its callers: each queued key has at least one caller waiting on it,
  so it holds no more keys than there are waiting loads.
- All tasks live in a task group that the loader owns for the duration of its ``async with``
  block. Leaving the block normally drains: queued and in-flight loads finish first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar, cast

import anyio
import anyio.abc
import anyio.lowlevel

from ._exceptions import ActorStopped, BatchResultError, ConfigError, LoadTimeout

__all__ = ["BatchFunction", "BatchLoader", "LoaderCache", "LoaderStatistics"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_KC = TypeVar("_KC", bound=Hashable, contravariant=True)
_VC = TypeVar("_VC", contravariant=True)

#: ``async def batch_fn(keys: list[K]) -> Sequence[V | Exception]``: one result per key, in order.
BatchFunction = Callable[[list[K]], Awaitable[Sequence[V | Exception]]]

_MISSING = object()
_NEW, _RUNNING, _CLOSING, _CLOSED = range(4)


class LoaderCache(Protocol[_KC, _VC]):
    """The store a :class:`BatchLoader` keeps loaded values in.

    A plain ``dict`` satisfies it, and so does any ``MutableMapping``; a bounded mapping (an
    LRU cache, say) keeps memory bounded. The loader only stores values it loaded or was primed
    with, never errors, and reads values back with ``get(key, sentinel)``.
    """

    def get(self, key: _KC, default: object, /) -> object:
        """Return the value stored for ``key``, or ``default`` if there is none."""

    def __setitem__(self, key: _KC, value: _VC, /) -> None:
        """Store ``value`` for ``key``, replacing any value stored before."""

    def pop(self, key: _KC, default: object, /) -> object:
        """Remove ``key`` if it is stored; return its value, or ``default``."""

    def clear(self) -> None:
        """Remove every key."""


@dataclass(frozen=True)
class LoaderStatistics:
    """A snapshot of a :class:`BatchLoader`'s state and counters."""

    #: keys waiting for a batch call
    queued: int
    #: batch calls running now
    in_flight_batches: int
    #: keys in the batch calls running now
    in_flight_keys: int
    #: batch calls made so far
    batches: int
    #: keys the batch function answered with a value
    keys_loaded: int
    #: loads served from the cache
    cache_hits: int
    #: keys answered with an error: the batch call raised, returned a malformed result or timed
    #: out, or its result for the key was an exception
    errors: int
    #: batch calls that did not finish within the timeout
    timeouts: int
    #: the most keys one batch call is given
    max_batch_size: int
    #: the most batch calls that run at once
    max_in_flight: int


class _Slot(Generic[V]):
    """The outcome of one key, shared by every caller waiting on it."""

    __slots__ = ("_error", "_event", "_tb", "_value", "cacheable", "done", "queued", "waiters")

    def __init__(self, value: object = _MISSING) -> None:
        #: true once the outcome is known; a slot made with a value (a cache hit) is born done
        self.done = value is not _MISSING
        self._value = value
        self._error: BaseException | None = None
        self._tb: TracebackType | None = None
        # Made by the first caller that has to wait: a load_many of many keys waits on a few
        # slots only (one per batch, the rest are done by then), so most slots never need one.
        self._event: anyio.Event | None = None
        #: false once the key was cleared or primed while its load was under way: the value
        #: loaded may be older than what the caller meant, so it is handed out but not cached.
        self.cacheable = True
        #: true while the key waits in the queue for a batch
        self.queued = False
        #: callers waiting on the slot; when the last of a queued key walks away (cancelled),
        #: the key leaves the queue, so cancelled loads cannot grow it
        self.waiters = 0

    def resolve(self, value: object) -> None:
        self._value = value
        self._finish()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._tb = error.__traceback__
        self._finish()

    def _finish(self) -> None:
        self.done = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Wait until the outcome is known; always a checkpoint."""
        if self.done:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def result(self) -> V:
        if self._error is not None:
            # Every caller re-raises the same object; restore the traceback it had when it
            # failed so the callers' frames do not pile up on it (asyncio.Future does the same).
            raise self._error.with_traceback(self._tb)
        return cast(V, self._value)


class BatchLoader(Generic[K, V]):
    """Coalesces concurrent loads of single keys into calls of a batch function.

    Use it as an async context manager; it owns a task group for the duration of the block::

        async def fetch_users(ids: list[int]) -> list[User | Exception]: ...

        async with BatchLoader(fetch_users, max_batch_size=50) as users:
            alice, bob = await users.load_many([1, 2])

    Args:
        batch_fn: ``async def fn(keys: list[K]) -> Sequence[V | Exception]``. It gets distinct
            keys (in a list of its own) and must return one result per key, in the same order.
            A result that is an ``Exception`` instance is raised to that key's callers only.
            If it raises, every caller in the batch gets that exception. It should not wait on
            loads of its own loader: once such calls hold every ``max_in_flight`` slot, they
            wait for each other forever.
        max_batch_size: the most keys one call of ``batch_fn`` is given; at least 1.
        max_in_flight: the most calls of ``batch_fn`` that run at once; at least 1. This is
            the number of concurrent requests the backend sees from this loader: if in doubt,
            keep it small and let batches grow instead.
        timeout: seconds one call of ``batch_fn`` may take, or ``None`` for no limit. A call
            that takes longer is cancelled and its callers get :class:`LoadTimeout`.
        cache: where to keep loaded values (see :class:`LoaderCache`), or ``None`` to load
            every key afresh. Keys that are queued or in flight are shared either way.
        name: names the loader in error messages.
        linger: seconds the dispatcher waits, once a key is queued, for more keys before it
            calls ``batch_fn`` (unless ``max_batch_size`` keys are queued first): fewer,
            fuller calls for a little latency. 0 (the default): the keys of the same event
            loop iteration only.

    Raises:
        ConfigError: if a limit is out of range.
    """

    def __init__(
        self,
        batch_fn: BatchFunction[K, V],
        *,
        max_batch_size: int = 100,
        max_in_flight: int = 4,
        timeout: float | None = None,
        cache: LoaderCache[K, V] | None = None,
        name: str = "loader",
        linger: float = 0.0,
    ) -> None:
        for limit, value in (("max_batch_size", max_batch_size), ("max_in_flight", max_in_flight)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{limit} must be an int, got {value!r}")
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be > 0 or None, got {timeout}")
        if (
            isinstance(linger, bool)
            or not isinstance(linger, int | float)
            or not 0 <= linger < float("inf")
        ):
            raise ConfigError(f"linger must be a number of seconds >= 0, got {linger!r}")
        self._batch_fn = batch_fn
        self._linger = float(linger)
        #: set when the queue holds a full batch, to cut a linger short
        self._filled: anyio.Event | None = None
        self._max_batch_size = max_batch_size
        self._max_in_flight = max_in_flight
        self._timeout = timeout
        self._cache = cache
        self._name = name
        self._state = _NEW
        self._task_group: anyio.abc.TaskGroup | None = None
        self._pending: dict[K, _Slot[V]] = {}
        self._queue: deque[K] = deque()
        #: queue entries whose callers all walked away (skipped when taken)
        self._abandoned = 0
        self._wakeup = anyio.Event()
        self._slots = anyio.Semaphore(max_in_flight)
        self._in_flight_batches = 0
        self._in_flight_keys = 0
        self._batches = 0
        self._keys_loaded = 0
        self._cache_hits = 0
        self._errors = 0
        self._timeouts = 0

    def __repr__(self) -> str:
        return f"<BatchLoader {self._name!r}>"

    async def __aenter__(self) -> Self:
        if self._state != _NEW:
            raise RuntimeError(f"loader {self._name!r} can be entered only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._state = _RUNNING
        task_group.start_soon(self._dispatch, name=f"{self._name} dispatcher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Drain the loader and close its task group.

        If the block ended normally, queued and in-flight loads finish first. If it raised, the
        batch calls are cancelled and their callers get :class:`ActorStopped`; the block's
        exception propagates as it is (not wrapped in an exception group).
        """
        assert self._task_group is not None
        self._state = _CLOSING
        self._wakeup.set()
        if self._filled is not None:  # no lingering at the end: what is queued goes now
            self._filled.set()
        try:
            if exc_val is not None:
                self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
        finally:
            self._state = _CLOSED
            self._task_group = None
            stopped = ActorStopped(f"loader {self._name!r} stopped before the load finished")
            for slot in self._pending.values():
                if not slot.done:
                    slot.fail(stopped)
            self._pending.clear()
            self._queue.clear()

    async def load(self, key: K) -> V:
        """Return the value of one key.

        Served from the cache if it holds the key; otherwise the key joins the next batch, or
        the batch already under way for it. Always a checkpoint.

        Raises:
            ActorStopped: if the loader is not running (not entered yet, or leaving its block).
            LoadTimeout: if the batch call holding the key timed out.
            BatchResultError: if the batch function returned a malformed result.
            Exception: whatever the batch function raised, or returned for this key.
        """
        slot = self._slot_for(key)
        slot.waiters += 1
        try:
            await slot.wait()
        finally:
            self._leave(key, slot)
        return slot.result()

    async def load_many(self, keys: Iterable[K]) -> list[V]:
        """Return the values of several keys, in the order given.

        All the keys are queued before waiting, so they share batches; a key given twice is
        asked once. Waits for every key before it returns or raises, and then raises what
        :meth:`load` would for the first key in order whose load failed.

        Raises:
            ActorStopped: if the loader is not running (not entered yet, or leaving its block).
            LoadTimeout: if the batch call holding the key timed out.
            BatchResultError: if the batch function returned a malformed result.
            Exception: whatever the batch function raised, or returned for the key.
        """
        keys = list(keys)
        slots = [self._slot_for(key) for key in keys]
        for slot in slots:
            slot.waiters += 1
        waited = False
        try:
            for slot in slots:
                # Skip the done ones: each wait is a trip through the event loop.
                if not slot.done:
                    await slot.wait()
                    waited = True
            if not waited:
                await anyio.lowlevel.checkpoint()
        finally:
            for key, slot in zip(keys, slots, strict=True):
                self._leave(key, slot)
        return [slot.result() for slot in slots]

    def _leave(self, key: K, slot: _Slot[V]) -> None:
        slot.waiters -= 1
        if slot.waiters == 0 and slot.queued and not slot.done:
            # Every caller of a key not yet sent has walked away: forget the key. Its queue
            # entry is skipped by the dispatcher, and the queue is compacted when such entries
            # make up half of it.
            slot.queued = False
            if self._pending.get(key) is slot:
                del self._pending[key]
            self._abandoned += 1
            queue = self._queue
            if self._abandoned > 32 and 2 * self._abandoned > len(queue):
                pending = self._pending
                kept = [k for k in queue if (live := pending.get(k)) is not None and live.queued]
                queue.clear()
                queue.extend(kept)
                self._abandoned = 0

    def prime(self, key: K, value: V) -> None:
        """Store a value for a key in the cache, replacing any value stored.

        A load of the key that is under way still answers its callers but does not overwrite
        the primed value.

        Raises:
            ConfigError: if the loader has no cache.
        """
        if self._cache is None:
            raise ConfigError(f"loader {self._name!r} has no cache to prime")
        self._uncache_pending(key)
        self._cache[key] = value

    def clear(self, key: K) -> None:
        """Forget the cached value of a key, so the next load asks the batch function.

        A load of the key that is under way still answers its callers but is not cached.
        Does nothing if the loader has no cache.
        """
        if self._cache is not None:
            self._uncache_pending(key)
            self._cache.pop(key, None)

    def clear_all(self) -> None:
        """Forget every cached value; loads under way are not cached either."""
        if self._cache is not None:
            for slot in self._pending.values():
                slot.cacheable = False
            self._cache.clear()

    def statistics(self) -> LoaderStatistics:
        """Return a snapshot of the loader's queue, in-flight calls and counters."""
        return LoaderStatistics(
            queued=len(self._queue) - self._abandoned,
            in_flight_batches=self._in_flight_batches,
            in_flight_keys=self._in_flight_keys,
            batches=self._batches,
            keys_loaded=self._keys_loaded,
            cache_hits=self._cache_hits,
            errors=self._errors,
            timeouts=self._timeouts,
            max_batch_size=self._max_batch_size,
            max_in_flight=self._max_in_flight,
        )

    def _uncache_pending(self, key: K) -> None:
        slot = self._pending.get(key)
        if slot is not None:
            slot.cacheable = False
            if not slot.queued:
                # In flight: its answer may be older than the caller wants, so the next load
                # of the key starts a fresh request. A queued key has not been asked yet.
                del self._pending[key]

    def _slot_for(self, key: K) -> _Slot[V]:
        if self._state != _RUNNING:
            raise ActorStopped(f"loader {self._name!r} is not running")
        if self._cache is not None:
            value = self._cache.get(key, _MISSING)
            if value is not _MISSING:
                self._cache_hits += 1
                return _Slot(value)
        slot = self._pending.get(key)
        if slot is None:
            slot = self._pending[key] = _Slot()
            slot.queued = True
            self._queue.append(key)
            self._wakeup.set()
            if self._filled is not None and len(self._queue) >= self._max_batch_size:
                self._filled.set()
        return slot

    async def _dispatch(self) -> None:
        assert self._task_group is not None
        start_soon = self._task_group.start_soon
        queue, pending, size = self._queue, self._pending, self._max_batch_size
        take = queue.popleft
        while True:
            if not queue:
                if self._state != _RUNNING:
                    return
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                # Let the other tasks of this loop iteration add their keys to the batch.
                await anyio.lowlevel.checkpoint()
                if self._linger and 0 < len(queue) < size and self._state == _RUNNING:
                    # ... and those of the next ``linger`` seconds, unless a batch fills first
                    self._filled = anyio.Event()
                    with anyio.move_on_after(self._linger):
                        await self._filled.wait()
                    self._filled = None
                continue
            await self._slots.acquire()
            keys: list[K] = []
            slots: list[_Slot[V]] = []
            while queue and len(keys) < size:
                key = take()
                slot = pending.get(key)
                if slot is None or not slot.queued:
                    self._abandoned = max(self._abandoned - 1, 0)
                    continue  # abandoned by its callers, or a duplicate entry
                slot.queued = False
                keys.append(key)
                slots.append(slot)
            if not keys:
                self._slots.release()
                continue
            self._batches += 1
            self._in_flight_batches += 1
            self._in_flight_keys += len(keys)
            start_soon(self._run_batch, keys, slots)

    async def _run_batch(self, keys: list[K], slots: list[_Slot[V]]) -> None:
        try:
            await self._call(keys, slots)
        finally:
            self._slots.release()
            self._in_flight_batches -= 1
            self._in_flight_keys -= len(keys)
            pending = self._pending
            stopped: ActorStopped | None = None
            for key, slot in zip(keys, slots, strict=True):
                if pending.get(key) is slot:
                    del pending[key]
                if not slot.done:  # cancelled: the loader is stopping
                    stopped = stopped or ActorStopped(
                        f"loader {self._name!r} stopped before the load finished"
                    )
                    slot.fail(stopped)

    async def _call(self, keys: list[K], slots: list[_Slot[V]]) -> None:
        results: object = None
        try:
            if self._timeout is None:
                results = await self._batch_fn(list(keys))
            else:
                # move_on_after rather than fail_after: a TimeoutError that the batch function
                # raises on its own account must reach the callers as it is.
                with anyio.move_on_after(self._timeout) as scope:
                    results = await self._batch_fn(list(keys))
                if scope.cancelled_caught:
                    self._timeouts += 1
                    self._fail_all(
                        slots,
                        LoadTimeout(
                            f"batch of {len(keys)} keys of loader {self._name!r} did not "
                            f"finish within {self._timeout} s"
                        ),
                    )
                    return
        except Exception as exc:
            self._fail_all(slots, exc)
            return
        if not isinstance(results, Sequence) or isinstance(results, str | bytes | bytearray):
            self._fail_all(
                slots,
                BatchResultError(
                    f"batch function of loader {self._name!r} returned "
                    f"{type(results).__name__}, expected a sequence of {len(keys)} results"
                ),
            )
            return
        if len(results) != len(keys):
            self._fail_all(
                slots,
                BatchResultError(
                    f"batch function of loader {self._name!r} returned {len(results)} "
                    f"results for {len(keys)} keys"
                ),
            )
            return
        cache = self._cache
        for key, slot, result in zip(keys, slots, results, strict=True):
            if isinstance(result, Exception):
                self._errors += 1
                slot.fail(result)
            else:
                self._keys_loaded += 1
                if cache is not None and slot.cacheable:
                    cache[key] = result
                slot.resolve(result)

    def _fail_all(self, slots: list[_Slot[V]], error: Exception) -> None:
        self._errors += len(slots)
        for slot in slots:
            slot.fail(error)
