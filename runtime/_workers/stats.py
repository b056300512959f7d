"""The workers' statistics and metrics as one: :func:`merge_statistics`,
:func:`merge_metrics`."""

from __future__ import annotations

from typing import Any

import msgspec

from .._results import EnrichmentStatistics, RuntimeStatistics
from .._spec.cost import MeasuredCost

__all__ = ["HeldCounters", "merge_measured", "merge_metrics", "merge_statistics"]

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
#: only grow)
_COUNTERS = frozenset(
    {
        # the runtime's, a feature's, a group's and a join's
        "events_ingested",
        "events_rejected",
        "events_processed",
        "events",
        "errors",
        "late_dropped",
        "late_side_output",
        "late_applied",
        "records",
        "unmatched",
        "evicted",
        "expired_keys",
        "predicate_errors",
        "merge_errors",
        # an actor's
        "processed",
        "restarts",
        "dropped",
        # a source's
        "cache_hits",
        "cache_misses",
        "calls",
        "failures",
    }
)
#: the parts of a worker's metrics whose counters a worker started again counts from nothing
#: (its actors, its sources' caches and calls, its dead letters), not from its checkpoint
_FRESH = frozenset({"actors", "sources", "dead_letters"})
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


class HeldCounters:
    """One worker's metrics with counters that never go down (``WorkerFront.metrics``).

    A worker started again after it died counts its groups', features' and joins' counters
    from the checkpoint it restores, then counts the replayed events again: those are held
    at the highest value reported, until the new worker's pass it. Its actors, its sources
    and its dead letters count from nothing: what the worker before it had counted is added
    to theirs. Either way the sum over the workers never drops, which Prometheus would take
    for a reset (a spike of ``rate()``)."""

    __slots__ = ("_bases", "_process", "_raw", "_renewed", "_reported")

    def __init__(self) -> None:
        #: the worker's last metrics as it sent them, and as reported
        self._raw: Any = None
        self._reported: Any = None
        #: per counter of a fresh part (by its path): what the workers before counted
        self._bases: dict[tuple[Any, ...], int] = {}
        #: the process the last metrics came from, and whether this one is another
        self._process: Any = None
        self._renewed = False

    def report(self, part: Any, process: Any = None) -> Any:
        """``part`` (the worker's metrics now, from ``process``: its pid) with its counters
        held or carried on. A new ``process`` is a worker started again, even if its fresh
        counters have already passed the old ones."""
        self._renewed = self._raw is not None and process is not None and process != self._process
        self._process = process
        reported = self._walk(part, self._raw, self._reported, (), False)
        self._raw, self._reported = part, reported
        return reported

    def _counter(
        self, path: tuple[Any, ...], raw: int, before: Any, shown: Any, fresh: bool
    ) -> int:
        if fresh:
            base = self._bases.get(path, 0)
            if isinstance(before, int) and (raw < before or self._renewed):
                base = self._bases[path] = base + before  # a new worker counts from nothing
            return base + raw
        return max(raw, shown) if isinstance(shown, int) else raw

    def _walk(self, value: Any, before: Any, shown: Any, path: tuple[Any, ...], fresh: bool) -> Any:
        if isinstance(value, msgspec.Struct):
            changes: dict[str, Any] = {}
            for field in value.__struct_fields__:
                new = getattr(value, field)
                old = getattr(before, field, None)
                was = getattr(shown, field, None)
                inner = (*path, field)
                if field in _COUNTERS and isinstance(new, int) and not isinstance(new, bool):
                    held = self._counter(inner, new, old, was, fresh)
                elif isinstance(new, (msgspec.Struct, dict, tuple)):
                    held = self._walk(new, old, was, inner, fresh or field in _FRESH)
                else:
                    continue
                if held is not new:
                    changes[field] = held
            return msgspec.structs.replace(value, **changes) if changes else value
        if isinstance(value, dict):
            old_map = before if isinstance(before, dict) else {}
            was_map = shown if isinstance(shown, dict) else {}
            if path and path[-1] == "dead_letters":  # a dict of counters by reason
                return {
                    k: self._counter((*path, k), v, old_map.get(k), was_map.get(k), True)
                    for k, v in value.items()
                }
            return {
                k: self._walk(v, old_map.get(k), was_map.get(k), (*path, k), fresh)
                for k, v in value.items()
            }
        if isinstance(value, tuple) and path and path[-1] == "actors":
            # actors by name: a restarted worker's have the names of the ones before
            old_by = {a.actor: a for a in before or ()}
            was_by = {a.actor: a for a in shown or ()}
            return tuple(
                self._walk(a, old_by.get(a.actor), was_by.get(a.actor), (*path, a.actor), fresh)
                for a in value
            )
        return value
