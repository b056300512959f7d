"""The expression language of derived features: random expressions against a plain Python
oracle of the documented rules, what is refused when a spec loads, and derived specs in files."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from runtime import (
    Count,
    Derived,
    FeatureSet,
    FeatureValueError,
    Ratio,
    SpecError,
    Sum,
    Tumbling,
    Where,
    estimate_cost,
)
from runtime._spec.expressions import Expression, ExpressionError

NAMES = ("a", "b", "c")

# -- an oracle: expressions as trees, written out as text and evaluated by the rules -------------

Tree = Any  # ("name", n) | ("const", v) | (op, left, right) | ("neg", x) | ("if", c, x, y) | ...


def leaves() -> st.SearchStrategy[Tree]:
    numbers = st.one_of(
        st.integers(min_value=-5, max_value=5), st.sampled_from([0.5, -2.5, 3.0, 1e300])
    )
    return st.one_of(
        st.sampled_from(NAMES).map(lambda n: ("name", n)), numbers.map(lambda v: ("const", v))
    )


def extend(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    binary = st.tuples(st.sampled_from(["+", "-", "*", "/", "//", "%", "**"]), children, children)
    compare = st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), children, children)
    logic = st.tuples(st.sampled_from(["and", "or"]), children, children)
    calls = st.one_of(
        st.tuples(st.sampled_from(["abs", "sqrt", "log", "log1p", "exp", "round"]), children),
        st.tuples(st.sampled_from(["min", "max", "coalesce"]), children, children),
        st.tuples(st.just("clip"), children, children, children),
    )
    return st.one_of(
        binary.map(lambda t: ("bin", *t)),
        compare.map(lambda t: ("cmp", *t)),
        logic.map(lambda t: ("logic", *t)),
        children.map(lambda x: ("neg", x)),
        children.map(lambda x: ("not", x)),
        st.tuples(children, children, children).map(lambda t: ("if", *t)),
        calls.map(lambda t: ("call", t[0], *t[1:])),
    )


trees = st.recursive(leaves(), extend, max_leaves=8)


def text(tree: Tree) -> str:
    kind = tree[0]
    if kind == "name":
        return str(tree[1])
    if kind == "const":
        return f"({tree[1]!r})"
    if kind in ("bin", "cmp", "logic"):
        return f"({text(tree[2])} {tree[1]} {text(tree[3])})"
    if kind == "neg":
        return f"(-{text(tree[1])})"
    if kind == "not":
        return f"(not {text(tree[1])})"
    if kind == "if":
        return f"({text(tree[2])} if {text(tree[1])} else {text(tree[3])})"
    return f"{tree[1]}({', '.join(text(arg) for arg in tree[2:])})"


class Bad(Exception):
    """The oracle's FeatureValueError: an operand of the wrong type."""


class Undefined(Exception):
    """No finite value: the whole expression is None."""


def number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad
    return value


def finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise Undefined
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise Undefined  # ints are 64-bit: past that, no value
    return value


MATH: dict[str, Any] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x / y,
    "//": lambda x, y: x // y,
    "%": lambda x, y: x % y,
    "**": lambda x, y: math.pow(x, y),
    "abs": abs,
    "sqrt": math.sqrt,
    "log": math.log,
    "log1p": math.log1p,
    "exp": math.exp,
    "round": round,
    "min": min,
    "max": max,
    "clip": lambda x, lo, hi: lo if x < lo else hi if x > hi else x,
}
COMPARE: dict[str, Any] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
    "==": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
}


def compute(op: str, args: list[Any]) -> Any:
    if any(arg is None for arg in args):
        return None
    args = [number(arg) for arg in args]
    try:
        return finite(MATH[op](*args))
    except (ZeroDivisionError, OverflowError, ValueError):
        raise Undefined from None


def run(tree: Tree, env: dict[str, Any]) -> Any:
    kind = tree[0]
    if kind == "name":
        return env[tree[1]]
    if kind == "const":
        return tree[1]
    if kind == "bin":
        return compute(tree[1], [run(tree[2], env), run(tree[3], env)])
    if kind == "cmp":
        x, y = run(tree[2], env), run(tree[3], env)
        return None if x is None or y is None else COMPARE[tree[1]](x, y)
    if kind == "logic":
        x = run(tree[2], env)
        if x is None:
            return None
        if (tree[1] == "and") != bool(x):  # decided by the first operand
            return tree[1] == "or"
        y = run(tree[3], env)
        return None if y is None else bool(y)
    if kind == "neg":
        x = run(tree[1], env)
        return None if x is None else -number(x)
    if kind == "not":
        x = run(tree[1], env)
        return None if x is None else not x
    if kind == "if":
        condition = run(tree[1], env)
        return run(tree[2] if condition is not None and condition else tree[3], env)
    args = [run(arg, env) for arg in tree[2:]]
    if tree[1] == "coalesce":
        return next((arg for arg in args if arg is not None), None)
    return compute(tree[1], args)


