"""Drift monitors in specs, and what they give back (``docs/drift.md``).

A :class:`DriftMonitor` watches one feature's values with one detector: :class:`PageHinkley`
or :class:`ADWIN` (change in the mean of the stream itself), :class:`PSI` or :class:`KS`
(the stream's recent values against a :class:`Reference` sample). Detectors are ``msgspec``
structs tagged by ``type``, validated when they are made; a broken rule raises ``SpecError``
naming the field, e.g. ``<python>: PSI.bins: must be between 2 and 100, got 1``.

A monitor reports a drift as a :class:`DriftAlert` (``rt.drift_alerts()``) and its state as
a :class:`DriftStatus` (``rt.drift_status()``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias, get_args

import msgspec
import msgspec.structs

from .._duration import Duration, parse_duration
from .checks import SpecMeta as _SpecMeta
from .checks import check_duration as _check_duration
from .checks import check_int as _check_int
from .checks import check_name as _check_name
from .checks import fail as _fail
from .checks import kind as _kind

__all__ = [
    "ACTIONS",
    "ADWIN",
    "DETECTOR_TYPES",
    "Detector",
    "DriftAction",
    "DriftAlert",
    "DriftMonitor",
    "DriftSegmentStatus",
    "DriftStatus",
    "KS",
    "PSI",
    "PageHinkley",
    "Reference",
]

DriftAction: TypeAlias = Literal["notify", "reset", "adopt_reference"]
#: What a monitor does after an alert (``DriftMonitor.action``).
ACTIONS: tuple[str, ...] = get_args(DriftAction)
Direction: TypeAlias = Literal["up", "down", "both"]
_DIRECTIONS: tuple[str, ...] = get_args(Direction)
MonitorInput: TypeAlias = Literal["update", "close"]
_INPUTS: tuple[str, ...] = get_args(MonitorInput)

#: The most values a reference holds (``Reference.max_size``) and a live window
#: (``window``): the monitor's memory per segment is bounded by them.
MAX_SAMPLE = 1_000_000


def _check_number(
    owner: object,
    path: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    open_low: bool,
    open_high: bool = False,
) -> None:
    """A finite int or float from ``low`` to ``high``, each bound excluded when open."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(owner, path, f"expected a finite number, got {_kind(value)} {value!r}")
    if (value <= low if open_low else value < low) or (
        value >= high if open_high else value > high
    ):
        lower = f"> {low:g}" if open_low else f">= {low:g}"
        upper = f"< {high:g}" if open_high else f"<= {high:g}"
        bound = lower if high == math.inf else f"{lower} and {upper}"
        _fail(owner, path, f"must be {bound}, got {value!r}")


