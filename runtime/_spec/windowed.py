"""Features that need a window or event-time order: percentiles, quantiles, top-k, z-scores
and sequence patterns (``docs/features.md``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, cast

import msgspec
import msgspec.structs

from .._duration import Duration, parse_duration
from .base import FeatureSpec, Where, _check_fraction, _FieldFeature
from .checks import SpecMeta as _SpecMeta
from .checks import check_duration as _check_duration
from .checks import check_int as _check_int
from .checks import check_str as _check_str
from .checks import fail as _fail
from .checks import kind as _kind
from .limits import PERCENTILE_METHODS
from .windows import Sliding

__all__ = [
    "PercentileMethod",
    "Percentile",
    "Quantile",
    "SequencePattern",
    "Step",
    "TopK",
    "ZScore",
]

PercentileMethod: TypeAlias = Literal["nearest_rank", "linear"]


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
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=_SpecMeta,
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
