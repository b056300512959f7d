"""The workers' statistics as one: :func:`merge_statistics`."""

from __future__ import annotations

from typing import Any

import msgspec

from .._results import EnrichmentStatistics, RuntimeStatistics

__all__ = ["merge_statistics"]

#: fields that are not summed: the lowest (watermarks), the highest (depths, latencies: the
#: slowest worker's percentile, an upper bound of the whole's; peaks of one key or stash)
_LOWEST = frozenset({"watermark"})
_HIGHEST = frozenset(
    {
        "max_mailbox_depth",
        "latency_p50_ms",
        "latency_p99_ms",
        "largest_key",
        "stash_peak",
        "max_call_ms",
    }
)
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