def oracle(tree: Tree, env: dict[str, Any]) -> Any:
    try:
        return run(tree, env)
    except Undefined:
        return None


values = st.one_of(
    st.none(),
    st.integers(min_value=-20, max_value=20),
    st.floats(min_value=-100, max_value=100, allow_nan=False),
    st.just(True),
    st.just("s"),
)


@settings(max_examples=400, deadline=None)
@given(tree=trees, env=st.fixed_dictionaries({name: values for name in NAMES}))
def test_random_expressions_equal_a_plain_python_evaluation_of_the_rules(
    tree: Tree, env: dict[str, Any]
) -> None:
    expression = Expression(text(tree))
    args = [env[name] for name in expression.names]
    try:
        expected = oracle(tree, env)
    except (Bad, TypeError):
        with pytest.raises(FeatureValueError):
            expression.evaluate(*args)
        return
    got = expression.evaluate(*args)
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12), (text(tree), env)
    else:
        assert got == expected and type(got) is type(expected), (text(tree), env, got)


def test_names_are_read_in_the_order_they_are_written() -> None:
    expression = Expression("spend / max(n, 1) if n > 0 else coalesce(spend, 0)")
    assert expression.names == ("spend", "n")
    assert expression.evaluate(10, 4) == 2.5
    assert expression.evaluate(10, 0) == 10
    assert expression.evaluate(None, 3) is None


def test_division_by_zero_and_undefined_math_give_none() -> None:
    for source in ("a / 0", "a // 0", "a % 0", "log(a - a)", "sqrt(a - 10)", "exp(a * 1000)"):
        assert Expression(source).evaluate(3) is None, source
    assert Expression("10 ** a").evaluate(400) is None  # past a float's range


def test_ints_past_64_bits_and_huge_rounding_give_none_at_once() -> None:
    assert Expression("a * a").evaluate(2**31) == 2**62
    assert Expression("a * a * a").evaluate(2**31) is None  # 2**93
    # a chain of squares stays bounded: each product past 64 bits stops it
    assert Expression("((a * a) * (a * a)) * ((a * a) * (a * a))").evaluate(10**6) is None
    assert Expression("round(a, -2)").evaluate(1234) == 1200
    assert Expression("round(a, d)").evaluate(12, -100_000_000) is None  # not 10 ** 10**8


def test_a_string_in_arithmetic_is_a_feature_value_error_naming_the_operator() -> None:
    with pytest.raises(FeatureValueError, match="'\\+' needs numbers, got str 'x'"):
        Expression("a + 1").evaluate("x")
    with pytest.raises(FeatureValueError, match="cannot compare str 'x' < int 1"):
        Expression("a < 1").evaluate("x")
    assert Expression("a == 'x'").evaluate("x") is True


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("__import__('os').system('true')", "only the built-in functions can be called"),
        ("__import__('os')", "unknown function '__import__'"),
        ("a.__class__", "attributes ('.') are not allowed"),
        ("a[0]", "subscripts ('[...]') are not allowed"),
        ("(lambda: 1)()", "only the built-in functions can be called"),
        ("lambda: 1", "lambdas are not allowed"),
        ("[x for x in a]", "comprehensions are not allowed"),
        ("(x := 1)", "assignments (':=') are not allowed"),
        ("__builtins__", "names that start with '__' are not allowed"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("eval('1')", "unknown function 'eval'"),
        ("a if b", "not a valid expression"),
        ("a; b", "not a valid expression"),
        ("a in b", "operator 'in' is not allowed"),
        ("a is None", "operator 'is' is not allowed"),
        ("~a", "operator '~' is not allowed"),
        ("a << 2", "operator LShift is not allowed"),
        ("min(a)", "min() takes 2+ arguments, got 1"),
        ("clip(a, 1)", "clip() takes 3 arguments, got 2"),
        ("round(a, ndigits=2)", "round() takes no keyword arguments"),
        ("a + 'x'", "'+' needs numbers, got 'x'"),
        ("sqrt(None)", "sqrt() needs numbers, got None"),
        ("f'{a}'", "f-strings are not allowed"),
        ("1j * a", "constants of type complex are not allowed"),
        ("-" * 3000 + "a", "longer than 2000 characters"),
        ("-" * 100 + "a", "too large"),
        ("", "an empty expression"),
    ],
)
def test_what_is_not_in_the_language_is_refused_with_a_reason(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as info:
        Expression(source)
    assert reason in str(info.value)


# -- derived features in specs ---------------------------------------------------------------

BASE = """
name = "d"
key = "card"
time = "ts"

[[features]]
type = "sum"
name = "spend"
field = "amount"

[[features]]
type = "count"
name = "n"
"""


def derived_toml(expr: str, name: str = "avg") -> str:
    return BASE + f'\n[[features]]\ntype = "derived"\nname = "{name}"\nexpr = {expr!r}\n'


def test_a_derived_feature_loads_from_toml_and_round_trips_through_json() -> None:
    feature_set = FeatureSet.from_toml(derived_toml("spend / max(n, 1)"))
    derived = feature_set.feature("avg")
    assert isinstance(derived, Derived)
    assert derived.depends_on() == ("spend", "n")
    assert FeatureSet.from_json(feature_set.to_json()) == feature_set
    assert derived.combiner()(10, 4) == 2.5


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("spend / count", "features[2].expr: no feature named 'count' (known: spend, n)"),
        ("avg + 1", "features[2].expr: a derived feature cannot use itself"),
        ("spend.real", "features[2].expr: attributes ('.') are not allowed in an expression"),
        ("__import__('os')", "features[2].expr: unknown function '__import__'"),
        ("spend +", "features[2].expr: not a valid expression: invalid syntax: 'spend +'"),
        ("1 + 2", "features[2].expr: reads no feature: '1 + 2'"),
    ],
)
def test_a_bad_expression_is_refused_at_load_naming_the_feature_and_the_problem(
    expr: str, message: str
) -> None:
    with pytest.raises(SpecError) as info:
        FeatureSet.from_toml(derived_toml(expr), source="spec.toml")
    assert str(info.value).startswith(f"spec.toml: {message}")


