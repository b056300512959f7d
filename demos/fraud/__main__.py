"""Card fraud, live: simulated card transactions through featurist's FeatureRuntime.

The demo simulates a day of card transactions (a few cards very busy, most quiet), with a
few compromised cards that suddenly make many transactions at many merchants within minutes.
It computes thirteen features per card (two of them over sliding windows) with a
FeatureRuntime as the events stream in, then ranks the cards by a simple suspicion score built
from those features and checks the ranking against the simulator's ground truth.

No server is needed. The summary shows throughput, ingest-to-update latency, state size, the
feature set and the most suspicious cards; --json prints it as JSON for scripts.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

import runtime
from actors import DeadLetterReason
from runtime import (
    Count,
    DistinctCount,
    EWMean,
    FeatureDescription,
    FeatureRuntime,
    FeatureSet,
    Last,
    Max,
    Mean,
    Ratio,
    RuntimeStatistics,
    Sliding,
    Std,
    Sum,
    TimeSince,
    Where,
    ZScore,
)

from .._cli import (
    RateColumn,
    add_output_switches,
    argument_parser,
    count,
    format_bytes,
    format_ms,
    frozen_heap,
    note,
    run_command,
    runtime_options,
    table,
)
from .simulator import SimConfig, build_scenario, transactions

#: Events handed to ``ingest_many`` at a time (between progress updates and pacing).
CHUNK = 4096


def build_feature_set() -> FeatureSet:
    """The demo's features: per card, over all of its transactions so far, and over the last
    10 minutes or hour of event time (sliding windows)."""
    return FeatureSet(
        name="card_fraud",
        key="card",
        time="ts",
        max_out_of_orderness="5s",
        features=[
            Count(name="tx_count", description="transactions"),
            Sum(name="amount_sum", field="amount", description="total spent"),
            Mean(name="amount_mean", field="amount", description="mean amount"),
            Max(name="amount_max", field="amount", description="largest amount"),
            Std(name="amount_std", field="amount", description="spread of amounts"),
            EWMean(
                name="amount_ewm",
                field="amount",
                half_life="10m",
                description="recent mean amount",
            ),
            DistinctCount(
                name="distinct_merchants", field="merchant", description="merchants used"
            ),
            Count(
                name="declined_count",
                where=Where(field="status", op="==", value="declined"),
                description="declines",
            ),
            Ratio(
                name="decline_ratio",
                numerator="declined_count",
                denominator="tx_count",
                description="share declined",
            ),
            TimeSince(name="time_since_prev", description="since previous tx"),
            Last(name="last_amount", field="amount", description="latest amount"),
            Count(name="tx_10m", window=Sliding(size="10m"), description="tx, last 10 min"),
            ZScore(
                name="amount_z",
                field="amount",
                window=Sliding(size="1h"),
                threshold=4,
                description="latest amount vs the last hour",
            ),
        ],
    )


# -- the suspicion score --------------------------------------------------------------------------

SCORE_TEXT = "2·√min(z, 9) + 6·(merchants ÷ tx) + log2(max $ ÷ mean $)"
SCORE_TERMS = (
    "z: the card's declines above the population's decline rate, in standard deviations, "
    "capped so that a long history of declines cannot outweigh the other signals; "
    "merchants ÷ tx is scaled down for cards with fewer than 20 transactions"
)


def suspicion(values: Mapping[str, Any], decline_rate: float) -> float:
    """A hand-made fraud score from one card's features (higher is more suspicious).

    Three signals of a burst, each computed from the card's feature values only: more declines
    than the population's ``decline_rate`` explains, many different merchants for the number of
    transactions, and a largest amount far above the card's mean. The decline signal is capped:
    its z-score grows with the square root of a card's history, and without a cap a busy card
    that is often declined (over its limit, not stolen) would outrank every burst.
    """
    n = values["tx_count"]
    if not n:
        return 0.0
    rate = min(max(decline_rate, 0.001), 0.999)
    z = (values["declined_count"] - rate * n) / math.sqrt(rate * (1 - rate) * n)
    spread = values["distinct_merchants"] / n * min(1.0, n / 20)
    mean, largest = values["amount_mean"], values["amount_max"]
    spike = math.log2(largest / mean) if mean and largest and largest > mean else 0.0
    return 2 * math.sqrt(min(max(z, 0.0), 9.0)) + 6 * spread + spike


# -- running ------------------------------------------------------------------------------------


def _progress(console: Console, *, disable: bool) -> Progress:
    return Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(bar_width=30),
        TextColumn("{task.completed:>10,.0f} / {task.total:,.0f}"),
        RateColumn(9),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=disable,
    )


async def _compute(
    feature_set: FeatureSet,
    events: list[dict[str, Any]],
    cards: list[str],
    args: argparse.Namespace,
    progress: Progress,
) -> tuple[RuntimeStatistics, dict[str, FeatureDescription], list[str], float, dict[str, Any]]:
    """Run ``events`` through a runtime; return its statistics, feature descriptions, reasons
    for rejected events, the seconds until every event was applied, and each card's values."""
    async with FeatureRuntime(
        feature_set,
        shards=args.shards,
        batch_size=args.batch_size,
        expected_keys=args.cards,
    ) as rt:
        task = progress.add_task("computing features", total=len(events))
        started = time.perf_counter()
        pace = args.rate or None
        # Paced, hand over about 5 ms of events at a time, as a steady source would.
        step = CHUNK if pace is None else max(1, min(CHUNK, pace // 200))
        for start in range(0, len(events), step):
            await rt.ingest_many(events[start : start + step])
            sent = min(start + step, len(events))
            progress.update(task, completed=sent)
            if pace is not None:
                await anyio.sleep(max(0.0, started + sent / pace - time.perf_counter()))
        await rt.flush()
        elapsed = time.perf_counter() - started
        progress.remove_task(task)

        stats = await rt.statistics()
        descriptions = {name: await rt.describe(name) for name in feature_set.names}
        rejected = [letter.detail for letter in rt.dead_letters.letters(DeadLetterReason.REJECTED)]

        # One get per key: the runtime has no bulk read.
        task = progress.add_task("reading features", total=len(cards), unit="keys")
        vectors: dict[str, dict[str, Any]] = {}
        for i, card in enumerate(cards, 1):
            vector = await rt.get(card)
            if vector.known:
                vectors[card] = vector.values
            if i % 1000 == 0:
                progress.update(task, completed=i)
        progress.remove_task(task)
    return stats, descriptions, rejected, elapsed, vectors


async def run_demo(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Simulate, compute and rank; return the summary as plain data."""
    config = SimConfig(
        events=args.events,
        cards=args.cards,
        merchants=args.merchants,
        fraud_cards=args.fraud_cards,
        seed=args.seed,
        malformed=args.malformed,
    )
    scenario = build_scenario(config)

    # The stream is simulated up front, so the timings below are the runtime's alone.
    started = time.perf_counter()
    stream = transactions(scenario)
    events: list[dict[str, Any]] = []
    task = progress.add_task("simulating", total=config.events + config.malformed)
    while chunk := list(itertools.islice(stream, 10_000)):
        events.extend(chunk)
        progress.advance(task, len(chunk))
    simulated_s = time.perf_counter() - started
    progress.remove_task(task)
    with frozen_heap():  # the simulated stream, out of the collector's sight
        try:
            feature_set = build_feature_set()
            outcome = await _compute(feature_set, events, scenario.cards, args, progress)
        finally:
            del events
    stats, descriptions, rejected, elapsed, vectors = outcome

    total = sum(v["tx_count"] for v in vectors.values())
    decline_rate = sum(v["declined_count"] for v in vectors.values()) / total if total else 0.0
    scores = {card: suspicion(values, decline_rate) for card, values in vectors.items()}
    ranked = sorted(scores, key=lambda card: (-scores[card], card))
    fraud = scenario.fraud_cards

    def precision(k: int) -> float | None:
        top = ranked[:k]
        return sum(card in fraud for card in top) / len(top) if top else None

    features = []
    for feature in feature_set.features:
        measured = descriptions[feature.name].measured_cost
        features.append(
            {
                "name": feature.name,
                "type": _type_of(feature),
                "input": _input_of(feature),
                "description": feature.description,
                "us_per_event": None if measured is None else measured.mean_latency_us,
            }
        )
    return {
        "config": {
            "events": config.events,
            "cards": config.cards,
            "merchants": config.merchants,
            "fraud_cards": len(fraud),
            "seed": config.seed,
            "malformed": config.malformed,
            "shards": args.shards,
            "batch_size": args.batch_size,
            "rate": args.rate or None,
        },
        "simulated_seconds": simulated_s,
        "events": stats.events_processed,
        "rejected": stats.events_rejected,
        "rejected_reasons": sorted(set(rejected)),
        "seconds": elapsed,
        "events_per_second": stats.events_processed / elapsed if elapsed else None,
        "latency_p50_ms": stats.latency_p50_ms,
        "latency_p99_ms": stats.latency_p99_ms,
        "feature_errors": sum(stats.feature_errors.values()),
        "keys": stats.keys,
        "state_bytes": stats.state_bytes,
        "state_bytes_per_key": stats.state_bytes_per_key,
        "features": features,
        "decline_rate": decline_rate,
        "score": f"{SCORE_TEXT} ({SCORE_TERMS})",
        "top": [
            {
                "rank": rank,
                "card": card,
                "score": scores[card],
                "fraud": card in fraud,
                "burst_transactions": (
                    scenario.bursts[card].transactions if card in fraud else None
                ),
                "features": vectors[card],
            }
            for rank, card in enumerate(ranked[: args.top], 1)
        ],
        "precision_at_10": precision(10),
        "precision_at_25": precision(25),
        "fraud_in_top_10": sum(card in fraud for card in ranked[:10]),
        "fraud_in_top_25": sum(card in fraud for card in ranked[:25]),
    }


def _input_of(feature: Any) -> str:
    """What a feature reads, in words: ``amount``, ``where status == 'declined'``."""
    if isinstance(feature, Ratio):
        return f"{feature.numerator} / {feature.denominator}"
    if isinstance(feature, TimeSince):
        text = "event time"
    elif isinstance(feature, Count):
        text = "" if feature.where is not None else "any event"
    else:
        text = feature.field
    if feature.where is not None:
        text = f"{text} where {feature.where.describe()}".strip()
    return text


def _type_of(feature: Any) -> str:
    if isinstance(feature, EWMean):
        return f"{feature.type_name} {feature.half_life}"
    if feature.window is not None:
        return f"{feature.type_name}, {feature.window.describe()}"
    return str(feature.type_name)


# -- showing --------------------------------------------------------------------------------------


def _gap(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    if ms >= 3_600_000:  # hours and minutes are enough
        return runtime.format_duration(ms // 60_000 * 60_000)
    return runtime.format_duration(ms // 1000 * 1000)


def _latency_note(paced: bool) -> list[str]:
    lines = [
        "ingest→update: per batch, from its first event entering ingest_many to the end of its",
        "update in the shard actor, weighted by events (so an upper bound for the later events).",
    ]
    if paced:
        lines.append("Measured at the paced load.")
    else:
        lines += [
            "Ingest ran flat out, so this includes the wait in full mailboxes (backpressure);",
            "--rate N measures it at a fixed load.",
        ]
    return lines


def render(summary: Mapping[str, Any], console: Console) -> None:
    """Print the summary as rich tables."""
    config = summary["config"]
    console.print()
    console.print(
        f"[bold]Card fraud[/]: {config['events']:,} transactions, {config['cards']:,} cards, "
        f"{config['merchants']:,} merchants, {config['fraud_cards']} compromised cards "
        f"(seed {config['seed']})",
        highlight=False,
    )
    console.print()

    runs = table("Run", show_header=False)
    runs.add_column(style="bold")
    runs.add_column(justify="right")
    runs.add_column(style="dim")
    pace = f"paced at {config['rate']:,} events/s" if config["rate"] else "as fast as possible"
    shape = f"{config['shards']} shards, batches of {config['batch_size']}"
    runs.add_row("events", f"{summary['events']:,}", f"in {summary['seconds']:.2f} s, {pace}")
    per_second = summary["events_per_second"]
    throughput = "n/a" if per_second is None else f"{per_second:,.0f} events/s"
    runs.add_row("throughput", throughput, shape)
    runs.add_row("ingest→update p50", format_ms(summary["latency_p50_ms"]), "")
    runs.add_row("ingest→update p99", format_ms(summary["latency_p99_ms"]), "")
    reasons = summary["rejected_reasons"]
    runs.add_row(
        "rejected events",
        f"{summary['rejected']:,}",
        f"in dead letters, e.g. {reasons[0]}" if reasons else "",
    )
    if summary["feature_errors"]:
        runs.add_row("feature errors", f"{summary['feature_errors']:,}", "")
    runs.add_row("keys", f"{summary['keys']:,}", "cards with state")
    runs.add_row(
        "state per key",
        format_bytes(summary["state_bytes_per_key"]),
        f"{format_bytes(summary['state_bytes'])} in all, as live Python objects",
    )
    console.print(runs)
    note(console, _latency_note(bool(config["rate"])))
    console.print()

    features = table("Feature set")
    features.add_column("feature", style="bold")
    features.add_column("type")
    features.add_column("input", no_wrap=True)
    features.add_column("µs/event", justify="right")
    features.add_column("meaning", style="dim")
    for feature in summary["features"]:
        cost = feature["us_per_event"]
        if feature["type"] == "ratio":
            shown = "at read"
        else:
            shown = "n/a" if cost is None else f"{cost:.2f}"
        features.add_row(
            feature["name"], feature["type"], feature["input"], shown, feature["description"]
        )
    console.print(features)
    note(
        console,
        [
            "µs/event: compute time per event, measured on one batch in 64; windowed features",
            "share one pass per event, measured on every batch and split equally between them.",
        ],
    )
    console.print()

    top = summary["top"]
    cards = table(f"The {len(top)} most suspicious cards")
    columns = (
        "#",
        "card",
        "score",
        "tx",
        "declined",
        "merchants",
        "mean $",
        "max $",
        "ewm $",
        "tx 10m",
        "z $",
    )
    for name in columns:
        cards.add_column(name, justify="left" if name == "card" else "right")
    cards.add_column("gap", justify="right")
    cards.add_column("fraud")
    for row in top:
        v = row["features"]
        cards.add_row(
            str(row["rank"]),
            row["card"],
            f"{row['score']:.1f}",
            f"{v['tx_count']:,}",
            f"{v['declined_count']} {v['decline_ratio'] or 0.0:>4.0%}",
            str(v["distinct_merchants"]),
            f"{v['amount_mean']:,.0f}",
            f"{v['amount_max']:,.0f}",
            f"{v['amount_ewm']:,.0f}",
            str(v["tx_10m"]),
            "" if v["amount_z"] is None else f"{v['amount_z']:+.1f}",
            _gap(v["time_since_prev"]),
            Text("yes", style="bold red") if row["fraud"] else Text("no", style="dim"),
        )
    console.print(cards)
    rate = f"{summary['decline_rate']:.1%}"
    note(
        console,
        [
            f"score = {SCORE_TEXT}, from the card's features:",
            f"z is the declines above the population's {rate} rate, in standard deviations;",
            "merchants ÷ tx counts in full from 20 tx. ewm $: amount_ewm; gap: time_since_prev;",
            "tx 10m: the 10 minutes before the card's last transaction; z $: amount_z.",
            "fraud: the simulator gave the card a burst. All features of these cards: --json.",
        ],
    )
    console.print()
    found = []
    for k in (10, 25):
        p = summary[f"precision_at_{k}"]
        if p is not None:
            n = min(k, summary["keys"])
            found.append(f"{summary[f'fraud_in_top_{k}']} in the top {n} (precision {p:.0%})")
    console.print(
        f"[bold]Compromised cards[/]: {config['fraud_cards']} in all; {', '.join(found)}.",
        highlight=False,
    )


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser("python -m demos.fraud", __doc__, "--events 100000 --shards 2")
    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--events", type=count(1), default=500_000, metavar="N", help="transactions (500,000)"
    )
    sim.add_argument("--cards", type=count(1), default=20_000, metavar="N", help="cards (20,000)")
    sim.add_argument(
        "--merchants", type=count(1), default=2_000, metavar="N", help="merchants (2,000)"
    )
    sim.add_argument(
        "--fraud-cards",
        type=count(0),
        default=25,
        metavar="N",
        help="compromised cards, each with one fraud burst (25)",
    )
    sim.add_argument(
        "--malformed",
        type=count(0),
        default=10,
        metavar="N",
        help="malformed events mixed in, for the runtime to reject (10)",
    )
    sim.add_argument(
        "--seed", type=int, default=7, metavar="N", help="random seed: same seed, same stream (7)"
    )
    rt = runtime_options(parser)
    rt.add_argument(
        "--rate",
        type=count(0),
        default=0,
        metavar="N",
        help="feed N events/s, to see latency at that load; 0 feeds them flat out (0)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--top", type=count(1), default=10, metavar="N", help="suspicious cards to list (10)"
    )
    add_output_switches(out, "progress bars")
    args = parser.parse_args(argv)
    if args.fraud_cards > args.cards:
        parser.error(f"--fraud-cards ({args.fraud_cards}) cannot exceed --cards ({args.cards})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with command-line ``argv``; return the exit status."""
    return run_command(parse_args(argv), _progress, run_demo, render)


if __name__ == "__main__":
    sys.exit(main())
