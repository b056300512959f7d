"""The tuner: a demo's workload through featurist's FeatureRuntime at every setting of a grid
of worker processes and shards, each run several times, measured, charted, and a setting
recommended.

The grid is --workers x --shards (0,1,2 x 1,2,4 by default; --batch-size and --mailbox may
list several values too). Each run is a fresh process of its own: it simulates the
workload's events (the same for every run), starts the runtime, subscribes a consumer to
every update and offers the events for --duration seconds: as fast as the runtime takes them
(flat out), or at --rate events/s (open loop: each millisecond's events handed over when they
are due, whatever the runtime's state). It measures the events applied per second up to the
last output read, and the ingest-to-update latency of every output read (p50, p99). Each
setting runs --repeat times (3), the settings in turn each round, and the table shows the
median and the range (slowest to fastest run).

A run with fewer than 20,000 events or shorter than a second, or a setting whose runs
disagree (events/s spread over 25% of the median, or one p99 over twice another), is flagged:
its figures are not to be trusted as they are (run longer or on a quieter machine).

The recommendation: without --rate, the setting with the highest median events/s; with
--rate, of the settings that sustain it (most of their runs achieved at least 95% of the
rate: every output read back within about 5% of the run's length after the last event was
due), the one with the lowest median p99; the reason is printed with its numbers. --json
prints the summary as JSON for scripts.

A workload the runtime cannot run in worker processes keeps workers 0, and the tuner says
why (every workload here runs in them: keyed aggregates, windows, joins and lookups do).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .._cli import (
    add_output_switches,
    add_seed,
    argument_parser,
    count,
    count_list,
    run_command,
)
from .._render import CountColumn, RateColumn, format_ms, label, progress_display
from .measure import RunFailed, Setting, run_in_child
from .report import OPTIONS, combine, recommend, render
from .report import label as setting_label
from .workloads import WORKLOADS, workers_refused

PROG = "python -m demos.tune"
#: The most events a run offers (the simulated stream): enough for 2 s flat out on 2 CPUs.
EVENTS = 300_000
#: The grid's values when not given.
DEFAULTS = {
    "workers": [0, 1, 2],
    "shards": [1, 2, 4],
    "batch_size": [512],
    "mailbox_capacity": [16],
}
#: Runs of each setting by default.
REPEAT = 3
#: Seconds a run offers events by default.
DURATION = 2.0
#: The most shards (the runtime's key groups) and workers.
MAX_SHARDS = 256
MAX_WORKERS = 64


def _progress(console: Console, *, disable: bool) -> Progress:
    return progress_display(
        console,
        label(30),
        TextColumn("{task.fields[phase]:<13}"),
        BarColumn(bar_width=12),
        CountColumn(9),
        RateColumn(7),
        TimeElapsedColumn(),
        disable=disable,
    )


def _line(name: str, result: dict[str, Any]) -> str:
    rate = result["events_per_second"] or 0.0
    text = (
        f"{name}: {rate:,.0f} events/s over {result['seconds']:.2f} s, "
        f"p50 {format_ms(result['latency_p50_ms'])}, p99 {format_ms(result['latency_p99_ms'])}"
    )
    if result["kept_up"] is not None:
        text += ", kept up" if result["kept_up"] else ", fell behind"
    return text


def grid(args: argparse.Namespace) -> list[dict[str, int]]:
    """Every setting of ``args.grid``, workers varying slowest (then shards, ...)."""
    keys = list(OPTIONS)
    return [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(args.grid[key] for key in keys))
    ]


async def sweep(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run every setting ``args.repeat`` times (the settings in turn, then again), each run in
    a child process; return the summary as plain data."""
    settings = grid(args)
    runs: list[list[dict[str, Any]]] = [[] for _ in settings]
    total = len(settings) * args.repeat
    started = time.perf_counter()
    done = 0
    for _ in range(args.repeat):
        for index, setting in enumerate(settings):
            done += 1
            name = setting_label(setting, args.varied)
            wanted = args.events if args.rate is None else round(args.rate * args.duration)
            task = progress.add_task(
                f"{name} ({done}/{total})", total=min(args.events, wanted), phase="starting"
            )

            def report(kind: str, value: Any, task: Any = task) -> None:
                if kind == "phase" and value not in ("simulating", "statistics"):
                    progress.reset(task, phase=value)  # the time and the rate start now
                elif kind == "phase":
                    if value == "statistics":
                        progress.stop_task(task)  # the rate of the ingest stays shown
                    progress.update(task, phase=value)
                else:
                    progress.update(task, completed=value)

            try:
                result = await run_in_child(
                    Setting(
                        workload=args.workload,
                        events=args.events,
                        seed=args.seed,
                        duration=args.duration,
                        rate=args.rate,
                        **setting,
                    ),
                    report,
                )
            except RunFailed as exc:
                raise SystemExit(f"{PROG}: {name}: {exc}") from None
            progress.remove_task(task)
            if not progress.disable:
                progress.console.print(_line(name, result), highlight=False)
            runs[index].append(result)
    results = [combine(setting, found) for setting, found in zip(settings, runs, strict=True)]
    summary: dict[str, Any] = {
        "workload": args.workload,
        "description": WORKLOADS[args.workload].description,
        "workers_refused": args.workers_refused,
        "events": args.events,
        "duration": args.duration,
        "rate": args.rate,
        "seed": args.seed,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "grid": args.grid,
        "varied": args.varied,
        "results": results,
        "recommendation": recommend(results, args.rate, args.varied),
        "chart": None,
        "seconds": 0.0,
    }
    if args.chart is not None:
        from .chart import draw

        task = progress.add_task("drawing the chart", total=1, phase="")
        await anyio.to_thread.run_sync(draw, summary, args.chart)
        progress.remove_task(task)
        summary["chart"] = str(args.chart)
    summary["seconds"] = time.perf_counter() - started
    return summary


