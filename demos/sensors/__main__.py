"""Drifting sensors, live: drift monitors on the features of simulated sensors.

The demo simulates a plant's sensors (temperatures, vibrations, pressures), one reading every
few seconds each, for a few hours of event time. Some drift at known times: a sudden jump, a
gradual climb, or noise that grows while the level stays; some never do. The readings stream
through a FeatureRuntime (per sensor: the latest reading, and its mean and standard deviation
over the last 10 minutes), and drift monitors watch each sensor's readings with the four
detectors: Page-Hinkley (one monitor per kind of sensor, in its units), ADWIN, PSI and
Kolmogorov-Smirnov (against each sensor's first quarter of the stream). Alerts are printed as
they fire, above the progress bar; the stream is paced so the hours play in --seconds.

The summary scores each monitor against the simulator's truth: drifting sensors found, the
delay from the change to the first alert (in event time), and false alarms (alerts on a
stable sensor, or before its change). --json prints it as JSON for scripts.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from runtime import (
    ADWIN,
    KS,
    PSI,
    DriftAlert,
    DriftMonitor,
    FeatureRuntime,
    FeatureSet,
    Last,
    Mean,
    PageHinkley,
    Reference,
    Sliding,
    Std,
    UpdateSubscription,
    Where,
)

from .._cli import (
    add_output_switches,
    add_seed,
    argument_parser,
    count,
    run_command,
    runtime_options,
)
from .._render import (
    RateColumn,
    add_throughput,
    facts,
    headline,
    label,
    note,
    progress_display,
    table,
)
from .simulator import KINDS, Scenario, Sensor, SimConfig, build, readings

#: The part of the stream, from its start, that is each sensor's reference for PSI and KS.
REFERENCE_PART = 0.25
#: The live window of PSI and KS, in readings, the readings they need to test, and how often.
WINDOW = 240
MIN_WINDOW = 120
EVERY = 10
#: Page-Hinkley in units of each kind's noise: the drift tolerated per reading, the evidence.
PH_DELTA = 1.0
PH_THRESHOLD = 15.0


def build_feature_set() -> FeatureSet:
    """Per sensor: the latest reading (and the same per kind, for monitors in its units), and
    the mean and spread of the last 10 minutes."""
    per_kind = [
        Last(
            name=kind,
            field="value",
            where=Where(field="kind", op="==", value=kind),
            description=f"latest {kind} reading",
        )
        for kind in KINDS
    ]
    return FeatureSet(
        name="sensors",
        key="sensor",
        time="ts",
        max_out_of_orderness="2s",
        features=[
            Last(name="reading", field="value", description="latest reading"),
            *per_kind,
            Mean(name="mean_10m", field="value", window=Sliding(size="10m")),
            Std(name="std_10m", field="value", window=Sliding(size="10m")),
        ],
    )


def build_monitors(config: SimConfig) -> list[DriftMonitor]:
    """The monitors, all per sensor (``segment="key"``)."""
    reference = Reference(first=round(config.span_ms * REFERENCE_PART))
    monitors = [
        DriftMonitor(
            name=f"ph_{kind.name}",
            feature=kind.name,
            detector=PageHinkley(
                delta=PH_DELTA * kind.noise, threshold=PH_THRESHOLD * kind.noise, min_instances=60
            ),
            segment="key",
        )
        for kind in KINDS.values()
    ]
    monitors += [
        DriftMonitor(name="adwin", feature="reading", detector=ADWIN(), segment="key"),
        DriftMonitor(
            name="psi",
            feature="reading",
            detector=PSI(reference=reference, window=WINDOW, min_window=MIN_WINDOW, every=EVERY),
            segment="key",
        ),
        DriftMonitor(
            name="ks",
            feature="reading",
            detector=KS(reference=reference, window=WINDOW, min_window=MIN_WINDOW, every=EVERY),
            segment="key",
        ),
    ]
    return monitors


def _watched(monitor: DriftMonitor, sensor: Sensor) -> bool:
    return monitor.feature == "reading" or monitor.feature == sensor.kind.name


# -- running --------------------------------------------------------------------------------------


def _progress(console: Console, *, disable: bool) -> Progress:
    return progress_display(
        console,
        label(10),
        BarColumn(bar_width=30),
        TextColumn("{task.fields[clock]}"),
        TextColumn("{task.fields[alerts]:>4} alerts"),
        RateColumn(7),
        TimeElapsedColumn(),
        disable=disable,
    )


def _clock(config: SimConfig, t: int) -> str:
    """Event time as ``hh:mm`` from the start of the stream."""
    minutes = max(0, t - config.start_ms) // 60_000
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _line(alert: DriftAlert, sensor: Sensor, config: SimConfig) -> str:
    """An alert as one line of the live display."""
    if sensor.change_ms is not None and alert.event_time >= sensor.change_ms:
        verdict = f"[green]{sensor.drift} drift, {_minutes(alert.event_time - sensor.change_ms)}"
        verdict += " after it[/]"
    else:
        verdict = "[red]false alarm[/]"
    score = f"{alert.score:.3g}"
    if alert.p_value is not None:
        score += f" (p={alert.p_value:.1e})"
    return (
        f"{_clock(config, alert.event_time)}  [bold]{alert.monitor:<15}[/] "
        f"{sensor.id:<8} score {score} > {alert.threshold:.3g}  {verdict}"
    )


def _minutes(ms: int) -> str:
    return f"{ms / 60_000:.0f} min"


async def _watch(
    subscription: UpdateSubscription[DriftAlert],
    alerts: list[DriftAlert],
    scenario: Scenario,
    progress: Progress,
    task: TaskID,
) -> None:
    """Collect the alerts; on a terminal, print each above the progress bar."""
    sensors = {sensor.id: sensor for sensor in scenario.sensors}
    async for alert in subscription:
        alerts.append(alert)
        progress.update(task, alerts=len(alerts))
        if not progress.disable:
            progress.console.print(
                _line(alert, sensors[alert.key], scenario.config), highlight=False
            )


async def _feed(
    rt: FeatureRuntime,
    events: list[dict[str, Any]],
    seconds: float,
    progress: Progress,
    task: TaskID,
    config: SimConfig,
) -> None:
    """Ingest ``events``, paced to last ``seconds`` (0: as fast as possible)."""
    rate = len(events) / seconds if seconds else None
    # paced: 20 ms of the stream at a time, as a steady source would hand it over
    step = 4096 if rate is None else max(1, round(rate / 50))
    started = time.perf_counter()
    for start in range(0, len(events), step):
        chunk = events[start : start + step]
        await rt.ingest_many(chunk)
        sent = start + len(chunk)
        progress.update(
            task,
            completed=sent,
            clock=f"{_clock(config, chunk[-1]['ts'])} of "
            f"{_clock(config, config.start_ms + config.span_ms)}",
        )
        if rate is not None:
            await anyio.sleep(max(0.0, started + sent / rate - time.perf_counter()))


async def run_demo(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Simulate, stream and score; return the summary as plain data."""
    config = SimConfig(sensors=args.sensors, hours=args.hours, period_s=args.period, seed=args.seed)
    scenario = build(config)
    events = list(readings(scenario))
    monitors = build_monitors(config)
    alerts: list[DriftAlert] = []
    task = progress.add_task("streaming", total=len(events), clock="", alerts=0, unit="readings")
    async with anyio.create_task_group() as tg:
        async with FeatureRuntime(
            build_feature_set(),
            shards=args.shards,
            batch_size=args.batch_size,
            expected_keys=len(scenario.sensors),
        ) as rt:
            subscription = rt.drift_alerts(buffer=100_000)
            tg.start_soon(_watch, subscription, alerts, scenario, progress, task)
            await rt.monitor_drift(*monitors)
            started = time.perf_counter()
            await _feed(rt, events, args.seconds, progress, task, config)
            await rt.flush()
            elapsed = time.perf_counter() - started
            status = await rt.drift_status()
            vectors = await rt.get_many(sensor.id for sensor in scenario.sensors)
        # the runtime has stopped: the subscription ends once its alerts are read
    progress.remove_task(task)
    return _summary(args, scenario, monitors, alerts, status, vectors, len(events), elapsed)


