"""Checkpoints: what they hold, how they are configured, and the files they are kept in.

A checkpoint is one file: an 8-byte magic, the :class:`Checkpoint` as msgspec MessagePack, and a
CRC-32 of it. It is written to a temporary file in the same directory, flushed to disk, and
renamed over its final name (an atomic step on POSIX), then the directory is flushed: a crash at
any moment leaves either the previous checkpoints or the new one, never half of one. Reading
checks the magic and the CRC, and a damaged file is skipped for the one before it.

A running runtime owns its directory: :class:`DirectoryLock` holds an advisory ``flock`` on
``featurist.lock`` in it for the runtime's life, and the file records who holds it.

The actors' state inside is encoded by ``runtime._checkpoints.codec`` per *key group*: the
unit that moves between shards, so a checkpoint taken with N shards restores into M.

A runtime with worker processes writes a checkpoint in parts: each worker writes the state of
its key groups to a part file of its own (``checkpoint-<sequence>.w<worker>.fck``, written as a
checkpoint file is, :meth:`CheckpointStore.write_part`), and the front, which holds the lock,
commits the checkpoint by writing its file last, naming the parts (``Checkpoint.parts``). A
part without its checkpoint file (a crash between the two) is never read, and is deleted with
the checkpoints beyond ``keep``. :meth:`CheckpointStore.read` gives a checkpoint with the
states of its parts merged, so any runtime, with any ``workers`` and ``shards``, restores it
by key group.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from actors import get_logger

from .._exceptions import CheckpointError, ConfigError

__all__ = [
    "ActorState",
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointInfo",
    "CheckpointStore",
    "DirectoryLock",
    "LockOwner",
]

_log = get_logger("featurist.checkpoints")

_MAGIC = b"FEATCKP1"
_FORMAT = 1
_NAME = re.compile(r"^checkpoint-(\d{12})\.fck$")
#: a worker's part of a checkpoint (never matches ``_NAME``)
_PART = re.compile(r"^checkpoint-(\d{12})\.w(\d+)\.fck$")
#: the lock file of a checkpoint directory (its name never matches ``_NAME``)
LOCK_NAME = "featurist.lock"


class CheckpointConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how often the runtime checkpoints its state (``FeatureRuntime(checkpoints=)``).

    Attributes:
        directory: the directory of the checkpoint files (created if missing). A running
            runtime owns it: a second runtime on the same directory, in this process or
            another, fails to start with a ``CheckpointError`` naming the owner. Give each
            process (each web server worker, say) a directory of its own.
        interval: seconds between two periodic checkpoints; None: only on shutdown and when
            ``rt.checkpoint()`` is called.
        keep: the newest checkpoints kept (older ones are deleted), >= 1. Keep 2 or more: if
            the newest is damaged, the runtime restores the one before.
        on_shutdown: take a checkpoint when the runtime stops after a complete drain.
        restore: on start, restore the newest checkpoint of ``directory`` if there is one.
        caches: include the enrichment caches' rows (a warm cache after a restart, for a
            bigger file); without them the caches start cold.
        max_log_events: with ``workers >= 1``: the events the front keeps, since the last
            checkpoint, to replay to a worker that died and is started again. When the log
            and the front's buffers (the log's next frames) hold this many, the front takes
            a checkpoint (which empties it) and ``ingest``
            waits for it; an ``ingest_many`` call given an ``offset`` is not split by it, so
            the log may hold that call's events beyond the bound. >= 1.
    """

    directory: str
    interval: float | None = 60.0
    keep: int = 3
    on_shutdown: bool = True
    restore: bool = True
    caches: bool = False
    max_log_events: int = 1_000_000

    def __post_init__(self) -> None:
        if not isinstance(self.directory, str) or not self.directory:
            raise ConfigError(f"checkpoints.directory must be a path, got {self.directory!r}")
        interval = self.interval
        if interval is not None and (
            isinstance(interval, bool)
            or not isinstance(interval, (int, float))
            or not 0 < interval < float("inf")
        ):
            raise ConfigError(f"checkpoints.interval must be > 0 seconds or None, got {interval!r}")
        if not isinstance(self.keep, int) or isinstance(self.keep, bool) or self.keep < 1:
            raise ConfigError(f"checkpoints.keep must be an int >= 1, got {self.keep!r}")
        log = self.max_log_events
        if not isinstance(log, int) or isinstance(log, bool) or log < 1:
            raise ConfigError(f"checkpoints.max_log_events must be an int >= 1, got {log!r}")

    @classmethod
    def of(cls, value: Any) -> CheckpointConfig | None:
        """A config from what ``FeatureRuntime(checkpoints=)`` accepts: None, a config, or a
        directory (``str`` or ``os.PathLike``) with the defaults."""
        if value is None or isinstance(value, CheckpointConfig):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(directory=os.fspath(value))
        raise ConfigError(
            "checkpoints must be a directory or a CheckpointConfig, got " + type(value).__name__
        )


