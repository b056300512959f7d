"""Dimension sources: SQLite (a file in tmp_path), PostgreSQL and Redis (the local servers: the
tests skip without them, fail under FEATURIST_REQUIRE_SERVICES=1) and HTTP (a server the test
starts)."""

from __future__ import annotations

import datetime
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import asyncpg  # type: ignore[import-untyped]
import httpx
import msgspec
import pytest
import redis.asyncio
import redis.exceptions

from runtime import MalformedRow
from runtime._enrich.rows import Version, version_at
from runtime._enrich.sources import (
    HttpDimensionSource,
    PostgresDimensionSource,
    RedisDimensionSource,
    SqliteDimensionSource,
    make_source,
)
from runtime._spec.enrich import CustomSource, HttpSource, PostgresSource, RedisSource, SqliteSource
from tests.conftest import services_required

PG_DSN = os.environ.get("FEATURIST_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FEATURIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
INJECTIONS = ["x' OR '1'='1", "1; DROP TABLE t", "1) OR (1=1", '"; DROP TABLE t; --', "1 OR 1=1"]
UNICODE = ["café", "東京", "🙂", "a b/c?d=e&f#g%20"]


def unavailable(what: str, exc: BaseException) -> NoReturn:
    if services_required():
        pytest.fail(f"{what} is required (FEATURIST_REQUIRE_SERVICES) but unavailable: {exc!r}")
    pytest.skip(f"{what} unavailable: {exc!r}")


def closed_port() -> int:
    """A local port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# --- SQLite -------------------------------------------------------------------------------------


def sqlite_file(
    path: Path, script: str, rows: Sequence[tuple[Any, ...]] = (), table: str = "t"
) -> str:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        db.commit()
    return str(path)


def sqlite_count(path: str, table: str = "t") -> int:
    with closing(sqlite3.connect(path)) as db:
        count: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return count


@pytest.fixture
def merchants(tmp_path: Path) -> str:
    return sqlite_file(
        tmp_path / "merchants.db",
        "CREATE TABLE merchants (merchant_id TEXT PRIMARY KEY, category TEXT, risk REAL,"
        " country TEXT)",
        [("m1", "grocery", 0.1, "FR"), ("m2", "gambling", 0.9, "DE")]
        + [(name, "unicode", 0.2, "XX") for name in UNICODE[:3]],
        table="merchants",
    )


def pg_spec(table: str, key: str, **options: Any) -> PostgresSource:
    return PostgresSource(name="dim", dsn=PG_DSN, table=table, key=key, **options)


def redis_spec(prefix: str, **options: Any) -> RedisSource:
    return RedisSource(name="dim", url=REDIS_URL, prefix=prefix, **options)


def http_spec(url: str, **options: Any) -> HttpSource:
    return HttpSource(name="dim", url=url, **options)


def sqlite_spec(path: str, **options: Any) -> SqliteSource:
    options.setdefault("table", "merchants")
    options.setdefault("key", "merchant_id")
    return SqliteSource(name="dim", path=path, **options)


async def test_sqlite_gives_the_rows_found_with_all_columns_and_leaves_out_missing_keys(
    merchants: str,
) -> None:
    async with SqliteDimensionSource(sqlite_spec(merchants)) as source:
        rows = await source.get_many(["m1", "nope", "m2", "m1"])
    assert rows == {
        "m1": {"merchant_id": "m1", "category": "grocery", "risk": 0.1, "country": "FR"},
        "m2": {"merchant_id": "m2", "category": "gambling", "risk": 0.9, "country": "DE"},
    }


async def test_sqlite_reads_only_the_listed_columns_and_the_key(merchants: str) -> None:
    spec = sqlite_spec(merchants, columns=["risk", "category"], table="main.merchants")
    async with SqliteDimensionSource(spec) as source:
        assert await source.get_many(["m2"]) == {
            "m2": {"merchant_id": "m2", "risk": 0.9, "category": "gambling"}
        }
        assert await source.get_many([]) == {}


async def test_sqlite_finds_unicode_keys(merchants: str) -> None:
    async with SqliteDimensionSource(sqlite_spec(merchants, columns=["category"])) as source:
        rows = await source.get_many([*UNICODE, "cafe"])
    assert set(rows) == set(UNICODE[:3])


async def test_sqlite_matches_int_and_str_keys_as_the_key_column_types_them(tmp_path: Path) -> None:
    path = sqlite_file(
        tmp_path / "k.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE s (code TEXT, n INT);"
        "INSERT INTO s VALUES ('7', 1), ('x', 2);",
        [(42, "answer"), (-3, "minus")],
    )
    async with SqliteDimensionSource(
        SqliteSource(name="dim", path=path, table="t", key="id")
    ) as source:
        rows = await source.get_many([42, "42", "-3", 42.0, "4x", 2**70, "042"])
    assert rows[42] == rows["42"] == {"id": 42, "name": "answer"}
    assert rows[42] is not rows["42"]  # each key its own row
    assert rows["-3"] == {"id": -3, "name": "minus"}
    assert set(rows) == {42, "42", "-3", "042"}  # "042" is 42 too, for SQLite and for Python
    async with SqliteDimensionSource(
        SqliteSource(name="dim", path=path, table="s", key="code")
    ) as source:
        assert await source.get_many([7, "x", 8]) == {
            7: {"code": "7", "n": 1},
            "x": {"code": "x", "n": 2},
        }


async def test_sqlite_batches_larger_than_a_chunk_are_read_in_several_queries(
    tmp_path: Path,
) -> None:
    path = sqlite_file(
        tmp_path / "big.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        [(i, f"v{i}") for i in range(0, 4000, 2)],
    )
    keys = list(range(2500))
    async with SqliteDimensionSource(
        SqliteSource(name="dim", path=path, table="t", key="id")
    ) as source:
        rows = await source.get_many(keys)  # 5 chunks of 500
    assert rows == {i: {"id": i, "v": f"v{i}"} for i in range(0, 2500, 2)}
    small = SqliteDimensionSource(
        SqliteSource(name="dim", path=path, table="t", key="id"), chunk_size=7
    )
    async with small:
        assert await small.get_many(keys[:50]) == {i: rows[i] for i in range(0, 50, 2)}


async def test_sqlite_keys_are_parameters_so_an_injection_is_a_missing_key(tmp_path: Path) -> None:
    path = sqlite_file(
        tmp_path / "inj.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE u (name TEXT);"
        "INSERT INTO u VALUES ('a'), ('b');",
        [(1, "one"), (2, "two")],
    )
    for table, key in (("t", "id"), ("u", "name")):
        async with SqliteDimensionSource(
            SqliteSource(name="dim", path=path, table=table, key=key)
        ) as source:
            assert await source.get_many(INJECTIONS) == {}
    assert sqlite_count(path, "t") == 2
    assert sqlite_count(path, "u") == 2


async def test_sqlite_versioned_rows_give_every_version_sorted_for_point_in_time_lookups(
    tmp_path: Path,
) -> None:
    path = sqlite_file(
        tmp_path / "v.db",
        "CREATE TABLE t (id TEXT, risk REAL, valid_from INTEGER, valid_to INTEGER)",
        [
            ("m1", 0.3, 2000, None),
            ("m1", 0.1, 0, 1000),
            ("m1", 0.2, 1000, 2000),
            ("m2", 0.5, 10, 20),
        ],
    )
    spec = SqliteSource(
        name="dim",
        path=path,
        table="t",
        key="id",
        columns=["risk"],
        valid_from="valid_from",
        valid_to="valid_to",
    )
    async with SqliteDimensionSource(spec) as source:
        rows = await source.get_many(["m1", "m2", "m3"])
    assert set(rows) == {"m1", "m2"}
    versions = rows["m1"]
    assert isinstance(versions, list)
    assert [(v.valid_from, v.valid_to, v.row["risk"]) for v in versions] == [
        (0, 1000, 0.1),
        (1000, 2000, 0.2),
        (2000, None, 0.3),
    ]
    assert versions[0].row == {"id": "m1", "risk": 0.1, "valid_from": 0, "valid_to": 1000}
    picked = {t: version_at(versions, t) for t in (-1, 0, 999, 1000, 2000, 10**12)}
    assert {t: v.row["risk"] if v else None for t, v in picked.items()} == {
        -1: None,
        0: 0.1,
        999: 0.1,
        1000: 0.2,
        2000: 0.3,
        10**12: 0.3,
    }
    m2 = rows["m2"]
    assert isinstance(m2, list)
    assert version_at(m2, 20) is None  # valid_to is excluded


def test_version_at_between_versions_and_with_overlaps() -> None:
    versions = [Version(0, 10, {"v": 1}), Version(20, None, {"v": 2})]
    assert version_at(versions, 15) is None
    assert version_at([], 5) is None
    overlapping = [Version(0, None, {"v": 1}), Version(5, 8, {"v": 2})]
    assert version_at(overlapping, 6) == Version(5, 8, {"v": 2})


async def test_sqlite_malformed_rows_are_the_keys_error_not_the_batchs(tmp_path: Path) -> None:
    path = sqlite_file(
        tmp_path / "bad.db",
        "CREATE TABLE t (id TEXT, name TEXT, vf, vt);"
        "INSERT INTO t VALUES ('bad', CAST(X'FF00FE' AS TEXT), 0, NULL);"
        "INSERT INTO t VALUES ('good', 'fine', 0, NULL), ('nofrom', 'x', NULL, NULL),"
        " ('textfrom', 'x', 'yesterday', NULL), ('good', 'later', 5, NULL);",
    )
    async with SqliteDimensionSource(
        SqliteSource(name="dim", path=path, table="t", key="id")
    ) as source:
        rows = await source.get_many(["bad", "good"])
    assert isinstance(rows["bad"], MalformedRow)
    assert "'name' is not UTF-8" in rows["bad"].reason
    assert rows["good"] == {"id": "good", "name": "fine", "vf": 0, "vt": None}  # first row wins
    versioned = SqliteSource(
        name="dim", path=path, table="t", key="id", valid_from="vf", valid_to="vt"
    )
    async with SqliteDimensionSource(versioned) as source:
        rows = await source.get_many(["bad", "good", "nofrom", "textfrom"])
    assert isinstance(rows["bad"], MalformedRow)
    assert isinstance(rows["nofrom"], MalformedRow)
    assert isinstance(rows["textfrom"], MalformedRow)
    assert "validity columns" in rows["textfrom"].reason
    good = rows["good"]
    assert isinstance(good, list)
    assert [version.row["name"] for version in good] == ["fine", "later"]


async def test_sqlite_open_names_a_missing_file_table_or_column(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.db"):
        await SqliteDimensionSource(
            SqliteSource(name="dim", path=str(missing), table="t", key="id")
        ).open()
    path = sqlite_file(tmp_path / "s.db", "CREATE TABLE t (id TEXT, a TEXT)")
    with pytest.raises(sqlite3.OperationalError, match=r"'dim' \(.*s\.db\): no such table: nope"):
        await SqliteDimensionSource(
            SqliteSource(name="dim", path=path, table="nope", key="id")
        ).open()
    with pytest.raises(sqlite3.OperationalError, match="no such column: code"):
        await SqliteDimensionSource(
            SqliteSource(name="dim", path=path, table="t", key="code")
        ).open()
    spec = SqliteSource(name="dim", path=path, table="t", key="id", columns=["a", "b"])
    with pytest.raises(sqlite3.OperationalError, match="no such column: b"):
        await SqliteDimensionSource(spec).open()
    assert not missing.exists()  # read-only: opening never creates the file


async def test_a_source_reads_only_while_open(merchants: str) -> None:
    source = SqliteDimensionSource(sqlite_spec(merchants))
    with pytest.raises(RuntimeError, match="sqlite source 'dim' is not open"):
        await source.get_many(["m1"])
    await source.close()  # closing a closed source does nothing
    async with source:
        with pytest.raises(RuntimeError, match="already open"):
            await source.open()
        assert "m1" in await source.get_many(["m1"])
    with pytest.raises(RuntimeError, match="not open"):
        await source.get_many(["m1"])


def test_make_source_builds_the_source_of_each_spec_type(merchants: str) -> None:
    specs = [
        (sqlite_spec(merchants), SqliteDimensionSource),
        (PostgresSource(name="dim", dsn=PG_DSN, table="t", key="id"), PostgresDimensionSource),
        (RedisSource(name="dim", prefix="p:"), RedisDimensionSource),
        (http_spec("http://127.0.0.1/{key}"), HttpDimensionSource),
    ]
    for spec, cls in specs:
        source = make_source(spec)
        assert type(source) is cls
        assert source.spec is spec  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="'mine' is custom: give the object itself"):
        make_source(CustomSource(name="mine"))
    with pytest.raises(TypeError, match="not a dimension source spec"):
        make_source("sqlite")  # type: ignore[arg-type]


# --- PostgreSQL ---------------------------------------------------------------------------------

Table = Callable[[str, str, list[tuple[Any, ...]]], Awaitable[str]]


@pytest.fixture
async def pg_table() -> AsyncIterator[Table]:
    """Creates tables with unique names (``CREATE TABLE <name> (<columns>)`` and rows), dropped
    at the end."""
    try:
        connection = await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL at {PG_DSN}", exc)
    created: list[str] = []

    async def create(columns: str, insert: str, rows: list[tuple[Any, ...]]) -> str:
        name = f"featurist_test_{uuid.uuid4().hex[:12]}"
        created.append(name)
        await connection.execute(f"CREATE TABLE {name} ({columns})")
        if rows:
            marks = ", ".join(f"${i + 1}" for i in range(len(rows[0])))
            await connection.executemany(f"INSERT INTO {name} ({insert}) VALUES ({marks})", rows)
        return name

    try:
        yield create
        for name in created:  # every table is still there: the injections did nothing
            assert await connection.fetchval(f"SELECT count(*) >= 0 FROM {name}")
    finally:
        for name in created:
            await connection.execute(f"DROP TABLE IF EXISTS {name}")
        await connection.close()


async def test_postgres_gives_found_rows_all_columns_or_listed_ones(pg_table: Table) -> None:
    table = await pg_table(
        "id int PRIMARY KEY, category text, risk float8",
        "id, category, risk",
        [(1, "grocery", 0.1), (2, "gambling", 0.9)],
    )
    async with PostgresDimensionSource(pg_spec(table, "id")) as source:
        assert await source.get_many([1, 3, 2]) == {
            1: {"id": 1, "category": "grocery", "risk": 0.1},
            2: {"id": 2, "category": "gambling", "risk": 0.9},
        }
        assert await source.get_many([]) == {}
    spec = PostgresSource(
        name="dim", dsn=PG_DSN, table=f"public.{table}", key="id", columns=["risk"], pool_size=2
    )
    async with PostgresDimensionSource(spec) as source:
        assert await source.get_many([2]) == {2: {"id": 2, "risk": 0.9}}


async def test_postgres_matches_keys_by_the_key_column_type(pg_table: Table) -> None:
    ints = await pg_table("id int4, v text", "id, v", [(42, "answer"), (-3, "minus")])
    texts = await pg_table("code text, v int", "code, v", [("7", 7), ("東京", 1), ("café", 2)])
    uuids = await pg_table("u uuid, v int", "u, v", [(uuid.UUID(int=5), 5)])
    async with PostgresDimensionSource(pg_spec(ints, "id")) as source:
        rows = await source.get_many([42, "42", "-3", "x", 2**40, "9" * 30, 1.5, None, b"42"])
    assert rows == {
        42: {"id": 42, "v": "answer"},
        "42": {"id": 42, "v": "answer"},
        "-3": {"id": -3, "v": "minus"},
    }
    async with PostgresDimensionSource(pg_spec(texts, "code")) as src:
        rows = await src.get_many([7, "東京", "café", "nul\x00key", "cafe"])
    assert rows == {
        7: {"code": "7", "v": 7},
        "東京": {"code": "東京", "v": 1},
        "café": {"code": "café", "v": 2},
    }
    async with PostgresDimensionSource(pg_spec(uuids, "u")) as src:
        text = str(uuid.UUID(int=5))
        rows = await src.get_many([text, uuid.UUID(int=5), "not-a-uuid", uuid.UUID(int=6)])
    assert set(rows) == {text, uuid.UUID(int=5)}


async def test_postgres_keys_are_parameters_so_an_injection_is_a_missing_key(
    pg_table: Table,
) -> None:
    ints = await pg_table("id int PRIMARY KEY", "id", [(1,), (2,)])
    texts = await pg_table("name text", "name", [("a",), ("b",)])
    for table, key in ((ints, "id"), (texts, "name")):
        spec = pg_spec(table, key)
        async with PostgresDimensionSource(spec) as source:
            assert await source.get_many(INJECTIONS) == {}
            assert len(await source.get_many([1, 2, "a", "b"])) == 2


async def test_postgres_reads_a_large_batch_in_one_query(pg_table: Table) -> None:
    table = await pg_table("id bigint, v text", "id, v", [(i, f"v{i}") for i in range(0, 6000, 2)])
    async with PostgresDimensionSource(pg_spec(table, "id")) as source:
        rows = await source.get_many(list(range(5000)))
    assert rows == {i: {"id": i, "v": f"v{i}"} for i in range(0, 5000, 2)}


async def test_postgres_versioned_rows_in_milliseconds_or_timestamps(pg_table: Table) -> None:
    millis = await pg_table(
        "id text, risk float8, vf bigint, vt bigint",
        "id, risk, vf, vt",
        [("m1", 0.2, 1000, None), ("m1", 0.1, 0, 1000), ("m2", 0.5, None, None)],
    )
    spec = PostgresSource(
        name="dim", dsn=PG_DSN, table=millis, key="id", valid_from="vf", valid_to="vt"
    )
    async with PostgresDimensionSource(spec) as source:
        rows = await source.get_many(["m1", "m2"])
    versions = rows["m1"]
    assert isinstance(versions, list)
    assert [(v.valid_from, v.valid_to, v.row["risk"]) for v in versions] == [
        (0, 1000, 0.1),
        (1000, None, 0.2),
    ]
    assert isinstance(rows["m2"], MalformedRow)  # a version with no start
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    stamps = await pg_table(
        "id int, vf timestamptz, vt timestamptz",
        "id, vf, vt",
        [(1, start, start + datetime.timedelta(seconds=1))],
    )
    spec = PostgresSource(
        name="dim", dsn=PG_DSN, table=stamps, key="id", valid_from="vf", valid_to="vt"
    )
    async with PostgresDimensionSource(spec) as source:
        rows = await source.get_many([1])
    ms = int(start.timestamp() * 1000)
    [version] = rows[1]  # type: ignore[misc]
    assert (version.valid_from, version.valid_to) == (ms, ms + 1000)


async def test_postgres_open_fails_without_the_table(pg_table: Table) -> None:
    spec = PostgresSource(name="dim", dsn=PG_DSN, table="featurist_test_no_such_table", key="id")
    with pytest.raises(asyncpg.UndefinedTableError):
        await PostgresDimensionSource(spec).open()


async def test_postgres_open_raises_when_the_server_is_down() -> None:
    spec = PostgresSource(
        name="dim", dsn=f"postgresql://postgres@127.0.0.1:{closed_port()}/test", table="t", key="id"
    )
    with pytest.raises(OSError):
        await PostgresDimensionSource(spec).open()


async def test_postgres_open_raises_timeout_error_when_the_server_does_not_answer(
    silent_port: int,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{silent_port}/test"
    spec = PostgresSource(name="dim", dsn=dsn, table="t", key="id", timeout="200ms")
    with pytest.raises(TimeoutError):
        await PostgresDimensionSource(spec).open()


# --- Redis --------------------------------------------------------------------------------------


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[redis.asyncio.Redis, str]]:
    """A client and a key prefix of this test alone; its keys are deleted at the end."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
    except (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        await client.aclose()
        unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"featurist-test:{uuid.uuid4().hex}:"
    try:
        yield client, prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_redis_hashes_found_missing_and_keys_as_strings(
    redis_client: tuple[redis.asyncio.Redis, str],
) -> None:
    client, prefix = redis_client
    await client.hset(f"{prefix}m1", mapping={"category": "grocery", "risk": "0.1"})
    await client.hset(f"{prefix}42", mapping={"name": "answer"})
    await client.hset(f"{prefix}東京", mapping={"市": "東京"})
    await client.set(f"{prefix}sentinel", "still here")
    spec = redis_spec(prefix)
    async with RedisDimensionSource(spec) as source:
        rows = await source.get_many(
            ["m1", "m9", 42, "42", "東京", "x\r\nFLUSHALL\r\n", *INJECTIONS]
        )
    assert rows == {
        "m1": {"category": "grocery", "risk": "0.1"},
        42: {"name": "answer"},
        "42": {"name": "answer"},
        "東京": {"市": "東京"},
    }
    assert await client.get(f"{prefix}sentinel") == b"still here"


async def test_redis_hash_malformed_rows_are_the_keys_error(
    redis_client: tuple[redis.asyncio.Redis, str],
) -> None:
    client, prefix = redis_client
    await client.hset(f"{prefix}bad", mapping={"name": b"\xff\xfe"})
    await client.set(f"{prefix}string", "not a hash")
    await client.hset(f"{prefix}good", mapping={"name": "fine"})
    async with RedisDimensionSource(redis_spec(prefix)) as source:
        rows = await source.get_many(["bad", "string", "good"])
    assert rows["good"] == {"name": "fine"}
    assert isinstance(rows["bad"], MalformedRow)
    assert isinstance(rows["string"], MalformedRow)
    assert "WRONGTYPE" in rows["string"].reason


async def test_redis_json_rows_and_malformed_ones(
    redis_client: tuple[redis.asyncio.Redis, str],
) -> None:
    client, prefix = redis_client
    await client.mset(
        {
            f"{prefix}m1": msgspec.json.encode({"risk": 0.1, "tags": ["a"]}),
            f"{prefix}7": b'{"n": 7}',
            f"{prefix}broken": b'{"risk": ',
            f"{prefix}list": b"[1, 2]",
            f"{prefix}null": b"null",
            f"{prefix}number": b"3",
        }
    )
    await client.hset(f"{prefix}hash", mapping={"a": "b"})
    spec = redis_spec(prefix, format="json")
    async with RedisDimensionSource(spec) as source:
        rows = await source.get_many(
            ["m1", 7, "missing", "broken", "list", "null", "number", "hash"]
        )
    assert rows["m1"] == {"risk": 0.1, "tags": ["a"]}
    assert rows[7] == {"n": 7}
    assert set(rows) == {"m1", 7, "broken", "list", "null", "number"}
    for key in ("broken", "list", "null", "number"):
        assert isinstance(rows[key], MalformedRow), key
    assert "not JSON" in rows["broken"].reason  # type: ignore[union-attr]
    assert "a JSON list, not an object" in rows["list"].reason  # type: ignore[union-attr]


async def test_redis_large_batches(redis_client: tuple[redis.asyncio.Redis, str]) -> None:
    client, prefix = redis_client
    await client.mset({f"{prefix}{i}": msgspec.json.encode({"i": i}) for i in range(0, 3000, 3)})
    async with client.pipeline(transaction=False) as pipeline:
        for i in range(0, 3000, 3):
            pipeline.hset(f"{prefix}h{i}", mapping={"i": str(i)})
        await pipeline.execute()
    keys = list(range(3000))
    async with RedisDimensionSource(redis_spec(prefix, format="json")) as s:
        assert await s.get_many(keys) == {i: {"i": i} for i in range(0, 3000, 3)}
    async with RedisDimensionSource(redis_spec(f"{prefix}h")) as s:
        assert await s.get_many(keys) == {i: {"i": str(i)} for i in range(0, 3000, 3)}


async def test_redis_open_raises_when_the_server_is_down() -> None:
    spec = RedisSource(name="dim", url=f"redis://127.0.0.1:{closed_port()}/0")
    with pytest.raises(redis.exceptions.ConnectionError):
        await RedisDimensionSource(spec).open()


async def test_redis_open_raises_timeout_error_when_the_server_does_not_answer(
    silent_port: int,
) -> None:
    spec = RedisSource(name="dim", url=f"redis://127.0.0.1:{silent_port}/0", timeout="200ms")
    with pytest.raises(TimeoutError):
        await RedisDimensionSource(spec).open()


# --- HTTP ---------------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test) is no error of the server


class Api:
    """A local HTTP API of rows: ``GET /rows/<key>`` and ``POST /batch``; special keys answer
    500, invalid JSON, a JSON list, or slowly."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {
            "m1": {"risk": 0.1},
            "42": {"n": 42},
            "東京": {"city": True},
            "a b/c?d=e&f#g%20": {"odd": 1},
            "list": [1, 2],
            "null": None,
        }
        self.paths: list[str] = []
        self.headers: list[str | None] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.batch_answer: bytes | None = None
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.seen(self)
                with api._lock:
                    api.in_flight += 1
                    api.most_in_flight = max(api.most_in_flight, api.in_flight)
                try:
                    key = urllib.parse.unquote(self.path.removeprefix("/rows/"))
                    if key == "slow":
                        time.sleep(0.5)
                    if key == "boom":
                        status, body = 500, b"down for maintenance"
                    elif key == "broken":
                        status, body = 200, b'{"risk": '
                    elif key.startswith("wait"):
                        time.sleep(0.02)
                        status, body = 200, msgspec.json.encode({"key": key})
                    elif key in api.rows:
                        status, body = 200, msgspec.json.encode(api.rows[key])
                    else:
                        status, body = 404, b"not found"
                finally:
                    # out of flight before the answer leaves: once the client has it, it may
                    # ask again at once, before this thread would run on
                    with api._lock:
                        api.in_flight -= 1
                self.answer(status, body)

            def do_POST(self) -> None:
                api.seen(self)
                body = self.rfile.read(int(self.headers["content-length"]))
                keys = msgspec.json.decode(body)["keys"]
                if "boom" in keys:
                    self.answer(500, b"no")
                    return
                answer = {str(k): api.rows[str(k)] for k in keys if str(k) in api.rows}
                api.posted = keys  # before the answer: the client reads it once answered
                self.answer(200, api.batch_answer or msgspec.json.encode(answer))

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.posted: list[Any] = []
        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def seen(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.paths.append(handler.path)
            self.headers.append(handler.headers.get("x-api-key"))


@pytest.fixture
def api() -> Iterator[Api]:
    api = Api()
    thread = threading.Thread(target=api.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
        thread.join()


async def test_http_gets_each_key_with_404_as_missing_and_keys_url_quoted(api: Api) -> None:
    spec = http_spec(f"{api.url}/rows/{{key}}", headers={"x-api-key": "secret"})
    async with HttpDimensionSource(spec) as source:
        rows = await source.get_many(["m1", 42, "42", "東京", "a b/c?d=e&f#g%20", "nope"])
    assert rows == {
        "m1": {"risk": 0.1},
        42: {"n": 42},
        "42": {"n": 42},
        "東京": {"city": True},
        "a b/c?d=e&f#g%20": {"odd": 1},
    }
    assert sorted(api.paths) == sorted(
        f"/rows/{urllib.parse.quote(key, safe='')}"
        for key in ["m1", "42", "東京", "a b/c?d=e&f#g%20", "nope"]
    )  # 42 and "42" asked once
    assert set(api.headers) == {"secret"}


async def test_http_malformed_rows_are_the_keys_error(api: Api) -> None:
    async with HttpDimensionSource(http_spec(f"{api.url}/rows/{{key}}")) as source:
        rows = await source.get_many(["broken", "list", "null", "m1"])
    assert rows["m1"] == {"risk": 0.1}
    for key in ("broken", "list", "null"):
        assert isinstance(rows[key], MalformedRow), key


async def test_http_an_error_status_or_a_timeout_fails_the_batch(api: Api) -> None:
    async with HttpDimensionSource(http_spec(f"{api.url}/rows/{{key}}")) as source:
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            await source.get_many(["m1", "boom", *(f"wait{i}" for i in range(20))])
        assert await source.get_many(["m1"]) == {"m1": {"risk": 0.1}}  # still usable
    spec = http_spec(f"{api.url}/rows/{{key}}", timeout="100ms")
    async with HttpDimensionSource(spec) as source:
        with pytest.raises(TimeoutError):
            await source.get_many(["slow"])


async def test_http_asks_at_most_max_concurrency_keys_at_once(api: Api) -> None:
    spec = http_spec(f"{api.url}/rows/{{key}}", max_concurrency=3)
    keys = [f"wait{i}" for i in range(30)]
    async with HttpDimensionSource(spec) as source:
        rows = await source.get_many(keys)
    assert rows == {key: {"key": key} for key in keys}
    assert 1 <= api.most_in_flight <= 3


async def test_http_batch_posts_the_keys_and_maps_the_answer_back(api: Api) -> None:
    spec = http_spec(f"{api.url}/batch", batch=True)
    async with HttpDimensionSource(spec) as source:
        rows = await source.get_many([42, "m1", "東京", "list", "nope", "42"])
        assert api.posted == [42, "m1", "東京", "list", "nope"]
        assert rows == {
            42: {"n": 42},
            "42": {"n": 42},
            "m1": {"risk": 0.1},
            "東京": {"city": True},
            "list": rows["list"],
        }
        assert isinstance(rows["list"], MalformedRow)
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            await source.get_many(["m1", "boom"])
        api.batch_answer = b"[]"
        with pytest.raises(ValueError, match="batch answer is a JSON list"):
            await source.get_many(["m1"])
    assert len(api.paths) == 3  # one POST per batch


async def test_http_raises_when_the_server_is_down(api: Api) -> None:
    spec = http_spec(f"http://127.0.0.1:{closed_port()}/rows/{{key}}")
    async with HttpDimensionSource(spec) as source:
        with pytest.raises(httpx.ConnectError):
            await source.get_many(["m1"])
    spec = http_spec(f"{api.url}/rows/{{key}}")
    async with HttpDimensionSource(spec) as source:
        assert await source.get_many(["m1"]) == {"m1": {"risk": 0.1}}
        api.server.shutdown()
        api.server.server_close()
        with pytest.raises(httpx.ConnectError):
            await source.get_many(["m1"])
