"""Lookups (enrichment) with workers: each worker opens the feature set's sources itself (a
SQLite file here) and has caches of its own; custom sources are pickled to each worker, and
one that cannot be is refused at construction, by name. Values, updates and the enriched
events (``rt.enriched_events()``) equal an in-process runtime's; ``statistics().enrichment``
merges the workers' caches and calls; a worker killed mid-stream is restored and replayed
with no enriched event lost or repeated."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections.abc import Hashable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    CheckpointConfig,
    ConfigError,
    Count,
    CustomSource,
    FeatureRuntime,
    FeatureSet,
    Lookup,
    Mean,
    Sliding,
    SourceError,
    SqliteSource,
    Sum,
)

T0 = 1_000_000
KEYS = 25
MERCHANTS = 12  # merchants m0..m9 in the table, m10 and m11 missing (the default)


def _merchants(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE merchants (merchant_id TEXT PRIMARY KEY, risk REAL, cat TEXT)")
        db.executemany(
            "INSERT INTO merchants VALUES (?, ?, ?)",
            [(f"m{i}", i / 10, "bet" if i % 3 == 0 else "shop") for i in range(10)],
        )
        db.commit()
    return str(path)


def _feature_set(path: str, wait: str = "readers") -> FeatureSet:
    return FeatureSet(
        name="e",
        wait_for_lookups=wait,  # type: ignore[arg-type]
        key="card",
        time="ts",
        max_out_of_orderness=200,
        sources=[SqliteSource(name="merchants", path=path, table="merchants", key="merchant_id")],
        lookups=[
            Lookup(
                name="m",
                field="merchant_id",
                source="merchants",
                default={"risk": -1.0, "cat": "none"},
            )
        ],
        features=[
            Count(name="n"),
            Mean(name="risk", field="m.risk"),
            Sum(name="w_risk", field="m.risk", window=Sliding(size=300)),
        ],
    )


def _events(count: int, seed: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "card": f"c{(i * 7 + seed) % KEYS}",
            "ts": T0 + i * 3 - ((i * 37 + seed) % 150),
            "merchant_id": f"m{(i * 5 + seed) % MERCHANTS}",
        }
        for i in range(count)
    ]


async def _drain(subscription: Any) -> list[Any]:
    batches = []
    iterator = aiter(subscription.batches())
    while subscription.statistics().depth:
        batches.append(await anext(iterator))
    return batches


def _enriched(batches: list[Any]) -> dict[Any, list[Any]]:
    """Per key, its enriched events' times, rows and flat fields (not the metadata, which
    says whether the cache answered: that differs with the caches)."""
    found: dict[Any, list[Any]] = {}
    for batch in batches:
        for item in batch:
            event = item.event
            found.setdefault(item.key, []).append(
                (item.event_time, event["enrichment"], event["m.risk"], event["m.cat"])
            )
    return found


def _updates(batches: list[Any]) -> dict[tuple[Any, str], list[Any]]:
    found: dict[tuple[Any, str], list[Any]] = {}
    for batch in batches:
        for update in batch:
            found.setdefault((update.key, update.group), []).append(
                (update.event_time, update.values)
            )
    return found


async def _run(fs: FeatureSet, events: list[Any], **options: Any) -> tuple[Any, ...]:
    async with FeatureRuntime(fs, batch_size=16, **options) as rt:
        updates = rt.updates(buffer=1_000_000)
        enriched = rt.enriched_events(buffer=1_000_000)
        for start in range(0, len(events), 100):
            assert await rt.ingest_many(events[start : start + 100]) == len(
                events[start : start + 100]
            )
        await rt.flush()
        vectors = await rt.get_many([f"c{k}" for k in range(KEYS)])
        stats = await rt.statistics()
        return (
            {key: v.values for key, v in vectors.items()},
            _updates(await _drain(updates)),
            _enriched(await _drain(enriched)),
            stats.enrichment["merchants"],
        )


@pytest.mark.parametrize("wait", ["readers", "all"])
async def test_lookups_over_workers_give_the_values_updates_and_enriched_events_of_one_process(
    tmp_path: Path, wait: str
) -> None:
    """Also with ``wait_for_lookups="all"``, where the count is in the lookups' group."""
    fs = _feature_set(_merchants(tmp_path / "m.db"), wait)
    events = _events(800)
    want = await _run(fs, events)
    got = await _run(fs, events, workers=2, shards=2)
    assert got[:3] == want[:3]
    ours, theirs = got[3], want[3]
    # each worker has its own cache: each asks once for each merchant it misses (the figures
    # are those of both workers together); its enrichers share the cache and the fetches in
    # flight, and a row is cached as the source answers
    assert theirs.keys_requested <= MERCHANTS
    assert theirs.keys_requested <= ours.keys_requested <= 2 * MERCHANTS
    assert ours.cache_hits + ours.cache_misses == theirs.cache_hits + theirs.cache_misses
    assert ours.hit_ratio == pytest.approx(ours.cache_hits / (ours.cache_hits + ours.cache_misses))
    assert ours.cache_capacity == 2 * theirs.cache_capacity
    assert ours.breaker_state == "closed"


