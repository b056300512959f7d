"""Card fraud, live: simulated card transactions through featurist's FeatureRuntime.

The demo simulates a day of card transactions (a few cards very busy, most quiet), with a
few compromised cards that suddenly make many transactions at many merchants within minutes,
mostly at high-risk ones. It writes the simulated merchants (category, country, risk score) to
a SQLite file, in a temporary directory unless --merchants-db names one, and the runtime
enriches each transaction with its merchant's row, cached. It computes sixteen features per
card (two over sliding windows, three from the merchant rows) with a FeatureRuntime as the
events stream in, then ranks the cards by a simple suspicion score built from those features
and checks the ranking against the simulator's ground truth.

No server is needed. With --source, the transactions go through NATS JetStream or Redis
Streams instead, and the features to Redis hashes, with a crash in the middle
(demos/fraud/broker.py): the consuming process is killed half-way, a new one resumes from its
checkpoint, and every card is checked against a run with no crash. Each run uses names of its
own, from a new 8-digit tag: the JetStream stream FRAUD_<tag> (subject fraud.<tag>) or the
Redis stream fraud:<tag>, and the hashes fraud:<tag>:<card>; all are removed at the end.
The summary then shows the names used, the crash and the comparison. Without --source it
shows throughput, ingest-to-update latency, state size, the feature set, the enrichment
(cache, calls of the merchant table, and the merchant features of compromised cards against
the others) and the most suspicious cards. --json prints it as JSON for scripts.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TimeElapsedColumn
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
    Lookup,
    Max,
    Mean,
    Ratio,
    RayBackend,
    RuntimeStatistics,
    Sliding,
    SqliteSource,
    Std,
    Sum,
    TimeSince,
    Where,
    ZScore,
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
from .._render import (
    CountColumn,
    RateColumn,
    add_latency,
    add_throughput,
    facts,
    format_bytes,
    format_ms,
    headline,
    label,
    note,
    progress_display,
    table,
)
from .broker import MIN_EVENTS
from .merchants import COLUMNS, KEY, TABLE, write_merchants
from .simulator import SimConfig, build_scenario, transactions

#: Events handed to ``ingest_many`` at a time (between progress updates and pacing).
CHUNK = 4096
#: ``--sink`` when --source is given without it.
DEFAULT_SINK = "redis://127.0.0.1:6379/0?prefix=fraud:"

#: The dimension source (the SQLite merchant table) and the lookup that reads it: each
#: transaction's ``merchant`` field is a key of the table, its row's columns the fields
#: ``merchant.category``, ``merchant.country`` and ``merchant.risk``.
SOURCE = "merchants"
LOOKUP = "merchant"
LOOKUP_FIELD = "merchant"
#: The row of a merchant the table does not have: unknown, and neither safe nor risky.
UNKNOWN_MERCHANT = {"category": "unknown", "country": "unknown", "risk": 0.5}
#: The merchant risk from which a transaction counts in ``risky_merchant_tx``.
RISKY = 0.6
#: The features that read the merchant rows.
MERCHANT_FEATURES = ("merchant_risk", "risky_merchant_tx", "merchant_countries")


def build_feature_set(merchants_db: str | os.PathLike[str] = "merchants.db") -> FeatureSet:
    """The demo's features: per card, over all of its transactions so far, over the last 10
    minutes or hour of event time (sliding windows), and from the rows of the transactions'
    merchants in the SQLite file ``merchants_db`` (which must exist when a runtime starts)."""
    return FeatureSet(
        name="card_fraud",
        key="card",
        time="ts",
        max_out_of_orderness="5s",
        sources=[
            SqliteSource(
                name=SOURCE, path=os.fspath(merchants_db), table=TABLE, key=KEY, columns=COLUMNS
            )
        ],
        lookups=[Lookup(name=LOOKUP, field=LOOKUP_FIELD, source=SOURCE, default=UNKNOWN_MERCHANT)],
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
            Mean(name="merchant_risk", field="merchant.risk", description="mean merchant risk"),
            Count(
                name="risky_merchant_tx",
                where=Where(field="merchant.risk", op=">=", value=RISKY),
                description="high-risk tx",
            ),
            DistinctCount(
                name="merchant_countries",
                field="merchant.country",
                description="merchant countries",
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
    return progress_display(
        console,
        label(20),
        BarColumn(bar_width=30),
        CountColumn(10),
        RateColumn(9),
        TimeElapsedColumn(),
        disable=disable,
    )


class _Outcome(NamedTuple):
    """What a run of the runtime gives the summary."""

    stats: RuntimeStatistics
    descriptions: dict[str, FeatureDescription]
    #: reasons for rejected events
    rejected: list[str]
    #: seconds until every event was applied
    elapsed: float
    #: each card's feature values
    vectors: dict[str, dict[str, Any]]
    #: the merchant cache's warm-up: rows cached, source calls, seconds (None: not warmed)
    warm_up: dict[str, Any] | None


async def _compute(
    feature_set: FeatureSet,
    events: list[dict[str, Any]],
    cards: list[str],
    args: argparse.Namespace,
    progress: Progress,
    warm: Sequence[str] = (),
) -> _Outcome:
    """Run ``events`` through a runtime, after loading the merchant cache with the rows of
    the merchants ``warm`` from the source (not timed with the events)."""
    options: dict[str, Any] = {}
    if args.workers:
        options = {"workers": args.workers, "backend": _backend(args.backend)}
    async with FeatureRuntime(
        feature_set,
        shards=args.shards,
        batch_size=args.batch_size,
        expected_keys=args.cards,
        **options,
    ) as rt:
        warm_up = None
        if warm:
            started = time.perf_counter()
            rows = await rt.warm_up(SOURCE, warm)
            calls = (await rt.statistics()).enrichment[SOURCE].calls
            warm_up = {"rows": rows, "calls": calls, "seconds": time.perf_counter() - started}
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

        # A thousand keys a read: one ask per shard and feature group each.
        task = progress.add_task("reading features", total=len(cards), unit="keys")
        vectors: dict[str, dict[str, Any]] = {}
        for start in range(0, len(cards), 1000):
            read = await rt.get_many(cards[start : start + 1000])
            vectors.update((card, vector.values) for card, vector in read.items() if vector.known)
            progress.update(task, completed=min(start + 1000, len(cards)))
        progress.remove_task(task)
    return _Outcome(stats, descriptions, rejected, elapsed, vectors, warm_up)


def _backend(name: str) -> Any:
    """``--backend``: worker processes on this machine, or Ray actors on a local Ray whose
    log lines (its own below errors, its workers') stay out of the demo's screen."""
    if name == "ray":
        return RayBackend(init_options={"log_to_driver": False, "logging_level": logging.ERROR})
    return name


@contextmanager
def _merchants_db(path: str | None) -> Iterator[Path]:
    """Where the merchant table goes: ``path``, kept; else a file in a temporary directory,
    removed with it when the block ends."""
    if path is not None:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="featurist-fraud-") as directory:
        yield Path(directory) / "merchants.db"


async def run_demo(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Simulate, compute and rank; return the summary as plain data."""
    with _merchants_db(args.merchants_db) as merchants_db:
        return await _run(args, progress, merchants_db)


async def _run(args: argparse.Namespace, progress: Progress, merchants_db: Path) -> dict[str, Any]:
    config = SimConfig(
        events=args.events,
        cards=args.cards,
        merchants=args.merchants,
        fraud_cards=args.fraud_cards,
        seed=args.seed,
        malformed=args.malformed,
    )
    scenario = build_scenario(config)
    try:
        rows = write_merchants(merchants_db, scenario.merchants)
    except sqlite3.Error as exc:
        raise SystemExit(f"python -m demos.fraud: cannot write {merchants_db}: {exc}") from None

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
    if args.source is not None:
        return await _on_broker(args, progress, config, scenario, events, merchants_db)
    with frozen_heap():  # the simulated stream, out of the collector's sight
        try:
            feature_set = build_feature_set(merchants_db)
            # The table is small: loaded whole before the stream, unless --cold-cache.
            warm = () if args.cold_cache else [merchant.id for merchant in scenario.merchants]
            outcome = await _compute(feature_set, events, scenario.cards, args, progress, warm)
        finally:
            del events
    stats, descriptions, rejected, elapsed, vectors, warm_up = outcome

    total = sum(v["tx_count"] for v in vectors.values())
    decline_rate = sum(v["declined_count"] for v in vectors.values()) / total if total else 0.0
    scores = {card: suspicion(values, decline_rate) for card, values in vectors.items()}
    ranked = sorted(scores, key=lambda card: (-scores[card], card))
    fraud = scenario.fraud_cards

    def precision(k: int) -> float | None:
        top = ranked[:k]
        return sum(card in fraud for card in top) / len(top) if top else None

    def mean_of(name: str, cards: Iterator[str]) -> float | None:
        values = [v for card in cards if (v := vectors[card][name]) is not None]
        return sum(values) / len(values) if values else None

    merchant_features = [
        {
            "name": name,
            "description": feature_set.feature(name).description,
            "compromised": mean_of(name, (card for card in vectors if card in fraud)),
            "others": mean_of(name, (card for card in vectors if card not in fraud)),
        }
        for name in MERCHANT_FEATURES
    ]
    enrichment = stats.enrichment[SOURCE]

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
            "workers": args.workers,
            "backend": args.backend if args.workers else None,
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
        "enrichment": {
            "source": SOURCE,
            "type": "sqlite",
            "path": str(merchants_db),
            "kept": args.merchants_db is not None,
            "table": TABLE,
            "rows": rows,
            "lookup": LOOKUP,
            "field": LOOKUP_FIELD,
            "lookups": enrichment.cache_hits + enrichment.cache_misses,
            "warm_up": warm_up,
            "statistics": msgspec.to_builtins(enrichment),
            "merchant_features": merchant_features,
        },
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


async def _on_broker(
    args: argparse.Namespace,
    progress: Progress,
    config: SimConfig,
    scenario: Any,
    events: list[dict[str, Any]],
    merchants_db: Path,
) -> dict[str, Any]:
    """``--source``: the transactions through a broker, a crash in the middle, and the check
    that nothing was lost (``demos/fraud/broker.py``)."""
    from .broker import BrokerError, run_on_broker

    task = progress.add_task("publishing, consuming, killing, resuming", total=None)
    # SIGTERM stops the run as Ctrl-C does: the child killed, the stream and hashes removed
    # (not where SIGINT is ignored, as in a non-interactive shell's background job)
    sigint = signal.getsignal(signal.SIGINT)
    sigterm = signal.getsignal(signal.SIGTERM)
    if callable(sigint):
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        outcome = await run_on_broker(
            build_feature_set(merchants_db),
            merchants_db,
            events,
            list(scenario.cards),
            args.source,
            args.sink,
            shards=args.shards,
            batch_size=args.batch_size,
        )
    except BrokerError as exc:
        raise SystemExit(f"python -m demos.fraud: {exc}") from None
    finally:
        if callable(sigint):
            signal.signal(signal.SIGTERM, sigterm)
        progress.remove_task(task)
    return {
        "config": {
            "events": config.events,
            "cards": config.cards,
            "merchants": config.merchants,
            "fraud_cards": len(scenario.fraud_cards),
            "seed": config.seed,
            "malformed": config.malformed,
            "shards": args.shards,
            "batch_size": args.batch_size,
            "source": args.source,
            "sink": args.sink,
        },
        "broker": outcome,
    }


def _render_broker(summary: Mapping[str, Any], console: Console) -> None:
    config, run = summary["config"], summary["broker"]
    headline(
        console,
        "Card fraud on a broker, with a crash",
        f"{config['events']:,} transactions, {config['cards']:,} cards, from {config['source']}"
        f" to {config['sink']} (seed {config['seed']})",
    )
    console.print()
    rows = facts("Run")
    where = (
        f"NATS stream {run['stream']}, subject {run['subject']}"
        if run["broker"] == "nats"
        else f"Redis stream {run['stream']}"
    )
    rows.add_row(
        "published",
        f"{run['published']:,}",
        f"as JSON, to {where}, in {run['published_seconds']:.2f} s: "
        f"{config['events']:,} transactions and the {run['published'] - config['events']:,} "
        "malformed events the simulator adds (the runtime rejects them)",
    )
    rows.add_row(
        "killed",
        f"{run['killed_after']:,}",
        f"read by the first process when SIGKILLed; its last checkpoint held "
        f"{run['checkpoint_position']:,}",
    )
    restored = run["restored_position"]
    rows.add_row(
        "resumed from",
        "-" if restored is None else f"{restored:,}",
        f"the checkpoint restored; the rest read in {run['resumed_seconds']:.2f} s",
    )
    if restored is not None:
        rows.add_row(
            "read again",
            f"{run['killed_after'] - restored:,}",
            "read by the killed process after its checkpoint, given again by the broker",
        )
    agree = run["cards"] - run["cards_differing"]
    rows.add_row(
        "cards agreeing",
        f"{agree:,} / {run['cards']:,}",
        f"the cards with a transaction (of {config['cards']:,} simulated), against a run "
        "that read the same transactions with no crash",
    )
    rows.add_row(
        "Redis hashes",
        f"{run['cards'] - run['redis_hashes_differing']:,} / {run['cards']:,}",
        f"hold what the runtime shows (a hash per card, {run['hashes']}, written by run_sink)",
    )
    console.print(rows)
    lost = run["cards_differing"] or run["redis_hashes_differing"]
    note(
        console,
        [
            "Nothing lost, nothing counted twice: the broker gave again what no checkpoint "
            "covered, and the restored state took each transaction once."
            if not lost
            else f"DIFFERENCES: {run['first_differing']}",
            f"The names were this run's own ({', '.join(_names(run))}); "
            + ("all were removed at the end." if run["removed"] else "not removed."),
        ],
    )


def _names(run: Mapping[str, Any]) -> list[str]:
    """The names a broker run used: its stream (and subject) and its hashes."""
    shown = [f"stream {run['stream']}"]
    if "subject" in run:
        shown.append(f"subject {run['subject']}")
    return [*shown, f"hashes {run['hashes']}"]


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


def _render_enrichment(enrichment: Mapping[str, Any], console: Console) -> None:
    stats = enrichment["statistics"]
    rows = facts("Enrichment")
    rows.add_row(
        "source",
        enrichment["source"],
        f"SQLite: table {enrichment['table']}, {enrichment['rows']:,} rows (file below)",
    )
    rows.add_row(
        "lookups",
        f"{enrichment['lookups']:,}",
        f"lookup {enrichment['lookup']!r} on each transaction's field {enrichment['field']!r}",
    )
    warm = enrichment["warm_up"]
    cached = f"{stats['cache_size']:,} rows cached"
    rows.add_row(
        "cache hit ratio",
        f"{stats['hit_ratio']:.1%}",
        f"{stats['cache_hits']:,} hits, {stats['cache_misses']:,} misses; "
        + (f"{cached}, all loaded first" if warm else f"{cached}, none at the start"),
    )
    calls, keys = stats["calls"], stats["keys_requested"]
    split = ""
    if warm:
        split = f"; {warm['calls']:,} loading the cache, {calls - warm['calls']:,} in the stream"
    rows.add_row(
        "source calls",
        f"{calls:,}",
        f"{keys:,} keys, {keys / calls if calls else 0:,.0f} a call{split}",
    )
    mean, largest = stats["mean_call_ms"], stats["max_call_ms"]
    rows.add_row(
        "call latency",
        format_ms(mean),
        "mean"
        + ("" if largest is None else f", max {format_ms(largest)}")
        + ("; loaded in " + format_ms(warm["seconds"] * 1000) if warm else ""),
    )
    rows.add_row(
        "stale, default",
        f"{stats['stale_served']:,}, {stats['defaults_after_error']:,}",
        "rows given while the source failed: stale, else the default row",
    )
    rows.add_row(
        "unknown merchants",
        f"{stats['keys_missing']:,}",
        "not in the table: their events get the default row",
    )
    console.print(rows)
    kept = "kept" if enrichment["kept"] else "a temporary file, removed after the run"
    note(console, [f"The table: {enrichment['path']} ({kept})."])
    console.print()

    features = table("Merchant features, mean per card")
    features.add_column("feature", style="bold")
    features.add_column("compromised", justify="right")
    features.add_column("other cards", justify="right")
    features.add_column("meaning", style="dim")

    def shown(value: float | None, name: str) -> str:
        if value is None:
            return "n/a"
        return f"{value:.2f}" if name == "merchant_risk" else f"{value:,.1f}"

    for row in enrichment["merchant_features"]:
        features.add_row(
            row["name"],
            shown(row["compromised"], row["name"]),
            shown(row["others"], row["name"]),
            row["description"],
        )
    console.print(features)
    note(
        console,
        [
            f"From the merchant rows: risk from 0 (safe) to 1; high-risk from {RISKY}. Fraud",
            "bursts favour high-risk merchants; the score below does not use these features.",
        ],
    )


def render(summary: Mapping[str, Any], console: Console) -> None:
    """Print the summary as rich tables."""
    if "broker" in summary:
        _render_broker(summary, console)
        return
    config = summary["config"]
    headline(
        console,
        "Card fraud",
        f"{config['events']:,} transactions, {config['cards']:,} cards, "
        f"{config['merchants']:,} merchants, {config['fraud_cards']} compromised cards "
        f"(seed {config['seed']})",
    )
    console.print()

    runs = facts("Run")
    pace = f"paced at {config['rate']:,} events/s" if config["rate"] else "as fast as possible"
    runs.add_row("events", f"{summary['events']:,}", f"in {summary['seconds']:.2f} s, {pace}")
    add_throughput(runs, summary["events_per_second"], config)
    add_latency(runs, summary)
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
    _render_enrichment(summary["enrichment"], console)
    console.print()

    top = summary["top"]
    # one space between columns, none at the edges: the table fits in 100 columns
    cards = table(f"The {len(top)} most suspicious cards", padding=0)
    columns = (
        "#",
        "card",
        "score",
        "tx",
        "declined",
        "merch",
        "risk",
        "hi-risk",
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
            "" if v["merchant_risk"] is None else f"{v['merchant_risk']:.2f}",
            str(v["risky_merchant_tx"]),
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
            "merchants ÷ tx counts in full from 20 tx. merch: distinct_merchants; from the",
            "merchant rows: risk: merchant_risk, hi-risk: risky_merchant_tx. ewm $: amount_ewm;",
            "tx 10m: the 10 minutes before the card's last transaction; z $: amount_z;",
            "gap: time_since_prev.",
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
    add_seed(sim, "stream")
    sim.add_argument(
        "--merchants-db",
        metavar="PATH",
        help="write the merchant table to this SQLite file (created, or its table 'merchants' "
        "replaced) and keep it (a file in a temporary directory, removed after the run)",
    )
    rt = runtime_options(parser)
    rt.add_argument(
        "--rate",
        type=count(0),
        default=0,
        metavar="N",
        help="feed N events/s, to see latency at that load; 0 feeds them flat out (0)",
    )
    rt.add_argument(
        "--workers",
        type=count(0),
        default=0,
        metavar="N",
        help="run the shards in N worker processes, each with --shards of its own; 0 runs them "
        "in this process (0)",
    )
    rt.add_argument(
        "--backend",
        choices=("processes", "ray"),
        default="processes",
        help="with --workers: processes on this machine, or Ray actors on a local Ray "
        "(pip install 'featurist[ray]'; a few seconds to start) (processes)",
    )
    rt.add_argument(
        "--cold-cache",
        action="store_true",
        help="start with an empty merchant cache: each merchant's row is fetched when its "
        "first transaction comes, which waits for it (the whole table is loaded first)",
    )
    broker = parser.add_argument_group("on a broker")
    broker.add_argument(
        "--source",
        metavar="URL",
        help="publish the transactions to a broker and read them from it, with the consuming "
        "process killed half-way and a new one resuming from its checkpoint; then every card "
        "is checked against a run with no crash: nats://127.0.0.1:4222/NAME (JetStream; NAME: "
        "letters, digits, - and _) or redis://127.0.0.1:6379/0?stream=NAME (Redis Streams). "
        "NAME (fraud) starts this run's own names, with a new tag: stream FRAUD_<tag> and "
        "subject fraud.<tag>, or stream fraud:<tag>; removed at the end. "
        f"--events from {MIN_EVENTS}; not with --workers, --rate, --cold-cache or --top",
    )
    broker.add_argument(
        "--sink",
        metavar="URL",
        help="with --source: the Redis where the features go, a hash per card named "
        "PREFIX<tag>:<card>, removed at the end (redis://127.0.0.1:6379/0?prefix=fraud:)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--top", type=count(1), metavar="N", help="suspicious cards to list (10)")
    add_output_switches(out, "progress bars")
    args = parser.parse_args(argv)
    if args.source is not None:
        _check_broker_options(parser, args)
    elif args.sink is not None:
        parser.error("--sink: only with --source (the features go to Redis on a broker run)")
    if args.top is None:
        args.top = 10
    if args.fraud_cards > args.cards:
        parser.error(f"--fraud-cards ({args.fraud_cards}) cannot exceed --cards ({args.cards})")
    if args.merchants_db is not None:
        path = Path(args.merchants_db)
        if path.is_dir():
            parser.error(f"--merchants-db: {path} is a directory; name a file")
        if not path.parent.is_dir():
            parser.error(f"--merchants-db: no directory {path.parent}")
    return args


def _check_broker_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """With --source: the options the broker run cannot honour are refused, the URLs checked."""
    from .broker import BrokerError, parse_sink, parse_source

    refused = {
        "--workers": (args.workers, "the broker run uses the in-process runtime"),
        "--rate": (args.rate, "the consumer reads as fast as the broker gives"),
        "--cold-cache": (
            args.cold_cache,
            "the broker run always starts cold: merchant rows are fetched as transactions come",
        ),
        "--top": (args.top is not None, "the broker run compares every card, it ranks none"),
    }
    for option, (given, why) in refused.items():
        if given:
            parser.error(f"{option}: not with --source ({why})")
    if args.events < MIN_EVENTS:
        parser.error(
            f"--events: at least {MIN_EVENTS} with --source, to kill the consumer mid-stream "
            f"(got {args.events})"
        )
    if args.sink is None:
        args.sink = DEFAULT_SINK
    try:
        parse_source(args.source, "0")
        parse_sink(args.sink, "0")
    except BrokerError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with command-line ``argv``; return the exit status."""
    return run_command(parse_args(argv), _progress, run_demo, render)


if __name__ == "__main__":
    sys.exit(main())
