"""``FeatureRuntime(..., workers=W)``: the API that works with workers (ingest of dicts and of
bytes, get, get_many, updates, statistics, flush), bad events in the front's dead letters,
what is refused with workers (at construction and per call), and the lifecycle: workers exit
with the runtime, a worker that does not is killed at the deadline, a dead worker is a clear
error on the next call, a stopped worker holds ``ingest`` back, and no process outlives the
runtime."""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import msgspec
import pytest

from actors import DeadLetterReason
from runtime import (
    CheckpointConfig,
    ConfigError,
    Count,
    FeatureRuntime,
    FeatureSet,
    Mean,
    RuntimeClosed,
    Sliding,
    Sum,
    UnknownFeature,
    UpdateBatch,
)

FEATURE_SET = FeatureSet(
    name="t",
    key="card",
    time="ts",
    features=[
        Sum(name="total", field="amount"),
        Count(name="n"),
        Mean(name="w_avg", field="amount", window=Sliding(size=60_000)),
    ],
)
T0 = 1_700_000_000_000


def _alive(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes only once reaped; the front joins its processes
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def _events(count: int, keys: int = 10) -> list[dict[str, Any]]:
    return [{"card": f"c{i % keys}", "ts": T0 + i, "amount": i} for i in range(count)]


async def test_the_api_works_with_workers_and_bad_events_go_to_the_front_dead_letters() -> None:
    async with FeatureRuntime(FEATURE_SET, shards=2, workers=2) as rt:
        pids = rt._front.pids  # type: ignore[union-attr]
        subscription = rt.updates()
        events = _events(300)
        assert await rt.ingest_many(events[:100]) == 100
        assert await rt.ingest_many([msgspec.json.encode(e) for e in events[100:200]]) == 100
        for event in events[200:]:
            assert await rt.ingest(event)
        bad = [
            b"{not json",
            msgspec.json.encode({"ts": T0, "amount": 1}),
            msgspec.json.encode({"card": "c1", "ts": "soon", "amount": 1}),
            {"card": None, "ts": T0},
        ]
        assert await rt.ingest_many(bad) == 0
        assert not await rt.ingest(b"[1, 2]")
        await rt.flush()
        # every update is published at the front by the time flush returns
        depth = subscription.statistics().depth
        assert depth == 2 * 300
        batches: list[Any] = []
        read = 0
        async for batch in subscription.batches():
            assert isinstance(batch, UpdateBatch)
            batches.append(batch)
            read += len(batch)
            if read == depth:
                break
        rows = [row for batch in batches if batch.group == "g0" for row in batch.rows]
        assert sorted(row[1] for row in rows) == [e["ts"] for e in events]
        vector = await rt.get("c3")
        assert vector["total"] == sum(e["amount"] for e in events if e["card"] == "c3")
        assert vector["n"] == 30
        assert vector.last_event_time == T0 + 293
        many = await rt.get_many(["c1", "c2", "nobody", "c1"])
        assert list(many) == ["c1", "c2", "nobody"]
        assert many["c2"]["n"] == 30 and not many["nobody"].known
        with pytest.raises(UnknownFeature):
            await rt.get("c1", ["nope"])
        stats = await rt.statistics()
        assert (stats.events_ingested, stats.events_rejected) == (300, 5)
        assert stats.events_processed == 300 and stats.keys == 10 and stats.shards == 4
        # the windows' part is summed too, and the bytes per key made again from the sums
        assert stats.windows is not None and stats.windows.keys == 10
        assert stats.windows.events_held == 300
        assert stats.windows.state_bytes_per_key == stats.windows.state_bytes / 10
        letters = rt.dead_letters.letters(DeadLetterReason.REJECTED)
        assert len(letters) == 5
        details = " | ".join(letter.detail for letter in letters)
        assert "cannot decode json payload" in details and "'card' is missing" in details
        assert "'card' is null" in details and "'ts'" in details
        with pytest.raises(ConfigError, match=r"rt\.invalidate"):
            rt.invalidate("merchants", "m1")
        with pytest.raises(ConfigError, match=r"no checkpoints directory"):
            await rt.checkpoint()  # as in-process, without checkpoints=
        with pytest.raises(ConfigError, match=r"rt\.mailboxes"):
            rt.mailboxes()
        assert all(_alive(pid) for pid in pids)
    # the workers exited with the runtime
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeClosed):
        await rt.get("c1")


