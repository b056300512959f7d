"""A worker process: a runtime of its own over the key groups the front sends it.

:func:`main` is the process's target (``multiprocessing``'s ``forkserver``: forked from a
server process that imported the runtime, so no event loop or lock of the application's
process is inherited). It runs :func:`serve` on
its own event loop (uvloop where it is installed): make the runtime from the
:class:`WorkerSpec`, enter it, say so (a :class:`Reply` of id 0), then take the front's frames
in order. Events go to ``ingest_many``; while the front has subscribers, a forwarder task reads
the runtime's updates and sends each batch on. A ``flush`` is answered once the updates it
produced are sent, so the front has published them when its ``flush`` returns.

The worker exits on :class:`Stop` (after applying what it was sent) and at the end of the
stream (the front's process is gone: it never outlives it). It ignores SIGINT: a Ctrl-C in a
terminal reaches the whole process group, and the front decides when its workers stop.
"""

from __future__ import annotations

import os
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
    Events,
    FromFront,
    Rejected,
    Reply,
    Stop,
    Stopped,
    Taken,
    Updates,
)

__all__ = ["WorkerSpec", "main", "serve"]

_log = get_logger("featurist.worker")
_encode = msgspec.msgpack.encode
_TAKEN = Taken()


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is given (pickled, sent to the process that forks it)."""

    #: the worker's index, in ``range(workers)``
    index: int
    #: makes the worker's runtime (a ``FeatureRuntime`` with ``workers=0``)
    make_runtime: Callable[[], Any]


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
        except Exception as exc:
            await conn.send(Reply(0, f"{type(exc).__name__}: {exc}", msgspec.Raw(b"\xc0")))
            return
        async with rt:
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


class _Worker:
    def __init__(self, rt: Any, conn: Connection, index: int) -> None:
        self._rt = rt
        self._conn = conn
        self._index = index
        #: the runtime's updates while the front has subscribers, and their forwarder's scope
        self._subscription: Any = None
        self._forwarding: anyio.CancelScope | None = None
        #: True while the forwarder has a batch in hand
        self._busy = False

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
                if self._subscription is not None:
                    await self._subscription.aclose()

    async def _events(self, message: Events, tasks: anyio.abc.TaskGroup) -> None:
        if message.updates != (self._subscription is not None):
            await self._subscribe(message.updates, tasks)
        payloads = message.payloads
        accepted = await self._rt.ingest_many(payloads)
        refused = len(payloads) - accepted
        if refused:
            letters = self._rt.dead_letters.letters(DeadLetterReason.REJECTED)[-refused:]
            await self._conn.send(Rejected([(letter.message, letter.detail) for letter in letters]))
        await self._conn.send(_TAKEN)

    async def _subscribe(self, on: bool, tasks: anyio.abc.TaskGroup) -> None:
        if on:
            self._subscription = self._rt.updates()
            self._forwarding = anyio.CancelScope()
            tasks.start_soon(self._forward, self._subscription, self._forwarding)
        else:
            assert self._forwarding is not None
            self._forwarding.cancel()
            await self._subscription.aclose()
            self._subscription = self._forwarding = None
            self._busy = False

    async def _forward(self, subscription: Any, scope: anyio.CancelScope) -> None:
        send = self._conn.send
        with scope:
            async for batch in subscription.batches():
                self._busy = True
                kinds = batch.kinds
                extras = {i: batch.update(i) for i, kind in enumerate(kinds) if kind != "update"}
                await send(
                    Updates(
                        batch.group,
                        batch.names,
                        batch.rows,
                        batch.errors or None,
                        batch.latency_ms,
                        batch.processed_at,
                        extras or None,
                    )
                )
                self._busy = False

    async def _drained(self) -> None:
        """Wait until the forwarder has sent every update the runtime has published."""
        subscription = self._subscription
        # polled: a flush or a stop waits here, once, for what is at most a few batches
        while subscription is not None and (subscription.statistics().depth or self._busy):  # noqa: ASYNC110
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
                await rt.flush()
                await self._drained()
                result: Any = None
            elif call.op == "get_many":
                keys, features = call.args
                result = list((await rt.get_many(keys, features)).values())
            elif call.op == "statistics":
                result = await rt.statistics()
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
