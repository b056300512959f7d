"""The compiled feature group (``runtime._keyed.kernel``) on its own: merging partial states, the
distinct-count sketch, the safety of the generated source, and the state struct's encoding."""

from __future__ import annotations

import ast
import math
import statistics
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings

from runtime import (
    FEATURE_TYPES,
    Count,
    Custom,
    Derived,
    DistinctCount,
    EWMean,
    FeatureValueError,
    First,
    Last,
    Max,
    Mean,
    Min,
    Ratio,
    SpecError,
    Std,
    Sum,
    TimeSince,
    Variance,
    Where,
)
from runtime._keyed.kernel import CompiledGroup, compile_group

from ..support.oracle import same
from ..udaf.aggregates import SumAgg

MERGEABLE = [
    Count(name="n"),
    Sum(name="total", field="x"),
    Mean(name="avg", field="x"),
    Min(name="lo", field="x"),
    Max(name="hi", field="x"),
    First(name="first_x", field="x"),
    Last(name="last_x", field="x"),
    Variance(name="var", field="x"),
    Std(name="sd", field="x", ddof=0),
    Variance(name="var_big", field="x", where=Where(field="x", op=">", value=0)),
    EWMean(name="ewm", field="x", half_life="1s"),
    DistinctCount(name="distinct", field="d", exact_limit=5, precision=6),
    Count(name="flagged", where=Where(field="flag", op="==", value=True)),
    Sum(name="flagged_total", field="x", where=Where(field="flag", op="==", value=True)),
    Ratio(name="flagged_share", numerator="flagged", denominator="n"),
    Derived(name="flagged_rate", expr="flagged / max(n, 1)"),
    TimeSince(name="gap"),
    TimeSince(name="flagged_gap", where=Where(field="flag", op="==", value=True)),
    Custom(name="custom_total", field="x", aggregate=SumAgg()),
]
T0 = 1_700_000_000_000


def apply(group: CompiledGroup, events: list[tuple[int, dict[str, Any]]]) -> Any:
    """The state of key ``"k"`` after ``events`` (a fresh state when there are none)."""
    states: dict[Any, Any] = {}
    group.apply([("k", t, event) for t, event in events], states, [], 0.0)
    return states.get("k", group.new_state())


values = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.floats(min_value=-1000, max_value=1000, allow_nan=False).map(lambda f: round(f, 3)),
    st.none(),
    st.just("bad"),
    st.just(math.nan),
)
streams = st.lists(
    st.tuples(
        st.integers(min_value=T0, max_value=T0 + 5_000),
        st.fixed_dictionaries(
            {"x": values, "d": st.integers(0, 15), "flag": st.booleans()},
        ),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(stream=streams, data=st.data())
def test_merging_two_partial_states_equals_the_state_of_the_whole_stream(
    stream: list[tuple[int, dict[str, Any]]], data: st.DataObject
) -> None:
    group = compile_group(MERGEABLE)
    assert group.merge is not None
    split = data.draw(st.integers(min_value=0, max_value=len(stream)), label="split")
    merged = group.merge(apply(group, stream[:split]), apply(group, stream[split:]))
    whole = apply(group, stream)
    got, expected = group.values(merged), group.values(whole)
    for name, a, b in zip(group.names, got, expected, strict=True):
        # merged moments and weights round differently from the whole stream's
        assert same(a, b, rel_tol=1e-7, abs_tol=1e-6), (name, a, b)
    assert merged.t_ == whole.t_


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**100), 2**100), min_size=2, max_size=40), st.data())
def test_the_variance_of_ints_is_exact_through_updates_and_merges(
    xs: list[int], data: st.DataObject
) -> None:
    group = compile_group(MERGEABLE)
    assert group.merge is not None
    stream = [(T0 + i, {"x": x, "d": 0, "flag": True}) for i, x in enumerate(xs)]
    split = data.draw(st.integers(min_value=0, max_value=len(stream)), label="split")
    merged = group.merge(apply(group, stream[:split]), apply(group, stream[split:]))
    # statistics computes in fractions: its result, as a float, is the exact value rounded
    sample, population = float(statistics.variance(xs)), float(statistics.pvariance(xs))
    for state in (apply(group, stream), merged):
        values = dict(zip(group.names, group.values(state), strict=True))
        assert values["var"] == sample
        assert values["sd"] == math.sqrt(population)
        assert values["avg"] == sum(xs) / len(xs)
        positive = [x for x in xs if x > 0]
        expected = float(statistics.variance(positive)) if len(positive) > 1 else None
        assert values["var_big"] == expected


