"""``rt.register`` with workers: the features are registered in every worker at one point of
its events (they see the events accepted from then on), the front's feature set follows
(``get`` reads them), and a worker killed after registrations (before and after the last
checkpoint) registers them again at the same points: values and updates equal an
in-process run's."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from runtime import (
    CheckpointConfig,
    Count,
    FeatureRuntime,
    FeatureSet,
    Max,
    Sliding,
    SpecError,
    Sum,
)

FEATURE_SET = FeatureSet(
    name="g",
    key="card",
    time="ts",
    features=[Count(name="n"), Sum(name="total", field="amount")],
)
T0 = 1_000_000
KEYS = 20


def _events(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"card": f"c{(i * 7) % KEYS}", "ts": T0 + i * 5, "amount": i % 13}
        for i in range(start, start + count)
    ]


async def _drain(subscription: Any) -> dict[tuple[Any, str], list[Any]]:
    found: dict[tuple[Any, str], list[Any]] = {}
    iterator = aiter(subscription)
    for _ in range(subscription.statistics().depth):
        update = await anext(iterator)
        found.setdefault((update.key, update.group), []).append((update.event_time, update.values))
    return found


async def _run(kill: bool, tmp_path: Path | None = None, **options: Any) -> tuple[Any, Any]:
    if tmp_path is not None:
        options["checkpoints"] = CheckpointConfig(directory=str(tmp_path), interval=None)
    async with FeatureRuntime(FEATURE_SET, batch_size=16, **options) as rt:
        updates = rt.updates(buffer=1_000_000)
        await rt.ingest_many(_events(300))
        described = await rt.register(Max(name="top", field="amount"))
        assert [d.name for d in described] == ["top"]
        await rt.ingest_many(_events(300, 300))
        if tmp_path is not None:
            await rt.checkpoint()
        await rt.register(Sum(name="w_total", field="amount", window=Sliding(size=200)))
        await rt.ingest_many(_events(300, 600))
        if kill:
            front = rt._front
            assert front is not None
            for pid in front.pids:
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
        await rt.ingest_many(_events(300, 900))
        await rt.flush()
        assert rt.feature_set.names == ("n", "total", "top", "w_total")
        vectors = await rt.get_many([f"c{k}" for k in range(KEYS)])
        return (
            {key: v.values for key, v in vectors.items()},
            await _drain(updates),
        )


async def test_features_registered_over_workers_see_what_they_see_in_process() -> None:
    want = await _run(False)
    assert await _run(False, workers=2, shards=2) == want


async def test_workers_killed_after_registrations_register_them_again_in_place(
    tmp_path: Path,
) -> None:
    want = await _run(False)
    assert await _run(True, tmp_path, workers=2, shards=1) == want


async def test_a_feature_whose_name_is_taken_is_refused_at_the_front() -> None:
    async with FeatureRuntime(FEATURE_SET, workers=1) as rt:
        with pytest.raises(SpecError, match="duplicate feature name 'n'"):
            await rt.register(Count(name="n"))
        assert rt.feature_set.names == ("n", "total")


async def test_registered_state_pending_across_starts_with_workers_stays_readable(
    tmp_path: Path,
) -> None:
    """Each worker keeps its own share of a pending group's state: every worker carrying the
    whole state made two parts of the next checkpoint hold one key group, and no later
    checkpoint could be read."""
    config = CheckpointConfig(directory=str(tmp_path), interval=None)
    options: dict[str, Any] = {"workers": 2, "shards": 2, "checkpoints": config}
    events = _events(300)
    async with FeatureRuntime(FEATURE_SET, **options) as rt:
        await rt.register(Max(name="top", field="amount"))
        await rt.ingest_many(events)
        await rt.checkpoint()
    for _ in range(2):  # started without it: pending, carried in the checkpoints
        async with FeatureRuntime(FEATURE_SET, **options) as rt:
            await rt.checkpoint()
    async with FeatureRuntime(FEATURE_SET, **options) as rt:
        assert rt.restored is not None and rt.restored.sequence >= 4
        await rt.register(Max(name="top", field="amount"))
        await rt.checkpoint()
        got = {key: vector.values for key, vector in (await rt.get_many(["c0", "c3"])).items()}
    async with FeatureRuntime(FEATURE_SET, **options) as rt:
        assert rt.restored is not None and rt.restored.sequence >= 6
    want: dict[str, int] = {}
    for event in events:
        want[event["card"]] = max(want.get(event["card"], 0), event["amount"])
    assert [got[key]["top"] for key in ("c0", "c3")] == [want["c0"], want["c3"]]
