"""The messages of the shard actors: the vocabulary every shard type shares.

Ingest sends :class:`Batch` es to every shard actor (feature groups, joins, enrichers); the
runtime asks them :class:`Ping` (a reply means every earlier batch is applied), :class:`IdleTick`,
statistics, snapshots and restores. The poison-event helpers (:func:`set_aside`,
:func:`fail_batch`) are shared by every actor that applies batches.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from actors import Actor, ActorContext, DeadLetterReason, get_logger

from ._results import FeatureError

__all__ = [
    "Batch",
    "RestoreSnapshot",
    "ShardSnapshot",
    "TakeSnapshot",
    "GetStates",
    "GetDriftStatus",
    "GetEnrichStats",
    "GetJoinStats",
    "GetStats",
    "GetWindowStats",
    "IdleTick",
    "Ping",
    "ShardStats",
    "Tick",
    "fail_batch",
]

_log = get_logger("featurist.shard")

#: seconds between two log lines of poison events of one actor
_POISON_LOG_INTERVAL = 10.0


class Batch:
    """Events for one shard: ``(key, time_ms, event)`` tuples, shared by every group's actor."""

    __slots__ = ("created", "events", "parts", "stream", "tags")

    def __init__(
        self, events: list[tuple[Any, int, dict[str, Any]]], created: float, stream: str = ""
    ) -> None:
        self.events = events
        #: ``time.perf_counter()`` when the batch's first event was accepted
        self.created = created
        #: the stream the events came on
        self.stream = stream
        #: with several streams: each event's stream index (a join reads them all)
        self.tags: list[int] | None = None
        #: with several streams: the part of each stream, made once for its groups
        self.parts: dict[str, Batch] | None = None


@dataclass(frozen=True)
class GetStates:
    """Ask: for each key, ``(values, last_event_time, shard_updated_at, shard_max_time,
    key_watermark, as_of)``; the first three are None for a key the shard has not seen,
    ``key_watermark`` is the key's own watermark where the group keeps one (window groups),
    else None, and ``as_of`` the event time (ms) the values are as of: None without ``as_of``,
    else ``as_of`` or, for a key whose state is past it, the key's clock (window groups) or
    last event time (keyed groups). A read never changes a key's state."""

    keys: tuple[Any, ...]
    #: the values as of this event time (ms), or None: as of each key's last event
    as_of: int | None = None


@dataclass(frozen=True)
class Ping:
    """Ask: answered at once; a reply means every batch told before it has been applied."""


@dataclass(frozen=True)
class Tick:
    """Timer message: expire quiet keys (and, in window groups, advance idle keys)."""


@dataclass(frozen=True)
class IdleTick:
    """Ask: run a :class:`Tick` now (``rt.flush()`` sends it, so tests need not wait)."""


@dataclass(frozen=True)
class GetStats:
    """Ask: the actor's :class:`ShardStats`."""


@dataclass(frozen=True)
class GetWindowStats:
    """Ask (window groups): the shard's ``WindowStats``: late events and window counters."""


@dataclass(frozen=True)
class GetJoinStats:
    """Ask (joins): the shard's ``JoinShardStats``: counters, buffers, keys."""


@dataclass(frozen=True)
class GetEnrichStats:
    """Ask (enrichers): the shard's ``EnrichShardStats``: events stashed and fetches running."""


@dataclass(frozen=True)
class GetDriftStatus:
    """Ask (drift monitors): read the subscription, then reply with the monitor's
    ``DriftStatus``."""


@dataclass(frozen=True)
class TakeSnapshot:
    """Ask: the actor's state as a :class:`ShardSnapshot`, its keys split by key group (the
    runtime asks once every batch sent before has been applied: see ``checkpoint``)."""

    key_group: Callable[[Any], int]


@dataclass(frozen=True)
class ShardSnapshot:
    """A shard actor's state, encoded: per key group, the entries of its keys; and what the
    actor keeps beside its keys (counters, the newest event time...)."""

    groups: dict[int, bytes]
    extra: bytes
    #: the keys in ``groups``
    keys: int
    #: keys whose state could not be encoded, left out of ``groups`` (each logged)
    left_out: int = 0


@dataclass(frozen=True)
class RestoreSnapshot:
    """Ask: take these key groups' entries and these actor-level states (each from one actor
    of the checkpoint; a rescaled restore gives one actor several or none), decoded and
    checked by the checkpoint coordinator: a restore cannot fail half-way in an actor."""

    #: per key group, its ``(key, entry)`` pairs
    groups: list[list[tuple[Any, Any]]]
    #: per actor of the checkpoint, its counters
    extras: list[dict[str, Any]]


