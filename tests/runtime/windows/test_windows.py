"""Windowed features against the brute-force oracle of ``support.window_oracle``.

Random streams over many keys with out-of-order and duplicate timestamps, missing values and
values of the wrong type; every window type, every lateness policy, both emit modes, with and
without idle time (the events arrive at wall-clock times, with flushes, so idle ticks, between
some of them); 1, 2, 7 and 16 shards and several batch sizes. The emitted updates, closes and
corrections, the final vectors and the late-event and expiry counters must match the oracle,
and be identical for every shard count.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import hypothesis
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import FeatureRuntime, FeatureSet, Mean, Sliding, Sum

from ..support.clock import FakeClock
from ..support.oracle import same
from ..support.window_oracle import WINDOW_FEATURES, KeyOracle

amounts = st.one_of(
    st.integers(min_value=-100, max_value=100),
    st.none(),
    st.just("oops"),
)


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events whose times mostly increase, with jitter backwards (out of order), repeats
    (duplicate timestamps) and now and then a jump forward (windows close).

    Each event also has the wall-clock second it arrives at (``"@wall"``, never decreasing)
    and whether a flush runs halfway since the one before (``"@tick"``): with
    ``idle_timeout``, quiet keys' clocks move with the wall clock, and what happens must not
    depend on when ticks run."""
    n = draw(st.integers(min_value=0, max_value=70))
    t = 10_000
    wall = 0.0
    events = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 0, 10, 50, 120, 300, 700, 2000]))
        jitter = draw(st.sampled_from([0, 0, 0, 30, 200, 600, 1500]))
        wall += draw(st.sampled_from([0.0, 0.0, 0.0, 0.05, 0.3, 0.9, 2.5]))
        events.append(
            {
                "card": draw(st.sampled_from(["a", "b", "c", 1, 2])),
                "ts": max(0, t - jitter),
                "amount": draw(amounts),
                "merchant": draw(st.sampled_from(["m1", "m2", "m3", None])),
                "status": draw(st.sampled_from(["ok", "declined"])),
                "@wall": wall,
                "@tick": draw(st.booleans()),
            }
        )
    return events


@st.composite
def options(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "max_out_of_orderness": draw(st.sampled_from([0, 100, 700])),
        "allowed_lateness": draw(st.sampled_from([0, 250])),
        "late_policy": draw(st.sampled_from(["drop", "side_output", "update", "update"])),
        "correction_horizon": draw(st.sampled_from([0, 1000, 100_000])),
        "emit": draw(st.sampled_from(["update", "close"])),
        "idle_timeout": draw(st.sampled_from([None, None, "200ms", "1s"])),
    }


#: the wall clock of a run starts here, and the final reads come this long after the last event
START = 1_000.0
LAST_READ = 1.7


def _idle(opts: dict[str, Any]) -> float | None:
    idle = opts["idle_timeout"]
    return None if idle is None else {"200ms": 0.2, "1s": 1.0}[idle]


def expected(
    stream: list[dict[str, Any]], opts: dict[str, Any], features: list[Any] = WINDOW_FEATURES
) -> dict[Any, KeyOracle]:
    oracles: dict[Any, KeyOracle] = {}
    for index, event in enumerate(stream):
        key = event["card"]
        if key not in oracles:
            oracles[key] = KeyOracle(
                features,
                opts["max_out_of_orderness"],
                opts["allowed_lateness"],
                opts["late_policy"],
                opts["correction_horizon"],
                opts["emit"],
                _idle(opts),
            )
        oracles[key].feed(index, event["ts"], event, START + event["@wall"])
    if stream:
        end = START + stream[-1]["@wall"] + LAST_READ
        for oracle in oracles.values():
            oracle.vector(end)
    return oracles


async def run(
    stream: list[dict[str, Any]],
    opts: dict[str, Any],
    shards: int,
    batch_size: int,
    features: list[Any] = WINDOW_FEATURES,
) -> tuple[dict[Any, list[Any]], dict[Any, dict[str, Any]], Any]:
    feature_set = FeatureSet(name="w", key="card", time="ts", features=features, **opts)
    emitted: dict[Any, list[Any]] = defaultdict(list)
    clock = FakeClock(START)
    async with FeatureRuntime(feature_set, shards=shards, batch_size=batch_size, clock=clock) as rt:
        updates = rt.updates(buffer=100_000)
        if opts["idle_timeout"] is None:
            await rt.ingest_many(stream)
        else:
            # each event is applied at its wall time: flush before the clock moves on
            wall = 0.0
            for event in stream:
                if event["@wall"] > wall:
                    if event["@tick"]:
                        await rt.flush()
                        clock.now = START + (wall + event["@wall"]) / 2
                    await rt.flush()
                    wall = event["@wall"]
                    clock.now = START + wall
                await rt.ingest(event)
        await rt.flush()
        if stream:
            clock.now = START + stream[-1]["@wall"] + LAST_READ
        vectors = {key: (await rt.get(key)).values for key in {e["card"] for e in stream}}
        stats = await rt.statistics()
        await updates.aclose()
        async for update in updates:
            if update.group.startswith("w"):
                emitted[update.key].append(
                    (update.kind, update.event_time, update.window, update.values)
                )
    return emitted, vectors, stats.windows