async def test_events_as_msgpack_bytes_are_routed_by_their_key() -> None:
    events = _events(100, keys=7)
    async with FeatureRuntime(FEATURE_SET, workers=1, payload_format="msgpack") as rt:
        assert await rt.ingest_many([msgspec.msgpack.encode(e) for e in events]) == 100
        assert (await rt.get("c6"))["n"] == len([e for e in events if e["card"] == "c6"])


@pytest.mark.parametrize(
    ("feature_set", "options", "refused"),
    [
        (FEATURE_SET, {"clock": lambda: 0.0}, "clock"),
    ],
)
def test_what_workers_do_not_run_yet_is_refused_at_construction(
    feature_set: FeatureSet, options: dict[str, Any], refused: str
) -> None:
    with pytest.raises(ConfigError, match=f"workers >= 1 does not support.*{refused}"):
        FeatureRuntime(feature_set, workers=1, **options)
    FeatureRuntime(feature_set, **options)  # workers=0 runs it


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": -1}, "workers must be an int between 0 and 256"),
        ({"workers": 1.5}, "workers must be an int"),
        ({"workers": 300}, "workers must be an int between 0 and 256"),
        ({"workers": 3, "shards": 100}, "shards x workers must be at most key_groups"),
    ],
)
def test_the_workers_option_is_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FeatureRuntime(FEATURE_SET, **options)


async def test_a_worker_that_dies_is_a_clear_error_on_the_next_call() -> None:
    started = time.perf_counter()
    async with FeatureRuntime(FEATURE_SET, workers=2, shutdown_timeout=5) as rt:
        pids = rt._front.pids  # type: ignore[union-attr]
        await rt.ingest_many(_events(100))
        await rt.flush()
        assert pids[1] is not None
        os.kill(pids[1], signal.SIGKILL)
        with anyio.fail_after(10):
            with pytest.raises(RuntimeClosed, match=r"worker 1 \(pid \d+\).*died.*code -9"):
                while True:  # the front learns of the death when the stream ends
                    await rt.ingest_many(_events(100))
                    await rt.flush()
        with pytest.raises(RuntimeClosed, match="worker 1"):
            await rt.get("c1")
    assert time.perf_counter() - started < 30
    assert not any(_alive(pid) for pid in pids)


async def test_a_stopped_worker_holds_ingest_back_and_is_killed_at_the_shutdown_deadline() -> None:
    rt = FeatureRuntime(FEATURE_SET, workers=2, shutdown_timeout=1.0)
    async with rt:
        pids = rt._front.pids  # type: ignore[union-attr]
        assert pids[0] is not None
        os.kill(pids[0], signal.SIGSTOP)
        events = [msgspec.json.encode(e) for e in _events(200_000, keys=1000)]
        done = anyio.Event()

        async def feed() -> None:
            await rt.ingest_many(events)
            done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            with anyio.move_on_after(1.0):
                await done.wait()
            # the stopped worker reads nothing: its socket fills, and ingest waits
            assert not done.is_set()
            os.kill(pids[0], signal.SIGCONT)
            with anyio.fail_after(40):
                await done.wait()
        await rt.flush()
        assert (await rt.statistics()).events_processed == 200_000
        os.kill(pids[0], signal.SIGSTOP)
        started = time.perf_counter()
    # the stopped worker could not stop: it was killed once the deadline had passed
    assert time.perf_counter() - started < 1.0 + 5.0
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize("feeding", [True, False])
async def test_a_checkpoint_the_shutdown_ends_raises_runtime_closed(
    tmp_path: Any, feeding: bool
) -> None:
    """An application's checkpoint stuck behind a subscription nobody reads (the front cannot
    take the worker's frames, the barrier's reply among them) is ended by the shutdown: it
    raises ``RuntimeClosed`` saying that none was written, with an ingest call under way
    (which says how many of its events were accepted) or none (nothing else would wake the
    checkpoint), and the exit keeps its deadline. The worker is not reported as failed."""
    config = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=False)
    rt = FeatureRuntime(
        FEATURE_SET, workers=1, batch_size=64, shutdown_timeout=1.0, checkpoints=config
    )
    ended: list[BaseException] = []
    fed: list[BaseException] = []

    async def checkpoint() -> None:
        try:
            await rt.checkpoint()
        except Exception as exc:
            ended.append(exc)

    async def feed() -> None:
        try:
            await rt.ingest_many(_events(50_000, keys=1000))
        except Exception as exc:
            fed.append(exc)

    began = 0.0
    async with anyio.create_task_group() as tasks:
        async with rt:
            pids = rt._front.pids  # type: ignore[union-attr]
            _unread = rt.updates(buffer=10)  # never read
            if feeding:
                tasks.start_soon(feed)
            else:
                # accepted whole (the sockets take them), their updates more than the
                # subscription holds
                assert await rt.ingest_many(_events(500, keys=100)) == 500
            await anyio.sleep(0.3)
            tasks.start_soon(checkpoint)
            await anyio.sleep(0.3)
            assert not ended and not fed  # stuck
            began = time.monotonic()
        assert time.monotonic() - began < 1.0 + 2.0
        with anyio.fail_after(5):
            while not ended or (feeding and not fed):
                await anyio.sleep(0.01)
    assert isinstance(ended[0], RuntimeClosed), ended
    assert re.fullmatch(
        r"the runtime stopped while the checkpoint was taken \(its shutdown deadline passed "
        r"before worker 0 \(pid \d+\) stopped, (and it was killed|as far as the front could "
        r"read)\); none was written",
        str(ended[0]),
    ), ended[0]
    if feeding:
        assert isinstance(fed[0], RuntimeClosed), fed
        assert re.search(r"shutdown deadline passed.* \d+ of its events were accepted", str(fed[0]))
    assert not any(_alive(pid) for pid in pids)


