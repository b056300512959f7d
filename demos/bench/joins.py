"""``python -m demos.bench joins``: a 10-minute interval join, every record read, through
FeatureRuntime and through a hand-written loop.

The workload: ``--impressions`` (1,000,000) ad impressions and ``--clicks`` (100,000) clicks
over ``--ads`` (50,000) ad ids with Zipf-like skew, spread over one day in event-time order; a
click follows an impression of its ad by 0 to 15 minutes, and joins every impression of its ad
in the 10 minutes before it (``right.ts`` in ``[left.ts, left.ts + 10m]``). The per-event
output is the join's records: each matched (impression, click) pair, made when the later of
the two arrives (about 20 million of them by default: a click on a busy ad joins hundreds of
impressions).

The baseline, hand-written: per ad, per side, a list of times and a list of the events
beside it, in time order, live from a head index; each event is matched against the other
side's times over the interval (bisect), and every pair is emitted from a slice of them, the
ad's key hash looked up once per event; the event is appended to its own side, and the front
of both sides is expired by the ad's newest time (the head moves; the dead part is deleted
once it outweighs the live one).
FeatureRuntime runs an inner ``Join`` of the two streams (one merged ``ingest_many``) with no
features, and a consumer task reads every record of ``rt.join_records()`` beside ingest, a
batch at a time (``subscription.batches()``), by the batch's columns: each record's key,
join time, event times and their difference, with no merged dict per record (the join builds
those only for a reader that asks for ``records``, or iterates the subscription).

Both sides fold each record (key, join time, both event times, their difference) into one
checksum with the same function; the bench exits non-zero when they differ and shows the
first differing records of a small re-run. Timed: from the first event to the last record
read; each case in a child process of its own, best of ``--repeat``, after ``gc.freeze()`` of
the input. Printed: events/s, records/s, the ratio to the baseline (with and without the
checksum's cost), the runtime's own p50/p99 ingest-to-update latency, the largest buffer of
one ad and peak RSS (VmHWM of the case's process, the input included).
"""

from __future__ import annotations

import argparse
import bisect
import random
import time
from itertools import accumulate
from typing import Any

from actors import run
from runtime import FeatureRuntime, FeatureSet, Join

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

MINUTE = 60_000
AFTER = 10 * MINUTE
DAY = 24 * 60 * MINUTE
BASE = 1_700_000_000_000


