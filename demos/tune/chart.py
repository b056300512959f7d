"""The tuner's chart: throughput and latency against the swept option, as a PNG.

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
BLUE = "#1f5fa8"
ORANGE = "#d9731a"


def draw(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the chart of ``summary`` (as ``render`` takes it) to ``path`` as a PNG: events/s
    above, p50 and p99 latency below, both against the swept option (on a log2 axis when its
    values span a factor of 4 or more), the recommended setting marked on both."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    swept = summary["swept"]
    option, name = OPTIONS[swept]
    results = summary["results"]
    xs = [row[swept] for row in results]
    rates = [(row["events_per_second"] or 0.0) / 1000 for row in results]
    p50 = [row["latency_p50_ms"] for row in results]
    p99 = [row["latency_p99_ms"] for row in results]
    chosen = summary["recommendation"]["value"]

    figure = Figure(figsize=(8, 6.4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(1, 1))
    fixed = ", ".join(
        f"{OPTIONS[key][1]} {value}" for key, value in summary["fixed"].items() if key != swept
    )
    figure.suptitle(
        f"featurist tuner: {name}, workload {summary['workload']}\n"
        f"{summary['events']:,} events a run, {fixed}, "
        f"{summary['repeat']} run{'s' if summary['repeat'] > 1 else ''} a setting",
        fontsize=11,
    )

    top.plot(xs, rates, marker="o", color=BLUE, linewidth=2, label="throughput")
    if summary["repeat"] > 1:
        ranges = [row["events_per_second_range"] or (0.0, 0.0) for row in results]
        top.fill_between(
            xs,
            [low / 1000 for low, _ in ranges],
            [high / 1000 for _, high in ranges],
            color=BLUE,
            alpha=0.15,
            label="slowest to fastest run",
        )
    best = max(rates)
    top.axhline(
        best * 0.95, color="grey", linestyle=":", linewidth=1, label="95% of the best throughput"
    )
    top.set_ylabel("throughput (thousand events/s)")
    top.set_ylim(bottom=0, top=best * 1.15 if best else 1)
    top.grid(True, alpha=0.3)

    bottom.plot(xs, p99, marker="o", color=ORANGE, linewidth=2, label="p99")
    bottom.plot(xs, p50, marker="s", color=ORANGE, linewidth=1, linestyle="--", label="p50")
    bottom.set_ylabel("ingest→update latency (ms)")
    bottom.set_ylim(bottom=0, top=max((v or 0.0) for v in p99) * 1.15 or 1)
    bottom.grid(True, alpha=0.3)
    bottom.set_xlabel(f"{name} ({option})")

    index = xs.index(chosen)
    marks = (
        f"recommended: {chosen} ({rates[index]:,.1f}k events/s)",
        f"recommended: {chosen} (p99 {p99[index] or 0.0:,.1f} ms)",
    )
    for axes, mark in zip((top, bottom), marks, strict=True):
        axes.axvline(chosen, color=GREEN, linestyle="--", linewidth=1.5, label=mark)
        axes.legend(loc="best", fontsize=9)
    if len(xs) > 1 and max(xs) >= 4 * min(xs):
        bottom.set_xscale("log", base=2)
    bottom.xaxis.set_major_locator(FixedLocator(xs))
    bottom.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    bottom.xaxis.set_minor_locator(NullLocator())
    if len(xs) == 1:
        bottom.set_xlim(xs[0] * 0.5, xs[0] * 1.5)
    figure.savefig(path, format="png")
