"""The tuner's chart: throughput and p99 latency of every setting, as a PNG.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state),
imported only here, so that a run's child process does not load it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .report import OPTIONS

__all__ = ["draw"]

GREEN = "#2a9d55"
RED = "#c0392b"
#: one colour per worker count, in the order they come
COLOURS = ["#1f5fa8", "#d9731a", "#6a3d9a", "#2a9d8f", "#8c564b", "#7f7f7f"]
SHORT = {"shards": "s", "batch_size": "b", "mailbox_capacity": "m"}


def draw(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the chart of ``summary`` (as ``render`` takes it) to ``path`` as a PNG: the
    median events/s above and the median p99 below for each setting, with the range of the
    runs as an error bar, the settings grouped by worker count (a line joins a group's
    points), --rate drawn as a line above when given, and the recommended setting marked on
    both."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = summary["results"]
    varied = summary["varied"]
    rate = summary["rate"]
    chosen = summary["recommendation"]["setting"]
    inner = [key for key in varied if key != "workers"]

    # x positions: the settings in order, a gap between worker counts
    xs: list[float] = []
    groups: dict[int, list[int]] = {}
    x = 0.0
    previous: int | None = None
    for index, row in enumerate(results):
        if previous is not None and row["workers"] != previous:
            x += 0.5
        xs.append(x)
        groups.setdefault(row["workers"], []).append(index)
        previous = row["workers"]
        x += 1

    figure = Figure(figsize=(max(7.0, 0.75 * len(results) + 3), 6.6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    repeat = summary["repeat"]
    pace = "flat out" if rate is None else f"offered at {rate:,.0f} events/s"
    figure.suptitle(
        f"featurist tuner: workload {summary['workload']}, {summary['duration']:g} s a run "
        f"{pace}\nmedian of {repeat} run{'s' if repeat > 1 else ''} a setting, bars: slowest "
        f"to fastest run, on {summary['cpus']} CPUs",
        fontsize=11,
    )

    def error_bars(values: list[float], ranges: list[Any]) -> list[list[float]]:
        low = [max(0.0, v - (r[0] if r else v)) for v, r in zip(values, ranges, strict=True)]
        high = [max(0.0, (r[1] if r else v) - v) for v, r in zip(values, ranges, strict=True)]
        return [low, high]

    top_value = 0.0
    slowest = 0.0
    for number, (workers, members) in enumerate(groups.items()):
        colour = COLOURS[number % len(COLOURS)]
        gx = [xs[i] for i in members]
        rates = [(results[i]["events_per_second"] or 0.0) / 1000 for i in members]
        rate_ranges = [
            [v / 1000 for v in results[i]["events_per_second_range"] or []] or None for i in members
        ]
        p99 = [results[i]["latency_p99_ms"] or 0.0 for i in members]
        p99_ranges = [results[i]["latency_p99_range"] for i in members]
        name = f"workers {workers}" + (" (in-process)" if workers == 0 else "")
        top.errorbar(
            gx,
            rates,
            yerr=error_bars(rates, rate_ranges),
            marker="o",
            color=colour,
            linewidth=2,
            capsize=4,
            label=name,
        )
        bottom.errorbar(
            gx,
            p99,
            yerr=error_bars(p99, p99_ranges),
            marker="o",
            color=colour,
            linewidth=2,
            capsize=4,
            label=name,
        )
        top_value = max([top_value, *(r[1] for r in rate_ranges if r), *rates])
        slowest = max([slowest, *(r[1] for r in p99_ranges if r), *p99])
        if rate is not None:
            for i in members:
                if not results[i]["sustains"]:
                    bottom.plot(xs[i], p99[members.index(i)], marker="x", color=RED, markersize=11)
    if rate is not None:
        top.axhline(
            rate / 1000,
            color=RED,
            linestyle=":",
            linewidth=1.5,
            label=f"--rate {rate:,.0f} events/s",
        )
        top_value = max(top_value, rate / 1000)
        bottom.plot([], [], marker="x", color=RED, linestyle="", label="does not sustain the rate")
    top.set_ylabel("throughput (thousand events/s)")
    top.set_ylim(bottom=0, top=top_value * 1.18 or 1)
    top.grid(True, axis="y", alpha=0.3)
    fastest = min(
        (v for row in results for v in (row["latency_p99_range"] or []) if v > 0), default=0
    )
    if fastest and slowest > 20 * fastest:  # a linear axis would flatten the low ones
        bottom.set_yscale("log")
        bottom.set_ylabel("p99 ingest→update latency (ms, log scale)")
    else:
        bottom.set_ylim(bottom=0, top=slowest * 1.18 or 1)
        bottom.set_ylabel("p99 ingest→update latency (ms)")
    bottom.grid(True, axis="y", alpha=0.3)

    index = next(
        i for i, row in enumerate(results) if all(row[key] == chosen[key] for key in OPTIONS)
    )
    row = results[index]
    mark = (
        ("recommended" if summary["recommendation"]["sustains"] is not False else "closest")
        + f": workers {row['workers']}, "
        + ", ".join(f"{OPTIONS[key][1]} {row[key]}" for key in inner)
    )
    for axes in (top, bottom):
        axes.axvspan(xs[index] - 0.3, xs[index] + 0.3, color=GREEN, alpha=0.18, label=mark)
        axes.legend(loc="best", fontsize=8)
    bottom.set_xticks(
        xs,
        [
            "\n".join(f"{SHORT[key]}{row[key]}" for key in inner) or f"w{row['workers']}"
            for row in results
        ],
    )
    bottom.set_xlabel(
        "setting: "
        + ", ".join(f"{SHORT[key]} = {OPTIONS[key][1]}" for key in inner)
        + ", grouped by worker processes"
    )
    figure.savefig(path, format="png")