class ActorState(msgspec.Struct, frozen=True):
    """One feature group's or join's state in a checkpoint, from all of its shard actors."""

    #: ``"features"`` or ``"join"``
    kind: str
    #: the group's or join's name in the runtime that wrote it
    name: str
    #: what must be equal in the runtime that restores it: the specs of its features or join
    signature: str
    #: a keyed group's state slots (a changed layout is refused), else empty
    layout: list[str]
    #: key group -> the encoded entries of its keys
    groups: dict[int, bytes]
    #: per actor of the writer: its encoded counters
    extras: list[bytes]
    keys: int
    #: True: features registered at run time (``rt.register``), kept in checkpoints until
    #: registered again; False: of the feature set the writer started with, dropped once a
    #: feature set without them restores it; None in files written before it was recorded
    registered: bool | None = None


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """What a checkpoint file holds."""

    format: int = _FORMAT
    feature_set: str
    sequence: int
    #: wall-clock seconds when it was taken
    created_at: float
    key_groups: int
    shards: int
    #: events read from the input (accepted and rejected) up to this checkpoint
    position: int
    #: the input offset the caller gave with its last ingest call before it (None if never)
    offset: Any = None
    #: of ``position``, the events accepted and rejected: ``statistics()`` carries them on
    #: (None in files written before they were recorded)
    ingested: int | None = None
    rejected: int | None = None
    actors: list[ActorState] = []
    #: source name -> encoded cache rows, when ``CheckpointConfig.caches``
    caches: dict[str, bytes] = {}
    #: written by a runtime with worker processes: their number, and the file names of their
    #: parts (in the same directory), whose ``actors`` :meth:`CheckpointStore.read` merges
    workers: int = 0
    parts: list[str] = []
    #: the feature set's key field: state is kept under each key's value, which another
    #: field's values would take over (None in files written before it was recorded)
    key: str | None = None


class CheckpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint taken (``rt.checkpoint()``) or restored (``rt.restored``).

    Attributes:
        sequence: the checkpoint's number, increasing in a directory.
        path: its file.
        position: events read from the input (accepted and rejected) before it: resume a
            replayable input there.
        offset: the input offset given with the last ``ingest``/``ingest_many`` call before it
            (``offset=``), or None.
        keys: keys held over all feature groups and joins.
        size_bytes: the file's size.
        created_at: wall-clock seconds when it was taken.
        pause_ms: how long ingest waited while the state was captured (0 for a restore).
        duration_ms: the whole operation, writing or reading the file included.
        shards: the shard count it was taken with (a restore may use another).
        keys_left_out: keys whose state could not be encoded, so are not in the checkpoint
            (each logged as ``checkpoint_keys_left_out`` with the key and the reason; they
            keep their live state, and a restore from this checkpoint starts them empty).
    """

    sequence: int
    path: str
    position: int
    offset: Any
    keys: int
    size_bytes: int
    created_at: float
    pause_ms: float
    duration_ms: float
    shards: int
    keys_left_out: int = 0


def restored_info(checkpoint: Checkpoint, path: Path, keys: int, started: float) -> CheckpointInfo:
    """What ``rt.restored`` tells of ``checkpoint``, read from ``path``, of ``keys`` keys, in a
    restore that began at ``started`` (``time.perf_counter()``)."""
    return CheckpointInfo(
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


class CheckpointStore:
    """The checkpoint files of one directory."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def sequences(self) -> list[int]:
        """The numbers of the checkpoint files present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _NAME.match(entry.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)

    def lock(self, feature_set: str) -> DirectoryLock:
        """The lock of this directory for a runtime of ``feature_set`` (:class:`DirectoryLock`):
        enter it (``async with``, or ``with``) before the first restore or write, and leave it
        after the last."""
        return DirectoryLock(self.directory, feature_set)

    def path_of(self, sequence: int) -> Path:
        return self.directory / f"checkpoint-{sequence:012d}.fck"

    def write(self, checkpoint: Checkpoint) -> tuple[Path, int]:
        """Write atomically (temporary file, fsync, rename, fsync of the directory), then
        delete the oldest beyond ``keep``. Returns the path and the size in bytes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_of(checkpoint.sequence)
        size = self._write_file(path, checkpoint)
        kept = self.sequences()
        for old in kept[: -self.keep]:
            self.path_of(old).unlink(missing_ok=True)
        kept = kept[-self.keep :]
        for part, sequence in self._parts():
            # the parts of deleted checkpoints, and of those never committed (older)
            if sequence not in kept and sequence < checkpoint.sequence:
                part.unlink(missing_ok=True)
        return path, size

    def part_name(self, sequence: int, worker: int) -> str:
        """The file name of worker ``worker``'s part of checkpoint ``sequence``."""
        return f"checkpoint-{sequence:012d}.w{worker}.fck"

    def write_part(self, checkpoint: Checkpoint, worker: int) -> tuple[Path, int]:
        """Write worker ``worker``'s part of a checkpoint (its key groups' state), atomically
        as :meth:`write` does; the checkpoint exists once the front writes its file. Returns
        the path and the size in bytes. (A worker writes into a directory whose lock the
        front holds: it takes no lock itself.)"""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / self.part_name(checkpoint.sequence, worker)
        return path, self._write_file(path, checkpoint)

    def _write_file(self, path: Path, checkpoint: Checkpoint) -> int:
        payload = msgspec.msgpack.encode(checkpoint)
        crc = zlib.crc32(payload).to_bytes(4, "big")
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(_MAGIC)
            file.write(payload)
            file.write(crc)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        self._sync_directory()
        return len(payload) + len(_MAGIC) + 4

    def _parts(self) -> list[tuple[Path, int]]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _PART.match(entry.name)
            if match:
                found.append((entry, int(match.group(1))))
        return found

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:  # pragma: no cover - a platform without directory fds
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, sequence: int) -> Checkpoint:
        """Read one checkpoint file, and its parts if it has any (their states merged into
        its ``actors``).

        Raises:
            CheckpointError: the file or a part is missing, damaged or of another format, or
                two parts hold one key group.
        """
        checkpoint = self._read_file(self.path_of(sequence), sequence)
        if not checkpoint.parts:
            return checkpoint
        parts = []
        for name in checkpoint.parts:
            if _PART.match(name) is None or int(name[11:23]) != sequence:
                raise CheckpointError(f"{self.path_of(sequence)}: names {name!r} as its part")
            parts.append(self._read_file(self.directory / name, sequence))
        return msgspec.structs.replace(checkpoint, actors=_merge_parts(parts, sequence))

    def _read_file(self, path: Path, sequence: int) -> Checkpoint:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot be read: {exc}") from None
        if len(data) < len(_MAGIC) + 4 or not data.startswith(_MAGIC):
            raise CheckpointError(f"{path}: not a featurist checkpoint (or truncated)")
        payload, crc = data[len(_MAGIC) : -4], data[-4:]
        if zlib.crc32(payload).to_bytes(4, "big") != crc:
            raise CheckpointError(f"{path}: damaged (its checksum does not match)")
        try:
            checkpoint = msgspec.msgpack.decode(payload, type=Checkpoint)
        except (msgspec.DecodeError, RecursionError) as exc:
            # RecursionError: an ``offset`` nested deeper than the decoder's recursion allows
            raise CheckpointError(f"{path}: unreadable: {exc}") from None
        problem = _problem(checkpoint, sequence)
        if problem is not None:
            raise CheckpointError(f"{path}: not a valid checkpoint: {problem}")
        return checkpoint

    def none_usable(self) -> CheckpointError | None:
        """The error to raise when the directory holds checkpoint files but none could be
        restored (each was logged as unreadable or unusable): starting empty would drop their
        state, and the empty state's first checkpoint would then stand in for them as a
        normal restore. None when there are none."""
        sequences = self.sequences()
        if not sequences:
            return None
        return CheckpointError(
            f"{self.directory}: holds {len(sequences)} checkpoint(s), the newest "
            f"{self.path_of(sequences[-1]).name}, but none could be restored (each is logged: "
            "checkpoint_unreadable or checkpoint_unusable): move them away to start empty, or "
            "start with CheckpointConfig(restore=False) to keep them and write new ones"
        )

    def latest(self) -> tuple[Checkpoint, Path] | None:
        """The newest readable checkpoint, or None if there is none. A damaged one is logged
        and skipped for the one before it."""
        return next(self.readable(), None)

    def readable(self) -> Iterator[tuple[Checkpoint, Path]]:
        """The readable checkpoints, newest first, each read when the one before is done
        with; a damaged one is logged and skipped."""
        for sequence in reversed(self.sequences()):
            try:
                checkpoint = self.read(sequence)
            except CheckpointError as exc:
                _log.error("checkpoint_unreadable", error=str(exc))
                continue
            yield checkpoint, self.path_of(sequence)