# -- command line -------------------------------------------------------------------------------


def _positive(unit: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(PROG, __doc__, "--workers 0,2 --shards 1,4 --rate 50_000")
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="cards",
        help="the demo whose events and features run: "
        + "; ".join(f"{w.name}: {w.description}" for w in WORKLOADS.values())
        + " (cards)",
    )
    work.add_argument(
        "--events",
        type=count(1),
        default=EVENTS,
        metavar="N",
        help=f"the most events a run offers: the simulated stream ({EVENTS:,})",
    )
    add_seed(work, "events")
    grid_ = parser.add_argument_group(
        "grid", "Each takes values separated by commas; the sweep runs every combination."
    )
    grid_.add_argument(
        "--workers",
        type=count_list(0, MAX_WORKERS),
        metavar="N,...",
        help="worker processes; 0: in the application's process (0,1,2)",
    )
    grid_.add_argument(
        "--shards",
        type=count_list(1, MAX_SHARDS),
        metavar="N,...",
        help="shard actors per feature group (per worker with workers) (1,2,4)",
    )
    grid_.add_argument(
        "--batch-size", type=count_list(1), metavar="N,...", help="events per batch (512)"
    )
    grid_.add_argument(
        "--mailbox",
        type=count_list(1),
        metavar="N,...",
        help="batches each actor's mailbox holds before ingest waits (16)",
    )
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--repeat",
        type=count(1),
        default=REPEAT,
        metavar="N",
        help=f"runs of each setting: the table shows their median and range ({REPEAT})",
    )
    runs.add_argument(
        "--duration",
        type=_positive("seconds"),
        default=DURATION,
        metavar="S",
        help=f"seconds a run offers events ({DURATION:g})",
    )
    runs.add_argument(
        "--rate",
        type=_positive("events per second"),
        metavar="EVENTS/S",
        help="offer the events at this rate (open loop) and recommend the setting with the "
        "lowest p99 among those that sustain it (without: flat out, and the highest "
        "throughput is recommended)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--chart",
        metavar="PATH",
        help="write the chart to this PNG file (tune-WORKLOAD.png)",
    )
    out.add_argument("--no-chart", action="store_true", help="write no chart")
    add_output_switches(out, "progress display")
    args = parser.parse_args(argv)

    given = {
        "workers": args.workers,
        "shards": args.shards,
        "batch_size": args.batch_size,
        "mailbox_capacity": args.mailbox,
    }
    args.grid = {key: values or DEFAULTS[key] for key, values in given.items()}
    args.workers_refused = workers_refused(args.workload)
    if args.workers_refused is not None:
        args.grid["workers"] = [0]
    # the table names the options that vary, and always workers and shards
    args.varied = [
        key for key, values in args.grid.items() if key in ("workers", "shards") or len(values) > 1
    ]
    if args.rate is not None and args.rate * args.duration < 1:
        parser.error(f"--rate {args.rate:g} for --duration {args.duration:g} s offers no event")

    if args.no_chart:
        if args.chart is not None:
            parser.error("--chart and --no-chart: give one of them")
    else:
        chart = Path(args.chart if args.chart is not None else f"tune-{args.workload}.png")
        if chart.is_dir():
            parser.error(f"--chart: {chart} is a directory; name a PNG file")
        if not chart.parent.is_dir():
            parser.error(f"--chart: no directory {chart.parent}")
        args.chart = chart
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tuner with command-line ``argv``; return the exit status."""
    return run_command(parse_args(argv), _progress, sweep, render)


if __name__ == "__main__":
    sys.exit(main())
