"""``python -m demos.bench latency``: ingest-to-update latency of the card fraud workload at
10 %, 50 % and 90 % of its measured maximum rate.

The workload is the fraud demo's (``python -m demos.fraud``): ``--events`` simulated card
transactions (default 200,000), its sixteen features per card in three feature groups (plain
aggregates, sliding windows, and the features of the merchant rows, enriched from a SQLite
table whose rows are loaded into the cache before the stream, as the demo does by default).

1. The maximum rate: every event offered as fast as ``ingest_many`` takes them (chunks of
   4,096), a consumer task reading every update of ``rt.updates()``; the rate is the events
   over the time from the first ingest to the last update read.
2. Then, each in a fresh runtime, the events offered at 10 %, 50 % and 90 % of that rate for
   ``--seconds`` (5) each, by a paced producer: chunks of 1 ms worth of events, each handed to
   ``ingest_many`` when the clock reaches its time (``anyio.sleep`` between), never more than
   one chunk behind.

Latency, per event: the time the consumer has read the last of the event's updates (one per
feature group: every feature of the event is fresh) minus the time the producer handed the
event's chunk to ``ingest_many`` (``time.perf_counter()`` both, kept in a dict by key and
event time). Printed: p50, p99 and p99.9, the worst, and beside them the runtime's own
p50/p99 (``rt.statistics()``: from a batch's first event routed to the end of its apply, which
leaves out the wait for the batch to leave and the delivery to the consumer), and the longest
pause of Python's garbage collector in the run (its collections of the oldest generation stop
the process: they are the worst latencies).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import anyio

from actors import run
from runtime import FeatureRuntime

from ._common import Row, freeze_input, peak_rss_mib, print_table, quiet_logs

#: events handed to ingest_many at a time at full speed (as the fraud demo does)
CHUNK = 4096


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def offer(
    feature_set: Any,
    events: list[dict[str, Any]],
    merchants: list[str],
    pace: float | None,
    groups: int,
) -> dict[str, Any]:
    """Run ``events`` through a fresh runtime at ``pace`` events/s (None: as fast as it takes
    them) with a consumer reading every update; returns the timings."""
    #: (key, event time) -> stamps of the events not yet fully updated: [stamp, groups left]
    pending: dict[tuple[Any, int], deque[list[Any]]] = {}
    latencies: list[float] = []
    updates = 0
    ended = 0.0
    pauses = _GcPauses()
    async with FeatureRuntime(feature_set, shards=1) as rt:
        await rt.warm_up("merchants", merchants)
        subscription = rt.updates()

        async def consumer() -> None:
            nonlocal updates, ended
            clock = time.perf_counter
            async for batch in subscription.batches():
                now = clock()
                for (key, t, *_), kind in zip(batch.rows, batch.kinds, strict=True):
                    if kind != "update":
                        continue  # anomalies come on top of the event's update
                    updates += 1
                    if pace is None:
                        continue
                    waiting = pending[key, t]
                    entry = waiting[0]
                    entry[1] -= 1
                    if not entry[1]:
                        latencies.append(now - entry[0])
                        waiting.popleft()
                        if not waiting:
                            del pending[key, t]
            ended = time.perf_counter()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consumer)
            started = time.perf_counter()
            if pace is None:
                for start in range(0, len(events), CHUNK):
                    await rt.ingest_many(events[start : start + CHUNK])
            else:
                step = max(1, round(pace / 1000))  # 1 ms worth
                for start in range(0, len(events), step):
                    chunk = events[start : start + step]
                    stamp = time.perf_counter()
                    for event in chunk:
                        entry = [stamp, groups]
                        waiting = pending.get((event["card"], event["ts"]))
                        if waiting is None:
                            pending[event["card"], event["ts"]] = deque([entry])
                        else:
                            waiting.append(entry)
                    await rt.ingest_many(chunk)
                    due = started + (start + len(chunk)) / pace
                    await anyio.sleep(max(0.0, due - time.perf_counter()))
            await rt.flush()
            await subscription.aclose()
        stats = await rt.statistics()
    pauses.stop()
    latencies.sort()
    return {
        "gc": pauses.longest,
        "seconds": ended - started,
        "updates": updates,
        "latencies": latencies,
        "incomplete": sum(len(w) for w in pending.values()),
        "p50": stats.latency_p50_ms,
        "p99": stats.latency_p99_ms,
    }


COLUMNS = ["offered ev/s", "achieved ev/s", "events", "p50", "p99", "p99.9", "max"]
COLUMNS += ["longest GC pause", "runtime p50 / p99"]


class _GcPauses:
    """The longest pause of Python's cyclic garbage collector while a run lasts: the worst
    latencies are the collections of the oldest generation, which stop the process."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def stop(self) -> None:
        gc.callbacks.remove(self._on_gc)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def main(args: argparse.Namespace) -> None:
    from demos.fraud.__main__ import build_feature_set
    from demos.fraud.merchants import write_merchants
    from demos.fraud.simulator import SimConfig, build_scenario, transactions

    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="featurist-latency-") as directory:
        db = Path(directory) / "merchants.db"
        scenario = build_scenario(SimConfig(events=args.events, seed=args.seed))
        write_merchants(db, scenario.merchants)
        merchants = [merchant.id for merchant in scenario.merchants]
        events = list(itertools.islice(transactions(scenario), args.events))
        feature_set = build_feature_set(db)
        freeze_input()
        n = len(events)
        full = run(lambda: offer(feature_set, events, merchants, None, 0))
        groups, rest = divmod(full["updates"], n)
        if rest or not groups:
            raise SystemExit(
                f"{full['updates']:,} updates for {n:,} events: not one per feature group and"
                " event; the latency bench cannot tell when an event is fully updated"
            )
        top = n / full["seconds"]
        print(
            f"maximum rate at 1 shard, every update read: {top:,.0f} events/s"
            f" ({n:,} events, {groups} updates each, {full['seconds']:.2f} s;"
            f" the runtime's own p50/p99 {_ms(full['p50'])} / {_ms(full['p99'])})"
        )
        rows = []
        for fraction in (0.1, 0.5, 0.9):
            pace = fraction * top
            count = min(n, max(1_000, round(pace * args.seconds)))
            # the runtime of the case before is garbage held in reference cycles: collected
            # now, it neither adds to the next case's memory nor pauses it
            gc.collect()
            got = run(lambda p=pace, c=count: offer(feature_set, events[:c], merchants, p, groups))
            lat = got["latencies"]
            rows.append(
                Row(
                    f"{fraction:.0%} of the maximum",
                    {
                        "offered ev/s": f"{pace:,.0f}",
                        "achieved ev/s": f"{count / got['seconds']:,.0f}",
                        "events": f"{count:,}",
                        "p50": _ms(_quantile(lat, 0.5) * 1000),
                        "p99": _ms(_quantile(lat, 0.99) * 1000),
                        "p99.9": _ms(_quantile(lat, 0.999) * 1000),
                        "max": _ms(lat[-1] * 1000 if lat else None),
                        "longest GC pause": _ms(got["gc"] * 1000),
                        "runtime p50 / p99": f"{_ms(got['p50'])} / {_ms(got['p99'])}",
                    },
                )
            )
            if got["incomplete"]:
                print(f"  {got['incomplete']:,} events at {fraction:.0%} missed an update")
    print_table(
        f"fraud workload at 1 shard, ingest-to-update per event ({groups} feature groups;"
        " latency to the last of an event's updates read by the consumer)",
        COLUMNS,
        rows,
    )
    print(
        f"\npeak RSS {peak_rss_mib():,.0f} MiB. Targets (issue 16): p99 at most 5 ms at half"
        " the maximum rate, at most 2 ms at a tenth. 'runtime p50 / p99': rt.statistics(),"
        " from a batch's first event routed to the end of its apply by the shard (no delivery)."
        " 'longest GC pause': Python's collector stops the process, the runtime with it: the"
        " worst latencies are its collections of the oldest generation."
    )


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="seconds of events at each paced rate (5)"
    )
    parser.add_argument("--seed", type=int, default=7)
    main(parser.parse_args(argv))
