"""Checkpoints: a run cut in two by a checkpoint and a restart gives the values of a run that was
never cut, with any shard count before and after (rescaling), for keyed aggregates, every kind
of window, percentiles, sketches, patterns, anomaly scores and a join.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    CheckpointConfig,
    CheckpointError,
    Count,
    FeatureRuntime,
    FeatureSet,
    Join,
    Max,
    Quantile,
    SequencePattern,
    Sliding,
    Step,
    Sum,
    Where,
    ZScore,
)
from runtime._checkpoints.codec import StateCodec
from runtime._checkpoints.store import CheckpointStore

from ..support.oracle import ORACLE_FEATURES, same
from ..support.window_oracle import WINDOW_FEATURES

_serial = itertools.count()

FEATURES: list[Any] = [
    *ORACLE_FEATURES,
    *WINDOW_FEATURES,
    Quantile(name="q_amount", field="amount", q=0.5, window=Sliding(size=800)),
    ZScore(name="z_amount", field="amount", window=Sliding(size=2000), min_count=3),
    SequencePattern(
        name="decline_then_ok",
        within=1500,
        steps=[
            Step(where=Where(field="status", op="==", value="declined")),
            Step(where=Where(field="status", op="==", value="ok")),
        ],
    ),
    Count(name="pairs", stream="tx_click"),
    Sum(name="paired_amount", field="tx.amount", stream="tx_click"),
]
JOIN = Join(name="tx_click", left="tx", right="clicks", before=100, after=400, how="full")
KEYS = ["a", "b", "c", 1, 2, "d", "e"]


def feature_set(**options: Any) -> FeatureSet:
    return FeatureSet(
        name="cp",
        key="card",
        time="ts",
        streams=["tx", "clicks"],
        joins=[JOIN],
        features=FEATURES,
        **options,
    )


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Mostly increasing times with jitter backwards, repeats and jumps; two streams."""
    n = draw(st.integers(min_value=0, max_value=80))
    t = 10_000
    events = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 0, 10, 50, 120, 300, 700, 2000]))
        jitter = draw(st.sampled_from([0, 0, 0, 30, 200, 600]))
        event = {
            "card": draw(st.sampled_from(KEYS)),
            "ts": max(0, t - jitter),
            "amount": draw(st.one_of(st.integers(-100, 100), st.none(), st.just("oops"))),
            "merchant": draw(st.sampled_from(["m1", "m2", "m3", None])),
            "status": draw(st.sampled_from(["ok", "declined", "review"])),
        }
        events.append((draw(st.sampled_from(["tx", "tx", "clicks"])), event))
    return events


def size_of(path: str) -> int:
    return os.path.getsize(path)


