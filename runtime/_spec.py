"""The feature set specification: which features to compute from which event fields.

A ``FeatureSet`` names the event fields that hold the key and the event time, and lists the
features. Each feature is one of the ``msgspec`` structs below, tagged by its ``type``. A set
is built in Python or loaded from TOML, JSON or YAML; either way it is validated completely
when it is created, and every problem raises ``SpecError`` with a message that starts with the
source (a file path, ``<python>`` or a given name) and names the field::

    fraud.toml: features[3].denominator: no feature named 'tx_cnt' (known: tx_count, ...)
    <python>: EWMean.half_life: must be > 0, got '0s'

Values that a feature reads: a missing field and a field that is ``None`` are skipped, as SQL
aggregates skip NULL: the event leaves the feature's value unchanged. Numeric features (sum,
mean, min, max, variance, std, ewm_mean) need a number: an ``int``, a finite ``float``, or a
value with ``__float__`` (such as ``Decimal``). A ``bool``, a string, NaN or an infinity is a
``FeatureValueError`` for that feature and that event only: the other features go on.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias, cast, get_args

import msgspec
import msgspec.json
import msgspec.structs
import msgspec.toml
import msgspec.yaml

from ._duration import Duration, parse_duration
from ._exceptions import FeatureValueError, SpecError, UnknownFeature
from ._quantiles import PERCENTILE_METHODS
from ._spec_checks import MAX_NAME_LENGTH
from ._spec_checks import check_duration as _check_duration
from ._spec_checks import check_int as _check_int
from ._spec_checks import check_name as _check_name
from ._spec_checks import check_str as _check_str
from ._spec_checks import fail as _fail
from ._spec_checks import kind as _kind
from ._spec_errors import explain
from ._spec_window import (
    EMIT_MODES,
    LATE_POLICIES,
    WINDOW_TYPES,
    EmitMode,
    LatePolicy,
    Sliding,
    Window,
)

__all__ = [
    "DEFAULT_STREAM",
    "FEATURE_TYPES",
    "MAX_NAME_LENGTH",
    "OPS",
    "TIME_UNITS",
    "Count",
    "DistinctCount",
    "EWMean",
    "Feature",
    "FeatureSet",
    "FeatureSpec",
    "First",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Op",
    "Percentile",
    "PercentileMethod",
    "Quantile",
    "Ratio",
    "SequencePattern",
    "Std",
    "Step",
    "Sum",
    "TimeSince",
    "TimeUnit",
    "TopK",
    "Variance",
    "Where",
    "ZScore",
]

Op: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
#: The operators of a ``Where`` condition.
OPS: tuple[str, ...] = get_args(Op)
TimeUnit: TypeAlias = Literal["ms", "s", "us", "ns"]
#: The units of numeric event times.
TIME_UNITS: tuple[str, ...] = get_args(TimeUnit)

PercentileMethod: TypeAlias = Literal["nearest_rank", "linear"]
#: The stream of a feature set that names none.
DEFAULT_STREAM = "events"

_LIST_OPS = frozenset({"in", "not_in"})
_ORDER_OPS = frozenset({"<", "<=", ">", ">="})
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda actual, values: actual in values,
    "not_in": lambda actual, values: actual not in values,
}


def _check_fraction(owner: object, path: str, value: object, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(owner, path, f"expected a number, got {_kind(value)}")
    if not 0 <= value <= high:
        _fail(owner, path, f"must be between 0 and {high}, got {value!r}")


def _check_scalar(owner: object, path: str, value: object, op: str) -> None:
    if value is None:
        _fail(owner, path, "must not be null (a missing or null event field never matches)")
    if not isinstance(value, str | int | float):
        _fail(owner, path, f"op {op!r} needs a string, number or boolean, got {_kind(value)}")
    if isinstance(value, float) and math.isnan(value):
        _fail(owner, path, "must not be NaN (NaN equals nothing)")


class Where(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A condition on one event field: ``field op value``, such as ``status == 'declined'``.

    A feature with a ``where`` sees only the events that match it. ``in`` and ``not_in`` take a
    non-empty list of values (kept as a tuple); the other operators take one string, number or
    boolean, and ``<``, ``<=``, ``>``, ``>=`` take a string or a number.

    An event whose field is missing or ``None`` matches nothing, not even ``!=`` or ``not_in``,
    as a NULL compares in SQL: ``status != 'ok'`` does not select events without a status.
    """

    field: str
    op: Op = "=="
    value: Any

    def __post_init__(self) -> None:
        _check_str(self, "field", self.field)
        if self.op not in OPS:
            _fail(self, "op", f"unknown operator {self.op!r} (known: {', '.join(OPS)})")
        if self.op in _LIST_OPS:
            if not isinstance(self.value, list | tuple):
                _fail(self, "value", f"op {self.op!r} needs a list, got {_kind(self.value)}")
            if not self.value:
                _fail(self, "value", f"op {self.op!r} needs a non-empty list")
            for index, item in enumerate(self.value):
                _check_scalar(self, f"value[{index}]", item, self.op)
            msgspec.structs.force_setattr(self, "value", tuple(self.value))
        else:
            _check_scalar(self, "value", self.value, self.op)
            if self.op in _ORDER_OPS and isinstance(self.value, bool):
                _fail(self, "value", f"op {self.op!r} needs a string or a number, got bool")

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Return whether ``event`` satisfies the condition.

        Raises:
            FeatureValueError: an ordering operator cannot compare the event's value with the
                condition's (a string with a number, for example).
        """
        actual = event.get(self.field)
        if actual is None:
            return False
        try:
            return bool(_OPERATORS[self.op](actual, self.value))
        except TypeError:
            raise FeatureValueError(
                f"{self.field}: cannot compare {actual!r} for {self.describe()}",
                field=self.field,
            ) from None

    def describe(self) -> str:
        """Return the condition as text: ``status == 'declined'``, ``country in ['US', 'CA']``."""
        if self.op in _LIST_OPS:
            shown = "[" + ", ".join(repr(item) for item in self.value) + "]"
        else:
            shown = repr(self.value)
        return f"{self.field} {self.op} {shown}"


class FeatureSpec(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
):
    """Fields shared by every feature: its ``name``, an optional ``where`` and a ``description``.

    Names match ``[A-Za-z_][A-Za-z0-9_]*`` and have at most 100 characters.
    """

    name: str
    where: Where | None = None
    description: str = ""
    window: Window | None = None
    stream: str = ""

    #: Whether the feature needs a number in its field.
    numeric: ClassVar[bool] = False
    #: Whether the feature may take a ``window`` (``False``), must (``True``) or cannot (None).
    windowed: ClassVar[bool | None] = False
    #: Whether the feature runs on event time (with the windowed features) even without a window.
    event_time: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_name(self, "name", self.name)
        if self.where is not None and not isinstance(self.where, Where):
            _fail(self, "where", f"expected a Where or None, got {_kind(self.where)}")
        _check_str(self, "description", self.description, empty=True)
        if self.stream:
            _check_name(self, "stream", self.stream)
        if self.window is not None:
            if type(self.window) not in _WINDOW_CLASSES:
                known = ", ".join(WINDOW_TYPES)
                _fail(self, "window", f"expected a window ({known}), got {_kind(self.window)}")
            if self.windowed is None:
                _fail(self, "window", f"{self.type_name} features cannot be windowed")
        elif self.windowed:
            _fail(self, "window", f"{self.type_name} features need a window")

    @property
    def type_name(self) -> str:
        """The feature's ``type`` tag, such as ``"sum"``."""
        return str(type(self).__struct_config__.tag)

    def inputs(self) -> tuple[str, ...]:
        """Return the event fields the feature reads: its ``field``, then its ``where`` field."""
        return () if self.where is None else (self.where.field,)

    def depends_on(self) -> tuple[str, ...]:
        """Return the names of the other features whose values this one is computed from."""
        return ()


