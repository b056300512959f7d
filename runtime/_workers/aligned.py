"""Aligned checkpoints of a runtime with workers, and their restore.

The front is the one sequencer of the input, so a checkpoint is taken at one input position:
while ingest waits (the :class:`Progress` gate, as in-process), the front queues each worker's
buffer and then a barrier (a ``"checkpoint"`` call) on every worker's stream, with no event
routed between. Each worker answers once it applied what came before the barrier, sent its
updates and wrote its key groups' state to its part file; the front commits the checkpoint by
writing the checkpoint's own file last, naming the parts (``CheckpointStore.write``). Then
each worker's log (``recovery.py``) forgets what came before the barrier.

On start, the newest readable checkpoint of the directory is restored: each worker reads it
and takes the key groups it owns now (``CheckpointCoordinator.restore_from`` with its share),
whatever ``workers`` and ``shards`` wrote it, in-process included.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import anyio
import anyio.to_thread
import msgspec

from actors import get_logger

from .._checkpoints.coordinator import Progress
from .._checkpoints.guards import CheckpointGuards
from .._checkpoints.store import (
    Checkpoint,
    CheckpointConfig,
    CheckpointInfo,
    CheckpointStore,
    restored_info,
)
from .._exceptions import CheckpointError, RuntimeClosed
from .protocol import decoder
from .recovery import WorkerLog

__all__ = ["Abandoned", "AlignedCheckpoints", "Front"]

_log = get_logger("featurist.workers")
_written = decoder(list[int])


class Abandoned(CheckpointError):
    """A worker died during the checkpoint: the last one stands, and it is taken again."""


class Front(Protocol):
    """What the checkpoints use of the front (``front.py``'s ``WorkerFront``)."""

    workers: int
    shards: int
    failure: str | None
    ingested: int
    rejected: int
    ingested_before: int
    rejected_before: int

    @property
    def key_groups(self) -> int: ...

    @property
    def buffered(self) -> int: ...

    def check(self) -> None: ...

    async def running(self, index: int) -> Any: ...

    def all_running(self) -> bool: ...

    def queue_events(self, index: int) -> Any: ...

    def queue_barrier(self, index: int, sequence: int, args: list[Any]) -> tuple[Any, Any]: ...

    async def drain(self, worker: Any) -> None: ...

    async def call_all(self, op: str, *args: Any) -> list[msgspec.Raw]: ...


class AlignedCheckpoints:
    """The checkpoints of a :class:`WorkerFront` (``checkpoints=`` with workers).

    Args:
        front: the front whose workers write the parts.
        config: the directory and how often.
        progress: the input's position and offset, and the gate that holds ingest back.
        logs: per worker, the frames sent since the last checkpoint (emptied by one).
        feature_set: the feature set's name, recorded.
    """

    def __init__(
        self,
        front: Front,
        config: CheckpointConfig,
        progress: Progress,
        logs: list[WorkerLog],
        feature_set: str,
        key: str | None = None,
    ) -> None:
        self._front = front
        #: the feature set's key field, recorded in each checkpoint
        self._key = key
        self.config = config
        self.store = CheckpointStore(config.directory, config.keep)
        self._progress = progress
        self._logs = logs
        self._feature_set = feature_set
        self._lock = anyio.Lock()
        #: the sequence of the base checkpoint (restored or last written): a restarted worker
        #: restores it; and the last sequence used
        self.base: int | None = None
        self._sequence = 0
        #: the checkpoint restored on start, and the last one written
        self.restored: CheckpointInfo | None = None
        self.last: CheckpointInfo | None = None
        #: awaited before the checkpoint is committed (the runtime's: the sinks)
        self.guards = CheckpointGuards()

    @property
    def log_events(self) -> int:
        """Events the front keeps to replay to a restarted worker."""
        return sum(log.events for log in self._logs)

    @property
    def log_full(self) -> bool:
        """Whether the log and the front's buffers (sent to the log as they leave) hold
        ``max_log_events`` or more: a checkpoint is due."""
        return self.log_events + self._front.buffered >= self.config.max_log_events

    async def restore_latest(self) -> None:
        """Restore the newest readable checkpoint of the directory into the workers, each
        its key groups.

        Raises:
            CheckpointError: a worker could not restore it (the message says why), or the
                directory holds checkpoints and none is readable.
        """
        front = self._front
        started = time.perf_counter()
        found = await anyio.to_thread.run_sync(self.store.latest)
        if found is None:
            refused = await anyio.to_thread.run_sync(self.store.none_usable)
            if refused is not None:
                raise refused  # checkpoints there, none readable: not started empty
            return
        checkpoint, path = found
        try:
            await front.call_all(
                "restore", self.config.directory, checkpoint.sequence, front.workers
            )
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: cannot be restored: {exc}") from None
        progress = self._progress
        progress.position, progress.offset = checkpoint.position, checkpoint.offset
        front.ingested_before = checkpoint.ingested or 0
        front.rejected_before = checkpoint.rejected or 0
        self.base = self._sequence = checkpoint.sequence
        keys = sum(actor.keys for actor in checkpoint.actors)
        self.restored = restored_info(checkpoint, path, keys, started)
        _log.info(
            "checkpoint_restored",
            sequence=checkpoint.sequence,
            position=checkpoint.position,
            workers_then=checkpoint.workers,
            workers_now=front.workers,
            shards_then=checkpoint.shards,
            shards_now=front.shards,
        )

    async def run_periodic(self, interval: float) -> None:
        """The periodic checkpoints. A failure is logged and the next one tried."""
        while self._front.failure is None:
            await anyio.sleep(interval)
            try:
                await self.checkpoint()
            except (CheckpointError, OSError):
                _log.exception("checkpoint_failed", directory=str(self.store.directory))
            except RuntimeClosed:
                return

    async def relieve_log(self) -> None:
        """While the log is full, take a checkpoint (ingest waits for it: a dead worker's
        replay never grows beyond ``max_log_events`` and a call's events).

        Raises:
            CheckpointError, OSError: the checkpoint failed other than by a worker's death.
        """
        while self.log_full:
            await self.checkpoint()

    async def checkpoint(self) -> CheckpointInfo:
        """An aligned checkpoint: every worker writes its key groups' state as of one input
        position, and the front commits them. If a worker dies meanwhile, the checkpoint is
        taken again once it runs again (each death counts in ``max_restarts``).

        Raises:
            CheckpointError: a worker could not capture its state.
            OSError: the file could not be written.
            RuntimeClosed: the front failed (a worker died beyond ``max_restarts``).
        """
        while True:
            try:
                return await self._checkpoint_once()
            except Abandoned as exc:
                _log.warning("checkpoint_abandoned", error=str(exc))

    async def _checkpoint_once(self) -> CheckpointInfo:
        front, store, logs = self._front, self.store, self._logs
        async with self._lock:
            front.check()
            started = time.perf_counter()
            progress = self._progress
            async with progress.closed():
                sequences = await anyio.to_thread.run_sync(store.sequences)
                while True:
                    for index in range(front.workers):
                        await front.running(index)
                    # one point of the input: no await from here to the last barrier queued
                    if front.all_running():
                        break
                self._sequence = sequence = max(self._sequence, *sequences, 0) + 1
                position, offset = progress.position, progress.offset
                ingested = front.ingested_before + front.ingested
                rejected = front.rejected_before + front.rejected
                barriers = []
                for index in range(front.workers):
                    front.queue_events(index)
                    logs[index].barrier()
                    barriers.append(
                        front.queue_barrier(index, sequence, [self.config.directory, sequence])
                    )
            paused = time.perf_counter() - started
            parts: list[list[int]] = []
            try:
                for worker, _ in barriers:
                    await front.drain(worker)
                for _, pending in barriers:
                    await pending.done.wait()
                    if pending.error is not None:
                        raise pending.error
                    assert pending.result is not None
                    parts.append(_written.decode(pending.result))
                checkpoint = Checkpoint(
                    feature_set=self._feature_set,
                    key=self._key,
                    sequence=sequence,
                    created_at=time.time(),
                    key_groups=front.key_groups,
                    shards=front.shards,
                    position=position,
                    offset=offset,
                    ingested=ingested,
                    rejected=rejected,
                    workers=front.workers,
                    parts=[store.part_name(sequence, index) for index in range(front.workers)],
                )
                # every worker's updates before its barrier are published: the sinks write
                # them before the checkpoint is committed
                await self.guards.wait()
                path, size = await anyio.to_thread.run_sync(store.write, checkpoint)
            except BaseException as exc:
                for log in logs:
                    log.abandon()
                if isinstance(exc, RuntimeError) and not isinstance(exc, RuntimeClosed):
                    raise CheckpointError(f"checkpoint {sequence}: {exc}") from exc
                raise
            for log in logs:
                log.commit(sequence)
            self.base = sequence
        info = CheckpointInfo(
            sequence=sequence,
            path=str(path),
            position=position,
            offset=offset,
            keys=sum(part[0] for part in parts),
            size_bytes=size + sum(part[2] for part in parts),
            created_at=checkpoint.created_at,
            pause_ms=paused * 1000,
            duration_ms=(time.perf_counter() - started) * 1000,
            shards=front.shards,
            keys_left_out=sum(part[1] for part in parts),
        )
        self.last = info
        _log.info(
            "checkpoint_written",
            sequence=sequence,
            position=position,
            workers=front.workers,
            keys=info.keys,
            bytes=info.size_bytes,
            pause_ms=round(info.pause_ms, 1),
            duration_ms=round(info.duration_ms, 1),
        )
        return info
