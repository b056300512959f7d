"""Evolution: a checkpoint restored into a feature set with features added or removed. A
stream cut at a random point, checkpointed with feature set A and restored into B (A with
features added and removed, keyed and windowed, at several shard counts): the kept features
equal an uninterrupted run, the added ones a run over the events after the restore, the
removed ones are gone; a feature whose definition changed is refused, named with the
difference. With a backfill (the input from its start), the added features equal an
uninterrupted run too, at the restore and with ``register(backfill=)``."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    CheckpointConfig,
    CheckpointError,
    ConfigError,
    Count,
    CsvSource,
    FeatureRuntime,
    FeatureSet,
    Hopping,
    JsonLinesSource,
    Last,
    Max,
    Mean,
    Min,
    SequencePattern,
    Session,
    Sliding,
    Step,
    Sum,
    Tumbling,
    Where,
)

from ..support.oracle import same

_serial = itertools.count()

#: each reads a field or window of its own, so that no two share running state
POOL: dict[str, Any] = {
    feature.name: feature
    for feature in [
        Count(name="n"),
        Sum(name="s", field="amount"),
        Max(name="mx", field="v"),
        Last(name="last_v", field="w"),
        Sum(name="ws", field="amount", window=Sliding(size=1000)),
        Min(name="wmin", field="v", window=Sliding(size=700)),
        Count(name="wc", window=Tumbling(size=500)),
        Max(name="tmax", field="v", window=Tumbling(size=500)),
        Mean(name="tmean", field="w", window=Tumbling(size=800)),
        Sum(name="hsum", field="amount", window=Hopping(size=1000, hop=250)),
        Count(name="hn", window=Hopping(size=1000, hop=250)),
        Count(name="sn", window=Session(gap=400)),
        Max(name="smax", field="v", window=Session(gap=400)),
        SequencePattern(
            name="low_then_high",
            within=1500,
            steps=(
                Step(where=Where(field="v", op="<", value=-20)),
                Step(where=Where(field="v", op=">", value=20)),
            ),
        ),
    ]
}
#: features that share window accumulators (one buffer per window and field): a kept one's
#: accumulators may lack what an added one needs (a max beside a kept sum)
SHARED: dict[str, Any] = {
    feature.name: feature
    for window, tag in (
        (Tumbling(size=500), "t"),
        (Hopping(size=1000, hop=250), "h"),
        (Session(gap=400), "s"),
    )
    for feature in [
        Sum(name=f"{tag}_sum", field="v", window=window),
        Max(name=f"{tag}_max", field="v", window=window),
        Mean(name=f"{tag}_mean", field="v", window=window),
        Min(name=f"{tag}_min", field="v", window=window),
    ]
}
KEYS = ["a", "b", "c", 1, 2]


def feature_set(names: list[str], emit: str = "update", pool: dict[str, Any] = POOL) -> FeatureSet:
    return FeatureSet(
        name="ev",
        key="card",
        time="ts",
        features=[pool[name] for name in sorted(names)],
        emit=emit,
    )


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=0, max_value=60))
    t = 10_000
    events = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 10, 50, 120, 300, 700]))
        events.append(
            {
                "card": draw(st.sampled_from(KEYS)),
                "ts": t,
                "amount": draw(st.one_of(st.integers(-100, 100), st.none())),
                "v": draw(st.integers(-50, 50)),
                "w": draw(st.floats(-10, 10, allow_nan=False)),
            }
        )
    return events


async def run(
    names: list[str],
    events: list[dict[str, Any]],
    shards: int,
    directory: Path | None,
    backfill: Any = None,
    emit: str = "update",
    workers: int = 0,
    pool: dict[str, Any] = POOL,
) -> dict[Any, dict[str, Any]]:
    config = None
    if directory is not None:
        config = CheckpointConfig(directory=str(directory), interval=None)
    async with FeatureRuntime(
        feature_set(names, emit, pool),
        shards=shards,
        checkpoints=config,
        backfill=backfill,
        workers=workers,
    ) as rt:
        if events:
            await rt.ingest_many(events)
        await rt.flush()
        vectors = await rt.get_many(KEYS)
        return {key: vector.values for key, vector in vectors.items()}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    events=streams(),
    cut=st.floats(0, 1),
    before=st.sets(st.sampled_from(sorted(POOL)), min_size=1),
    after=st.sets(st.sampled_from(sorted(POOL)), min_size=1),
    shards=st.sampled_from([(1, 1), (1, 3), (3, 1), (4, 2)]),
    backfilled=st.booleans(),
    history=st.sampled_from(["list", "async"]),
    emit=st.sampled_from(["update", "close"]),
)
@pytest.mark.anyio
async def test_kept_features_go_on_added_ones_start_empty_or_backfilled_removed_ones_are_gone(
    tmp_path: Path,
    events: list[dict[str, Any]],
    cut: float,
    before: set[str],
    after: set[str],
    shards: tuple[int, int],
    backfilled: bool,
    history: str,
    emit: str,
) -> None:
    at = int(len(events) * cut)
    # the whole input is given: the runtime replays its first events, up to the checkpoint's
    # position
    backfill = None if not backfilled else events if history == "list" else aiter_of(events)
    got, whole = await evolved(tmp_path, events, at, before, after, shards, backfill, emit)
    added = sorted(after - before)
    fresh = await run(added, events[at:], 1, None, emit=emit) if added else {}
    for key in KEYS:
        assert set(got[key]) == after
        for name in after & before:
            assert same(got[key][name], whole[key][name]), (key, name, got[key], whole[key])
        for name in after - before:
            want = whole if backfilled else fresh
            assert same(got[key][name], want[key][name]), (key, name, got[key], want[key])


async def evolved(
    tmp_path: Path,
    events: list[dict[str, Any]],
    at: int,
    before: set[str],
    after: set[str],
    shards: tuple[int, int],
    backfill: Any,
    emit: str,
    pool: dict[str, Any] = POOL,
) -> tuple[dict[Any, dict[str, Any]], dict[Any, dict[str, Any]]]:
    """The values of ``after`` restored from a checkpoint of ``before`` taken after the
    events up to ``at``, then given the rest; and of an uninterrupted run of both."""
    directory = tmp_path / f"run-{next(_serial)}"
    await run(sorted(before), events[:at], shards[0], directory, emit=emit, pool=pool)
    got = await run(sorted(after), events[at:], shards[1], directory, backfill, emit, pool=pool)
    whole = await run(sorted(before | after), events, 1, None, emit=emit, pool=pool)
    return got, whole


async def aiter_of(events: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for event in events:
        yield event


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    events=streams(),
    cut=st.floats(0, 1),
    before=st.sets(st.sampled_from(sorted(POOL)), min_size=1),
    added=st.sets(st.sampled_from(sorted(POOL)), min_size=1),
    shards=st.sampled_from([1, 3]),
)
@pytest.mark.anyio
async def test_register_with_backfill_fills_new_features_as_if_they_ran_from_the_start(
    events: list[dict[str, Any]], cut: float, before: set[str], added: set[str], shards: int
) -> None:
    added -= before
    if not added:
        return
    at = int(len(events) * cut)
    async with FeatureRuntime(feature_set(sorted(before)), shards=shards) as rt:
        if events[:at]:
            await rt.ingest_many(events[:at])
        await rt.register(*[POOL[name] for name in sorted(added)], backfill=events)
        if events[at:]:
            await rt.ingest_many(events[at:])
        await rt.flush()
        got = {key: vector.values for key, vector in (await rt.get_many(KEYS)).items()}
    whole = await run(sorted(before | added), events, 1, None)
    for key in KEYS:
        for name in before | added:
            assert same(got[key][name], whole[key][name]), (key, name, got[key], whole[key])


@pytest.mark.anyio
async def test_a_feature_whose_definition_changed_is_refused_naming_it(tmp_path: Path) -> None:
    config = CheckpointConfig(directory=str(tmp_path / "cp"), interval=None)
    fs = feature_set(["n", "ws"])
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1, "amount": 3})
    longer = Sum(name="ws", field="amount", window=Sliding(size=2000))
    changed = FeatureSet(name="ev", key="card", time="ts", features=[POOL["n"], longer])
    with pytest.raises(CheckpointError, match=r"feature 'ws': window\.size 1000 -> 2000"):
        async with FeatureRuntime(changed, checkpoints=config):
            pass
    # the checkpoint is intact: the old definitions restore it
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        assert (await rt.get("a")).values == {"n": 1, "ws": 3}


@pytest.mark.anyio
async def test_an_added_feature_in_a_kept_window_starts_empty_in_it(
    tmp_path: Path,
) -> None:
    config = CheckpointConfig(directory=str(tmp_path / "cp"), interval=None)
    async with FeatureRuntime(feature_set(["wc"]), checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1})
    # the tumbling window of wc goes on; tsum's buffer in it starts empty
    grown = FeatureSet(
        name="ev",
        key="card",
        time="ts",
        features=[POOL["wc"], Sum(name="tsum", field="v", window=Tumbling(size=500))],
    )
    async with FeatureRuntime(grown, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 2, "v": 4})
        assert (await rt.get("a")).values == {"wc": 2, "tsum": 4}


@pytest.mark.anyio
async def test_an_added_feature_sharing_part_of_a_kept_ones_state_needs_a_backfill(
    tmp_path: Path,
) -> None:
    config = CheckpointConfig(directory=str(tmp_path / "cp"), interval=None)
    events = [{"card": "a", "ts": t, "amount": t} for t in (1, 2, 3)]
    async with FeatureRuntime(feature_set(["s"]), checkpoints=config) as rt:
        await rt.ingest_many(events[:2])
    # a mean of the field reuses the sum's running total, and counts values of its own
    grown = FeatureSet(
        name="ev", key="card", time="ts", features=[POOL["s"], Mean(name="m", field="amount")]
    )
    with pytest.raises(CheckpointError, match="added feature 'm' shares part of its running"):
        async with FeatureRuntime(grown, checkpoints=config):
            pass
    async with FeatureRuntime(grown, checkpoints=config, backfill=events) as rt:
        await rt.ingest(events[2])
        assert (await rt.get("a")).values == {"s": 6, "m": 2.0}


@pytest.mark.anyio
async def test_a_kept_window_buffer_whose_features_need_more_needs_a_backfill(
    tmp_path: Path,
) -> None:
    config = CheckpointConfig(directory=str(tmp_path / "cp"), interval=None)
    tsum = Sum(name="tsum", field="v", window=Tumbling(size=500))
    events = [{"card": "a", "ts": 1, "v": 2}, {"card": "a", "ts": 2, "v": 5}]
    async with FeatureRuntime(
        FeatureSet(name="ev", key="card", time="ts", features=[tsum]), checkpoints=config
    ) as rt:
        await rt.ingest(events[0])
    grown = FeatureSet(name="ev", key="card", time="ts", features=[tsum, POOL["tmax"]])
    with pytest.raises(
        CheckpointError,
        match=r"'tsum' shares its window state with the added feature\(s\) 'tmax', which need "
        r"statistics it does not keep: backfill them from history \(backfill=\)",
    ):
        async with FeatureRuntime(grown, checkpoints=config):
            pass
    # with the history, the window is rebuilt for both from it
    async with FeatureRuntime(grown, checkpoints=config, backfill=events) as rt:
        await rt.ingest(events[1])
        assert (await rt.get("a")).values == {"tsum": 7, "tmax": 5}


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    events=streams(),
    cut=st.floats(0, 1),
    before=st.sets(st.sampled_from(sorted(SHARED)), min_size=1),
    after=st.sets(st.sampled_from(sorted(SHARED)), min_size=1),
    shards=st.sampled_from([(1, 1), (1, 3), (3, 2)]),
    emit=st.sampled_from(["update", "close"]),
)
@pytest.mark.anyio
async def test_with_a_backfill_features_sharing_window_state_equal_an_uninterrupted_run(
    tmp_path: Path,
    events: list[dict[str, Any]],
    cut: float,
    before: set[str],
    after: set[str],
    shards: tuple[int, int],
    emit: str,
) -> None:
    """Added features share tumbling, hopping and session accumulators with kept ones (a max
    beside a kept sum needs extremes the sum's accumulators did not keep): with the history,
    the kept features they share them with are backfilled with them, and every feature
    equals an uninterrupted run."""
    at = int(len(events) * cut)
    got, whole = await evolved(tmp_path, events, at, before, after, shards, events, emit, SHARED)
    for key in KEYS:
        assert set(got[key]) == after
        for name in after:
            assert same(got[key][name], whole[key][name]), (key, name, got[key], whole[key])


def test_backfill_is_refused_with_workers() -> None:
    with pytest.raises(ConfigError, match="backfill"):
        FeatureRuntime(feature_set(["n"]), workers=1, backfill=[])


@pytest.mark.anyio
async def test_a_file_source_backfills_from_its_start(tmp_path: Path) -> None:
    events = [
        {"card": "ab"[i % 2], "ts": 1_000 + 100 * i, "amount": i, "v": i % 7} for i in range(40)
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in events))
    config = CheckpointConfig(directory=str(tmp_path / "cp"), interval=None)
    async with FeatureRuntime(feature_set(["n"]), checkpoints=config) as rt:
        await rt.ingest_many(events[:25])
    names = ["n", "s", "hsum", "smax"]
    async with JsonLinesSource(path) as source:
        async with FeatureRuntime(feature_set(names), checkpoints=config, backfill=source) as rt:
            await rt.ingest_many(events[25:])
            await rt.flush()
            got = {key: v.values for key, v in (await rt.get_many(["a", "b"])).items()}
    whole = await run(names, events, 1, None)
    for key in ("a", "b"):
        for name in names:
            assert same(got[key][name], whole[key][name]), (key, name, got[key], whole[key])


@pytest.mark.anyio
async def test_a_file_without_the_key_column_is_refused_whole_as_a_backfill(
    tmp_path: Path,
) -> None:
    """As ``consume`` refuses it: not read to its end, each row a dead letter, the features
    registered empty."""
    path = tmp_path / "history.csv"
    path.write_text("user,ts,amount\n" + "".join(f"a,{1_000 + i},{i}\n" for i in range(50)))
    async with FeatureRuntime(feature_set(["n"])) as rt:
        await rt.ingest({"card": "a", "ts": 900, "amount": 1})
        async with CsvSource(path, schema={"ts": "int", "amount": "int"}) as source:
            with pytest.raises(ConfigError, match=r"has no column 'card' \(the feature set's key"):
                await rt.register(Sum(name="s", field="amount"), backfill=source)
        assert rt.dead_letters.count() == 0


@pytest.mark.anyio
async def test_worker_processes_restore_an_evolved_feature_set(tmp_path: Path) -> None:
    events = [
        {"card": KEYS[i % len(KEYS)], "ts": 1_000 + 90 * i, "amount": i, "v": i % 5, "w": 0.5}
        for i in range(60)
    ]
    directory = tmp_path / "cp"
    await run(["n", "s", "wc", "ws"], events[:35], 2, directory, workers=2)
    names = ["n", "ws", "mx", "tmax"]
    got = await run(names, events[35:], 2, directory, workers=2)
    whole = await run(names, events, 1, None)
    fresh = await run(["mx", "tmax"], events[35:], 1, None)
    for key in KEYS:
        assert set(got[key]) == set(names)
        for name in names:
            want = fresh if name in ("mx", "tmax") else whole
            assert same(got[key][name], want[key][name]), (key, name, got[key], want[key])


@pytest.mark.anyio
async def test_a_backfill_is_not_bounded_by_the_wall_clock(tmp_path: Path) -> None:
    """History accepted online long ago is older than max_past now: the backfill replays it
    without the wall-clock bounds, as it was taken then."""
    events = [{"card": "a", "ts": 1_000 + 100 * i, "amount": i, "v": i} for i in range(6)]
    config = CheckpointConfig(directory=str(tmp_path / "cp"), interval=None)
    async with FeatureRuntime(feature_set(["n"]), checkpoints=config) as rt:
        await rt.ingest_many(events)
    bounded = msgspec.structs.replace(feature_set(["n", "s"]), max_past="1d")
    async with FeatureRuntime(bounded, checkpoints=config, backfill=events) as rt:
        vector = await rt.get("a")
    assert (vector["n"], vector["s"]) == (6, 15)
