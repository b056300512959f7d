"""Batches of outputs: what subscriptions carry, one per batch of events an actor applied.

The runtime computes in batches, so it publishes in batches: one object per batch, one
wake-up of the subscriber per batch, and no object per event until someone asks for one.
Each batch type is columnar where it matters (``keys``, ``event_times``, one column per
feature) and iterable as the per-event result types (``FeatureUpdate``, ``JoinRecord``,
``EnrichedEvent``, ``LateEvent``), built lazily as the iteration reaches them, so code that
reads one update at a time keeps working and code that reads columns pays for nothing else.

Every batch is a sized, sliceable sequence (``len(batch)``, ``batch[i:j]`` is a batch of the same
type): a subscription's buffer counts events, not batches, and splits a batch that would
overflow it. Per-feature latency and ``processed_at`` belong to the batch, not to each event.

One batch object goes to every subscription of its output: read it, do not change it (its
lists, and the event dicts it holds, are shared).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from ._results import EnrichedEvent, FeatureUpdate, JoinRecord, LateEvent

__all__ = [
    "EnrichedBatch",
    "ItemBatch",
    "JoinRecordBatch",
    "LateEventBatch",
    "UpdateBatch",
]

T = TypeVar("T")


def _reindex(by_position: dict[int, Any] | None, start: int, stop: int) -> dict[int, Any] | None:
    """The entries of a position-keyed map that fall in ``[start, stop)``, shifted to 0."""
    if not by_position:
        return None
    kept = {i - start: v for i, v in by_position.items() if start <= i < stop}
    return kept or None


def _transpose(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """The columns of ``rows`` (tuples of ``width`` items), made in C once a column is read."""
    return list(zip(*rows, strict=True)) if rows else [()] * width


def _bounds(index: slice, size: int) -> tuple[int, int]:
    start, stop, step = index.indices(size)
    if step != 1:
        raise ValueError("a batch slices with step 1 only")
    return start, max(start, stop)


class UpdateBatch:
    """The feature updates of one batch of events of one feature group.

    Columnar: :attr:`keys`, :attr:`event_times` and :meth:`column` (one list per feature, in
    :attr:`names` order) give the batch's values without an object per event; :attr:`rows`
    holds them as ``(key, event_time, value, value, ...)`` tuples, the cheapest form to
    loop over. Iterating yields a :class:`FeatureUpdate` per event, built as it is reached.

    A windowed group's batch may hold rows of other kinds than ``"update"`` (a window's
    ``"close"``, a ``"correction"``, a ``"match"``, an ``"anomaly"``): :attr:`kinds` tells
    them apart, their row carries None for the features they do not report, and the
    iteration yields their full ``FeatureUpdate`` (with ``window`` and ``parts``).
    """

    __slots__ = (
        "_columns",
        "_errors",
        "_extras",
        "group",
        "latency_ms",
        "names",
        "processed_at",
        "rows",
    )

    def __init__(
        self,
        group: str,
        names: tuple[str, ...],
        rows: list[tuple[Any, ...]],
        errors: dict[int, dict[str, str]] | None,
        latency_ms: dict[str, float],
        processed_at: float,
        extras: dict[int, FeatureUpdate] | None = None,
    ) -> None:
        #: the feature group that computed the batch
        self.group = group
        #: the group's feature names: the order of the values in each row
        self.names = names
        #: one ``(key, event_time, *values)`` tuple per event, in the order they applied
        self.rows = rows
        self._errors = errors
        #: per-feature computation latency estimate (ms), for the whole batch
        self.latency_ms = latency_ms
        #: wall-clock time the batch was computed (seconds since the epoch)
        self.processed_at = processed_at
        self._extras = extras
        self._columns: list[tuple[Any, ...]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"UpdateBatch(group={self.group!r}, events={len(self.rows)})"

    def _transposed(self) -> list[tuple[Any, ...]]:
        if self._columns is None:
            self._columns = _transpose(self.rows, len(self.names) + 2)
        return self._columns

    @property
    def keys(self) -> tuple[Any, ...]:
        """The entity key of each row."""
        return self._transposed()[0]

    @property
    def event_times(self) -> tuple[int, ...]:
        """The event time (ms since the epoch) of each row."""
        return self._transposed()[1]

    def column(self, name: str) -> tuple[Any, ...]:
        """The values of feature ``name``, one per row (None where the feature failed on the
        event, or where a row of another kind does not report it).

        Raises:
            KeyError: the group has no feature of that name.
        """
        try:
            index = self.names.index(name)
        except ValueError:
            raise KeyError(f"group {self.group!r} has no feature {name!r}") from None
        return self._transposed()[index + 2]

    def columns(self) -> dict[str, tuple[Any, ...]]:
        """Every feature's column, by name."""
        transposed = self._transposed()
        return {name: transposed[i + 2] for i, name in enumerate(self.names)}

    @property
    def errors(self) -> dict[int, dict[str, str]]:
        """The rows where features failed: row index -> ``{feature: message}`` (empty when
        none did, the usual case)."""
        return dict(self._errors) if self._errors else {}

    @property
    def kinds(self) -> list[str]:
        """The kind of each row: ``"update"``, or a windowed group's ``"close"``,
        ``"correction"``, ``"match"`` or ``"anomaly"``."""
        kinds = ["update"] * len(self.rows)
        if self._extras:
            for i, update in self._extras.items():
                kinds[i] = update.kind
        return kinds

    def other_kinds(self) -> dict[int, FeatureUpdate]:
        """The rows of other kinds than ``"update"``, by index (empty for most batches):
        what :attr:`kinds` tells, without a list as long as the batch."""
        extras = self._extras
        if not extras:
            return {}
        return {i: update for i, update in extras.items() if update.kind != "update"}

    def __getitem__(self, index: slice) -> UpdateBatch:
        start, stop = _bounds(index, len(self.rows))
        return UpdateBatch(
            self.group,
            self.names,
            self.rows[start:stop],
            _reindex(self._errors, start, stop),
            self.latency_ms,
            self.processed_at,
            _reindex(self._extras, start, stop),
        )

    def update(self, i: int) -> FeatureUpdate:
        """Row ``i`` as a :class:`FeatureUpdate`."""
        extras = self._extras
        if extras:
            extra = extras.get(i)
            if extra is not None:
                return extra
        row = self.rows[i]
        errors = self._errors
        return FeatureUpdate(
            row[0],
            row[1],
            dict(zip(self.names, row[2:], strict=True)),
            errors.get(i) if errors else None,
            self.latency_ms,
            self.processed_at,
            self.group,
        )

    def __iter__(self) -> Iterator[FeatureUpdate]:
        if self._errors or self._extras:
            for i in range(len(self.rows)):
                yield self.update(i)
            return
        names, latency, at, group = self.names, self.latency_ms, self.processed_at, self.group
        for row in self.rows:
            yield FeatureUpdate(
                row[0], row[1], dict(zip(names, row[2:], strict=True)), None, latency, at, group
            )


