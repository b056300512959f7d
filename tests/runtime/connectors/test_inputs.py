"""``FeatureRuntime(inputs=[...])``: the runtime consumes its sources itself, from its start
(after a restore, from the checkpoint's positions) until each ends or the runtime stops; it
closes them; ``wait_inputs`` returns what each consumed; an input that fails stops alone and
its error is raised by ``wait_inputs`` or, failing that, by leaving the ``async with`` block;
bad ``inputs`` are refused when the runtime is made. The broker inputs are tested in
``source_cases.py``, against each broker."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from actors import DeadLetterReason
from runtime import (
    CheckpointConfig,
    ConfigError,
    ConsumeResult,
    FeatureRuntime,
    Input,
    JsonLinesSource,
    RuntimeClosed,
    Source,
    SourceBatch,
)

from .common import FEATURE_SET, direct, events, runtime, values_of, write
from .test_consume import ListSource, Live, Recording


class Closed(ListSource):
    """A list source that says whether it was closed."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True


class Breaks(ListSource):
    """A list source whose second read raises."""

    async def read(self, max_records: int) -> SourceBatch | None:
        if self.next:
            raise ConnectionError("the broker went away")
        return await super().read(max_records)


class ClosesSlowly(ListSource):
    """A list source whose close awaits (as a file source's does, for its lock)."""

    closed = False

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.closed = True


class SlowRead(ListSource):
    """A list source whose reads past its end take ``delay`` seconds, shielded (as a broker
    read that waits for a broker gone quiet, bounded by its own timeout)."""

    delay = 0.001

    async def read(self, max_records: int) -> SourceBatch | None:
        if self.next >= len(self.events):
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self.delay)
            return SourceBatch([], self.next)
        return await super().read(max_records)


async def failed(rt: FeatureRuntime, count: int = 1) -> None:
    """Until ``count`` inputs of ``rt`` failed (and nothing raised their errors yet)."""
    with anyio.fail_after(10):
        while len(rt._inputs._untold()) < count:
            await anyio.sleep(0.01)


async def test_a_file_input_is_read_to_its_end_with_the_values_of_direct_ingest(
    tmp_path: Path,
) -> None:
    rows = events(300)
    path = write("jsonl", tmp_path / "tx.jsonl", rows)
    async with runtime(inputs=[JsonLinesSource(path)]) as rt:
        [result] = await rt.wait_inputs()
        assert (result.records, result.accepted, result.rejected, result.ended) == (
            300,
            300,
            0,
            True,
        )
        assert rt.offset == {f"jsonl:{path}": result.position}
        assert await values_of(rt) == await direct(rows)


