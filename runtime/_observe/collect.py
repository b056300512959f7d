"""Looking at a running runtime: what ``rt.statistics()``, ``rt.metrics()``, ``rt.mailboxes()``,
``rt.describe()`` and ``rt.recent_errors()`` read, and the Prometheus endpoint's snapshots.

:class:`Observer` reads the actors of the runtime's :class:`~runtime._topology.Topology`: their
mailboxes without asking them (``mailboxes``), their counters by asking each one (everything
else, so it waits behind full mailboxes). It keeps one counter of its own, each actor's failed
messages, which it counts as they reach the dead letters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import msgspec

from actors import ActorRef, DeadLetter, DeadLetterReason, DeadLetters, get_logger

from .._checkpoints.store import CheckpointInfo
from .._drift.monitor import DriftMonitors
from .._enrich.shard import EnrichShardStats
from .._exceptions import RuntimeClosed, UnknownFeature
from .._ingest.router import Ingest
from .._joins.shard import JoinShardStats
from .._messages import GetEnrichStats, GetJoinStats, GetStats, GetWindowStats, ShardStats
from .._results import (
    EnrichmentStatistics,
    FeatureDescription,
    FeatureError,
    JoinStatistics,
    RuntimeStatistics,
    WindowStatistics,
)
from .._spec.cost import CostEstimate, MeasuredCost, estimate_cost
from .._topology import Group, Topology
from .._windows.shard import WindowStats
from .metrics import (
    ActorMailbox,
    ActorMetrics,
    GroupMetrics,
    RuntimeMetrics,
    actor_metrics,
    checkpoint_metrics,
    feature_metrics,
    group_watermark,
    join_totals,
    weighted_quantile,
)
from .prometheus import FeatureCollector, Histograms, MetricsServer

#: feature types computed when values are read, not per event: no time of their own
_UNTIMED = frozenset({"ratio", "derived"})

__all__ = ["Observer"]

_log = get_logger("featurist")


class Observer:
    """The runtime's statistics, metrics, mailboxes, descriptions and recent errors.

    Args:
        topology: the actors to look at (and the runtime's feature set, as it grows).
        ingest: the events accepted and rejected.
        dead_letters: the actor system's; the observer counts each actor's failed messages.
        drift: the drift monitors.
        clock: the runtime's wall clock (a replay's time, after a replay), for watermark lags.
        lateness: ``max_out_of_orderness`` (ms): a watermark is the newest event time minus it.
        last_checkpoint: the last checkpoint the runtime took, now.
        expected_event_rate: events per second, for the cost estimates of descriptions.
        expected_keys: distinct keys, for the cost estimates of descriptions.
        server: the Prometheus endpoint, or None.
        interval: seconds between two snapshots the endpoint serves.
        check_running: raises :class:`RuntimeClosed` once the runtime stopped.
    """

    def __init__(
        self,
        topology: Topology,
        ingest: Ingest,
        dead_letters: DeadLetters,
        drift: DriftMonitors,
        clock: Callable[[], float],
        *,
        lateness: int,
        last_checkpoint: Callable[[], CheckpointInfo | None],
        expected_event_rate: float,
        expected_keys: int,
        server: MetricsServer | None,
        interval: float,
        check_running: Callable[[], None],
    ) -> None:
        self._topology = topology
        self._ingest = ingest
        self._dead_letters = dead_letters
        self._drift = drift
        self._clock = clock
        self._lateness = lateness
        self._last_checkpoint = last_checkpoint
        self._expected_event_rate = expected_event_rate
        self._expected_keys = expected_keys
        self._server = server
        self._interval = interval
        self._check_running = check_running
        #: wall-clock time the runtime started (0 before), for ``uptime_s``
        self.started_at = 0.0
        #: messages each actor failed on (dead letters with reason ``failed``), by actor name
        self._failed: dict[str, int] = {}
        #: the Prometheus collector; its refresh task runs in ``_tg`` once asked for
        self.collector = FeatureCollector(self._gather)
        self._tg: anyio.abc.TaskGroup | None = None
        self._refreshing = False
        dead_letters.add_listener(self._count_failure)

    def _count_failure(self, letter: DeadLetter) -> None:
        """Dead letters' listener: counts each actor's failed messages."""
        if letter.reason is DeadLetterReason.FAILED:
            self._failed[letter.recipient] = self._failed.get(letter.recipient, 0) + 1

    async def _group_stats(self, group: Group) -> list[ShardStats]:
        return [await ref.ask(GetStats(), timeout=None) for ref in group.refs]

    # -- mailboxes and metrics -------------------------------------------------------------------
    def drift_actors(self) -> tuple[ActorMetrics, ...]:
        """The drift monitors' actors in ``metrics``' form: with workers, the front's own
        actors, beside the workers' (the monitors run in the application's process)."""
        boxes = [box for box in self.mailboxes() if box.kind == "drift"]
        return actor_metrics(boxes, self._failed, {})

    def mailboxes(self) -> list[ActorMailbox]:
        """``rt.mailboxes()``: every actor's mailbox counters, read without asking it."""
        topology = self._topology
        found: list[tuple[ActorRef[Any], str, str, int | None]] = []
        for group in topology.groups:
            found += [(ref, "features", group.name, i) for i, ref in enumerate(group.refs)]
        for join in topology.joins:
            found += [(ref, "join", join.name, i) for i, ref in enumerate(join.refs)]
        for enricher in topology.enrichers:
            found += [(ref, "enricher", enricher.stream, i) for i, ref in enumerate(enricher.refs)]
        found += [(ref, "drift", state.spec.name, None) for state, ref in self._drift.monitors]
        boxes = []
        for ref, kind, name, shard in found:
            stats = ref.statistics()
            boxes.append(
                ActorMailbox(
                    actor=ref.name,
                    kind=kind,
                    group=name,
                    shard=shard,
                    depth=stats.depth,
                    capacity=stats.capacity,
                    senders_waiting=stats.senders_waiting,
                    processed=stats.processed,
                    dropped=stats.dropped,
                )
            )
        return boxes

    async def metrics(self) -> RuntimeMetrics:
        """``rt.metrics()``: asks every actor."""
        return await self._gather(None)

    async def _gather(self, histograms: Histograms | None) -> RuntimeMetrics:
        """``metrics``, with the new samples of the shard actors observed into
        ``histograms``."""
        topology = self._topology
        now = time.time()
        now_ms = self._clock() * 1000
        boxes = self.mailboxes()
        groups = list(topology.groups)
        all_stats = [await self._group_stats(group) for group in groups]
        restarts = {
            ref.name: s.restarts
            for group, stats in zip(groups, all_stats, strict=True)
            for ref, s in zip(group.refs, stats, strict=True)
        }
        joins: dict[str, JoinStatistics] = {}
        for join in list(topology.joins):
            shards: list[JoinShardStats] = [
                await ref.ask(GetJoinStats(), timeout=None) for ref in join.refs
            ]
            restarts.update(
                (ref.name, s.restarts) for ref, s in zip(join.refs, shards, strict=True)
            )
            joins[join.name] = join_totals(shards)
        sources = await self._enrichment_statistics()
        drift = await self._drift.status()
        features = {}
        group_metrics = {}
        for group, stats in zip(groups, all_stats, strict=True):
            if histograms is not None:
                histograms.observe(group.name, group.names, group.types, stats)
            for index, (name, type_name) in enumerate(zip(group.names, group.types, strict=True)):
                features[name] = feature_metrics(
                    name, type_name, group.name, index, stats, timed=type_name not in _UNTIMED
                )
            late: dict[str, int] = {}
            if group.engine is not None:
                for ref in group.refs:
                    reply: WindowStats = await ref.ask(GetWindowStats(), timeout=None)
                    for counter in ("late_dropped", "late_side_output", "late_applied"):
                        late[counter] = late.get(counter, 0) + getattr(reply.counters, counter)
            watermark = group_watermark(stats, self._lateness)
            group_metrics[group.name] = GroupMetrics(
                group=group.name,
                kind="keyed" if group.engine is None else "windowed",
                stream=group.stream,
                events=sum(s.events for s in stats),
                keys=sum(s.keys for s in stats),
                state_bytes=sum(s.state_bytes for s in stats),
                watermark=watermark,
                watermark_lag_ms=None if watermark is None else now_ms - watermark,
                late_dropped=late.get("late_dropped", 0),
                late_side_output=late.get("late_side_output", 0),
                late_applied=late.get("late_applied", 0),
            )
        # events processed as statistics() counts them: by the first group of each stream
        firsts = [
            all_stats[groups.index(found[0])]
            for stream in topology.feature_set.stream_names
            if (found := topology.stream_groups[stream] or topology.enriched_groups(stream))
            and found[0] in groups
        ]
        processed = sum(s.events for stats in firsts for s in stats)
        if not groups:  # joins alone: the events they applied
            processed = max((j.events for j in joins.values()), default=0)
        latencies = sorted((lat, n) for stats in all_stats for s in stats for lat, n in s.latencies)
        lags = [
            g.watermark_lag_ms for g in group_metrics.values() if g.watermark_lag_ms is not None
        ]
        return RuntimeMetrics(
            taken_at=now,
            uptime_s=now - self.started_at if self.started_at else 0.0,
            events_ingested=self._ingest.ingested_before + self._ingest.ingested,
            events_rejected=self._ingest.rejected_before + self._ingest.rejected,
            events_processed=processed,
            latency_p50_ms=_quantile_ms(latencies, 0.50),
            latency_p99_ms=_quantile_ms(latencies, 0.99),
            watermark_lag_ms=max(lags) if lags else None,
            late_dropped=sum(g.late_dropped for g in group_metrics.values())
            + sum(j.late_dropped for j in joins.values()),
            late_side_output=sum(g.late_side_output for g in group_metrics.values())
            + sum(j.late_side_output for j in joins.values()),
            late_applied=sum(g.late_applied for g in group_metrics.values()),
            actors=actor_metrics(boxes, self._failed, restarts),
            features=features,
            groups=group_metrics,
            joins=joins,
            sources=sources,
            drift=drift,
            checkpoint=checkpoint_metrics(self._last_checkpoint(), now),
            dead_letters=dict(self._dead_letters.statistics().by_reason),
        )

    # -- the Prometheus endpoint -----------------------------------------------------------------
    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``rt.metrics_address``: ``(host, port)`` while the endpoint serves, else None."""
        server = self._server
        return None if server is None or not server.serving else (server.host, server.port)

    async def serve(self, stack: AsyncExitStack, tg: anyio.abc.TaskGroup) -> None:
        """Keep ``tg`` for the collector's refresh task; with a metrics server: take a first
        snapshot, listen, and refresh the snapshot every ``interval`` seconds; ``stack`` stops
        the server, so it stops before the actors do when ``stack`` is the runtime's."""
        self._tg = tg
        server = self._server
        if server is None:
            return
        try:
            server.attach(self.collector)
            await self._start_refreshing()
            await server.start(tg)
        except BaseException:
            # the start fails: the runtime's tasks are running and must stop for the task
            # group to exit
            tg.cancel_scope.cancel()
            raise
        stack.push_async_callback(server.stop)
        _log.info("metrics_serving", host=server.host, port=server.port)

    async def prometheus_collector(self) -> FeatureCollector:
        """``rt.prometheus_collector()``: the collector, refreshed from now on."""
        await self._start_refreshing()
        return self.collector

    async def _start_refreshing(self) -> None:
        """A first snapshot, then the refresh task (once)."""
        if self._refreshing:
            return
        tg = self._tg
        if tg is None:
            raise RuntimeClosed("the runtime is not running")
        self._refreshing = True
        try:
            await self.collector.refresh()
        except BaseException:
            self._refreshing = False
            raise
        tg.start_soon(self._refresh, name="featurist-metrics")

    async def _refresh(self) -> None:
        """The collector's snapshots. A failure is logged and the last snapshot kept."""
        while True:
            await anyio.sleep(self._interval)
            try:
                self._check_running()
                await self.collector.refresh()
            except RuntimeClosed:
                return
            except Exception:
                _log.exception("metrics_failed")

    # -- statistics ------------------------------------------------------------------------------
    async def statistics(self) -> RuntimeStatistics:
        """``rt.statistics()``: asks every actor."""
        topology = self._topology
        all_stats = [await self._group_stats(group) for group in topology.groups]
        # Every event of a stream goes to the stream's first group; later groups see events
        # from their registration.
        # (a stream whose features all read lookup fields: its enriched form's first group)
        firsts = [
            all_stats[topology.groups.index(groups[0])]
            for stream in topology.feature_set.stream_names
            if (groups := topology.stream_groups[stream] or topology.enriched_groups(stream))
        ]
        first = firsts[0] if firsts else (all_stats[0] if all_stats else [])
        errors: dict[str, int] = {}
        for stats in all_stats:
            for s in stats:
                for name, n in s.errors.items():
                    errors[name] = errors.get(name, 0) + n
        # Keyed and window groups keep (and expire) keys of their own: the larger count is shown.
        keys = max((sum(s.keys for s in stats) for stats in all_stats), default=0)
        state_bytes = sum(s.state_bytes for stats in all_stats for s in stats)
        latencies = sorted((lat, n) for stats in all_stats for s in stats for lat, n in s.latencies)
        highs = [s.max_time for s in first if s.max_time is not None]
        actors = [ref for group in topology.groups for ref in group.refs]
        actors += [ref for join in topology.joins for ref in join.refs]
        actors += [ref for enricher in topology.enrichers for ref in enricher.refs]
        depth = max((ref.statistics().depth for ref in actors), default=0)
        joins, join_poison = await self._join_statistics()
        enrichment = await self._enrichment_statistics()
        processed = sum(s.events for stats in firsts for s in stats)
        if not topology.groups:  # joins alone: the events they applied
            processed = max((j.events for j in joins.values()), default=0)
        return RuntimeStatistics(
            events_ingested=self._ingest.ingested_before + self._ingest.ingested,
            events_rejected=self._ingest.rejected_before + self._ingest.rejected,
            events_processed=processed,
            feature_errors=errors,
            keys=keys,
            state_bytes=state_bytes,
            state_bytes_per_key=state_bytes / keys if keys else 0.0,
            latency_p50_ms=_quantile_ms(latencies, 0.50),
            latency_p99_ms=_quantile_ms(latencies, 0.99),
            watermark=(min(highs) - self._lateness) if highs else None,
            groups=len(topology.groups),
            shards=topology.shards,
            max_mailbox_depth=depth,
            windows=await self._window_statistics(all_stats),
            joins=joins,
            enrichment=enrichment,
            expired_keys=sum(
                s.expired_keys
                for group, stats in zip(topology.groups, all_stats, strict=True)
                if group.engine is None
                for s in stats
            ),
            poison_events=join_poison + sum(s.poison for stats in all_stats for s in stats),
        )

    async def _window_statistics(
        self, all_stats: list[list[ShardStats]]
    ) -> WindowStatistics | None:
        total = WindowStatistics()
        found = False
        for group, stats in zip(self._topology.groups, all_stats, strict=True):
            if group.engine is None:
                continue
            found = True
            keys = sum(s.keys for s in stats)
            state_bytes = sum(s.state_bytes for s in stats)
            counts: dict[str, int] = {}
            held = 0
            for ref in group.refs:
                reply: WindowStats = await ref.ask(GetWindowStats(), timeout=None)
                held += reply.held_events
                for name, n in vars(reply.counters).items():
                    counts[name] = counts.get(name, 0) + n
            total = msgspec.structs.replace(
                total,
                keys=total.keys + keys,
                state_bytes=total.state_bytes + state_bytes,
                events_held=total.events_held + held,
                **{name: getattr(total, name) + n for name, n in counts.items()},
            )
        if not found:
            return None
        per_key = total.state_bytes / total.keys if total.keys else 0.0
        return msgspec.structs.replace(total, state_bytes_per_key=per_key)

    async def _enrichment_statistics(self) -> dict[str, EnrichmentStatistics]:
        stashed = stash_peak = 0
        for enricher in self._topology.enrichers:
            for ref in enricher.refs:
                shard_stats: EnrichShardStats = await ref.ask(GetEnrichStats(), timeout=None)
                stashed += shard_stats.stashed
                stash_peak = max(stash_peak, shard_stats.stash_peak)
        result = {}
        for name, source in self._topology.sources.items():
            cache = source.cache.statistics()
            fetch = source.fetcher.statistics()
            hits = cache.hits + cache.negative_hits
            mean = fetch.mean_latency_ms if fetch.calls - fetch.failures > 0 else None
            result[name] = EnrichmentStatistics(
                cache_hits=hits,
                cache_misses=cache.misses,
                hit_ratio=cache.hit_ratio,
                stale_served=source.stale_served,
                defaults_after_error=source.defaults_after_error,
                malformed=source.malformed,
                keys_refused=fetch.keys_refused,
                cache_bytes=cache.bytes,
                cache_size=cache.size,
                cache_capacity=cache.capacity,
                cache_utilization=cache.utilization,
                evictions=cache.evictions,
                calls=fetch.calls,
                keys_requested=fetch.keys_requested,
                keys_found=fetch.keys_found,
                keys_missing=fetch.keys_missing,
                failures=fetch.failures,
                retries=fetch.retries,
                timeouts=fetch.timeouts,
                breaker_state=fetch.breaker_state.value,
                breaker_openings=fetch.breaker_openings,
                rejected_by_breaker=fetch.rejected_by_breaker,
                mean_call_ms=mean,
                max_call_ms=fetch.max_latency_ms if mean is not None else None,
                latency_saved_ms=hits * (mean or 0.0),
                # the stashes are the stream's, not the source's: each source shows them all
                stashed=stashed,
                stash_peak=stash_peak,
            )
        return result

    async def _join_statistics(self) -> tuple[dict[str, JoinStatistics], int]:
        """Each join's statistics, and the poison events its actors set aside."""
        result = {}
        poison = 0
        for join in self._topology.joins:
            shards: list[JoinShardStats] = [
                await ref.ask(GetJoinStats(), timeout=None) for ref in join.refs
            ]
            result[join.name] = join_totals(shards)
            poison += sum(s.poison for s in shards)
        return result, poison

    async def recent_errors(self) -> list[FeatureError]:
        """``rt.recent_errors()``: the last errors of each shard actor, by event time."""
        errors = [
            e
            for group in self._topology.groups
            for s in await self._group_stats(group)
            for e in s.recent_errors
        ]
        return sorted(errors, key=lambda e: e.event_time)

    # -- describing features ---------------------------------------------------------------------
    async def describe(self, name: str) -> FeatureDescription:
        """``rt.describe(name)``: with the measured cost once events have flowed.

        Raises:
            UnknownFeature: no feature has that name.
        """
        for group in self._topology.groups:
            if name in group.names:
                index = group.names.index(name)
                stats = await self._group_stats(group)
                feature = group.features[index]
                return self.description(feature, group, self._measure(group, index, stats))
        raise UnknownFeature(
            f"no feature named {name!r} (known: {', '.join(self._topology.feature_set.names)})"
        )

    def description(
        self, feature: Any, group: Group, measured: MeasuredCost | None = None
    ) -> FeatureDescription:
        """``feature`` of ``group`` described, with its estimated cost (and ``measured``)."""
        return FeatureDescription(
            name=feature.name,
            type=group.types[group.names.index(feature.name)],
            group=group.name,
            inputs=tuple(feature.inputs()),
            estimated_cost=self._estimate(feature),
            measured_cost=measured,
        )

    def _estimate(self, feature: Any) -> CostEstimate:
        return estimate_cost(
            feature, event_rate=self._expected_event_rate, keys=self._expected_keys
        )

    def _measure(self, group: Group, index: int, stats: list[ShardStats]) -> MeasuredCost | None:
        events = sum(s.events for s in stats)
        if not events:
            return None
        sampled = sum(s.sampled_events for s in stats)
        feature_ns = sum(s.feature_ns[index] for s in stats)
        is_ratio = group.types[index] in _UNTIMED  # computed when read, not per event
        mean_us = feature_ns / sampled / 1000 if sampled and not is_ratio else None
        starts = [s.first_event_at for s in stats if s.first_event_at is not None]
        ends = [s.last_event_at for s in stats if s.last_event_at is not None]
        span = max(ends) - min(starts) if starts and ends else 0.0
        keys = sum(s.keys for s in stats)
        state_bytes = sum(s.state_bytes for s in stats)
        if group.compiled is not None:
            share = _slots_of(group, index) / max(group.compiled.slot_count, 1)
        else:
            # windowed features share their buffers: each is charged an equal part
            share = 1 / len(group.names)
        return MeasuredCost(
            feature=group.names[index],
            events=events,
            mean_latency_us=mean_us,
            p99_latency_us=None,
            events_per_second=events / span if span > 0 else None,
            state_bytes_per_key=state_bytes / keys * share if keys else None,
        )


def _slots_of(group: Group, index: int) -> int:
    """The state slots of feature ``index`` of a keyed group."""
    prefix = f"f{index}_"
    assert group.compiled is not None
    fields = group.compiled.record_type.__struct_fields__
    return sum(1 for name in fields if name.startswith(prefix))


def _quantile_ms(latencies: list[tuple[float, int]], q: float) -> float | None:
    """The ``q`` quantile of ``(seconds, events)`` latencies sorted by value, in milliseconds."""
    seconds = weighted_quantile(latencies, q)
    return None if seconds is None else seconds * 1000
