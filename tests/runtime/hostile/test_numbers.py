"""Counters and numbers that disagreed with themselves (issue 15, item 11), against oracles.

- A ``where`` with ``in``/``not_in`` tests membership as a set does, for keyed and windowed
  features alike: an unhashable event value (a list, a dict) is the same ``FeatureValueError``
  for that feature and event, never a silent non-member.
- Variances and standard deviations of ints are exact (one correctly rounded division), keyed
  or windowed, whatever the window: ints beyond 2**53 keep their low digits.
- A ``quantile`` refuses no finite value: a magnitude beyond its sketch's bins counts as the
  largest it holds, so the features sharing its window take the value; subnormal magnitudes
  keep the relative error (plus the spacing of subnormals), not an answer of ``0.0``.
- ``statistics().events_ingested`` and ``events_rejected`` carry over a restore, as the other
  counters do.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import (
    CheckpointConfig,
    Count,
    FeatureRuntime,
    FeatureSet,
    Hopping,
    Max,
    Mean,
    Min,
    Quantile,
    Session,
    Sliding,
    Std,
    Sum,
    Tumbling,
    Variance,
    Where,
)
from runtime._stats.quantiles import QuantileSketch

from ..support.oracle import matches, where_error

HOUR = Sliding(size="1h")


def spec(*features: Any) -> FeatureSet:
    return FeatureSet(name="n", key="k", time="ts", features=list(features))


# -- where: in / not_in with an unhashable value ------------------------------------------------

IN = Where(field="tag", op="in", value=["a", 1])
NOT_IN = Where(field="tag", op="not_in", value=["a", 1])
WHERE_FEATURES = [
    Count(name="k_in", where=IN),
    Count(name="k_not", where=NOT_IN),
    Sum(name="k_sum", field="x", where=NOT_IN),
    Count(name="s_in", where=IN, window=HOUR),
    Count(name="s_not", where=NOT_IN, window=HOUR),
    Sum(name="s_sum", field="x", where=NOT_IN, window=HOUR),
    Count(name="t_not", where=NOT_IN, window=Tumbling(size="1h")),
    Count(name="x_not", where=NOT_IN, window=Session(gap="1h")),
]
#: pairs of a keyed and a windowed feature with the same condition: the same errors
SAME_CONDITION = [("k_in", "s_in"), ("k_not", "s_not"), ("k_not", "t_not"), ("k_sum", "s_sum")]

tags = st.sampled_from(["a", "b", 1, 2.0, True, None, ["a"], ["b"], {"a": 1}, ("a",), b"a"])
where_events = st.lists(
    st.fixed_dictionaries(
        {"k": st.sampled_from(["u", "v"]), "tag": tags, "x": st.integers(-5, 5)},
        optional={"missing": st.none()},
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where_events)
async def test_in_and_not_in_refuse_an_unhashable_value_alike_keyed_and_windowed(
    events: list[dict[str, Any]],
) -> None:
    stream = [{**ev, "ts": 1_000 + i} for i, ev in enumerate(events)]
    async with FeatureRuntime(spec(*WHERE_FEATURES)) as rt:
        await rt.ingest_many(stream)
        await rt.flush()
        got = {key: (await rt.get(key)).values for key in ("u", "v")}
        stats = await rt.statistics()
        recent = await rt.recent_errors()
    for feature in WHERE_FEATURES:
        for key in ("u", "v"):
            mine = [ev for ev in stream if ev["k"] == key]
            taken = [ev for ev in mine if matches(feature.where, ev)]
            expected = len(taken) if feature.type_name == "count" else sum(e["x"] for e in taken)
            assert got[key][feature.name] == expected, (feature.name, key)
        errors = sum(where_error(feature.where, ev) for ev in stream)
        assert stats.feature_errors.get(feature.name, 0) == errors, feature.name
    by_feature: dict[str, set[tuple[Any, int, str]]] = {}
    for error in recent:
        by_feature.setdefault(error.feature, set()).add((error.key, error.event_time, error.error))
    for keyed, windowed in SAME_CONDITION:
        assert by_feature.get(keyed) == by_feature.get(windowed), (keyed, windowed)


async def test_an_unhashable_value_is_a_feature_error_naming_the_condition() -> None:
    async with FeatureRuntime(
        spec(Count(name="k", where=NOT_IN), Count(name="w", where=NOT_IN, window=HOUR))
    ) as rt:
        await rt.ingest({"k": "u", "ts": 1_000, "tag": ["b"]})
        await rt.ingest({"k": "u", "ts": 1_001, "tag": "b"})
        await rt.flush()
        assert (await rt.get("u")).values == {"k": 1, "w": 1}
        errors = {error.feature: error.error for error in await rt.recent_errors()}
    expected = (
        "FeatureValueError: tag: cannot test ['b'] for tag not_in ['a', 1]: unhashable type: 'list'"
    )
    assert errors == {"k": expected, "w": expected}


# -- exact variance of ints ---------------------------------------------------------------------

VARIANCE_FEATURES = [
    Variance(name="k_var", field="x"),
    Variance(name="k_pvar", field="x", ddof=0),
    Std(name="k_std", field="x"),
    Mean(name="k_mean", field="x"),
    Variance(name="s_var", field="x", window=HOUR),
    Variance(name="t_var", field="x", window=Tumbling(size="1h")),
    Variance(name="h_var", field="x", window=Hopping(size="1h", hop="30m")),
    Variance(name="x_var", field="x", window=Session(gap="1h")),
    Std(name="t_std", field="x", ddof=0, window=Tumbling(size="1h")),
]
big_ints = st.one_of(
    st.integers(-(2**100), 2**100),
    st.integers(2**60, 2**60 + 50),
    st.integers(-(2**64) - 5, -(2**64) + 5),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(big_ints, min_size=1, max_size=30))
async def test_the_variance_of_ints_is_exact_keyed_and_windowed(values: list[int]) -> None:
    stream = [{"k": "u", "ts": 1_000 + i, "x": x} for i, x in enumerate(values)]
    async with FeatureRuntime(spec(*VARIANCE_FEATURES)) as rt:
        await rt.ingest_many(stream)
        got = (await rt.get("u")).values
        assert (await rt.statistics()).feature_errors == {}
    # statistics computes in fractions: its floats are the exact values, correctly rounded
    # (an int when the variance is whole: float() rounds it correctly too)
    sample = float(statistics.variance(values)) if len(values) > 1 else None
    population = float(statistics.pvariance(values))
    for name in ("k_var", "s_var", "t_var", "h_var", "x_var"):
        assert got[name] == sample, name
    assert got["k_pvar"] == population
    assert got["k_std"] == (None if sample is None else math.sqrt(sample))
    assert math.isclose(got["t_std"], math.sqrt(population), rel_tol=1e-15)
    assert got["k_mean"] == sum(values) / len(values)


async def test_a_float_after_ints_continues_the_variance_within_rounding() -> None:
    values: list[float] = [2**60, 2**60 + 2, 2**60 + 4, 1.5e18, 2**60 + 1]
    stream = [{"k": "u", "ts": 1_000 + i, "x": x} for i, x in enumerate(values)]
    async with FeatureRuntime(spec(*VARIANCE_FEATURES)) as rt:
        await rt.ingest_many(stream)
        got = (await rt.get("u")).values
    expected = statistics.variance(values)
    for name in ("k_var", "s_var", "t_var", "h_var", "x_var"):
        assert math.isclose(got[name], expected, rel_tol=1e-9), name


async def test_an_exact_variance_survives_a_checkpoint(tmp_path: Path) -> None:
    # the sums of squares pass 2**64: the checkpoint holds them as big ints
    values = [2**40 + i * i for i in range(20)]
    stream = [{"k": "u", "ts": 1_000 + i, "x": x} for i, x in enumerate(values)]
    features = [f for f in VARIANCE_FEATURES if f.name in ("k_var", "k_std", "t_var", "x_var")]
    config = CheckpointConfig(directory=str(tmp_path), interval=None)
    async with FeatureRuntime(spec(*features), checkpoints=config) as rt:
        await rt.ingest_many(stream[:10])
        await rt.checkpoint()
    async with FeatureRuntime(spec(*features), checkpoints=config) as rt:
        await rt.ingest_many(stream[10:])
        got = (await rt.get("u")).values
    for name in ("k_var", "t_var", "x_var"):
        assert got[name] == float(statistics.variance(values)), name


# -- quantiles at the ends of the float range ---------------------------------------------------

TINY = sys.float_info.min  # below it, floats are subnormal
SUBNORMAL_SPACING = 5e-324
magnitudes = st.one_of(
    st.floats(min_value=1e-3, max_value=1e6),
    st.floats(min_value=5e-324, max_value=TINY),
    st.floats(min_value=TINY, max_value=1e-300),
    st.floats(min_value=9e306, max_value=sys.float_info.max),
    st.integers(10**306, 2**1023),
    st.just(0.0),
)
signed = st.tuples(magnitudes, st.booleans()).map(lambda p: -p[0] if p[1] else p[0])


def _within(got: Any, exact: float, alpha: float) -> bool:
    """The documented guarantee: relative ``alpha``, plus the spacing of subnormals; a
    magnitude beyond the sketch's ``limit`` counts as ``limit``."""
    limit = QuantileSketch(alpha).limit
    if abs(exact) > limit:
        exact = math.copysign(limit, exact)
    bound = alpha * abs(exact) * (1 + 1e-9) + SUBNORMAL_SPACING
    return got is not None and (got == 0.0) == (exact == 0) and abs(got - exact) <= bound


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(signed, min_size=1, max_size=30), st.sampled_from([0.01, 0.001, 0.9]))
async def test_a_quantile_takes_every_finite_value_and_spares_its_window(
    values: list[float], alpha: float
) -> None:
    qs = (0.0, 0.5, 1.0)
    features = [
        Quantile(name=f"s_q{int(q * 100)}", field="x", q=q, relative_accuracy=alpha, window=HOUR)
        for q in qs
    ]
    features += [
        Quantile(
            name=f"t_q{int(q * 100)}",
            field="x",
            q=q,
            relative_accuracy=alpha,
            window=Tumbling(size="1h"),
        )
        for q in qs
    ]
    features += [
        Count(name="s_n", window=HOUR),
        Max(name="s_max", field="x", window=HOUR),
        Min(name="s_min", field="x", window=HOUR),
        Max(name="t_max", field="x", window=Tumbling(size="1h")),
    ]
    stream = [{"k": "u", "ts": 1_000 + i, "x": x} for i, x in enumerate(values)]
    async with FeatureRuntime(spec(*features)) as rt:
        await rt.ingest_many(stream)
        got = (await rt.get("u")).values
        assert (await rt.statistics()).feature_errors == {}
    assert got["s_n"] == len(values)
    assert got["s_max"] == got["t_max"] == max(values)
    assert got["s_min"] == min(values)
    ordered = sorted(values)
    for q in qs:
        exact = ordered[math.floor(q * (len(values) - 1))]
        for window in ("s", "t"):
            assert _within(got[f"{window}_q{int(q * 100)}"], exact, alpha), (window, q, exact)


