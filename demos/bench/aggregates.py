"""``python -m demos.bench aggregates``: count/sum/mean/last per key, every per-event output
read, through FeatureRuntime and through a hand-written loop.

The workload: ``--events`` dict events (default 2,000,000) over ``--keys`` keys (default
100,000) drawn with Zipf-like skew (weight of the i-th key ~ 1 / (i + 1) ** 1.1), event times
increasing with a little jitter, a float ``amount``. Per event, the output is the key's
count, sum, mean and last amount after the event: what FeatureRuntime publishes per event
for the feature group (a ``FeatureUpdate`` with the group's values).

- ``plain loop``: the baseline, the strongest plain Python we could write that emits the
  same per-event output: a dict of small lists per key, local variables, no allocation per
  event beyond the key's first;
- ``FeatureRuntime``: ``ingest_many`` of the same dicts, with a consumer task beside it
  reading every update of ``rt.updates()``.

Both sides fold each output (key, event time, the four values) into one checksum with the
same function (``_common.Checksum``); the bench exits non-zero when the checksums differ and
shows the first differing outputs of a small re-run. Timed: from the first event to the last
output read. Each case runs in a child process of its own (best of ``--repeat``), after
``gc.freeze()`` of the input, the same for both sides.

Printed: events/s, the ratio to the baseline, the same ratio without the checksum's cost
(both sides pay it: it is measured alone and taken off both), the runtime's own p50/p99
ingest-to-update latency, peak RSS (VmHWM of the case's process, the input included) and the
runtime's estimate of state bytes per key.
"""

from __future__ import annotations

import argparse
import random
import time
from itertools import accumulate
from typing import Any

from actors import run
from runtime import Count, FeatureRuntime, FeatureSet, Last, Mean, Sum

from ._common import (
    Checksum,
    Row,
    cases_in_children,
    check_agreement,
    diff_outputs,
    fastest,
    fold_seconds,
    freeze_input,
    key_hashes,
    net_ratio,
    peak_rss_mib,
    print_table,
    quiet_logs,
    rate,
    run_with_consumer,
)

BASIC = FeatureSet(
    name="basic",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Mean(name="avg", field="amount"),
        Last(name="last_amount", field="amount"),
    ],
)

NAMES = ("n", "total", "avg", "last_amount")

#: the input, made by the parent before its children fork
INPUT: dict[str, Any] = {}


def make_events(count: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    weights = list(accumulate(1.0 / (i + 1) ** 1.1 for i in range(keys)))
    names = [f"card-{i:06d}" for i in range(keys)]
    picks = rng.choices(names, cum_weights=weights, k=count)
    base = 1_700_000_000_000
    return [
        {
            "card": card,
            "ts": base + i * 10 + rng.randrange(-2_000, 2_000),
            "amount": round(rng.lognormvariate(3.0, 1.0), 2),
        }
        for i, card in enumerate(picks)
    ]


def plain_basic(events: list[dict[str, Any]], kh: dict[str, int], checksum: Checksum) -> None:
    """Per key ``[count, sum, last time, last amount]``. The sum starts at 0 and adds in
    arrival order, and the mean is sum / count, as in the runtime: the same floats."""
    state: dict[str, list[Any]] = {}
    get = state.get
    fold = checksum.fold
    for event in events:
        key = event["card"]
        v = event["amount"]
        t = event["ts"]
        s = get(key)
        if s is None:
            s = state[key] = [1, 0 + v, t, v]
            fold(kh[key], t, 1, s[1], s[1], v)
            continue
        n = s[0] + 1
        s[0] = n
        total = s[1] + v
        s[1] = total
        if t >= s[2]:
            s[2] = t
            s[3] = v
        fold(kh[key], t, n, total, total / n, s[3])


async def consume_updates(subscription: Any, checksum: Checksum) -> None:
    """Every update's key, time and four values, read a batch at a time
    (``subscription.batches()``: an ``UpdateBatch`` per batch of events, its rows
    ``(key, event_time, n, total, avg, last_amount)`` in the group's feature order)."""
    fold = checksum.fold
    kh = INPUT["kh"]
    async for batch in subscription.batches():
        assert batch.names == NAMES and not batch.errors
        for key, t, n, total, avg, last in batch.rows:
            fold(kh[key], t, n, total, avg, last)


async def runtime_side(
    events: list[dict[str, Any]], shards: int, batch_size: int, sink: Any = None
) -> dict[str, Any]:
    async def feed(rt: Any) -> None:
        await rt.ingest_many(events)

    return await run_with_consumer(
        FeatureRuntime(BASIC, shards=shards, batch_size=batch_size),
        lambda rt: rt.updates(),
        consume_updates,
        feed,
        sink,
    )


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    quiet_logs()
    events = INPUT["events"]
    if spec["shards"] == 0:
        checksum = Checksum()
        start = time.perf_counter()
        plain_basic(events, INPUT["kh"], checksum)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "checksum": checksum.value(), "rss": peak_rss_mib()}
    result = run(lambda: runtime_side(events, spec["shards"], spec["batch_size"]))
    stats = result.pop("stats")
    result["p50"] = stats.latency_p50_ms
    result["p99"] = stats.latency_p99_ms
    result["state"] = stats.state_bytes_per_key
    return result


