"""The NATS sink against the local server (skips without it, fails under
FEATURIST_REQUIRE_SERVICES=1): a plain nats client, no featurist, receives every update on
``<subject>.<group>`` (JSON and MessagePack, core NATS), a JetStream stream holding the subject
stores every one (acknowledged), and a subject no stream holds with ``jetstream=True``, or a
server that is down, makes the block raise ``SinkError`` after the retries."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import anyio
import msgspec
import nats
import nats.aio.client
import nats.errors
import nats.js.api
import pytest

from runtime import (
    ConfigError,
    Count,
    FeatureRuntime,
    FeatureSet,
    NatsSink,
    SinkError,
    Tumbling,
    UpdateBatch,
    run_sink,
)
from runtime._connectors.sink_nats import update_messages
from tests.conftest import services_required

from .brokers import NATS_FAIL_FAST
from .common import events, runtime
from .test_sinks import ListSink

NATS_URL = os.environ.get("FEATURIST_TEST_NATS_URL", "nats://127.0.0.1:4222")


def unavailable(what: str, exc: BaseException) -> NoReturn:
    if services_required():
        pytest.fail(f"{what} is required (FEATURIST_REQUIRE_SERVICES) but unavailable: {exc!r}")
    pytest.skip(f"{what} unavailable: {exc!r}")


@pytest.fixture
async def plain() -> AsyncIterator[nats.aio.client.Client]:
    """A nats client of the test's own: what a service without featurist would use."""
    try:
        client = await nats.connect(NATS_URL, **NATS_FAIL_FAST)
    except (OSError, nats.errors.Error) as exc:
        unavailable("NATS", exc)
    yield client
    await client.close()


def expected(sink: ListSink) -> list[dict[str, Any]]:
    return [
        {
            "key": key,
            "event_time": t,
            "group": group,
            "values": dict(zip(sink.names[group], values, strict=True)),
        }
        for group, key, t, *values in sink.rows
    ]


