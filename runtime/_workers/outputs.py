"""The front's outputs: the hubs the application's subscriptions read (``rt.updates()``,
``rt.join_records()``, ``rt.enriched_events()``, ``rt.late_events()``), and what the workers
send of them republished there.

While a hub has subscribers, each :class:`Events` frame says so (:meth:`Outputs.wanted`) and
the worker forwards that output. What a worker started again makes a second time is dropped
here, by the counts of its :class:`WorkerLog` (``recovery.py``): update rows per group and
key, join records per join and key, enriched events per key, late events per group and key.
"""

from __future__ import annotations

from typing import Any

from .._batches import EnrichedBatch, JoinRecordBatch, LateEventBatch, UpdateBatch
from .._results import EnrichedEvent, FeatureUpdate, JoinRecord, LateEvent
from .._updates import UpdateHub
from .protocol import Enriched, JoinRecords, Late, Updates
from .recovery import WorkerLog

__all__ = ["Outputs"]


class Outputs:
    """The front's hubs: the updates, every join's records and each join's, the enriched
    and the late events.

    Args:
        joins: the feature set's joins' names.
    """

    def __init__(self, joins: tuple[str, ...] = ()) -> None:
        self.updates: UpdateHub[Any] = UpdateHub()
        self.records: UpdateHub[JoinRecord] = UpdateHub()
        self.join_hubs: dict[str, UpdateHub[JoinRecord]] = {name: UpdateHub() for name in joins}
        self.enriched: UpdateHub[EnrichedEvent] = UpdateHub()
        self.late: UpdateHub[LateEvent] = UpdateHub()

    def wanted(self) -> tuple[bool, bool, bool, bool]:
        """Whether anyone reads updates, join records, enriched and late events (the
        workers forward those)."""
        records = self.records.active or any(hub.active for hub in self.join_hubs.values())
        return self.updates.active, records, self.enriched.active, self.late.active

    def records_hub(self, join: str | None) -> UpdateHub[JoinRecord]:
        """The hub of the records of the join named ``join``, or of every join for None.

        Raises:
            ValueError: the feature set has no join named ``join``.
        """
        if join is None:
            return self.records
        hub = self.join_hubs.get(join)
        if hub is None:
            known = ", ".join(self.join_hubs) or "none"
            raise ValueError(f"join: no join named {join!r} (known: {known})")
        return hub

    def close(self) -> None:
        """End every subscription (the runtime stops)."""
        for hub in (self.updates, self.records, *self.join_hubs.values(), self.enriched, self.late):
            hub.close()

    # -- what the workers send ---------------------------------------------------------------
    async def updates_of(self, message: Updates, log: WorkerLog | None) -> None:
        rows, errors, extras = message.rows, message.errors, message.extras
        if log is not None:
            keep = log.delivered(message.group, [row[0] for row in rows])
            if keep is not None:
                rows, errors, extras = _kept(keep, rows, errors, extras)
                if not rows:  # all delivered before a restart: nothing new to publish
                    return
        await self.updates.publish(
            UpdateBatch(
                message.group,
                message.names,
                rows,
                errors,
                message.latency_ms,
                message.processed_at,
                extras,
            )
        )

    async def records_of(self, message: JoinRecords, log: WorkerLog | None) -> None:
        batch = JoinRecordBatch(
            message.join,
            message.keys,
            message.left_events,
            message.right_events,
            message.left_times,
            message.right_times,
            message.join_times,
            message.time_differences,
            message.processed_at,
            records=message.records,
        )
        if log is not None:
            keep = log.delivered(("join", message.join), message.keys)
            if keep is not None:
                batch = _kept_records(batch, keep)
                if not len(batch):
                    return
        for hub in (self.records, self.join_hubs.get(message.join)):
            if hub is not None and hub.active:
                await hub.publish(batch)

    async def enriched_of(self, message: Enriched, log: WorkerLog | None) -> None:
        rows = message.rows
        if log is not None:
            keep = log.delivered(("enriched",), [row[0] for row in rows])
            if keep is not None:
                rows = [rows[i] for i in keep]
        if rows and self.enriched.active:
            await self.enriched.publish(EnrichedBatch(rows, message.processed_at))

    async def late_of(self, message: Late, log: WorkerLog | None) -> None:
        late = message.rows
        if log is not None:
            keep = log.delivered(("late", message.group), [row[0] for row in late])
            if keep is not None:
                late = [late[i] for i in keep]
        if late and self.late.active:
            await self.late.publish(LateEventBatch(message.group, late))


def _kept(
    keep: list[int],
    rows: list[tuple[Any, ...]],
    errors: dict[int, dict[str, str]] | None,
    extras: dict[int, FeatureUpdate] | None,
) -> tuple[
    list[tuple[Any, ...]], dict[int, dict[str, str]] | None, dict[int, FeatureUpdate] | None
]:
    """The rows of a batch at ``keep``, with their errors and extras at their new indexes."""
    kept = [rows[i] for i in keep]
    if errors or extras:
        at = {old: new for new, old in enumerate(keep)}
        if errors:
            errors = {at[i]: e for i, e in errors.items() if i in at} or None
        if extras:
            extras = {at[i]: e for i, e in extras.items() if i in at} or None
    return kept, errors, extras


def _kept_records(batch: JoinRecordBatch, keep: list[int]) -> JoinRecordBatch:
    """The records of ``batch`` at ``keep``."""
    return JoinRecordBatch(
        batch.join,
        [batch.keys[i] for i in keep],
        [batch.left_events[i] for i in keep],
        [batch.right_events[i] for i in keep],
        [batch.left_times[i] for i in keep],
        [batch.right_times[i] for i in keep],
        [batch.join_times[i] for i in keep],
        [batch.time_differences[i] for i in keep],
        batch.processed_at,
        records=[batch.records[i] for i in keep],
    )
