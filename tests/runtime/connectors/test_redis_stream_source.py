"""RedisStreamSource against the local Redis (skips without it, fails under
FEATURIST_REQUIRE_SERVICES=1). What it shares with NatsSource runs here from ``source_cases``:
values through the runtime equal direct ingest; entries are acknowledged (XACK) only once a
checkpoint covers them (the group's pending count says so); a restart reads the pending entries
again and counts nothing twice; one stream per partition read by two runtimes, and by two child
processes, reach the values of one. Its own: a child consuming with checkpoints is SIGKILLed
mid-stream and a new runtime restored from its checkpoint ends equal to one uninterrupted run;
an entry without the payload field goes to dead letters; entries deleted while pending are
skipped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio

from actors import DeadLetterReason
from runtime import ConfigError, RedisStreamSource, consume

from .brokers import REDIS_URL, crash, unavailable
from .common import direct, events, runtime, values_of

pytest.register_assert_rewrite("tests.runtime.connectors.source_cases")  # before its import
from .source_cases import *  # noqa: E402 F403  (the tests shared with NATS run here too)
from .source_cases import CHILDREN_ON_ONE_LOOP  # noqa: E402


class Streams:
    """Stream keys of their own (``ft:<hex>:...``), deleted afterwards: the Redis
    :class:`~.source_cases.SourceBroker`."""

    kind = "redis"

    def __init__(self, client: redis.asyncio.Redis, tag: str) -> None:
        self.client, self.prefix = client, f"ft:{tag}"
        self.keys: set[str] = set()
        self.source_name = f"redis:{self.prefix}:all:featurist"

    def channel(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    async def publish(self, rows: list[dict[str, Any]], key: str | None = None) -> None:
        key = key or f"{self.prefix}:all"
        self.keys.add(key)
        async with self.client.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(key, {"data": msgspec.json.encode(row)})
            await pipe.execute()

    def source(
        self,
        streams: str | list[str] | None = None,
        group: str = "featurist",
        **options: Any,
    ) -> RedisStreamSource:
        streams = streams or f"{self.prefix}:all"
        self.keys.update([streams] if isinstance(streams, str) else streams)
        return RedisStreamSource(REDIS_URL, streams=streams, group=group, **options)

    def child_options(self, streams: list[str], group: str) -> dict[str, Any]:
        return {"streams": streams, "group": group}

    async def position_of(self, n: int) -> str:
        """The id of the ``n``-th entry."""
        entries = await self.client.xrange(f"{self.prefix}:all", count=n)
        return str(entries[n - 1][0].decode())

    async def pending(self) -> int:
        summary = await self.client.xpending(f"{self.prefix}:all", "featurist")
        return int(summary["pending"])

    async def ack_floor(self) -> None:
        return None  # Redis keeps none: its pending entries may be any of those delivered


@pytest.fixture
async def broker() -> AsyncIterator[Streams]:
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


@CHILDREN_ON_ONE_LOOP
async def test_a_sigkilled_consumer_resumes_from_its_checkpoint_equal_to_one_run(
    broker: Streams, tmp_path: Path
) -> None:
    rows = events(3000)
    await broker.publish(rows)
    directory = tmp_path / "cp"
    options = {"streams": f"{broker.prefix}:all", "group": "featurist"}
    config = {"directory": str(directory), "chunk": 200, "batch": 50}
    child = {"kind": "redis", "options": options, **config}
    # killed after the checkpoint at 800, while it holds 200 more read and not acknowledged
    assert await crash(child, checkpoints=2) == 1000
    assert await broker.pending() == 200
    # a second child restores that checkpoint, goes on, and is killed the same way
    assert await crash(child, checkpoints=1) == 600
    async with runtime(directory) as rt, broker.source() as source:
        ids = [entry[0] for entry in await broker.client.xrange(f"{broker.prefix}:all")]
        at = ids.index(rt.offset[source.name][f"{broker.prefix}:all"].encode()) + 1
        assert 800 < at < 3000
        result = await consume(rt, source, batch_size=100, until="idle")
        assert result.records == 3000 - at
        assert await values_of(rt) == await direct(rows)
        await rt.checkpoint()
        await consume(rt, source, until=0)  # commits it
    assert await broker.pending() == 0  # the dead children's entries too


async def test_an_entry_without_the_payload_field_goes_to_dead_letters(broker: Streams) -> None:
    rows = events(10)
    await broker.publish(rows[:5])
    await broker.client.xadd(f"{broker.prefix}:all", {"other": b"x"})
    await broker.publish(rows[5:])
    async with runtime() as rt, broker.source() as source:
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
    assert await broker.pending() == 0  # the rejected entry is acknowledged with the rest


async def test_the_payload_field_is_found_among_other_fields_in_any_order(
    broker: Streams,
) -> None:
    rows = events(6)
    key = f"{broker.prefix}:all"
    for i, row in enumerate(rows):
        payload = msgspec.json.encode(row)
        fields = {"data": payload, "meta": b"m"} if i % 2 else {"meta": b"m", "data": payload}
        await broker.client.xadd(key, fields)
    async with runtime() as rt, broker.source() as source:
        result = await consume(rt, source, until="idle")
        assert (result.records, result.accepted, result.rejected) == (6, 6, 0)
        assert await values_of(rt) == await direct(rows)


async def test_an_entry_deleted_while_pending_is_skipped_when_read_again(broker: Streams) -> None:
    rows = events(5)
    await broker.publish(rows)
    async with broker.source() as source:
        batch = await source.read(10)
        assert len(batch.payloads) == 5  # now pending for the consumer, not acknowledged
    ids = [entry[0] for entry in await broker.client.xrange(f"{broker.prefix}:all")]
    await broker.client.xdel(f"{broker.prefix}:all", ids[2])
    async with broker.source() as source:  # no position: the pending entries from the start
        again = await source.read(10)
    assert [msgspec.json.decode(p) for p in again.payloads] == rows[:2] + rows[3:]
    assert again.position == {f"{broker.prefix}:all": ids[-1].decode()}


async def test_bad_settings_and_positions_are_refused(broker: Streams) -> None:
    with pytest.raises(ConfigError, match="streams"):
        RedisStreamSource(streams=[], group="g")
    with pytest.raises(ConfigError, match="group"):
        RedisStreamSource(streams="s", group="")
    with pytest.raises(ConfigError, match="block"):
        RedisStreamSource(streams="s", group="g", block=0)
    source = broker.source()
    with pytest.raises(ValueError, match="dict of entry ids"):
        await source.seek(["x", 1])
    with pytest.raises(ValueError, match="not a Redis stream entry id"):
        await source.seek({f"{broker.prefix}:all": "abc"})


async def test_a_key_that_is_not_a_stream_is_named(broker: Streams) -> None:
    """Redis' own WRONGTYPE names neither the source nor the key."""
    key = broker.channel("plain")
    broker.keys.add(key)
    await broker.client.set(key, "a string")
    source = broker.source(streams=key)
    async with source:
        with pytest.raises(ConfigError, match=rf"the key '{key}' holds a string, not a stream"):
            await source.read(10)


