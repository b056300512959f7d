"""NatsSource against the local NATS server with JetStream (skips without it, fails under
FEATURIST_REQUIRE_SERVICES=1). What it shares with RedisStreamSource runs here from
``source_cases``: values through the runtime equal direct ingest; messages are acknowledged
only once a checkpoint covers them (the consumer's pending count and ack floor say so); a
restart reads again what no checkpoint covers; subjects partitioned by key read by two
runtimes, and by two child processes, reach the values of one. Its own: a child consuming with
checkpoints is SIGKILLed mid-stream and a new runtime restored from its checkpoint ends equal to
one uninterrupted run; redelivered messages, and deliveries lost to the source, are not counted
twice; reply subjects are read for their sequences."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings

from runtime import ConfigError, NatsSource, consume

from .brokers import NATS_FAIL_FAST, NATS_URL, crash, unavailable
from .common import FEATURE_SET, direct, events, runtime, values_of

pytest.register_assert_rewrite("tests.runtime.connectors.source_cases")  # before its import
from .source_cases import *  # noqa: E402 F403  (the tests shared with Redis run here too)
from .source_cases import CHILDREN_ON_ONE_LOOP  # noqa: E402

nats = pytest.importorskip("nats")


class Broker:
    """A JetStream stream of its own (``FT<hex>`` on ``ft.<hex>.>``), deleted afterwards: the
    NATS :class:`~.source_cases.SourceBroker`."""

    kind = "nats"

    def __init__(self, nc: Any, tag: str) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.stream, self.prefix = f"FT{tag}", f"ft.{tag}"
        self.source_name = f"nats:{self.stream}:featurist"

    def channel(self, *parts: object) -> str:
        return ".".join([self.prefix, *map(str, parts)])

    async def publish(self, rows: list[dict[str, Any]], subject: str | None = None) -> None:
        """Publish ``rows`` as JSON and wait until the stream holds them."""
        want = (await self.js.stream_info(self.stream)).state.messages + len(rows)
        for row in rows:
            await self.nc.publish(subject or f"{self.prefix}.all", msgspec.json.encode(row))
        await self.nc.flush()
        with anyio.fail_after(5):
            while (await self.js.stream_info(self.stream)).state.messages < want:
                await anyio.sleep(0.01)

    def source(
        self,
        subjects: str | list[str] | None = None,
        durable: str = "featurist",
        **options: Any,
    ) -> NatsSource:
        return NatsSource(
            NATS_URL,
            stream=self.stream,
            subjects=subjects or f"{self.prefix}.all",
            durable=durable,
            **options,
        )

    def child_options(self, subjects: list[str], durable: str) -> dict[str, Any]:
        return {"stream": self.stream, "subjects": subjects, "durable": durable}

    async def position_of(self, n: int) -> int:
        return n  # the stream sequence: the test's stream holds only what it published

    async def consumer(self, durable: str = "featurist") -> Any:
        return await self.js.consumer_info(self.stream, durable)

    async def pending(self) -> int:
        return int((await self.consumer()).num_ack_pending)

    async def ack_floor(self) -> int:
        return int((await self.consumer()).ack_floor.stream_seq)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    try:
        nc = await nats.connect(NATS_URL, **NATS_FAIL_FAST)
    except Exception as exc:
        unavailable("NATS", exc)
    tag = uuid.uuid4().hex[:12]
    found = Broker(nc, tag)
    await found.js.add_stream(name=found.stream, subjects=[f"{found.prefix}.>"])
    try:
        yield found
    finally:
        await found.js.delete_stream(found.stream)
        await nc.close()


async def test_messages_delivered_again_at_or_below_the_position_are_skipped(
    broker: Broker,
) -> None:
    rows = events(60)
    await broker.publish(rows)
    # a short ack_wait: JetStream delivers the unacknowledged messages again while we read
    async with runtime(checkpoints=None) as rt:
        source = broker.source(ack_wait=0.3)
        try:
            with anyio.fail_after(10):
                assert (await consume(rt, source, batch_size=20, until=60)).records == 60
                await anyio.sleep(0.5)
                # nothing new: the redeliveries (acknowledged or not) bring no records
                again = await consume(rt, source, batch_size=20, until="idle")
            assert again.records == 0
            assert await values_of(rt) == await direct(rows)
        finally:
            await source.aclose()


async def test_a_message_with_a_status_header_of_its_own_is_data(broker: Broker) -> None:
    """JetStream's status replies carry a Status header; so may a publisher's message: it is
    told apart by its acknowledgement subject, and read, not taken for the end of a request."""
    rows = events(3)
    subject = f"{broker.prefix}.all"
    for i, row in enumerate(rows):
        headers = {"Status": "200", "Description": "ok"} if i == 1 else None
        await broker.nc.publish(subject, msgspec.json.encode(row), headers=headers)
    await broker.nc.flush()
    with anyio.fail_after(5):
        while (await broker.js.stream_info(broker.stream)).state.messages < 3:
            await anyio.sleep(0.01)
    source = broker.source()
    try:
        with anyio.fail_after(10):
            batch = await source.read(10)
        assert batch is not None
        assert [msgspec.json.decode(p) for p in batch.payloads] == rows
    finally:
        await source.aclose()


async def test_a_batch_wakes_its_reader_once_not_once_a_message(broker: Broker) -> None:
    """The subscription's callback wakes the reader when the batch it waits for is there, or
    when a status reply ends a request: not at every message that comes in (each wake-up made
    an event object and a task switch)."""
    source = broker.source()
    try:
        await source.read(1)  # connected, its consumer and inbox subscription made
        consumer = source._consumers[0]
        arrived = consumer.sub._cb  # nats-py calls it with each message of the inbox
        consumer.queue.clear()

        class Message:
            def __init__(self, status: str | None = None) -> None:
                self.headers = {"Status": status} if status else None
                self.reply = "" if status else "$JS.ACK.S.C.1.1.1.0.0"
                self.data = b"{}"

        consumer.want, consumer.wake = 3, anyio.Event()
        await arrived(Message())
        await arrived(Message())
        assert not consumer.wake.is_set() and len(consumer.queue) == 2
        await arrived(Message())
        assert consumer.wake.is_set()  # the batch is there
        consumer.wake, ends = anyio.Event(), consumer.ends
        await arrived(Message("404"))
        assert consumer.wake.is_set() and consumer.ends == ends + 1  # a request ended
    finally:
        await source.aclose()


@CHILDREN_ON_ONE_LOOP
async def test_a_sigkilled_consumer_resumes_from_its_checkpoint_equal_to_one_run(
    broker: Broker, tmp_path: Path
) -> None:
    rows = events(3000)
    await broker.publish(rows)
    directory = tmp_path / "cp"
    options = {"stream": broker.stream, "subjects": f"{broker.prefix}.all", "durable": "featurist"}
    config = {"directory": str(directory), "chunk": 200, "batch": 50}
    child = {"kind": "nats", "options": options, **config}
    # killed after the checkpoint at 800, while it holds 200 more read and not acknowledged
    read = await crash(child, checkpoints=2)
    assert read == 1000
    info = await broker.consumer()
    assert info.ack_floor.stream_seq <= 800 < info.delivered.stream_seq
    # a second child restores that checkpoint, goes on, and is killed the same way
    assert await crash(child, checkpoints=1) == 600
    async with runtime(directory) as rt, broker.source() as source:
        checkpointed = rt.offset[source.name][f"{broker.prefix}.all"]
        assert 800 < checkpointed < 3000
        result = await consume(rt, source, batch_size=100, until="idle")
        assert result.records == 3000 - checkpointed
        assert await values_of(rt) == await direct(rows)


async def test_bad_settings_are_refused(broker: Broker) -> None:
    with pytest.raises(ConfigError, match="subjects"):
        NatsSource(stream="s", subjects=[], durable="d")
    with pytest.raises(ConfigError, match="durable"):
        NatsSource(stream="s", subjects="a", durable="a.b")
    with pytest.raises(ConfigError, match="ack_wait"):
        NatsSource(stream="s", subjects="a", durable="d", ack_wait=0)
    for bad in (0, -1.0, True, "10"):
        with pytest.raises(ConfigError, match="first_connect_timeout"):
            NatsSource(stream="s", subjects="a", durable="d", first_connect_timeout=bad)
    async with runtime() as rt:
        missing = NatsSource(NATS_URL, stream=broker.stream + "X", subjects="x", durable="d")
        async with missing:
            with pytest.raises(ConfigError, match="no JetStream stream"):
                await consume(rt, missing)
    with pytest.raises(ValueError, match="dict of stream sequences"):
        await broker.source().seek(["x", 1])
    assert FEATURE_SET.key == "card"


async def test_a_lost_delivery_starts_the_consumer_again_after_the_position(
    broker: Broker,
) -> None:
    rows = events(300)
    await broker.publish(rows)
    async with runtime() as rt, broker.source() as source:
        assert (await consume(rt, source, batch_size=50, until=100)).records == 100
        # another reader of the consumer takes 30 deliveries: lost to the source (as in a
        # connection that drops while a fetch is answered), a gap in its delivery sequence
        thief = await broker.js.pull_subscribe_bind("featurist", stream=broker.stream)
        assert len(await thief.fetch(30, timeout=1)) == 30
        await thief.unsubscribe()
        result = await consume(rt, source, batch_size=50, until="idle")
        assert result.records == 200
        assert await values_of(rt) == await direct(rows)


def _free_port() -> int:
    """A local TCP port nothing listens on (bound, then let go)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_server_is_a_connection_error_naming_it_within_first_connect_timeout() -> None:
    # no server needed: nats-py alone would try again for two minutes, shielded in the read
    url = f"nats://127.0.0.1:{_free_port()}"
    source = NatsSource(url, stream="s", subjects="a", durable="d", first_connect_timeout=1)
    async with runtime() as rt, source:
        with anyio.fail_after(10):
            started = anyio.current_time()
            expected = f"no NATS server answered at {url} within 1 s"
            with pytest.raises(ConnectionError, match=expected):
                await consume(rt, source, until="idle")
            assert anyio.current_time() - started < 5