async def test_two_inputs_feed_one_runtime_and_are_closed_when_it_stops() -> None:
    rows = events(400)
    first = Closed([r for r in rows if r["card"] in ("c1", "c2")], name="a")
    second = Closed([r for r in rows if r["card"] in ("c3", "c4")], name="b")
    async with runtime(inputs=[first, Input(second, batch_size=7)]) as rt:
        results = await rt.wait_inputs()
        assert [r.accepted for r in results] == [len(first.events), len(second.events)]
        assert results[1].batches == -(-len(second.events) // 7)
        assert rt.offset == {"a": len(first.events), "b": len(second.events)}
        assert await values_of(rt) == await direct(rows)
        assert not first.closed and not second.closed
    assert first.closed and second.closed


async def test_a_restarted_runtime_goes_on_from_the_checkpoints_positions(
    tmp_path: Path,
) -> None:
    rows = events(300)
    async with runtime(tmp_path, inputs=[ListSource(rows[:200])]) as rt:
        await rt.wait_inputs()
        await rt.checkpoint()
    # the same input, grown: only what the checkpoint does not hold is read
    async with runtime(tmp_path, inputs=[ListSource(rows)]) as rt:
        [result] = await rt.wait_inputs()
        assert (result.records, result.position) == (100, 300)
        assert await values_of(rt) == await direct(rows)


async def test_a_live_input_is_stopped_when_the_runtime_stops() -> None:
    rows = events(100)
    live = Live(rows)
    started = time.monotonic()
    async with runtime(inputs=[live]) as rt:
        with anyio.fail_after(10):
            while rt.offset is None or rt.offset["live"] < len(rows):
                await anyio.sleep(0.01)
        assert await values_of(rt) == await direct(rows)
    assert time.monotonic() - started < 5
    assert live.empty_reads > 0  # it was still reading, and stopped


async def test_a_failed_input_stops_alone_and_wait_inputs_raises_its_error() -> None:
    rows = events(200)
    broken = Breaks(rows[:50], name="broken")
    fine = ListSource(rows[50:], name="fine")
    async with runtime(inputs=[Input(broken, batch_size=10), fine]) as rt:
        with pytest.raises(ConnectionError, match="the broker went away"):
            await rt.wait_inputs()
        # the runtime goes on, and so do the other inputs
        with anyio.fail_after(10):
            while (rt.offset or {}).get("fine") != len(fine.events):
                await anyio.sleep(0.01)
        await rt.ingest(dict(rows[0]))
        assert rt.offset["broken"] == 10
    # raised once: leaving the block does not raise it again


async def test_a_failed_input_nobody_waited_for_is_raised_when_the_block_ends() -> None:
    broken = Breaks(events(50), name="broken")
    with pytest.raises(ConnectionError, match="the broker went away"):
        async with runtime(inputs=[Input(broken, batch_size=10)]) as rt:
            await failed(rt)


async def test_an_error_of_the_block_is_not_replaced_by_an_inputs_but_names_it() -> None:
    broken = Breaks(events(50), name="broken")
    with pytest.raises(KeyError) as caught:
        async with runtime(inputs=[Input(broken, batch_size=10)]) as rt:
            await failed(rt)
            raise KeyError("the application's own")
    assert caught.value.__notes__ == [
        "an input of the runtime failed too: ConnectionError('the broker went away')"
    ]


async def test_wait_inputs_needs_inputs_and_a_running_runtime() -> None:
    rt = runtime(inputs=[ListSource(events(5))])
    with pytest.raises(RuntimeClosed):
        await rt.wait_inputs()
    async with runtime() as plain:
        with pytest.raises(RuntimeError, match="no inputs"):
            await plain.wait_inputs()


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        ([object()], TypeError, "each item must be a Source"),
        (ListSource([]), TypeError, "put it in a list"),
        ([Input(object())], TypeError, "Input.source must be a Source"),  # type: ignore[arg-type]
        ([ListSource([]), ListSource([])], ConfigError, "two sources are named 'list'"),
        ([ListSource([], name="")], ConfigError, "name must be a non-empty str"),
        ([Input(ListSource([]), batch_size=0)], ValueError, "batch_size must be an int >= 1"),
        ([Input(ListSource([]), stream="clicks")], ValueError, "no stream named 'clicks'"),
    ],
)
def test_bad_inputs_are_refused_when_the_runtime_is_made(
    inputs: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        FeatureRuntime(FEATURE_SET, inputs=inputs)


def test_a_source_that_cannot_feed_the_feature_set_is_refused_when_the_runtime_is_made(
    tmp_path: Path,
) -> None:
    path = write("csv", tmp_path / "tx.csv", events(3))
    # a "time" column converted to seconds, where the feature set counts milliseconds
    source = JsonLinesSource(path, schema={"ts": "time"}, time_unit="s")
    with pytest.raises(ConfigError):
        FeatureRuntime(FEATURE_SET, inputs=[source])


async def test_with_workers_a_file_input_gives_the_values_of_direct_ingest(
    tmp_path: Path,
) -> None:
    rows = events(300)
    path = write("jsonl", tmp_path / "tx.jsonl", rows)
    async with FeatureRuntime(
        FEATURE_SET, shards=2, workers=1, inputs=[JsonLinesSource(path)]
    ) as rt:
        [result] = await rt.wait_inputs()
        assert result == ConsumeResult(
            records=300, accepted=300, rejected=0, batches=1, position=[str(path), 300], ended=True
        )
        assert await values_of(rt) == await direct(rows)


def test_an_input_is_a_source_with_how_to_read_it() -> None:
    source: Source = ListSource([])
    assert Input(source) == Input(source, stream=None, batch_size=1024)


async def test_the_blocks_error_is_raised_and_a_source_whose_close_awaits_is_closed(
    tmp_path: Path,
) -> None:
    path = write("jsonl", tmp_path / "tx.jsonl", events(20))
    slow = ClosesSlowly(events(20), name="slow")
    with pytest.raises(KeyError, match="the application's own"):
        async with runtime(inputs=[JsonLinesSource(path), slow]) as rt:
            await rt.wait_inputs()
            raise KeyError("the application's own")
    assert slow.closed


async def test_a_missing_file_is_raised_by_wait_inputs_and_not_lost_at_exit(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError):
        async with runtime(inputs=[JsonLinesSource(tmp_path / "nothing.jsonl")]) as rt:
            await rt.wait_inputs()


class FailsWithASecret(ListSource):
    """A list source whose read fails while a local holds a password (as a broker client's
    frames hold the URL it was given)."""

    async def read(self, max_records: int) -> SourceBatch | None:
        url = "redis://:s3cret@127.0.0.1:6390/0"  # noqa: F841 (a local a traceback could show)
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6390")


async def test_a_failed_input_is_logged_without_locals_and_named_on_its_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The failure goes through the stdlib logger (the application's logging setup, not
    structlog's own renderer, whose tracebacks show local variables), with the error; the
    exception raised names the input's source in a note (a client's error names none)."""
    source = FailsWithASecret(events(3), name="orders")
    with pytest.raises(ConnectionError) as raised:
        async with runtime(inputs=[source]) as rt:
            await rt.wait_inputs()
    assert "raised by the input reading source 'orders'" in raised.value.__notes__
    records = [r for r in caplog.records if r.name == "featurist.inputs"]
    assert records and records[0].levelname == "ERROR"
    assert "error='ConnectionError: Error 111 connecting to 127.0.0.1:6390'" in (
        records[0].getMessage()
    )
    assert "s3cret" not in caplog.text


async def test_every_failure_is_raised_once_and_wait_inputs_does_not_spin() -> None:
    a, b = Breaks(events(30), name="a"), Breaks(events(30), name="b")
    async with runtime(inputs=[Input(a, batch_size=10), Input(b, batch_size=10)]) as rt:
        await failed(rt, 2)
        raised = set()
        for _ in range(2):
            with pytest.raises(ConnectionError):
                try:
                    await rt.wait_inputs()
                except ConnectionError as error:
                    raised.add(id(error))
                    raise
        assert len(raised) == 2
        # every input ended, each failure raised: no result of either, at once
        with anyio.fail_after(1):
            assert await rt.wait_inputs() == [None, None]
    # told: leaving the block raises nothing more


async def test_failures_nobody_waited_for_are_raised_together_when_the_block_ends() -> None:
    a, b = Breaks(events(30), name="a"), Breaks(events(30), name="b")
    with pytest.raises(ExceptionGroup) as caught:
        async with runtime(inputs=[Input(a, batch_size=10), Input(b, batch_size=10)]) as rt:
            await failed(rt, 2)
    assert [type(e) for e in caught.value.exceptions] == [ConnectionError, ConnectionError]


async def test_a_slow_read_at_exit_leaves_the_runtime_its_last_checkpoint(tmp_path: Path) -> None:
    rows = events(100)
    source = SlowRead(rows, name="slow")
    config = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=True)
    rt = FeatureRuntime(
        FEATURE_SET, shards=2, shutdown_timeout=1.0, checkpoints=config, inputs=[source]
    )
    async with rt:
        with anyio.fail_after(10):
            while (rt.offset or {}).get("slow") != len(rows):
                await anyio.sleep(0.01)
        source.delay = 2.0  # the next read outlives half the shutdown timeout
        await anyio.sleep(0.05)
    assert rt.last_checkpoint is not None
    assert rt.last_checkpoint.offset == {"slow": len(rows)}


async def test_the_last_checkpoints_positions_are_committed_before_the_sources_close(
    tmp_path: Path,
) -> None:
    rows = events(100)
    source = Recording(rows, name="rec")
    config = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=True)
    async with FeatureRuntime(FEATURE_SET, shards=2, checkpoints=config, inputs=[source]) as rt:
        await rt.wait_inputs()
        assert source.commits == []  # no checkpoint holds them yet
    assert source.commits == [len(rows)]


class HangsAtTheEnd(ListSource):
    """A list source whose commits, once ``hang`` is set, and close never end by themselves
    (a broker gone quiet, a client without a timeout of its own)."""

    hang = False

    async def commit(self, position: Any) -> None:
        if self.hang:
            await anyio.sleep(3600)

    async def aclose(self) -> None:
        await anyio.sleep(3600)


async def test_closing_the_sources_keeps_within_the_shutdown_deadline() -> None:
    sources = [HangsAtTheEnd(events(10), name=f"s{i}") for i in range(3)]
    rt = FeatureRuntime(FEATURE_SET, shards=2, shutdown_timeout=1.0, inputs=sources)
    async with rt:
        await rt.wait_inputs()
        for source in sources:
            source.hang = True
        began = time.monotonic()
    assert time.monotonic() - began < 2.0


async def test_a_batch_under_way_at_exit_is_ingested_whole_with_its_position(
    tmp_path: Path,
) -> None:
    """The inputs' half of the deadline runs out while one is inside its ingest (a full
    mailbox): the call goes on to its end, so the shutdown checkpoint holds its events with
    the position after them, and a restart counts each record once."""
    rows = events(400)
    live = Live(rows[:300])
    config = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=True)
    rt = FeatureRuntime(
        FEATURE_SET, shards=2, checkpoints=config, shutdown_timeout=1.0, inputs=[live]
    )
    slow = False
    async with rt:
        sent = rt._sent

        async def slow_sent(offset: Any) -> None:
            await sent(offset)
            if slow and offset is not None:
                await anyio.sleep(0.8)  # a full mailbox, say

        rt._sent = slow_sent  # type: ignore[method-assign]
        with anyio.fail_after(10):
            while (rt.offset or {}).get("live") != 300:
                await anyio.sleep(0.01)
        slow = True
        live.events.extend(rows[300:])  # a batch arrives as the block ends
        await anyio.sleep(0.05)
    info = rt.last_checkpoint
    assert info is not None and info.offset == {"live": 400} and info.position == 400
    again = Live(rows)
    restarted = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=False)
    async with FeatureRuntime(FEATURE_SET, shards=2, checkpoints=restarted, inputs=[again]) as rt:
        await rt.flush()
        assert await values_of(rt) == await direct(rows)


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_batch_held_by_backpressure_at_exit_does_not_hold_the_exit(
    tmp_path: Path, workers: int
) -> None:
    """An input's batch waits for room that never comes (a subscription nobody reads, in
    "block"): past the shutdown deadline the exit cuts the call short rather than wait for
    it. What was accepted and not sent goes to dead letters, no shutdown checkpoint is taken
    (it would hold part of the batch without its position), and a restart reads the batch
    again and counts each record once."""
    rows = events(20_000)
    source = Recording(rows)
    config = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=True)
    rt = FeatureRuntime(
        FEATURE_SET,
        shards=1,
        workers=workers,
        batch_size=64,
        mailbox_capacity=1,
        shutdown_timeout=0.5,
        checkpoints=config,
        inputs=[Input(source, batch_size=5_000)],
    )
    async with rt:
        _unread = rt.updates(buffer=10)  # the shard waits for its reader, ingest for room
        await anyio.sleep(0.3)
        began = time.monotonic()
    assert time.monotonic() - began < 2.0
    assert rt.last_checkpoint is None  # none taken at the shutdown
    assert source.commits == []  # no position committed: the batch is read again
    if not workers:
        cut = rt.dead_letters.letters(DeadLetterReason.UNDELIVERABLE)
        # the buffered events, and what the stopped shard's mailbox held
        assert {letter.detail for letter in cut} == {
            "accepted, but not sent to its shard before the shutdown deadline",
            "actor stopped",
        }
    again = Recording(rows)
    restarted = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=False)
    async with FeatureRuntime(FEATURE_SET, shards=2, checkpoints=restarted, inputs=[again]) as rt:
        await rt.wait_inputs()
        await rt.flush()
        assert await values_of(rt) == await direct(rows)


async def test_an_ingest_waiting_for_room_at_the_deadline_raises_runtime_closed() -> None:
    """A call of the application's own that waits for room when the deadline passes (shielded
    by its caller, as a batch with its offset must be) raises ``RuntimeClosed`` saying how
    many of its events were accepted; the exit keeps its deadline."""
    rt = FeatureRuntime(
        FEATURE_SET, shards=1, batch_size=64, mailbox_capacity=1, shutdown_timeout=0.5
    )
    raised: list[BaseException] = []

    async def feed(rt: FeatureRuntime) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await rt.ingest_many(events(20_000), offset=20_000)
            except RuntimeClosed as exc:
                raised.append(exc)

    began = 0.0
    async with anyio.create_task_group() as tasks:
        async with rt:
            _unread = rt.updates(buffer=10)  # never read
            tasks.start_soon(feed, rt)
            await anyio.sleep(0.3)
            began = time.monotonic()
        assert time.monotonic() - began < 2.0
    assert len(raised) == 1
    assert "shutdown deadline passed" in str(raised[0])
    assert re.search(r"\d+ of its events were accepted", str(raised[0]))
    assert rt.offset is None  # the call's offset is not recorded: it did not end


class SlowReads(ListSource):
    """A list source whose reads take 50 ms, saying while one is under way."""

    reading = False

    async def read(self, max_records: int) -> SourceBatch | None:
        self.reading = True
        try:
            await anyio.sleep(0.05)
            return await super().read(max_records)
        finally:
            self.reading = False


@pytest.mark.parametrize("on_shutdown", [True, False])
async def test_a_checkpoint_stuck_at_exit_does_not_hold_an_inputs_batch(
    tmp_path: Path, on_shutdown: bool
) -> None:
    """The application asks for a checkpoint while the input reads; its capture waits behind a
    subscription nobody reads, so the input's next batch waits at the checkpoint's gate
    (shielded by ``consume``, before it counts as under way). The exit cuts that wait as it
    begins (the call would be refused once the gate opens), and keeps its deadline, with a
    shutdown checkpoint to wait for or none."""
    source = SlowReads(events(20_000))
    config = CheckpointConfig(directory=str(tmp_path), interval=None, on_shutdown=on_shutdown)
    rt = FeatureRuntime(
        FEATURE_SET,
        shards=1,
        batch_size=64,
        mailbox_capacity=1,
        shutdown_timeout=0.5,
        checkpoints=config,
        inputs=[Input(source, batch_size=64)],
    )

    ended: list[BaseException] = []

    async def checkpoint() -> None:
        try:
            await rt.checkpoint()  # stuck, then ended by the shutdown
        except Exception as exc:
            ended.append(exc)

    began = 0.0
    async with anyio.create_task_group() as tasks:
        async with rt:
            _unread = rt.updates(buffer=10)
            shard = rt._topology.groups[0].refs[0]
            with anyio.fail_after(10):
                # the shard busy (waiting for the reader) while the input reads its next batch
                while True:
                    await anyio.sleep(0.001)
                    if source.reading:
                        await anyio.sleep(0.02)
                        if source.reading and not shard.idle:
                            break
            tasks.start_soon(checkpoint)
            await anyio.sleep(0.2)
            assert rt._progress.gate is not None  # the checkpoint is stuck, its gate closed
            began = time.monotonic()
        assert time.monotonic() - began < 2.0
        with anyio.fail_after(5):
            while not ended:
                await anyio.sleep(0.01)
    # the application's checkpoint says the runtime stopped under it
    assert len(ended) == 1 and isinstance(ended[0], RuntimeClosed), ended
    assert "stopped while the checkpoint was taken" in str(ended[0])


class MeetsAClosedRuntime(ListSource):
    """A list source whose first read meets the runtime stopped under it."""

    async def read(self, max_records: int) -> SourceBatch | None:
        raise RuntimeClosed("the runtime stopped: an actor failed (as escalation says)")


async def test_a_waiter_learns_at_once_that_the_runtime_stopped_under_its_inputs() -> None:
    closed = MeetsAClosedRuntime([], name="closed")
    async with runtime(inputs=[closed, Live(events(10))]) as rt:
        with anyio.fail_after(5), pytest.raises(RuntimeError, match="stopped under its inputs"):
            await rt.wait_inputs()  # not once the live input ends: it never does
