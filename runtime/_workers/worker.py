"""A worker process: a runtime of its own over the key groups the front sends it.

:func:`main` is the process's target (``multiprocessing``'s ``forkserver``: forked from a
server process that imported the runtime, so no event loop or lock of the application's
process is inherited). It runs :func:`serve` on
its own event loop (uvloop where it is installed): make the runtime from the
:class:`WorkerSpec`, enter it, say so (a :class:`Reply` of id 0), then take the front's frames
in order. Events go to ``ingest_many`` (with their streams, when the front tags them); while
the front has subscribers to updates, join records, enriched or late events, a forwarder task
reads the runtime's and sends each batch on. A ``flush`` is answered once the updates it
produced are sent, so the front has published them when its ``flush`` returns.

The worker exits on :class:`Stop` (after applying what it was sent) and at the end of the
stream (the front's process is gone: it never outlives it). It ignores SIGINT: a Ctrl-C in a
terminal reaches the whole process group, and the front decides when its workers stop.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import msgspec

from actors import DeadLetterReason, get_logger, run

from .._checkpoints.store import CheckpointStore
from .protocol import (
    Call,
    Connection,
    Enriched,
    Events,
    FromFront,
    JoinRecords,
    Late,
    Rejected,
    Reply,
    Stop,
    Stopped,
    Taken,
    Updates,
    encode,
)

__all__ = ["WorkerSpec", "main", "serve"]

_log = get_logger("featurist.worker")
_encode = encode
_TAKEN = Taken()
#: rows (updates, records, events) a forwarder takes from its buffer for one round of
#: frames, at most
MAX_FORWARD_ROWS = 8192


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is given (pickled, sent to the process that forks it)."""

    #: the worker's index, in ``range(workers)``
    index: int
    #: makes the worker's runtime (a ``FeatureRuntime`` with ``workers=0``)
    make_runtime: Callable[[], Any]
    #: the worker's one shard, when it runs one (its runtime then routes nothing: the front
    #: sent it only events of that shard's key groups); None: its runtime routes by key
    pinned: int | None = None


def main(sock: Any, spec: WorkerSpec) -> None:
    """The worker process's target."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run(lambda: serve(sock, spec))


async def serve(sock: Any, spec: WorkerSpec) -> None:
    """Serve the front on ``sock`` until it says stop or goes away."""
    conn = await Connection.of(sock, FromFront)
    try:
        try:
            rt = spec.make_runtime()
            if spec.pinned is not None:
                rt._ingest.pin(spec.pinned)
        except Exception as exc:
            await conn.send(Reply(0, f"{type(exc).__name__}: {exc}", msgspec.Raw(b"\xc0")))
            return
        async with rt:
            # What the process holds now (the modules the fork server imported, the runtime
            # as made) lives as long as it does: out of the collector's full passes, which
            # otherwise walk it again each time (measured at 500k events over 2 workers:
            # 0.50 -> 0.38 s of the collector's time)
            gc.collect()
            gc.freeze()
            await conn.send(Reply(0, None, msgspec.Raw(_encode(os.getpid()))))
            await _Worker(rt, conn, spec.index).serve()
        await conn.send(Stopped())
    except (
        anyio.EndOfStream,
        anyio.IncompleteRead,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
    ):
        pass  # the front is gone: nobody to tell
    finally:
        with anyio.CancelScope(shield=True):
            await conn.aclose()


class _Forwarder:
    """One output of the worker's runtime forwarded to the front while the front has
    subscribers to it: the subscription, its task's scope, and whether a batch is in hand."""

    __slots__ = ("busy", "scope", "subscription")

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
        self.scope = anyio.CancelScope()
        self.busy = False