class _FieldFeature(FeatureSpec, frozen=True):
    field: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_str(self, "field", self.field)

    def inputs(self) -> tuple[str, ...]:
        if self.where is None or self.where.field == self.field:
            return (self.field,)
        return (self.field, self.where.field)


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


class Percentile(_FieldFeature, tag="percentile", frozen=True):
    """The exact ``q``-th percentile (``q`` in [0, 100]) of ``field`` over a window.

    ``method``: ``"nearest_rank"`` (the default; one of the values, the smallest with at least
    ``q`` % of the values at or below it) or ``"linear"`` (interpolated between the two closest
    ranks, as numpy's default). Needs a window, which bounds the values held; each update costs
    O(log w) for ``w`` values in the window. ``None`` for an empty window.
    """

    q: float
    method: PercentileMethod = "nearest_rank"

    numeric = True
    windowed = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction(self, "q", self.q, 100)
        if self.method not in PERCENTILE_METHODS:
            known = ", ".join(PERCENTILE_METHODS)
            _fail(self, "method", f"unknown method {self.method!r} (known: {known})")


class Quantile(_FieldFeature, tag="quantile", frozen=True):
    """The approximate ``q``-quantile (``q`` in [0, 1]) of ``field`` over a window, from a
    DDSketch with relative error ``relative_accuracy`` (default 0.01, in (0, 1)).

    The sketch holds bin counts, not values: its size grows with the logarithm of the range of
    magnitudes, not with the number of events. The answer ``y`` for the value ``x`` at rank
    ``floor(q * (n - 1))`` satisfies ``|y - x| <= relative_accuracy * |x|``. Needs a window;
    ``None`` for an empty window.
    """

    q: float
    relative_accuracy: float = 0.01

    numeric = True
    windowed = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_fraction(self, "q", self.q, 1)
        alpha = self.relative_accuracy
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            _fail(self, "relative_accuracy", f"must be a number in (0, 1), got {alpha!r}")


