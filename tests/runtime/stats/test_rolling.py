"""Per-window statistics against brute-force oracles: plain lists, ``sorted`` and ``statistics``.

Each state is driven by random sequences of adds and removes (duplicates and negative numbers
included) and must agree with the oracle recomputed from the values held, after every step.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
from collections import Counter
from fractions import Fraction
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime._stats.quantiles import QuantileSketch, SortedValues
from runtime._stats.rolling import (
    DistinctWindowCount,
    FrequentValues,
    MonotonicExtremes,
    RunningMoments,
    order_key,
)

# Small ranges so that values repeat; negative numbers included.
small_ints = st.integers(min_value=-20, max_value=20)
numbers = st.one_of(
    small_ints,
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
)
# An operation: ("add", value) or ("remove", index of a held value, wrapped around).
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), numbers), st.tuples(st.just("remove"), st.integers(0, 10**6))
    ),
    max_size=80,
)


def _through_msgspec(record: dict[str, Any]) -> Any:
    """A record as an untyped msgpack checkpoint would give it back (JSON would turn bytes
    values into base64 strings)."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(record))


def _replay(state: Any, ops: list[tuple[str, Any]], check: Any) -> None:
    """Apply ``ops`` to ``state`` and to a plain list, calling ``check(state, held, seen)`` after
    each, ``seen`` being every value added so far."""
    held: list[Any] = []
    seen: list[Any] = []
    for op, value in ops:
        if op == "add":
            state.add(value)
            held.append(value)
            seen.append(value)
        elif held:
            state.remove(held.pop(value % len(held)))
        check(state, held, seen)


# RunningMoments


def _close(a: float | None, b: float | None, abs_tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=abs_tol)


def _check_moments(state: RunningMoments, held: list[float], seen: list[float]) -> None:
    """Rounding after k operations stays near k * 1e-16 of the largest magnitude that passed
    through, evicted or not (squared for the variance; its square root for the standard
    deviation of a near-constant window)."""
    assert len(state) == state.count() == len(held)
    scale = max((abs(x) for x in seen), default=1.0) + 1.0
    assert _close(state.sum(), math.fsum(held), 1e-10 * scale)
    assert _close(state.mean(), statistics.fmean(held) if held else None, 1e-10 * scale)
    pvariance = statistics.pvariance(held) if held else None
    assert _close(state.variance(0), pvariance, 1e-12 * scale * scale)
    variance = statistics.variance(held) if len(held) > 1 else None
    assert _close(state.variance(1), variance, 1e-12 * scale * scale)
    stdev = statistics.stdev(held) if len(held) > 1 else None
    assert _close(state.std(), stdev, 1e-6 * scale)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_running_moments_match_statistics_after_every_add_and_remove(ops: Any) -> None:
    _replay(RunningMoments(), ops, _check_moments)


def test_running_moments_integer_sum_and_mean_stay_exact_through_evictions() -> None:
    state = RunningMoments()
    rng = random.Random(7)
    held: list[int] = []
    for _ in range(5_000):
        x = rng.randint(-(10**12), 10**12)
        state.add(x)
        held.append(x)
        if len(held) > 30:
            state.remove(held.pop(0))
    assert state.sum() == sum(held)
    assert state.mean() == sum(held) / len(held)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**100), 2**100), min_size=2, max_size=40), st.data())
def test_running_moments_of_ints_are_exact_through_adds_removes_and_merges(
    values: list[int], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(values)))
    left, right = RunningMoments(), RunningMoments()
    for x in values[:cut]:
        left.add(x)
    for x in values[cut:]:
        right.add(x)
    left.merge(right)
    gone = data.draw(st.integers(0, len(values) - 2))
    for x in values[:gone]:
        left.remove(x)
    held = values[gone:]
    # statistics computes in fractions: its result, as a float, is the exact value rounded
    assert left.variance(1) == float(statistics.variance(held))
    assert left.variance(0) == float(statistics.pvariance(held))
    assert left.sum() == sum(held)


