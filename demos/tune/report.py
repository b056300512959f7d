"""The tuner's results: each setting's runs combined (``combine``), what makes a setting's
figures untrustworthy (``warnings``), the recommendation (``recommend``) and the summary as
rich tables (``render``), from the plain data that ``python -m demos.tune --json`` prints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

from rich.console import Console
from rich.text import Text

from .._render import format_ms, headline, note, table
from .measure import RATE_SLACK

__all__ = [
    "MAX_P99_SPREAD",
    "MAX_SPREAD",
    "MIN_EVENTS",
    "MIN_SECONDS",
    "OPTIONS",
    "combine",
    "label",
    "recommend",
    "render",
    "spread",
    "warnings",
]

#: The runtime options of a setting, each with its command-line option and its name in the
#: summary's text, in the order a setting is named.
OPTIONS = {
    "workers": ("--workers", "workers"),
    "shards": ("--shards", "shards"),
    "batch_size": ("--batch-size", "batch size"),
    "mailbox_capacity": ("--mailbox", "mailbox"),
}
#: A run with fewer events applied than this is too short to trust.
MIN_EVENTS = 20_000
#: A run shorter than this (seconds, first event offered to last output read) is too short.
MIN_SECONDS = 1.0
#: The runs of a setting disagree when their events/s spread (fastest - slowest) is more than
#: this share of their median.
MAX_SPREAD = 0.25
#: ... or when their highest p99 is more than this many times their lowest.
MAX_P99_SPREAD = 2.0


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def _range(values: Sequence[float | None]) -> list[float] | None:
    known = [v for v in values if v is not None]
    return [min(known), max(known)] if known else None


def spread(values: Sequence[float | None]) -> float | None:
    """``(max - min) / median`` of ``values`` (the Nones left out): 0 for one value, None for
    none or a median of 0."""
    known = [v for v in values if v is not None]
    if not known or not median(known):
        return None
    return (max(known) - min(known)) / median(known)


def combine(setting: Mapping[str, int], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One setting's row of the summary from its runs: the median and range (slowest to
    fastest run) of events/s and of the p99 and p50 latencies, how many runs kept up with the
    rate (when one was given), the fewest events and seconds of a run, and the runs
    themselves under ``runs``."""
    if not runs:
        raise ValueError("a setting needs at least one run, got none")
    rates = [run["events_per_second"] for run in runs]
    p99 = [run["latency_p99_ms"] for run in runs]
    kept = [run["kept_up"] for run in runs if run.get("kept_up") is not None]
    return {
        **setting,
        "events": min(run["events"] for run in runs),
        "rejected": max(run["rejected"] for run in runs),
        "offered": min(run["offered"] for run in runs),
        "seconds": min(run["seconds"] for run in runs),
        "events_per_second": _median(rates),
        "events_per_second_range": _range(rates),
        "latency_p99_ms": _median(p99),
        "latency_p99_range": _range(p99),
        "latency_p50_ms": _median([run["latency_p50_ms"] for run in runs]),
        "kept_up": sum(kept) if kept else None,
        # most runs kept up: the median run did
        "sustains": 2 * sum(kept) > len(kept) if kept else None,
        "ran_out": any(run.get("ran_out") for run in runs),
        "runs": list(runs),
    }


def warnings(row: Mapping[str, Any]) -> list[str]:
    """Why a setting's figures are not to be trusted, one short phrase each (none: trust
    them): a run too short (fewer than ``MIN_EVENTS`` events applied or under
    ``MIN_SECONDS``), the simulated events ending before the duration, runs that disagree
    (``MAX_SPREAD``, ``MAX_P99_SPREAD``), events lost, one run only."""
    found = []
    if row["events"] < MIN_EVENTS:
        found.append(f"short: {row['events']:,} events in a run (< {MIN_EVENTS:,})")
    if row["seconds"] < MIN_SECONDS:
        found.append(f"short: a run of {row['seconds']:.2f} s (< {MIN_SECONDS:g} s)")
    if row.get("ran_out"):
        found.append("the simulated events ran out before --duration (raise --events)")
    runs = row["runs"]
    if len(runs) > 1:
        rate_spread = spread([run["events_per_second"] for run in runs])
        # shown rounded up: just over the limit never reads as the limit itself
        if rate_spread is not None and rate_spread > MAX_SPREAD:
            shown = math.ceil(rate_spread * 100)
            found.append(f"events/s spread {shown}% of the median (> {MAX_SPREAD:.0%})")
        low_high = row["latency_p99_range"]
        if low_high and low_high[0] > 0 and low_high[1] > MAX_P99_SPREAD * low_high[0]:
            ratio = math.ceil(low_high[1] / low_high[0] * 10) / 10
            found.append(f"p99 spread: highest {ratio:.1f}x the lowest (> {MAX_P99_SPREAD:g}x)")
    else:
        found.append("one run: no spread to judge (--repeat)")
    if row["events"] + row["rejected"] < row["offered"]:
        found.append(f"{row['offered'] - row['events'] - row['rejected']:,} events not applied")
    return found