class TopK(_FieldFeature, tag="top_k", frozen=True):
    """The ``k`` most frequent values of ``field`` over a window (``k`` 1 to 1000), as a list of
    ``[value, count]`` pairs, most frequent first; equal counts in value order (numbers, then
    strings, then bytes). Needs a window. An empty list for an empty window."""

    k: int = 5

    windowed = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "k", self.k, 1, 1000)


class TimeSince(FeatureSpec, tag="time_since", frozen=True):
    """Milliseconds between the key's newest event time and its second-newest one.

    Both are times of the key's events (of its matching events, with a ``where``), out of order
    or not; equal times give ``0``. ``None`` until the key has two events.
    """

    windowed = None


class ZScore(_FieldFeature, tag="zscore", frozen=True):
    """How unusual the key's latest value of ``field`` is: ``(x - mean) / std`` against the
    values of a sliding window before it (the sample standard deviation).

    Needs a ``Sliding`` window. ``None`` while the window holds fewer than ``min_count``
    values (2 to 1,000,000; default 10) or they are all equal. An event whose ``|z|`` reaches
    ``threshold`` (> 0, default 3.0) is also emitted as an ``"anomaly"`` update.
    """

    threshold: float = 3.0
    min_count: int = 10

    numeric = True
    windowed = True

    def __post_init__(self) -> None:
        super().__post_init__()
        threshold = self.threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold < math.inf
        ):
            _fail(self, "threshold", f"must be a number > 0, got {threshold!r}")
        _check_int(self, "min_count", self.min_count, 2, 1_000_000)
        if self.window is not None and not isinstance(self.window, Sliding):
            _fail(self, "window", f"zscore needs a sliding window, got {self.window.type_name}")


