"""The compiled loop of sliding windows does what the generic loop does.

An engine whose windows are all sliding applies events with a loop compiled for its buffers
(``_compile_sliding`` in ``runtime/_windows/engine.py``). Here the same random batches go
through two engines of the same features, one compiled and one held to the generic loop, and
everything must be identical to the bit: the rows, the failures beside them, the errors,
late events, poison events, counters and every key's values after each batch. The streams
have out-of-order and late events under each lateness policy, quiet keys (idle time and
expiry), and values of every kind a field can hold (NaN, infinities, ints too large for a
float, bools, strings, unhashable lists).
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import (
    Count,
    DistinctCount,
    First,
    Last,
    Max,
    Mean,
    Min,
    Percentile,
    Quantile,
    Ratio,
    Sliding,
    Std,
    Sum,
    TopK,
    Variance,
    Where,
    ZScore,
)
from runtime._stats.idle import IdleKeys
from runtime._stats.quantiles import SortedValues
from runtime._windows.engine import WindowCounters, WindowEngine, WindowOutput

WINDOW = Sliding(size=1000)
SHORT = Sliding(size=300)
DECLINED = Where(field="status", op="==", value="declined")

FEATURE_SETS: dict[str, list[Any]] = {
    "sum+mean": [
        Sum(name="total", field="amount", window=WINDOW),
        Mean(name="avg", field="amount", window=WINDOW),
    ],
    "p95": [Percentile(name="p95", field="amount", q=95, window=WINDOW)],
    "mean+p95": [
        Mean(name="avg", field="amount", window=WINDOW),
        Percentile(name="p95", field="amount", q=95, window=WINDOW),
    ],
    "count+first": [
        Count(name="n", window=SHORT),
        First(name="first", field="merchant", window=SHORT),
    ],
    "every sliding feature": [
        Count(name="n", window=WINDOW),
        Sum(name="sum", field="amount", window=WINDOW),
        Mean(name="mean", field="amount", window=WINDOW),
        Min(name="min", field="amount", window=WINDOW),
        Max(name="max", field="amount", window=WINDOW),
        First(name="first", field="merchant", window=WINDOW),
        Last(name="last", field="merchant", window=WINDOW),
        Variance(name="var", field="amount", window=WINDOW),
        Std(name="std", field="amount", ddof=0, window=WINDOW),
        DistinctCount(name="merchants", field="merchant", window=WINDOW),
        Percentile(name="p90", field="amount", q=90, window=WINDOW),
        Percentile(name="p50", field="amount", q=50, method="linear", window=WINDOW),
        Quantile(name="q75", field="amount", q=0.75, window=WINDOW),
        TopK(name="top", field="merchant", k=2, window=WINDOW),
        Count(name="declined", where=DECLINED, window=WINDOW),
        Sum(name="declined_sum", field="amount", where=DECLINED, window=SHORT),
        Count(name="short_n", window=SHORT),
        Ratio(name="avg", numerator="sum", denominator="n"),
        Ratio(name="share", numerator="declined", denominator="n"),
    ],
}

amounts = st.one_of(
    st.integers(min_value=-100, max_value=100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.sampled_from([None, "oops", True, 2**1100, -(2**1100), 10**20, [1]]),
)
merchants = st.sampled_from(["m1", "m2", "m3", None, 7, [1]])


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[float, list[tuple[Any, int, dict[str, Any]]]]]:
    """Batches of ``(key, t, event)`` with the wall-clock time each is applied at: times
    mostly increasing, with jitter back (out of order, late) and jumps forward; dense
    streams (of one key, or a few) fill the windows."""
    t = 10_000
    wall = 1_000.0
    result = []
    dense = draw(st.booleans())
    steps = [0, 0, 10, 30, 60, 120] if dense else [0, 0, 10, 50, 120, 300, 700, 2000]
    keys = ["a"] if dense and draw(st.booleans()) else ["a", "b", "c", 1]
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        wall += draw(st.sampled_from([0.0, 0.05, 0.3, 1.5]))
        events = []
        for _ in range(draw(st.integers(min_value=0, max_value=12))):
            t += draw(st.sampled_from(steps))
            jitter = draw(st.sampled_from([0, 0, 0, 30, 200, 600, 1500]))
            event: dict[str, Any] = {
                "amount": draw(amounts),
                "merchant": draw(merchants),
                "status": draw(st.sampled_from(["ok", "declined"])),
            }
            events.append((draw(st.sampled_from(keys)), max(0, t - jitter), event))
        result.append((wall, events))
    return result


@st.composite
def options(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "max_out_of_orderness": draw(st.sampled_from([0, 100, 700])),
        "allowed_lateness": draw(st.sampled_from([0, 250])),
        "late_policy": draw(st.sampled_from(["drop", "side_output", "update"])),
        "correction_horizon": draw(st.sampled_from([0, 1000])),
        "emit": draw(st.sampled_from(["update", "update", "close"])),
        "idle_timeout": draw(st.sampled_from([None, None, 0.2, 1.0])),
        "state_ttl": draw(st.sampled_from([None, None, 0.5])),
    }


def _run(
    engine: WindowEngine, plan: list[tuple[float, list[Any]]], opts: dict[str, Any]
) -> list[Any]:
    """Everything observable of applying ``plan`` (and ticking between batches)."""
    states: dict[Any, Any] = {}
    counters = WindowCounters()
    idle = IdleKeys() if engine.tracks_idle else None
    seen: list[Any] = []
    for wall, events in plan:
        out = WindowOutput(engine.names)
        errors: list[Any] = []
        late: list[Any] = []
        poison: list[Any] = []
        engine.apply(events, states, errors, wall, out, late, counters, idle, poison)
        if idle is not None:
            engine.tick(states, idle, wall + 0.1, out, counters)
        seen.append(
            (
                out.rows,
                out.failures,
                out.extras,
                [(k, t, name, type(exc).__name__, str(exc)) for k, t, name, exc in errors],
                late,
                [(k, t, type(exc).__name__) for k, t, _, exc in poison],
                dict(vars(counters)),
                sorted(
                    (repr(key), st.clock, st.latest, st.seen, engine.values(st))
                    for key, st in states.items()
                ),
            )
        )
    return seen


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=batches(),
    opts=options(),
    which=st.sampled_from(sorted(FEATURE_SETS)),
    list_limit=st.sampled_from([SortedValues.LIST_LIMIT, 3]),
)
def test_the_compiled_loop_gives_what_the_generic_loop_gives(
    plan: list[tuple[float, list[Any]]], opts: dict[str, Any], which: str, list_limit: int
) -> None:
    features = FEATURE_SETS[which]
    original = SortedValues.LIST_LIMIT
    # with a limit of 3, sorted values move to a SortedList as soon as a window holds 4
    SortedValues.LIST_LIMIT = list_limit
    try:
        compiled = WindowEngine(features, **opts)
        generic = WindowEngine(features, **opts)
        generic._compiled = None
        assert compiled._compiled is not None
        # repr: NaN compares unequal to itself, and the floats must agree to the bit
        assert repr(_run(compiled, plan, opts)) == repr(_run(generic, plan, opts))
    finally:
        SortedValues.LIST_LIMIT = original


def test_an_engine_of_sliding_windows_is_compiled_and_one_with_a_zscore_is_not() -> None:
    for features in FEATURE_SETS.values():
        engine = WindowEngine(features)
        assert engine.source is not None and "def apply" in engine.source
    scored = WindowEngine([ZScore(name="z", field="amount", window=WINDOW)])
    assert scored.source is None


def test_a_late_event_goes_through_the_generic_loop_in_its_place() -> None:
    engine = WindowEngine(FEATURE_SETS["sum+mean"], late_policy="side_output")
    states: dict[Any, Any] = {}
    out = WindowOutput(engine.names)
    late: list[Any] = []
    counters = WindowCounters()
    events = [("k", 5_000, {"amount": 1.5}), ("k", 1_000, {"amount": 9.0}), ("k", 5_001, {})]
    engine.apply(events, states, [], 0.0, out, late, counters, None)
    assert out.rows == [("k", 5_000, 1.5, 1.5), ("k", 5_001, 1.5, 1.5)]
    assert late == [("k", 1_000, 5_000, {"amount": 9.0})]
    assert counters.late_side_output == 1


def test_a_failed_feature_is_reported_beside_its_row() -> None:
    engine = WindowEngine(FEATURE_SETS["sum+mean"])
    out = WindowOutput(engine.names)
    errors: list[Any] = []
    events = [("k", 1, {"amount": 2.0}), ("k", 2, {"amount": "x"}), ("k", 3, {"amount": 4})]
    engine.apply(events, {}, errors, 0.0, out, None, WindowCounters(), None)
    assert out.rows == [("k", 1, 2.0, 2.0), ("k", 2, 2.0, 2.0), ("k", 3, 6.0, 3.0)]
    assert out.failures is not None and list(out.failures) == [1]
    assert set(out.failures[1]) == {"total", "avg"}
    assert [(k, t, name) for k, t, name, _ in errors] == [("k", 2, "total"), ("k", 2, "avg")]