class LockOwner(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a checkpoint directory: what its lock file records."""

    host: str
    pid: int
    #: wall-clock seconds when it took the lock
    started_at: float
    #: the feature set of its runtime
    feature_set: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        return (
            f"the runtime of feature set {self.feature_set!r}, pid {self.pid} on host "
            f"{self.host!r}, started {started}"
        )


class DirectoryLock:
    """A runtime's exclusive hold on its checkpoint directory, from start to shutdown.

    Two runtimes writing one directory would each restore the newest file after a restart, and
    the keys of the other runtime's last checkpoint would be lost without a word. So a runtime
    takes an advisory ``flock`` on ``featurist.lock`` in the directory and keeps the file open
    until it stops; the file records its :class:`LockOwner`. Another runtime on the directory
    (in another process, or in this one: each opens the file anew, and ``flock`` locks of two
    open files conflict) cannot take it and fails to start, naming the owner.

    The kernel drops the lock when its process ends, however it ends: a lock left by a killed
    process never blocks (its record stays in the file until the next owner writes its own,
    and that owner logs ``checkpoint_directory_taken_over`` with it). A child forked while the
    lock is held does not keep it: the child closes its copy at once. On a network file system
    the lock is as good as the file system's locking (NFS maps ``flock`` to its own locks).

    Raises (on enter):
        CheckpointError: another runtime holds the directory (the message names it), or the
            lock file cannot be created or locked (the message gives the system's reason).
    """

    def __init__(self, directory: str | os.PathLike[str], feature_set: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.feature_set = feature_set
        self.owner: LockOwner | None = None
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> DirectoryLock:
        """As ``with``, the file opened, locked and written in a worker thread."""
        await anyio.to_thread.run_sync(self.acquire)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # shielded: a cancelled exit still releases (else the lock lasts as long as the process)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.release)

    @property
    def held(self) -> bool:
        """Whether this lock is held (entered and not left yet)."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and record this process as its owner.

        Raises:
            CheckpointError: see the class.
            RuntimeError: this lock is held already.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this lock is held already")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot create the lock file: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckpointError(self._refusal(fd)) from None
            except OSError as exc:
                raise CheckpointError(f"{self.path}: cannot be locked: {exc}") from exc
            previous = _read_owner(fd)
            owner = LockOwner(
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=time.time(),
                feature_set=self.feature_set,
            )
            record = msgspec.json.encode(owner) + b"\n"
            try:
                os.pwrite(fd, record, 0)
                os.ftruncate(fd, len(record))
            except OSError as exc:
                raise CheckpointError(f"{self.path}: cannot be written: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.owner = fd, owner
        _held[fd] = self
        if previous is not None:
            # a clean release empties the file: its last owner ended without releasing it
            _log.info(
                "checkpoint_directory_taken_over",
                directory=str(self.directory),
                previous_host=previous.host,
                previous_pid=previous.pid,
                previous_feature_set=previous.feature_set,
            )

    def release(self) -> None:
        """Empty the record and drop the lock (closing the file drops it). Idempotent."""
        fd = self._fd
        if fd is None:
            return
        self._fd = self.owner = None
        del _held[fd]
        try:
            os.ftruncate(fd, 0)  # still held: no new owner has written yet
        except OSError:  # pragma: no cover - the record stays; the next owner overwrites it
            pass
        finally:
            os.close(fd)

    def _refusal(self, fd: int) -> str:
        """The error of a directory held by another runtime, naming it from its record.
        The owner writes its record just after it takes the lock: an empty or partial one is
        read again a few times before it is called unknown."""
        for attempt in range(5):
            owner = _read_owner(fd)
            if owner is not None:
                holder = owner.describe()
                break
            if attempt < 4:
                time.sleep(0.02)
        else:
            holder = "a runtime that has not recorded itself in the lock file yet"
        return (
            f"{self.directory}: this checkpoint directory is in use by {holder} (it holds "
            f"{self.path}). Two runtimes on one directory would restore each other's "
            "checkpoints and lose keys: give each runtime (each worker process) its own "
            "directory, or stop the other first"
        )


#: the locks this process holds, by file descriptor: a forked child closes its copies
_held: dict[int, DirectoryLock] = {}


def _forget_held_locks() -> None:
    """In a forked child: close the inherited lock files, so that the lock ends with the
    process that took it, not with the last of its children."""
    for fd, lock in list(_held.items()):
        lock._fd = lock.owner = None
        try:
            os.close(fd)
        except OSError:  # pragma: no cover - closed by the child already
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forget_held_locks)


def _read_owner(fd: int) -> LockOwner | None:
    """The owner a lock file records, or None if it is empty or unreadable."""
    try:
        data = os.pread(fd, 4096, 0)
        return msgspec.json.decode(data, type=LockOwner) if data.strip() else None
    except (OSError, msgspec.DecodeError):
        return None


def _problem(checkpoint: Checkpoint, sequence: int) -> str | None:
    """What is wrong with the fields of a checkpoint read from file ``sequence``, or None.
    (Its types msgspec checked; the state inside, the coordinator does.)"""
    if checkpoint.format != _FORMAT:
        return f"format {checkpoint.format} is not {_FORMAT}"
    if checkpoint.sequence != sequence:
        return f"it holds sequence {checkpoint.sequence}, but its file name says {sequence}"
    if checkpoint.key_groups < 1 or checkpoint.shards < 1:
        return f"key_groups {checkpoint.key_groups} and shards {checkpoint.shards} must be >= 1"
    if checkpoint.position < 0:
        return f"position {checkpoint.position} is negative"
    for actor in checkpoint.actors:
        if actor.kind not in ("features", "join"):
            return f"the state of {actor.name!r} is of an unknown kind {actor.kind!r}"
        if actor.keys < 0:
            return f"the state of {actor.name!r} holds {actor.keys} keys"
    return None


def _merge_parts(parts: list[Checkpoint], sequence: int) -> list[ActorState]:
    """The states of a checkpoint's parts as one: per feature group or join, the key groups
    of every part, the counters of every part's actors, the keys summed.

    Raises:
        CheckpointError: two parts hold one key group, or the parts hold other groups.
    """
    merged: dict[str, ActorState] = {}
    for part in parts:
        if part.actors and merged and set(merged) != {a.signature for a in part.actors}:
            raise CheckpointError(f"the parts of checkpoint {sequence} hold other groups")
        for state in part.actors:
            have = merged.get(state.signature)
            if have is None:
                merged[state.signature] = state
                continue
            both = have.groups.keys() & state.groups.keys()
            if both:
                raise CheckpointError(
                    f"two parts of checkpoint {sequence} hold key group {min(both)} of "
                    f"{state.name!r}"
                )
            merged[state.signature] = msgspec.structs.replace(
                have,
                groups={**have.groups, **state.groups},
                extras=[*have.extras, *state.extras],
                keys=have.keys + state.keys,
            )
    return list(merged.values())
