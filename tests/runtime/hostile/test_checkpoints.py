"""Hostile input against checkpoints (issue 15, items 1 and 8).

One accepted value must not turn checkpoints off: a value that feature state keeps as it is
(a ``first``/``last``/``distinct_count``/``top_k`` field, any field of a joined event) and a
checkpoint cannot hold is refused at ingest, naming the field; a key whose state still cannot be
encoded (a lookup row's value, say) is left out of the checkpoint alone, and a snapshot failure
is not an actor crash. A checkpoint file crafted to decode wrongly raises ``CheckpointError`` and
the runtime falls back to the checkpoint before it, never a raw ``KeyError`` or
``RecursionError``, never a huge allocation, never wrong-typed state restored.
"""

from __future__ import annotations

import datetime
import enum
import itertools
import zlib
from collections import deque
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    CheckpointConfig,
    CheckpointError,
    Count,
    CustomSource,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    First,
    Join,
    Last,
    Lookup,
    Sliding,
    Sum,
    TopK,
)
from runtime._checkpoints.codec import MAX_DEPTH, StateCodec
from runtime._checkpoints.store import Checkpoint, CheckpointStore

T0 = 1_700_000_000_000
_serial = itertools.count()


class Color(enum.Enum):
    RED = "red"


class Shade(enum.StrEnum):
    DARK = "dark"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def config(tmp_path: Path, **options: Any) -> CheckpointConfig:
    directory = tmp_path / f"run-{next(_serial)}"
    return CheckpointConfig(directory=str(directory), interval=None, **options)


KEEPING = FeatureSet(
    name="keeping",
    key="card",
    time="ts",
    max_future="0s",
    features=[
        Count(name="n"),
        Last(name="last_note", field="note"),
        First(name="first_tag", field="tag"),
        DistinctCount(name="merchants", field="merchant"),
        TopK(name="top_city", field="city", k=2, window=Sliding(size="1h")),
        Sum(name="amount", field="amount"),
    ],
)

