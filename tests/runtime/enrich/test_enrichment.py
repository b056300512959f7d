"""Enrichment in the runtime: events get their dimension rows from a real SQLite file, in
order per key, and a slow or failing source never delays the features that do not read it."""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import runtime._topology as topology_module
from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Lookup,
    Mean,
    SqliteSource,
    Sum,
    Where,
)
from runtime._enrich.sources import make_source

from ..support.clock import FakeClock

ROWS = [("m1", "grocery", 0.1), ("m2", "bet", 0.9), ("m3", "travel", 0.3)]


def _database(tmp_path: Path, rows: Sequence[tuple[Any, ...]] = ROWS) -> str:
    path = str(tmp_path / "merchants.db")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE merchants (merchant_id TEXT PRIMARY KEY, category TEXT, risk REAL)"
        )
        connection.executemany("INSERT INTO merchants VALUES (?, ?, ?)", rows)
    return path


def _set(path: str, **source_options: Any) -> FeatureSet:
    return FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[
            SqliteSource(
                name="merchants",
                path=path,
                table="merchants",
                key="merchant_id",
                **source_options,
            )
        ],
        lookups=[
            Lookup(
                name="merchant",
                field="merchant_id",
                source="merchants",
                default={"category": "unknown", "risk": 0.5},
            )
        ],
        features=[
            Count(name="n"),
            Sum(name="spent", field="amount"),
            Mean(name="risk", field="merchant.risk"),
            Count(name="bets", where=Where(field="merchant.category", op="==", value="bet")),
        ],
    )


