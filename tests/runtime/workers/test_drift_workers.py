"""Drift monitors with workers: they run in the application's process, on the updates the front
republishes, and per key they alert where they do in process."""

from __future__ import annotations

import anyio
import pytest

from runtime import DriftMonitor, FeatureRuntime

from ..drift.test_drift import PH, SENSORS, sensor_events

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])
async def test_per_key_alerts_with_workers_are_those_in_process() -> None:
    events = sensor_events({"s1": 2.0, "s2": 0.0, "s3": -2.0}, 1000, 500)
    found = {}
    for workers in (0, 2):
        async with FeatureRuntime(SENSORS, shards=2, workers=workers) as rt:
            alerts = rt.drift_alerts()
            await rt.monitor_drift(
                DriftMonitor(name="ph", feature="reading", detector=PH, segment="key")
            )
            await rt.ingest_many(events)
            await rt.flush()
            status = (await rt.drift_status())["ph"]
            got = []
            with anyio.fail_after(10):
                while len(got) < status.alerts:
                    got.append(await alerts.__anext__())
            assert status.values == 3000 and status.dropped == 0
            found[workers] = sorted((a.segment, a.event_time, a.score) for a in got)
    assert [segment for segment, _, _ in found[0]] == ["s1", "s3"]
    assert found[2] == found[0]