def _summary(
    args: argparse.Namespace,
    scenario: Scenario,
    monitors: list[DriftMonitor],
    alerts: list[DriftAlert],
    status: Mapping[str, Any],
    vectors: Mapping[str, Any],
    events: int,
    elapsed: float,
) -> dict[str, Any]:
    config = scenario.config
    sensors = {sensor.id: sensor for sensor in scenario.sensors}
    by_pair: dict[tuple[str, str], list[int]] = {}
    for alert in alerts:
        by_pair.setdefault((alert.monitor, alert.key), []).append(alert.event_time)

    def first_after(monitor: str, sensor: Sensor) -> int | None:
        if sensor.change_ms is None:
            return None
        times = [t for t in by_pair.get((monitor, sensor.id), []) if t >= sensor.change_ms]
        return min(times) - sensor.change_ms if times else None

    def false_alarms(monitor: str, sensor: Sensor) -> int:
        change = math.inf if sensor.change_ms is None else sensor.change_ms
        return sum(t < change for t in by_pair.get((monitor, sensor.id), []))

    rows = []
    for monitor in monitors:
        watched = [s for s in scenario.sensors if _watched(monitor, s)]
        drifting = [s for s in watched if s.change_ms is not None]
        delays = {s.id: first_after(monitor.name, s) for s in drifting}
        found = [d for d in delays.values() if d is not None]
        state = status[monitor.name]
        rows.append(
            {
                "name": monitor.name,
                "detector": monitor.detector.type_name,
                "feature": monitor.feature,
                "sensors": len(watched),
                "drifting": len(drifting),
                "detected": len(found),
                "missed": sorted(sid for sid, d in delays.items() if d is None),
                "mean_delay_min": sum(found) / len(found) / 60_000 if found else None,
                "max_delay_min": max(found) / 60_000 if found else None,
                "false_alarms": sum(false_alarms(monitor.name, s) for s in watched),
                "false_alarm_sensors": sum(false_alarms(monitor.name, s) > 0 for s in watched),
                "alerts": state.alerts,
                "values": state.values,
                "dropped": state.dropped,
            }
        )
    sensor_rows = []
    for sensor in scenario.sensors:
        values = vectors[sensor.id].values
        sensor_rows.append(
            {
                "sensor": sensor.id,
                "kind": sensor.kind.name,
                "unit": sensor.kind.unit,
                "level": sensor.level,
                "drift": sensor.drift,
                "change_min": None
                if sensor.change_ms is None
                else (sensor.change_ms - config.start_ms) / 60_000,
                "mean_10m": values["mean_10m"],
                "std_10m": values["std_10m"],
                "first_alert_min": {
                    m.name: None if (d := first_after(m.name, sensor)) is None else d / 60_000
                    for m in monitors
                    if _watched(m, sensor)
                },
                "false_alarms": {
                    m.name: false_alarms(m.name, sensor) for m in monitors if _watched(m, sensor)
                },
            }
        )
    return {
        "config": {
            "sensors": config.sensors,
            "hours": config.hours,
            "period_s": config.period_s,
            "seed": config.seed,
            "shift_sd": config.shift,
            "spread": config.spread,
            "seconds": args.seconds,
            "shards": args.shards,
            "batch_size": args.batch_size,
        },
        "events": events,
        "seconds": elapsed,
        "events_per_second": events / elapsed if elapsed else None,
        "alerts": len(alerts),
        "monitors": rows,
        "sensors": sensor_rows,
        "alert_log": [
            msgspec.to_builtins(alert) | {"clock": _clock(config, alert.event_time)}
            for alert in sorted(alerts, key=lambda a: (a.event_time, a.monitor, str(a.key)))
        ],
        "truth": {sid: sensors[sid].drift for sid in sensors},
    }


