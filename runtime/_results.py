"""What the runtime gives back: per-event updates, feature vectors, descriptions, statistics.

All are frozen ``msgspec.Struct``s, so they encode to JSON or MessagePack as they are.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._spec.cost import CostEstimate, MeasuredCost

__all__ = [
    "FeatureDescription",
    "FeatureError",
    "FeatureResult",
    "FeatureUpdate",
    "FeatureVector",
    "EnrichedEvent",
    "EnrichmentStatistics",
    "JoinRecord",
    "JoinStatistics",
    "LateEvent",
    "RuntimeStatistics",
    "WindowStatistics",
]


class FeatureResult(msgspec.Struct, frozen=True):
    """One feature's outcome for one event (the seed's per-feature result)."""

    #: the feature's value after the event, or None with an error
    value: Any
    #: time spent computing this feature per event, in milliseconds (estimated from sampled
    #: batches; see ``docs/runtime.md``)
    computation_latency_ms: float | None
    #: the event's time, in milliseconds since the epoch
    timestamp: int
    #: the error message when this feature failed on this event
    error: str | None = None


class FeatureUpdate(msgspec.Struct, frozen=True):
    """The change one event made to its key's features, as delivered by ``rt.updates()``."""

    #: the entity key
    key: Any
    #: the event's time, milliseconds since the epoch
    event_time: int
    #: every feature of the group after the event, by name
    values: dict[str, Any]
    #: features that failed on this event: name -> message (None when none failed)
    errors: dict[str, str] | None
    #: per-feature computation latency estimate, milliseconds
    latency_ms: dict[str, float]
    #: wall-clock time the update was computed (seconds since the epoch)
    processed_at: float
    #: the feature group that computed it
    group: str = "g0"
    #: ``"update"`` after an event; for windowed features also ``"close"`` (the final values
    #: of a window that closed, in ``values``: only that window's features),
    #: ``"correction"`` (a closed window's new final values after a late event), ``"match"``
    #: (a sequence matched: its new count) and ``"anomaly"`` (a zscore beyond its threshold)
    kind: str = "update"
    #: for ``"close"`` and ``"correction"``: the window's ``(start, end)`` in event time (ms);
    #: for ``"match"``: the times of the match's first and last parts
    window: tuple[int, int] | None = None
    #: for ``"match"``: the event time of each step of the match; for ``"anomaly"``: the
    #: anomalous event's time
    parts: tuple[int, ...] | None = None

    def result(self, name: str) -> FeatureResult:
        """One feature's :class:`FeatureResult` for this event."""
        error = self.errors.get(name) if self.errors else None
        return FeatureResult(
            None if error is not None else self.values[name],
            self.latency_ms.get(name),
            self.event_time,
            error,
        )

    def results(self) -> dict[str, FeatureResult]:
        """Every feature's :class:`FeatureResult`, by name."""
        return {name: self.result(name) for name in self.values}


class LateEvent(msgspec.Struct, frozen=True):
    """An event later than ``allowed_lateness``, from ``rt.late_events()`` (with
    ``late_policy="side_output"``)."""

    #: the entity key
    key: Any
    #: the event's time, milliseconds since the epoch
    event_time: int
    #: the key's watermark when the event arrived (ms)
    watermark: int
    #: the event's fields
    event: dict[str, Any]
    #: the feature group whose windows it missed
    group: str


class EnrichedEvent(msgspec.Struct, frozen=True):
    """An event with its dimension rows, from ``rt.enriched_events()``."""

    #: the entity key
    key: Any
    #: the event's time, milliseconds since the epoch
    event_time: int
    #: the event's fields, plus ``enrichment`` (``{lookup: row or default}``),
    #: ``enrichment_metadata`` and the flat ``"<lookup>.<column>"`` fields
    event: dict[str, Any]


class EnrichmentStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One dimension source's part of ``rt.statistics()``: its cache, its calls, and the
    seed's efficiency figures."""

    #: lookups the cache answered (fresh rows, and keys known to be missing), and those it
    #: could not (the event waited for a fetch; several events may wait for one)
    cache_hits: int
    cache_misses: int
    #: ``cache_hits / lookups`` (0.0 before any lookup)
    hit_ratio: float
    #: rows served stale because the source failed; defaults given because it failed with
    #: nothing cached; rows the source returned malformed (the default was given)
    stale_served: int
    defaults_after_error: int
    malformed: int
    #: entries cached (rows, and keys known to be missing, expired ones not yet dropped
    #: included), the cache's capacity and ``size / capacity``; entries evicted
    cache_size: int
    cache_capacity: int
    cache_utilization: float
    evictions: int
    #: calls of the source, keys asked, found and missing; calls that failed after their
    #: retries; retries; attempts that timed out
    calls: int
    keys_requested: int
    keys_found: int
    keys_missing: int
    failures: int
    retries: int
    timeouts: int
    #: the circuit breaker: ``"closed"``, ``"open"`` or ``"half_open"``; times it opened;
    #: batches it refused
    breaker_state: str
    breaker_openings: int
    rejected_by_breaker: int
    #: mean and max latency of the source's successful calls (ms)
    mean_call_ms: float | None
    max_call_ms: float | None
    #: the cache hits times the mean call latency (ms): the seed's figure of source time the
    #: cache saved, an upper bound where calls are batched
    latency_saved_ms: float
    #: events waiting in the enrichers' stashes now (all the enrichers', under each source)
    stashed: int
    #: the most events one enricher's stash held after a batch (bounded by ``enrich_stash``
    #: plus one batch), since the runtime started
    stash_peak: int = 0
    #: lookup keys the source cannot take (a lone surrogate, a key too long for a URL, a key
    #: whose call failed alone): refused, recorded in dead letters, given the default
    keys_refused: int = 0
    #: the estimated bytes of the cached entries, with ``cache_max_bytes`` set (else 0)
    cache_bytes: int = 0


class JoinRecord(msgspec.Struct, frozen=True):
    """A join's record, from ``rt.join_records()``."""

    #: the join's name
    join: str
    #: the routing key both events share
    key: Any
    #: the record: ``join_timestamp``, ``left_event_timestamp``, ``right_event_timestamp``,
    #: ``time_difference_ms`` and the two events' fields, merged by the join's strategy (for an
    #: unmatched row of an outer join, one side's timestamp and fields are missing: None)
    record: dict[str, Any]
    #: wall-clock time the record was made (seconds since the epoch)
    processed_at: float


class JoinStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One join's part of ``rt.statistics()``, summed over shards."""

    #: events of the join's two streams it applied (late ones not included)
    events: int = 0
    #: records made (matched pairs), unmatched rows of outer joins
    records: int = 0
    unmatched: int = 0
    #: events older than the key's watermark minus allowed_lateness: dropped, or sent to the
    #: side output (``late_policy="side_output"``)
    late_dropped: int = 0
    late_side_output: int = 0
    #: buffered events evicted by a cap (``max_buffered_per_key``, ``max_buffered``)
    evicted: int = 0
    #: keys dropped after ``state_ttl``
    expired_keys: int = 0
    #: calls of the join's predicate or merge function that raised (the pair did not match;
    #: the record's fields were prefixed)
    predicate_errors: int = 0
    merge_errors: int = 0
    #: keys with join state; events buffered now, per side; the most one key had buffered at
    #: any time (both sides)
    keys: int = 0
    buffered_left: int = 0
    buffered_right: int = 0
    largest_key: int = 0
    #: estimated bytes of the buffers
    state_bytes: int = 0