def test_derived_features_in_a_cycle_are_refused_with_the_cycle() -> None:
    data = {
        "name": "d",
        "key": "k",
        "time": "t",
        "features": [
            {"type": "count", "name": "n"},
            {"type": "derived", "name": "x", "expr": "y + n"},
            {"type": "derived", "name": "y", "expr": "x * 2"},
        ],
    }
    with pytest.raises(SpecError, match=r"derived features form a cycle: x -> y -> x"):
        FeatureSet.from_dict(data, source="spec")


def test_a_derived_feature_may_read_ratios_and_other_derived_features() -> None:
    feature_set = FeatureSet(
        name="d",
        key="k",
        time="t",
        features=[
            Count(name="n"),
            Sum(name="s", field="x"),
            Ratio(name="mean", numerator="s", denominator="n"),
            Derived(name="scaled", expr="mean * 2"),
            Derived(name="capped", expr="clip(scaled, 0, 10)"),
        ],
    )
    assert feature_set.stream_of(feature_set.feature("capped")) == "events"


def test_a_derived_feature_takes_no_where_window_or_stream() -> None:
    with pytest.raises(SpecError, match=r"Derived\.where: a derived feature takes no where"):
        Derived(name="x", expr="n", where=Where(field="a", value=1))
    with pytest.raises(SpecError, match=r"Derived\.window: derived features cannot be windowed"):
        Derived(name="x", expr="n", window=Tumbling(size="1m"))
    with pytest.raises(SpecError, match=r"Derived\.stream: a derived feature takes no stream"):
        Derived(name="x", expr="n", stream="other")


def double_spend(values: dict[str, Any]) -> Any:
    return None if values["spend"] is None else values["spend"] * 2


def test_a_python_function_is_a_derived_feature_that_files_name_through_the_allow_list() -> None:
    feature_set = FeatureSet(
        name="d",
        key="card",
        time="ts",
        features=[
            Sum(name="spend", field="amount"),
            Derived(name="x2", expr=double_spend, uses=["spend"]),
        ],
    )
    derived = feature_set.feature("x2")
    assert derived.combiner()(21) == 42
    written = feature_set.to_json()
    assert f"{__name__}:double_spend".encode() in written
    with pytest.raises(SpecError, match="is not a function the application allows"):
        FeatureSet.from_json(written, source="spec.json")
    again = FeatureSet.from_json(written, functions=[double_spend])
    assert again.feature("x2").expr is double_spend


def test_a_derived_function_needs_uses_and_an_expression_takes_none() -> None:
    with pytest.raises(SpecError, match=r"Derived\.uses: a derived function needs the features"):
        Derived(name="x", expr=double_spend)
    with pytest.raises(SpecError, match=r"Derived\.uses: an expression names its inputs itself"):
        Derived(name="x", expr="a + 1", uses=["a"])


def test_a_derived_function_that_raises_is_a_feature_value_error() -> None:
    derived = Derived(name="x", expr=double_spend, uses=["spend"])
    with pytest.raises(FeatureValueError, match="derived feature 'x': its function raised"):
        derived.combiner()({})  # a dict * 2 raises TypeError


def test_the_estimator_costs_a_derived_feature_by_its_operations() -> None:
    simple = estimate_cost(Derived(name="x", expr="a + 1"), event_rate=100)
    larger = estimate_cost(
        Derived(name="x", expr="clip(a / max(b, 1), 0, 1) if c else 0"), event_rate=100
    )
    assert simple.category == "simple_aggregate"
    assert simple.state_bytes_per_key == 0
    assert simple.operations_per_second == 100.0
    assert larger.operations_per_second == 100.0 * 4
