"""The drifting-sensors demo: its simulator, and its command line at small sizes."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from typing import Any

import pytest

from demos.sensors.__main__ import build_feature_set, build_monitors
from demos.sensors.simulator import DRIFTS, KINDS, SimConfig, build, readings

from .helpers import json_summary, run_demo

SMALL = SimConfig(sensors=8, hours=2.0, period_s=5.0, seed=3)
#: small and quick: 12 sensors (every kind with every drift), 3 hours, a reading every 10 s
QUICK = ("--sensors", "12", "--hours", "3", "--period", "10", "--seconds", "0", "--shards", "2")


def _by_sensor(config: SimConfig) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in readings(build(config)):
        by[event["sensor"]].append(event)
    return by


def test_simulator_gives_the_same_stream_for_the_same_seed() -> None:
    assert list(readings(build(SMALL))) == list(readings(build(SMALL)))
    other = SimConfig(sensors=8, hours=2.0, period_s=5.0, seed=4)
    assert list(readings(build(SMALL))) != list(readings(build(other)))


def test_every_sensor_reads_every_period_in_time_order() -> None:
    events = list(readings(build(SMALL)))
    assert len(events) == build(SMALL).events == 8 * 1440
    times = [event["ts"] for event in events]
    assert times == sorted(times)
    assert set(events[0]) == {"sensor", "kind", "ts", "value"}
    for sensor, mine in _by_sensor(SMALL).items():
        assert len(mine) == 1440, sensor
        gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(mine)]
        assert 3_000 <= statistics.mean(gaps) <= 7_000


def test_sensors_get_every_kind_and_drift_and_change_in_the_middle() -> None:
    scenario = build(SimConfig(sensors=12))
    pairs = {(sensor.kind.name, sensor.drift) for sensor in scenario.sensors}
    assert pairs == {(kind, drift) for kind in KINDS for drift in DRIFTS}
    config = scenario.config
    for sensor in scenario.sensors:
        if sensor.drift == "none":
            assert sensor.change_ms is None
            continue
        assert sensor.change_ms is not None
        part = (sensor.change_ms - config.start_ms) / config.span_ms
        assert config.change_from <= part <= config.change_to


def test_readings_drift_as_the_truth_says() -> None:
    scenario = build(SMALL)
    by = _by_sensor(SMALL)
    for sensor in scenario.sensors:
        values = by[sensor.id]
        split = sensor.change_ms or SMALL.start_ms + SMALL.span_ms // 2
        before = [e["value"] for e in values if e["ts"] < split]
        after = [e["value"] for e in values if e["ts"] >= split]
        noise = sensor.kind.noise
        moved = (statistics.mean(after[-200:]) - statistics.mean(before)) / noise
        spread = statistics.stdev(after) / statistics.stdev(before)
        if sensor.drift in ("sudden", "gradual"):
            assert 2.4 < moved < 3.6, sensor
        else:
            assert abs(moved) < 0.5, sensor
        if sensor.drift == "spread":
            assert 2.0 < spread < 3.0, sensor
        else:
            assert spread < 1.6 if sensor.drift != "none" else 0.8 < spread < 1.25


def test_simulator_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="sensors must be >= 1"):
        SimConfig(sensors=0)
    with pytest.raises(ValueError, match="change_from"):
        SimConfig(change_from=0.8, change_to=0.5)


def test_monitors_watch_the_demos_features() -> None:
    names = set(build_feature_set().names)
    monitors = build_monitors(SimConfig())
    assert {m.detector.type_name for m in monitors} == {"page_hinkley", "adwin", "psi", "ks"}
    assert all(m.feature in names and m.segment == "key" for m in monitors)


def test_json_summary_finds_the_drifting_sensors_with_few_false_alarms() -> None:
    summary = json_summary("demos.sensors", *QUICK)
    config = summary["config"]
    assert (config["sensors"], config["hours"], config["period_s"]) == (12, 3.0, 10.0)
    assert summary["events"] == 12 * 1080
    assert summary["events_per_second"] > 0
    monitors = {row["name"]: row for row in summary["monitors"]}
    assert set(monitors) == {"ph_temperature", "ph_vibration", "ph_pressure", "adwin", "psi", "ks"}
    for row in monitors.values():
        assert row["dropped"] == 0 and row["values"] > 0
        assert row["false_alarms"] <= 1, row
    # PSI and KS see every drift, the spread ones too
    for name in ("psi", "ks"):
        assert monitors[name]["detected"] == monitors[name]["drifting"] == 9
        assert monitors[name]["max_delay_min"] < 60
    # ADWIN watches the mean: sudden and gradual drifts
    assert monitors["adwin"]["detected"] >= 6
    truth = summary["truth"]
    for row in summary["sensors"]:
        assert row["drift"] == truth[row["sensor"]]
        delays = row["first_alert_min"]
        if row["drift"] == "sudden":
            assert all(delays[name] is not None and delays[name] < 15 for name in ("psi", "ks"))
        if row["drift"] == "none":
            assert sum(row["false_alarms"].values()) <= 1
    log = summary["alert_log"]
    assert len(log) == summary["alerts"] == sum(row["alerts"] for row in monitors.values())
    assert {"monitor", "key", "event_time", "score", "threshold", "clock"} <= set(log[0])
    assert [a["event_time"] for a in log] == sorted(a["event_time"] for a in log)


def test_table_summary_names_the_sections() -> None:
    result = run_demo("demos.sensors", *QUICK, "--quiet", env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for text in (
        "Drifting sensors",
        "throughput",
        "Monitors against the truth",
        "false alarms",
        "Sensors: first alert after the change",
        "ph_temperature",
    ):
        assert text in result.stdout
    rows = result.stdout.split("Sensors: first alert after the change")[1].splitlines()
    assert sum(line.startswith(("temp-", "vib-", "pres-")) for line in rows) == 12
    assert all(len(line) <= 100 for line in result.stdout.splitlines())


def test_help_and_usage_errors() -> None:
    result = run_demo("demos.sensors", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--sensors", "--hours", "--period", "--seconds", "--seed", "--json", "--quiet"):
        assert option in result.stdout
    result = run_demo("demos.sensors", "--hours", "0")
    assert result.returncode == 2 and "--hours: must be > 0" in result.stderr
    result = run_demo("demos.sensors", "--hours", "0.01", "--period", "60")
    assert result.returncode == 2 and "at least 20 readings" in result.stderr
