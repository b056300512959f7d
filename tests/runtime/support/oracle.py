"""A brute-force oracle for keyed aggregates: recomputes each feature from the key's whole
history after every event. Slow and obviously right; the runtime must agree with it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from runtime import (
    Count,
    DistinctCount,
    EWMean,
    First,
    Last,
    Max,
    Mean,
    Min,
    Ratio,
    Std,
    Sum,
    TimeSince,
    Variance,
    Where,
)

#: every keyed aggregate, with filtered forms and a ratio: the set the oracle tests run
ORACLE_FEATURES = [
    Count(name="n"),
    Sum(name="total", field="amount"),
    Mean(name="avg", field="amount"),
    Min(name="lo", field="amount"),
    Max(name="hi", field="amount"),
    First(name="first_merchant", field="merchant"),
    Last(name="last_merchant", field="merchant"),
    Last(name="last_amount", field="amount"),
    Variance(name="var", field="amount"),
    Std(name="sd", field="amount", ddof=0),
    EWMean(name="ewm", field="amount", half_life="2s"),
    DistinctCount(name="merchants", field="merchant", exact_limit=1000),
    TimeSince(name="gap"),
    Count(name="declined", where=Where(field="status", op="==", value="declined")),
    Sum(name="big_total", field="amount", where=Where(field="amount", op=">", value=50)),
    Count(name="odd_status", where=Where(field="status", op="in", value=["review", "declined"])),
    Ratio(name="decline_ratio", numerator="declined", denominator="n"),
]
#: the features that need a number and report an error for a value that is not one
ORACLE_NUMERIC = {"total", "avg", "lo", "hi", "var", "sd", "ewm", "big_total"}

MISSING = object()


def matches(where: Any, event: Mapping[str, Any]) -> bool:
    """Whether ``event`` passes the condition ``where`` (None: every event does)."""
    if where is None:
        return True
    value = event.get(where.field)
    if value is None:
        return False
    op = where.op
    try:
        if op == "==":
            return bool(value == where.value)
        if op == "!=":
            return bool(value != where.value)
        if op == "<":
            return bool(value < where.value)
        if op == "<=":
            return bool(value <= where.value)
        if op == ">":
            return bool(value > where.value)
        if op == ">=":
            return bool(value >= where.value)
        # membership as in a set: an unhashable value (a list, a dict) is an error
        if op == "in":
            return value in frozenset(where.value)
        return value not in frozenset(where.value)
    except TypeError:
        return False  # the runtime reports an error for this feature and skips the event


def where_error(where: Any, event: Mapping[str, Any]) -> bool:
    """Whether the condition cannot test ``event``'s value: an error for the feature and the
    event (a string against a number for an ordering, an unhashable value for ``in``)."""
    if where is None:
        return False
    value = event.get(where.field)
    if value is None:
        return False
    try:
        if where.op in ("in", "not_in"):
            hash(value)
        elif where.op in ("<", "<=", ">", ">="):
            _ = value < where.value
    except TypeError:
        return True
    return False


def _numeric(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def feature_value(feature: Any, history: list[tuple[int, dict[str, Any]]]) -> Any:
    """The value of ``feature`` over ``history`` (``(time, event)`` in arrival order), or
    raises if the *last* event is an error for this feature."""
    tag = feature.__struct_config__.tag
    seen = [(t, e) for t, e in history if matches(feature.where, e)]
    if tag == "count":
        return len(seen)
    if tag == "time_since":
        if len(seen) < 2:
            return None
        newest = sorted((t for t, _ in seen), reverse=True)
        return newest[0] - newest[1]
    values = [(t, e.get(feature.field)) for t, e in seen if e.get(feature.field) is not None]
    if tag == "custom":
        from ..udaf.aggregates import ORACLES  # each test aggregate's brute force

        if feature.takes_numbers:
            values = [(t, v) for t, v in values if _numeric(v)]
        return ORACLES[type(feature.aggregate)]([v for _, v in values])
    numeric = tag in ("sum", "mean", "min", "max", "variance", "std", "ewm_mean")
    if numeric:
        values = [(t, v) for t, v in values if _numeric(v)]
    xs = [v for _, v in values]
    if tag == "sum":
        total: Any = 0
        for x in xs:
            total += x
        return total
    if tag == "mean":
        return sum(xs) / len(xs) if xs else None
    if tag == "min":
        return min(xs) if xs else None
    if tag == "max":
        return max(xs) if xs else None
    if tag == "first":
        if not values:
            return None
        best = min(t for t, _ in values)
        return next(v for t, v in values if t == best)
    if tag == "last":
        if not values:
            return None
        best = max(t for t, _ in values)
        return [v for t, v in values if t == best][-1]
    if tag in ("variance", "std"):
        if len(xs) <= feature.ddof:
            return None
        var = statistics.pvariance(xs) * len(xs) / (len(xs) - feature.ddof)
        return math.sqrt(var) if tag == "std" else var
    if tag == "ewm_mean":
        if not values:
            return None
        h = feature.half_life_ms
        top = max(t for t, _ in values)
        weights = [2.0 ** ((t - top) / h) for t, _ in values]
        return sum(w * v for w, (_, v) in zip(weights, values, strict=True)) / sum(weights)
    if tag == "distinct_count":
        return len({v for _, v in values})
    raise AssertionError(f"oracle lacks {tag}")


def oracle(
    features: list[Any], key_field: str, time_field: str, events: Iterable[dict[str, Any]]
) -> dict[Any, dict[str, Any]]:
    """Final values per key."""
    histories: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    for event in events:
        histories.setdefault(event[key_field], []).append((event[time_field], event))
    return {key: key_values(features, history) for key, history in histories.items()}


def key_values(features: list[Any], history: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Every feature's value over one key's ``history`` (``(time, event)`` in arrival order),
    ratios from the values of their operands."""
    values = {}
    for feature in features:
        if feature.__struct_config__.tag == "ratio":
            continue
        values[feature.name] = feature_value(feature, history)
    for feature in features:
        if feature.__struct_config__.tag == "ratio":
            num, den = values[feature.numerator], values[feature.denominator]
            values[feature.name] = None if num is None or not den else num / den
    return values


def same(a: Any, b: Any, *, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> bool:
    """Whether two feature values agree: floats within the tolerances (NaN agrees with NaN, as
    first and last keep any value), dicts, lists and tuples item by item, the rest equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            same(a[k], b[k], rel_tol=rel_tol, abs_tol=abs_tol) for k in a
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(
            same(x, y, rel_tol=rel_tol, abs_tol=abs_tol) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return False
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    return bool(a == b)
