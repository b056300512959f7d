"""``python -m demos.bench enrichment``: dimension lookups through FeatureRuntime's enricher
against hand-written ways of doing them, on a source that takes 2 ms per call.

The workload: ``--events`` (200,000) card transactions over ``--merchants`` (20,000) merchants
with Zipf-like skew (a few merchants take most of the traffic); each needs its merchant's row
(a risk score), and two features per card come of it: a count and the mean merchant risk. The
source answers any batch of keys after ``--latency`` (2 ms), as a database or an API in the
same region would; it counts its calls.

The cases, all in the same run, all computing the same features:

- one fetch per event: each event awaits its merchant's row (run on the first
  ``--naive-events`` events only: at 2 ms each the whole stream would take minutes);
- an LRU cache alone (5,000 entries) in front of the same fetch (also on the first events);
- DataLoader: the hand-written baseline, events taken in chunks of 1,000 as a stream consumer
  takes them, each chunk's misses of the same LRU loaded together through ``aiodataloader``
  (one batch call per chunk);
- FeatureRuntime: the merchants as a ``CustomSource`` with a 5,000-entry cache; the events go
  through ``ingest_many`` and the enricher (batched fetches, one in flight per key).

Printed: events/s, source calls and calls per 1,000 events, and each case's ratio to the
DataLoader baseline's events/s. Target: at least 0.5 of it, with no more source calls.
The features of the runtime are checked against the baseline's.

Then the same two (the DataLoader baseline and FeatureRuntime) against real sources holding
the same merchants: a SQLite file (made in a temporary directory), and PostgreSQL (a table in
``--postgres``) and Redis (JSON objects under a prefix, in ``--redis``) where a server answers
(a source whose server is absent is skipped, and says so). The baseline talks to each server by
hand, with its driver library (aiosqlite, asyncpg, redis.asyncio), one query per batch of keys,
its calls counted; FeatureRuntime is given the source's spec (``SqliteSource``,
``PostgresSource``, ``RedisSource``) and its calls are read from ``rt.statistics()``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from itertools import accumulate
from typing import Any

import msgspec
import msgspec.json
import msgspec.structs
from aiodataloader import DataLoader

from runtime import (
    Count,
    CustomSource,
    FeatureRuntime,
    FeatureSet,
    Lookup,
    Mean,
    PostgresSource,
    RedisSource,
    SqliteSource,
)

from ._common import Row, print_table, quiet_logs, rate

CACHE = 5_000
CHUNK = 1_000
PG_TABLE = "featurist_bench_merchants"


class SlowSource:
    """Merchant rows after a fixed latency per call, whatever the batch size."""

    def __init__(self, merchants: int, latency: float) -> None:
        rng = random.Random(7)
        self.rows = {
            f"m{i:05d}": {"risk": round(rng.random(), 3), "category": f"c{i % 20}"}
            for i in range(merchants)
        }
        self.latency = latency
        self.calls = 0
        self.keys = 0

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        self.keys += len(keys)
        await asyncio.sleep(self.latency)
        return {key: self.rows[key] for key in keys if key in self.rows}


def make_events(events: int, merchants: int, cards: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    weights = list(accumulate(1.0 / (i + 1) ** 1.1 for i in range(merchants)))
    names = [f"m{i:05d}" for i in range(merchants)]
    picks = rng.choices(names, cum_weights=weights, k=events)
    return [
        {"card": f"c{rng.randrange(cards)}", "ts": 1_700_000_000_000 + i, "merchant_id": m}
        for i, m in enumerate(picks)
    ]


class Totals:
    """The features by hand: per card, a count and the sum of merchant risk."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.risk: dict[str, float] = {}

    def add(self, card: str, row: dict[str, Any] | None) -> None:
        self.count[card] = self.count.get(card, 0) + 1
        self.risk[card] = self.risk.get(card, 0.0) + (row["risk"] if row else 0.5)


class LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        row = self.rows.get(key)
        if row is not None:
            self.rows.move_to_end(key)
        return row

    def put(self, key: Hashable, row: Any) -> None:
        self.rows[key] = row
        self.rows.move_to_end(key)
        if len(self.rows) > self.size:
            self.rows.popitem(last=False)


async def per_event(events: list[dict[str, Any]], source: SlowSource) -> Totals:
    totals = Totals()
    for event in events:
        rows = await source.get_many([event["merchant_id"]])
        totals.add(event["card"], rows.get(event["merchant_id"]))
    return totals


async def lru_alone(events: list[dict[str, Any]], source: SlowSource) -> Totals:
    totals, cache = Totals(), LRU(CACHE)
    for event in events:
        key = event["merchant_id"]
        row = cache.get(key)
        if row is None:
            row = (await source.get_many([key])).get(key)
            cache.put(key, row)
        totals.add(event["card"], row)
    return totals