#: (event or payload, the field the refusal names)
BAD: dict[str, tuple[Any, str]] = {
    "msgpack-ext": (
        msgspec.msgpack.encode(
            {"card": "x", "ts": T0, "note": msgspec.msgpack.Ext(5, b"\x00\x01")}
        ),
        "note",
    ),
    "json-600-deep": (
        b'{"card": "x", "ts": %d, "tag": ' % T0 + b"[" * 600 + b"1" + b"]" * 600 + b"}",
        "tag",
    ),
    "enum": ({"card": "x", "ts": T0, "merchant": Color.RED}, "merchant"),
    "object-in-a-list": ({"card": "x", "ts": T0, "city": [object()]}, "city"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_value_state_cannot_keep_is_refused_at_ingest_and_checkpoints_go_on(
    tmp_path: Path, case: str
) -> None:
    payload, field = BAD[case]
    cp = config(tmp_path, on_shutdown=False)
    fmt = "json" if case.startswith("json") else "msgpack"
    async with FeatureRuntime(KEEPING, checkpoints=cp, payload_format=fmt) as rt:
        await rt.ingest({"card": "a", "ts": T0, "note": "ok", "amount": 2})
        assert await rt.ingest(payload) is False
        letters = rt.dead_letters.letters(DeadLetterReason.REJECTED)
        assert len(letters) == 1
        assert f"field {field!r}" in str(letters[0].error)
        for _ in range(5):  # more than max_restarts: a failure would stop the runtime
            info = await rt.checkpoint()
            assert info.keys_left_out == 0
        assert rt.dead_letters.count(DeadLetterReason.FAILED) == 0
    async with FeatureRuntime(KEEPING, checkpoints=cp, payload_format=fmt) as rt:
        assert (await rt.get("a"))["last_note"] == "ok"


async def test_times_and_plain_subclasses_are_kept_and_restored(tmp_path: Path) -> None:
    cp = config(tmp_path)
    noon = datetime.time(12, 30)
    async with FeatureRuntime(KEEPING, checkpoints=cp) as rt:
        assert await rt.ingest({"card": "a", "ts": T0, "note": noon, "tag": Shade.DARK})
        assert await rt.ingest({"card": "a", "ts": T0 + 1, "merchant": "m\ud800"})
    async with FeatureRuntime(KEEPING, checkpoints=cp) as rt:
        vector = await rt.get("a")
        assert vector["last_note"] == noon
        assert vector["first_tag"] == "dark" and type(vector["first_tag"]) is str
        assert vector["merchants"] == 1


JOINED = FeatureSet(
    name="joined",
    key="card",
    time="ts",
    max_future="0s",
    streams=["tx", "clicks"],
    joins=[Join(name="pairs", left="tx", right="clicks", before=1000, after=1000)],
    features=[Count(name="n", stream="pairs"), Count(name="tx", stream="tx")],
)


async def test_a_joined_event_is_checked_whole(tmp_path: Path) -> None:
    cp = config(tmp_path)
    async with FeatureRuntime(JOINED, checkpoints=cp) as rt:
        assert await rt.ingest({"card": "a", "ts": T0, "deep": {"x": [1, "y"]}}, stream="tx")
        assert not await rt.ingest({"card": "a", "ts": T0, "x": nested(600)}, stream="clicks")
        assert await rt.ingest({"card": "a", "ts": T0, "at": datetime.time(1)}, stream="clicks")
        assert (
            await rt.ingest_many(
                [
                    {"card": "b", "ts": T0, "ok": [1, {"y": None}]},
                    {"card": "b", "ts": T0, "e": Color.RED},
                ],
                stream="clicks",
            )
            == 1
        )
        reasons = [str(letter.error) for letter in rt.dead_letters.letters()]
        assert len(reasons) == 2
        assert "field 'x' is nested more than 64 deep" in reasons[0]
        assert "field 'e' holds a " in reasons[1] and "Color" in reasons[1]
        info = await rt.checkpoint()
        assert info.keys_left_out == 0
    async with FeatureRuntime(JOINED, checkpoints=cp) as rt:
        assert rt.restored is not None and rt.restored.keys == info.keys


class Rows:
    """A custom source whose rows hold an Enum for one key: state gets it past ingest."""

    async def get_many(self, keys: list[Any]) -> dict[Any, Any]:
        return {key: {"tier": Color.RED if key == "bad" else "gold"} for key in keys}


ENRICHED = FeatureSet(
    name="enriched",
    key="card",
    time="ts",
    max_future="0s",
    sources=[CustomSource(name="cards")],
    lookups=[Lookup(name="card", field="card", source="cards")],
    features=[Count(name="n"), Last(name="tier", field="card.tier")],
)


async def test_a_key_whose_state_cannot_be_encoded_is_left_out_alone(tmp_path: Path) -> None:
    cp = config(tmp_path, on_shutdown=False)
    async with FeatureRuntime(
        ENRICHED, checkpoints=cp, sources={"cards": Rows()}, max_restarts=1, shards=2
    ) as rt:
        await rt.ingest_many([{"card": key, "ts": T0} for key in ("a", "bad", "b")])
        await rt.flush()
        assert (await rt.get("bad"))["tier"] is Color.RED
        for _ in range(4):  # a crash each time would exceed max_restarts
            info = await rt.checkpoint()
            assert info.keys_left_out == 1
        assert info.keys == 5  # a, bad, b in the Count's group; a, b in the lookup's
        assert rt.dead_letters.count(DeadLetterReason.FAILED) == 0
        assert (await rt.get("bad"))["tier"] is Color.RED  # its live state is kept
        await rt.ingest({"card": "a", "ts": T0 + 1})
        assert (await rt.get("a"))["n"] == 2
    async with FeatureRuntime(ENRICHED, checkpoints=cp, sources={"cards": Rows()}) as rt:
        assert (await rt.get("a"))["tier"] == "gold"
        bad = await rt.get("bad")
        assert (bad["n"], bad["tier"]) == (1, None)  # left out of the lookup group alone


# -- the codec ---------------------------------------------------------------------------------
def test_the_codec_refuses_a_state_nested_too_deep_with_a_checkpoint_error() -> None:
    codec = StateCodec()
    assert codec.decode(codec.encode(nested(MAX_DEPTH - 1))) == nested(MAX_DEPTH - 1)
    for depth in (MAX_DEPTH + 1, 5000):
        with pytest.raises(CheckpointError, match="nested deeper"):
            codec.encode(nested(depth))


def test_the_codec_holds_lone_surrogates_huge_ints_and_times() -> None:
    codec = StateCodec()
    value = {
        "s\udc80": ["\ud800", ("a\udfff", 1)],
        "huge": 10**5000,
        "neg": -(2**100),
        "time": datetime.time(23, 59, 1, 5),
    }
    back = codec.decode(codec.encode(value))
    assert back == value


def test_the_codec_holds_wide_ints_among_pairs_and_str_keyed_atoms() -> None:
    # A window's (time, value) pairs and a dict of str keys and atoms are checked in C as
    # one stream of items; a wide int among them must still be found (it once was not: the
    # stream was read up by the type check before the range check saw it).
    codec = StateCodec()
    for value in ([(1, 2**70), (2, 3)], deque([(1, -(2**64))]), {"a": 2**70, "b": 1}):
        assert codec.decode(codec.encode(value)) == value


async def test_wide_ints_in_window_values_and_kept_values_survive_a_restore(
    tmp_path: Path,
) -> None:
    spec = FeatureSet(
        name="wide",
        key="k",
        time="ts",
        features=[
            Sum(name="s", field="v", window=Sliding(size="1m")),
            Last(name="l", field="d"),
        ],
    )
    event = {"k": "a", "ts": T0, "v": 2**70, "d": {"a": 2**70}}
    async with FeatureRuntime(spec, shards=1, checkpoints=tmp_path) as rt:
        await rt.ingest(event)
        info = await rt.checkpoint()
        assert info.keys_left_out == 0
        before = (await rt.get("a")).values
    async with FeatureRuntime(spec, shards=1, checkpoints=tmp_path) as rt:
        assert (await rt.get("a")).values == before == {"s": 2**70, "l": {"a": 2**70}}


def blob(tree: Any, header: Any = None) -> bytes:
    return msgspec.msgpack.encode([1, {} if header is None else header, tree])


def deep_blob(depth: int) -> bytes:
    """``[1, {}, [[[...1...]]]]`` with ``depth`` lists, written by hand (msgspec would not)."""
    return b"\x93\x01\x80" + b"\x91" * depth + b"\x01"


@pytest.mark.parametrize(
    "data",
    [
        blob([12, "os.system", []]),  # an object of a class the header does not declare
        blob([13, "bytearray", 2**30]),  # would allocate 1 GiB
        blob([13, "timedelta", [1, 2, 3, 4]]),
        blob([8, 5]),  # a reference to nothing
        blob([8, -1]),
        blob([1, "abc"]),  # a tuple of letters
        blob([10, [[0, []]]]),  # atoms that are not
        blob([5, [], -1]),  # a negative maxlen
        blob([2, [1, 2], [3]]),  # keys and values differ in number
        blob([2, [[10, []]], [1]]),  # an unhashable key
        blob([9, "9" * 5000]),  # more digits than int() takes
        deep_blob(900),
        deep_blob(100_000),
        blob([7]),
        blob(["x", 1]),
        blob([99, []]),
        msgspec.msgpack.encode([1, {}, None, None]),
        b"\xdd\xff\xff\xff\xff",  # an array of 4 billion items, and no items
        b"",
    ],
)
def test_crafted_state_raises_a_checkpoint_error(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        StateCodec().decode(data)


def sample_states() -> list[bytes]:
    """Encoded states of the kinds the runtime makes, to mutate."""
    from collections import OrderedDict, deque

    shared = [1, "x"]
    codec = StateCodec()
    return [
        codec.encode(
            [
                ("k", ([1, 2.5, None, "v", shared, shared], 17.0)),
                (2, ({1, 2}, frozenset({"a"}), deque([(1, 2.0)], maxlen=5))),
            ]
        ),
        codec.encode(
            {
                ("a", 1): OrderedDict(x=[(1, 2), (3, 4)]),
                "big": 2**80,
                "d": datetime.datetime(2024, 1, 1),
                "b": bytearray(b"\x01"),
            }
        ),
    ]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_states_decode_or_raise_a_checkpoint_error(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(sample_states()))
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    try:
        StateCodec().decode(bytes(mutated))
    except CheckpointError:
        pass


atoms = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=5)
)
trees = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.builds(lambda tag, rest: [tag, *rest], st.integers(0, 17), st.lists(inner, max_size=3)),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(tree=trees, header=st.sampled_from([{}, {"collections.deque": "dict"}, {"builtins.int": 1}]))
def test_random_msgpack_decodes_or_raises_a_checkpoint_error(tree: Any, header: Any) -> None:
    try:
        StateCodec().decode(blob(tree, header))
    except CheckpointError:
        pass


# -- crafted checkpoint files --------------------------------------------------------------------
def rewrite(path: Path, change: Any) -> None:
    """Decode a checkpoint file, change it, and write it back with a valid checksum."""
    data = path.read_bytes()
    checkpoint = msgspec.msgpack.decode(data[8:-4], type=Checkpoint)
    payload = msgspec.msgpack.encode(change(checkpoint))
    path.write_bytes(data[:8] + payload + zlib.crc32(payload).to_bytes(4, "big"))


def wrong_slot(checkpoint: Checkpoint) -> Checkpoint:
    """The count of every key a str: state of the wrong type that decodes fine."""
    codec = StateCodec()
    actors = []
    for actor in checkpoint.actors:
        groups = {}
        for group, blob_ in actor.groups.items():
            items = codec.decode(blob_)
            groups[group] = codec.encode(
                [(key, (["many" for _ in values], seen)) for key, (values, seen) in items]
            )
        actors.append(msgspec.structs.replace(actor, groups=groups))
    return msgspec.structs.replace(checkpoint, actors=actors)


def replace_groups(value: Any) -> Any:
    def change(checkpoint: Checkpoint) -> Checkpoint:
        actors = [msgspec.structs.replace(a, groups=value(a.groups)) for a in checkpoint.actors]
        return msgspec.structs.replace(checkpoint, actors=actors)

    return change


CRAFTED = {
    "wrong-typed-slot": wrong_slot,
    "garbage-state": replace_groups(lambda groups: dict.fromkeys(groups, b"\x93\x01\x80\xc0")),
    "deep-state": replace_groups(lambda groups: dict.fromkeys(groups, deep_blob(2000))),
    "allocation-bomb": replace_groups(
        lambda groups: dict.fromkeys(groups, blob([[13, "bytearray", 2**30]]))
    ),
    "key-in-the-wrong-group": replace_groups(
        lambda groups: {(group + 1) % 128: blob_ for group, blob_ in groups.items()}
    ),
    "key-group-out-of-range": replace_groups(
        lambda groups: {group + 10_000: blob_ for group, blob_ in groups.items()}
    ),
    "missing-counters": lambda c: msgspec.structs.replace(
        c,
        actors=[msgspec.structs.replace(a, extras=[StateCodec().encode({})]) for a in c.actors],
    ),
    "unknown-kind": lambda c: msgspec.structs.replace(
        c, actors=[msgspec.structs.replace(a, kind="oops") for a in c.actors]
    ),
    "other-sequence": lambda c: msgspec.structs.replace(c, sequence=c.sequence + 7),
}

SIMPLE = FeatureSet(
    name="simple", key="card", time="ts", max_future="0s", features=[Count(name="n")]
)


@pytest.mark.parametrize("case", list(CRAFTED))
async def test_a_crafted_checkpoint_falls_back_to_the_one_before(tmp_path: Path, case: str) -> None:
    cp = config(tmp_path, on_shutdown=False)
    async with FeatureRuntime(SIMPLE, checkpoints=cp, key_groups=128) as rt:
        await rt.ingest_many([{"card": key, "ts": T0} for key in ("a", "b", 3)])
        await rt.checkpoint()
        await rt.ingest_many([{"card": key, "ts": T0} for key in ("a", "b", 3)])
        newest = await rt.checkpoint()
    rewrite(Path(newest.path), CRAFTED[case])
    async with FeatureRuntime(SIMPLE, checkpoints=cp, key_groups=128) as rt:
        assert rt.restored is not None and rt.restored.sequence == newest.sequence - 1
        vectors = await rt.get_many(["a", "b", 3])
        assert [vector["n"] for vector in vectors.values()] == [1, 1, 1]


def test_the_store_reads_a_crafted_file_as_a_checkpoint_error(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    checkpoint = Checkpoint(
        feature_set="x", sequence=1, created_at=0.0, key_groups=0, shards=1, position=0
    )
    payload = msgspec.msgpack.encode(checkpoint)
    store.path_of(1).write_bytes(b"FEATCKP1" + payload + zlib.crc32(payload).to_bytes(4, "big"))
    with pytest.raises(CheckpointError, match="key_groups 0"):
        store.read(1)
    assert store.latest() is None
