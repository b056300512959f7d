"""``python -m demos.bench enrichment``: dimension lookups through FeatureRuntime's enricher
against hand-written ways of doing them, on a source that takes 2 ms per call.

The workload: ``--events`` (200,000) card transactions over ``--merchants`` (20,000) merchants
with Zipf-like skew (a few merchants take most of the traffic); each needs its merchant's row
(a risk score), and two features per card come of it: a count and the mean merchant risk. The
source answers any batch of keys after ``--latency`` (2 ms), as a database or an API in the
same region would; it counts its calls.

Per event, the outputs are the card's count and the card's mean merchant risk after it: what
FeatureRuntime publishes (one update from each of its two feature groups, the second after
the lookup). The two sides, in the same run:

- DataLoader + LRU: the hand-written baseline, events taken in chunks of 1,000 as a stream
  consumer takes them, each chunk's misses of a 5,000-entry LRU loaded together through
  ``aiodataloader`` (one batch call per chunk), then both outputs of each event emitted;
- DataLoader + LRU, prefetching: the same loop made stronger, each chunk's misses asked
  before the previous chunk is computed, so the source's 2 ms hide behind the computation
  (still one call per chunk). The target is set against the first loop (issue 16 item 4);
  the column "vs prefetching" shows each side against this one, the fastest hand-written
  loop here;
- FeatureRuntime: the merchants as a ``CustomSource`` with a 5,000-entry cache; the events go
  through ``ingest_many`` and the enricher (batched fetches, one in flight per key), and a
  consumer task reads every update of ``rt.updates()`` beside ingest.

Every side folds each output into one checksum with the same function; the bench exits
non-zero when two differ. Timed: from the first event to the last output read; each case in
a child process of its own, after ``gc.freeze()`` of the input, in ``--repeat`` rounds (3)
that run every case once, interleaved, so that a round's cases meet the same machine; the best
of each case is shown. Printed: events/s, the ratio (target: at least 1.0) and the range of
the rounds' own ratios, the source calls of both (target: no more than the baseline's), the
runtime's own p50/p99 ingest-to-update latency and peak RSS.

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

from actors import run
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

from ._common import (
    Checksum,
    Row,
    check_agreement,
    diff_outputs,
    fastest,
    fold_seconds,
    freeze_input,
    key_hashes,
    net_ratio,
    peak_rss_mib,
    print_table,
    quiet_logs,
    rate,
    round_ratios,
    rounds_in_children,
    run_with_consumer,
)

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


def data_loader(source: SlowSource) -> DataLoader:
    """An ``aiodataloader`` over ``source``: a batch of keys in one call, rows in key order."""

    async def batch(keys: list[Hashable]) -> list[Any]:
        rows = await source.get_many(keys)
        return [rows.get(key) for key in keys]

    return DataLoader(batch, cache=False, max_batch_size=CHUNK)


def outputs(
    chunk: list[dict[str, Any]],
    kh: dict[str, int],
    count: dict[str, int],
    risk: dict[str, float],
    rows_of: Any,
    fold: Any,
) -> None:
    """The hand-written loops' per-event work over a chunk whose rows are cached: the card's
    count, then its mean merchant risk, each folded as the runtime's update of it."""
    for event in chunk:
        card = event["card"]
        t = event["ts"]
        h = kh[card]
        n = count.get(card, 0) + 1
        count[card] = n
        fold(h, t, n)
        row = rows_of.get(event["merchant_id"])
        total = risk.get(card, 0) + (row["risk"] if row is not None else 0.5)
        risk[card] = total
        fold(h, t, -1, total / n)


async def dataloader(events: list[dict[str, Any]], source: SlowSource) -> Totals:
    """The hand-written baseline: chunks of a stream, their misses loaded together."""
    totals, cache = Totals(), LRU(CACHE)

    loader = data_loader(source)
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


#: the input, made by the parent before its children fork
INPUT: dict[str, Any] = {}


