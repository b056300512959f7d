"""The tuner: its options, how it combines repeated runs and judges them (spread, short runs,
keeping up with a rate), its recommendation rule (against the rule written out as a
brute-force oracle), its table and chart, and its command line at tiny sizes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from demos.tune.__main__ import DEFAULTS, DURATION, REPEAT, grid, parse_args
from demos.tune.measure import RATE_SLACK, RunFailed, Setting, kept_up, quantile, run_in_child
from demos.tune.report import (
    MAX_SPREAD,
    MIN_EVENTS,
    MIN_SECONDS,
    combine,
    recommend,
    render,
    spread,
    warnings,
)
from demos.tune.workloads import workers_refused

from .helpers import json_summary, run_demo

PNG = b"\x89PNG\r\n\x1a\n"


def _run(
    rate: float,
    p99: float = 10.0,
    *,
    events: int = 100_000,
    seconds: float = 2.0,
    kept: bool | None = None,
) -> dict[str, Any]:
    return {
        "events": events,
        "rejected": 0,
        "offered": events,
        "seconds": seconds,
        "events_per_second": rate,
        "latency_p50_ms": p99 / 4,
        "latency_p99_ms": p99,
        "outputs": 2 * events,
        "rate": None,
        "kept_up": kept,
        "late_ms": None,
        "ran_out": False,
    }


def _setting(workers: int, shards: int) -> dict[str, int]:
    return {"workers": workers, "shards": shards, "batch_size": 512, "mailbox_capacity": 16}


def _row(
    workers: int, shards: int, rate: float, p99: float, *, kept: list[bool] | None = None
) -> dict[str, Any]:
    """A setting of three runs around ``rate`` and ``p99`` (within 2%: no spread warning)."""
    kept = kept or [None, None, None]  # type: ignore[list-item]
    runs = [
        _run(rate * factor, p99 * factor, kept=k)
        for factor, k in zip((0.99, 1.0, 1.01), kept, strict=True)
    ]
    return combine(_setting(workers, shards), runs)


# -- options --------------------------------------------------------------------------------------


def test_by_default_the_grid_is_workers_0_1_2_by_shards_1_2_4_run_three_times(
    tmp_path: Path,
) -> None:
    args = parse_args(["--chart", str(tmp_path / "c.png")])
    assert (args.workload, args.repeat, args.duration, args.rate) == (
        "cards",
        REPEAT,
        DURATION,
        None,
    )
    assert args.grid == DEFAULTS and args.workers_refused is None
    assert args.varied == ["workers", "shards"]
    assert [(s["workers"], s["shards"]) for s in grid(args)] == [
        (w, s) for w in (0, 1, 2) for s in (1, 2, 4)
    ]
    assert args.chart == tmp_path / "c.png"
    assert parse_args(["--workload", "ads"]).chart == Path("tune-ads.png")


def test_every_option_listing_several_values_is_a_dimension_of_the_grid() -> None:
    args = parse_args(
        [
            *("--workers", "2,0", "--shards", "4", "--batch-size", "1_024,64"),
            *("--rate", "5_000", "--duration", "0.5", "--repeat", "1", "--no-chart"),
        ]
    )
    assert args.grid["workers"] == [0, 2] and args.grid["batch_size"] == [64, 1024]
    assert args.varied == ["workers", "shards", "batch_size"]
    assert len(grid(args)) == 4
    assert (args.rate, args.duration, args.repeat, args.chart) == (5000.0, 0.5, 1, None)


@pytest.mark.parametrize("workload", ["fraud", "ads"])
def test_workloads_with_lookups_and_joins_sweep_workers(workload: str) -> None:
    # worker processes run lookups and joins (issue 17): no workload is refused now
    args = parse_args(["--workload", workload, "--workers", "0,1,2", "--no-chart"])
    assert args.grid["workers"] == [0, 1, 2]
    assert args.workers_refused is None
    assert workers_refused(workload) is None and workers_refused("cards") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shards", "0,2"], "--shards: each value must be from 1 to 256, got 0"),
        (["--shards", "1,024"], "'024' in '1,024' has a leading zero"),
        (["--workers", "1,1"], "--workers: 1 is given twice"),
        (["--workload", "sensors"], "--workload: invalid choice: 'sensors'"),
        (["--events", "0"], "--events: must be >= 1, got 0"),
        (["--rate", "0"], "--rate: must be > 0"),
        (["--duration", "fast"], "--duration: expected seconds"),
        (["--rate", "1", "--duration", "0.5"], "--rate 1 for --duration 0.5 s offers no event"),
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


# -- runs combined and judged ---------------------------------------------------------------------


def test_repeated_runs_combine_into_medians_and_ranges() -> None:
    runs = [_run(30_000, 40), _run(10_000, 90), _run(20_000, 50)]
    row = combine(_setting(1, 2), runs)
    assert row["events_per_second"] == 20_000
    assert row["events_per_second_range"] == [10_000, 30_000]
    assert (row["latency_p99_ms"], row["latency_p99_range"]) == (50, [40, 90])
    assert row["latency_p50_ms"] == 12.5
    assert (row["workers"], row["shards"], row["runs"]) == (1, 2, runs)
    assert (row["kept_up"], row["sustains"]) == (None, None)


def test_spread_is_the_range_over_the_median() -> None:
    assert spread([90.0, 100.0, 120.0]) == pytest.approx(0.3)
    assert spread([5.0]) == 0.0
    assert spread([None, None]) is None and spread([0.0, 0.0]) is None


def test_a_setting_sustains_a_rate_when_most_of_its_runs_kept_up() -> None:
    assert kept_up((1 - RATE_SLACK) * 10_000, 10_000)
    assert not kept_up((1 - RATE_SLACK) * 10_000 - 1, 10_000)
    assert not kept_up(None, 10_000)
    two_of_three = combine(_setting(0, 1), [_run(1, kept=k) for k in (True, False, True)])
    assert (two_of_three["kept_up"], two_of_three["sustains"]) == (2, True)
    one_of_two = combine(_setting(0, 1), [_run(1, kept=k) for k in (True, False)])
    assert (one_of_two["kept_up"], one_of_two["sustains"]) == (1, False)


def test_steady_runs_long_enough_carry_no_warning() -> None:
    assert warnings(_row(0, 1, 50_000, 10)) == []


def test_a_run_too_short_is_flagged_in_events_and_in_seconds() -> None:
    few = combine(_setting(0, 1), [_run(1_000, events=MIN_EVENTS - 1)] * 2)
    assert warnings(few) == [f"short: {MIN_EVENTS - 1:,} events in a run (< {MIN_EVENTS:,})"]
    quick = combine(_setting(0, 1), [_run(1_000, seconds=MIN_SECONDS / 2)] * 2)
    assert warnings(quick) == ["short: a run of 0.50 s (< 1 s)"]
    ran_out = combine(_setting(0, 1), [_run(1_000), {**_run(1_000), "ran_out": True}])
    assert "ran out before --duration" in warnings(ran_out)[0]


def test_runs_that_disagree_or_a_single_run_are_flagged() -> None:
    wide = combine(_setting(0, 1), [_run(60_000), _run(100_000), _run(80_000)])
    assert warnings(wide) == [f"events/s spread 50% of the median (> {MAX_SPREAD:.0%})"]
    just_over = combine(_setting(0, 1), [_run(88_000), _run(100_000), _run(113_100)])
    assert warnings(just_over) == ["events/s spread 26% of the median (> 25%)"]  # 25.1%
    p99 = combine(_setting(0, 1), [_run(1_000, 10), _run(1_000, 25)])
    assert warnings(p99) == ["p99 spread: highest 2.5x the lowest (> 2x)"]
    assert warnings(combine(_setting(0, 1), [_run(1_000)])) == [
        "one run: no spread to judge (--repeat)"
    ]


def test_quantile_takes_the_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert (quantile(ordered, 0.5), quantile(ordered, 0.99), quantile(ordered, 1.0)) == (
        51.0,
        100.0,
        100.0,
    )
    assert quantile([], 0.99) is None


# -- the recommendation ---------------------------------------------------------------------------


def test_flat_out_the_highest_median_throughput_is_recommended() -> None:
    rows = [_row(0, 1, 80_000, 5), _row(2, 1, 120_000, 50), _row(2, 4, 110_000, 40)]
    chosen = recommend(rows)
    assert chosen["setting"] == _setting(2, 1)
    assert chosen["sustains"] is None
    assert chosen["reason"].startswith(
        "Workers 2, shards 1 has the highest median throughput, 120,000 events/s"
    )
    assert "next, workers 2, shards 4: 110,000 events/s" in chosen["reason"]
    assert "overlap" not in chosen["reason"]
    assert "highest median events/s" in chosen["rule"]


def test_a_throughput_tie_goes_to_the_cheaper_setting_and_overlapping_runs_are_named() -> None:
    rows = [_row(2, 4, 100_000, 10), _row(1, 2, 100_000, 10), _row(1, 1, 100_500, 10)]
    rows[0] = combine(_setting(2, 4), [_run(100_000), _run(100_000), _run(100_000)])
    rows[1] = combine(_setting(1, 2), [_run(100_000), _run(100_000), _run(100_000)])
    rows = rows[:2]
    assert recommend(rows)["setting"] == _setting(1, 2)
    close = [_row(0, 1, 100_000, 10), _row(1, 1, 100_500, 10)]
    assert "their runs overlap: the difference may be noise" in recommend(close)["reason"]


def test_at_a_rate_the_lowest_p99_among_the_settings_that_sustain_it_is_recommended() -> None:
    rows = [
        _row(0, 1, 30_000, 2, kept=[False, False, True]),  # lowest p99, but fell behind
        _row(1, 1, 49_800, 20, kept=[True, True, True]),
        _row(2, 2, 49_900, 8, kept=[True, False, True]),
        _row(2, 4, 49_900, 12, kept=[True, True, True]),
    ]
    chosen = recommend(rows, rate=50_000)
    assert chosen["setting"] == _setting(2, 2)
    assert chosen["sustains"] is True
    assert (
        "lowest median p99 (8.0 ms) of the 3 settings of 4 that sustain 50,000"
        in (chosen["reason"])
    )
    assert "kept up in 2 of 3 runs" in chosen["reason"]
    assert "next, workers 2, shards 4: 12.0 ms" in chosen["reason"]
    assert "sustain 50,000 events/s" in chosen["rule"]


def test_when_no_setting_sustains_the_rate_the_fastest_is_named_as_the_closest() -> None:
    rows = [
        _row(0, 1, 30_000, 2, kept=[False] * 3),
        _row(2, 1, 40_000, 90, kept=[False, True, False]),
    ]
    chosen = recommend(rows, rate=50_000)
    assert chosen["setting"] == _setting(2, 1) and chosen["sustains"] is False
    assert chosen["reason"].startswith("No setting sustains 50,000 events/s; workers 2, shards 1")


def test_the_reason_carries_the_chosen_settings_warnings() -> None:
    rows = [combine(_setting(0, 1), [_run(1_000, events=500)])]
    reason = recommend(rows)["reason"]
    assert "Its figures carry a warning: short: 500 events in a run" in reason


def _oracle(rows: list[dict[str, Any]], rate: float | None) -> tuple[int, int]:
    """The rule as the docs state it, by brute force."""

    def cost(row: dict[str, Any]) -> tuple[int, int]:
        return (row["workers"], row["shards"])

    pool = rows
    if rate is not None and any(row["sustains"] for row in rows):
        pool = [row for row in rows if row["sustains"]]
        low = min(row["latency_p99_ms"] for row in pool)
        return min(cost(row) for row in pool if row["latency_p99_ms"] == low)
    top = max(row["events_per_second"] for row in pool)
    return min(cost(row) for row in pool if row["events_per_second"] == top)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.integers(1, 8),
            st.lists(
                st.tuples(
                    st.sampled_from([10_000.0, 20_000.0, 40_000.0, 45_000.0]),
                    st.sampled_from([1.0, 5.0, 20.0, 100.0]),
                    st.booleans(),
                ),
                min_size=1,
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda row: (row[0], row[1]),
    ),
    st.none() | st.just(30_000.0),
)
def test_recommendation_follows_the_rule(
    found: list[tuple[int, int, list[tuple[float, float, bool]]]], rate: float | None
) -> None:
    rows = [
        combine(
            _setting(workers, shards),
            [_run(r, p99, kept=None if rate is None else k) for r, p99, k in runs],
        )
        for workers, shards, runs in found
    ]
    chosen = recommend(rows, rate)
    assert (chosen["setting"]["workers"], chosen["setting"]["shards"]) == _oracle(rows, rate)
    assert chosen["sustains"] == (None if rate is None else any(r["sustains"] for r in rows))
    assert chosen["reason"].endswith(".")


def test_recommend_needs_at_least_one_setting() -> None:
    with pytest.raises(ValueError, match="results must hold at least one setting"):
        recommend([])


# -- the table and the chart ----------------------------------------------------------------------


def _summary(rate: float | None, refused: str | None = None) -> dict[str, Any]:
    kept = None if rate is None else [True, True, True]
    results = [
        _row(0, 1, 40_000, 5, kept=kept),
        _row(2, 1, 60_000, 9, kept=kept),
        combine(
            _setting(2, 2),
            [_run(40_000, kept=k) for k in (None if rate is None else True,)]
            + [_run(70_000, kept=None if rate is None else False)],
        ),
    ]
    return {
        "workload": "cards",
        "description": "card transactions",
        "workers_refused": refused,
        "events": 300_000,
        "duration": 2.0,
        "rate": rate,
        "seed": 7,
        "repeat": 3,
        "cpus": 2,
        "grid": {**DEFAULTS, "workers": [0, 2], "shards": [1, 2]},
        "varied": ["workers", "shards"],
        "results": results,
        "recommendation": recommend(results, rate),
        "chart": "tune-cards.png",
        "seconds": 30.0,
    }


def _render(summary: dict[str, Any]) -> str:
    out = io.StringIO()
    render(summary, Console(file=out, width=110))
    return out.getvalue()


def test_table_shows_median_and_range_marks_the_pick_and_lists_the_warnings() -> None:
    text = _render(_summary(None))
    lines = text.splitlines()
    assert any(line.split()[:5] == ["2", "1", "60,000", "59.4-60.6k", "9.0"] for line in lines)
    assert [line.split()[:2] for line in lines if line.rstrip().endswith("◀")] == [["2", "1"]]
    assert "Sweep over --workers x --shards" in text
    assert "workers 2, shards 2: events/s spread 55% of the median (> 25%)" in text
    assert "Recommended (◀): --workers 2 --shards 1" in text
    assert "kept up" not in text and "Chart: tune-cards.png" in text


def test_table_at_a_rate_shows_the_runs_that_kept_up_and_a_refused_workers_note() -> None:
    text = " ".join(
        _render(_summary(20_000, refused="workers >= 1 does not support joins")).split()
    )
    assert "kept up" in text and "3/3" in text and "offered at 20,000 events/s" in text
    assert "Workers not swept (workers 0 only)" in text and "does not support joins" in text
    assert "of the 2 settings of 3 that sustain 20,000 events/s" in text


@pytest.mark.parametrize("rate", [None, 20_000.0])
def test_chart_is_a_png(tmp_path: Path, rate: float | None) -> None:
    from demos.tune.chart import draw

    path = tmp_path / "chart.png"
    summary = _summary(rate)
    if rate is not None:  # p99 over a wide span: drawn on a log scale
        summary["results"][2]["latency_p99_range"] = [5.0, 1_500.0]
    draw(summary, path)
    assert path.read_bytes().startswith(PNG)


# -- runs and the command line --------------------------------------------------------------------


async def test_a_run_that_fails_in_its_child_raises_with_the_childs_traceback() -> None:
    setting = Setting(
        workload="no-such-workload",
        events=10,
        seed=1,
        workers=0,
        shards=1,
        batch_size=8,
        mailbox_capacity=1,
        duration=0.1,
    )
    with pytest.raises(RunFailed, match=r"(?s)failed in its child process.*KeyError"):
        await run_in_child(setting, lambda kind, value: None)


def test_help_exits_zero_and_describes_the_options() -> None:
    result = run_demo("demos.tune", "--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "--workload",
        "--events",
        "--workers",
        "--shards",
        "--batch-size",
        "--mailbox",
        "--repeat",
        "--duration",
        "--rate",
        "--chart",
        "--json",
        "--quiet",
    ):
        assert option in result.stdout


def test_a_tiny_sweep_of_workers_end_to_end(tmp_path: Path) -> None:
    chart = tmp_path / "tune.png"
    summary = json_summary(
        "demos.tune",
        *("--workers", "0,1", "--shards", "1", "--repeat", "2", "--duration", "0.2"),
        *("--events", "3000", "--chart", str(chart)),
    )
    assert summary["workload"] == "cards" and summary["workers_refused"] is None
    results = summary["results"]
    assert [(row["workers"], row["shards"]) for row in results] == [(0, 1), (1, 1)]
    for row in results:
        assert len(row["runs"]) == 2
        for run in row["runs"]:
            assert run["events"] == run["offered"] > 0 and run["rejected"] == 0
            assert run["outputs"] >= 2 * run["events"]  # two feature groups: an update each
            assert 0 < run["latency_p50_ms"] <= run["latency_p99_ms"]
            assert run["kept_up"] is None
        low, high = row["events_per_second_range"]
        assert 0 < low <= row["events_per_second"] <= high
    recommendation = summary["recommendation"]
    assert recommendation["setting"]["shards"] == 1 and recommendation["sustains"] is None
    assert summary["chart"] == str(chart)
    assert chart.read_bytes().startswith(PNG)


def test_a_workload_with_lookups_at_a_rate_runs_in_process() -> None:
    result = run_demo(
        "demos.tune",
        *("--workload", "fraud", "--rate", "5_000", "--duration", "0.3", "--repeat", "1"),
        *("--workers", "0", "--events", "2000", "--no-chart", "--quiet"),
        env={"COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "offered at 5,000 events/s" in out and "kept up" in out
    table = out.split("Sweep over --workers x --shards")[1].split("events/s:")[0]
    assert [line.split()[:2] for line in table.splitlines()[3:] if line.strip()] == [
        ["0", "1"],
        ["0", "2"],
        ["0", "4"],
    ]
    assert "short: " in out  # 1,500 events in 0.3 s: too short to trust, and said so
    assert "Recommended (◀): --workers 0" in out or "Closest (◀): --workers 0" in out
