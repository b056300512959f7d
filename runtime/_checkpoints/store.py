"""Checkpoints: what they hold, how they are configured, and the files they are kept in.

A checkpoint is one file: an 8-byte magic, the :class:`Checkpoint` as msgspec MessagePack, and a
CRC-32 of it. It is written to a temporary file in the same directory, flushed to disk, and
renamed over its final name (an atomic step on POSIX), then the directory is flushed: a crash at
any moment leaves either the previous checkpoints or the new one, never half of one. Reading
checks the magic and the CRC, and a damaged file is skipped for the one before it.

The actors' state inside is encoded by ``runtime._checkpoints.codec`` per *key group*: the
unit that moves between shards, so a checkpoint taken with N shards restores into M.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from actors import get_logger

from .._exceptions import CheckpointError, ConfigError

__all__ = [
    "ActorState",
    "Checkpoint",
    "CheckpointConfig",
    "CheckpointInfo",
    "CheckpointStore",
]

_log = get_logger("featurist.checkpoints")

_MAGIC = b"FEATCKP1"
_FORMAT = 1
_NAME = re.compile(r"^checkpoint-(\d{12})\.fck$")


class CheckpointConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how often the runtime checkpoints its state (``FeatureRuntime(checkpoints=)``).

    Attributes:
        directory: the directory of the checkpoint files (created if missing).
        interval: seconds between two periodic checkpoints; None: only on shutdown and when
            ``rt.checkpoint()`` is called.
        keep: the newest checkpoints kept (older ones are deleted), >= 1. Keep 2 or more: if
            the newest is damaged, the runtime restores the one before.
        on_shutdown: take a checkpoint when the runtime stops after a complete drain.
        restore: on start, restore the newest checkpoint of ``directory`` if there is one.
        caches: include the enrichment caches' rows (a warm cache after a restart, for a
            bigger file); without them the caches start cold.
    """

    directory: str
    interval: float | None = 60.0
    keep: int = 3
    on_shutdown: bool = True
    restore: bool = True
    caches: bool = False

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

    def path_of(self, sequence: int) -> Path:
        return self.directory / f"checkpoint-{sequence:012d}.fck"

    def write(self, checkpoint: Checkpoint) -> tuple[Path, int]:
        """Write atomically (temporary file, fsync, rename, fsync of the directory), then
        delete the oldest beyond ``keep``. Returns the path and the size in bytes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = msgspec.msgpack.encode(checkpoint)
        crc = zlib.crc32(payload).to_bytes(4, "big")
        path = self.path_of(checkpoint.sequence)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as file:
            file.write(_MAGIC)
            file.write(payload)
            file.write(crc)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        self._sync_directory()
        for old in self.sequences()[: -self.keep]:
            self.path_of(old).unlink(missing_ok=True)
        return path, len(payload) + len(_MAGIC) + 4

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
        """Read one checkpoint file.

        Raises:
            CheckpointError: the file is missing, damaged or of another format.
        """
        path = self.path_of(sequence)
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
