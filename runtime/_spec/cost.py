"""Cost estimates for features: operations, state and CPU share, before running anything.

``estimate_cost`` answers "what will this feature cost at this event rate and key count?" from
a table of per-type figures. The figures are rough and meant for comparing features and sizing a
deployment, not for promises; ``MeasuredCost`` holds what the runtime measures instead.

Per feature type (``+1`` operation per event when the feature has a ``where``):

==============  ================  =========  =====  =========================================
type            category          ops/event  bytes  state per key
==============  ================  =========  =====  =========================================
count           simple_aggregate  1          8      the count
sum             simple_aggregate  2          8      the sum (type check, add)
mean            simple_aggregate  3          16     count and mean
min, max        simple_aggregate  2          8      the extreme value
first, last     simple_aggregate  2          16     the value and its event time
variance        simple_aggregate  5          24     count, mean, squared deviations (Welford)
std             simple_aggregate  6          24     as variance, plus a square root
ewm_mean        simple_aggregate  6          24     weighted sum, weight total, last time
distinct_count  simple_aggregate  3          see    ``max(exact_limit * 60, 2**precision)``
time_since      simple_aggregate  2          16     the two newest event times
ratio           simple_aggregate  2          0      nothing: it reads two other features
derived         simple_aggregate  see        0      nothing: it reads other features
==============  ================  =========  =====  =========================================

A derived feature costs one operation per operator, comparison, condition and function call
of its expression (at least one), or ``DERIVED_FUNCTION_OPS`` for a Python function; it is
computed with each update and read, not stored.

A ``custom`` feature (a user-defined aggregate) costs its aggregate's ``update_ops`` per event
(``CUSTOM_UPDATE_OPS`` if it gives none), and its state is the aggregate's ``state_bytes`` if
it gives them, else measured: the MessagePack bytes of the ``dump`` of a state after
``CUSTOM_SAMPLE_UPDATES`` updates (with floats for a ``numeric`` aggregate, short strings for
another), or ``CUSTOM_STATE_BYTES`` if that fails. Over a window it is costed as the other
windowed features, with its state per pane; panes and sessions of an aggregate without
``merge`` also hold their values (40 bytes each); a sliding window of one with ``merge`` and
no ``remove`` keeps a state per value (two stacks), and of one with neither folds its values
again on a read after one left (``O(w)``).

Operations are the steps of one state update in plain Python; state bytes are the payload a
compact encoding (a checkpoint) holds, while the live CPython objects take several times more.
A distinct count is costed at its worst case: a key that reaches ``exact_limit`` distinct values
holds them all (about ``DISTINCT_VALUE_BYTES`` each) before it switches to a sketch of
``2**precision`` one-byte registers.

A feature with a ``window`` (and ``percentile``, ``quantile`` and ``top_k``, which always have
one) is a ``windowed_aggregate``. Its state depends on how many events a key's window holds:
``w = event_rate / keys * window seconds`` (the gap, for a session). A sliding window holds
each event (``WINDOW_ENTRY_BYTES``, plus 8 bytes in a sorted list for a percentile); a
tumbling or hopping window holds one accumulator per pane (``size / hop + 1`` panes), which
holds the values themselves for a percentile, a sketch (``SKETCH_BYTES``) for a quantile, and
the distinct values for ``top_k`` and ``distinct_count``. Window bookkeeping adds
``WINDOW_OPS`` operations per event, and a sorted list ``log2(w)``.

A ``sequence`` is a ``complex_pattern``: each event is tested against the next step of every
live partial match (``O(p)``), and a key keeps at most ``max_partial`` partial matches, costed
at their worst case (``PARTIAL_BYTES`` plus 8 bytes per step each). Later feature families
(joins) add rows to ``_PROFILES`` with their own category: ``temporal_join``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, TypeAlias

import msgspec
import msgspec.msgpack

from .._exceptions import SpecError
from .aggregate import Custom
from .base import FeatureSpec
from .feature_set import FeatureSet
from .keyed import Derived, DistinctCount, parse_expression
from .windowed import SequencePattern
from .windows import Hopping, Session, Sliding, Tumbling

__all__ = [
    "BOTTLENECK_THRESHOLD",
    "CUSTOM_SAMPLE_UPDATES",
    "CUSTOM_STATE_BYTES",
    "CUSTOM_UPDATE_OPS",
    "DERIVED_FUNCTION_OPS",
    "DISTINCT_VALUE_BYTES",
    "MEMORY_BUDGET_BYTES",
    "NS_PER_OPERATION",
    "PARTIAL_BYTES",
    "SKETCH_BYTES",
    "WINDOW_ENTRY_BYTES",
    "WINDOW_OPS",
    "Bottleneck",
    "Category",
    "CostEstimate",
    "MeasuredCost",
    "estimate_cost",
    "estimate_feature_set",
]

Category: TypeAlias = Literal[
    "simple_aggregate", "windowed_aggregate", "temporal_join", "complex_pattern"
]
#: What limits a feature first: ``"none"`` when nothing is near its limit, ``"cpu"``,
#: ``"memory"``, or ``"lookup_latency"`` (features that wait on a dimension source).
Bottleneck: TypeAlias = Literal["none", "cpu", "memory", "lookup_latency"]

#: Nanoseconds per operation: a rough figure for one step of a state update in CPython
#: (an attribute load, an add, a compare and a store together cost about this much).
NS_PER_OPERATION = 80
#: Estimated bytes per distinct value held exactly: a set slot plus a small value.
DISTINCT_VALUE_BYTES = 60
#: The memory a feature is measured against to call it memory-bound: 1 GiB.
MEMORY_BUDGET_BYTES = 1 << 30
#: The share of one core, or of ``MEMORY_BUDGET_BYTES``, from which that resource is the
#: bottleneck.
BOTTLENECK_THRESHOLD = 0.5


class _Profile(NamedTuple):
    category: Category
    time_complexity: str
    space_complexity: str
    ops_per_event: int
    state_bytes: int


_SIMPLE: Category = "simple_aggregate"
_PROFILES: dict[str, _Profile] = {
    "count": _Profile(_SIMPLE, "O(1)", "O(1)", 1, 8),
    "sum": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 8),
    "mean": _Profile(_SIMPLE, "O(1)", "O(1)", 3, 16),
    "min": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 8),
    "max": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 8),
    "first": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 16),
    "last": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 16),
    "variance": _Profile(_SIMPLE, "O(1)", "O(1)", 5, 24),
    "std": _Profile(_SIMPLE, "O(1)", "O(1)", 6, 24),
    "ewm_mean": _Profile(_SIMPLE, "O(1)", "O(1)", 6, 24),
    # The state bytes of a distinct count depend on its parameters: see _state_bytes.
    "distinct_count": _Profile(_SIMPLE, "O(1)", "O(min(n, exact_limit))", 3, 0),
    "time_since": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 16),
    "ratio": _Profile(_SIMPLE, "O(1)", "O(1)", 2, 0),
    # the operations are the expression's own: see _derived_ops
    "derived": _Profile(_SIMPLE, "O(1)", "O(1)", 0, 0),
    # the aggregate's own figures, or measured: see _custom_ops and _custom_bytes
    "custom": _Profile(_SIMPLE, "O(1)", "O(1)", 0, 0),
    # windowed only; the state is computed by _window_bytes
    "percentile": _Profile("windowed_aggregate", "O(log w)", "O(w)", 4, 8),
    "quantile": _Profile("windowed_aggregate", "O(1)", "O(log range)", 4, 0),
    "top_k": _Profile("windowed_aggregate", "O(log d)", "O(d)", 4, 0),
    "zscore": _Profile("windowed_aggregate", "O(1)", "O(1)", 8, 40),
    # per event: one test per live partial match; state: the partial matches (bounded)
    "sequence": _Profile("complex_pattern", "O(p)", "O(max_partial)", 6, 0),
}

#: Bytes per partial match a sequence keeps (a small list of times).
PARTIAL_BYTES = 120

#: Bytes per event held in a sliding window: a deque slot, a (time, value) tuple, a number.
WINDOW_ENTRY_BYTES = 100
#: Bytes of one quantile sketch at the default accuracy for typical data (a few hundred bins).
SKETCH_BYTES = 4096
#: Operations per event for window bookkeeping (lateness check, clock, eviction or pane lookup).
WINDOW_OPS = 3


class CostEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """The estimated cost of one feature at a given event rate and number of keys."""

    #: The feature's name.
    feature: str
    #: The feature's type tag, such as ``"sum"``.
    type: str
    #: The feature's family: ``simple_aggregate``, ``windowed_aggregate``, ...
    category: Category
    #: Time per event, in big-O terms.
    time_complexity: str
    #: State per key, in big-O terms (``n``: the key's events or distinct values).
    space_complexity: str
    #: State updates per second: the event rate times the operations per event.
    operations_per_second: float
    #: Estimated state per key, in bytes.
    state_bytes_per_key: int
    #: ``state_bytes_per_key`` times the number of keys.
    memory_bytes: int
    #: The share of one CPU core the feature needs, from 0.0 to 1.0.
    cpu_utilization: float
    #: What limits the feature first.
    bottleneck: Bottleneck


class MeasuredCost(msgspec.Struct, frozen=True, kw_only=True):
    """The cost of one feature as the runtime measured it; ``None`` where it has no figure yet."""

    #: The feature's name.
    feature: str
    #: The events the feature processed during the measurement.
    events: int
    #: The mean time to update the feature for one event, in microseconds.
    mean_latency_us: float | None
    #: The 99th percentile of that time, in microseconds.
    p99_latency_us: float | None
    #: The events the feature processed per second.
    events_per_second: float | None
    #: The mean state per key, in bytes.
    state_bytes_per_key: float | None


def estimate_cost(feature: FeatureSpec, *, event_rate: float, keys: int = 10_000) -> CostEstimate:
    """Estimate what one feature costs at ``event_rate`` events per second over ``keys`` keys.

    The feature sees every event (its ``where`` is evaluated for each); ``memory_bytes``
    assumes every key holds state. ``cpu_utilization`` is ``operations_per_second`` times
    ``NS_PER_OPERATION``, capped at 1.0. ``bottleneck`` is whichever of the CPU share and the
    share of ``MEMORY_BUDGET_BYTES`` is larger, once it reaches ``BOTTLENECK_THRESHOLD``;
    below that it is ``"none"``.

    Raises:
        SpecError: ``event_rate`` is not a finite number >= 0, ``keys`` is not an int >= 1, or
            the feature's type has no cost profile.
    """
    _check_load(event_rate, keys)
    return _estimate(feature, float(event_rate), keys)


def estimate_feature_set(
    feature_set: FeatureSet, *, event_rate: float, keys: int = 10_000
) -> list[CostEstimate]:
    """Estimate each feature of a set, in order; every feature sees all ``event_rate`` events.

    Raises:
        SpecError: as for ``estimate_cost``.
    """
    _check_load(event_rate, keys)
    return [_estimate(feature, float(event_rate), keys) for feature in feature_set.features]


def _check_load(event_rate: float, keys: int) -> None:
    if (
        not isinstance(event_rate, int | float)
        or isinstance(event_rate, bool)
        or not math.isfinite(event_rate)
        or event_rate < 0
    ):
        raise SpecError(f"event_rate: must be a finite number >= 0, got {event_rate!r}")
    if not isinstance(keys, int) or isinstance(keys, bool) or keys < 1:
        raise SpecError(f"keys: must be an int >= 1, got {keys!r}")


def _estimate(feature: FeatureSpec, event_rate: float, keys: int) -> CostEstimate:
    profile = _PROFILES.get(feature.type_name)
    if profile is None:
        raise SpecError(f"{feature.name}: no cost profile for feature type {feature.type_name!r}")
    ops_per_event = profile.ops_per_event + (feature.where is not None)
    if isinstance(feature, Derived):
        ops_per_event += _derived_ops(feature)
    if isinstance(feature, Custom):
        ops_per_event += _custom_ops(feature)
    category = profile.category
    time_complexity, space_complexity = profile.time_complexity, profile.space_complexity
    if feature.window is not None:
        category = "windowed_aggregate"
        held = _window_events(feature.window, event_rate, keys)
        ops_per_event += WINDOW_OPS
        if feature.type_name == "percentile":
            ops_per_event += max(1, math.ceil(math.log2(held + 1)))
        state = _window_bytes(feature, held)
        if isinstance(feature.window, Sliding):
            space_complexity = "O(w)"
            if isinstance(feature, Custom) and _lacks(feature, "remove"):
                if _lacks(feature, "merge"):
                    time_complexity = "O(1) per event in order, O(w) per read after an eviction"
                else:
                    time_complexity = "O(1) amortized (two stacks of merged states)"
            elif time_complexity == "O(1)":
                time_complexity = "O(1) amortized"
        elif isinstance(feature.window, Hopping):
            time_complexity += " per event, O(size / hop) per read"
            space_complexity = f"O(size / hop) x {space_complexity}"
    else:
        state = _state_bytes(feature, profile)
    operations = event_rate * ops_per_event
    cpu = operations * NS_PER_OPERATION / 1e9
    memory = state * keys
    return CostEstimate(
        feature=feature.name,
        type=feature.type_name,
        category=category,
        time_complexity=time_complexity,
        space_complexity=space_complexity,
        operations_per_second=operations,
        state_bytes_per_key=state,
        memory_bytes=memory,
        cpu_utilization=min(1.0, cpu),
        bottleneck=_bottleneck(cpu, memory / MEMORY_BUDGET_BYTES),
    )


def _state_bytes(feature: FeatureSpec, profile: _Profile) -> int:
    if isinstance(feature, Custom):
        return _custom_bytes(feature)
    if isinstance(feature, SequencePattern):
        # at worst max_partial partial matches of up to len(steps) times each
        return feature.max_partial * (PARTIAL_BYTES + 8 * len(feature.steps))
    if isinstance(feature, DistinctCount):
        return max(feature.exact_limit * DISTINCT_VALUE_BYTES, 1 << feature.precision)
    return profile.state_bytes


def _window_events(window: Any, event_rate: float, keys: int) -> float:
    """Events a key's window holds on average: ``w``."""
    span_ms = window.gap_ms if isinstance(window, Session) else window.size_ms
    return event_rate / keys * span_ms / 1000