def _diff(want: Any, got: Any) -> Any:
    """What differs between two emissions: the differing values by name."""
    if want[:3] != got[:3]:
        return want, got
    return {
        name: (want[3].get(name), got[3].get(name))
        for name in want[3].keys() | got[3].keys()
        if not same(want[3].get(name), got[3].get(name))
    }


def _split(out: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    updates = [o for o in out if o[0] == "update"]
    closes = sorted((o for o in out if o[0] == "close"), key=repr)
    corrections = sorted((o for o in out if o[0] == "correction"), key=repr)
    return updates, closes, corrections


def check(
    oracles: dict[Any, KeyOracle], emitted: dict[Any, list[Any]], vectors: dict[Any, Any]
) -> None:
    for key, oracle in oracles.items():
        want = _split(oracle.out)
        got = _split(emitted.get(key, []))
        for kind, w, g in zip(("update", "close", "correction"), want, got, strict=True):
            assert len(w) == len(g), (key, kind, len(w), len(g), w[-3:], g[-3:])
            for x, y in zip(w, g, strict=True):
                assert same(x, y), (key, kind, _diff(x, y))
        vector = vectors[key]
        for name, value in oracle.vector().items():
            assert same(vector[name], value), (key, name, vector[name], value)


SETTINGS = settings(
    max_examples=int(os.environ.get("WINDOW_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@SETTINGS
@given(stream=streams(), opts=options(), batch_size=st.sampled_from([1, 3, 64]))
async def test_windows_match_the_oracle_for_1_2_7_and_16_shards(
    stream: list[dict[str, Any]], opts: dict[str, Any], batch_size: int
) -> None:
    await _check_all(stream, opts, batch_size, WINDOW_FEATURES)


#: sliding windows alone: the engine runs its compiled loop (``_compile_sliding``)
SLIDING_FEATURES = [
    f for f in WINDOW_FEATURES if f.type_name == "ratio" or f.window.type_name == "sliding"
] + [
    Sum(name="short_sum", field="amount", window=Sliding(size=300)),
    Mean(name="short_mean", field="amount", window=Sliding(size=300)),
]


@SETTINGS
@given(stream=streams(), opts=options(), batch_size=st.sampled_from([1, 3, 64]))
async def test_sliding_windows_alone_match_the_oracle_for_1_2_7_and_16_shards(
    stream: list[dict[str, Any]], opts: dict[str, Any], batch_size: int
) -> None:
    await _check_all(stream, opts, batch_size, SLIDING_FEATURES)


async def _check_all(
    stream: list[dict[str, Any]], opts: dict[str, Any], batch_size: int, features: list[Any]
) -> None:
    oracles = expected(stream, opts, features)
    kinds = {o[0] for oracle in oracles.values() for o in oracle.out}
    hypothesis.event(f"emitted: {sorted(kinds)}")
    hypothesis.event(
        f"late: {sum(o.dropped + o.side + o.applied_late for o in oracles.values()) > 0}"
    )
    reference = None
    for shards in (1, 2, 7, 16):
        emitted, vectors, stats = await run(stream, opts, shards, batch_size, features)
        check(oracles, emitted, vectors)
        if reference is None:
            reference = (emitted, vectors, stats)
        else:
            for key in vectors:
                assert repr(emitted.get(key)) == repr(reference[0].get(key)), (shards, key)
                assert repr(vectors[key]) == repr(reference[1][key]), (shards, key)
            assert stats.late_dropped == reference[2].late_dropped
    assert reference is not None
    stats = reference[2]
    if stream:
        assert stats.late_dropped == sum(o.dropped for o in oracles.values())
        assert stats.late_side_output == sum(o.side for o in oracles.values())
        assert stats.late_applied == sum(o.applied_late for o in oracles.values())
        assert stats.expired_keys == sum(o.expired for o in oracles.values())
