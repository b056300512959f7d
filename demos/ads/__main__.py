"""Ad attribution, live: impressions and clicks joined by featurist's FeatureRuntime.

The demo simulates two hours of ad traffic: impressions of 2,000 ads in five campaigns, each
campaign with its own true click-through rate, and the clicks that follow some of them seconds
to minutes later (a few percent after more than ten minutes). It replays the traffic through a
FeatureRuntime with two streams, impressions and clicks, routed by ad id. A left interval join
pairs each click with its impression when it comes at most 10 minutes after it (a click carries
the id of its impression); an impression without such a click comes out as an unmatched row
once its 10 minutes are over, on idle time if its ad goes quiet. Six features per ad read the
two streams and the join's records.

The summary shows the click-through rate of each campaign next to the simulator's truth, the
time from impression to click, the join's statistics and the ads with the most attributed
clicks. No server is needed; --json prints the summary as JSON for scripts.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import anyio
from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeElapsedColumn,
)
from rich.text import Text

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Join,
    JoinRecord,
    JoinStatistics,
    Mean,
    Ratio,
    RuntimeStatistics,
    UpdateSubscription,
    Where,
)

from .._cli import (
    add_output_switches,
    add_seed,
    argument_parser,
    count,
    frozen_heap,
    run_command,
    runtime_options,
)
from .._render import CountColumn, RateColumn, label, progress_display
from .report import render
from .simulator import SimConfig, Simulation, simulate

#: The join's name, which is also the name of the stream of its records.
JOIN = "attribution"
#: Events handed to the runtime in one step of the replay, at most.
CHUNK = 4096
#: Steps of the replay between two samples of the join's buffers.
SAMPLE_EVERY = 10
#: The sizes of --quick (for tests and a first look).
QUICK_IMPRESSIONS = 20_000
QUICK_ADS = 300


def build_feature_set() -> FeatureSet:
    """The demo's feature set: two streams routed by ad id, the attribution join, and features
    of each ad over its impressions, its clicks and the join's records."""
    matched = Where(field="time_difference_ms", op=">=", value=0)
    return FeatureSet(
        name="ads",
        key="ad_id",
        time="ts",
        max_out_of_orderness="5s",
        idle_timeout="1m",
        streams=["impressions", "clicks"],
        joins=[
            # Joined on the impression id too, a click pairs with its own impression only; on the
            # ad id alone it would pair with every impression of its ad in the 10 minutes before.
            Join(
                name=JOIN,
                left="impressions",
                right="clicks",
                after="10m",
                how="left",
                on=("imp_id",),
            )
        ],
        features=[
            Count(name="impressions", description="impressions shown"),
            Count(name="clicks", stream="clicks", description="clicks, at any delay"),
            Count(
                name="resolved",
                stream=JOIN,
                description="clicked, or 10 min passed",
            ),
            Count(
                name="clicks_10m",
                stream=JOIN,
                where=matched,
                description="clicks within 10 min",
            ),
            Ratio(
                name="ctr_10m",
                numerator="clicks_10m",
                denominator="resolved",
                description="attributed CTR",
            ),
            Mean(
                name="time_to_click_ms",
                field="time_difference_ms",
                stream=JOIN,
                description="mean time to click",
            ),
        ],
    )


# -- replaying ------------------------------------------------------------------------------------


class ReplayClock:
    """The wall clock of a replay, for ``FeatureRuntime(clock=...)``: the arrival time of the
    newest event handed to the runtime, in seconds.

    The demo replays two hours of traffic in seconds, so idle time measured on the real clock
    would never come. On this clock an ad that has had no event for ``idle_timeout`` of replayed
    time is idle, as it would be in a live service.
    """

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@dataclass
class Tally:
    """What the demo reads from ``rt.join_records(JOIN)``, as the records come."""

    matched: int = 0
    unmatched: int = 0
    #: campaign -> records (impressions resolved), and -> matched records (clicks attributed)
    resolved: dict[str, int] = field(default_factory=dict)
    attributed: dict[str, int] = field(default_factory=dict)
    #: the time from impression to click of every attributed click (ms)
    delays: list[int] = field(default_factory=list)

    @property
    def records(self) -> int:
        return self.matched + self.unmatched

    async def consume(self, records: UpdateSubscription[JoinRecord]) -> None:
        resolved, attributed, delays = self.resolved, self.attributed, self.delays
        async for item in records:
            record = item.record
            campaign = record["left_campaign"]  # a left join: every record has its impression
            resolved[campaign] = resolved.get(campaign, 0) + 1
            delay = record["time_difference_ms"]
            if delay is None:
                self.unmatched += 1
            else:
                self.matched += 1
                attributed[campaign] = attributed.get(campaign, 0) + 1
                delays.append(delay)


