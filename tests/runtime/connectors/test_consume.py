"""The source protocol and ``consume``: a tiny in-memory source (two methods) read into a real
runtime gives the values of ingesting its events directly; ``until`` stops where it says and
the next call goes on; positions go into the runtime's offset by source name, a checkpoint holds
them, a restart goes on from them and ends equal to one pass; positions are committed only once
a checkpoint holds them (at once without checkpoints); rejected records go to dead letters;
cancelling stops a live source.
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    ConfigError,
    ConsumeResult,
    InvalidEvent,
    RejectedRecord,
    Source,
    SourceBatch,
    consume,
)

from .common import direct, events, runtime, values_of


class ListSource(Source):
    """The guide's example: a list of events, the index of the next one as the position."""

    def __init__(self, events: list[Any], name: str = "list") -> None:
        self.events, self.name, self.next = list(events), name, 0

    async def read(self, max_records: int) -> SourceBatch | None:
        if self.next >= len(self.events):
            return None
        batch = self.events[self.next : self.next + max_records]
        self.next += len(batch)
        return SourceBatch(batch, self.next)

    async def seek(self, position: Any) -> None:
        self.next = position


class Recording(ListSource):
    """A list source that remembers its commits, reads and seeks."""

    def __init__(self, events: list[Any], name: str = "list") -> None:
        super().__init__(events, name)
        self.commits: list[Any] = []
        self.seeks: list[Any] = []
        self.reads = 0

    async def read(self, max_records: int) -> SourceBatch | None:
        self.reads += 1
        return await super().read(max_records)

    async def seek(self, position: Any) -> None:
        self.seeks.append(position)
        await super().seek(position)

    async def commit(self, position: Any) -> None:
        self.commits.append(position)


class Live(Source):
    """An endless source: its events, then empty batches (nothing new yet), never None."""

    name = "live"

    def __init__(self, events: list[Any]) -> None:
        self.events, self.next = events, 0
        self.empty_reads = 0

    async def read(self, max_records: int) -> SourceBatch | None:
        batch = self.events[self.next : self.next + max_records]
        if not batch:
            self.empty_reads += 1
            await anyio.sleep(0.001)
        self.next += len(batch)
        return SourceBatch(batch, self.next)

    async def seek(self, position: Any) -> None:
        self.next = position


async def test_a_tiny_source_is_read_to_its_end_with_the_values_of_direct_ingest() -> None:
    rows = events(300)
    async with runtime() as rt:
        result = await consume(rt, ListSource(rows), batch_size=64)
        assert result == ConsumeResult(
            records=300, accepted=300, rejected=0, batches=5, position=300, ended=True
        )
        assert rt.offset == {"list": 300}
        assert await values_of(rt) == await direct(rows)


async def test_rt_consume_is_consume_of_the_runtime() -> None:
    rows = events(300)
    async with runtime() as rt:
        result = await rt.consume(ListSource(rows), batch_size=64)
        assert result == ConsumeResult(
            records=300, accepted=300, rejected=0, batches=5, position=300, ended=True
        )
        assert rt.offset == {"list": 300}
        assert await values_of(rt) == await direct(rows)


async def test_json_bytes_are_decoded_by_the_runtime() -> None:
    rows = events(50)
    async with runtime() as rt:
        result = await consume(rt, ListSource([msgspec.json.encode(row) for row in rows]))
        assert (result.accepted, result.ended) == (50, True)
        assert await values_of(rt) == await direct(rows)


async def test_until_a_count_stops_there_and_the_next_call_goes_on() -> None:
    rows = events(100)
    source = ListSource(rows)
    async with runtime() as rt:
        first = await consume(rt, source, batch_size=16, until=40)
        assert (first.records, first.position, first.ended) == (40, 40, False)
        assert rt.offset == {"list": 40}
        assert (await consume(rt, source, until=0)).records == 0
        rest = await consume(rt, source, batch_size=16)
        assert (rest.records, rest.position, rest.ended) == (60, 100, True)
        assert await values_of(rt) == await direct(rows)