def damage(path: str) -> None:
    """Flip the bits of one byte in the middle of a file."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def checkpoints(tmp_path: Path, **options: Any) -> CheckpointConfig:
    directory = tmp_path / f"run-{next(_serial)}"
    return CheckpointConfig(directory=str(directory), interval=None, **options)


async def feed(rt: FeatureRuntime, events: list[tuple[str, dict[str, Any]]]) -> None:
    for stream, group in itertools.groupby(events, key=lambda item: item[0]):
        await rt.ingest_many([event for _, event in group], stream=stream)


async def values(rt: FeatureRuntime) -> dict[Any, dict[str, Any]]:
    await rt.flush()
    vectors = await rt.get_many(KEYS)
    return {key: vector.values for key, vector in vectors.items()}


def assert_same(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> None:
    for key, expected in want.items():
        for name, value in expected.items():
            assert same(got[key][name], value), (key, name, got[key][name], value)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    events=streams(),
    cut=st.floats(0, 1),
    shards=st.sampled_from([(1, 1), (1, 4), (4, 1), (3, 7), (16, 2)]),
    batch_size=st.sampled_from([1, 7, 64]),
    ooo=st.sampled_from([0, 300]),
    late_policy=st.sampled_from(["drop", "update"]),
)
async def test_a_restart_from_a_checkpoint_changes_no_value_whatever_the_shard_counts(
    tmp_path: Path,
    events: list[tuple[str, dict[str, Any]]],
    cut: float,
    shards: tuple[int, int],
    batch_size: int,
    ooo: int,
    late_policy: str,
) -> None:
    fs = feature_set(max_out_of_orderness=ooo, late_policy=late_policy)
    before, after = shards
    split = int(cut * len(events))
    async with FeatureRuntime(fs, shards=before, batch_size=batch_size) as rt:
        await feed(rt, events)
        want = await values(rt)
        want_stats = await rt.statistics()

    config = checkpoints(tmp_path)
    async with FeatureRuntime(fs, shards=before, batch_size=batch_size, checkpoints=config) as rt:
        assert rt.restored is None
        await feed(rt, events[:split])
    async with FeatureRuntime(fs, shards=after, batch_size=batch_size, checkpoints=config) as rt:
        assert rt.restored is not None
        assert rt.restored.position == rt.position == split
        assert rt.restored.shards == before
        await feed(rt, events[split:])
        got = await values(rt)
        stats = await rt.statistics()
    assert_same(got, want)
    assert stats.events_processed == want_stats.events_processed
    assert stats.joins["tx_click"].records == want_stats.joins["tx_click"].records
    assert stats.feature_errors == want_stats.feature_errors


async def test_a_periodic_checkpoint_holds_the_position_and_the_callers_offset(
    tmp_path: Path,
) -> None:
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path, on_shutdown=False)
    async with FeatureRuntime(fs, shards=2, checkpoints=config) as rt:
        await rt.ingest_many([{"card": "a", "ts": 1}] * 5, offset={"partition-0": 41})
        await rt.ingest({"card": "b", "ts": 2})
        await rt.ingest({"card": "b"})  # no time: rejected, but read
        info = await rt.checkpoint()
        assert (info.position, info.offset, info.keys) == (7, {"partition-0": 41}, 2)
        await rt.ingest({"card": "c", "ts": 3}, offset="after")  # not in the checkpoint
    assert info.size_bytes == size_of(info.path)
    async with FeatureRuntime(fs, shards=3, checkpoints=config) as rt:
        assert (rt.position, rt.offset) == (7, {"partition-0": 41})
        vectors = await rt.get_many(["a", "b", "c"])
        assert [v["n"] for v in vectors.values()] == [5, 1, 0]


async def test_checkpoints_are_taken_every_interval_and_the_oldest_deleted(
    tmp_path: Path,
) -> None:
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = CheckpointConfig(directory=str(tmp_path), interval=0.02, keep=2, on_shutdown=False)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1})
        for _ in range(500):
            if rt.last_checkpoint is not None and rt.last_checkpoint.sequence >= 4:
                break
            await rt.ingest({"card": "a", "ts": 1})
            await anyio.sleep(0.005)
        assert rt.last_checkpoint is not None and rt.last_checkpoint.sequence >= 4
    assert len(CheckpointStore(tmp_path).sequences()) == 2


async def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path, on_shutdown=False)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1})
        await rt.checkpoint()
        await rt.ingest({"card": "a", "ts": 2})
        newest = await rt.checkpoint()
    damage(newest.path)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        assert rt.restored is not None and rt.restored.sequence == newest.sequence - 1
        assert (await rt.get("a"))["n"] == 1


async def test_a_changed_feature_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1})
    changed = FeatureSet(
        name="p",
        key="card",
        time="ts",
        features=[Count(name="n", where=Where(field="x", op=">", value=1))],
    )
    with pytest.raises(CheckpointError, match="feature 'n': where None -> "):
        async with FeatureRuntime(changed, checkpoints=config):
            pass
    other = FeatureSet(name="q", key="card", time="ts", features=[Count(name="n")])
    with pytest.raises(CheckpointError, match="taken by the feature set 'p', not 'q'"):
        async with FeatureRuntime(other, checkpoints=config):
            pass
    # another key field: its values would take over the state of the old keys of the same
    # value (merchant 'a' counting on from card 'a')
    rekeyed = FeatureSet(name="p", key="merchant", time="ts", features=[Count(name="n")])
    with pytest.raises(
        CheckpointError,
        match=r"taken with the key field 'card', not 'merchant': .* restore with key='card'",
    ):
        async with FeatureRuntime(rekeyed, checkpoints=config):
            pass
    with pytest.raises(CheckpointError, match="key_groups"):
        async with FeatureRuntime(fs, checkpoints=config, key_groups=64):
            pass


async def test_features_registered_at_run_time_are_restored_when_registered_again(
    tmp_path: Path,
) -> None:
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.register(Sum(name="s", field="x"))
        await rt.ingest_many([{"card": "a", "ts": 1, "x": 2}, {"card": "a", "ts": 2, "x": 3}])
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.register(Sum(name="s", field="x"))
        await rt.ingest({"card": "a", "ts": 3, "x": 4})
        vector = await rt.get("a")
        assert (vector["n"], vector["s"]) == (3, 9)


async def test_a_group_removed_from_the_feature_set_is_dropped_not_carried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A feature group the feature set no longer has (all its features removed) is dropped
    at the restore, said in the log: not carried in every later checkpoint as one of features
    registered at run time, whence it came back, stale, once the feature set had it again."""
    windowed = Max(name="mx", field="x", window=Sliding(size=10_000))
    before = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n"), windowed])
    after = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path)
    async with FeatureRuntime(before, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1, "x": 5})
    with caplog.at_level("INFO"):
        async with FeatureRuntime(after, checkpoints=config) as rt:
            await rt.ingest({"card": "a", "ts": 2, "x": 7})
    said = [r.getMessage() for r in caplog.records]
    # (the info line checkpoint_features_removed names it; the log's level may be set above
    # info by what ran before in this process)
    assert not any("checkpoint_state_pending" in m for m in said), said
    newest = CheckpointStore(config.directory).latest()
    assert newest is not None
    assert [state.name for state in newest[0].actors] == ["g0"]
    # back in the feature set, it is an added feature: it starts empty (not at x=5, ts=1)
    async with FeatureRuntime(before, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 3, "x": 1})
        vector = await rt.get("a")
        assert (vector["n"], vector["mx"]) == (3, 1)


