"""The shard-count tuner: its options, its recommendation rule (against the rule written out
as a brute-force oracle) and its command line, at tiny sizes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from demos.tune.__main__ import DEFAULT_SHARDS, parse_args
from demos.tune.measure import RunFailed, Setting, run_in_child
from demos.tune.report import LATENCY_SLACK, THROUGHPUT_SLACK, combine, recommend, render

from .helpers import json_summary, run_demo

PNG = b"\x89PNG\r\n\x1a\n"


def _row(shards: int, rate: float, p99: float) -> dict[str, Any]:
    return {
        "shards": shards,
        "batch_size": 512,
        "mailbox_capacity": 16,
        "events_per_second": rate,
        "latency_p99_ms": p99,
    }


# -- options --------------------------------------------------------------------------------------


def test_without_a_list_the_sweep_goes_over_the_default_shard_counts(tmp_path: Path) -> None:
    args = parse_args(["--chart", str(tmp_path / "c.png")])
    assert (args.workload, args.swept) == ("fraud", "shards")
    assert args.settings["shards"] == DEFAULT_SHARDS
    assert args.fixed == {"batch_size": 512, "mailbox_capacity": 16}
    assert args.chart == tmp_path / "c.png"
    assert parse_args(["--workload", "ads"]).chart == Path("tune-ads.png")


def test_the_option_with_several_values_is_swept_and_the_others_keep_one(tmp_path: Path) -> None:
    args = parse_args(["--batch-size", "1_024,64,256", "--mailbox", "4", "--no-chart"])
    assert args.swept == "batch_size"
    assert args.settings["batch_size"] == [64, 256, 1024]
    assert args.fixed == {"shards": 4, "mailbox_capacity": 4}
    assert args.chart is None
    one = parse_args(["--shards", "8", "--no-chart"])
    assert (one.swept, one.settings["shards"]) == ("shards", [8])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "1,2", "--mailbox", "4,8"], "sweep one option at a time: --shards and"),
        (["--shards", "0,2"], "--shards: each value must be from 1 to 256, got 0"),
        (["--shards", "1,024"], "'024' in '1,024' has a leading zero"),
        (["--batch-size", "64,64"], "--batch-size: 64 is given twice"),
        (["--mailbox", "four"], "--mailbox: expected whole numbers separated by commas"),
        (["--workload", "sensors"], "--workload: invalid choice: 'sensors'"),
        (["--events", "0"], "--events: must be >= 1, got 0"),
        (["--max-p99", "0"], "--max-p99: must be > 0 ms"),
        (["--chart", "x.png", "--no-chart"], "--chart and --no-chart: give one of them"),
        (["--chart", "/no/such/dir/c.png"], "--chart: no directory /no/such/dir"),
    ],
)
def test_bad_arguments_are_refused_with_the_option_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_chart_path_that_is_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--chart", str(tmp_path)])
    assert "is a directory; name a PNG file" in capsys.readouterr().err


# -- the recommendation ---------------------------------------------------------------------------


def test_recommends_the_smallest_setting_about_as_fast_as_the_best() -> None:
    rows = [_row(1, 20_000, 10), _row(2, 39_000, 20), _row(4, 40_000, 24), _row(8, 41_000, 40)]
    chosen = recommend(rows, "shards")
    assert chosen["value"] == 2
    assert chosen["setting"] == {"shards": 2, "batch_size": 512, "mailbox_capacity": 16}
    assert "Shards 2 is the smallest setting within 5% of the best throughput" in chosen["reason"]
    assert "39,000 against 41,000 events/s at shards 8" in chosen["reason"]
    assert "20.0 ms" in chosen["reason"]


def test_a_fast_setting_with_a_high_p99_is_passed_over() -> None:
    rows = [_row(1, 40_000, 90), _row(2, 40_500, 20), _row(4, 41_000, 22)]
    chosen = recommend(rows, "shards")
    assert chosen["value"] == 2
    assert "whose p99 is at most 25.0 ms" in chosen["reason"]
    assert "as fast but slower to update, shards 1 had 90.0 ms" in chosen["reason"]


def test_with_max_p99_the_fastest_setting_under_it_is_recommended() -> None:
    rows = [_row(1, 20_000, 10), _row(2, 30_000, 30), _row(4, 40_000, 80)]
    chosen = recommend(rows, "shards", max_p99=50)
    assert chosen["value"] == 2
    assert "No setting within 5% of the best throughput" in chosen["reason"]
    assert recommend(rows, "shards", max_p99=5)["value"] == 1  # none meets it: the lowest p99
    assert "(--max-p99)" in chosen["rule"]


def _oracle(rows: list[dict[str, Any]], max_p99: float | None) -> int:
    """The rule as the docs state it, by brute force."""
    best = max(row["events_per_second"] for row in rows)
    fast = [row for row in rows if row["events_per_second"] >= (1 - THROUGHPUT_SLACK) * best]
    bound = max_p99
    if bound is None:
        bound = min(row["latency_p99_ms"] for row in fast) * (1 + LATENCY_SLACK)
    meeting = [row["shards"] for row in fast if row["latency_p99_ms"] <= bound]
    if meeting:
        return min(meeting)
    under = [row for row in rows if row["latency_p99_ms"] <= bound]
    if under:
        top = max(row["events_per_second"] for row in under)
        return min(row["shards"] for row in under if row["events_per_second"] == top)
    low = min(row["latency_p99_ms"] for row in rows)
    return min(row["shards"] for row in rows if row["latency_p99_ms"] == low)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 256),
            st.floats(1_000, 100_000, allow_nan=False),
            st.floats(0.5, 2_000, allow_nan=False),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda row: row[0],
    ),
    st.none() | st.floats(1, 1_000, allow_nan=False),
)
def test_recommendation_is_one_of_the_settings_and_follows_the_rule(
    found: list[tuple[int, float, float]], max_p99: float | None
) -> None:
    rows = [_row(*row) for row in sorted(found)]
    chosen = recommend(rows, "shards", max_p99)
    assert chosen["value"] in {row["shards"] for row in rows}
    assert chosen["value"] == _oracle(rows, max_p99)
    assert chosen["reason"].endswith(".")


def test_recommend_needs_at_least_one_setting() -> None:
    with pytest.raises(ValueError, match="results must hold at least one setting"):
        recommend([], "shards")


def _run(rate: float, p99: float, depth: int, peak: int) -> dict[str, Any]:
    return {
        "events": 1_000,
        "rejected": 0,
        "events_per_second": rate,
        "latency_p50_ms": p99 / 2,
        "latency_p99_ms": p99,
        "max_mailbox_depth": depth,
        "actors": 4,
        "rss_before_bytes": 50_000_000,
        "peak_rss_bytes": peak,
    }


def test_repeated_runs_combine_into_medians_and_peaks() -> None:
    setting = {"shards": 2, "batch_size": 512, "mailbox_capacity": 16}
    runs = [_run(30_000, 40, 1, 80_000_000), _run(10_000, 90, 3, 70_000_000)]
    runs.append(_run(20_000, 50, 2, 75_000_000))
    row = combine(setting, runs)
    assert row["events_per_second"] == 20_000
    assert row["events_per_second_range"] == [10_000, 30_000]
    assert (row["latency_p50_ms"], row["latency_p99_ms"]) == (25, 50)
    assert (row["max_mailbox_depth"], row["peak_rss_bytes"]) == (3, 80_000_000)
    assert row["shards"] == 2 and row["runs"] == runs


def test_table_marks_the_recommended_row_and_shows_the_range_of_repeated_runs() -> None:
    results = [
        combine({"shards": shards, "batch_size": 512, "mailbox_capacity": 16}, runs)
        for shards, runs in (
            (1, [_run(20_000, 30, 1, 80_000_000), _run(22_000, 32, 1, 81_000_000)]),
            (4, [_run(40_000, 60, 2, 90_000_000), _run(41_000, 64, 2, 91_000_000)]),
        )
    ]
    summary = {
        "workload": "fraud",
        "description": "card transactions",
        "events": 1_000,
        "seed": 7,
        "repeat": 2,
        "cpus": 2,
        "swept": "shards",
        "fixed": {"batch_size": 512, "mailbox_capacity": 16},
        "results": results,
        "recommendation": recommend(results, "shards"),
        "chart": "tune-fraud.png",
        "seconds": 3.0,
    }
    out = io.StringIO()
    render(summary, Console(file=out, width=100))
    text = out.getvalue()
    lines = text.splitlines()
    assert any(line.split()[:3] == ["1", "21,000", "20.0k-22.0k"] for line in lines)
    assert [line.split()[0] for line in lines if line.rstrip().endswith("◀")] == ["4"]
    assert "Recommended (◀): --shards 4" in text
    assert "Chart: tune-fraud.png" in text and "(median of 2 runs" in text


# -- runs and the command line --------------------------------------------------------------------


async def test_a_run_that_fails_in_its_child_raises_with_the_childs_traceback() -> None:
    setting = Setting(
        workload="no-such-workload", events=10, seed=1, shards=1, batch_size=8, mailbox_capacity=1
    )
    with pytest.raises(RunFailed, match=r"(?s)failed in its child process.*KeyError"):
        await run_in_child(setting, lambda kind, value: None)


def test_help_exits_zero_and_describes_the_options() -> None:
    result = run_demo("demos.tune", "--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "--workload",
        "--events",
        "--shards",
        "--batch-size",
        "--mailbox",
        "--repeat",
        "--max-p99",
        "--chart",
        "--json",
        "--quiet",
    ):
        assert option in result.stdout


def test_json_summary_has_a_row_per_setting_a_chart_and_a_recommendation(tmp_path: Path) -> None:
    chart = tmp_path / "tune.png"
    summary = json_summary(
        "demos.tune",
        *("--events", "2000", "--shards", "1,2", "--chart", str(chart)),
    )
    assert (summary["workload"], summary["swept"], summary["values"]) == ("fraud", "shards", [1, 2])
    assert summary["fixed"] == {"batch_size": 512, "mailbox_capacity": 16}
    results = summary["results"]
    assert [row["shards"] for row in results] == [1, 2]
    for row in results:
        assert len(row["runs"]) == 1
        assert row["events"] == 2_000 and row["rejected"] == 0
        assert row["events_per_second_range"] == [row["events_per_second"]] * 2
        assert row["events_per_second"] > 0
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert 0 <= row["max_mailbox_depth"] <= 16 + 8  # a cut-short turn gives back up to 8
        assert 0 < row["rss_before_bytes"] <= row["peak_rss_bytes"]
        assert row["actors"] >= row["shards"]
    recommendation = summary["recommendation"]
    assert recommendation["value"] in (1, 2)
    assert recommendation["setting"]["shards"] == recommendation["value"]
    assert f"hards {recommendation['value']}" in recommendation["reason"]
    assert summary["chart"] == str(chart)
    assert chart.read_bytes().startswith(PNG)


def test_table_summary_of_a_batch_size_sweep_of_the_ads_workload() -> None:
    result = run_demo(
        "demos.tune",
        *("--workload", "ads", "--events", "2000", "--batch-size", "128,512", "--no-chart"),
        "--quiet",
        env={"COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (
        "Tuning batch size: workload ads, 2,000 events a run",
        "Sweep over --batch-size",
        "events/s",
        "p99",
        "max depth",
        "peak RSS",
        "No chart (--no-chart).",
    ):
        assert text in out
    table = out.split("Sweep over --batch-size")[1].split("events/s:")[0]
    rows = [line.split()[0] for line in table.splitlines()[3:] if line.strip()]
    assert rows == ["128", "512"]
    assert sum(line.rstrip().endswith("◀") for line in table.splitlines()) == 1
    chosen = out.split("Recommended (◀): --batch-size ")[1].split()[0]
    assert chosen in ("128", "512")
