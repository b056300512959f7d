"""The aggregate types of a keyed feature group, as source templates over slots.

Each entry of :data:`KINDS` says how one feature type keeps its state (named slots with their
defaults), updates it for one value (``v``) at one event time (``t``), turns it into a value,
and merges two partial states. ``runtime._keyed.kernel`` compiles them; the helpers below are
bound in the generated code's namespace.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .._exceptions import FeatureValueError, FeaturistError

__all__ = [
    "INF",
    "KINDS",
    "Kind",
    "coerce_number",
    "distinct_restore",
    "exact_std",
    "exact_variance",
    "exp2",
    "name_error",
    "ratio_of",
    "sqrt_pos",
    "welford_of",
]

INF = math.inf
#: later than any event time (event times are at most year 2300 in milliseconds)
NEVER = 2**62


def coerce_number(field: str, value: Any) -> tuple[Any, FeatureValueError | None]:
    """A value that is not an ``int`` or finite ``float``: convert it or explain why not."""
    if value.__class__ is float:
        return None, FeatureValueError(
            f"field {field!r} is {value!r}: not a finite number", field=field
        )
    if (
        isinstance(value, bool)
        or isinstance(value, (str, bytes))
        or not hasattr(value, "__float__")
    ):
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return None, FeatureValueError(
            f"field {field!r} must be a number, got {type(value).__name__} {shown}", field=field
        )
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return None, FeatureValueError(f"field {field!r}: {exc}", field=field)
    if not -INF < number < INF:
        return None, FeatureValueError(
            f"field {field!r} is {number!r}: not a finite number", field=field
        )
    return number, None


def distinct_restore(value: Any) -> Any:
    """A distinct-count slot decoded from a record: arrays become sets, bytes a sketch."""
    if isinstance(value, (list, tuple)):
        return set(value)
    if isinstance(value, bytes):
        return bytearray(value)
    return value


def ratio_of(numerator: Any, denominator: Any) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    try:
        return float(numerator / denominator)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise FeatureValueError(
            f"cannot divide {numerator!r} by {denominator!r}: {exc}", field="ratio"
        ) from exc


def name_error(error: Exception, field: str) -> Exception:
    """Name the field in an error that does not (a failed comparison, an unhashable value)."""
    if isinstance(error, FeaturistError):
        return error
    wrapped = FeatureValueError(f"field {field!r}: {type(error).__name__}: {error}", field=field)
    wrapped.__cause__ = error
    return wrapped


def sqrt_pos(x: float) -> float:
    return math.sqrt(x) if x > 0 else 0.0


def exact_variance(n: int, total: int, squares: int, ddof: int) -> float | None:
    """The variance of ``n > ddof`` ints from their exact sum and sum of squares: one
    correctly rounded division, as the sliding window's; ``None`` beyond a float's range."""
    try:
        return (n * squares - total * total) / (n * (n - ddof))
    except OverflowError:
        return None


def exact_std(n: int, total: int, squares: int, ddof: int) -> float | None:
    """The square root of :func:`exact_variance`."""
    variance = exact_variance(n, total, squares, ddof)
    return None if variance is None else math.sqrt(variance)


def welford_of(n: int, total: int, squares: int) -> tuple[float, float]:
    """An exact state (``n`` ints, their sum and sum of squares) as Welford's mean and sum of
    squared deviations, each correctly rounded. Raises ``OverflowError`` beyond a float's
    range, before the caller changes anything."""
    if not n:
        return 0.0, 0.0
    return total / n, (n * squares - total * total) / n


def exp2(x: float) -> float:
    return float(2.0**x)


@dataclass(frozen=True)
class Kind:
    """How one aggregate type is computed, as source templates over slots.

    Templates use ``{S.role}`` for this feature's slot ``role`` of the state being updated,
    ``{A.role}``/``{B.role}``/``{R.role}`` in merges, ``v`` for the value, ``t`` for the event time,
    and ``{p.name}`` for a parameter bound in the namespace.
    """

    slots: tuple[tuple[str, Any], ...]
    update: str
    value: str
    merge: str | None
    numeric: bool = False
    field: bool = True
    #: role -> family: features of one group that read the same field under the same condition
    #: share a slot of the same family, and its update runs once (``mean`` reuses ``sum``'s
    #: running total; ``variance`` and ``std`` share one Welford triple)
    share: tuple[tuple[str, str], ...] = ()
    #: the value expression cannot raise (plain slot loads)
    safe_value: bool = False


_MINMAX_MERGE = "{R.v} = {B.v} if {A.v} is None else {A.v} if {B.v} is None else {OP}({A.v}, {B.v})"

# Welford's online algorithm; Chan et al.'s formula to merge. ``std`` shares it.
#
# While every value is an ``int``, the triple is exact instead: ``m`` holds the sum and ``q``
# the sum of squares, as Python ints, and the variance is one correctly rounded division
# (``exact_variance``), as the sliding window's. Converting each int to a float first would
# drop the low digits of ints beyond 2**53. The type of ``q`` says which form a state is in
# (``int``: exact, the initial form; ``float``: Welford); the first float value converts an
# exact state to Welford for good (``welford_of``). The float path tests that type once.
_WELFORD_STEP = (
    "    _n = {S.n} + 1\n"
    "    _d = v - {S.m}\n"
    "    {S.m} += _d / _n\n"
    "    {S.q} += _d * (v - {S.m})\n"
    "    {S.n} = _n\n"
)
_WELFORD = Kind(
    (("n", 0), ("m", 0), ("q", 0)),
    "if {S.q}.__class__ is float:\n" + _WELFORD_STEP + "elif v.__class__ is int:\n"
    "    {S.m} += v\n"
    "    {S.q} += v * v\n"
    "    {S.n} += 1\n"
    "else:\n"
    "    {S.m}, {S.q} = _welford_of({S.n}, {S.m}, {S.q})\n" + _WELFORD_STEP,
    "(({S.q} / ({S.n} - {p.ddof}) if {S.q}.__class__ is float"
    " else _exact_variance({S.n}, {S.m}, {S.q}, {p.ddof})) if {S.n} > {p.ddof} else None)",
    "if {A.q}.__class__ is int and {B.q}.__class__ is int:\n"
    "    {R.m} = {A.m} + {B.m}\n"
    "    {R.q} = {A.q} + {B.q}\n"
    "    {R.n} = {A.n} + {B.n}\n"
    "else:\n"
    "    _ma, _qa = (\n"
    "        ({A.m}, {A.q}) if {A.q}.__class__ is float else _welford_of({A.n}, {A.m}, {A.q})\n"
    "    )\n"
    "    _mb, _qb = (\n"
    "        ({B.m}, {B.q}) if {B.q}.__class__ is float else _welford_of({B.n}, {B.m}, {B.q})\n"
    "    )\n"
    "    _n = {A.n} + {B.n}\n"
    "    _d = _mb - _ma\n"
    "    {R.m} = _ma + _d * {B.n} / _n if _n else 0.0\n"
    "    {R.q} = _qa + _qb + _d * _d * {A.n} * {B.n} / _n if _n else 0.0\n"
    "    {R.n} = _n",
    numeric=True,
    share=(("n", "welford.n"), ("m", "welford.m"), ("q", "welford.q")),
)

KINDS: dict[str, Kind] = {
    "count": Kind(
        (("n", 0),), "{S.n} += 1", "{S.n}", "{R.n} = {A.n} + {B.n}", field=False, safe_value=True
    ),
    "sum": Kind(
        (("s", 0),),
        "{S.s} += v",
        "{S.s}",
        "{R.s} = {A.s} + {B.s}",
        numeric=True,
        share=(("s", "sum"),),
        safe_value=True,
    ),
    "mean": Kind(
        (("n", 0), ("s", 0)),
        "{S.n} += 1\n{S.s} += v",
        "({S.s} / {S.n} if {S.n} else None)",
        "{R.n} = {A.n} + {B.n}\n{R.s} = {A.s} + {B.s}",
        numeric=True,
        share=(("n", "valid"), ("s", "sum")),
    ),
    "min": Kind(
        (("v", None),),
        "if {S.v} is None or v < {S.v}:\n    {S.v} = v",
        "{S.v}",
        _MINMAX_MERGE.replace("{OP}", "min"),
        numeric=True,
        safe_value=True,
    ),
    "max": Kind(
        (("v", None),),
        "if {S.v} is None or v > {S.v}:\n    {S.v} = v",
        "{S.v}",
        _MINMAX_MERGE.replace("{OP}", "max"),
        numeric=True,
        safe_value=True,
    ),
    # Event times are >= 0 and < NEVER: the sentinels spare a None check per event.
    "first": Kind(
        (("t", NEVER), ("v", None)),
        "if t < {S.t}:\n    {S.t} = t\n    {S.v} = v",
        "{S.v}",
        "if {B.t} < {A.t}:\n"
        "    {R.t} = {B.t}\n    {R.v} = {B.v}\n"
        "else:\n    {R.t} = {A.t}\n    {R.v} = {A.v}",
        safe_value=True,
    ),
    "last": Kind(
        (("t", -1), ("v", None)),
        "if t >= {S.t}:\n    {S.t} = t\n    {S.v} = v",
        "{S.v}",
        "if {B.t} >= {A.t}:\n"
        "    {R.t} = {B.t}\n    {R.v} = {B.v}\n"
        "else:\n    {R.t} = {A.t}\n    {R.v} = {A.v}",
        safe_value=True,
    ),
    "variance": _WELFORD,
    "std": dataclasses.replace(
        _WELFORD,
        value="((_sqrt_pos({S.q} / ({S.n} - {p.ddof})) if {S.q}.__class__ is float"
        " else _exact_std({S.n}, {S.m}, {S.q}, {p.ddof})) if {S.n} > {p.ddof} else None)",
    ),
    # Weighted sums referred to the newest event time T: sum(v_i * 2**((t_i - T) / h)) and
    # sum(2**((t_i - T) / h)). Every weight is <= 1, so nothing overflows, and the mean does not
    # depend on the order the events came in.
    "ewm_mean": Kind(
        (("T", None), ("s", 0.0), ("w", 0.0)),
        "if {S.T} is None:\n"
        "    {S.T} = t\n    {S.s} = float(v)\n    {S.w} = 1.0\n"
        "elif t >= {S.T}:\n"
        "    _f = _exp2(({S.T} - t) / {p.half_life})\n"
        "    {S.s} = {S.s} * _f + v\n    {S.w} = {S.w} * _f + 1.0\n    {S.T} = t\n"
        "else:\n"
        "    _f = _exp2((t - {S.T}) / {p.half_life})\n"
        "    {S.s} += v * _f\n    {S.w} += _f",
        "({S.s} / {S.w} if {S.w} else None)",
        "if {A.T} is None or {B.T} is None:\n"
        "    _src = {B.ALL} if {A.T} is None else {A.ALL}\n"
        "    {R.T}, {R.s}, {R.w} = _src\n"
        "else:\n"
        "    _T = max({A.T}, {B.T})\n"
        "    _fa = _exp2(({A.T} - _T) / {p.half_life})\n"
        "    _fb = _exp2(({B.T} - _T) / {p.half_life})\n"
        "    {R.T} = _T\n"
        "    {R.s} = {A.s} * _fa + {B.s} * _fb\n"
        "    {R.w} = {A.w} * _fa + {B.w} * _fb",
        numeric=True,
    ),
    "distinct_count": Kind(
        (("d", None),),
        "{S.d} = _distinct_add({S.d}, v, {p.exact_limit}, {p.precision})",
        "_distinct_value({S.d})",
        "{R.d} = _distinct_merge({A.d}, {B.d}, {p.exact_limit}, {p.precision})",
    ),
    "time_since": Kind(
        (("a", -1), ("b", -1)),
        "if t >= {S.a}:\n    {S.b} = {S.a}\n    {S.a} = t\nelif t > {S.b}:\n    {S.b} = t",
        "({S.a} - {S.b} if {S.b} >= 0 else None)",
        "_top = sorted(({A.a}, {A.b}, {B.a}, {B.b}), reverse=True)\n"
        "{R.a} = _top[0]\n{R.b} = _top[1]",
        field=False,
        safe_value=True,
    ),
}
