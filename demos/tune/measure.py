"""One run of the tuner: a workload through a FeatureRuntime at one setting, in a process of
its own.

``run_in_child`` starts a child process (``spawn``: a fresh interpreter, so no run inherits
another's memory or warmed-up state) that simulates the workload, starts the runtime with the
setting's ``workers`` and ``shards``, loads its caches, subscribes to every update, and offers
the events for ``duration`` seconds while a consumer task reads every output:

- **flat out** (no ``rate``): each chunk of ``CHUNK`` events is handed to ``ingest_many`` as
  soon as the runtime takes the previous one, until ``duration`` has passed;
- **open loop** (``rate`` events/s): the events go in chunks of about a millisecond's worth,
  each handed to ``ingest_many`` when the clock reaches its due time (``started + first event's
  index / rate``), never earlier; a runtime that holds the producer back (backpressure) makes
  it late, and the lateness counts in the latency, since the latency is measured from the due
  time (no coordinated omission). ``rate x duration`` events are offered.

Measured: ``events_per_second``, the events applied over the seconds from the first event
offered to the last output read by the consumer; the ingest-to-update latency of every output
row read (an update per feature group per event, and the anomalies), from the time its event
was handed over (flat out) or due (open loop) to the time the consumer read it, as p50 and
p99; and at a rate, whether the run kept up (``kept_up``: see ``RATE_SLACK``).
"""

from __future__ import annotations

import multiprocessing
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
from runtime import FeatureRuntime

from .._cli import frozen_heap
from .workloads import WORKLOADS, Prepared

__all__ = ["CHUNK", "RATE_SLACK", "RunFailed", "Setting", "kept_up", "quantile", "run_in_child"]

#: Events handed to ``ingest_many`` at a time flat out, at most (as the demos do).
CHUNK = 4096
#: A run at a rate kept up when it achieved at least this share of the rate: all its events
#: read back within about ``RATE_SLACK x duration`` after the last was due.
RATE_SLACK = 0.05
#: Seconds between two progress reports of a run.
REPORT_EVERY = 0.1


@dataclass(frozen=True, kw_only=True)
class Setting:
    """What one run runs: a workload, its size and pace, and the runtime's options."""

    workload: str
    #: the most events a run offers (the simulated stream)
    events: int
    seed: int
    workers: int
    shards: int
    batch_size: int
    mailbox_capacity: int
    #: seconds of offering events
    duration: float
    #: events/s offered (open loop), or None: flat out
    rate: float | None = None


class RunFailed(RuntimeError):
    """A run's child process failed or ended without a result; the message says why (with the
    child's traceback when it had one)."""


#: What a run tells its parent while it runs: ``("phase", text)``, ``("progress", events
#: handed to the runtime)``, and at the end ``("result", dict)`` or ``("error", traceback)``.
Report = Callable[[str, Any], None]


def kept_up(events_per_second: float | None, rate: float) -> bool:
    """Whether a run offered at ``rate`` events/s kept up: it achieved at least
    ``1 - RATE_SLACK`` of the rate (events applied over the time to the last output read)."""
    return events_per_second is not None and events_per_second >= (1 - RATE_SLACK) * rate


