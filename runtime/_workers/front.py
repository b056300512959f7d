"""The front: the application's side of a runtime whose shards run in worker processes.

It only routes. Per event it finds the key (of an event given as bytes, by decoding the key
and time fields alone, with a msgspec struct of those two fields: the bytes travel on and the
worker decodes them; any other event is read and checked here in full, as ``ingest`` does
in-process), checks the key and time, maps the key to its key group and the key group to a
worker (``KeyRouter(shards=workers)``: contiguous ranges of key groups, the function
checkpoints split state by), and appends the event to that worker's buffer. A buffer leaves
as one :class:`Events` frame at once when the worker has no frame in flight (it answers each
with :class:`Taken`: latency first, as in-process), at ``batch_size`` events while it is busy,
after ``linger``, or before a read, a flush or the shutdown. Sending waits while the worker's
socket is full: backpressure.

A reader task per worker takes what the worker sends: update batches, republished to the
front's own hub as ``UpdateBatch``\\ es (so ``rt.updates()`` reads them as in-process), events
the worker refused (into the front's dead letters), and replies to calls. A worker whose stream
ends without a :class:`Stopped` has died: the front fails, and every call after says which
worker, with its exit code (workers are not restarted yet).
"""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, suppress
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from actors import DeadLetters, KeyRouter, get_logger

from .._batches import UpdateBatch
from .._exceptions import ConfigError, InvalidEvent, RuntimeClosed, UnknownFeature
from .._ingest.events import EventReader
from .._ingest.router import record_rejected
from .._results import FeatureVector, RuntimeStatistics
from .._updates import UpdateHub
from .protocol import (
    Call,
    Connection,
    Events,
    FromWorker,
    Rejected,
    Reply,
    Stop,
    Stopped,
    Taken,
    Updates,
)
from .stats import merge_statistics
from .worker import WorkerSpec, main

__all__ = ["WorkerFront"]

_log = get_logger("featurist.workers")
#: seconds a worker may take to start (the first starts the fork server, which imports the
#: runtime)
START_TIMEOUT = 120.0
#: seconds a worker that said it stopped may take to exit before it is killed
EXIT_GRACE = 2.0

_vectors = msgspec.msgpack.Decoder(list[FeatureVector])
_statistics = msgspec.msgpack.Decoder(RuntimeStatistics)
_pid = msgspec.msgpack.Decoder(int)


class _Pending:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.result: msgspec.Raw | None = None


class _Worker:
    """The front's view of one worker process."""

    __slots__ = ("conn", "ended", "in_flight", "index", "pending", "pid", "process", "stopped")

    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.pid: int | None = process.pid
        #: calls sent, by id, until their reply comes
        self.pending: dict[int, _Pending] = {}
        #: True once the worker said :class:`Stopped`
        self.stopped = False
        #: :class:`Events` frames sent that the worker has not yet said it took in
        self.in_flight = 0
        #: set when the front's reader of this worker ended (stopped, died or cancelled)
        self.ended = anyio.Event()