class _Wrapped:
    """A real source behind a delay, and failures on demand."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.failing = False
        self.calls = 0

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        await anyio.sleep(self.delay)
        if self.failing:
            raise ConnectionError("the merchants database is down")
        result: dict[Hashable, Any] = await self.inner.get_many(keys)
        return result


@pytest.fixture
def wrapped(monkeypatch: pytest.MonkeyPatch) -> list[_Wrapped]:
    made: list[_Wrapped] = []

    def make(spec: Any) -> _Wrapped:
        source = _Wrapped(make_source(spec), delay=0.0)
        made.append(source)
        return source

    monkeypatch.setattr(topology_module, "make_source", make)
    return made


async def test_events_get_rows_defaults_and_metadata(tmp_path: Path) -> None:
    fs = _set(_database(tmp_path))
    async with FeatureRuntime(fs, shards=2) as rt:
        enriched = rt.enriched_events()
        events = [
            {"card": "c1", "ts": 1, "merchant_id": "m1", "amount": 10},
            {"card": "c1", "ts": 2, "merchant_id": "m2", "amount": 20},
            {"card": "c1", "ts": 3, "merchant_id": "nope", "amount": 5},  # not in the table
            {"card": "c1", "ts": 4, "amount": 1},  # no key: the default
            {"card": "c2", "ts": 5, "merchant_id": "m2", "amount": 7},
            {"card": "c2", "ts": 6, "merchant_id": "m2", "amount": 7},
        ]
        await rt.ingest_many(events)
        await rt.flush()
        await rt.ingest({"card": "c3", "ts": 7, "merchant_id": "m1"})  # cached now
        await rt.flush()
        c1, c2 = await rt.get("c1"), await rt.get("c2")
        stats = (await rt.statistics()).enrichment["merchants"]
        await enriched.aclose()
        seen = [e async for e in enriched]
    assert (c1["n"], c1["spent"], c1["bets"]) == (4, 36, 1)
    assert c1["risk"] == pytest.approx((0.1 + 0.9 + 0.5 + 0.5) / 4)
    assert (c2["bets"], c2["risk"]) == (2, 0.9)
    by_time = {e.event_time: e.event for e in seen}
    assert by_time[1]["enrichment"]["merchant"] == {
        "merchant_id": "m1",
        "category": "grocery",
        "risk": 0.1,
    }
    assert by_time[1]["merchant.category"] == "grocery"
    metadata = by_time[3]["enrichment_metadata"]
    assert metadata["defaulted"] == ["merchant"] and metadata["timestamp"] == 3
    assert set(metadata) >= {"cache_hits", "cache_misses", "enrichment_latency_ms", "cache_age_ms"}
    assert by_time[4]["enrichment"]["merchant"] == {"category": "unknown", "risk": 0.5}
    # one fetch per key: m1, m2 and nope once each, however many events wait for them
    assert stats.keys_requested == 3 and stats.keys_missing == 1
    assert (stats.cache_misses, stats.cache_hits, stats.stashed) == (5, 1, 0)
    assert by_time[7]["enrichment_metadata"]["cache_hits"] == 1


async def test_a_slow_source_does_not_delay_features_that_do_not_read_it(
    tmp_path: Path, wrapped: list[_Wrapped]
) -> None:
    fs = _set(_database(tmp_path), timeout="10s")
    async with FeatureRuntime(fs, shards=2) as rt:
        wrapped[0].delay = 1.0
        await rt.ingest_many(
            [{"card": "c1", "ts": t, "merchant_id": "m2", "amount": 1} for t in range(5)]
        )
        with anyio.fail_after(0.5):  # the plain features are there long before the fetch
            while (await rt.get("c1"))["n"] < 5:
                await anyio.sleep(0.01)
        vector = await rt.get("c1")
        assert (vector["n"], vector["spent"], vector["bets"]) == (5, 5, 0)
        await rt.flush()  # waits for the fetch
        vector = await rt.get("c1")
        assert (vector["bets"], vector["risk"]) == (5, 0.9)
        assert wrapped[0].calls == 1


async def test_a_key_keeps_its_order_behind_a_fetch(
    tmp_path: Path, wrapped: list[_Wrapped]
) -> None:
    fs = _set(_database(tmp_path))
    async with FeatureRuntime(fs, shards=3, batch_size=4) as rt:
        enriched = rt.enriched_events()
        await rt.ingest({"card": "warm", "ts": 0, "merchant_id": "m1", "amount": 0})
        await rt.flush()  # m1 is cached now
        wrapped[0].delay = 0.2
        events = []
        for i in range(40):
            merchant = "m1" if i % 3 else ("m2" if i % 2 else "m3")
            events.append({"card": f"c{i % 4}", "ts": 10 + i, "merchant_id": merchant})
        await rt.ingest_many(events)
        await rt.flush()
        await enriched.aclose()
        seen = [e async for e in enriched if e.key != "warm"]
    for card in {e["card"] for e in events}:
        times = [e.event_time for e in seen if e.key == card]
        assert times == sorted(times) and len(times) == 10


async def test_a_source_that_goes_down_gives_stale_rows_then_defaults_and_the_circuit_opens(
    tmp_path: Path, wrapped: list[_Wrapped]
) -> None:
    fs = _set(
        _database(tmp_path),
        ttl="1s",
        max_stale="1h",
        retries=1,
        backoff="1ms",
        breaker_failures=2,
        breaker_reset="200ms",
        refresh_ahead=None,
    )

    clock = FakeClock()
    async with FeatureRuntime(fs, clock=clock) as rt:
        enriched = rt.enriched_events()
        await rt.ingest({"card": "c", "ts": 1, "merchant_id": "m2"})
        await rt.flush()
        wrapped[0].failing = True
        clock.now += 5  # m2's row is stale now
        await rt.ingest({"card": "c", "ts": 2, "merchant_id": "m2"})  # stale row
        await rt.ingest({"card": "c", "ts": 3, "merchant_id": "m3"})  # nothing cached: default
        await rt.flush()
        await rt.ingest({"card": "c", "ts": 4, "merchant_id": "m1"})
        await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
        assert stats.breaker_state == "open" and stats.breaker_openings == 1
        assert stats.stale_served == 1 and stats.defaults_after_error >= 2
        wrapped[0].failing = False
        await anyio.sleep(0.25)  # past breaker_reset: the next fetch is the probe
        await rt.ingest({"card": "c", "ts": 5, "merchant_id": "m3"})
        await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
        assert stats.breaker_state == "closed"
        await enriched.aclose()
        seen = {e.event_time: e.event for e in [e async for e in enriched]}
    assert seen[2]["enrichment"]["merchant"]["category"] == "bet"
    assert seen[2]["enrichment_metadata"]["stale"] == ["merchant"]
    assert seen[3]["enrichment"]["merchant"]["category"] == "unknown"
    assert seen[5]["enrichment"]["merchant"]["category"] == "travel"


async def test_a_small_stash_backpressures_and_loses_nothing(
    tmp_path: Path, wrapped: list[_Wrapped]
) -> None:
    rows = [(f"m{i}", "shop", float(i)) for i in range(50)]
    fs = FeatureSet.from_dict({**_set(_database(tmp_path, rows)).to_dict(), "enrich_stash": 3})
    async with FeatureRuntime(fs, shards=2, batch_size=8) as rt:
        wrapped[0].delay = 0.005
        await rt.ingest_many(
            [
                {"card": f"c{i % 5}", "ts": i, "merchant_id": f"m{i % 50}", "amount": 1}
                for i in range(400)
            ]
        )
        await rt.flush()
        vectors = await rt.get_many([f"c{i}" for i in range(5)])
        stats = await rt.statistics()
    assert sum(v["n"] for v in vectors.values()) == 400
    assert all(v["risk"] is not None for v in vectors.values())
    assert stats.enrichment["merchants"].stashed == 0
    assert rt.dead_letters.count() == 0


class _Odd:
    """A custom source with a row that is not a mapping, and one that is."""

    calls = 0

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        rows: dict[Hashable, Any] = {"m1": {"risk": 0.25}, "bad": "not a row"}
        return {key: rows[key] for key in keys if key in rows}


async def test_a_custom_source_and_its_malformed_rows() -> None:
    from runtime import CustomSource

    fs = FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[CustomSource(name="odd")],
        lookups=[Lookup(name="m", field="mid", source="odd", default={"risk": 1.0})],
        features=[Mean(name="risk", field="m.risk")],
    )
    odd = _Odd()
    async with FeatureRuntime(fs, sources={"odd": odd}) as rt:
        await rt.ingest_many(
            [{"card": "c", "ts": 1, "mid": "m1"}, {"card": "c", "ts": 2, "mid": "bad"}]
        )
        await rt.flush()
        assert (await rt.get("c"))["risk"] == pytest.approx((0.25 + 1.0) / 2)
        stats = (await rt.statistics()).enrichment["odd"]
        assert stats.malformed == 1 and rt.dead_letters.count() == 0
    with pytest.raises(Exception, match="needs an object"):
        FeatureRuntime(fs)
    with pytest.raises(Exception, match="not a CustomSource"):
        FeatureRuntime(fs, sources={"odd": odd, "other": odd})


async def test_warm_up_and_invalidate(tmp_path: Path, wrapped: list[_Wrapped]) -> None:
    path = _database(tmp_path)
    async with FeatureRuntime(_set(path)) as rt:
        assert await rt.warm_up("merchants", ["m1", "m2", "gone"]) == 3
        assert await rt.warm_up("merchants", rows={"m9": {"category": "bet", "risk": 1.0}}) == 1
        calls = wrapped[0].calls
        await rt.ingest_many(
            [
                {"card": "c", "ts": 1, "merchant_id": "m1"},
                {"card": "c", "ts": 2, "merchant_id": "gone"},  # cached as missing
                {"card": "c", "ts": 3, "merchant_id": "m9"},  # from the bulk load
            ]
        )
        await rt.flush()
        assert wrapped[0].calls == calls  # every lookup came from the cache
        assert (await rt.get("c"))["risk"] == pytest.approx((0.1 + 0.5 + 1.0) / 3)
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE merchants SET risk = 0.7 WHERE merchant_id = 'm1'")
        assert rt.invalidate("merchants", "m1") and not rt.invalidate("merchants", "m7")
        await rt.ingest({"card": "d", "ts": 4, "merchant_id": "m1"})
        await rt.flush()
        assert (await rt.get("d"))["risk"] == 0.7 and wrapped[0].calls == calls + 1
        with pytest.raises(ValueError, match="no source with lookups named 'shops'"):
            rt.invalidate("shops", "m1")


async def test_a_versioned_table_enriches_each_event_as_of_its_time(tmp_path: Path) -> None:
    path = str(tmp_path / "versions.db")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE merchants (merchant_id TEXT, risk REAL, valid_from INT, valid_to INT)"
        )
        connection.executemany(
            "INSERT INTO merchants VALUES (?, ?, ?, ?)",
            [("m1", 0.1, 0, 1_000), ("m1", 0.9, 1_000, None), ("m2", 0.4, 500, None)],
        )
    fs = FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[
            SqliteSource(
                name="merchants",
                path=path,
                table="merchants",
                key="merchant_id",
                columns=["risk"],
                valid_from="valid_from",
                valid_to="valid_to",
            )
        ],
        lookups=[Lookup(name="merchant", field="merchant_id", source="merchants")],
        features=[Count(name="n")],
    )
    async with FeatureRuntime(fs) as rt:
        enriched = rt.enriched_events()
        # a replay of history: each event gets the version valid at its time
        await rt.ingest_many(
            [
                {"card": "c", "ts": 10, "merchant_id": "m1"},
                {"card": "c", "ts": 999, "merchant_id": "m1"},
                {"card": "c", "ts": 1_000, "merchant_id": "m1"},
                {"card": "c", "ts": 1_001, "merchant_id": "m2"},
                {"card": "d", "ts": 100, "merchant_id": "m2"},  # before m2's first version
            ]
        )
        await rt.flush()
        await enriched.aclose()
        seen = {(e.key, e.event_time): e.event async for e in enriched}
    risk = {k: e.get("merchant.risk") for k, e in seen.items()}
    assert risk == {
        ("c", 10): 0.1,
        ("c", 999): 0.1,
        ("c", 1_000): 0.9,
        ("c", 1_001): 0.4,
        ("d", 100): None,  # no version then, and no default: the lookup's fields are absent
    }
    assert seen[("d", 100)]["enrichment_metadata"]["defaulted"] == ["merchant"]


async def test_get_includes_events_the_cache_answered_and_all_enriched_sets_count_events(
    tmp_path: Path,
) -> None:
    fs = FeatureSet.from_dict(
        {
            **_set(_database(tmp_path)).to_dict(),
            "features": [{"type": "mean", "name": "risk", "field": "merchant.risk"}],
        }
    )
    async with FeatureRuntime(fs, shards=2) as rt:
        await rt.warm_up("merchants", ["m1", "m2"])
        for t in range(20):
            await rt.ingest({"card": "c", "ts": t, "merchant_id": "m1" if t % 2 else "m2"})
            assert (await rt.get("c"))["risk"] is not None  # no flush: the cache answered
        await rt.flush()
        stats = await rt.statistics()
        assert stats.events_processed == 20


class _Rows:
    """A custom source of rows with a delay, and failures on demand."""

    def __init__(self, rows: dict[str, Any], delay: float = 0.0) -> None:
        self.rows, self.delay, self.down, self.calls = rows, delay, False, 0

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        await anyio.sleep(self.delay)
        if self.down:
            raise ConnectionError("down")
        return {k: self.rows[k] for k in keys if k in self.rows}


def _custom(stash: int = 10_000, two: bool = False, **options: Any) -> FeatureSet:
    from runtime import CustomSource

    sources = [CustomSource(name="a", **options)]
    lookups = [Lookup(name="m", field="mid", source="a", default={"risk": -1.0})]
    features: list[Any] = [Count(name="n"), Mean(name="risk", field="m.risk")]
    if two:
        sources.append(CustomSource(name="b", **options))
        lookups.append(Lookup(name="c", field="cid", source="b", default={"x": -1.0}))
        features.append(Mean(name="x", field="c.x"))
    return FeatureSet(
        name="t",
        key="card",
        time="ts",
        sources=sources,
        lookups=lookups,
        features=features,
        enrich_stash=stash,
    )


async def test_a_full_stash_and_a_slow_reader_do_not_deadlock() -> None:
    # fetches land while the enricher waits to hand events on: the stash-full wait must see
    # them (it checks the state, not only a wake-up)
    rows = {f"m{i}": {"risk": float(i)} for i in range(50)}
    source = _Rows(rows, delay=0.002)
    async with FeatureRuntime(
        _custom(stash=2), shards=1, batch_size=2, sources={"a": source}
    ) as rt:
        reader = rt.enriched_events(buffer=1)
        got: list[Any] = []

        async def read() -> None:
            async for event in reader:
                got.append(event)
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            with anyio.fail_after(20):
                await rt.ingest_many(
                    [{"card": f"c{i % 5}", "ts": i, "mid": f"m{i % 50}"} for i in range(150)]
                )
                await rt.flush()
            await reader.aclose()
    assert len(got) == 150


async def test_two_lookups_landing_apart_keep_what_landed_first() -> None:
    # nothing is cached (no rows, no negative entries): an event with two lookups must keep
    # the first outcome while the second is fetched, not fetch the first again forever
    a, b = _Rows({}), _Rows({}, delay=0.05)
    fs = _custom(two=True, negative_ttl=0)
    async with FeatureRuntime(fs, sources={"a": a, "b": b}) as rt:
        await rt.ingest_many([{"card": "c", "ts": t, "mid": "k", "cid": "z"} for t in range(3)])
        with anyio.fail_after(5):
            await rt.flush()
        vector = await rt.get("c")
    assert (vector["risk"], vector["x"]) == (-1.0, -1.0)
    assert (a.calls, b.calls) == (1, 1)


async def test_a_late_subscriber_gets_whole_events() -> None:
    source = _Rows({"m1": {"risk": 1.0}, "m2": {"risk": 2.0}}, delay=0.05)
    async with FeatureRuntime(_custom(), sources={"a": source}) as rt:
        await rt.warm_up("a", ["m2"])
        await rt.ingest({"card": "c", "ts": 1, "mid": "m1"})  # waits for a fetch
        await rt.ingest({"card": "c", "ts": 2, "mid": "m2"})  # cached, but behind ts 1
        await anyio.sleep(0.01)
        reader = rt.enriched_events()  # subscribes while both wait
        await rt.flush()
        await reader.aclose()
        events = [e.event async for e in reader]
    assert [("enrichment" in e, "enrichment_metadata" in e) for e in events] == [
        (True, True),
        (True, True),
    ]


async def test_a_failed_refresh_does_not_stop_later_fetches() -> None:
    clock = FakeClock()
    source = _Rows({"m": {"risk": 1.0}})
    fs = _custom(ttl="10s", refresh_ahead=0.5, max_stale="1h")
    async with FeatureRuntime(fs, clock=clock, sources={"a": source}) as rt:
        await rt.ingest({"card": "c", "ts": 1, "mid": "m"})
        await rt.flush()
        source.down = True
        clock.now += 6  # past half the ttl: this read asks for a refresh, which fails
        await rt.ingest({"card": "c", "ts": 2, "mid": "m"})
        await rt.flush()
        await anyio.sleep(0.05)
        source.down = False
        source.rows["m"] = {"risk": 2.0}
        clock.now += 10  # expired: fetched again, from the source that is back
        reader = rt.enriched_events()
        await rt.ingest({"card": "c", "ts": 3, "mid": "m"})
        await rt.flush()
        await reader.aclose()
        assert [e.event["m.risk"] async for e in reader] == [2.0]


async def test_at_shutdown_no_waiting_event_is_lost() -> None:
    source = _Rows({f"m{i}": {"risk": float(i)} for i in range(10)}, delay=2.0)
    rt = FeatureRuntime(
        _custom(stash=2, timeout="10s"),
        batch_size=1,
        shutdown_timeout=0.5,
        sources={"a": source},
    )
    seen: list[Any] = []

    async def read(reader: Any) -> None:
        async for event in reader:
            seen.append(event)

    async with anyio.create_task_group() as tg:
        async with rt:
            tg.start_soon(read, rt.enriched_events())  # reads until the runtime closes it
            for i in range(3):
                await rt.ingest({"card": "c", "ts": i, "mid": f"m{i}"})
                await anyio.sleep(0.05)
    dead = sum(
        len(letter.message.events) if hasattr(letter.message, "events") else 1
        for letter in rt.dead_letters.letters()
    )
    # each event was enriched (with its default: the fetch was cancelled) or dead-lettered
    assert len(seen) + dead == 3
