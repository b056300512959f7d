"""The per-source dimension cache of enrichment (issue 6, ``docs/design/enrichment.md``).

A :class:`DimensionCache` is an LRU over an ``OrderedDict`` (least recently used first, O(1)
per operation) of the rows fetched from one source, and of the keys the source does not have
(*missing* entries: negative caching, with their own TTL). It is plain synchronous code for one
event loop: no locks, and it never reads a clock. Every time is the caller's wall-clock
``now`` in seconds, and every age the cache returns is in seconds too (``now - fetched_at``).

What a lookup answers, for an entry fetched ``age`` seconds ago:

- a row with ``age < ttl``: ``CacheStatus.FRESH``;
- a row with ``ttl <= age < ttl + max_stale``: ``CacheStatus.STALE``, given by
  :meth:`lookup_stale` only (the enricher's fallback when a fetch fails); :meth:`lookup` treats
  it as a miss;
- a missing entry with ``age < negative_ttl``: ``CacheStatus.MISSING``. A missing entry has no
  stale window: past ``negative_ttl`` it is gone (a failed fetch then gives the lookup's default,
  which is what a missing key gives anyway);
- anything older is *dead*: answered as absent (None) and dropped when read.

Refresh-ahead: a FRESH row read at ``age >= refresh_ahead * ttl`` (a MISSING entry: at
``refresh_ahead * negative_ttl``) is reported due for refresh, once per entry until it is
stored again, so the enricher starts at most one background fetch per key per TTL and hot keys
never miss.

The enricher calls :meth:`lookup` once per event and lookup: it is a dict lookup, a
``move_to_end`` and a few comparisons, and answers a plain tuple (:data:`Hit`).

Bytes (issue 15): ``capacity`` bounds entries, not memory, and a source's rows may be of any
size (10,000 rows of 1 MB strings are 10 GB). With ``max_bytes``, each entry stored is
measured (:func:`estimate_bytes`: ``sys.getsizeof`` of the key, the row and everything in
it) and the least recently used entries go until the total is within the bound; a row larger
than the whole bound is not cached. Measuring costs a walk of the row per store, never per
lookup, and only with ``max_bytes`` set.
"""

from __future__ import annotations

import enum
import math
import sys
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec

from .rows import Version

if TYPE_CHECKING:
    from .._spec.enrich import Source

__all__ = [
    "CacheStatistics",
    "CacheStatus",
    "DimensionCache",
    "Hit",
    "estimate_bytes",
]


class CacheStatus(enum.Enum):
    """What a cached entry is worth at the time of a lookup."""

    #: a row younger than ``ttl``
    FRESH = "fresh"
    #: a row past its ``ttl`` by less than ``max_stale`` (only from ``lookup_stale``)
    STALE = "stale"
    #: a key the source does not have, remembered for less than ``negative_ttl``
    MISSING = "missing"


# Private module-level names: the hot path builds its answers without an attribute lookup on
# the enum class (several times slower than a global); callers use ``CacheStatus.X``.
_FRESH = CacheStatus.FRESH
_STALE = CacheStatus.STALE
_MISSING = CacheStatus.MISSING

#: ``(status, value, age, refresh_due)``: what a lookup finds. ``value`` is the cached row (None
#: for MISSING), ``age`` the seconds since it was fetched, ``refresh_due`` true when the caller
#: should fetch the key again in the background (refresh-ahead; at most once per entry). A plain
#: tuple: building it costs a fraction of a named tuple's or a struct's.
Hit: TypeAlias = tuple[CacheStatus, Any, float, bool]


class CacheStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one :class:`DimensionCache`.

    Every :meth:`~DimensionCache.lookup` counts once, as exactly one of ``hits``,
    ``negative_hits`` or ``misses``; :meth:`~DimensionCache.lookup_stale`, the fallback after a
    failed fetch, counts only the stale rows it serves (``stale_hits``), so an event's lookup is
    never counted twice.
    """

    #: the most entries the cache holds, the entries it holds now (dead ones not yet dropped
    #: included), and ``size / capacity``
    capacity: int
    size: int
    utilization: float
    #: calls of ``lookup``: ``hits + negative_hits + misses``
    lookups: int
    #: lookups answered with a fresh row
    hits: int
    #: lookups answered with a fresh missing entry (the source was not called either)
    negative_hits: int
    #: lookups answered with nothing usable (absent, stale or dead): the caller fetches
    misses: int
    #: ``(hits + negative_hits) / lookups``: the part of lookups that needed no fetch (0.0
    #: before any lookup)
    hit_ratio: float
    #: stale rows served by ``lookup_stale``
    stale_hits: int
    #: lookups that reported an entry due for refresh (refresh-ahead)
    refreshes_due: int
    #: entries dropped to make room (least recently used first)
    evictions: int
    #: dead entries dropped, by ``expire`` or when read
    expired: int
    #: the bound on the entries' bytes (None: none), and their estimated bytes now (0 when
    #: there is no bound: entries are not measured then)
    max_bytes: int | None = None
    bytes: int = 0
    #: rows not cached because each alone was larger than ``max_bytes``
    too_large: int = 0


class _Entry:
    """One cached key: its row (None when missing) and when it was fetched."""

    __slots__ = ("derived", "fetched_at", "missing", "refresh_requested", "size", "value")

    def __init__(self, value: Any, fetched_at: float, missing: bool, size: int) -> None:
        self.value = value
        #: what a caller derived from the row, kept with it until the key is stored again (the
        #: enricher keeps ``(lookup name, flat fields)`` here: the fields it adds to events)
        self.derived: Any = None
        #: estimated bytes of the key and the row (0 when the cache has no byte bound)
        self.size = size
        #: the caller's wall-clock seconds when the row was stored
        self.fetched_at = fetched_at
        #: a negative entry: the source does not have the key
        self.missing = missing
        #: refresh-ahead was reported for this entry (reset when the key is stored again)
        self.refresh_requested = False


class DimensionCache:
    """The cache of one dimension source: an LRU of rows and missing keys, with TTLs.

    Args:
        capacity: the most entries held (rows and missing keys); storing a new key past it
            drops the least recently used entry. Every lookup that finds an entry still
            servable, and every store, makes that entry the most recently used.
        ttl: seconds a row is fresh.
        negative_ttl: seconds a missing key is remembered; 0 turns negative caching off
            (``put_missing`` then only forgets any row held for the key).
        refresh_ahead: the part of a TTL (between 0 and 1, exclusive) after which an entry
            read is reported due for refresh; None: never.
        max_stale: seconds past its ``ttl`` a row may still be served stale by
            ``lookup_stale``; 0 when the source does not serve stale rows
            (``stale_if_error=false``), so rows are dropped as soon as they expire.
        max_bytes: the most bytes the entries may hold, as :func:`estimate_bytes` measures
            them; storing past it drops the least recently used entries, and a row larger than
            the whole bound is not cached. None: no bound (entries are not measured).

    Raises:
        ValueError: a limit out of range.

    The arguments are keyword-only: five numbers in a row are too easy to swap. Build the
    cache of a source's spec with :meth:`for_source`.
    """

    __slots__ = (
        "_bytes",
        "_capacity",
        "_entries",
        "_evictions",
        "_expired",
        "_hits",
        "_max_bytes",
        "_max_stale",
        "_misses",
        "_negative_hits",
        "_negative_refresh_after",
        "_negative_ttl",
        "_refresh_after",
        "_refresh_ahead",
        "_refreshes_due",
        "_stale_hits",
        "_stale_until",
        "_too_large",
        "_ttl",
    )

    def __init__(
        self,
        *,
        capacity: int,
        ttl: float,
        negative_ttl: float,
        refresh_ahead: float | None,
        max_stale: float,
        max_bytes: int | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        _check_seconds("ttl", ttl, positive=True)
        _check_seconds("negative_ttl", negative_ttl, positive=False)
        _check_seconds("max_stale", max_stale, positive=False)
        if refresh_ahead is not None:
            if (
                isinstance(refresh_ahead, bool)
                or not isinstance(refresh_ahead, int | float)
                or not 0 < refresh_ahead < 1
            ):
                raise ValueError(
                    f"refresh_ahead must be None or a number between 0 and 1 (exclusive), "
                    f"got {refresh_ahead!r}"
                )
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be None or an int >= 1, got {max_bytes!r}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self._too_large = 0
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._refresh_ahead = refresh_ahead
        self._max_stale = max_stale
        # Precomputed bounds, so a lookup only compares.
        self._stale_until = ttl + max_stale
        self._refresh_after = math.inf if refresh_ahead is None else refresh_ahead * ttl
        self._negative_refresh_after = (
            math.inf if refresh_ahead is None else refresh_ahead * negative_ttl
        )
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._hits = 0
        self._negative_hits = 0
        self._misses = 0
        self._stale_hits = 0
        self._refreshes_due = 0
        self._evictions = 0
        self._expired = 0

    @classmethod
    def for_source(cls, source: Source) -> DimensionCache:
        """The cache a source's spec asks for: its ``cache_size``, ``ttl``, ``negative_ttl``,
        ``refresh_ahead``, ``max_stale`` (0 with ``stale_if_error=false``) and
        ``cache_max_bytes``, durations converted from milliseconds to seconds."""
        return cls(
            capacity=source.cache_size,
            ttl=source.ms("ttl") / 1000,
            negative_ttl=source.ms("negative_ttl") / 1000,
            refresh_ahead=source.refresh_ahead,
            max_stale=source.ms("max_stale") / 1000 if source.stale_if_error else 0.0,
            max_bytes=source.cache_max_bytes,
        )

    @property
    def capacity(self) -> int:
        """The most entries the cache holds."""
        return self._capacity

    def __len__(self) -> int:
        """Entries held now, whatever their age (dead ones not yet dropped included)."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether an entry is held for ``key``, whatever its age. Does not count as a read."""
        return key in self._entries

    def __repr__(self) -> str:
        return (
            f"DimensionCache(capacity={self._capacity}, ttl={self._ttl}, "
            f"negative_ttl={self._negative_ttl}, refresh_ahead={self._refresh_ahead}, "
            f"max_stale={self._max_stale}, max_bytes={self._max_bytes}, "
            f"size={len(self._entries)})"
        )

    def keys(self) -> list[Hashable]:
        """The keys held, least recently used first (the next to be evicted first)."""
        return list(self._entries)

    def lookup(self, key: Hashable, now: float) -> Hit | None:
        """What the cache can serve for ``key`` without a fetch: ``(FRESH, row, age,
        refresh_due)``, ``(MISSING, None, age, refresh_due)``, or None when the caller has to
        fetch (the key is absent, or its row is past its TTL). ``age`` is in seconds.

        Counts one hit, negative hit or miss. A stale row stays held for :meth:`lookup_stale`;
        a dead entry is dropped.
        """
        entries = self._entries
        entry = entries.get(key)
        if entry is not None:
            age = now - entry.fetched_at
            if entry.missing:
                if age < self._negative_ttl:
                    entries.move_to_end(key)
                    self._negative_hits += 1
                    if age >= self._negative_refresh_after and not entry.refresh_requested:
                        entry.refresh_requested = True
                        self._refreshes_due += 1
                        return (_MISSING, None, age, True)
                    return (_MISSING, None, age, False)
                # a missing entry has no stale window: past negative_ttl it is dead
                del entries[key]
                self._bytes -= entry.size
                self._expired += 1
            elif age < self._ttl:
                entries.move_to_end(key)
                self._hits += 1
                if age >= self._refresh_after and not entry.refresh_requested:
                    entry.refresh_requested = True
                    self._refreshes_due += 1
                    return (_FRESH, entry.value, age, True)
                return (_FRESH, entry.value, age, False)
            elif age < self._stale_until:
                # still in use: the caller fetches it, and may fall back on it if that fails
                entries.move_to_end(key)
            else:
                del entries[key]
                self._bytes -= entry.size
                self._expired += 1
        self._misses += 1
        return None

    def hot(self) -> tuple[OrderedDict[Hashable, Any], float, float, float, float]:
        """What a caller's hot loop needs to serve fresh entries itself, without a call per
        lookup: the entries (an ``OrderedDict`` of entries with ``value``, ``fetched_at``,
        ``missing``, ``refresh_requested`` and ``derived``), ``ttl``, the age past which a row
        is due for refresh, ``negative_ttl``, and the same for a missing entry.

        The loop may only read them, ``move_to_end`` an entry it serves (as :meth:`lookup`
        does), set ``derived``, and count what it served (and the keys it found absent) with
        :meth:`count_hits`; it must serve an entry only when :meth:`lookup` would answer it
        fresh, not due for refresh (an entry whose refresh was already reported is not due),
        and give every other lookup of a key it holds to :meth:`lookup`.
        """
        return (
            self._entries,
            self._ttl,
            self._refresh_after,
            self._negative_ttl,
            self._negative_refresh_after,
        )

    def count_hits(self, hits: int, negative_hits: int, misses: int = 0) -> None:
        """Count lookups that a caller served from :meth:`hot`'s entries, and ``misses``:
        lookups of keys it found absent from them (what :meth:`lookup` counts for a key it
        does not hold)."""
        self._hits += hits
        self._negative_hits += negative_hits
        self._misses += misses

    def peek(self, key: Hashable, now: float) -> Hit | None:
        """What :meth:`lookup` would serve, without counting it, moving the key or reporting a
        refresh: for a second look at a key already looked up (an event released from the
        enricher's stash), or to ask whether a key needs a fetch."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = now - entry.fetched_at
        if entry.missing:
            return (_MISSING, None, age, False) if age < self._negative_ttl else None
        return (_FRESH, entry.value, age, False) if age < self._ttl else None

    def rearm_refresh(self, key: Hashable) -> None:
        """A refresh-ahead fetch of ``key`` failed: report it due again at its next read."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.refresh_requested = False

    def lookup_stale(self, key: Hashable, now: float) -> Hit | None:
        """The fallback after a failed fetch: like :meth:`lookup`, but a row past its TTL by
        less than ``max_stale`` is given as ``(STALE, row, age, False)``. A fresh row (stored
        since the failed lookup) or a fresh missing entry is given as by ``lookup``; None when
        nothing servable is held (the caller uses the lookup's default).

        Never reports a refresh; counts only the stale rows it serves (``stale_hits``), since
        the event's ``lookup`` was already counted.
        """
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return None
        age = now - entry.fetched_at
        if entry.missing:
            if age < self._negative_ttl:
                entries.move_to_end(key)
                return (_MISSING, None, age, False)
        elif age < self._ttl:
            entries.move_to_end(key)
            return (_FRESH, entry.value, age, False)
        elif age < self._stale_until:
            entries.move_to_end(key)
            self._stale_hits += 1
            return (_STALE, entry.value, age, False)
        del entries[key]
        self._bytes -= entry.size
        self._expired += 1
        return None

    def put(self, key: Hashable, value: Any, now: float) -> None:
        """Store the row fetched for ``key`` at ``now`` (replacing what was held: a row or a
        missing entry); it becomes the most recently used, and refresh-ahead is re-armed.
        Storing a new key into a full cache evicts the least recently used entry."""
        entries = self._entries
        if self._max_bytes is None and key not in entries:
            # the usual store: a new key, no bytes to measure (each fetched row comes here)
            entries[key] = _Entry(value, now, False, 0)
            if len(entries) > self._capacity:
                entries.popitem(last=False)
                self._evictions += 1
            return
        self._store(key, value, now, False)

    def put_missing(self, key: Hashable, now: float) -> None:
        """Remember at ``now`` that the source does not have ``key`` (replacing any row held).
        With ``negative_ttl`` 0 nothing is stored: the key is only forgotten."""
        if self._negative_ttl > 0:
            self._store(key, None, now, True)
        else:
            self.invalidate(key)

    def _store(self, key: Hashable, value: Any, now: float, missing: bool) -> None:
        entries = self._entries
        size = 0
        max_bytes = self._max_bytes
        if max_bytes is not None:
            size = estimate_bytes(key) + estimate_bytes(value)
            if size > max_bytes:
                # more than the whole bound: caching it would empty the cache for one row
                self._too_large += 1
                self.invalidate(key)
                return
        entry = entries.get(key)
        if entry is None:
            entries[key] = _Entry(value, now, missing, size)
            self._bytes += size
            if len(entries) > self._capacity:
                self._bytes -= entries.popitem(last=False)[1].size
                self._evictions += 1
        else:
            self._bytes += size - entry.size
            entry.value = value
            entry.fetched_at = now
            entry.missing = missing
            entry.size = size
            entry.refresh_requested = False
            entry.derived = None
            entries.move_to_end(key)
        if max_bytes is not None:
            # the entry just stored is the most recently used, and fits alone: it stays
            while self._bytes > max_bytes:
                self._bytes -= entries.popitem(last=False)[1].size
                self._evictions += 1

    def warm(self, items: Iterable[tuple[Hashable, Any]], now: float) -> int:
        """Bulk-load ``(key, row)`` pairs fetched at ``now``, as if put in order: when they
        hold more than ``capacity`` distinct keys, the last ones win. Evicted (and counted) are
        only entries held before the call that it does not store again, never a key of the
        batch. Returns the number of keys stored.

        Memory stays within ``capacity`` entries whatever the size of ``items``.
        """
        capacity = self._capacity
        last: OrderedDict[Hashable, Any] = OrderedDict()
        for key, value in items:
            last[key] = value
            last.move_to_end(key)
            if len(last) > capacity:
                last.popitem(last=False)
        # Keys of the batch already held first go behind every other entry, so the entries
        # that make room are those the batch does not store again.
        entries = self._entries
        for key in last:
            if key in entries:
                entries.move_to_end(key)
        for key, value in last.items():
            self._store(key, value, now, False)
        return len(last)

    def invalidate(self, key: Hashable) -> bool:
        """Forget ``key`` (its next lookup misses); whether an entry was held."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def clear(self) -> None:
        """Forget every entry. The counters are kept: they count since the cache was made."""
        self._entries.clear()
        self._bytes = 0

    def expire(self, now: float, limit: int = 1000) -> int:
        """Drop dead entries (rows past ``ttl + max_stale``, missing entries past
        ``negative_ttl``) from the least recently used end, stopping at the first live entry
        or after ``limit`` drops; returns how many were dropped.

        Cheap enough to call on a timer: O(1 + dropped). It does not scan past a live entry,
        so a dead entry behind one goes later (once the entries before it die too, within
        ``max(ttl + max_stale, negative_ttl)`` of its own death), when read, or when evicted;
        dead entries are never served in the meantime.
        """
        entries = self._entries
        stale_until, negative_ttl = self._stale_until, self._negative_ttl
        dropped = 0
        while dropped < limit and entries:
            key = next(iter(entries))
            entry = entries[key]
            age = now - entry.fetched_at
            if age < (negative_ttl if entry.missing else stale_until):
                break
            del entries[key]
            self._bytes -= entry.size
            dropped += 1
        self._expired += dropped
        return dropped

    def export(self) -> list[tuple[Hashable, Any, float, bool]]:
        """The entries as ``(key, row, fetched_at, missing)``, least recently used first: what
        a checkpoint keeps of the cache (rows are plain data)."""
        return [(key, e.value, e.fetched_at, e.missing) for key, e in self._entries.items()]

    def load(self, entries: Iterable[Any]) -> int:
        """Put back what :meth:`export` gave, in order, each with its own ``fetched_at`` (so
        ages and TTLs go on from where they were). Returns the number of entries stored."""
        count = 0
        for key, value, fetched_at, missing in entries:
            self._store(key, value, fetched_at, missing)
            count += 1
        return count

    def statistics(self) -> CacheStatistics:
        """A snapshot of the counters and the occupancy."""
        size = len(self._entries)
        lookups = self._hits + self._negative_hits + self._misses
        return CacheStatistics(
            capacity=self._capacity,
            size=size,
            utilization=size / self._capacity,
            lookups=lookups,
            hits=self._hits,
            negative_hits=self._negative_hits,
            misses=self._misses,
            hit_ratio=(self._hits + self._negative_hits) / lookups if lookups else 0.0,
            stale_hits=self._stale_hits,
            refreshes_due=self._refreshes_due,
            evictions=self._evictions,
            expired=self._expired,
            max_bytes=self._max_bytes,
            bytes=self._bytes,
            too_large=self._too_large,
        )


#: the most objects :func:`estimate_bytes` visits in one value
_MEASURE_LIMIT = 100_000


def estimate_bytes(value: object) -> int:
    """An estimate of the memory ``value`` holds: ``sys.getsizeof`` of it and of everything it
    holds (the keys and values of dicts, the items of lists, tuples and sets, a version's row).

    Iterative, so a deeply nested row cannot exhaust the stack; it visits at most 100,000
    objects (the containers' own sizes still count their slots). An object reached twice is
    counted twice: the estimate errs on the high side, which is the safe side for a bound.
    """
    getsizeof = sys.getsizeof
    total = 0
    stack = [value]
    budget = _MEASURE_LIMIT
    try:
        while stack and budget:
            item = stack.pop()
            budget -= 1
            total += getsizeof(item)
            if isinstance(item, dict):
                if len(stack) + 2 * len(item) <= budget:
                    stack.extend(item.keys())
                    stack.extend(item.values())
            elif isinstance(item, list | tuple | set | frozenset):
                if len(stack) + len(item) <= budget:
                    stack.extend(item)
            elif isinstance(item, Version):
                stack.append(item.row)
    except Exception:  # a custom source's object whose __sizeof__ or iteration raises
        pass
    return total


def _check_seconds(name: str, value: object, *, positive: bool) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
