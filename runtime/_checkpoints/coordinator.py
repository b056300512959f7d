"""Taking and restoring checkpoints of a running runtime.

A checkpoint is consistent: ingest waits at a batch boundary (the :class:`Progress` gate) while
every event accepted before is applied and each actor's state is captured, with the input
position it covers; the file is written after, while ingest goes on. On start, the newest
readable checkpoint of the directory is restored, its key groups spread over the shards the
runtime has now.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from actors import KeyRouter, get_logger

from .._exceptions import CheckpointError, ConfigError
from .._ingest.router import Ingest
from .._joins.shard import JoinShard
from .._keyed.kernel import CompiledGroup, compile_group
from .._messages import RestoreSnapshot, ShardSnapshot, TakeSnapshot
from .._shard import GroupShard
from .._spec.feature_set import Feature, encode_spec, spec_builtins
from .._topology import Group, JoinGroup, Topology, signature
from .._windows.engine import KeyWindows, WindowEngine, _Panes, _Sessions
from .._windows.patterns import PatternState
from .._windows.shard import WindowShard
from .._windows.state import Needs, SlidingState
from .codec import state_codec
from .guards import CheckpointGuards
from .store import (
    ActorState,
    Checkpoint,
    CheckpointConfig,
    CheckpointInfo,
    CheckpointStore,
    restored_info,
)

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

    @asynccontextmanager
    async def closed(self) -> AsyncIterator[None]:
        """Close the gate (ingest waits at it), wait for the ``ingest_many`` calls with an
        offset under way to end, and open the gate when the block ends: the input stands
        still at one position for the block (a checkpoint's capture, a backfill)."""
        gate = anyio.Event()
        self.gate = gate
        try:
            while self.offset_calls:
                self.offset_calls_done = anyio.Event()
                await self.offset_calls_done.wait()
            yield
        finally:
            self.gate = None
            gate.set()

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
        #: ``(worker, workers)`` of the restore in a worker process, else None
        self._share: tuple[int, int] | None = None
        #: keys the snapshot under way left out (their state could not be encoded)
        self._left_out = 0
        #: fills the features a restore adds (``FeatureRuntime(backfill=)``): given their
        #: names and the checkpoint's input position, the state of a runtime of those features
        #: that read the history up to that position, as a checkpoint's feature groups
        self.backfill: Callable[[list[str], int], Awaitable[list[ActorState]]] | None = None

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

    async def adopt(self, group: Group) -> bool:
        """Give a group just registered its state from the restored checkpoint, if that held
        the same features; returns whether it did."""
        pending = self._pending.pop(signature(group), None)
        if pending is not None:
            try:
                await self._restore_target(group, pending)
            except CheckpointError as exc:
                # the rest of the checkpoint is restored already: this group starts empty
                _log.error("checkpoint_state_unusable", group=group.name, error=str(exc))
                return False
            return True
        return False

    async def fill(
        self,
        groups: list[Group],
        backfill: Callable[[list[str], int], Awaitable[list[ActorState]]],
    ) -> None:
        """Backfill groups just registered (``register(backfill=)``): while ingest waits (the
        :class:`Progress` gate), once every event accepted before is applied, ``backfill``
        runs the groups' features over the history up to the input position, and each group
        takes that state.

        Raises:
            CheckpointError: the backfill's state does not decode or check.
        """
        progress = self._progress
        async with progress.closed():
            await self._topology.settle()
            names = [name for group in groups for name in group.names]
            filled = await backfill(names, progress.position)
            plan, _ = _evolve(groups, [], "backfill", filled)
            for planned in plan:
                by_shard, extras, _ = await anyio.to_thread.run_sync(self._decode_target, planned)
                for shard, ref in enumerate(planned.target.refs):
                    await ref.ask(RestoreSnapshot(by_shard[shard], extras[shard]), timeout=None)
            _log.info("features_backfilled", features=names, position=progress.position)

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
        async with progress.closed():
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
        checkpoint = Checkpoint(
            feature_set=self._topology.feature_set.name,
            key=self._topology.feature_set.key,
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
                _log.exception(
                    "checkpoint_failed",
                    directory=None if self.store is None else str(self.store.directory),
                )

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
            registered = isinstance(target, Group) and not self._topology.started_with.issuperset(
                target.names
            )
            states.append(
                ActorState(
                    kind,
                    target.name,
                    signature(target),
                    layout,
                    groups,
                    extras,
                    keys,
                    registered=registered,
                )
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
        starting empty instead would drop the state silently; so is a directory whose every
        checkpoint was skipped so (:meth:`CheckpointStore.none_usable`)."""
        assert self.store is not None
        started = time.perf_counter()
        candidates = self.store.readable()
        while True:
            # each file is read in a worker thread, as it is decoded: no file I/O on the loop
            found = await anyio.to_thread.run_sync(next, candidates, None)
            if found is None:
                refused = await anyio.to_thread.run_sync(self.store.none_usable)
                if refused is not None:
                    raise refused
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
        self._share = share
        filled: list[ActorState] = []
        backfill = self.backfill if share is None else None
        added = self._added(checkpoint) if backfill is not None else []
        if backfill is not None and added:
            filled = await backfill(added, checkpoint.position)
            _log.info("checkpoint_backfilled", features=added, position=checkpoint.position)
        rebuilt: frozenset[str] = frozenset()
        while True:
            try:
                plan = self._match(checkpoint, path, filled, rebuilt)
                break
            except _SharedWindowState as exc:
                # kept features whose window accumulators lack what added ones sharing them
                # need: with a backfill, they are backfilled with them (from the same input
                # up to the same position, their state is the one the checkpoint holds)
                if backfill is None:
                    raise CheckpointError(str(exc)) from None
                if exc.kept <= rebuilt:  # the backfill did not cover them either
                    raise CheckpointError(f"{exc} (even with the backfill given)") from None
                rebuilt |= exc.kept
                names = [*added, *sorted(rebuilt)]
                filled = await backfill(names, checkpoint.position)
                # their values are now the backfill's: equal to the checkpoint's only if the
                # history given holds the whole input up to its position
                _log.warning(
                    "checkpoint_kept_features_rebuilt",
                    features=sorted(rebuilt),
                    position=checkpoint.position,
                    detail="kept features sharing window state with added ones were backfilled "
                    "with them: the history given must hold the whole input up to the position",
                )
        try:
            decoded = await anyio.to_thread.run_sync(self._decode, checkpoint, plan, path, share)
        except CheckpointError as exc:
            raise _Unusable(str(exc)) from None
        await self._apply(checkpoint, path, plan, decoded, started)

    def _own_share(self, state: ActorState) -> ActorState:
        """``state`` as this process holds it pending: a worker's, its own key groups and its
        share of the writers' counters (as :meth:`restore_from` takes them), so that each
        worker's part of the next checkpoint carries its share alone (every worker carrying the
        whole state made two parts hold one key group: no later checkpoint could be read)."""
        share = self._share
        if share is None:
            return state
        worker, workers = share
        owner = KeyRouter(shards=workers, key_groups=self._router.key_groups)
        return msgspec.structs.replace(
            state,
            groups={g: b for g, b in state.groups.items() if owner.shard_of_group(g) == worker},
            extras=state.extras[worker::workers],
        )

    def _added(self, checkpoint: Checkpoint) -> list[str]:
        """The features of the runtime's groups that no feature group of ``checkpoint``
        holds: what a restore adds."""
        held: set[str] = set()
        for state in checkpoint.actors:
            if state.kind == "features":
                held.update(feature.name for feature in _features_of(state)[2])
        return [name for group in self._topology.groups for name in group.names if name not in held]

    def _match(
        self,
        checkpoint: Checkpoint,
        path: Any,
        filled: list[ActorState] | None = None,
        rebuilt: frozenset[str] = frozenset(),
    ) -> list[_Target]:
        """Each feature group and join of the runtime with the states of ``checkpoint`` it
        restores from: a group whose features are those of a state takes it as it is; a group
        with features added or removed since (the feature set evolved) takes its kept
        features' state from the groups that held them (:class:`_KeyedEvolution`,
        :class:`_WindowEvolution`), its added features start empty, the removed ones are
        dropped. The states of groups registered at run time whose features the feature set
        does not have are kept pending (``register`` of the same features restores them).

        Raises:
            CheckpointError: the checkpoint was taken with other ``key_groups``, by another
                feature set or with another key field; a feature has another definition
                (naming it and the difference); a join changed; a kept feature's window state
                cannot be carried over.

        ``filled``: feature groups of a backfill of the added features (:attr:`backfill`),
        which they take their state from; and of the kept features in ``rebuilt``, which take
        theirs from it too.
        """
        if checkpoint.key_groups != self._router.key_groups:
            raise CheckpointError(
                f"{path}: taken with key_groups={checkpoint.key_groups}, but the runtime has "
                f"key_groups={self._router.key_groups}: key groups are the unit of rescaling "
                "and cannot change"
            )
        name = self._topology.feature_set.name
        if checkpoint.feature_set != name:
            raise CheckpointError(
                f"{path}: taken by the feature set {checkpoint.feature_set!r}, not {name!r}: "
                "restore with that feature set, or start from an empty directory"
            )
        key = self._topology.feature_set.key
        if checkpoint.key is not None and checkpoint.key != key:
            raise CheckpointError(
                f"{path}: taken with the key field {checkpoint.key!r}, not {key!r}: state is "
                "kept under each key's value, which the other field's values would take over; "
                f"restore with key={checkpoint.key!r}, or start from an empty directory"
            )
        every: list[Group | JoinGroup] = [*self._topology.groups, *self._topology.joins]
        targets = {signature(target): target for target in every}
        plan: list[_Target] = []
        others: list[ActorState] = []
        for state in checkpoint.actors:
            target = targets.pop(state.signature, None)
            if target is None:
                if state.kind == "join":
                    raise CheckpointError(
                        f"{path}: holds the join {state.name!r}, which the feature set does not "
                        "have as it was: a join's spec cannot change across a restore"
                    )
                others.append(state)
                continue
            expected = "join" if isinstance(target, JoinGroup) else "features"
            if state.kind != expected:
                raise CheckpointError(f"{path}: the state of {state.name!r} is not of a {expected}")
            plan.append(_Target(target, [state]))
        changed = [target for target in targets.values() if isinstance(target, Group)]
        evolved, pending = _evolve(changed, others, path, filled or [], rebuilt)
        plan += evolved
        for state in pending:
            names = sorted(feature.name for feature in _features_of(state)[2])
            if state.registered is False:
                # of the feature set the writer started with, and not of this one: removed
                _log.info("checkpoint_features_removed", group=state.name, features=names)
                continue
            self._pending[state.signature] = self._own_share(state)
            _log.warning(
                "checkpoint_state_pending",
                group=state.name,
                features=names,
                detail=(
                    "features registered at run time (rt.register) and not in the feature set: "
                    "register them again to restore their state, kept in checkpoints until then"
                    if state.registered
                    else "features not in the feature set (a checkpoint of an older version "
                    "does not say whether they were registered at run time or removed): "
                    "register them again to restore their state, kept in checkpoints until then"
                ),
            )
        for planned in plan:
            evolution = planned.evolution
            if evolution is not None and isinstance(planned.target, Group):
                _log.info(
                    "checkpoint_features_evolved",
                    group=planned.target.name,
                    kept=sorted(n for n in planned.target.names if n not in evolution.added),
                    added=sorted(evolution.added),
                    backfilled=sorted(evolution.kept & evolution.added),
                )
        return plan

    def _decode(
        self,
        checkpoint: Checkpoint,
        plan: list[_Target],
        path: Any,
        share: tuple[int, int] | None = None,
    ) -> list[tuple[list[list[Any]], list[list[dict[str, Any]]], int]]:
        """Decode and check every state of ``plan`` before any actor is given any: per
        target, its key groups by shard of the runtime now, its actors' counters by shard,
        and its keys. (Run in a worker thread: the event loop stays free meanwhile.)

        Raises:
            CheckpointError: naming the group and what is wrong.
        """
        decoded = []
        for target in plan:
            try:
                decoded.append(self._decode_target(target, share))
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: the state of {target.target.name}: {exc}") from None
        return decoded

    def _decode_target(
        self, planned: _Target, share: tuple[int, int] | None = None
    ) -> tuple[list[list[Any]], list[list[dict[str, Any]]], int]:
        """One target's state decoded and checked: its key groups by shard now, its actors'
        counters by shard (of ``share``, as :meth:`restore_from` says, alone), and its keys.
        An evolved group's entries are checked against the groups that wrote them, then
        made into its own.

        Raises:
            CheckpointError: what is wrong.
        """
        target, evolution = planned.target, planned.evolution
        codec = state_codec()
        actor: Any
        engines: list[Any]
        if isinstance(target, JoinGroup):
            actor, engines = JoinShard, [None]
        elif evolution is not None:
            actor = GroupShard if target.compiled is not None else WindowShard
            engines = evolution.engines
        elif target.compiled is not None:
            layout = list(target.compiled.state_type.__slots__)  # type: ignore[attr-defined]
            if layout != planned.states[0].layout:
                raise CheckpointError("it has another layout in this version")
            actor, engines = GroupShard, [target.compiled]
        else:
            actor, engines = WindowShard, [target.engine]
        check_entry, check_extra = actor.check_entry, actor.check_extra
        key_groups = self._router.key_groups
        key_group = self._router.key_group
        shards = self._topology.shards
        shard_of_group = self._router.shard_of_group
        owner = None if share is None else KeyRouter(shards=share[1], key_groups=key_groups)
        sources = len(planned.states)
        # key group -> key -> its entry in each state (None where a state has none)
        found: dict[int, dict[Any, list[Any]]] = {}
        for index, (state, engine) in enumerate(zip(planned.states, engines, strict=True)):
            for group, blob in state.groups.items():
                if not 0 <= group < key_groups:
                    raise CheckpointError(f"key group {group} is not one of the {key_groups}")
                if (
                    owner is not None
                    and share is not None
                    and owner.shard_of_group(group) != share[0]
                ):
                    continue  # another worker's
                items = codec.decode(blob)
                if type(items) is not list:
                    raise CheckpointError(f"key group {group} is not a list of keys")
                keys = found.setdefault(group, {})
                for item in items:
                    if type(item) is not tuple or len(item) != 2:
                        raise CheckpointError(
                            f"key group {group} holds an item that is not a key's"
                        )
                    key, entry = item
                    if type(key) not in _KEY_TYPES or key_group(key) != group:
                        raise CheckpointError(
                            f"key group {group} holds a key that is not one of its own: "
                            f"{_brief(key)}"
                        )
                    problem = check_entry(engine, entry)
                    if problem is not None:
                        raise CheckpointError(f"key {_brief(key)}: {problem}")
                    entries = keys.get(key)
                    if entries is None:
                        entries = keys[key] = [None] * sources
                    entries[index] = entry
        by_shard: list[list[Any]] = [[] for _ in range(shards)]
        count = 0
        for group, keys in found.items():
            if evolution is None:
                items = [(key, entries[0]) for key, entries in keys.items()]
            else:
                items = [(key, evolution.entry(entries)) for key, entries in keys.items()]
            count += len(items)
            by_shard[shard_of_group(group)].append(items)
        extras: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
        # an evolved group's counters are those of the first group it takes state from
        state = planned.states[0]
        blobs = state.extras if share is None else state.extras[share[0] :: share[1]]
        for index, blob in enumerate(blobs):
            extra = codec.decode(blob)
            problem = check_extra(extra)
            if problem is not None:
                raise CheckpointError(problem)
            # the counters of the checkpoint's actors spread over the actors now (their totals
            # are kept)
            extras[index % shards].append(extra)
        return by_shard, extras, count

    async def _apply(
        self,
        checkpoint: Checkpoint,
        path: Any,
        plan: list[_Target],
        decoded: list[tuple[list[list[Any]], list[list[dict[str, Any]]], int]],
        started: float,
    ) -> None:
        """Give the actors the state decoded and checked, the caches their rows, and take
        the checkpoint's position."""
        keys = 0
        for planned, (by_shard, extras, count) in zip(plan, decoded, strict=True):
            for shard, ref in enumerate(planned.target.refs):
                await ref.ask(RestoreSnapshot(by_shard[shard], extras[shard]), timeout=None)
            keys += count
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
        self.restored = restored_info(checkpoint, path, keys, started)
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
        planned = _Target(target, [state])
        by_shard, extras, _ = await anyio.to_thread.run_sync(self._decode_target, planned)
        for shard, ref in enumerate(target.refs):
            await ref.ask(RestoreSnapshot(by_shard[shard], extras[shard]), timeout=None)


class _SharedWindowState(CheckpointError):
    """Kept window features (``kept``) share a tumbling, hopping or session buffer with added
    ones that need statistics its accumulators do not keep: a backfill of them all can
    rebuild it."""

    def __init__(self, kept: frozenset[str], message: str) -> None:
        super().__init__(message)
        self.kept = kept


class _Unusable(CheckpointError):
    """A checkpoint whose state does not decode or check: the one before it may."""


#: the types of keys ingest accepts
_KEY_TYPES = frozenset({str, int, bytes})


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- evolution: a checkpoint restored into a feature set with features added or removed ----------
class _Target:
    """A group or join of the runtime, the checkpoint's states it restores from, and how its
    entries are made from theirs when its features changed (None: the one state as it is)."""

    __slots__ = ("evolution", "states", "target")

    def __init__(
        self,
        target: Group | JoinGroup,
        states: list[ActorState],
        evolution: _KeyedEvolution | _WindowEvolution | None = None,
    ) -> None:
        self.target = target
        self.states = states
        self.evolution = evolution


def _features_of(state: ActorState) -> tuple[str, str, list[Any]]:
    """The kind (``keyed`` or ``windowed``), stream and feature specs of a feature group's
    state, read from its signature (which holds them: see ``_topology.signature``)."""
    kind, _, rest = state.signature.partition(":")
    at = rest.find(":[")
    if kind not in ("keyed", "windowed") or at < 0:
        raise CheckpointError(f"the state of {state.name!r} has a signature of no feature group")
    try:
        features = msgspec.json.decode(rest[at + 1 :], type=list[Feature])
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"the features of {state.name!r} cannot be read by this version: {exc}"
        ) from None
    return kind, rest[:at], features