def test_running_moments_turn_to_welford_at_the_first_float() -> None:
    state = RunningMoments()
    for x in (2**60, 2**60 + 2, 2**60 + 4):
        state.add(x)
    assert state.variance(0) == 8 / 3
    state.add(1.5e18)
    values = [2**60, 2**60 + 2, 2**60 + 4, 1.5e18]
    assert math.isclose(state.variance(1) or 0, statistics.variance(values), rel_tol=1e-12)
    restored = RunningMoments.from_record(_through_msgspec(state.to_record()))
    assert restored.to_record() == state.to_record()


def test_running_moments_stay_close_to_a_fresh_computation_after_many_evictions() -> None:
    # A sliding window of 50 over 20,000 values with a large offset and spread: the worst case
    # for subtracting on evict. The drift must stay far below the values' own scale.
    rng = random.Random(11)
    state = RunningMoments()
    held: list[float] = []
    for i in range(20_000):
        x = 1e6 + rng.gauss(0, 1e3) * (10 if i % 97 == 0 else 1)
        state.add(x)
        held.append(x)
        if len(held) > 50:
            state.remove(held.pop(0))
    fresh = RunningMoments()
    for x in held:
        fresh.add(x)
    assert math.isclose(state.mean() or 0, statistics.fmean(held), rel_tol=1e-12)
    exact = statistics.variance(held)
    assert math.isclose(state.variance() or 0, exact, rel_tol=1e-6)
    assert math.isclose(fresh.variance() or 0, exact, rel_tol=1e-9)


def test_running_moments_reset_exactly_when_emptied() -> None:
    state = RunningMoments()
    for x in (0.1, 0.2, 0.3):
        state.add(x)
    for x in (0.2, 0.1, 0.3):
        state.remove(x)
    assert state.to_record() == RunningMoments().to_record()
    assert state.mean() is None
    assert state.variance(0) is None


def test_running_moments_variance_is_none_until_more_than_ddof_values() -> None:
    state = RunningMoments()
    assert state.variance(0) is None and state.variance(1) is None and state.std() is None
    state.add(4)
    assert state.variance(0) == 0.0
    assert state.variance(1) is None
    state.add(6)
    assert state.variance(1) == 2.0
    assert state.std(0) == 1.0


def test_running_moments_reject_a_ddof_other_than_0_or_1() -> None:
    with pytest.raises(ValueError, match="ddof must be 0 or 1, got 2"):
        RunningMoments().variance(2)


def test_running_moments_remove_from_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        RunningMoments().remove(1)


@settings(max_examples=200, deadline=None)
@given(st.lists(numbers, max_size=30), st.lists(numbers, max_size=30))
def test_running_moments_merge_equals_moments_of_the_concatenation(
    left: list[float], right: list[float]
) -> None:
    a, b = RunningMoments(), RunningMoments()
    for x in left:
        a.add(x)
    for x in right:
        b.add(x)
    before = b.to_record()
    a.merge(b)
    assert b.to_record() == before
    _check_moments(a, left + right, left + right)


@given(st.lists(numbers, max_size=20))
def test_running_moments_record_round_trips(values: list[float]) -> None:
    state = RunningMoments()
    for x in values:
        state.add(x)
    restored = RunningMoments.from_record(_through_msgspec(state.to_record()))
    assert restored.to_record() == state.to_record()
    assert restored.copy().to_record() == state.to_record()


# MonotonicExtremes

# An operation: ("add", time step >= 0, value) or ("evict", cutoff offset back from the last time).
extreme_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3), small_ints),
        st.tuples(st.just("evict"), st.integers(-2, 8), st.just(0)),
    ),
    max_size=80,
)


def _run_extremes(ops: list[tuple[str, int, int]]) -> tuple[MonotonicExtremes, list[Any]]:
    state = MonotonicExtremes()
    held: list[tuple[int, int]] = []
    now = 0
    for op, step, x in ops:
        if op == "add":
            now += step
            state.add(now, x)
            held.append((now, x))
        else:
            cutoff = now - step
            evicted = state.evict_until(cutoff)
            assert evicted == sum(1 for t, _ in held if t <= cutoff)
            held = [(t, v) for t, v in held if t > cutoff]
        values = [v for _, v in held]
        assert len(state) == len(held)
        assert state.min() == (min(values) if values else None)
        assert state.max() == (max(values) if values else None)
    return state, held


