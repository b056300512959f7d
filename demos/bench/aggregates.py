"""``python -m demos.bench aggregates``: keyed aggregates through FeatureRuntime vs a plain loop.

The workload: ``--events`` events (default 2,000,000) over ``--keys`` keys (default 100,000)
drawn with Zipf-like skew (weight of the i-th key ~ 1 / (i + 1) ** 1.1), event times increasing
with a little jitter, a float ``amount``.

For each feature set (``count/sum/mean/last``, then the full aggregate set) the same events go
through:

- ``plain loop``: a hand-written Python loop over dicts that computes the same values with no
  validation, no batching, no actors: the practical limit in Python, measured in the same run;
- ``FeatureRuntime`` at 1, 2, 4 and 8 shards (``ingest_many``, then ``flush``).

Printed: events/s, the ratio to the plain loop, p99 ingest-to-update latency (per batch: from
the batch's first ``ingest`` to the end of its update), the process's peak RSS so far (it
includes the pre-generated events), and the runtime's estimate of state bytes per key (key,
dict entry and state struct with the objects it alone holds).
"""

from __future__ import annotations

import argparse
import gc
import math
import random
from itertools import accumulate
from typing import Any

from actors import run
from runtime import (
    Count,
    DistinctCount,
    EWMean,
    FeatureRuntime,
    FeatureSet,
    First,
    Last,
    Max,
    Mean,
    Min,
    Std,
    Sum,
    TimeSince,
    Variance,
)

from ._common import Row, Timer, peak_rss_mib, print_table, quiet_logs, rate

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

FULL = FeatureSet(
    name="full",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Mean(name="avg", field="amount"),
        Min(name="lo", field="amount"),
        Max(name="hi", field="amount"),
        First(name="first_amount", field="amount"),
        Last(name="last_amount", field="amount"),
        Variance(name="var", field="amount"),
        Std(name="sd", field="amount"),
        EWMean(name="ewm", field="amount", half_life="10m"),
        DistinctCount(name="merchants", field="merchant", exact_limit=64),
        TimeSince(name="gap"),
    ],
)


def make_events(count: int, keys: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    weights = list(accumulate(1.0 / (i + 1) ** 1.1 for i in range(keys)))
    names = [f"card-{i:06d}" for i in range(keys)]
    picks = rng.choices(names, cum_weights=weights, k=count)
    base = 1_700_000_000_000
    events = []
    for i, card in enumerate(picks):
        events.append(
            {
                "card": card,
                "ts": base + i * 10 + rng.randrange(-2_000, 2_000),
                "amount": round(rng.lognormvariate(3.0, 1.0), 2),
                "merchant": f"m{rng.randrange(200)}",
            }
        )
    return events


def plain_basic(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    state: dict[str, list[Any]] = {}
    get = state.get
    for event in events:
        key = event["card"]
        v = event["amount"]
        t = event["ts"]
        s = get(key)
        if s is None:
            state[key] = [1, v, t, v]
        else:
            s[0] += 1
            s[1] += v
            if t >= s[2]:
                s[2] = t
                s[3] = v
    return state


def plain_full(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """count, sum, min, max, first (t, v), last (t, v), welford (n, mean, m2), ewm (T, s, w),
    distinct set, time since (prev max, value)."""
    half_life = 600_000.0
    state: dict[str, list[Any]] = {}
    get = state.get
    for event in events:
        key = event["card"]
        v = event["amount"]
        t = event["ts"]
        m = event["merchant"]
        s = get(key)
        if s is None:
            state[key] = [1, v, v, v, t, v, t, v, 1, float(v), 0.0, t, float(v), 1.0, {m}, t, None]
            continue
        s[0] += 1
        s[1] += v
        if v < s[2]:
            s[2] = v
        if v > s[3]:
            s[3] = v
        if t < s[4]:
            s[4] = t
            s[5] = v
        if t >= s[6]:
            s[6] = t
            s[7] = v
        n = s[8] + 1
        d = v - s[9]
        s[9] += d / n
        s[10] += d * (v - s[9])
        s[8] = n
        if t >= s[11]:
            f = 2.0 ** ((s[11] - t) / half_life)
            s[12] = s[12] * f + v
            s[13] = s[13] * f + 1.0
            s[11] = t
        else:
            f = 2.0 ** ((t - s[11]) / half_life)
            s[12] += v * f
            s[13] += f
        s[14].add(m)
        p = s[15]
        s[16] = t - p
        if t > p:
            s[15] = t
    return state


async def run_runtime(
    feature_set: FeatureSet, events: list[dict[str, Any]], shards: int, batch_size: int
) -> tuple[float, Any, dict[str, Any]]:
    async with FeatureRuntime(feature_set, shards=shards, batch_size=batch_size) as rt:
        gc.collect()
        with Timer() as t:
            await rt.ingest_many(events)
            await rt.flush()
        stats = await rt.statistics()
        sample = (await rt.get(events[0]["card"])).values
    return t.seconds, stats, sample


async def bench_set(
    label: str,
    feature_set: FeatureSet,
    plain: Any,
    events: list[dict[str, Any]],
    shard_counts: list[int],
    batch_size: int,
) -> None:
    gc.collect()
    with Timer() as t:
        state = plain(events)
    base = t.seconds
    probe = state[events[0]["card"]]
    rows = [Row("plain loop (baseline)", {"events/s": rate(len(events), base), "ratio": "1.00"})]
    del state
    for shards in shard_counts:
        seconds, stats, sample = await run_runtime(feature_set, events, shards, batch_size)
        assert sample["n"] == probe[0] and math.isclose(sample["total"], probe[1])
        rows.append(
            Row(
                f"FeatureRuntime, {shards} shard{'s' if shards > 1 else ''}",
                {
                    "events/s": rate(len(events), seconds),
                    "ratio": f"{base / seconds:.2f}",
                    "p99 latency": f"{stats.latency_p99_ms:.1f} ms",
                    "state/key": f"{stats.state_bytes_per_key:.0f} B",
                    "peak RSS": f"{peak_rss_mib():.0f} MiB",
                },
            )
        )
    print_table(
        f"{label}: {len(events):,} events, {len(set(e['card'] for e in events[:200_000])):,}+ keys,"
        f" batch_size={batch_size}",
        ["events/s", "ratio", "p99 latency", "state/key", "peak RSS"],
        rows,
    )


async def main(args: argparse.Namespace) -> None:
    with Timer() as t:
        events = make_events(args.events, args.keys, args.seed)
    # The pre-generated events are input, not part of either side: move them out of the
    # collector's sight so full collections do not rescan two million dicts (gc.freeze).
    gc.collect()
    gc.freeze()
    print(
        f"generated {len(events):,} events over {args.keys:,} keys in {t.seconds:.1f}s"
        f" (peak RSS {peak_rss_mib():.0f} MiB with the events in memory)"
    )
    shard_counts = [int(s) for s in args.shards.split(",")]
    await bench_set(
        "count/sum/mean/last", BASIC, plain_basic, events, shard_counts, args.batch_size
    )
    if not args.basic_only:
        await bench_set(
            "full aggregate set (12 features)",
            FULL,
            plain_full,
            events,
            shard_counts,
            args.batch_size,
        )
    print(
        "\nratio = runtime events/s / plain loop events/s, both on the same events in this run."
        " Target at 4 shards for count/sum/mean/last: >= 0.35; state <= 300 B per key."
    )


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench aggregates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--shards", default="1,2,4,8", help="comma-separated shard counts")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--basic-only", action="store_true", help="skip the full aggregate set")
    args = parser.parse_args(argv)
    quiet_logs()
    run(lambda: main(args))
