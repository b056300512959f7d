"""Sinks and checkpoints: a checkpoint is written only once every sink attached with
``run_sink`` has written (and flushed) the updates of the events it covers, so that a crash
after the checkpoint cannot lose them (the restored state holds their events: they would not be
published again). In process and with workers; a failed sink does not hold checkpoints up."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import Sink, SinkError, UpdateBatch, run_sink

from .common import events, runtime

pytestmark = pytest.mark.anyio


class SlowSink(Sink):
    """Buffers what it is given; only ``flush`` makes it durable (as ParquetSink's row
    groups); each write takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.02, fail_after: int | None = None) -> None:
        self.name = "slow"
        self.delay = delay
        self.fail_after = fail_after
        self.buffered: list[tuple[Any, ...]] = []
        self.durable: list[tuple[Any, ...]] = []
        self.writes = 0

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        self.writes += 1
        if self.fail_after is not None and self.writes > self.fail_after:
            raise ConnectionError("the sink is gone")
        await anyio.sleep(self.delay)
        for batch in batches:
            self.buffered.extend(batch.rows)

    async def flush(self) -> None:
        self.durable.extend(self.buffered)
        self.buffered.clear()


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_checkpoint_waits_until_the_sink_holds_what_it_covers(
    tmp_path: Path, workers: int
) -> None:
    rows = events(3000)
    sink = SlowSink()
    async with runtime(tmp_path, workers=workers, batch_size=64) as rt:
        async with run_sink(rt, sink, buffer=200, max_batch=100):
            await rt.ingest_many(rows[:2000])
            info = await rt.checkpoint()
            # every update of the 2,000 events the checkpoint covers is durable in the sink
            assert info.position == 2000
            assert len(sink.durable) >= 2000
            assert sorted(r[1] for r in sink.durable[:2000]) == sorted(r["ts"] for r in rows[:2000])
            await rt.ingest_many(rows[2000:])
        assert len(sink.durable) == 3000


async def test_checkpoints_without_a_sink_do_not_wait_for_one_that_left(tmp_path: Path) -> None:
    sink = SlowSink()
    async with runtime(tmp_path) as rt:
        async with run_sink(rt, sink):
            await rt.ingest_many(events(100))
        written = len(sink.durable)
        await rt.ingest_many(events(100, seed=1))
        with anyio.fail_after(5):
            await rt.checkpoint()
        assert len(sink.durable) == written == 100


async def test_a_failed_sink_does_not_hold_checkpoints_up(tmp_path: Path) -> None:
    sink = SlowSink(delay=0, fail_after=1)
    async with runtime(tmp_path) as rt:
        with pytest.raises(SinkError):
            async with run_sink(rt, sink, max_attempts=2, backoff=0, buffer=50, max_batch=10):
                await rt.ingest_many(events(500))
                await anyio.sleep(1)  # the block is cancelled when the sink fails
        with anyio.fail_after(5):
            info = await rt.checkpoint()
        assert info.position == 500


async def test_no_checkpoint_passes_a_failed_sink_while_its_block_is_open(tmp_path: Path) -> None:
    sink = SlowSink(delay=0, fail_after=1)
    async with runtime(tmp_path) as rt:
        with pytest.raises(SinkError):
            async with run_sink(rt, sink, max_attempts=1, backoff=0, buffer=20, max_batch=10):
                with anyio.CancelScope(shield=True):  # the failure cancels the body: not yet
                    await rt.ingest_many(events(10))
                    await rt.flush()
                    await rt.ingest_many(events(10, seed=1))
                    with anyio.fail_after(5):
                        while sink.writes < 2:
                            await anyio.sleep(0.01)
                    with pytest.raises(SinkError):
                        await rt.checkpoint()  # it would cover updates the sink never wrote
        assert (await rt.checkpoint()).position == 20  # the block ended: the guard is gone
