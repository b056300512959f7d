"""User-defined aggregates' state: checkpoints and restores (into another shard count, with
River objects pickled by ``dump``, mutable lists, tuples), worker processes, and the errors of
a state a checkpoint cannot hold or load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime import (
    CheckpointConfig,
    CheckpointError,
    Count,
    Custom,
    FeatureRuntime,
    FeatureSet,
    Hopping,
    Session,
    Sliding,
    Tumbling,
    training_set,
)
from runtime._checkpoints.codec import state_codec
from runtime._keyed.custom import CustomCell, CustomRunner

from ..support.oracle import key_values, same
from .aggregates import DistinctList, RiverVar, Spread, SumOfSquares

T0 = 1_700_000_000_000


def _features() -> list[Any]:
    features: list[Any] = [Count(name="n")]
    windows = {
        "": None,
        "s_": Sliding(size="2s"),
        "t_": Tumbling(size="1s"),
        "h_": Hopping(size="3s", hop="1s"),
        "x_": Session(gap="400ms"),
    }
    for prefix, window in windows.items():
        features += [
            Custom(name=f"{prefix}sq", field="amount", aggregate=SumOfSquares(), window=window),
            Custom(name=f"{prefix}spread", field="amount", aggregate=Spread(), window=window),
            Custom(name=f"{prefix}var", field="amount", aggregate=RiverVar(), window=window),
            Custom(name=f"{prefix}m", field="merchant", aggregate=DistinctList(), window=window),
        ]
    return features


FEATURE_SET = FeatureSet(
    name="state",
    key="card",
    time="ts",
    max_out_of_orderness="500ms",
    allowed_lateness="300ms",
    late_policy="update",
    features=_features(),
)
STREAM = [
    {
        "card": f"c{i % 4}",
        "ts": T0 + 97 * i - (150 if i % 5 == 0 else 0),
        "amount": (i * 7) % 23 - 5,
        "merchant": f"m{i % 3}",
    }
    for i in range(160)
]
KEYS = ["c0", "c1", "c2", "c3"]


async def _values(rt: FeatureRuntime) -> dict[str, Any]:
    return {key: vector.values for key, vector in (await rt.get_many(KEYS)).items()}


async def test_a_restore_into_another_shard_count_gives_the_values_of_a_run_without_one(
    tmp_path: Path,
) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        await rt.ingest_many(STREAM)
        want = await _values(rt)
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    async with FeatureRuntime(FEATURE_SET, shards=2, checkpoints=config) as rt:
        await rt.ingest_many(STREAM[:70])
        half = await _values(rt)
    async with FeatureRuntime(FEATURE_SET, shards=5, checkpoints=config) as rt:
        assert rt.restored is not None
        assert await _values(rt) == half  # to the bit: the states came back as they were
        await rt.ingest_many(STREAM[70:])
        got = await _values(rt)
    assert same(got, want)
    # each kind of window held something custom
    assert all(got["c1"][f"{p}m"] for p in ("", "s_", "t_", "h_", "x_"))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_custom_aggregates_in_worker_processes_equal_those_in_process(
    tmp_path: Path,
) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        await rt.ingest_many(STREAM)
        want = await _values(rt)
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    # the feature set reaches the worker pickled: its aggregates' classes are imported there
    async with FeatureRuntime(FEATURE_SET, shards=2, workers=1, checkpoints=config) as rt:
        await rt.ingest_many(STREAM[:90])
        await rt.checkpoint()
    async with FeatureRuntime(FEATURE_SET, shards=3, workers=1, checkpoints=config) as rt:
        assert rt.restored is not None
        await rt.ingest_many(STREAM[90:])
        got = await _values(rt)
    assert same(got, want)


class _Opaque:
    """A state object the checkpoint codec does not know."""


class OpaqueState:
    """An aggregate whose state is an object of its own, with no dump: not checkpointable."""

    def empty(self) -> Any:
        return _Opaque()

    def update(self, state: Any, value: Any) -> Any:
        return state

    def value(self, state: Any) -> Any:
        return 1


class BrokenLoad(SumOfSquares):
    """A sum of squares whose checkpointed states cannot be loaded back."""

    def dump(self, state: Any) -> Any:
        return {"sq": state}

    def load(self, data: Any) -> Any:
        raise ValueError("this state is from another version")


def test_a_state_without_dump_that_a_checkpoint_cannot_hold_fails_naming_its_type() -> None:
    feature = Custom(name="opaque", field="x", aggregate=OpaqueState())
    cell = CustomRunner(feature).new_cell()
    with pytest.raises(CheckpointError, match=r"cannot checkpoint a value of type .*_Opaque"):
        state_codec().encode([cell])


def test_a_cell_is_written_as_its_dump_and_loaded_by_its_runner() -> None:
    feature = Custom(name="sq", field="x", aggregate=BrokenLoad())
    runner = CustomRunner(feature)
    cell = runner.new_cell()
    runner.step(cell, 3)
    restored = state_codec().decode(state_codec().encode([cell]))[0]
    assert isinstance(restored, CustomCell) and restored.runner is None
    assert restored.state == {"sq": 9}  # the dump, until a runner loads it
    spread = Custom(name="spread", field="x", aggregate=Spread())
    runner = CustomRunner(spread)
    cell = runner.new_cell()
    for x in (4, -2, 9):
        runner.step(cell, x)
    restored = state_codec().decode(state_codec().encode([cell]))[0]
    assert runner.read(restored) == 11
    assert restored.state == (-2, 9)  # a tuple comes back a tuple


async def test_a_windowed_state_whose_load_raises_makes_the_checkpoint_unusable_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feature_set = FeatureSet(
        name="broken",
        key="card",
        time="ts",
        features=[
            Custom(name="sq_1s", field="amount", aggregate=BrokenLoad(), window=Sliding(size="1s"))
        ],
    )
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    async with FeatureRuntime(feature_set, checkpoints=config) as rt:
        await rt.ingest_many(STREAM[:10])
    # as any checkpoint that cannot be restored: logged with the reason, and not used; the
    # only one, so the start is refused rather than empty
    with pytest.raises(CheckpointError, match="but none could be restored"):
        async with FeatureRuntime(feature_set, checkpoints=config):
            pass
    assert "key 'c0': custom feature 'sq_1s': BrokenLoad.load raised ValueError" in caplog.text


async def test_a_keyed_state_whose_load_raises_is_an_error_of_that_feature(
    tmp_path: Path,
) -> None:
    feature_set = FeatureSet(
        name="broken",
        key="card",
        time="ts",
        features=[Count(name="n"), Custom(name="sq", field="amount", aggregate=BrokenLoad())],
    )
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    async with FeatureRuntime(feature_set, checkpoints=config) as rt:
        await rt.ingest({"card": "c", "ts": T0, "amount": 3})
    async with FeatureRuntime(feature_set, checkpoints=config) as rt:
        subscription = rt.updates()
        await rt.ingest({"card": "c", "ts": T0 + 1, "amount": 2})
        update = await subscription.__anext__()
        await subscription.aclose()
    assert update.values["n"] == 2
    assert update.errors is not None
    assert "custom feature 'sq': BrokenLoad.load raised" in update.errors["sq"]
    # the state starts again from empty; the event that found it unloadable is its error
    assert update.values["sq"] == 0


async def test_a_training_set_holds_each_custom_feature_as_it_was_at_each_label() -> None:
    # keyed custom features: the value at a label is the oracle's over the key's events up to
    # the label's time (history in time order, as it arrived), never a later one
    history = sorted(STREAM, key=lambda e: e["ts"])
    keyed = [f for f in FEATURE_SET.features if f.window is None]
    feature_set = FeatureSet(name="train", key="card", time="ts", features=keyed)
    labels = [{"card": f"c{i % 4}", "ts": history[i * 7]["ts"], "label": i % 2} for i in range(20)]
    table = await training_set(feature_set, labels, history)
    for label, row in zip(labels, table.rows(), strict=True):
        seen = [
            (e["ts"], e) for e in history if e["card"] == label["card"] and e["ts"] <= label["ts"]
        ]
        want = key_values(keyed, seen)
        for name, value in want.items():
            assert same(row[name], value), (label, name, row[name], value)
        assert row["label"] == label["label"]


async def test_windowed_custom_features_are_kept_when_features_are_added(tmp_path: Path) -> None:
    # the checkpoint's window group is rebuilt for the new set (evolution): its custom states
    # are carried over and loaded by the new runtime's aggregates
    old = [f for f in FEATURE_SET.features if f.window is not None]
    added = [Count(name="added_n", window=Sliding(size="2s"))]
    options = {"max_out_of_orderness": "500ms", "allowed_lateness": "300ms"}
    before = FeatureSet(name="evolve", key="card", time="ts", features=old, **options)
    after = FeatureSet(name="evolve", key="card", time="ts", features=old + added, **options)
    async with FeatureRuntime(after, shards=2) as rt:
        await rt.ingest_many(STREAM)
        want = await _values(rt)
    config = CheckpointConfig(directory=str(tmp_path / "checkpoints"), interval=None)
    async with FeatureRuntime(before, shards=2, checkpoints=config) as rt:
        await rt.ingest_many(STREAM[:80])
    async with FeatureRuntime(after, shards=3, checkpoints=config) as rt:
        assert rt.restored is not None
        await rt.ingest_many(STREAM[80:])
        got = await _values(rt)
    for key in KEYS:
        for feature in old:  # the added count saw only the events after the restore
            assert same(got[key][feature.name], want[key][feature.name]), (key, feature.name)


@pytest.mark.parametrize("workers", [0, 1])
async def test_custom_features_registered_while_running_take_their_history(workers: int) -> None:
    base = FeatureSet(name="reg", key="card", time="ts", features=[Count(name="n")])
    new = [
        Custom(name="spread", field="amount", aggregate=Spread()),
        Custom(name="var_2s", field="amount", aggregate=RiverVar(), window=Sliding(size="2s")),
    ]
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        await rt.ingest_many(STREAM)
        want = await _values(rt)
    async with FeatureRuntime(base, shards=2, workers=workers) as rt:
        await rt.ingest_many(STREAM[:60])
        if workers:  # a worker runtime registers features without a backfill (pickled to it)
            await rt.register(*new)
        else:
            await rt.register(*new, backfill=STREAM[:60])
        await rt.ingest_many(STREAM[60:])
        got = await _values(rt)
    for key in KEYS:
        if workers:
            history = [(e["ts"], e) for e in STREAM[60:] if e["card"] == key]
            assert same(got[key]["spread"], key_values([new[0]], history)["spread"])
        else:
            assert same(got[key]["spread"], want[key]["spread"])
            assert same(got[key]["var_2s"], want[key]["s_var"])
