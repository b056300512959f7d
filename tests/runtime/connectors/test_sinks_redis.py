"""The Redis sink against the local server (skips without it, fails under
FEATURIST_REQUIRE_SERVICES=1): a plain redis client, no featurist, reads each key's hash and
finds ``rt.get_many``'s values; the hashes expire; bytes and int keys; a failed feature leaves
its field as it was; a server that is down makes the block raise ``SinkError`` after the
retries."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import anyio
import pytest
import redis.asyncio
import redis.exceptions

from runtime import (
    ConfigError,
    Count,
    FeatureRuntime,
    FeatureSet,
    Last,
    RedisSink,
    SinkError,
    Sum,
    Tumbling,
    UpdateBatch,
    run_sink,
)
from runtime._connectors.sink_redis import latest_values
from tests.conftest import services_required

from .common import KEYS, events, runtime, values_of

REDIS_URL = os.environ.get("FEATURIST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unavailable(what: str, exc: BaseException) -> NoReturn:
    if services_required():
        pytest.fail(f"{what} is required (FEATURIST_REQUIRE_SERVICES) but unavailable: {exc!r}")
    pytest.skip(f"{what} unavailable: {exc!r}")


@pytest.fixture
async def plain() -> AsyncIterator[redis.asyncio.Redis]:
    """A redis client of the test's own: what a service without featurist would use."""
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, redis.exceptions.ConnectionError) as exc:
        await client.aclose()
        unavailable("Redis", exc)
    yield client
    await client.aclose()


async def read_back(client: redis.asyncio.Redis, name: str | bytes) -> dict[str, Any]:
    found = await client.hgetall(name)
    return {field.decode(): json.loads(value) for field, value in found.items()}


async def drop(client: redis.asyncio.Redis, prefix: str) -> None:
    names = [name async for name in client.scan_iter(match=prefix + "*")]
    if names:
        await client.delete(*names)


async def test_a_plain_client_reads_the_values_get_many_gives(plain: redis.asyncio.Redis) -> None:
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    try:
        async with runtime() as rt:
            async with RedisSink(REDIS_URL, prefix=prefix, ttl="1h") as sink:
                async with run_sink(rt, sink):
                    await rt.ingest_many(events(2000))
            expected = await values_of(rt)
            vectors = await rt.get_many(KEYS)
        for key in KEYS:
            stored = await read_back(plain, prefix + key)
            assert stored.pop("_event_time") == vectors[key].last_event_time
            assert stored == expected[key]
            ttl = await plain.pttl(prefix + key)
            assert 3_590_000 < ttl <= 3_600_000
    finally:
        await drop(plain, prefix)


async def test_no_ttl_means_no_expiry_and_int_and_bytes_keys_name_their_hashes(
    plain: redis.asyncio.Redis,
) -> None:
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    feature_set = FeatureSet(
        name="k", key="id", time="ts", features=[Count(name="n"), Last(name="v", field="v")]
    )
    rows = [{"id": key, "ts": 1_700_000_000_000 + i, "v": i} for i, key in enumerate([7, 7, 8])]
    raw = [{"id": b"\xffraw", "ts": 1_700_000_000_100, "v": "x"}]
    try:
        for keys in (rows, raw):  # a sink per key type (keys of two types are refused)
            async with FeatureRuntime(feature_set) as rt:
                async with RedisSink(REDIS_URL, prefix=prefix, ttl=None) as sink:
                    assert sink.hash_name(b"\xffraw") == prefix.encode() + b"\xffraw"
                    async with run_sink(rt, sink):
                        await rt.ingest_many(keys)
        assert await read_back(plain, prefix + "7") == {
            "n": 2,
            "v": 1,
            "_event_time": 1_700_000_000_001,
        }
        assert (await read_back(plain, prefix + "8"))["n"] == 1
        assert (await read_back(plain, prefix.encode() + b"\xffraw"))["v"] == "x"
        assert await plain.pttl(prefix + "7") == -1
    finally:
        await drop(plain, prefix)


