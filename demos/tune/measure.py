"""One run of the tuner: a workload through a FeatureRuntime at one setting, in a process of
its own.

``run_in_child`` starts a child process (``spawn``: a fresh interpreter, so the peak RSS it
reports is its own and no run inherits another's memory) that simulates the workload, starts
the runtime, loads its caches, then hands it the events with ``ingest_many`` as fast as it
takes them and waits until every one is applied. Meanwhile a sampler reads the depth of every
actor's mailbox every ``SAMPLE_EVERY`` seconds with ``rt.mailboxes()``: a read of counters,
which does not go through the mailboxes (``rt.statistics()`` asks each actor, and an ask waits
behind a full mailbox).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import anyio
import anyio.to_thread

import runtime
from actors import run
from demos.bench._common import peak_rss_mib
from runtime import FeatureRuntime

from .._cli import frozen_heap
from .workloads import WORKLOADS, Prepared

__all__ = ["SAMPLE_EVERY", "RunFailed", "Setting", "run_in_child"]

#: Seconds between two samples of the mailboxes' depth.
SAMPLE_EVERY = 0.005
#: Seconds between two progress reports of a run.
REPORT_EVERY = 0.1


@dataclass(frozen=True, kw_only=True)
class Setting:
    """What one run runs: a workload, its size, and the runtime's options."""

    workload: str
    events: int
    seed: int
    shards: int
    batch_size: int
    mailbox_capacity: int


class RunFailed(RuntimeError):
    """A run's child process failed or ended without a result; the message says why (with the
    child's traceback when it had one)."""


#: What a run tells its parent while it runs: ``("phase", text)``, ``("progress", events
#: handed to the runtime)``, and at the end ``("result", dict)`` or ``("error", traceback)``.
Report = Callable[[str, Any], None]


async def run_in_child(setting: Setting, report: Report) -> dict[str, Any]:
    """Run ``setting`` in a child process; pass its phase and progress to ``report`` as they
    come and return its result (see ``measure``).

    Raises:
        RunFailed: the child raised, or ended without a result.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=child, args=(asdict(setting), queue), name="featurist-tune", daemon=True
    )
    process.start()
    try:
        while True:
            try:
                kind, value = await anyio.to_thread.run_sync(queue.get, True, 0.2)
            except Empty:
                if not process.is_alive():
                    raise RunFailed(
                        f"the run's child process ended (exit code {process.exitcode}) "
                        "without a result"
                    ) from None
                continue
            if kind == "result":
                result: dict[str, Any] = value
                return result
            if kind == "error":
                raise RunFailed(f"the run failed in its child process:\n{value}")
            report(kind, value)
    finally:
        # on success the child is ending; on a failure or Ctrl-C it may not be
        await anyio.to_thread.run_sync(process.join, 5.0)
        if process.is_alive():
            process.kill()
            await anyio.to_thread.run_sync(process.join)
        queue.close()
        queue.join_thread()


def child(spec: dict[str, Any], queue: Any) -> None:
    """The body of the child process: run ``Setting(**spec)`` and put what it reports, then
    its result or its traceback, on ``queue``. Ctrl-C ends it quietly (the parent reports)."""
    try:
        runtime.configure_logging(level="warning")
        setting = Setting(**spec)
        result = run(lambda: measure(setting, lambda kind, value: queue.put((kind, value))))
        queue.put(("result", result))
    except KeyboardInterrupt:
        pass
    except BaseException:
        queue.put(("error", traceback.format_exc()))


async def measure(setting: Setting, report: Report) -> dict[str, Any]:
    """Simulate ``setting``'s workload and run it; return the measures as plain data:

    ``events`` (applied), ``rejected``, ``seconds`` (from the first event handed to the
    runtime until the last is applied), ``events_per_second``, ``latency_p50_ms`` and
    ``latency_p99_ms`` (ingest to update, from ``rt.statistics()``), ``max_mailbox_depth``
    (the largest seen by the sampler or at the end), ``samples`` (of the sampler),
    ``actors`` (with a mailbox), ``rss_before_bytes`` (when the runtime was about to start,
    with the simulated events in memory) and ``peak_rss_bytes`` (the process's peak).
    """
    workload = WORKLOADS[setting.workload]
    report("phase", "simulating")
    with tempfile.TemporaryDirectory(prefix="featurist-tune-") as directory:
        prepared = workload.prepare(setting.events, setting.seed, Path(directory))
        with frozen_heap():  # the simulated events, out of the collector's sight
            return await _run(prepared, setting, report)


async def _run(prepared: Prepared, setting: Setting, report: Report) -> dict[str, Any]:
    rss_before = _rss_now()
    async with FeatureRuntime(
        prepared.feature_set,
        shards=setting.shards,
        batch_size=setting.batch_size,
        mailbox_capacity=setting.mailbox_capacity,
        expected_keys=prepared.keys,
    ) as rt:
        if prepared.warm_up is not None:
            report("phase", "loading cache")
            await prepared.warm_up(rt)
        actors = len(rt.mailboxes())
        deepest = [0, 0]  # the largest depth seen, and the samples taken
        report("phase", "ingesting")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_sample, rt, deepest)
            started = shown = time.perf_counter()
            sent = 0
            for events, streams in prepared.chunks:
                await rt.ingest_many(events, stream=streams)
                sent += len(events)
                if (now := time.perf_counter()) - shown >= REPORT_EVERY:
                    report("progress", sent)
                    shown = now
            report("progress", sent)
            await rt.flush()
            seconds = time.perf_counter() - started
            tg.cancel_scope.cancel()
        report("phase", "statistics")
        stats = await rt.statistics()
    return {
        "events": stats.events_processed,
        "rejected": stats.events_rejected,
        "seconds": seconds,
        "events_per_second": stats.events_processed / seconds if seconds else None,
        "latency_p50_ms": stats.latency_p50_ms,
        "latency_p99_ms": stats.latency_p99_ms,
        "max_mailbox_depth": max(deepest[0], stats.max_mailbox_depth),
        "samples": deepest[1],
        "actors": actors,
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": _peak_rss(),
    }


async def _sample(rt: FeatureRuntime, deepest: list[int]) -> None:
    """Keep the largest mailbox depth in ``deepest[0]`` and count the samples in
    ``deepest[1]``, until cancelled."""
    while True:
        depth = max((box.depth for box in rt.mailboxes()), default=0)
        deepest[0] = max(deepest[0], depth)
        deepest[1] += 1
        await anyio.sleep(SAMPLE_EVERY)


def _peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (``VmHWM`` on Linux: see
    ``demos.bench._common.peak_rss_mib``)."""
    return int(peak_rss_mib() * 1024 * 1024)


def _rss_now() -> int:
    """The process's resident set size now, in bytes (the peak so far where /proc has none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss()