def label(row: Mapping[str, Any], varied: Sequence[str] = ("workers", "shards")) -> str:
    """A setting's name in the text: ``workers 2, shards 4`` (and the other options that vary
    in ``varied``)."""
    return ", ".join(f"{OPTIONS[key][1]} {row[key]}" for key in OPTIONS if key in varied)


def _cost(row: Mapping[str, Any]) -> tuple[int, ...]:
    """Fewer processes, then fewer actors, then smaller batches and mailboxes: cheaper."""
    return tuple(row[key] for key in OPTIONS)


def _rate(row: Mapping[str, Any]) -> float:
    return float(row["events_per_second"] or 0.0)


def _p99(row: Mapping[str, Any]) -> float:
    value = row["latency_p99_ms"]
    return float("inf") if value is None else float(value)


def _runs(row: Mapping[str, Any]) -> str:
    low_high = row["events_per_second_range"]
    if not low_high or len(row["runs"]) == 1:
        return ""
    return f", runs {low_high[0]:,.0f}-{low_high[1]:,.0f}"


def _rule(rate: float | None) -> str:
    if rate is None:
        return (
            "flat out (no --rate): the setting with the highest median events/s over its runs "
            "(a tie goes to fewer workers, then fewer shards)"
        )
    return (
        f"among the settings that sustain {rate:,.0f} events/s (most of their runs achieved "
        f"{1 - RATE_SLACK:.0%} of it or more: their last outputs read within about "
        f"{RATE_SLACK:.0%} of the run's length after the last event was due), the one with the "
        "lowest median p99; when none does, the one with the highest median events/s"
    )


def recommend(
    results: Sequence[Mapping[str, Any]],
    rate: float | None = None,
    varied: Sequence[str] = ("workers", "shards"),
) -> dict[str, Any]:
    """The setting to use among ``results`` (rows of ``combine``).

    Without ``rate``: the highest median events/s. With ``rate``: of the settings that
    sustain it (``combine``'s ``sustains``), the lowest median p99; when none does, the highest
    median events/s, with ``sustains`` False. Ties go to the cheaper setting: fewer workers,
    then fewer shards, smaller batches and mailboxes.

    Returns the chosen row's ``setting`` (every option), ``sustains`` (None without a rate),
    the ``rule`` and the ``reason``: a sentence or two with the numbers.
    """
    if not results:
        raise ValueError("results must hold at least one setting, got none")

    def name(row: Mapping[str, Any]) -> str:
        return label(row, varied)

    fastest = min(results, key=lambda row: (-_rate(row), _cost(row)))
    sustains: bool | None = None
    if rate is None:
        chosen = fastest
        reason = (
            f"{name(chosen)} has the highest median throughput, {_rate(chosen):,.0f} "
            f"events/s{_runs(chosen)} (p99 {format_ms(chosen['latency_p99_ms'])})"
        )
        others = [row for row in results if row is not chosen]
        if others:
            second = min(others, key=lambda row: (-_rate(row), _cost(row)))
            low = (chosen["events_per_second_range"] or [0.0])[0]
            high = (second["events_per_second_range"] or [0.0, 0.0])[1]
            reason += f"; next, {name(second)}: {_rate(second):,.0f} events/s{_runs(second)}"
            if high >= low:
                reason += " (their runs overlap: the difference may be noise)"
    else:
        able = [row for row in results if row["sustains"]]
        sustains = bool(able)
        if able:
            chosen = min(able, key=lambda row: (_p99(row), _cost(row)))
            reason = (
                f"{name(chosen)} has the lowest median p99 ({format_ms(chosen['latency_p99_ms'])}) "
                f"of the {len(able)} setting{'s' if len(able) > 1 else ''} of {len(results)} that "
                f"sustain {rate:,.0f} events/s (it kept up in {chosen['kept_up']} of "
                f"{len(chosen['runs'])} runs, {_rate(chosen):,.0f} events/s achieved)"
            )
            if len(able) > 1:
                second = min(
                    (row for row in able if row is not chosen),
                    key=lambda row: (_p99(row), _cost(row)),
                )
                reason += f"; next, {name(second)}: {format_ms(second['latency_p99_ms'])}"
        else:
            chosen = fastest
            reason = (
                f"no setting sustains {rate:,.0f} events/s; {name(chosen)} came closest, with a "
                f"median of {_rate(chosen):,.0f} events/s achieved{_runs(chosen)} (p99 "
                f"{format_ms(chosen['latency_p99_ms'])}): lower the rate, or find more cores"
            )
    flagged = warnings(chosen)
    if flagged:
        reason += f". Its figures carry a warning: {'; '.join(flagged)}"
    return {
        "setting": {key: chosen[key] for key in OPTIONS},
        "sustains": sustains,
        "rule": _rule(rate),
        "reason": reason[0].upper() + reason[1:] + ".",
    }


