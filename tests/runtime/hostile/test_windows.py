"""Window semantics that disagreed with themselves (issue 15, item 11).

- The features of one ``Session`` spec share the key's sessions: every event of the key opens
  or extends them, whether or not it holds a feature's field.
- With ``emit="close"``, a close and a correction carry every feature of the window, with its
  final value, and ``rt.get`` shows the key's last closed window.
- The clock of a quiet key is a function of the wall clock alone: neither the other features
  of the set nor how often ``flush()`` or the idle timer ran change what a read shows or
  whether an event is late.
"""

from __future__ import annotations

from typing import Any

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    Mean,
    Session,
    Sliding,
    Sum,
    Tumbling,
    Where,
)

from ..support.clock import FakeClock

MINUTE = 60_000
DECLINED = Where(field="status", op="==", value="declined")


def spec(*features: Any, **options: Any) -> FeatureSet:
    return FeatureSet(name="w", key="k", time="ts", features=list(features), **options)


async def drain(sub: Any) -> list[FeatureUpdate]:
    await sub.aclose()
    return [u async for u in sub]


# -- sessions ---------------------------------------------------------------------------------
async def test_an_event_without_the_field_extends_the_session_of_every_feature() -> None:
    session = Session(gap="5m")
    fs = spec(
        Count(name="n", window=session),
        Sum(name="s", field="amount", window=session),
        Mean(name="m", field="amount", window=session),
    )
    async with FeatureRuntime(fs) as rt:
        # 0 and 8m are 8 minutes apart, but the event at 4m (no amount) joins them
        await rt.ingest_many(
            [
                {"k": "u", "ts": 0, "amount": 1},
                {"k": "u", "ts": 4 * MINUTE},
                {"k": "u", "ts": 8 * MINUTE, "amount": 2},
            ]
        )
        assert (await rt.get("u")).values == {"n": 3, "s": 3, "m": 1.5}


async def test_a_read_shows_every_feature_of_the_same_open_session() -> None:
    session = Session(gap="5m")
    fs = spec(
        Count(name="n", window=session),
        Sum(name="s", field="amount", window=session),
        Mean(name="m", field="amount", window=session),
        allowed_lateness="1h",  # the first session is still open when the second begins
    )
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many([{"k": "u", "ts": 0, "amount": 1}, {"k": "u", "ts": 10 * MINUTE}])
        # the newest session holds one event, without an amount
        assert (await rt.get("u")).values == {"n": 1, "s": 0, "m": None}


async def test_sessions_close_once_for_every_feature_of_the_spec() -> None:
    session = Session(gap="5m")
    fs = spec(
        Count(name="n", window=session),
        Sum(name="s", field="amount", window=session),
    )
    async with FeatureRuntime(fs) as rt:
        sub = rt.updates()
        await rt.ingest_many(
            [
                {"k": "u", "ts": 0, "amount": 1},
                {"k": "u", "ts": 4 * MINUTE},
                {"k": "u", "ts": 30 * MINUTE, "amount": 5},
            ]
        )
        await rt.flush()
        closes = [(u.window, u.values) for u in await drain(sub) if u.kind == "close"]
        assert closes == [((0, 9 * MINUTE), {"n": 2, "s": 1})]


# -- closes and corrections carry every feature -----------------------------------------------
def _close_set(**options: Any) -> FeatureSet:
    window = Tumbling(size="1m")
    return spec(
        Count(name="n", window=window),
        Count(name="d", where=DECLINED, window=window),
        Sum(name="s", field="amount", window=window),
        emit="close",
        **options,
    )