async def dataloader_outputs(
    events: list[dict[str, Any]], source: SlowSource, kh: dict[str, int], checksum: Checksum
) -> None:
    """The hand-written baseline with the runtime's per-event outputs: chunks of a stream,
    each chunk's misses of the LRU loaded together through ``aiodataloader``, then per event
    the card's count, and the card's mean merchant risk (the runtime computes them in two
    feature groups, the second after the lookup, and publishes one update of each)."""
    cache = LRU(CACHE)
    rows_of = cache.rows
    lookup = cache.get
    count: dict[str, int] = {}
    risk: dict[str, float] = {}
    fold = checksum.fold

    loader = data_loader(source)
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        missing = {e["merchant_id"] for e in chunk if lookup(e["merchant_id"]) is None}
        if missing:
            keys = list(missing)
            for key, row in zip(keys, await loader.load_many(keys), strict=True):
                cache.put(key, row)
        outputs(chunk, kh, count, risk, rows_of, fold)


async def prefetching_outputs(
    events: list[dict[str, Any]], source: SlowSource, kh: dict[str, int], checksum: Checksum
) -> None:
    """The same hand-written loop made stronger: each chunk's misses are asked before the
    previous chunk is computed, so the source's latency hides behind the computation instead
    of adding to it (one call per chunk, as before). The misses of the next chunk are those of
    the LRU before this chunk's rows are stored: a key missing in both is asked twice, in two
    calls. Outputs and their order are the baseline's."""
    cache = LRU(CACHE)
    rows_of = cache.rows
    lookup = cache.get
    count: dict[str, int] = {}
    risk: dict[str, float] = {}
    fold = checksum.fold

    loader = data_loader(source)

    async def load(chunk: list[dict[str, Any]]) -> list[tuple[Hashable, Any]]:
        keys = list({e["merchant_id"] for e in chunk if lookup(e["merchant_id"]) is None})
        return list(zip(keys, await loader.load_many(keys), strict=True)) if keys else []

    chunks = [events[start : start + CHUNK] for start in range(0, len(events), CHUNK)]
    ahead = asyncio.ensure_future(load(chunks[0])) if chunks else None
    for index, chunk in enumerate(chunks):
        assert ahead is not None
        loaded = await ahead
        if index + 1 < len(chunks):
            ahead = asyncio.ensure_future(load(chunks[index + 1]))
            # let the next chunk's call start: DataLoader sends its batch a few loop turns on
            calls = source.calls
            for _ in range(8):
                if source.calls != calls:
                    break
                await asyncio.sleep(0)
        for key, row in loaded:
            cache.put(key, row)
        outputs(chunk, kh, count, risk, rows_of, fold)


#: the same features, all computed after the lookup (``wait_for_lookups="all"``): one update
#: per event with both, as the hand-written loops emit both once the chunk's rows are there
FEATURES_AFTER = msgspec.structs.replace(FEATURES, wait_for_lookups="all")


async def consume_rows(subscription: Any, checksum: Checksum) -> None:
    """Every update of the one group of ``FEATURES_AFTER``: rows ``(card, t, n, risk)``, each
    folded as its two outputs (the count, then the mean risk)."""
    fold = checksum.fold
    kh = INPUT["kh"]
    async for batch in subscription.batches():
        for card, t, n, risk in batch.rows:
            h = kh[card]
            fold(h, t, n)
            fold(h, t, -1, risk)


async def consume_updates(subscription: Any, checksum: Checksum) -> None:
    """Every update of both groups, a batch at a time (``subscription.batches()``): the
    count group's rows are ``(card, t, n)``, the risk group's ``(card, t, risk)``."""
    fold = checksum.fold
    kh = INPUT["kh"]
    async for batch in subscription.batches():
        if batch.names[0] == "n":
            for card, t, n in batch.rows:
                fold(kh[card], t, n)
        else:
            for card, t, risk in batch.rows:
                fold(kh[card], t, -1, risk)


