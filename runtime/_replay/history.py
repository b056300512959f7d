"""Replaying history: feeding past events through a running runtime, its clock following them.

A replay feeds past events through a running ``FeatureRuntime`` in the order they arrived, and
moves the runtime's wall clock with them, so that idle time and ``state_ttl`` follow the
history instead of the seconds the replay takes. The runtime reads its clock through a
:class:`ReplayClock` (every runtime has one, reading the clock it was given until a replay takes
it over); the actors were built with that object, so nothing else changes for them.

The clock moves in steps. Each step takes the events that arrived within ``resolution`` seconds
of its start, and goes (:meth:`ReplayHost.step`): the previous step's events are applied at the
previous time, the clock moves, idle time and expiry are applied at the new time, then the
step's events go in. A timer tick that fires meanwhile reads one of the two times and finds
nothing more to do, so the result does not depend on when the timers fire. Without
``idle_timeout`` and ``state_ttl`` no value depends on the clock: the clock still follows the
events (for the ages of cached dimension rows), but nothing waits for it.

A replay sees the runtime through a :class:`ReplayHost`, the few things it needs of it, which
the runtime hands to :func:`replay_history`: this package does not import the runtime.
``parity.py`` builds the parity check on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from actors import DeadLetterReason, DeadLetters

from .._exceptions import InvalidEvent
from .._ingest.events import MAX_TIME_MS, EventReader
from .._spec.feature_set import FeatureSet

__all__ = ["ReplayClock", "ReplayHost", "ReplayOptions", "ReplayResult", "replay_history"]

#: events handed to ``ingest_many`` at once, at most, within one step of the clock
_CHUNK = 4096


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


@dataclass(frozen=True)
class ReplayOptions:
    """How a replay reads its history and moves the clock: the arguments of
    ``FeatureRuntime.replay`` (see there), passed on as one. Checked when the replay starts."""

    stream: str | Callable[[dict[str, Any]], str] | None = None
    arrival: str | Callable[[dict[str, Any]], float] | None = None
    resolution: float | None = None
    until: float | None = None


class ReplayHost(Protocol):
    """The runtime as a replay sees it: ``FeatureRuntime`` hands one to :func:`replay_history`.

    ``events_read`` counts the events its ingest has read (accepted or rejected), so that a
    replay can tell its own events from live ones.
    """

    @property
    def feature_set(self) -> FeatureSet: ...

    @property
    def clock(self) -> ReplayClock: ...

    @property
    def reader(self) -> EventReader: ...

    @property
    def dead_letters(self) -> DeadLetters: ...

    @property
    def events_read(self) -> int: ...

    async def ingest_many(self, events: Any, *, stream: str | list[str] | None = None) -> int:
        """As ``FeatureRuntime.ingest_many``."""
        ...

    async def flush(self) -> None:
        """As ``FeatureRuntime.flush``."""
        ...

    async def step(self, now: float) -> None:
        """A step of the clock: what was sent is applied at the clock's time (as ``flush``
        does), then the clock moves to ``now`` and idle time and expiry are applied at it."""
        ...


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


#: the latest time a replay's clock may be given (``until``): the latest event time, in seconds
_LATEST_SECONDS = MAX_TIME_MS / 1000


def _seconds(
    name: str, value: Any, *, low: float | None = None, high: float | None = None
) -> float | None:
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
    if high is not None and value > high:
        # the usual slip: an event time (milliseconds) where seconds are asked for
        hint = " (a time in milliseconds? divide it by 1000)" if value <= high * 1000 else ""
        raise ValueError(
            f"{name} is in seconds since the epoch, at most {high:.0f} (the year 2300), "
            f"got {value!r}{hint}"
        )
    return float(value)


class _Replayer:
    """One replay: reads the history, moves the clock, hands the events to the runtime."""

    def __init__(self, host: ReplayHost, options: ReplayOptions, keys: set[Any] | None) -> None:
        feature_set = host.feature_set
        stream, arrival = options.stream, options.arrival
        self.host = host
        self.clock = host.clock
        self.reader = host.reader
        names = feature_set.stream_names
        self.streams = {name: i for i, name in enumerate(names)}
        #: the stream of every event (a name, or None for the first), or a function of the event
        self.stream_of: Callable[[dict[str, Any]], str] | None = None
        self.fixed: str | None = None
        if callable(stream):
            self.stream_of = stream
        elif stream is None or isinstance(stream, str):
            if stream is not None and stream not in self.streams:
                known = ", ".join(names)
                raise ValueError(f"stream: no stream named {stream!r} (known: {known})")
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
        resolution = _seconds("resolution", options.resolution, low=0.0)
        self.resolution = (period or 0.0) if resolution is None else resolution
        self.keys = keys
        self.base = host.events_read
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
            self.names.append(self.host.feature_set.stream_names[0] if name is None else name)

    def _refuse(self, payload: Any, message: str, field: str | None) -> None:
        """An event the replay cannot place: to dead letters, with the reason."""
        self.refused += 1
        error = InvalidEvent(message, field=field, payload=payload)
        self.host.dead_letters.record(
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
        await self.host.step(self.high)
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
            accepted = await self.host.ingest_many(pending, stream=names)
        else:
            accepted = await self.host.ingest_many(pending, stream=self.fixed)
        self.handed += len(pending)
        self.accepted += accepted
        self.clock.replayed += len(pending)
        others = self.host.events_read - self.base - self.handed
        if others:
            raise RuntimeError(
                f"replay: {others} events were ingested outside the replay while it ran; a "
                "replay needs the runtime to itself (its clock follows the history)"
            )

    async def finish(self, until: float | None) -> None:
        if not self.timed:
            self._move(self.high)
        await self._send()
        await self.host.flush()
        now = self.clock.now
        if until is not None and (now is None or until > now):
            self._move(until)
            self.steps += 1
            await self.host.flush()


async def replay_history(
    host: ReplayHost,
    events: Iterable[Any] | AsyncIterable[Any],
    options: ReplayOptions,
    *,
    keys: set[Any] | None = None,
) -> ReplayResult:
    """``FeatureRuntime.replay`` (see there) into ``host``; ``keys``, when given, receives the
    key of every accepted event."""
    clock = host.clock
    until = _seconds("until", options.until, low=0.0, high=_LATEST_SECONDS)
    if clock.replaying:
        raise RuntimeError("replay: a replay of this runtime is running; run them one by one")
    live = host.events_read - clock.replayed
    if live:
        raise RuntimeError(
            f"replay: the runtime has live traffic ({live} events ingested outside a replay); "
            "replay history into a fresh runtime"
        )
    replayer = _Replayer(host, options, keys)
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
