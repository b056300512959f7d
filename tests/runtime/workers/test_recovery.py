"""Exactly-once recovery with workers (``docs/scaling.md``, "How recovery works"): a worker
killed with SIGKILL mid-stream is started again, restores its key groups from the last
aligned checkpoint and is sent the events since: the values (``get_many`` of every key) and
the stream of updates of every key equal those of an uninterrupted in-process run, none lost
and none twice. Also: a checkpoint taken at one ``workers``/``shards`` restores into another
(in-process included, both ways) by key group; the front's log is bounded by checkpoints;
beyond ``max_restarts`` the runtime fails with a clear error; no process outlives the
runtime, and its shutdown meets its deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    CheckpointConfig,
    Count,
    FeatureRuntime,
    FeatureSet,
    Last,
    Mean,
    RuntimeClosed,
    Sliding,
    Sum,
    Tumbling,
)
from runtime._workers.backends import LocalBackend

from .test_workers import _alive

FEATURE_SET = FeatureSet(
    name="r",
    key="card",
    time="ts",
    max_out_of_orderness=200,
    features=[
        Sum(name="total", field="amount"),
        Count(name="n"),
        Last(name="last", field="amount"),
        Mean(name="w_avg", field="amount", window=Sliding(size=500)),
        # closes travel as rows of another kind
        Sum(name="t_sum", field="amount", window=Tumbling(size=700)),
    ],
)
T0 = 1_000_000
KEYS = 40
#: examples of the kill-anywhere test (each starts a runtime with two workers); set the
#: variable for a longer hunt
EXAMPLES = int(os.environ.get("FEATURIST_RECOVERY_EXAMPLES", "6"))


def _events(count: int, seed: int = 0) -> list[dict[str, Any]]:
    # out of order by up to 150 ms, within the lateness allowed
    return [
        {
            "card": (i * 7 + seed) % KEYS,
            "ts": T0 + i * 3 - ((i * 37 + seed) % 50),
            "amount": (i * 13 + seed) % 101,
        }
        for i in range(count)
    ]


def _config(directory: Path, **options: Any) -> CheckpointConfig:
    return CheckpointConfig(directory=str(directory), interval=None, **options)


async def _drain(subscription: Any) -> dict[tuple[Any, str], list[Any]]:
    updates: dict[tuple[Any, str], list[Any]] = {}
    depth = subscription.statistics().depth
    iterator = aiter(subscription)
    for _ in range(depth):
        update = await anext(iterator)
        updates.setdefault((update.key, update.group), []).append(
            (update.event_time, update.values, update.errors, update.kind, update.window)
        )
    return updates


def _values(vectors: dict[Any, Any]) -> dict[Any, Any]:
    return {key: (v.values, v.last_event_time) for key, v in vectors.items()}


async def _uninterrupted(events: list[Any], **options: Any) -> tuple[Any, Any]:
    async with FeatureRuntime(FEATURE_SET, **options) as rt:
        subscription = rt.updates(buffer=1_000_000)
        await rt.ingest_many(events)
        await rt.flush()
        updates = await _drain(subscription)
        return _values(await rt.get_many(range(KEYS))), updates


async def _killed_run(
    directory: Path, events: list[Any], chunk: int, checkpoint_at: int, kill_at: list[int]
) -> tuple[Any, Any, list[int | None]]:
    """Ingest ``events`` in chunks, with a checkpoint after chunk ``checkpoint_at`` and a
    SIGKILL of worker ``kill_at[i] % 2`` after chunk ``kill_at[i]`` (no flush before: frames
    are in flight)."""
    seen: list[int | None] = []
    async with FeatureRuntime(
        FEATURE_SET, shards=2, workers=2, batch_size=16, checkpoints=_config(directory)
    ) as rt:
        front = rt._front
        assert front is not None
        subscription = rt.updates(buffer=1_000_000)
        for index, start in enumerate(range(0, len(events), chunk)):
            await rt.ingest_many(events[start : start + chunk])
            if index == checkpoint_at:
                await rt.checkpoint()
            if index in kill_at:
                pid = front.pids[index % 2]
                seen.append(pid)
                assert pid is not None
                # a worker killed at an earlier chunk may be gone before the front has noticed
                # (it still shows the pid): it is being started again, as this kill would do
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await rt.flush()
        seen.extend(front.pids)
        updates = await _drain(subscription)
        values = _values(await rt.get_many(range(KEYS)))
    return values, updates, seen


async def test_a_worker_killed_mid_stream_gives_the_results_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    events = _events(3000)
    want = await _uninterrupted(events, shards=3)
    values, updates, pids = await _killed_run(tmp_path, events, 250, 3, [6, 9])
    assert values == want[0]
    assert updates == want[1]  # every update once: none lost, none twice
    assert len(set(pids)) == 4  # two workers, each started again once
    assert not any(_alive(pid) for pid in pids)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(50, 1500),
    chunk=st.integers(20, 400),
    checkpoint_at=st.integers(-1, 4),
    kills=st.lists(st.integers(0, 20), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
)
def test_a_kill_anywhere_in_the_stream_loses_and_repeats_nothing(
    tmp_path_factory: Any, count: int, chunk: int, checkpoint_at: int, kills: list[int], seed: int
) -> None:
    directory = tmp_path_factory.mktemp("ckp")
    events = _events(count, seed)
    chunks = -(-count // chunk)
    kill_at = [at % chunks for at in kills]  # of the chunks, each kills worker at % 2

    async def both() -> tuple[Any, Any]:
        want = await _uninterrupted(events, shards=1)
        got = await _killed_run(directory, events, chunk, checkpoint_at, kill_at)
        return want, got

    want, got = anyio.run(both)
    assert got[0] == want[0]
    assert got[1] == want[1]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"workers": 2, "shards": 2}, {"workers": 1, "shards": 1}),
        ({"workers": 2, "shards": 2}, {"workers": 3, "shards": 2}),
        ({"workers": 2, "shards": 2}, {"workers": 0, "shards": 3}),
        ({"workers": 0, "shards": 4}, {"workers": 2, "shards": 1}),
        ({"workers": 3, "shards": 1}, {"workers": 2, "shards": 3}),
    ],
)
async def test_a_checkpoint_restores_into_other_workers_and_shards_by_key_group(
    tmp_path: Path, before: dict[str, int], after: dict[str, int]
) -> None:
    events = _events(2000)
    want = await _uninterrupted(events, shards=2)
    async with FeatureRuntime(FEATURE_SET, checkpoints=_config(tmp_path), **before) as rt:
        await rt.ingest_many(events[:1200])
        first = await rt.checkpoint()
        assert first.position == 1200
    # (the shutdown took a second checkpoint, of the same state: its position is 1200 too)
    async with FeatureRuntime(FEATURE_SET, checkpoints=_config(tmp_path), **after) as rt:
        assert rt.restored is not None and rt.restored.position == 1200
        assert rt.position == 1200
        subscription = rt.updates(buffer=1_000_000)
        await rt.ingest_many(events[1200:])
        await rt.flush()
        assert _values(await rt.get_many(range(KEYS))) == want[0]
        updates = await _drain(subscription)
        stats = await rt.statistics()
    # the updates after the restore are those of the uninterrupted run's last 800 events
    for key, rows in updates.items():
        assert rows == want[1][key][-len(rows) :]
    assert stats.events_ingested == 2000
    assert stats.events_processed == 2000


async def test_the_log_is_bounded_by_the_checkpoints_it_takes(tmp_path: Path) -> None:
    events = _events(2000)
    config = _config(tmp_path, max_log_events=100)
    async with FeatureRuntime(
        FEATURE_SET, shards=1, workers=2, batch_size=20, checkpoints=config
    ) as rt:
        front = rt._front
        assert front is not None
        most = sampled = 0
        relieve = front.relieve_log

        async def measured() -> None:  # at its fullest: before a checkpoint empties it
            nonlocal most, sampled
            most = max(most, front.log_events)
            sampled += 1
            await relieve()

        front.relieve_log = measured  # type: ignore[method-assign]
        for start in range(0, 2000, 20):
            await rt.ingest_many(events[start : start + 20])
            most = max(most, front.log_events)
        assert sampled >= 15  # measured where it fills, before each checkpoint
        # the log never holds more than its bound and one call's events (what the busy
        # workers' buffers hold counts: it enters the log as it leaves)
        assert most <= 100 + 20
        assert rt.last_checkpoint is not None and rt.last_checkpoint.sequence >= 15
        # a call given an offset is not split by the checkpoint: it is taken after it
        await rt.ingest_many(_events(500, seed=1), offset="o-1")
        assert rt.last_checkpoint.offset == "o-1" and rt.last_checkpoint.position == 2500
        assert front.log_events == 0
        pid = front.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await rt.ingest_many(events[:10])
        await rt.flush()
        assert (await rt.statistics()).events_processed == 2510


def test_the_log_bound_is_checked() -> None:
    with pytest.raises(Exception, match="max_log_events must be an int >= 1"):
        CheckpointConfig(directory="/tmp/x", max_log_events=0)


async def test_beyond_max_restarts_the_runtime_fails_naming_the_worker(tmp_path: Path) -> None:
    rt = FeatureRuntime(
        FEATURE_SET, shards=1, workers=2, max_restarts=1, checkpoints=_config(tmp_path)
    )
    pids: list[int | None] = []
    async with rt:
        front = rt._front
        assert front is not None
        for _ in range(2):
            pid = front.pids[1]
            pids.append(pid)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with anyio.fail_after(20):
                while front.failure is None and (pid in front.pids or front.restarting):
                    await anyio.sleep(0.01)
        with pytest.raises(RuntimeClosed, match=r"worker 1 .*died.*max_restarts=1"):
            with anyio.fail_after(20):
                while True:
                    await rt.ingest_many(_events(50))
                    await rt.flush()
        pids.extend(front.pids)
    assert not any(_alive(pid) for pid in pids if pid is not None)


async def test_a_checkpoint_a_worker_dies_in_is_taken_again_once_it_runs(
    tmp_path: Path,
) -> None:
    events = _events(1000)
    want = await _uninterrupted(events, shards=1)
    async with FeatureRuntime(
        FEATURE_SET, shards=1, workers=2, checkpoints=_config(tmp_path)
    ) as rt:
        front = rt._front
        assert front is not None
        subscription = rt.updates(buffer=1_000_000)
        await rt.ingest_many(events[:400])
        await rt.checkpoint()
        await rt.ingest_many(events[400:700])
        pid = front.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it cannot answer the barrier: then it dies
        async with anyio.create_task_group() as tasks:

            async def kill() -> None:
                await anyio.sleep(0.3)
                os.kill(pid, signal.SIGKILL)

            tasks.start_soon(kill)
            again = await rt.checkpoint()
        # checkpoint 2 was abandoned with the worker; 3 holds the same position
        assert again.sequence == 3 and again.position == 700
        assert pid not in front.pids
        await rt.ingest_many(events[700:])
        await rt.flush()
        assert _values(await rt.get_many(range(KEYS))) == want[0]
        assert await _drain(subscription) == want[1]
    names = sorted(os.listdir(tmp_path))
    # the abandoned checkpoint's parts were deleted when the next one was written
    assert not any(name.startswith("checkpoint-000000000002") for name in names)


async def test_the_shutdown_meets_its_deadline_with_a_worker_stopped(tmp_path: Path) -> None:
    rt = FeatureRuntime(
        FEATURE_SET, shards=1, workers=2, shutdown_timeout=1.0, checkpoints=_config(tmp_path)
    )
    async with rt:
        front = rt._front
        assert front is not None
        await rt.ingest_many(_events(500))
        pids = list(front.pids)
        assert pids[1] is not None
        os.kill(pids[1], signal.SIGSTOP)  # the shutdown checkpoint waits for it in vain
        started = time.perf_counter()
    assert time.perf_counter() - started < 1.0 + 5.0
    assert not any(_alive(pid) for pid in pids)


async def test_events_a_worker_refused_are_not_reported_again_after_its_restart(
    tmp_path: Path,
) -> None:
    deep: Any = 1
    for _ in range(70):
        deep = [deep]
    # bytes: the front reads the key and time alone; the worker refuses the value
    bad = [msgspec.json.encode({"card": k, "ts": T0, "amount": deep}) for k in range(KEYS)]
    async with FeatureRuntime(
        FEATURE_SET, shards=1, workers=2, checkpoints=_config(tmp_path)
    ) as rt:
        front = rt._front
        assert front is not None
        await rt.ingest_many(_events(100))
        await rt.ingest_many(bad)
        await rt.ingest_many(_events(100, seed=3))
        await rt.flush()
        assert len(rt.dead_letters.letters(DeadLetterReason.REJECTED)) == KEYS
        pids = list(front.pids)
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(20):
            while any(pid in front.pids for pid in pids) or front.restarting:
                await anyio.sleep(0.01)
        await rt.flush()
        assert len(rt.dead_letters.letters(DeadLetterReason.REJECTED)) == KEYS
        stats = await rt.statistics()
        assert stats.events_rejected == KEYS and stats.events_processed == 200


def _counters(metrics: Any) -> dict[str, int]:
    """The merged metrics' counters by name (what Prometheus takes as counters)."""
    found = {
        "events_processed": metrics.events_processed,
        **{f"dead_letters/{r}": n for r, n in metrics.dead_letters.items()},
    }
    for name, feature in metrics.features.items():
        found[f"feature/{name}/events"] = feature.events
        found[f"feature/{name}/errors"] = feature.errors
    for actor in metrics.actors:
        found[f"actor/{actor.actor}/processed"] = actor.processed
    for name, group in metrics.groups.items():
        found[f"group/{name}/late"] = group.late_dropped + group.late_applied
    return found