@settings(max_examples=300, deadline=None)
@given(extreme_ops)
def test_monotonic_extremes_match_min_and_max_of_the_window(ops: Any) -> None:
    _run_extremes(ops)


def test_monotonic_extremes_reject_an_earlier_time_and_keep_their_state() -> None:
    state = MonotonicExtremes()
    state.add(10, 5)
    state.add(10, 7)  # equal times are in order
    before = state.to_record()
    with pytest.raises(ValueError, match=r"t=9 is earlier than the last time added \(10\)"):
        state.add(9, 1)
    assert state.to_record() == before


def test_monotonic_extremes_keep_their_last_time_when_emptied() -> None:
    state = MonotonicExtremes()
    state.add(10, 5)
    assert state.evict_until(10) == 1
    assert len(state) == 0 and state.min() is None and state.max() is None
    with pytest.raises(ValueError, match="earlier"):
        state.add(3, 1)


@settings(max_examples=200, deadline=None)
@given(extreme_ops, extreme_ops)
def test_monotonic_extremes_merge_of_consecutive_streams_equals_one_stream(
    first: Any, second: Any
) -> None:
    a, held_a = _run_extremes(first)
    b = MonotonicExtremes()
    offset = a.to_record()["last"] or 0
    whole = MonotonicExtremes.from_record(a.to_record())
    held = list(held_a)
    for op, step, x in second:
        if op == "add":
            offset += step
            b.add(offset, x)
            whole.add(offset, x)
            held.append((offset, x))
    a.merge(b)
    assert a.to_record() == whole.to_record()
    values = [v for _, v in held]
    assert a.min() == (min(values) if values else None)
    assert a.max() == (max(values) if values else None)


def test_monotonic_extremes_merge_rejects_an_overlapping_stream() -> None:
    a, b = MonotonicExtremes(), MonotonicExtremes()
    a.add(5, 1)
    b.add(4, 2)
    with pytest.raises(ValueError, match="earlier than this state's last time"):
        a.merge(b)


@given(extreme_ops)
def test_monotonic_extremes_record_round_trips(ops: Any) -> None:
    state, _ = _run_extremes(ops)
    restored = MonotonicExtremes.from_record(_through_msgspec(state.to_record()))
    assert restored.to_record() == state.to_record()
    assert (restored.min(), restored.max(), len(restored)) == (state.min(), state.max(), len(state))


# SortedValues


def _nearest_rank_oracle(held: list[Any], q: Fraction) -> Any:
    """The smallest value with at least q % of the values <= it (the minimum for q = 0)."""
    ordered = sorted(held)
    if q == 0:
        return ordered[0]
    for v in ordered:
        if 100 * sum(1 for x in ordered if x <= v) >= q * len(ordered):
            return v
    raise AssertionError("unreachable")


def test_nearest_rank_percentiles_of_a_known_list() -> None:
    state = SortedValues([15, 20, 35, 40, 50])
    expected = {0: 15, 5: 15, 30: 20, 40: 20, 50: 35, 100: 50}
    assert {q: state.percentile(q) for q in expected} == expected
    state = SortedValues([3, 6, 7, 8, 8, 10, 13, 15, 16, 20])
    assert [state.percentile(q) for q in (25, 50, 75, 100)] == [7, 8, 15, 20]


def test_nearest_rank_takes_a_decimal_percentage_as_written() -> None:
    # 64.4 * 250 / 100 is 161.00000000000003 in floats; 64.4 % of 250 values is 161 of them.
    assert SortedValues(range(250)).percentile(64.4) == 160
    # numpy's inverted_cdf says index 7 here (0.28 * 25 rounds up); exactly 7 values are 28 %.
    assert SortedValues(range(25)).percentile(28) == 6


