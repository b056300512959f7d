"""Ints beyond 64 bits with workers: MessagePack cannot hold them, so the frames carry them as
an extension; a sum that outgrows 64 bits, and an event's big field, come back as in process
(before, the worker failed to encode its update and died, and the runtime with it)."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Count, FeatureRuntime, FeatureSet, Last, Sum
from runtime._workers.protocol import decoder, encode

pytestmark = pytest.mark.anyio

FEATURES = FeatureSet(
    name="big",
    key="k",
    time="ts",
    features=[Count(name="n"), Sum(name="total", field="x"), Last(name="last", field="x")],
)


def test_the_codec_round_trips_big_ints_anywhere() -> None:
    value: Any = {"a": [2**70, -(2**90), (1, 2**64)], "b": 5}
    assert decoder(Any).decode(encode(value)) == {"a": [2**70, -(2**90), [1, 2**64]], "b": 5}
    assert decoder(int).decode(encode(2**63)) == 2**63  # MessagePack's own range: no extension


@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])
async def test_sums_past_64_bits_with_workers_are_those_in_process() -> None:
    events = [{"k": f"k{i % 3}", "ts": 1_000 + i, "x": 2**62 + i} for i in range(30)]
    found = {}
    for workers in (0, 2):
        async with FeatureRuntime(FEATURES, shards=2, workers=workers) as rt:
            updates = rt.updates()
            await rt.ingest_many([dict(e) for e in events])
            await rt.ingest({"k": "k9", "ts": 5_000, "x": 2**100})  # a big field itself
            await rt.flush()
            await updates.aclose()
            rows = sorted([[u.key, u.event_time, u.values["total"]] async for u in updates])
            vectors = await rt.get_many(["k0", "k1", "k2", "k9"])
            found[workers] = (rows, {k: v.values for k, v in vectors.items()})
    assert found[2] == found[0]
    assert found[0][1]["k9"] == {"n": 1, "total": 2**100, "last": 2**100}
    assert found[0][1]["k0"]["total"] > 2**64