def test_the_variance_turns_to_welford_at_the_first_float() -> None:
    group = compile_group([Variance(name="var", field="x")])
    ints = [2**60, 2**60 + 2, 2**60 + 4]
    state = apply(group, [(T0 + i, {"x": x}) for i, x in enumerate(ints)])
    assert group.values(state) == (4.0,)
    mixed = [*ints, 1.5e18, 2**60 + 1]
    state = apply(group, [(T0 + i, {"x": x}) for i, x in enumerate(mixed)])
    assert math.isclose(group.values(state)[0], statistics.variance(mixed), rel_tol=1e-12)
    # a sum of squares beyond a float's range: None, as a sliding window's variance
    state = apply(group, [(T0, {"x": 2**600}), (T0 + 1, {"x": -(2**600)})])
    assert group.values(state) == (None,)


def test_merge_leaves_its_inputs_unchanged() -> None:
    group = compile_group(MERGEABLE)
    assert group.merge is not None
    a = apply(group, [(T0 + i, {"x": i, "d": i, "flag": True}) for i in range(10)])
    b = apply(group, [(T0 + i, {"x": -i, "d": i + 3, "flag": False}) for i in range(10)])
    before = (group.values(a), group.values(b))
    group.merge(a, b)
    assert (group.values(a), group.values(b)) == before


def test_a_group_of_every_keyed_aggregate_can_merge() -> None:
    kinds = {f.__struct_config__.tag for f in MERGEABLE}
    assert kinds == {
        tag for tag, cls in FEATURE_TYPES.items() if not cls.windowed and not cls.event_time
    }
    assert compile_group(MERGEABLE).merge is not None


def test_distinct_count_is_exact_up_to_its_limit() -> None:
    group = compile_group([DistinctCount(name="d", field="v", exact_limit=100)])
    state = apply(group, [(T0, {"v": f"v{i % 100}"}) for i in range(1000)])
    assert group.values(state) == (100,)


@pytest.mark.parametrize("precision", [8, 10, 12])
def test_distinct_count_past_its_limit_is_a_sketch_within_three_standard_errors(
    precision: int,
) -> None:
    group = compile_group(
        [DistinctCount(name="d", field="v", exact_limit=100, precision=precision)]
    )
    states: dict[Any, Any] = {}
    distinct = 20_000
    for start in range(0, distinct, 1000):
        batch = [("k", T0 + i, {"v": f"value-{i}"}) for i in range(start, start + 1000)]
        group.apply(batch, states, [], 0.0)
    state = states["k"]
    slots = msgspec.structs.astuple(group.to_record(state))
    # switched from the exact set to a sketch of 2**precision registers
    assert [len(v) for v in slots if isinstance(v, bytearray)] == [2**precision]
    assert not [v for v in slots if isinstance(v, set)]
    [estimate] = group.values(state)
    relative_error = 1.04 / math.sqrt(2**precision)
    assert abs(estimate - distinct) <= 3 * relative_error * distinct


EVIL_FIELD = "x'); import os; ('"
EVIL_OTHER = '"\\"; __import__("os").system("true"); #'
EVIL_VALUE = "'); __import__('os').system('true'); ('"


def test_field_names_and_condition_values_never_become_code() -> None:
    group = compile_group(
        [
            Sum(name="total", field=EVIL_FIELD),
            Count(name="matched", where=Where(field=EVIL_OTHER, op="==", value=EVIL_VALUE)),
            Count(name="listed", where=Where(field=EVIL_OTHER, op="in", value=[EVIL_VALUE, "z"])),
        ]
    )
    tree = ast.parse(group.source)
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    identifiers = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    identifiers |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert "os" not in identifiers
    assert "__import__" not in identifiers
    constants = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)}
    assert EVIL_FIELD in constants
    assert EVIL_OTHER in constants
    assert EVIL_VALUE not in group.source  # condition values are bound, never written out
    assert "os" not in group.apply.__globals__

    states: dict[Any, Any] = {}
    events = [
        ("k", T0, {EVIL_FIELD: 5, EVIL_OTHER: EVIL_VALUE}),
        ("k", T0 + 1, {EVIL_FIELD: 7, EVIL_OTHER: "other"}),
    ]
    group.apply(events, states, [], 0.0)
    assert group.values(states["k"]) == (12, 1, 1)


