"""Reads as of a time (``rt.get(key, as_of=t)``) against the window oracle.

A read as of ``t`` at or after a key's clock shows what a read would show had the key's clock
moved on to ``t`` with no further event (as idle time moves it): the oracle's key, copied, has
its clock set to ``t`` and its due windows closed, and its vector is the expected one. A read
as of ``t`` before the key's clock shows the values at the clock, and says so in ``as_of``.

Random out-of-order streams over several keys, every window type, lateness policy and emit
mode, with and without idle time; reads at random times (around window edges, before and
after each key's clock) in the middle of the stream and at its end, on 1, 3 and 8 shards.
Reads must not change state: the updates emitted and the final vectors still match the oracle
that no read touched.
"""

from __future__ import annotations

import copy
import os
from collections import defaultdict
from typing import Any

import hypothesis
import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import FeatureRuntime, FeatureSet

from ..support.clock import FakeClock
from ..support.oracle import same
from ..support.window_oracle import WINDOW_FEATURES, KeyOracle
from .test_patterns import AA, ABC, Z
from .test_patterns import streams as pattern_streams
from .test_windows import LAST_READ, START, _idle, check, expected, options, streams

KEYS = ["a", "b", "c", 1, 2, "never"]
#: read times relative to a key's clock: before it, at it, across window edges (the window
#: oracle's windows are 1000 sliding, 500 tumbling, 900/300 hopping, sessions of gap 250)
OFFSETS = [-5000, -300, -1, 0, 1, 99, 250, 299, 300, 499, 500, 700, 899, 900, 999, 1000, 1001]
OFFSETS += [1500, 3000, 100_000]


def _oracle(opts: dict[str, Any]) -> KeyOracle:
    return KeyOracle(
        WINDOW_FEATURES,
        opts["max_out_of_orderness"],
        opts["allowed_lateness"],
        opts["late_policy"],
        opts["correction_horizon"],
        opts["emit"],
        _idle(opts),
    )


def oracle_at(oracle: KeyOracle, t: int, wall: float) -> tuple[dict[str, Any], int]:
    """What a read as of ``t`` at wall time ``wall`` shows, and the time it is as of. The read
    brings a quiet key up to ``wall`` first, as every read does (this changes ``oracle`` as
    it changes the runtime's state); the rest happens on a copy."""
    oracle.vector(wall)
    if oracle.clock is None or t <= oracle.clock:
        return oracle._vector(), t if oracle.clock is None else oracle.clock
    trial = copy.deepcopy(oracle)
    trial.clock = t
    trial._close({})
    return trial._vector(), t


@st.composite
def read_plans(draw: st.DrawFn, n: int) -> list[list[int]]:
    """Per event (and one more for the end): the offsets of the reads taken before it (most
    often none)."""
    return [
        draw(st.lists(st.sampled_from(OFFSETS), max_size=4))
        if draw(st.integers(0, 3)) == 0 or i == n
        else []
        for i in range(n + 1)
    ]


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[int]]]:
    stream = draw(streams())
    return stream, draw(read_plans(len(stream)))


def _reads(offsets: list[int], oracles: dict[Any, KeyOracle], step: int) -> list[tuple[Any, int]]:
    """The reads of one point: (key, time), each offset against one key's clock in turn."""
    reads = []
    for i, offset in enumerate(offsets):
        key = KEYS[(step + i) % len(KEYS)]
        oracle = oracles.get(key)
        clock = oracle.clock if oracle is not None and oracle.clock is not None else 10_000
        reads.append((key, max(0, clock + offset)))
    return reads


def plan(
    stream: list[dict[str, Any]], plans: list[list[int]], opts: dict[str, Any]
) -> list[list[tuple[Any, int, dict[str, Any], int]]]:
    """The reads before each event and at the end, with what each must show."""
    oracles: dict[Any, KeyOracle] = {}
    wall = 0.0
    expected_reads = []
    for index, offsets in enumerate(plans):
        point = []
        for key, t in _reads(offsets, oracles, index):
            if key not in oracles:
                oracles[key] = _oracle(opts)
            point.append((key, t, *oracle_at(oracles[key], t, START + wall)))
        expected_reads.append(point)
        if index < len(stream):
            event = stream[index]
            key = event["card"]
            if key not in oracles:
                oracles[key] = _oracle(opts)
            wall = event["@wall"]
            oracles[key].feed(index, event["ts"], event, START + wall)
    return expected_reads


