"""One owner per checkpoint directory: a runtime holds an exclusive lock on its directory from
start to shutdown, recording its host, pid and start time; a second runtime on the directory
(in this process or another) fails to start with an error naming the owner, and a lock left by
a dead process does not block.

(With ``uvicorn --workers 2`` both workers wrote one directory, and after a restart both
restored the same file: one worker's keys were lost without a word.)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import msgspec
import pytest

from runtime import CheckpointConfig, CheckpointError, Count, FeatureRuntime, FeatureSet, Sum
from runtime._checkpoints.store import LOCK_NAME, CheckpointStore, DirectoryLock, LockOwner

ROOT = Path(__file__).resolve().parents[3]
HOST = socket.gethostname()

#: a child process that takes the lock of ``argv[1]``, says so, and holds it until its stdin ends
HOLDER = """
import sys
from runtime._checkpoints.store import DirectoryLock
DirectoryLock(sys.argv[1], "held-elsewhere").acquire()
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def holder(directory: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock of ``directory`` while the block runs."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "locked\n"
        yield child
    finally:
        if child.returncode is None:
            child.kill()
        child.wait(timeout=30)
        child.stdin.close()
        child.stdout.close()


def record(directory: Path) -> LockOwner | None:
    data = (directory / LOCK_NAME).read_bytes()
    return msgspec.json.decode(data, type=LockOwner) if data else None


# -- the lock itself ---------------------------------------------------------------------------
def test_the_lock_records_its_owner_and_is_emptied_on_release(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "dir"  # created if missing, as the checkpoints' is
    with DirectoryLock(directory, "payments") as lock:
        owner = record(directory)
        assert owner is not None and owner == lock.owner
        assert (owner.host, owner.pid, owner.feature_set) == (HOST, os.getpid(), "payments")
    assert not lock.held and record(directory) is None
    # the lock file is no checkpoint
    assert CheckpointStore(directory).sequences() == []


def test_a_second_lock_in_the_same_process_is_refused_naming_the_owner(tmp_path: Path) -> None:
    # flock locks belong to open files, not processes: a second open of the file conflicts
    with DirectoryLock(tmp_path, "first"):
        with pytest.raises(CheckpointError) as caught:
            DirectoryLock(tmp_path, "second").acquire()
        message = str(caught.value)
        assert "in use by the runtime of feature set 'first'" in message
        assert f"pid {os.getpid()} on host {HOST!r}" in message
        assert str(tmp_path / LOCK_NAME) in message
        # the refused one changed nothing: the owner's record stays
        owner = record(tmp_path)
        assert owner is not None and owner.feature_set == "first"


def test_the_same_directory_by_another_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with DirectoryLock(tmp_path / "real", "first"):
        with pytest.raises(CheckpointError, match="in use by"):
            DirectoryLock(tmp_path / "alias", "second").acquire()


def test_after_release_the_next_owner_takes_the_lock(tmp_path: Path) -> None:
    for name in ("first", "second", "third"):
        with DirectoryLock(tmp_path, name):
            owner = record(tmp_path)
            assert owner is not None and owner.feature_set == name


def test_a_lock_held_by_another_process_is_refused_naming_its_host_and_pid(
    tmp_path: Path,
) -> None:
    with holder(tmp_path) as child:
        with pytest.raises(CheckpointError) as caught:
            DirectoryLock(tmp_path, "here").acquire()
        assert f"feature set 'held-elsewhere', pid {child.pid} on host {HOST!r}" in str(
            caught.value
        )
    # the holder ended: the lock is free
    with DirectoryLock(tmp_path, "here"):
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path: Path) -> None:
    with holder(tmp_path) as child:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
    # the dead holder's record is still in the file, and does not matter
    left = record(tmp_path)
    assert left is not None and left.pid == child.pid
    with DirectoryLock(tmp_path, "next") as lock:
        assert record(tmp_path) == lock.owner
        assert lock.owner is not None and lock.owner.pid == os.getpid()


def _sleep_until_set(
    ready: multiprocessing.synchronize.Event, stop: multiprocessing.synchronize.Event
) -> None:
    ready.set()  # after the fork's hooks ran
    stop.wait(30)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    # else the lock would outlive its owner for as long as a child forked meanwhile lives
    context = multiprocessing.get_context("fork")
    ready, stop = context.Event(), context.Event()
    lock = DirectoryLock(tmp_path, "parent")
    lock.acquire()
    child = context.Process(target=_sleep_until_set, args=(ready, stop))
    child.start()
    try:
        assert ready.wait(30)
        lock.release()
        with DirectoryLock(tmp_path, "next"):
            assert child.is_alive()
    finally:
        stop.set()
        child.join(timeout=30)
    assert child.exitcode == 0


def test_a_lock_file_that_cannot_be_created_is_a_checkpoint_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot create the lock file"):
        DirectoryLock(tmp_path / "file" / "checkpoints", "x").acquire()


def test_a_lock_is_taken_once(tmp_path: Path) -> None:
    with DirectoryLock(tmp_path, "x") as lock, pytest.raises(RuntimeError, match="held already"):
        lock.acquire()


async def test_the_async_form_releases_when_cancelled(tmp_path: Path) -> None:
    with anyio.CancelScope() as scope:
        async with CheckpointStore(tmp_path).lock("x") as lock:
            assert lock.held
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught and not lock.held
    with DirectoryLock(tmp_path, "next"):
        pass


# -- the runtime -------------------------------------------------------------------------------
FEATURES = FeatureSet(
    name="payments", key="card", time="ts", features=[Count(name="n"), Sum(name="s", field="x")]
)
OTHER = FeatureSet(name="other", key="card", time="ts", features=[Count(name="n")])


def config(tmp_path: Path) -> CheckpointConfig:
    return CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)


