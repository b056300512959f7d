"""Hostile dimension sources and lookup keys (issue 15, items 3, 4, 7, and parts of 10 and 11).

- One bad lookup key fails alone: a key the source cannot take (a lone surrogate for any
  source, a 100 KB key for HTTP, a key that fails a custom source's call) is refused, recorded
  in dead letters and counted, its events get the default, the other keys of its batch get
  their rows, and the circuit stays closed.
- HTTP keys cannot change the path (``.`` and ``..``), and the spec's headers are not sent to
  another origin after a redirect.
- A source cannot crash or hang the runtime: a mapping that raises when read is a failed call;
  a call that swallows its cancellation is abandoned at its deadline, so ``flush()`` and the
  runtime's exit keep their bounds; the cache can be bounded in bytes.
- Counting: a lookup whose fetch landed between two batches of one turn counts once (the
  cause of the flaky fraud demo test); a malformed row counts once, not once per shard.
- Start-up and spec errors name the source, and an unknown source type lists source types.
"""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import threading
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from actors import DeadLetterReason
from runtime import (
    Count,
    CustomSource,
    FeatureRuntime,
    FeatureSet,
    HttpSource,
    KeyRefused,
    Lookup,
    Mean,
    PostgresSource,
    RedisSource,
    SpecError,
    SqliteSource,
)
from runtime._enrich.cache import DimensionCache, estimate_bytes
from runtime._enrich.fetch import Fetcher
from runtime._enrich.shard import EnrichShard, Fetched, SourceRuntime
from runtime._enrich.sources import (
    HttpDimensionSource,
    PostgresDimensionSource,
    RedisDimensionSource,
)
from runtime._messages import Batch

MERCHANTS = {f"m{i}": {"risk": i / 10} for i in range(10)}


def _set(source: Any, **options: Any) -> FeatureSet:
    return FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[source],
        lookups=[
            Lookup(name="m", field="mid", source=source.name, default={"risk": -1.0}, **options)
        ],
        features=[Count(name="n"), Mean(name="risk", field="m.risk")],
    )


class Rows:
    """A custom source of ``MERCHANTS``; a key in ``poison`` fails any call that holds it."""

    def __init__(self, *, delay: float = 0.0, poison: Sequence[str] = ()) -> None:
        self.delay = delay
        self.poison = set(poison)
        self.calls: list[list[Hashable]] = []

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls.append(list(keys))
        if self.delay:
            await anyio.sleep(self.delay)
        if self.poison.intersection(keys):
            raise ValueError("the store cannot look up such a key")
        return {key: MERCHANTS[key] for key in keys if key in MERCHANTS}


# -- counting (item 11, and the flaky fraud demo test) ------------------------------------------


async def test_a_lookup_whose_fetch_landed_between_two_batches_of_a_turn_is_counted() -> None:
    # A fetch may land (its task puts the rows in the enricher's inbox) while the enricher is
    # in a turn of several batches; the next batch then finds the key among the landed rows.
    # Its lookups used to skip the cache, counting as neither hit nor miss: the fraud demo's
    # cold-cache test saw 4,601 lookups for 5,000 events under load.
    spec = CustomSource(name="merchants")
    source = SourceRuntime(
        "merchants", DimensionCache.for_source(spec), Fetcher.from_spec(Rows(), spec)
    )
    lookup = Lookup(name="m", field="mid", source="merchants")
    enricher = EnrichShard(
        [lookup], {"merchants": source}, 0, "@tx", [], lambda _: None, stash_size=100
    )
    enricher.inbox.put(Fetched(source, {"m1": {"risk": 0.1}}, stash=True))
    events = [("c1", 1, {"mid": "m1"}), ("c2", 2, {"mid": "m1"}), ("c3", 3, {"mid": "m1"})]
    await enricher.receive_batch([Batch(events, time.perf_counter(), "tx")])
    stats = source.cache.statistics()
    assert (stats.lookups, stats.hits, stats.misses) == (3, 3, 0)


async def test_a_malformed_row_counts_once_however_many_shards_waited_for_it() -> None:
    class Odd(Rows):
        async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
            found = await super().get_many(keys)
            return {**found, **({"bad": "not a row"} if "bad" in keys else {})}

    odd = Odd(delay=0.2)  # long enough for both shards to ask in the same call
    fs = _set(CustomSource(name="merchants"))
    async with FeatureRuntime(fs, sources={"merchants": odd}, shards=2, batch_size=4) as rt:
        await rt.ingest_many([{"card": f"c{i}", "ts": 1, "mid": "bad"} for i in range(40)])
        await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
    assert len(odd.calls) == 1 and stats.calls == 1
    assert stats.malformed == 1


