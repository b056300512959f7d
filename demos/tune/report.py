"""The tuner's results: each setting's runs combined (``combine``), the recommendation
(``recommend``) and the summary as rich tables (``render``), from the plain data that
``python -m demos.tune --json`` prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import median
from typing import Any

from rich.console import Console
from rich.text import Text

from .._render import format_bytes, format_ms, headline, note, table

__all__ = [
    "LATENCY_SLACK",
    "OPTIONS",
    "THROUGHPUT_SLACK",
    "combine",
    "recommend",
    "render",
]

#: The runtime options a sweep can go over, each with its command-line option and its name in
#: the summary's text.
OPTIONS = {
    "shards": ("--shards", "shards"),
    "batch_size": ("--batch-size", "batch size"),
    "mailbox_capacity": ("--mailbox", "mailbox capacity"),
}
#: A setting is as fast as the best when its throughput is at most this share below it.
THROUGHPUT_SLACK = 0.05
#: Without --max-p99, a fast setting's p99 may be this share above the lowest p99 of the fast
#: settings.
LATENCY_SLACK = 0.25


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return median(known) if known else None


def combine(setting: Mapping[str, int], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One setting's row of the summary from its runs: the median throughput and latencies,
    the largest mailbox depth and peak RSS, the median RSS before the runtime started; the
    runs themselves under ``runs``."""
    rates = [run["events_per_second"] for run in runs if run["events_per_second"] is not None]
    return {
        **setting,
        "events": min(run["events"] for run in runs),
        "rejected": max(run["rejected"] for run in runs),
        "events_per_second": _median(rates),
        "events_per_second_range": [min(rates), max(rates)] if rates else None,
        "latency_p50_ms": _median([run["latency_p50_ms"] for run in runs]),
        "latency_p99_ms": _median([run["latency_p99_ms"] for run in runs]),
        "max_mailbox_depth": max(run["max_mailbox_depth"] for run in runs),
        "actors": runs[0]["actors"],
        "rss_before_bytes": _median([run["rss_before_bytes"] for run in runs]),
        "peak_rss_bytes": max(run["peak_rss_bytes"] for run in runs),
        "runs": list(runs),
    }


def _rule(name: str, max_p99: float | None) -> str:
    fast = f"the smallest {name} within {THROUGHPUT_SLACK:.0%} of the best throughput"
    if max_p99 is not None:
        return f"{fast} whose p99 is at most {max_p99:g} ms (--max-p99)"
    return f"{fast} whose p99 is at most {LATENCY_SLACK:.0%} above the lowest p99 of those settings"


def recommend(
    results: Sequence[Mapping[str, Any]], swept: str, max_p99: float | None = None
) -> dict[str, Any]:
    """The setting to use among ``results`` (rows of ``combine``, over the option ``swept``):
    the smallest value whose throughput is within ``THROUGHPUT_SLACK`` of the best and whose
    p99 is at most ``max_p99`` ms, or, without it, at most ``LATENCY_SLACK`` above the lowest
    p99 of the settings that fast. Smaller is cheaper: fewer actors, smaller batches, less
    memory in the mailboxes.

    When no fast setting meets ``max_p99``, the fastest setting that does; when none does,
    the one with the lowest p99. Returns ``value``, the row's ``setting``, the ``rule`` and
    the ``reason``: one sentence with the numbers.
    """
    if not results:
        raise ValueError("results must hold at least one setting, got none")
    name = OPTIONS[swept][1]

    def rate(row: Mapping[str, Any]) -> float:
        return float(row["events_per_second"] or 0.0)

    def p99(row: Mapping[str, Any]) -> float:
        value = row["latency_p99_ms"]
        return 0.0 if value is None else float(value)

    def label(row: Mapping[str, Any]) -> str:
        return f"{name} {row[swept]}"

    best = max(results, key=lambda row: (rate(row), -row[swept]))
    floor = (1 - THROUGHPUT_SLACK) * rate(best)
    fast = sorted((row for row in results if rate(row) >= floor), key=lambda row: row[swept])
    lowest = min(p99(row) for row in fast)
    bound = max_p99 if max_p99 is not None else lowest * (1 + LATENCY_SLACK)
    ok = [row for row in fast if p99(row) <= bound]
    best_text = f"{rate(best):,.0f} events/s at {label(best)}"
    if ok:
        chosen = ok[0]
        skipped = [row for row in fast if row[swept] < chosen[swept]]
        qualifier = f" whose p99 is at most {format_ms(bound)}" if skipped else ""
        if chosen is best and len(fast) == 1:
            reason = (
                f"{label(chosen)} has the best throughput ({rate(chosen):,.0f} events/s); no "
                f"other setting comes within {THROUGHPUT_SLACK:.0%} of it"
            )
        elif chosen is best:
            reason = (
                f"{label(chosen)} has the best throughput ({rate(chosen):,.0f} events/s) and is "
                f"the smallest setting within {THROUGHPUT_SLACK:.0%} of it{qualifier}"
            )
        else:
            reason = (
                f"{label(chosen)} is the smallest setting within {THROUGHPUT_SLACK:.0%} of the "
                f"best throughput{qualifier} ({rate(chosen):,.0f} against {best_text})"
            )
        shown = format_ms(p99(chosen))
        if max_p99 is not None:
            reason += f", with a p99 of {shown} (at most --max-p99 {max_p99:g} ms)"
        elif len(fast) > 1 and p99(chosen) == lowest:
            reason += f", with the lowest p99 of those settings ({shown})"
        elif len(fast) > 1:
            reason += (
                f", with a p99 of {shown}, within {LATENCY_SLACK:.0%} of the lowest of those "
                f"settings ({format_ms(lowest)})"
            )
        if skipped:
            passed = ", ".join(f"{label(row)} had {format_ms(p99(row))}" for row in skipped)
            reason += f"; as fast but slower to update, {passed}"
    else:
        within = [row for row in results if p99(row) <= bound]
        if within:
            chosen = max(within, key=lambda row: (rate(row), -row[swept]))
            reason = (
                f"no setting within {THROUGHPUT_SLACK:.0%} of the best throughput "
                f"({best_text}) has a p99 of at most {max_p99:g} ms; {label(chosen)} is the "
                f"fastest that does ({rate(chosen):,.0f} events/s, p99 {format_ms(p99(chosen))})"
            )
        else:
            chosen = min(results, key=lambda row: (p99(row), row[swept]))
            reason = (
                f"no setting has a p99 of at most {max_p99:g} ms; {label(chosen)} has the "
                f"lowest ({format_ms(p99(chosen))}, at {rate(chosen):,.0f} events/s)"
            )
    return {
        "value": chosen[swept],
        "setting": {option: chosen[option] for option in OPTIONS},
        "rule": _rule(name, max_p99),
        "reason": reason[0].upper() + reason[1:] + ".",
    }