async def test_a_close_carries_every_feature_of_the_window() -> None:
    async with FeatureRuntime(_close_set()) as rt:
        sub = rt.updates()
        await rt.ingest_many(
            [
                {"k": "u", "ts": 0, "status": "ok", "amount": 5},
                {"k": "u", "ts": 2 * MINUTE, "status": "ok"},  # no amount
                {"k": "u", "ts": 4 * MINUTE, "status": "ok", "amount": 1},
            ]
        )
        await rt.flush()
        closes = [(u.window, u.values) for u in await drain(sub) if u.kind == "close"]
        assert closes == [
            ((0, MINUTE), {"n": 1, "d": 0, "s": 5}),
            ((2 * MINUTE, 3 * MINUTE), {"n": 1, "d": 0, "s": 0}),
        ]
        # the key's last closed window, for every feature: not the sum of [0, 1m)
        assert (await rt.get("u")).values == {"n": 1, "d": 0, "s": 0}


async def test_a_correction_carries_every_feature_and_comes_alone() -> None:
    async with FeatureRuntime(_close_set(late_policy="update")) as rt:
        sub = rt.updates()
        await rt.ingest_many(
            [
                {"k": "u", "ts": 0, "status": "ok", "amount": 5},
                {"k": "u", "ts": 2 * MINUTE, "status": "ok", "amount": 1},
                # late, in [0, 1m): the first declined event of that window, without an amount
                {"k": "u", "ts": 30_000, "status": "declined"},
            ]
        )
        await rt.flush()
        late = [(u.kind, u.window, u.values) for u in await drain(sub) if u.window == (0, MINUTE)]
        assert late == [
            ("close", (0, MINUTE), {"n": 1, "d": 0, "s": 5}),
            ("correction", (0, MINUTE), {"n": 2, "d": 1, "s": 5}),
        ]


# -- the clock of a quiet key -----------------------------------------------------------------
async def _read_after_idling(with_sliding: bool, flushes: list[float]) -> dict[str, Any]:
    clock = FakeClock()
    features: list[Any] = [Count(name="n", window=Tumbling(size="5m"))]
    if with_sliding:
        features.append(Count(name="recent", window=Sliding(size="1s")))
    fs = spec(*features, idle_timeout="1s", allowed_lateness="1h")
    async with FeatureRuntime(fs, clock=clock) as rt:
        start = clock.now
        await rt.ingest({"k": "u", "ts": MINUTE})
        await rt.flush()
        for at in flushes:
            clock.now = start + at
            await rt.flush()
        clock.now = start + 1 + 600  # quiet for 601 s: the key's clock is 1m + 600 s = 11m
        vector = await rt.get("u")
        return {"n": vector["n"], "watermark": vector.watermark}


async def test_the_clock_of_a_quiet_key_does_not_depend_on_the_other_features() -> None:
    # the window holding the clock (11m) is [10m, 15m): empty
    want = {"n": 0, "watermark": 11 * MINUTE}
    assert await _read_after_idling(with_sliding=False, flushes=[2.0]) == want
    assert await _read_after_idling(with_sliding=True, flushes=[2.0]) == want


async def test_the_clock_of_a_quiet_key_does_not_depend_on_flushes() -> None:
    want = {"n": 0, "watermark": 11 * MINUTE}
    for flushes in ([], [2.0], [2.0, 30.0], [300.0]):
        assert await _read_after_idling(with_sliding=False, flushes=flushes) == want, flushes


async def _late_after_idling(flushes: list[float]) -> int:
    clock = FakeClock()
    fs = spec(Count(name="n", window=Tumbling(size="1h")), idle_timeout="1s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        start = clock.now
        await rt.ingest({"k": "u", "ts": 0})
        await rt.flush()
        for at in flushes:
            clock.now = start + at
            await rt.flush()
        clock.now = start + 101  # quiet for 101 s: the key's clock is 100 s
        await rt.ingest({"k": "u", "ts": 50_000})
        await rt.flush()
        stats = (await rt.statistics()).windows
        assert stats is not None
        return stats.late_dropped


async def test_whether_an_event_of_a_quiet_key_is_late_does_not_depend_on_flushes() -> None:
    for flushes in ([], [2.0], [2.0, 30.0], [60.0]):
        assert await _late_after_idling(flushes) == 1, flushes