# -- the summary ----------------------------------------------------------------------------------


def _span(low_high: Sequence[float] | None, scale: float = 1.0) -> str:
    """``low-high`` over ``scale``, a decimal below 100 (``35.7-47.9``, ``165-1,534``)."""
    if not low_high:
        return "n/a"
    low, high = (value / scale for value in low_high)
    digits = 1 if high < 100 else 0
    return f"{low:,.{digits}f}-{high:,.{digits}f}"


def render(summary: Mapping[str, Any], console: Console) -> None:
    """Print the summary as rich tables."""
    varied = summary["varied"]
    rate = summary["rate"]
    repeat = summary["repeat"]
    fixed = ", ".join(
        f"{OPTIONS[key][1]} {summary['grid'][key][0]}" for key in OPTIONS if key not in varied
    )
    headline(
        console,
        "Tuning " + " and ".join(OPTIONS[key][1] for key in varied),
        f"workload {summary['workload']}, {summary['duration']:g} s a run "
        + ("flat out" if rate is None else f"offered at {rate:,.0f} events/s")
        + f" (at most {summary['events']:,} events, seed {summary['seed']}), {fixed}",
    )
    lines = [
        f"{summary['workload']}: {summary['description']}.",
        f"{repeat} run{'s' if repeat > 1 else ''} a setting, each in a fresh process, "
        f"on {summary['cpus']} CPUs.",
    ]
    if summary["workers_refused"]:
        lines.append(
            "Workers not swept (workers 0 only): the runtime refuses worker processes for "
            f"this workload: {summary['workers_refused']}"
        )
    note(console, lines)
    console.print()

    results = summary["results"]
    chosen = summary["recommendation"]["setting"]
    rows = table("Sweep over " + " x ".join(OPTIONS[key][0] for key in varied))
    for key in varied:
        rows.add_column(OPTIONS[key][1], justify="right")
    rows.add_column("events/s", justify="right")
    rows.add_column("range", justify="right", style="dim")
    rows.add_column("p99", justify="right")
    rows.add_column("range", justify="right", style="dim")
    rows.add_column("p50", justify="right")
    if rate is not None:
        rows.add_column("kept up", justify="right")
    rows.add_column("warn", justify="center")
    rows.add_column("", no_wrap=True)
    flagged: list[str] = []
    for row in results:
        mine = all(row[key] == chosen[key] for key in OPTIONS)
        found = warnings(row)
        if found:
            flagged.append(f"{label(row, varied)}: {'; '.join(found)}.")
        cells: list[str | Text] = [str(row[key]) for key in varied]
        value = row["events_per_second"]
        cells += [
            "n/a" if value is None else f"{value:,.0f}",
            _span(row["events_per_second_range"], 1000) + "k",
            format_ms(row["latency_p99_ms"]),
            _span(row["latency_p99_range"]),
            format_ms(row["latency_p50_ms"]),
        ]
        if rate is not None:
            kept = f"{row['kept_up']}/{len(row['runs'])}"
            cells.append(Text(kept, style="green" if row["sustains"] else "red"))
        cells.append(Text("!", style="bold yellow") if found else Text(""))
        cells.append(Text("◀", style="bold green") if mine else Text(""))
        rows.add_row(*cells, style="bold" if mine else None)
    console.print(rows)
    explained = [
        "events/s: events applied ÷ seconds from the first offered to the last output read by",
        "a consumer (median of the runs; range: slowest-fastest). p99, p50: ingest→update",
        "latency of every output read, from "
        + (
            "the time its event was handed to ingest_many (flat out)."
            if rate is None
            else "its event's due time (open loop: a late producer counts)."
        ),
    ]
    if rate is not None:
        explained.append(
            f"kept up: runs that achieved at least {1 - RATE_SLACK:.0%} of the {rate:,.0f} "
            "events/s offered; a setting sustains the rate when most runs kept up (green)."
        )
    note(console, explained)
    if flagged:
        console.print()
        console.print(
            "[bold yellow]Warnings[/] (!): figures not to trust as they are", highlight=False
        )
        for line in flagged:
            console.print(f"  {line}", highlight=False)
    console.print()

    recommendation = summary["recommendation"]
    shown = " ".join(f"{OPTIONS[key][0]} {chosen[key]}" for key in varied)
    if recommendation["sustains"] is False:
        console.print(
            f"[bold red]No setting sustains the rate.[/] Closest (◀): {shown}", highlight=False
        )
    else:
        console.print(f"[bold]Recommended[/] (◀): {shown}", highlight=False)
    console.print(recommendation["reason"], highlight=False)
    note(console, [f"The rule: {recommendation['rule']}."])
    console.print()
    chart = summary["chart"]
    console.print(f"Chart: {chart}" if chart else "No chart (--no-chart).", highlight=False)
    console.print(f"Swept in {summary['seconds']:.1f} s.", highlight=False)