def make_events(
    impressions: int, clicks: int, ads: int, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """``(stream, event)`` in event-time order."""
    rng = random.Random(seed)
    weights = list(accumulate(1.0 / (i + 1) ** 1.1 for i in range(ads)))
    names = [f"ad-{i:05d}" for i in range(ads)]
    picks = rng.choices(names, cum_weights=weights, k=impressions)
    spacing = DAY // impressions  # the impressions of one day
    shown = [(BASE + i * spacing, ad) for i, ad in enumerate(picks)]
    clicked = rng.sample(shown, clicks)
    events = [(t, 0, "impressions", {"ad": ad, "ts": t}) for t, ad in shown]
    events += [
        (t + d, 1, "clicks", {"ad": ad, "ts": t + d})
        for t, ad in clicked
        for d in [rng.randrange(15 * MINUTE)]
    ]
    events.sort(key=lambda item: (item[0], item[1]))
    return [(stream, event) for _, _, stream, event in events]


#: the input, made by the parent before its children fork
INPUT: dict[str, Any] = {}


def plain_join(
    events: list[tuple[str, dict[str, Any]]], kh: dict[str, int], checksum: Checksum
) -> int:
    """Every record folded; returns the largest buffer of one ad.

    Per ad: ``[left times, left events, right times, right events, left head, right head,
    newest time]``. The lists are in time order (the input is), live from their head on: the
    front expires by moving the head (found by bisection), and the dead part is deleted once
    it outweighs the live one. A probe's partners are a slice of the other side's times, so a
    record costs the fold and little else (the slice of a list, not indexing a deque: about
    a quarter less time than deques of times and events, which this bench used before)."""
    state: dict[str, list[Any]] = {}
    get = state.get
    fold = checksum.fold
    bisect_left, bisect_right = bisect.bisect_left, bisect.bisect_right
    largest = 0
    for stream, event in events:
        ad = event["ad"]
        t = event["ts"]
        s = get(ad)
        if s is None:
            s = state[ad] = [[], [], [], [], 0, 0, t]
        elif t > s[6]:
            s[6] = t
        newest = s[6]
        ltimes, lefts, rtimes, rights, lhead, rhead = s[0], s[1], s[2], s[3], s[4], s[5]
        if stream == "impressions":
            # clicks in [t, t + AFTER]
            start = bisect_left(rtimes, t, rhead)
            end = bisect_right(rtimes, t + AFTER, start)
            if end > start:
                h = kh[ad]
                for r in rtimes[start:end]:
                    fold(h, r, t, r, r - t)
            ltimes.append(t)
            lefts.append(event)
        else:
            # impressions in [t - AFTER, t]
            start = bisect_left(ltimes, t - AFTER, lhead)
            end = bisect_right(ltimes, t, start)
            if end > start:
                h = kh[ad]
                for left in ltimes[start:end]:
                    fold(h, t, left, t, t - left)
            rtimes.append(t)
            rights.append(event)
        cutoff = newest - AFTER
        if len(ltimes) > lhead and ltimes[lhead] < cutoff:
            lhead = bisect_left(ltimes, cutoff, lhead)
            if lhead * 2 > len(ltimes):
                del ltimes[:lhead], lefts[:lhead]
                lhead = 0
            s[4] = lhead
        if len(rtimes) > rhead and rtimes[rhead] < newest:
            rhead = bisect_left(rtimes, newest, rhead)
            if rhead * 2 > len(rtimes):
                del rtimes[:rhead], rights[:rhead]
                rhead = 0
            s[5] = rhead
        size = len(ltimes) - lhead + len(rtimes) - rhead
        if size > largest:
            largest = size
    return largest


FEATURES = FeatureSet(
    name="ads",
    key="ad",
    time="ts",
    streams=["impressions", "clicks"],
    joins=[Join(name="imp_click", left="impressions", right="clicks", after="10m")],
    features=[],  # the join alone, as in the baseline
)


async def consume_records(subscription: Any, checksum: Checksum) -> None:
    """Every record's key, join time, both event times and their difference, folded: read
    a batch at a time (``subscription.batches()``: a ``JoinRecordBatch`` per batch of events,
    read by its columns, with no dict or object per record)."""
    fold = checksum.fold
    hash_of = INPUT["kh"].__getitem__
    async for batch in subscription.batches():
        for h, joined, left, right, difference in zip(
            map(hash_of, batch.keys),
            batch.join_times,
            batch.left_times,
            batch.right_times,
            batch.time_differences,
            strict=True,
        ):
            fold(h, joined, left, right, difference)


async def runtime_side(
    events: list[tuple[str, dict[str, Any]]], shards: int, batch_size: int, sink: Any = None
) -> dict[str, Any]:
    payloads = [event for _, event in events]
    streams = [stream for stream, _ in events]

    async def feed(rt: Any) -> None:
        # one merged source: each event's stream named beside it
        await rt.ingest_many(payloads, stream=streams)

    return await run_with_consumer(
        FeatureRuntime(FEATURES, shards=shards, batch_size=batch_size),
        lambda rt: rt.join_records(),
        consume_records,
        feed,
        sink,
    )


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    quiet_logs()
    events = INPUT["events"]
    if spec["shards"] == 0:
        checksum = Checksum()
        start = time.perf_counter()
        largest = plain_join(events, INPUT["kh"], checksum)
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "checksum": checksum.value(),
            "rss": peak_rss_mib(),
            "largest": largest,
        }
    result = run(lambda: runtime_side(events, spec["shards"], spec["batch_size"]))
    stats = result.pop("stats")
    result["p50"] = stats.latency_p50_ms
    result["p99"] = stats.latency_p99_ms
    result["largest"] = stats.joins["imp_click"].largest_key
    return result