def test_linear_percentiles_of_a_known_list_match_numpy() -> None:
    state = SortedValues([15, 20, 35, 40, 50])
    # np.percentile(..., method="linear") gives these, bit for bit
    assert state.percentile(40, "linear") == 29.0
    assert state.percentile(10, "linear") == 17.0
    assert state.percentile(33.3, "linear") == 24.979999999999997
    assert state.percentile(99.9, "linear") == 49.96000000000001
    assert state.percentile(0, "linear") == 15.0
    assert state.percentile(100, "linear") == 50.0


percents = st.one_of(st.integers(0, 100), st.integers(0, 1000).map(lambda k: Fraction(k, 10)))


@settings(max_examples=300, deadline=None)
@given(operations, st.lists(percents, min_size=1, max_size=5))
def test_sorted_values_match_sorted_after_every_add_and_remove(ops: Any, qs: Any) -> None:
    def check(state: SortedValues, held: list[float], seen: Any) -> None:
        assert len(state) == len(held)
        if not held:
            assert state.min() is None and state.max() is None
            assert state.percentile(50) is None and state.percentile(50, "linear") is None
            return
        assert state.min() == min(held) and state.max() == max(held)
        for q in qs:
            as_float = float(q) if isinstance(q, Fraction) else q
            assert state.percentile(as_float) == _nearest_rank_oracle(held, Fraction(q))
            linear = state.percentile(as_float, "linear")
            assert min(held) <= linear <= max(held)
        if len(held) > 1:
            cuts = statistics.quantiles(held, n=100, method="inclusive")
            scale = max(abs(x) for x in held) + 1.0
            for q in (1, 25, 50, 90, 99):
                assert math.isclose(
                    state.percentile(q, "linear"), cuts[q - 1], rel_tol=1e-9, abs_tol=1e-9 * scale
                )

    _replay(SortedValues(), ops, check)


def test_percentile_rejects_q_outside_0_to_100_and_unknown_methods() -> None:
    state = SortedValues([1, 2, 3])
    for q in (-0.1, 100.5, math.nan):
        with pytest.raises(ValueError, match=r"q must be in \[0, 100\]"):
            state.percentile(q)
        with pytest.raises(ValueError, match=r"q must be in \[0, 100\]"):
            state.percentile(q, "linear")
    with pytest.raises(ValueError, match="method must be one of"):
        state.percentile(50, "median")  # type: ignore[arg-type]


def test_sorted_values_remove_of_an_absent_value_raises() -> None:
    state = SortedValues([1, 2])
    with pytest.raises(ValueError, match="x=3 is not held"):
        state.remove(3)
    assert len(state) == 2


@given(st.lists(numbers, max_size=30), st.lists(numbers, max_size=30))
def test_sorted_values_merge_equals_the_concatenation(left: Any, right: Any) -> None:
    a, b = SortedValues(left), SortedValues(right)
    a.merge(b)
    assert a.to_record() == {"values": sorted(left + right)}
    assert b.to_record() == {"values": sorted(right)}


@given(st.lists(numbers, max_size=30))
def test_sorted_values_record_round_trips(values: Any) -> None:
    state = SortedValues(values)
    restored = SortedValues.from_record(_through_msgspec(state.to_record()))
    assert restored.to_record() == state.to_record()
    assert restored.copy().to_record() == state.to_record()


# QuantileSketch

sketch_values = st.one_of(
    small_ints,
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-300, max_value=1e300),
    st.floats(min_value=-1e300, max_value=-1e-300),
    st.floats(min_value=5e-324, max_value=1e-300),
    st.floats(min_value=-1e-300, max_value=-5e-324),
    st.just(0.0),
)
QUANTILES = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)


def _sketch_of(values: list[float], alpha: float = 0.01) -> QuantileSketch:
    sketch = QuantileSketch(alpha)
    for x in values:
        sketch.add(x)
    return sketch


