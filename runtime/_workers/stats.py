"""The workers' statistics and metrics as one: :func:`merge_statistics`,
:func:`merge_metrics`."""

from __future__ import annotations

from typing import Any

import msgspec

from .._results import EnrichmentStatistics, RuntimeStatistics
from .._spec.cost import MeasuredCost

__all__ = ["hold_counters", "merge_measured", "merge_metrics", "merge_statistics"]

#: fields that are not summed: the lowest (watermarks), the highest (depths, latencies: the
#: slowest worker's percentile, an upper bound of the whole's; peaks of one key or stash)
_LOWEST = frozenset({"watermark"})
_HIGHEST = frozenset(
    {
        "max_mailbox_depth",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_p50_us",
        "latency_p95_us",
        "latency_p99_us",
        "watermark_lag_ms",
        "largest_key",
        "stash_peak",
        "max_call_ms",
    }
)
#: the fields of a worker's metrics that are counters (exported as Prometheus counters: they
#: only grow), and the dicts of counters by name
_COUNTERS = frozenset(
    {
        # the runtime's, a feature's and a group's
        "events_ingested",
        "events_rejected",
        "events_processed",
        "events",
        "errors",
        "late_dropped",
        "late_side_output",
        "late_applied",
        # an actor's
        "processed",
        "restarts",
        # a join's
        "records",
        "unmatched",
        "evicted",
        # a source's
        "cache_hits",
        "cache_misses",
        "calls",
        "failures",
    }
)
_COUNTER_DICTS = frozenset({"dead_letters"})
#: a circuit breaker's states, the worst last: the merged state is the worst worker's
_BREAKER = ("closed", "half_open", "open")


def merge_statistics(parts: list[RuntimeStatistics]) -> RuntimeStatistics:
    """One ``RuntimeStatistics`` of the workers' own: counters and sizes summed, the
    watermark the lowest, depths, peaks and latency percentiles the highest, bytes per key
    recomputed from the sums. Each source's enrichment figures are merged over the workers'
    own caches and calls (each worker has its own): counts and sizes summed (the capacity
    too: ``W`` caches), the ratios recomputed from the sums, the mean call time weighted
    by the calls, the breaker's state the worst of the workers'."""
    merged: RuntimeStatistics = _merge(parts, "")
    if merged.enrichment:
        enrichment = {
            name: _enrichment(merged.enrichment[name], [p.enrichment.get(name) for p in parts])
            for name in merged.enrichment
        }
        merged = msgspec.structs.replace(merged, enrichment=enrichment)
    return merged


def merge_metrics(parts: list[Any], dead_letters: dict[str, int], **front: Any) -> Any:
    """One ``RuntimeMetrics`` of the workers' own (typed ``Any``: the metrics are the
    observer's, a layer above this package): merged as :func:`merge_statistics` merges
    statistics (per feature, group, join and source: counts, events/s and sizes summed,
    latency percentiles and watermark lags the highest, watermarks the lowest), every
    worker's actors listed with ``w<worker>/`` before their names, and ``front``'s fields
    (the front's counts, uptime, checkpoint) in place of the workers'. Dead letters are the
    front's ``dead_letters`` (the events refused at the front, and those the workers refused,
    which they send back to it) and the workers' of other reasons."""
    merged = _merge(parts, "")
    actors = tuple(
        msgspec.structs.replace(actor, actor=f"w{index}/{actor.actor}")
        for index, part in enumerate(parts)
        for actor in part.actors
    )
    sources = {
        name: _enrichment(merged.sources[name], [p.sources.get(name) for p in parts])
        for name in merged.sources
    }
    dead = dict(dead_letters)
    for part in parts:
        for reason, count in part.dead_letters.items():
            if reason != "rejected":
                dead[reason] = dead.get(reason, 0) + count
    return msgspec.structs.replace(
        merged, actors=actors, sources=sources, dead_letters=dead, **front
    )


