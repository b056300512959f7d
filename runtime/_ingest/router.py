"""The ingest path: validate events, route them by key, batch them per shard, send batches.

``Ingest`` owns the per-shard buffers and the batches on their way to the shard actors; the
runtime's public ``ingest``/``ingest_many`` drive it. Sending is the only part that awaits:
a full shard mailbox makes it wait, which is the runtime's backpressure.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import chain, repeat
from typing import Any, Protocol

import anyio

from actors import ActorRef, DeadLetterReason, DeadLetters, KeyRouter, get_logger

from .._exceptions import InvalidEvent
from .._messages import Batch
from .events import PLAIN_VALUES, EventReader, Keeps

__all__ = ["Ingest", "record_rejected"]

_log = get_logger("featurist.ingest")

#: 2000-01-01 in ms: event times given in ms (the default ``time_unit``) before it are most
#: likely seconds (``1700000000`` reads as 1970-01-20), said once by a warning
_EARLY_MS = 946_684_800_000


class _Target(Protocol):
    """A feature group (or a join) as the ingest path sees it: one actor per shard, and the
    stream it reads (a join reads several: ``""``, and it gets the batch with its tags)."""

    refs: list[ActorRef[Any]]
    stream: str


class Ingest:
    """Buffers, routes and sends events. Internal to ``FeatureRuntime``.

    Args:
        reader: reads and validates events.
        router: maps keys to shards.
        groups: the runtime's feature groups (the live list: a group added later receives the
            batches formed from then on).
        batch_size: the threshold at which a shard's buffer is sent.
        dead_letters: where rejected events go.
        streams: the streams' names: events are tagged with their index (``route_one``,
            ``route``); a group gets its stream's events, a join (stream ``""``) all of them.
        known_keys: how many keys are remembered as checked, with their shard (the cache is
            cleared when full; 0: none, every event is then read in full).

    A dict event takes the fast path when its time is an ``int`` in milliseconds within the
    reader's bounds and its key a ``str`` or ``int`` that passes the reader's key checks
    (length, Unicode): with several shards, a key is checked once, when it is first seen, and
    then found with its shard in a cache of checked keys (the ingest path's own, not the
    router's, which ``get`` fills with any key asked); with one shard, an ASCII or int key is
    checked inline, which is cheaper than a lookup in a large dict.
    """

    def __init__(
        self,
        reader: EventReader,
        router: KeyRouter,
        groups: Sequence[_Target],
        batch_size: int,
        dead_letters: DeadLetters,
        streams: Sequence[str] = ("",),
        known_keys: int = 1 << 20,
    ) -> None:
        shards = router.shards
        self.streams = tuple(streams)
        #: with several streams, the stream index of each buffered event (parallel to the
        #: buffers): one buffer per shard keeps a key's events of every stream in the order
        #: they came, which a join of two streams needs
        self.tags: list[list[int]] | None = (
            [[] for _ in range(shards)] if len(self.streams) > 1 else None
        )
        self.shards = shards
        self.batch_size = batch_size
        self._reader = reader
        #: whether to look for event times before 2000 (given in ms), until one is seen
        self._watch_early = reader.time_unit == "ms"
        self._router = router
        #: keys read in full (so checked) since the cache was last cleared, and their shard
        self._known: dict[Any, int] = {}
        #: the one shard every event goes to (:meth:`pin`), or None: each key's own
        self._pinned: int | None = None
        self._known_size = known_keys
        self._groups = groups
        self._dead_letters = dead_letters
        #: while ``route`` routes decoded payloads: (the events, the payloads they came from)
        self._payloads: tuple[list[Any], list[Any]] | None = None
        #: the index of each decoded event by its id, made at the chunk's first rejection
        self._sent_at: dict[int, int] | None = None
        self.buffers: list[list[tuple[Any, int, dict[str, Any]]]] = [[] for _ in range(shards)]
        self.created = [0.0] * shards
        self._locks = [anyio.Lock() for _ in range(shards)]
        self.unsent: list[list[Any] | None] = [None] * shards
        #: events accepted and rejected by this run (a replay counts its events by these)
        self.ingested = 0
        self.rejected = 0
        #: the same counts before the checkpoint this run restored, which statistics and the
        #: next checkpoint carry on from
        self.ingested_before = 0
        self.rejected_before = 0

    def pin(self, shard: int) -> None:
        """Send every event to ``shard``, unrouted: for a worker process that runs one shard
        of its key groups, whose front has routed each event to it already (the events are
        still checked, as with one shard)."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard must be between 0 and {self.shards - 1}, got {shard}")
        self._pinned = shard
        self._known.clear()

    def stream_index(self, stream: str | None) -> int:
        """The index of ``stream`` among the ingested streams (the first for None)."""
        if stream is None:
            return 0
        names = self.streams
        if stream not in names:
            known = ", ".join(names)
            raise ValueError(f"stream: no stream named {stream!r} (known: {known})")
        return names.index(stream)

    def stream_indexes(self, events: Any, streams: Sequence[str]) -> list[int]:
        """The stream index of each event, from their streams' names."""
        if not hasattr(events, "__len__") or len(events) != len(streams):
            got = len(events) if hasattr(events, "__len__") else type(events).__name__
            raise ValueError(
                f"stream: a sequence of stream names needs a sequence of events of the same "
                f"length (got {len(streams)} names for {got} events)"
            )
        names = self.streams
        index = {name: i for i, name in enumerate(names)}
        try:
            return [index[name] for name in streams]
        except KeyError as exc:
            position = next(i for i, name in enumerate(streams) if name not in index)
            known = ", ".join(names)
            raise ValueError(
                f"stream[{position}]: no stream named {exc.args[0]!r} (known: {known})"
            ) from None

    def route_one(self, event: Any, tag: int = 0) -> int | None:
        """Validate one event of stream ``tag`` and buffer it; its shard, or None if it was
        rejected."""
        try:
            key, ts, ev = self._reader.read(event, tag=tag)
        except InvalidEvent as error:
            self.reject(event, error)
            return None
        shard = self._shard_of(key)
        buffer = self.buffers[shard]
        if not buffer:
            self.created[shard] = time.perf_counter()
        buffer.append((key, ts, ev))
        if self.tags is not None:
            self.tags[shard].append(tag)
        self.ingested += 1
        if self._watch_early and ts < _EARLY_MS:
            self._early(ts, ev)
        return shard

    def route(self, events: list[Any], tag: int | list[int] = 0) -> int:
        """Validate and append events (of stream ``tag``, or ``tag[i]`` for ``events[i]``) to
        their shard's buffer; the hot loop of ingest.

        Dicts with a known ``str``/``int`` key and an ``int`` time in milliseconds within the
        reader's bounds take the fast path; anything else goes through the full reader.
        Payloads (``bytes``) are decoded in one pass first (``EventReader.decode_all``) and
        then take the same path; a batch of which one does not decode to an object is read
        event by event, and so is every batch of a feature set with computed fields (whose
        events are copies, no longer the decoded dicts a rejection is traced back by).
        Returns the events accepted.
        """
        decoded = None if self._reader.computing else self._reader.decode_all(events)
        if decoded is None:
            accepted = self._route(events, tag)
        else:
            self._payloads = (decoded, events)
            try:
                accepted = self._route(decoded, tag)
            finally:
                self._payloads = self._sent_at = None
        if self._watch_early:
            # the newest event of each buffer: a look per batch, not per event
            for buffer in self.buffers:
                if buffer and buffer[-1][1] < _EARLY_MS:
                    self._early(buffer[-1][1], buffer[-1][2])
                    break
        return accepted

    def _early(self, ts: int, event: Any) -> None:
        """An event time before 2000, given in ms as a number: most likely seconds. Said
        once (a datetime or an ISO string before 2000 is what it says)."""
        raw = event.get(self._reader.time) if event.__class__ is dict else None
        if raw.__class__ not in (int, float):
            return
        self._watch_early = False
        reads_as = datetime.fromtimestamp(ts / 1000, UTC).isoformat()
        _log.warning(
            "event_times_before_2000",
            field=self._reader.time,
            time=ts,
            reads_as=reads_as,
            hint=f"event times are read as ms (time_unit='ms'); if {ts} is in seconds, give "
            "the feature set time_unit='s'",
        )

    def _route(self, events: list[Any], tag: int | list[int]) -> int:
        if self._reader.computing:
            events, tag = self._computed(events, tag)
        if self._reader.keeping:
            # the values state keeps are screened first, in a pass of their own: the loops
            # below stay as they are for a feature set that keeps none
            events, tag = self._screened(events, tag)
        if self.tags is not None:
            return self._route_tagged(events, tag)
        now = time.perf_counter()
        buffers = self.buffers
        created = self.created
        for i, buffer in enumerate(buffers):
            if not buffer:
                created[i] = now
        reader = self._reader
        if reader.time_unit != "ms":
            return self._route_each(events)
        key_field, time_field = reader.key, reader.time
        low, high = reader.bounds()
        read, shard_of = reader.read, self._shard_of
        # Events off the fast path are read in place, so a key's events keep their order.
        rejected = 0
        pinned = self._pinned
        if self.shards == 1 or pinned is not None:
            # No routing, so the key's checks inline; a non-ASCII str key is looked up once
            # known, as the checks cost more for it.
            append = buffers[0 if pinned is None else pinned].append
            known_keys = self._known
            longest = reader.max_key_length
            int_low, int_high = reader.int_low, reader.int_high
            for event in events:
                if event.__class__ is dict:
                    try:  # subscripts are cheaper than get(); a missing field is read below
                        key: Any = event[key_field]
                        ts = event[time_field]
                    except KeyError:
                        pass
                    else:
                        kc = key.__class__
                        if (
                            ts.__class__ is int
                            and low <= ts <= high
                            and (
                                (
                                    kc is str
                                    and len(key) <= longest
                                    and (key.isascii() or key in known_keys)
                                )
                                or (kc is int and int_low <= key <= int_high)
                            )
                        ):
                            append((key, ts, event))
                            continue
                try:
                    item = read(event, low, high)
                except InvalidEvent as error:
                    self.reject(event, error)
                    rejected += 1
                    continue
                shard_of(item[0])  # remembers the key as checked
                append(item)
        else:
            known, admit = self._known.get, self._admit
            appends = [buffer.append for buffer in buffers]
            for event in events:
                if event.__class__ is dict:
                    try:
                        key = event[key_field]
                        ts = event[time_field]
                    except KeyError:
                        pass
                    else:
                        kc = key.__class__
                        if (kc is str or kc is int) and ts.__class__ is int and low <= ts <= high:
                            index = known(key)
                            if index is None:
                                index = admit(key)
                            if index is not None:
                                appends[index]((key, ts, event))
                                continue
                try:
                    item = read(event, low, high)
                except InvalidEvent as error:
                    self.reject(event, error)
                    rejected += 1
                    continue
                appends[shard_of(item[0])](item)
        accepted = len(events) - rejected
        self.ingested += accepted
        return accepted

    def _route_tagged(self, events: list[Any], tag: int | list[int]) -> int:
        """``route`` with several streams: the same fast path, each event's stream index
        appended beside it (``tag``, or ``tag[i]`` for ``events[i]``)."""
        tags = self.tags
        assert tags is not None
        now = time.perf_counter()
        buffers, created = self.buffers, self.created
        for i, buffer in enumerate(buffers):
            if not buffer:
                created[i] = now
        reader = self._reader
        key_field, time_field = reader.key, reader.time
        fast_times = reader.time_unit == "ms"
        low, high = reader.bounds()
        read, shard_of, known = reader.read, self._shard_of, self._known.get
        admit = self._admit
        appends = [buffer.append for buffer in buffers]
        tag_appends = [shard_tags.append for shard_tags in tags]
        rejected = 0
        tagged = repeat(tag) if isinstance(tag, int) else tag
        for event, stream_tag in zip(events, tagged):  # noqa: B905 (repeat is endless)
            if fast_times and event.__class__ is dict:
                try:
                    key: Any = event[key_field]
                    ts = event[time_field]
                except KeyError:
                    pass
                else:
                    kc = key.__class__
                    if (kc is str or kc is int) and ts.__class__ is int and low <= ts <= high:
                        index = known(key)
                        if index is None:
                            index = admit(key)
                        if index is not None:
                            appends[index]((key, ts, event))
                            tag_appends[index](stream_tag)
                            continue
            try:
                item = read(event, low, high, stream_tag)
            except InvalidEvent as error:
                self.reject(event, error)
                rejected += 1
                continue
            index = shard_of(item[0])
            appends[index](item)
            tag_appends[index](stream_tag)
        accepted = len(events) - rejected
        self.ingested += accepted
        return accepted

    def _computed(self, events: list[Any], tag: int | list[int]) -> tuple[list[Any], Any]:
        """``events`` (and their tags) with the computed fields set in a copy of each dict
        event, without those whose fields cannot be computed (rejected). Other events get
        theirs when they are read; so does a dict the fast path sends to the reader, computed
        again to the same values (``computer``)."""
        compute = self._reader.compute
        out: list[Any] = []
        tags: list[int] | None = None if isinstance(tag, int) else []
        tagged = repeat(tag) if isinstance(tag, int) else tag
        for event, stream_tag in zip(events, tagged):  # noqa: B905 (repeat is endless)
            if event.__class__ is dict:
                try:
                    event = compute(event, event)
                except InvalidEvent as error:
                    self.reject(event, error)
                    continue
            out.append(event)
            if tags is not None:
                tags.append(stream_tag)
        return out, (tag if tags is None else tags)

    def _screened(self, events: list[Any], tag: int | list[int]) -> tuple[list[Any], Any]:
        """``events`` (and their tags) without the dict events whose kept values state cannot
        keep (rejected: see ``EventReader.screen``), a normalized copy in place of an event
        that needed one. Other events are screened when they are read."""
        reader = self._reader
        plain = PLAIN_VALUES
        # First a look in C at the classes of every value kept, in any stream: when all are
        # plain (the usual case), the batch goes on as it is, at a cost of tens of ns an event
        try:
            classes: set[type] = set()
            for name in reader.kept_fields:
                classes.update(map(type, map(dict.get, events, repeat(name))))
            if reader.kept_whole:
                # values only: field names of a decoded payload are always plain, and a
                # check of the names would double the cost (``screen`` checks them, and a
                # key whose state still cannot be encoded is left out of a checkpoint alone)
                classes.update(map(type, chain.from_iterable(map(dict.values, events))))
            if classes <= plain:
                return events, tag
        except TypeError:  # an event that is not a dict: the loop below looks at each
            pass
        keeps = reader.keeps
        screen = reader.screen
        kept: list[Any] = []
        tags: list[int] | None = None if isinstance(tag, int) else []
        tagged = repeat(tag) if isinstance(tag, int) else tag
        for event, stream_tag in zip(events, tagged):  # noqa: B905 (repeat is endless)
            if event.__class__ is dict and stream_tag < len(keeps):
                what: Keeps | None = keeps[stream_tag]
                assert what is not None
                if what.whole:
                    for name, value in event.items():
                        if name.__class__ not in plain or value.__class__ not in plain:
                            break
                    else:
                        what = None
                else:
                    get = event.get
                    for name in what.fields:
                        if get(name).__class__ not in plain:
                            break
                    else:
                        what = None
                if what is not None:
                    try:
                        event = screen(event, stream_tag)
                    except InvalidEvent as error:
                        self.reject(event, error)
                        continue
            kept.append(event)
            if tags is not None:
                tags.append(stream_tag)
        return kept, (tag if tags is None else tags)

    def _route_each(self, events: list[Any]) -> int:
        """Route events one at a time through the full reader."""
        reader = self._reader
        read = reader.read
        low, high = reader.bounds()
        shard_of = self._shard_of
        buffers = self.buffers
        accepted = 0
        for event in events:
            try:
                item = read(event, low, high)
            except InvalidEvent as error:
                self.reject(event, error)
                continue
            buffers[shard_of(item[0])].append(item)
            accepted += 1
        self.ingested += accepted
        return accepted

    def _admit(self, key: Any) -> int | None:
        """The shard of a new ``str`` or ``int`` key, now known, if the reader accepts it;
        None if not (the event is then read in full, which says why)."""
        return self._shard_of(key) if self._reader.valid_key(key) else None

    def _shard_of(self, key: Any) -> int:
        """The shard of a key the reader accepted, which is then remembered as checked."""
        known = self._known
        shard = known.get(key)
        if shard is None:
            router = self._router
            if self._pinned is not None:
                shard = self._pinned
            elif self.shards == 1:
                shard = 0
            else:
                shard = router.shard_of_group(router.key_group(key))
            if self._known_size:
                if len(known) >= self._known_size:
                    known.clear()
                known[key] = shard
        return shard

    def reject(self, payload: Any, error: InvalidEvent) -> None:
        if self._payloads is not None:
            payload, error = self._as_sent(payload, error)
        self.rejected += 1
        record_rejected(self._dead_letters, payload, error)

    def _as_sent(self, event: Any, error: InvalidEvent) -> tuple[Any, InvalidEvent]:
        """A rejected event decoded by ``route`` as its payload was sent, with the error
        reading the payload gives (which carries the payload), for the dead letters."""
        assert self._payloads is not None
        decoded, payloads = self._payloads
        if self._sent_at is None:  # the first rejection of the chunk
            self._sent_at = {id(d): i for i, d in enumerate(decoded)}
        i = self._sent_at.get(id(event))
        if i is None or decoded[i] is not event:
            return event, error
        try:
            self._reader.read(payloads[i])
        except InvalidEvent as again:
            return payloads[i], again
        return payloads[i], error

    async def send(self, shard: int, *, partial: bool = True) -> None:
        """Send the shard's buffer to every group's actor of the shard.

        A batch is first recorded as unsent with the groups it is for; each group is ticked off
        once its actor has the batch. If the caller is cancelled while waiting for room, the
        next send to the shard (the flusher's at the latest, or shutdown's) finishes the job
        before it sends anything newer: no accepted event is lost, none is reordered, and no
        group gets a batch twice. ``partial=False`` (ingest) sends the buffer only once it holds
        ``batch_size`` events; every other caller sends what there is.
        """
        async with self._locks[shard]:
            while True:
                unsent = self.unsent[shard]
                newest = unsent is None
                if unsent is None:
                    buffer = self.buffers[shard]
                    if not buffer or (not partial and len(buffer) < self.batch_size):
                        return
                    self.buffers[shard] = []
                    batch = Batch(buffer, self.created[shard], self.streams[0])
                    if self.tags is not None:
                        batch.tags = self.tags[shard]
                        self.tags[shard] = []
                    unsent = self.unsent[shard] = [batch, list(self._groups)]
                batch, groups = unsent
                while groups:
                    part = self._for(batch, groups[0].stream)
                    if part.events:  # a stream without events in this batch sends nothing
                        await groups[0].refs[shard].tell(part)
                    groups.pop(0)
                self.unsent[shard] = None
                if newest:
                    return

    def _for(self, batch: Batch, stream: str) -> Batch:
        """The part of ``batch`` a target of ``stream`` reads: all of it with one stream, or
        for a join (``""``); else its stream's events (made once per batch and stream)."""
        tags = batch.tags
        if tags is None or not stream:
            return batch
        parts = batch.parts
        if parts is None:
            parts = batch.parts = {}
        part = parts.get(stream)
        if part is None:
            index = self.streams.index(stream)
            events = [event for event, tag in zip(batch.events, tags, strict=True) if tag == index]
            part = parts[stream] = Batch(events, batch.created, stream)
        return part

    async def send_all(self) -> None:
        for shard in range(self.shards):
            await self.send(shard)

    def idle(self, shard: int) -> bool:
        """Whether every actor a batch of ``shard`` goes to waits for a message, with nothing
        being sent to it: a partial batch may then leave at once (latency first), while a
        busy actor lets its next batch grow (throughput under backlog)."""
        if self.unsent[shard] is not None or self._locks[shard].locked():
            return False
        for target in self._groups:
            if not target.refs[shard].idle:
                return False
        return True

    def sending(self, shard: int) -> bool:
        """True while a send to ``shard`` is in progress (or waiting for room)."""
        return self._locks[shard].locked()

    def pending(self) -> bool:
        """Whether anything is buffered, left unsent, or being sent, for any shard."""
        return (
            any(self.buffers)
            or any(unsent is not None for unsent in self.unsent)
            or any(lock.locked() for lock in self._locks)
        )

    def due(self, deadline: float) -> list[int]:
        """Shards with a batch to finish or a buffer whose first event came before ``deadline``."""
        return [
            shard
            for shard, buffer in enumerate(self.buffers)
            if (buffer and self.created[shard] <= deadline) or self.unsent[shard] is not None
        ]

    def abandon_unsent(self) -> None:
        """Past the shutdown deadline: what could not be sent goes to dead letters."""
        for shard in range(self.shards):
            events: list[Any] = []
            unsent = self.unsent[shard]
            if unsent is not None:
                events.extend(unsent[0].events)
            events.extend(self.buffers[shard])
            self.buffers[shard] = []
            if self.tags is not None:
                self.tags[shard] = []
            self.unsent[shard] = None
            record_unsent(
                self._dead_letters,
                [event for _key, _t, event in events],
                "featurist/ingest",
                "accepted, but not sent to its shard before the shutdown deadline",
            )
        _log.warning("shutdown_deadline_passed_with_unsent_events")


def record_unsent(dead_letters: Any, events: list[Any], recipient: str, detail: str) -> None:
    """Put events accepted but not sent on before the shutdown deadline in dead letters:
    the one way every front of the runtime (this router, the worker front) records them."""
    for event in events:
        dead_letters.record(
            event,
            recipient,
            DeadLetterReason.UNDELIVERABLE,
            detail=detail,
        )


def record_rejected(dead_letters: Any, payload: Any, error: InvalidEvent) -> None:
    """Put an event that ingest refused in dead letters, with its reason: the one way every
    front of the runtime (this router, the worker front) records a refused event."""
    dead_letters.record(
        payload,
        "featurist/ingest",
        DeadLetterReason.REJECTED,
        error=error,
        detail=str(error),
    )