async def dataloader(events: list[dict[str, Any]], source: SlowSource) -> Totals:
    """The hand-written baseline: chunks of a stream, their misses loaded together."""
    totals, cache = Totals(), LRU(CACHE)

    async def batch(keys: list[Hashable]) -> list[Any]:
        rows = await source.get_many(keys)
        return [rows.get(key) for key in keys]

    loader = DataLoader(batch, cache=False, max_batch_size=CHUNK)
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        missing = {e["merchant_id"] for e in chunk if cache.get(e["merchant_id"]) is None}
        if missing:
            keys = list(missing)
            for key, row in zip(keys, await loader.load_many(keys), strict=True):
                cache.put(key, row)
        for event in chunk:
            totals.add(event["card"], cache.rows.get(event["merchant_id"]))
    return totals


FEATURES = FeatureSet(
    name="tx",
    key="card",
    time="ts",
    sources=[
        CustomSource(
            name="merchants",
            cache_size=CACHE,
            ttl="1h",
            max_batch_size=CHUNK,
            max_in_flight=2,
            fetch_linger="2ms",
        )
    ],
    lookups=[
        Lookup(name="merchant", field="merchant_id", source="merchants", default={"risk": 0.5})
    ],
    features=[Count(name="n"), Mean(name="risk", field="merchant.risk")],
)


class SqliteMerchants:
    """The hand-written way to read the merchants of a SQLite file: aiosqlite, one
    ``SELECT ... IN (?, ...)`` per batch of keys."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.calls = 0
        self._db: Any = None

    async def open(self) -> None:
        import aiosqlite

        self._db = await aiosqlite.connect(self.path)

    async def close(self) -> None:
        await self._db.close()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        marks = ", ".join("?" * len(keys))
        query = f"SELECT merchant_id, risk FROM merchants WHERE merchant_id IN ({marks})"
        async with self._db.execute(query, list(keys)) as cursor:
            return {key: {"risk": risk} for key, risk in await cursor.fetchall()}


class PostgresMerchants:
    """The hand-written way to read them from PostgreSQL: one asyncpg connection, one
    ``SELECT ... = ANY($1)`` per batch of keys."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.calls = 0
        self._connection: Any = None

    async def open(self) -> None:
        import asyncpg

        self._connection = await asyncpg.connect(self.dsn, timeout=5)

    async def close(self) -> None:
        await self._connection.close()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        records = await self._connection.fetch(
            f"SELECT merchant_id, risk FROM {PG_TABLE} WHERE merchant_id = ANY($1)", list(keys)
        )
        return {record[0]: {"risk": record[1]} for record in records}