class Reference(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=_SpecMeta,
):
    """The sample a two-sample detector (:class:`PSI`, :class:`KS`) compares live values with.

    Give exactly one of:

    - ``values``: training values (finite numbers, at least one); shared by every segment.
      More than ``max_size`` are thinned to ``max_size`` evenly spaced order statistics,
      which keeps their distribution;
    - ``start`` and ``end``: the values of the stream with event time in ``[start, end)``
      (milliseconds since the epoch), captured by each segment as they arrive. The reference
      is complete when the first value at or after ``end`` arrives; values before ``start``
      are ignored. A segment that saw no value in the range has no reference and never alerts
      (``DriftSegmentStatus.phase`` says ``"no_reference"``);
    - ``first``: a duration: each segment's values over that span of event time from its first
      value;
    - ``count``: each segment's first ``count`` values (1 to ``max_size``).

    A captured reference holds at most ``max_size`` values (1 to 1,000,000; default 10,000):
    beyond that it is a uniform sample of the range (reservoir sampling with a fixed seed, so
    the same stream gives the same reference).
    """

    values: tuple[float, ...] | None = None
    start: int | None = None
    end: int | None = None
    first: Duration | None = None
    count: int | None = None
    max_size: int = 10_000

    def __post_init__(self) -> None:
        _check_int(self, "max_size", self.max_size, 1, MAX_SAMPLE)
        given = [
            name
            for name, value in (
                ("values", self.values),
                ("start/end", self.start if self.start is not None else self.end),
                ("first", self.first),
                ("count", self.count),
            )
            if value is not None
        ]
        if len(given) != 1:
            shown = ", ".join(given) if given else "none"
            _fail(
                self,
                "values",
                f"give exactly one of values, start and end, first or count (got {shown})",
            )
        if self.values is not None:
            if not isinstance(self.values, list | tuple):
                _fail(self, "values", f"expected a list of numbers, got {_kind(self.values)}")
            if not self.values:
                _fail(self, "values", "needs at least one value")
            for index, value in enumerate(self.values):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    _fail(self, f"values[{index}]", f"expected a finite number, got {value!r}")
            msgspec.structs.force_setattr(self, "values", tuple(float(v) for v in self.values))
        if self.start is not None or self.end is not None:
            for name in ("start", "end"):
                value = getattr(self, name)
                if value is None:
                    _fail(self, name, "start and end go together: give both")
                if not isinstance(value, int) or isinstance(value, bool):
                    _fail(self, name, f"expected event time in ms (an int), got {_kind(value)}")
            assert self.start is not None and self.end is not None
            if self.end <= self.start:
                _fail(self, "end", f"must be after start ({self.start}), got {self.end}")
        if self.first is not None:
            _check_duration(self, "first", self.first, positive=True)
        if self.count is not None:
            _check_int(self, "count", self.count, 1, self.max_size)

    @property
    def mode(self) -> str:
        """``"values"``, ``"range"``, ``"first"`` or ``"count"``: how the reference is made."""
        if self.values is not None:
            return "values"
        if self.start is not None:
            return "range"
        return "first" if self.first is not None else "count"

    @property
    def first_ms(self) -> int:
        assert self.first is not None
        return parse_duration(self.first, field="first")


class _Detector(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
    metaclass=_SpecMeta,
):
    @property
    def type_name(self) -> str:
        """The detector's ``type`` tag, such as ``"psi"``."""
        return str(type(self).__struct_config__.tag)


class PageHinkley(_Detector, tag="page_hinkley", frozen=True):
    """The Page-Hinkley test: a change in the mean of the stream, in either ``direction``
    (``"up"``, ``"down"`` or ``"both"``, the default).

    For an increase it keeps ``m_T = sum over t <= T of (x_t - mean_t - delta)``, with
    ``mean_t`` the mean of the first ``t`` values, and signals when ``m_T - min(m_t)`` exceeds
    ``threshold`` (a decrease mirrors it). ``delta`` (>= 0; default 0.005) is the size of change
    tolerated per value, ``threshold`` (> 0; default 50) the evidence needed: both are in the
    feature's units, so scale them to the values watched. No signal before ``min_instances``
    values (1 to 1,000,000; default 30). O(1) per value.
    """

    delta: float = 0.005
    threshold: float = 50.0
    min_instances: int = 30
    direction: Direction = "both"

    def __post_init__(self) -> None:
        _check_number(self, "delta", self.delta, low=0, open_low=False)
        _check_number(self, "threshold", self.threshold, low=0, open_low=True)
        _check_int(self, "min_instances", self.min_instances, 1, MAX_SAMPLE)
        if self.direction not in _DIRECTIONS:
            known = ", ".join(_DIRECTIONS)
            _fail(self, "direction", f"unknown direction {self.direction!r} (known: {known})")


