"""Derived features in a running runtime: in every update, and in ``get`` and ``get_many``, a
derived value is its expression over the other values of the same key, keyed and windowed,
for shard counts 1 and 3; its errors are the feature's; a restart from a checkpoint (with
computed fields too) changes no value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import (
    CheckpointConfig,
    Computed,
    Count,
    Derived,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    Last,
    Max,
    Ratio,
    Sum,
    Tumbling,
)

from ..support.oracle import key_values, same

T0 = 1_700_000_000_000

KEYED = [
    Count(name="n"),
    Sum(name="spend", field="amount"),
    Max(name="top", field="amount"),
    Ratio(name="avg", numerator="spend", denominator="n"),
]
#: each derived feature and the same rule in plain Python, over the values dict
RULES: dict[str, tuple[str, Any]] = {
    "per_tx": (
        "spend / max(n, 1)",
        lambda v: None if v["spend"] is None else v["spend"] / max(v["n"], 1),
    ),
    "share_top": (
        "top / spend if spend > 0 else None",
        lambda v: (
            None
            if v["spend"] is None or v["top"] is None
            else (v["top"] / v["spend"] if v["spend"] > 0 else None)
        ),
    ),
    "big": (
        "coalesce(top, 0) >= 500 and n > 2",
        lambda v: (v["top"] if v["top"] is not None else 0) >= 500 and v["n"] > 2,
    ),
    "avg_clipped": (
        "clip(avg, -100, 100)",
        lambda v: None if v["avg"] is None else min(max(v["avg"], -100), 100),
    ),
    "log_spend": (
        "log1p(abs(spend)) * 2",
        lambda v: None if v["spend"] is None else math.log1p(abs(v["spend"])) * 2,
    ),
}
DERIVED = [Derived(name=name, expr=expr) for name, (expr, _) in RULES.items()]
# a derived feature of a derived feature, and one of a Python function
DERIVED += [
    Derived(name="per_tx_x2", expr="per_tx * 2"),
    Derived(name="n_sq", expr=lambda v: v["n"] * v["n"], uses=("n",)),
]
RULES["per_tx_x2"] = ("", lambda v: None if v["per_tx"] is None else v["per_tx"] * 2)
RULES["n_sq"] = ("", lambda v: v["n"] * v["n"])

WINDOW = Tumbling(size="5s")
WINDOWED = [
    Count(name="w_n", window=WINDOW),
    Sum(name="w_spend", field="amount", window=WINDOW),
    Derived(name="w_avg", expr="w_spend / w_n"),
]
FEATURES = [*KEYED, *DERIVED, *WINDOWED]
# out of order as far as the stream goes: no event is late, each gives two updates
FEATURE_SET = FeatureSet(
    name="derived", key="card", time="ts", max_out_of_orderness="30s", features=FEATURES
)

streams = st.lists(
    st.fixed_dictionaries(
        {
            "card": st.sampled_from(["c0", "c1", "c2"]),
            "ts": st.integers(min_value=T0, max_value=T0 + 20_000),
            "amount": st.one_of(
                st.integers(min_value=-1000, max_value=1000),
                st.floats(min_value=-1e4, max_value=1e4, allow_nan=False),
                st.none(),
            ),
        }
    ),
    min_size=1,
    max_size=60,
)


def check_derived(values: dict[str, Any]) -> None:
    """Every derived value is its rule over the other values of the same read or update."""
    for name, (_, rule) in RULES.items():
        if name in values:
            assert same(values[name], rule(values)), (name, values)
    if "w_avg" in values:
        spend, n = values["w_spend"], values["w_n"]
        expected = None if spend is None or not n else spend / n
        assert same(values["w_avg"], expected), values


async def collect(rt: FeatureRuntime, stream: list[dict[str, Any]]) -> list[FeatureUpdate]:
    subscription = rt.updates()
    await rt.ingest_many(stream)
    got: list[FeatureUpdate] = []
    with anyio.fail_after(5):
        async for update in subscription:
            got.append(update)
            if len(got) == 2 * len(stream):  # the keyed and the windowed group each
                break
    await subscription.aclose()
    return got


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, shards=st.sampled_from([1, 3]))
async def test_derived_values_in_every_update_and_read_follow_their_expressions(
    stream: list[dict[str, Any]], shards: int
) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=shards) as rt:
        updates = await collect(rt, stream)
        for update in updates:
            assert update.errors is None
            check_derived(dict(update.values))
        keys = sorted({event["card"] for event in stream})
        many = await rt.get_many(keys)
        for key in keys:
            single = await rt.get(key)
            assert many[key].values == single.values
            check_derived(single.values)
    # the keyed part against the oracle, the derived features included
    for key in keys:
        history = [(e["ts"], e) for e in stream if e["card"] == key]
        expected = key_values(KEYED, history)
        for name, (_, rule) in RULES.items():
            expected[name] = rule(expected)
        for name, value in expected.items():
            assert same(many[key].values[name], value), (key, name)


async def test_a_derived_feature_of_a_bad_value_is_an_error_of_that_feature_only() -> None:
    feature_set = FeatureSet(
        name="bad",
        key="card",
        time="ts",
        features=[
            Count(name="n"),
            Last(name="label", field="label"),
            Derived(name="label_plus", expr="label + 1"),
            Derived(name="n_plus", expr="n + 1"),
        ],
    )
    async with FeatureRuntime(feature_set, shards=1) as rt:
        subscription = rt.updates()
        await rt.ingest({"card": "c", "ts": T0, "label": "x"})
        with anyio.fail_after(10):
            update = await subscription.__anext__()
        await subscription.aclose()
        assert update.values["label_plus"] is None
        assert update.values["n_plus"] == 2
        assert update.errors is not None and set(update.errors) == {"label_plus"}
        assert "'+' needs numbers, got str 'x'" in update.errors["label_plus"]
        vector = await rt.get("c")
        assert vector.values["label_plus"] is None


async def test_a_derived_feature_from_a_toml_spec_runs() -> None:
    feature_set = FeatureSet.from_toml(
        """
        name = "toml"
        key = "card"
        time = "ts"

        [[features]]
        type = "sum"
        name = "spend"
        field = "amount"

        [[features]]
        type = "count"
        name = "n"

        [[features]]
        type = "derived"
        name = "per_tx"
        expr = "round(spend / max(n, 1), 2)"
        """
    )
    async with FeatureRuntime(feature_set, shards=3) as rt:
        await rt.ingest_many(
            {"card": "c", "ts": T0 + i, "amount": amount} for i, amount in enumerate([1, 2, 4])
        )
        assert (await rt.get("c")).values == {"spend": 7, "n": 3, "per_tx": 2.33}


async def test_a_restart_from_a_checkpoint_gives_the_same_derived_and_computed_values(
    tmp_path: Path,
) -> None:
    feature_set = FeatureSet(
        name="restart",
        key="card",
        time="ts",
        max_out_of_orderness="30s",
        computed=[Computed(name="usd", expr="amount * 2")],
        features=[
            *KEYED,
            Sum(name="usd_total", field="usd"),
            Derived(name="usd_per_tx", expr="usd_total / max(n, 1)"),
            *WINDOWED,
        ],
    )
    stream = [
        {"card": f"c{i % 3}", "ts": T0 + 37 * i, "amount": (i * 7) % 50 - 10} for i in range(120)
    ]
    keys = ["c0", "c1", "c2"]
    async with FeatureRuntime(feature_set, shards=2) as rt:
        await rt.ingest_many(stream)
        want = {k: v.values for k, v in (await rt.get_many(keys)).items()}
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    async with FeatureRuntime(feature_set, shards=2, checkpoints=config) as rt:
        await rt.ingest_many(stream[:50])
    async with FeatureRuntime(feature_set, shards=3, checkpoints=config) as rt:
        assert rt.restored is not None
        await rt.ingest_many(stream[50:])
        got = {k: v.values for k, v in (await rt.get_many(keys)).items()}
    assert same(got, want)
    for values in got.values():
        check_derived(values)
        assert same(values["usd_per_tx"], values["usd_total"] / max(values["n"], 1))


async def test_a_derived_feature_has_no_time_of_its_own_in_metrics() -> None:
    feature_set = FeatureSet(
        name="d",
        key="k",
        time="ts",
        features=[
            Count(name="n"),
            Sum(name="s", field="x"),
            Derived(name="avg", expr="s / max(n, 1)"),
        ],
    )
    async with FeatureRuntime(feature_set, sample_every=1) as rt:
        await rt.ingest_many([{"k": "a", "ts": i, "x": i} for i in range(50)])
        await rt.flush()
        cost = (await rt.describe("avg")).measured_cost
        metrics = (await rt.metrics()).features
    # computed when values are read, not per event, as a ratio: no latency (not 0)
    assert cost is not None and cost.mean_latency_us is None
    assert metrics["avg"].latency_p99_us is None and metrics["n"].latency_p99_us is not None
