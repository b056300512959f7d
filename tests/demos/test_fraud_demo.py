"""The card-fraud demo: its simulator, its merchant table, its score and its command line, at
small sizes."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from statistics import mean
from typing import Any

import pytest

from demos.fraud.__main__ import MERCHANT_FEATURES, RISKY, build_feature_set, suspicion
from demos.fraud.merchants import write_merchants
from demos.fraud.simulator import (
    CATEGORIES,
    HOME_COUNTRY,
    Merchant,
    SimConfig,
    build_scenario,
    simulate,
    transactions,
)
from runtime import FeatureRuntime
from tests.conftest import services_required

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


def test_merchants_have_a_country_and_a_risk_and_bursts_favour_risky_ones() -> None:
    scenario = build_scenario(SMALL)
    merchants = {m.id: m for m in scenario.merchants}
    assert len(merchants) == SMALL.merchants
    for merchant in merchants.values():
        assert 0 < merchant.risk < 1
        assert len(merchant.country) == 2 and merchant.country.isupper()
    assert Counter(m.country for m in merchants.values())[HOME_COUNTRY] > 0.7 * len(merchants)
    assert build_scenario(SMALL).merchants == scenario.merchants  # same seed, same merchants
    events = list(transactions(scenario))
    burst = [merchants[e["merchant"]].risk for e in events if _in_burst(scenario, e)]
    ordinary = [merchants[e["merchant"]].risk for e in events if not _in_burst(scenario, e)]
    assert mean(burst) > 2 * mean(ordinary)
    risky = sum(r >= RISKY for r in burst) / len(burst)
    assert risky > 2 * sum(r >= RISKY for r in ordinary) / len(ordinary)


def _in_burst(scenario: Any, event: dict[str, Any]) -> bool:
    burst = scenario.bursts.get(event["card"])
    return burst is not None and burst.start_ms - 3_000 <= event["ts"] <= burst.end_ms


def test_merchant_table_has_a_row_per_merchant_and_is_replaced_when_written_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "merchants.db"
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE other (x INTEGER)")
    merchants = build_scenario(SMALL).merchants
    assert write_merchants(path, merchants) == SMALL.merchants
    assert write_merchants(path, merchants[:10]) == 10
    with closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT * FROM merchants ORDER BY merchant_id").fetchall()
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert sorted(name for (name,) in tables) == ["merchants", "other"]
    first = sorted(merchants[:10], key=lambda m: m.id)
    assert rows == [(m.id, m.category, m.country, m.risk) for m in first]


async def test_an_unknown_merchant_gets_the_default_row(tmp_path: Path) -> None:
    path = tmp_path / "merchants.db"
    write_merchants(path, [Merchant("m-1", "jewelry", "FR", 0.9)])
    events = [
        {"card": "c1", "ts": 1, "amount": 10.0, "merchant": "m-1", "status": "approved"},
        {"card": "c2", "ts": 2, "amount": 10.0, "merchant": "m-2", "status": "approved"},
    ]
    async with FeatureRuntime(build_feature_set(path), shards=2) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        vectors = await rt.get_many(["c1", "c2"])
        stats = (await rt.statistics()).enrichment["merchants"]
    c1, c2 = vectors["c1"].values, vectors["c2"].values
    assert (c1["merchant_risk"], c1["risky_merchant_tx"], c1["merchant_countries"]) == (0.9, 1, 1)
    assert (c2["merchant_risk"], c2["risky_merchant_tx"], c2["merchant_countries"]) == (0.5, 0, 1)
    assert (stats.keys_found, stats.keys_missing) == (1, 1)


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


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_with_workers_every_card_gets_the_features_of_the_in_process_run(backend: str) -> None:
    """``--workers 2`` (processes, or Ray actors on a local Ray) computes what one process
    computes: the same features for every card of the top list, the same ranking."""
    options = ("--events", "4000", "--cards", "300", "--fraud-cards", "4", "--top", "20")
    alone = json_summary("demos.fraud", *options)
    spread = json_summary("demos.fraud", *options, "--workers", "2", "--backend", backend)
    assert spread["config"]["workers"] == 2 and spread["config"]["backend"] == backend
    assert spread["events"] == alone["events"] == 4_000
    assert spread["rejected"] == alone["rejected"]
    assert spread["keys"] == alone["keys"]
    assert [(row["card"], row["features"]) for row in spread["top"]] == [
        (row["card"], row["features"]) for row in alone["top"]
    ]


def test_json_summary_reports_the_enrichment_and_keeps_the_table_asked_for(
    tmp_path: Path,
) -> None:
    path = tmp_path / "merchants.db"
    summary = json_summary(
        "demos.fraud",
        "--events", "5000", "--cards", "500", "--merchants", "300", "--fraud-cards", "5",
        "--shards", "2", "--merchants-db", str(path),
    )  # fmt: skip
    enrichment = summary["enrichment"]
    assert (enrichment["path"], enrichment["kept"], enrichment["rows"]) == (str(path), True, 300)
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("SELECT count(*) FROM merchants").fetchone() == (300,)
    stats = enrichment["statistics"]
    # the table loaded whole before the stream: every lookup hits, no call during the stream
    assert enrichment["lookups"] == summary["events"] == 5_000
    assert enrichment["warm_up"]["rows"] == 300
    assert stats["calls"] == enrichment["warm_up"]["calls"] and stats["calls"] * 100 < 5_000
    assert stats["keys_requested"] == stats["keys_found"] == 300
    assert stats["hit_ratio"] == 1.0 and stats["cache_misses"] == 0
    assert stats["mean_call_ms"] > 0
    assert stats["stale_served"] == stats["defaults_after_error"] == stats["keys_missing"] == 0
    for row in summary["top"]:
        values = row["features"]
        assert 0 < values["merchant_risk"] < 1
        assert 1 <= values["merchant_countries"] <= values["distinct_merchants"]
        assert 0 <= values["risky_merchant_tx"] <= values["tx_count"]
    by_name = {f["name"]: f for f in enrichment["merchant_features"]}
    assert list(by_name) == list(MERCHANT_FEATURES)
    for feature in by_name.values():
        assert feature["compromised"] > 2 * feature["others"] > 0


def test_cold_cache_fetches_the_merchants_as_their_transactions_come() -> None:
    summary = json_summary(
        "demos.fraud",
        "--events", "5000", "--cards", "500", "--merchants", "300", "--fraud-cards", "5",
        "--shards", "2", "--cold-cache",
    )  # fmt: skip
    enrichment = summary["enrichment"]
    stats = enrichment["statistics"]
    assert enrichment["warm_up"] is None and not enrichment["kept"]
    assert not Path(enrichment["path"]).exists()
    assert enrichment["lookups"] == stats["cache_hits"] + stats["cache_misses"] == 5_000
    # batched and cached: far fewer calls than events, each merchant fetched about once
    assert 1 <= stats["calls"] <= 5_000 // 100
    used = stats["keys_found"]
    # about once: a row in use is fetched again after 80% of its TTL (refresh-ahead, in the
    # replay's event time), and how many are depends on when fetches land on a busy machine
    assert 0 < used <= 2 * 300 and used <= stats["keys_requested"] <= 2 * used
    assert stats["stale_served"] == stats["defaults_after_error"] == stats["keys_missing"] == 0
    assert all(row["features"]["merchant_risk"] is not None for row in summary["top"])


def test_merchants_db_must_be_a_file_that_sqlite_can_write(tmp_path: Path) -> None:
    small = ("--events", "1000", "--cards", "100", "--fraud-cards", "1", "--quiet")
    result = run_demo("demos.fraud", *small, "--merchants-db", str(tmp_path))
    assert result.returncode == 2
    assert "is a directory" in result.stderr
    result = run_demo("demos.fraud", *small, "--merchants-db", str(tmp_path / "no" / "m.db"))
    assert result.returncode == 2
    assert "no directory" in result.stderr
    text = tmp_path / "notes.txt"
    text.write_text("these are notes, not a database, and longer than a SQLite header\n")
    result = run_demo("demos.fraud", *small, "--merchants-db", str(text))
    assert result.returncode == 1
    assert "cannot write" in result.stderr and "not a database" in result.stderr
    assert text.read_text().startswith("these are notes")


def test_table_summary_names_the_sections() -> None:
    # 100 columns, the summary's width in a pipe (set here: a test runner may set its own)
    result = run_demo(
        "demos.fraud",
        *("--events", "3000", "--cards", "300", "--fraud-cards", "3", "--quiet"),
        env={"COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    for text in (
        "throughput",
        "ingest→update p99",
        "Feature set",
        "Enrichment",
        "cache hit ratio",
        "source calls",
        "Merchant features",
        "most suspicious cards",
        "hi-risk",
    ):
        assert text in result.stdout
    # the table went to a temporary directory, removed after the run
    found = re.search(r"The table: (\S+) \(a temporary file", result.stdout)
    assert found is not None
    assert not Path(found[1]).parent.exists()
    # the table of cards fits in 100 columns: no row wraps
    cards = result.stdout.split("most suspicious cards")[1].split("score =")[0]
    rows = [line for line in cards.splitlines() if line.strip()][2:]
    assert len(rows) == 10 and all(line.rstrip().endswith(("yes", "no")) for line in rows)


@pytest.mark.parametrize(
    "source", ["nats://127.0.0.1:4222/fraud", "redis://127.0.0.1:6379/0?stream=fraud"]
)
def test_on_a_broker_a_crash_half_way_loses_nothing(source: str) -> None:
    args = ("--events", "4000", "--cards", "400", "--source", source)
    probe = run_demo("demos.fraud", *args, "--quiet", "--json")
    if probe.returncode != 0 and not services_required():
        pytest.skip(f"no broker: {probe.stderr.strip()[-200:]}")
    assert probe.returncode == 0, probe.stderr
    run = json.loads(probe.stdout)["broker"]
    # the transactions and the simulator's 10 malformed events
    assert run["published"] == 4000 + 10
    # killed with a checkpoint behind it and records read past it, then resumed from it
    assert 0 < run["checkpoint_position"] < run["killed_after"] < run["published"]
    assert run["restored_position"] == run["checkpoint_position"]
    assert run["cards"] > 300
    assert run["cards_differing"] == 0
    assert run["redis_hashes_differing"] == 0
    # names of the run's own, removed at the end
    assert run["stream"].startswith("FRAUD_" if source.startswith("nats") else "fraud:")
    assert run["hashes"].startswith("fraud:") and run["removed"] is True