# -- showing --------------------------------------------------------------------------------------


def _delay(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} min"


def render(summary: Mapping[str, Any], console: Console) -> None:
    """Print the summary as rich tables."""
    config = summary["config"]
    drifting = sum(1 for row in summary["sensors"] if row["drift"] != "none")
    headline(
        console,
        "Drifting sensors",
        f"{config['sensors']} sensors ({drifting} drift), "
        f"{config['hours']:g} h of readings every {config['period_s']:g} s, "
        f"{summary['events']:,} readings (seed {config['seed']})",
    )
    console.print()
    runs = facts("Run")
    pace = f"paced over {config['seconds']:g} s" if config["seconds"] else "as fast as possible"
    runs.add_row("readings", f"{summary['events']:,}", f"in {summary['seconds']:.2f} s, {pace}")
    add_throughput(runs, summary["events_per_second"], config, "readings")
    runs.add_row("alerts", f"{summary['alerts']:,}", "from every monitor, in event time")
    console.print(runs)
    console.print()

    monitors = table("Monitors against the truth")
    for name, justify in (
        ("monitor", "left"),
        ("detector", "left"),
        ("watches", "left"),
        ("found", "right"),
        ("mean delay", "right"),
        ("max delay", "right"),
        ("false alarms", "right"),
        ("alerts", "right"),
    ):
        monitors.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in summary["monitors"]:
        watches = "all" if row["feature"] == "reading" else row["feature"]
        false = row["false_alarms"]
        monitors.add_row(
            row["name"],
            row["detector"],
            watches,
            f"{row['detected']}/{row['drifting']}",
            _delay(row["mean_delay_min"]),
            _delay(row["max_delay_min"]),
            f"[red]{false}[/]" if false else "0",
            f"{row['alerts']:,}",
        )
    console.print(monitors)
    note(
        console,
        [
            "found: drifting sensors with an alert at or after their change; delay: from the",
            "change to the first alert, in event time; false alarms: alerts on a stable sensor,",
            "or before the change. Page-Hinkley and ADWIN watch the mean, PSI and KS the whole",
            "distribution (the only ones to see a spread drift for sure); ADWIN alerts again as",
            "a gradual drift goes on.",
        ],
    )
    console.print()

    # one Page-Hinkley monitor per kind: one column for the sensor's own
    columns = ["ph"] + [
        row["name"] for row in summary["monitors"] if row["detector"] != "page_hinkley"
    ]
    sensors = table("Sensors: first alert after the change")
    for column in ("sensor", "drift", "change at"):
        sensors.add_column(column)
    for column in columns:
        sensors.add_column(column, justify="right")
    for row in summary["sensors"]:
        change = row["change_min"]
        cells = []
        for column in columns:
            name = f"ph_{row['kind']}" if column == "ph" else column
            delay, false = row["first_alert_min"][name], row["false_alarms"][name]
            text = "-" if delay is None else f"+{delay:.0f}m"
            if false:
                text = f"[red]{false}![/] {text}"
            cells.append(text)
        clock = "" if change is None else f"{int(change) // 60:02d}:{int(change) % 60:02d}"
        sensors.add_row(row["sensor"], row["drift"], clock, *cells)
    console.print(sensors)
    note(
        console,
        [
            "+Nm: the first alert came N minutes after the change; -: none after it;",
            "n!: n false alarms; ph: the Page-Hinkley monitor of the sensor's kind.",
            "Changes at hh:mm from the start of the stream.",
        ],
    )


# -- command line -------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _seconds(text: str) -> float:
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _positive(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser("python -m demos.sensors", __doc__, "--sensors 24 --seconds 5")
    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--sensors",
        type=count(1),
        default=12,
        metavar="N",
        help="sensors; sensor i gets kind i mod 3 and drift i mod 4 (12: every pair once)",
    )
    sim.add_argument(
        "--hours", type=_positive, default=6.0, metavar="H", help="hours of readings (6)"
    )
    sim.add_argument(
        "--period", type=_positive, default=5.0, metavar="S", help="seconds between readings (5)"
    )
    add_seed(sim, "stream")
    rt = runtime_options(parser)
    rt.add_argument(
        "--seconds",
        type=_seconds,
        default=12.0,
        metavar="S",
        help="play the stream over S seconds, to watch the alerts come; 0 as fast as possible (12)",
    )
    out = parser.add_argument_group("output")
    add_output_switches(out, "progress bar or live alerts")
    args = parser.parse_args(argv)
    if args.hours * 3600 < 20 * args.period:
        parser.error("--hours must hold at least 20 readings of each sensor")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with command-line ``argv``; return the exit status."""
    return run_command(parse_args(argv), _progress, run_demo, render)


if __name__ == "__main__":
    sys.exit(main())