def merge_measured(parts: list[MeasuredCost | None]) -> MeasuredCost | None:
    """One feature's measured cost over the workers (None where none measured it yet):
    events and events/s summed; the mean latency and the state per key weighted by each
    worker's events (an estimate: a worker's keys are not counted here); the p99 the
    highest (the slowest worker's: an upper bound of the whole's)."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    events = sum(p.events for p in present)

    def weighted(values: list[tuple[float | None, int]]) -> float | None:
        known = [(v, n) for v, n in values if v is not None]
        weight = sum(n for _, n in known)
        if not known:
            return None
        if not weight:
            return sum(v for v, _ in known) / len(known)
        return sum(v * n for v, n in known) / weight

    rates = [p.events_per_second for p in present if p.events_per_second is not None]
    p99s = [p.p99_latency_us for p in present if p.p99_latency_us is not None]
    return MeasuredCost(
        feature=present[0].feature,
        events=events,
        mean_latency_us=weighted([(p.mean_latency_us, p.events) for p in present]),
        p99_latency_us=max(p99s) if p99s else None,
        events_per_second=sum(rates) if rates else None,
        state_bytes_per_key=weighted([(p.state_bytes_per_key, p.events) for p in present]),
    )


def _enrichment(
    merged: EnrichmentStatistics, parts: list[EnrichmentStatistics | None]
) -> EnrichmentStatistics:
    present = [p for p in parts if p is not None]
    lookups = merged.cache_hits + merged.cache_misses
    timed = [(p.mean_call_ms, p.calls) for p in present if p.mean_call_ms is not None]
    weight = sum(calls for _, calls in timed)
    mean = None
    if timed:
        mean = (
            sum(ms * calls for ms, calls in timed) / weight
            if weight
            else sum(ms for ms, _ in timed) / len(timed)
        )
    states = [p.breaker_state for p in present]
    worst = max(states, key=lambda s: _BREAKER.index(s) if s in _BREAKER else len(_BREAKER))
    return msgspec.structs.replace(
        merged,
        hit_ratio=merged.cache_hits / lookups if lookups else 0.0,
        cache_utilization=(
            merged.cache_size / merged.cache_capacity if merged.cache_capacity else 0.0
        ),
        mean_call_ms=mean,
        breaker_state=worst,
    )


def _merge(values: list[Any], name: str) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, msgspec.Struct):
        fields = {
            field: _merge([getattr(v, field) for v in present], field)
            for field in first.__struct_fields__
        }
        if "state_bytes_per_key" in fields:
            keys = fields.get("keys") or 0
            fields["state_bytes_per_key"] = fields.get("state_bytes", 0) / keys if keys else 0.0
        return type(first)(**fields)
    if isinstance(first, dict):
        names = dict.fromkeys(k for v in present for k in v)
        return {k: _merge([v.get(k) for v in present], k) for k in names}
    if isinstance(first, bool) or isinstance(first, str):
        return first
    if isinstance(first, (int, float)):
        if name in _LOWEST:
            return min(present)
        if name in _HIGHEST:
            return max(present)
        return sum(present)
    return first


def hold_counters(previous: Any, current: Any) -> Any:
    """A worker's metrics ``current`` with every counter no lower than in ``previous`` (the
    same worker's last metrics, or None).

    A worker started again after it died restores its groups' counters from the checkpoint
    and counts the replayed events again, and its actors start from nothing: its counters
    drop, and so would their sums over the workers, which Prometheus takes for a reset (a
    spike of ``rate()``). Held at their highest per worker, they stay flat until the new
    worker's pass them, then grow on: monotonic, as a counter must be."""
    if previous is None:
        return current
    return _hold(previous, current, "")


def _hold(previous: Any, current: Any, name: str) -> Any:
    if isinstance(current, msgspec.Struct):
        if type(previous) is not type(current):
            return current
        changes: dict[str, Any] = {}
        for field in current.__struct_fields__:
            new = getattr(current, field)
            old = getattr(previous, field)
            if field in _COUNTERS:
                if isinstance(new, int) and isinstance(old, int) and old > new:
                    changes[field] = old
            elif isinstance(new, (msgspec.Struct, dict, tuple)) and old is not None:
                held = _hold(old, new, field)
                if held is not new:
                    changes[field] = held
        return msgspec.structs.replace(current, **changes) if changes else current
    if isinstance(current, dict) and isinstance(previous, dict):
        if name in _COUNTER_DICTS:
            return {k: max(v, previous.get(k, 0)) for k, v in {**previous, **current}.items()}
        return {k: _hold(previous.get(k), v, k) if k in previous else v for k, v in current.items()}
    if isinstance(current, tuple) and name == "actors":
        # actors by name: a restarted worker's have the names of the ones before
        before = {actor.actor: actor for actor in previous}
        return tuple(
            _hold(before[actor.actor], actor, "") if actor.actor in before else actor
            for actor in current
        )
    return current
