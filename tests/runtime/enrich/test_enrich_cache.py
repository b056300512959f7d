"""``DimensionCache``: TTLs, negative caching, the stale window, LRU order, refresh-ahead and
counters, rule by rule and against a brute-force model over random operations."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from runtime._enrich.cache import CacheStatistics, CacheStatus, DimensionCache
from runtime._spec.enrich import SqliteSource


def make(
    capacity: int = 10,
    ttl: float = 100,
    negative_ttl: float = 10,
    refresh_ahead: float | None = None,
    max_stale: float = 50,
) -> DimensionCache:
    return DimensionCache(
        capacity=capacity,
        ttl=ttl,
        negative_ttl=negative_ttl,
        refresh_ahead=refresh_ahead,
        max_stale=max_stale,
    )


# --- TTLs -------------------------------------------------------------------------------------


def test_a_row_is_fresh_until_its_ttl_with_its_age_in_seconds() -> None:
    cache = make(ttl=100)
    cache.put("k", {"risk": 1}, 1000.0)
    assert cache.lookup("k", 1000.0) == (CacheStatus.FRESH, {"risk": 1}, 0.0, False)
    assert cache.lookup("k", 1099.5) == (CacheStatus.FRESH, {"risk": 1}, 99.5, False)
    assert cache.lookup("k", 1100.0) is None  # age == ttl: expired


def test_a_missing_key_is_remembered_for_negative_ttl() -> None:
    cache = make(negative_ttl=10)
    cache.put_missing("k", 0)
    assert cache.lookup("k", 9.5) == (CacheStatus.MISSING, None, 9.5, False)
    assert cache.lookup("k", 10) is None


def test_a_missing_entry_has_no_stale_window_and_is_dropped_once_expired() -> None:
    cache = make(negative_ttl=10, max_stale=1000)
    cache.put_missing("k", 0)
    assert cache.lookup_stale("k", 10) is None
    assert "k" not in cache


def test_negative_ttl_zero_stores_no_missing_entry_and_forgets_the_row() -> None:
    cache = make(negative_ttl=0)
    cache.put("k", 1, 0)
    cache.put_missing("k", 0)
    assert "k" not in cache and len(cache) == 0
    assert cache.lookup("k", 0) is None


def test_put_replaces_a_missing_entry_and_put_missing_replaces_a_row() -> None:
    cache = make()
    cache.put_missing("k", 0)
    cache.put("k", "row", 5)
    assert cache.lookup("k", 5) == (CacheStatus.FRESH, "row", 0, False)
    cache.put_missing("k", 6)
    assert cache.lookup("k", 7) == (CacheStatus.MISSING, None, 1, False)
    assert len(cache) == 1


def test_a_put_restarts_the_ttl() -> None:
    cache = make(ttl=100)
    cache.put("k", "old", 0)
    cache.put("k", "new", 90)
    assert cache.lookup("k", 150) == (CacheStatus.FRESH, "new", 60, False)


# --- the stale window ---------------------------------------------------------------------------


def test_a_row_past_its_ttl_is_a_miss_for_lookup_but_stale_for_lookup_stale() -> None:
    cache = make(ttl=100, max_stale=50)
    cache.put("k", "row", 0)
    assert cache.lookup("k", 100) is None
    assert "k" in cache  # kept for the fallback
    assert cache.lookup_stale("k", 100) == (CacheStatus.STALE, "row", 100, False)
    assert cache.lookup_stale("k", 149.5) == (CacheStatus.STALE, "row", 149.5, False)


def test_a_row_past_ttl_plus_max_stale_is_dead_and_dropped_when_read() -> None:
    cache = make(ttl=100, max_stale=50)
    cache.put("a", "row", 0)
    cache.put("b", "row", 0)
    assert cache.lookup_stale("a", 150) is None
    assert cache.lookup("b", 150) is None
    assert len(cache) == 0
    assert cache.statistics().expired == 2


def test_lookup_stale_gives_fresh_rows_and_missing_entries_as_they_are() -> None:
    cache = make()
    cache.put("row", 1, 0)
    cache.put_missing("gone", 0)
    assert cache.lookup_stale("row", 1) == (CacheStatus.FRESH, 1, 1, False)
    assert cache.lookup_stale("gone", 1) == (CacheStatus.MISSING, None, 1, False)
    assert cache.lookup_stale("absent", 1) is None


def test_max_stale_zero_serves_nothing_stale() -> None:
    cache = make(ttl=100, max_stale=0)
    cache.put("k", "row", 0)
    assert cache.lookup_stale("k", 100) is None
    assert "k" not in cache


# --- LRU ----------------------------------------------------------------------------------------


def test_storing_past_capacity_evicts_the_least_recently_used_entry() -> None:
    cache = make(capacity=3)
    for key in "abc":
        cache.put(key, key, 0)
    cache.put("d", "d", 0)
    assert cache.keys() == ["b", "c", "d"]
    assert "a" not in cache
    assert cache.statistics().evictions == 1


def test_a_read_makes_an_entry_the_most_recently_used() -> None:
    cache = make(capacity=4, ttl=100, negative_ttl=10)
    cache.put("fresh", 1, 0)
    cache.put("stale", 1, -120)  # past its ttl, within max_stale
    cache.put_missing("missing", 0)
    cache.put("other", 1, 0)
    cache.lookup("fresh", 1)
    cache.lookup("stale", 1)  # a miss, but the row is still in use
    cache.lookup("missing", 1)
    assert cache.keys() == ["other", "fresh", "stale", "missing"]
    cache.lookup_stale("other", 1)
    cache.lookup_stale("stale", 1)
    assert cache.keys() == ["fresh", "missing", "other", "stale"]


def test_storing_an_existing_key_makes_it_most_recently_used_without_an_eviction() -> None:
    cache = make(capacity=2)
    cache.put("a", 1, 0)
    cache.put("b", 1, 0)
    cache.put("a", 2, 0)
    cache.put_missing("b", 0)
    assert cache.keys() == ["a", "b"]
    cache.put("c", 1, 0)
    assert cache.keys() == ["b", "c"]
    assert cache.statistics().evictions == 1


def test_membership_and_length_do_not_count_as_reads() -> None:
    cache = make(capacity=2)
    cache.put("a", 1, 0)
    cache.put("b", 1, 0)
    assert "a" in cache and len(cache) == 2
    cache.put("c", 1, 0)
    assert cache.keys() == ["b", "c"]
    assert cache.statistics().lookups == 0


# --- refresh-ahead -----------------------------------------------------------------------------


def test_refresh_ahead_is_reported_once_per_entry() -> None:
    cache = make(ttl=100, refresh_ahead=0.8)
    cache.put("k", "row", 0)
    assert cache.lookup("k", 79.5) == (CacheStatus.FRESH, "row", 79.5, False)
    assert cache.lookup("k", 80) == (CacheStatus.FRESH, "row", 80, True)
    assert cache.lookup("k", 81) == (CacheStatus.FRESH, "row", 81, False)
    assert cache.lookup("k", 99) == (CacheStatus.FRESH, "row", 99, False)
    assert cache.statistics().refreshes_due == 1


def test_storing_the_key_again_rearms_refresh_ahead() -> None:
    cache = make(ttl=100, refresh_ahead=0.5)
    cache.put("k", "v1", 0)
    assert cache.lookup("k", 60)[3]  # type: ignore[index]
    cache.put("k", "v2", 70)
    assert cache.lookup("k", 110) == (CacheStatus.FRESH, "v2", 40, False)
    assert cache.lookup("k", 120) == (CacheStatus.FRESH, "v2", 50, True)
    assert cache.statistics().refreshes_due == 2


def test_refresh_ahead_is_reported_for_missing_entries_at_their_own_ttl() -> None:
    cache = make(negative_ttl=10, refresh_ahead=0.5)
    cache.put_missing("k", 0)
    assert cache.lookup("k", 4) == (CacheStatus.MISSING, None, 4, False)
    assert cache.lookup("k", 5) == (CacheStatus.MISSING, None, 5, True)
    assert cache.lookup("k", 6) == (CacheStatus.MISSING, None, 6, False)
    cache.put_missing("k", 6)
    assert cache.lookup("k", 11) == (CacheStatus.MISSING, None, 5, True)


def test_refresh_ahead_none_never_reports_a_refresh() -> None:
    cache = make(ttl=100, refresh_ahead=None)
    cache.put("k", "row", 0)
    assert cache.lookup("k", 99.99) == (CacheStatus.FRESH, "row", 99.99, False)
    assert cache.statistics().refreshes_due == 0


def test_lookup_stale_never_reports_or_consumes_a_refresh() -> None:
    cache = make(ttl=100, refresh_ahead=0.5)
    cache.put("k", "row", 0)
    assert cache.lookup_stale("k", 60) == (CacheStatus.FRESH, "row", 60, False)
    assert cache.lookup("k", 60) == (CacheStatus.FRESH, "row", 60, True)


# --- invalidate, clear, warm, expire ------------------------------------------------------------


def test_invalidate_forgets_a_key_and_says_whether_it_was_held() -> None:
    cache = make()
    cache.put("row", 1, 0)
    cache.put_missing("gone", 0)
    assert cache.invalidate("row") is True
    assert cache.invalidate("gone") is True
    assert cache.invalidate("row") is False
    assert cache.lookup("row", 0) is None and cache.lookup("gone", 0) is None
    assert len(cache) == 0


def test_clear_forgets_every_entry_and_keeps_the_counters() -> None:
    cache = make()
    cache.put("a", 1, 0)
    cache.lookup("a", 0)
    cache.clear()
    assert len(cache) == 0 and cache.lookup("a", 0) is None
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.size) == (1, 1, 0)


def test_warm_keeps_the_last_distinct_keys_up_to_capacity() -> None:
    cache = make(capacity=3)
    items = [("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 1), ("e", 1), ("d", 2)]
    assert cache.warm(iter(items), 5) == 3
    assert cache.keys() == ["a", "e", "d"]
    assert cache.lookup("a", 5) == (CacheStatus.FRESH, 2, 0, False)
    assert cache.lookup("d", 5) == (CacheStatus.FRESH, 2, 0, False)
    assert cache.statistics().evictions == 0


def test_warm_evicts_entries_held_before_and_counts_only_those() -> None:
    cache = make(capacity=3)
    cache.put("old1", 1, 0)
    cache.put("old2", 1, 0)
    cache.put_missing("b", 0)
    assert cache.warm([("a", 1), ("b", 1)], 1) == 2
    assert cache.keys() == ["old2", "a", "b"]
    assert cache.lookup("b", 1) == (CacheStatus.FRESH, 1, 0, False)
    assert cache.statistics().evictions == 1


def test_warm_never_evicts_a_held_key_it_stores_again() -> None:
    cache = make(capacity=3)
    for key in "xab":
        cache.put(key, 0, 0)
    cache.warm([("c", 1), ("x", 1)], 1)
    assert cache.keys() == ["b", "c", "x"]
    assert cache.lookup("x", 1) == (CacheStatus.FRESH, 1, 0, False)
    assert cache.statistics().evictions == 1


def test_expire_drops_dead_entries_from_the_lru_end_and_stops_at_a_live_one() -> None:
    cache = make(ttl=100, negative_ttl=10, max_stale=50)
    cache.put("dead_row", 1, 0)  # dead at 150
    cache.put_missing("dead_missing", 100)  # dead at 110
    cache.put("stale_row", 1, 50)  # stale from 150, dead at 200
    cache.put("dead_behind", 1, 0)  # dead at 150, behind a live entry
    assert cache.expire(149) == 0
    assert cache.expire(160) == 2
    assert cache.keys() == ["stale_row", "dead_behind"]
    assert cache.expire(200) == 2
    assert len(cache) == 0
    assert cache.statistics().expired == 4


def test_expire_stops_after_limit_drops() -> None:
    cache = make(capacity=10, ttl=1, max_stale=0)
    for key in range(5):
        cache.put(key, 1, 0)
    assert cache.expire(10, limit=2) == 2
    assert cache.keys() == [2, 3, 4]
    assert cache.expire(10) == 3


# --- counters -------------------------------------------------------------------------------------


def test_each_lookup_counts_once_and_lookup_stale_counts_only_stale_rows() -> None:
    cache = make(capacity=4, ttl=100, negative_ttl=10, max_stale=50)
    cache.put("row", 1, 0)
    cache.put_missing("gone", 0)
    cache.put("old", 1, -120)
    cache.lookup("row", 0)  # hit
    cache.lookup("row", 1)  # hit
    cache.lookup("gone", 0)  # negative hit
    cache.lookup("old", 0)  # miss (stale)
    cache.lookup("absent", 0)  # miss
    cache.lookup_stale("old", 0)  # stale hit
    cache.lookup_stale("row", 0)  # not counted
    cache.lookup_stale("absent", 0)  # not counted
    assert cache.statistics() == CacheStatistics(
        capacity=4,
        size=3,
        utilization=0.75,
        lookups=5,
        hits=2,
        negative_hits=1,
        misses=2,
        hit_ratio=0.6,
        stale_hits=1,
        refreshes_due=0,
        evictions=0,
        expired=0,
    )


def test_hits_served_from_hot_count_as_lookups_would() -> None:
    cache = make(ttl=100, negative_ttl=10, refresh_ahead=0.5)
    entries, ttl, refresh_after, negative_ttl, negative_refresh_after = cache.hot()
    assert (ttl, refresh_after, negative_ttl, negative_refresh_after) == (100, 50, 10, 5)
    cache.put("k", {"risk": 1}, 0.0)
    assert set(entries) == {"k"}  # the live entries, not a copy
    cache.count_hits(3, 2)
    stats = cache.statistics()
    assert (stats.hits, stats.negative_hits, stats.lookups, stats.hit_ratio) == (3, 2, 5, 1.0)


def test_what_a_caller_derived_from_a_row_is_forgotten_when_the_key_is_stored_again() -> None:
    cache = make(ttl=100, max_stale=50)
    cache.put("k", {"risk": 1}, 0.0)
    entries = cache.hot()[0]
    entries["k"].derived = ("m", {"m.risk": 1})
    cache.put("k", {"risk": 2}, 120.0)  # stored again while held for its stale window
    assert entries["k"].derived is None
    entries["k"].derived = ("m", {"m.risk": 2})
    cache.put_missing("k", 130.0)
    assert entries["k"].derived is None


def test_the_hit_ratio_is_zero_before_any_lookup() -> None:
    stats = make(capacity=8).statistics()
    assert (stats.lookups, stats.hit_ratio, stats.utilization) == (0, 0.0, 0.0)


# --- construction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"capacity": 0}, "capacity must be an int >= 1, got 0"),
        ({"capacity": True}, "capacity must be an int >= 1, got True"),
        ({"ttl": 0}, "ttl must be a finite number of seconds > 0, got 0"),
        ({"ttl": math.inf}, "ttl must be a finite number of seconds > 0, got inf"),
        ({"negative_ttl": -1}, "negative_ttl must be a finite number of seconds >= 0, got -1"),
        ({"max_stale": math.nan}, "max_stale must be a finite number of seconds >= 0, got nan"),
        ({"refresh_ahead": 1}, "refresh_ahead must be None or a number between 0 and 1"),
        ({"refresh_ahead": 0.0}, "refresh_ahead must be None or a number between 0 and 1"),
    ],
)
def test_limits_out_of_range_are_refused(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "capacity": 10,
        "ttl": 100,
        "negative_ttl": 10,
        "refresh_ahead": 0.8,
        "max_stale": 50,
    }
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DimensionCache(**{**arguments, **changes})


def test_for_source_reads_the_spec_in_seconds() -> None:
    source = SqliteSource(
        name="merchants",
        path="m.db",
        table="merchants",
        key="id",
        cache_size=7,
        ttl="2m",
        negative_ttl="1500ms",
        refresh_ahead=0.5,
        max_stale="10s",
    )
    cache = DimensionCache.for_source(source)
    assert cache.capacity == 7
    cache.put("row", 1, 0)
    cache.put_missing("gone", 0)
    assert cache.lookup("row", 60) == (CacheStatus.FRESH, 1, 60, True)
    assert cache.lookup("gone", 0.7) == (CacheStatus.MISSING, None, 0.7, False)
    assert cache.lookup("gone", 1.5) is None
    assert cache.lookup_stale("row", 129) == (CacheStatus.STALE, 1, 129, False)
    assert cache.lookup_stale("row", 130) is None


def test_for_source_without_stale_if_error_keeps_no_stale_rows() -> None:
    source = SqliteSource(
        name="merchants",
        path="m.db",
        table="merchants",
        key="id",
        ttl="1s",
        stale_if_error=False,
    )
    cache = DimensionCache.for_source(source)
    cache.put("row", 1, 0)
    assert cache.lookup_stale("row", 1) is None


# --- against a brute-force model ----------------------------------------------------------------


class Model:
    """Every rule spelled out over a plain dict: ``key -> [value, fetched_at, missing,
    refresh_requested, last_touch]``; the LRU victim is the entry with the oldest touch."""

    def __init__(
        self,
        capacity: int,
        ttl: float,
        negative_ttl: float,
        refresh_ahead: float | None,
        max_stale: float,
    ) -> None:
        self.capacity, self.ttl, self.negative_ttl = capacity, ttl, negative_ttl
        self.refresh_ahead, self.max_stale = refresh_ahead, max_stale
        self.entries: dict[Any, list[Any]] = {}
        self.clock = 0  # touch order
        self.counts = dict.fromkeys(
            ("hits", "negative_hits", "misses", "stale_hits", "refreshes_due"), 0
        )
        self.counts.update(evictions=0, expired=0)

    def touch(self, key: Any) -> None:
        self.clock += 1
        self.entries[key][4] = self.clock

    def order(self) -> list[Any]:
        return sorted(self.entries, key=lambda k: self.entries[k][4])

    def lifespan(self, entry: list[Any]) -> float:
        return self.negative_ttl if entry[2] else self.ttl + self.max_stale

    def store(self, key: Any, value: Any, now: float, missing: bool) -> None:
        if key not in self.entries and len(self.entries) == self.capacity:
            del self.entries[self.order()[0]]
            self.counts["evictions"] += 1
        self.entries[key] = [value, now, missing, False, 0]
        self.touch(key)

    def put_missing(self, key: Any, now: float) -> None:
        if self.negative_ttl == 0:
            self.entries.pop(key, None)
        else:
            self.store(key, None, now, True)

    def lookup(self, key: Any, now: float, fallback: bool) -> Any:
        entry = self.entries.get(key)
        answer = None
        if entry is not None:
            value, fetched_at, missing, requested, _ = entry
            age = now - fetched_at
            if age >= self.lifespan(entry):
                del self.entries[key]
                self.counts["expired"] += 1
            else:
                self.touch(key)
                ttl = self.negative_ttl if missing else self.ttl
                if age < ttl:
                    due = (
                        not fallback
                        and self.refresh_ahead is not None
                        and age >= self.refresh_ahead * ttl
                        and not requested
                    )
                    if due:
                        entry[3] = True
                        self.counts["refreshes_due"] += 1
                    status = CacheStatus.MISSING if missing else CacheStatus.FRESH
                    answer = (status, value, age, due)
                    if not fallback:
                        self.counts["negative_hits" if missing else "hits"] += 1
                elif fallback:
                    answer = (CacheStatus.STALE, value, age, False)
                    self.counts["stale_hits"] += 1
        if answer is None and not fallback:
            self.counts["misses"] += 1
        return answer

    def expire(self, now: float, limit: int) -> int:
        dropped = 0
        for key in self.order():
            if dropped == limit or now - self.entries[key][1] < self.lifespan(self.entries[key]):
                break
            del self.entries[key]
            dropped += 1
        self.counts["expired"] += dropped
        return dropped


keys = st.integers(0, 5)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, st.integers(0, 99)),
        st.tuples(st.just("put_missing"), keys),
        st.tuples(st.just("lookup"), keys),
        st.tuples(st.just("lookup_stale"), keys),
        st.tuples(st.just("invalidate"), keys),
        st.tuples(st.just("advance"), st.integers(0, 30)),
        st.tuples(st.just("expire"), st.integers(1, 4)),
        st.tuples(st.just("warm"), st.lists(st.tuples(keys, st.integers(0, 99)), max_size=8)),
        st.tuples(st.just("clear")),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(
    ops=operations,
    capacity=st.integers(1, 4),
    ttl=st.integers(1, 40),
    negative_ttl=st.integers(0, 20),
    refresh_ahead=st.sampled_from([None, 0.25, 0.5, 0.75]),
    max_stale=st.integers(0, 40),
)
def test_the_cache_agrees_with_a_brute_force_model(
    ops: list[tuple[Any, ...]],
    capacity: int,
    ttl: int,
    negative_ttl: int,
    refresh_ahead: float | None,
    max_stale: int,
) -> None:
    settings_ = (capacity, ttl, negative_ttl, refresh_ahead, max_stale)
    cache = make(*settings_)
    model = Model(*settings_)
    now = 0
    for op, *args in ops:
        if op == "put":
            cache.put(args[0], args[1], now)
            model.store(args[0], args[1], now, False)
        elif op == "put_missing":
            cache.put_missing(args[0], now)
            model.put_missing(args[0], now)
        elif op == "lookup":
            assert cache.lookup(args[0], now) == model.lookup(args[0], now, fallback=False)
        elif op == "lookup_stale":
            assert cache.lookup_stale(args[0], now) == model.lookup(args[0], now, fallback=True)
        elif op == "invalidate":
            assert cache.invalidate(args[0]) == (model.entries.pop(args[0], None) is not None)
        elif op == "advance":
            now += args[0]
        elif op == "expire":
            assert cache.expire(now, limit=args[0]) == model.expire(now, args[0])
        elif op == "warm":
            stored = cache.warm(args[0], now)
            held_before, evictions = set(model.entries), model.counts["evictions"]
            for key, value in args[0]:
                model.store(key, value, now, False)
            # the same entries as puts in order, but evicted are only the entries held before
            # and not stored again, never a key of the batch pushed out by a later one
            model.counts["evictions"] = evictions + len(held_before - set(model.entries))
            assert stored == len({key for key, _ in args[0]} & set(model.entries))
        else:
            cache.clear()
            model.entries.clear()
        assert cache.keys() == model.order()
        assert len(cache) == len(model.entries)
        for key in range(6):
            assert (key in cache) == (key in model.entries)
        stats = cache.statistics()
        lookups = model.counts["hits"] + model.counts["negative_hits"] + model.counts["misses"]
        assert stats == CacheStatistics(
            capacity=capacity,
            size=len(model.entries),
            utilization=len(model.entries) / capacity,
            lookups=lookups,
            hit_ratio=(model.counts["hits"] + model.counts["negative_hits"]) / lookups
            if lookups
            else 0.0,
            **model.counts,
        )
