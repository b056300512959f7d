"""``python -m demos.bench windows``: 60 s sliding windows per key, every per-event output
read, through FeatureRuntime and through a hand-written loop.

Workloads (events over keys drawn with Zipf-like skew, weight of the i-th key ~ 1 / (i + 1) **
1.1; event times 2 ms apart with up to 500 ms of backward jitter, so some arrive out of order):

1. ``sum+mean``: ``--events`` (2,000,000) events over ``--keys`` (100,000) keys; per event, the
   key's 60-second sliding sum and mean of ``amount`` after it;
2. ``p95``: ``--p95-events`` (500,000) events; per event, the exact 60-second sliding p95
   (nearest rank) of ``amount`` after it.

That is what FeatureRuntime publishes per event for the windowed group with the default
``emit="update"`` (docs/windows.md): the window ``(T - 60 s, T]``, ``T`` the key's newest
event time, after the event. It runs with ``max_out_of_orderness="1s"``, so it keeps every
out-of-order event of this input.

The baselines, hand-written: per key a deque of ``(time, value)`` in time order (an
out-of-order event inserted in place) and its running sum, evicted from the front by the
key's newest time; for the p95, beside the deque a ``bisect``-sorted list. The sum does the
same float operations in the same order as the runtime's (it subtracts what leaves, then adds
the event, and re-sums the values held once ``w + 64`` have left a window of ``w``, which
keeps the rounding of subtractions from drifting), so both sides agree to the bit.

The runtime's outputs are read by a consumer task from ``subscription.batches()``, every
row ``(key, event time, *values)`` of every batch (the way we recommend for an application
that reads everything). Both sides fold each output (key, event time, values) into one
checksum with the same function; the bench exits non-zero when they differ and shows the
first differing outputs of a small re-run. Timed: from the first event to the last output
read; each case in a child process of its own, best of ``--repeat``, after ``gc.freeze()``
of the input.
"""

from __future__ import annotations

import argparse
import bisect
import random
import time
from collections import deque
from itertools import accumulate
from typing import Any

from actors import run
from runtime import FeatureRuntime, FeatureSet, Mean, Percentile, Sliding, Sum

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

WINDOW_MS = 60_000
#: the runtime's max_out_of_orderness: older events than the key's newest time minus this are
#: late (dropped); none of this input is
OOO_MS = 1_000
BASE = 1_700_000_000_000

#: the inputs, made by the parent before its children fork
INPUT: dict[str, Any] = {}


