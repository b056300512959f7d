"""Metrics: what ``rt.metrics()`` and ``rt.mailboxes()`` give, and how they are built.

``rt.mailboxes()`` reads every actor's mailbox counters without asking the actor, so it answers
at once even when the mailboxes are full. ``rt.metrics()`` asks every actor for its counters
and samples (as ``rt.statistics()`` does, so under load it waits behind full mailboxes) and
builds one :class:`RuntimeMetrics`, a frozen snapshot; ``prometheus.py`` serves it.

Per-feature computation latency comes from the sampled batches of each shard actor (one batch
in ``sample_every`` is timed per feature): each keeps its last 256 samples, ``(events,
nanoseconds per feature)``, and the quantiles are taken over the samples of all shards, each
weighing its batch's events. A sample is a batch's mean per event, so the quantiles describe
batches, not single events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from .._checkpoints.store import CheckpointInfo
from .._joins.shard import JoinShardStats
from .._messages import ShardStats
from .._results import EnrichmentStatistics, JoinStatistics
from .._spec.drift import DriftStatus

__all__ = [
    "ActorMailbox",
    "ActorMetrics",
    "CheckpointMetrics",
    "FeatureMetrics",
    "GroupMetrics",
    "RuntimeMetrics",
    "actor_metrics",
    "checkpoint_metrics",
    "feature_metrics",
    "group_watermark",
    "join_totals",
    "weighted_quantile",
]


class ActorMailbox(msgspec.Struct, frozen=True, kw_only=True):
    """One actor's mailbox, from ``rt.mailboxes()``: read without asking the actor."""

    #: the actor's name in the actor system
    actor: str
    #: ``"features"`` (a feature group's shard), ``"join"``, ``"enricher"`` or ``"drift"``
    kind: str
    #: the feature group, join, stream (for an enricher) or drift monitor it runs
    group: str
    #: its shard; None for a drift monitor, which reads the updates of every shard
    shard: int | None
    #: batches (or other messages) waiting now, and the most the mailbox holds before its
    #: senders wait
    depth: int
    capacity: int
    #: tasks waiting for room to send (``ingest`` when the runtime is full)
    senders_waiting: int
    #: messages handled since the actor was spawned
    processed: int
    #: messages its full mailbox refused (0: the runtime's mailboxes make senders wait)
    dropped: int


class ActorMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One actor's part of :class:`RuntimeMetrics`."""

    #: as in :class:`ActorMailbox`
    actor: str
    kind: str
    group: str
    shard: int | None
    mailbox_depth: int
    mailbox_capacity: int
    senders_waiting: int
    processed: int
    #: messages it failed on, in dead letters with reason ``failed`` (poison events, a batch
    #: or an ask whose handler raised)
    errors: int
    #: times the actor was restarted after a failure (None where the actor does not say)
    restarts: int | None


class FeatureMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's part of :class:`RuntimeMetrics`."""

    feature: str
    #: the feature's type (``"count"``, ``"sum"``...) and the feature group computing it
    type: str
    group: str
    #: events its group applied, over all shards
    events: int
    #: ``events`` over the time between the group's first and last batch (None before two
    #: batches apart in time)
    events_per_second: float | None
    #: computation time per event in microseconds, over the sampled batches (see the module's
    #: notes): the median, 95th and 99th percentiles; None before a sampled batch, and for a
    #: ratio (computed when read, not per event). The features of a window group share one
    #: pass per event: each is charged an equal part of the group's time.
    latency_p50_us: float | None
    latency_p95_us: float | None
    latency_p99_us: float | None
    #: events in the samples behind the percentiles
    latency_sampled_events: int
    #: events on which it failed (its error reported, the other features went on)
    errors: int


class GroupMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One feature group's part of :class:`RuntimeMetrics`: its keys, time and lateness."""

    group: str
    #: ``"keyed"`` (aggregates) or ``"windowed"``
    kind: str
    #: the stream it reads
    stream: str
    #: events applied, keys with state, estimated bytes of state (over all shards)
    events: int
    keys: int
    state_bytes: int
    #: the lowest watermark of its shards that have seen events (ms; a shard's is its newest
    #: event time minus ``max_out_of_orderness``), and the runtime's clock now minus it (ms):
    #: how far event time is behind; None before any event
    watermark: int | None
    watermark_lag_ms: float | None
    #: late events (windowed groups): dropped, sent to the side output, applied
    late_dropped: int
    late_side_output: int
    late_applied: int


class CheckpointMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """The last checkpoint, in :class:`RuntimeMetrics`."""

    #: its number in the directory
    sequence: int
    #: seconds since it was taken
    age_s: float
    #: how long ingest waited while the state was captured, and the whole operation (ms)
    pause_ms: float
    duration_ms: float
    #: the file's size, and the keys it holds
    size_bytes: int
    keys: int


class RuntimeMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the runtime's metrics, from ``await rt.metrics()``.

    The dicts are keyed by name (feature, group, join, source, monitor); ``actors`` is in
    start order. It encodes to JSON or MessagePack as it is.
    """

    #: wall-clock time it was taken (seconds since the epoch), and seconds since the start
    taken_at: float
    uptime_s: float
    #: events accepted by ``ingest``, rejected as invalid (in dead letters), applied (as in
    #: ``rt.statistics()``)
    events_ingested: int
    events_rejected: int
    events_processed: int
    #: ingest-to-update latency over recent batches (ms)
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    #: the largest watermark lag of the groups (ms), None before any event
    watermark_lag_ms: float | None
    #: late events of windowed groups and joins: dropped, sent to the side output, applied
    #: (windows with ``late_policy="update"``)
    late_dropped: int
    late_side_output: int
    late_applied: int
    #: every actor: mailbox, messages, errors, restarts
    actors: tuple[ActorMetrics, ...]
    #: every feature: events, throughput, latency percentiles, errors
    features: dict[str, FeatureMetrics]
    #: every feature group: keys, state, watermark, lateness
    groups: dict[str, GroupMetrics]
    #: every join: buffered events per side, keys, records, evictions, late events
    joins: dict[str, JoinStatistics]
    #: every dimension source: cache hit ratio, calls, latency, circuit breaker
    sources: dict[str, EnrichmentStatistics]
    #: every drift monitor, with each segment's score (``rt.drift_status()``)
    drift: dict[str, DriftStatus]
    #: the last checkpoint taken by this runtime, or None
    checkpoint: CheckpointMetrics | None
    #: dead letters recorded, by reason (``"rejected"``, ``"failed"``, ``"undeliverable"``,
    #: ``"dropped"``)
    dead_letters: dict[str, int]


# -- building ----------------------------------------------------------------------------------
def weighted_quantile(samples: Sequence[tuple[float, int]], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of ``(value, weight)`` samples sorted by value (None
    when they weigh nothing)."""
    total = sum(weight for _, weight in samples)
    if not total:
        return None
    threshold = q * total
    running = 0
    for value, weight in samples:
        running += weight
        if weight and running >= threshold:
            return value
    return samples[-1][0]


def feature_metrics(
    name: str,
    type_name: str,
    group: str,
    index: int,
    stats: Sequence[ShardStats],
    *,
    timed: bool,
) -> FeatureMetrics:
    """Feature ``index`` of a group from its shards' stats; ``timed`` is False for a feature
    computed when read (a ratio), which has no latency."""
    events = sum(s.events for s in stats)
    starts = [s.first_event_at for s in stats if s.first_event_at is not None]
    ends = [s.last_event_at for s in stats if s.last_event_at is not None]
    span = max(ends) - min(starts) if starts and ends else 0.0
    samples = sorted(
        (ns[index] / n / 1000, n) for s in stats for n, ns in s.feature_samples if n and timed
    )
    p50, p95, p99 = (weighted_quantile(samples, q) for q in (0.50, 0.95, 0.99))
    return FeatureMetrics(
        feature=name,
        type=type_name,
        group=group,
        events=events,
        events_per_second=events / span if span > 0 else None,
        latency_p50_us=p50,
        latency_p95_us=p95,
        latency_p99_us=p99,
        latency_sampled_events=sum(n for _, n in samples),
        errors=sum(s.errors.get(name, 0) for s in stats),
    )


def group_watermark(stats: Sequence[ShardStats], lateness: int) -> int | None:
    """The lowest watermark of the shards that have seen events."""
    highs = [s.max_time for s in stats if s.max_time is not None]
    return min(highs) - lateness if highs else None


def join_totals(shards: Iterable[JoinShardStats]) -> JoinStatistics:
    """A join's statistics summed over its shards (the largest key: the largest of any)."""
    total: dict[str, int] = {}
    largest = 0
    for stats in shards:
        for name, n in vars(stats.counters).items():
            total[name] = total.get(name, 0) + n
        for name in ("keys", "buffered_left", "buffered_right", "state_bytes"):
            total[name] = total.get(name, 0) + getattr(stats, name)
        largest = max(largest, stats.largest_key)
    return JoinStatistics(largest_key=largest, **total)


def checkpoint_metrics(info: CheckpointInfo | None, now: float) -> CheckpointMetrics | None:
    if info is None:
        return None
    return CheckpointMetrics(
        sequence=info.sequence,
        age_s=max(now - info.created_at, 0.0),
        pause_ms=info.pause_ms,
        duration_ms=info.duration_ms,
        size_bytes=info.size_bytes,
        keys=info.keys,
    )


def actor_metrics(
    mailboxes: Iterable[ActorMailbox],
    failed: Mapping[str, int],
    restarts: Mapping[str, int],
) -> tuple[ActorMetrics, ...]:
    """Each mailbox with its actor's failed messages and restarts, by actor name (None for
    an actor whose restarts are not given)."""
    return tuple(
        ActorMetrics(
            actor=box.actor,
            kind=box.kind,
            group=box.group,
            shard=box.shard,
            mailbox_depth=box.depth,
            mailbox_capacity=box.capacity,
            senders_waiting=box.senders_waiting,
            processed=box.processed,
            errors=failed.get(box.actor, 0),
            restarts=restarts.get(box.actor),
        )
        for box in mailboxes
    )