def test_a_bad_value_is_recorded_as_that_features_error_and_leaves_its_state() -> None:
    group = compile_group(
        [Count(name="n"), Sum(name="total", field="x"), Last(name="last_x", field="x")]
    )
    states: dict[Any, Any] = {}
    errors: list[Any] = []
    group.apply([("k", T0, {"x": 2}), ("k", T0 + 1, {"x": "2"})], states, errors, 0.0)
    assert group.values(states["k"]) == (2, 2, "2")
    [(key, t, name, error)] = errors
    assert (key, t, name) == ("k", T0 + 1, "total")
    assert isinstance(error, FeatureValueError)
    assert error.field == "x"


def test_a_ratio_operand_outside_the_group_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="ratio 'r' needs feature 'n' in the same group"):
        compile_group([Count(name="m"), Ratio(name="r", numerator="m", denominator="n")])


def test_a_ratio_of_a_non_numeric_operand_is_that_features_error() -> None:
    group = compile_group(
        [
            Count(name="n"),
            Last(name="last_x", field="x"),
            Ratio(name="r", numerator="last_x", denominator="n"),
        ]
    )
    states: dict[Any, Any] = {}
    errors: list[Any] = []
    out: list[Any] = []
    group.apply_emit([("k", T0, {"x": "text"})], states, errors, 0.0, out)
    assert [(position, name) for position, _, _, name, _ in errors] == [(0, "r")]
    assert isinstance(errors[0][4], FeatureValueError)
    assert out[0][2:4] == (1, "text")


STRUCT_FEATURES = [
    Count(name="n"),
    Sum(name="total", field="x"),
    Mean(name="avg", field="x"),
    Last(name="last_x", field="x"),
]


def test_the_state_record_is_an_array_like_struct_that_round_trips_through_msgpack() -> None:
    group = compile_group(STRUCT_FEATURES)
    assert issubclass(group.record_type, msgspec.Struct)
    assert group.record_type.__struct_config__.array_like
    states: dict[Any, Any] = {}
    events = [("k", T0 + i, {"x": x}) for i, x in enumerate([3, 4.5, -1, "bad", None, 10])]
    group.apply(events, states, [], 0.0)
    state = states["k"]

    record = group.to_record(state)
    encoded = msgspec.msgpack.encode(record)
    assert isinstance(msgspec.msgpack.decode(encoded), list)  # array-like on the wire
    decoded = msgspec.msgpack.decode(encoded, type=group.record_type)
    assert decoded == record
    restored = group.from_record(decoded)
    assert group.values(restored) == group.values(state) == (6, 16.5, 16.5 / 4, 10)

    more = [("k", T0 + 100, {"x": 1})]
    group.apply(more, states, [], 0.0)
    again = {"k": restored}
    group.apply(more, again, [], 0.0)
    assert group.values(again["k"]) == group.values(states["k"])


@pytest.mark.parametrize("distinct", [3, 50], ids=["exact", "sketch"])
def test_a_distinct_count_state_round_trips_through_msgpack(distinct: int) -> None:
    group = compile_group([DistinctCount(name="d", field="v", exact_limit=10, precision=6)])
    states: dict[Any, Any] = {}
    group.apply([("k", T0, {"v": f"v{i}"}) for i in range(distinct)], states, [], 0.0)
    encoded = msgspec.msgpack.encode(group.to_record(states["k"]))
    restored = group.from_record(msgspec.msgpack.decode(encoded, type=group.record_type))
    assert group.values(restored) == group.values(states["k"])
    again = {"k": restored}
    for target in (again, states):
        group.apply([("k", T0, {"v": "new"}), ("k", T0, {"v": "v0"})], target, [], 0.0)
    assert group.values(again["k"]) == group.values(states["k"])
