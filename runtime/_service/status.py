"""``GET /status``: what the status page shows, as JSON, from a metrics snapshot.

Throughput is measured here, between two calls (events applied over the time between them, over
at least :data:`RATE_WINDOW` seconds), rather than a lifetime mean: the page polls every
second, so it shows the last second or two.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .._observe.metrics import RuntimeMetrics

__all__ = ["RATE_WINDOW", "StatusBoard"]

#: seconds the throughput is measured over, at least
RATE_WINDOW = 1.0


class StatusBoard:
    """Builds the status JSON; keeps the recent samples of events applied."""

    def __init__(self) -> None:
        #: (time, events ingested, events applied), oldest first
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=64)

    def rates(self, now: float, ingested: int, processed: int) -> tuple[float | None, float | None]:
        """Events ingested and applied per second over the last ``RATE_WINDOW`` s or more."""
        samples = self._samples
        samples.append((now, ingested, processed))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, ingested_then, processed_then = samples[0]
        if now - then <= 0:
            return None, None
        span = now - then
        return (ingested - ingested_then) / span, (processed - processed_then) / span

    def status(
        self,
        snapshot: RuntimeMetrics,
        now: float,
        *,
        ready: bool,
        inputs: list[dict[str, Any]],
        sinks: list[dict[str, Any]],
        feature_set: str,
    ) -> dict[str, Any]:
        ingest_rate, apply_rate = self.rates(
            now, snapshot.events_ingested, snapshot.events_processed
        )
        checkpoint = snapshot.checkpoint
        return {
            "feature_set": feature_set,
            "taken_at": snapshot.taken_at,
            "uptime_s": snapshot.uptime_s,
            "ready": ready,
            "events": {
                "ingested": snapshot.events_ingested,
                "rejected": snapshot.events_rejected,
                "processed": snapshot.events_processed,
                "ingested_per_s": ingest_rate,
                "processed_per_s": apply_rate,
            },
            "latency_ms": {"p50": snapshot.latency_p50_ms, "p99": snapshot.latency_p99_ms},
            "watermark_lag_ms": snapshot.watermark_lag_ms,
            "late": {
                "dropped": snapshot.late_dropped,
                "side_output": snapshot.late_side_output,
                "applied": snapshot.late_applied,
            },
            "mailboxes": [
                {
                    "actor": actor.actor,
                    "kind": actor.kind,
                    "group": actor.group,
                    "shard": actor.shard,
                    "depth": actor.mailbox_depth,
                    "capacity": actor.mailbox_capacity,
                    "senders_waiting": actor.senders_waiting,
                    "processed": actor.processed,
                    "errors": actor.errors,
                }
                for actor in snapshot.actors
            ],
            "features": {
                name: {
                    "group": feature.group,
                    "type": feature.type,
                    "events": feature.events,
                    "latency_p50_us": feature.latency_p50_us,
                    "latency_p99_us": feature.latency_p99_us,
                    "errors": feature.errors,
                }
                for name, feature in snapshot.features.items()
            },
            "enrichment": {
                name: {
                    "hit_ratio": source.hit_ratio,
                    "cache_hits": source.cache_hits,
                    "cache_misses": source.cache_misses,
                    "cache_size": source.cache_size,
                    "cache_capacity": source.cache_capacity,
                    "breaker_state": source.breaker_state,
                    "breaker_openings": source.breaker_openings,
                    "failures": source.failures,
                    "mean_call_ms": source.mean_call_ms,
                }
                for name, source in snapshot.sources.items()
            },
            "joins": {
                name: {
                    "buffered_left": join.buffered_left,
                    "buffered_right": join.buffered_right,
                    "keys": join.keys,
                    "records": join.records,
                    "evicted": join.evicted,
                    "state_bytes": join.state_bytes,
                }
                for name, join in snapshot.joins.items()
            },
            "drift": {
                name: {
                    "feature": monitor.feature,
                    "detector": monitor.detector,
                    "values": monitor.values,
                    "alerts": monitor.alerts,
                    "drifting": [
                        segment.segment for segment in monitor.segments if segment.drifting
                    ],
                    "last_alert_time": max(
                        (s.last_alert_time for s in monitor.segments if s.last_alert_time),
                        default=None,
                    ),
                }
                for name, monitor in snapshot.drift.items()
            },
            "checkpoint": None
            if checkpoint is None
            else {
                "sequence": checkpoint.sequence,
                "age_s": checkpoint.age_s + max(0.0, now - snapshot.taken_at),
                "duration_ms": checkpoint.duration_ms,
                "size_bytes": checkpoint.size_bytes,
                "keys": checkpoint.keys,
            },
            "dead_letters": dict(snapshot.dead_letters),
            "inputs": inputs,
            "sinks": sinks,
        }