class ADWIN(_Detector, tag="adwin", frozen=True):
    """ADWIN (Bifet and Gavaldà, 2007): a window that grows while the stream's mean is steady
    and drops its older part when two parts of it differ.

    The window is an exponential histogram (ADWIN2): at most ``max_buckets`` buckets (2 to
    100; default 5) of each size 1, 2, 4, ..., so it takes O(log W) memory for W values.
    Every ``clock`` values (1 to 10,000; default 32) it tries each bucket boundary as a cut
    into an older part W0 and a newer part W1, each of at least ``min_window`` values (1 to
    10,000; default 5), and signals a change when ``|mean(W0) - mean(W1)| > eps_cut`` with
    ``eps_cut = sqrt(2 / m * var(W) * ln(2 / d)) + 2 / (3 m) * ln(2 / d)``, where ``m`` is the
    harmonic mean of the parts' sizes and ``d = delta / ln(len(W))`` (the bound of the paper
    for the cuts of an exponential histogram, as MOA and River use it). ``delta`` (in
    (0, 1); default 0.002) bounds the rate of false alarms. No check before ``grace_period``
    values (1 to 1,000,000; default 10). Amortized O(log W) per value.

    The second term of the bound assumes values of order 1 (the paper's are in [0, 1]); for
    values of a much smaller scale, the bound is loose and changes are found late.
    """

    delta: float = 0.002
    clock: int = 32
    max_buckets: int = 5
    min_window: int = 5
    grace_period: int = 10

    def __post_init__(self) -> None:
        _check_number(self, "delta", self.delta, low=0, high=1, open_low=True, open_high=True)
        _check_int(self, "clock", self.clock, 1, 10_000)
        _check_int(self, "max_buckets", self.max_buckets, 2, 100)
        _check_int(self, "min_window", self.min_window, 1, 10_000)
        _check_int(self, "grace_period", self.grace_period, 1, MAX_SAMPLE)


class _TwoSample(_Detector, frozen=True):
    """A detector that compares a live window with a reference."""

    reference: Reference
    window: int = 500
    span: Duration | None = None
    min_window: int = 100
    every: int = 25

    def __post_init__(self) -> None:
        if not isinstance(self.reference, Reference):
            _fail(self, "reference", f"expected a Reference, got {_kind(self.reference)}")
        _check_int(self, "window", self.window, 1, MAX_SAMPLE)
        if self.span is not None:
            _check_duration(self, "span", self.span, positive=True)
        _check_int(self, "min_window", self.min_window, 1, self.window)
        _check_int(self, "every", self.every, 1, MAX_SAMPLE)

    @property
    def span_ms(self) -> int | None:
        return None if self.span is None else parse_duration(self.span, field="span")


class PSI(_TwoSample, tag="psi", frozen=True):
    """The population stability index between the reference and the live window.

    The reference's quantiles cut the line into ``bins`` bins (2 to 100; default 10; fewer
    where the reference has ties); with ``r_i`` and ``l_i`` the shares of the reference and
    of the live window in bin ``i``, each smoothed as ``(p + epsilon) / (1 + bins *
    epsilon)`` so that an empty bin costs a finite amount, ``PSI = sum of (l_i - r_i) *
    ln(l_i / r_i)``. ``epsilon`` is in (0, 0.1) (default 1e-4).

    The usual reading: below 0.1, no significant change; 0.1 to 0.25, a moderate one worth a
    look; above 0.25 (the default ``threshold``, > 0), a significant shift. Two samples of
    one distribution score about ``(bins - 1) * (1 / n + 1 / m)`` by chance (``n`` and ``m``
    their sizes), so keep ``window`` (default 500) at several times ``bins / threshold``.

    The live window is the last ``window`` values (1 to 1,000,000), and with ``span`` (a
    duration) only those within ``span`` of event time of the newest. The index is computed
    every ``every`` values (default 25) once the window holds ``min_window`` (1 to ``window``;
    default 100). O(log bins + bins / every) per value.
    """

    bins: int = 10
    epsilon: float = 1e-4
    threshold: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "bins", self.bins, 2, 100)
        _check_number(self, "epsilon", self.epsilon, low=0, high=0.1, open_low=True)
        _check_number(self, "threshold", self.threshold, low=0, open_low=True)