async def runtime_side(
    events: list[dict[str, Any]],
    source: SlowSource,
    shards: int,
    batch_size: int,
    sink: Any = None,
    after: bool = False,
) -> dict[str, Any]:
    """The runtime's side: ``FEATURES`` (the count at once, the mean risk after the lookup),
    or with ``after`` ``FEATURES_AFTER`` (both after the lookup)."""

    async def feed(rt: Any) -> None:
        await rt.ingest_many(events)

    runtime = FeatureRuntime(
        FEATURES_AFTER if after else FEATURES,
        shards=shards,
        batch_size=batch_size,
        sources={"merchants": source},
    )
    consume = consume_rows if after else consume_updates
    return await run_with_consumer(runtime, lambda rt: rt.updates(), consume, feed, sink)


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    quiet_logs()
    events = INPUT["events"]
    source = SlowSource(spec["merchants"], spec["latency"])
    if spec["shards"] <= 0:  # 0: the baseline, -1: the prefetching loop
        checksum = Checksum()
        loop = dataloader_outputs if spec["shards"] == 0 else prefetching_outputs

        async def baseline() -> float:
            start = time.perf_counter()
            await loop(events, source, INPUT["kh"], checksum)
            return time.perf_counter() - start

        seconds = asyncio.run(baseline())
        return {
            "seconds": seconds,
            "checksum": checksum.value(),
            "rss": peak_rss_mib(),
            "calls": source.calls,
        }
    result = run(
        lambda: runtime_side(
            events, source, spec["shards"], spec["batch_size"], after=spec.get("after", False)
        )
    )
    stats = result.pop("stats")
    result["p50"] = stats.latency_p50_ms
    result["p99"] = stats.latency_p99_ms
    result["calls"] = source.calls
    result["runtime calls"] = stats.enrichment["merchants"].calls
    return result


def _diagnose(count: int, spec: dict[str, Any]) -> list[str]:
    events = INPUT["events"][:count]
    base: list[Any] = []
    source = SlowSource(spec["merchants"], spec["latency"])
    asyncio.run(dataloader_outputs(events, source, INPUT["kh"], Checksum(base)))
    got: list[Any] = []
    source = SlowSource(spec["merchants"], spec["latency"])
    run(
        lambda: runtime_side(
            events, source, spec["shards"], spec["batch_size"], got, spec.get("after", False)
        )
    )
    return diff_outputs(base, got)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench enrichment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--merchants", type=int, default=20_000)
    parser.add_argument("--cards", type=int, default=50_000)
    parser.add_argument("--latency", type=float, default=0.002, help="seconds per call")
    parser.add_argument("--shards", default="1", help="comma-separated shard counts (1)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved rounds of every case, best shown (3)"
    )
    parser.add_argument(
        "--diagnose-events",
        type=int,
        default=20_000,
        help="on a mismatch, the events re-run to show differing outputs (20,000)",
    )
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
    INPUT["events"] = events
    INPUT["kh"] = key_hashes({e["card"] for e in events})
    freeze_input()
    _main(args, events)
    if not args.no_real:
        asyncio.run(_real(args, events))


