"""Windowed features and time: idle keys, expiry, late events, corrections, and the rest of the
runtime around windows (errors, registration, statistics, quantile accuracy)."""

from __future__ import annotations

import math
import random
from typing import Any

import anyio
import pytest

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    Hopping,
    Last,
    LateEvent,
    Max,
    Mean,
    Quantile,
    Session,
    Sliding,
    SpecError,
    Sum,
    Tumbling,
)

from ..support.clock import FakeClock


def spec(*features: Any, **options: Any) -> FeatureSet:
    return FeatureSet(name="w", key="k", time="ts", features=list(features), **options)


async def drain(sub: Any) -> list[FeatureUpdate]:
    await sub.aclose()
    return [u async for u in sub]


async def test_idle_time_closes_windows_without_new_events() -> None:
    clock = FakeClock()
    fs = spec(Sum(name="s", field="x", window=Tumbling(size="10s")), idle_timeout="2s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        sub = rt.updates()
        await rt.ingest_many([{"k": "a", "ts": 1_000, "x": 1}, {"k": "a", "ts": 4_000, "x": 2}])
        await rt.flush()
        assert (await rt.get("a"))["s"] == 3
        # quiet for 2 s of wall time: the clock starts to move, but the window ends at 10 s
        clock.now += 3.0  # key clock: 4 s + (3 s - 2 s) = 5 s
        await rt.flush()
        clock.now += 5.5  # 4 s + 6.5 s = 10.5 s: the window [0, 10 s) closes
        await rt.flush()
        updates = await drain(sub)
        closes = [u for u in updates if u.kind == "close"]
        assert [(u.window, u.values) for u in closes] == [((0, 10_000), {"s": 3})]
        stats = (await rt.statistics()).windows
        assert stats is not None
        assert stats.windows_closed == 1
        assert stats.idle_advances >= 1
        # every window closed and nothing held: the key's window state is gone
        assert stats.expired_keys == 1
        assert stats.keys == 0
        assert (await rt.get("a"))["s"] == 0


async def test_idle_time_empties_a_sliding_window() -> None:
    clock = FakeClock()
    fs = spec(Sum(name="s", field="x", window=Sliding(size="5s")), idle_timeout="1s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        await rt.ingest_many([{"k": "a", "ts": 0, "x": 1}, {"k": "a", "ts": 3_000, "x": 2}])
        await rt.flush()
        assert (await rt.get("a"))["s"] == 3
        clock.now += 1.0 + 2.5  # clock 5.5 s: the event at 0 left the window (0.5 s, 5.5 s]
        await rt.flush()
        assert (await rt.get("a"))["s"] == 2
        clock.now += 3.0  # 8.5 s: the window is empty, and the key is dropped
        await rt.flush()
        assert (await rt.get("a"))["s"] == 0
        stats = (await rt.statistics()).windows
        assert stats is not None and stats.expired_keys == 1 and stats.events_held == 0


async def test_a_key_with_new_events_is_not_idle() -> None:
    clock = FakeClock()
    fs = spec(Count(name="n", window=Tumbling(size="10s")), idle_timeout="1s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        sub = rt.updates()
        for i in range(5):
            await rt.ingest({"k": "a", "ts": i * 100, "x": 1})
            await rt.flush()
            clock.now += 0.9
        assert [u for u in await drain(sub) if u.kind == "close"] == []
        assert (await rt.get("a"))["n"] == 5


async def test_state_ttl_expires_quiet_keys() -> None:
    clock = FakeClock()
    fs = spec(Count(name="n", window=Sliding(size="1h")), state_ttl="10s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        await rt.ingest_many([{"k": "a", "ts": 0}, {"k": "b", "ts": 0}])
        await rt.flush()
        clock.now += 6
        await rt.ingest({"k": "b", "ts": 1})
        await rt.flush()
        clock.now += 6  # a: quiet for 12 s, b: for 6 s
        await rt.flush()
        assert (await rt.get("a"))["n"] == 0
        assert (await rt.get("b"))["n"] == 2
        stats = (await rt.statistics()).windows
        assert stats is not None and stats.expired_keys == 1 and stats.keys == 1


async def test_state_ttl_expires_quiet_keys_of_unwindowed_features_too() -> None:
    clock = FakeClock()
    fs = spec(Count(name="n"), Sum(name="s", field="x"), state_ttl="10s")
    async with FeatureRuntime(fs, clock=clock, shards=2) as rt:
        await rt.ingest_many([{"k": "a", "ts": 0, "x": 1}, {"k": "b", "ts": 0, "x": 1}])
        await rt.flush()
        clock.now += 6
        await rt.ingest({"k": "b", "ts": 1, "x": 1})
        await rt.flush()
        clock.now += 6
        await rt.flush()
        a, b = await rt.get("a"), await rt.get("b")
        assert (a["n"], a.known) == (0, False)
        assert (b["n"], b["s"]) == (2, 2)
        stats = await rt.statistics()
        assert (stats.expired_keys, stats.keys, stats.windows) == (1, 1, None)


async def test_an_unwindowed_key_expires_before_its_next_event_or_read_not_at_the_tick() -> None:
    """As the window engines do: the state of a key quiet for state_ttl is gone when its next
    event or a read comes, whenever the timer's tick comes (as a training set's replay, which
    expires at each label's time, gives it)."""
    clock = FakeClock()
    fs = spec(Count(name="n"), Count(name="c1h", window=Sliding(size="1h")), state_ttl="10s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        await rt.ingest({"k": "a", "ts": 0})
        await rt.flush()
        clock.now += 11  # no flush, no tick between: the next read and event come first
        vector = await rt.get("a")
        assert (vector["n"], vector["c1h"], vector.known) == (0, 0, False)
        await rt.ingest({"k": "a", "ts": 11_000})
        await rt.flush()
        assert (await rt.get("a"))["n"] == 1


async def test_side_output_delivers_late_events() -> None:
    fs = spec(
        Sum(name="s", field="x", window=Tumbling(size="1s")),
        max_out_of_orderness="500ms",
        late_policy="side_output",
    )
    async with FeatureRuntime(fs) as rt:
        late = rt.late_events()
        await rt.ingest_many(
            [
                {"k": "a", "ts": 5_000, "x": 1},
                {"k": "a", "ts": 4_600, "x": 2},  # within the out-of-orderness: applied
                {"k": "a", "ts": 4_400, "x": 4},  # below the watermark (4.5 s): late
            ]
        )
        await rt.flush()
        await late.aclose()
        events: list[LateEvent] = [e async for e in late]
        assert [(e.key, e.event_time, e.watermark, e.event["x"]) for e in events] == [
            ("a", 4_400, 4_500, 4)
        ]
        stats = (await rt.statistics()).windows
        assert stats is not None and stats.late_side_output == 1 and stats.late_dropped == 0


async def test_update_policy_emits_a_correction_for_a_closed_window() -> None:
    fs = spec(
        Sum(name="s", field="x", window=Tumbling(size="1s")),
        late_policy="update",
        correction_horizon="10s",
        emit="close",
    )
    async with FeatureRuntime(fs) as rt:
        sub = rt.updates()
        await rt.ingest_many(
            [
                {"k": "a", "ts": 100, "x": 1},
                {"k": "a", "ts": 1_500, "x": 2},  # closes [0, 1 s) with 1
                {"k": "a", "ts": 200, "x": 10},  # late: corrects [0, 1 s) to 11
                {"k": "a", "ts": 2_500, "x": 3},  # closes [1 s, 2 s) with 2
            ]
        )
        await rt.flush()
        updates = [(u.kind, u.window, u.values) for u in await drain(sub) if u.group != "g0"]
        assert updates == [
            ("close", (0, 1_000), {"s": 1}),
            ("correction", (0, 1_000), {"s": 11}),
            ("close", (1_000, 2_000), {"s": 2}),
        ]
        # emit="close": the value is the newest closed window's
        assert (await rt.get("a"))["s"] == 2


async def test_session_merges_when_a_late_event_bridges_two_sessions() -> None:
    fs = spec(
        Count(name="n", window=Session(gap="1s")),
        Max(name="hi", field="x", window=Session(gap="1s")),
        max_out_of_orderness="5s",
    )
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many(
            [
                {"k": "a", "ts": 0, "x": 1},
                {"k": "a", "ts": 1_500, "x": 5},  # a second session
                {"k": "a", "ts": 800, "x": 2},  # bridges them: one session of three
            ]
        )
        vector = await rt.get("a")
        assert (vector["n"], vector["hi"]) == (3, 5)


async def test_bad_values_are_errors_for_the_numeric_windowed_features_only() -> None:
    fs = spec(
        Sum(name="s", field="x", window=Sliding(size="1m")),
        Count(name="n", window=Sliding(size="1m")),
    )
    async with FeatureRuntime(fs) as rt:
        sub = rt.updates()
        await rt.ingest_many([{"k": "a", "ts": 0, "x": 1}, {"k": "a", "ts": 1, "x": "oops"}])
        await rt.flush()
        updates = [u for u in await drain(sub) if u.kind == "update"]
        assert updates[-1].errors is not None and "s" in updates[-1].errors
        assert "must be a number" in updates[-1].errors["s"]
        assert updates[-1].values == {"s": 1, "n": 2}
        assert updates[-1].result("s").error is not None
        stats = await rt.statistics()
        assert stats.feature_errors == {"s": 1}
        assert [e.feature for e in await rt.recent_errors()] == ["s"]


async def test_windowed_features_can_be_registered_while_running() -> None:
    fs = spec(Count(name="n"))
    async with FeatureRuntime(fs) as rt:
        await rt.ingest({"k": "a", "ts": 0, "x": 1})
        described = await rt.register(
            Sum(name="s5", field="x", window=Sliding(size="5s")),
            Count(name="c", window=Hopping(size="4s", hop="2s")),
        )
        assert [d.estimated_cost.category for d in described] == ["windowed_aggregate"] * 2
        await rt.ingest_many([{"k": "a", "ts": 1_000, "x": 2}, {"k": "a", "ts": 3_000, "x": 3}])
        vector = await rt.get("a")
        assert (vector["n"], vector["s5"], vector["c"]) == (3, 5, 2)
        measured = (await rt.describe("s5")).measured_cost
        assert measured is not None and measured.events == 2
        assert measured.state_bytes_per_key is not None and measured.state_bytes_per_key > 0


async def test_statistics_report_window_state_per_key_and_in_total() -> None:
    fs = spec(Sum(name="s", field="x", window=Sliding(size="1h")))
    async with FeatureRuntime(fs, shards=3) as rt:
        await rt.ingest_many({"k": f"k{i % 50}", "ts": i, "x": i} for i in range(1_000))
        await rt.flush()
        stats = await rt.statistics()
        assert stats.windows is not None
        assert stats.windows.keys == 50
        assert stats.windows.events_held == 1_000
        assert stats.windows.state_bytes > 1_000 * 50
        assert stats.windows.state_bytes_per_key == pytest.approx(stats.windows.state_bytes / 50)
        assert stats.state_bytes >= stats.windows.state_bytes
        assert stats.keys == 50


@pytest.mark.parametrize("window", [Sliding(size="10s"), Tumbling(size="1m")])
async def test_quantile_keeps_its_relative_error_guarantee(window: Any) -> None:
    rng = random.Random(3)
    events = [{"k": "a", "ts": i * 10, "x": rng.lognormvariate(3, 2)} for i in range(3_000)]
    fs = spec(
        Quantile(name="q50", field="x", q=0.5, window=window),
        Quantile(name="q99", field="x", q=0.99, relative_accuracy=0.001, window=window),
    )
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many(events)
        vector = await rt.get("a")
    end = events[-1]["ts"]
    if isinstance(window, Sliding):
        held = sorted(e["x"] for e in events if e["ts"] > end - 10_000)
    else:
        held = sorted(e["x"] for e in events if e["ts"] >= end // 60_000 * 60_000)
    for name, q, alpha in (("q50", 0.5, 0.01), ("q99", 0.99, 0.001)):
        exact = held[math.floor(q * (len(held) - 1))]
        assert abs(vector[name] - exact) <= alpha * abs(exact) * (1 + 1e-9), (name, exact)


def test_window_rules_are_checked() -> None:
    with pytest.raises(SpecError, match="hop: must be <= size"):
        Hopping(size="1m", hop="2m")
    with pytest.raises(SpecError, match="size: must be > 0"):
        Sliding(size=0)
    # a negative size gets the same message (not ">= 0", which 0 would then contradict)
    for negative in (-5, -5.0):
        with pytest.raises(SpecError, match=f"Sliding.size: must be > 0, got {negative}"):
            Sliding(size=negative)
    with pytest.raises(SpecError, match="gap: must be > 0, got -1"):
        Session(gap=-1)
    with pytest.raises(SpecError, match="ewm_mean features cannot be windowed"):
        FeatureSet.from_dict(
            {
                "name": "x",
                "key": "k",
                "time": "t",
                "features": [
                    {
                        "type": "ewm_mean",
                        "name": "e",
                        "field": "x",
                        "half_life": "1s",
                        "window": {"type": "sliding", "size": "1m"},
                    }
                ],
            }
        )
    with pytest.raises(SpecError, match="unknown window type 'slide'"):
        FeatureSet.from_toml(
            'name = "x"\nkey = "k"\ntime = "t"\n'
            'features = [{ type = "sum", name = "s", field = "x", '
            'window = { type = "slide", size = "1m" } }]\n'
        )
    with pytest.raises(SpecError, match="late_policy: unknown late_policy 'later'"):
        FeatureSet.from_dict(
            {
                "name": "x",
                "key": "k",
                "time": "t",
                "late_policy": "later",
                "features": [{"type": "count", "name": "c"}],
            }
        )


# -- regressions found in review --------------------------------------------------------------


async def test_a_condition_that_raises_leaves_sequence_state_intact() -> None:
    from runtime import SequencePattern, Step, Where

    pattern = SequencePattern(
        name="ab",
        within="1h",
        steps=[
            Step(where=Where(field="type", value="a")),
            Step(where=Where(field="x", op=">", value=5)),
        ],
    )
    fs = spec(pattern, Count(name="n", window=Sliding(size="1h")))
    async with FeatureRuntime(fs, shards=1) as rt:
        await rt.ingest_many(
            [
                {"k": "u", "ts": 1, "type": "a"},
                {"k": "u", "ts": 2, "type": "b", "x": "oops"},  # the condition raises
                {"k": "v", "ts": 2, "type": "a"},
                {"k": "u", "ts": 3, "type": "b", "x": 9},
            ]
        )
        assert (await rt.get("u"))["ab"] == 1
        assert (await rt.get("v"))["n"] == 1
        assert [e.feature for e in await rt.recent_errors()] == ["ab"]
        assert rt.dead_letters.count() == 0


async def test_an_int_too_large_for_a_float_is_an_error_not_a_crash() -> None:
    fs = spec(Mean(name="avg", field="x", window=Sliding(size="1h")))
    async with FeatureRuntime(fs, shards=1) as rt:
        sub = rt.updates()
        await rt.ingest_many([{"k": "u", "ts": 1, "x": 10**400}, {"k": "v", "ts": 1, "x": 5}])
        await rt.flush()
        assert (await rt.get("u"))["avg"] is None
        assert (await rt.get("v"))["avg"] == 5
        assert "too large" in (await rt.recent_errors())[0].error
        assert rt.dead_letters.count() == 0
        await sub.aclose()


async def test_a_rejected_value_is_not_half_applied() -> None:
    from runtime import TopK

    fs = spec(
        TopK(name="top", field="m", window=Sliding(size="1s")),
        Last(name="last", field="m", window=Sliding(size="1s")),
    )
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many(
            [{"k": "u", "ts": 0, "m": ["unhashable"]}, {"k": "u", "ts": 1_500, "m": "b"}]
        )
        vector = await rt.get("u")
        assert (vector["top"], vector["last"]) == ([["b", 1]], "b")


async def test_float_sums_are_recomputed_as_the_window_slides() -> None:
    fs = spec(Sum(name="s", field="x", window=Sliding(size=1000)))
    events = [{"k": "u", "ts": 0, "x": 1e17}]
    events += [{"k": "u", "ts": 1 + i, "x": 1.0} for i in range(5_000)]
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many(events)
        assert (await rt.get("u"))["s"] == 1000.0


async def test_zscore_of_a_window_of_equal_floats_is_none_after_large_values_left() -> None:
    from runtime import ZScore

    fs = spec(ZScore(name="z", field="x", min_count=3, window=Sliding(size=100)))
    events = [{"k": "u", "ts": i, "x": 1e6 * (i + 1)} for i in range(10)]
    events += [{"k": "u", "ts": 200 + i, "x": 7.7} for i in range(10)]
    async with FeatureRuntime(fs) as rt:
        sub = rt.updates()
        await rt.ingest_many(events)
        assert (await rt.get("u"))["z"] is None
        await rt.flush()
        assert not [u for u in await drain(sub) if u.kind == "anomaly" and u.event_time >= 200]


async def test_idle_keys_with_closed_windows_or_dead_partial_matches_expire() -> None:
    from runtime import SequencePattern, Step, Where

    clock = FakeClock()
    pattern = SequencePattern(
        name="ab",
        within="1s",
        steps=[Step(where=Where(field="t", value="a")), Step(where=Where(field="t", value="b"))],
    )
    fs = spec(Count(name="n", window=Tumbling(size="1s")), pattern, emit="close", idle_timeout="1s")
    async with FeatureRuntime(fs, clock=clock) as rt:
        await rt.ingest_many({"k": f"k{i}", "ts": 0, "t": "a"} for i in range(100))
        await rt.flush()
        for _ in range(5):
            clock.now += 1.0
            await rt.flush()
        stats = (await rt.statistics()).windows
        assert stats is not None and stats.keys == 0 and stats.expired_keys == 100


async def test_a_session_reopened_by_a_late_event_closes_again_later() -> None:
    fs = spec(
        Count(name="n", window=Session(gap="5m")),
        late_policy="update",
        correction_horizon="1h",
    )
    minute = 60_000
    async with FeatureRuntime(fs) as rt:
        sub = rt.updates()
        await rt.ingest_many(
            [
                {"k": "u", "ts": 0},
                {"k": "u", "ts": 8 * minute},  # a new session; [0, 5m) closes
                {"k": "u", "ts": 4 * minute},  # late: bridges both, the session is open again
                {"k": "u", "ts": 10 * minute},  # on time: joins it
            ]
        )
        assert (await rt.get("u"))["n"] == 4
        await rt.ingest({"k": "u", "ts": 30 * minute})  # closes [0, 15m)
        await rt.flush()
        closes = [(u.kind, u.window, u.values) for u in await drain(sub) if u.kind != "update"]
        assert closes == [
            ("close", (0, 5 * minute), {"n": 1}),
            ("close", (0, 15 * minute), {"n": 4}),
        ]


async def test_a_ratio_of_windowed_features_registered_apart_is_a_spec_error() -> None:
    from runtime import Ratio

    fs = spec(Sum(name="s", field="x", window=Sliding(size="1m")))
    async with FeatureRuntime(fs) as rt:
        with pytest.raises(SpecError, match="same call as its operands"):
            await rt.register(Ratio(name="r", numerator="s", denominator="s"))


async def test_a_window_of_equal_floats_has_no_spread_after_others_left() -> None:
    from runtime import Std, ZScore

    window = Sliding(size=100)
    fs = spec(
        ZScore(name="z", field="x", window=window, min_count=3, threshold=4),
        Std(name="sd", field="x", ddof=0, window=window),
    )
    events = [(0, 1.5), (10, 65.159), (20, 78.872), (30, 9.386)]
    events += [(95 + i, 1.5) for i in range(5)] + [(135, 1.5), (136, 1.5001)]
    async with FeatureRuntime(fs) as rt:
        sub = rt.updates()
        await rt.ingest_many({"k": "u", "ts": t, "x": x} for t, x in events)
        await rt.flush()
        updates = await drain(sub)
        at_135 = next(u for u in updates if u.kind == "update" and u.event_time == 135)
        assert at_135.values["sd"] == 0.0
        assert not [u for u in updates if u.kind == "anomaly"]


async def test_zscore_of_ints_beyond_a_float_is_none_and_the_buffer_goes_on() -> None:
    from runtime import ZScore

    window = Sliding(size="1h")
    fs = spec(Sum(name="s", field="x", window=window), ZScore(name="z", field="x", window=window))
    xs = [10**160, -(10**160), 1, 2, 3]
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many({"k": "u", "ts": i, "x": x} for i, x in enumerate(xs))
        vector = await rt.get("u")
        assert (vector["s"], vector["z"]) == (6, None)
        assert await rt.recent_errors() == []


async def test_an_event_after_idle_time_moves_the_last_event_time() -> None:
    clock = FakeClock()
    fs = spec(
        Count(name="n", window=Tumbling(size="10s")),
        idle_timeout="1s",
        max_out_of_orderness="5s",
    )
    async with FeatureRuntime(fs, clock=clock) as rt:
        await rt.ingest({"k": "u", "ts": 1_000})
        await rt.flush()
        clock.now += 7.0  # the key's clock moves to 7 s
        await rt.flush()
        await rt.ingest({"k": "u", "ts": 4_000})  # below the clock, above the last event
        vector = await rt.get("u")
        assert (vector.last_event_time, vector["n"]) == (4_000, 2)


def test_the_idle_heap_stays_within_twice_the_keys() -> None:
    from runtime._stats.idle import IdleKeys
    from runtime._windows.engine import WindowCounters, WindowEngine

    engine = WindowEngine([Count(name="n", window=Tumbling(size="1h"))], idle_timeout=1.0)
    states: dict[Any, Any] = {}
    idle = IdleKeys()
    counters = WindowCounters()
    now = 0.0
    for i in range(3_000):  # one key, an event every 2 s: quiet for longer than idle each time
        now += 2.0
        engine.apply([("u", 1_000 * i, {})], states, [], now, None, None, counters, idle)
        engine.tick(states, idle, now + 1.5, None, counters)
    assert len(idle.sleepers) <= 2 * len(states) + 1024


async def test_a_refused_registration_leaves_the_runtime_as_it_was() -> None:
    from runtime import Ratio

    fs = spec(Sum(name="s", field="x", window=Sliding(size="1m")))
    async with FeatureRuntime(fs) as rt:
        with pytest.raises(SpecError):
            await rt.register(Count(name="c"), Ratio(name="r", numerator="s", denominator="s"))
        stats = await rt.statistics()
        assert stats.groups == 1
        assert rt.feature_set.names == ("s",)
        await rt.register(Count(name="c"))
        await rt.ingest({"k": "u", "ts": 0, "x": 2})
        assert (await rt.get("u")).values == {"s": 2, "c": 1}


async def test_the_timer_closes_idle_windows_without_flush() -> None:
    import anyio

    fs = spec(Count(name="n", window=Tumbling(size=100)), idle_timeout="100ms")
    async with FeatureRuntime(fs, linger=0.001) as rt:
        sub = rt.updates()
        await rt.ingest({"k": "u", "ts": 0})
        with anyio.fail_after(10):  # the real timer fires every 25 ms; the close comes soon
            while (update := await sub.__anext__()).kind != "close":
                pass
        assert (update.window, update.values) == ((0, 100), {"n": 1})
        assert rt.dead_letters.count() == 0


async def test_the_timer_expires_keys_of_unwindowed_groups_without_flush() -> None:
    import anyio

    fs = spec(Count(name="n"), state_ttl="100ms")
    async with FeatureRuntime(fs, linger=0.001) as rt:
        await rt.ingest({"k": "u", "ts": 0})
        with anyio.fail_after(10):
            while (await rt.statistics()).expired_keys < 1:
                await anyio.sleep(0.02)
        assert (await rt.get("u")).known is False
        assert rt.dead_letters.count() == 0


async def test_a_ttl_that_float_rounding_puts_at_now_does_not_wake_the_key_forever() -> None:
    """0.2 + 8 == 8.2, but 8.2 - 0.2 < 8: the key was due and not expired, again and again."""
    now = [0.2]
    fs = FeatureSet(
        name="h",
        key="k",
        time="ts",
        features=[Count(name="n", window=Sliding(size=1000))],
        state_ttl="8s",
        idle_timeout="1s",
    )
    async with FeatureRuntime(fs, clock=lambda: now[0]) as rt:
        await rt.ingest({"k": "a", "ts": 200})
        await rt.flush()
        now[0] = 8.2
        with anyio.fail_after(10):
            await rt.flush()
        assert (await rt.get("a"))["n"] == 0
