"""The broker source tests that are the same for NATS JetStream and Redis streams, written
against :class:`SourceBroker`: ``test_nats_source.py`` and ``test_redis_stream_source.py``
each define a ``broker`` fixture giving its broker's adapter and import these tests, so they
run there once per broker (and skip, or fail under FEATURIST_REQUIRE_SERVICES=1, as that
fixture does without its server). What only one broker does stays in its own module.

Where the two said a thing each their own way, the test here says it for both: a JetStream
consumer's ack floor is checked where Redis, which keeps none, checks only its pending count."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Protocol

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import NatsSource, RedisStreamSource, consume, partition_of

from .brokers import partition_process
from .common import KEYS, direct, events, runtime, values_of

#: tests whose work is in child processes run on one event loop kind (the children use asyncio)
#: the shared tests: each broker's test module takes them all (``from .source_cases import *``)
__all__ = [
    "test_a_restart_from_any_checkpoint_ends_equal_to_one_pass",
    "test_a_runtime_reads_its_broker_input_itself_and_a_restart_goes_on",
    "test_a_restart_reads_again_what_no_checkpoint_covers_and_counts_nothing_twice",
    "test_cancelled_consume_calls_lose_nothing_and_the_next_goes_on",
    "test_partitions_read_by_two_runtimes_reach_the_values_of_one",
    "test_records_are_acknowledged_only_once_a_checkpoint_covers_them",
    "test_records_through_the_runtime_give_the_values_of_direct_ingest",
    "test_start_new_reads_only_records_published_once_the_consumer_exists",
    "test_two_processes_on_partitions_reach_the_values_of_one",
]

CHILDREN_ON_ONE_LOOP = pytest.mark.parametrize("anyio_backend", [("asyncio", {})], ids=["asyncio"])


class SourceBroker(Protocol):
    """A broker's channels of the test's own (NATS subjects of one stream, Redis stream keys),
    deleted afterwards, and the broker's own view of what a source read and acknowledged."""

    #: the ``kind`` of :func:`.brokers.make_source` (and of the child processes)
    kind: str

    def channel(self, *parts: object) -> str:
        """The channel named by ``parts`` (``channel("p", 1)``: ``<prefix>.p.1`` on NATS,
        ``<prefix>:p:1`` on Redis); ``channel("all")`` is the one a plain source reads."""
        ...

    async def publish(self, rows: list[dict[str, Any]], channel: str | None = None) -> None:
        """Add ``rows`` as JSON to ``channel`` (``channel("all")`` when None), and wait until
        the broker holds them."""
        ...

    def source(
        self,
        channels: str | list[str] | None = None,
        consumer: str = "featurist",
        **options: Any,
    ) -> NatsSource | RedisStreamSource:
        """A source on ``channels`` (``channel("all")`` when None) as ``consumer`` (the
        JetStream durable, the Redis consumer group)."""
        ...

    def child_options(self, channels: list[str], consumer: str) -> dict[str, Any]:
        """The options of a child process's source (:func:`.brokers.make_source`)."""
        ...

    #: the name of a plain source (``source()``): its key in ``rt.offset``
    source_name: str

    async def position_of(self, n: int) -> Any:
        """The position on ``channel("all")`` of a source that has read its first ``n``."""
        ...

    async def pending(self) -> int:
        """How many of ``channel("all")`` the plain consumer was given and has not
        acknowledged, as the broker counts them."""
        ...

    async def ack_floor(self) -> int | None:
        """The stream sequence through which the plain consumer acknowledged everything (a
        JetStream consumer's ack floor); None where the broker keeps none (Redis)."""
        ...


async def test_records_through_the_runtime_give_the_values_of_direct_ingest(
    broker: SourceBroker,
) -> None:
    rows = events(500)
    await broker.publish(rows)
    async with runtime() as rt, broker.source() as source:
        result = await consume(rt, source, batch_size=64, until="idle")
        assert (result.records, result.accepted, result.ended) == (500, 500, False)
        assert result.position == {broker.channel("all"): await broker.position_of(500)}
        assert await values_of(rt) == await direct(rows)
        assert await source.lag() == 0
        # without checkpoints each batch is acknowledged once accepted
        assert await broker.pending() == 0
        assert await broker.ack_floor() in (500, None)  # None: Redis keeps no ack floor


async def test_records_are_acknowledged_only_once_a_checkpoint_covers_them(
    broker: SourceBroker, tmp_path: Path
) -> None:
    rows = events(300)
    await broker.publish(rows)
    async with runtime(tmp_path / "cp") as rt, broker.source() as source:
        await consume(rt, source, batch_size=50, until=200)
        assert await broker.pending() == 200
        assert await broker.ack_floor() in (0, None)
        assert await source.lag() == 100
        await rt.checkpoint()
        await consume(rt, source, batch_size=50, until=50)
        # the checkpoint's 200 are acknowledged, the 50 read since are not
        assert await broker.pending() == 50
        assert await broker.ack_floor() in (200, None)


