"""User-defined aggregates over every window type against the brute-force window oracle
(``support.window_oracle``), as the built-in windowed features are checked in
``windows/test_windows.py``: random out-of-order streams over many keys, every lateness policy,
both emit modes, idle time, 1, 2, 7 and 16 shards and several batch sizes.

The aggregates cover each shape of the protocol: merge and remove (``SumAgg``,
``SumOfSquares``), merge without remove (``Spread``: a sliding window folds again), neither
(``DistinctList``: panes and sessions keep their values), and a mutable River statistic
(``RiverVar``). An aggregate that reimplements ``sum`` gives exactly the built-in's values.
"""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import Custom, Hopping, Session, Sliding, Sum, Tumbling, Where

from ..windows import test_as_of
from ..windows.test_as_of import cases as as_of_cases
from ..windows.test_windows import _check_all, check, expected, options, run, streams
from .aggregates import DistinctList, RiverVar, Spread, SumAgg, SumOfSquares

WINDOWS = {
    "s": Sliding(size=1000),
    "t": Tumbling(size=500),
    "h": Hopping(size=900, hop=300),
    "x": Session(gap=250),
}
DECLINED = Where(field="status", op="==", value="declined")

CUSTOM_FEATURES: list[Any] = []
for prefix, window in WINDOWS.items():
    CUSTOM_FEATURES += [
        Sum(name=f"{prefix}_sum", field="amount", window=window),
        Custom(name=f"{prefix}_csum", field="amount", aggregate=SumAgg(), window=window),
        Custom(name=f"{prefix}_sq", field="amount", aggregate=SumOfSquares(), window=window),
        Custom(name=f"{prefix}_spread", field="amount", aggregate=Spread(), window=window),
        Custom(
            name=f"{prefix}_distinct", field="merchant", aggregate=DistinctList(), window=window
        ),
        Custom(name=f"{prefix}_var", field="amount", aggregate=RiverVar(), window=window),
        Custom(
            name=f"{prefix}_declined_sq",
            field="amount",
            aggregate=SumOfSquares(),
            where=DECLINED,
            window=window,
        ),
    ]

SETTINGS = settings(
    max_examples=int(os.environ.get("UDAF_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(stream=streams(), opts=options(), batch_size=st.sampled_from([1, 3, 64]))
async def test_custom_aggregates_in_every_window_match_the_oracle_for_1_2_7_and_16_shards(
    stream: list[dict[str, Any]], opts: dict[str, Any], batch_size: int
) -> None:
    await _check_all(stream, opts, batch_size, CUSTOM_FEATURES)


SLIDING_ONLY = [f for f in CUSTOM_FEATURES if f.window.type_name == "sliding"]


@SETTINGS
@given(stream=streams(), opts=options(), batch_size=st.sampled_from([1, 3, 64]))
async def test_custom_aggregates_in_sliding_windows_alone_match_the_oracle(
    stream: list[dict[str, Any]], opts: dict[str, Any], batch_size: int
) -> None:
    # an engine of sliding windows runs its compiled loop, unless a custom feature is there
    await _check_all(stream, opts, batch_size, SLIDING_ONLY)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), opts=options(), shards=st.sampled_from([1, 3]))
async def test_a_custom_sum_equals_the_built_in_sum_in_every_output(
    stream: list[dict[str, Any]], opts: dict[str, Any], shards: int
) -> None:
    emitted, vectors, _ = await run(stream, opts, shards, 16, CUSTOM_FEATURES)
    for outputs in emitted.values():
        for _, _, _, values in outputs:
            for prefix in WINDOWS:
                if f"{prefix}_sum" in values:
                    assert values[f"{prefix}_csum"] == values[f"{prefix}_sum"], values
    for vector in vectors.values():
        for prefix in WINDOWS:
            assert vector[f"{prefix}_csum"] == vector[f"{prefix}_sum"]


@settings(
    max_examples=int(os.environ.get("UDAF_EXAMPLES", "20")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=as_of_cases(), opts=options(), batch_size=st.sampled_from([1, 4, 64]))
async def test_custom_aggregates_read_as_of_a_time_match_the_oracle_on_1_3_and_8_shards(
    case: tuple[list[dict[str, Any]], list[list[int]]],
    opts: dict[str, Any],
    batch_size: int,
) -> None:
    # test_as_of's harness, over the custom features: reads at random times around window
    # edges, before and after each key's clock, must match the oracle and change nothing
    stream, plans = case
    with mock.patch.object(test_as_of, "WINDOW_FEATURES", CUSTOM_FEATURES):
        reads = test_as_of.plan(stream, plans, opts)
        oracles = expected(stream, opts, CUSTOM_FEATURES)
        for shards in (1, 3, 8):
            emitted, vectors = await test_as_of.run(stream, reads, opts, shards, batch_size)
            check(oracles, emitted, vectors)