def _diagnose(count: int, shards: int, batch_size: int) -> list[str]:
    events = INPUT["events"][:count]
    base: list[Any] = []
    plain_basic(events, INPUT["kh"], Checksum(base))
    got: list[Any] = []
    run(lambda: runtime_side(events, shards, batch_size, got))
    return diff_outputs(base, got)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def main(args: argparse.Namespace) -> None:
    quiet_logs()
    start = time.perf_counter()
    events = make_events(args.events, args.keys, args.seed)
    INPUT["events"] = events
    INPUT["kh"] = key_hashes({e["card"] for e in events})
    freeze_input()
    n = len(events)
    print(
        f"generated {n:,} events over {len(INPUT['kh']):,} keys in "
        f"{time.perf_counter() - start:.1f}s (peak RSS {peak_rss_mib():.0f} MiB with them)"
    )
    fold = fold_seconds(n)
    base = fastest(cases_in_children(_case, {"shards": 0}, args.repeat))
    rows = [
        Row(
            "plain loop (baseline)",
            {
                "events/s": rate(n, base["seconds"]),
                "ratio": "1.00",
                "ratio w/o checksum": "1.00",
                "peak RSS": f"{base['rss']:.0f} MiB",
            },
        )
    ]
    for shards in [int(s) for s in args.shards.split(",")]:
        spec = {"shards": shards, "batch_size": args.batch_size}
        got = fastest(cases_in_children(_case, spec, args.repeat))
        title = f"count/sum/mean/last at {shards} shard(s)"
        check_agreement(
            title,
            base["checksum"],
            got["checksum"],
            lambda s=shards: _diagnose(args.diagnose_events, s, args.batch_size),
        )
        rows.append(
            Row(
                f"FeatureRuntime, {shards} shard{'s' if shards > 1 else ''}",
                {
                    "events/s": rate(n, got["seconds"]),
                    "ratio": f"{base['seconds'] / got['seconds']:.2f}",
                    "ratio w/o checksum": net_ratio(base["seconds"], got["seconds"], fold),
                    "p50 / p99": f"{_ms(got['p50'])} / {_ms(got['p99'])}",
                    "peak RSS": f"{got['rss']:.0f} MiB",
                    "state/key": f"{got['state']:.0f} B",
                },
            )
        )
    print_table(
        f"count/sum/mean/last per key, every update read: {n:,} events, "
        f"{len(INPUT['kh']):,} keys, batch_size={args.batch_size}, best of {args.repeat}",
        ["events/s", "ratio", "ratio w/o checksum", "p50 / p99", "peak RSS", "state/key"],
        rows,
    )
    print(
        f"\nchecksums agree: {base['checksum'][1]:,} outputs, {base['checksum'][0]:#018x}."
        f" The checksum costs each side about {fold:.2f} s here."
        "\np50 / p99: the runtime's own ingest-to-update latency (rt.statistics()): from a"
        " batch's first event routed to the end of its apply by the shard, per event, over"
        " each shard's last 4,096 batches; it leaves out delivery to the consumer. At full"
        " speed it is mostly queueing; `python -m demos.bench latency` measures it paced."
    )


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench aggregates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--shards", default="1", help="comma-separated shard counts (1)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case, best shown (3)")
    parser.add_argument(
        "--diagnose-events",
        type=int,
        default=20_000,
        help="on a mismatch, the events re-run to show differing outputs (20,000)",
    )
    main(parser.parse_args(argv))