def quantile(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile of the sorted ``ordered`` (the nearest rank), None when empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_in_child(setting: Setting, report: Report) -> dict[str, Any]:
    """Run ``setting`` in a child process; pass its phase and progress to ``report`` as they
    come and return its result (see ``measure``).

    Raises:
        RunFailed: the child raised, or ended without a result.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=child, args=(asdict(setting), queue), name="featurist-tune", daemon=False
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
        # on success the child is ending (its workers stopping); on a failure or Ctrl-C it
        # may not be
        await anyio.to_thread.run_sync(process.join, 10.0)
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

    ``events`` (applied), ``rejected``, ``offered``, ``seconds`` (from the first event offered
    until the last output read), ``events_per_second``, ``latency_p50_ms`` and
    ``latency_p99_ms`` (per output row read, see the module), ``outputs`` (rows read),
    ``rate`` (offered, or None), ``kept_up`` (at a rate; None flat out), ``late_ms`` (how far
    the producer fell behind its schedule at worst, at a rate) and ``ran_out`` (the simulated
    events ended before ``duration``).
    """
    workload = WORKLOADS[setting.workload]
    report("phase", "simulating")
    with tempfile.TemporaryDirectory(prefix="featurist-tune-") as directory:
        prepared = workload.prepare(setting.events, setting.seed, Path(directory))
        with frozen_heap():  # the simulated events, out of the collector's sight
            return await _run(prepared, setting, report)


async def _run(prepared: Prepared, setting: Setting, report: Report) -> dict[str, Any]:
    events, streams, rate = prepared.events, prepared.streams, setting.rate
    if rate is None:
        step, wanted = CHUNK, len(events)
    else:
        step = max(1, round(rate / 1000))  # about a millisecond's worth
        wanted = min(len(events), max(1, round(rate * setting.duration)))
    #: the event that each (key, time) names first: an update finds its event's chunk by it
    index: dict[tuple[Any, int], int] = {}
    for position, ident in enumerate(prepared.ids[:wanted]):
        index.setdefault(ident, position)
    stamps: list[float] = []  # per chunk: when it was handed over (flat out) or due (at a rate)
    latencies: list[float] = []
    outputs = 0
    last_read = 0.0
    clock = time.perf_counter

    async with FeatureRuntime(
        prepared.feature_set,
        workers=setting.workers,
        shards=setting.shards,
        batch_size=setting.batch_size,
        mailbox_capacity=setting.mailbox_capacity,
        expected_keys=prepared.keys,
    ) as rt:
        if prepared.warm_up is not None:
            report("phase", "loading cache")
            await prepared.warm_up(rt)
        subscription = rt.updates()

        async def consumer() -> None:
            nonlocal outputs, last_read
            find = index.get
            keep = latencies.append
            async for batch in subscription.batches():
                now = clock()
                outputs += len(batch)
                for key, t in zip(batch.keys, batch.event_times, strict=True):
                    position = find((key, t))
                    if position is not None:
                        keep(now - stamps[position // step])
                last_read = now

        report("phase", "ingesting" if rate is None else f"at {rate:,.0f}/s")
        late = 0.0
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consumer)
            started = shown = clock()
            deadline = started + setting.duration
            offered = 0
            while offered < wanted:
                end = min(offered + step, wanted)
                if rate is None:
                    if clock() >= deadline:
                        break
                    stamps.append(clock())
                else:
                    due = started + offered / rate
                    wait = due - clock()
                    if wait > 0:
                        await anyio.sleep(wait)
                    late = max(late, clock() - due)
                    stamps.append(due)
                chunk_streams = None if streams is None else streams[offered:end]
                await rt.ingest_many(events[offered:end], stream=chunk_streams)
                offered = end
                if (now := clock()) - shown >= REPORT_EVERY:
                    report("progress", offered)
                    shown = now
            report("progress", offered)
            await rt.flush()  # every update published: the consumer reads them and ends
            await subscription.aclose()
        report("phase", "statistics")
        stats = await rt.statistics()
    seconds = (last_read or clock()) - started
    latencies.sort()
    p50, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
    per_second = stats.events_processed / seconds if seconds > 0 else None
    return {
        "events": stats.events_processed,
        "rejected": stats.events_rejected,
        "offered": offered,
        "seconds": seconds,
        "events_per_second": per_second,
        "latency_p50_ms": None if p50 is None else p50 * 1000,
        "latency_p99_ms": None if p99 is None else p99 * 1000,
        "outputs": outputs,
        "rate": rate,
        "kept_up": None if rate is None else kept_up(per_second, rate),
        "late_ms": None if rate is None else late * 1000,
        "ran_out": offered == len(events) and (rate is None or offered < rate * setting.duration),
    }
