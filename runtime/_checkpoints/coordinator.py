"""Taking and restoring checkpoints of a running runtime.

A checkpoint is consistent: ingest waits at a batch boundary (the :class:`Progress` gate) while
every event accepted before is applied and each actor's state is captured, with the input
position it covers; the file is written after, while ingest goes on. On start, the newest
readable checkpoint of the directory is restored, its key groups spread over the shards the
runtime has now.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from actors import KeyRouter, get_logger

from .._exceptions import CheckpointError, ConfigError
from .._ingest.router import Ingest
from .._joins.shard import JoinShard
from .._messages import RestoreSnapshot, ShardSnapshot, TakeSnapshot
from .._shard import GroupShard
from .._topology import Group, JoinGroup, Topology, signature
from .._windows.shard import WindowShard
from .codec import state_codec
from .guards import CheckpointGuards
from .store import ActorState, Checkpoint, CheckpointConfig, CheckpointInfo, CheckpointStore

__all__ = ["CheckpointCoordinator", "Progress"]

_log = get_logger("featurist")


class Progress:
    """Where the input stands, as a checkpoint records it, and the gate a checkpoint closes.

    The ingest path counts the events it reads (``position``) and keeps the caller's last
    ``offset``; while ``gate`` is set, a checkpoint is capturing the state and ingest waits
    for it (:meth:`wait`). An ``ingest_many`` call that gives an offset is counted in
    ``offset_calls`` for its whole length, so that a checkpoint never records the offset with
    half of the call's events.
    """

    __slots__ = ("gate", "offset", "offset_calls", "offset_calls_done", "position")

    def __init__(self) -> None:
        #: events read from the input (accepted or not), restored from a checkpoint
        self.position = 0
        #: the input offset of the caller's last ingest call that gave one
        self.offset: Any = None
        #: set while a checkpoint captures the state: ingest waits for it
        self.gate: anyio.Event | None = None
        #: ingest_many calls with an ``offset`` under way (a checkpoint waits for them)
        self.offset_calls = 0
        self.offset_calls_done: anyio.Event | None = None

    async def wait(self) -> None:
        """Wait while a checkpoint captures the state."""
        while self.gate is not None:
            await self.gate.wait()

    def enter_offset_call(self) -> None:
        self.offset_calls += 1

    def leave_offset_call(self) -> None:
        self.offset_calls -= 1
        if not self.offset_calls and self.offset_calls_done is not None:
            self.offset_calls_done.set()


class CheckpointCoordinator:
    """Takes the runtime's checkpoints (on demand, periodically, on shutdown) and restores
    the newest on start.

    Args:
        config: where and how often to checkpoint; None: no checkpoints (:meth:`checkpoint`
            raises ``ConfigError``).
        topology: the actors whose state is captured, and the sources whose caches are.
        router: the key groups (the unit a state moves between shards by) and their shards.
        progress: the input position recorded, and the gate that holds ingest back.
        ingest: its counts of events accepted and rejected are recorded and restored too.
        register_lock: the runtime's lock on adding features: a checkpoint holds it, so that
            no group starts while the state is captured.
        guards: awaited once the state is captured, before the file is written: what sinks
            need to write first (:mod:`.guards`).
    """

    def __init__(
        self,
        config: CheckpointConfig | None,
        *,
        topology: Topology,
        router: KeyRouter,
        progress: Progress,
        ingest: Ingest,
        register_lock: anyio.Lock,
        guards: CheckpointGuards | None = None,
    ) -> None:
        self.config = config
        #: awaited once the state is captured, before the file is written (the sinks)
        self.guards = CheckpointGuards() if guards is None else guards
        self._ingest = ingest
        self.store = None if config is None else CheckpointStore(config.directory, config.keep)
        self._topology = topology
        self._router = router
        self._progress = progress
        self._register_lock = register_lock
        self._lock = anyio.Lock()
        self._sequence = 0
        #: the checkpoint restored on start, and the last one taken
        self.restored: CheckpointInfo | None = None
        self.last: CheckpointInfo | None = None
        #: state of feature groups in the restored checkpoint that the runtime does not have
        #: yet, by signature: ``register`` of the same features takes it (:meth:`adopt`)
        self._pending: dict[str, ActorState] = {}
        #: keys the snapshot under way left out (their state could not be encoded)
        self._left_out = 0

    # -- the runtime's lifecycle -----------------------------------------------------------------
    async def restore(self) -> None:
        """On start, once the actors run: restore the newest checkpoint, if configured so."""
        if self.config is not None and self.config.restore:
            await self._restore_latest()

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the periodic checkpoints in ``tg``, if configured so."""
        if self.config is not None and self.config.interval is not None:
            tg.start_soon(self._checkpointer, self.config.interval, name="featurist-checkpoints")

    async def on_shutdown(self) -> None:
        """On shutdown, once everything accepted is applied: the last checkpoint, if
        configured so. A failure is logged."""
        if self.config is not None and self.config.on_shutdown:
            try:
                await self._checkpoint()
            except Exception:
                _log.exception("checkpoint_failed", when="shutdown")

    async def adopt(self, group: Group) -> None:
        """Give a group just registered its state from the restored checkpoint, if that held
        the same features."""
        pending = self._pending.pop(signature(group), None)
        if pending is not None:
            try:
                await self._restore_target(group, pending)
            except CheckpointError as exc:
                # the rest of the checkpoint is restored already: this group starts empty
                _log.error("checkpoint_state_unusable", group=group.name, error=str(exc))

    # -- taking one ------------------------------------------------------------------------------
    async def checkpoint(self) -> CheckpointInfo:
        """Take a checkpoint now (``FeatureRuntime.checkpoint``).

        Raises:
            ConfigError: the runtime has no ``checkpoints`` directory.
            CheckpointError: the state could not be encoded.
            OSError: the file could not be written.
        """
        if self.store is None:
            raise ConfigError("checkpoint(): the runtime has no checkpoints directory")
        return await self._checkpoint()

    async def _checkpoint(self) -> CheckpointInfo:
        assert self.store is not None and self.config is not None
        async with self._lock, self._register_lock:
            started = time.perf_counter()
            self._sequence = max(self._sequence, *self.store.sequences(), 0) + 1
            checkpoint, paused = await self._capture(self._sequence)
            # what the captured events published is written downstream before the file is
            await self.guards.wait()
            path, size = await anyio.to_thread.run_sync(self.store.write, checkpoint)
        position, offset, actors = checkpoint.position, checkpoint.offset, checkpoint.actors
        shards = checkpoint.shards
        info = CheckpointInfo(
            sequence=checkpoint.sequence,
            path=str(path),
            position=position,
            offset=offset,
            keys=sum(actor.keys for actor in actors),
            size_bytes=size,
            created_at=checkpoint.created_at,
            pause_ms=paused * 1000,
            duration_ms=(time.perf_counter() - started) * 1000,
            shards=shards,
            keys_left_out=self._left_out,
        )
        self.last = info
        _log.info(
            "checkpoint_written",
            sequence=info.sequence,
            position=position,
            keys=info.keys,
            keys_left_out=info.keys_left_out,
            bytes=size,
            pause_ms=round(info.pause_ms, 1),
            duration_ms=round(info.duration_ms, 1),
        )
        return info

    async def capture(self, sequence: int) -> Checkpoint:
        """The state of every actor, as a checkpoint numbered ``sequence`` that is not
        written: a worker process's part of its front's checkpoint (the worker writes it).

        Raises:
            CheckpointError: the state could not be captured or encoded.
        """
        async with self._lock, self._register_lock:
            checkpoint, _ = await self._capture(sequence)
            return checkpoint

    async def _capture(self, sequence: int) -> tuple[Checkpoint, float]:
        """Capture every actor's state once every event accepted before is applied, while
        ingest waits (the :class:`Progress` gate). Returns the checkpoint (not written) and
        the seconds ingest waited."""
        assert self._lock.locked()
        progress = self._progress
        started = time.perf_counter()
        gate = anyio.Event()
        progress.gate = gate
        try:
            while progress.offset_calls:
                progress.offset_calls_done = anyio.Event()
                await progress.offset_calls_done.wait()
            await self._topology.settle()
            position, offset = progress.position, progress.offset
            ingest = self._ingest
            ingested = ingest.ingested_before + ingest.ingested
            rejected = ingest.rejected_before + ingest.rejected
            self._left_out = 0
            actors = await self._snapshot_actors()
            caches = (
                self._snapshot_caches() if self.config is not None and self.config.caches else {}
            )
        finally:
            progress.gate = None
            gate.set()
        checkpoint = Checkpoint(
            feature_set=self._topology.feature_set.name,
            sequence=sequence,
            created_at=time.time(),
            key_groups=self._router.key_groups,
            shards=self._topology.shards,
            position=position,
            offset=offset,
            ingested=ingested,
            rejected=rejected,
            actors=actors,
            caches=caches,
        )
        return checkpoint, time.perf_counter() - started

    @property
    def keys_left_out(self) -> int:
        """Keys the last capture left out (their state could not be encoded)."""
        return self._left_out

    async def _checkpointer(self, interval: float) -> None:
        """The periodic checkpoints. A failure is logged and the next one tried."""
        while True:
            await anyio.sleep(interval)
            try:
                await self._checkpoint()
            except Exception:
                _log.exception("checkpoint_failed", directory=str(self.store))

    async def _snapshot_actors(self) -> list[ActorState]:
        request = TakeSnapshot(self._router.key_group)
        states = []
        targets: list[tuple[str, Group | JoinGroup]] = [
            ("features", g) for g in self._topology.groups
        ]
        targets += [("join", join) for join in self._topology.joins]
        for kind, target in targets:
            groups: dict[int, bytes] = {}
            extras = []
            keys = 0
            for shard, ref in enumerate(target.refs):
                snapshot: ShardSnapshot | Exception = await ref.ask(request, timeout=None)
                if isinstance(snapshot, Exception):
                    # the actor replied with its failure rather than crash (it keeps its state)
                    raise CheckpointError(
                        f"the state of {target.name} (shard {shard}) could not be captured: "
                        f"{type(snapshot).__name__}: {snapshot}"
                    ) from snapshot
                groups.update(snapshot.groups)
                extras.append(snapshot.extra)
                keys += snapshot.keys
                self._left_out += snapshot.left_out
            layout = (
                list(target.compiled.state_type.__slots__)  # type: ignore[attr-defined]
                if isinstance(target, Group) and target.compiled is not None
                else []
            )
            states.append(
                ActorState(kind, target.name, signature(target), layout, groups, extras, keys)
            )
        # the pending states of groups not registered again since the restore are kept
        states.extend(self._pending.values())
        return states

    def _snapshot_caches(self) -> dict[str, bytes]:
        codec = state_codec()
        return {
            name: codec.encode(source.cache.export())
            for name, source in self._topology.sources.items()
        }

    # -- restoring -------------------------------------------------------------------------------
    async def _restore_latest(self) -> None:
        """Restore the newest checkpoint of the directory that is readable and whose state
        decodes and checks, if any; one that does not (damaged, tampered with, written by a
        bug) is logged and the one before it tried. One taken with another feature set or
        ``key_groups`` is refused (``CheckpointError``): an older one would be too, and
        starting empty instead would drop the state silently."""
        assert self.store is not None
        started = time.perf_counter()
        candidates = self.store.readable()
        while True:
            # each file is read in a worker thread, as it is decoded: no file I/O on the loop
            found = await anyio.to_thread.run_sync(next, candidates, None)
            if found is None:
                return
            checkpoint, path = found
            try:
                await self.restore_from(checkpoint, path, started=started)
            except _Unusable as exc:
                _log.error("checkpoint_unusable", path=str(path), error=str(exc))
                continue
            return

    async def restore_from(
        self,
        checkpoint: Checkpoint,
        path: Any,
        *,
        share: tuple[int, int] | None = None,
        started: float | None = None,
    ) -> None:
        """Restore ``checkpoint`` (read from ``path``): every state decoded and checked, then
        given to the actors. ``share``: ``(worker, workers)``, restore only the key groups of
        that worker of ``workers`` (the ranges of ``KeyRouter(shards=workers)``) and its share
        of the writers' counters (every ``workers``-th, from ``worker``): what a worker
        process of a runtime with ``workers`` takes of a checkpoint.

        Raises:
            CheckpointError: the checkpoint was taken with other ``key_groups`` or another
                feature set, or its state does not decode or check (then no actor was given
                any).
        """
        started = time.perf_counter() if started is None else started
        plan = self._match(checkpoint, path)
        try:
            decoded = await anyio.to_thread.run_sync(self._decode, checkpoint, plan, path, share)
        except CheckpointError as exc:
            raise _Unusable(str(exc)) from None
        await self._apply(checkpoint, path, plan, decoded, started)

    def _match(
        self, checkpoint: Checkpoint, path: Any
    ) -> list[tuple[Group | JoinGroup, ActorState]]:
        """Each state of ``checkpoint`` with the group or join of the runtime it restores;
        the states of groups registered at run time are kept pending.

        Raises:
            CheckpointError: the checkpoint was taken with other ``key_groups`` or another
                feature set.
        """
        if checkpoint.key_groups != self._router.key_groups:
            raise CheckpointError(
                f"{path}: taken with key_groups={checkpoint.key_groups}, but the runtime has "
                f"key_groups={self._router.key_groups}: key groups are the unit of rescaling "
                "and cannot change"
            )
        every: list[Group | JoinGroup] = [*self._topology.groups, *self._topology.joins]
        targets = {signature(target): target for target in every}
        plan: list[tuple[Group | JoinGroup, ActorState]] = []
        pending: dict[str, ActorState] = {}
        for state in checkpoint.actors:
            target = targets.pop(state.signature, None)
            if target is None:
                if state.kind == "join":
                    raise CheckpointError(
                        f"{path}: holds the join {state.name!r}, which the feature set does not "
                        "have as it was: a join's spec cannot change across a restore"
                    )
                # registered at run time: ``register`` of the same features restores it
                pending[state.signature] = state
                continue
            expected = "join" if isinstance(target, JoinGroup) else "features"
            if state.kind != expected:
                raise CheckpointError(f"{path}: the state of {state.name!r} is not of a {expected}")
            plan.append((target, state))
        if targets:
            # groups of the feature set that the checkpoint does not hold: a changed spec
            missing = [target.name for target in targets.values()]
            raise CheckpointError(
                f"{path}: holds no state for {', '.join(missing)}: the feature set changed since "
                "the checkpoint (a feature added, removed or changed). Restore with the feature "
                "set it was taken with, or start from an empty directory and replay history"
            )
        for key, state in pending.items():
            self._pending[key] = state
            _log.warning(
                "checkpoint_state_pending",
                group=state.name,
                detail="features registered after start: register them again to restore",
            )
        return plan

    def _decode(
        self,
        checkpoint: Checkpoint,
        plan: list[tuple[Group | JoinGroup, ActorState]],
        path: Any,
        share: tuple[int, int] | None = None,
    ) -> list[tuple[list[list[Any]], list[list[dict[str, Any]]]]]:
        """Decode and check every state of ``plan`` before any actor is given any: per
        target, its key groups by shard of the runtime now, and its actors' counters by
        shard. (Run in a worker thread: the event loop stays free meanwhile.)

        Raises:
            CheckpointError: naming the group and what is wrong.
        """
        decoded = []
        for target, state in plan:
            try:
                decoded.append(self._decode_target(target, state, share))
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: the state of {target.name}: {exc}") from None
        return decoded

    def _decode_target(
        self, target: Group | JoinGroup, state: ActorState, share: tuple[int, int] | None = None
    ) -> tuple[list[list[Any]], list[list[dict[str, Any]]]]:
        """One target's state decoded and checked: its key groups by shard now, and its
        actors' counters by shard (of ``share``, as :meth:`restore_from` says, alone).

        Raises:
            CheckpointError: what is wrong.
        """
        codec = state_codec()
        actor: Any
        engine: Any
        if isinstance(target, JoinGroup):
            actor, engine = JoinShard, None
        elif target.compiled is not None:
            layout = list(target.compiled.state_type.__slots__)  # type: ignore[attr-defined]
            if layout != state.layout:
                raise CheckpointError("it has another layout in this version")
            actor, engine = GroupShard, target.compiled
        else:
            actor, engine = WindowShard, target.engine
        check_entry, check_extra = actor.check_entry, actor.check_extra
        key_groups = self._router.key_groups
        key_group = self._router.key_group
        shards = self._topology.shards
        shard_of_group = self._router.shard_of_group
        owner = None if share is None else KeyRouter(shards=share[1], key_groups=key_groups)
        by_shard: list[list[Any]] = [[] for _ in range(shards)]
        for group, blob in state.groups.items():
            if not 0 <= group < key_groups:
                raise CheckpointError(f"key group {group} is not one of the {key_groups}")
            if owner is not None and share is not None and owner.shard_of_group(group) != share[0]:
                continue  # another worker's
            items = codec.decode(blob)
            if type(items) is not list:
                raise CheckpointError(f"key group {group} is not a list of keys")
            for item in items:
                if type(item) is not tuple or len(item) != 2:
                    raise CheckpointError(f"key group {group} holds an item that is not a key's")
                key, entry = item
                if type(key) not in _KEY_TYPES or key_group(key) != group:
                    raise CheckpointError(
                        f"key group {group} holds a key that is not one of its own: {_brief(key)}"
                    )
                problem = check_entry(engine, entry)
                if problem is not None:
                    raise CheckpointError(f"key {_brief(key)}: {problem}")
            by_shard[shard_of_group(group)].append(items)
        extras: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
        blobs = state.extras if share is None else state.extras[share[0] :: share[1]]
        for index, blob in enumerate(blobs):
            extra = codec.decode(blob)
            problem = check_extra(extra)
            if problem is not None:
                raise CheckpointError(problem)
            # the counters of the checkpoint's actors spread over the actors now (their totals
            # are kept)
            extras[index % shards].append(extra)
        return by_shard, extras

    async def _apply(
        self,
        checkpoint: Checkpoint,
        path: Any,
        plan: list[tuple[Group | JoinGroup, ActorState]],
        decoded: list[tuple[list[list[Any]], list[list[dict[str, Any]]]]],
        started: float,
    ) -> None:
        """Give the actors the state decoded and checked, the caches their rows, and take
        the checkpoint's position."""
        keys = 0
        for (target, state), (by_shard, extras) in zip(plan, decoded, strict=True):
            for shard, ref in enumerate(target.refs):
                await ref.ask(RestoreSnapshot(by_shard[shard], extras[shard]), timeout=None)
            keys += state.keys
        codec = state_codec()
        for name, blob in checkpoint.caches.items():
            source = self._topology.sources.get(name)
            if source is not None:
                try:
                    source.cache.load(codec.decode(blob))
                except Exception as exc:  # a cache is a warm start only: it starts cold
                    _log.error(
                        "checkpoint_cache_unusable",
                        source=name,
                        path=str(path),
                        error=f"{type(exc).__name__}: {exc}",
                    )
        self._progress.position = checkpoint.position
        self._progress.offset = checkpoint.offset
        if checkpoint.ingested is not None and checkpoint.rejected is not None:
            # carried on by statistics; the ingest's own counts stay this run's (a replay's)
            self._ingest.ingested_before = checkpoint.ingested
            self._ingest.rejected_before = checkpoint.rejected
        self._sequence = checkpoint.sequence
        self.restored = CheckpointInfo(
            sequence=checkpoint.sequence,
            path=str(path),
            position=checkpoint.position,
            offset=checkpoint.offset,
            keys=keys,
            size_bytes=path.stat().st_size,
            created_at=checkpoint.created_at,
            pause_ms=0.0,
            duration_ms=(time.perf_counter() - started) * 1000,
            shards=checkpoint.shards,
        )
        _log.info(
            "checkpoint_restored",
            sequence=checkpoint.sequence,
            position=checkpoint.position,
            keys=keys,
            shards_then=checkpoint.shards,
            shards_now=self._topology.shards,
            duration_ms=round(self.restored.duration_ms, 1),
        )

    async def _restore_target(self, target: Group | JoinGroup, state: ActorState) -> None:
        """Give each shard actor of ``target`` the key groups it owns now, and the counters of
        the checkpoint's actors spread over them (so their totals are kept): for a group
        registered at run time (:meth:`adopt`).

        Raises:
            CheckpointError: the state does not decode or check; no actor was given any.
        """
        by_shard, extras = await anyio.to_thread.run_sync(self._decode_target, target, state)
        for shard, ref in enumerate(target.refs):
            await ref.ask(RestoreSnapshot(by_shard[shard], extras[shard]), timeout=None)


class _Unusable(CheckpointError):
    """A checkpoint whose state does not decode or check: the one before it may."""


#: the types of keys ingest accepts
_KEY_TYPES = frozenset({str, int, bytes})


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
