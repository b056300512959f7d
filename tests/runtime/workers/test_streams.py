"""Several streams and joins with workers: the front routes each stream's events by the key
field (all streams share it), so a key's events of every stream reach one worker in the order
they came, tagged with their stream; a join's records come back to the front and
``rt.join_records()`` reads them as in process. Values, updates (of the streams' groups and of
the join's records' group) and the records equal those of an in-process runtime, whatever
the streams' events are given as (one call per stream, one call of mixed streams, bytes); and
a worker killed mid-stream is restored and replayed with no record lost or repeated."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime import CheckpointConfig, Count, FeatureRuntime, FeatureSet, Join, Sum

FEATURE_SET = FeatureSet(
    name="j",
    key="ad",
    time="ts",
    max_out_of_orderness=300,
    streams=["imps", "clicks"],
    joins=[
        Join(name="ic", left="imps", right="clicks", after=500),
        Join(name="outer", left="imps", right="clicks", before=100, after=100, how="left"),
    ],
    features=[
        Count(name="imps", stream="imps"),
        Sum(name="spent", field="cost", stream="clicks"),
        Count(name="matched", stream="ic"),
    ],
)
T0 = 1_000_000
KEYS = 30


def _events(count: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` events of both streams, interleaved, out of order by up to 200 ms."""
    events, streams = [], []
    for i in range(count):
        stream = "clicks" if (i * 7 + seed) % 3 == 0 else "imps"
        event: dict[str, Any] = {
            "ad": f"a{(i * 11 + seed) % KEYS}",
            "ts": T0 + i * 5 - ((i * 37 + seed) % 200),
        }
        if stream == "clicks":
            event["cost"] = (i * 13 + seed) % 17
        events.append(event)
        streams.append(stream)
    return events, streams


def _records(batches: list[Any]) -> dict[tuple[str, Any], list[Any]]:
    """Per join and key, its records in the order they came."""
    found: dict[tuple[str, Any], list[Any]] = {}
    for batch in batches:
        for record in batch:
            found.setdefault((record.join, record.key), []).append(record.record)
    return found


async def _drain(subscription: Any) -> list[Any]:
    batches = []
    iterator = aiter(subscription.batches())
    while subscription.statistics().depth:
        batches.append(await anext(iterator))
    return batches


def _updates(batches: list[Any]) -> dict[tuple[Any, str], list[Any]]:
    found: dict[tuple[Any, str], list[Any]] = {}
    for batch in batches:
        for update in batch:
            found.setdefault((update.key, update.group), []).append(
                (update.event_time, update.values)
            )
    return found


async def _run(
    events: list[Any], streams: list[str], how: str, **options: Any
) -> tuple[Any, Any, Any, Any]:
    async with FeatureRuntime(FEATURE_SET, batch_size=16, **options) as rt:
        updates = rt.updates(buffer=1_000_000)
        records = rt.join_records(buffer=1_000_000)
        outer = rt.join_records("outer", buffer=1_000_000)
        if how == "mixed":
            assert await rt.ingest_many(events, stream=streams) == len(events)
        else:
            for start in range(0, len(events), 40):
                for event, stream in zip(
                    events[start : start + 40], streams[start : start + 40], strict=True
                ):
                    assert await rt.ingest(event, stream=stream)
        await rt.flush()
        vectors = await rt.get_many([f"a{k}" for k in range(KEYS)])
        values = {key: v.values for key, v in vectors.items()}
        return (
            values,
            _updates(await _drain(updates)),
            _records(await _drain(records)),
            _records(await _drain(outer)),
        )


@pytest.mark.parametrize("how", ["mixed", "one by one"])
async def test_joins_over_workers_give_the_values_updates_and_records_of_one_process(
    how: str,
) -> None:
    events, streams = _events(600)
    want = await _run(events, streams, how)
    assert want[2] and want[3]  # the joins matched, and the outer join has unmatched rows
    assert any(None in (r["right_event_timestamp"],) for rs in want[3].values() for r in rs)
    got = await _run(events, streams, how, workers=2, shards=3)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2] == want[2]
    assert got[3] == want[3]


async def test_events_of_several_streams_as_bytes_are_routed_by_their_key() -> None:
    events, streams = _events(300)
    want = await _run(events, streams, "mixed")
    payloads = [msgspec.json.encode(event) for event in events]
    got = await _run(payloads, streams, "mixed", workers=2, shards=1)
    assert got == want


async def test_join_records_of_an_unknown_join_are_refused() -> None:
    async with FeatureRuntime(FEATURE_SET, workers=1) as rt:
        with pytest.raises(ValueError, match="no join named 'nope'"):
            rt.join_records("nope")


async def test_a_worker_killed_mid_stream_repeats_and_loses_no_join_record(
    tmp_path: Path,
) -> None:
    events, streams = _events(1500, seed=3)
    want = await _run(events, streams, "mixed")
    config = CheckpointConfig(directory=str(tmp_path), interval=None)
    async with FeatureRuntime(
        FEATURE_SET, workers=2, shards=2, batch_size=16, checkpoints=config
    ) as rt:
        front = rt._front
        assert front is not None
        updates = rt.updates(buffer=1_000_000)
        records = rt.join_records(buffer=1_000_000)
        killed = []
        for index, start in enumerate(range(0, len(events), 150)):
            await rt.ingest_many(events[start : start + 150], stream=streams[start : start + 150])
            if index == 3:
                await rt.checkpoint()
            if index in (5, 8):
                pid = front.pids[index % 2]
                assert pid is not None
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)
        await rt.flush()
        assert not set(killed) & set(front.pids)  # both workers were started again
        vectors = await rt.get_many([f"a{k}" for k in range(KEYS)])
        assert {key: v.values for key, v in vectors.items()} == want[0]
        assert _updates(await _drain(updates)) == want[1]
        got = _records(await _drain(records))
    assert got == want[2]  # every record once: none lost, none twice
