"""The keyed aggregates: features computed over all of a key's events, or over a window.

Each is a frozen ``msgspec`` struct tagged by its ``type``; ``runtime._keyed.kinds`` holds the
state each one updates, ``runtime._spec.windowed`` the features that need a window or event-time
order, and ``runtime._spec.feature_set`` the set that lists them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec.structs

from .._duration import Duration, parse_duration
from .._exceptions import FeatureValueError, FeaturistError
from .base import FeatureSpec, _FieldFeature
from .checks import check_duration as _check_duration
from .checks import check_int as _check_int
from .checks import check_name as _check_name
from .checks import check_str as _check_str
from .checks import fail as _fail
from .checks import kind as _kind
from .expressions import Expression, ExpressionError
from .functions import FunctionError, FunctionPolicy, check_function_name, import_function

__all__ = [
    "Count",
    "Derived",
    "DistinctCount",
    "EWMean",
    "First",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Ratio",
    "Std",
    "Sum",
    "TimeSince",
    "Variance",
]


class Count(FeatureSpec, tag="count", frozen=True):
    """The number of events of the key (that match ``where``); ``0`` before the first."""


class Sum(_FieldFeature, tag="sum", frozen=True):
    """The sum of ``field`` over the key's events; ``0`` before the first value."""

    numeric = True


class Mean(_FieldFeature, tag="mean", frozen=True):
    """The arithmetic mean of ``field``; ``None`` before the first value."""

    numeric = True


class Min(_FieldFeature, tag="min", frozen=True):
    """The smallest value of ``field``; ``None`` before the first value."""

    numeric = True


class Max(_FieldFeature, tag="max", frozen=True):
    """The largest value of ``field``; ``None`` before the first value."""

    numeric = True


class First(_FieldFeature, tag="first", frozen=True):
    """The value of ``field`` in the key's earliest event (by event time), of any type.

    Of events with the same time, the one ingested first wins. ``None`` before the first value.
    """


class Last(_FieldFeature, tag="last", frozen=True):
    """The value of ``field`` in the key's latest event (by event time), of any type.

    Of events with the same time, the one ingested last wins. ``None`` before the first value.
    """


class _SpreadFeature(_FieldFeature, frozen=True):
    ddof: int = 1

    numeric = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "ddof", self.ddof, 0, 1)


class Variance(_SpreadFeature, tag="variance", frozen=True):
    """The variance of ``field``: ``ddof=1`` (the default) for the sample, ``0`` for the population.

    ``None`` until there are more than ``ddof`` values.
    """


class Std(_SpreadFeature, tag="std", frozen=True):
    """The standard deviation of ``field``; ``ddof`` as for ``Variance``.

    ``None`` until there are more than ``ddof`` values.
    """


class EWMean(_FieldFeature, tag="ewm_mean", frozen=True):
    """The mean of ``field`` with weights that halve every ``half_life`` of event time.

    A value ``half_life`` older than the newest counts half as much; ``None`` before the first
    value. ``half_life`` is a duration (``"10m"``, or milliseconds) and must be > 0.
    """

    half_life: Duration

    numeric = True
    windowed = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_duration(self, "half_life", self.half_life, positive=True)

    @property
    def half_life_ms(self) -> int:
        """``half_life`` in milliseconds."""
        return parse_duration(self.half_life, field="half_life")


class DistinctCount(_FieldFeature, tag="distinct_count", frozen=True):
    """The number of distinct values of ``field``, of any type.

    Exact while the key has at most ``exact_limit`` (1 to 1,000,000) distinct values; beyond that
    a HyperLogLog sketch of ``2**precision`` registers (``precision`` 4 to 16) estimates it, with
    a typical relative error of ``1.04 / sqrt(2**precision)`` (about 3% at the default 10).
    """

    exact_limit: int = 1000
    precision: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "exact_limit", self.exact_limit, 1, 1_000_000)
        _check_int(self, "precision", self.precision, 4, 16)


class TimeSince(FeatureSpec, tag="time_since", frozen=True):
    """Milliseconds between the key's newest event time and its second-newest one.

    Both are times of the key's events (of its matching events, with a ``where``), out of order
    or not; equal times give ``0``. ``None`` until the key has two events.
    """

    windowed = None


class Ratio(FeatureSpec, tag="ratio", frozen=True):
    """The value of feature ``numerator`` divided by the value of feature ``denominator``.

    Both are names of other features of the same set (ratios included, without cycles).
    ``None`` while either has no value or the denominator is zero; an operand value that is
    not a number is a ``FeatureValueError``. A ratio takes no ``where``: put it on the operands.
    """

    numerator: str
    denominator: str

    windowed = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.where is not None:
            _fail(self, "where", "a ratio takes no where condition (put it on its operands)")
        if self.stream:
            _fail(self, "stream", "a ratio takes no stream (it is on its operands' stream)")
        _check_str(self, "numerator", self.numerator)
        _check_str(self, "denominator", self.denominator)

    def depends_on(self) -> tuple[str, ...]:
        return (self.numerator, self.denominator)


