"""Sequence patterns and z-score anomalies against brute-force oracles written here.

The pattern oracle does not simulate partial matches: for every event that matches the first
step it searches forward, in event-time order, for the first event that matches each next step,
and keeps the match if its last part is within the limit of its first. The z-score oracle
recomputes the mean and deviation of the window before each event from the events applied so
far.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    FeatureRuntime,
    FeatureSet,
    SequencePattern,
    Sliding,
    SpecError,
    Step,
    Where,
    ZScore,
)

from ..support.oracle import matches as passes
from ..support.oracle import same

ABC = SequencePattern(
    name="abc",
    within=1_000,
    steps=[
        Step(name="a", where=Where(field="type", value="a")),
        Step(name="b", where=Where(field="type", value="b")),
        Step(
            name="big c",
            where=[Where(field="type", value="c"), Where(field="amount", op=">", value=0)],
        ),
    ],
)
AA = SequencePattern(
    name="aa",
    within=300,
    where=Where(field="amount", op=">=", value=-50),
    steps=[Step(where=Where(field="type", value="a")), Step(where=Where(field="type", value="a"))],
)
ANY_THEN_X = SequencePattern(
    name="any_x", within=500, steps=[Step(), Step(where=Where(field="type", value="x"))]
)
PATTERNS = [ABC, AA, ANY_THEN_X]
Z = ZScore(name="z", field="amount", window=Sliding(size=800), threshold=1.5, min_count=3)


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=0, max_value=80))
    t = 5_000
    events = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 10, 40, 100, 250]))
        jitter = draw(st.sampled_from([0, 0, 0, 50, 300]))
        events.append(
            {
                "user": draw(st.sampled_from(["u1", "u2", 3])),
                "ts": t - jitter,
                "type": draw(st.sampled_from(["a", "b", "c", "x"])),
                "amount": draw(st.one_of(st.integers(-100, 100), st.none())),
            }
        )
    return events


def _matches(step: Step, ev: dict[str, Any]) -> bool:
    return all(passes(condition, ev) for condition in step.conditions)


def admitted(stream: list[dict[str, Any]], ooo: int, lateness: int) -> dict[Any, Any]:
    """Per key: (events the sequences see, in arrival order with their index; applied events
    for the windows; the final watermark; skipped count)."""
    result: dict[Any, Any] = {}
    clock: dict[Any, int] = {}
    for index, ev in enumerate(stream):
        key, t = ev["user"], ev["ts"]
        seen, applied, _, skipped = result.setdefault(key, ([], [], None, 0))
        if key in clock:
            wm = clock[key] - ooo
            if t < wm - lateness:
                continue  # late: dropped for every windowed feature
            if t < wm:
                applied.append((index, ev))
                clock[key] = max(clock[key], t)
                result[key] = (seen, applied, clock[key] - ooo, skipped + 1)
                continue
            clock[key] = max(clock[key], t)
        else:
            clock[key] = t
        seen.append((t, index, ev))
        applied.append((index, ev))
        result[key] = (seen, applied, clock[key] - ooo, skipped)
    return result


def expected_matches(pattern: SequencePattern, seen: list[Any], wm: int) -> list[tuple[int, ...]]:
    """Brute force: the matches among the events the watermark released, in emission order."""
    ordered = sorted((t, i, ev) for t, i, ev in seen if t <= wm)
    if pattern.where is not None:
        where = pattern.where
        ordered = [
            (t, i, ev)
            for t, i, ev in ordered
            if ev.get(where.field) is not None and ev[where.field] >= where.value
        ]
    found = []
    for start, (t0, _, ev0) in enumerate(ordered):
        if not _matches(pattern.steps[0], ev0):
            continue
        times = [t0]
        position = start
        for step in pattern.steps[1:]:
            position = next(
                (j for j in range(position + 1, len(ordered)) if _matches(step, ordered[j][2])),
                -1,
            )
            if position < 0:
                break
            times.append(ordered[position][0])
        else:
            if times[-1] - t0 <= pattern.within_ms:
                found.append((position, start, tuple(times)))
    return [times for _, _, times in sorted(found)]


async def run(
    stream: list[dict[str, Any]], opts: dict[str, Any], shards: int
) -> tuple[dict[Any, Any], dict[Any, list[Any]], Any]:
    fs = FeatureSet(name="p", key="user", time="ts", features=[*PATTERNS, Z], **opts)
    emitted: dict[Any, list[Any]] = defaultdict(list)
    async with FeatureRuntime(fs, shards=shards, batch_size=7) as rt:
        sub = rt.updates(buffer=100_000)
        await rt.ingest_many(stream)
        await rt.flush()
        vectors = {k: (await rt.get(k)).values for k in {e["user"] for e in stream}}
        stats = (await rt.statistics()).windows
        await sub.aclose()
        async for u in sub:
            if u.kind in ("match", "anomaly"):
                emitted[u.key].append((u.kind, u.values, u.parts))
    return vectors, emitted, stats


def expected_z(applied: list[Any]) -> tuple[Any, list[tuple[int, float]]]:
    """The final z and the anomalies, recomputed from the window before each event."""
    size = Z.window.size_ms  # type: ignore[union-attr]
    clock = None
    held: list[tuple[int, int]] = []  # (t, amount) applied, arrival order
    latest: Any = None
    anomalies = []
    for _, ev in applied:
        t, v = ev["ts"], ev["amount"]
        clock = t if clock is None else max(clock, t)
        window = [x for s, x in held if clock - size < s <= clock]
        if not window:
            latest = None
        if v is None:
            continue
        if t <= clock - size:
            continue
        z = None
        if len(window) >= Z.min_count:
            sd = statistics.stdev(window)
            if sd:
                z = (v - statistics.fmean(window)) / sd
        latest = z
        if z is not None and abs(z) >= Z.threshold:
            anomalies.append((t, z))
        held.append((t, v))
    if clock is not None and not [x for s, x in held if clock - size < s <= clock]:
        latest = None
    return latest, anomalies


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams(),
    ooo=st.sampled_from([0, 200]),
    lateness=st.sampled_from([0, 100]),
)
async def test_sequences_and_zscores_match_brute_force(
    stream: list[dict[str, Any]], ooo: int, lateness: int
) -> None:
    opts = {"max_out_of_orderness": ooo, "allowed_lateness": lateness}
    per_key = admitted(stream, ooo, lateness)
    found = sum(
        len(expected_matches(p, seen, wm)) for seen, _, wm, _ in per_key.values() for p in PATTERNS
    )
    hypothesis.event(f"matches: {'0' if not found else '1-5' if found <= 5 else '>5'}")
    hypothesis.event(
        f"anomalies: {bool(sum(len(expected_z(a)[1]) for _, a, _, _ in per_key.values()))}"
    )
    reference = None
    for shards in (1, 2, 7, 16):
        vectors, emitted, stats = await run(stream, opts, shards)
        for key, (seen, applied, wm, _) in per_key.items():
            matches = {p.name: expected_matches(p, seen, wm) for p in PATTERNS}
            for pattern in PATTERNS:
                assert vectors[key][pattern.name] == len(matches[pattern.name]), (key, pattern)
                got = [parts for kind, values, parts in emitted[key] if pattern.name in values]
                assert got == matches[pattern.name], (key, pattern.name)
            z, anomalies = expected_z(applied)
            assert same(vectors[key]["z"], z), (key, vectors[key]["z"], z)
            got_anomalies = [
                (parts[0], values["z"]) for kind, values, parts in emitted[key] if kind == "anomaly"
            ]
            assert len(got_anomalies) == len(anomalies), key
            for (t1, z1), (t2, z2) in zip(got_anomalies, anomalies, strict=True):
                assert t1 == t2 and same(z1, z2)
        if stream:
            assert stats.pattern_late == sum(v[3] for v in per_key.values())
        if reference is None:
            reference = (vectors, emitted)
        else:
            assert repr(sorted(vectors.items(), key=repr)) == repr(
                sorted(reference[0].items(), key=repr)
            )


async def test_partial_matches_are_bounded_and_counted() -> None:
    pattern = SequencePattern(
        name="ab",
        within="1h",
        max_partial=3,
        steps=[
            Step(where=Where(field="type", value="a")),
            Step(where=Where(field="type", value="b")),
        ],
    )
    fs = FeatureSet(name="p", key="user", time="ts", features=[pattern])
    async with FeatureRuntime(fs) as rt:
        await rt.ingest_many({"user": "u", "ts": i, "type": "a"} for i in range(10))
        await rt.ingest({"user": "u", "ts": 10, "type": "b"})
        assert (await rt.get("u"))["ab"] == 3  # the three newest a's
        stats = (await rt.statistics()).windows
        assert stats is not None and stats.partials_dropped == 7 and stats.pattern_matches == 3


def test_pattern_and_zscore_rules_are_checked() -> None:
    with pytest.raises(SpecError, match="needs 2 to 10 steps"):
        SequencePattern(name="p", within="1m", steps=[Step()])
    with pytest.raises(SpecError, match="within: must be > 0"):
        SequencePattern(name="p", within=0, steps=[Step(), Step()])
    with pytest.raises(SpecError, match="zscore needs a sliding window"):
        ZScore(name="z", field="x", window=_tumbling())
    with pytest.raises(SpecError, match="zscore features need a window"):
        ZScore(name="z", field="x")
    with pytest.raises(SpecError, match="threshold: must be a number > 0"):
        ZScore(name="z", field="x", threshold=0, window=Sliding(size="1m"))
    spec = FeatureSet.from_toml(
        """
        name = "s"
        key = "user"
        time = "ts"
        [[features]]
        type = "sequence"
        name = "login_then_pay"
        within = "10m"
        steps = [
          { name = "login", where = { field = "type", value = "login" } },
          { name = "pay", where = [{ field = "type", value = "pay" },
                                   { field = "amount", op = ">", value = 100 }] },
        ]
        """
    )
    feature = spec.features[0]
    assert isinstance(feature, SequencePattern)
    assert feature.inputs() == ("type", "amount")
    assert FeatureSet.from_json(spec.to_json()) == spec


def _tumbling() -> Any:
    from runtime import Tumbling

    return Tumbling(size="1m")