async def test_merged_counters_never_drop_when_a_worker_is_started_again(
    tmp_path: Path,
) -> None:
    """A restarted worker counts from its checkpoint (its actors from nothing): held at
    their highest per worker, the merged counters stay flat, then grow on, never drop (which
    Prometheus would take for a reset)."""
    events = _events(2000)
    async with FeatureRuntime(
        FEATURE_SET, shards=2, workers=2, batch_size=16, checkpoints=_config(tmp_path)
    ) as rt:
        front = rt._front
        assert front is not None
        await rt.ingest_many(events[:600])
        await rt.checkpoint()
        await rt.ingest_many(events[600:1400])
        await rt.flush()
        before = _counters(await rt.metrics())
        pid = front.pids[0]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(30):
            while pid in front.pids or front.restarting:
                await anyio.sleep(0.01)
        await rt.flush()
        after = _counters(await rt.metrics())
        assert {name: n for name, n in after.items() if n < before.get(name, 0)} == {}
        await rt.ingest_many(events[1400:])
        await rt.flush()
        last = _counters(await rt.metrics())
        assert last["events_processed"] == 2000 > before["events_processed"]
        assert all(last[name] >= n for name, n in after.items())


def test_a_restarted_workers_counters_carry_on_or_hold() -> None:
    """What a worker started again counts from nothing (its actors, sources, dead letters)
    is added to what the one before had counted; what it restores from its checkpoint and
    counts again (features, groups) is held until it passes the value reported."""
    from runtime import ActorMetrics, FeatureMetrics
    from runtime._workers.stats import HeldCounters

    def part(processed: int, events: int, letters: int) -> Any:
        actor = ActorMetrics(
            actor="a", kind="features", group="g0", shard=0, mailbox_depth=0,
            mailbox_capacity=1, senders_waiting=0, processed=processed, errors=0, restarts=0,
        )  # fmt: skip
        feature = FeatureMetrics(
            feature="n", type="count", group="g0", events=events, events_per_second=None,
            latency_p50_us=None, latency_p95_us=None, latency_p99_us=None,
            latency_sampled_events=0, errors=0,
        )  # fmt: skip
        return (actor, feature, {"failed": letters})

    held = HeldCounters()

    def report(processed: int, events: int, letters: int, pid: int) -> tuple[int, int, int]:
        actor, feature, dead = part(processed, events, letters)
        parts = _Parts(actors=(actor,), features={"n": feature}, dead_letters=dead)
        got = held.report(parts, pid)
        return got.actors[0].processed, got.features["n"].events, got.dead_letters["failed"]

    assert report(100, 100, 2, pid=10) == (100, 100, 2)
    assert report(5, 60, 0, pid=11) == (105, 100, 2)  # started again: actors anew, features kept
    assert report(30, 120, 1, pid=11) == (130, 120, 3)
    assert report(40, 125, 1, pid=11) == (140, 125, 3)
    # started again, and its actors already past the old counts when next read: still added
    assert report(150, 130, 5, pid=12) == (290, 130, 8)


