"""The card-fraud demo: its simulator, its score and its command line, at small sizes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from demos.fraud.__main__ import build_feature_set, suspicion
from demos.fraud.simulator import CATEGORIES, SimConfig, build_scenario, simulate, transactions

from .helpers import json_summary, run_demo

SMALL = SimConfig(events=5_000, cards=500, merchants=200, fraud_cards=5, seed=3)
FIELDS = {"card", "ts", "amount", "merchant", "category", "status"}


def _stream(config: SimConfig) -> list[dict[str, Any]]:
    return list(simulate(config)[1])


def test_simulator_gives_the_same_stream_for_the_same_seed() -> None:
    assert _stream(SMALL) == _stream(SMALL)
    assert _stream(SMALL) != _stream(SimConfig(events=5_000, cards=500, merchants=200, seed=4))


def test_simulator_emits_the_requested_number_of_well_formed_transactions() -> None:
    events = _stream(SMALL)
    assert len(events) == SMALL.events
    for event in events:
        assert set(event) == FIELDS
        assert isinstance(event["card"], str) and isinstance(event["merchant"], str)
        assert isinstance(event["ts"], int) and isinstance(event["amount"], float)
        assert event["amount"] > 0
        assert event["category"] in CATEGORIES
        assert event["status"] in ("approved", "declined")
    statuses = Counter(event["status"] for event in events)
    assert statuses["approved"] > 0.8 * len(events)


def test_simulator_times_span_the_day_slightly_out_of_order() -> None:
    events = _stream(SMALL)
    times = [event["ts"] for event in events]
    newest = times[0]
    for ts in times:
        assert ts >= newest - SMALL.jitter_ms - 1
        newest = max(newest, ts)
    assert times != sorted(times)
    assert max(times) - min(times) > 0.9 * SMALL.span_ms


def test_simulator_activity_is_skewed_towards_a_few_cards() -> None:
    counts = Counter(event["card"] for event in _stream(SMALL)).most_common()
    busiest = sum(n for _, n in counts[: len(counts) // 100 + 1])
    assert busiest > 3 * SMALL.events / len(counts) * (len(counts) // 100 + 1)


def test_fraud_bursts_are_many_transactions_at_many_merchants_within_minutes() -> None:
    scenario = build_scenario(SMALL)
    events = list(transactions(scenario))
    assert len(scenario.bursts) == SMALL.fraud_cards
    for card, burst in scenario.bursts.items():
        window = [
            e
            for e in events
            if e["card"] == card and burst.start_ms - SMALL.jitter_ms <= e["ts"] <= burst.end_ms
        ]
        assert len(window) >= burst.transactions >= 15
        assert burst.end_ms - burst.start_ms <= 15 * 60_000
        assert len({e["merchant"] for e in window}) >= 0.8 * len(window)


def test_malformed_events_lack_their_card_or_their_time_and_come_on_top() -> None:
    config = SimConfig(events=2_000, cards=100, merchants=50, fraud_cards=1, malformed=4)
    events = _stream(config)
    bad = [e for e in events if set(e) != FIELDS]
    assert len(events) == config.events + 4
    assert sorted("".join(FIELDS - set(e)) for e in bad) == ["card", "card", "ts", "ts"]


def test_simulator_config_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="fraud_cards"):
        SimConfig(cards=10, fraud_cards=11)
    with pytest.raises(ValueError, match="events must be >= 1"):
        SimConfig(events=0)


def test_score_ranks_a_burst_above_busy_and_over_limit_cards() -> None:
    names = build_feature_set().names
    ordinary = dict.fromkeys(names, None) | {
        "tx_count": 200,
        "declined_count": 4,
        "distinct_merchants": 20,
        "amount_mean": 40.0,
        "amount_max": 300.0,
    }
    burst = ordinary | {
        "tx_count": 40,
        "declined_count": 14,
        "distinct_merchants": 36,
        "amount_mean": 300.0,
        "amount_max": 2_000.0,
    }
    over_limit = ordinary | {
        "tx_count": 1_000,
        "declined_count": 250,
        "distinct_merchants": 80,
        "amount_mean": 160.0,
        "amount_max": 2_200.0,
    }
    assert suspicion(burst, 0.02) > suspicion(ordinary, 0.02) + 5
    assert suspicion(burst, 0.02) > suspicion(over_limit, 0.02)


def test_json_summary_reports_the_run_and_ranks_fraud_cards_first() -> None:
    summary = json_summary(
        "demos.fraud",
        "--events", "5000", "--cards", "500", "--fraud-cards", "5", "--malformed", "3",
        "--shards", "2",
    )  # fmt: skip
    assert summary["events"] == 5_000
    assert summary["rejected"] == 3
    assert summary["events_per_second"] > 0
    assert summary["latency_p50_ms"] > 0
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"]
    assert 0 < summary["keys"] <= 500
    assert summary["state_bytes_per_key"] > 0
    assert [f["name"] for f in summary["features"]] == list(build_feature_set().names)
    assert {"name", "type", "input"} <= set(summary["features"][0])
    top = summary["top"]
    assert len(top) == 10
    assert [row["rank"] for row in top] == list(range(1, 11))
    assert set(top[0]["features"]) == set(build_feature_set().names)
    assert sum(row["fraud"] for row in top) >= 3
    assert summary["precision_at_10"] == summary["fraud_in_top_10"] / 10


def test_table_summary_names_the_sections() -> None:
    result = run_demo(
        "demos.fraud", "--events", "3000", "--cards", "300", "--fraud-cards", "3", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    for text in ("throughput", "ingest→update p99", "Feature set", "most suspicious cards"):
        assert text in result.stdout