@pytest.mark.parametrize("emit", ["update", "close"])
async def test_windowed_features_in_the_hash_are_what_get_shows(
    plain: redis.asyncio.Redis, emit: str
) -> None:
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    feature_set = FeatureSet(
        name="w",
        key="k",
        time="ts",
        emit=emit,  # type: ignore[arg-type]
        features=[
            Count(name="n"),
            Sum(name="s", field="x", window=Tumbling(size="10s")),
            Count(name="c", window=Tumbling(size="10s")),
        ],
    )
    rows = [{"k": f"a{i % 3}", "ts": 1_700_000_000_000 + i * 1500, "x": i} for i in range(60)]
    try:
        async with FeatureRuntime(feature_set) as rt:
            async with RedisSink(REDIS_URL, prefix=prefix) as sink, run_sink(rt, sink):
                await rt.ingest_many(rows)
            vectors = await rt.get_many(["a0", "a1", "a2"])
        for key, vector in vectors.items():
            stored = await read_back(plain, prefix + key)
            stored.pop("_event_time")
            assert stored == vector.values
    finally:
        await drop(plain, prefix)


def test_latest_values_skip_failed_features_and_other_kinds() -> None:
    rows = [("a", 1, 1, 10.0), ("a", 2, 2, None), ("b", 3, 1, 5.0), ("a", 4, 3, None)]
    batch = UpdateBatch("g0", ("n", "x"), rows, {1: {"x": "bad"}, 3: {"x": "bad"}}, {}, 0.0)
    fields, times = latest_values([batch])
    assert fields == {"a": {"n": 3, "x": 10.0}, "b": {"n": 1, "x": 5.0}}
    assert times == {"a": 4, "b": 3}
    plain_batch = UpdateBatch("g1", ("m",), [("a", 9, "z")], None, {}, 0.0)
    fields, times = latest_values([batch, plain_batch])
    assert fields["a"] == {"n": 3, "x": 10.0, "m": "z"} and times["a"] == 9


async def test_a_server_that_is_down_raises_after_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with runtime() as rt:
        async with RedisSink(f"redis://127.0.0.1:{port}/0", timeout=0.5) as sink:
            with pytest.raises(SinkError) as caught:
                async with run_sink(rt, sink, max_attempts=2, backoff=0.01):
                    await rt.ingest_many(events(50))
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    assert caught.value.unwritten >= 1


async def test_options_are_checked() -> None:
    for options, match in [
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"prefix": 3}, "prefix"),
        ({"time_field": ""}, "time_field"),
        ({"timeout": 0}, "timeout"),
        ({"key_type": "typed"}, "key_type"),
    ]:
        with pytest.raises(ConfigError, match=match):
            RedisSink(REDIS_URL, **options)
    async with runtime() as rt:
        async with RedisSink(REDIS_URL, time_field="n") as sink:
            with pytest.raises(ConfigError, match="time_field 'n'"):
                async with run_sink(rt, sink):
                    pass


async def test_a_late_correction_of_an_older_window_does_not_overwrite_a_newer_close(
    plain: redis.asyncio.Redis,
) -> None:
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    features = FeatureSet(
        name="w",
        key="k",
        time="ts",
        features=[Sum(name="s", field="x", window=Tumbling(size="1s"))],
        late_policy="update",
        correction_horizon="10s",
        emit="close",
    )
    try:
        async with FeatureRuntime(features) as rt:
            async with RedisSink(REDIS_URL, prefix=prefix, ttl=None) as sink:
                async with run_sink(rt, sink):
                    # [0, 1 s) closes with 1, then [1 s, 2 s) with 2: one write
                    await rt.ingest_many(
                        [
                            {"k": "a", "ts": 100, "x": 1},
                            {"k": "a", "ts": 1_500, "x": 2},
                            {"k": "a", "ts": 2_500, "x": 3},
                        ]
                    )
                    await rt.flush()
                    # a late event corrects [0, 1 s) to 11, in a later write: not written
                    await rt.ingest({"k": "a", "ts": 200, "x": 10})
            shown = (await rt.get("a"))["s"]
        assert shown == 2
        assert (await read_back(plain, prefix + "a"))["s"] == shown
    finally:
        await drop(plain, prefix)


def mixed_keys_rows(keys: Sequence[Any] = (7, "7", b"7", 7)) -> list[dict[str, Any]]:
    """Three keys the runtime keeps apart: 7, "7" and b"7"."""
    return [{"id": key, "ts": 1_700_000_000_000 + i, "v": i} for i, key in enumerate(keys)]