async def test_a_subnormal_quantile_is_not_read_as_zero() -> None:
    feature = Quantile(name="q", field="x", q=0.5, window=HOUR)
    async with FeatureRuntime(spec(feature)) as rt:
        await rt.ingest({"k": "u", "ts": 1_000, "x": 1e-310})
        got = (await rt.get("u"))["q"]
    assert got != 0.0 and abs(got - 1e-310) <= 0.01 * 1e-310


# -- counters across a restore ------------------------------------------------------------------


async def test_ingested_and_rejected_counts_carry_over_a_restore(tmp_path: Path) -> None:
    config = CheckpointConfig(directory=str(tmp_path), interval=None)
    fs = spec(Count(name="n"))
    good = [{"k": "u", "ts": 1_000 + i} for i in range(7)]
    bad = [{"k": "u"}, {"ts": 5}, "not an event"]
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.ingest_many(good[:4] + bad[:2])
        await rt.checkpoint()
        before = await rt.statistics()
    assert (before.events_ingested, before.events_rejected) == (4, 2)
    async with FeatureRuntime(fs, shards=3, checkpoints=config) as rt:
        after = await rt.statistics()
        assert (after.events_ingested, after.events_rejected) == (4, 2)
        assert after.events_processed == before.events_processed
        await rt.ingest_many(good[4:] + bad[2:])
        await rt.flush()
        later = await rt.statistics()
        assert (later.events_ingested, later.events_rejected) == (7, 3)
        assert rt.position == 10
        await rt.checkpoint()
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        again = await rt.statistics()
        assert (again.events_ingested, again.events_rejected) == (7, 3)
        assert (await rt.get("u"))["n"] == 7
