"""The keyed aggregates: features computed over all of a key's events, or over a window.

Each is a frozen ``msgspec`` struct tagged by its ``type``; ``runtime._keyed.kinds`` holds the
state each one updates, ``runtime._spec.windowed`` the features that need a window or event-time
order, and ``runtime._spec.feature_set`` the set that lists them.
"""

from __future__ import annotations

from .._duration import Duration, parse_duration
from .base import FeatureSpec, _FieldFeature
from .checks import check_duration as _check_duration
from .checks import check_int as _check_int
from .checks import check_str as _check_str
from .checks import fail as _fail

__all__ = [
    "Count",
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