@settings(max_examples=150, deadline=None)
@given(st.lists(sketch_values, min_size=1, max_size=200), st.sampled_from([0.001, 0.01, 0.05]))
def test_sketch_quantiles_are_within_alpha_of_the_exact_lower_quantile(
    values: list[float], alpha: float
) -> None:
    sketch = _sketch_of(values, alpha)
    ordered = sorted(values)
    assert sketch.count == len(sketch) == len(values)
    for q in QUANTILES:
        exact = ordered[math.floor(q * (len(values) - 1))]
        got = sketch.quantile(q)
        assert got is not None and (got == 0.0) == (exact == 0)
        # below sys.float_info.min, plus the spacing of subnormal floats
        assert abs(got - exact) <= alpha * abs(exact) * (1 + 1e-9) + 5e-324, (q, exact, got)


def test_sketch_keeps_the_sign_of_negative_values_and_returns_zero_exactly() -> None:
    sketch = _sketch_of([-50.0, -5.0, -5.0, 0.0, 0.0, 2.0, 300.0])
    # ranks floor(q * 6): 0, 1, 3, 5, 6
    got = [sketch.quantile(q) for q in (0.0, 0.2, 0.5, 0.9, 1.0)]
    for value, exact in zip(got, (-50.0, -5.0, 0.0, 2.0, 300.0), strict=True):
        assert value is not None and abs(value - exact) <= 0.01 * abs(exact)
    assert got[2] == 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(sketch_values, max_size=100), st.lists(sketch_values, max_size=100))
def test_sketch_merge_equals_the_sketch_of_the_concatenation(left: Any, right: Any) -> None:
    a, b = _sketch_of(left), _sketch_of(right)
    b_before = b.to_record()
    a.merge(b)
    whole = _sketch_of(left + right)
    assert a.to_record() == whole.to_record()
    assert b.to_record() == b_before
    assert [a.quantile(q) for q in QUANTILES] == [whole.quantile(q) for q in QUANTILES]
    assert len(a) == len(left) + len(right)


@settings(max_examples=100, deadline=None)
@given(st.lists(sketch_values, max_size=100))
def test_sketch_record_round_trip_gives_identical_quantiles(values: Any) -> None:
    sketch = _sketch_of(values, 0.02)
    restored = QuantileSketch.from_record(_through_msgspec(sketch.to_record()))
    assert restored.alpha == 0.02
    assert restored.to_record() == sketch.to_record()
    assert [restored.quantile(q) for q in QUANTILES] == [sketch.quantile(q) for q in QUANTILES]
    assert restored.count == sketch.count
    # a restored sketch goes on and merges like the original
    restored.add(7.5)
    sketch.add(7.5)
    restored.merge(_sketch_of(values, 0.02))
    sketch.merge(_sketch_of(values, 0.02))
    assert restored.to_record() == sketch.to_record()


def test_sketch_is_empty_until_a_value_is_added() -> None:
    sketch = QuantileSketch()
    assert sketch.quantile(0.5) is None and len(sketch) == 0
    assert QuantileSketch.from_record(sketch.to_record()).quantile(0.5) is None


