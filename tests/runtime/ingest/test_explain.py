"""Ingest tells why (issue 20, item 5): ``ingest(..., explain=True)`` and
``ingest_many(..., explain=True)`` return an ``IngestResult``: the events accepted and, for each
one refused, its index, the field at fault and the reason, the same as its dead letter gives.

A random mix of good and bad events (every kind of ``test_bad_input``'s catalogue, as dicts or
bytes, JSON or MessagePack) on several shard counts: the rejections are exactly the bad events,
in order, with the dead letters' fields and reasons, and each bad event is in dead letters once.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    Count,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    IngestResult,
    Rejection,
)

from .test_bad_input import BAD, ENCODE, FEATURE_SET, T0, good_events


def _timeless(reason: str) -> str:
    return re.sub(r"is [0-9dhms]+ (ahead of|behind) the wall clock", r"is _ \1", reason)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(
        st.one_of(
            good_events().map(lambda good: ("good", good)),
            st.sampled_from(sorted(BAD)).map(lambda kind: ("bad", kind)),
        ),
        max_size=40,
    ),
    shards=st.sampled_from([1, 3]),
    fmt=st.sampled_from(["json", "msgpack"]),
    singles=st.sets(st.integers(min_value=0, max_value=39)),
)
async def test_explain_gives_each_refused_event_its_index_field_and_reason(
    stream: list[tuple[str, Any]], shards: int, fmt: str, singles: set[int]
) -> None:
    payloads: list[Any] = []
    bad: list[int] = []
    for index, (what, item) in enumerate(stream):
        if what == "good":
            form, event = item
            payloads.append(event if form == "dict" else ENCODE[fmt](event))
        else:
            payloads.append(BAD[item].make(fmt))
            bad.append(index)
    results: list[tuple[int, IngestResult]] = []  # (index of the first event, result)
    with anyio.fail_after(30):
        async with FeatureRuntime(
            FEATURE_SET,
            shards=shards,
            batch_size=4,
            payload_format=fmt,  # type: ignore[arg-type]
        ) as rt:
            start, pending = 0, []
            for index, payload in enumerate(payloads):
                if index in singles:
                    results.append((start, await rt.ingest_many(pending, explain=True)))
                    results.append((index, await rt.ingest(payload, explain=True)))
                    start, pending = index + 1, []
                else:
                    pending.append(payload)
            results.append((start, await rt.ingest_many(iter(pending), explain=True)))
            stats = await rt.statistics()
            letters = rt.dead_letters.letters()
    rejections = [
        Rejection(first + r.index, r.field, r.reason)
        for first, result in results
        for r in result.rejections
    ]
    assert sum(result.accepted for _, result in results) == len(stream) - len(bad)
    assert stats.events_rejected == len(bad)  # each bad event counted, and recorded, once
    assert [r.index for r in rejections] == bad
    assert len(letters) == len(bad)
    for rejection, letter in zip(rejections, letters, strict=True):
        assert letter.reason is DeadLetterReason.REJECTED
        assert rejection.field == letter.error.field
        # the same reason, but for how far a time is from the wall clock, measured at each read
        assert _timeless(rejection.reason) == _timeless(str(letter.error))
        kind = BAD[stream[rejection.index][1]]
        assert rejection.field == kind.field
        assert kind.words in rejection.reason
    for _, result in results:
        assert result.ok is (not result.rejections)


async def test_a_service_answers_422_with_the_reason() -> None:
    """What a request handler does with one event."""

    async def handle(rt: FeatureRuntime, body: bytes) -> tuple[int, dict[str, Any]]:
        result = await rt.ingest(body, explain=True)
        if not result.ok:
            why = result.rejections[0]
            return 422, {"field": why.field, "reason": why.reason}
        return 202, {}

    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert await handle(rt, b'{"card": "c1", "ts": %d, "amount": 3}' % T0) == (202, {})
        assert await handle(rt, b'{"card": "c1", "amount": 3}') == (
            422,
            {"field": "ts", "reason": "time field 'ts' is missing or null"},
        )
        code, body = await handle(rt, b'{"card": ')
        assert code == 422 and body["field"] is None
        assert body["reason"].startswith("cannot decode json payload")
        assert await rt.ingest({"card": "c1", "ts": T0}, explain=False) is True
        assert (await rt.get("c1"))["n"] == 2


async def test_explain_reports_values_state_cannot_keep_and_events_of_several_streams() -> None:
    feature_set = FeatureSet(
        name="kept",
        key="card",
        time="ts",
        streams=["a", "b"],
        features=[
            Count(name="n_a", stream="a"),
            DistinctCount(name="merchants", field="merchant", stream="b"),
        ],
    )
    events = [
        {"card": "c1", "ts": T0, "merchant": "m1"},
        {"card": "c1", "ts": T0 + 1, "merchant": object()},  # state cannot keep it
        {"card": "c1", "ts": T0 + 2, "merchant": object()},  # stream a keeps no merchant
        {"card": 1.5, "ts": T0 + 3},
    ]
    async with FeatureRuntime(feature_set, shards=2) as rt:
        result = await rt.ingest_many(events, stream=iter(["b", "b", "a", "a"]), explain=True)
        assert result.accepted == 2
        assert [(r.index, r.field) for r in result.rejections] == [(1, "merchant"), (3, "card")]
        assert rt.dead_letters.count(DeadLetterReason.REJECTED) == 2
        one = await rt.ingest(events[1], stream="b", explain=True)
        assert one == IngestResult(0, (Rejection(0, "merchant", result.rejections[0].reason),))
        assert (await rt.ingest(events[0], stream="a", explain=True)) == IngestResult(1)
        vector = await rt.get("c1")
        assert (vector["n_a"], vector["merchants"]) == (2, 1)


@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])
async def test_explain_with_workers() -> None:
    async with FeatureRuntime(FEATURE_SET, shards=2, workers=1) as rt:
        result = await rt.ingest_many(
            [{"card": "c1", "ts": T0}, {"card": "c1"}, {"card": "c2", "ts": T0}], explain=True
        )
        assert result == IngestResult(
            2, (Rejection(1, "ts", "time field 'ts' is missing or null"),)
        )
        assert (await rt.ingest({"ts": T0}, explain=True)).rejections[0].field == "card"
        await rt.flush()
        assert (await rt.get("c1"))["n"] == 1