def _window_bytes(feature: FeatureSpec, held: float) -> int:
    window = feature.window
    kind = feature.type_name
    if isinstance(window, Sliding):
        per_event = WINDOW_ENTRY_BYTES + (8 if kind == "percentile" else 0)
        extra = SKETCH_BYTES if kind == "quantile" else 0
        if isinstance(feature, Custom):
            extra = _custom_bytes(feature)
            if _lacks(feature, "remove") and not _lacks(feature, "merge"):
                extra += int(held * extra)  # a suffix state per value (two stacks)
        return int(held * per_event) + extra + 200
    panes = window.size_ms // window.hop_ms + 1 if isinstance(window, Tumbling | Hopping) else 2
    if isinstance(feature, Custom):
        per_pane: float = _custom_bytes(feature) + 200
        if _lacks(feature, "merge"):
            per_pane += held / max(panes - 1, 1) * 40
    elif kind == "percentile":
        per_pane = held / max(panes - 1, 1) * 40 + 200
    elif kind == "quantile":
        per_pane = SKETCH_BYTES
    elif kind in ("top_k", "distinct_count"):
        per_pane = held / max(panes - 1, 1) * DISTINCT_VALUE_BYTES + 200
    else:
        per_pane = _PROFILES[kind].state_bytes + 200
    return int(panes * per_pane)