class RedisMerchants:
    """The hand-written way to read them from Redis: JSON objects, one ``MGET`` per batch."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.calls = 0
        self._client: Any = None

    async def open(self) -> None:
        import redis.asyncio

        self._client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=2)

    async def close(self) -> None:
        await self._client.aclose()

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        values = await self._client.mget([f"{self.prefix}{key}" for key in keys])
        return {
            key: msgspec.json.decode(value)
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }


async def featurist(
    events: list[dict[str, Any]],
    source: Any,
    shards: int,
    features: FeatureSet = FEATURES,
    calls: list[int] | None = None,
) -> dict[str, Any]:
    """The features of FeatureRuntime; ``source`` is the object of a ``CustomSource`` (None:
    the feature set's source is built in), and ``calls`` gets its calls as the runtime counts
    them."""
    sources = {} if source is None else {"merchants": source}
    async with FeatureRuntime(features, shards=shards, batch_size=512, sources=sources) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        cards = sorted({e["card"] for e in events})
        vectors = await rt.get_many(cards[:200])
        if calls is not None:
            calls.append((await rt.statistics()).enrichment["merchants"].calls)
        return vectors


async def timed(case: Any, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await case(*args)
    return time.perf_counter() - start, result


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m demos.bench enrichment", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--merchants", type=int, default=20_000)
    parser.add_argument("--cards", type=int, default=50_000)
    parser.add_argument("--latency", type=float, default=0.002, help="seconds per call")
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--postgres", default="postgresql://postgres@127.0.0.1:5432/test", help="a DSN"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="a URL")
    parser.add_argument(
        "--no-real", action="store_true", help="skip the runs against SQLite, PostgreSQL, Redis"
    )
    args = parser.parse_args(argv)
    quiet_logs()
    events = make_events(args.events, args.merchants, args.cards, args.seed)
    asyncio.run(_main(args, events))
    if not args.no_real:
        asyncio.run(_real(args, events))


async def _main(args: argparse.Namespace, events: list[dict[str, Any]]) -> None:
    n = len(events)
    naive = events[: args.naive_events]
    results = []
    for label, case, sample in (
        ("one fetch per event", per_event, naive),
        (f"LRU cache alone ({CACHE:,})", lru_alone, naive),
        ("DataLoader + LRU (baseline)", dataloader, events),
    ):
        source = SlowSource(args.merchants, args.latency)
        seconds, totals = await timed(case, sample, source)
        results.append((label, len(sample), seconds, source.calls, totals))
    baseline_seconds, baseline_totals = results[-1][2], results[-1][4]
    source = SlowSource(args.merchants, args.latency)
    seconds, vectors = await timed(featurist, events, source, args.shards)
    for card, vector in vectors.items():
        want = baseline_totals.risk[card] / baseline_totals.count[card]
        assert vector["n"] == baseline_totals.count[card], card
        assert abs(vector["risk"] - want) < 1e-9, (card, vector["risk"], want)
    shards = f"{args.shards} shard{'s' if args.shards > 1 else ''}"
    results.append((f"FeatureRuntime, {shards}", n, seconds, source.calls, None))
    rows = []
    baseline_rate = n / baseline_seconds
    baseline_calls = results[2][3]
    for label, count, secs, calls, _ in results:
        sampled = count < n
        rows.append(
            Row(
                label + (f" (first {count:,})" if sampled else ""),
                {
                    "events/s": rate(count, secs),
                    "source calls": f"{calls:,}",
                    "calls / 1k events": f"{calls / count * 1000:.2f}",
                    "ratio": f"{count / secs / baseline_rate:.3f}",
                },
            )
        )
    print_table(
        f"enrichment: {n:,} events over {args.merchants:,} merchants, "
        f"{args.latency * 1000:g} ms per source call",
        ["events/s", "source calls", "calls / 1k events", "ratio"],
        rows,
    )
    ours = results[-1]
    print(
        f"\nFeatureRuntime: {n / ours[2] / baseline_rate:.2f} of the DataLoader baseline's "
        f"events/s (target: at least 0.5), {ours[3]:,} source calls against its "
        f"{baseline_calls:,} (target: no more)"
    )


async def _real(args: argparse.Namespace, events: list[dict[str, Any]]) -> None:
    """The DataLoader baseline and FeatureRuntime against SQLite, PostgreSQL and Redis."""
    rows = SlowSource(args.merchants, 0).rows
    n = len(events)
    table: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "merchants.db")
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE merchants (merchant_id TEXT PRIMARY KEY, risk REAL)")
            connection.executemany(
                "INSERT INTO merchants VALUES (?, ?)", [(k, r["risk"]) for k, r in rows.items()]
            )
        common: dict[str, Any] = {
            "name": "merchants",
            "cache_size": CACHE,
            "ttl": "1h",
            "max_batch_size": CHUNK,
            "max_in_flight": 2,
            "fetch_linger": "2ms",
        }
        prefix = "featurist:bench:m:"
        specs: list[tuple[str, Any, Any, Any]] = [
            (
                "SQLite",
                SqliteSource(path=path, table="merchants", key="merchant_id", **common),
                SqliteMerchants(path),
                None,
            ),
            (
                "PostgreSQL",
                PostgresSource(dsn=args.postgres, table=PG_TABLE, key="merchant_id", **common),
                PostgresMerchants(args.postgres),
                _postgres_table,
            ),
            (
                "Redis",
                RedisSource(url=args.redis, prefix=prefix, format="json", **common),
                RedisMerchants(args.redis, prefix),
                _redis,
            ),
        ]
        for label, spec, baseline, setup in specs:
            try:
                if setup is not None:
                    await setup(spec, rows)
                await baseline.open()
                try:
                    base_seconds, totals = await timed(dataloader, events, baseline)
                finally:
                    await baseline.close()
                features = msgspec.structs.replace(FEATURES, sources=(spec,))
                calls: list[int] = []
                seconds, vectors = await timed(
                    featurist, events, None, args.shards, features, calls
                )
            except (OSError, ImportError, TimeoutError) as exc:
                table.append(Row(f"{label}: skipped", {"events/s": f"no server ({exc})"[:60]}))
                continue
            for card, vector in vectors.items():
                want = totals.risk[card] / totals.count[card]
                assert abs(vector["risk"] - float(want)) < 1e-6, (label, card)
            table.append(
                Row(
                    f"{label}: DataLoader + LRU",
                    {
                        "events/s": rate(n, base_seconds),
                        "source calls": f"{baseline.calls:,}",
                        "ratio": "1.000",
                    },
                )
            )
            table.append(
                Row(
                    f"{label}: FeatureRuntime",
                    {
                        "events/s": rate(n, seconds),
                        "source calls": f"{calls[0]:,}",
                        "ratio": f"{base_seconds / seconds:.3f}",
                    },
                )
            )
    print_table("the same against real sources", ["events/s", "source calls", "ratio"], table)


async def _postgres_table(spec: PostgresSource, rows: dict[str, dict[str, Any]]) -> None:
    import asyncpg

    connection = await asyncpg.connect(spec.dsn, timeout=5)
    try:
        await connection.execute(
            f"DROP TABLE IF EXISTS {PG_TABLE};"
            f"CREATE TABLE {PG_TABLE} (merchant_id TEXT PRIMARY KEY, risk REAL)"
        )
        await connection.copy_records_to_table(
            PG_TABLE, records=[(k, r["risk"]) for k, r in rows.items()]
        )
    finally:
        await connection.close()


async def _redis(spec: RedisSource, rows: dict[str, dict[str, Any]]) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(spec.url, socket_connect_timeout=2)
    try:
        await client.mset(
            {
                spec.prefix + key: msgspec.json.encode({"risk": row["risk"]})
                for key, row in rows.items()
            }
        )
    finally:
        await client.aclose()
