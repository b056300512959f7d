"""The ``Custom`` feature in specs: aggregates given as objects, classes or names; spec files
that name a class only through the application's allow-list; checks at load; written out and
read back; checkpoints that compare definitions; and the cost estimator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime import (
    CheckpointConfig,
    CheckpointError,
    Count,
    Custom,
    Derived,
    FeatureRuntime,
    FeatureSet,
    Hopping,
    Sliding,
    SpecError,
    Tumbling,
    estimate_cost,
)
from runtime._spec.cost import CUSTOM_UPDATE_OPS, WINDOW_OPS
from runtime._spec.feature_set import encode_spec

from .aggregates import DistinctList, RiverVar, Spread, SumAgg, SumOfSquares

T0 = 1_700_000_000_000
NAME = "tests.runtime.udaf.aggregates:SumOfSquares"
TOML = f"""
name = "toml"
key = "card"
time = "ts"

[[features]]
type = "custom"
name = "sq"
field = "amount"
aggregate = "{NAME}"

[[features]]
type = "custom"
name = "sq_1s"
field = "amount"
aggregate = "{NAME}"
window = {{ type = "sliding", size = "1s" }}
"""


def test_an_aggregate_is_an_object_a_class_or_its_name() -> None:
    by_object = Custom(name="a", field="x", aggregate=SumOfSquares())
    by_class = Custom(name="a", field="x", aggregate=SumOfSquares)
    by_name = Custom(name="a", field="x", aggregate=NAME)
    for feature in (by_object, by_class, by_name):
        assert type(feature.aggregate) is SumOfSquares
        assert feature.takes_numbers
    assert Custom(name="b", field="x", aggregate=DistinctList()).takes_numbers is False


async def test_a_spec_file_names_an_aggregate_class_the_application_allows() -> None:
    with pytest.raises(SpecError, match=r"spec.toml: features\[0\].aggregate: .* is not an aggr"):
        FeatureSet.from_toml(TOML, source="spec.toml")
    for allowed in ({"functions": [SumOfSquares]}, {"modules": ["tests.runtime.udaf"]}):
        feature_set = FeatureSet.from_toml(TOML, **allowed)
        assert type(feature_set.feature("sq").aggregate) is SumOfSquares
    async with FeatureRuntime(feature_set, shards=2) as rt:
        await rt.ingest_many([{"card": "c", "ts": T0 + i * 400, "amount": i} for i in range(5)])
        assert (await rt.get("c")).values == {"sq": 30, "sq_1s": 9 + 16 + 4}


def test_a_set_written_out_names_the_class_and_reads_back_to_the_same_definition() -> None:
    feature_set = FeatureSet(
        name="out",
        key="card",
        time="ts",
        features=[
            Custom(name="sq", field="amount", aggregate=SumOfSquares()),
            Custom(name="m", field="merchant", aggregate=DistinctList(), window=Tumbling(size=1)),
        ],
    )
    written = feature_set.to_json()
    assert NAME.encode() in written
    again = FeatureSet.from_json(written, modules=["tests.runtime.udaf"])
    assert encode_spec(again) == encode_spec(feature_set)
    assert feature_set.to_dict()["features"][1]["aggregate"] == (
        "tests.runtime.udaf.aggregates:DistinctList"
    )


class NoValue:
    def empty(self) -> Any:
        return 0

    def update(self, state: Any, value: Any) -> Any:
        return state


class NeedsArguments(SumAgg):
    def __init__(self, scale: int) -> None:
        self.scale = scale


class Unfinished(SumAgg):
    value = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("aggregate", "message"),
    [
        (NoValue(), "NoValue has no value"),
        (3, "expected an aggregate object, got int"),
        (NeedsArguments, r"NeedsArguments\(\) raised TypeError"),
        (Unfinished(), "Unfinished has no value"),
        ("tests.runtime.udaf.aggregates:ORACLES", "is not a class"),
        ("tests.runtime.udaf.nowhere:Thing", "cannot import module"),
        ("not a name", "not a 'module:function' name"),
    ],
)
def test_what_is_not_an_aggregate_is_refused_naming_the_field(aggregate: Any, message: str) -> None:
    with pytest.raises(SpecError, match=r"<python>: Custom\.aggregate: .*" + message):
        Custom(name="f", field="x", aggregate=aggregate)


def test_the_aggregate_base_class_requires_the_three_methods() -> None:
    from runtime import Aggregate

    class Partial(Aggregate[int, int]):
        def empty(self) -> int:
            return 0

    with pytest.raises(SpecError, match="Partial does not define update"):
        Custom(name="f", field="x", aggregate=Partial())


async def test_a_restore_takes_an_added_custom_feature_and_refuses_a_changed_one(
    tmp_path: Path,
) -> None:
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    old = FeatureSet(
        name="evolve",
        key="card",
        time="ts",
        features=[Count(name="n"), Custom(name="sq", field="amount", aggregate=SumOfSquares())],
    )
    async with FeatureRuntime(old, checkpoints=config) as rt:
        await rt.ingest_many([{"card": "c", "ts": T0 + i, "amount": i} for i in range(4)])
    added = FeatureSet(
        name="evolve",
        key="card",
        time="ts",
        features=[
            *old.features,
            Custom(name="spread", field="amount", aggregate=Spread()),
            Custom(
                name="sq_h",
                field="amount",
                aggregate=SumOfSquares(),
                window=Hopping(size="2s", hop="1s"),
            ),
        ],
    )
    async with FeatureRuntime(added, checkpoints=config) as rt:
        assert rt.restored is not None
        await rt.ingest({"card": "c", "ts": T0 + 10, "amount": 5})
        values = (await rt.get("c")).values
    assert values == {"n": 5, "sq": 14 + 25, "spread": 0, "sq_h": 25}
    changed = FeatureSet(
        name="evolve",
        key="card",
        time="ts",
        features=[Count(name="n"), Custom(name="sq", field="amount", aggregate=SumAgg())],
    )
    with pytest.raises(
        CheckpointError, match=r"feature 'sq': aggregate .*SumOfSquares.* -> .*SumAgg"
    ):
        async with FeatureRuntime(changed, checkpoints=config):
            pass


def test_the_estimator_uses_the_aggregate_s_hints() -> None:
    class Hinted(SumAgg):
        state_bytes = 500
        update_ops = 3

    estimate = estimate_cost(Custom(name="h", field="x", aggregate=Hinted()), event_rate=100)
    assert estimate.type == "custom" and estimate.category == "simple_aggregate"
    assert estimate.state_bytes_per_key == 500
    assert estimate.operations_per_second == 300.0


def test_the_estimator_measures_a_state_after_a_few_updates() -> None:
    small = estimate_cost(Custom(name="s", field="x", aggregate=SumAgg()), event_rate=100, keys=10)
    river = estimate_cost(Custom(name="r", field="x", aggregate=RiverVar()), event_rate=100)
    distinct = estimate_cost(Custom(name="d", field="x", aggregate=DistinctList()), event_rate=1)
    assert small.operations_per_second == 100.0 * CUSTOM_UPDATE_OPS
    assert 0 < small.state_bytes_per_key < 64  # a float in a checkpoint
    assert small.memory_bytes == small.state_bytes_per_key * 10
    # a pickled River object is larger; 16 distinct strings larger still
    assert river.state_bytes_per_key > small.state_bytes_per_key
    assert distinct.state_bytes_per_key > 16 * len("value-0")


def test_the_estimator_costs_a_windowed_custom_feature_by_its_window() -> None:
    def cost(aggregate: Any, window: Any) -> Any:
        feature = Custom(name="w", field="x", aggregate=aggregate, window=window)
        return estimate_cost(feature, event_rate=100, keys=10)

    sliding = cost(SumOfSquares(), Sliding(size="60s"))  # 600 events held per key
    assert sliding.category == "windowed_aggregate"
    assert sliding.operations_per_second == 100.0 * (CUSTOM_UPDATE_OPS + WINDOW_OPS)
    assert sliding.state_bytes_per_key > 600 * 100
    assert sliding.time_complexity == "O(1) amortized"
    assert "O(w) per read" in cost(DistinctList(), Sliding(size="60s")).time_complexity
    stacks = cost(Spread(), Sliding(size="60s"))  # merge, no remove: a state per value
    assert "two stacks" in stacks.time_complexity
    assert stacks.state_bytes_per_key > sliding.state_bytes_per_key
    # hopping panes keep values only without merge
    merging = cost(SumOfSquares(), Hopping(size="60s", hop="10s"))
    keeping = cost(DistinctList(), Hopping(size="60s", hop="10s"))
    assert keeping.state_bytes_per_key > merging.state_bytes_per_key + 600 * 30


def spend_twice(values: dict[str, Any]) -> Any:
    return None if values["sq"] is None else values["sq"] * 2


async def test_a_checkpoint_of_a_derived_python_function_restores(tmp_path: Path) -> None:
    # a checkpoint writes every spec by name (it failed on a function before aggregates)
    feature_set = FeatureSet(
        name="fn",
        key="card",
        time="ts",
        features=[
            Custom(name="sq", field="amount", aggregate=SumOfSquares()),
            Derived(name="twice", expr=spend_twice, uses=["sq"]),
        ],
    )
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    async with FeatureRuntime(feature_set, checkpoints=config) as rt:
        await rt.ingest({"card": "c", "ts": T0, "amount": 3})
    async with FeatureRuntime(feature_set, checkpoints=config) as rt:
        assert rt.restored is not None
        await rt.ingest({"card": "c", "ts": T0 + 1, "amount": 1})
        assert (await rt.get("c")).values == {"sq": 10, "twice": 20}