class JoinRecordBatch:
    """The records one join shard made from one batch of events.

    Columnar: :attr:`keys`, :attr:`left_events` and :attr:`right_events` (the two events of
    each record, as ingested), :attr:`left_times` and :attr:`right_times` (their event
    times), :attr:`join_times` (the later of the two) and :attr:`time_differences` give the
    records' values without a dict per record; for an unmatched row of an outer join, the
    missing side's event and time are None. :attr:`records` holds each record's fields
    merged in one dict (as ``JoinRecord.record``), built the first time it is read;
    iterating yields a :class:`JoinRecord` per record, built as it is reached.
    """

    __slots__ = (
        "_build",
        "_records",
        "join",
        "join_times",
        "keys",
        "left_events",
        "left_times",
        "processed_at",
        "right_events",
        "right_times",
        "time_differences",
    )

    def __init__(
        self,
        join: str,
        keys: list[Any],
        left_events: list[dict[str, Any] | None],
        right_events: list[dict[str, Any] | None],
        left_times: list[int | None],
        right_times: list[int | None],
        join_times: list[int],
        time_differences: list[int | None],
        processed_at: float,
        *,
        records: list[dict[str, Any]] | None = None,
        build: Callable[..., list[dict[str, Any]]] | None = None,
    ) -> None:
        #: the join's name
        self.join = join
        #: the routing key of each record (both events share it)
        self.keys = keys
        #: each record's left event (None for an unmatched row of the right side)
        self.left_events = left_events
        #: each record's right event (None for an unmatched row of the left side)
        self.right_events = right_events
        #: each record's left event time, ms since the epoch (None where no left event)
        self.left_times = left_times
        #: each record's right event time, ms since the epoch (None where no right event)
        self.right_times = right_times
        #: each record's ``join_timestamp``: the later of its two event times (the one there
        #: is, for an unmatched row)
        self.join_times = join_times
        #: each record's ``time_difference_ms``: the distance between its two event times
        #: (None for an unmatched row)
        self.time_differences = time_differences
        #: wall-clock time the records were made (seconds since the epoch)
        self.processed_at = processed_at
        # the records, once built; ``build(keys, lefts, rights, left_times, right_times,
        # join_times, time_differences)`` builds them (the join's merge strategy)
        self._records = records
        self._build = build

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"JoinRecordBatch(join={self.join!r}, records={len(self.keys)})"

    @property
    def records(self) -> list[dict[str, Any]]:
        """Each record's fields: ``join``, ``key``, ``join_timestamp``,
        ``left_event_timestamp``, ``right_event_timestamp``, ``time_difference_ms`` and the
        events' fields merged by the join's strategy. Built at the first read (a dict per
        record: the columns cost less)."""
        records = self._records
        if records is None:
            assert self._build is not None
            records = self._records = self._build(
                self.keys,
                self.left_events,
                self.right_events,
                self.left_times,
                self.right_times,
                self.join_times,
                self.time_differences,
            )
        return records

    def __getitem__(self, index: slice) -> JoinRecordBatch:
        start, stop = _bounds(index, len(self.keys))
        records = self._records
        return JoinRecordBatch(
            self.join,
            self.keys[start:stop],
            self.left_events[start:stop],
            self.right_events[start:stop],
            self.left_times[start:stop],
            self.right_times[start:stop],
            self.join_times[start:stop],
            self.time_differences[start:stop],
            self.processed_at,
            records=None if records is None else records[start:stop],
            build=self._build,
        )

    def __iter__(self) -> Iterator[JoinRecord]:
        join, at = self.join, self.processed_at
        for key, record in zip(self.keys, self.records, strict=True):
            yield JoinRecord(join, key, record, at)


