"""Replay and the parity check: a replay of history gives the values the online run gave.

The online run is the reference: events ingested in batches, with a fake wall clock advanced
as a live system's (for idle time and expiry it follows the events: time passes, the runtime
applies idle time and expiry, then the events that arrived at that time go in). A replay of the
same events in another runtime, with other shard counts and batch sizes, must give identical
values, keyed aggregates (also checked against the brute-force oracle), windowed features and
a join's features alike; the parity check must find nothing, and must find a value that was
changed, for exactly that feature and key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    FeatureVector,
    Hopping,
    Join,
    Max,
    Mean,
    ParityReport,
    ReplayResult,
    Session,
    Sliding,
    Sum,
    Tumbling,
    UnknownFeature,
    check_parity,
)
from runtime.parity import InputError, load_feature_set, main

from ..support.clock import FakeClock
from ..support.oracle import ORACLE_FEATURES, oracle, same

WINDOWED = [
    Sum(name="sum_10s", field="amount", window=Tumbling(size="10s")),
    Count(name="n_5s", window=Sliding(size="5s")),
    Mean(name="avg_hop", field="amount", window=Hopping(size="10s", hop="5s")),
    Max(name="max_session", field="amount", window=Session(gap="3s")),
]
FEATURES = [*ORACLE_FEATURES, *WINDOWED]
#: no wall-clock behaviour: no value depends on the clock
UNTIMED = FeatureSet(name="t", key="card", time="ts", features=FEATURES, max_out_of_orderness="1s")
#: idle time and expiry: values depend on the wall clock, which follows the events
TIMED = FeatureSet(
    name="t",
    key="card",
    time="ts",
    features=FEATURES,
    max_out_of_orderness="1s",
    idle_timeout="2s",
    state_ttl="8s",
)
KEYS = [*(f"c{i}" for i in range(10)), 0, 1, 2]

amounts = st.one_of(
    st.integers(-50, 50),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
    st.none(),
    st.just("oops"),
)


@st.composite
def histories(draw: st.DrawFn, max_size: int = 60) -> list[dict[str, Any]]:
    """Events in arrival order: times that mostly rise, with gaps longer than the idle
    timeout and the ttl, stragglers up to 3.5 s late, duplicate times, many keys.

    Times are multiples of 125 ms, so that clock readings (seconds) are exact binary
    fractions: with others, the window engine can loop forever on a key whose ttl falls
    within rounding of a tick (``now - seen < ttl <= now - seen`` in floats), a bug of its own.
    """
    n = draw(st.integers(0, max_size))
    now = 0
    events = []
    for _ in range(n):
        now += draw(st.sampled_from([0, 0, 250, 750, 1_500, 4_000, 9_000]))
        lag = draw(st.sampled_from([0, 0, 0, 375, 1_250, 3_500]))
        events.append(
            {
                "card": draw(st.sampled_from(KEYS)),
                "ts": max(0, now - lag),
                "amount": draw(amounts),
                "merchant": draw(st.sampled_from(["m1", "m2", None])),
                "status": draw(st.sampled_from(["ok", "declined", "review"])),
            }
        )
    return events


Batch = tuple[float | None, list[dict[str, Any]], list[str] | None]


def by_newest_time(history: list[dict[str, Any]]) -> list[Batch]:
    """A live system whose clock is the newest event time so far: the events that arrive while
    it stands still form one batch."""
    batches: list[Batch] = []
    newest = -1
    for event in history:
        if event["ts"] > newest or not batches:
            newest = max(newest, event["ts"])
            batches.append((newest / 1000, [], None))
        batches[-1][1].append(event)
    return batches


def in_chunks(history: list[dict[str, Any]], sizes: list[int]) -> list[Batch]:
    """Batches of the given sizes (the last size repeats), no clock."""
    batches: list[Batch] = []
    start = 0
    for i in range(len(history)):
        size = sizes[min(i, len(sizes) - 1)]
        if start >= len(history):
            break
        batches.append((None, history[start : start + size], None))
        start += size
    return batches


async def run_online(
    feature_set: FeatureSet,
    batches: list[Batch],
    keys: list[Any],
    *,
    shards: int,
    batch_size: int,
    until: float | None = None,
) -> tuple[dict[Any, FeatureVector], list[FeatureUpdate]]:
    """The online run: each batch arrives at its time (None: the clock does not matter); the
    runtime applies idle time and expiry as time passes, then the batch, before time goes on."""
    clock = FakeClock(0.0)  # the online run's wall clock, set by the test
    async with FeatureRuntime(feature_set, shards=shards, batch_size=batch_size, clock=clock) as rt:
        sub = rt.updates(buffer=1_000_000)
        for at, batch, streams in batches:
            if at is not None:
                clock.now = max(clock.now, at)
                await rt.flush()
            await rt.ingest_many(batch, stream=streams)
            if at is not None:
                await rt.flush()
        if until is not None:
            clock.now = until
        await rt.flush()
        vectors = await rt.get_many(keys)
        await sub.aclose()
        updates = [update async for update in sub]
    return vectors, updates


async def run_replay(
    feature_set: FeatureSet,
    history: Any,
    keys: list[Any],
    *,
    shards: int,
    batch_size: int,
    **options: Any,
) -> tuple[ReplayResult, dict[Any, FeatureVector], list[FeatureUpdate]]:
    async with FeatureRuntime(feature_set, shards=shards, batch_size=batch_size) as rt:
        sub = rt.updates(buffer=1_000_000)
        result = await rt.replay(history, **options)
        vectors = await rt.get_many(keys)
        await sub.aclose()
        updates = [update async for update in sub]
    return result, vectors, updates


def assert_same_vectors(got: dict[Any, FeatureVector], want: dict[Any, FeatureVector]) -> None:
    """Identical values (NaN equals NaN) and last event times. (Not the watermarks: a key
    without window state reports its shard's, which depends on the shard count.)"""
    assert list(got) == list(want)
    for key, vector in want.items():
        mine = got[key]
        assert repr(mine.values) == repr(vector.values), key
        assert mine.last_event_time == vector.last_event_time, key


def keys_of(history: list[dict[str, Any]], field: str = "card") -> list[Any]:
    return sorted({event[field] for event in history}, key=repr)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    shards=st.sampled_from([(1, 7), (2, 1), (7, 3)]),
    batch_size=st.sampled_from([(1, 512), (5, 2), (512, 16)]),
)
async def test_replay_gives_the_online_values_of_keyed_and_windowed_features(
    history: list[dict[str, Any]],
    sizes: list[int],
    shards: tuple[int, int],
    batch_size: tuple[int, int],
) -> None:
    keys = keys_of(history)
    online, _ = await run_online(
        UNTIMED, in_chunks(history, sizes), keys, shards=shards[0], batch_size=batch_size[0]
    )
    result, replayed, _ = await run_replay(
        UNTIMED, history, keys, shards=shards[1], batch_size=batch_size[1]
    )
    assert_same_vectors(replayed, online)
    expected = oracle(ORACLE_FEATURES, "card", "ts", history)
    for key, values in expected.items():
        for name, value in values.items():
            assert same(replayed[key][name], value), (key, name)
    assert (result.events, result.accepted, result.rejected) == (len(history),) * 2 + (0,)
    assert result.steps == 0  # nothing depends on the clock: it never waits
    report = await check_parity(UNTIMED, history, online, options={"shards": 2})
    assert report.ok, report.summary()
    assert report.compared == len(keys)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    shards=st.sampled_from([(1, 7), (2, 1), (7, 3)]),
    batch_size=st.sampled_from([(1, 512), (5, 2), (512, 16)]),
)
async def test_replay_applies_idle_time_and_state_ttl_as_the_online_clock_did(
    history: list[dict[str, Any]], shards: tuple[int, int], batch_size: tuple[int, int]
) -> None:
    keys = keys_of(history)
    end = max((e["ts"] for e in history), default=0) / 1000 + 5.0
    online, updates = await run_online(
        TIMED,
        by_newest_time(history),
        keys,
        shards=shards[0],
        batch_size=batch_size[0],
        until=end,
    )
    result, replayed, replayed_updates = await run_replay(
        TIMED, history, keys, shards=shards[1], batch_size=batch_size[1], resolution=0, until=end
    )
    assert_same_vectors(replayed, online)
    assert len(replayed_updates) == len(updates)
    assert result.clock_end == end
    report = await check_parity(TIMED, history, updates, resolution=0, until=end)
    assert report.ok, report.summary()
    assert report.mode == "updates" and report.compared == len(updates)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    delay=st.sampled_from([0, 250, 2_500]),
)
async def test_replay_follows_recorded_arrival_times(
    history: list[dict[str, Any]], sizes: list[int], delay: int
) -> None:
    # each batch arrives at its newest event time plus a delay, recorded in the events
    batches = []
    newest = 0
    for _, batch, _ in in_chunks(history, sizes):
        newest = max([newest, *(e["ts"] for e in batch)])
        arrived = newest + delay
        batch = [{**e, "arrived": arrived} for e in batch]
        batches.append((arrived / 1000, batch, None))
    recorded = [e for _, batch, _ in batches for e in batch]
    keys = keys_of(history)
    online, _ = await run_online(TIMED, batches, keys, shards=3, batch_size=4)
    result, replayed, _ = await run_replay(
        TIMED, recorded, keys, shards=2, batch_size=64, arrival="arrived", resolution=0
    )
    assert_same_vectors(replayed, online)
    assert result.steps == len({at for at, _, _ in batches})
    report = await check_parity(
        TIMED, recorded, online, arrival=lambda e: e["arrived"] / 1000, resolution=0
    )
    assert report.ok, report.summary()


