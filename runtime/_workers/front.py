"""The front: the application's side of a runtime whose shards run in worker processes.

It only routes. Per event it finds the key (of an event given as bytes, by decoding the key
and time fields alone, with a msgspec struct of those two fields: the bytes travel on and the
worker decodes them; any other event is read and checked here in full, as ``ingest`` does
in-process), checks the key and time, maps the key to its key group and the key group to a
worker (``KeyRouter(shards=workers)``: contiguous ranges of key groups, the function
checkpoints split state by), and appends the event to that worker's buffer. A buffer leaves
as one :class:`Events` frame at once when the worker has no frame in flight (it answers each
with :class:`Taken`: latency first, as in-process), at ``BUSY_BATCHES`` times ``batch_size``
events while it is busy, after ``linger``, or before a read, a flush or the shutdown. Sending
waits while the worker's socket is full: backpressure.

With several streams, each event's stream index travels beside it in the frame (every
stream shares the key field: a key's events of every stream reach one worker in order, as a
join needs). While the front has subscribers to an output, each frame says so and the worker
forwards it. A reader task per worker takes what the worker sends: update batches,
republished to the front's own hub as ``UpdateBatch``\\ es (so ``rt.updates()`` reads them
as in-process), join records, enriched and late events (to the front's hubs of each),
events the worker refused (into the front's dead letters), and replies to calls (reads,
statistics, metrics, descriptions, warm-ups, registrations, a replay's clock steps).

Checkpoints (with ``checkpoints=``) are aligned: the front is the one sequencer of the input,
so at one point of it (no event routed meanwhile) it queues each worker's buffer and then a
barrier (a ``"checkpoint"`` :class:`Call`) on every worker's stream; each worker answers once
it applied what came before and wrote its key groups' state to a part file, and the front
commits the checkpoint by writing its file, naming the parts, last. The front keeps the
frames sent since the last checkpoint (``recovery.py``, bounded by ``max_log_events``): a
worker whose stream ends without a :class:`Stopped` has died, and is started again (at most
``max_restarts`` times within ``restart_period``), restores its key groups from the last
checkpoint and is sent the logged frames again; the output it had delivered is not published
twice. Without checkpoints, or beyond the restarts allowed, the front fails, and every call
after says which worker died, with its exit code.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextlib import AsyncExitStack, suppress
from functools import partial
from itertools import repeat
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from actors import DeadLetters, KeyRouter, get_logger

from .._checkpoints.coordinator import Progress
from .._checkpoints.store import CheckpointConfig, CheckpointInfo
from .._exceptions import (
    CheckpointError,
    ConfigError,
    InvalidEvent,
    RuntimeClosed,
    SourceError,
    UnknownFeature,
)
from .._ingest.events import EventReader
from .._ingest.router import record_rejected, record_unsent
from .._results import (
    FeatureDescription,
    FeatureError,
    FeatureVector,
    RuntimeStatistics,
)
from .aligned import Abandoned, AlignedCheckpoints
from .backends import Backend, LocalBackend, WorkerProcess, refuse_in_worker
from .outputs import Outputs
from .protocol import (
    Call,
    Connection,
    Enriched,
    Events,
    FromWorker,
    JoinRecords,
    Late,
    Rejected,
    Reply,
    Stop,
    Stopped,
    Taken,
    Updates,
    decoder,
)
from .recovery import Sent, WorkerLog
from .stats import HeldCounters, merge_measured, merge_metrics, merge_statistics
from .worker import WorkerSpec

__all__ = ["WorkerFront"]

#: batches (of ``batch_size`` events) a busy worker's buffer holds before it leaves as one
#: frame, as an actor takes up to 8 messages of its mailbox at once: fewer, larger frames cost
#: the front and the worker less per event (``bench workers``, 2 workers: frames of 3,600
#: events on average instead of 580, and 15% less time, median of six paired runs)
BUSY_BATCHES = 8
#: bytes of payloads a busy worker's frame may hold before it leaves (with events given as
#: bytes, judged by the longest payload routed so far): large events keep frames of
#: ``batch_size``, far below the protocol's ``MAX_FRAME``
BUSY_FRAME_BYTES = 64 << 20

_log = get_logger("featurist.workers")
#: seconds a worker may take to start (the first starts the fork server, which imports the
#: runtime)
START_TIMEOUT = 120.0
#: seconds a worker that said it stopped may take to exit before it is killed
EXIT_GRACE = 2.0
#: seconds between two looks at the workers' processes (on a backend other than processes:
#: :meth:`WorkerFront._watch`)
WATCH_INTERVAL = 1.0

_vectors = decoder(list[FeatureVector])
_statistics = decoder(RuntimeStatistics)
_errors = decoder(list[FeatureError])
_description = decoder(FeatureDescription)
_int = decoder(int)
_bool = decoder(bool)
_BYTES = {bytes}


class _Retry(Exception):
    """The worker died with the call unanswered: it is sent again once the worker runs."""


class _Pending:
    __slots__ = ("barrier", "done", "error", "result")

    def __init__(self, barrier: int | None = None) -> None:
        self.done = anyio.Event()
        self.error: BaseException | None = None
        self.result: msgspec.Raw | None = None
        #: for a checkpoint's barrier: the checkpoint's sequence
        self.barrier = barrier


class _Worker:
    """The front's view of one worker process."""

    __slots__ = (
        "conn",
        "dead",
        "ended",
        "in_flight",
        "index",
        "pending",
        "pid",
        "process",
        "started",
        "stopped",
    )

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
        #: True once the front knows the worker died
        self.dead = False
        #: its first reply (id 0): the worker's runtime runs
        self.started = self.pending[0] = _Pending()


