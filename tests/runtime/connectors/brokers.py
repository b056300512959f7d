"""What the broker source tests share: connecting to the local NATS and Redis servers (a test
skips without them, fails under FEATURIST_REQUIRE_SERVICES=1), and the child process the crash
tests SIGKILL mid-stream (``python -m tests.runtime.connectors.brokers <config json>``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.to_thread
import pytest

from runtime import CheckpointConfig, FeatureRuntime, NatsSource, RedisStreamSource, consume
from tests.conftest import services_required

from .common import FEATURE_SET, KEYS

NATS_URL = os.environ.get("FEATURIST_TEST_NATS_URL", "nats://127.0.0.1:4222")
#: ``nats.connect`` options that fail at once when no server answers: nats-py retries a
#: first connect without end when ``max_reconnect_attempts`` is 0 (its "unlimited"), and for
#: two minutes by default
NATS_FAIL_FAST: dict[str, Any] = {
    "connect_timeout": 1,
    "max_reconnect_attempts": 1,
    "reconnect_time_wait": 0.2,
}
REDIS_URL = os.environ.get("FEATURIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[3]


def unavailable(what: str, exc: BaseException) -> NoReturn:
    if services_required():
        pytest.fail(f"{what} is required (FEATURIST_REQUIRE_SERVICES) but unavailable: {exc!r}")
    pytest.skip(f"{what} unavailable: {exc!r}")


def make_source(kind: str, options: dict[str, Any]) -> NatsSource | RedisStreamSource:
    if kind == "nats":
        return NatsSource(NATS_URL, **options)
    return RedisStreamSource(REDIS_URL, **options)


def run_child(config: dict[str, Any]) -> subprocess.Popen[str]:
    """The child: consumes ``config['options']``'s source with checkpoints in
    ``config['directory']`` (restoring the newest), ``config['chunk']`` records at a time, a
    checkpoint after every other chunk and a pause of 0.1 s after the others, printing
    ``read <n>`` and ``checkpoint <n>`` (records since it started) as it goes."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.connectors.brokers", json.dumps(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def kill_after(child: subprocess.Popen[str], checkpoints: int, timeout: float = 15.0) -> int:
    """SIGKILL ``child`` once it has written ``checkpoints`` checkpoints and read a chunk more
    (so messages past the checkpoint were delivered and not acknowledged); returns the records
    it had read."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    seen = read = 0
    for line in child.stdout:
        what, n = line.split()
        if what == "checkpoint":
            seen += 1
        elif seen >= checkpoints:
            read = int(n)
            break
        assert time.monotonic() < deadline, "the child did not get far enough"
    child.send_signal(signal.SIGKILL)
    child.wait(5)
    child.stdout.close()
    return read


async def crash(config: dict[str, Any], checkpoints: int) -> int:
    """Start the child with ``config``, SIGKILL it after ``checkpoints`` checkpoints and one
    chunk more (:func:`kill_after`, in a worker thread); returns the records it had read."""
    child = await anyio.to_thread.run_sync(run_child, config)
    try:
        return await anyio.to_thread.run_sync(kill_after, child, checkpoints)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)


async def partition_process(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run a child process that consumes the source of ``options`` until it is idle and
    returns the values of the keys it holds (those with events), as JSON."""
    config = {"kind": kind, "options": options, "values": True}

    def run() -> dict[str, Any]:
        child = run_child(config)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        found: dict[str, Any] = json.loads(out)
        return found

    return await anyio.to_thread.run_sync(run)


async def _values(config: dict[str, Any]) -> None:
    async with (
        FeatureRuntime(FEATURE_SET, shards=2) as rt,
        make_source(config["kind"], config["options"]) as source,
    ):
        await consume(rt, source, batch_size=40, until="idle")
        found = await rt.get_many(KEYS)
        values = {key: vector.values for key, vector in found.items() if vector.values["n"]}
        print(json.dumps(values), flush=True)


async def _child(config: dict[str, Any]) -> None:
    if config.get("values"):
        await _values(config)
        return
    checkpoints = CheckpointConfig(
        directory=config["directory"], interval=None, on_shutdown=False, keep=2
    )
    async with (
        FeatureRuntime(FEATURE_SET, shards=2, checkpoints=checkpoints) as rt,
        make_source(config["kind"], config["options"]) as source,
    ):
        total = 0
        step = 0
        while True:
            result = await consume(rt, source, batch_size=config["batch"], until=config["chunk"])
            total += result.records
            step += 1
            print("read", total, flush=True)
            if step % 2:
                # past the checkpoint, read and not acknowledged: the parent kills it here
                await anyio.sleep(0.1)
            else:
                await rt.checkpoint()
                print("checkpoint", total, flush=True)
            if result.records == 0:
                await anyio.sleep(0.05)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    anyio.run(_child, json.loads(sys.argv[1]))
