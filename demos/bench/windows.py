"""``python -m demos.bench windows``: sliding windows through FeatureRuntime vs plain Python.

Workloads (events over keys drawn with Zipf-like skew, weight of the i-th key ~ 1 / (i + 1) **
1.1; event times 2 ms apart with up to 500 ms of backward jitter, so some arrive out of order):

1. ``sum+mean``: ``--events`` (2,000,000) events over ``--keys`` (100,000) keys, a 60-second
   sliding sum and mean of ``amount``;
2. ``p95``: ``--p95-events`` (500,000) events, an exact 60-second sliding p95 of ``amount``;
3. ``window size``: 10 keys that each get one event per millisecond, with sliding windows of
   100 ms, 1 s and 10 s, so each key's window holds 100, 1,000 and 10,000 events: the time per
   event must not grow with the window.

Baselines, hand-written in the same run: a deque of ``(time, value)`` per key with a running sum
(out-of-order events inserted in place, evicted from the front by the key's newest time) and,
for the p95, the same deque beside a ``bisect``-sorted list. FeatureRuntime runs with
``max_out_of_orderness="1s"`` so that it, too, keeps every out-of-order event. Each case runs
in a child process of its own, so its peak RSS is its own (it includes the generated events,
the same for every case). Values are checked against the baseline on a sample of keys.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import math
import random
import time
from collections import deque
from itertools import accumulate
from typing import Any

from actors import run
from runtime import FeatureRuntime, FeatureSet, Mean, Percentile, Sliding, Sum

from ._common import Row, in_child, peak_rss_mib, print_table, quiet_logs, rate

WINDOW_MS = 60_000
BASE = 1_700_000_000_000


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


def make_dense_events(count: int, keys: int) -> list[dict[str, Any]]:
    """Each key gets one event per millisecond."""
    rng = random.Random(7)
    return [
        {"user": f"k{i % keys}", "ts": BASE + i // keys, "amount": rng.randrange(1000)}
        for i in range(count)
    ]


def feature_set(kind: str, window_ms: int) -> FeatureSet:
    window = Sliding(size=window_ms)
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
def plain_sum_mean(events: list[dict[str, Any]], window_ms: int) -> dict[str, Any]:
    """Per key ``[deque of (t, v), running sum, newest time]``."""
    state: dict[str, list[Any]] = {}
    get = state.get
    for event in events:
        key = event["user"]
        t = event["ts"]
        v = event["amount"]
        s = get(key)
        if s is None:
            state[key] = [deque([(t, v)]), v, t]
            continue
        items = s[0]
        if t >= items[-1][0]:
            items.append((t, v))
        else:
            i = len(items) - 1
            while i > 0 and items[i - 1][0] > t:
                i -= 1
            items.insert(i, (t, v))
        s[1] += v
        if t > s[2]:
            s[2] = t
        cutoff = s[2] - window_ms
        while items[0][0] <= cutoff:
            s[1] -= items.popleft()[1]
    return {key: (s[1], s[1] / len(s[0])) for key, s in state.items()}


def plain_p95(events: list[dict[str, Any]], window_ms: int) -> dict[str, Any]:
    """Per key ``[deque of (t, v), bisect-sorted values, newest time]``."""
    state: dict[str, list[Any]] = {}
    get = state.get
    insort = bisect.insort
    for event in events:
        key = event["user"]
        t = event["ts"]
        v = event["amount"]
        s = get(key)
        if s is None:
            state[key] = [deque([(t, v)]), [v], t]
            continue
        items, ordered = s[0], s[1]
        if t >= items[-1][0]:
            items.append((t, v))
        else:
            i = len(items) - 1
            while i > 0 and items[i - 1][0] > t:
                i -= 1
            items.insert(i, (t, v))
        insort(ordered, v)
        if t > s[2]:
            s[2] = t
        cutoff = s[2] - window_ms
        while items[0][0] <= cutoff:
            old = items.popleft()[1]
            del ordered[bisect.bisect_left(ordered, old)]
    result = {}
    for key, s in state.items():
        ordered = s[1]
        rank = math.ceil(0.95 * len(ordered))
        result[key] = ordered[max(rank, 1) - 1]
    return result


# -- cases (each runs in a child process) -----------------------------------------------------
def _events_for(spec: dict[str, Any]) -> list[dict[str, Any]]:
    if spec["dense"]:
        return make_dense_events(spec["events"], spec["keys"])
    return make_events(spec["events"], spec["keys"], spec["seed"])


def _case(spec: dict[str, Any], queue: Any) -> None:
    quiet_logs()
    events = _events_for(spec)
    gc.collect()
    if spec["shards"] == 0:
        plain = plain_p95 if spec["kind"] == "p95" else plain_sum_mean
        start = time.perf_counter()
        values = plain(events, spec["window"])
        seconds = time.perf_counter() - start
        sample = {k: values[k] for k in sorted(values)[:50]}
        queue.put((seconds, peak_rss_mib(), sample, None))
        return

    async def main() -> tuple[float, dict[str, Any], Any]:
        fs = feature_set(spec["kind"], spec["window"])
        async with FeatureRuntime(fs, shards=spec["shards"], batch_size=512) as rt:
            gc.collect()
            start = time.perf_counter()
            await rt.ingest_many(events)
            await rt.flush()
            seconds = time.perf_counter() - start
            keys = sorted({e["user"] for e in events})[:50]
            vectors = await rt.get_many(keys)
            stats = await rt.statistics()
        if spec["kind"] == "p95":
            sample = {k: vectors[k]["p95"] for k in keys}
        else:
            sample = {k: (vectors[k]["total"], vectors[k]["avg"]) for k in keys}
        return seconds, sample, stats

    seconds, sample, stats = run(main)
    queue.put((seconds, peak_rss_mib(), sample, stats.windows))


def run_case(spec: dict[str, Any]) -> tuple[float, float, dict[str, Any], Any]:
    result: tuple[float, float, dict[str, Any], Any] = in_child(_case, spec)
    return result


def _agree(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return all(_agree(x, y) for x, y in zip(a, b, strict=True))
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def compare(
    title: str, base: dict[str, Any], shard_counts: list[int], spec: dict[str, Any]
) -> float:
    seconds, rss, expected, _ = run_case({**base, **spec, "shards": 0})
    n = base["events"]
    rows = [
        Row(
            "plain Python (baseline)",
            {"events/s": rate(n, seconds), "ratio": "1.00", "peak RSS MiB": f"{rss:,.0f}"},
        )
    ]
    ratio_at_4 = 0.0
    for shards in shard_counts:
        t, rss, sample, windows = run_case({**base, **spec, "shards": shards})
        for key, value in expected.items():
            assert _agree(sample[key], value), (key, sample[key], value)
        ratio = seconds / t
        if shards == 4:
            ratio_at_4 = ratio
        rows.append(
            Row(
                f"FeatureRuntime, {shards} shard{'s' if shards > 1 else ''}",
                {
                    "events/s": rate(n, t),
                    "ratio": f"{ratio:.2f}",
                    "peak RSS MiB": f"{rss:,.0f}",
                    "held events": f"{windows.events_held:,}",
                    "state B/key": f"{windows.state_bytes_per_key:,.0f}",
                },
            )
        )
    columns = ["events/s", "ratio", "peak RSS MiB", "held events", "state B/key"]
    print_table(title, columns, rows)
    return ratio_at_4


def window_sizes(events: int, keys: int, shards: int) -> None:
    rows = []
    for kind in ("sum+mean", "p95"):
        first = None
        for window in (100, 1_000, 10_000):
            spec = {
                "kind": kind,
                "events": events,
                "keys": keys,
                "seed": 0,
                "dense": True,
                "window": window,
                "shards": shards,
            }
            t, rss, _, windows = run_case(spec)
            ns = t / events * 1e9
            first = first or ns
            rows.append(
                Row(
                    f"{kind}, window of {window:,} events per key",
                    {
                        "ns/event": f"{ns:,.0f}",
                        "vs 100": f"{ns / first:.2f}",
                        "held events": f"{windows.events_held:,}",
                        "peak RSS MiB": f"{rss:,.0f}",
                    },
                )
            )
    print_table(
        f"time per event against window size ({events:,} events, {keys} keys, {shards} shards)",
        ["ns/event", "vs 100", "held events", "peak RSS MiB"],
        rows,
    )


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m demos.bench windows", description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--p95-events", type=int, default=500_000)
    parser.add_argument("--dense-events", type=int, default=300_000)
    parser.add_argument("--shards", default="1,4", help="shard counts, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    shard_counts = [int(s) for s in args.shards.split(",")]
    base = {"keys": args.keys, "seed": args.seed, "dense": False, "window": WINDOW_MS}
    sum_ratio = compare(
        f"60 s sliding sum + mean: {args.events:,} events, {args.keys:,} keys",
        {**base, "events": args.events},
        shard_counts,
        {"kind": "sum+mean"},
    )
    p95_ratio = compare(
        f"60 s sliding exact p95: {args.p95_events:,} events, {args.keys:,} keys",
        {**base, "events": args.p95_events},
        shard_counts,
        {"kind": "p95"},
    )
    window_sizes(args.dense_events, 10, 4 if 4 in shard_counts else shard_counts[0])
    if 4 in shard_counts:
        print(
            f"\nat 4 shards: sum+mean {sum_ratio:.2f}, p95 {p95_ratio:.2f} of the baseline's "
            "events/s (target: at least 0.35)"
        )
