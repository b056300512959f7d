"""A crashed shard actor restarts from its last good state, and repeated crashes escalate: the
runtime stops and ``Escalated`` leaves its ``async with`` block."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import ActorStopped, DeadLetterReason, Escalated
from runtime import Count, FeatureRuntime, FeatureSet, RuntimeClosed, Sliding, Sum
from runtime._shard import GroupShard

FEATURES = FeatureSet(
    name="r",
    key="k",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="s", field="x"),
        Count(name="n_1s", window=Sliding(size=1000)),
    ],
)


def crash_stats(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the next ``times`` statistics replies of every shard actor raise (a bug in a
    handler); returns the list counting the calls."""
    calls: list[int] = []
    original = GroupShard._stats

    def failing(self: GroupShard) -> Any:
        calls.append(1)
        if len(calls) <= times:
            raise RuntimeError("injected crash")
        return original(self)

    monkeypatch.setattr(GroupShard, "_stats", failing)
    return calls


async def test_a_crashed_actor_restarts_with_its_state(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FeatureRuntime(FEATURES, shards=1, max_restarts=5) as rt:
        await rt.ingest_many([{"k": "a", "ts": t, "x": 2} for t in range(10)])
        await rt.flush()
        crash_stats(monkeypatch, 2)  # the ask and its retry fail: the actor restarts
        with pytest.raises(RuntimeError, match="injected crash"):
            await rt.statistics()
        failed = rt.dead_letters.letters(DeadLetterReason.FAILED)
        assert failed and "injected crash" in repr(failed[-1].error)
        await rt.ingest({"k": "a", "ts": 11, "x": 2})
        vector = await rt.get("a")
        assert (vector["n"], vector["s"], vector["n_1s"]) == (11, 22, 11)
        assert (await rt.statistics()).events_processed == 11


async def test_repeated_crashes_escalate_and_stop_the_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(Escalated):
        async with FeatureRuntime(FEATURES, shards=1, max_restarts=2) as rt:
            await rt.ingest({"k": "a", "ts": 1, "x": 1})
            crash_stats(monkeypatch, 1_000)
            for _ in range(10):
                try:
                    await rt.statistics()
                except RuntimeClosed as exc:
                    assert "max_restarts=2" in str(exc)
                    break
                except (RuntimeError, ActorStopped):
                    pass  # the crash itself, or the ask the failed actor did not answer
            else:
                raise AssertionError("the runtime did not stop")
            await anyio.sleep(10)  # the runtime's owner is cancelled: Escalated ends the block