async def test_a_second_runtime_on_the_directory_fails_at_start_naming_the_first(
    tmp_path: Path,
) -> None:
    async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)) as first:
        await first.ingest({"card": "a", "ts": 1, "x": 2})
        with pytest.raises(CheckpointError) as caught:
            async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)):
                pass  # pragma: no cover - refused
        message = str(caught.value)
        assert f"feature set 'payments', pid {os.getpid()} on host {HOST!r}" in message
        # the first one runs on, and still checkpoints
        await first.ingest({"card": "a", "ts": 2, "x": 3})
        await first.checkpoint()
    # released at shutdown: the next runtime starts, and restores the first one's keys whole
    async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)) as rt:
        assert (await rt.get("a")).values == {"n": 2, "s": 5}


async def test_a_runtime_fails_at_start_when_another_process_holds_the_directory(
    tmp_path: Path,
) -> None:
    directory = Path(config(tmp_path).directory)
    with holder(directory) as child:
        with pytest.raises(CheckpointError, match=f"pid {child.pid} on host"):
            async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)):
                pass  # pragma: no cover - refused
        # nothing was written by the refused runtime
        assert CheckpointStore(directory).sequences() == []
    async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)):
        pass


async def test_a_failed_start_releases_the_directory(tmp_path: Path) -> None:
    async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)) as rt:
        await rt.ingest({"card": "a", "ts": 1, "x": 2})
    # another feature set's checkpoint is refused on restore, after the lock was taken
    with pytest.raises(CheckpointError, match="taken by the feature set"):
        async with FeatureRuntime(OTHER, checkpoints=config(tmp_path)):
            pass  # pragma: no cover - refused
    async with FeatureRuntime(FEATURES, checkpoints=config(tmp_path)) as rt:
        assert (await rt.get("a")).values == {"n": 1, "s": 2}
        with pytest.raises(CheckpointError, match="in use by"):
            DirectoryLock(config(tmp_path).directory, "x").acquire()