JOINED = FeatureSet(
    name="ads",
    key="ad",
    time="ts",
    streams=["views", "clicks"],
    joins=[Join(name="j", left="views", right="clicks", after="3s", how="left", on=("imp",))],
    features=[
        Count(name="views"),
        Count(name="clicks", stream="clicks"),
        Count(name="resolved", stream="j"),
        Mean(name="delay", field="time_difference_ms", stream="j"),
        Count(name="resolved_10s", stream="j", window=Tumbling(size="10s")),
    ],
    max_out_of_orderness="500ms",
    idle_timeout="2s",
)


@st.composite
def ad_histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Views and the clicks that follow some of them, up to 5 s later, in arrival order."""
    n = draw(st.integers(0, 30))
    events = []
    now = 0
    for imp in range(n):
        now += draw(st.sampled_from([0, 250, 1_000, 2_500, 6_000]))
        ad = draw(st.sampled_from(["a", "b", "c", 7]))
        events.append((now, {"ad": ad, "ts": now, "imp": imp, "side": "views"}))
        if draw(st.booleans()):
            at = now + draw(st.sampled_from([0, 375, 2_000, 5_000]))
            events.append((at, {"ad": ad, "ts": at, "imp": imp, "side": "clicks"}))
    return [event for _, event in sorted(events, key=lambda pair: pair[0])]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=ad_histories(), shards=st.sampled_from([(1, 4), (3, 1)]))
async def test_replay_of_a_join_gives_the_online_values(
    history: list[dict[str, Any]], shards: tuple[int, int]
) -> None:
    batches = [(at, batch, [e["side"] for e in batch]) for at, batch, _ in by_newest_time(history)]
    keys = keys_of(history, "ad")
    end = max((e["ts"] for e in history), default=0) / 1000 + 10.0
    online, updates = await run_online(
        JOINED, batches, keys, shards=shards[0], batch_size=3, until=end
    )
    _, replayed, _ = await run_replay(
        JOINED,
        history,
        keys,
        shards=shards[1],
        batch_size=512,
        stream=lambda e: e["side"],
        resolution=0,
        until=end,
    )
    assert_same_vectors(replayed, online)
    # every view is resolved: clicked within 3 s, or unmatched once its 3 s are over
    views = sum(1 for e in history if e["side"] == "views")
    assert sum(v["resolved"] for v in replayed.values()) == views
    report = await check_parity(
        JOINED, history, updates, stream=lambda e: e["side"], resolution=0, until=end
    )
    assert report.ok, report.summary()


# -- the parity report ------------------------------------------------------------------------


SMALL = FeatureSet(
    name="small",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Mean(name="avg", field="amount"),
        Sum(name="sum_10s", field="amount", window=Tumbling(size="10s")),
    ],
    idle_timeout="2s",
)
SMALL_HISTORY = [
    {"card": f"c{i % 7}", "ts": i * 450 - (i % 3) * 300 + 300, "amount": (i * 37) % 11 + 0.5}
    for i in range(120)
]


async def small_online() -> dict[Any, FeatureVector]:
    keys = keys_of(SMALL_HISTORY)
    online, _ = await run_online(SMALL, by_newest_time(SMALL_HISTORY), keys, shards=2, batch_size=8)
    return online


async def test_a_changed_online_value_is_reported_for_that_feature_and_key_only() -> None:
    online = await small_online()
    changed = {key: dict(vector.values) for key, vector in online.items()}
    changed["c3"]["avg"] += 0.25
    report = await check_parity(SMALL, SMALL_HISTORY, changed, resolution=0)
    assert not report.ok
    assert [f.feature for f in report.differences] == ["avg"]
    avg = report.differences[0]
    assert (avg.compared, avg.differ, avg.missing) == (7, 1, 0)
    assert [(e.key, e.online, e.replayed) for e in avg.examples] == [
        ("c3", online["c3"]["avg"] + 0.25, online["c3"]["avg"])
    ]
    assert avg.max_abs_diff == pytest.approx(0.25)
    assert (report.only_online, report.only_replayed) == (0, 0)
    text = str(report)
    assert "DIFFERENCES: 1 of 4 features" in text
    assert "key 'c3'" in text and "avg" in text


async def test_a_changed_or_lost_update_is_reported() -> None:
    keys = keys_of(SMALL_HISTORY)
    _, updates = await run_online(
        SMALL, by_newest_time(SMALL_HISTORY), keys, shards=1, batch_size=512
    )
    assert (await check_parity(SMALL, SMALL_HISTORY, updates, resolution=0)).ok
    index = next(i for i, u in enumerate(updates) if u.key == "c5" and "total" in u.values)
    wrong = msgspec.structs.replace(updates[index], values={**updates[index].values, "total": -1.0})
    changed = [*updates[:index], wrong, *updates[index + 1 :]]
    lost = [u for u in changed if u is not updates[index - 1]]
    report = await check_parity(SMALL, SMALL_HISTORY, lost, resolution=0)
    assert [f.feature for f in report.differences] == ["total"]
    total = report.differences[0]
    assert total.differ == 1
    example = total.examples[0]
    assert (example.key, example.online, example.event_time) == ("c5", -1.0, wrong.event_time)
    assert (report.only_online, report.only_replayed) == (0, 1)
    assert report.missing[0].side == "replayed"


async def test_keys_on_one_side_only_are_reported_unless_online_is_a_sample() -> None:
    online = await small_online()
    sample = {key: online[key] for key in ("c1", "c2")}
    sample["nobody"] = online["c1"]
    report = await check_parity(SMALL, SMALL_HISTORY, sample, resolution=0)
    assert (report.compared, report.only_online, report.only_replayed) == (2, 1, 5)
    assert {m.key for m in report.missing if m.side == "online"} == {"nobody"}
    assert not report.ok
    report = await check_parity(SMALL, SMALL_HISTORY, sample, resolution=0, complete=False)
    assert (report.only_online, report.only_replayed) == (1, 0)


async def test_floats_are_equal_within_the_tolerance() -> None:
    online = await small_online()
    nudged = {key: {**v.values, "avg": v["avg"] * (1 + 1e-12)} for key, v in online.items()}
    report = await check_parity(SMALL, SMALL_HISTORY, nudged, resolution=0)
    assert report.ok
    assert report.features[2].max_rel_diff is not None
    assert 0 < report.features[2].max_rel_diff < 1e-11
    strict = await check_parity(SMALL, SMALL_HISTORY, nudged, resolution=0, tolerance=0)
    assert [f.feature for f in strict.differences] == ["avg"]


async def test_parity_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="online must be a mapping"):
        await check_parity(SMALL, [], 42)
    with pytest.raises(TypeError, match="not a mix"):
        await check_parity(SMALL, [], [FeatureVector("a", {}, None, None, None, None), 1])
    with pytest.raises(UnknownFeature, match="'nope'"):
        await check_parity(SMALL, [], {}, features=["nope"])
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        await check_parity(SMALL, [], {}, tolerance=-1)
    report = await check_parity(SMALL, [], {"a": {"n": 0, "bogus": 1}})
    assert report.unknown_features == ("bogus",) and not report.ok


# -- replay rules -----------------------------------------------------------------------------


async def test_replay_refuses_a_runtime_with_live_traffic() -> None:
    async with FeatureRuntime(SMALL) as rt:
        await rt.ingest({"card": "a", "ts": 1, "amount": 1})
        with pytest.raises(RuntimeError, match=r"live traffic \(1 events"):
            await rt.replay(SMALL_HISTORY)


async def test_live_events_during_a_replay_stop_it_and_replays_run_one_at_a_time() -> None:
    gate = anyio.Event()
    errors: list[BaseException] = []

    async def history() -> AsyncIterator[dict[str, Any]]:
        yield SMALL_HISTORY[0]
        await gate.wait()
        yield SMALL_HISTORY[1]

    async def replay(rt: FeatureRuntime) -> None:
        try:
            await rt.replay(history())
        except RuntimeError as exc:
            errors.append(exc)

    async with FeatureRuntime(SMALL) as rt, anyio.create_task_group() as tg:
        tg.start_soon(replay, rt)
        with anyio.fail_after(10):
            while not rt._clock.replaying:
                await anyio.sleep(0.001)
        with pytest.raises(RuntimeError, match="is running"):
            await rt.replay([])
        await rt.ingest({"card": "live", "ts": 1, "amount": 1})
        gate.set()
    assert len(errors) == 1
    assert "ingested outside the replay" in str(errors[0])


async def test_replays_may_follow_one_another() -> None:
    keys = keys_of(SMALL_HISTORY)
    _, whole, _ = await run_replay(SMALL, SMALL_HISTORY, keys, shards=2, batch_size=8, resolution=0)
    async with FeatureRuntime(SMALL, shards=3) as rt:
        first = await rt.replay(SMALL_HISTORY[:50], resolution=0)
        second = await rt.replay(SMALL_HISTORY[50:], resolution=0)
        parts = await rt.get_many(keys)
    assert_same_vectors(parts, whole)
    assert first.accepted + second.accepted == len(SMALL_HISTORY)
    assert second.clock_start is not None and first.clock_end is not None
    assert second.clock_start >= first.clock_end


async def test_events_the_replay_cannot_place_go_to_dead_letters() -> None:
    fs = FeatureSet(
        name="two",
        key="k",
        time="ts",
        streams=["a", "b"],
        features=[Count(name="n"), Count(name="nb", stream="b")],
    )
    history: list[Any] = [
        {"k": "x", "ts": 1_000, "s": "a", "at": 1.0},
        {"ts": 1_500, "s": "a", "at": 1.5},  # no key: the runtime rejects it
        {"k": "x", "ts": 2_000, "s": "c", "at": 2.0},  # no such stream
        {"k": "x", "ts": 2_500, "s": "b"},  # the arrival function fails
        b'{"k": "y", "ts": 3000, "s": "b", "at": 3.0}',  # bytes are decoded once
    ]
    async with FeatureRuntime(fs) as rt:
        result = await rt.replay(history, stream=lambda e: e["s"], arrival=lambda e: e["at"])
        assert (result.events, result.accepted, result.rejected) == (5, 2, 3)
        assert (result.first_event_time, result.last_event_time, result.span_ms) == (
            1_000,
            3_000,
            2_000,
        )
        assert (result.clock_start, result.clock_end) == (1.0, 3.0)
        details = sorted(letter.detail for letter in rt.dead_letters.letters())
        assert len(details) == 3
        assert details[0].startswith("arrival: the arrival function raised KeyError('at')")
        assert "key field 'k' is missing" in details[1]
        assert details[2].startswith("stream: 'c' is not a stream (known: a, b)")
        assert (await rt.get("x"))["n"] == 1 and (await rt.get("y"))["nb"] == 1


async def test_until_moves_the_clock_on_after_the_history() -> None:
    history = [{"card": "a", "ts": 1_000, "amount": 2}, {"card": "a", "ts": 4_000, "amount": 3}]
    async with FeatureRuntime(SMALL) as rt:
        result = await rt.replay(history)
        assert (await rt.get("a"))["sum_10s"] == 5  # the window [0, 10 s) is open
        assert rt._clock() == 4.0  # the clock stays where the replay left it
    assert result.clock_end == 4.0
    async with FeatureRuntime(SMALL) as rt:
        sub = rt.updates()
        result = await rt.replay(history, until=4.0 + 2 + 6.5)  # key clock at 10.5 s
        await sub.aclose()
        closes = [(u.window, u.values) async for u in sub if u.kind == "close"]
        assert result.clock_end == 12.5
    assert closes == [((0, 10_000), {"sum_10s": 5})]


async def test_an_async_history_is_replayed_too() -> None:
    async def history() -> AsyncIterator[dict[str, Any]]:
        for event in SMALL_HISTORY:
            yield event

    keys = keys_of(SMALL_HISTORY)
    _, want, _ = await run_replay(SMALL, SMALL_HISTORY, keys, shards=2, batch_size=8)
    _, got, _ = await run_replay(SMALL, history(), keys, shards=1, batch_size=512)
    assert_same_vectors(got, want)


async def test_replay_arguments_are_checked() -> None:
    async with FeatureRuntime(SMALL) as rt:
        with pytest.raises(ValueError, match="stream: no stream named 'x'"):
            await rt.replay([], stream="x")
        with pytest.raises(TypeError, match="stream must be a stream name or a function"):
            await rt.replay([], stream=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="arrival must be a field name or a function"):
            await rt.replay([], arrival=3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="resolution must be a number of seconds >= 0"):
            await rt.replay([], resolution=-1)
        with pytest.raises(ValueError, match="until must be a number of seconds >= 0, got 'x'"):
            await rt.replay([], until="x")  # type: ignore[arg-type]
        # an event time in ms where seconds are asked for: the clock would jump to year 55,000
        with pytest.raises(
            ValueError,
            match=r"until is in seconds since the epoch, at most 10413792000 \(the year 2300\), "
            r"got 1700000130000 \(a time in milliseconds\? divide it by 1000\)",
        ):
            await rt.replay([], until=1_700_000_130_000)
        with pytest.raises(ValueError, match=r"got 1e\+20$"):
            await rt.replay([], until=1e20)
        result = await rt.replay([])
        assert (result.events, result.steps, result.clock_start, result.span_ms) == (0, 0, None, 0)


# -- the command line -------------------------------------------------------------------------

#: the feature set the command-line tests name as ``tests.runtime.replay.test_replay:SMALL``
CLI_SPEC = "tests.runtime.replay.test_replay:SMALL"


def write_lines(path: Path, items: list[Any]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(item) + b"\n" for item in items))


def test_the_command_line_checks_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    online = anyio.run(small_online)
    events, vectors = tmp_path / "events.jsonl", tmp_path / "online.jsonl"
    write_lines(events, SMALL_HISTORY)
    write_lines(vectors, list(online.values()))
    args = ["--features", CLI_SPEC, "--events", str(events), "--online", str(vectors)]
    assert main([*args, "--resolution", "0"]) == 0
    assert "OK" in capsys.readouterr().out
    changed = [msgspec.structs.replace(v, values={**v.values, "n": 0}) for v in online.values()]
    write_lines(vectors, changed[:3])
    assert main([*args, "--resolution", "0", "--json", "--sample"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [f["feature"] for f in report["features"] if f["differ"]] == ["n"]
    assert (
        msgspec.convert({k: v for k, v in report.items() if k != "ok"}, ParityReport)
        .features[0]
        .differ
        == 3
    )


def test_the_command_line_reports_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, online = tmp_path / "events.jsonl", tmp_path / "online.jsonl"
    write_lines(events, SMALL_HISTORY[:3])
    online.write_text('{"key": "c1", "values": {"n": 1}}\n[1, 2]\n')
    args = ["--events", str(events), "--online", str(online)]
    assert main(["--features", CLI_SPEC, *args]) == 2
    assert "online.jsonl line 2: expected an object with 'key' and 'values'" in (
        capsys.readouterr().err
    )
    assert main(["--features", "tests.runtime.replay.test_replay:FakeClock", *args]) == 2
    assert "not a FeatureSet" in capsys.readouterr().err
    assert main(["--features", "no_such_module_here:x", *args]) == 2
    assert "cannot import module 'no_such_module_here'" in capsys.readouterr().err


def test_a_spec_files_join_functions_need_the_command_lines_allow_list(tmp_path: Path) -> None:
    from runtime import Join

    from ..joins.test_joins import same_region

    join = Join(name="j", left="l", right="r", after=100, predicate=same_region)
    spec = FeatureSet(
        name="cli", key="ad", time="ts", streams=["l", "r"], features=[], joins=[join]
    )
    path = tmp_path / "spec.json"
    path.write_bytes(spec.to_json())
    with pytest.raises(InputError, match="cannot read"):
        load_feature_set(str(path))  # a spec file reaches no code unless allowed
    allowed = load_feature_set(str(path), ["tests.runtime.joins"])
    assert allowed.joins[0].predicate_function is same_region


def test_the_command_line_has_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.parity", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[3],
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert "--features SPEC" in done.stdout and "--online FILE" in done.stdout
    assert done.stderr == ""
