"""Keyed aggregates against a brute-force oracle, for 1, 2, 7 and 16 shards and any batch size.

Random streams: many keys, out-of-order timestamps, duplicate timestamps, missing and null
values, and values of the wrong type (errors for the numeric features). Every value must match
the oracle, and the runtime's answers must be *identical* whatever the shard count and batch
size.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import (
    FeatureRuntime,
    FeatureSet,
)

from .support.oracle import ORACLE_FEATURES, oracle, same

FEATURES = ORACLE_FEATURES
FEATURE_SET = FeatureSet(name="t", key="card", time="ts", features=FEATURES)

amounts = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.none(),
    st.just("oops"),
    st.just(float("nan")),
)
events = st.lists(
    st.fixed_dictionaries(
        {
            "card": st.one_of(st.sampled_from([f"c{i}" for i in range(12)]), st.integers(0, 5)),
            "ts": st.integers(min_value=1_000_000, max_value=1_010_000),
            "amount": amounts,
            "merchant": st.sampled_from(["m1", "m2", "m3", "m4", None]),
            "status": st.sampled_from(["ok", "declined", "review"]),
        }
    ),
    max_size=120,
)


async def run(stream: list[dict[str, Any]], shards: int, batch_size: int) -> dict[Any, Any]:
    async with FeatureRuntime(FEATURE_SET, shards=shards, batch_size=batch_size) as rt:
        await rt.ingest_many(stream)
        keys = {e["card"] for e in stream}
        return {key: (await rt.get(key)).values for key in keys}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=events, batch_size=st.sampled_from([1, 3, 64]))
async def test_values_match_the_oracle_for_any_shard_count_and_batch_size(
    stream: list[dict[str, Any]], batch_size: int
) -> None:
    expected = oracle(FEATURES, "card", "ts", stream)
    reference = None
    for shards in (1, 2, 7, 16):
        got = await run(stream, shards, batch_size)
        for key, values in expected.items():
            for name, value in values.items():
                assert same(got[key][name], value), (shards, key, name, got[key][name], value)
        if reference is None:
            reference = got
        else:
            assert got == reference or _nan_equal(got, reference)


def _nan_equal(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    return repr(a) == repr(b)
