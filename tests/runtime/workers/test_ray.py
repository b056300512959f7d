"""Workers as Ray actors (``backend="ray"``, ``docs/scaling.md``, "On a Ray cluster"), on a
real local Ray cluster started once for the module (``ray.init(num_cpus=4)``: logical CPUs,
so that three workers of one CPU each fit on this 2-core machine):

- the determinism oracle: workers on Ray give the values and the stream of updates of the
  in-process runtime, on random out-of-order streams;
- a worker actor killed with ``ray.kill`` mid-stream is started again (a new actor), restores
  its key groups and is replayed the logged events: the values and updates equal an
  uninterrupted run, none lost and none twice;
- a checkpoint of two Ray workers restores into three;
- the cluster's resources are free again after the runtime stops; a worker that cannot be
  placed fails the start with the cluster's free resources; misuse gets a clear error.

Ray is a dev dependency: the module skips without it, and fails under
FEATURIST_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings

from runtime import CheckpointError, ConfigError, FeatureRuntime, RayBackend

from ...conftest import services_required
from .test_identical import FEATURE_SET as IDENTICAL_SET
from .test_identical import _results, own_keys
from .test_identical import events as event_lists
from .test_recovery import FEATURE_SET, KEYS, _config, _drain, _events, _uninterrupted, _values

#: logical CPUs of the test cluster
CPUS = 4


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    try:
        import ray
    except ImportError as exc:
        if services_required():
            pytest.fail(f"Ray is required (FEATURIST_REQUIRE_SERVICES) but missing: {exc!r}")
        pytest.skip("Ray is not installed (pip install 'featurist[ray]')")
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _backend(num_cpus: float = 1) -> RayBackend:
    return RayBackend(num_cpus=num_cpus, placement_timeout=30)


def _free_cpus(ray: Any) -> float:
    return float(ray.available_resources().get("CPU", 0.0))


async def _freed(ray: Any, cpus: float) -> None:
    """Wait until the cluster has ``cpus`` free again (Ray frees a killed actor's resources
    a moment after it is gone)."""
    with anyio.fail_after(20):
        while _free_cpus(ray) != cpus:
            await anyio.sleep(0.1)


# -- the determinism oracle ----------------------------------------------------------------------
SETTINGS = [(0, 1), (2, 1), (2, 3)]  # (workers, shards): in process, then on Ray


@pytest.fixture(scope="module")
def runtimes(ray_cluster: Any) -> Iterator[tuple[BlockingPortal, list[Any]]]:
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        started = []
        for workers, shards in SETTINGS:
            # half a CPU each: the four workers leave two CPUs for the other tests
            options: dict[str, Any] = {"backend": _backend(0.5)} if workers else {}
            rt = FeatureRuntime(
                IDENTICAL_SET, shards=shards, workers=workers, batch_size=16, **options
            )
            stack.enter_context(portal.wrap_async_context_manager(rt))
            started.append((rt, rt.updates(buffer=1_000_000)))
        yield portal, started


_examples = itertools.count()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=event_lists, as_bytes=st.booleans())
def test_workers_on_ray_give_the_values_and_updates_of_the_in_process_runtime(
    runtimes: tuple[BlockingPortal, list[Any]], stream: list[dict[str, Any]], as_bytes: bool
) -> None:
    portal, started = runtimes
    _, payloads, keys = own_keys(stream, f"r{next(_examples)}-", as_bytes)
    reference = portal.call(_results, started[0][0], started[0][1], payloads, keys)
    for (rt, subscription), setting in zip(started[1:], SETTINGS[1:], strict=True):
        got = portal.call(_results, rt, subscription, payloads, keys)
        assert got[0] == reference[0], f"get values differ at workers, shards = {setting}"
        assert got[1] == reference[1], f"updates differ at workers, shards = {setting}"


# -- recovery and rescaling ---------------------------------------------------------------------
async def test_a_worker_actor_killed_mid_stream_gives_the_results_of_an_uninterrupted_run(
    ray_cluster: Any, tmp_path: Path
) -> None:
    events = _events(3000)
    want = await _uninterrupted(events, shards=2)
    free = _free_cpus(ray_cluster)
    killed = []
    async with FeatureRuntime(
        FEATURE_SET,
        shards=2,
        workers=2,
        batch_size=16,
        checkpoints=_config(tmp_path),
        backend=_backend(),
    ) as rt:
        front = rt._front
        assert front is not None
        subscription = rt.updates(buffer=1_000_000)
        first = list(front.pids)
        for index, start in enumerate(range(0, len(events), 250)):
            await rt.ingest_many(events[start : start + 250])
            if index == 3:
                await rt.checkpoint()
            if index in (6, 9):  # no flush before: frames are in flight
                worker = front._workers[index % 2]
                killed.append(worker.pid)
                ray_cluster.kill(worker.process.actor, no_restart=True)
        await rt.flush()
        updates = await _drain(subscription)
        values = _values(await rt.get_many(range(KEYS)))
        after = list(front.pids)
    assert values == want[0]
    assert updates == want[1]  # every update once: none lost, none twice
    assert killed == first  # worker 0 then worker 1 ...
    assert not set(after) & set(first)  # ... each started again, as a new actor
    await _freed(ray_cluster, free)  # every actor's CPU is free again


async def test_a_checkpoint_of_two_ray_workers_restores_into_three(
    ray_cluster: Any, tmp_path: Path
) -> None:
    events = _events(2000)
    want = await _uninterrupted(events, shards=2)
    free = _free_cpus(ray_cluster)
    # half a CPU each: three fit in the two CPUs the oracle's workers leave free
    options: dict[str, Any] = {"checkpoints": _config(tmp_path), "backend": _backend(0.5)}
    async with FeatureRuntime(FEATURE_SET, workers=2, shards=2, **options) as rt:
        await rt.ingest_many(events[:1200])
        assert (await rt.checkpoint()).position == 1200
    async with FeatureRuntime(FEATURE_SET, workers=3, shards=1, **options) as rt:
        assert rt.restored is not None and rt.restored.position == 1200
        assert len(rt._front.pids) == 3  # type: ignore[union-attr]
        await rt.ingest_many(events[1200:])
        await rt.flush()
        assert _values(await rt.get_many(range(KEYS))) == want[0]
        assert (await rt.statistics()).events_processed == 2000
    await _freed(ray_cluster, free)


# -- placement and misuse -----------------------------------------------------------------------
async def test_a_worker_that_cannot_be_placed_fails_the_start_naming_what_is_free(
    ray_cluster: Any,
) -> None:
    free = _free_cpus(ray_cluster)
    backend = RayBackend(num_cpus=CPUS + 1, placement_timeout=2)
    with pytest.raises(RuntimeError, match=r"worker 0 was not placed on Ray within 2 s") as info:
        async with FeatureRuntime(FEATURE_SET, workers=1, shards=1, backend=backend):
            pass
    assert "num_cpus=5" in str(info.value)
    assert f"the cluster has free: CPU={free:g}" in str(info.value)
    await _freed(ray_cluster, free)  # the actor waiting for a place is gone


def test_misuse_of_the_backend_is_refused_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"backend='ray' runs workers: give workers >= 1"):
        FeatureRuntime(FEATURE_SET, backend="ray")
    with pytest.raises(ConfigError, match=r"backend must be 'processes', 'ray' or a RayBackend"):
        FeatureRuntime(FEATURE_SET, workers=1, backend="dask")
    with pytest.raises(ConfigError, match=r"actor_options may not set 'max_restarts'"):
        RayBackend(actor_options={"max_restarts": 3})
    with pytest.raises(ConfigError, match=r"give RayBackend\(num_cpus=\.\.\.\)"):
        RayBackend(actor_options={"num_cpus": 2})
    with pytest.raises(ConfigError, match=r"'lifetime' \(the workers end with the runtime"):
        RayBackend(actor_options={"lifetime": "detached"})
    with pytest.raises(ConfigError, match=r"'name' \(each worker is an actor of its own"):
        RayBackend(actor_options={"name": "w"})
    with pytest.raises(ConfigError, match=r"num_cpus must be a number >= 0"):
        RayBackend(num_cpus=-1)
    real = importlib.util.find_spec

    def without_ray(name: str, *args: Any) -> Any:
        return None if name == "ray" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_ray)
    with pytest.raises(ConfigError, match=r"pip install 'featurist\[ray\]'"):
        FeatureRuntime(FEATURE_SET, workers=1, backend="ray")


async def test_the_tcp_stream_to_a_ray_worker_probes_an_idle_peer() -> None:
    """Keepalive: a node lost without closing its sockets reads, while the link is idle, as
    the end of the stream within about half a minute; no bound on unacknowledged data, which
    would cut a live peer that holds its end back (backpressure)."""
    import socket

    from runtime._workers.protocol import Connection, FromWorker

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    conn = await Connection.of(accepted, FromWorker)
    try:
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
    finally:
        await conn.aclose()
        client.close()
        server.close()


async def test_a_checkpoint_directory_a_worker_does_not_see_fails_the_start(
    ray_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers on other nodes write their parts into the checkpoint directory: one that
    does not see it as the front does (a path not shared between nodes) fails the start.
    Simulated here by a probe file the workers look for where the front did not write it."""
    from runtime._workers import front as front_module

    monkeypatch.setattr(front_module, "_touch", lambda path: None)  # "another node's disk"
    with pytest.raises(CheckpointError, match=r"worker 0 \(pid \d+\) does not see the checkpoint"):
        async with FeatureRuntime(
            FEATURE_SET, workers=1, shards=1, checkpoints=_config(tmp_path), backend=_backend(0.5)
        ):
            pass
    monkeypatch.undo()
    async with FeatureRuntime(  # the same directory, seen by every worker: it starts
        FEATURE_SET, workers=1, shards=1, checkpoints=tmp_path, backend=_backend(0.5)
    ) as rt:
        await rt.ingest_many(_events(10))


def test_a_worker_that_cannot_reach_the_front_says_which_address_to_give() -> None:
    import socket

    from runtime._workers.protocol import connect_back

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(ConnectionError, match=r"cannot reach the front at 127\.0\.0\.1:\d+ .*"):
        connect_back("127.0.0.1", port, b"x" * 32)  # nobody listens there now