async def run(
    stream: list[dict[str, Any]],
    reads: list[list[tuple[Any, int, dict[str, Any], int]]],
    opts: dict[str, Any],
    shards: int,
    batch_size: int,
) -> tuple[dict[Any, list[Any]], dict[Any, dict[str, Any]]]:
    feature_set = FeatureSet(name="w", key="card", time="ts", features=WINDOW_FEATURES, **opts)
    emitted: dict[Any, list[Any]] = defaultdict(list)
    clock = FakeClock(START)
    async with FeatureRuntime(feature_set, shards=shards, batch_size=batch_size, clock=clock) as rt:
        updates = rt.updates(buffer=100_000)
        for index, point in enumerate(reads):
            if point:
                await rt.flush()
                for key, t, want, as_of in point:
                    got = await rt.get(key, as_of=t)
                    assert got.as_of == as_of, (index, key, t, got.as_of, as_of)
                    for name, value in want.items():
                        assert same(got[name], value), (index, key, t, name, got[name], value)
            if index < len(stream):
                event = stream[index]
                if START + event["@wall"] > clock.now:
                    await rt.flush()  # each event is applied at its wall time
                    clock.now = START + event["@wall"]
                await rt.ingest(event)
        await rt.flush()
        if stream:
            clock.now = START + stream[-1]["@wall"] + LAST_READ
        vectors = {key: (await rt.get(key)).values for key in {e["card"] for e in stream}}
        await updates.aclose()
        async for update in updates:
            if update.group.startswith("w"):
                emitted[update.key].append(
                    (update.kind, update.event_time, update.window, update.values)
                )
    return emitted, vectors


@settings(
    max_examples=int(os.environ.get("AS_OF_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases(), opts=options(), batch_size=st.sampled_from([1, 4, 64]))
async def test_reads_as_of_a_time_match_the_window_oracle_on_1_3_and_8_shards(
    case: tuple[list[dict[str, Any]], list[list[int]]],
    opts: dict[str, Any],
    batch_size: int,
) -> None:
    stream, plans = case
    reads = plan(stream, plans, opts)
    for point in reads:
        for _, t, _, as_of in point:
            hypothesis.event("read " + ("before the clock" if as_of > t else "as of the time"))
    oracles = expected(stream, opts)  # no read touched these: reads change nothing
    for shards in (1, 3, 8):
        emitted, vectors = await run(stream, reads, opts, shards, batch_size)
        check(oracles, emitted, vectors)


# -- sequence patterns and z-scores -----------------------------------------------------------
#: the patterns of ``test_patterns`` that an event of type "z" without an amount cannot touch
PROBED = [ABC, AA, Z]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=pattern_streams(), offset=st.sampled_from([0, 1, 50, 300, 301, 799, 800, 5000]))
async def test_patterns_and_zscores_as_of_a_time_are_what_a_later_event_would_show(
    stream: list[dict[str, Any]], offset: int
) -> None:
    """As of ``t`` after a key's newest event, a sequence feature counts the matches the
    watermark at ``t`` releases (its queued events), and a z-score is gone once its window
    is empty: what a read shows after an event at ``t`` that no feature takes."""
    feature_set = FeatureSet(
        name="p", key="user", time="ts", max_out_of_orderness=300, features=PROBED
    )
    latest: dict[Any, int] = {}
    for event in stream:
        latest[event["user"]] = max(latest.get(event["user"], 0), event["ts"])
    async with FeatureRuntime(feature_set, shards=2) as rt:
        await rt.ingest_many(stream)
        got = {key: await rt.get(key, as_of=t + offset) for key, t in latest.items()}
        again = {key: await rt.get(key) for key in latest}
    probes = [{"user": key, "ts": t + offset, "type": "z"} for key, t in latest.items()]
    async with FeatureRuntime(feature_set, shards=2) as rt:
        await rt.ingest_many(stream)
        before = {key: await rt.get(key) for key in latest}
        await rt.ingest_many(probes)
        want = {key: await rt.get(key) for key in latest}
    for key, t in latest.items():
        assert got[key].as_of == t + offset
        # the read changed nothing
        assert (again[key].values, again[key].watermark) == (
            before[key].values,
            before[key].watermark,
        )
        for name in ("abc", "aa", "z"):
            assert same(got[key][name], want[key][name]), (key, name, got[key], want[key])
