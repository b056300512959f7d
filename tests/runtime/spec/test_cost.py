"""The cost estimator: per-type figures, the derived numbers, and input validation."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from runtime._exceptions import SpecError
from runtime._spec.base import FeatureSpec, Where
from runtime._spec.cost import (
    DISTINCT_VALUE_BYTES,
    MEMORY_BUDGET_BYTES,
    NS_PER_OPERATION,
    PARTIAL_BYTES,
    WINDOW_ENTRY_BYTES,
    WINDOW_OPS,
    CostEstimate,
    MeasuredCost,
    estimate_cost,
    estimate_feature_set,
)
from runtime._spec.feature_set import FEATURE_TYPES, FeatureSet
from runtime._spec.keyed import Count, DistinctCount, EWMean, Mean, Ratio, Sum, Variance
from runtime._spec.windowed import Percentile, Quantile, SequencePattern, Step, TopK, ZScore
from runtime._spec.windows import Hopping, Session, Sliding, Tumbling

from ..udaf.aggregates import SumAgg


def test_count_estimate_has_every_number() -> None:
    estimate = estimate_cost(Count(name="tx_count"), event_rate=1_000, keys=10_000)
    assert estimate == CostEstimate(
        feature="tx_count",
        type="count",
        category="simple_aggregate",
        time_complexity="O(1)",
        space_complexity="O(1)",
        operations_per_second=1_000.0,
        state_bytes_per_key=8,
        memory_bytes=80_000,
        cpu_utilization=1_000 * NS_PER_OPERATION / 1e9,
        bottleneck="none",
    )


@pytest.mark.parametrize(
    ("feature", "ops_per_event", "state_bytes"),
    [
        (Sum(name="s", field="x"), 2, 8),
        (Mean(name="m", field="x"), 3, 16),
        (Variance(name="v", field="x"), 5, 24),
        (EWMean(name="e", field="x", half_life="1m"), 6, 24),
        (Ratio(name="r", numerator="a", denominator="b"), 2, 0),
    ],
)
def test_per_type_figures(feature: FeatureSpec, ops_per_event: int, state_bytes: int) -> None:
    estimate = estimate_cost(feature, event_rate=500, keys=3)
    assert estimate.operations_per_second == 500 * ops_per_event
    assert estimate.state_bytes_per_key == state_bytes
    assert estimate.memory_bytes == 3 * state_bytes


def test_where_adds_one_operation_per_event() -> None:
    plain = estimate_cost(Count(name="c"), event_rate=100)
    filtered = estimate_cost(Count(name="c", where=Where(field="s", value="x")), event_rate=100)
    assert (plain.operations_per_second, filtered.operations_per_second) == (100.0, 200.0)


def test_every_unwindowed_feature_type_has_a_simple_aggregate_profile() -> None:
    for cls in FEATURE_TYPES.values():
        if cls.windowed or cls.event_time:
            continue
        fields: dict[str, Any] = {"name": "f", "field": "x", "half_life": 1}
        fields.update(numerator="a", denominator="b", expr="a + 1", aggregate=SumAgg())
        accepted = {k: v for k, v in fields.items() if k in cls.__struct_fields__}
        estimate = estimate_cost(cls(**accepted), event_rate=1)
        assert estimate.category == "simple_aggregate"
        assert estimate.time_complexity == "O(1)"


def test_windowed_features_are_costed_by_the_events_their_window_holds() -> None:
    # 100 events/s over 10 keys: a 60 s window holds 600 events per key
    sliding = estimate_cost(
        Sum(name="s", field="x", window=Sliding(size="60s")), event_rate=100, keys=10
    )
    assert sliding.category == "windowed_aggregate"
    assert sliding.time_complexity == "O(1) amortized"
    assert sliding.space_complexity == "O(w)"
    assert sliding.state_bytes_per_key == 600 * WINDOW_ENTRY_BYTES + 200
    assert sliding.operations_per_second == 100 * (2 + WINDOW_OPS)
    longer = estimate_cost(
        Sum(name="s", field="x", window=Sliding(size="120s")), event_rate=100, keys=10
    )
    assert longer.state_bytes_per_key > sliding.state_bytes_per_key
    p95 = estimate_cost(
        Percentile(name="p", field="x", q=95, window=Sliding(size="60s")), event_rate=100, keys=10
    )
    assert p95.time_complexity == "O(log w)"
    assert p95.operations_per_second > sliding.operations_per_second
    hopping = estimate_cost(
        Sum(name="s", field="x", window=Hopping(size="60s", hop="10s")), event_rate=100, keys=10
    )
    assert hopping.state_bytes_per_key < sliding.state_bytes_per_key  # 7 panes, not 600 events
    assert "per read" in hopping.time_complexity
    for window in (Tumbling(size="1m"), Session(gap="30s")):
        for feature in (
            Quantile(name="q", field="x", q=0.5, window=window),
            TopK(name="t", field="x", window=window),
            Count(name="c", window=window),
        ):
            estimate = estimate_cost(feature, event_rate=100, keys=10)
            assert estimate.category == "windowed_aggregate"
            assert estimate.state_bytes_per_key > 0


def test_a_sequence_is_a_complex_pattern_costed_by_its_partial_matches() -> None:
    pattern = SequencePattern(name="p", within="1m", max_partial=10, steps=[Step(), Step()])
    estimate = estimate_cost(pattern, event_rate=10, keys=2)
    assert estimate.category == "complex_pattern"
    assert estimate.state_bytes_per_key == 10 * (PARTIAL_BYTES + 16)
    zscore = estimate_cost(
        ZScore(name="z", field="x", window=Sliding(size="1m")), event_rate=10, keys=2
    )
    assert zscore.category == "windowed_aggregate"


def test_distinct_count_is_costed_at_its_worst_case() -> None:
    exact = estimate_cost(DistinctCount(name="d", field="x", exact_limit=100), event_rate=1, keys=2)
    assert exact.space_complexity == "O(min(n, exact_limit))"
    assert exact.state_bytes_per_key == 100 * DISTINCT_VALUE_BYTES
    assert exact.memory_bytes == 2 * 100 * DISTINCT_VALUE_BYTES
    sketch = estimate_cost(
        DistinctCount(name="d", field="x", exact_limit=1, precision=16), event_rate=1
    )
    assert sketch.state_bytes_per_key == 2**16


def test_cpu_utilization_is_capped_at_one_core_and_makes_cpu_the_bottleneck() -> None:
    busy = estimate_cost(Variance(name="v", field="x"), event_rate=10_000_000, keys=1)
    assert busy.cpu_utilization == 1.0
    assert busy.bottleneck == "cpu"
    half = 0.5e9 / NS_PER_OPERATION  # operations per second that fill half a core
    assert estimate_cost(Count(name="c"), event_rate=half, keys=1).bottleneck == "cpu"
    assert estimate_cost(Count(name="c"), event_rate=half * 0.99, keys=1).bottleneck == "none"


def test_memory_is_the_bottleneck_when_state_outgrows_the_budget() -> None:
    keys = MEMORY_BUDGET_BYTES // (1000 * DISTINCT_VALUE_BYTES)
    estimate = estimate_cost(DistinctCount(name="d", field="x"), event_rate=10, keys=keys)
    assert estimate.memory_bytes > MEMORY_BUDGET_BYTES / 2
    assert estimate.bottleneck == "memory"


def test_feature_set_estimates_each_feature_in_order() -> None:
    spec = FeatureSet(
        name="fraud",
        key="card",
        time="ts",
        features=[Count(name="tx_count"), Sum(name="amount_sum", field="amount")],
    )
    estimates = estimate_feature_set(spec, event_rate=2_000, keys=5)
    assert [(e.feature, e.type) for e in estimates] == [
        ("tx_count", "count"),
        ("amount_sum", "sum"),
    ]
    assert [e.operations_per_second for e in estimates] == [2_000.0, 4_000.0]


@pytest.mark.parametrize(
    ("load", "message"),
    [
        ({"event_rate": -1}, "event_rate: must be a finite number >= 0, got -1"),
        ({"event_rate": float("nan")}, "event_rate: must be a finite number >= 0, got nan"),
        ({"event_rate": "10"}, "event_rate: must be a finite number >= 0, got '10'"),
        ({"event_rate": 1, "keys": 0}, "keys: must be an int >= 1, got 0"),
        ({"event_rate": 1, "keys": 2.5}, "keys: must be an int >= 1, got 2.5"),
    ],
)
def test_load_is_validated(load: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as info:
        estimate_cost(Count(name="c"), **load)
    assert str(info.value) == message


def test_zero_event_rate_costs_no_cpu() -> None:
    estimate = estimate_cost(Mean(name="m", field="x"), event_rate=0)
    assert (estimate.operations_per_second, estimate.cpu_utilization) == (0.0, 0.0)
    assert estimate.memory_bytes == 10_000 * 16


def test_estimates_and_measurements_encode_to_json() -> None:
    estimate = estimate_cost(Count(name="c"), event_rate=1)
    assert msgspec.json.decode(msgspec.json.encode(estimate), type=CostEstimate) == estimate
    measured = MeasuredCost(
        feature="c",
        events=1000,
        mean_latency_us=1.5,
        p99_latency_us=4.0,
        events_per_second=250_000.0,
        state_bytes_per_key=8.0,
    )
    assert msgspec.json.decode(msgspec.json.encode(measured), type=MeasuredCost) == measured


def test_measured_cost_allows_figures_not_measured_yet() -> None:
    measured = MeasuredCost(
        feature="c",
        events=0,
        mean_latency_us=None,
        p99_latency_us=None,
        events_per_second=None,
        state_bytes_per_key=None,
    )
    assert msgspec.json.decode(msgspec.json.encode(measured), type=MeasuredCost) == measured