class _Worker:
    def __init__(self, rt: Any, conn: Connection, index: int) -> None:
        self._rt = rt
        self._conn = conn
        self._index = index
        #: the streams' names, by the index the front tags events with
        self._streams: tuple[str, ...] = rt._ingest.streams
        #: the runtime's updates and join records while the front has subscribers to them
        self._updates: _Forwarder | None = None
        self._records: _Forwarder | None = None
        self._enriched: _Forwarder | None = None
        self._late: _Forwarder | None = None

    async def serve(self) -> None:
        conn = self._conn
        async with anyio.create_task_group() as tasks:
            try:
                while True:
                    try:
                        message = await conn.receive()
                    except (anyio.EndOfStream, anyio.IncompleteRead):
                        return  # the front's process ended: stop at once
                    if isinstance(message, Events):
                        await self._events(message, tasks)
                    elif isinstance(message, Call):
                        await self._call(message)
                    elif isinstance(message, Stop):
                        await self._rt.flush()
                        await self._drained()
                        return
            except Exception as exc:
                # the runtime failed (an actor beyond its restarts): tell the front, then end
                _log.error("worker_failed", error=repr(exc))
                await conn.send(Reply(0, f"{type(exc).__name__}: {exc}", msgspec.Raw(b"\xc0")))
            finally:
                tasks.cancel_scope.cancel()
                for forwarder in self._forwarders():
                    if forwarder is not None:
                        await forwarder.subscription.aclose()

    async def _events(self, message: Events, tasks: anyio.abc.TaskGroup) -> None:
        if message.updates != (self._updates is not None):
            self._updates = await self._switch(
                self._updates, self._rt.updates, self._forward_updates, tasks
            )
        if message.records != (self._records is not None):
            self._records = await self._switch(
                self._records, self._rt.join_records, self._forward_records, tasks
            )
        if message.enriched != (self._enriched is not None):
            self._enriched = await self._switch(
                self._enriched, self._rt.enriched_events, self._forward_enriched, tasks
            )
        if message.late != (self._late is not None):
            self._late = await self._switch(
                self._late, self._rt.late_events, self._forward_late, tasks
            )
        if message.now is not None:
            self._rt._clock.now = message.now  # a replay's clock, as the front's
        payloads = message.payloads
        tags = message.tags
        if tags is None:
            accepted = await self._rt.ingest_many(payloads)
        else:
            names = self._streams
            accepted = await self._rt.ingest_many(payloads, stream=[names[t] for t in tags])
        refused = len(payloads) - accepted
        if refused:
            letters = self._rt.dead_letters.letters(DeadLetterReason.REJECTED)[-refused:]
            await self._conn.send(Rejected([(letter.message, letter.detail) for letter in letters]))
        await self._conn.send(_TAKEN)

    async def _switch(
        self,
        forwarder: _Forwarder | None,
        subscribe: Callable[[], Any],
        forward: Callable[[_Forwarder], Any],
        tasks: anyio.abc.TaskGroup,
    ) -> _Forwarder | None:
        """Start forwarding an output (``forwarder`` is None), or stop (it is not)."""
        if forwarder is None:
            forwarder = _Forwarder(subscribe())
            tasks.start_soon(forward, forwarder)
            return forwarder
        forwarder.scope.cancel()
        await forwarder.subscription.aclose()
        return None

    async def _forward_updates(self, forwarder: _Forwarder) -> None:
        await self._forward(forwarder, _group_of, _merged_updates)

    async def _forward_records(self, forwarder: _Forwarder) -> None:
        await self._forward(forwarder, _join_of, _merged_records)

    async def _forward_enriched(self, forwarder: _Forwarder) -> None:
        await self._forward(forwarder, _none, _merged_enriched)

    async def _forward_late(self, forwarder: _Forwarder) -> None:
        await self._forward(forwarder, _group_of, _merged_late)

    async def _forward(
        self,
        forwarder: _Forwarder,
        part_of: Callable[[Any], Any],
        frame_of: Callable[[list[Any]], Any],
    ) -> None:
        """Send the output's batches on, as frames of ``frame_of`` over the batches of one
        part (a group, a join).

        Each round takes what else is buffered too (up to ``MAX_FORWARD_ROWS``), merged per
        part, one frame each. The hub splits a batch into the room left in a full buffer: a
        forwarder that sent each piece in a frame of its own fell further behind on ever
        smaller pieces (with 4 shards, 20 update rows a frame) and halved the throughput.
        """
        send = self._conn.send
        subscription = forwarder.subscription
        batches = subscription.batches()
        with forwarder.scope:
            async for batch in batches:
                forwarder.busy = True
                taken = {part_of(batch): [batch]}
                rows = len(batch)
                while rows < MAX_FORWARD_ROWS and subscription.statistics().depth:
                    more = await anext(batches)  # buffered: no wait
                    taken.setdefault(part_of(more), []).append(more)
                    rows += len(more)
                for part in taken.values():
                    await send(frame_of(part))
                forwarder.busy = False

    def _forwarders(self) -> tuple[_Forwarder | None, ...]:
        return (self._updates, self._records, self._enriched, self._late)

    async def _drained(self) -> None:
        """Wait until the forwarders have sent every output the runtime has published."""
        forwarders = [f for f in self._forwarders() if f is not None]
        # polled: a flush or a stop waits here, once, for what is at most a few batches
        while any(f.subscription.statistics().depth or f.busy for f in forwarders):  # noqa: ASYNC110
            await anyio.sleep(0.0005)

    async def _checkpoint(self, directory: str, sequence: int) -> list[int]:
        """The barrier of checkpoint ``sequence``: every event sent before is applied and its
        updates are sent, then the state of the worker's key groups is written to its part
        of the checkpoint. Returns the keys, the keys left out and the part's size."""
        rt = self._rt
        await rt.flush()
        await self._drained()
        coordinator = rt._coordinator
        checkpoint = await coordinator.capture(sequence)
        store = CheckpointStore(directory)
        _, size = await anyio.to_thread.run_sync(store.write_part, checkpoint, self._index)
        keys = sum(actor.keys for actor in checkpoint.actors)
        return [keys, coordinator.keys_left_out, size]

    async def _call(self, call: Call) -> None:
        rt = self._rt
        try:
            if call.op == "flush":
                if call.args and call.args[0] is not None:
                    rt._clock.now = call.args[0]
                await rt.flush()
                await self._drained()
                result: Any = None
            elif call.op == "step":
                now, at = call.args
                rt._clock.now = now
                # as ``FeatureRuntime.replay``'s step in process (the runtime is this
                # package's own): applied at ``now``, then idle time and expiry at ``at``
                await rt._topology.settle(at=at)
                await self._drained()
                result = None
            elif call.op == "get_many":
                keys, features, at = call.args
                # the front read the time (ms), once for every worker; None: as of each
                # key's last event
                result = list((await rt._get_many_at(keys, features, at)).values())
            elif call.op == "statistics":
                result = await rt.statistics()
            elif call.op == "metrics":
                result = await rt.metrics()
            elif call.op == "recent_errors":
                result = await rt.recent_errors()
            elif call.op == "register":
                (features,) = call.args
                # pickled by the front: feature specs as the application made them
                await rt.register(*pickle.loads(features))
                result = None
            elif call.op == "sees":  # the front's check of the checkpoint directory
                (path,) = call.args
                result = await anyio.to_thread.run_sync(os.path.exists, path)
            elif call.op == "describe":
                (name,) = call.args
                result = await rt.describe(name)
            elif call.op == "warm_up":
                source, keys, rows = call.args
                result = await rt.warm_up(source, keys, rows=rows)
            elif call.op == "checkpoint":
                directory, sequence = call.args
                result = await self._checkpoint(directory, sequence)
            elif call.op == "restore":
                directory, sequence, workers = call.args
                store = CheckpointStore(directory)
                checkpoint = await anyio.to_thread.run_sync(store.read, sequence)
                # the worker's runtime is this package's own: its coordinator restores the
                # worker's share of the key groups (no lock: the front holds the directory)
                await rt._coordinator.restore_from(
                    checkpoint, store.path_of(sequence), share=(self._index, workers)
                )
                result = None
            else:
                raise ValueError(f"unknown call {call.op!r}")
        except Exception as exc:
            await self._conn.send(
                Reply(call.id, f"{type(exc).__name__}: {exc}", msgspec.Raw(b"\xc0"))
            )
            return
        await self._conn.send(Reply(call.id, None, msgspec.Raw(_encode(result))))