def per_key(messages: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """The messages of each key, in order (only each key's order is fixed: shards publish
    concurrently, and two subscriptions may interleave them differently)."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for message in messages:
        out.setdefault(message["key"], []).append(message)
    return out


@pytest.mark.parametrize("format", ["json", "msgpack"])
async def test_a_plain_subscriber_receives_every_update(
    plain: nats.aio.client.Client, format: str
) -> None:
    subject = f"test-sink-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    subscription = await plain.subscribe(f"{subject}.>")
    updates = ListSink()
    async with runtime() as rt:
        async with NatsSink(NATS_URL, subject=subject, format=format) as sink:  # type: ignore[arg-type]
            async with run_sink(rt, updates), run_sink(rt, sink):
                await rt.ingest_many(events(500))
    assert sink._streams == {f"{subject}.g0": False}  # core NATS: no stream holds it
    with anyio.fail_after(5):
        async for message in subscription.messages:
            assert message.subject == f"{subject}.g0"
            received.append(message.data)
            if len(received) == 500:
                break
    await subscription.unsubscribe()
    decode = json.loads if format == "json" else msgspec.msgpack.decode
    assert per_key([decode(data) for data in received]) == per_key(expected(updates))


async def test_a_stream_holding_the_subject_stores_every_update(
    plain: nats.aio.client.Client,
) -> None:
    subject = f"test-sink-{uuid.uuid4().hex[:8]}"
    stream = subject.replace("-", "_")
    js = plain.jetstream()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    try:
        updates = ListSink()
        async with runtime() as rt:
            async with NatsSink(NATS_URL, subject=subject) as sink:
                async with run_sink(rt, updates), run_sink(rt, sink):
                    await rt.ingest_many(events(800))
        assert sink._streams == {f"{subject}.g0": True}
        info = await js.stream_info(stream)
        assert info.state.messages == 800
        reader = await js.pull_subscribe(f"{subject}.>", stream=stream)
        stored: list[Any] = []
        while len(stored) < 800:
            stored += [json.loads(m.data) for m in await reader.fetch(800, timeout=2)]
        assert per_key(stored) == per_key(expected(updates))
    finally:
        await js.delete_stream(stream)


async def test_jetstream_without_a_stream_raises_rather_than_drops(
    plain: nats.aio.client.Client,
) -> None:
    subject = f"test-sink-{uuid.uuid4().hex[:8]}"
    async with runtime() as rt:
        async with NatsSink(NATS_URL, subject=subject, jetstream=True, timeout=1) as sink:
            with pytest.raises(SinkError) as caught:
                async with run_sink(rt, sink, max_attempts=2, backoff=0.01):
                    await rt.ingest_many(events(20))
    assert caught.value.attempts == 2 and caught.value.unwritten >= 1


async def test_a_stream_that_refuses_messages_raises_rather_than_drops(
    plain: nats.aio.client.Client,
) -> None:
    subject = f"test-sink-{uuid.uuid4().hex[:8]}"
    stream = subject.replace("-", "_")
    js = plain.jetstream()
    await js.add_stream(
        name=stream,
        subjects=[f"{subject}.>"],
        max_msgs=10,
        discard=nats.js.api.DiscardPolicy.NEW,
    )
    try:
        async with runtime() as rt:
            async with NatsSink(NATS_URL, subject=subject) as sink:
                with pytest.raises(SinkError, match="maximum messages") as caught:
                    async with run_sink(rt, sink, max_attempts=2, backoff=0.01):
                        await rt.ingest_many(events(50))
        assert caught.value.unwritten >= 1
    finally:
        await js.delete_stream(stream)


async def test_a_server_that_is_down_raises_after_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with runtime() as rt:
        async with NatsSink(f"nats://127.0.0.1:{port}", timeout=0.5) as sink:
            with pytest.raises(SinkError) as caught:
                async with run_sink(rt, sink, max_attempts=2, backoff=0.01):
                    await rt.ingest_many(events(20))
    assert caught.value.__cause__ is not None


class _Proxy:
    """A TCP proxy to the NATS server whose connections the test can cut (and which then
    refuses new ones): the server gone, as seen from the client."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        host, _, port = NATS_URL.removeprefix("nats://").rpartition(":")

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.writers += [writer, up_writer]
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_core_nats_writes_to_a_lost_connection_fail_rather_than_pass(
    plain: nats.aio.client.Client,
) -> None:
    """nats-py buffers what is published while it reconnects, and its flush then returns at
    once: such a write is a failed attempt, not a success a checkpoint could count on."""
    proxy = _Proxy()
    port = await proxy.start()
    subject = f"featurist.test.{uuid.uuid4().hex[:8]}"
    async with runtime() as rt:
        async with NatsSink(
            f"nats://127.0.0.1:{port}", subject=subject, jetstream=False, timeout=0.5
        ) as sink:
            with pytest.raises(SinkError, match="connection to the server is lost") as caught:
                async with run_sink(rt, sink, max_attempts=2, backoff=0.01) as running:
                    await rt.ingest_many(events(10))
                    await rt.flush()
                    with anyio.fail_after(10):
                        while running.statistics().written < 10:
                            await anyio.sleep(0.01)
                    proxy.cut()
                    await rt.ingest_many(events(10, seed=1))
    assert caught.value.unwritten >= 1


@pytest.fixture
def server_without_jetstream(tmp_path: Any) -> Iterator[str]:
    """A nats-server of the test's own, without JetStream: its URL."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(binary):
        unavailable("nats-server (the binary)", FileNotFoundError(binary))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([binary, "-a", "127.0.0.1", "-p", str(port)], cwd=tmp_path)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_a_server_without_jetstream_takes_core_nats_messages(
    server_without_jetstream: str,
) -> None:
    """``jetstream=None`` asks the server whether a stream holds the subject: a server without
    JetStream answers that it has none (503), which means core NATS, as for no stream."""
    url = server_without_jetstream
    with anyio.fail_after(10):
        while True:
            try:
                client = await nats.connect(url, **NATS_FAIL_FAST)
                break
            except (OSError, nats.errors.Error):
                await anyio.sleep(0.05)
    got: list[bytes] = []

    async def take(message: Any) -> None:
        got.append(message.data)

    await client.subscribe("plain.>", cb=take)
    async with runtime() as rt, NatsSink(url, subject="plain", timeout=1) as sink:
        async with run_sink(rt, sink, max_attempts=2, backoff=0.01):
            await rt.ingest_many(events(20))
    with anyio.fail_after(5):
        while len(got) < 20:
            await anyio.sleep(0.01)
    await client.close()


class BatchSink(ListSink):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[UpdateBatch] = []

    async def write(self, batches: Any) -> None:
        self.batches += batches


async def test_a_window_s_close_is_a_message_with_its_kind_and_window() -> None:
    feature_set = FeatureSet(
        name="w", key="k", time="ts", features=[Count(name="c", window=Tumbling(size="10s"))]
    )
    sink = BatchSink()
    async with FeatureRuntime(feature_set) as rt, run_sink(rt, sink):
        await rt.ingest_many([{"k": "a", "ts": 1_700_000_000_000 + i * 4000} for i in range(6)])
    messages = [m for batch in sink.batches for m in update_messages(batch)]
    closes = [m for m in messages if m.get("kind") == "close"]
    assert closes[0] == {
        "key": "a",
        "event_time": closes[0]["event_time"],
        "group": closes[0]["group"],
        "values": {"c": 3},
        "kind": "close",
        "window": (1_700_000_000_000, 1_700_000_010_000),
    }
    assert all("kind" not in m for m in messages if m not in closes)
    assert len(messages) - len(closes) == 6


def test_options_are_checked() -> None:
    for options, match in [
        ({"subject": "a..b"}, "subject"),
        ({"subject": "a.>"}, "subject"),
        ({"subject": ""}, "subject"),
        ({"format": "xml"}, "format"),
        ({"jetstream": "yes"}, "jetstream"),
        ({"timeout": -1}, "timeout"),
    ]:
        with pytest.raises(ConfigError, match=match):
            NatsSink(NATS_URL, **options)


async def test_a_sink_on_a_given_connection_leaves_no_subscription_behind(
    plain: nats.aio.client.Client,
) -> None:
    subject = f"test-sink-{uuid.uuid4().hex[:8]}"
    stream = subject.replace("-", "_")
    js = plain.jetstream()
    await js.add_stream(name=stream, subjects=[f"{subject}.>"])
    try:
        before = len(plain._subs)
        async with runtime() as rt:
            async with NatsSink(client=plain, subject=subject) as sink:
                async with run_sink(rt, sink):
                    await rt.ingest_many(events(50))
                assert len(plain._subs) == before + 1  # the acknowledgements'
        assert len(plain._subs) == before and plain.is_connected
    finally:
        await js.delete_stream(stream)
