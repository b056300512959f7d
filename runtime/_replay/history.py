"""Replaying history, and the parity check that compares a replay with what the online run served.

A replay feeds past events through a running ``FeatureRuntime`` in the order they arrived, and
moves the runtime's wall clock with them, so that idle time and ``state_ttl`` follow the
history instead of the seconds the replay takes. The runtime reads its clock through a
:class:`ReplayClock` (every runtime has one, reading the clock it was given until a replay takes
it over); the actors were built with that object, so nothing else changes for them.

The clock moves in steps. Each step takes the events that arrived within ``resolution`` seconds
of its start, and goes (``FeatureRuntime._replay_step``): the previous step's events are applied
at the previous time, the clock moves, idle time and expiry are applied at the new time, then
the step's events go in. A timer tick that fires meanwhile reads one of the two times and finds
nothing more to do, so the result does not depend on when the timers fire. Without
``idle_timeout`` and ``state_ttl`` no value depends on the clock: the clock still follows the
events (for the ages of cached dimension rows), but nothing waits for it.

The parity check (:func:`check_parity`) replays events in a fresh runtime and compares its
values with the online ones, feature by feature: final vectors per key, or every update.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from actors import DeadLetterReason

from .._duration import format_duration
from .._exceptions import InvalidEvent, UnknownFeature
from .._ingest.events import EventReader
from .._results import FeatureUpdate, FeatureVector
from .._spec.feature_set import FeatureSet

if TYPE_CHECKING:
    from .._runtime import FeatureRuntime

__all__ = [
    "FeatureParity",
    "ParityExample",
    "ParityMissing",
    "ParityReport",
    "ReplayClock",
    "ReplayResult",
    "check_parity",
    "replay_history",
]

#: events handed to ``ingest_many`` at once, at most, within one step of the clock
_CHUNK = 4096
#: keys read with one ``get_many`` by the parity check
_KEYS_PER_READ = 4096


class ReplayClock:
    """The runtime's wall clock, which a replay can take over. Internal.

    It reads ``base`` (the clock the runtime was given) until a replay sets ``now``; from then
    on it reads the replay's time, also after the replay, so that values read after it see no
    idle time the history did not have.
    """

    __slots__ = ("base", "now", "replayed", "replaying")

    def __init__(self, base: Callable[[], float]) -> None:
        self.base = base
        #: the replay's time (seconds since the epoch), or None before any replay
        self.now: float | None = None
        #: whether a replay is running
        self.replaying = False
        #: events handed to the runtime by replays (accepted or rejected)
        self.replayed = 0

    def __call__(self) -> float:
        now = self.now
        return self.base() if now is None else now


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``rt.replay(events)`` did."""

    #: events read from the history; accepted by the runtime; rejected (each in
    #: ``rt.dead_letters`` with its reason)
    events: int
    accepted: int
    rejected: int
    #: the earliest and the newest event time of the accepted events (ms), None without any
    first_event_time: int | None
    last_event_time: int | None
    #: the replay clock (seconds since the epoch) at the first accepted event (None without
    #: any), and at the end, after ``until`` (None when no replay has set it)
    clock_start: float | None
    clock_end: float | None
    #: times the clock moved with idle time and expiry applied (without ``idle_timeout`` and
    #: ``state_ttl``, only the move to ``until``)
    steps: int
    #: wall-clock seconds the replay took
    seconds: float

    @property
    def span_ms(self) -> int:
        """The event-time span of the accepted events (ms)."""
        if self.first_event_time is None or self.last_event_time is None:
            return 0
        return self.last_event_time - self.first_event_time


def _timer_period(feature_set: FeatureSet) -> float | None:
    """The period of the runtime's own idle timer (seconds), or None without idle time and
    expiry: the granularity a live runtime applies them with."""
    quiet = [
        ms / 1000
        for ms in (feature_set.duration_ms("idle_timeout"), feature_set.duration_ms("state_ttl"))
        if ms is not None
    ]
    if not quiet:
        return None
    return min(max(min(quiet) / 4, 0.01), 1.0)