def make_events(count: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    weights = list(accumulate(1.0 / (i + 1) ** 1.1 for i in range(keys)))
    names = [f"user-{i:06d}" for i in range(keys)]
    picks = rng.choices(names, cum_weights=weights, k=count)
    return [
        {
            "user": user,
            "ts": BASE + i * 2 - rng.choice((0, 0, 0, rng.randrange(500))),
            "amount": round(rng.lognormvariate(3.0, 1.0), 2),
        }
        for i, user in enumerate(picks)
    ]


def feature_set(kind: str) -> FeatureSet:
    window = Sliding(size=WINDOW_MS)
    if kind == "p95":
        features: list[Any] = [Percentile(name="p95", field="amount", q=95, window=window)]
    else:
        features = [
            Sum(name="total", field="amount", window=window),
            Mean(name="avg", field="amount", window=window),
        ]
    return FeatureSet(
        name="bench", key="user", time="ts", max_out_of_orderness="1s", features=features
    )


# -- baselines ------------------------------------------------------------------------------
def plain_sum_mean(events: list[dict[str, Any]], kh: dict[str, int], checksum: Checksum) -> None:
    """Per key ``[deque of (t, v), running sum, newest time, values evicted since the sum
    was last re-summed]``."""
    state: dict[str, list[Any]] = {}
    get = state.get
    fold = checksum.fold
    size = WINDOW_MS
    for event in events:
        key = event["user"]
        t = event["ts"]
        v = event["amount"]
        s = get(key)
        if s is None:
            s = state[key] = [deque([(t, v)]), 0 + v, t, 0]
            fold(kh[key], t, s[1], s[1])
            continue
        clock = s[2]
        if t < clock - OOO_MS:
            continue  # late: dropped, no output (none in this input)
        if t > clock:
            s[2] = clock = t
        items = s[0]
        cutoff = clock - size
        if items and items[0][0] <= cutoff:
            total = s[1]
            held = len(items)
            popleft = items.popleft
            while items and items[0][0] <= cutoff:
                total -= popleft()[1]
            s[1] = total if items else 0
            s[3] = s[3] + held - len(items) if items else 0
        if t > cutoff:
            if s[3] and s[3] >= len(items) + 64:
                s[1] = sum([x for _, x in items])
                s[3] = 0
            if not items or t >= items[-1][0]:
                items.append((t, v))
            else:
                i = len(items) - 1
                while i > 0 and items[i - 1][0] > t:
                    i -= 1
                items.insert(i, (t, v))
            s[1] += v
        total = s[1]
        fold(kh[key], t, total, total / len(items))


def plain_p95(events: list[dict[str, Any]], kh: dict[str, int], checksum: Checksum) -> None:
    """Per key ``[deque of (t, v), bisect-sorted values, newest time]``; the p95 is the
    nearest rank, ``ceil(0.95 * n)``, in ints."""
    state: dict[str, list[Any]] = {}
    get = state.get
    fold = checksum.fold
    insort = bisect.insort
    bisect_left = bisect.bisect_left
    size = WINDOW_MS
    for event in events:
        key = event["user"]
        t = event["ts"]
        v = event["amount"]
        s = get(key)
        if s is None:
            state[key] = [deque([(t, v)]), [v], t]
            fold(kh[key], t, v)
            continue
        clock = s[2]
        if t < clock - OOO_MS:
            continue  # late: dropped, no output (none in this input)
        if t > clock:
            s[2] = clock = t
        items, ordered = s[0], s[1]
        cutoff = clock - size
        while items and items[0][0] <= cutoff:
            del ordered[bisect_left(ordered, items.popleft()[1])]
        if t > cutoff:
            if not items or t >= items[-1][0]:
                items.append((t, v))
            else:
                i = len(items) - 1
                while i > 0 and items[i - 1][0] > t:
                    i -= 1
                items.insert(i, (t, v))
            insort(ordered, v)
        fold(kh[key], t, ordered[-(-95 * len(ordered) // 100) - 1])


PLAIN = {"sum+mean": plain_sum_mean, "p95": plain_p95}


async def consume_sum_mean(subscription: Any, checksum: Checksum) -> None:
    """Every update of every batch, as its row ``(key, event time, total, avg)``."""
    fold = checksum.fold
    kh = INPUT["kh"]
    async for batch in subscription.batches():
        for key, t, total, avg in batch.rows:
            fold(kh[key], t, total, avg)


async def consume_p95(subscription: Any, checksum: Checksum) -> None:
    """Every update of every batch, as its row ``(key, event time, p95)``."""
    fold = checksum.fold
    kh = INPUT["kh"]
    async for batch in subscription.batches():
        for key, t, p95 in batch.rows:
            fold(kh[key], t, p95)


CONSUME = {"sum+mean": consume_sum_mean, "p95": consume_p95}


async def runtime_side(
    kind: str, events: list[dict[str, Any]], shards: int, batch_size: int, sink: Any = None
) -> dict[str, Any]:
    async def feed(rt: Any) -> None:
        await rt.ingest_many(events)

    return await run_with_consumer(
        FeatureRuntime(feature_set(kind), shards=shards, batch_size=batch_size),
        lambda rt: rt.updates(),
        CONSUME[kind],
        feed,
        sink,
    )


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    quiet_logs()
    kind = spec["kind"]
    events = INPUT[kind]
    if spec["shards"] == 0:
        checksum = Checksum()
        start = time.perf_counter()
        PLAIN[kind](events, INPUT["kh"], checksum)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "checksum": checksum.value(), "rss": peak_rss_mib()}
    result = run(lambda: runtime_side(kind, events, spec["shards"], spec["batch_size"]))
    stats = result.pop("stats")
    result["p50"] = stats.latency_p50_ms
    result["p99"] = stats.latency_p99_ms
    result["held"] = stats.windows.events_held
    result["state"] = stats.windows.state_bytes_per_key
    return result


def _diagnose(kind: str, count: int, shards: int, batch_size: int) -> list[str]:
    events = INPUT[kind][:count]
    base: list[Any] = []
    PLAIN[kind](events, INPUT["kh"], Checksum(base))
    got: list[Any] = []
    run(lambda: runtime_side(kind, events, shards, batch_size, got))
    return diff_outputs(base, got)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def compare(kind: str, title: str, args: argparse.Namespace) -> None:
    n = len(INPUT[kind])
    fold = fold_seconds(n, 2 if kind == "sum+mean" else 1)
    base = fastest(cases_in_children(_case, {"kind": kind, "shards": 0}, args.repeat))
    rows = [
        Row(
            "plain Python (baseline)",
            {
                "events/s": rate(n, base["seconds"]),
                "ratio": "1.00",
                "ratio w/o checksum": "1.00",
                "peak RSS": f"{base['rss']:,.0f} MiB",
            },
        )
    ]
    for shards in [int(s) for s in args.shards.split(",")]:
        spec = {"kind": kind, "shards": shards, "batch_size": args.batch_size}
        got = fastest(cases_in_children(_case, spec, args.repeat))
        check_agreement(
            f"{kind} at {shards} shard(s)",
            base["checksum"],
            got["checksum"],
            lambda s=shards: _diagnose(kind, args.diagnose_events, s, args.batch_size),
        )
        rows.append(
            Row(
                f"FeatureRuntime, {shards} shard{'s' if shards > 1 else ''}",
                {
                    "events/s": rate(n, got["seconds"]),
                    "ratio": f"{base['seconds'] / got['seconds']:.2f}",
                    "ratio w/o checksum": net_ratio(base["seconds"], got["seconds"], fold),
                    "p50 / p99": f"{_ms(got['p50'])} / {_ms(got['p99'])}",
                    "peak RSS": f"{got['rss']:,.0f} MiB",
                    "held events": f"{got['held']:,}",
                    "state/key": f"{got['state']:,.0f} B",
                },
            )
        )
    columns = ["events/s", "ratio", "ratio w/o checksum", "p50 / p99", "peak RSS"]
    print_table(
        f"{title}: {n:,} events, {args.keys:,} keys, best of {args.repeat}",
        [*columns, "held events", "state/key"],
        rows,
    )
    print(
        f"checksums agree: {base['checksum'][1]:,} outputs, {base['checksum'][0]:#018x};"
        f" the checksum costs each side about {fold:.2f} s."
    )


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench windows",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--p95-events", type=int, default=500_000)
    parser.add_argument("--shards", default="1", help="comma-separated shard counts (1)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs per case, best shown (2)")
    parser.add_argument(
        "--diagnose-events",
        type=int,
        default=20_000,
        help="on a mismatch, the events re-run to show differing outputs (20,000)",
    )
    args = parser.parse_args(argv)
    quiet_logs()
    start = time.perf_counter()
    INPUT["sum+mean"] = make_events(args.events, args.keys, args.seed)
    INPUT["p95"] = INPUT["sum+mean"][: args.p95_events]
    if args.p95_events > args.events:
        INPUT["p95"] = make_events(args.p95_events, args.keys, args.seed)
    INPUT["kh"] = key_hashes({e["user"] for k in ("sum+mean", "p95") for e in INPUT[k]})
    freeze_input()
    print(f"generated the events in {time.perf_counter() - start:.1f}s")
    compare("sum+mean", "60 s sliding sum + mean, every update read", args)
    compare("p95", "60 s sliding exact p95, every update read", args)
    print(
        "\np50 / p99: the runtime's own ingest-to-update latency (rt.statistics()): from a"
        " batch's first event routed to the end of its apply by the shard, per event, over"
        " each shard's last 4,096 batches; it leaves out delivery to the consumer."
        " Peak RSS: VmHWM of the case's own process, the input included."
    )