@pytest.mark.parametrize("shards", [2, 4])
async def test_each_key_is_fetched_once_however_many_shards_look_at_it(shards: int) -> None:
    # The shards share the source's cache and its fetches in flight. A fetch's rows used to
    # reach the cache only in the turn of the enricher that asked: a shard that looked at the
    # key between the fetch's end and that turn found it neither cached nor in flight, and
    # asked again (the workers' lookup test saw 26 keys asked where 24 were due)
    rows = Rows(delay=0.002)
    merchants = [*MERCHANTS, "m10", "m11"]  # and two the source does not have
    async with FeatureRuntime(
        _set(CustomSource(name="merchants", refresh_ahead=None)),  # however slow the run
        sources={"merchants": rows},
        shards=shards,
        batch_size=8,
    ) as rt:
        for start in range(0, 4_000, 40):
            await rt.ingest_many(
                [
                    {"card": f"c{i % 97}", "ts": i, "mid": merchants[i % len(merchants)]}
                    for i in range(start, start + 40)
                ]
            )
        await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
    asked = [key for call in rows.calls for key in call]
    assert sorted(asked) == sorted(merchants)
    assert stats.keys_requested == len(merchants)


# -- one bad key fails alone (item 3) -------------------------------------------------------------


def _sqlite(tmp_path: Path) -> SqliteSource:
    path = str(tmp_path / "m.db")
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE m (id TEXT PRIMARY KEY, risk REAL)")
        connection.executemany(
            "INSERT INTO m VALUES (?, ?)", [(k, v["risk"]) for k, v in MERCHANTS.items()]
        )
    return SqliteSource(name="merchants", path=path, table="m", key="id", retries=0)


async def test_a_lone_surrogate_key_is_refused_alone_and_never_opens_the_circuit(
    tmp_path: Path,
) -> None:
    fs = _set(_sqlite(tmp_path))
    async with FeatureRuntime(fs, batch_size=100) as rt:
        for batch in range(7):  # more than breaker_failures batches, each with a bad key
            events = [{"card": f"c{i}", "ts": batch, "mid": f"m{i % 10}"} for i in range(99)]
            events.append({"card": "bad", "ts": batch, "mid": f"m\ud800{batch}"})
            await rt.ingest_many(events)
            await rt.flush()
            rt.invalidate("merchants", "m3")  # a key fetched again with each batch
        stats = (await rt.statistics()).enrichment["merchants"]
        vector = await rt.get("c3")
        bad = await rt.get("bad")
        letters = [
            letter for letter in rt.dead_letters.letters() if isinstance(letter.error, KeyRefused)
        ]
    assert vector["risk"] == pytest.approx(0.3) and bad["risk"] == -1.0
    assert (
        stats.failures == 0 and stats.breaker_state == "closed" and stats.defaults_after_error == 0
    )
    assert stats.keys_refused == 7 == len(letters)
    assert all(letter.reason is DeadLetterReason.REJECTED for letter in letters)
    assert letters[0].message == "m\ud8000" and "lone surrogate" in str(letters[0].error)
    assert "merchants" in str(letters[0].error)


async def test_a_key_that_fails_a_custom_sources_call_is_isolated_and_the_rest_served() -> None:
    rows = Rows(poison=[f"p{i}" for i in range(20)])
    fs = _set(CustomSource(name="merchants", retries=0, breaker_failures=2))
    async with FeatureRuntime(fs, sources={"merchants": rows}, batch_size=200) as rt:
        for batch in range(4):  # twice breaker_failures batches, each with two bad keys
            events = [{"card": f"c{i}", "ts": batch, "mid": f"m{i}"} for i in range(10)] + [
                {"card": f"c{i}", "ts": batch, "mid": f"p{2 * batch + i}"} for i in range(2)
            ]
            await rt.ingest_many(events)
            await rt.flush()
            for i in range(10):
                rt.invalidate("merchants", f"m{i}")
        stats = (await rt.statistics()).enrichment["merchants"]
        vector = await rt.get("c5")
    assert stats.failures == 0 and stats.breaker_openings == 0
    assert stats.keys_refused == 8 and stats.defaults_after_error == 0
    assert vector["n"] == 4 and vector["risk"] == pytest.approx((0.5 * 3 + 0.5) / 4)


