"""The shard-count tuner: a demo's workload through featurist's FeatureRuntime at several
settings, measured, charted, and a setting recommended.

Each setting runs in a fresh process of its own: it simulates the workload's events (the same
for every setting), starts the runtime, loads its caches, then hands it the events with
ingest_many as fast as it takes them and waits until every one is applied. It measures the
throughput, the ingest-to-update latency (p50, p99), the deepest actor mailbox (sampled while
it runs) and the process's peak RSS.

The sweep goes over one option, the one given several values: --shards (1,2,4,8,16 when no
option lists several), --batch-size or --mailbox; the others keep one value (4 shards,
batches of 512, mailboxes of 16 batches: the runtime's defaults). The summary is a table, a
PNG chart of throughput and latency against the swept option (--chart), and the recommended
setting: the smallest within 5% of the best throughput whose p99 is at most 25% above the
lowest p99 of those (or at most --max-p99), with the reason in numbers. --json prints it as
JSON for scripts.
"""

from __future__ import annotations

import argparse
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
from .._render import (
    CountColumn,
    RateColumn,
    format_bytes,
    format_ms,
    label,
    progress_display,
)
from .measure import RunFailed, Setting, run_in_child
from .report import OPTIONS, combine, recommend, render
from .workloads import WORKLOADS

PROG = "python -m demos.tune"
#: Events a run by default: the default sweep (5 settings) takes about a minute on 2 CPUs.
EVENTS = 200_000
#: The shard counts swept when no option lists several values.
DEFAULT_SHARDS = [1, 2, 4, 8, 16]
#: The value of each option that is not swept and not given: the runtime's defaults.
DEFAULTS = {"shards": 4, "batch_size": 512, "mailbox_capacity": 16}
#: The most shards (the runtime's key groups).
MAX_SHARDS = 256


def _progress(console: Console, *, disable: bool) -> Progress:
    return progress_display(
        console,
        label(26),
        TextColumn("{task.fields[phase]:<13}"),
        BarColumn(bar_width=12),
        CountColumn(9),
        RateColumn(7),
        TimeElapsedColumn(),
        disable=disable,
    )


def _line(name: str, value: int, result: dict[str, Any]) -> str:
    rate = result["events_per_second"] or 0.0
    p50, p99 = result["latency_p50_ms"], result["latency_p99_ms"]
    peak = format_bytes(result["peak_rss_bytes"])
    return (
        f"{name} {value}: {rate:,.0f} events/s, p50 {format_ms(p50)}, p99 {format_ms(p99)}, "
        f"max depth {result['max_mailbox_depth']}, peak RSS {peak}"
    )


async def sweep(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run every setting ``args.repeat`` times (the settings in turn, then again), each run in
    a child process; return the summary as plain data."""
    swept = args.swept
    option, name = OPTIONS[swept]
    values = args.settings[swept]
    settings = [{**args.fixed, swept: value} for value in values]
    runs: list[list[dict[str, Any]]] = [[] for _ in settings]
    total = len(settings) * args.repeat
    started = time.perf_counter()
    done = 0
    for _ in range(args.repeat):
        for index, setting in enumerate(settings):
            done += 1
            title = f"{option} {setting[swept]} ({done}/{total})"
            task = progress.add_task(title, total=args.events, phase="starting")

            def report(kind: str, value: Any, task: Any = task) -> None:
                if kind == "phase" and value == "ingesting":
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
                        **setting,
                    ),
                    report,
                )
            except RunFailed as exc:
                raise SystemExit(f"{PROG}: {name} {setting[swept]}: {exc}") from None
            progress.remove_task(task)
            if not progress.disable:
                progress.console.print(_line(name, setting[swept], result), highlight=False)
            runs[index].append(result)
    results = [combine(setting, found) for setting, found in zip(settings, runs, strict=True)]
    summary: dict[str, Any] = {
        "workload": args.workload,
        "description": WORKLOADS[args.workload].description,
        "events": args.events,
        "seed": args.seed,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "swept": swept,
        "option": option,
        "values": values,
        "fixed": args.fixed,
        "results": results,
        "recommendation": recommend(results, swept, args.max_p99),
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


def _positive_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 ms, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(PROG, __doc__, "--shards 1,2,4,8,16 --workload fraud")
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="fraud",
        help="the demo whose events and features run: "
        + "; ".join(f"{w.name}: {w.description}" for w in WORKLOADS.values())
        + " (fraud)",
    )
    work.add_argument(
        "--events",
        type=count(1),
        default=EVENTS,
        metavar="N",
        help=f"events a run ({EVENTS:,})",
    )
    add_seed(work, "events")
    sweep_ = parser.add_argument_group(
        "sweep",
        "Each takes values separated by commas; one of them may list several, the sweep.",
    )
    sweep_.add_argument(
        "--shards",
        type=count_list(1, MAX_SHARDS),
        metavar="N,...",
        help="shard actors per feature group (1,2,4,8,16 when no option lists several, else 4)",
    )
    sweep_.add_argument(
        "--batch-size",
        type=count_list(1),
        metavar="N,...",
        help="events per batch sent to a shard (512)",
    )
    sweep_.add_argument(
        "--mailbox",
        type=count_list(1),
        metavar="N,...",
        help="batches each actor's mailbox holds before ingest waits (16)",
    )
    sweep_.add_argument(
        "--repeat",
        type=count(1),
        default=1,
        metavar="N",
        help="runs of each setting; the table shows the medians (1)",
    )
    sweep_.add_argument(
        "--max-p99",
        type=_positive_ms,
        metavar="MS",
        help="recommend only a setting whose p99 latency is at most MS milliseconds "
        "(by default: at most 25%% above the lowest p99 of the fastest settings)",
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

    given = {"shards": args.shards, "batch_size": args.batch_size, "mailbox_capacity": args.mailbox}
    several = [key for key, values in given.items() if values is not None and len(values) > 1]
    if len(several) > 1:
        parser.error(
            "sweep one option at a time: "
            + " and ".join(OPTIONS[key][0] for key in several)
            + " each list several values"
        )
    if not several and args.shards is None:
        given["shards"] = DEFAULT_SHARDS
    args.settings = {
        key: values if values is not None else [DEFAULTS[key]] for key, values in given.items()
    }
    args.swept = several[0] if several else "shards"
    args.fixed = {key: values[0] for key, values in args.settings.items() if key != args.swept}

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