async def test_a_caller_deadline_cuts_the_first_connection_short() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    source = NatsSource(url, stream="s", subjects="a", durable="d", first_connect_timeout=60)
    async with runtime() as rt, source:
        started = anyio.current_time()
        with anyio.move_on_after(0.5):
            await consume(rt, source, until="idle")
        assert anyio.current_time() - started < 5
        assert source._nc is None  # nothing half made is kept


@pytest.mark.parametrize("cut", ["first_connect_timeout", "the caller"])
async def test_a_first_connection_cut_short_closes_its_socket(cut: str) -> None:
    # a server that takes the connection and never says hello (a load balancer with no
    # backend): the client waits for it until the time out, or the caller's cancel, cuts it
    # short; either way its socket is closed, and the error names no credentials
    closed = anyio.Event()

    async def mute(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await stream.receive()
        closed.set()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, mute)
        url = f"nats://featurist:s3cret@127.0.0.1:{port}"
        wait = 1 if cut == "first_connect_timeout" else 60
        source = NatsSource(url, stream="s", subjects="a", durable="d", first_connect_timeout=wait)
        async with runtime() as rt, source:
            if cut == "the caller":
                with anyio.move_on_after(0.5):
                    await consume(rt, source, until="idle")
            else:
                with pytest.raises(ConnectionError) as raised:
                    await consume(rt, source, until="idle")
                assert f"nats://127.0.0.1:{port}" in str(raised.value)
                assert "s3cret" not in str(raised.value)
        with anyio.fail_after(5):
            await closed.wait()
        tasks.cancel_scope.cancel()