async def test_a_call_failing_whatever_its_keys_is_still_a_failure_of_the_source() -> None:
    class Broken(Rows):
        async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
            self.calls.append(list(keys))
            raise ValueError("the store is misconfigured")

    broken = Broken()
    spec = CustomSource(name="merchants", retries=0, breaker_failures=1)
    async with Fetcher.from_spec(broken, spec) as fetcher:
        result = await fetcher.fetch_many([f"m{i}" for i in range(8)])
        stats = fetcher.statistics()
    assert all(not isinstance(value, KeyRefused) for value in result.values())
    assert stats.failures == 1 and stats.breaker_openings == 1
    assert len(broken.calls) == 7  # the call, its halves and quarters: not a call per key


async def test_postgres_date_keys_as_text_find_their_rows_and_bad_ones_fail_alone() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    dsn = "postgresql://127.0.0.1:5432/test"
    try:
        connection = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    table = f"days_{time.monotonic_ns()}"
    try:
        await connection.execute(f"CREATE TABLE {table} (day date PRIMARY KEY, rate real)")
        await connection.execute(
            f"INSERT INTO {table} VALUES ('2024-01-01', 1.5), ('2024-01-02', 2.5)"
        )
        spec = PostgresSource(name="days", dsn=dsn, table=table, key="day", retries=0)
        source = PostgresDimensionSource(spec)
        async with source, Fetcher.from_spec(source, spec) as fetcher:
            keys = ["2024-01-01", datetime.date(2024, 1, 2), "not a day", 20240101, "\ud800"]
            result = await fetcher.fetch_many(keys)
            stats = fetcher.statistics()
    finally:
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()
    assert result["2024-01-01"]["rate"] == 1.5
    assert result[datetime.date(2024, 1, 2)]["rate"] == 2.5
    assert not isinstance(result["not a day"], Exception)  # missing, as for any other type
    assert not isinstance(result[20240101], Exception)
    assert isinstance(result["\ud800"], KeyRefused)
    assert stats.failures == 0 and stats.calls == 1


# -- HTTP keys and headers (items 3 and 4) ---------------------------------------------------------