async def test_features_registered_at_run_time_stay_pending_until_registered_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.register(Sum(name="s", field="x"))
        await rt.ingest({"card": "a", "ts": 1, "x": 2})
    with caplog.at_level("INFO"):
        async with FeatureRuntime(fs, checkpoints=config) as rt:  # not registered this time
            await rt.ingest({"card": "a", "ts": 2, "x": 3})
    said = [r.getMessage() for r in caplog.records if "checkpoint_state_pending" in r.getMessage()]
    assert len(said) == 1 and "'s'" in said[0] and "registered at run time" in said[0], said
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.register(Sum(name="s", field="x"))
        vector = await rt.get("a")
        assert (vector["n"], vector["s"]) == (2, 2)


async def test_enrichment_caches_can_be_kept(tmp_path: Path) -> None:
    from runtime import CustomSource, Lookup

    class Rows:
        calls = 0

        async def get_many(self, keys: list[Any]) -> dict[Any, Any]:
            Rows.calls += 1
            return {key: {"tier": "gold"} for key in keys}

    fs = FeatureSet(
        name="e",
        key="card",
        time="ts",
        sources=[CustomSource(name="cards")],
        lookups=[Lookup(name="card", field="card", source="cards")],
        features=[Count(name="gold", where=Where(field="card.tier", op="==", value="gold"))],
    )
    config = checkpoints(tmp_path, caches=True)
    async with FeatureRuntime(fs, checkpoints=config, sources={"cards": Rows()}) as rt:
        await rt.ingest({"card": "a", "ts": 1})
        await rt.flush()
    assert Rows.calls == 1
    async with FeatureRuntime(fs, checkpoints=config, sources={"cards": Rows()}) as rt:
        await rt.ingest({"card": "a", "ts": 2})
        await rt.flush()
        assert (await rt.get("a"))["gold"] == 2
    assert Rows.calls == 1  # the row came from the restored cache