def _merged_updates(batches: list[Any]) -> Updates:
    """The ``UpdateBatch``\\ es of one group as one :class:`Updates` frame: their rows in
    order (each key's stay in its order), errors and extras at their new indexes, the
    latencies summed (each is a whole batch's), the last ``processed_at``."""
    first = batches[0]
    if len(batches) == 1:
        extras = first.other_kinds()
        return Updates(
            first.group,
            first.names,
            first.rows,
            first.errors or None,
            first.latency_ms,
            first.processed_at,
            extras or None,
        )
    rows: list[Any] = []
    errors: dict[int, dict[str, str]] = {}
    extras = {}
    latency: dict[str, float] = {}
    for batch in batches:
        base = len(rows)
        rows.extend(batch.rows)
        for i, error in batch.errors.items():
            errors[base + i] = error
        for i, update in batch.other_kinds().items():
            extras[base + i] = update
        for name, ms in batch.latency_ms.items():
            latency[name] = latency.get(name, 0.0) + ms
    return Updates(
        first.group,
        first.names,
        rows,
        errors or None,
        latency,
        batches[-1].processed_at,
        extras or None,
    )


def _group_of(batch: Any) -> str:
    return batch.group  # type: ignore[no-any-return]


def _join_of(batch: Any) -> str:
    return batch.join  # type: ignore[no-any-return]


def _none(batch: Any) -> None:
    return None


def _merged_records(batches: list[Any]) -> JoinRecords:
    """The ``JoinRecordBatch``\\ es of one join as one :class:`JoinRecords` frame (the
    records built here: the front has no join to build them with)."""
    columns: list[list[Any]] = [[] for _ in range(8)]
    for batch in batches:
        for column, values in zip(
            columns,
            (
                batch.keys,
                batch.left_events,
                batch.right_events,
                batch.left_times,
                batch.right_times,
                batch.join_times,
                batch.time_differences,
                batch.records,
            ),
            strict=True,
        ):
            column.extend(values)
    keys, lefts, rights, left_times, right_times, join_times, differences, records = columns
    return JoinRecords(
        batches[0].join,
        keys,
        lefts,
        rights,
        left_times,
        right_times,
        join_times,
        differences,
        batches[-1].processed_at,
        records,
    )


def _merged_enriched(batches: list[Any]) -> Enriched:
    """The ``EnrichedBatch``\\ es as one :class:`Enriched` frame."""
    rows = batches[0].rows if len(batches) == 1 else [r for b in batches for r in b.rows]
    return Enriched(rows, batches[-1].processed_at)


def _merged_late(batches: list[Any]) -> Late:
    """The ``LateEventBatch``\\ es of one group as one :class:`Late` frame."""
    rows = batches[0].rows if len(batches) == 1 else [r for b in batches for r in b.rows]
    return Late(batches[0].group, rows)