class _Api:
    """A local API: ``/v1/merchants/<key>`` rows; ``hop`` redirects to another origin, ``home``
    to the same one; ``/v1/profile`` is what a ``..`` key would reach."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.other: _Api | None = None
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.seen.append((self.path, self.headers.get("x-api-key")))
                key = self.path.removeprefix("/v1/merchants/")
                if self.path == "/v1/profile":
                    self.answer(200, b'{"secret": true}')
                elif key == "hop" and api.other is not None:
                    self.redirect(f"{api.other.url}/v1/merchants/m1")
                elif key == "home":
                    self.redirect(f"{api.url}/v1/merchants/m2")
                elif key in MERCHANTS:
                    self.answer(200, msgspec.json.encode(MERCHANTS[key]))
                else:
                    self.answer(404, b"no")

            def do_POST(self) -> None:
                api.seen.append((self.path, self.headers.get("x-api-key")))
                body = self.rfile.read(int(self.headers["content-length"]))
                keys = msgspec.json.decode(body)["keys"]
                answer = {k: MERCHANTS[k] for k in keys if k in MERCHANTS}
                self.answer(200, msgspec.json.encode(answer))

            def redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def apis() -> Iterator[tuple[_Api, _Api]]:
    pytest.importorskip("httpx")
    first, second = _Api(), _Api()
    first.other = second
    yield first, second
    first.close()
    second.close()


def _http(url: str, **options: Any) -> HttpSource:
    return HttpSource(name="merchants", url=url, headers={"x-api-key": "s3cret"}, **options)


async def test_http_dot_keys_stay_in_their_path_segment(apis: tuple[_Api, _Api]) -> None:
    api, _ = apis
    source = HttpDimensionSource(_http(api.url + "/v1/merchants/{key}"))
    async with source:
        found = await source.get_many(["..", ".", "m1"])
    assert found == {"m1": MERCHANTS["m1"]}
    paths = sorted(path for path, _ in api.seen)
    assert paths == ["/v1/merchants/%2E", "/v1/merchants/%2E%2E", "/v1/merchants/m1"]


async def test_http_headers_do_not_follow_a_redirect_to_another_origin(
    apis: tuple[_Api, _Api],
) -> None:
    api, other = apis
    source = HttpDimensionSource(_http(api.url + "/v1/merchants/{key}"))
    async with source:
        found = await source.get_many(["hop", "home"])
    assert found == {"hop": MERCHANTS["m1"], "home": MERCHANTS["m2"]}
    assert other.seen == [("/v1/merchants/m1", None)]  # the other origin: no key
    assert sorted(api.seen) == [
        ("/v1/merchants/home", "s3cret"),
        ("/v1/merchants/hop", "s3cret"),
        ("/v1/merchants/m2", "s3cret"),  # the same origin keeps it
    ]


@pytest.mark.parametrize("batch", [False, True])
async def test_http_a_100_kb_key_is_refused_and_its_batch_served(
    apis: tuple[_Api, _Api], batch: bool
) -> None:
    api, _ = apis
    url = api.url + ("/v1/batch" if batch else "/v1/merchants/{key}")
    spec = _http(url, batch=batch, retries=0)
    long = "k" * 100_000
    source = HttpDimensionSource(spec)
    async with source, Fetcher.from_spec(source, spec) as fetcher:
        result = await fetcher.fetch_many(["m1", long, "m2", "m\udfff"])
        stats = fetcher.statistics()
    assert result["m1"] == MERCHANTS["m1"] and result["m2"] == MERCHANTS["m2"]
    assert isinstance(result[long], KeyRefused) and "100000 characters" in str(result[long])
    assert isinstance(result["m\udfff"], KeyRefused)
    assert stats.failures == 0 and stats.keys_refused == 2


# -- a source cannot crash or hang the runtime (item 7) ------------------------------------------


class _Treacherous(Mapping[Hashable, Any]):
    """A mapping that says it holds every key, and raises when one is read."""

    def __getitem__(self, key: Hashable) -> Any:
        raise RuntimeError("gotcha")

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[Hashable]:
        raise RuntimeError("gotcha")

    def __len__(self) -> int:
        return 1


async def test_a_mapping_that_raises_when_read_is_a_failed_call_not_a_crash() -> None:
    class Source:
        def __init__(self) -> None:
            self.treacherous = True

        async def get_many(self, keys: Sequence[Hashable]) -> Mapping[Hashable, Any]:
            if self.treacherous:
                return _Treacherous()
            return {key: MERCHANTS[key] for key in keys if key in MERCHANTS}

    source = Source()
    fs = _set(CustomSource(name="merchants", retries=0))
    async with FeatureRuntime(fs, sources={"merchants": source}) as rt:
        await rt.ingest({"card": "c", "ts": 1, "mid": "m1"})
        await rt.flush()
        source.treacherous = False
        await rt.ingest({"card": "c", "ts": 2, "mid": "m2"})
        await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
        vector = await rt.get("c")
    assert stats.failures == 1 and stats.defaults_after_error == 1
    assert vector["n"] == 2 and vector["risk"] == pytest.approx((-1.0 + 0.2) / 2)


class _Stubborn:
    """A source whose calls swallow every cancellation, until ``released``."""

    def __init__(self) -> None:
        self.released = False
        self.swallowed = 0

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        deadline = time.monotonic() + 20  # a bound for the test's sake only
        while not self.released and time.monotonic() < deadline:
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                self.swallowed += 1
        return {}


async def test_a_call_that_swallows_cancellation_is_abandoned_at_its_deadline() -> None:
    stubborn = _Stubborn()
    fs = _set(CustomSource(name="merchants", timeout="200ms", retries=0, max_in_flight=2))
    try:
        started = time.monotonic()
        async with FeatureRuntime(fs, sources={"merchants": stubborn}, shutdown_timeout=2.0) as rt:
            await rt.ingest({"card": "c", "ts": 1, "mid": "m1"})
            with anyio.fail_after(5):
                await rt.flush()
            flushed = time.monotonic() - started
            stats = (await rt.statistics()).enrichment["merchants"]
            assert stats.timeouts == 1 and stats.defaults_after_error == 1
            assert (await rt.get("c"))["risk"] == -1.0
            await rt.ingest({"card": "c", "ts": 2, "mid": "m2"})  # waits in the stash at exit
            exiting = time.monotonic()
        exited = time.monotonic() - exiting
    finally:
        stubborn.released = True
    assert stubborn.swallowed >= 1
    assert flushed < 1.5  # the attempt's 200 ms, its grace, and no more
    assert exited < 2.0  # within shutdown_timeout
    await anyio.sleep(0.1)  # the abandoned calls end, now released


async def test_abandoned_calls_are_bounded_by_max_in_flight() -> None:
    stubborn = _Stubborn()
    spec = CustomSource(name="merchants", timeout="50ms", retries=0, max_in_flight=1)
    try:
        async with Fetcher.from_spec(stubborn, spec) as fetcher:
            await fetcher.fetch_many(["a"])
            assert fetcher.statistics().abandoned == 1
            result = await fetcher.fetch_many(["b"])  # refused at once: one is still running
            stats = fetcher.statistics()
    finally:
        stubborn.released = True
    assert "ignored their cancellation" in str(result["b"].__cause__)
    assert stats.abandoned == 1 and stats.timeouts == 1
    await anyio.sleep(0.1)


def test_the_cache_holds_at_most_max_bytes_and_skips_rows_larger_than_it() -> None:
    cache = DimensionCache(
        capacity=10_000, ttl=60, negative_ttl=60, refresh_ahead=None, max_stale=0,
        max_bytes=5_000_000,
    )  # fmt: skip
    for i in range(50):
        cache.put(f"k{i}", {"blob": "x" * 1_000_000, "i": i}, now=0.0)
        assert cache.statistics().bytes <= 5_000_000
    stats = cache.statistics()
    assert stats.size == 4 and stats.evictions == 46
    assert cache.keys() == ["k46", "k47", "k48", "k49"]  # the most recently used stay
    cache.put("huge", {"blob": "x" * 6_000_000}, now=0.0)
    assert "huge" not in cache and cache.statistics().too_large == 1 and len(cache) == 4
    cache.invalidate("k49")
    cache.clear()
    assert cache.statistics().bytes == 0
    # nested rows are measured without recursion
    deep: Any = "leaf"
    for _ in range(10_000):
        deep = [deep]
    assert estimate_bytes({"deep": deep}) > 10_000 * 56


async def test_a_source_of_large_rows_stays_within_cache_max_bytes() -> None:
    class Large:
        async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
            return {key: {"risk": 0.5, "blob": "x" * 1_000_000} for key in keys}

    fs = _set(CustomSource(name="merchants", cache_max_bytes=8_000_000))
    async with FeatureRuntime(fs, sources={"merchants": Large()}) as rt:
        for i in range(30):
            await rt.ingest({"card": "c", "ts": i, "mid": f"m{i}"})
            await rt.flush()
        stats = (await rt.statistics()).enrichment["merchants"]
        vector = await rt.get("c")
    assert 0 < stats.cache_bytes <= 8_000_000 and stats.cache_size <= 8
    assert vector["n"] == 30 and vector["risk"] == 0.5


def test_cache_max_bytes_is_validated_and_zero_turns_it_off() -> None:
    assert CustomSource(name="m", cache_max_bytes=0).cache_max_bytes is None
    with pytest.raises(SpecError, match="cache_max_bytes"):
        CustomSource(name="m", cache_max_bytes=-1)
    with pytest.raises(SpecError, match="cache_max_bytes"):
        CustomSource(name="m", cache_max_bytes="1GB")  # type: ignore[arg-type]


# -- errors that name the source (item 10) ---------------------------------------------------------


def test_an_unknown_source_type_lists_the_source_types() -> None:
    raw = {
        "name": "tx",
        "key": "card",
        "features": [{"type": "count", "name": "n"}],
        "sources": [{"type": "postgresql", "name": "m", "dsn": "x", "table": "t", "key": "k"}],
    }
    with pytest.raises(SpecError) as error:
        FeatureSet.from_dict(raw)
    message = str(error.value)
    assert "unknown source type 'postgresql'" in message
    assert "sqlite, postgres, redis, http, custom" in message and "count" not in message
    del raw["sources"][0]["type"]  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"sources\[0\]\.type: missing .*sqlite, postgres"):
        FeatureSet.from_dict(raw)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_postgres_and_redis_start_up_errors_name_the_source() -> None:
    pytest.importorskip("asyncpg")
    pytest.importorskip("redis")
    import redis.exceptions

    port = _closed_port()
    postgres = PostgresDimensionSource(
        PostgresSource(name="ledger", dsn=f"postgresql://127.0.0.1:{port}/x", table="t", key="k")
    )
    with pytest.raises(OSError, match="postgres source 'ledger'"):
        await postgres.open()
    redis_source = RedisDimensionSource(
        RedisSource(name="profiles", url=f"redis://127.0.0.1:{port}/0")
    )
    with pytest.raises(redis.exceptions.ConnectionError, match="redis source 'profiles'"):
        await redis_source.open()