def _seconds(name: str, value: Any, *, low: float | None = None) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or (low is not None and value < low)
    ):
        bound = f" >= {low:g}" if low is not None else ""
        raise ValueError(f"{name} must be a number of seconds{bound}, got {value!r}")
    return float(value)


class _Replayer:
    """One replay: reads the history, moves the clock, hands the events to the runtime."""

    def __init__(
        self,
        rt: FeatureRuntime,
        stream: str | Callable[[dict[str, Any]], str] | None,
        arrival: str | Callable[[dict[str, Any]], float] | None,
        resolution: float | None,
        keys: set[Any] | None,
    ) -> None:
        feature_set = rt.feature_set
        self.rt = rt
        self.clock = rt._clock
        self.reader: EventReader = rt._reader
        names = feature_set.stream_names
        self.streams = {name: i for i, name in enumerate(names)}
        #: the stream of every event (a name, or None for the first), or a function of the event
        self.stream_of: Callable[[dict[str, Any]], str] | None = None
        self.fixed: str | None = None
        if callable(stream):
            self.stream_of = stream
        elif stream is None or isinstance(stream, str):
            rt._tag(stream)  # raises ValueError for a stream the feature set does not have
            self.fixed = stream
        else:
            raise TypeError(
                "stream must be a stream name or a function giving each event's stream, "
                f"got {type(stream).__name__}"
            )
        self.arrival_of: Callable[[dict[str, Any]], float] | None = None
        self.arrival_field: EventReader | None = None
        if isinstance(arrival, str):
            self.arrival_field = EventReader(
                key=feature_set.key, time=arrival, time_unit=feature_set.time_unit
            )
        elif callable(arrival):
            self.arrival_of = arrival
        elif arrival is not None:
            raise TypeError(
                "arrival must be a field name or a function giving each event's arrival time "
                f"(seconds), got {type(arrival).__name__}"
            )
        period = _timer_period(feature_set)
        #: whether values depend on the clock: then it moves in steps, each applied at once
        self.timed = period is not None
        resolution = _seconds("resolution", resolution, low=0.0)
        self.resolution = (period or 0.0) if resolution is None else resolution
        self.keys = keys
        ingest = rt._ingest
        self.base = ingest.ingested + ingest.rejected
        #: the events waiting to go in, and their streams' names (with a stream function)
        self.pending: list[Any] = []
        self.names: list[str] | None = [] if self.stream_of is not None else None
        #: an event that opens a new step, held until the step is open
        self.held: tuple[Any, str | None] | None = None
        #: the clock of the current step, and the newest arrival so far (the clock never
        #: goes back, also from one replay to the next)
        self.step_at: float | None = None
        self.high = -math.inf if self.clock.now is None else self.clock.now
        self.clock_start: float | None = None
        self.events = self.handed = self.accepted = self.refused = self.steps = 0
        self.first: int | None = None
        self.last: int | None = None

    # -- per event (no awaits) ---------------------------------------------------------------
    def read(self, payload: Any) -> bool:
        """Take one event; True when ``settle`` must run before the next."""
        self.events += 1
        try:
            key, t, event = self.reader.read(payload)
        except InvalidEvent:
            # the runtime rejects it, with the reason, in its place in the order
            self._append(payload, None)
            return len(self.pending) >= _CHUNK
        name = self.fixed
        if self.stream_of is not None:
            name = self._stream(payload, event)
            if name is None:
                return False
        if self.arrival_of is None and self.arrival_field is None:
            at = t / 1000
        else:
            found = self._arrival(payload, event)
            if found is None:
                return False
            at = found
        if at > self.high:
            self.high = at
        if self.clock_start is None:
            self.clock_start = self.high
        if self.keys is not None:
            self.keys.add(key)
        if self.first is None or t < self.first:
            self.first = t
        if self.last is None or t > self.last:
            self.last = t
        step_at = self.step_at
        if self.timed and (
            step_at is None or (self.high > step_at and self.high >= step_at + self.resolution)
        ):
            self.held = (event, name)
            return True
        self._append(event, name)
        return len(self.pending) >= _CHUNK

    def _append(self, event: Any, name: str | None) -> None:
        self.pending.append(event)
        if self.names is not None:
            self.names.append(self.rt.feature_set.stream_names[0] if name is None else name)

    def _refuse(self, payload: Any, message: str, field: str | None) -> None:
        """An event the replay cannot place: to dead letters, with the reason."""
        self.refused += 1
        error = InvalidEvent(message, field=field, payload=payload)
        self.rt.dead_letters.record(
            payload, "featurist/replay", DeadLetterReason.REJECTED, error=error, detail=message
        )

    def _stream(self, payload: Any, event: dict[str, Any]) -> str | None:
        assert self.stream_of is not None
        try:
            name = self.stream_of(event)
        except Exception as exc:
            self._refuse(payload, f"stream: the stream function raised {exc!r}", None)
            return None
        if name not in self.streams:
            known = ", ".join(self.streams)
            self._refuse(payload, f"stream: {name!r} is not a stream (known: {known})", None)
            return None
        return name

    def _arrival(self, payload: Any, event: dict[str, Any]) -> float | None:
        if self.arrival_field is not None:
            field = self.arrival_field.time
            try:
                return self.arrival_field.time_ms(event.get(field), payload) / 1000
            except InvalidEvent as exc:
                self._refuse(payload, f"arrival: {exc}", field)
                return None
        assert self.arrival_of is not None
        try:
            at = self.arrival_of(event)
        except Exception as exc:
            self._refuse(payload, f"arrival: the arrival function raised {exc!r}", None)
            return None
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
            self._refuse(payload, f"arrival: expected seconds (a number), got {at!r}", None)
            return None
        return float(at)

    # -- awaiting --------------------------------------------------------------------------
    async def settle(self) -> None:
        """Send a full chunk, or open the step of the held event."""
        held = self.held
        if held is None:
            if not self.timed:
                self._move(self.high)
            await self._send()
            return
        self.held = None
        await self._send()
        # the step's events are applied at its time, then idle time and expiry at the new one
        await self.rt._replay_step(self.high)
        self.step_at = self.high
        self.steps += 1
        self._append(*held)

    def _move(self, now: float) -> None:
        if now != -math.inf:
            self.clock.now = now

    async def _send(self) -> None:
        pending, names = self.pending, self.names
        if not pending:
            return
        self.pending = []
        if names is not None:
            self.names = []
            accepted = await self.rt.ingest_many(pending, stream=names)
        else:
            accepted = await self.rt.ingest_many(pending, stream=self.fixed)
        self.handed += len(pending)
        self.accepted += accepted
        self.clock.replayed += len(pending)
        ingest = self.rt._ingest
        others = ingest.ingested + ingest.rejected - self.base - self.handed
        if others:
            raise RuntimeError(
                f"replay: {others} events were ingested outside the replay while it ran; a "
                "replay needs the runtime to itself (its clock follows the history)"
            )

    async def finish(self, until: float | None) -> None:
        if not self.timed:
            self._move(self.high)
        await self._send()
        await self.rt.flush()
        now = self.clock.now
        if until is not None and (now is None or until > now):
            self._move(until)
            self.steps += 1
            await self.rt.flush()


