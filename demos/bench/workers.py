"""``python -m demos.bench workers``: the 60 s sliding sum + mean of ``bench windows``, given
as JSON bytes, at ``workers`` = 0, 1 and 2 (``--workers``) in one run, every update read.

The input is ``bench windows``' (``make_events``: ``--events`` events over ``--keys`` keys with
Zipf-like skew, event times 2 ms apart with up to 500 ms of backward jitter), each event
encoded as JSON bytes beforehand. At ``workers=0`` the runtime decodes every event in the
application's process; with workers, the application's process (the front) decodes the key
and time fields alone, routes the bytes to the worker that owns the key's key group, and the
worker decodes them. A consumer task reads every update with ``subscription.batches()`` and
folds each row (key, event time, sum, mean) into a checksum (``_common.Checksum``): the
checksums of every worker count must agree.

Timed: from the first event to the last update read (the workers' start is not timed: it is
printed apart); each case in a child process of its own, in ``--repeat`` rounds (3) that run
every case once, interleaved, so that the cases of a round meet the same machine; the best of
each case is shown. The speed-up is the case's events/s over those of ``workers=0`` in the same
run, and "rounds" the range of each round's own speed-up. The machine's cores bound
it: the front, the workers and the consumer share them (and with other jobs, the machine's
load: the CPU column, the case's CPU seconds with its workers', shows the cost apart from it;
the fork server the workers start from, which imports the runtime once, is left out).

``--backend ray`` adds each worker count again as Ray actors (``backend="ray"``) on a local Ray
that the case's process starts (not timed): the same front and frames, over TCP instead of a
unix socket, with Ray placing and supervising the workers. Its cost next to the processes'
in the same run is what Ray adds on one machine.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import msgspec

from actors import run
from runtime import FeatureRuntime, RayBackend

from ._common import (
    Checksum,
    Row,
    check_agreement,
    fastest,
    freeze_input,
    key_hashes,
    print_table,
    quiet_logs,
    rate,
    round_ratios,
    rounds_in_children,
    run_with_consumer,
)
from .windows import feature_set, make_events

#: the inputs, made by the parent before its children fork
INPUT: dict[str, Any] = {}


async def consume(subscription: Any, checksum: Checksum) -> None:
    """Every update of every batch, as its row ``(key, event time, total, avg)``."""
    fold = checksum.fold
    kh = INPUT["kh"]
    async for batch in subscription.batches():
        for key, t, total, avg in batch.rows:
            fold(kh[key], t, total, avg)


async def runtime_side(
    payloads: list[bytes], workers: int, shards: int, batch_size: int, backend: str = "processes"
) -> Any:
    options: dict[str, Any] = {}
    if backend == "ray":
        # a local Ray started by this case's process (not timed: "start" includes it), with
        # the worker actors' output kept out of the table
        options["backend"] = RayBackend(init_options={"log_to_driver": False})
    rt = FeatureRuntime(
        feature_set("sum+mean"), shards=shards, workers=workers, batch_size=batch_size, **options
    )
    started = time.perf_counter()
    start_seconds = 0.0

    workers_cpu = 0.0

    async def feed(rt: Any) -> None:
        nonlocal start_seconds, workers_cpu
        start_seconds = time.perf_counter() - started
        await rt.ingest_many(payloads)
        if workers:
            await rt.flush()  # every event applied: what the workers did is done
            # the workers are the fork server's children, not this process's: read their CPU
            # time while they run (a demo may read the runtime's private parts)
            workers_cpu = sum(_process_cpu(pid) for pid in rt._front.pids if pid is not None)

    result = await run_with_consumer(rt, lambda rt: rt.updates(), consume, feed)
    result["start"] = start_seconds
    result["workers_cpu"] = workers_cpu
    return result


def _process_cpu(pid: int) -> float:
    """The CPU seconds (user and system) of process ``pid`` so far, from ``/proc``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    quiet_logs()
    cpu = time.process_time()
    result = run(
        lambda: runtime_side(
            INPUT["payloads"], spec["workers"], spec["shards"], spec["batch"], spec["backend"]
        )
    )
    result["cpu"] = time.process_time() - cpu + result.pop("workers_cpu")
    stats = result.pop("stats")
    result["processed"] = stats.events_processed
    return dict(result)


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts (0,1,2)")
    parser.add_argument("--shards", type=int, default=1, help="shards (per worker) (1)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds, each running every case once; the best of each case shown (3)",
    )
    parser.add_argument(
        "--backend",
        choices=("processes", "ray"),
        default="processes",
        help="ray: each worker count also as Ray actors on a local Ray, in the same run "
        "(processes)",
    )
    args = parser.parse_args(argv)
    quiet_logs()
    counts = [int(w) for w in args.workers.split(",")]
    if counts[0] != 0:
        counts.insert(0, 0)  # the speed-up is against workers=0
    start = time.perf_counter()
    events = make_events(args.events, args.keys, args.seed)
    encode = msgspec.json.encode
    INPUT["payloads"] = [encode(e) for e in events]
    INPUT["kh"] = key_hashes({e["user"] for e in events})
    del events
    freeze_input()
    print(
        f"generated {args.events:,} events as JSON bytes in {time.perf_counter() - start:.1f}s;"
        f" {os.cpu_count()} cores"
    )
    n = args.events
    rows = []
    base: dict[str, Any] | None = None
    cases = [(workers, "processes") for workers in counts]
    if args.backend == "ray":
        cases += [(workers, "ray") for workers in counts if workers]
    specs = [
        {"workers": workers, "shards": args.shards, "batch": args.batch_size, "backend": backend}
        for workers, backend in cases
    ]
    # interleaved: each round runs every case once, so that a round's cases meet the same
    # machine; the best round of each case is shown, and the range of the rounds' speed-ups
    results = rounds_in_children(_case, specs, args.repeat)
    base_rounds = results[0]
    for (workers, backend), runs in zip(cases, results, strict=True):
        got = fastest(runs)
        label = f"workers={workers}" + (
            " (in-process)" if workers == 0 else " (Ray actors)" if backend == "ray" else ""
        )
        if any(one["processed"] != n for one in runs):
            short = min(one["processed"] for one in runs)
            raise SystemExit(f"{label}: {short:,} events of {n:,} applied")
        if base is None:
            base = got
        for one in runs:
            check_agreement(label, base["checksum"], one["checksum"])
        rows.append(
            Row(
                label,
                {
                    "events/s": rate(n, got["seconds"]),
                    "speed-up": f"{base['seconds'] / got['seconds']:.2f}",
                    "rounds": round_ratios(base_rounds, runs),
                    "seconds": f"{got['seconds']:.2f}",
                    "start": f"{got['start']:.2f} s",
                    "CPU": f"{got['cpu']:.1f} s",
                    "CPU/event": f"{got['cpu'] / n * 1e6:.2f} us",
                    "CPU ratio": f"{got['cpu'] / base['cpu']:.2f}",
                    "front's peak RSS": f"{got['rss']:,.0f} MiB",
                },
            )
        )
    print_table(
        f"60 s sliding sum + mean from JSON bytes, every update read: {n:,} events,"
        f" {args.keys:,} keys, shards={args.shards}"
        f"{' per worker' if len(counts) > 1 else ''}, best of {args.repeat} interleaved rounds",
        [
            "events/s",
            "speed-up",
            "rounds",
            "seconds",
            "start",
            "CPU",
            "CPU/event",
            "CPU ratio",
            "front's peak RSS",
        ],
        rows,
    )
    assert base is not None
    print(
        f"checksums agree: {base['checksum'][1]:,} outputs, {base['checksum'][0]:#018x}."
        " start: entering the runtime (the workers' processes starting; with Ray, a local"
        " Ray starting too), not timed."
        " CPU: the case's CPU time and its workers' (read as they ran, after the last event"
        " was applied), whatever the machine's other load: what the work costs, where"
        " events/s is what it got. CPU ratio: the case's CPU over that of workers=0 (on 2"
        " cores, a speed-up of 1.5 needs it at 1.33 or less). rounds: the speed-ups of the"
        " rounds, each case against workers=0 of its own round."
    )