async def test_a_wrong_payload_field_is_warned_of_once(
    broker: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    """Every entry then lacks it: each goes to the dead letters (and is acknowledged), and a
    warning names the field asked for and those the entries have, once."""
    await broker.publish(events(20))
    async with runtime() as rt, broker.source(field="payload") as source:
        result = await consume(rt, source, batch_size=5, until="idle")
        assert (result.records, result.accepted, result.rejected) == (20, 0, 20)
    said = [r.getMessage() for r in caplog.records if "lack_the_payload_field" in r.getMessage()]
    assert len(said) == 1, said
    assert "field='payload'" in said[0] and "fields_found=['data']" in said[0]


async def test_a_right_payload_field_warns_of_nothing(
    broker: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    await broker.publish(events(5))
    await broker.client.xadd(f"{broker.prefix}:all", {"other": b"x"})  # one without: no warning
    async with runtime() as rt, broker.source() as source:
        await consume(rt, source, until="idle")
    assert "lack_the_payload_field" not in caplog.text


async def test_a_stream_the_source_makes_is_warned_of(
    broker: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that does not exist is made an empty stream by the group's creation (right for
    a stream not written yet, and what a misspelt key gives): said, with the key."""
    async with runtime() as rt, broker.source(streams=broker.channel("typo")) as source:
        assert (await consume(rt, source, until="idle")).records == 0
    said = [r.getMessage() for r in caplog.records if "stream_created_empty" in r.getMessage()]
    assert len(said) == 1 and f"stream='{broker.channel('typo')}'" in said[0], said
    caplog.clear()
    await broker.publish(events(3))
    async with runtime() as rt, broker.source() as source:
        assert (await consume(rt, source, until="idle")).records == 3
    assert "stream_created_empty" not in caplog.text