class KS(_TwoSample, tag="ks", frozen=True):
    """The two-sample Kolmogorov-Smirnov test between the reference and the live window.

    The statistic ``D`` is the largest gap between the two samples' distribution functions;
    the monitor signals when its p-value is below ``alpha`` (in (0, 1); default 1e-4). The
    p-value is exact (the count of lattice paths of Hodges, 1957, O(n * m) per test) when
    ``n * m``, the product of the samples' sizes, is at most ``exact_below`` (0 to 100,000;
    default 10,000), else
    from the asymptotic Kolmogorov distribution with Stephens' correction
    ``(sqrt(N) + 0.12 + 0.11 / sqrt(N)) * D``, ``N = n * m / (n + m)``. Ties make the
    p-value conservative.

    Window as for :class:`PSI`; the test runs every ``every`` values (default 25) once the
    window holds ``min_window`` (default 50): a value costs O(log m) to place in the
    reference, and a test sorts the window, O(n log n / every) a value.

    ``alpha`` is the chance of a false alarm *per test*, and a monitor tests again and again:
    over a long stable stream, the tests of windows that do not overlap are chances of their
    own. Hence the small default; a real shift of a window of hundreds of values has a
    p-value far below it.
    """

    alpha: float = 1e-4
    exact_below: int = 10_000
    min_window: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_number(self, "alpha", self.alpha, low=0, high=1, open_low=True, open_high=True)
        _check_int(self, "exact_below", self.exact_below, 0, 100_000)


Detector: TypeAlias = PageHinkley | ADWIN | PSI | KS
#: The ``type`` tags of the detectors.
DETECTOR_TYPES: tuple[str, ...] = tuple(
    str(cls.__struct_config__.tag) for cls in (PageHinkley, ADWIN, PSI, KS)
)
_DETECTOR_CLASSES = (PageHinkley, ADWIN, PSI, KS)


class DriftMonitor(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, metaclass=_SpecMeta
):
    """Watch one feature's values for drift (``await rt.monitor_drift(monitor)``).

    Args:
        name: the monitor's name, unique in the runtime (letters, digits and ``_``).
        feature: the feature watched.
        detector: a :class:`PageHinkley`, :class:`ADWIN`, :class:`PSI` or :class:`KS`.
        segment: None (the default) for one detector over every key's values; ``"key"`` for
            one per entity key; or the name of a feature of the same group (the same stream,
            and windowed like ``feature`` or not) whose value after each event picks the
            detector (say, the key's site or model version).
        max_segments: the most segments (1 to 1,000,000; default 1000). A value of a new
            segment beyond it is refused and counted (``segments_refused``).
        action: after an alert, ``"notify"`` (the default: the alert only; the monitor alerts
            again once the detector has come back below its threshold and crosses it anew),
            ``"reset"`` (the detector's live state starts over) or ``"adopt_reference"`` (the
            values after the alert become the reference). ``docs/drift.md`` has what each
            means for each detector.
        on: ``"update"`` (the default) watches the feature's value after each event;
            ``"close"`` its final value for each window that closes (a windowed feature
            with tumbling, hopping or session windows).
        buffer: updates held for the monitor between two of its turns (1 to 10,000,000;
            default 65,536). A monitor never slows the features down: when it falls this far
            behind, the oldest updates are dropped and counted (``DriftStatus.dropped``).
    """

    name: str
    feature: str
    detector: Detector
    segment: str | None = None
    max_segments: int = 1000
    action: DriftAction = "notify"
    on: MonitorInput = "update"
    buffer: int = 65_536

    def __post_init__(self) -> None:
        _check_name(self, "name", self.name)
        _check_name(self, "feature", self.feature)
        if not isinstance(self.detector, _DETECTOR_CLASSES):
            _fail(
                self,
                "detector",
                f"expected PageHinkley, ADWIN, PSI or KS, got {_kind(self.detector)}",
            )
        if self.segment is not None:
            _check_name(self, "segment", self.segment)
            if self.segment == self.feature:
                _fail(self, "segment", f"cannot be the watched feature {self.feature!r}")
        _check_int(self, "max_segments", self.max_segments, 1, MAX_SAMPLE)
        if self.action not in ACTIONS:
            _fail(self, "action", f"unknown action {self.action!r} (known: {', '.join(ACTIONS)})")
        if self.on not in _INPUTS:
            _fail(self, "on", f"unknown input {self.on!r} (known: {', '.join(_INPUTS)})")
        _check_int(self, "buffer", self.buffer, 1, 10_000_000)


class DriftAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A drift a monitor found, from ``rt.drift_alerts()``."""

    #: the monitor, the feature it watches and the detector's ``type``
    monitor: str
    feature: str
    detector: str
    #: the segment's value (the key, or the segment feature's value); None without segments
    segment: Any
    #: the entity key and the event time (ms) of the value that set the alert off
    key: Any
    event_time: int
    #: wall-clock time of the alert (seconds since the epoch; the runtime's clock)
    wall_time: float
    #: the detector's score and the threshold it crossed: Page-Hinkley's statistic and
    #: ``threshold``; ADWIN's gap between the means of the cut's two parts and ``eps_cut``;
    #: PSI and its ``threshold``; KS's statistic D and the smallest D whose p-value is below
    #: ``alpha`` for the samples' sizes (the decision compares ``p_value`` with ``alpha``)
    score: float
    threshold: float
    #: KS's p-value (None for the others)
    p_value: float | None
    #: the values behind the reference and in the live window when it fired
    reference_size: int
    window_size: int
    #: what the monitor did: ``"notify"``, ``"reset"`` or ``"adopt_reference"``
    action: str
    #: alerts of this monitor and segment so far, this one included
    count: int


class DriftSegmentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One segment of a monitor, in ``DriftStatus.segments``."""

    #: the segment's value (None for a monitor without segments)
    segment: Any
    #: ``"reference"`` (capturing its reference), ``"no_reference"`` (its range passed with
    #: no value in it), ``"warming"`` (too few values to test yet) or ``"live"``
    phase: str
    #: the detector's latest score (None before the first test), its threshold (as in
    #: :class:`DriftAlert`) and KS's p-value
    score: float | None
    threshold: float | None
    p_value: float | None
    #: whether the detector is beyond its threshold now
    drifting: bool
    #: values seen and alerts raised
    values: int
    alerts: int
    #: values behind the reference (Page-Hinkley: behind its running mean; ADWIN: its
    #: window) and in the live window
    reference_size: int
    window_size: int
    #: the event time of the latest alert (ms), or None
    last_alert_time: int | None


class DriftStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One monitor's state, from ``rt.drift_status()``: its metrics."""

    monitor: str
    feature: str
    detector: str
    action: str
    #: the ``segment`` option: None, ``"key"`` or a feature name
    segment_by: str | None
    #: values run through a detector
    values: int
    #: updates of the feature whose value could not be watched: None (no value yet), not a
    #: finite number, the feature's error, or no segment value
    skipped: int
    #: updates dropped because the monitor fell ``buffer`` updates behind
    dropped: int
    #: values of new segments refused beyond ``max_segments``
    segments_refused: int
    #: values a detector failed on (a bug: each is in dead letters with the error)
    failed: int
    #: alerts raised, in all
    alerts: int
    #: each segment, in the order they appeared
    segments: tuple[DriftSegmentStatus, ...]

    def segment(self, value: Any) -> DriftSegmentStatus:
        """The status of the segment ``value`` (None for a monitor without segments).

        Raises:
            KeyError: the monitor has no such segment (yet).
        """
        for status in self.segments:
            if status.segment == value:
                return status
        raise KeyError(f"monitor {self.monitor!r} has no segment {value!r}")