class _Rows:
    """A custom source of fixed rows (picklable: each worker gets a copy)."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        return {key: self.rows[key] for key in keys if key in self.rows}


class _Locked(_Rows):
    """A custom source holding a lock: it cannot be pickled."""

    def __init__(self) -> None:
        super().__init__({})
        self.lock = threading.Lock()


class _Down(_Rows):
    """A custom source that always fails."""

    def __init__(self) -> None:
        super().__init__({})

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        raise ConnectionError("the users database is down")


def _custom_set() -> FeatureSet:
    return FeatureSet(
        name="c",
        key="card",
        time="ts",
        sources=[CustomSource(name="users")],
        lookups=[Lookup(name="u", field="user", source="users", default={"age": 0})],
        features=[Sum(name="ages", field="u.age")],
    )


async def test_a_picklable_custom_source_is_copied_to_each_worker() -> None:
    source = _Rows({f"u{i}": {"age": i} for i in range(5)})
    events = [{"card": f"c{i % 6}", "ts": T0 + i, "user": f"u{i % 7}"} for i in range(100)]
    want = await _run_custom(source, events)
    assert await _run_custom(source, events, workers=2) == want


async def _run_custom(source: Any, events: list[Any], **options: Any) -> Any:
    async with FeatureRuntime(_custom_set(), sources={"users": source}, **options) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        return {key: v.values for key, v in (await rt.get_many(range(6))).items()}


def test_a_custom_source_that_cannot_be_pickled_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="sources: 'users' cannot be sent to worker processes"):
        FeatureRuntime(_custom_set(), sources={"users": _Locked()}, workers=2)
    FeatureRuntime(_custom_set(), sources={"users": _Locked()})  # in process it runs


async def test_a_worker_killed_mid_stream_repeats_and_loses_no_enriched_event(
    tmp_path: Path,
) -> None:
    fs = _feature_set(_merchants(tmp_path / "m.db"))
    events = _events(1200, seed=5)
    want = await _run(fs, events)
    config = CheckpointConfig(directory=str(tmp_path / "ckpt"), interval=None)
    async with FeatureRuntime(fs, workers=2, shards=1, batch_size=16, checkpoints=config) as rt:
        front = rt._front
        assert front is not None
        updates = rt.updates(buffer=1_000_000)
        enriched = rt.enriched_events(buffer=1_000_000)
        killed = []
        for index, start in enumerate(range(0, len(events), 100)):
            await rt.ingest_many(events[start : start + 100])
            if index == 2:
                await rt.checkpoint()
            if index in (4, 7):
                pid = front.pids[index % 2]
                assert pid is not None
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
        await rt.flush()
        assert not set(killed) & set(front.pids)
        vectors = await rt.get_many([f"c{k}" for k in range(KEYS)])
        assert {key: v.values for key, v in vectors.items()} == want[0]
        assert _updates(await _drain(updates)) == want[1]
        assert _enriched(await _drain(enriched)) == want[2]


async def test_warm_up_fills_every_workers_cache(tmp_path: Path) -> None:
    fs = _feature_set(_merchants(tmp_path / "m.db"))
    events = _events(200)
    async with FeatureRuntime(fs, workers=2, shards=1) as rt:
        with pytest.raises(ValueError, match="no source with lookups named 'nope'"):
            await rt.warm_up("nope", ["m1"])
        merchants = [f"m{i}" for i in range(MERCHANTS)]
        given = {"m0": {"risk": 9.0, "cat": "given"}}
        assert await rt.warm_up("merchants", merchants[1:], rows=given) == MERCHANTS
        await rt.ingest_many(events)
        await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
        vector = await rt.get(events[0]["card"])
    # each worker fetched the keys once, at the warm-up; the events found them all cached
    assert stats.cache_misses == 0 and stats.cache_hits == len(events)
    assert stats.keys_requested == 2 * (MERCHANTS - 1)
    assert vector["n"] > 0


async def test_a_source_that_fails_in_the_workers_warm_up_raises_source_error() -> None:
    async with FeatureRuntime(_custom_set(), sources={"users": _Down()}, workers=1) as rt:
        with pytest.raises(SourceError, match="the users database is down"):
            await rt.warm_up("users", ["u1"])
