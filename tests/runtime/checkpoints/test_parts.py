"""Checkpoints written in parts (by worker processes): the checkpoint's file names its parts
and reading it merges their states; a missing or damaged part makes the checkpoint unreadable
(the one before is restored), two parts cannot hold one key group, and the parts of
checkpoints never committed or no longer kept are deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import CheckpointError
from runtime._checkpoints.store import ActorState, Checkpoint, CheckpointStore


def _state(groups: dict[int, bytes], extras: list[bytes], keys: int) -> ActorState:
    return ActorState("features", "g", "sig", [], groups, extras, keys)


def _part(sequence: int, groups: dict[int, bytes], extra: bytes) -> Checkpoint:
    return Checkpoint(
        feature_set="fs",
        sequence=sequence,
        created_at=0.0,
        key_groups=8,
        shards=2,
        position=0,
        actors=[_state(groups, [extra], len(groups))],
    )


def _commit(store: CheckpointStore, sequence: int, workers: int = 2) -> None:
    store.write(
        Checkpoint(
            feature_set="fs",
            sequence=sequence,
            created_at=0.0,
            key_groups=8,
            shards=2 * workers,
            position=100 * sequence,
            workers=workers,
            parts=[store.part_name(sequence, w) for w in range(workers)],
        )
    )


def test_a_checkpoint_in_parts_reads_as_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write_part(_part(1, {0: b"a", 3: b"b"}, b"x"), 0)
    store.write_part(_part(1, {4: b"c"}, b"y"), 1)
    _commit(store, 1)
    checkpoint = store.read(1)
    assert checkpoint.position == 100 and checkpoint.workers == 2
    [state] = checkpoint.actors
    assert state.groups == {0: b"a", 3: b"b", 4: b"c"}
    assert state.extras == [b"x", b"y"] and state.keys == 3


def test_parts_without_their_checkpoint_file_are_not_a_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write_part(_part(1, {0: b"a"}, b"x"), 0)
    assert store.sequences() == [] and store.latest() is None


def test_a_missing_or_damaged_part_makes_the_one_before_restored(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for sequence in (1, 2):
        store.write_part(_part(sequence, {0: b"a"}, b"x"), 0)
        store.write_part(_part(sequence, {4: b"c"}, b"y"), 1)
        _commit(store, sequence)
    os.remove(tmp_path / store.part_name(2, 1))
    with pytest.raises(CheckpointError, match="cannot be read"):
        store.read(2)
    found = store.latest()
    assert found is not None and found[0].sequence == 1
    (tmp_path / store.part_name(1, 0)).write_bytes(b"FEATCKP1 damaged")
    assert store.latest() is None


def test_two_parts_cannot_hold_one_key_group(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write_part(_part(1, {0: b"a", 3: b"b"}, b"x"), 0)
    store.write_part(_part(1, {3: b"c"}, b"y"), 1)
    _commit(store, 1)
    with pytest.raises(CheckpointError, match="two parts of checkpoint 1 hold key group 3"):
        store.read(1)


def test_a_checkpoint_naming_a_part_of_another_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write_part(_part(1, {0: b"a"}, b"x"), 0)
    store.write(
        Checkpoint(
            feature_set="fs",
            sequence=2,
            created_at=0.0,
            key_groups=8,
            shards=2,
            position=0,
            parts=[store.part_name(1, 0)],
        )
    )
    with pytest.raises(CheckpointError, match="as its part"):
        store.read(2)


def test_parts_of_checkpoints_not_kept_or_never_committed_are_deleted(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.write_part(_part(1, {0: b"a"}, b"x"), 0)
    store.write_part(_part(1, {4: b"c"}, b"y"), 1)
    _commit(store, 1)
    store.write_part(_part(2, {0: b"a"}, b"x"), 0)  # checkpoint 2 was abandoned
    store.write_part(_part(3, {0: b"a"}, b"x"), 0)
    store.write_part(_part(3, {4: b"c"}, b"y"), 1)
    store.write_part(_part(4, {0: b"a"}, b"x"), 0)  # under way while 3 is committed
    _commit(store, 3)
    names = sorted(os.listdir(tmp_path))
    assert names == [
        "checkpoint-000000000003.fck",
        "checkpoint-000000000003.w0.fck",
        "checkpoint-000000000003.w1.fck",
        "checkpoint-000000000004.w0.fck",
    ]