async def test_a_worker_that_dies_under_an_ingest_call_is_named_by_it() -> None:
    """Not a shutdown's cut: the call raises the worker's failure."""
    async with FeatureRuntime(FEATURE_SET, workers=1, shutdown_timeout=5) as rt:
        pid = rt._front.pids[0]  # type: ignore[union-attr]
        assert pid is not None
        events = [msgspec.json.encode(e) for e in _events(300_000, keys=1000)]

        async def kill() -> None:
            await anyio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(kill)
            with anyio.fail_after(20), pytest.raises(RuntimeClosed) as raised:
                await rt.ingest_many(events)
        assert re.match(
            r"the runtime stopped: worker 0 \(pid \d+\) .*died.*code -9", str(raised.value)
        )


_HOLDER = """
import sys
from actors import run
from runtime import Count, FeatureRuntime, FeatureSet

async def main():
    fs = FeatureSet(name="t", key="card", time="ts", features=[Count(name="n")])
    async with FeatureRuntime(fs, workers=2) as rt:
        await rt.ingest({"card": "c1", "ts": 1})
        await rt.flush()
        from multiprocessing import forkserver
        print(*rt._front.pids, forkserver._forkserver._forkserver_pid, flush=True)
        sys.stdin.read()  # until the test kills this process

if __name__ == "__main__":
    run(main)
"""


_UNGUARDED = """
from actors import run
from runtime import Count, FeatureRuntime, FeatureSet

FEATURES = FeatureSet(name="g", key="card", time="ts", features=[Count(name="n")])


async def main():
    async with FeatureRuntime(FEATURES, workers=1, **OPTIONS) as rt:
        await rt.ingest({"card": "c1", "ts": 1_700_000_000_000})


run(main)  # no 'if __name__ == "__main__":' guard
"""


@pytest.mark.parametrize("checkpoints", [False, True])
def test_a_script_that_starts_workers_without_the_main_guard_is_told_why(
    tmp_path: Any, checkpoints: bool
) -> None:
    """Each worker imports the application's main module again: one that starts its runtime
    at import fails in the worker with an error that names the guard (before it would take
    the checkpoint directory's lock), and the application learns that the worker died before
    its runtime ran."""
    script = tmp_path / "unguarded.py"
    options = {"checkpoints": str(tmp_path / "state")} if checkpoints else {}
    script.write_text(f"OPTIONS = {options!r}\n" + _UNGUARDED)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode != 0
    assert "ConfigError: a FeatureRuntime with workers was started in a worker process" in (
        done.stderr
    )
    assert 'if __name__ == "__main__":' in done.stderr
    assert re.search(r"worker 0 failed to start: .* before its runtime ran", done.stderr)


