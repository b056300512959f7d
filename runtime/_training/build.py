"""Point-in-time training sets: every feature as it was at each label's time.

:func:`training_set` replays the history in a fresh ``FeatureRuntime``, in the order it is
given (the order events arrived online), and stops the replay at each label's time to read the
features of the label's key, as a request at that moment would have read them. It is the
computation of serving, paused: the values are those the online run would have served at the
labels' times (the parity check), and an event later than a label's time cannot leak into it.

**When an event counts.** As in ``rt.replay`` with its default clock, an event arrives at the
newest event time seen so far, its own included. A label at time ``t`` sees exactly the events
of the history's prefix that arrived at or before ``t``: an event at ``t`` itself counts (as in
Feast), and an event with a time after ``t`` never does, since it arrives at its own time or
later. A straggler (time ``<= t``) that arrives after an event newer than ``t`` does not count
either: online, at ``t``, it had not come yet.

**What a read gives.** The values of ``rt.get`` with the runtime's clock at ``t``: windows as of
the key's clock (its newest event time, moved on by ``idle_timeout`` when the key is quiet),
keyed aggregates over every event seen. The values are what the runtime served at ``t``.

It starts a runtime of its own, so it sits above the facade, as ``check_parity`` does.
"""

from __future__ import annotations

import math
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import msgspec

from .._exceptions import InvalidEvent, UnknownFeature
from .._ingest.events import EventReader
from .._replay.history import ReplayOptions, replay_history
from .._runtime import FeatureRuntime, RuntimeReplayHost
from .._spec.feature_set import FeatureSet
from .labels import Label, read_labels
from .lookups import LabelLookups
from .table import TrainingSet

__all__ = ["training_set"]

#: keys read with one ``get_many``, at most
_KEYS_PER_READ = 4096
_NOTHING: Any = object()


