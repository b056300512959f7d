"""Event times given in ms (the default ``time_unit``) but before 2000 are most likely seconds:
they are accepted (a time before 2000 may be meant) and a warning says so, once, with the
time, the date it reads as and the option that reads seconds."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Count, FeatureRuntime, FeatureSet, Sliding


def _feature_set(**options: Any) -> FeatureSet:
    return FeatureSet(
        name="p",
        key="card",
        time="ts",
        features=[Count(name="c10s", window=Sliding(size="10s"))],
        **options,
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event_times_before_2000" in r.getMessage()]


@pytest.mark.parametrize("single", [False, True])
async def test_times_in_seconds_are_said_once(
    caplog: pytest.LogCaptureFixture, single: bool
) -> None:
    events = [{"card": "c1", "ts": 1_700_000_000 + 3600 * i} for i in range(3)]
    async with FeatureRuntime(_feature_set()) as rt:
        if single:
            for event in events:
                assert await rt.ingest(event)
        else:
            assert await rt.ingest_many(events) == 3
        await rt.flush()
        # accepted as ms: the three land in one 10 s window (what the warning is about)
        assert (await rt.get("c1")).values["c10s"] == 3
    said = _warnings(caplog)
    assert len(said) == 1, said
    assert "time_unit='s'" in said[0] and "1970-01-20" in said[0] and "field='ts'" in said[0]


@pytest.mark.parametrize(
    ("options", "ts"),
    [
        ({}, 1_700_000_000_000),
        ({"time_unit": "s"}, 1_700_000_000),
        # a time before 2000 given as a time (not a number) is what it says
        ({}, "1995-06-01T12:00:00Z"),
    ],
)
async def test_times_in_their_unit_say_nothing(
    caplog: pytest.LogCaptureFixture, options: dict[str, Any], ts: Any
) -> None:
    times = [ts] * 10 if isinstance(ts, str) else [ts + i for i in range(10)]
    async with FeatureRuntime(_feature_set(**options)) as rt:
        assert await rt.ingest_many([{"card": "c1", "ts": t} for t in times]) == 10
        assert await rt.ingest({"card": "c2", "ts": ts})
        await rt.flush()
    assert _warnings(caplog) == []