@dataclass
class Replay:
    """What a replay gave."""

    #: seconds from the first event handed to the runtime until the last was applied
    seconds: float
    tally: Tally
    #: the join's statistics once the last impression was in, and after the drain
    at_last_impression: JoinStatistics
    drained: JoinStatistics
    #: the largest buffers seen in the samples taken during the replay
    peak: dict[str, int]
    stats: RuntimeStatistics
    #: each ad's feature values
    vectors: dict[str, dict[str, Any]]


_BUFFERS = ("buffered_left", "buffered_right", "largest_key", "state_bytes")


class _Display(Progress):
    """The progress bars, and under them a line on the join as it goes (``status``)."""

    def __init__(self, *columns: Any, **options: Any) -> None:
        #: called at each refresh for the line under the bars (None: no line); set first, as
        #: Progress renders once while it is made
        self.status: Callable[[], Text] | None = None
        super().__init__(*columns, **options)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.status is not None:
            yield self.status()


def _status(tally: Tally, shown: Callable[[], int]) -> Callable[[], Text]:
    """The join's line of the display: its records, matched and unmatched, and the impressions
    still waiting for theirs."""

    def line() -> Text:
        return Text.assemble(
            f"{'join':<10} ",
            (f"{tally.records:>9,} records", "bold"),
            f": {tally.matched:,} matched, {tally.unmatched:,} unmatched",
            (f" · {shown() - tally.records:,} impressions waiting", "dim"),
        )

    return line


class _ClockColumn(ProgressColumn):
    """The replay's clock (the task's ``clock`` field), as event time of day."""

    def render(self, task: Task) -> Text:
        clock: ReplayClock | None = task.fields.get("clock")
        if clock is None:
            return Text("")
        when = datetime.fromtimestamp(clock.ms / 1000, UTC).strftime("%H:%M")
        return Text(f"event time {when}", style="dim")


def _progress(console: Console, *, disable: bool) -> _Display:
    return progress_display(
        console,
        label(10),
        BarColumn(bar_width=20),
        CountColumn(9),
        RateColumn(8),
        TimeElapsedColumn(),
        _ClockColumn(),
        disable=disable,
        display=_Display,
    )


async def replay(
    sim: Simulation, feature_set: FeatureSet, args: argparse.Namespace, progress: _Display
) -> Replay:
    """Replay the simulated traffic through a runtime, reading the join's records as they come.

    The replay goes in steps of at most ``CHUNK`` events and half the idle timeout of arrival
    time. Before a step the replay clock is set to the step's last arrival; after it,
    ``rt.flush()`` waits until the runtime has applied it. So no ad counts as idle while its
    events still wait in a mailbox, and none of them is taken for late.
    """
    events = sim.events
    arrivals = [arrival for arrival, _, _ in events]
    idle_ms = feature_set.duration_ms("idle_timeout")
    assert idle_ms is not None
    step_ms = idle_ms // 2
    join = feature_set.joins[0]
    last_impression = next(i for i in reversed(range(len(events))) if events[i][1] == "impressions")
    clock = ReplayClock(arrivals[0])
    tally = Tally()
    peak = dict.fromkeys(_BUFFERS, 0)
    async with FeatureRuntime(
        feature_set,
        shards=args.shards,
        batch_size=args.batch_size,
        expected_keys=sim.config.ads,
        clock=clock,
    ) as rt:
        records = rt.join_records(JOIN)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tally.consume, records)
            start = steps = shown = 0
            task = progress.add_task("replaying", total=len(events), clock=clock)
            progress.status = _status(tally, lambda: shown)
            started = time.perf_counter()
            at_last_impression: JoinStatistics | None = None
            while start < len(events):
                end = bisect.bisect_right(
                    arrivals, arrivals[start] + step_ms, start + 1, min(len(events), start + CHUNK)
                )
                clock.ms = arrivals[end - 1]
                for stream, group in itertools.groupby(events[start:end], key=itemgetter(1)):
                    batch = [event for _, _, event in group]
                    await rt.ingest_many(batch, stream=stream)
                    if stream == "impressions":
                        shown += len(batch)
                await rt.flush()
                steps += 1
                if steps % SAMPLE_EVERY == 0 or start <= last_impression < end:
                    sample = (await rt.statistics()).joins[JOIN]
                    for name in _BUFFERS:
                        peak[name] = max(peak[name], getattr(sample, name))
                    if start <= last_impression < end:
                        at_last_impression = sample
                start = end
                progress.update(task, completed=start)
            seconds = time.perf_counter() - started
            progress.remove_task(task)
            progress.status = None

            # The traffic is over: run the replay clock on until the 10 minutes of every
            # impression are over, so that the last unmatched rows come out on idle time.
            clock.ms += join.after_ms + feature_set.max_out_of_orderness_ms + idle_ms + 1_000
            await rt.flush()
            stats = await rt.statistics()
            found = await rt.get_many(ad.id for ad in sim.ads)
            vectors = {ad: vector.values for ad, vector in found.items() if vector.known}
            await records.aclose()  # the records already delivered are still read
    assert at_last_impression is not None  # the step of the last impression took it
    return Replay(seconds, tally, at_last_impression, stats.joins[JOIN], peak, stats, vectors)


