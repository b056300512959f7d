"""A worker forwards what its runtime's update buffer holds in one frame per group
(``_merged_updates``): the merged batch reads as the batches it merges, one after the other,
rows of other kinds (a window's close) and failed features included. (Why it merges: the
hub splits a batch into the room left in a full buffer, and a worker that forwarded each
piece alone fell behind on ever smaller pieces: docs/scaling.md, "Tuning workers and
shards".)"""

from __future__ import annotations

from typing import Any

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Join,
    JoinRecordBatch,
    Sum,
    Tumbling,
    UpdateBatch,
)
from runtime._workers.worker import _merged_records, _merged_updates

FEATURE_SET = FeatureSet(
    name="m",
    key="card",
    time="ts",
    features=[
        Sum(name="total", field="amount"),
        Sum(name="t_sum", field="amount", window=Tumbling(size=100)),
    ],
)


def _fields(update: Any) -> tuple[Any, ...]:
    return (
        update.key,
        update.event_time,
        update.values,
        update.errors,
        update.group,
        update.kind,
        update.window,
        update.parts,
    )


async def test_merged_batches_read_as_the_batches_one_after_the_other() -> None:
    events: list[dict[str, Any]] = [
        {"card": f"c{i % 3}", "ts": 1_000 + i * 40, "amount": "x" if i % 7 == 3 else i}
        for i in range(60)
    ]
    async with FeatureRuntime(FEATURE_SET, shards=3, batch_size=8) as rt:
        subscription = rt.updates(buffer=100_000)
        for start in range(0, len(events), 8):
            await rt.ingest_many(events[start : start + 8])
            await rt.flush()
        batches: list[Any] = []
        iterator = aiter(subscription.batches())
        while subscription.statistics().depth:
            batches.append(await anext(iterator))
    groups = {batch.group for batch in batches}
    assert len(groups) == 2
    for group in groups:
        mine = [batch for batch in batches if batch.group == group]
        assert len(mine) > 3
        frame = _merged_updates(mine)
        merged = UpdateBatch(
            frame.group,
            frame.names,
            frame.rows,
            frame.errors,
            frame.latency_ms,
            frame.processed_at,
            frame.extras,
        )
        # (each update's latency and processed_at are its batch's: the merged batch's
        # latency is the sum, its processed_at the last)
        assert [_fields(u) for u in merged] == [_fields(u) for b in mine for u in b]
        assert merged.processed_at == mine[-1].processed_at
        assert merged.kinds == [kind for batch in mine for kind in batch.kinds]
    kinds = {kind for batch in batches for kind in batch.kinds}
    assert "close" in kinds  # the windows' closes are rows of another kind
    assert any(batch.errors for batch in batches)  # the string amounts failed the sums


async def test_merged_join_records_read_as_the_batches_one_after_the_other() -> None:
    fs = FeatureSet(
        name="j",
        key="ad",
        time="ts",
        streams=["imps", "clicks"],
        joins=[Join(name="ic", left="imps", right="clicks", after=500, how="left")],
        features=[Count(name="n", stream="imps")],
    )
    events = [{"ad": f"a{i % 4}", "ts": 1_000 + i * 30} for i in range(80)]
    streams = ["clicks" if i % 3 == 0 else "imps" for i in range(80)]
    async with FeatureRuntime(fs, shards=2, batch_size=8) as rt:
        subscription = rt.join_records(buffer=100_000)
        for start in range(0, 80, 8):
            await rt.ingest_many(events[start : start + 8], stream=streams[start : start + 8])
            await rt.flush()
        batches: list[Any] = []
        iterator = aiter(subscription.batches())
        while subscription.statistics().depth:
            batches.append(await anext(iterator))
    assert len(batches) > 3
    frame = _merged_records(batches)
    merged = JoinRecordBatch(
        frame.join,
        frame.keys,
        frame.left_events,
        frame.right_events,
        frame.left_times,
        frame.right_times,
        frame.join_times,
        frame.time_differences,
        frame.processed_at,
        records=frame.records,
    )
    assert [(r.key, r.record) for r in merged] == [(r.key, r.record) for b in batches for r in b]
