"""The ad-attribution demo: its simulator, its feature set and its command line, at small sizes."""

from __future__ import annotations

import math
import random
from collections import Counter
from functools import cache
from typing import Any

import pytest

from demos.ads.__main__ import JOIN, build_feature_set
from demos.ads.simulator import CAMPAIGNS, ClickDelay, SimConfig, simulate
from runtime import FeatureSet

from .helpers import json_summary, run_demo

SMALL = SimConfig(impressions=5_000, ads=100, seed=3)
FIELDS = {"ad_id", "campaign", "imp_id", "ts"}


@cache
def _quick_summary(*args: str) -> dict[str, Any]:
    """The --json summary of a --quick run (one run per set of arguments for the module)."""
    return json_summary("demos.ads", "--quick", *args)


def test_simulator_gives_the_same_traffic_for_the_same_seed() -> None:
    assert simulate(SMALL).events == simulate(SMALL).events
    assert simulate(SMALL).events != simulate(SimConfig(impressions=5_000, ads=100)).events


def test_simulator_emits_impressions_and_clicks_of_known_ads() -> None:
    sim = simulate(SMALL)
    streams = Counter(stream for _, stream, _ in sim.events)
    assert streams["impressions"] == SMALL.impressions
    assert streams["clicks"] == sim.clicks > 0
    campaign_of = {ad.id: ad.campaign for ad in sim.ads}
    assert len(campaign_of) == SMALL.ads
    for _, _, event in sim.events:
        assert set(event) == FIELDS
        assert campaign_of[event["ad_id"]] == event["campaign"]
        assert isinstance(event["ts"], int) and isinstance(event["imp_id"], int)
    assert sum(sim.truth.impressions.values()) == SMALL.impressions
    assert set(sim.truth.impressions) == {c.name for c in CAMPAIGNS}


def test_a_click_follows_its_impression_at_most_once() -> None:
    sim = simulate(SMALL)
    shown = {e["imp_id"]: e for _, s, e in sim.events if s == "impressions"}
    clicked = Counter(e["imp_id"] for _, s, e in sim.events if s == "clicks")
    assert max(clicked.values()) == 1
    for _, stream, click in sim.events:
        if stream == "clicks":
            impression = shown[click["imp_id"]]
            assert click["ts"] >= impression["ts"]
            assert click["ad_id"] == impression["ad_id"]


def test_simulator_events_arrive_mostly_in_order_within_the_jitter() -> None:
    sim = simulate(SMALL)
    arrivals = [arrival for arrival, _, _ in sim.events]
    assert arrivals == sorted(arrivals)
    newest = 0
    late = 0
    for arrival, _, event in sim.events:
        assert 0 <= arrival - event["ts"] < SMALL.jitter_ms
        assert event["ts"] > newest - SMALL.jitter_ms
        late += event["ts"] < newest
        newest = max(newest, event["ts"])
    assert 0 < late < 0.3 * len(sim.events)


def test_click_delays_follow_the_delay_distribution() -> None:
    delay = ClickDelay()
    rng = random.Random(1)
    draws = sorted(delay.draw(rng) for _ in range(20_000))
    for ms in (10_000, 60_000, 300_000, 600_000):
        seen = sum(d <= ms for d in draws) / len(draws)
        assert abs(seen - delay.cdf(ms)) < 0.015, ms
    # mostly under a few minutes, a few percent beyond ten
    assert delay.cdf(180_000) > 0.85
    assert 0.005 < 1 - delay.cdf(600_000) < 0.06


def test_simulator_config_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError, match="impressions must be >= 1"):
        SimConfig(impressions=0)
    with pytest.raises(ValueError, match="number of campaigns"):
        SimConfig(ads=2)


def test_feature_set_joins_clicks_to_their_impression_within_ten_minutes() -> None:
    feature_set = build_feature_set()
    [join] = feature_set.joins
    assert (join.name, join.left, join.right, join.how) == (JOIN, "impressions", "clicks", "left")
    assert join.after_ms == 600_000 and join.on == ("imp_id",)
    assert feature_set.key == "ad_id" and feature_set.idle_timeout is not None
    assert JOIN in {feature_set.stream_of(f) for f in feature_set.features}
    assert FeatureSet.from_json(feature_set.to_json()) == feature_set


def test_ctr_of_each_campaign_is_close_to_the_simulated_one() -> None:
    summary = _quick_summary()
    assert summary["config"]["impressions"] == 20_000
    campaigns = summary["campaigns"]
    assert [c["campaign"] for c in campaigns] == [c.name for c in CAMPAIGNS]
    for row in campaigns:
        n = row["impressions"]
        assert n == row["simulated_impressions"] > 0
        pairs = ((row["ctr"], row["expected_ctr"]), (row["ctr_any_delay"], row["true_ctr"]))
        for measured, true in pairs:
            assert abs(measured - true) <= 4 * math.sqrt(true * (1 - true) / n), row
        # the join attributes exactly the clicks the simulator made within the window
        assert row["attributed"] == row["simulated_clicks_within_window"]
        assert row["clicks"] == row["simulated_clicks"]
        assert row["features_agree"]


def test_every_click_and_impression_is_accounted_for() -> None:
    summary = _quick_summary()
    accounting, join = summary["accounting"], summary["join"]
    assert accounting["clicks"] == accounting["attributed"] + accounting["beyond_window"]
    assert accounting["unaccounted_clicks"] == 0 and accounting["late"] == 0
    assert 0 < accounting["beyond_window"] < 0.1 * accounting["clicks"]
    assert accounting["impressions"] == accounting["matched"] + accounting["unmatched"]
    assert accounting["waiting"] == 0
    drained = join["drained"]
    assert drained["records"] == accounting["matched"]
    assert drained["unmatched"] == accounting["unmatched"]
    assert drained["late_dropped"] == drained["evicted"] == 0
    assert drained["buffered_left"] == drained["buffered_right"] == drained["keys"] == 0
    # when the last impression came in, the impressions of the last 10 minutes still waited
    assert join["at_last_impression"]["buffered_left"] > 0
    assert join["at_last_impression"]["state_bytes"] > 0
    assert join["records_read"] == accounting["impressions"]
    assert summary["events"] == accounting["impressions"] + accounting["clicks"]


def test_time_to_click_distribution_is_sane() -> None:
    summary = _quick_summary()
    ttc = summary["time_to_click"]
    assert ttc["clicks"] == summary["accounting"]["attributed"]
    assert 0 <= ttc["p50_ms"] <= ttc["p90_ms"] <= ttc["p99_ms"] <= ttc["max_ms"] <= 600_000
    assert ttc["p50_ms"] < 120_000  # most clicks come within a few minutes
    assert sum(bucket["clicks"] for bucket in ttc["histogram"]) == ttc["clicks"]
    assert ttc["histogram"][-1]["to_ms"] == 600_000


def test_the_attribution_is_the_same_for_any_shard_count() -> None:
    default = _quick_summary()
    for shards in ("1", "3"):
        other = _quick_summary("--shards", shards)
        assert other["campaigns"] == default["campaigns"]
        assert other["time_to_click"] == default["time_to_click"]
        assert other["accounting"] == default["accounting"]


def test_table_summary_names_the_sections() -> None:
    result = run_demo("demos.ads", "--quick", "--quiet")
    assert result.returncode == 0, result.stderr
    for text in (
        "Ad attribution",
        "Click-through rate by campaign",
        "Time from impression to click",
        "p99",
        'rt.statistics().joins["attribution"]',
        "most attributed clicks",
        "Clicks: ",
    ):
        assert text in result.stdout
