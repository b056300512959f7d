"""The service's inputs and sinks: URLs of the command line, a Redis stream in and Redis and
Parquet sinks out, through a real uvicorn (the Redis tests skip without the local server, and
fail under FEATURIST_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import redis

from runtime import (
    ConfigError,
    CsvSource,
    JsonLinesSource,
    NatsSink,
    ParquetSink,
    RedisSink,
    create_app,
)
from runtime._connectors.nats import NatsSource
from runtime._connectors.redis_streams import RedisStreamSource
from runtime._service.cli import make_sink, make_source
from tests.conftest import services_required
from tests.runtime.connectors.brokers import NATS_FAIL_FAST

from .server import serving
from .test_service import FEATURES, T0

REDIS = "redis://127.0.0.1:6379/0"


def test_input_and_sink_urls() -> None:
    assert isinstance(make_source("events.jsonl"), JsonLinesSource)
    assert isinstance(make_source("file:///data/events.csv"), CsvSource)
    nats = make_source("nats://127.0.0.1:4222?stream=S&subject=pay.*&durable=svc&start=new")
    assert isinstance(nats, NatsSource)
    stream = make_source(f"{REDIS}?stream=payments&group=svc")
    assert isinstance(stream, RedisStreamSource)
    assert isinstance(make_sink(f"{REDIS}?prefix=f:&ttl=1h"), RedisSink)
    assert isinstance(make_sink("nats://127.0.0.1:4222?subject=features"), NatsSink)
    assert isinstance(make_sink("parquet:///tmp/out"), ParquetSink)
    for bad in ("kafka://h/t", "events.txt", "nats://h?stream=S", f"{REDIS}?stream=s&group=g&x=1"):
        with pytest.raises(ConfigError):
            make_source(bad)
    for bad in ("s3://bucket", "nats://h?subjekt=x"):
        with pytest.raises(ConfigError):
            make_sink(bad)


def _redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if services_required():
            pytest.fail(f"Redis unavailable: {exc!r}")
        pytest.skip(f"Redis unavailable: {exc!r}")
    return client


def test_a_redis_stream_in_and_redis_and_parquet_sinks_out(tmp_path: Path) -> None:
    client = _redis()
    name = f"test-service-{uuid.uuid4().hex[:8]}"
    prefix = f"{name}-features:"
    try:
        for i in range(300):
            event = {"card": f"c{i % 3}", "ts": T0 + i, "amount": 1}
            client.xadd(name, {"data": json.dumps(event)})
        app = create_app(
            FEATURES,
            inputs=[make_source(f"{REDIS}?stream={name}&group=svc")],
            sinks=[make_sink(f"{REDIS}?prefix={prefix}&ttl=1h"), ParquetSink(tmp_path / "pq")],
        )
        with serving(app) as url, httpx.Client(base_url=url) as http:
            deadline = time.monotonic() + 15
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            vectors = http.post("/features", json={"keys": ["c0", "c1", "c2"]}).json()
            assert [v["values"]["n"] for v in vectors["vectors"]] == [100, 100, 100]
            # a live input: what comes after the catch-up is read too
            client.xadd(name, {"data": json.dumps({"card": "c0", "ts": T0 + 1000})})
            while http.get("/features/c0").json()["values"]["n"] != 101:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            status = http.get("/status").json()
            assert status["inputs"][0]["caught_up"] and status["inputs"][0]["records"] >= 300
            assert [sink["name"] for sink in status["sinks"]] == ["redis", "parquet"]
        # the sinks were drained when the service stopped
        assert json.loads(client.hget(f"{prefix}c0", "n") or b"null") == 101
        rows = sum(pq.read_table(path).num_rows for path in (tmp_path / "pq").rglob("*.parquet"))
        assert rows == 2 * 301  # an update per event from each group: keyed and windowed
    finally:
        client.delete(name)
        names = list(client.scan_iter(match=prefix + "*"))
        if names:
            client.delete(*names)
        client.close()


def test_a_nats_stream_in_and_a_nats_sink_out() -> None:
    import asyncio

    import nats

    name = f"svc{uuid.uuid4().hex[:8]}"
    received: list[dict[str, Any]] = []

    async def setup() -> None:
        try:
            client = await nats.connect("nats://127.0.0.1:4222", **NATS_FAIL_FAST)
        except Exception as exc:
            if services_required():
                pytest.fail(f"NATS unavailable: {exc!r}")
            pytest.skip(f"NATS unavailable: {exc!r}")
        js = client.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.in"])
        for i in range(200):
            event = {"card": f"c{i % 4}", "ts": T0 + i, "amount": 2}
            await js.publish(f"{name}.in", json.dumps(event).encode())
        await client.close()

    async def teardown() -> None:
        client = await nats.connect("nats://127.0.0.1:4222", **NATS_FAIL_FAST)
        await client.jetstream().delete_stream(name)
        await client.close()

    async def listen(stop: threading.Event) -> None:
        client = await nats.connect("nats://127.0.0.1:4222", **NATS_FAIL_FAST)

        async def got(message: Any) -> None:
            received.append(json.loads(message.data))

        await client.subscribe(f"{name}-out.>", cb=got)
        await client.flush()
        listening.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await client.flush()
        await asyncio.sleep(0.1)
        await client.close()

    asyncio.run(setup())
    listening, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=lambda: asyncio.run(listen(stop)))
    listener.start()
    try:
        assert listening.wait(10)
        source = make_source(f"nats://127.0.0.1:4222?stream={name}&subject={name}.in&durable=svc")
        sink = make_sink(f"nats://127.0.0.1:4222?subject={name}-out")
        with serving(create_app(FEATURES, inputs=[source], sinks=[sink])) as url:
            with httpx.Client(base_url=url) as http:
                deadline = time.monotonic() + 15
                while http.get("/readyz").status_code != 200:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                vectors = http.post("/features", json={"keys": ["c0", "c3"]}).json()["vectors"]
                assert [v["values"]["total"] for v in vectors] == [100, 100]
        stop.set()
        listener.join(10)
        # every update published (one per event from each of the two groups), the last of c0
        # with the values read
        assert len(received) == 2 * 200
        last = [m for m in received if m["key"] == "c0" and "total" in m["values"]][-1]
        assert last["values"]["n"] == 50 and last["values"]["total"] == 100
    finally:
        stop.set()
        listener.join(10)
        asyncio.run(teardown())