async def test_until_idle_stops_when_a_live_source_has_nothing_new() -> None:
    rows = events(30)
    source = Live(rows)
    async with runtime() as rt:
        result = await consume(rt, source, batch_size=8, until="idle")
        assert (result.records, result.ended, source.empty_reads) == (30, False, 1)
        assert await values_of(rt) == await direct(rows)


async def test_cancelling_stops_a_live_source_and_keeps_what_was_ingested() -> None:
    rows = events(40)
    source = Live(rows)
    async with runtime() as rt:
        with anyio.move_on_after(0.2) as scope:
            await consume(rt, source, batch_size=8)
        assert scope.cancelled_caught and source.empty_reads > 1
        assert rt.offset == {"live": 40}
        assert await values_of(rt) == await direct(rows)


async def test_rejected_records_go_to_dead_letters_and_the_run_goes_on() -> None:
    rows = events(4)

    class WithBadRecord(ListSource):
        async def read(self, max_records: int) -> SourceBatch | None:
            batch = await super().read(max_records)
            if batch is None:
                return None
            bad = RejectedRecord(b"{oops", "not JSON", where="feed line 2", field=None)
            return SourceBatch(batch.payloads, batch.position, [bad])

    async with runtime() as rt:
        # the runtime rejects the event with no key: counted with the source's rejection
        result = await consume(rt, WithBadRecord([*rows, {"ts": 1}], name="feed"))
        assert (result.records, result.accepted, result.rejected) == (6, 4, 2)
        letters = [
            letter
            for letter in rt.dead_letters.letters()
            if letter.recipient == "featurist/source/feed"
        ]
        assert len(letters) == 1
        letter = letters[0]
        assert letter.reason is DeadLetterReason.REJECTED and letter.message == b"{oops"
        assert isinstance(letter.error, InvalidEvent)
        assert str(letter.error) == "feed line 2: not JSON"
        assert rt.dead_letters.count(DeadLetterReason.REJECTED) == 2


async def test_without_checkpoints_each_batch_is_committed_once_accepted() -> None:
    source = Recording(events(50))
    async with runtime() as rt:
        await consume(rt, source, batch_size=20)
    assert source.commits == [20, 40, 50]


async def test_positions_are_committed_only_once_a_checkpoint_holds_them(tmp_path: Path) -> None:
    source = Recording(events(50))
    async with runtime(tmp_path / "cp") as rt:
        await consume(rt, source, batch_size=10, until=25)
        assert source.commits == []
        info = await rt.checkpoint()
        assert info.offset == {"list": 25}
        await consume(rt, source, batch_size=10, until=10)
        assert source.commits == [25]  # not 35: no checkpoint holds it yet
        await rt.checkpoint()
        await consume(rt, source, batch_size=10)
        assert source.commits == [25, 35]
    # a restart commits what the restored checkpoint holds, and goes on from there
    again = Recording(events(50))
    async with runtime(tmp_path / "cp") as rt:
        result = await consume(rt, again)
        assert again.seeks == [35] and again.commits == [35]
        assert (result.records, result.position) == (15, 50)


async def test_two_sources_feed_one_runtime_and_a_checkpoint_holds_both(tmp_path: Path) -> None:
    rows = events(400)
    left, right = ListSource(rows[::2], name="left"), ListSource(rows[1::2], name="right")
    async with runtime(tmp_path / "cp") as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(consume, rt, left, batch_size=7))
            tg.start_soon(functools.partial(consume, rt, right, batch_size=11))
        assert rt.offset == {"left": 200, "right": 200}
        info = await rt.checkpoint()
        assert info.offset == {"left": 200, "right": 200}
        # per key, arrival order differs from ``rows``: compare order-free features only
        counts = {k: (v["n"], v["merchants"]) for k, v in (await values_of(rt)).items()}
        expected = await direct(rows)
        assert counts == {k: (v["n"], v["merchants"]) for k, v in expected.items()}