class _History:
    """The history, read one event ahead: each event's arrival time (ms) is the newest event
    time so far, its own included, as the replay's default clock has it."""

    def __init__(
        self,
        events: Iterable[Any] | AsyncIterable[Any],
        reader: EventReader,
        stream: str | Callable[[dict[str, Any]], str] | None,
        streams: Sequence[str],
    ) -> None:
        self._sync: Iterator[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(events, AsyncIterable):
            self._async = aiter(events)
        elif isinstance(events, Iterable) and not isinstance(events, (str, bytes, Mapping)):
            self._sync = iter(events)
        else:
            raise TypeError(
                "history must be an iterable or async iterable of events, got "
                f"{type(events).__name__}"
            )
        self._reader = reader
        self._stream = stream if callable(stream) else None
        self._streams = set(streams)
        #: the next event and its arrival time, or _NOTHING
        self._held: Any = _NOTHING
        self._held_at = -math.inf
        self.newest = -math.inf
        self.done = False

    def _arrival(self, payload: Any) -> float:
        """When ``payload`` arrives: an event the replay refuses (invalid, or of no stream)
        moves nothing, as in the replay."""
        try:
            _, t, event = self._reader.read(payload)
        except InvalidEvent:
            return self.newest
        if self._stream is not None:
            try:
                if self._stream(event) not in self._streams:
                    return self.newest
            except Exception:
                return self.newest
        return max(self.newest, t)

    async def _peek(self) -> bool:
        if self._held is not _NOTHING:
            return True
        if self.done:
            return False
        try:
            if self._async is not None:
                payload = await anext(self._async)
            else:
                assert self._sync is not None
                payload = next(self._sync)
        except (StopIteration, StopAsyncIteration):
            self.done = True
            return False
        self._held = payload
        self._held_at = self._arrival(payload)
        return True

    async def arrives_by(self, t: int) -> bool:
        """Whether the next event arrives at or before ``t``."""
        return await self._peek() and self._held_at <= t

    async def until(self, t: int) -> AsyncIterator[Any]:
        """The events that arrive at or before ``t``, in order; the first later one is held."""
        while await self._peek() and self._held_at <= t:
            payload = self._held
            self._held = _NOTHING
            self.newest = self._held_at
            yield payload


def _names(feature_set: FeatureSet, features: Sequence[str] | None) -> list[str]:
    known = list(feature_set.names)
    if features is None:
        return known
    if isinstance(features, str):
        raise TypeError("features must be a list of feature names, not a str")
    for name in features:
        if name not in known:
            raise UnknownFeature(f"no feature named {name!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(features))


def _columns(labels: list[Label], added: Sequence[str]) -> list[str]:
    """The labels' columns in the order first seen, then ``added``; a label column named as
    a feature or a lookup is refused rather than overwritten."""
    seen: dict[str, None] = {}
    for label in labels:
        for name in label.row:
            seen.setdefault(name, None)
    clash = [name for name in added if name in seen]
    if clash:
        raise ValueError(
            f"labels have columns named as features or lookups of the training set: "
            f"{', '.join(clash)} (rename them, or leave those features out with features=)"
        )
    return [*seen, *added]


async def training_set(
    feature_set: FeatureSet,
    labels: Any,
    history: Iterable[Any] | AsyncIterable[Any],
    *,
    key: str | None = None,
    time: str | None = None,
    features: Sequence[str] | None = None,
    lookups: Sequence[str] = (),
    stream: str | Callable[[dict[str, Any]], str] | None = None,
    resolution: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> TrainingSet:
    """A point-in-time training set: for each label, its key's features as they were at its
    time, with no event after that time in them.

    The history is replayed in a fresh runtime, in the order given, the order events arrived
    online (sort it by event time if you have no better order); the replay stops at each
    label's time and reads the label's key as a request at that moment would have. An event
    arrives at the newest event time seen so far, its own included, so a label at ``t`` sees
    the events that arrived at or before ``t``: an event at exactly ``t`` counts, a later one
    never does. Windows read as ``rt.get`` does with the clock at ``t``: as of the key's newest
    event (moved on by ``idle_timeout``). Events after the last label's time are not read.

    Args:
        feature_set: the feature set, as served online.
        labels: an iterable of mappings, or a ``pyarrow.Table``: one label per row, with the
            key and the time (in the forms of event times) and any other columns, which the
            row keeps.
        history: the events, an iterable or async iterable in arrival order: a list, a
            generator, or a file source's ``iterate()`` (``JsonLinesSource``, ``CsvSource``,
            ``ParquetSource``). Events the runtime refuses go to its dead letters, counted in
            ``TrainingSet.rejected``.
        key: the labels' key field (default: the feature set's ``key``).
        time: the labels' time field (default: the feature set's ``time``).
        features: the features to read (default: every feature of the set).
        lookups: names of the feature set's lookups whose row, as valid at the label's time
            (point-in-time versions), is added to each row under the lookup's name; the label
            must hold the lookup's field. A label without it gets the lookup's default.
        stream: as for ``FeatureRuntime.replay``: the history's stream, or a function giving
            each event's stream.
        resolution: as for ``FeatureRuntime.replay``: the step of the clock (seconds) with
            ``idle_timeout`` or ``state_ttl``; give 0 for the online values exactly.
        options: keyword arguments of the ``FeatureRuntime`` replayed in (``sources`` for
            custom sources, ``shards``: 1 by default, the fastest here...); not ``workers``.

    Returns:
        A :class:`TrainingSet`: the rows in the order of the labels.

    Raises:
        InvalidEvent: a label lacks its key or time field, or holds an unusable one; the
            message names the label's index and the field.
        TypeError: ``labels`` or ``history`` is neither an iterable nor a table, or a label is
            not a mapping.
        UnknownFeature: a name in ``features`` is not a feature of the set.
        ValueError: a label column is named as a feature or lookup read, or a name in
            ``lookups`` is not a lookup of the set, or a replay argument is invalid.
    """
    names = _names(feature_set, features)
    label_key = feature_set.key if key is None else key
    label_time = feature_set.time if time is None else time
    read = read_labels(labels, key=label_key, time=label_time, time_unit=feature_set.time_unit)
    enricher = LabelLookups(feature_set, lookups, options)
    columns = _columns(read, [*names, *enricher.names])
    order = sorted(read, key=lambda label: (label.time_ms, label.position))
    values: list[dict[str, Any] | None] = [None] * len(read)
    # whether values read depend on the runtime's clock: idle time and expiry, or reads
    # served as of the request time (``serve_as_of="now"``, issue 20 item 1, where the
    # feature set has it); then the clock is moved to each label's time before its read
    timed = (
        any(feature_set.duration_ms(option) is not None for option in ("idle_timeout", "state_ttl"))
        or getattr(feature_set, "serve_as_of", None) == "now"
    )
    counts = [0, 0, 0]  # events, accepted, rejected
    # one shard: in one process more shards add no parallelism, and each pause asks each
    # shard's actors
    # Event times are not bounded by the wall clock here (max_future, max_past): online they
    # are judged against the time each event arrives, and history is replayed long after, so
    # the bounds would refuse every event older than max_past (or dated ahead of today)
    replayed = msgspec.structs.replace(feature_set, max_future=None, max_past=None)
    async with FeatureRuntime(replayed, **{"shards": 1, **dict(options or {})}) as rt:
        host = RuntimeReplayHost(rt)
        events = _History(history, host.reader, stream, feature_set.stream_names)

        async def replay(t: int) -> None:
            # a replay per label time: replays of one runtime follow one another; when values
            # depend on the clock it ends at ``t`` (``until``), where idle time and expiry
            # are applied and reads are served (otherwise moving it costs one more flush)
            until = t / 1000 if timed else None
            options = ReplayOptions(stream=stream, resolution=resolution, until=until)
            result = await replay_history(host, events.until(t), options)
            counts[0] += result.events
            counts[1] += result.accepted
            counts[2] += result.rejected

        async def take(waiting: list[Label]) -> None:
            for start in range(0, len(waiting), _KEYS_PER_READ):
                chunk = waiting[start : start + _KEYS_PER_READ]
                vectors = await rt.get_many([label.key for label in chunk], names)
                for label in chunk:
                    values[label.position] = vectors[host.reader.lookup_key(label.key)].values

        waiting: list[Label] = []
        for index, label in enumerate(order):
            t = label.time_ms
            if index and t == order[index - 1].time_ms:
                waiting.append(label)
                continue
            # when no value depends on the clock, values change only with events: the reads
            # of consecutive label times with no event between them are one read
            if timed or await events.arrives_by(t):
                await take(waiting)
                waiting = []
                await replay(t)
            waiting.append(label)
        await take(waiting)
    rows_lookups = await enricher.rows(read, label_key, label_time)
    rows: list[dict[str, Any]] = []
    for label in read:
        row = dict(label.row)
        found = values[label.position]
        assert found is not None
        for name in names:
            row[name] = found[name]
        if rows_lookups is not None:
            row.update(rows_lookups.get(label.position) or dict.fromkeys(enricher.names))
        rows.append(row)
    return TrainingSet(
        rows,
        columns=columns,
        features=names,
        lookups=enricher.names,
        events=counts[0],
        accepted=counts[1],
        rejected=counts[2],
    )
