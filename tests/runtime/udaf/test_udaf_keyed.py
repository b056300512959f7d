"""User-defined aggregates per key: against the keyed oracle (``support.oracle``) for random
streams over many keys, shard counts and batch sizes; a reimplemented ``sum`` equals the
built-in in every update; an update that raises is that feature's error alone."""

from __future__ import annotations

from typing import Any

import anyio
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import Count, Custom, FeatureRuntime, FeatureSet, FeatureUpdate, Sum, Where

from ..support.oracle import key_values, same
from .aggregates import DistinctList, RiverVar, Spread, SumAgg, SumOfSquares

T0 = 1_700_000_000_000
FLAGGED = Where(field="flag", op="==", value=True)

FEATURES = [
    Count(name="n"),
    Sum(name="total", field="amount"),
    Custom(name="csum", field="amount", aggregate=SumAgg()),
    Custom(name="squares", field="amount", aggregate=SumOfSquares()),
    Custom(name="spread", field="amount", aggregate=Spread()),
    Custom(name="merchants", field="merchant", aggregate=DistinctList()),
    Custom(name="variance", field="amount", aggregate=RiverVar()),
    Custom(name="flagged_squares", field="amount", aggregate=SumOfSquares(), where=FLAGGED),
]
FEATURE_SET = FeatureSet(name="udaf", key="card", time="ts", features=FEATURES)

streams = st.lists(
    st.fixed_dictionaries(
        {
            "card": st.sampled_from(["a", "b", "c", 1, 2, "d", "e"]),
            "ts": st.integers(min_value=T0, max_value=T0 + 20_000),
            "amount": st.one_of(
                st.integers(min_value=-1000, max_value=1000), st.none(), st.just("oops")
            ),
            "merchant": st.sampled_from(["m1", "m2", "m3", None]),
            "flag": st.booleans(),
        }
    ),
    max_size=80,
)


async def _updates(rt: FeatureRuntime, stream: list[dict[str, Any]]) -> list[FeatureUpdate]:
    subscription = rt.updates(buffer=100_000)
    await rt.ingest_many(stream)
    got: list[FeatureUpdate] = []
    with anyio.fail_after(10):
        while len(got) < len(stream):
            got.append(await subscription.__anext__())
    await subscription.aclose()
    return got


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams, batch_size=st.sampled_from([1, 7, 256]))
async def test_custom_aggregates_per_key_match_the_oracle_for_1_3_and_8_shards(
    stream: list[dict[str, Any]], batch_size: int
) -> None:
    keys = sorted({e["card"] for e in stream}, key=repr)
    reference = None
    for shards in (1, 3, 8):
        async with FeatureRuntime(FEATURE_SET, shards=shards, batch_size=batch_size) as rt:
            updates = await _updates(rt, stream)
            vectors = {key: (await rt.get(key)).values for key in keys}
        by_key: dict[Any, list[FeatureUpdate]] = {}
        for update in updates:
            by_key.setdefault(update.key, []).append(update)
        for key in keys:
            history = [(e["ts"], e) for e in stream if e["card"] == key]
            # every update is the oracle's value over the key's events so far
            for position, update in enumerate(by_key[key]):
                expected = key_values(FEATURES, history[: position + 1])
                for name, value in expected.items():
                    assert same(update.values[name], value), (key, position, name)
                assert update.values["csum"] == update.values["total"]
                # "oops" is an error of the numeric features only, each named
                amount = history[position][1]["amount"]
                errors = set(update.errors or {})
                if amount == "oops":
                    assert {"total", "csum", "squares", "spread", "variance"} <= errors
                    assert "merchants" not in errors
                else:
                    assert not errors
            expected = key_values(FEATURES, history)
            for name, value in expected.items():
                assert same(vectors[key][name], value), (key, name)
        # the same values, to the bit, whatever the shard count
        outcome = repr([[u.values for u in by_key[key]] for key in keys]) + repr(vectors)
        if reference is None:
            reference = outcome
        else:
            assert outcome == reference, shards


async def test_an_update_that_raises_is_an_error_of_that_feature_alone() -> None:
    feature_set = FeatureSet(
        name="bad",
        key="card",
        time="ts",
        features=[
            Count(name="n"),
            Custom(name="merchants", field="merchant", aggregate=DistinctList()),
        ],
    )
    async with FeatureRuntime(feature_set, shards=2) as rt:
        updates = await _updates(
            rt,
            [
                {"card": "c", "ts": T0, "merchant": "m1"},
                {"card": "c", "ts": T0 + 1, "merchant": "bad"},
                {"card": "c", "ts": T0 + 2, "merchant": "m2"},
            ],
        )
        assert [u.values for u in updates] == [
            {"n": 1, "merchants": 1},
            {"n": 2, "merchants": 1},
            {"n": 3, "merchants": 2},
        ]
        assert updates[0].errors is None and updates[2].errors is None
        assert updates[1].errors is not None and set(updates[1].errors) == {"merchants"}
        message = updates[1].errors["merchants"]
        assert "custom feature 'merchants': DistinctList.update raised ValueError: bad" in message
        stats = await rt.statistics()
        assert stats.feature_errors.get("merchants") == 1


class _AppObject:
    """A value of the application's own that no checkpoint can hold."""


async def test_a_value_a_checkpoint_cannot_hold_is_refused_for_a_non_numeric_aggregate() -> None:
    # a non-numeric aggregate may keep its values (DistinctList does): they are screened at
    # ingest as a distinct count's are, and such an event goes to dead letters naming the field
    feature_set = FeatureSet(
        name="screen",
        key="card",
        time="ts",
        features=[Custom(name="merchants", field="merchant", aggregate=DistinctList())],
    )
    async with FeatureRuntime(feature_set) as rt:
        assert await rt.ingest({"card": "c", "ts": T0, "merchant": _AppObject()}) is False
        assert await rt.ingest({"card": "c", "ts": T0 + 1, "merchant": "m1"}) is True
        letters = rt.dead_letters.letters()
        assert (await rt.get("c")).values == {"merchants": 1}
    assert len(letters) == 1 and "merchant" in str(letters[0].error)
