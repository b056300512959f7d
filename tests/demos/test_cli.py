"""What the demos share (``demos._cli``, ``demos._render``): option parsing, formatting, and the
command line of each demo (help, usage errors)."""

from __future__ import annotations

import argparse

import pytest

from demos._cli import count
from demos._render import format_bytes, format_ms

from .helpers import run_demo

#: Each demo with options its help lists, and a bad option value with its usage error.
DEMOS = {
    "demos.fraud": (
        (
            "--events",
            "--cards",
            "--fraud-cards",
            "--merchants-db",
            "--cold-cache",
            "--shards",
            "--json",
            "--quiet",
        ),
        ("--events", "0", "--events: must be >= 1"),
    ),
    "demos.ads": (
        ("--impressions", "--ads", "--seed", "--quick", "--shards", "--json", "--quiet"),
        ("--impressions", "0", "--impressions: must be >= 1"),
    ),
    "demos.sensors": (
        ("--sensors", "--hours", "--period", "--seconds", "--shards", "--json", "--quiet"),
        ("--sensors", "0", "--sensors: must be >= 1"),
    ),
    "demos.tune": (
        (
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
        ),
        ("--events", "0", "--events: must be >= 1"),
    ),
}


def test_count_reads_whole_numbers_grouped_or_not() -> None:
    parse = count(1)
    assert [parse(text) for text in ("500000", "500_000", "500,000", "1")] == [500_000] * 3 + [1]
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 1, got 0"):
        parse("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a whole number, got '1\.5'"):
        parse("1.5")


def test_sizes_and_milliseconds_are_written_short() -> None:
    assert [format_bytes(n) for n in (0, 999, 1_840, 3.4e6, 2.5e12)] == [
        "0 B",
        "999 B",
        "1.8 KB",
        "3.4 MB",
        "2,500.0 GB",
    ]
    assert (format_ms(None), format_ms(12.34), format_ms(1_024)) == ("n/a", "12.3 ms", "1,024.0 ms")


@pytest.mark.parametrize("module", DEMOS)
def test_help_exits_zero_and_describes_the_options(module: str) -> None:
    result = run_demo(module, "--help")
    assert result.returncode == 0, result.stderr
    for option in DEMOS[module][0]:
        assert option in result.stdout


@pytest.mark.parametrize("module", DEMOS)
def test_bad_option_value_exits_with_a_usage_error(module: str) -> None:
    option, value, error = DEMOS[module][1]
    result = run_demo(module, option, value)
    assert result.returncode == 2
    assert error in result.stderr