def test_workers_exit_when_the_application_process_is_killed(tmp_path: Any) -> None:
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    holder = subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert holder.stdout is not None
        # the two workers, and the server they were forked from
        pids = [int(pid) for pid in holder.stdout.readline().split()]
        assert len(pids) == 3 and all(_alive(pid) for pid in pids)
        holder.kill()  # SIGKILL: no cleanup of its own runs
        holder.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        # the workers saw their sockets close and exited, and so did the fork server
        assert not any(_alive(pid) for pid in pids)
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdin is not None:
            holder.stdin.close()
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.parametrize("after", [0.0, 0.2, 0.6])
async def test_a_start_cancelled_half_way_leaves_no_process(after: float) -> None:
    with anyio.move_on_after(after):
        async with FeatureRuntime(FEATURE_SET, workers=2) as rt:
            await rt.ingest_many(_events(10))
            await anyio.sleep(10)
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("featurist-")]
    assert workers == []


async def test_an_event_for_an_idle_worker_leaves_at_once() -> None:
    # linger of an hour: only the idle worker's answer can send a lone event on
    async with FeatureRuntime(FEATURE_SET, workers=2, linger=3600) as rt:
        subscription = rt.updates()
        for i, event in enumerate(_events(20)):
            assert await rt.ingest(event)
            with anyio.fail_after(10):
                update = await anext(aiter(subscription))
            assert (update.key, update.event_time) == (event["card"], event["ts"]), i
            with anyio.fail_after(10):
                await anext(aiter(subscription))  # the windowed group's
        # an event that came while its worker was busy leaves once the worker took its frame
        # in, with no call after it
        first, second = _events(2, keys=1)
        first["ts"] = second["ts"] = T0 + 1_000
        assert await rt.ingest(first) and await rt.ingest(second)
        seen = []
        with anyio.fail_after(10):
            async for update in subscription:
                seen.append(update.event_time)
                if len(seen) == 4:
                    break


async def test_a_busy_workers_buffer_leaves_as_one_frame_of_busy_batches() -> None:
    """The frames a worker is sent: its first buffer at once (it is idle), then, while it has
    not taken that frame in (stopped here), one frame of ``BUSY_BATCHES`` batches; every event
    is applied once it goes on."""
    from runtime._workers.front import BUSY_BATCHES

    # linger of an hour: only the busy size (or the idle worker's answer) sends a buffer
    rt = FeatureRuntime(FEATURE_SET, workers=1, batch_size=64, linger=3600, shutdown_timeout=5)
    async with rt:
        front = rt._front
        assert front is not None
        sizes: list[int] = []
        queue_events = front.queue_events

        def recorded(index: int) -> Any:
            sizes.append(len(front.buffers[index]))
            return queue_events(index)

        front.queue_events = recorded  # type: ignore[method-assign]
        pid = front.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            count = 64 + 64 * BUSY_BATCHES + 10
            assert await rt.ingest_many(_events(count, keys=100)) == count
        finally:
            os.kill(pid, signal.SIGCONT)
        # the first chunk left at once; the next waited until they made a busy frame; the
        # last 10 wait behind it
        assert sizes == [64, 64 * BUSY_BATCHES], sizes
        assert sum(map(len, front.buffers)) == 10
        await rt.flush()
        assert (await rt.statistics()).events_processed == count


async def test_a_busy_workers_frames_grow_to_busy_batches_unless_its_events_are_large() -> None:
    """While a worker is busy its buffer grows to ``BUSY_BATCHES`` batches, fewer for large
    payloads (``BUSY_FRAME_BYTES``, judged by the longest routed so far), and every event is
    applied either way."""
    from runtime._workers.front import BUSY_BATCHES, BUSY_FRAME_BYTES

    async with FeatureRuntime(FEATURE_SET, workers=1, batch_size=512) as rt:
        front = rt._front
        assert front is not None
        assert front._busy_size == 512 * BUSY_BATCHES
        small = [msgspec.json.encode(e) for e in _events(2000)]
        assert await rt.ingest_many(small) == 2000
        assert front._busy_size == 512 * BUSY_BATCHES  # ~50-byte payloads: room for all
        pad = "x" * (BUSY_FRAME_BYTES // (512 * 4))  # 4 batches of these fill a frame
        large = [msgspec.json.encode({**e, "pad": pad}) for e in _events(600, keys=3)]
        assert await rt.ingest_many(large) == 600
        assert front._busy_size == 512 * 3  # 64 MiB // (512 x 32.8 KB)
        await rt.flush()
        vectors = await rt.get_many(["c0", "c1", "c2"])
        # 200 small events each, and 200 large ones each
        assert [vectors[key].values["n"] for key in ("c0", "c1", "c2")] == [400, 400, 400]