class _Parts(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of ``RuntimeMetrics`` that hold counters of both kinds."""

    actors: tuple[Any, ...]
    features: dict[str, Any]
    dead_letters: dict[str, int]


class _Vanishing:
    """A worker's handle whose process the backend can be made to report ended (``gone``)
    while it runs and its stream stays open: as Ray reports the actor of a node that was lost
    without closing its sockets."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.gone = False

    @property
    def pid(self) -> int | None:
        return self._handle.pid  # type: ignore[no-any-return]

    @property
    def exitcode(self) -> int | None:
        return self._handle.exitcode  # type: ignore[no-any-return]

    def is_alive(self) -> bool:
        return not self.gone and bool(self._handle.is_alive())

    def kill(self) -> None:
        self._handle.kill()

    def join(self, timeout: float | None = None) -> None:
        self._handle.join(timeout)


class _WatchedBackend(LocalBackend):
    """Processes on this machine, watched by the front as it watches Ray's actors (any
    backend but ``"processes"``, whose ended process always ends its stream)."""

    name = "watched"

    def __init__(self) -> None:
        self.handles: list[_Vanishing] = []

    async def spawn(self, spec: Any, track: Any) -> tuple[Any, Any]:
        handle, sock = await super().spawn(spec, track)
        self.handles.append(_Vanishing(handle))
        return self.handles[-1], sock


@pytest.mark.parametrize("restarts", [False, True])
async def test_a_worker_its_backend_reports_ended_is_taken_as_died_with_its_stream_open(
    tmp_path: Path, restarts: bool
) -> None:
    # the front asks the backend every WATCH_INTERVAL (1 s) whether each worker still runs
    options: dict[str, Any] = {"checkpoints": _config(tmp_path)} if restarts else {}
    rt = FeatureRuntime(FEATURE_SET, shards=1, workers=1, **options)
    backend = _WatchedBackend()
    assert rt._front is not None
    rt._front._backend = backend  # the front starts its workers when the runtime starts
    events = _events(300)
    async with rt:
        front = rt._front
        assert front is not None
        await rt.ingest_many(events[:100])
        await rt.flush()
        first = front.pids[0]
        backend.handles[0].gone = True  # the process runs on, its stream open
        if not restarts:
            with pytest.raises(RuntimeClosed, match="its process ended, as the watched backend"):
                with anyio.fail_after(10):
                    while True:
                        await rt.ingest_many(events[100:110])
                        await rt.flush()
            return
        with anyio.fail_after(20):  # started again: a new process, the key groups restored
            while len(backend.handles) < 2 or front.restarting:
                await anyio.sleep(0.01)
        assert front.pids[0] != first
        await rt.ingest_many(events[100:])
        await rt.flush()
        got = {key: v.values for key, v in (await rt.get_many(list(range(KEYS)))).items()}
    async with FeatureRuntime(FEATURE_SET, shards=1) as one:
        await one.ingest_many(events)
        await one.flush()
        want = {key: v.values for key, v in (await one.get_many(list(range(KEYS)))).items()}
    assert got == want


@pytest.mark.parametrize(
    ("host", "bound"),
    [("127.0.0.1", "127.0.0.1"), ("203.0.113.7", "0.0.0.0"), ("::1", "::1")],
)
def test_the_front_listens_on_its_host_or_on_every_interface_when_it_is_not_local(
    host: str, bound: str
) -> None:
    # 203.0.113.7 (TEST-NET-3) is no address of this machine: an address the workers reach
    # the front at through NAT or a port mapping, so the front listens on every interface
    from runtime._workers.backends import _listener

    try:
        sock = _listener(host)
    except OSError as exc:  # no IPv6 on this machine
        pytest.skip(f"cannot listen on {host}: {exc}")
    with sock:
        assert sock.getsockname()[0] == bound
        assert sock.getsockname()[1] > 0


async def test_a_checkpoint_of_workers_refuses_another_key_field(tmp_path: Path) -> None:
    """The front records the key field in the checkpoint's own file, as a runtime in process
    does; a restore with another key field is refused, with workers or without."""
    import msgspec.structs

    from runtime import CheckpointError

    async with FeatureRuntime(
        FEATURE_SET, shards=1, workers=2, checkpoints=_config(tmp_path)
    ) as rt:
        await rt.ingest_many(_events(100))
    rekeyed = msgspec.structs.replace(FEATURE_SET, key="merchant")
    settings: list[dict[str, Any]] = [{"shards": 1, "workers": 2}, {"shards": 2}]
    for options in settings:
        with pytest.raises(
            CheckpointError, match="taken with the key field 'card', not 'merchant'"
        ):
            async with FeatureRuntime(rekeyed, checkpoints=_config(tmp_path), **options):
                pass


def _truncate_a_part(directory: Path) -> None:
    [part] = sorted(directory.glob("checkpoint-*.w0.fck"))[-1:]
    part.write_bytes(part.read_bytes()[:10])


async def test_a_damaged_part_of_the_only_checkpoint_is_refused(tmp_path: Path) -> None:
    """A worker's part unreadable makes the checkpoint unreadable; with no other one, the
    start is refused rather than empty (its empty shutdown checkpoint would then pass for a
    restore)."""
    from runtime import CheckpointError

    config = CheckpointConfig(directory=str(tmp_path), interval=None, keep=1)
    async with FeatureRuntime(FEATURE_SET, shards=1, workers=2, checkpoints=config) as rt:
        await rt.ingest_many(_events(100))
    _truncate_a_part(tmp_path)
    with pytest.raises(CheckpointError, match="but none could be restored"):
        async with FeatureRuntime(FEATURE_SET, shards=1, workers=2, checkpoints=config):
            pass
