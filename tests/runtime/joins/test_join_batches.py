"""A join's published batches (``JoinRecordBatch``): columns that agree with the records,
records built only when read yet the same as those built for the features of the join's
stream, slices, and iteration as ``JoinRecord``s; against the nested-loop oracle."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import Count, FeatureRuntime, FeatureSet, Join, JoinRecord, JoinRecordBatch
from runtime._joins.engine import JoinConfig

from ..support.join_oracle import oracle, pairs, streams


async def _published(
    join: Join, events: list[Any], batch_size: int, features: bool
) -> list[JoinRecordBatch]:
    """The batches ``rt.join_records()`` carries for ``events`` (``features``: with a
    feature of the join's stream, which makes the join build its records at once)."""
    fs = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["l", "r"],
        joins=[join],
        features=[Count(name="pairs", stream=join.name)] if features else [],
    )
    async with FeatureRuntime(fs, batch_size=batch_size) as rt:
        sub = rt.join_records(buffer=100_000)
        for key, t, side, ev in events:
            await rt.ingest({"ad": key, "ts": t, **ev}, stream="l" if side == "left" else "r")
        await rt.flush()
        await sub.aclose()
        return [batch async for batch in sub.batches()]


def _columns_agree(batch: JoinRecordBatch) -> None:
    records = batch.records
    assert len(batch) == len(records)
    assert batch.keys == [r["key"] for r in records]
    assert batch.left_times == [r["left_event_timestamp"] for r in records]
    assert batch.right_times == [r["right_event_timestamp"] for r in records]
    assert batch.join_times == [r["join_timestamp"] for r in records]
    assert batch.time_differences == [r["time_difference_ms"] for r in records]
    for r, left, right in zip(records, batch.left_events, batch.right_events, strict=True):
        # the events as ingested (routing key and time included), or None for the side an
        # unmatched row lacks
        assert (left is None) == (r["left_event_timestamp"] is None)
        assert (right is None) == (r["right_event_timestamp"] is None)
        if left is not None:
            assert left["ts"] == r["left_event_timestamp"] and left["id"] == r["left_id"]
        if right is not None:
            assert right["ts"] == r["right_event_timestamp"] and right["id"] == r["right_id"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=streams(),
    how=st.sampled_from(["inner", "left", "right", "full"]),
    on=st.sampled_from([(), ("c",)]),
    batch_size=st.sampled_from([1, 7, 64]),
    cut=st.integers(0, 10),
)
async def test_published_columns_agree_with_records_built_when_read(
    events: list[Any], how: str, on: tuple[str, ...], batch_size: int, cut: int
) -> None:
    join = Join(name="lr", left="l", right="r", before=10, after=30, how=how, on=on)  # type: ignore[arg-type]
    want, _ = oracle(JoinConfig(name="lr", before=10, after=30, how=how, on=on), events)  # type: ignore[arg-type]
    lazy = await _published(join, events, batch_size, features=False)
    eager = await _published(join, events, batch_size, features=True)
    for batches in (lazy, eager):
        assert pairs(r.record for batch in batches for r in batch) == want
        for batch in batches:
            # a slice before the records are read, then the whole batch, then a slice of it
            # with its records built
            first, rest = batch[:cut], batch[cut:]
            _columns_agree(first)
            _columns_agree(rest)
            _columns_agree(batch)
            assert first.records + rest.records == batch.records
            _columns_agree(batch[cut:])
            assert list(batch) == [
                JoinRecord("lr", r["key"], r, batch.processed_at) for r in batch.records
            ]
    # records built when read are the records built for the features, field order included
    assert [list(r.items()) for b in lazy for r in b.records] == [
        list(r.items()) for b in eager for r in b.records
    ]


def test_records_are_built_once_at_the_first_read() -> None:
    calls: list[int] = []

    def build(keys: list[Any], *columns: Any) -> list[dict[str, Any]]:
        calls.append(len(keys))
        return [{"key": key} for key in keys]

    keys, lefts, rights = ["a", "b"], [{}, None], [{}, {}]
    times = ([1, None], [3, 2], [3, 2], [2, None])
    batch = JoinRecordBatch("j", keys, lefts, rights, *times, 0.0, build=build)
    assert calls == [] and batch.join_times == [3, 2]
    assert batch.time_differences == [2, None]
    assert [r.key for r in batch] == ["a", "b"] and batch.records == [{"key": "a"}, {"key": "b"}]
    assert batch[1:].records == [{"key": "b"}]
    assert calls == [2]