@functools.lru_cache(maxsize=1024)
def parse_expression(text: str) -> Expression:
    """The compiled expression of ``text``, parsed once per process.

    Raises:
        ExpressionError: not an expression of the language.
    """
    return Expression(text)


class Derived(FeatureSpec, tag="derived", frozen=True):
    """A value computed from other features of the same key: an expression over their names,
    or, in Python, a function of their values.

    ``expr`` is an expression (``"spend_1h / max(count_1h, 1)"``, ``"clip(score, 0, 1)"``):
    the language of ``docs/features.md#derived``, checked when the spec loads, never
    evaluated as Python. Each name in it is a feature of the set (derived ones included,
    without cycles). In Python, ``expr`` may instead be a function that takes a dict of the
    values of the features named in ``uses`` (its ``"module:function"`` name in a spec file,
    resolved as a join's functions are). A function that raises, like an operand of the wrong
    type, is a ``FeatureValueError`` for the feature; its value is then None.

    A derived feature holds no state: it is computed wherever values are produced (each
    update, ``get``, ``get_many``). It takes no ``where``, ``window`` or ``stream``: it is on
    its operands' stream and windowed through them (which must all be windowed or none).
    """

    #: an expression, a function of the values of ``uses``, or a function's name
    expr: Any
    uses: tuple[str, ...] = ()

    windowed = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.where is not None:
            _fail(
                self, "where", "a derived feature takes no where condition (put it on its inputs)"
            )
        if self.stream:
            _fail(self, "stream", "a derived feature takes no stream (it is on its inputs' stream)")
        if not isinstance(self.uses, list | tuple):
            _fail(self, "uses", f"expected a list of feature names, got {_kind(self.uses)}")
        msgspec.structs.force_setattr(self, "uses", tuple(self.uses))
        for index, name in enumerate(self.uses):
            _check_name(self, f"uses[{index}]", name)
        if callable(self.expr) or _is_function_name(self.expr):
            if not self.uses:
                _fail(self, "uses", "a derived function needs the features it reads in uses")
            if len(set(self.uses)) < len(self.uses):
                _fail(self, "uses", "a feature is named twice")
            return
        if not isinstance(self.expr, str):
            _fail(self, "expr", f"expected an expression or a function, got {_kind(self.expr)}")
        if self.uses:
            _fail(
                self,
                "uses",
                "an expression names its inputs itself: give uses with a function only",
            )
        try:
            expression = parse_expression(self.expr)
        except ExpressionError as exc:
            _fail(self, "expr", f"{exc}: {self.expr[:200]!r}")
        if not expression.names:
            _fail(self, "expr", f"reads no feature: {self.expr[:200]!r}")

    def _built_in_python(self) -> None:
        """Called by ``SpecMeta`` after it is built in Python (never when decoded): a
        ``"module:function"`` name is the application's own code, imported at once."""
        if isinstance(self.expr, str) and _is_function_name(self.expr):
            try:
                msgspec.structs.force_setattr(self, "expr", import_function(self.expr))
            except FunctionError as exc:
                _fail(self, "expr", str(exc))

    def resolve_functions(self, policy: FunctionPolicy) -> None:
        """Replace a decoded ``"module:function"`` name by the function ``policy`` allows.

        Raises:
            SpecError: the name is not allowed or leads to no function.
        """
        if isinstance(self.expr, str) and _is_function_name(self.expr):
            try:
                msgspec.structs.force_setattr(self, "expr", policy.resolve(self.expr))
            except FunctionError as exc:
                _fail(self, "expr", str(exc))

    def depends_on(self) -> tuple[str, ...]:
        if isinstance(self.expr, str) and not _is_function_name(self.expr):
            return parse_expression(self.expr).names
        return self.uses

    def combiner(self) -> Callable[..., Any]:
        """A function of the values of ``depends_on()``, in order, that returns the value.

        It raises ``FeatureValueError`` for an operand of the wrong type, or a function that
        raised; a function's result that is NaN or an infinity is None.

        Raises:
            SpecError: the function is still a name (decoded without a loader).
        """
        if isinstance(self.expr, str):
            if _is_function_name(self.expr):
                _fail(
                    self,
                    "expr",
                    f"{self.expr!r} was decoded without a loader: load spec files with "
                    "FeatureSet.from_file (or from_toml, from_json, ...), which resolve it",
                )
            return parse_expression(self.expr).function
        return _call_with_dict(self.expr, self.uses, self.name)


def _is_function_name(value: object) -> bool:
    if not isinstance(value, str) or ":" not in value:
        return False
    try:
        check_function_name(value)
    except FunctionError:
        return False
    return True


def _call_with_dict(
    function: Callable[[Mapping[str, Any]], Any], uses: tuple[str, ...], name: str
) -> Callable[..., Any]:
    def combine(*values: Any) -> Any:
        try:
            value = function(dict(zip(uses, values, strict=True)))
        except FeaturistError:
            raise
        except Exception as exc:
            raise FeatureValueError(
                f"derived feature {name!r}: its function raised {type(exc).__name__}: {exc}",
                field=name,
            ) from exc
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return combine
