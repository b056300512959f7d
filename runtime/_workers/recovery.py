"""What the front keeps to restart a worker: the log of what it was sent since the last
checkpoint, and what of its output was delivered.

A :class:`WorkerLog` per worker holds the :class:`Events` frames sent to the worker since the
barrier of the last committed checkpoint (the *base*), numbered in the order they were sent.
A restarted worker restores its key groups from the base and is sent these frames again, so
its state is that of a worker that never died: each event applied once.

Its output is made again too, and the front lets through only what it had not delivered yet:

- **Update rows, join records, enriched and late events.** Per feature group (or join, for
  its records; or the enrichers, for enriched events; or group, for late events) and key, the
  front counts the rows it published since the base (a key's rows come in the order of its
  events, and replaying the same events from the same state makes the same rows; a join's
  records of a key likewise): of a restarted worker's rows, the first that many of each group
  and key are dropped (they were published before the death), the rest published. With
  ``idle_timeout`` or ``state_ttl`` (the wall clock), a replay may make a key's rows or
  records at other points: the count drops by number, not by content.
- **Refused events.** The worker answers each frame with ``Taken``, after the events of the
  frame that it refused (``Rejected``): the front knows which frames' refusals it has, and
  drops those the replay refuses again.

The log is bounded by the front (``max_log_events``): a checkpoint empties it.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from typing import Any, NamedTuple

__all__ = ["Sent", "WorkerLog"]


class Sent(NamedTuple):
    """An :class:`Events` frame as sent, to send again: its events, their stream tags (or
    None), and whether the front had subscribers to updates, to join records, to enriched
    events and to late events."""

    payloads: list[Any]
    tags: list[int] | None
    updates: bool
    records: bool
    enriched: bool
    late: bool
    #: the replay clock's time it was sent at (None: none)
    now: float | None


class _Entry:
    __slots__ = ("frame", "register", "sent", "seq")

    def __init__(
        self, seq: int, frame: int, sent: Sent | None, register: bytes | None = None
    ) -> None:
        #: the entry's number in the log, counted from the worker's first
        self.seq = seq
        #: the frame's number, counted from the worker's first (for a registration: the
        #: next frame's)
        self.frame = frame
        #: an :class:`Events` frame, or None for a registration
        self.sent = sent
        #: the features registered (``rt.register``), pickled, or None for a frame
        self.register = register


class WorkerLog:
    """One worker's frames since the base checkpoint, and its output delivered since."""

    __slots__ = (
        "_entries",
        "_mark",
        "_segments",
        "_seq",
        "_suppress",
        "events",
        "next_frame",
        "registered_before",
        "reported",
        "taken",
    )

    def __init__(self) -> None:
        self._entries: deque[_Entry] = deque()
        #: events in the log
        self.events = 0
        #: the number the next frame sent gets, and the next entry of the log
        self.next_frame = 0
        self._seq = 0
        #: the features registered before the base checkpoint (pickled, in order): a
        #: restarted worker registers them again once it restored the base
        self.registered_before: list[bytes] = []
        #: frames the worker (this incarnation) has taken in, counted from the first frame
        self.taken = 0
        #: the frames before this one have had their refused events reported
        self.reported = 0
        #: the first entry after the barrier of the checkpoint under way, or None
        self._mark: int | None = None
        #: rows published per group and key, since the base and since each barrier after it
        #: (a list of ``(sequence, counts)``, the newest last)
        self._segments: list[tuple[int, dict[Hashable, Counter[Any]]]] = [(0, {})]
        #: per group and key, the rows of a restarted worker still to drop
        self._suppress: dict[Hashable, Counter[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # -- what is sent ------------------------------------------------------------------------
    def sent(self, sent: Sent) -> None:
        """An :class:`Events` frame is sent (queued) to the worker."""
        self._entries.append(_Entry(self._seq, self.next_frame, sent))
        self._seq += 1
        self.next_frame += 1
        self.events += len(sent.payloads)

    def registered(self, features: bytes) -> None:
        """Features are registered in the worker (a ``register`` call is queued), after the
        frames sent so far: a restarted worker registers them at the same point."""
        self._entries.append(_Entry(self._seq, self.next_frame, None, features))
        self._seq += 1

    def barrier(self) -> None:
        """The barrier of a checkpoint is sent, after the frames sent so far."""
        self._mark = self._seq

    def barrier_passed(self, sequence: int) -> None:
        """The worker answered the barrier of checkpoint ``sequence``: the rows it sent
        before were made by the events before the barrier, those after it by the others."""
        self._segments.append((sequence, {}))

    def commit(self, sequence: int) -> None:
        """Checkpoint ``sequence`` is written: it is the base now, and what came before its
        barrier is forgotten."""
        mark = self._mark
        assert mark is not None
        entries = self._entries
        while entries and entries[0].seq < mark:
            entry = entries.popleft()
            if entry.sent is not None:
                self.events -= len(entry.sent.payloads)
            else:
                assert entry.register is not None
                self.registered_before.append(entry.register)
        self._mark = None
        self._segments = [s for s in self._segments if s[0] >= sequence] or [(sequence, {})]

    def abandon(self) -> None:
        """The checkpoint under way failed: the base stays."""
        self._mark = None

    # -- a restart ---------------------------------------------------------------------------
    def replay(self) -> list[Sent | bytes]:
        """The worker is started again from the base: the frames to send it again, and the
        registrations between them (pickled features). From now on, the rows and records
        published since the base are dropped once each as they come again."""
        suppress: dict[Hashable, Counter[Any]] = {}
        for _, counts in self._segments:
            for group, keys in counts.items():
                suppress.setdefault(group, Counter()).update(keys)
        self._suppress = suppress
        entries = self._entries
        frames = [entry.frame for entry in entries if entry.sent is not None]
        self.taken = frames[0] if frames else self.next_frame
        self._mark = None
        replayed: list[Sent | bytes] = []
        for entry in entries:
            if entry.sent is not None:
                replayed.append(entry.sent)
            else:
                assert entry.register is not None
                replayed.append(entry.register)
        return replayed

    # -- what comes back ---------------------------------------------------------------------
    def delivered(self, group: Hashable, keys: list[Any]) -> list[int] | None:
        """The outputs of ``group`` the worker sent (update rows of a feature group, or
        records of a join), by their keys: count them as delivered, and return the indexes of
        those to publish, or None for all of them (the common case: no restart is being
        caught up with)."""
        keep: list[int] | None = None
        suppress = self._suppress.get(group)
        if suppress:
            keep = []
            for index, key in enumerate(keys):
                left = suppress.get(key)
                if left:
                    if left == 1:
                        del suppress[key]
                    else:
                        suppress[key] = left - 1
                else:
                    keep.append(index)
            if not suppress:
                del self._suppress[group]
        counts = self._segments[-1][1]
        counter = counts.get(group)
        if counter is None:
            counter = counts[group] = Counter()
        if keep is None:
            counter.update(keys)
        else:
            counter.update([keys[i] for i in keep])
        return keep

    def frame_taken(self) -> None:
        """The worker said it took its next frame in (its refusals came before)."""
        self.taken += 1
        if self.reported < self.taken:
            self.reported = self.taken

    def report_rejected(self) -> bool:
        """The worker refused events of the frame it is taking in: whether to report them
        (False if they were reported before a restart)."""
        if self.taken < self.reported:
            return False
        self.reported = self.taken + 1
        return True