def _diagnose(count: int, shards: int, batch_size: int) -> list[str]:
    events = INPUT["events"][:count]
    base: list[Any] = []
    plain_join(events, INPUT["kh"], Checksum(base))
    got: list[Any] = []
    run(lambda: runtime_side(events, shards, batch_size, got))
    return diff_outputs(base, got)


COLUMNS = [
    "events/s",
    "records/s",
    "ratio",
    "ratio w/o checksum",
    "p50 / p99",
    "largest buffer",
    "peak RSS",
]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench joins",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--clicks", type=int, default=100_000)
    parser.add_argument("--ads", type=int, default=50_000)
    parser.add_argument("--shards", default="1", help="comma-separated shard counts (1)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    # 1 by default: the workload makes about 20 million records (a busy ad's click joins
    # hundreds of impressions), which keep one run of each side near a minute
    parser.add_argument("--repeat", type=int, default=1, help="runs per case, best shown (1)")
    parser.add_argument(
        "--diagnose-events",
        type=int,
        default=20_000,
        help="on a mismatch, the events re-run to show differing records (20,000)",
    )
    args = parser.parse_args(argv)
    quiet_logs()
    events = make_events(args.impressions, args.clicks, args.ads, args.seed)
    INPUT["events"] = events
    INPUT["kh"] = key_hashes({event["ad"] for _, event in events})
    freeze_input()
    n = len(events)
    base = fastest(cases_in_children(_case, {"shards": 0}, args.repeat))
    records = base["checksum"][1]
    fold = fold_seconds(records, 3)
    rows = [
        Row(
            "plain Python (baseline)",
            {
                "events/s": rate(n, base["seconds"]),
                "records/s": rate(records, base["seconds"]),
                "ratio": "1.00",
                "ratio w/o checksum": "1.00",
                "largest buffer": f"{base['largest']:,}",
                "peak RSS": f"{base['rss']:,.0f} MiB",
            },
        )
    ]
    for shards in [int(s) for s in args.shards.split(",")]:
        spec = {"shards": shards, "batch_size": args.batch_size}
        got = fastest(cases_in_children(_case, spec, args.repeat))
        check_agreement(
            f"interval join at {shards} shard(s)",
            base["checksum"],
            got["checksum"],
            lambda s=shards: _diagnose(args.diagnose_events, s, args.batch_size),
        )
        rows.append(
            Row(
                f"FeatureRuntime, {shards} shard{'s' if shards > 1 else ''}",
                {
                    "events/s": rate(n, got["seconds"]),
                    "records/s": rate(records, got["seconds"]),
                    "ratio": f"{base['seconds'] / got['seconds']:.2f}",
                    "ratio w/o checksum": net_ratio(base["seconds"], got["seconds"], fold),
                    "p50 / p99": f"{_ms(got['p50'])} / {_ms(got['p99'])}",
                    "largest buffer": f"{got['largest']:,}",
                    "peak RSS": f"{got['rss']:,.0f} MiB",
                },
            )
        )
    print_table(
        f"interval join, 10 minutes, every record read: {args.impressions:,} impressions, "
        f"{args.clicks:,} clicks, {args.ads:,} ads, best of {args.repeat}",
        COLUMNS,
        rows,
    )
    print(
        f"\nchecksums agree: {records:,} records, {base['checksum'][0]:#018x}; the checksum"
        f" costs each side about {fold:.2f} s.\np50 / p99: the runtime's own ingest-to-update"
        " latency (rt.statistics()): from a batch's first event routed to the end of its"
        " apply by the shard, per event, over each shard's last 4,096 batches; it leaves out"
        " delivery to the consumer; '-' where the runtime measures none (a join with no"
        " features reports no latency in rt.statistics() today).\nPeak RSS: VmHWM of the case's own"
        " process, the input included."
    )
