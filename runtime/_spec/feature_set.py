"""The feature set specification: which features to compute from which event fields.

A ``FeatureSet`` names the event fields that hold the key and the event time, and lists the
features. Each feature is a ``msgspec`` struct tagged by its ``type``: the keyed aggregates of
``runtime._spec.keyed`` and the windowed features of ``runtime._spec.windowed``. A set
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

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast, get_args

import msgspec
import msgspec.json
import msgspec.structs
import msgspec.toml
import msgspec.yaml

from .._duration import Duration, parse_duration
from .._exceptions import SpecError, UnknownFeature
from .aggregate import Custom, aggregate_name, check_aggregate
from .base import OPS, TIME_UNITS, FeatureSpec, TimeUnit, Where
from .checks import SpecMeta as _SpecMeta
from .checks import check_duration as _check_duration
from .checks import check_int as _check_int
from .checks import check_name as _check_name
from .checks import check_str as _check_str
from .checks import fail as _fail
from .checks import kind as _kind
from .computed import Computed
from .enrich import SOURCE_TYPES, Lookup, Source
from .explain import explain
from .files import ExpansionError, decode_yaml
from .functions import FunctionPolicy, function_name
from .joins import JOIN_HOWS, JOIN_MERGES, Join
from .keyed import (
    Count,
    Derived,
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
)
from .limits import (
    DEFAULT_MAX_KEY_LENGTH,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_KEY_LENGTH,
    MAX_PAYLOAD_BYTES,
    PERCENTILE_METHODS,
)
from .windowed import Percentile, Quantile, SequencePattern, TopK, ZScore
from .windows import EMIT_MODES, LATE_POLICIES, WINDOW_TYPES, EmitMode, LatePolicy

__all__ = [
    "DEFAULT_STREAM",
    "FEATURE_TYPES",
    "Feature",
    "FeatureSet",
    "encode_spec",
    "enriched_stream",
    "spec_builtins",
]

#: The stream of a feature set that names none.
DEFAULT_STREAM = "events"


def enriched_stream(stream: str) -> str:
    """The name of the stream of ``stream``'s events once enriched by its lookups: what the
    feature groups that read lookup fields read (not a name a user can give a stream)."""
    return f"@{stream}"


#: Any feature specification: the tagged union that spec files decode to.
#: what reads default to when they give no ``as_of`` (``FeatureSet.serve_as_of``)
ServeAsOf: TypeAlias = Literal["last_event", "now"]
SERVE_AS_OF: tuple[str, ...] = get_args(ServeAsOf)
WaitForLookups: TypeAlias = Literal["readers", "all"]
WAIT_FOR_LOOKUPS: tuple[str, ...] = get_args(WaitForLookups)

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
    | Derived
    | Custom
)

#: Each feature class by its ``type`` tag, in documentation order.
FEATURE_TYPES: dict[str, type[FeatureSpec]] = {
    str(cls.__struct_config__.tag): cls for cls in get_args(Feature)
}


class FeatureSet(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=_SpecMeta,
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
        computed: ``Computed`` event fields, computed in order from each event's other fields
            when it is ingested (each may read those before it; none may be the key or the
            time field); every feature reads them as event fields.

    The options below bound what an event may be; an event outside them is refused at ingest
    and goes to ``rt.dead_letters`` with its reason (the full list: ``runtime/_events.py``):

    Args:
        max_future: how far ahead of the wall clock (the real one, ``time.time``) an event time
            may be: a duration, 1 hour by default; None or 0 turns the bound off. A time far
            ahead would move its key's watermark and make every later event of the key late;
            an hour is far more than clock skew between hosts. Events from 1970 to 2300 only
            are accepted whatever the bounds.
        max_past: how far behind the wall clock an event time may be: a duration, off by
            default (None or 0), so that a replay of history, all of it in the past, is
            accepted; an old event is only late for its key. Set it for a live-only service.
        max_key_length: the longest key: characters of a ``str``, bytes of ``bytes``, decimal
            digits of an ``int``; 4096 by default (URLs, e-mails, UUIDs and composite keys
            pass, a runaway value held in every feature group's state does not).
        max_payload_bytes: the largest event given as bytes (JSON or MessagePack), checked
            before decoding; 1 MiB by default, Kafka's default largest message. It bounds every
            field of such an event; an event given as a dict is the application's own object,
            held by reference, and its size is not checked.

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
        serve_as_of: what ``rt.get`` and ``rt.get_many`` read windowed features as of when
            the call gives no ``as_of``: ``"last_event"`` (the default: as of each key's own
            clock, its newest event) or ``"now"`` (as of the runtime's clock, the request
            time: windows a quiet key's events have left are empty). See ``docs/serving.md``.

    The option below concerns lookups only (``docs/enrichment.md``):

    Args:
        wait_for_lookups: which features of a stream with lookups wait for them: ``"readers"``
            (the default: those that read a lookup's fields; the others are computed as each
            event comes, so an event gives an update at once and another once its rows are
            there) or ``"all"`` (every feature of the stream waits, and an event gives one
            update with all of them: fewer passes over the events, so more events a second at
            full load, while the features that read no lookup are as late as its fetch, and an
            event the enricher refuses or abandons at shutdown updates none of them). It
            decides which groups hold which features: a checkpoint restores only into the
            same choice (``docs/enrichment.md``).

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
    max_future: Duration | None = "1h"
    max_past: Duration | None = None
    max_key_length: int = DEFAULT_MAX_KEY_LENGTH
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    allowed_lateness: Duration = 0
    late_policy: LatePolicy = "drop"
    correction_horizon: Duration = "1h"
    emit: EmitMode = "update"
    idle_timeout: Duration | None = None
    state_ttl: Duration | None = None
    serve_as_of: ServeAsOf = "last_event"
    streams: Sequence[str] = ()
    joins: Sequence[Join] = ()
    sources: Sequence[Source] = ()
    lookups: Sequence[Lookup] = ()
    enrich_stash: int = 10_000
    wait_for_lookups: WaitForLookups = "readers"
    computed: Sequence[Computed] = ()
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
        for bound in ("max_future", "max_past"):
            if getattr(self, bound) is not None:  # 0 is off too: TOML has no null
                _check_duration(self, bound, getattr(self, bound), positive=False)
        _check_int(self, "max_key_length", self.max_key_length, 1, MAX_KEY_LENGTH)
        _check_int(self, "max_payload_bytes", self.max_payload_bytes, 1, MAX_PAYLOAD_BYTES)
        _check_duration(self, "allowed_lateness", self.allowed_lateness, positive=False)
        _check_duration(self, "correction_horizon", self.correction_horizon, positive=False)
        if self.late_policy not in LATE_POLICIES:
            known = ", ".join(LATE_POLICIES)
            _fail(self, "late_policy", f"unknown policy {self.late_policy!r} (known: {known})")
        if self.emit not in EMIT_MODES:
            _fail(self, "emit", f"unknown mode {self.emit!r} (known: {', '.join(EMIT_MODES)})")
        if self.serve_as_of not in SERVE_AS_OF:
            known = ", ".join(SERVE_AS_OF)
            _fail(self, "serve_as_of", f"unknown choice {self.serve_as_of!r} (known: {known})")
        if self.wait_for_lookups not in WAIT_FOR_LOOKUPS:
            known = ", ".join(WAIT_FOR_LOOKUPS)
            _fail(
                self,
                "wait_for_lookups",
                f"unknown choice {self.wait_for_lookups!r} (known: {known})",
            )
        for option in ("idle_timeout", "state_ttl"):
            if getattr(self, option) is not None:
                _check_duration(self, option, getattr(self, option), positive=True)
        if not isinstance(self.features, list | tuple):
            _fail(self, "features", f"expected a list of features, got {_kind(self.features)}")
        msgspec.structs.force_setattr(self, "features", tuple(self.features))
        if not self.features and not self.joins:
            _fail(self, "features", "at least one feature (or a join) is required")
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
        self._check_computed()
        self._check_streams()
        self._check_lookups()
        self._check_ratios(seen)

    def _check_computed(self) -> None:
        if not isinstance(self.computed, list | tuple):
            _fail(
                self, "computed", f"expected a list of computed fields, got {_kind(self.computed)}"
            )
        msgspec.structs.force_setattr(self, "computed", tuple(self.computed))
        written: dict[str, int] = {}
        for index, field in enumerate(self.computed):
            if not isinstance(field, Computed):
                _fail(self, f"computed[{index}]", f"expected a Computed, got {_kind(field)}")
            if field.name in (self.key, self.time):
                what = "key" if field.name == self.key else "time"
                _fail(
                    self,
                    f"computed[{index}].name",
                    f"cannot compute the {what} field {field.name!r}",
                )
            if field.name in written:
                _fail(
                    self,
                    f"computed[{index}].name",
                    f"duplicate computed field {field.name!r} "
                    f"(also computed[{written[field.name]}])",
                )
            written[field.name] = index
        for index, field in enumerate(self.computed):
            for name in field.inputs():
                later = written.get(name)
                if later is not None and later > index:
                    _fail(
                        self,
                        f"computed[{index}].expr",
                        f"reads {name!r}, which computed[{later}] computes after it (fields are "
                        "computed in order: move it first)",
                    )

    def _check_lookups(self) -> None:
        if not isinstance(self.sources, list | tuple):
            _fail(self, "sources", f"expected a list of sources, got {_kind(self.sources)}")
        msgspec.structs.force_setattr(self, "sources", tuple(self.sources))
        sources: set[str] = set()
        for index, source in enumerate(self.sources):
            if type(source) not in SOURCE_TYPES.values():
                _fail(self, f"sources[{index}]", f"expected a source, got {_kind(source)}")
            if source.name in sources:
                _fail(self, f"sources[{index}].name", f"duplicate source {source.name!r}")
            sources.add(source.name)
        if not isinstance(self.lookups, list | tuple):
            _fail(self, "lookups", f"expected a list of lookups, got {_kind(self.lookups)}")
        msgspec.structs.force_setattr(self, "lookups", tuple(self.lookups))
        taken = set(self.feature_streams)
        for index, lookup in enumerate(self.lookups):
            if not isinstance(lookup, Lookup):
                _fail(self, f"lookups[{index}]", f"expected a Lookup, got {_kind(lookup)}")
            if lookup.name in taken:
                _fail(self, f"lookups[{index}].name", f"{lookup.name!r} is taken")
            taken.add(lookup.name)
            if lookup.source not in sources:
                known = ", ".join(sorted(sources)) or "none"
                _fail(
                    self,
                    f"lookups[{index}].source",
                    f"no source named {lookup.source!r} (known: {known})",
                )
            if lookup.stream is not None and lookup.stream not in self.stream_names:
                names = ", ".join(self.stream_names)
                _fail(
                    self,
                    f"lookups[{index}].stream",
                    f"no stream named {lookup.stream!r} (known: {names})",
                )
        _check_int(self, "enrich_stash", self.enrich_stash, 1, 10**8)
        for index, feature in enumerate(self.features):
            lookups = self._lookups_read(feature)
            if not lookups:
                continue
            stream = feature.stream or self.stream_names[0]
            if stream not in self.stream_names:
                _fail(
                    self,
                    f"features[{index}]",
                    f"reads lookup fields ({', '.join(lookups)}) on {stream!r}, which is not "
                    "an ingested stream (lookups enrich ingested events)",
                )
            for name in lookups:
                if self.lookup(name).stream_or(self.stream_names[0]) != stream:
                    _fail(
                        self,
                        f"features[{index}]",
                        f"reads lookup {name!r}, which enriches another stream than {stream!r}",
                    )

    def _lookups_read(self, feature: FeatureSpec) -> list[str]:
        """The lookups whose fields (``<lookup>.<column>``) the feature reads."""
        names = {lookup.name for lookup in self.lookups}
        found = []
        for field in feature.inputs():
            head, dot, _ = field.partition(".")
            if dot and head in names and head not in found:
                found.append(head)
        return found

    def lookup(self, name: str) -> Lookup:
        """The lookup named ``name``."""
        for lookup in self.lookups:
            if lookup.name == name:
                return lookup
        raise KeyError(name)

    def enriched(self, feature: FeatureSpec) -> bool:
        """Whether the feature reads a lookup's fields (so it waits for its fetches)."""
        return bool(self.lookups) and bool(self._lookups_read(feature))

    def _check_streams(self) -> None:
        if not isinstance(self.streams, list | tuple):
            _fail(self, "streams", f"expected a list of names, got {_kind(self.streams)}")
        msgspec.structs.force_setattr(self, "streams", tuple(self.streams))
        for index, name in enumerate(self.streams):
            _check_name(self, f"streams[{index}]", name)
            if name in self.streams[:index]:
                _fail(self, f"streams[{index}]", f"duplicate stream {name!r}")
        if not isinstance(self.joins, list | tuple):
            _fail(self, "joins", f"expected a list of joins, got {_kind(self.joins)}")
        msgspec.structs.force_setattr(self, "joins", tuple(self.joins))
        for index, join in enumerate(self.joins):
            if not isinstance(join, Join):
                _fail(self, f"joins[{index}]", f"expected a Join, got {_kind(join)}")
            taken = [*self.stream_names, *(j.name for j in self.joins[:index])]
            if join.name in taken:
                _fail(self, f"joins[{index}].name", f"{join.name!r} already names a stream")
            for side in ("left", "right"):
                if getattr(join, side) not in self.stream_names:
                    names = ", ".join(self.stream_names)
                    _fail(
                        self,
                        f"joins[{index}].{side}",
                        f"no stream named {getattr(join, side)!r} (known: {names})",
                    )
        known = self.feature_streams
        for index, feature in enumerate(self.features):
            if feature.stream and feature.stream not in known:
                _fail(
                    self,
                    f"features[{index}].stream",
                    f"no stream named {feature.stream!r} (known: {', '.join(known)})",
                )

    def _check_ratios(self, index_of: Mapping[str, int]) -> None:
        """Ratios and derived features: their operands exist, without cycles, on one stream,
        all windowed or none, all enriched or none."""
        ratios = {f.name: f for f in self.features if isinstance(f, Ratio | Derived)}
        operands = []
        for name, ratio in ratios.items():
            if isinstance(ratio, Ratio):
                for attr in ("numerator", "denominator"):
                    path = f"features[{index_of[name]}].{attr}"
                    operands.append((name, path, getattr(ratio, attr)))
            else:
                attr = "expr" if isinstance(ratio.expr, str) and not ratio.uses else "uses"
                for operand in ratio.depends_on():
                    operands.append((name, f"features[{index_of[name]}].{attr}", operand))
        for name, path, operand in operands:
            what = _what(ratios[name])
            if operand == name:
                _fail(self, path, f"{what} cannot use itself")
            if operand not in index_of:
                known = ", ".join(n for n in index_of if n != name)
                _fail(self, path, f"no feature named {operand!r} (known: {known})")
        for name, path, operand in operands:
            trail = _path_back(operand, name, ratios)
            if trail is not None:
                _fail(
                    self,
                    path,
                    f"{_what(ratios[name]).partition(' ')[2]}s form a cycle: "
                    f"{' -> '.join([name, *trail])}",
                )
        for name in ratios:
            what = _what(ratios[name])
            bases = _ratio_bases(name, ratios)
            streams = sorted({self.stream_of(self.feature(b)) for b in bases})
            enriched = sorted(b for b in bases if self.enriched(self.feature(b)))
            if enriched and len(enriched) < len(bases) and self.wait_for_lookups == "readers":
                _fail(
                    self,
                    f"features[{index_of[name]}]",
                    f"{what}'s operands must all read lookup fields or none: "
                    f"{', '.join(enriched)} do and {', '.join(sorted(set(bases) - set(enriched)))} "
                    "do not (features that read them wait for their fetches; the others do not, "
                    'unless wait_for_lookups="all")',
                )
            if len(streams) > 1:
                _fail(
                    self,
                    f"features[{index_of[name]}]",
                    f"{what}'s operands must be on one stream, got {', '.join(streams)}",
                )
            windowed = sorted(b for b in bases if self.is_windowed(b))
            plain = sorted(b for b in bases if not self.is_windowed(b))
            if windowed and plain:
                _fail(
                    self,
                    f"features[{index_of[name]}]",
                    f"{what} cannot mix windowed ({', '.join(windowed)}) and unwindowed "
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

    @property
    def feature_streams(self) -> tuple[str, ...]:
        """The streams a feature can read: the ingested streams, then the joins' records."""
        return (*self.stream_names, *(join.name for join in self.joins))

    @property
    def group_streams(self) -> tuple[str, ...]:
        """The streams feature groups read: ``feature_streams``, then the enriched form of
        each ingested stream that has lookups (``enriched_stream``)."""
        enriched = [enriched_stream(s) for s in self.stream_names if self.lookups_of(s)]
        return (*self.feature_streams, *enriched)

    def lookups_of(self, stream: str) -> tuple[Lookup, ...]:
        """The lookups that enrich the events of ``stream``."""
        first = self.stream_names[0]
        return tuple(lookup for lookup in self.lookups if lookup.stream_or(first) == stream)

    def stream_of(self, feature: FeatureSpec) -> str:
        """The stream whose events ``feature`` sees: its ``stream``, else the first stream; a
        ratio's is its operands' (a ratio takes no ``stream`` of its own)."""
        feature = self._ratio_base(feature)
        return feature.stream or self.stream_names[0]

    def group_stream_of(self, feature: FeatureSpec) -> str:
        """The stream of the group that computes ``feature``: its stream, or the enriched
        form of it (``enriched_stream``) when it (a ratio: its operands) reads lookup fields."""
        base = self._ratio_base(feature)
        stream = base.stream or self.stream_names[0]
        waits = self.wait_for_lookups == "all" and stream in self.stream_names
        if self.enriched(base) or (waits and self.lookups_of(stream)):
            return enriched_stream(stream)
        return stream

    def _ratio_base(self, feature: FeatureSpec) -> FeatureSpec:
        """A ratio's first base operand (through nested ratios), whose stream and group the
        ratio shares; any other feature itself."""
        if isinstance(feature, Ratio | Derived):
            ratios = {f.name: f for f in self.features if isinstance(f, Ratio | Derived)}
            bases = sorted(_ratio_bases(feature.name, ratios))
            if bases and bases[0] in self.names:
                return self.feature(bases[0])
        return feature

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
        if isinstance(feature, Ratio | Derived):
            ratios = {f.name: f for f in self.features if isinstance(f, Ratio | Derived)}
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
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        functions: Iterable[Callable[..., Any]] = (),
        modules: Iterable[str] = (),
    ) -> FeatureSet:
        """Load a set from a ``.toml``, ``.json``, ``.yaml`` or ``.yml`` file.

        A spec file is data, and reaches no code of its own accord: a join's
        ``"module:function"`` predicate or merge must be one of ``functions``, or a function
        defined in one of ``modules`` (a package's submodules included), and nothing is
        imported before the rest of the spec is valid. A name that leads elsewhere (a builtin
        such as ``"os:system"``, the standard library, a function one module imported from
        another) is refused. A set built in Python needs no list: it holds its functions.

        Args:
            path: the spec file.
            functions: the functions a join of the file may name, each by its own
                ``"module:function"`` name.
            modules: the modules whose functions a join of the file may name.

        Raises:
            SpecError: the format is not supported, the file cannot be read, or its content is
                not a valid set (a name the application does not allow included); the message
                starts with ``path``.
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
        return loader(data, source=source, functions=functions, modules=modules)

    @classmethod
    def from_toml(
        cls,
        data: str | bytes,
        *,
        source: str = "<string>",
        functions: Iterable[Callable[..., Any]] = (),
        modules: Iterable[str] = (),
    ) -> FeatureSet:
        """Load a set from TOML text; error messages start with ``source``. ``functions``
        and ``modules``: what a join may name, as for ``from_file``.

        Raises:
            SpecError: the text is not TOML or not a valid set.
        """
        return _load(msgspec.toml.decode, "TOML", data, source, FunctionPolicy(functions, modules))

    @classmethod
    def from_json(
        cls,
        data: str | bytes,
        *,
        source: str = "<string>",
        functions: Iterable[Callable[..., Any]] = (),
        modules: Iterable[str] = (),
    ) -> FeatureSet:
        """Load a set from JSON text; error messages start with ``source``. ``functions``
        and ``modules``: what a join may name, as for ``from_file``.

        Raises:
            SpecError: the text is not JSON or not a valid set.
        """
        return _load(_JSON_DECODER.decode, "JSON", data, source, FunctionPolicy(functions, modules))

    @classmethod
    def from_yaml(
        cls,
        data: str | bytes,
        *,
        source: str = "<string>",
        functions: Iterable[Callable[..., Any]] = (),
        modules: Iterable[str] = (),
    ) -> FeatureSet:
        """Load a set from YAML text; error messages start with ``source``. ``functions``
        and ``modules``: what a join may name, as for ``from_file``.

        YAML reads some plain scalars as other things: quote ``"!="`` (else a YAML tag) and
        strings such as ``"NO"``, ``"yes"`` or ``"on"`` (else booleans). Aliases (``*name``)
        are expanded at most to 1,000,000 values in all, and may not refer to
        themselves, so a small document cannot stand for a huge one.

        Raises:
            SpecError: the text is not YAML, expands too far, or is not a valid set.
        """
        return _load(decode_yaml, "YAML", data, source, FunctionPolicy(functions, modules))

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "<dict>",
        functions: Iterable[Callable[..., Any]] = (),
        modules: Iterable[str] = (),
    ) -> FeatureSet:
        """Build a set from plain data, as a spec file decodes to. ``functions`` and
        ``modules``: what a join may name, as for ``from_file``.

        Raises:
            SpecError: the data is not a valid set; the message starts with ``source``.
        """
        return _from_dict(data, source, FunctionPolicy(functions, modules))


def _from_dict(data: Mapping[str, Any], source: str, policy: FunctionPolicy) -> FeatureSet:
    raw = dict(data) if isinstance(data, Mapping) else data
    try:
        feature_set = msgspec.convert(raw, FeatureSet)
    except RecursionError:
        raise SpecError(f"{source}: the data is nested too deeply") from None
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
                "serve_as_of": SERVE_AS_OF,
                "method": PERCENTILE_METHODS,
                "how": JOIN_HOWS,
                "merge": JOIN_MERGES,
            },
            sources=SOURCE_TYPES,
        )
        raise SpecError(f"{source}: {explained}") from None
    # Only now, the whole set valid, may a join's names reach code, and only what the
    # application allows: decoding kept them as names.
    for index, join in enumerate(feature_set.joins):
        try:
            join.resolve_functions(policy)
        except SpecError as exc:
            path, reason = exc._spec_field  # type: ignore[attr-defined]
            raise SpecError(f"{source}: joins[{index}].{path}: {reason}") from None
    for index, feature in enumerate(feature_set.features):
        if isinstance(feature, Derived | Custom):
            try:
                feature.resolve_functions(policy)
            except SpecError as exc:
                path, reason = exc._spec_field  # type: ignore[attr-defined]
                raise SpecError(f"{source}: features[{index}].{path}: {reason}") from None
    return feature_set


_CONCRETE = frozenset(FEATURE_TYPES.values())


def _encode_extra(value: Any) -> Any:
    """A join's predicate or merge function is written as its ``"module:function"`` name, a
    custom feature's aggregate as its class's ``"module:Class"`` name."""
    if not isinstance(value, type) and check_aggregate(value) is None:
        return aggregate_name(value)
    if callable(value):
        return function_name(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_JSON_ENCODER = msgspec.json.Encoder(enc_hook=_encode_extra)


def encode_spec(value: Any) -> bytes:
    """A spec (a feature, a list of them, a set) as JSON, functions and aggregates by name:
    what checkpoints compare feature definitions by.

    Raises:
        TypeError: a function or aggregate class cannot be found again by its name.
    """
    return _JSON_ENCODER.encode(value)


def spec_builtins(value: Any) -> Any:
    """A spec as dicts, lists, strings and numbers, functions and aggregates by name (what
    :func:`encode_spec` writes, not encoded)."""
    return msgspec.to_builtins(value, enc_hook=_encode_extra)


_JSON_DECODER = msgspec.json.Decoder()
_LOADERS: dict[str, Callable[..., FeatureSet]] = {
    ".toml": FeatureSet.from_toml,
    ".json": FeatureSet.from_json,
    ".yaml": FeatureSet.from_yaml,
    ".yml": FeatureSet.from_yaml,
}


def _what(feature: Ratio | Derived) -> str:
    return "a ratio" if isinstance(feature, Ratio) else "a derived feature"


def _path_back(start: str, target: str, ratios: Mapping[str, Ratio | Derived]) -> list[str] | None:
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


def _ratio_bases(name: str, ratios: Mapping[str, Ratio | Derived]) -> set[str]:
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


def _load(
    decode: Callable[[Any], Any], fmt: str, data: str | bytes, source: str, policy: FunctionPolicy
) -> FeatureSet:
    try:
        raw = decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())
        raise SpecError(f"{source}: not valid {fmt}: {detail}") from exc
    except ExpansionError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except RecursionError:
        # msgspec's JSON and TOML decoders recurse per level of nesting
        raise SpecError(f"{source}: not valid {fmt}: nested too deeply") from None
    return _from_dict(raw, source, policy)