async def replay_history(
    rt: FeatureRuntime,
    events: Iterable[Any] | AsyncIterable[Any],
    *,
    stream: str | Callable[[dict[str, Any]], str] | None = None,
    arrival: str | Callable[[dict[str, Any]], float] | None = None,
    resolution: float | None = None,
    until: float | None = None,
    keys: set[Any] | None = None,
) -> ReplayResult:
    """``rt.replay`` (see there); ``keys``, when given, receives the key of every accepted
    event."""
    clock = rt._clock
    assert isinstance(clock, ReplayClock)
    until = _seconds("until", until)
    if clock.replaying:
        raise RuntimeError("replay: a replay of this runtime is running; run them one by one")
    ingest = rt._ingest
    live = ingest.ingested + ingest.rejected - clock.replayed
    if live:
        raise RuntimeError(
            f"replay: the runtime has live traffic ({live} events ingested outside a replay); "
            "replay history into a fresh runtime"
        )
    replayer = _Replayer(rt, stream, arrival, resolution, keys)
    started = time.perf_counter()
    clock.replaying = True
    try:
        read, settle = replayer.read, replayer.settle
        if isinstance(events, AsyncIterable):
            async for payload in events:
                if read(payload):
                    await settle()
        else:
            for payload in events:
                if read(payload):
                    await settle()
        await replayer.finish(until)
    finally:
        clock.replaying = False
    return ReplayResult(
        events=replayer.events,
        accepted=replayer.accepted,
        rejected=replayer.handed - replayer.accepted + replayer.refused,
        first_event_time=replayer.first,
        last_event_time=replayer.last,
        clock_start=replayer.clock_start,
        clock_end=clock.now,
        steps=replayer.steps,
        seconds=time.perf_counter() - started,
    )