# -- the summary ----------------------------------------------------------------------------------

#: The time-to-click histogram's buckets, as upper bounds (ms) within the attribution window.
_BUCKETS = (10_000, 30_000, 60_000, 120_000, 300_000)


def _percentile(ordered: Sequence[int], q: float) -> int | None:
    """The nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _join_stats(stats: JoinStatistics) -> dict[str, int]:
    return {
        name: getattr(stats, name)
        for name in (
            "records",
            "unmatched",
            "late_dropped",
            "late_side_output",
            "evicted",
            "keys",
            "buffered_left",
            "buffered_right",
            "largest_key",
            "state_bytes",
        )
    }


def summarize(
    sim: Simulation,
    feature_set: FeatureSet,
    result: Replay,
    args: argparse.Namespace,
    simulated_s: float,
) -> dict[str, Any]:
    """The summary as plain data (what --json prints)."""
    config = sim.config
    join = feature_set.joins[0]
    window = join.after_ms
    tally, vectors, truth = result.tally, result.vectors, sim.truth
    within = truth.clicks_within(window)
    share_within = config.delay.cdf(window)

    def total(ads: Sequence[str], name: str) -> int:
        return sum(vectors[ad][name] for ad in ads if ad in vectors)

    campaigns: list[dict[str, Any]] = []
    for campaign in config.campaigns:
        ads = [ad.id for ad in sim.ads if ad.campaign == campaign.name]
        impressions = total(ads, "impressions")
        attributed = tally.attributed.get(campaign.name, 0)
        clicks = total(ads, "clicks")
        campaigns.append(
            {
                "campaign": campaign.name,
                "ads": len(ads),
                "impressions": impressions,
                "clicks": clicks,
                "attributed": attributed,
                "ctr": attributed / impressions if impressions else None,
                "ctr_any_delay": clicks / impressions if impressions else None,
                "true_ctr": campaign.ctr,
                "expected_ctr": campaign.ctr * share_within,
                # the features of the join's stream, summed over the campaign's ads, agree with
                # the records read from rt.join_records()
                "features_agree": total(ads, "clicks_10m") == attributed
                and total(ads, "resolved") == tally.resolved.get(campaign.name, 0),
                "simulated_impressions": truth.impressions[campaign.name],
                "simulated_clicks": truth.clicks[campaign.name],
                "simulated_clicks_within_window": within[campaign.name],
            }
        )

    delays = sorted(tally.delays)
    edges = [0, *(b for b in _BUCKETS if b < window), window]
    histogram = [
        {
            "from_ms": low,
            "to_ms": high,
            # the first bucket from 0 inclusive, the others from their low bound exclusive
            "clicks": bisect.bisect_right(delays, high)
            - (bisect.bisect_right(delays, low) if low else 0),
        }
        for low, high in itertools.pairwise(edges)
    ]
    beyond = sum(truth.clicks.values()) - sum(within.values())

    clicks = sum(c["clicks"] for c in campaigns)
    impressions = sum(c["impressions"] for c in campaigns)
    drained = result.drained
    late = drained.late_dropped + drained.late_side_output
    stats = result.stats
    top = sorted(vectors, key=lambda ad: (-vectors[ad]["clicks_10m"], ad))[: args.top]
    campaign_of = {ad.id: ad.campaign for ad in sim.ads}
    return {
        "config": {
            "impressions": config.impressions,
            "ads": config.ads,
            "campaigns": len(config.campaigns),
            "seed": config.seed,
            "start_ms": config.start_ms,
            "span_ms": config.span_ms,
            "jitter_ms": config.jitter_ms,
            "shards": args.shards,
            "batch_size": args.batch_size,
            "join": join.name,
            "window_ms": window,
            "max_out_of_orderness_ms": feature_set.max_out_of_orderness_ms,
            "idle_timeout_ms": feature_set.duration_ms("idle_timeout"),
            "chunk": CHUNK,
            "sample_every": SAMPLE_EVERY,
        },
        "simulated_seconds": simulated_s,
        "events": stats.events_processed,
        "seconds": result.seconds,
        "events_per_second": stats.events_processed / result.seconds if result.seconds else None,
        "records_per_second": tally.records / result.seconds if result.seconds else None,
        "latency_p50_ms": stats.latency_p50_ms,
        "latency_p99_ms": stats.latency_p99_ms,
        "rejected": stats.events_rejected,
        "feature_errors": sum(stats.feature_errors.values()),
        "keys": stats.keys,
        "state_bytes_per_key": stats.state_bytes_per_key,
        "features": [
            {
                "name": feature.name,
                "stream": feature_set.stream_of(feature),
                "type": feature.type_name,
                "input": _input_of(feature, feature_set.stream_of(feature)),
                "description": feature.description,
            }
            for feature in feature_set.features
        ],
        "campaigns": campaigns,
        "time_to_click": {
            "clicks": len(delays),
            "mean_ms": sum(delays) / len(delays) if delays else None,
            "p50_ms": _percentile(delays, 0.50),
            "p90_ms": _percentile(delays, 0.90),
            "p99_ms": _percentile(delays, 0.99),
            "max_ms": delays[-1] if delays else None,
            "histogram": histogram,
            "beyond_window": beyond,
            "share_within_window": share_within,
        },
        "join": {
            "at_last_impression": _join_stats(result.at_last_impression),
            "drained": _join_stats(drained),
            "peak": dict(result.peak),
            "name": JOIN,
            "records_read": tally.records,
        },
        "accounting": {
            "clicks": clicks,
            "attributed": tally.matched,
            "beyond_window": beyond,
            "late": late,
            "unaccounted_clicks": clicks - tally.matched - beyond,
            "impressions": impressions,
            "matched": tally.matched,
            "unmatched": tally.unmatched,
            "waiting": impressions - tally.records,
            "features_agree": all(c["features_agree"] for c in campaigns),
        },
        "top": [{"ad": ad, "campaign": campaign_of[ad], "features": vectors[ad]} for ad in top],
    }


def _input_of(feature: Any, stream: str) -> str:
    """What a feature reads, in words: ``time_difference_ms``, ``any record``."""
    if isinstance(feature, Ratio):
        return f"{feature.numerator} / {feature.denominator}"
    text = "" if isinstance(feature, Count) else feature.field
    if feature.where is not None:
        text = f"{text} where {feature.where.describe()}".strip()
    return text or ("any record" if stream == JOIN else "any event")


async def run_demo(args: argparse.Namespace, progress: _Display) -> dict[str, Any]:
    """Simulate, replay and summarize; return the summary as plain data."""
    config = SimConfig(impressions=args.impressions, ads=args.ads, seed=args.seed)
    task = progress.add_task("simulating", total=None)
    started = time.perf_counter()
    sim = simulate(config)
    simulated_s = time.perf_counter() - started
    progress.remove_task(task)
    feature_set = build_feature_set()
    with frozen_heap():  # the simulated traffic, out of the collector's sight
        result = await replay(sim, feature_set, args, progress)
    return summarize(sim, feature_set, result, args, simulated_s)


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser("python -m demos.ads", __doc__, "--impressions 500000")
    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--impressions",
        type=count(1),
        metavar="N",
        help=f"impressions; clicks come on top (150,000; {QUICK_IMPRESSIONS:,} with --quick)",
    )
    sim.add_argument(
        "--ads", type=count(5), metavar="N", help=f"ad ids (2,000; {QUICK_ADS} with --quick)"
    )
    add_seed(sim, "traffic")
    sim.add_argument(
        "--quick",
        action="store_true",
        help="a small run of about a second, for tests and a first look",
    )
    runtime_options(parser)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--top", type=count(0), default=5, metavar="N", help="ads to list by attributed clicks (5)"
    )
    add_output_switches(out, "progress display")
    args = parser.parse_args(argv)
    if args.impressions is None:
        args.impressions = QUICK_IMPRESSIONS if args.quick else 150_000
    if args.ads is None:
        args.ads = QUICK_ADS if args.quick else 2_000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with command-line ``argv``; return the exit status."""
    return run_command(parse_args(argv), _progress, run_demo, render)


if __name__ == "__main__":
    sys.exit(main())