class EnrichedBatch:
    """The events one enricher sent on, each with its dimension rows.

    Columnar: :attr:`keys`, :attr:`event_times` and :attr:`events` (each event's fields with
    its enrichment); iterating yields an :class:`EnrichedEvent` per event.
    """

    __slots__ = ("_columns", "processed_at", "rows")

    def __init__(self, rows: list[tuple[Any, int, dict[str, Any]]], processed_at: float) -> None:
        #: one ``(key, event_time, event)`` tuple per event
        self.rows = rows
        #: wall-clock time the batch was sent on (seconds since the epoch)
        self.processed_at = processed_at
        self._columns: list[tuple[Any, ...]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"EnrichedBatch(events={len(self.rows)})"

    def _transposed(self) -> list[tuple[Any, ...]]:
        if self._columns is None:
            self._columns = _transpose(self.rows, 3)
        return self._columns

    @property
    def keys(self) -> tuple[Any, ...]:
        """The entity key of each event."""
        return self._transposed()[0]

    @property
    def event_times(self) -> tuple[int, ...]:
        """The time (ms since the epoch) of each event."""
        return self._transposed()[1]

    @property
    def events(self) -> tuple[dict[str, Any], ...]:
        """Each event's fields with ``enrichment``, ``enrichment_metadata`` and the flat
        ``"<lookup>.<column>"`` fields."""
        return self._transposed()[2]

    def __getitem__(self, index: slice) -> EnrichedBatch:
        start, stop = _bounds(index, len(self.rows))
        return EnrichedBatch(self.rows[start:stop], self.processed_at)

    def __iter__(self) -> Iterator[EnrichedEvent]:
        for key, t, event in self.rows:
            yield EnrichedEvent(key, t, event)


class LateEventBatch:
    """The events of one batch that came later than ``allowed_lateness`` (with
    ``late_policy="side_output"``): iterating yields a :class:`LateEvent` per event."""

    __slots__ = ("group", "rows")

    def __init__(self, group: str, rows: list[tuple[Any, int, int, dict[str, Any]]]) -> None:
        #: the feature group (or join) whose windows they missed
        self.group = group
        #: one ``(key, event_time, watermark, event)`` tuple per event
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"LateEventBatch(group={self.group!r}, events={len(self.rows)})"

    def __getitem__(self, index: slice) -> LateEventBatch:
        start, stop = _bounds(index, len(self.rows))
        return LateEventBatch(self.group, self.rows[start:stop])

    def __iter__(self) -> Iterator[LateEvent]:
        group = self.group
        for key, t, watermark, event in self.rows:
            yield LateEvent(key, t, watermark, event, group)


class ItemBatch(Generic[T]):
    """A batch of items made one by one (drift alerts): a list, sized and sliceable like the
    other batches."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[T]) -> None:
        #: the items, in order
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"ItemBatch(items={len(self.items)})"

    def __getitem__(self, index: slice) -> ItemBatch[T]:
        start, stop = _bounds(index, len(self.items))
        return ItemBatch(self.items[start:stop])

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)
