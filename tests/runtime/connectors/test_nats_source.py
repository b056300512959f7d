"""NatsSource against the local NATS server with JetStream (skips without it, fails under
FEATURIST_REQUIRE_SERVICES=1): values through the runtime equal direct ingest; messages are
acknowledged only once a checkpoint covers them (the consumer's pending count says so); a child
consuming with checkpoints is SIGKILLed mid-stream and a new runtime restored from its
checkpoint ends equal to one uninterrupted run; redelivered messages are not counted twice;
subjects partitioned by key read by two runtimes, and by two child processes, reach the values
of one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import ConfigError, NatsSource, consume, partition_of

from .brokers import NATS_URL, crash, partition_process, unavailable
from .common import FEATURE_SET, KEYS, direct, events, runtime, values_of

nats = pytest.importorskip("nats")


#: tests whose work is in child processes run on one event loop kind (the children use asyncio)
CHILDREN_ON_ONE_LOOP = pytest.mark.parametrize("anyio_backend", [("asyncio", {})], ids=["asyncio"])


class Broker:
    """A JetStream stream of its own (``FT<hex>`` on ``ft.<hex>.>``), deleted afterwards."""

    def __init__(self, nc: Any, tag: str) -> None:
        self.nc, self.js = nc, nc.jetstream()
        self.stream, self.prefix = f"FT{tag}", f"ft.{tag}"

    async def publish(self, rows: list[dict[str, Any]], subject: str | None = None) -> None:
        """Publish ``rows`` as JSON and wait until the stream holds them."""
        want = (await self.js.stream_info(self.stream)).state.messages + len(rows)
        for row in rows:
            await self.nc.publish(subject or f"{self.prefix}.all", msgspec.json.encode(row))
        await self.nc.flush()
        with anyio.fail_after(5):
            while (await self.js.stream_info(self.stream)).state.messages < want:
                await anyio.sleep(0.01)

    def source(self, subjects: str | list[str] | None = None, **options: Any) -> NatsSource:
        return NatsSource(
            NATS_URL,
            stream=self.stream,
            subjects=subjects or f"{self.prefix}.all",
            durable="featurist",
            **options,
        )

    async def consumer(self, durable: str = "featurist") -> Any:
        return await self.js.consumer_info(self.stream, durable)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=1, max_reconnect_attempts=0)
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


async def test_messages_through_the_runtime_give_the_values_of_direct_ingest(
    broker: Broker,
) -> None:
    rows = events(500)
    await broker.publish(rows)
    async with runtime() as rt, broker.source() as source:
        result = await consume(rt, source, batch_size=64, until="idle")
        assert (result.records, result.accepted, result.ended) == (500, 500, False)
        assert result.position == {f"{broker.prefix}.all": 500}
        assert await values_of(rt) == await direct(rows)
        assert await source.lag() == 0
        # without checkpoints each batch is acknowledged once accepted
        info = await broker.consumer()
        assert (info.num_ack_pending, info.ack_floor.stream_seq) == (0, 500)


async def test_messages_are_acknowledged_only_once_a_checkpoint_covers_them(
    broker: Broker, tmp_path: Path
) -> None:
    rows = events(300)
    await broker.publish(rows)
    async with runtime(tmp_path / "cp") as rt, broker.source() as source:
        await consume(rt, source, batch_size=50, until=200)
        info = await broker.consumer()
        assert (info.num_ack_pending, info.ack_floor.stream_seq) == (200, 0)
        assert await source.lag() == 100
        await rt.checkpoint()
        await consume(rt, source, batch_size=50, until=50)
        info = await broker.consumer()
        # the checkpoint's 200 are acknowledged, the 50 read since are not
        assert (info.num_ack_pending, info.ack_floor.stream_seq) == (50, 200)


async def test_a_restart_redelivers_what_no_checkpoint_covers_and_counts_nothing_twice(
    broker: Broker, tmp_path: Path
) -> None:
    rows = events(400)
    await broker.publish(rows)
    async with runtime(tmp_path / "cp") as rt, broker.source() as source:
        await consume(rt, source, batch_size=30, until=150)
        await rt.checkpoint()
        await consume(rt, source, batch_size=30, until=120)  # read, never checkpointed
    # more messages arrive meanwhile: they must come after the redelivered ones
    more = events(100, seed=9)
    await broker.publish(more)
    async with runtime(tmp_path / "cp") as rt, broker.source() as source:
        assert rt.offset == {"nats:" + broker.stream + ":featurist": {f"{broker.prefix}.all": 150}}
        result = await consume(rt, source, batch_size=64, until="idle")
        assert result.records == 350
        assert await values_of(rt) == await direct(rows + more)


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


async def test_partitioned_subjects_read_by_two_runtimes_reach_the_values_of_one(
    broker: Broker,
) -> None:
    rows = events(800)
    partitions = 4
    for row in rows:
        await broker.publish([row], f"{broker.prefix}.p.{partition_of(row['card'], partitions)}")
    owned = [[0, 1], [2, 3]]
    found: list[dict[str, dict[str, Any]]] = []

    async def process(mine: list[int]) -> None:
        source = NatsSource(
            NATS_URL,
            stream=broker.stream,
            subjects=[f"{broker.prefix}.p.{p}" for p in mine],
            durable="featurist",
        )
        async with runtime() as rt, source:
            await consume(rt, source, batch_size=40, until="idle")
            values = await values_of(rt)
            found.append({key: v for key, v in values.items() if v["n"]})
            assert all(partition_of(key, partitions) in mine for key in found[-1])

    async with anyio.create_task_group() as tg:  # the two at once, on one input
        for mine in owned:
            tg.start_soon(process, mine)
    first, second = found
    assert not set(first) & set(second)
    assert first | second == await direct(rows)
    assert set(first | second) == set(KEYS)


@CHILDREN_ON_ONE_LOOP
async def test_two_processes_on_partitioned_subjects_reach_the_values_of_one(
    broker: Broker,
) -> None:
    rows = events(600, seed=5)
    for row in rows:
        await broker.publish([row], f"{broker.prefix}.p.{partition_of(row['card'], 2)}")

    async def process(partition: int, into: list[dict[str, Any]]) -> None:
        options = {
            "stream": broker.stream,
            "subjects": [f"{broker.prefix}.p.{partition}"],
            "durable": f"featurist-{partition}",  # one subject each: a durable name each
        }
        into.append(await partition_process("nats", options))

    found: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        for partition in (0, 1):
            tg.start_soon(process, partition, found)
    first, second = found
    assert not set(first) & set(second)
    # JSON gives floats back as they were, and ints: compare as direct ingest's values
    assert msgspec.json.decode(msgspec.json.encode(await direct(rows))) == first | second


async def test_bad_settings_are_refused(broker: Broker) -> None:
    with pytest.raises(ConfigError, match="subjects"):
        NatsSource(stream="s", subjects=[], durable="d")
    with pytest.raises(ConfigError, match="durable"):
        NatsSource(stream="s", subjects="a", durable="a.b")
    with pytest.raises(ConfigError, match="ack_wait"):
        NatsSource(stream="s", subjects="a", durable="d", ack_wait=0)
    async with runtime() as rt:
        missing = NatsSource(NATS_URL, stream=broker.stream + "X", subjects="x", durable="d")
        async with missing:
            with pytest.raises(ConfigError, match="no JetStream stream"):
                await consume(rt, missing)
    with pytest.raises(ValueError, match="dict of stream sequences"):
        await broker.source().seek(["x", 1])
    assert FEATURE_SET.key == "card"


async def test_cancelled_consume_calls_lose_nothing_and_the_next_goes_on(broker: Broker) -> None:
    rows = events(2000)
    await broker.publish(rows)
    async with runtime() as rt, broker.source() as source:
        assert await source.lag() == 2000
        for _ in range(5):
            with anyio.move_on_after(0.01):
                await consume(rt, source, batch_size=37)
        await consume(rt, source, batch_size=64, until="idle")
        assert await values_of(rt) == await direct(rows)


async def test_start_new_reads_only_messages_published_once_the_consumer_exists(
    broker: Broker,
) -> None:
    old, new = events(10), events(20, seed=3)
    await broker.publish(old)
    async with runtime() as rt, broker.source(start="new") as source:
        assert await source.lag() == 0  # sets the consumer up: at the stream's end
        await broker.publish(new)
        assert (await consume(rt, source, until="idle")).records == 20
        assert await values_of(rt) == await direct(new)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(0, 200),
    cut=st.floats(0, 1),
    lost=st.integers(0, 80),
    later=st.integers(0, 40),
    batch_size=st.sampled_from([1, 7, 64]),
)
async def test_a_restart_from_any_checkpoint_ends_equal_to_one_pass(
    broker: Broker, tmp_path: Path, n: int, cut: float, lost: int, later: int, batch_size: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    subject, durable = f"{broker.prefix}.{tag}", f"d{tag}"
    rows, more = events(n, seed=n), events(later, seed=n + 1)
    await broker.publish(rows, subject)
    directory = tmp_path / tag

    def source() -> NatsSource:
        return NatsSource(NATS_URL, stream=broker.stream, subjects=subject, durable=durable)

    async with runtime(directory) as rt, source() as first:
        at = int(n * cut)
        await consume(rt, first, batch_size=batch_size, until=at)
        await rt.checkpoint()
        # read on, then "crash": no checkpoint holds these
        await consume(rt, first, batch_size=batch_size, until=min(lost, n - at))
    await broker.publish(more, subject)
    async with runtime(directory) as rt, source() as again:
        await consume(rt, again, batch_size=batch_size, until="idle")
        assert await values_of(rt) == await direct(rows + more)


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