def _main(args: argparse.Namespace, events: list[dict[str, Any]]) -> None:
    n = len(events)
    common = {"merchants": args.merchants, "latency": args.latency}
    # each shard count twice: the count at once and the mean risk after the lookup (the
    # default), then both after the lookup (wait_for_lookups="all"), as the hand-written loops
    cases = [(int(s), after) for s in args.shards.split(",") for after in (False, True)]
    specs = [
        {**common, "shards": 0},
        {**common, "shards": -1},
        *(
            {**common, "shards": shards, "batch_size": args.batch_size, "after": after}
            for shards, after in cases
        ),
    ]
    # interleaved rounds: a round's cases meet the same machine (see rounds_in_children)
    results = rounds_in_children(_case, specs, args.repeat)
    base_rounds = results[0]
    base, ahead = fastest(results[0]), fastest(results[1])
    for one in results[0]:
        check_agreement("enrichment, the DataLoader rounds", base["checksum"], one["checksum"])
    for one in results[1]:
        check_agreement("enrichment, the prefetching loop", base["checksum"], one["checksum"])
    fold = fold_seconds(2 * n, 1)
    rows = [
        Row(
            "DataLoader + LRU (baseline)",
            {
                "events/s": rate(n, base["seconds"]),
                "ratio": "1.00",
                "rounds": "1.00-1.00",
                "ratio w/o checksum": "1.00",
                "vs prefetching": f"{ahead['seconds'] / base['seconds']:.2f}",
                "source calls": f"{base['calls']:,}",
                "peak RSS": f"{base['rss']:,.0f} MiB",
            },
        ),
        Row(
            "DataLoader + LRU, prefetching",
            {
                "events/s": rate(n, ahead["seconds"]),
                "ratio": f"{base['seconds'] / ahead['seconds']:.2f}",
                "rounds": round_ratios(base_rounds, results[1]),
                "ratio w/o checksum": net_ratio(base["seconds"], ahead["seconds"], fold),
                "vs prefetching": "1.00",
                "source calls": f"{ahead['calls']:,}",
                "peak RSS": f"{ahead['rss']:,.0f} MiB",
            },
        ),
    ]
    summary = []
    for (shards, after), spec, runs in zip(cases, specs[2:], results[2:], strict=True):
        got = fastest(runs)
        label = f"FeatureRuntime, {shards} shard{'s' if shards > 1 else ''}" + (
            ", all after the lookup" if after else ", count at once"
        )
        for one in runs:
            check_agreement(
                f"enrichment: {label}",
                base["checksum"],
                one["checksum"],
                lambda spec=spec: _diagnose(args.diagnose_events, spec),
            )
        ratio = base["seconds"] / got["seconds"]
        rows.append(
            Row(
                label,
                {
                    "events/s": rate(n, got["seconds"]),
                    "ratio": f"{ratio:.2f}",
                    "rounds": round_ratios(base_rounds, runs),
                    "ratio w/o checksum": net_ratio(base["seconds"], got["seconds"], fold),
                    "vs prefetching": f"{ahead['seconds'] / got['seconds']:.2f}",
                    "source calls": f"{got['calls']:,}",
                    "p50 / p99": f"{_ms(got['p50'])} / {_ms(got['p99'])}",
                    "peak RSS": f"{got['rss']:,.0f} MiB",
                },
            )
        )
        summary.append(
            f"{label}: {ratio:.2f} of the baseline's events/s"
            f" (target: at least 1.0), {got['calls']:,} source calls against its"
            f" {base['calls']:,} (target: no more); {ahead['seconds'] / got['seconds']:.2f} of"
            " the prefetching loop's"
        )
    print_table(
        f"enrichment, every update read: {n:,} events over {args.merchants:,} merchants, "
        f"{args.latency * 1000:g} ms per source call, {CACHE:,}-row cache, best of {args.repeat}"
        " interleaved rounds",
        [
            "events/s",
            "ratio",
            "rounds",
            "ratio w/o checksum",
            "vs prefetching",
            "source calls",
            "p50 / p99",
            "peak RSS",
        ],
        rows,
    )
    print(
        f"\nchecksums agree: {base['checksum'][1]:,} outputs (two per event: the count, and"
        f" the mean risk after the lookup), {base['checksum'][0]:#018x}; the checksum costs"
        f" each side about {fold:.2f} s."
    )
    for line in summary:
        print(line)
    print(
        "p50 / p99: the runtime's own ingest-to-update latency (rt.statistics()): from a"
        " batch's first event routed to the end of its apply by the shard, per event, over"
        " each shard's last 4,096 batches; it leaves out delivery to the consumer."
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
                    featurist, events, None, int(args.shards.split(",")[0]), features, calls
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