def test_the_codec_keeps_types_shared_objects_and_big_ints() -> None:
    codec = StateCodec()
    shared = [1, 2]
    value = {
        ("a", 1): (shared, shared),
        "big": 2**70,
        "neg": -(2**70),
        "set": {1, "x"},
        "bytes": bytearray(b"\x00\x01"),
        "nested": [[1, (2, 3)], {"k": None}],
        "nan": float("inf"),
    }
    back = codec.decode(codec.encode(value))
    assert back == value
    first, second = back[("a", 1)]
    assert first is second
    assert type(back["nested"][0][1]) is tuple


def test_the_codec_refuses_what_it_cannot_restore() -> None:
    codec = StateCodec()
    with pytest.raises(CheckpointError, match="cannot checkpoint a value of type"):
        codec.encode({"f": lambda: 1})
    data = msgspec.msgpack.encode([1, {"os.system": "dict"}, [7, "os.system", [[], []]]])
    with pytest.raises(CheckpointError, match="may not be restored"):
        codec.decode(data)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(events=streams(), cut=st.floats(0, 1), shards=st.sampled_from([(2, 1), (1, 3)]))
async def test_idle_time_and_state_ttl_go_on_after_a_restore(
    tmp_path: Path, events: list[tuple[str, dict[str, Any]]], cut: float, shards: tuple[int, int]
) -> None:
    """With a clock that follows event time, idle advances and expiry after a restore are those
    of a run never cut: the wall-clock bookkeeping of keys is in the checkpoint."""
    fs = feature_set(idle_timeout="1s", state_ttl="5s")
    split = int(cut * len(events))

    async def run(parts: list[list[tuple[str, dict[str, Any]]]]) -> dict[Any, dict[str, Any]]:
        now = [0.0]
        config = checkpoints(tmp_path)
        result: dict[Any, dict[str, Any]] = {}
        for index, part in enumerate(parts):
            async with FeatureRuntime(
                fs, shards=shards[index], clock=lambda: now[0], checkpoints=config
            ) as rt:
                for stream, event in part:
                    await rt.flush()
                    # the clock follows the newest event, flushed first (a wall clock does not
                    # go back: with one that did, idle time would depend on the timers' moments)
                    now[0] = max(now[0], event["ts"] / 1000)
                    await rt.ingest(event, stream=stream)
                await rt.flush()
                result = await values(rt)
        return result

    want = await run([events])
    got = await run([events[:split], events[split:]])
    assert_same(got, want)


def _damage_the_only_checkpoint(directory: Path, damage: str) -> str:
    [only] = sorted(directory.glob("checkpoint-*.fck"))
    data = only.read_bytes()
    if damage == "truncated":
        only.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        only.write_bytes(data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:])
    else:
        only.write_bytes(b"")
    return only.name


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty"])
async def test_a_directory_whose_every_checkpoint_is_damaged_is_refused(
    tmp_path: Path, damage: str
) -> None:
    """Starting empty would drop the state, and the empty state's shutdown checkpoint would
    then stand in for it as a normal restore: refused, naming the directory and the newest
    file; restore=False starts empty and keeps them."""
    fs = FeatureSet(name="p", key="card", time="ts", features=[Count(name="n")])
    config = checkpoints(tmp_path)
    async with FeatureRuntime(fs, checkpoints=config) as rt:
        await rt.ingest({"card": "a", "ts": 1})
    name = _damage_the_only_checkpoint(Path(config.directory), damage)
    with pytest.raises(
        CheckpointError,
        match=rf"holds 1 checkpoint\(s\), the newest {name}, but none could be restored",
    ):
        async with FeatureRuntime(fs, checkpoints=config):
            pass
    fresh = CheckpointConfig(directory=config.directory, restore=False)
    async with FeatureRuntime(fs, checkpoints=fresh) as rt:
        assert rt.restored is None