MIXED = FeatureSet(
    name="k", key="id", time="ts", features=[Count(name="n"), Last(name="v", field="v")]
)


async def test_keys_of_several_types_are_refused_by_default_not_merged(
    plain: redis.asyncio.Redis,
) -> None:
    """7, "7" and b"7" would all be ``features:7``: the write fails, naming the key."""
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    try:
        async with FeatureRuntime(MIXED) as rt:
            async with RedisSink(REDIS_URL, prefix=prefix) as sink:
                with pytest.raises(
                    SinkError, match=r"key ('7'|b'7') is a (str|bytes), the sink's keys are int"
                ):
                    async with run_sink(rt, sink, max_attempts=1) as running:
                        await rt.ingest_many(mixed_keys_rows([7]))
                        with anyio.fail_after(5):
                            while running.statistics().written < 1:
                                await anyio.sleep(0.01)
                        await rt.ingest_many(mixed_keys_rows(["7", b"7"]))
                        await anyio.sleep(5)  # cancelled when the sink fails
        # the int key's values only
        assert await read_back(plain, prefix + "7") == {
            "n": 1,
            "v": 0,
            "_event_time": 1_700_000_000_000,
        }
    finally:
        await drop(plain, prefix)


async def test_tagged_keys_keep_keys_of_several_types_apart(plain: redis.asyncio.Redis) -> None:
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    try:
        async with FeatureRuntime(MIXED) as rt:
            async with RedisSink(REDIS_URL, prefix=prefix, key_type="tagged") as sink:
                assert sink.hash_name("7") == prefix + "s:7"
                assert sink.hash_name(7) == prefix + "i:7"
                assert sink.hash_name(b"7") == prefix.encode() + b"b:7"
                async with run_sink(rt, sink):
                    await rt.ingest_many(mixed_keys_rows())
        assert (await read_back(plain, prefix + "i:7"))["n"] == 2
        assert (await read_back(plain, prefix + "s:7"))["v"] == 1
        assert (await read_back(plain, prefix + "b:7"))["v"] == 2
        assert await plain.exists(prefix + "7") == 0
    finally:
        await drop(plain, prefix)


@pytest.mark.parametrize("key_type", ["str", "int", "bytes"])
async def test_a_declared_key_type_refuses_the_others(key_type: str) -> None:
    sink = RedisSink(REDIS_URL, key_type=key_type)  # type: ignore[arg-type]
    keys: dict[str, Any] = {"str": "7", "int": 7, "bytes": b"7"}
    assert sink.hash_name(keys[key_type]) in ("features:7", b"features:7")
    for other, key in keys.items():
        if other != key_type:
            with pytest.raises(ValueError, match=f"key {key!r} is a {other}, the sink's keys"):
                sink.hash_name(key)
    await sink.aclose()


async def test_server_errors_come_with_their_message(plain: redis.asyncio.Redis) -> None:
    """redis-py's errors print as ``server:ResponseError``: the message must be there."""
    prefix = f"test-sink-{uuid.uuid4().hex[:8]}:"
    try:
        await plain.set(prefix + "c1", "a string, not a hash")
        async with runtime() as rt:
            async with RedisSink(REDIS_URL, prefix=prefix) as sink:
                with pytest.raises(SinkError, match=f"ResponseError: .*{prefix}c1.*WRONGTYPE"):
                    async with run_sink(rt, sink, max_attempts=1):
                        await rt.ingest_many(events(20))
        async with runtime() as rt:
            async with RedisSink(REDIS_URL.rsplit("/", 1)[0] + "/100000", prefix=prefix) as sink:
                with pytest.raises(SinkError, match="DB index is out of range"):
                    async with run_sink(rt, sink, max_attempts=1):
                        await rt.ingest_many(events(20))
    finally:
        await drop(plain, prefix)


async def test_a_value_json_cannot_encode_names_the_feature_and_the_key() -> None:
    sink = RedisSink(REDIS_URL)
    batch = UpdateBatch("g0", ("n", "x"), [("a", 1, 1, 2.0), ("b", 2, 1, object())], None, {}, 0)
    with pytest.raises(TypeError, match=r"feature 'x' of key 'b'.*object"):
        await sink.write([batch])
    await sink.aclose()