def _moved(old: str, new: str) -> str:
    """How a feature's group moved between streams, in the user's words: an enriched stream
    (``"@<stream>"``) is the stream after its lookups."""

    def said(stream: str) -> str:
        if stream.startswith("@"):
            return f"stream {stream[1:]!r} after its lookups"
        return f"stream {stream!r}"

    moved = f"{said(old)} -> {said(new)}"
    if old.lstrip("@") == new.lstrip("@"):
        moved += " (wait_for_lookups, the lookup fields it reads, or the stream's lookups changed)"
    return moved


def _difference(old: Any, new: Any) -> str:
    """What differs between two feature specs, as ``field old -> new`` (``window.size '1h' ->
    '2h'``), ``; `` between fields."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for name in [*a, *(n for n in b if n not in a)]:
                if a.get(name) != b.get(name):
                    walk(a.get(name), b.get(name), f"{prefix}{name}.")
            return
        out.append(f"{prefix[:-1] or 'spec'} {a!r} -> {b!r}")

    walk(spec_builtins(old), spec_builtins(new), "")
    return "; ".join(out) or "its spec"


def _evolve(
    groups: list[Group],
    states: list[ActorState],
    path: Any,
    filled: list[ActorState],
    rebuilt: frozenset[str] = frozenset(),
) -> tuple[list[_Target], list[ActorState]]:
    """The groups of the runtime that no state of the checkpoint matches as they are, each
    with the states that hold its kept features and how to make its entries from theirs; and
    the states none of whose features the runtime has (pending: ``register`` may add them).
    An added feature takes its state from the states of a backfill, ``filled``, if there, and
    so does a kept feature of ``rebuilt`` (backfilled with the added ones it shares window
    accumulators with).

    Raises:
        CheckpointError: a feature of the runtime has another definition in the checkpoint
            (each such one named, with the difference); a kept feature's window state cannot
            be carried over.
    """
    # feature name -> (its state, the state's kind and stream, its spec)
    held: dict[str, tuple[int, str, str, Any]] = {}
    parsed: list[tuple[str, str, list[Any]]] = []
    for index, state in enumerate(states):
        kind, stream, features = _features_of(state)
        parsed.append((kind, stream, features))
        for feature in features:
            held[feature.name] = (index, kind, stream, feature)
    # feature name -> its backfilled state, for the features the checkpoint does not hold
    backfilled: dict[str, int] = {}
    every = [*states, *filled]
    for index, state in enumerate(filled, start=len(states)):
        kind, stream, features = _features_of(state)
        parsed.append((kind, stream, features))
        for feature in features:
            backfilled.setdefault(feature.name, index)
    changed: list[str] = []
    used: set[int] = set()
    plan: list[_Target] = []
    for group in groups:
        kind = "keyed" if group.compiled is not None else "windowed"
        kept: dict[int, set[str]] = {}
        for feature in group.features:
            found = held.get(feature.name)
            if found is None:
                if feature.name in backfilled:
                    kept.setdefault(backfilled[feature.name], set()).add(feature.name)
                continue  # added
            index, old_kind, old_stream, old = found
            if encode_spec(old) != encode_spec(feature):
                changed.append(f"feature {feature.name!r}: {_difference(old, feature)}")
            elif old_stream != group.stream:
                changed.append(f"feature {feature.name!r}: {_moved(old_stream, group.stream)}")
            elif feature.name in rebuilt and feature.name in backfilled:
                kept.setdefault(backfilled[feature.name], set()).add(feature.name)
                used.add(index)  # the rest of its state is the checkpoint's
            elif old_kind == kind:
                kept.setdefault(index, set()).add(feature.name)
        used.update(kept)
        if not kept:
            continue  # only added features: the group starts empty
        order = sorted(kept)  # the checkpoint's states first
        sources = [every[i] for i in order]
        specs = [parsed[i][2] for i in order]
        names = [frozenset(kept[i]) for i in order]
        evolution: _KeyedEvolution | _WindowEvolution
        if group.compiled is not None:
            evolution = _KeyedEvolution(group.compiled, specs, names, sources)
        else:
            assert group.engine is not None
            evolution = _WindowEvolution(group.engine, specs, names)
        evolution.added = frozenset(n for n in group.names if n not in held)
        plan.append(_Target(group, sources, evolution))
    if changed:
        raise CheckpointError(
            f"{path}: features changed since the checkpoint: {'; '.join(changed)}. A feature "
            "keeps its definition across a restore: give the new one another name (it starts "
            "empty, or backfilled), or restore with the old definition"
        )
    present = {name for group in groups for name in group.names}
    pending = [
        state
        for index, state in enumerate(states)  # not a backfill's
        if index not in used and not any(f.name in present for f in parsed[index][2])
    ]
    return plan, pending


class _KeyedEvolution:
    """How a keyed group's per-key slots are made from the entries of the checkpoint's keyed
    groups that held its kept features: each kept feature's slots copied from where the old
    group kept them, the key's latest event time the latest of them, the rest (the added
    features') their initial values.

    An added feature whose running state is shared with a kept one (``mean`` of a field reuses
    ``sum``'s total) takes that history where all of its slots are shared, and is refused
    where only some are: its value would mix history with nothing.
    """

    def __init__(
        self,
        new: CompiledGroup,
        features: list[list[Any]],
        kept: list[frozenset[str]],
        states: list[ActorState],
    ) -> None:
        self.kept: frozenset[str] = frozenset().union(*kept)
        #: the features the checkpoint did not hold (backfilled where in ``kept``)
        self.added: frozenset[str] = frozenset()
        self._new = new
        self._slots: tuple[str, ...] = new.state_type.__slots__  # type: ignore[attr-defined]
        self.engines: list[CompiledGroup] = []
        #: feature name -> (its source, the old slots, its old slot of each role)
        provided: dict[str, tuple[int, list[str], dict[str, str]]] = {}
        self._times: list[int] = []
        for index, (specs, names, state) in enumerate(zip(features, kept, states, strict=True)):
            try:
                old = compile_group(specs, group=state.name)
            except Exception as exc:
                raise CheckpointError(
                    f"the features of {state.name!r} do not compile in this version: {exc}"
                ) from None
            old_slots = list(old.state_type.__slots__)  # type: ignore[attr-defined]
            if old_slots != state.layout:
                raise CheckpointError(f"the state of {state.name!r} has another layout")
            self.engines.append(old)
            self._times.append(old_slots.index("t_"))
            for position, name in enumerate(old.names):
                if name in names:
                    provided[name] = (index, old_slots, old.feature_slots[position])
        found: dict[str, tuple[int, int]] = {}
        owner: dict[str, str] = {}
        # the checkpoint's sources first: a slot shared with a backfilled feature keeps theirs
        ranked = sorted(enumerate(new.names), key=lambda item: provided.get(item[1], (0,))[0])
        for position, name in ranked:
            source = provided.get(name)
            if source is None:
                continue
            index, old_slots, old_roles = source
            for role, slot in new.feature_slots[position].items():
                if slot not in found:
                    found[slot] = (index, old_slots.index(old_roles[role]))
                    owner[slot] = name
        for position, name in enumerate(new.names):
            roles = new.feature_slots[position]
            if name in provided or not roles:
                continue
            shared = [slot for slot in roles.values() if slot in found]
            if shared and len(shared) < len(roles):
                raise CheckpointError(
                    f"the added feature {name!r} shares part of its running state with the "
                    f"kept feature {owner[shared[0]]!r}: it cannot start empty. Backfill it "
                    "from history, or give it another field or filter"
                )
        self._plan = [found.get(slot) for slot in self._slots]

    def entry(self, entries: list[Any]) -> Any:
        """A key's entry (its slots, when last seen) from its entries in the sources."""
        state = self._new.new_state()
        values = [getattr(state, slot) for slot in self._slots]
        latest = -1
        seen = None
        for index, entry in enumerate(entries):
            if entry is None:
                continue
            old, at = entry
            latest = max(latest, old[self._times[index]])
            if at is not None and (seen is None or at > seen):
                seen = at
        for slot, source in enumerate(self._plan):
            if source is not None:
                entry = entries[source[0]]
                if entry is not None:
                    values[slot] = entry[0][source[1]]
        values[self._slots.index("t_")] = latest
        return values, seen


def _buffer_key(buffer: Any) -> tuple[Any, ...]:
    """What makes two window buffers the same input: window, field, filter, kind of value."""
    return (
        buffer.kind,
        buffer.size,
        buffer.hop,
        buffer.gap,
        buffer.field,
        msgspec.json.encode(buffer.where),
        # a custom feature's buffer takes numbers as its aggregate says, which a checkpoint's
        # spec (read back as data, its class not imported) cannot tell: its definition is
        # the same (checked by name), and so is the aggregate's choice
        buffer.numeric if buffer.needs.custom is None else None,
        buffer.needs.sketch,
    )


def _covers(old: Needs, new: Needs) -> bool:
    """Whether a tumbling, hopping or session buffer's accumulators keep all ``new`` needs."""
    flags = ("moments", "extremes", "ends", "sorted", "frequent", "distinct")
    return old.sketch == new.sketch and all(
        getattr(old, flag) or not getattr(new, flag) for flag in flags
    )


class _WindowEvolution:
    """How a window group's per-key windows are made from the entries of the checkpoint's
    window groups that held its kept features.

    A sliding buffer holds the events of its window: a kept one is carried over, rebuilt from
    its events where the features sharing it need other statistics now (an added ``max`` of
    the same field and window starts with the window's events). A tumbling, hopping or session
    frame holds per window one accumulator per buffer: a kept frame is carried over, its added
    buffers empty in every window and its removed ones dropped; a kept buffer whose features
    now need a statistic its accumulators do not keep is refused. Sequence features are kept
    by name; the key's clocks are the latest of its sources'.
    """

    def __init__(
        self, new: WindowEngine, features: list[list[Any]], kept: list[frozenset[str]]
    ) -> None:
        self.kept: frozenset[str] = frozenset().union(*kept)
        #: the features the checkpoint did not hold (backfilled where in ``kept``)
        self.added: frozenset[str] = frozenset()
        self._new = new
        self.engines: list[WindowEngine] = [WindowEngine(specs) for specs in features]
        #: feature name -> (its source, its index in that source's engine)
        source_of: dict[str, tuple[int, int]] = {}
        for index, (engine, held) in enumerate(zip(self.engines, kept, strict=True)):
            for position, name in enumerate(engine.names):
                if name in held:
                    source_of[name] = (index, position)
        self._source_of = source_of
        names = new.names

        def origin(members: list[int]) -> tuple[int, Any] | None:
            """The source and old buffer of the kept features of ``members`` (of one buffer
            now): the checkpoint's before a backfill's."""
            found = None
            for i in members:
                source = source_of.get(names[i])
                if source is None:
                    continue
                engine = self.engines[source[0]]
                if found is None or source[0] < found[0]:
                    found = (source[0], engine.buffers[engine._buffer_of[source[1]]])
            return found

        #: (slot now, source, old slot, the buffer now where its statistics changed)
        self._sliding: list[tuple[int, int, int, Any]] = []
        for buffer in new.sliding:
            found = origin(buffer.features)
            if found is None:
                continue
            source, old = found
            rebuild = None if old.needs == buffer.needs else buffer
            self._sliding.append((buffer.slot, source, old.slot, rebuild))
        #: (frame now, per buffer now: (source, old frame, position in it) or None)
        self._frames: list[tuple[Any, list[tuple[int, Any, int] | None]]] = []
        for frame in new.frames:
            parts: list[tuple[int, Any, int] | None] = []
            for buffer in frame.buffers:
                found = origin(buffer.features)
                if found is None:
                    parts.append(None)
                    continue
                source, old = found
                if _buffer_key(old) != _buffer_key(buffer) or not _covers(old.needs, buffer.needs):
                    members = [names[i] for i in buffer.features]
                    keeping = [n for n in members if source_of.get(n, (len(kept),))[0] == source]
                    other = [n for n in members if n not in keeping]
                    raise _SharedWindowState(
                        frozenset(keeping),
                        f"the feature {keeping[0]!r} shares its window state with the added "
                        f"feature(s) {', '.join(map(repr, other))}, which need statistics it "
                        "does not keep: backfill them from history (backfill=), or give them "
                        "another field, filter or window",
                    )
                parts.append((source, self.engines[source].frames[old.frame], old.position))
            if any(part is not None for part in parts):
                self._frames.append((frame, parts))
        #: per sequence feature now: (source, its position among the source's) or None
        self._patterns: list[tuple[int, int] | None] = []
        for _, feature in new.sequences:
            held_by = source_of.get(feature.name)
            if held_by is None:
                self._patterns.append(None)
                continue
            engine = self.engines[held_by[0]]
            order = [i for i, _ in engine.sequences]
            self._patterns.append((held_by[0], order.index(held_by[1])))

    def _final_of(self, name: str, entries: list[Any]) -> tuple[int, dict[str, Any]] | None:
        """The newest closed window of feature ``name`` in its own source (a kept feature's
        in the checkpoint, a backfilled one's in the backfill), if it has one."""
        own = self._source_of.get(name)
        if own is None:
            return None
        return _final_of_source(self.engines[own[0]], own[1], entries[own[0]])

    def entry(self, entries: list[Any]) -> Any:
        """A key's windows from its windows in the sources."""
        new = self._new
        present = [entry for entry in entries if entry is not None]
        first = present[0]
        st = KeyWindows(len(new.buffers), max(e.clock for e in present), first.seen)
        st.latest = max(e.latest for e in present)
        st.seen = max(e.seen for e in present)
        st.next_close = min(e.next_close for e in present)
        for slot, source, old_slot, rebuild in self._sliding:
            entry = entries[source]
            if entry is None:
                continue
            state = entry.buffers[old_slot]
            if state is not None and rebuild is not None:
                state = _rebuilt(state, rebuild, new.names)
            st.buffers[slot] = state
        for frame, parts in self._frames:
            # each source's state of the frame (its panes or sessions)
            held: dict[int, Any] = {}
            primary = None
            for part in parts:
                if part is None:
                    continue
                entry = entries[part[0]]
                if entry is None or part[0] in held:
                    continue
                held[part[0]] = entry.buffers[part[1].slot]
                if primary is None:
                    primary = (entry, part[1])
            if primary is None:
                continue
            states = {source: state for source, state in held.items() if state is not None}
            if states:
                st.buffers[frame.slot] = _assembled(states, parts)
            entry, old_frame = primary
            final = None if entry.finals is None else entry.finals.get(old_frame.index)
            if final is not None:
                # the newest closed window's values: each feature's from its own source's
                # (a backfilled feature's from the backfill's), if of the same window
                values: dict[str, Any] = {}
                for i, _ in frame.members:
                    name = new.names[i]
                    found = self._final_of(name, entries)
                    if found is None or found[0] != final[0]:
                        found = final
                    values[name] = found[1].get(name, new.defaults[i])
                if st.finals is None:
                    st.finals = {}
                st.finals[frame.index] = (final[0], values)
        if self._patterns and any(p is not None for p in self._patterns):
            patterns = []
            for pattern in self._patterns:
                entry = None if pattern is None else entries[pattern[0]]
                if pattern is None or entry is None or entry.patterns is None:
                    patterns.append(PatternState())
                else:
                    patterns.append(entry.patterns[pattern[1]])
            st.patterns = patterns
        return st


def _final_of_source(
    engine: WindowEngine, position: int, entry: Any
) -> tuple[int, dict[str, Any]] | None:
    """The newest closed window (its start, its values) of the feature at ``position`` of
    ``engine`` in a key's ``entry`` of that engine's state, if any."""
    if entry is None or entry.finals is None:
        return None
    buffer = engine.buffers[engine._buffer_of[position]]
    found: tuple[int, dict[str, Any]] | None = entry.finals.get(engine.frames[buffer.frame].index)
    return found


def _rebuilt(old: SlidingState, buffer: Any, names: tuple[str, ...]) -> SlidingState:
    """A sliding buffer's events in a state that keeps the statistics ``buffer`` needs now."""
    state = SlidingState(buffer.needs, buffer.numeric)
    for t, v in old.items:
        state.add(t, v)
    if old.scores:
        scored = {names[i] for i in buffer.scores}
        kept = {name: z for name, z in old.scores.items() if name in scored}
        state.scores = kept or None
    return state


def _assembled(states: dict[int, Any], parts: list[tuple[int, Any, int] | None]) -> Any:
    """A frame's panes or sessions now, from its sources' (``states``, by source): per window,
    each buffer's accumulator from the source and place ``parts`` give it (None where it has
    none: the buffer took nothing). The first source's windows lead: its sessions, its closed
    index, its current hopping window."""

    def pick(windows: dict[int, Any]) -> Any:
        out: list[Any] = []
        for part in parts:
            if part is None:
                out.append(None)
                continue
            accumulators = windows.get(part[0])
            out.append(None if accumulators is None else accumulators[part[2]])
        return out

    lead = states[min(states)]
    if isinstance(lead, _Panes):
        panes = _Panes(lead.closed)
        indexes = sorted({k for state in states.values() for k in state.accumulators})
        for k in indexes:
            panes.accumulators[k] = pick(
                {
                    source: state.accumulators[k]
                    for source, state in states.items()
                    if k in state.accumulators
                }
            )
        panes.order = indexes  # sorted: a heap
        if lead.current is not None:
            k = lead.current[0]
            currents = {
                source: state.current[1]
                for source, state in states.items()
                if state.current is not None
                and state.current[0] == k
                and state.current[1] is not None
            }
            panes.current = (k, pick(currents) if currents else None)
        return panes
    assert isinstance(lead, _Sessions)
    sessions = _Sessions()
    starts = {
        source: {session[0]: session[2] for session in state.sessions}
        for source, state in states.items()
    }
    for start, last, _, *rest in lead.sessions:
        windows = {
            source: found[start]
            for source, found in starts.items()
            if start in found and found[start] is not None
        }
        sessions.sessions.append([start, last, pick(windows), *rest])
    return sessions