def test_credentials_are_left_out_of_server_urls_in_messages() -> None:
    from runtime._connectors.nats import _without_credentials

    assert _without_credentials("nats://u:p@h:4222") == "nats://h:4222"
    assert _without_credentials("nats://token@h") == "nats://h"
    assert _without_credentials("tls://u:p@[::1]:4222") == "tls://[::1]:4222"
    assert _without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert _without_credentials("nats://u:p@h:port") == "<a server URL that does not parse>"


def test_sequences_are_read_from_both_forms_of_reply_subject() -> None:
    from runtime._connectors.nats import _sequences

    assert _sequences("$JS.ACK.S.d.1.42.7.1700000000000000000.5") == (42, 7)
    assert _sequences("$JS.ACK._.acchash.S.d.2.42.7.1700000000000000000.5.tok") == (42, 7)
    with pytest.raises(ValueError, match="not a JetStream message"):
        _sequences("_INBOX.abc")


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(min_value=1, max_value=50),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=3),  # stream sequence step (other subjects)
            st.sampled_from([1, 1, 1, 2]),  # delivery count
            st.sampled_from([1, 1, 1, 2]),  # delivery sequence step (2: one lost)
            st.sampled_from(["S.d", "S.other", "_.hash.S.d"]),  # stream and consumer tokens
        ),
        min_size=1,
        max_size=12,
    ),
    position=st.integers(min_value=0, max_value=60),
    expected=st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
)
def test_a_batch_taken_whole_is_one_a_message_at_a_time_look_takes_whole(
    start: int,
    steps: list[tuple[int, int, int, str]],
    position: int,
    expected: int | None,
) -> None:
    """``_fresh`` says a batch is all new, in order and with no delivery lost only when a look
    at each message (as ``_take`` makes when it cannot) finds so, with the same position."""
    from runtime._connectors.nats import _fresh, _sequences

    messages: list[tuple[str, bytes]] = []
    sseq = dseq = start
    for sseq_step, delivered, dseq_step, names in steps:
        sseq, dseq = sseq + sseq_step, dseq + dseq_step
        tail = ".tok" if names.startswith("_") else ""
        reply = f"$JS.ACK.{names}.{delivered}.{sseq}.{dseq}.17000.3{tail}"
        messages.append((reply, reply.encode()))
    fresh = _fresh(messages, position, expected, "$JS.ACK.S.d.1.")
    # one at a time: every message past the position reached so far, no gap in deliveries
    at, want, whole = position, expected, True
    for reply, _data in messages:
        stream_seq, delivery = _sequences(reply)
        if (want is not None and delivery != want) or stream_seq <= at:
            whole = False
            break
        at, want = stream_seq, delivery + 1
    if fresh is not None:
        assert whole and fresh == (at, want)
        assert all(reply.startswith("$JS.ACK.S.d.1.") for reply, _ in messages)


async def test_a_subject_the_stream_does_not_hold_is_named(broker: Broker) -> None:
    """JetStream's own error (err_code 10093) names neither the source nor the subjects."""
    elsewhere = NatsSource(NATS_URL, stream=broker.stream, subjects="other.x", durable="d2")
    async with runtime() as rt, elsewhere:
        with pytest.raises(
            ConfigError,
            match=rf"the subject 'other\.x' is not among the subjects of stream "
            rf"'{broker.stream}' \(\['{broker.prefix}\.>'\]\)",
        ):
            await consume(rt, elsewhere)