# -- the summary ----------------------------------------------------------------------------------


def render(summary: Mapping[str, Any], console: Console) -> None:
    """Print the summary as rich tables."""
    swept = summary["swept"]
    option, name = OPTIONS[swept]
    fixed = ", ".join(
        f"{OPTIONS[key][1]} {value}" for key, value in summary["fixed"].items() if key != swept
    )
    repeat = summary["repeat"]
    headline(
        console,
        f"Tuning {name}",
        f"workload {summary['workload']}, {summary['events']:,} events a run "
        f"(seed {summary['seed']}), {fixed}",
    )
    note(
        console,
        [
            f"{summary['workload']}: {summary['description']}.",
            f"{repeat} run{'s' if repeat > 1 else ''} a setting, each in a fresh process, "
            f"on {summary['cpus']} CPUs.",
        ],
    )
    console.print()

    results = summary["results"]
    chosen = summary["recommendation"]["value"]
    top = max((row["events_per_second"] or 0.0) for row in results)
    before = median(row["rss_before_bytes"] for row in results)
    rows = table(f"Sweep over {option}")
    rows.add_column(name)
    rows.add_column("events/s", justify="right")
    if repeat > 1:
        rows.add_column("range", justify="right", style="dim")
    rows.add_column("% of best", justify="right")
    rows.add_column("p50", justify="right")
    rows.add_column("p99", justify="right")
    rows.add_column("max depth", justify="right")
    rows.add_column("peak RSS", justify="right")
    rows.add_column("", no_wrap=True)
    for row in results:
        rate = row["events_per_second"]
        cells: list[str | Text] = [
            str(row[swept]),
            "n/a" if rate is None else f"{rate:,.0f}",
        ]
        if repeat > 1:
            low, high = row["events_per_second_range"] or (0, 0)
            cells.append(f"{low / 1000:,.1f}k-{high / 1000:,.1f}k")
        cells += [
            f"{(rate or 0.0) / top:.0%}" if top else "n/a",
            format_ms(row["latency_p50_ms"]),
            format_ms(row["latency_p99_ms"]),
            f"{row['max_mailbox_depth']} / {row['mailbox_capacity']}",
            format_bytes(row["peak_rss_bytes"]),
            Text("◀", style="bold green") if row[swept] == chosen else Text(""),
        ]
        rows.add_row(*cells, style="bold" if row[swept] == chosen else None)
    console.print(rows)
    lines = [
        "events/s: events applied ÷ seconds from the first handed to ingest_many to the last",
        "applied, ingesting flat out"
        + (f" (median of {repeat} runs; range: slowest-fastest)." if repeat > 1 else "."),
        "p50, p99: ingest→update latency per batch, weighted by events. Flat out, a batch waits",
        "to fill: about shards · batch size ÷ events/s, plus any wait in a full mailbox.",
        "max depth: the deepest actor mailbox seen (sampled while the run went on), in",
        "batches, of its capacity. peak RSS: the run's process at its peak; before the runtime",
        f"started, it held {format_bytes(before)} (the simulated events, the same in each run).",
    ]
    lost = [row for row in results if row["events"] + row["rejected"] < summary["events"]]
    if lost:
        shown = ", ".join(f"{name} {row[swept]}: {row['events']:,}" for row in lost)
        lines.append(f"Fewer events applied than ingested: {shown}.")
    note(console, lines)
    console.print()

    recommendation = summary["recommendation"]
    console.print(f"[bold]Recommended[/] (◀): {option} {chosen}", highlight=False)
    console.print(recommendation["reason"], highlight=False)
    note(console, [f"The rule: {recommendation['rule']}."])
    console.print()
    chart = summary["chart"]
    console.print(f"Chart: {chart}" if chart else "No chart (--no-chart).", highlight=False)
    console.print(f"Swept in {summary['seconds']:.1f} s.", highlight=False)