class WorkerFront:
    """Routes events to ``workers`` processes and reads their answers.

    Args:
        workers: the number of worker processes (>= 1).
        make_runtime: makes a worker's runtime (picklable: it is sent to each process).
        reader: the feature set's event reader (checks keys and times, reads non-bytes events).
        key_groups: the number of key groups.
        batch_size: events per frame sent to a worker.
        linger: seconds a partial buffer may wait.
        dead_letters: where refused events go.
        route_cache_size: keys whose worker is remembered.
        names: the feature set's feature names (checked by ``get_many``).
        shards: the shard actors in all, for :meth:`statistics`.
    """

    def __init__(
        self,
        *,
        workers: int,
        make_runtime: Callable[[], Any],
        reader: EventReader,
        key_groups: int,
        batch_size: int,
        linger: float,
        dead_letters: DeadLetters,
        route_cache_size: int,
        names: tuple[str, ...],
        shards: int,
    ) -> None:
        self.workers = workers
        self._make_runtime = make_runtime
        self._reader = reader
        self._router = KeyRouter(shards=workers, key_groups=key_groups, cache_size=route_cache_size)
        self.batch_size = batch_size
        self.linger = linger
        self._dead_letters = dead_letters
        self._names = names
        self._shards = shards
        #: the front's hub of updates: what ``rt.updates()`` subscribes to
        self.updates: UpdateHub[Any] = UpdateHub()
        #: per worker: events routed and not yet sent, and when the first of them came
        self.buffers: list[list[Any]] = [[] for _ in range(workers)]
        self._created = [0.0] * workers
        self._workers: list[_Worker] = []
        #: every process started (or being started), by worker index
        self._processes: list[Any] = []
        self._ids = itertools.count(1)
        #: why the front stopped working (a worker died or failed), or None
        self.failure: str | None = None
        self.ingested = 0
        self.rejected = 0
        self._key_time = _key_time_decoder(reader)
        #: set to wake the flusher before its time (made in ``start``, on the event loop)
        self._wake: anyio.Event | None = None

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids, by worker index."""
        return [worker.pid for worker in self._workers]

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, stack: AsyncExitStack) -> None:
        """Start the workers and their readers (stopped by ``stack``, killed at the latest
        when it closes), and wait until every worker's runtime runs.

        Raises:
            ConfigError: the runtime's spec cannot be sent to a process (not picklable).
            RuntimeError: a worker failed to start.
        """
        # first in, last out: whatever happens, no process outlives the front
        stack.callback(self._kill_all)
        stack.push_async_callback(self._close_connections)
        stack.callback(self.updates.close)
        self._wake = anyio.Event()
        context = _context()
        ready: dict[int, _Pending] = {}
        for index in range(self.workers):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            spec = WorkerSpec(index, self._make_runtime)
            process = context.Process(
                target=main,
                args=(theirs, spec),
                name=f"featurist-worker-{index}",
                daemon=True,
            )
            self._processes.append(process)  # killed at the latest when the stack closes
            try:
                # in a thread: starting a process (fork, exec, the spec written to it) takes
                # a good part of a second on a busy machine, too long to hold the event loop
                await anyio.to_thread.run_sync(process.start)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                mine.close()
                raise ConfigError(
                    f"workers: the runtime's options cannot be sent to a worker process ({exc})"
                ) from exc
            except BaseException:
                mine.close()
                raise
            finally:
                theirs.close()
            try:
                conn = await Connection.of(mine, FromWorker)
            except BaseException:
                mine.close()
                raise
            worker = _Worker(index, process, conn)
            worker.pending[0] = ready[index] = _Pending()
            self._workers.append(worker)
        tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        for worker in self._workers:
            tasks.start_soon(self._read, worker, name=f"featurist-worker-{worker.index}-reader")
        tasks.start_soon(self._flusher, name="featurist-front-flusher")
        with anyio.move_on_after(START_TIMEOUT) as scope:
            for worker in self._workers:
                started = ready[worker.index]
                await started.done.wait()
                if started.error is not None:
                    raise RuntimeError(
                        f"worker {worker.index} failed to start: {started.error}"
                    ) from started.error
                assert started.result is not None
                worker.pid = _pid.decode(started.result)
        if scope.cancelled_caught:
            raise RuntimeError(f"the workers did not start within {START_TIMEOUT:g} s")
        _log.info("workers_started", workers=self.workers, pids=[w.pid for w in self._workers])

    async def stop(self, deadline: float) -> None:
        """Send what is buffered, ask every worker to stop, and wait for them until
        ``deadline`` (``anyio.current_time()``); a worker still running then is killed."""
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0.0)):
            if self.failure is None:
                with suppress(RuntimeClosed):  # a worker died: the others still stop
                    await self.send_all()
            for worker in self._workers:
                if not worker.ended.is_set():
                    # after a failure too: the workers alive stop cleanly
                    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        await worker.conn.send(Stop())
            for worker in self._workers:
                await worker.ended.wait()
            for worker in self._workers:
                # a process's exit has no event to wait for here: poll it, briefly
                grace = anyio.current_time() + EXIT_GRACE
                while worker.process.is_alive() and anyio.current_time() < grace:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
        self._kill_all()

    async def _close_connections(self) -> None:
        with anyio.CancelScope(shield=True):
            for worker in self._workers:
                await worker.conn.aclose()

    def _kill_all(self) -> None:
        for index, process in enumerate(self._processes):
            if process.pid is None:
                continue  # never started
            if process.is_alive():
                _log.warning("worker_killed", worker=index, pid=process.pid)
                process.kill()
            process.join(5.0)

    def check(self) -> None:
        """Raise the front's failure, if it has one.

        Raises:
            RuntimeClosed: a worker died or failed.
        """
        if self.failure is not None:
            raise RuntimeClosed(self.failure)

    def _fail(self, worker: _Worker, reason: str) -> None:
        if self.failure is None:
            process = worker.process
            process.join(0.05)
            code = process.exitcode
            exited = "is still running" if code is None else f"exited with code {code}"
            self.failure = (
                f"the runtime stopped: worker {worker.index} (pid {worker.pid}) {reason} "
                f"and {exited}; workers are not restarted yet: leave the 'async with' block "
                "and start the runtime again"
            )
            _log.error("worker_failed", worker=worker.index, pid=worker.pid, reason=reason)
        error = RuntimeClosed(self.failure)
        for other in self._workers:
            for pending in other.pending.values():
                pending.error = error
                pending.done.set()
            other.pending.clear()

    async def _read(self, worker: _Worker) -> None:
        """Take the worker's frames until it stops or its stream ends."""
        conn = worker.conn
        publish = self.updates.publish
        try:
            await self._read_frames(worker, conn, publish)
        finally:
            worker.ended.set()

    async def _read_frames(self, worker: _Worker, conn: Connection, publish: Any) -> None:
        try:
            while True:
                message = await conn.receive()
                if message.__class__ is Taken:
                    worker.in_flight -= 1
                    wake = self._wake
                    if not worker.in_flight and self.buffers[worker.index] and wake is not None:
                        wake.set()  # the flusher sends what waits for the idle worker
                elif isinstance(message, Updates):
                    await publish(
                        UpdateBatch(
                            message.group,
                            message.names,
                            message.rows,
                            message.errors,
                            message.latency_ms,
                            message.processed_at,
                            message.extras,
                        )
                    )
                elif isinstance(message, Reply):
                    pending = worker.pending.pop(message.id, None)
                    if message.id == 0 and message.error is not None and pending is None:
                        self._fail(worker, f"failed ({message.error})")
                        return
                    if pending is not None:
                        if message.error is not None:
                            pending.error = RuntimeError(f"worker {worker.index}: {message.error}")
                        pending.result = message.result
                        pending.done.set()
                elif isinstance(message, Rejected):
                    for payload, reason in message.letters:
                        self._reject(payload, InvalidEvent(reason, payload=payload))
                elif isinstance(message, Stopped):
                    worker.stopped = True
                    return
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        ):
            if not worker.stopped:
                self._fail(worker, "ended its stream (it died)")
        except msgspec.DecodeError as exc:
            self._fail(worker, f"sent a frame the front cannot read ({exc})")

    async def _send(self, worker: _Worker, message: Any) -> None:
        try:
            await worker.conn.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._fail(worker, "closed its stream (it died)")
            self.check()

    async def _call(self, worker: _Worker, op: str, *args: Any) -> msgspec.Raw:
        self.check()
        call_id = next(self._ids)
        pending = worker.pending[call_id] = _Pending()
        await self._send(worker, Call(call_id, op, list(args)))
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _call_all(self, op: str) -> list[msgspec.Raw]:
        results: list[msgspec.Raw] = [msgspec.Raw(b"\xc0")] * self.workers

        async def one(worker: _Worker) -> None:
            results[worker.index] = await self._call(worker, op)

        await _together([partial(one, worker) for worker in self._workers])
        return results

    # -- ingest ------------------------------------------------------------------------------
    def route(self, events: Iterable[Any]) -> int:
        """Append each event to its worker's buffer; refused ones go to dead letters. Returns
        the number accepted."""
        reader = self._reader
        decode = self._key_time
        buffers = self.buffers
        cached = self._router.cached_lookup()
        worker_of = self._router.shard_of
        max_bytes = reader.max_payload_bytes
        max_length = reader.max_key_length
        ms = reader.time_unit == "ms"
        low, high = reader.bounds()
        accepted = 0
        event: Any
        for payload in events:
            try:
                if payload.__class__ is bytes:
                    if len(payload) > max_bytes:
                        reader.to_dict(payload)  # raises InvalidEvent with the reason
                    try:
                        fields = decode(payload)
                    except msgspec.DecodeError as exc:
                        raise InvalidEvent(
                            f"cannot decode {reader.payload_format} payload: {exc}",
                            payload=payload,
                        ) from exc
                    key = fields.k
                    if key.__class__ is not str or len(key) > max_length or not key.isascii():
                        present = {} if key is msgspec.UNSET else {reader.key: key}
                        key = reader.check_key(present.get(reader.key), present, payload)
                    ts = fields.t
                    if ts.__class__ is not int or not ms or not low <= ts <= high:
                        reader.time_ms(None if ts is msgspec.UNSET else ts, payload, low, high)
                    event = payload
                else:
                    key, _, event = reader.read(payload, low, high)
            except InvalidEvent as error:
                self._reject(payload, error)
                continue
            worker = cached(key)  # the key is a plain str, int or bytes: checked above
            if worker is None:
                worker = worker_of(key)
            buffer = buffers[worker]
            if not buffer:
                self._created[worker] = time.perf_counter()
            buffer.append(event)
            accepted += 1
        self.ingested += accepted
        return accepted

    def _reject(self, payload: Any, error: InvalidEvent) -> None:
        self.rejected += 1
        record_rejected(self._dead_letters, payload, error)

    async def send(self, index: int) -> None:
        """Send worker ``index``'s buffer, if any (waits while its socket is full)."""
        buffer = self.buffers[index]
        if not buffer:
            return
        self.buffers[index] = []
        worker = self._workers[index]
        worker.in_flight += 1
        await self._send(worker, Events(buffer, self.updates.active))

    async def send_due(self) -> None:
        """Send the buffers of ``batch_size`` events or more, and any buffer of a worker
        with no frame in flight (latency first, as in-process a partial batch leaves at once
        for idle actors: while the worker is busy, its buffer grows)."""
        size = self.batch_size
        workers = self._workers
        for index, buffer in enumerate(self.buffers):
            if buffer and (len(buffer) >= size or not workers[index].in_flight):
                await self.send(index)

    async def send_all(self) -> None:
        for index in range(self.workers):
            await self.send(index)

    async def _flusher(self) -> None:
        """Send the buffers older than ``linger``, and those of idle workers when one says
        it took its last frame in."""
        linger = self.linger
        workers = self._workers
        while True:
            with anyio.move_on_after(linger / 2):
                assert self._wake is not None
                await self._wake.wait()
            self._wake = anyio.Event()
            if self.failure is not None:
                return
            due = time.perf_counter() - linger
            for index, buffer in enumerate(self.buffers):
                if buffer and (self._created[index] <= due or not workers[index].in_flight):
                    try:
                        await self.send(index)
                    except RuntimeClosed:
                        return  # a worker died: the next call says so

    # -- reading -----------------------------------------------------------------------------
    async def flush(self) -> None:
        """Every event sent is applied, and its updates published to the front's hub."""
        self.check()
        await self.send_all()
        await self._call_all("flush")

    async def get_many(
        self, keys: Iterable[Any], features: list[str] | None
    ) -> dict[Any, FeatureVector]:
        self.check()
        if features is not None:
            known = set(self._names)
            for name in features:
                if name not in known:
                    raise UnknownFeature(f"no feature named {name!r}")
        wanted = list(dict.fromkeys(self._reader.lookup_key(key) for key in keys))
        by_worker: dict[int, list[Any]] = {}
        for key in wanted:
            by_worker.setdefault(self._router.shard_of(key), []).append(key)
        found: dict[Any, FeatureVector] = {}

        async def one(index: int, keys: list[Any]) -> None:
            await self.send(index)  # a read sees the caller's own writes
            raw = await self._call(self._workers[index], "get_many", keys, features)
            found.update(zip(keys, _vectors.decode(raw), strict=True))

        await _together([partial(one, index, keys_of) for index, keys_of in by_worker.items()])
        return {key: found[key] for key in wanted}

    async def statistics(self) -> RuntimeStatistics:
        self.check()
        parts = [_statistics.decode(raw) for raw in await self._call_all("statistics")]
        merged = merge_statistics(parts)
        return msgspec.structs.replace(
            merged,
            events_ingested=self.ingested,
            events_rejected=self.rejected,
            shards=self._shards,
            groups=parts[0].groups,
        )


def _context() -> Any:
    """``forkserver``: each worker is forked from a server process that imported the runtime
    once (started on first use, it lives as long as this process), so a worker starts in a
    tenth of the time and CPU of a fresh interpreter (``spawn``). Neither forks this process,
    whose event loop runs."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["runtime"])
    return context


async def _together(calls: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``calls`` at once (one alone in the caller's task); raise the first failure as
    it is, not in an exception group."""
    if len(calls) == 1:
        await calls[0]()
        return
    failures: list[BaseException] = []

    async def run(call: Callable[[], Awaitable[None]]) -> None:
        try:
            await call()
        except Exception as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tasks:
        for call in calls:
            tasks.start_soon(run, call)
    if failures:
        raise failures[0]


def _key_time_decoder(reader: EventReader) -> Callable[[bytes], Any]:
    """A decoder of an event's key and time fields alone (the rest is skipped, unread)."""
    fields = msgspec.defstruct(
        "KeyTime",
        [("k", Any, msgspec.UNSET), ("t", Any, msgspec.UNSET)],
        rename={"k": reader.key, "t": reader.time},
    )
    if reader.payload_format == "json":
        return msgspec.json.Decoder(fields).decode
    return msgspec.msgpack.Decoder(fields).decode
