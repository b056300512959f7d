"""A custom aggregate's sliding window state on its own, in each of its three modes (remove;
merge without remove: two stacks; neither: a fold), against the values it holds: random adds
(out of order too), evictions, reads and checkpoint round trips; and the compiled loop of
sliding windows, which runs custom features too, against the generic loop."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import Count, Custom, Sliding, Sum
from runtime._checkpoints.codec import state_codec
from runtime._keyed.custom import CustomRunner
from runtime._windows.engine import WindowEngine, _attach
from runtime._windows.state import CustomSlidingState, Needs

from ..windows.test_compiled import DECLINED, WINDOW, _run, batches
from ..windows.test_compiled import options as compiled_options
from .aggregates import ORACLES, DistinctList, RiverVar, Spread, SumAgg, SumOfSquares

AGGREGATES = [SumOfSquares(), Spread(), DistinctList()]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60), st.integers(-20, 20)),
        st.tuples(st.just("evict"), st.integers(0, 60)),
        st.tuples(st.just("read")),
        st.tuples(st.just("checkpoint")),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, which=st.sampled_from([0, 1, 2]))
def test_the_value_is_the_aggregate_of_the_values_held(steps: list[Any], which: int) -> None:
    aggregate = AGGREGATES[which]
    runner = CustomRunner(Custom(name="f", field="x", aggregate=aggregate, window=Sliding(size=10)))
    needs = Needs(custom=runner)
    state = CustomSlidingState(needs, True)
    assert (state.stacks is not None) == (which == 1)
    held: list[tuple[int, int]] = []
    for step in steps:
        if step[0] == "add":
            _, t, v = step
            state.add(t, v)
            held.append((t, v))
        elif step[0] == "evict":
            state.evict(step[1])
            held = [(t, v) for t, v in held if t > step[1]]
        elif step[0] == "checkpoint":
            state = state_codec().decode(state_codec().encode(state))
            _attach(runner, state)
        assert [v for _, v in sorted(held, key=lambda p: p[0])] == [v for _, v in state.items]
        want = ORACLES[type(aggregate)]([v for _, v in held])
        assert state.custom_value() == want, (step, held)


SHORT = Sliding(size=300)
COMPILED_SETS: dict[str, list[Any]] = {
    "custom alone": [Custom(name="spread", field="amount", aggregate=Spread(), window=SHORT)],
    "custom beside built-ins": [
        Count(name="n", window=WINDOW),
        Sum(name="sum", field="amount", window=WINDOW),
        Custom(name="csum", field="amount", aggregate=SumAgg(), window=WINDOW),
        Custom(name="sq", field="amount", aggregate=SumOfSquares(), window=SHORT),
        Custom(name="spread", field="amount", aggregate=Spread(), window=WINDOW),
        Custom(name="merchants", field="merchant", aggregate=DistinctList(), window=WINDOW),
        Custom(name="var", field="amount", aggregate=RiverVar(), window=WINDOW),
        Custom(
            name="declined_sq",
            field="amount",
            aggregate=SumOfSquares(),
            where=DECLINED,
            window=SHORT,
        ),
    ],
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=batches(), opts=compiled_options(), which=st.sampled_from(sorted(COMPILED_SETS)))
def test_the_compiled_loop_gives_what_the_generic_loop_gives_for_custom_features(
    plan: list[tuple[float, list[Any]]], opts: dict[str, Any], which: str
) -> None:
    # test_compiled's harness: values of every kind (NaN, infinities, huge ints, bools, lists),
    # late events under each policy, idle time and expiry; identical to the bit
    features = COMPILED_SETS[which]
    compiled = WindowEngine(features, **opts)
    generic = WindowEngine(features, **opts)
    generic._compiled = None
    assert compiled._compiled is not None
    assert repr(_run(compiled, plan, opts)) == repr(_run(generic, plan, opts))