def _bottleneck(cpu_share: float, memory_share: float) -> Bottleneck:
    if max(cpu_share, memory_share) < BOTTLENECK_THRESHOLD:
        return "none"
    return "cpu" if cpu_share >= memory_share else "memory"


#: Operations charged for a derived feature's Python function: a call with a dict of values.
DERIVED_FUNCTION_OPS = 10


def _derived_ops(feature: Derived) -> int:
    if isinstance(feature.expr, str) and not feature.uses:
        return parse_expression(feature.expr).operations
    return DERIVED_FUNCTION_OPS


#: Operations charged per event for a custom aggregate without ``update_ops``.
CUSTOM_UPDATE_OPS = 10
#: State bytes charged for a custom aggregate whose state cannot be measured.
CUSTOM_STATE_BYTES = 64
#: Updates made to measure a custom aggregate's state.
CUSTOM_SAMPLE_UPDATES = 16


def _lacks(feature: Custom, method: str) -> bool:
    return getattr(feature.aggregate, method, None) is None


def _hint(feature: Custom, name: str) -> int | None:
    value = getattr(feature.aggregate, name, None)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _custom_ops(feature: Custom) -> int:
    hint = _hint(feature, "update_ops")
    return CUSTOM_UPDATE_OPS if hint is None else hint


def _custom_bytes(feature: Custom) -> int:
    """The aggregate's ``state_bytes``, or the MessagePack bytes of the ``dump`` of a state
    after ``CUSTOM_SAMPLE_UPDATES`` updates (about what a checkpoint holds of it)."""
    hint = _hint(feature, "state_bytes")
    if hint is not None:
        return hint
    aggregate = feature.aggregate
    if isinstance(aggregate, str):
        return CUSTOM_STATE_BYTES  # a name not resolved yet: nothing to measure
    numeric = bool(getattr(aggregate, "numeric", False))
    dump = getattr(aggregate, "dump", None)
    try:
        state = aggregate.empty()
        for i in range(CUSTOM_SAMPLE_UPDATES):
            state = aggregate.update(state, i * 1.5 if numeric else f"value-{i}")
        return len(_MSGPACK.encode(state if dump is None else dump(state)))
    except Exception:  # the user's code, or a state MessagePack cannot hold: no measure
        return CUSTOM_STATE_BYTES


_MSGPACK = msgspec.msgpack.Encoder()