async def test_an_offset_that_consume_did_not_write_is_refused() -> None:
    async with runtime() as rt:
        await rt.ingest(events(1)[0], offset=17)
        with pytest.raises(ConfigError, match="not the positions consume records"):
            await consume(rt, ListSource(events(3)))


async def test_bad_arguments_are_refused() -> None:
    async with runtime() as rt:
        for kwargs in ({"batch_size": 0}, {"batch_size": True}, {"until": -1}, {"until": "x"}):
            with pytest.raises(ValueError):
                await consume(rt, ListSource([]), **kwargs)
        source = Recording(events(1))
        with pytest.raises(ValueError, match="no stream named 'nope'"):
            await consume(rt, source, stream="nope")
        assert source.reads == 0  # refused before anything was read
        source.name = ""
        with pytest.raises(ConfigError, match="name must be a non-empty str"):
            await consume(rt, source)


async def test_events_of_a_source_replay_through_the_runtime() -> None:
    rows = events(120)
    async with runtime() as rt:
        result = await rt.replay(ListSource(rows).iterate(dead_letters=rt.dead_letters))
        assert (result.accepted, result.rejected) == (120, 0)
        assert await values_of(rt) == await direct(rows)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(0, 250),
    cut=st.floats(0, 1),
    lost=st.integers(0, 60),
    batch_size=st.sampled_from([1, 7, 64, 1024]),
)
async def test_a_restart_from_a_checkpoint_ends_equal_to_one_pass(
    tmp_path: Path, n: int, cut: float, lost: int, batch_size: int
) -> None:
    rows = events(n, seed=n)
    directory = tmp_path / uuid.uuid4().hex
    at = int(n * cut)
    async with runtime(directory) as rt:
        await consume(rt, ListSource(rows), batch_size=batch_size, until=at)
        await rt.checkpoint()
        # read on, then "crash": no checkpoint holds these records, so they are read again
        await consume(rt, ListSource(rows), batch_size=batch_size, until=lost)
    async with runtime(directory) as rt:
        assert rt.offset == ({"list": at} if at else None)
        result = await consume(rt, ListSource(rows), batch_size=batch_size)
        assert result.records == n - at
        assert await values_of(rt) == await direct(rows)


async def test_a_full_runtime_stops_the_reading_until_it_has_room() -> None:
    # a "block" subscription nobody reads fills up: ingest waits, so consume reads no further
    source = Recording(events(5000))
    async with runtime(batch_size=16, mailbox_capacity=1) as rt:
        updates = rt.updates(buffer=1, policy="block")
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(consume, rt, source, batch_size=50))
            await anyio.sleep(0.2)
            stalled = source.reads
            await anyio.sleep(0.1)
            assert source.reads == stalled < 10
            await updates.aclose()  # room again: the rest goes in
        assert source.reads == 101 and rt.offset == {"list": 5000}


async def test_a_runtime_with_workers_consumes_and_checkpoints_positions(tmp_path: Path) -> None:
    rows = events(600)
    async with runtime(tmp_path / "cp", workers=1) as rt:
        await consume(rt, ListSource(rows), batch_size=100, until=300)
        assert (await rt.checkpoint()).offset == {"list": 300}
    async with runtime(tmp_path / "cp", workers=1) as rt:
        assert (await consume(rt, ListSource(rows), batch_size=100)).records == 300
        assert await values_of(rt) == await direct(rows)


async def test_a_cancelled_consume_ingests_the_batch_in_hand_with_its_position() -> None:
    rows = events(20_000)
    async with runtime(batch_size=16, mailbox_capacity=1) as rt:
        updates = rt.updates(buffer=1, policy="block")

        async def make_room_later() -> None:
            await anyio.sleep(0.3)
            await updates.aclose()

        async with anyio.create_task_group() as tg:
            tg.start_soon(make_room_later)
            with anyio.move_on_after(0.1):  # while a batch waits for room
                await consume(rt, ListSource(rows), batch_size=200)
        reached = rt.offset["list"]
        assert 0 < reached < 20_000 and reached % 200 == 0
        assert rt.position == reached  # no event ingested without its position
        await consume(rt, ListSource(rows))
        assert await values_of(rt) == await direct(rows)