def test_sketch_rejects_alpha_outside_0_to_1() -> None:
    for alpha in (0, 1, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            QuantileSketch(alpha)


def test_sketch_rejects_q_outside_0_to_1() -> None:
    sketch = _sketch_of([1.0])
    for q in (-0.01, 1.01, 50, math.nan):
        with pytest.raises(ValueError, match=r"q must be in \[0, 1\]"):
            sketch.quantile(q)


def test_sketch_rejects_nan_and_infinities() -> None:
    sketch = QuantileSketch()
    for x in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="x must be a finite number"):
            sketch.add(x)
    assert len(sketch) == 0


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.5, 0.9])
def test_sketch_counts_a_magnitude_beyond_its_bins_as_its_largest(alpha: float) -> None:
    sketch = QuantileSketch(alpha)
    limit = sketch.limit
    assert limit == sys.float_info.max / (1 + 2 * alpha / (1 - alpha))
    huge = [sys.float_info.max, -sys.float_info.max, 2**1023, limit * 1.0000001]
    for x in huge:
        sketch.add(x)
    assert len(sketch) == 4
    for q, sign in ((0.0, -1), (1.0, 1)):
        got = sketch.quantile(q)
        assert got is not None and math.copysign(1, got) == sign
        assert abs(abs(got) - limit) <= alpha * limit * (1 + 1e-9)
    # removal undoes the add of the same value, clamped alike
    for x in huge:
        sketch.remove(x)
    assert sketch.to_record() == QuantileSketch(alpha).to_record()


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=5e-324, max_value=sys.float_info.min * 4), min_size=1),
    st.sampled_from([0.001, 0.01, 0.05, 0.5]),
)
def test_sketch_keeps_the_relative_error_for_subnormal_magnitudes(
    values: list[float], alpha: float
) -> None:
    sketch = _sketch_of([-x for x in values] + values, alpha)
    ordered = sorted([-x for x in values] + values)
    for q in QUANTILES:
        exact = ordered[math.floor(q * (len(ordered) - 1))]
        got = sketch.quantile(q)
        # the guarantee, plus the spacing of subnormal floats (a float cannot do better)
        assert got is not None and got != 0.0
        assert abs(got - exact) <= alpha * abs(exact) * (1 + 1e-9) + 5e-324, (q, exact, got)


def test_sketch_merge_of_different_alphas_raises() -> None:
    with pytest.raises(ValueError, match=r"different alpha: 0\.01 and 0\.02"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


# FrequentValues

# Hashable values of several kinds, with repeats: ints (negative too), floats, strings, bytes,
# None and tuples. No two of them are equal across types (no 1 and 1.0), whose spelling in
# answers is the first one seen.
hashables = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([0.5, -2.5, 1e9]),
    st.sampled_from(["a", "b", "ab", ""]),
    st.sampled_from([b"x", b""]),
    st.sampled_from([None, (1, "a"), ("a",)]),
)
value_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), hashables), st.tuples(st.just("remove"), st.integers(0, 10**6))
    ),
    max_size=80,
)


def _tie_key(value: Any) -> tuple[Any, ...]:
    """The documented tie order, written out for the values the tests use."""
    if isinstance(value, (int, float)):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, bytes):
        return (2, value)
    return (3, type(value).__qualname__, repr(value))


def _top_oracle(held: list[Any], k: int) -> list[tuple[Any, int]]:
    counts = Counter(held)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], _tie_key(item[0])))
    return ranked[:k]


@settings(max_examples=300, deadline=None)
@given(value_ops, st.integers(1, 12))
def test_frequent_values_match_a_counter_after_every_add_and_remove(ops: Any, k: int) -> None:
    def check(state: FrequentValues, held: list[Any], seen: Any) -> None:
        assert len(state) == len(held)
        assert state.distinct() == len(set(held))
        assert state.top(k) == _top_oracle(held, k)
        for value in held[:3]:
            assert state.count(value) == held.count(value)

    _replay(FrequentValues(), ops, check)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(hashables, max_size=60).flatmap(lambda xs: st.tuples(st.just(xs), st.permutations(xs)))
)
def test_frequent_values_top_depends_only_on_the_multiset(orders: Any) -> None:
    first, second = orders
    a, b = FrequentValues(), FrequentValues()
    for x in first:
        a.add(x)
    for x in second:
        b.add(x)
    assert a.top(100) == b.top(100)
    assert a.to_record() == b.to_record()


def test_frequent_values_break_ties_by_value_order() -> None:
    state = FrequentValues()
    for x in ["b", 3, "a", b"z", None, 3, -1, "a", -1, "b"]:
        state.add(x)
    assert state.top(10) == [(-1, 2), (3, 2), ("a", 2), ("b", 2), (b"z", 1), (None, 1)]