# -- the parity check -----------------------------------------------------------------------------


class ParityExample(msgspec.Struct, frozen=True, kw_only=True):
    """A value that differs: the online one and the replayed one, with the key (and, comparing
    updates, the event's time and the update's kind)."""

    key: Any
    online: Any
    replayed: Any
    event_time: int | None = None
    kind: str | None = None


class ParityMissing(msgspec.Struct, frozen=True, kw_only=True):
    """A key (or an update) that only one side has: ``side`` is the one that has it,
    ``"online"`` or ``"replayed"``."""

    side: str
    key: Any
    event_time: int | None = None
    kind: str | None = None


class FeatureParity(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's part of a :class:`ParityReport`."""

    feature: str
    #: values compared (one per key, or per update), and those that differ
    compared: int = 0
    differ: int = 0
    #: values that only one side has (the feature is missing from the other's vector)
    missing: int = 0
    #: the largest absolute and relative difference between two numbers compared, within the
    #: tolerance or not (None when no two numbers were compared)
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    #: the first few values that differ
    examples: tuple[ParityExample, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.differ and not self.missing


class ParityReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`check_parity` found: per feature, the values compared and those that differ;
    the keys (or updates) that only one side has. ``str(report)`` is :meth:`summary`."""

    #: ``"vectors"`` (final values per key) or ``"updates"`` (every update compared)
    mode: str
    #: keys, or updates, found on both sides and compared
    compared: int
    features: tuple[FeatureParity, ...]
    #: keys (or updates) only the online side has, and only the replay has; a few of each
    only_online: int
    only_replayed: int
    missing: tuple[ParityMissing, ...]
    #: names the online values hold that are not features of the feature set
    unknown_features: tuple[str, ...]
    #: numbers closer than this (absolutely, or relatively to the larger) count as equal
    tolerance: float
    replay: ReplayResult

    @property
    def ok(self) -> bool:
        """True when every value agrees and neither side has keys (or updates) the other lacks."""
        return (
            all(f.ok for f in self.features)
            and not self.only_online
            and not self.only_replayed
            and not self.unknown_features
        )

    @property
    def differences(self) -> tuple[FeatureParity, ...]:
        """The features with values that differ or are missing."""
        return tuple(f for f in self.features if not f.ok)

    def summary(self) -> str:
        """The report as text: a verdict, a line per feature, the missing keys, the replay."""
        unit = "keys" if self.mode == "vectors" else "updates"
        bad = self.differences
        verdict = "OK" if self.ok else "DIFFERENCES"
        if bad:
            verdict += f": {len(bad)} of {len(self.features)} features"
        lines = [
            f"parity: {self.compared:,} {unit} compared (tolerance {self.tolerance:g}): {verdict}",
            f"  {'feature':<24} {'compared':>10} {'differ':>8} {'missing':>8} "
            f"{'max abs diff':>13} {'max rel diff':>13}",
        ]
        for f in self.features:
            lines.append(
                f"  {f.feature:<24} {f.compared:>10,} {f.differ:>8,} {f.missing:>8,} "
                f"{_number_text(f.max_abs_diff):>13} {_number_text(f.max_rel_diff):>13}"
            )
            for example in f.examples:
                when = "" if example.event_time is None else f" at {example.event_time}"
                kind = "" if example.kind in (None, "update") else f" ({example.kind})"
                lines.append(
                    f"      key {_short(example.key)}{when}{kind}: online "
                    f"{_short(example.online)}, replayed {_short(example.replayed)}"
                )
        if self.unknown_features:
            names = ", ".join(self.unknown_features)
            lines.append(f"  online values of names that are not features: {names}")
        lines.append(
            f"  {unit} only online: {self.only_online:,}; only in the replay: "
            f"{self.only_replayed:,}"
        )
        for item in self.missing:
            when = "" if item.event_time is None else f" at {item.event_time}"
            kind = "" if item.kind is None else f" ({item.kind})"
            lines.append(f"      only {item.side}: key {_short(item.key)}{when}{kind}")
        lines.append("  " + _replay_line(self.replay))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _number_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _time_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _replay_line(result: ReplayResult) -> str:
    line = (
        f"replayed {result.events:,} events ({result.accepted:,} accepted, "
        f"{result.rejected:,} rejected)"
    )
    if result.first_event_time is not None and result.last_event_time is not None:
        line += (
            f", event time {_time_text(result.first_event_time)} .. "
            f"{_time_text(result.last_event_time)} ({format_duration(result.span_ms)})"
        )
    return line + f", {result.steps:,} clock steps, in {result.seconds:.2f} s"


# -- comparing values ---------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nothing(value: Any) -> bool:
    """None, or NaN (JSON writes NaN as null)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a: Any, b: Any, tolerance: float) -> bool:
    """Whether two feature values agree: numbers within the tolerance, sequences and mappings
    element by element (a tuple equals a list, and mapping keys compare as text: JSON turns
    tuples into lists and keys into strings)."""
    if a is b:
        return True
    if _is_number(a) and _is_number(b):
        if a == b:
            return True
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if _nothing(a) and _nothing(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if len(a) != len(b):
            return False
        texts = {str(k): v for k, v in b.items()}
        return all(str(k) in texts and _same(v, texts[str(k)], tolerance) for k, v in a.items())
    try:
        return bool(a == b)
    except Exception:
        return False


class _Error:
    """A feature's error message in an update, compared in place of its value."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Error) and other.message == self.message

    def __hash__(self) -> int:
        return len(self.message)

    def __repr__(self) -> str:
        return f"error({self.message!r})"


class _Tally:
    """One feature's counts, while comparing."""

    __slots__ = ("compared", "differ", "examples", "max_abs", "max_rel", "missing", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.compared = self.differ = self.missing = 0
        self.max_abs: float | None = None
        self.max_rel: float | None = None
        self.examples: list[ParityExample] = []

    def add(
        self,
        a: Any,
        b: Any,
        tolerance: float,
        limit: int,
        key: Any,
        t: int | None,
        kind: str | None,
    ) -> None:
        self.compared += 1
        if _is_number(a) and _is_number(b) and math.isfinite(a) and math.isfinite(b):
            diff = abs(a - b)
            larger = max(abs(a), abs(b))
            rel = diff / larger if larger else 0.0
            if self.max_abs is None or diff > self.max_abs:
                self.max_abs = float(diff)
            if self.max_rel is None or rel > self.max_rel:
                self.max_rel = float(rel)
        if not _same(a, b, tolerance):
            self.differ += 1
            if len(self.examples) < limit:
                self.examples.append(
                    ParityExample(
                        key=key,
                        online=_plain(a),
                        replayed=_plain(b),
                        event_time=t,
                        kind=kind,
                    )
                )

    def result(self) -> FeatureParity:
        return FeatureParity(
            feature=self.name,
            compared=self.compared,
            differ=self.differ,
            missing=self.missing,
            max_abs_diff=self.max_abs,
            max_rel_diff=self.max_rel,
            examples=tuple(self.examples),
        )


def _plain(value: Any) -> Any:
    return f"error: {value.message}" if isinstance(value, _Error) else value


def _update_values(update: FeatureUpdate) -> dict[str, Any]:
    """An update's values, a failed feature's error in place of its value."""
    if not update.errors:
        return update.values
    values = dict(update.values)
    for name, message in update.errors.items():
        values[name] = _Error(message)
    return values


def _identity(update: FeatureUpdate) -> tuple[Any, ...]:
    """What pairs an online update with a replayed one (with its rank among equals): the key,
    the event time, the kind, the window and the features it holds. Not the group's name,
    which depends on the order features were registered in."""
    window = None if update.window is None else tuple(update.window)
    return (update.key, update.event_time, update.kind, window, tuple(sorted(update.values)))


class _Comparison:
    """The state of one parity check."""

    def __init__(self, names: Sequence[str], tolerance: float, examples: int) -> None:
        self.names = names
        self.tolerance = tolerance
        self.limit = examples
        self.tallies = {name: _Tally(name) for name in names}
        self.compared = 0
        self.only: dict[str, int] = {"online": 0, "replayed": 0}
        self.missing: list[ParityMissing] = []

    def values(
        self,
        online: Mapping[str, Any],
        replayed: Mapping[str, Any],
        key: Any,
        t: int | None = None,
        kind: str | None = None,
    ) -> None:
        self.compared += 1
        tolerance, limit = self.tolerance, self.limit
        for name, tally in self.tallies.items():
            has_online, has_replayed = name in online, name in replayed
            if has_online and has_replayed:
                tally.add(online[name], replayed[name], tolerance, limit, key, t, kind)
            elif has_online or has_replayed:
                tally.missing += 1

    def one_side(self, side: str, key: Any, t: int | None = None, kind: str | None = None) -> None:
        self.only[side] += 1
        if sum(1 for m in self.missing if m.side == side) < self.limit:
            self.missing.append(ParityMissing(side=side, key=key, event_time=t, kind=kind))

    def report(self, mode: str, unknown: Sequence[str], result: ReplayResult) -> ParityReport:
        return ParityReport(
            mode=mode,
            compared=self.compared,
            features=tuple(tally.result() for tally in self.tallies.values()),
            only_online=self.only["online"],
            only_replayed=self.only["replayed"],
            missing=tuple(self.missing),
            unknown_features=tuple(unknown),
            tolerance=self.tolerance,
            replay=result,
        )


def _online_form(online: Any) -> tuple[str, Any]:
    """``("vectors", {key: values})`` or ``("updates", [FeatureUpdate, ...])``."""
    if isinstance(online, Mapping):
        vectors: dict[Any, Mapping[str, Any]] = {}
        for key, item in online.items():
            if isinstance(item, FeatureVector):
                vectors[key] = item.values
            elif isinstance(item, Mapping):
                vectors[key] = item
            else:
                raise TypeError(
                    "online: a mapping of keys must hold FeatureVectors or mappings of feature "
                    f"values, got {type(item).__name__} for key {_short(key)}"
                )
        return "vectors", vectors
    if isinstance(online, (str, bytes)) or not isinstance(online, Iterable):
        raise TypeError(
            "online must be a mapping of keys to FeatureVectors (or to feature values), or "
            f"FeatureVectors or FeatureUpdates, got {type(online).__name__}"
        )
    items = list(online)
    if all(isinstance(item, FeatureUpdate) for item in items):
        return "updates", items
    if all(isinstance(item, FeatureVector) for item in items):
        return "vectors", {item.key: item.values for item in items}
    kinds = sorted({type(item).__name__ for item in items})
    raise TypeError(
        "online: a sequence must hold FeatureUpdates, or FeatureVectors, not a mix: got "
        + ", ".join(kinds)
    )


async def check_parity(
    feature_set: FeatureSet,
    events: Iterable[Any] | AsyncIterable[Any],
    online: Any,
    *,
    stream: str | Callable[[dict[str, Any]], str] | None = None,
    arrival: str | Callable[[dict[str, Any]], float] | None = None,
    resolution: float | None = None,
    until: float | None = None,
    features: Sequence[str] | None = None,
    tolerance: float = 1e-9,
    complete: bool = True,
    examples: int = 5,
    options: Mapping[str, Any] | None = None,
) -> ParityReport:
    """Replay ``events`` in a fresh runtime and compare its values with ``online``, what the
    online run served.

    ``online`` is either the final vectors (a mapping of key to ``FeatureVector`` or to
    ``{feature: value}``, or a list of ``FeatureVector``): each key's values are compared with
    the replay's at its end; or the ``FeatureUpdate``s the online run published
    (``rt.updates()``): each is paired with the replay's update of the same key, event time,
    kind and window, and compared.

    Args:
        feature_set: the feature set of the online run.
        events: the history; it and ``stream``, ``arrival``, ``resolution``, ``until`` are as for
            ``FeatureRuntime.replay``. Give ``until`` as the time the online vectors were read.
        features: the features to compare (default: every feature of the set).
        tolerance: numbers closer than this, absolutely or relatively to the larger, count as
            equal (float sums depend on the order of their adds).
        complete: whether ``online`` holds every key of the history; with False (a sample)
            keys it lacks are not reported.
        examples: values that differ (and keys missing) shown per feature (per side).
        options: keyword arguments of the ``FeatureRuntime`` to replay in (``shards``,
            ``sources``...).

    Raises:
        TypeError: ``online`` has another form.
        UnknownFeature: a name in ``features`` is not a feature of the set.
        ValueError: ``tolerance`` or ``examples`` is negative, or a replay argument is invalid.
    """
    from .._runtime import FeatureRuntime

    if not (_is_number(tolerance) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be an int >= 0, got {examples!r}")
    known = list(feature_set.names)
    if features is not None:
        for name in features:
            if name not in known:
                raise UnknownFeature(f"no feature named {name!r} (known: {', '.join(known)})")
    names = list(features) if features is not None else known
    mode, prepared = _online_form(online)
    unknown: set[str] = set()
    if features is None:
        held = (
            (vector for vector in prepared.values())
            if mode == "vectors"
            else (update.values for update in prepared)
        )
        for values in held:
            unknown.update(name for name in values if name not in known)
    comparison = _Comparison(names, tolerance, examples)
    async with FeatureRuntime(feature_set, **dict(options or {})) as rt:
        if mode == "updates":
            result = await _compare_updates(
                rt, events, prepared, comparison, stream, arrival, resolution, until, complete
            )
        else:
            keys: set[Any] = set()
            result = await replay_history(
                rt,
                events,
                stream=stream,
                arrival=arrival,
                resolution=resolution,
                until=until,
                keys=keys,
            )
            await _compare_vectors(rt, prepared, keys, comparison, names, complete)
    return comparison.report(mode, sorted(unknown), result)


async def _compare_vectors(
    rt: FeatureRuntime,
    online: dict[Any, Mapping[str, Any]],
    keys: set[Any],
    comparison: _Comparison,
    names: list[str],
    complete: bool,
) -> None:
    both = [key for key in online if key in keys]
    for key in online:
        if key not in keys:
            comparison.one_side("online", key)
    if complete:
        for key in keys:
            if key not in online:
                comparison.one_side("replayed", key)
    for start in range(0, len(both), _KEYS_PER_READ):
        chunk = both[start : start + _KEYS_PER_READ]
        vectors = await rt.get_many(chunk, names)
        for key in chunk:
            comparison.values(online[key], vectors[key].values, key)


async def _compare_updates(
    rt: FeatureRuntime,
    events: Iterable[Any] | AsyncIterable[Any],
    online: list[FeatureUpdate],
    comparison: _Comparison,
    stream: str | Callable[[dict[str, Any]], str] | None,
    arrival: str | Callable[[dict[str, Any]], float] | None,
    resolution: float | None,
    until: float | None,
    complete: bool,
) -> ReplayResult:
    waiting: dict[tuple[Any, ...], deque[FeatureUpdate]] = {}
    for update in online:
        waiting.setdefault(_identity(update), deque()).append(update)
    # with a sample of online updates, only the keys it holds are compared
    sampled = None if complete else {update.key for update in online}

    async def consume(updates: Any) -> None:
        async for update in updates:
            if sampled is not None and update.key not in sampled:
                continue
            found = waiting.get(_identity(update))
            if not found:
                comparison.one_side("replayed", update.key, update.event_time, update.kind)
                continue
            mine = found.popleft()
            comparison.values(
                _update_values(mine),
                _update_values(update),
                update.key,
                update.event_time,
                update.kind,
            )

    subscription = rt.updates()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, subscription)
        try:
            result = await replay_history(
                rt, events, stream=stream, arrival=arrival, resolution=resolution, until=until
            )
        finally:
            await subscription.aclose()  # what was delivered is still read
    for left in waiting.values():
        for update in left:
            comparison.one_side("online", update.key, update.event_time, update.kind)
    return result