async def test_a_restart_reads_again_what_no_checkpoint_covers_and_counts_nothing_twice(
    broker: SourceBroker, tmp_path: Path
) -> None:
    rows = events(400)
    await broker.publish(rows)
    async with runtime(tmp_path / "cp") as rt, broker.source() as source:
        await consume(rt, source, batch_size=30, until=150)
        await rt.checkpoint()
        await consume(rt, source, batch_size=30, until=120)  # read, never checkpointed
    # more arrive meanwhile: they must come after the ones read again
    more = events(100, seed=9)
    await broker.publish(more)
    async with runtime(tmp_path / "cp") as rt, broker.source() as source:
        at = await broker.position_of(150)
        assert rt.offset == {broker.source_name: {broker.channel("all"): at}}
        result = await consume(rt, source, batch_size=64, until="idle")
        assert result.records == 350
        assert await values_of(rt) == await direct(rows + more)
        await rt.checkpoint()
        await consume(rt, source, until=0)  # commits the checkpoint
        # the dead run's ones too; JetStream applies an acknowledgement to the consumer's
        # state a moment after it took it in (Redis at once)
        with anyio.fail_after(10):
            while await broker.pending():
                await anyio.sleep(0.05)


async def test_a_runtime_reads_its_broker_input_itself_and_a_restart_goes_on(
    broker: SourceBroker, tmp_path: Path
) -> None:
    """``FeatureRuntime(inputs=[source])``: read live until the runtime stops, which closes the
    source; the next runtime goes on from the checkpoint and acknowledges what it holds."""
    rows, more = events(300), events(200, seed=5)
    await broker.publish(rows)

    async def read_up_to(rt: Any, n: int) -> None:
        with anyio.fail_after(20):
            while (rt.offset or {}).get(broker.source_name) != {
                broker.channel("all"): await broker.position_of(n)
            }:
                await anyio.sleep(0.02)

    first = broker.source()
    async with runtime(tmp_path / "cp", inputs=[first]) as rt:
        await read_up_to(rt, 300)
        assert await values_of(rt) == await direct(rows)
        await rt.checkpoint()
    await broker.publish(more)
    async with runtime(tmp_path / "cp", inputs=[broker.source()]) as rt:
        await read_up_to(rt, 500)
        assert await values_of(rt) == await direct(rows + more)
        await rt.checkpoint()
        # the input commits what the checkpoint holds at its next read
        with anyio.fail_after(10):
            while await broker.pending():
                await anyio.sleep(0.05)


async def test_partitions_read_by_two_runtimes_reach_the_values_of_one(
    broker: SourceBroker,
) -> None:
    """One channel per partition of the key (subjects of a stream, stream keys)."""
    rows = events(800)
    partitions = 4
    for row in rows:
        await broker.publish([row], broker.channel("p", partition_of(row["card"], partitions)))
    found: list[dict[str, dict[str, Any]]] = []

    async def process(mine: list[int]) -> None:
        async with (
            runtime() as rt,
            broker.source([broker.channel("p", p) for p in mine]) as source,
        ):
            await consume(rt, source, batch_size=40, until="idle")
            values = await values_of(rt)
            found.append({key: v for key, v in values.items() if v["n"]})
            assert all(partition_of(key, partitions) in mine for key in found[-1])

    async with anyio.create_task_group() as tg:  # the two at once, on one input
        for mine in ([0, 1], [2, 3]):
            tg.start_soon(process, mine)
    first, second = found
    assert not set(first) & set(second)
    assert first | second == await direct(rows)
    assert set(first | second) == set(KEYS)


@CHILDREN_ON_ONE_LOOP
async def test_two_processes_on_partitions_reach_the_values_of_one(
    broker: SourceBroker,
) -> None:
    rows = events(600, seed=5)
    for row in rows:
        await broker.publish([row], broker.channel("p", partition_of(row["card"], 2)))

    async def process(partition: int, into: list[dict[str, Any]]) -> None:
        # a consumer each: on NATS, one durable per subject it reads
        options = broker.child_options([broker.channel("p", partition)], f"featurist-{partition}")
        into.append(await partition_process(broker.kind, options))

    found: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        for partition in (0, 1):
            tg.start_soon(process, partition, found)
    first, second = found
    assert not set(first) & set(second)
    # JSON gives floats back as they were, and ints: compare as direct ingest's values
    assert msgspec.json.decode(msgspec.json.encode(await direct(rows))) == first | second


async def test_cancelled_consume_calls_lose_nothing_and_the_next_goes_on(
    broker: SourceBroker,
) -> None:
    rows = events(2000)
    await broker.publish(rows)
    async with runtime() as rt, broker.source() as source:
        assert await source.lag() == 2000
        for _ in range(5):
            with anyio.move_on_after(0.01):
                await consume(rt, source, batch_size=37)
        await consume(rt, source, batch_size=64, until="idle")
        assert await values_of(rt) == await direct(rows)


async def test_start_new_reads_only_records_published_once_the_consumer_exists(
    broker: SourceBroker,
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
    broker: SourceBroker, tmp_path: Path, n: int, cut: float, lost: int, later: int, batch_size: int
) -> None:
    # the examples share the broker: a channel and a consumer of each one's own
    tag = uuid.uuid4().hex[:8]
    channel, consumer = broker.channel(tag), f"d{tag}"
    rows, more = events(n, seed=n), events(later, seed=n + 1)
    await broker.publish(rows, channel)
    directory = tmp_path / tag
    async with runtime(directory) as rt, broker.source(channel, consumer) as first:
        at = int(n * cut)
        await consume(rt, first, batch_size=batch_size, until=at)
        await rt.checkpoint()
        # read on, then "crash": no checkpoint holds these
        await consume(rt, first, batch_size=batch_size, until=min(lost, n - at))
    await broker.publish(more, channel)
    async with runtime(directory) as rt, broker.source(channel, consumer) as again:
        await consume(rt, again, batch_size=batch_size, until="idle")
        assert await values_of(rt) == await direct(rows + more)