class FeatureVector(msgspec.Struct, frozen=True):
    """A key's current features with their freshness, from ``rt.get(key)``."""

    #: the entity key
    key: Any
    #: feature name -> current value (None where the feature has no value yet)
    values: dict[str, Any]
    #: the greatest event time seen for this key (ms), None if the key is unknown
    last_event_time: int | None
    #: event time up to which the key's shard has seen everything it will wait for (ms)
    watermark: int | None
    #: wall-clock time the key's shard last applied a batch (seconds since the epoch); the
    #: key's own state changed at or before it
    updated_at: float | None
    #: wall-clock now minus ``last_event_time``: how old the newest event is (ms)
    lag_ms: float | None
    #: a read as of a time (``rt.get(key, as_of=...)``): the event time (ms) the values are as
    #: of: the time asked for, or later where the key's state had already taken in events after
    #: it (a read cannot go back: ``docs/serving.md``); None for a read as of the last event
    as_of: int | None = None

    @property
    def known(self) -> bool:
        """False when the runtime has never seen an event of this key."""
        return self.last_event_time is not None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


class FeatureError(msgspec.Struct, frozen=True):
    """A recent feature error, kept for inspection (``rt.recent_errors()``)."""

    feature: str
    key: Any
    event_time: int
    error: str


class FeatureDescription(msgspec.Struct, frozen=True):
    """What ``rt.register`` and ``rt.describe`` return for a feature."""

    name: str
    type: str
    #: the feature group (and so the actors) that computes it
    group: str
    #: the event fields it reads
    inputs: tuple[str, ...]
    #: the estimate at registration (at the runtime's ``expected_event_rate``)
    estimated_cost: CostEstimate
    #: what was measured once events have flowed, else None
    measured_cost: MeasuredCost | None = None


class WindowStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The windowed feature groups' part of ``rt.statistics()``, summed over shards."""

    #: keys with window state, and its estimated bytes in total and per key
    keys: int = 0
    state_bytes: int = 0
    state_bytes_per_key: float = 0.0
    #: events held in sliding windows, panes and sessions
    events_held: int = 0
    #: late events: dropped (beyond ``allowed_lateness``, or past the correction horizon),
    #: sent to the side output, applied with ``late_policy="update"``
    late_dropped: int = 0
    late_side_output: int = 0
    late_applied: int = 0
    #: windows closed (final values emitted) and corrections emitted
    windows_closed: int = 0
    corrections: int = 0
    #: keys whose window state was dropped: all windows closed after idle time, or quiet
    #: for ``state_ttl``
    expired_keys: int = 0
    #: times an idle key's clock was moved on by wall-clock time
    idle_advances: int = 0
    #: sequence matches; events that arrived below the watermark, which sequences skip;
    #: partial matches dropped by ``max_partial``
    pattern_matches: int = 0
    pattern_late: int = 0
    partials_dropped: int = 0
    #: zscore values beyond their threshold
    anomalies: int = 0


class RuntimeStatistics(msgspec.Struct, frozen=True):
    """A snapshot of the runtime (``rt.statistics()``)."""

    #: events accepted by ``ingest``
    events_ingested: int
    #: events rejected as invalid (in dead letters)
    events_rejected: int
    #: events applied by every feature group (with joins and no features: by the joins)
    events_processed: int
    #: errors per feature since start
    feature_errors: dict[str, int]
    #: keys with state
    keys: int
    #: estimated bytes of feature state, in total and per key
    state_bytes: int
    state_bytes_per_key: float
    #: ingest-to-update latency over recent batches, milliseconds
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    #: the lowest shard watermark (ms)
    watermark: int | None
    #: feature groups and shards
    groups: int
    shards: int
    #: the deepest shard mailbox now, in batches
    max_mailbox_depth: int
    #: window state, lateness and expiry (None without windowed features)
    windows: WindowStatistics | None = None
    #: keys of unwindowed feature groups whose state was dropped after ``state_ttl``
    expired_keys: int = 0
    #: each join's records and buffers, by name (empty without joins)
    joins: dict[str, JoinStatistics] = msgspec.field(default_factory=dict)
    #: each dimension source's cache, calls and efficiency, by name (empty without lookups)
    enrichment: dict[str, EnrichmentStatistics] = msgspec.field(default_factory=dict)
    #: poison events: events whose processing raised past the features' own guards, set aside
    #: by a shard actor (of a feature group or a join) and put in dead letters
    poison_events: int = 0
