"""The workers' statistics as one: :func:`merge_statistics`."""

from __future__ import annotations

from typing import Any

import msgspec

from .._results import RuntimeStatistics

__all__ = ["merge_statistics"]

#: fields that are not summed: the lowest (watermarks), the highest (depths, latencies: the
#: slowest worker's percentile, an upper bound of the whole's)
_LOWEST = frozenset({"watermark"})
_HIGHEST = frozenset({"max_mailbox_depth", "latency_p50_ms", "latency_p99_ms"})


def merge_statistics(parts: list[RuntimeStatistics]) -> RuntimeStatistics:
    """One ``RuntimeStatistics`` of the workers' own: counters and sizes summed, the
    watermark the lowest, depths and latency percentiles the highest, bytes per key
    recomputed from the sums."""
    merged: RuntimeStatistics = _merge(parts, "")
    return merged


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
