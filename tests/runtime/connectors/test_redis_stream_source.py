"""RedisStreamSource against the local Redis (skips without it, fails under
FEATURIST_REQUIRE_SERVICES=1): values through the runtime equal direct ingest; entries are
acknowledged (XACK) only once a checkpoint covers them (the group's pending count says so); a
child consuming with checkpoints is SIGKILLed mid-stream and a new runtime restored from its
checkpoint ends equal to one uninterrupted run; an entry without the payload field goes to dead
letters; one stream per partition read by two runtimes, and by two child processes, reach the
values of one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import ConfigError, RedisStreamSource, consume, partition_of

from .brokers import REDIS_URL, crash, partition_process, unavailable
from .common import KEYS, direct, events, runtime, values_of

#: tests whose work is in child processes run on one event loop kind (the children use asyncio)
CHILDREN_ON_ONE_LOOP = pytest.mark.parametrize("anyio_backend", [("asyncio", {})], ids=["asyncio"])


class Streams:
    """Stream keys of their own (``ft:<hex>:...``), deleted afterwards."""

    def __init__(self, client: redis.asyncio.Redis, tag: str) -> None:
        self.client, self.prefix = client, f"ft:{tag}"
        self.keys: set[str] = set()

    async def add(self, rows: list[dict[str, Any]], key: str | None = None) -> None:
        key = key or f"{self.prefix}:all"
        self.keys.add(key)
        async with self.client.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(key, {"data": msgspec.json.encode(row)})
            await pipe.execute()

    def source(self, streams: str | list[str] | None = None, **options: Any) -> RedisStreamSource:
        streams = streams or f"{self.prefix}:all"
        self.keys.update([streams] if isinstance(streams, str) else streams)
        return RedisStreamSource(REDIS_URL, streams=streams, group="featurist", **options)

    async def pending(self, key: str | None = None) -> int:
        summary = await self.client.xpending(key or f"{self.prefix}:all", "featurist")
        return int(summary["pending"])


@pytest.fixture
async def streams() -> AsyncIterator[Streams]:
    client = redis.asyncio.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        unavailable("Redis", exc)
    found = Streams(client, uuid.uuid4().hex[:12])
    try:
        yield found
    finally:
        if found.keys:
            await client.delete(*found.keys)
        await client.aclose()


async def test_entries_through_the_runtime_give_the_values_of_direct_ingest(
    streams: Streams,
) -> None:
    rows = events(500)
    await streams.add(rows)
    async with runtime() as rt, streams.source() as source:
        result = await consume(rt, source, batch_size=64, until="idle")
        assert (result.records, result.accepted, result.ended) == (500, 500, False)
        last = (await streams.client.xrevrange(f"{streams.prefix}:all", count=1))[0][0]
        assert result.position == {f"{streams.prefix}:all": last.decode()}
        assert await values_of(rt) == await direct(rows)
        assert await source.lag() == 0
        # without checkpoints each batch is acknowledged once accepted
        assert await streams.pending() == 0


async def test_entries_are_acknowledged_only_once_a_checkpoint_covers_them(
    streams: Streams, tmp_path: Path
) -> None:
    rows = events(300)
    await streams.add(rows)
    async with runtime(tmp_path / "cp") as rt, streams.source() as source:
        await consume(rt, source, batch_size=50, until=200)
        assert await streams.pending() == 200
        assert await source.lag() == 100
        await rt.checkpoint()
        await consume(rt, source, batch_size=50, until=50)
        # the checkpoint's 200 are acknowledged, the 50 read since are not
        assert await streams.pending() == 50


async def test_a_restart_reads_the_pending_entries_again_and_counts_nothing_twice(
    streams: Streams, tmp_path: Path
) -> None:
    rows = events(400)
    await streams.add(rows)
    async with runtime(tmp_path / "cp") as rt, streams.source() as source:
        await consume(rt, source, batch_size=30, until=150)
        await rt.checkpoint()
        await consume(rt, source, batch_size=30, until=120)  # read, never checkpointed
    more = events(100, seed=9)  # added meanwhile: they must come after the pending ones
    await streams.add(more)
    async with runtime(tmp_path / "cp") as rt, streams.source() as source:
        result = await consume(rt, source, batch_size=64, until="idle")
        assert result.records == 350
        assert await values_of(rt) == await direct(rows + more)
        await rt.checkpoint()
        await consume(rt, source, until=0)  # commits the checkpoint
        assert await streams.pending() == 0  # the dead run's entries too


@CHILDREN_ON_ONE_LOOP
async def test_a_sigkilled_consumer_resumes_from_its_checkpoint_equal_to_one_run(
    streams: Streams, tmp_path: Path
) -> None:
    rows = events(3000)
    await streams.add(rows)
    directory = tmp_path / "cp"
    options = {"streams": f"{streams.prefix}:all", "group": "featurist"}
    config = {"directory": str(directory), "chunk": 200, "batch": 50}
    child = {"kind": "redis", "options": options, **config}
    # killed after the checkpoint at 800, while it holds 200 more read and not acknowledged
    assert await crash(child, checkpoints=2) == 1000
    assert await streams.pending() == 200
    # a second child restores that checkpoint, goes on, and is killed the same way
    assert await crash(child, checkpoints=1) == 600
    async with runtime(directory) as rt, streams.source() as source:
        ids = [entry[0] for entry in await streams.client.xrange(f"{streams.prefix}:all")]
        at = ids.index(rt.offset[source.name][f"{streams.prefix}:all"].encode()) + 1
        assert 800 < at < 3000
        result = await consume(rt, source, batch_size=100, until="idle")
        assert result.records == 3000 - at
        assert await values_of(rt) == await direct(rows)
        await rt.checkpoint()
        await consume(rt, source, until=0)  # commits it
    assert await streams.pending() == 0  # the dead children's entries too


async def test_an_entry_without_the_payload_field_goes_to_dead_letters(streams: Streams) -> None:
    rows = events(10)
    await streams.add(rows[:5])
    await streams.client.xadd(f"{streams.prefix}:all", {"other": b"x"})
    await streams.add(rows[5:])
    async with runtime() as rt, streams.source() as source:
        result = await consume(rt, source, until="idle")
        assert (result.records, result.accepted, result.rejected) == (11, 10, 1)
        [letter] = [
            letter
            for letter in rt.dead_letters.letters()
            if letter.recipient == f"featurist/source/{source.name}"
        ]
        assert letter.reason is DeadLetterReason.REJECTED and letter.message == {"other": b"x"}
        assert "no field 'data'" in str(letter.error)
        assert await values_of(rt) == await direct(rows)
    assert await streams.pending() == 0  # the rejected entry is acknowledged with the rest


async def test_the_payload_field_is_found_among_other_fields_in_any_order(
    streams: Streams,
) -> None:
    rows = events(6)
    key = f"{streams.prefix}:all"
    for i, row in enumerate(rows):
        payload = msgspec.json.encode(row)
        fields = {"data": payload, "meta": b"m"} if i % 2 else {"meta": b"m", "data": payload}
        await streams.client.xadd(key, fields)
    async with runtime() as rt, streams.source() as source:
        result = await consume(rt, source, until="idle")
        assert (result.records, result.accepted, result.rejected) == (6, 6, 0)
        assert await values_of(rt) == await direct(rows)


async def test_an_entry_deleted_while_pending_is_skipped_when_read_again(streams: Streams) -> None:
    rows = events(5)
    await streams.add(rows)
    async with streams.source() as source:
        batch = await source.read(10)
        assert len(batch.payloads) == 5  # now pending for the consumer, not acknowledged
    ids = [entry[0] for entry in await streams.client.xrange(f"{streams.prefix}:all")]
    await streams.client.xdel(f"{streams.prefix}:all", ids[2])
    async with streams.source() as source:  # no position: the pending entries from the start
        again = await source.read(10)
    assert [msgspec.json.decode(p) for p in again.payloads] == rows[:2] + rows[3:]
    assert again.position == {f"{streams.prefix}:all": ids[-1].decode()}


async def test_one_stream_per_partition_read_by_two_runtimes_reaches_the_values_of_one(
    streams: Streams,
) -> None:
    rows = events(800)
    partitions = 4
    for row in rows:
        await streams.add([row], key=f"{streams.prefix}:p:{partition_of(row['card'], partitions)}")
    found: list[dict[str, dict[str, Any]]] = []

    async def process(mine: list[int]) -> None:
        async with (
            runtime() as rt,
            streams.source([f"{streams.prefix}:p:{p}" for p in mine]) as source,
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
async def test_two_processes_on_a_stream_per_partition_reach_the_values_of_one(
    streams: Streams,
) -> None:
    rows = events(600, seed=5)
    for row in rows:
        await streams.add([row], key=f"{streams.prefix}:p:{partition_of(row['card'], 2)}")

    async def process(partition: int, into: list[dict[str, Any]]) -> None:
        options = {"streams": [f"{streams.prefix}:p:{partition}"], "group": "featurist"}
        into.append(await partition_process("redis", options))

    found: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        for partition in (0, 1):
            tg.start_soon(process, partition, found)
    first, second = found
    assert not set(first) & set(second)
    assert msgspec.json.decode(msgspec.json.encode(await direct(rows))) == first | second


async def test_bad_settings_and_positions_are_refused(streams: Streams) -> None:
    with pytest.raises(ConfigError, match="streams"):
        RedisStreamSource(streams=[], group="g")
    with pytest.raises(ConfigError, match="group"):
        RedisStreamSource(streams="s", group="")
    with pytest.raises(ConfigError, match="block"):
        RedisStreamSource(streams="s", group="g", block=0)
    source = streams.source()
    with pytest.raises(ValueError, match="dict of entry ids"):
        await source.seek(["x", 1])
    with pytest.raises(ValueError, match="not a Redis stream entry id"):
        await source.seek({f"{streams.prefix}:all": "abc"})


async def test_cancelled_consume_calls_lose_nothing_and_the_next_goes_on(
    streams: Streams,
) -> None:
    rows = events(2000)
    await streams.add(rows)
    async with runtime() as rt, streams.source() as source:
        assert await source.lag() == 2000
        for _ in range(5):
            with anyio.move_on_after(0.01):
                await consume(rt, source, batch_size=37)
        await consume(rt, source, batch_size=64, until="idle")
        assert await values_of(rt) == await direct(rows)


async def test_start_new_reads_only_entries_added_once_the_group_exists(
    streams: Streams,
) -> None:
    old, new = events(10), events(20, seed=3)
    await streams.add(old)
    async with runtime() as rt, streams.source(start="new") as source:
        assert await source.lag() == 0  # sets the group up: at the stream's end
        await streams.add(new)
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
    streams: Streams, tmp_path: Path, n: int, cut: float, lost: int, later: int, batch_size: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"{streams.prefix}:{tag}"
    rows, more = events(n, seed=n), events(later, seed=n + 1)
    await streams.add(rows, key)
    directory = tmp_path / tag
    async with runtime(directory) as rt, streams.source(key) as first:
        at = int(n * cut)
        await consume(rt, first, batch_size=batch_size, until=at)
        await rt.checkpoint()
        # read on, then "crash": no checkpoint holds these
        await consume(rt, first, batch_size=batch_size, until=min(lost, n - at))
    await streams.add(more, key)
    async with runtime(directory) as rt, streams.source(key) as again:
        await consume(rt, again, batch_size=batch_size, until="idle")
        assert await values_of(rt) == await direct(rows + more)