class WorkerFront:
    """Routes events to ``workers`` processes and reads their answers.

    Args:
        workers: the number of worker processes (>= 1).
        make_runtime: makes a worker's runtime (picklable: it is sent to each process).
        reader: the feature set's event reader (checks keys and times, reads non-bytes events).
        key_groups: the number of key groups.
        batch_size: events per batch: an idle worker's buffer leaves at once, a busy
            one's at ``BUSY_BATCHES`` batches (or after ``linger``).
        linger: seconds a partial buffer may wait.
        dead_letters: where refused events go.
        route_cache_size: keys whose worker is remembered.
        names: the feature set's feature names (checked by ``get_many``).
        shards: the shard actors in all, for :meth:`statistics`.
        progress: the input's position and offset (the runtime's ingest counts them), and
            the gate a checkpoint closes.
        checkpoints: where and how often to checkpoint; None: no checkpoints, and a worker
            that dies is not restarted.
        feature_set: the feature set's name (recorded in checkpoints).
        max_restarts: restarts of a worker allowed within ``restart_period`` seconds.
        restart_period: the sliding window of ``max_restarts``.
        streams: the feature set's streams: with several, each event travels with its
            stream's index (all streams share the key field: a key's events of every stream
            go to one worker, in the order they came, which a join needs).
        joins: the feature set's joins' names (``rt.join_records(join)``).
        clock: the runtime's ``ReplayClock``: while a replay has set its time, each frame
            and flush carries it, and the workers' clocks follow.
        sources: the names of the sources the feature set's lookups read (``warm_up``).
        backend: where the workers run (:class:`LocalBackend`, the default, or
            :class:`RayBackend`).
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
        progress: Progress | None = None,
        checkpoints: CheckpointConfig | None = None,
        feature_set: str = "",
        max_restarts: int = 3,
        restart_period: float = 60.0,
        streams: tuple[str, ...] = ("",),
        joins: tuple[str, ...] = (),
        clock: Any = None,
        sources: tuple[str, ...] = (),
        backend: Backend | None = None,
    ) -> None:
        self.workers = workers
        #: where the worker processes run
        self._backend: Backend = backend if backend is not None else LocalBackend()
        self._make_runtime = make_runtime
        self._reader = reader
        self._router = KeyRouter(shards=workers, key_groups=key_groups, cache_size=route_cache_size)
        #: the worker of each key group (``route``'s fast path hashes keys itself)
        self._worker_of_group = [self._router.shard_of_group(g) for g in range(key_groups)]
        #: per worker, its one shard of the ``shards`` in all when it runs one (its runtime
        #: then sends every event there, unrouted), else None
        self._pinned = _pinned_shards(self._worker_of_group, workers, shards)
        self.batch_size = batch_size
        self.linger = linger
        self._dead_letters = dead_letters
        self._names = names
        #: the shard actors in all
        self.shards = shards
        #: the front's hubs of outputs, which the subscriptions read
        self.outputs = Outputs(joins)
        #: the hub of updates: what ``rt.updates()`` subscribes to; enriched and late events
        self.updates = self.outputs.updates
        self.enriched = self.outputs.enriched
        self.late = self.outputs.late
        self.records_hub = self.outputs.records_hub
        self.streams = streams
        self._clock = clock
        self._sources = sources
        #: events read by ``route`` (accepted, or refused at the front), for a replay
        self.events_read = 0
        #: per worker: events routed and not yet sent, and when the first of them came
        self.buffers: list[list[Any]] = [[] for _ in range(workers)]
        #: with several streams, the stream index of each buffered event (parallel to
        #: ``buffers``); None with one stream
        self.tags: list[list[int]] | None = (
            [[] for _ in range(workers)] if len(streams) > 1 else None
        )
        self._created = [0.0] * workers
        #: the longest bytes payload routed so far, and the events a busy worker's buffer
        #: holds before it leaves (``BUSY_BATCHES`` batches, fewer for large payloads)
        self._longest = 0
        self._busy_size = batch_size * BUSY_BATCHES
        self._workers: list[_Worker] = []
        #: every process started (or being started), and every connection made
        self._processes: list[WorkerProcess] = []
        self._conns: list[Connection] = []
        self._ids = itertools.count(1)
        #: why the front stopped working (a worker died or failed), or None
        self.failure: str | None = None
        self.ingested = 0
        self.rejected = 0
        #: of a restored checkpoint, the events accepted and rejected before it
        self.ingested_before = 0
        self.rejected_before = 0
        self._key_time = _key_time_decoder(reader)
        #: set to wake the flusher before its time (made in ``start``, on the event loop)
        self._wake: anyio.Event | None = None
        #: whether the flusher waits for ``_wake`` (nothing was buffered when it looked)
        self._flusher_idle = False
        self._progress = progress if progress is not None else Progress()
        self._feature_set = feature_set
        self.max_restarts = max_restarts
        self.restart_period = restart_period
        #: per worker, the frames sent since the last checkpoint (with checkpoints only)
        self._logs: list[WorkerLog] | None = None
        #: the aligned checkpoints, with ``checkpoints``
        self.checkpoints: AlignedCheckpoints | None = None
        if checkpoints is not None:
            self._logs = [WorkerLog() for _ in range(workers)]
            self.checkpoints = AlignedCheckpoints(
                self, checkpoints, self._progress, self._logs, feature_set, key=reader.key
            )
        #: per worker: set while it runs, unset while it is started again
        self._ready: list[anyio.Event] = []
        #: when workers were started again (for ``max_restarts``)
        self._restarts: list[float] = []
        self._tasks: anyio.abc.TaskGroup | None = None
        self._stopping = False
        #: the worker processes the shutdown's deadline cut off (by ``id``: ``_processes``
        #: holds them), each with whether it was killed (else it was gone without the front
        #: having read that it stopped)
        self._cut_off: dict[int, bool] = {}
        #: the front's failure is the shutdown's deadline, not a worker's (``_fail``)
        self.failed_at_deadline = False
        #: per worker, its counters as reported: they never go down when it is started again
        self._held = [HeldCounters() for _ in range(workers)]

    @property
    def key_groups(self) -> int:
        return self._router.key_groups

    def start_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str
    ) -> None:
        """Run ``func(*args)`` in the front's task group (cancelled when the front stops)."""
        assert self._tasks is not None
        self._tasks.start_soon(func, *args, name=name)

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids, by worker index."""
        return [worker.pid for worker in self._workers]

    @property
    def restarting(self) -> bool:
        """Whether a worker is being started again."""
        return not all(ready.is_set() for ready in self._ready)

    @property
    def log_events(self) -> int:
        """Events the front keeps to replay to a restarted worker."""
        return 0 if self.checkpoints is None else self.checkpoints.log_events

    @property
    def log_full(self) -> bool:
        """Whether the log holds ``max_log_events`` or more: a checkpoint is due."""
        return self.checkpoints is not None and self.checkpoints.log_full

    async def relieve_log(self) -> None:
        """While the log is full, take a checkpoint (:meth:`AlignedCheckpoints.relieve_log`)."""
        if self.checkpoints is not None:
            await self.checkpoints.relieve_log()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, stack: AsyncExitStack) -> None:
        """Start the workers and their readers (stopped by ``stack``, killed at the latest
        when it closes), wait until every worker's runtime runs, and restore the newest
        checkpoint (with ``checkpoints`` configured so).

        Raises:
            ConfigError: the runtime's spec cannot be sent to a process (not picklable).
            RuntimeError: a worker failed to start.
            CheckpointError: the checkpoint directory is held by another runtime, or its
                newest checkpoint cannot be restored, or (on Ray) a worker does not see it.
        """
        if self._backend.name == "processes":
            refuse_in_worker()  # before anything is held (the checkpoint directory's lock)
        # first in, last out: whatever happens, no process outlives the front
        stack.callback(self._kill_all)
        checkpoints = self.checkpoints
        if checkpoints is not None:
            # the front alone holds the directory; the workers write their parts into it
            await stack.enter_async_context(checkpoints.store.lock(self._feature_set))
        stack.push_async_callback(self._close_connections)
        stack.callback(self.outputs.close)
        self._wake = anyio.Event()
        await self._backend.open(stack)
        spawned: list[Any] = [None] * self.workers

        async def spawn(index: int) -> None:
            spawned[index] = await self._spawn(index)

        if self._backend.name == "processes":
            for index in range(self.workers):  # the fork server starts one at a time
                await spawn(index)
        else:  # each waits to be placed and to connect back: all at once
            await _first_failure([partial(spawn, index) for index in range(self.workers)])
        self._workers.extend(spawned)
        self._ready.extend(anyio.Event() for _ in spawned)
        tasks = self._tasks = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tasks.cancel_scope.cancel)
        for worker in self._workers:
            tasks.start_soon(self._read, worker, name=f"featurist-worker-{worker.index}-reader")
        tasks.start_soon(self._flusher, name="featurist-front-flusher")
        if self._backend.name != "processes":
            tasks.start_soon(self._watch, name="featurist-front-watch")
        with anyio.move_on_after(START_TIMEOUT) as scope:
            for worker in self._workers:
                try:
                    await self._started(worker)
                except _Retry:  # it died (with checkpoints=: nothing restarts it yet)
                    raise RuntimeError(
                        f"worker {worker.index} failed to start: it died before its runtime "
                        "ran (its own error, if it raised one, is in its standard error)"
                    ) from None
        if scope.cancelled_caught:
            raise RuntimeError(f"the workers did not start within {START_TIMEOUT:g} s")
        for ready in self._ready:
            ready.set()
        _log.info("workers_started", workers=self.workers, pids=[w.pid for w in self._workers])
        if checkpoints is not None:
            if self._backend.name != "processes":  # workers on other nodes, perhaps
                await self.check_shared(checkpoints.config.directory)
            if checkpoints.config.restore:
                await checkpoints.restore_latest()
            interval = checkpoints.config.interval
            if interval is not None:
                tasks.start_soon(checkpoints.run_periodic, interval, name="featurist-checkpoints")

    async def check_shared(self, directory: str) -> None:
        """Check that every worker sees the checkpoint directory as this process does (a
        worker on another node writes its parts there, and a restarted one restores from
        there): a file written here must be there for each.

        Raises:
            CheckpointError: a worker does not see the file, naming it and its process.
        """
        probe = os.path.join(directory, f".featurist-probe-{secrets.token_hex(8)}")
        await anyio.to_thread.run_sync(_touch, probe)
        try:
            seen = [_bool.decode(raw) for raw in await self.call_all("sees", probe)]
        finally:
            with suppress(OSError):
                os.remove(probe)
        for worker, sees in zip(self._workers, seen, strict=True):
            if not sees:
                raise CheckpointError(
                    f"worker {worker.index} (pid {worker.pid}) does not see the checkpoint "
                    f"directory {directory!r} as the front does (a file written there is not "
                    "there for it): with workers on other nodes, give a directory every node "
                    "reaches, the same path on each (docs/scaling.md, On a Ray cluster)"
                )

    async def _spawn(self, index: int) -> _Worker:
        """Start worker ``index``'s process on the backend (its reply, id 0, is awaited by
        the caller)."""
        spec = WorkerSpec(index, self._make_runtime, self._pinned[index])
        # each process is tracked as soon as it exists: killed at the latest when the
        # stack closes
        process, sock = await self._backend.spawn(spec, self._processes.append)
        try:
            conn = await Connection.of(sock, FromWorker)
        except BaseException:
            sock.close()
            raise
        self._conns.append(conn)
        return _Worker(index, process, conn)

    async def _started(self, worker: _Worker) -> None:
        """Wait until ``worker``'s runtime runs (its reply of id 0)."""
        started = worker.started
        await started.done.wait()
        if isinstance(started.error, _Retry):
            raise started.error  # it died: ``_recover`` tries again
        if started.error is not None:
            raise RuntimeError(
                f"worker {worker.index} failed to start: {started.error}"
            ) from started.error
        assert started.result is not None
        worker.pid = _int.decode(started.result)

    async def stop(self, deadline: float) -> None:
        """Send what is buffered, take the shutdown checkpoint (if configured so), ask every
        worker to stop, and wait for them until ``deadline`` (``anyio.current_time()``); a
        worker still running then is killed."""
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0.0)):
            if self.failure is None:
                for ready in self._ready:
                    await ready.wait()  # a worker being started again is back first
                with suppress(RuntimeClosed):  # a worker died: the others still stop
                    await self.send_all()
                    if self.checkpoints is not None and self.checkpoints.config.on_shutdown:
                        try:
                            await self.checkpoint()
                        except (CheckpointError, OSError):
                            _log.exception("checkpoint_failed", when="shutdown")
            self._stopping = True
            for worker in self._workers:
                if not worker.ended.is_set():
                    # after a failure too: the workers alive stop cleanly
                    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        await worker.conn.send(Stop())
            for worker in self._workers:
                await worker.ended.wait()
            for worker in self._workers:
                # in a thread: a process's exit has no event to wait for on the loop, and a
                # Ray actor's is a call to Ray
                with suppress(Exception):
                    await anyio.to_thread.run_sync(worker.process.join, EXIT_GRACE)
        self._stopping = True
        self._kill_all()
        for worker in self._workers:
            if not worker.stopped and not worker.dead:
                # killed, or its reader is held (behind a subscription nobody reads) and
                # would not see its stream end: what waits on it learns that it stopped
                self._cut_off.setdefault(id(worker.process), False)
                self._died(worker, "did not stop before the shutdown deadline")

    async def _close_connections(self) -> None:
        with anyio.CancelScope(shield=True):
            for conn in self._conns:
                await conn.aclose()

    def _kill_all(self) -> None:
        # the processes of workers started again are in the list too: a worker's index is
        # its worker's, not its place in the list
        owners = {id(worker.process): worker.index for worker in self._workers}
        for process in self._processes:
            index = owners.get(id(process))
            try:
                if process.is_alive():
                    _log.warning("worker_killed", worker=index, pid=process.pid)
                    self._cut_off[id(process)] = True
                    process.kill()
                process.join(5.0)
            except Exception:  # the backend is gone (Ray shut down first): the others still
                _log.exception("worker_kill_failed", worker=index, pid=process.pid)

    def check(self) -> None:
        """Raise the front's failure, if it has one.

        Raises:
            RuntimeClosed: a worker died (and was not restarted) or failed.
        """
        if self.failure is not None:
            raise RuntimeClosed(self.failure)

    def _fail(self, worker: _Worker, reason: str) -> None:
        killed = self._cut_off.get(id(worker.process))
        if self.failure is None and killed is not None:
            # the shutdown's deadline passed before it stopped (``stop`` says so): not a
            # failure of the worker's; what waited on it learns that the runtime stopped
            self.failed_at_deadline = True
            self.failure = (
                f"the runtime stopped: its shutdown deadline passed before worker "
                f"{worker.index} (pid {worker.pid}) stopped, "
                + ("and it was killed" if killed else "as far as the front could read")
            )
        elif self.failure is None:
            process = worker.process
            process.join(0.05)
            code = process.exitcode
            exited = "is still running" if code is None else f"exited with code {code}"
            if not worker.started.done.is_set():
                # it never answered: nothing to restart, and its own error is in its output
                self.failure = (
                    f"the runtime stopped: worker {worker.index} (pid {worker.pid}) {reason} "
                    f"and {exited}, before its runtime ran: its own error, if it raised one, "
                    "is in its standard error"
                )
            else:
                if self._logs is None:
                    why = "workers are restarted only with checkpoints= (docs/scaling.md)"
                else:
                    why = "it is not restarted"
                self.failure = (
                    f"the runtime stopped: worker {worker.index} (pid {worker.pid}) {reason} "
                    f"and {exited}; {why}: leave the 'async with' block and start the runtime "
                    "again"
                )
            _log.error("worker_failed", worker=worker.index, pid=worker.pid, reason=reason)
        error = RuntimeClosed(self.failure)
        for other in self._workers:
            for pending in other.pending.values():
                pending.error = error
                pending.done.set()
            other.pending.clear()
        for ready in self._ready:
            ready.set()  # whoever waits for a worker to be back finds the failure

    def _died(self, worker: _Worker, reason: str) -> None:
        """``worker`` died: start it again, or fail the front if it cannot be."""
        if worker.dead:
            return
        worker.dead = True
        index = worker.index
        if self._logs is None or self._stopping or self._tasks is None:
            self._fail(worker, reason)
            return
        _log.warning("worker_died", worker=index, pid=worker.pid, reason=reason)
        for pending in worker.pending.values():
            if pending.barrier is not None:
                pending.error = Abandoned(
                    f"worker {index} died during checkpoint {pending.barrier} ({reason}); "
                    "it is started again, and the last checkpoint stands"
                )
            else:
                pending.error = _Retry()
            pending.done.set()
        worker.pending.clear()
        if self._ready[index].is_set():
            self._ready[index] = anyio.Event()
            self._tasks.start_soon(self._recover, worker, reason)
        # else: it was being started again; ``_recover`` sees it dead and tries again

    async def _recover(self, dead: _Worker, reason: str) -> None:
        """Start worker ``dead.index`` again until it runs, within ``max_restarts``."""
        index = dead.index
        logs = self._logs
        assert logs is not None and self._tasks is not None
        while True:
            now = anyio.current_time()
            self._restarts = [t for t in self._restarts if t > now - self.restart_period]
            if len(self._restarts) >= self.max_restarts:
                self._fail(
                    dead,
                    f"{reason}, after {len(self._restarts)} restarts of workers within "
                    f"{self.restart_period:g} s (max_restarts={self.max_restarts})",
                )
                return
            self._restarts.append(now)
            with anyio.CancelScope(shield=True):
                # its reader first: closing a unix stream that a task still receives from
                # trips anyio's asyncio backend (InvalidStateError, anyio issue 1267)
                with anyio.move_on_after(EXIT_GRACE):
                    await dead.ended.wait()
                await dead.conn.aclose()
            with suppress(Exception):
                # a worker whose stream ended is of no use even if its process still runs (a
                # Ray actor cut off from the front): killed, so that it frees its resources
                # for the one started in its place
                await anyio.to_thread.run_sync(dead.process.kill)
                await anyio.to_thread.run_sync(dead.process.join, EXIT_GRACE)  # reaped
            # what the worker is to restore and be sent again, taken at one point
            assert self.checkpoints is not None
            base = self.checkpoints.base
            frames = logs[index].replay()
            registered = list(logs[index].registered_before)
            try:
                worker = await self._spawn(index)
            except ConfigError as exc:  # it will never start: no use trying again
                self._fail(dead, f"{reason}, and could not be started again ({exc})")
                return
            except Exception as exc:
                # not placed, or failed to start (a node lost, a cluster short of resources
                # for a while): another try, within max_restarts
                _log.warning("worker_start_failed", worker=index, error=str(exc))
                reason = f"{reason}, and could not be started again ({exc})"
                await anyio.sleep(1.0)
                continue
            self._workers[index] = worker
            self._tasks.start_soon(self._read, worker, name=f"featurist-worker-{index}-reader")
            try:
                with anyio.fail_after(START_TIMEOUT):
                    await self._started(worker)
                    if base is not None:
                        directory = self.checkpoints.config.directory
                        await self._ask(worker, "restore", directory, base, self.workers)
                    for features in registered:
                        # the restored state of their groups waits for them (pending)
                        await self._ask(worker, "register", features)
                    for sent in frames:
                        if isinstance(sent, bytes):  # features registered between frames
                            call_id = next(self._ids)
                            worker.pending[call_id] = _Pending()
                            worker.conn.queue(Call(call_id, "register", [sent]))
                            continue
                        worker.in_flight += 1
                        worker.conn.queue(
                            Events(
                                sent.payloads,
                                sent.updates,
                                sent.tags,
                                sent.records,
                                sent.enriched,
                                sent.late,
                                sent.now,
                            )
                        )
                    await worker.conn.drain()
            except _Retry:
                dead = worker
                continue  # it died again: another restart, if allowed
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._died(worker, "ended its stream (it died)")
                dead = worker
                continue
            except Exception as exc:
                self._fail(worker, f"{reason}, and could not be restored ({exc})")
                return
            if worker.dead:
                dead = worker
                continue
            _log.warning(
                "worker_restarted",
                worker=index,
                pid=worker.pid,
                checkpoint=base,
                events_replayed=sum(len(s.payloads) for s in frames if not isinstance(s, bytes)),
            )
            self._ready[index].set()
            return

    async def _watch(self) -> None:
        """Every :data:`WATCH_INTERVAL` seconds, ask the backend whether each worker's process
        still runs: a worker on another node whose node is lost may leave its stream open
        (no end, no reset) while Ray reports its actor dead. One that ended is taken as died,
        as when its stream ends."""
        while self.failure is None and not self._stopping:
            await anyio.sleep(WATCH_INTERVAL)
            for worker in list(self._workers):
                if worker.dead or worker.stopped or self._stopping:
                    continue
                try:
                    alive = await anyio.to_thread.run_sync(worker.process.is_alive)
                except Exception:  # the backend cannot tell now: the stream still can
                    continue
                if not alive and not worker.dead and not self._stopping:
                    self._died(
                        worker, f"its process ended, as the {self._backend.name} backend says"
                    )

    async def _ask(self, worker: _Worker, op: str, *args: Any) -> msgspec.Raw:
        """A call to this very worker (not sent again if it dies: raises ``_Retry``)."""
        call_id = next(self._ids)
        pending = worker.pending[call_id] = _Pending()
        worker.conn.queue(Call(call_id, op, list(args)))
        await worker.conn.drain()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    async def _read(self, worker: _Worker) -> None:
        """Take the worker's frames until it stops or its stream ends."""
        conn = worker.conn
        try:
            await self._read_frames(worker, conn)
        finally:
            worker.ended.set()

    async def _read_frames(self, worker: _Worker, conn: Connection) -> None:
        log = None if self._logs is None else self._logs[worker.index]
        outputs = self.outputs
        try:
            while True:
                message = await conn.receive()
                if message.__class__ is Taken:
                    worker.in_flight -= 1
                    if log is not None:
                        log.frame_taken()
                    if not worker.in_flight and self.buffers[worker.index]:
                        # what waits for the idle worker leaves now (a task: the reader
                        # must not wait on a send while the worker may wait on its reads)
                        self.start_task(self._send_now, worker.index, name="featurist-front-send")
                elif isinstance(message, Updates):
                    await outputs.updates_of(message, log)
                elif isinstance(message, JoinRecords):
                    await outputs.records_of(message, log)
                elif isinstance(message, Enriched):
                    await outputs.enriched_of(message, log)
                elif isinstance(message, Late):
                    await outputs.late_of(message, log)
                elif isinstance(message, Reply):
                    pending = worker.pending.pop(message.id, None)
                    if message.id == 0 and message.error is not None and pending is None:
                        self._fail(worker, f"failed ({message.error})")
                        return
                    if pending is not None:
                        if message.error is not None:
                            pending.error = RuntimeError(f"worker {worker.index}: {message.error}")
                        elif pending.barrier is not None and log is not None:
                            # the rows after this reply come of the events after the barrier
                            log.barrier_passed(pending.barrier)
                        pending.result = message.result
                        pending.done.set()
                elif isinstance(message, Rejected):
                    if log is None or log.report_rejected():
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
                self._died(worker, "ended its stream (it died)")
        except msgspec.DecodeError as exc:
            self._fail(worker, f"sent a frame the front cannot read ({exc})")

    async def drain(self, worker: _Worker) -> None:
        """Send what is queued for ``worker``. If it died, its reader starts it again (the
        frames are in the log) or fails the front."""
        try:
            await worker.conn.drain()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._died(worker, "closed its stream (it died)")
            self.check()

    async def running(self, index: int) -> _Worker:
        """Worker ``index``, once it runs (after a restart under way).

        Raises:
            RuntimeClosed: the front failed.
        """
        while True:
            self.check()
            ready = self._ready[index]
            if ready.is_set():
                worker = self._workers[index]
                if not worker.dead:
                    return worker
            await ready.wait()

    def all_running(self) -> bool:
        return all(
            ready.is_set() and not worker.dead
            for ready, worker in zip(self._ready, self._workers, strict=True)
        )

    async def _call(self, index: int, op: str, *args: Any) -> msgspec.Raw:
        while True:
            worker = await self.running(index)
            try:
                return await self._ask(worker, op, *args)
            except _Retry:
                continue  # sent again once the worker runs again
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._died(worker, "closed its stream (it died)")
                continue

    async def call_all(self, op: str, *args: Any) -> list[msgspec.Raw]:
        results: list[msgspec.Raw] = [msgspec.Raw(b"\xc0")] * self.workers

        async def one(index: int) -> None:
            results[index] = await self._call(index, op, *args)

        await _together([partial(one, index) for index in range(self.workers)])
        return results

    # -- for the checkpoints (``aligned.py``) ------------------------------------------------
    def queue_barrier(self, index: int, sequence: int, args: list[Any]) -> tuple[_Worker, _Pending]:
        """Queue the barrier of checkpoint ``sequence`` on worker ``index``'s stream, at once;
        its reply is awaited on the pending call returned."""
        worker = self._workers[index]
        call_id = next(self._ids)
        pending = worker.pending[call_id] = _Pending(barrier=sequence)
        worker.conn.queue(Call(call_id, "checkpoint", args))
        return worker, pending

    async def checkpoint(self) -> CheckpointInfo:
        """An aligned checkpoint (:meth:`AlignedCheckpoints.checkpoint`).

        Raises:
            ConfigError: the runtime has no ``checkpoints`` directory.
            CheckpointError: a worker could not capture its state.
            OSError: the file could not be written.
            RuntimeClosed: the front failed.
        """
        if self.checkpoints is None:
            raise ConfigError("checkpoint(): the runtime has no checkpoints directory")
        return await self.checkpoints.checkpoint()

    # -- ingest ------------------------------------------------------------------------------
    def route(self, events: Iterable[Any], tag: int | list[int] = 0) -> int:
        """Append each event (of stream ``tag``, or ``tag[i]`` for the i-th) to its worker's
        buffer; refused ones go to dead letters. Returns the number accepted."""
        if events.__class__ is list and self.tags is None:
            done = self._route_bytes(events)
            if done:
                self.ingested += done
                self.events_read += done
                if done == len(events):
                    return done
                return done + self._route_each(events[done:], tag)
        return self._route_each(events, tag)

    def _route_bytes(self, events: list[Any]) -> int:
        """``route``'s fast path, for a batch of bytes events of one stream: each routed
        while its key and time fields decode, its key is a plain ASCII ``str`` within
        ``max_key_length`` and its time an int of ms within the bounds, by the key's stable
        hash (the CRC-32 of its UTF-8 bytes, which ``KeyRouter`` hashes too; not its cache:
        a look-up in a cache of every key, with a key just decoded whose hash is not yet
        computed, costs more than the CRC). Returns how many events of the batch's start
        it routed (all accepted): 0 when the batch holds other than bytes or a payload over
        ``max_payload_bytes``; else ``_route_each`` takes over from the first event it does
        not route, and refuses or routes it with the reason and checks of the general path.
        """
        reader = self._reader
        if not events or reader.time_unit != "ms" or set(map(type, events)) != _BYTES:
            return 0
        longest = max(map(len, events))
        if longest > reader.max_payload_bytes:
            return 0
        if longest > self._longest:
            self._longest = longest
            self._busy_size = self.batch_size * max(
                1, min(BUSY_BATCHES, BUSY_FRAME_BYTES // (self.batch_size * longest))
            )
        buffers = self.buffers
        before = sum(map(len, buffers))
        now = time.perf_counter()
        created = self._created
        for index, buffer in enumerate(buffers):
            if not buffer:
                created[index] = now  # their first event comes now (if any does)
        worker_of_group = self._worker_of_group
        key_groups = len(worker_of_group)
        max_length = reader.max_key_length
        low, high = reader.bounds()
        crc32 = zlib.crc32
        try:
            # a decode error ends the loop where a strict zip would check lengths
            for payload, field in zip(events, map(self._key_time, events)):  # noqa: B905
                key = field.k
                ts = field.t
                if (
                    key.__class__ is not str
                    or ts.__class__ is not int
                    or not low <= ts <= high
                    or len(key) > max_length
                    or not key.isascii()
                ):
                    break
                buffers[worker_of_group[crc32(key.encode()) % key_groups]].append(payload)
        except msgspec.DecodeError:
            pass  # ``_route_each`` refuses it, with the reason
        return sum(map(len, buffers)) - before

    def _route_each(self, events: Iterable[Any], tag: int | list[int] = 0) -> int:
        """``route``, an event at a time."""
        reader = self._reader
        tags = self.tags
        tagged = repeat(tag) if isinstance(tag, int) else tag
        decode = self._key_time
        buffers = self.buffers
        cached = self._router.cached_lookup()
        worker_of = self._router.shard_of
        max_bytes = reader.max_payload_bytes
        max_length = reader.max_key_length
        ms = reader.time_unit == "ms"
        low, high = reader.bounds()
        accepted = refused = 0
        event: Any
        for payload, stream_tag in zip(events, tagged):  # noqa: B905 (repeat is endless)
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
                    key, _, event = reader.read(payload, low, high, stream_tag)
            except InvalidEvent as error:
                self._reject(payload, error)
                refused += 1
                continue
            worker = cached(key)  # the key is a plain str, int or bytes: checked above
            if worker is None:
                worker = worker_of(key)
            buffer = buffers[worker]
            if not buffer:
                self._created[worker] = time.perf_counter()
            buffer.append(event)
            if tags is not None:
                tags[worker].append(stream_tag)
            accepted += 1
        self.ingested += accepted
        self.events_read += accepted + refused
        return accepted

    @property
    def now(self) -> float | None:
        """The replay clock's time, while a replay has set it (else None)."""
        clock = self._clock
        return None if clock is None else clock.now

    @property
    def buffered(self) -> int:
        """Events accepted and not sent to their worker yet."""
        return sum(map(len, self.buffers))

    def abandon_unsent(self) -> None:
        """Past the shutdown deadline: what was not sent to its worker goes to dead letters."""
        for index, buffer in enumerate(self.buffers):
            self.buffers[index] = []
            if self.tags is not None:
                self.tags[index] = []
            record_unsent(
                self._dead_letters,
                buffer,
                "featurist/front",
                "accepted, but not sent to its worker before the shutdown deadline",
            )

    def _reject(self, payload: Any, error: InvalidEvent) -> None:
        self.rejected += 1
        record_rejected(self._dead_letters, payload, error)

    async def send(self, index: int) -> None:
        """Send worker ``index``'s buffer, if any (waits while its socket is full, and while
        the worker is started again)."""
        if not self.buffers[index]:
            return
        if not self._ready[index].is_set():
            await self.running(index)  # after the frames it is sent again
        worker = self.queue_events(index)
        if worker is not None:
            await self.drain(worker)

    def queue_events(self, index: int) -> _Worker | None:
        """Queue worker ``index``'s buffer as a frame (and log it), at once."""
        buffer = self.buffers[index]
        if not buffer:
            return None
        self.buffers[index] = []
        tags = None
        if self.tags is not None:
            tags = self.tags[index]
            self.tags[index] = []
        worker = self._workers[index]
        worker.in_flight += 1
        updates, records, enriched, late = self.outputs.wanted()
        now = self.now
        if self._logs is not None:
            self._logs[index].sent(Sent(buffer, tags, updates, records, enriched, late, now))
        worker.conn.queue(Events(buffer, updates, tags, records, enriched, late, now))
        return worker

    async def send_due(self) -> None:
        """Send the buffers of ``BUSY_BATCHES`` times ``batch_size`` events or more (fewer for
        large payloads: ``BUSY_FRAME_BYTES``), and any buffer of a worker with no frame in
        flight (latency first, as in-process a partial batch leaves at once for idle actors:
        while the worker is busy, its buffer grows)."""
        size = self._busy_size
        workers = self._workers
        try:
            for index, buffer in enumerate(self.buffers):
                if buffer and (len(buffer) >= size or not workers[index].in_flight):
                    await self.send(index)
        finally:
            # also when the caller is cancelled while sending: what it left buffered is
            # accepted, and leaves within linger
            if self._flusher_idle and any(self.buffers):
                assert self._wake is not None
                self._wake.set()  # a buffer waits for its busy worker: the flusher times it

    async def send_all(self) -> None:
        for index in range(self.workers):
            await self.send(index)

    async def _flusher(self) -> None:
        """Send each buffer once it is ``linger`` old (a buffer waits while its worker is
        busy: an idle worker's leaves at once, from ``send_due`` or, when the worker says it
        took its last frame in, from the reader).

        While nothing is buffered it waits to be woken (``send_due`` wakes it when a buffer
        stays behind a busy worker), and while something is, it sleeps until the oldest
        buffer is due: no timer runs while the front is idle, and a sleep, not a timed wait
        on the event: an ``anyio.move_on_after`` that expires cost about 0.45 ms of CPU
        here, a sleep 0.06 ms (idle, the front took 14% of a core with the timed wait every
        ``linger / 2``)."""
        linger = self.linger
        created = self._created
        while True:
            buffers = self.buffers
            waiting = [created[index] for index, buffer in enumerate(buffers) if buffer]
            if not waiting:
                self._flusher_idle = True
                assert self._wake is not None
                await self._wake.wait()
                self._wake = anyio.Event()
                self._flusher_idle = False
                continue
            wait = min(waiting) + linger - time.perf_counter()
            if wait > 0:
                await anyio.sleep(wait)
            if self.failure is not None:
                return
            due = time.perf_counter() - linger
            for index, buffer in enumerate(self.buffers):
                if buffer and created[index] <= due:
                    try:
                        await self.send(index)
                    except RuntimeClosed:
                        return  # a worker died: the next call says so

    async def _send_now(self, index: int) -> None:
        """Send worker ``index``'s buffer (the reader's: the worker took its last frame in)."""
        with suppress(RuntimeClosed):  # a worker died: the next call says so
            await self.send(index)

    # -- reading -----------------------------------------------------------------------------
    async def flush(self) -> None:
        """Every event sent is applied, and its updates published to the front's hub."""
        self.check()
        await self.send_all()
        await self.call_all("flush", self.now)

    async def step(self, at: float) -> None:
        """A replay's step: every event sent is applied at the clock's time, then each
        worker's clock (and the front's) moves to ``at`` and idle time and expiry are applied
        at it, and their updates published (``FeatureRuntime.replay``)."""
        self.check()
        await self.send_all()
        await self.call_all("step", self.now, at)
        if self._clock is not None:
            self._clock.now = at

    async def get_many(
        self, keys: Iterable[Any], features: list[str] | None, at: int | None = None
    ) -> dict[Any, FeatureVector]:
        """The vectors of ``keys`` from their workers, read as of ``at`` (a time in the feature
        set's unit; None: as of each key's last event)."""
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
            raw = await self._call(index, "get_many", keys, features, at)
            found.update(zip(keys, _vectors.decode(raw), strict=True))

        await _together([partial(one, index, keys_of) for index, keys_of in by_worker.items()])
        return {key: found[key] for key in wanted}

    async def statistics(self) -> RuntimeStatistics:
        self.check()
        parts = [_statistics.decode(raw) for raw in await self.call_all("statistics")]
        merged = merge_statistics(parts)
        return msgspec.structs.replace(
            merged,
            events_ingested=self.ingested_before + self.ingested,
            events_rejected=self.rejected_before + self.rejected,
            shards=self.shards,
            groups=parts[0].groups,
        )

    async def recent_errors(self) -> list[FeatureError]:
        """Every worker's recent feature errors, by event time."""
        self.check()
        raws = await self.call_all("recent_errors")
        errors = [error for raw in raws for error in _errors.decode(raw)]
        return sorted(errors, key=lambda error: error.event_time)

    async def metrics(
        self, decode: Callable[[bytes], Any], dead_letters: dict[str, int], **front: Any
    ) -> Any:
        """Every worker's ``RuntimeMetrics`` (read with ``decode``), merged
        (:func:`merge_metrics`), with ``front``'s fields in place of the workers'."""
        self.check()
        parts = [decode(raw) for raw in await self.call_all("metrics")]
        parts = [
            held.report(part, worker.pid)
            for held, part, worker in zip(self._held, parts, self._workers, strict=True)
        ]
        return merge_metrics(parts, dead_letters, **front)

    async def describe(self, name: str) -> FeatureDescription:
        """Feature ``name`` described by every worker, merged (:func:`merge_measured`): the
        first worker's description (the estimate is the caller's to replace: each worker
        estimates for its share of the events and keys), with the measured cost of all.

        Raises:
            UnknownFeature: no feature has that name.
        """
        self.check()
        if name not in self._names:
            known = ", ".join(self._names)
            raise UnknownFeature(f"no feature named {name!r} (known: {known})")
        parts = [_description.decode(raw) for raw in await self.call_all("describe", name)]
        measured = merge_measured([p.measured_cost for p in parts])
        return msgspec.structs.replace(parts[0], measured_cost=measured)

    async def register(self, features: bytes, names: tuple[str, ...]) -> None:
        """Register ``features`` (pickled) in every worker, after what was sent to it so far
        (the call is queued on every worker's stream at one point, and logged there: a
        worker started again registers them at the same point of its events); ``names``
        are the feature set's feature names then.

        Raises:
            RuntimeClosed: the front failed.
            RuntimeError: a worker could not register them (a ``SpecError``'s text).
        """
        for index in range(self.workers):
            await self.running(index)
        await self.send_all()
        for index in range(self.workers):
            await self.running(index)
        # at one point: every worker's buffer, then the call, queued with no await between
        pendings: list[tuple[_Worker, _Pending]] = []
        for index in range(self.workers):
            self.queue_events(index)
            worker = self._workers[index]
            call_id = next(self._ids)
            pending = worker.pending[call_id] = _Pending()
            worker.conn.queue(Call(call_id, "register", [features]))
            if self._logs is not None:
                self._logs[index].registered(features)
            pendings.append((worker, pending))

        async def one(index: int) -> None:
            worker, pending = pendings[index]
            await self.drain(worker)
            await pending.done.wait()
            if isinstance(pending.error, _Retry):
                await self.running(index)  # the restarted worker registered them in order
                return
            if pending.error is not None:
                raise pending.error

        await _together([partial(one, index) for index in range(self.workers)])
        self._names = names

    async def warm_up(
        self, source: str, keys: list[Any], rows: dict[Any, dict[str, Any]] | None
    ) -> int:
        """Fill the cache of ``source`` in every worker (each has its own): with ``rows``,
        and with the rows of ``keys`` fetched by each worker. Returns the keys cached (the
        most of any worker's).

        Raises:
            ValueError: no source of the feature set's lookups is named ``source``.
            SourceError: the source failed in a worker (after its retries).
        """
        self.check()
        if source not in self._sources:
            known = ", ".join(self._sources) or "none"
            raise ValueError(f"source: no source with lookups named {source!r} (known: {known})")
        try:
            results = await self.call_all("warm_up", source, keys, rows)
        except RuntimeError as exc:
            if "SourceError: " in str(exc) or "SourceUnavailable: " in str(exc):
                # the worker's error, as text: its attempts are not known here
                raise SourceError(str(exc), source=source, attempts=0) from exc
            raise
        return max(_int.decode(raw) for raw in results)

    async def serve_metrics(
        self, server: Any, stack: AsyncExitStack, interval: float, metrics: Any
    ) -> None:
        """Serve ``await metrics()`` on ``server`` (the runtime's Prometheus endpoint),
        refreshed every ``interval`` seconds in a task of the front's; ``stack`` stops it."""
        assert self._tasks is not None
        server.update(await metrics())
        await server.start(self._tasks)
        stack.push_async_callback(server.stop)
        self._tasks.start_soon(self._refresh, server, interval, metrics, name="featurist-metrics")
        _log.info("metrics_serving", host=server.host, port=server.port)

    async def _refresh(self, server: Any, interval: float, metrics: Any) -> None:
        """The endpoint's snapshots. A failure is logged and the last snapshot kept."""
        while True:
            await anyio.sleep(interval)
            if self.failure is not None:
                return
            try:
                server.update(await metrics())
            except RuntimeClosed:
                return
            except Exception:
                _log.exception("metrics_failed")


async def _first_failure(calls: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``calls`` at once; at the first failure, cancel the others and raise it as it is
    (not in an exception group)."""
    failures: list[BaseException] = []
    async with anyio.create_task_group() as tasks:

        async def run(call: Callable[[], Awaitable[None]]) -> None:
            try:
                await call()
            except Exception as exc:
                failures.append(exc)
                tasks.cancel_scope.cancel()

        for call in calls:
            tasks.start_soon(run, call)
    if failures:
        raise failures[0]


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


def _pinned_shards(worker_of_group: list[int], workers: int, shards: int) -> list[int | None]:
    """Per worker, the one shard of a runtime of ``shards`` shards over the same key groups
    that holds every key group of the worker's, or None when they fall in several."""
    router = KeyRouter(shards=shards, key_groups=len(worker_of_group))
    held: list[set[int]] = [set() for _ in range(workers)]
    for group, worker in enumerate(worker_of_group):
        held[worker].add(router.shard_of_group(group))
    return [next(iter(shards_of)) if len(shards_of) == 1 else None for shards_of in held]


def _touch(path: str) -> None:
    with open(path, "wb"):
        pass


def _key_time_decoder(reader: EventReader) -> Callable[[bytes], Any]:
    """A decoder of an event's key and time fields alone (the rest is skipped, unread),
    into a struct the collector does not track (freshly decoded values cannot reach back to
    it: no cycle; 220 against 240 ns an event, best of 5)."""
    fields = msgspec.defstruct(
        "KeyTime",
        [("k", Any, msgspec.UNSET), ("t", Any, msgspec.UNSET)],
        rename={"k": reader.key, "t": reader.time},
        gc=False,
    )
    if reader.payload_format == "json":
        return msgspec.json.Decoder(fields).decode
    return msgspec.msgpack.Decoder(fields).decode