class Watched(ListSource):
    """Notes the runtime's position when each read starts."""

    def __init__(self, rows: list[Any], rt: Any) -> None:
        super().__init__(rows)
        self.rt = rt
        self.positions_at_read: list[int] = []

    async def read(self, max_records: int) -> SourceBatch | None:
        self.positions_at_read.append(self.rt.position)
        await anyio.sleep(0.001)  # a broker's round trip
        return await super().read(max_records)


async def test_the_next_read_goes_while_a_batch_is_ingested() -> None:
    rows = events(300)
    async with runtime() as rt:
        source = Watched(rows, rt)
        result = await rt.consume(source, batch_size=100)
        assert result.accepted == 300
        # the second read started before the first batch went in: read ahead
        assert source.positions_at_read[:2] == [0, 0]
        assert await values_of(rt) == await direct(rows)


async def test_no_read_ahead_past_a_count_or_after_nothing_new() -> None:
    rows = events(250)
    async with runtime() as rt:
        counted = ListSource(rows)
        result = await rt.consume(counted, batch_size=100, until=150)
        assert (result.records, counted.next) == (150, 150)  # nothing read past the count
        live = Live(rows[:100])
        live.name = "live2"
        result = await rt.consume(live, batch_size=64, until="idle")
        assert result.records == 100 and live.empty_reads == 1


class SlowCommits(Recording):
    """Commits that take a broker's round trip, or fail from the ``fail_at``-th on."""

    def __init__(self, rows: list[Any], fail_at: int | None = None) -> None:
        super().__init__(rows)
        self.fail_at = fail_at
        self.reads_while_committing = 0
        self.committing = False

    async def read(self, max_records: int) -> SourceBatch | None:
        self.reads_while_committing += self.committing
        return await super().read(max_records)

    async def commit(self, position: Any) -> None:
        if self.fail_at is not None and len(self.commits) + 1 >= self.fail_at:
            raise ConnectionError("the broker went away")
        self.committing = True
        try:
            await anyio.sleep(0.01)
        finally:
            self.committing = False
        await super().commit(position)


async def test_a_commit_goes_on_while_the_next_batches_are_read_and_ingested() -> None:
    rows = events(500)
    source = SlowCommits(rows)
    async with runtime() as rt:
        result = await consume(rt, source, batch_size=20)
        assert result.accepted == 500
        assert await values_of(rt) == await direct(rows)
    assert source.reads_while_committing > 0  # the loop did not wait for the commits
    # in order, each newer than the one before, the last batch's at the end
    assert source.commits == sorted(set(source.commits)) and source.commits[-1] == 500


async def test_a_commit_that_fails_stops_consume_with_its_error() -> None:
    source = SlowCommits(events(500), fail_at=2)
    async with runtime() as rt:
        with pytest.raises(ConnectionError, match="the broker went away"):
            await consume(rt, source, batch_size=20)
        assert source.commits == [20]


class FailingLive(Live):
    """A live source whose commits fail."""

    async def commit(self, position: Any) -> None:
        raise ConnectionError("the broker went away")


async def test_a_failed_commit_stops_consume_of_a_live_source_with_nothing_new() -> None:
    source = FailingLive(events(20))
    async with runtime() as rt:
        with anyio.fail_after(5), pytest.raises(ConnectionError, match="went away"):
            await consume(rt, source, batch_size=100)  # "end": forever on a live source


async def test_two_loops_on_one_source_name_at_once_are_refused() -> None:
    rows = events(50)
    async with runtime() as rt:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume, rt, Live(rows))  # named "live", endless
            with anyio.fail_after(10):
                while rt.offset is None:
                    await anyio.sleep(0.01)
            with pytest.raises(ConfigError, match="'live' is read into this runtime already"):
                await consume(rt, ListSource(rows, name="live"))
            tasks.cancel_scope.cancel()
        # once the first ended, the name is free again
        result = await consume(rt, ListSource([], name="live"))
        assert result.records == 0