def test_frequent_values_reject_k_below_1_and_absent_removes() -> None:
    state = FrequentValues()
    state.add("a")
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        state.top(0)
    with pytest.raises(ValueError, match="x='b' is not held"):
        state.remove("b")
    assert state.top(1) == [("a", 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(hashables, max_size=40), st.lists(hashables, max_size=40))
def test_frequent_values_merge_equals_the_concatenation(left: Any, right: Any) -> None:
    a, b, whole = FrequentValues(), FrequentValues(), FrequentValues()
    for x in left:
        a.add(x)
    for x in right:
        b.add(x)
    for x in left + right:
        whole.add(x)
    b_before = b.to_record()
    a.merge(b)
    assert a.to_record() == whole.to_record()
    assert b.to_record() == b_before
    assert len(a) == len(left) + len(right)


@given(st.lists(hashables, max_size=40))
def test_frequent_values_record_round_trips_tuples_included(values: Any) -> None:
    state = FrequentValues()
    for x in values:
        state.add(x)
    restored = FrequentValues.from_record(_through_msgspec(state.to_record()))
    assert restored.top(100) == state.top(100)
    assert restored.to_record() == state.to_record() == state.copy().to_record()


# DistinctWindowCount


@settings(max_examples=300, deadline=None)
@given(value_ops)
def test_distinct_count_matches_a_set_after_every_add_and_remove(ops: Any) -> None:
    def check(state: DistinctWindowCount, held: list[Any], seen: Any) -> None:
        assert len(state) == len(held)
        assert state.distinct() == len(set(held))

    _replay(DistinctWindowCount(), ops, check)


def test_distinct_count_remove_of_an_absent_value_raises() -> None:
    state = DistinctWindowCount()
    with pytest.raises(ValueError, match="x=1 is not held"):
        state.remove(1)


@given(st.lists(hashables, max_size=40), st.lists(hashables, max_size=40))
def test_distinct_count_merge_equals_the_concatenation(left: Any, right: Any) -> None:
    a, b, whole = DistinctWindowCount(), DistinctWindowCount(), DistinctWindowCount()
    for x in left:
        a.add(x)
    for x in right:
        b.add(x)
    for x in left + right:
        whole.add(x)
    a.merge(b)
    assert a.to_record() == whole.to_record()
    assert (a.distinct(), len(a)) == (len(set(left + right)), len(left) + len(right))


@given(
    st.lists(hashables, max_size=40).flatmap(lambda xs: st.tuples(st.just(xs), st.permutations(xs)))
)
def test_distinct_count_record_depends_only_on_the_multiset_and_round_trips(orders: Any) -> None:
    first, second = orders
    a, b = DistinctWindowCount(), DistinctWindowCount()
    for x in first:
        a.add(x)
    for x in second:
        b.add(x)
    assert a.to_record() == b.to_record()
    restored = DistinctWindowCount.from_record(_through_msgspec(a.to_record()))
    assert restored.to_record() == a.to_record() == a.copy().to_record()


def test_order_key_sorts_numbers_then_strings_then_bytes_then_the_rest() -> None:
    values = [None, b"a", "b", 2.5, "a", -1, (1,), True]
    assert sorted(values, key=order_key) == [-1, True, 2.5, "a", "b", b"a", None, (1,)]


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(-20, 20)), max_size=200))
def test_sorted_values_agree_with_a_sorted_list_across_the_switch_to_a_sortedlist(
    ops: list[tuple[bool, int]],
) -> None:
    original = SortedValues.LIST_LIMIT
    SortedValues.LIST_LIMIT = 8  # switch early, so random streams cross it both ways
    try:
        state, held = SortedValues(), []
        for add, x in ops:
            if add or x not in held:
                state.add(x)
                held.append(x)
            else:
                state.remove(x)
                held.remove(x)
            ordered = sorted(held)
            assert len(state) == len(held)
            assert (state.min(), state.max()) == (
                (ordered[0], ordered[-1]) if ordered else (None, None)
            )
            assert state.to_record() == {"values": ordered}
            if ordered:
                assert state.percentile(50) == ordered[max(1, -(-len(ordered) // 2)) - 1]
        other = SortedValues(range(5))
        state.merge(other)
        assert state.to_record() == {"values": sorted([*held, *range(5)])}
        with pytest.raises(ValueError, match="not held"):
            state.remove(1000)
    finally:
        SortedValues.LIST_LIMIT = original