#: bucket bounds (seconds) of the ingest-to-update latency of batches, per event: the
#: histogram ``featurist_ingest_latency_seconds``
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyCounts:
    """A shard actor's ingest-to-update latency since it started, per event: a count per
    bucket of :data:`LATENCY_BUCKETS` (then one past the last bound) and the sum, added to
    once per batch, so a histogram of them misses no batch however seldom it is read."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def add(self, seconds: float, events: int) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += events
        self.total += seconds * events


@dataclass(frozen=True)
class ShardStats:
    """The reply to :class:`GetStats`: a snapshot of a shard actor's counters."""

    events: int
    batches: int
    keys: int
    max_time: int | None
    errors: dict[str, int]
    #: sampled nanoseconds per event per feature, and the number of events sampled
    feature_ns: list[int]
    sampled_events: int
    compute_ns: int
    #: (ingest-to-update seconds, events) of recent batches
    latencies: list[tuple[float, int]]
    state_bytes: int
    recent_errors: list[FeatureError]
    #: keys whose state was dropped after ``state_ttl``
    expired_keys: int
    first_event_at: float | None
    last_event_at: float | None
    #: the last sampled batches, ``(events, nanoseconds per feature)`` (``rt.metrics()``
    #: takes the latency percentiles over them)
    feature_samples: tuple[tuple[int, list[int]], ...] = ()
    #: times the actor was restarted after a failure
    restarts: int = 0
    #: poison events set aside (in dead letters)
    poison: int = 0
    #: every batch's ingest-to-update latency since the actor started, per event: counts per
    #: bucket of :data:`LATENCY_BUCKETS` (then past the last), and their sum in seconds
    latency_buckets: tuple[int, ...] = ()
    latency_sum: float = 0.0


def fail_batch(context: ActorContext, batch: Batch, error: Exception, **where: Any) -> None:
    """A batch that raised out of a shard actor's engine: log it and put its events in dead
    letters. Engines catch every per-feature error and set poison events aside one by one
    (:func:`set_aside`), so this is a bug outside them, the last resort; the actor kernel must
    not retry the batch, which may be partly applied already."""
    _log.exception("batch_failed", **where)
    context.dead_letters.record(
        batch.events,
        context.name,
        DeadLetterReason.FAILED,
        error=error,
        detail="a batch failed in a shard actor; it may be partly applied",
    )


class PoisonLog:
    """The poison events of one shard actor: counted, and logged at most once per interval
    (the first at once) with the count since the last line and the newest exception."""

    __slots__ = ("count", "logged", "logged_at")

    def __init__(self) -> None:
        #: poison events since the actor started (or since the one it replaced started)
        self.count = 0
        self.logged = 0
        self.logged_at = -_POISON_LOG_INTERVAL

    def add(self, poison: list[Any], **where: Any) -> None:
        self.count += len(poison)
        now = time.monotonic()
        if now - self.logged_at < _POISON_LOG_INTERVAL:
            return
        key, t, _, error = poison[-1]
        _log.warning(
            "poison_events",
            **where,
            events=self.count - self.logged,
            total=self.count,
            key=key,
            event_time=t,
            error=_describe(error),
            detail="events that raised in the engine are in dead letters; the others went on",
            exc_info=error,
        )
        self.logged, self.logged_at = self.count, now


def poison_log(actor: Actor[Any]) -> PoisonLog:
    """The actor's :class:`PoisonLog`, made at its first poison event. It lives in the actor's
    ``__dict__``, so an actor that takes over its predecessor's attributes keeps the count."""
    log: PoisonLog | None = actor.__dict__.get("_poison_log")
    if log is None:
        log = actor.__dict__["_poison_log"] = PoisonLog()
    return log


def poison_count(actor: Actor[Any]) -> int:
    """The poison events the actor has set aside (0 before any), for its statistics."""
    log: PoisonLog | None = actor.__dict__.get("_poison_log")
    return 0 if log is None else log.count


def set_aside(actor: Actor[Any], poison: list[Any], events: list[Any], **where: Any) -> list[Any]:
    """Put the poison events an engine reported, ``(key, time, event, exception)``, in dead
    letters (reason ``FAILED``, with the exception; the message is the event), count and log
    them; returns ``events``, ``(key, time, event)`` tuples, without them. ``where`` names the
    actor's group or join and its shard."""
    context = actor.context
    place = ", ".join(f"{name} {value}" for name, value in where.items())
    for key, t, event, error in poison:
        context.dead_letters.record(
            event,
            context.name,
            DeadLetterReason.FAILED,
            error=error,
            detail=f"poison event (key {key!r}, time {t}): it raised in {place}; the other "
            "events of its batch were applied",
        )
    poison_log(actor).add(poison, **where)
    # as many as were reported, by key, time and the event object: an event object may be
    # shared by several events (the enricher passes a cached row's fields to every event of
    # that row), and only the one that raised is left out
    bad = Counter((key, t, id(event)) for key, t, event, _ in poison)
    kept = []
    for item in events:
        mark = (item[0], item[1], id(item[2]))
        if bad[mark]:
            bad[mark] -= 1
            continue
        kept.append(item)
    return kept


def log_left_out(left_out: Sequence[tuple[Any, Exception]], **where: Any) -> None:
    """Log the keys a snapshot left out: their number, a few of them and the first reason."""
    shown = []
    for key, _ in left_out[:5]:
        text = repr(key)
        shown.append(text if len(text) <= 80 else text[:77] + "...")
    _log.warning(
        "checkpoint_keys_left_out",
        **where,
        keys=len(left_out),
        first_keys=shown,
        error=str(left_out[0][1]),
        detail="their state cannot be encoded: the checkpoint holds the other keys; these "
        "keys keep their live state, and a restore from this checkpoint starts them empty",
    )


def _describe(error: BaseException) -> str:
    """``Type: message``, or the type alone when the message itself raises."""
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__