class Step(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """One step of a :class:`SequencePattern`: the event it waits for.

    ``where`` is one condition or a list of conditions that must all hold (an empty list, the
    default, matches any event); ``name`` labels the step in descriptions.
    """

    name: str = ""
    where: Where | tuple[Where, ...] = ()

    def __post_init__(self) -> None:
        _check_str(self, "name", self.name, empty=True)
        where = self.where
        if isinstance(where, Where):
            where = (where,)
        elif isinstance(where, list | tuple):
            for index, item in enumerate(where):
                if not isinstance(item, Where):
                    _fail(self, f"where[{index}]", f"expected a Where, got {_kind(item)}")
            where = tuple(where)
        else:
            _fail(self, "where", f"expected a Where or a list of them, got {_kind(where)}")
        msgspec.structs.force_setattr(self, "where", where)

    @property
    def conditions(self) -> tuple[Where, ...]:
        return cast("tuple[Where, ...]", self.where)

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` satisfies every condition (``FeatureValueError`` as ``Where``)."""
        return all(condition.matches(event) for condition in self.conditions)


class SequencePattern(FeatureSpec, tag="sequence", frozen=True):
    """The number of times the key's events matched ``steps`` in order, within ``within``.

    ``steps`` (2 to 10) are matched in event time: every event that matches the first step
    starts a partial match; a partial match takes the next event (in time) that matches its
    next step, and completes when the last step matches no later than ``within`` after its
    first event. Each match is also emitted as a ``"match"`` update with the times of its
    parts. A key keeps at most ``max_partial`` partial matches (1 to 100,000; default 1000):
    beyond that the oldest is dropped and counted. The feature's ``where`` (optional) filters
    the events every step sees. Events are put in time order by the key's watermark
    (``max_out_of_orderness``); one that arrives below the watermark is skipped and counted.
    """

    steps: tuple[Step, ...]
    within: Duration
    max_partial: int = 1000

    windowed = None
    event_time = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.steps, list | tuple):
            _fail(self, "steps", f"expected a list of steps, got {_kind(self.steps)}")
        msgspec.structs.force_setattr(self, "steps", tuple(self.steps))
        if not 2 <= len(self.steps) <= 10:
            _fail(self, "steps", f"needs 2 to 10 steps, got {len(self.steps)}")
        for index, step in enumerate(self.steps):
            if not isinstance(step, Step):
                _fail(self, f"steps[{index}]", f"expected a Step, got {_kind(step)}")
        _check_duration(self, "within", self.within, positive=True)
        _check_int(self, "max_partial", self.max_partial, 1, 100_000)

    @property
    def within_ms(self) -> int:
        return parse_duration(self.within, field="within")

    def inputs(self) -> tuple[str, ...]:
        fields = list(super().inputs())
        for step in self.steps:
            fields.extend(condition.field for condition in step.conditions)
        return tuple(dict.fromkeys(fields))


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


#: Any feature specification: the tagged union that spec files decode to.
Feature: TypeAlias = (
    Count
    | Sum
    | Mean
    | Min
    | Max
    | First
    | Last
    | Variance
    | Std
    | EWMean
    | DistinctCount
    | Percentile
    | Quantile
    | TopK
    | ZScore
    | SequencePattern
    | TimeSince
    | Ratio
)

#: Each feature class by its ``type`` tag, in documentation order.
FEATURE_TYPES: dict[str, type[FeatureSpec]] = {
    str(cls.__struct_config__.tag): cls for cls in get_args(Feature)
}


class FeatureSet(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A named set of features computed per key from one stream of events.

    Args:
        name: the set's name (same rules as a feature name).
        key: the event field that holds the key; events are grouped by it.
        time: the event field that holds the event time; it must differ from ``key``.
        time_unit: the unit of numeric event times; datetimes and ISO-8601 strings are
            accepted as they are.
        max_out_of_orderness: how far behind the newest event time an event may arrive and
            still count in order: a duration (``"5s"``, or milliseconds), 0 by default. A key's
            watermark is its newest event time minus this.
        features: at least one feature, with unique names (a list or a tuple; kept as a tuple).

    The options below concern windowed features only (``docs/windows.md``):

    Args:
        allowed_lateness: how far below its key's watermark an event may be and still update
            its windows, which stay open that much longer (a duration, 0 by default).
        late_policy: what becomes of an event later than that: ``"drop"`` (counted in the
            statistics; the default), ``"side_output"`` (delivered on ``rt.late_events()``) or
            ``"update"`` (applied to its windows, with a correction emitted for each closed one,
            as long as the window's state is kept: ``correction_horizon`` past its close).
        correction_horizon: with ``late_policy="update"``, how long (in event time) a closed
            window keeps its state for corrections; 1 hour by default.
        emit: ``"update"`` (the default) emits windowed features after every event, and a
            final value when a window closes; ``"close"`` emits only final values, and the
            feature's current value is that of its last closed window.
        idle_timeout: wall-clock time after which a quiet key's event time starts to advance
            with the wall clock, so its windows close and emit without new events (off by
            default).
        state_ttl: wall-clock time after which the state of a quiet key is dropped, in every
            feature group (off by default: keys are kept until the runtime stops).

    Raises:
        SpecError: any rule above is broken, or a ratio names a feature that is missing, is
            itself, or leads back to itself through other ratios, or mixes windowed and
            unwindowed operands.
    """

    name: str
    key: str
    time: str
    time_unit: TimeUnit = "ms"
    max_out_of_orderness: Duration = 0
    allowed_lateness: Duration = 0
    late_policy: LatePolicy = "drop"
    correction_horizon: Duration = "1h"
    emit: EmitMode = "update"
    idle_timeout: Duration | None = None
    state_ttl: Duration | None = None
    streams: Sequence[str] = ()
    features: Sequence[Feature]

    def __post_init__(self) -> None:
        _check_name(self, "name", self.name)
        _check_str(self, "key", self.key)
        _check_str(self, "time", self.time)
        if self.time == self.key:
            _fail(self, "time", f"must differ from key ({self.key!r})")
        if self.time_unit not in TIME_UNITS:
            known = ", ".join(TIME_UNITS)
            _fail(self, "time_unit", f"unknown unit {self.time_unit!r} (known: {known})")
        _check_duration(self, "max_out_of_orderness", self.max_out_of_orderness, positive=False)
        _check_duration(self, "allowed_lateness", self.allowed_lateness, positive=False)
        _check_duration(self, "correction_horizon", self.correction_horizon, positive=False)
        if self.late_policy not in LATE_POLICIES:
            known = ", ".join(LATE_POLICIES)
            _fail(self, "late_policy", f"unknown policy {self.late_policy!r} (known: {known})")
        if self.emit not in EMIT_MODES:
            _fail(self, "emit", f"unknown mode {self.emit!r} (known: {', '.join(EMIT_MODES)})")
        for option in ("idle_timeout", "state_ttl"):
            if getattr(self, option) is not None:
                _check_duration(self, option, getattr(self, option), positive=True)
        if not isinstance(self.features, list | tuple):
            _fail(self, "features", f"expected a list of features, got {_kind(self.features)}")
        msgspec.structs.force_setattr(self, "features", tuple(self.features))
        if not self.features:
            _fail(self, "features", "at least one feature is required")
        seen: dict[str, int] = {}
        for index, feature in enumerate(self.features):
            if not isinstance(feature, FeatureSpec) or type(feature) not in _CONCRETE:
                _fail(self, f"features[{index}]", f"expected a feature, got {_kind(feature)}")
            if feature.name in seen:
                reason = (
                    f"duplicate feature name {feature.name!r} (also features[{seen[feature.name]}])"
                )
                _fail(self, f"features[{index}].name", reason)
            seen[feature.name] = index
        self._check_streams()
        self._check_ratios(seen)

    def _check_streams(self) -> None:
        if not isinstance(self.streams, list | tuple):
            _fail(self, "streams", f"expected a list of names, got {_kind(self.streams)}")
        msgspec.structs.force_setattr(self, "streams", tuple(self.streams))
        for index, name in enumerate(self.streams):
            _check_name(self, f"streams[{index}]", name)
            if name in self.streams[:index]:
                _fail(self, f"streams[{index}]", f"duplicate stream {name!r}")
        known = self.stream_names
        for index, feature in enumerate(self.features):
            if feature.stream and feature.stream not in known:
                _fail(
                    self,
                    f"features[{index}].stream",
                    f"no stream named {feature.stream!r} (known: {', '.join(known)})",
                )

    def _check_ratios(self, index_of: Mapping[str, int]) -> None:
        ratios = {f.name: f for f in self.features if isinstance(f, Ratio)}
        operands = [
            (name, f"features[{index_of[name]}].{attr}", getattr(ratio, attr))
            for name, ratio in ratios.items()
            for attr in ("numerator", "denominator")
        ]
        for name, path, operand in operands:
            if operand == name:
                _fail(self, path, "a ratio cannot use itself")
            if operand not in index_of:
                known = ", ".join(n for n in index_of if n != name)
                _fail(self, path, f"no feature named {operand!r} (known: {known})")
        for name, path, operand in operands:
            trail = _path_back(operand, name, ratios)
            if trail is not None:
                _fail(self, path, f"ratios form a cycle: {' -> '.join([name, *trail])}")
        for name in ratios:
            bases = _ratio_bases(name, ratios)
            streams = sorted({self.stream_of(self.feature(b)) for b in bases})
            if len(streams) > 1:
                _fail(
                    self,
                    f"features[{index_of[name]}]",
                    f"a ratio's operands must be on one stream, got {', '.join(streams)}",
                )
            windowed = sorted(b for b in bases if self.is_windowed(b))
            plain = sorted(b for b in bases if not self.is_windowed(b))
            if windowed and plain:
                _fail(
                    self,
                    f"features[{index_of[name]}]",
                    f"a ratio cannot mix windowed ({', '.join(windowed)}) and unwindowed "
                    f"({', '.join(plain)}) operands",
                )

    @property
    def names(self) -> tuple[str, ...]:
        """The feature names, in order."""
        return tuple(feature.name for feature in self.features)

    @property
    def stream_names(self) -> tuple[str, ...]:
        """The streams events are ingested on: ``streams``, or the one default stream
        ``"events"``. The first is where ``ingest`` puts events without a ``stream``."""
        return tuple(self.streams) or (DEFAULT_STREAM,)

    def stream_of(self, feature: FeatureSpec) -> str:
        """The stream whose events ``feature`` sees: its ``stream``, else the first stream; a
        ratio's is its operands' (a ratio takes no ``stream`` of its own)."""
        if isinstance(feature, Ratio):
            ratios = {f.name: f for f in self.features if isinstance(f, Ratio)}
            bases = sorted(_ratio_bases(feature.name, ratios))
            if bases and bases[0] in self.names:
                return self.stream_of(self.feature(bases[0]))
        return feature.stream or self.stream_names[0]

    @property
    def max_out_of_orderness_ms(self) -> int:
        """``max_out_of_orderness`` in milliseconds."""
        return parse_duration(self.max_out_of_orderness, field="max_out_of_orderness")

    def duration_ms(self, option: str) -> int | None:
        """A duration option (``allowed_lateness``, ``idle_timeout``...) in milliseconds, or
        None when it is off."""
        value = getattr(self, option)
        return None if value is None else parse_duration(value, field=option)

    def is_windowed(self, name: str) -> bool:
        """Whether feature ``name`` is computed over windows: it has a ``window``, or it is a
        ratio of windowed features."""
        feature = self.feature(name)
        if isinstance(feature, Ratio):
            ratios = {f.name: f for f in self.features if isinstance(f, Ratio)}
            return any(self.is_windowed(b) for b in _ratio_bases(name, ratios))
        return feature.window is not None or feature.event_time

    def feature(self, name: str) -> Feature:
        """Return the feature called ``name``.

        Raises:
            UnknownFeature: the set has no such feature; the message lists the known names.
        """
        for feature in self.features:
            if feature.name == name:
                return feature
        known = ", ".join(self.names)
        raise UnknownFeature(f"feature set {self.name!r} has no feature {name!r} (known: {known})")

    def with_feature(self, feature: Feature) -> FeatureSet:
        """Return a new, validated set with ``feature`` appended.

        Raises:
            SpecError: the result is invalid (a duplicate name, a ratio operand missing...).
        """
        return msgspec.structs.replace(self, features=(*self.features, feature))

    def to_dict(self) -> dict[str, Any]:
        """Return the set as plain dicts, lists, strings and numbers (defaults left out)."""
        return cast("dict[str, Any]", _JSON_DECODER.decode(_JSON_ENCODER.encode(self)))

    def to_json(self) -> bytes:
        """Return the set as JSON that ``from_json`` reads back to an equal set."""
        return _JSON_ENCODER.encode(self)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FeatureSet:
        """Load a set from a ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file.

        Raises:
            SpecError: the format is not supported, the file cannot be read, or its content is
                not a valid set; the message starts with ``path``.
        """
        source = os.fspath(path)
        loader = _LOADERS.get(Path(source).suffix.lower())
        if loader is None:
            raise SpecError(
                f"{source}: unsupported spec format {Path(source).suffix!r} "
                "(use .toml, .json, .yaml or .yml)"
            )
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise SpecError(f"{source}: cannot read the spec file: {exc.strerror}") from exc
        return loader(data, source=source)

    @classmethod
    def from_toml(cls, data: str | bytes, *, source: str = "<string>") -> FeatureSet:
        """Load a set from TOML text; error messages start with ``source``.

        Raises:
            SpecError: the text is not TOML or not a valid set.
        """
        return _load(msgspec.toml.decode, "TOML", data, source)

    @classmethod
    def from_json(cls, data: str | bytes, *, source: str = "<string>") -> FeatureSet:
        """Load a set from JSON text; error messages start with ``source``.

        Raises:
            SpecError: the text is not JSON or not a valid set.
        """
        return _load(_JSON_DECODER.decode, "JSON", data, source)

    @classmethod
    def from_yaml(cls, data: str | bytes, *, source: str = "<string>") -> FeatureSet:
        """Load a set from YAML text; error messages start with ``source``.

        YAML reads some plain scalars as other things: quote ``"!="`` (else a YAML tag) and
        strings such as ``"NO"``, ``"yes"`` or ``"on"`` (else booleans).

        Raises:
            SpecError: the text is not YAML or not a valid set.
        """
        return _load(msgspec.yaml.decode, "YAML", data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> FeatureSet:
        """Build a set from plain data, as a spec file decodes to.

        Raises:
            SpecError: the data is not a valid set; the message starts with ``source``.
        """
        raw = dict(data) if isinstance(data, Mapping) else data
        try:
            return msgspec.convert(raw, FeatureSet)
        except msgspec.ValidationError as exc:
            # The message keeps msgspec's reason and path; its chain would only repeat them.
            explained = explain(
                exc,
                raw,
                types=FEATURE_TYPES,
                root=FeatureSet,
                condition=Where,
                windows=WINDOW_TYPES,
                choices={
                    "op": OPS,
                    "time_unit": TIME_UNITS,
                    "late_policy": LATE_POLICIES,
                    "emit": EMIT_MODES,
                    "method": PERCENTILE_METHODS,
                },
            )
            raise SpecError(f"{source}: {explained}") from None


_CONCRETE = frozenset(FEATURE_TYPES.values())
_WINDOW_CLASSES = frozenset(WINDOW_TYPES.values())
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()
_LOADERS: dict[str, Callable[..., FeatureSet]] = {
    ".toml": FeatureSet.from_toml,
    ".json": FeatureSet.from_json,
    ".yaml": FeatureSet.from_yaml,
    ".yml": FeatureSet.from_yaml,
}


def _path_back(start: str, target: str, ratios: Mapping[str, Ratio]) -> list[str] | None:
    """Return the chain of ratio operands from ``start`` back to ``target``, if there is one."""
    stack = [[start]]
    seen: set[str] = set()
    while stack:
        trail = stack.pop()
        node = trail[-1]
        if node == target:
            return trail
        if node in seen or node not in ratios:
            continue
        seen.add(node)
        stack.extend([*trail, operand] for operand in reversed(ratios[node].depends_on()))
    return None


def _ratio_bases(name: str, ratios: Mapping[str, Ratio]) -> set[str]:
    """The features that are not ratios under ratio ``name``, through nested ratios."""
    bases: set[str] = set()
    stack = [name]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in ratios:
            stack.extend(ratios[node].depends_on())
        else:
            bases.add(node)
    return bases


def _load(decode: Callable[[Any], Any], fmt: str, data: str | bytes, source: str) -> FeatureSet:
    try:
        raw = decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise SpecError(f"{source}: not valid {fmt}: {detail}") from exc
    return FeatureSet.from_dict(raw, source=source)
