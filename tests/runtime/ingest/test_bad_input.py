"""Bad input at the runtime's door (issue 7, item 7).

Malformed payloads, wrong types, a missing key or time, NaN and infinity, very long keys and
payloads, times absurd or far in the future: each is refused with a reason that names the field,
lands in ``rt.dead_letters`` with its raw payload, is counted in ``events_rejected``, and the
runtime keeps serving. A stream that mixes good and bad events counts every good one (checked
against a brute-force oracle) and rejects every bad one, whatever the shard count, batch size,
payload form and way of ingesting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    InvalidEvent,
    SpecError,
    Sum,
    UnknownFeature,
)
from runtime._ingest.events import (
    DEFAULT_MAX_FUTURE_MS,
    DEFAULT_MAX_KEY_LENGTH,
    DEFAULT_MAX_PAYLOAD_BYTES,
    EventReader,
)

from ..support.oracle import oracle

FEATURE_SET = FeatureSet(
    name="bad",
    key="card",
    time="ts",
    features=[Count(name="n"), Sum(name="total", field="amount")],
)
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z: a replay of history, in the past
NOW_MS = int(time.time() * 1000)
ENCODE: dict[str, Callable[[Any], bytes]] = {
    "json": msgspec.json.encode,
    "msgpack": msgspec.msgpack.encode,
}
DECODE: dict[str, Callable[[bytes], Any]] = {
    "json": msgspec.json.decode,
    "msgpack": msgspec.msgpack.decode,
}
#: made once: each use is the same object, which is what dead letters must hold
TOO_LARGE = b'{"card": "c0", "ts": 1700000000000, "pad": "' + b"x" * (1 << 20) + b'"}'
DEEP = {"json": b"[" * 100_000, "msgpack": b"\x91" * 100_000}


# -- the kinds of bad event ----------------------------------------------------------------------
class Kind(msgspec.Struct, frozen=True):
    """A kind of bad event: how to make one, and what its rejection must say."""

    #: the payload, given the payload format ("json" or "msgpack")
    make: Callable[[str], Any]
    #: words the reason must contain
    words: str
    #: the field the error must name (None: the payload itself is unusable)
    field: str | None


def _event(**fields: Any) -> Callable[[str], Any]:
    return lambda fmt: {"amount": 1, **fields}


def _encoded(**fields: Any) -> Callable[[str], Any]:
    return lambda fmt: ENCODE[fmt]({"amount": 1, **fields})


BAD: dict[str, Kind] = {
    "malformed-bytes": Kind(
        lambda fmt: b'{"card": "c0", "ts": ' if fmt == "json" else b"\xc1", "cannot decode", None
    ),
    "deeply-nested-bytes": Kind(lambda fmt: DEEP[fmt], "cannot decode", None),
    "bytes-not-an-object": Kind(lambda fmt: ENCODE[fmt]([1, 2]), "must be an object", None),
    "too-large-bytes": Kind(lambda fmt: TOO_LARGE, "more than max_payload_bytes", None),
    "not-a-mapping": Kind(lambda fmt: 42, "must be a mapping, a msgspec.Struct", None),
    "text-not-bytes": Kind(lambda fmt: '{"card": "c0"}', "must be a mapping", None),
    "missing-key": Kind(_event(ts=T0), "key field 'card' is missing", "card"),
    "missing-key-in-bytes": Kind(_encoded(ts=T0), "key field 'card' is missing", "card"),
    "null-key": Kind(_event(card=None, ts=T0), "is null", "card"),
    "float-key": Kind(_event(card=1.5, ts=T0), "must be a str, int or bytes, got float", "card"),
    "bool-key": Kind(_event(card=True, ts=T0), "got bool", "card"),
    "list-key-in-bytes": Kind(_encoded(card=["c0"], ts=T0), "got list", "card"),
    "long-key": Kind(_event(card="k" * 4097, ts=T0), "more than max_key_length (4096)", "card"),
    "long-key-in-bytes": Kind(_encoded(card="k" * 5000, ts=T0), "more than max_key_length", "card"),
    "long-bytes-key": Kind(_event(card=b"k" * 4097, ts=T0), "4097 bytes long", "card"),
    "huge-int-key": Kind(_event(card=10**4096, ts=T0), "an int beyond 64 bits", "card"),
    "lone-surrogate-key": Kind(_event(card="c\ud800", ts=T0), "not valid Unicode", "card"),
    "missing-time": Kind(_event(card="c0"), "time field 'ts' is missing or null", "ts"),
    "null-time-in-bytes": Kind(_encoded(card="c0", ts=None), "is missing or null", "ts"),
    "bool-time": Kind(_event(card="c0", ts=True), "got bool", "ts"),
    "nan-time": Kind(_event(card="c0", ts=math.nan), "not a finite number", "ts"),
    "inf-time": Kind(_event(card="c0", ts=-math.inf), "not a finite number", "ts"),
    "text-time": Kind(_event(card="c0", ts="yesterday"), "not an ISO-8601 time", "ts"),
    "list-time-in-bytes": Kind(_encoded(card="c0", ts=[T0]), "must be a number (ms)", "ts"),
    "negative-time": Kind(_event(card="c0", ts=-1), "out of range (1970..2300)", "ts"),
    "year-9999-time": Kind(_event(card="c0", ts="9999-12-31T23:59:59Z"), "out of range", "ts"),
    "huge-int-time": Kind(_event(card="c0", ts=10**5000), "out of range", "ts"),
    "huge-float-time": Kind(_event(card="c0", ts=1e306), "out of range", "ts"),
    "far-future-time": Kind(
        _event(card="c0", ts=NOW_MS + 86_400_000), "ahead of the wall clock", "ts"
    ),
    "far-future-time-in-bytes": Kind(
        _encoded(card="c0", ts=NOW_MS + 7_200_000), "more than max_future (1h)", "ts"
    ),
}


# -- the mixed stream against an oracle ----------------------------------------------------------
KEYS = ["c0", "c1", "c2", "ç3", 7, 0, -3]
AMOUNTS = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.sampled_from([None, "12", math.nan, math.inf, True]),  # per-feature errors: still counted
)


@st.composite
def good_events(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A good event and the form it takes: "dict" or "bytes"."""
    ts = draw(st.integers(min_value=T0, max_value=T0 + 10_000))
    time_form = draw(st.sampled_from(["int", "float", "iso"]))
    event: dict[str, Any] = {
        "card": draw(st.sampled_from(KEYS)),
        "ts": {
            "int": ts,
            "float": float(ts),
            "iso": datetime.fromtimestamp(ts / 1000, UTC).isoformat(),
        }[time_form],
        "amount": draw(AMOUNTS),
    }
    if draw(st.booleans()):
        event["note"] = "x" * 100_000  # a long field value is not the runtime's to refuse
    return draw(st.sampled_from(["dict", "bytes"])), event


items = st.lists(
    st.one_of(
        good_events().map(lambda good: ("good", good)),
        st.sampled_from(sorted(BAD)).map(lambda kind: ("bad", kind)),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=items,
    shards=st.sampled_from([1, 2, 5]),
    batch_size=st.sampled_from([1, 3, 64]),
    fmt=st.sampled_from(["json", "msgpack"]),
    singles=st.sets(st.integers(min_value=0, max_value=59)),
)
async def test_a_mixed_stream_counts_every_good_event_and_rejects_every_bad_one(
    stream: list[tuple[str, Any]], shards: int, batch_size: int, fmt: str, singles: set[int]
) -> None:
    payloads: list[Any] = []
    good: list[dict[str, Any]] = []  # as the runtime sees them (decoded)
    bad: list[tuple[Any, Kind]] = []
    for what, item in stream:
        if what == "good":
            form, event = item
            payload = event if form == "dict" else ENCODE[fmt](event)
            good.append(event if form == "dict" else DECODE[fmt](payload))
        else:
            kind = BAD[item]
            payload = kind.make(fmt)
            bad.append((payload, kind))
        payloads.append(payload)
    with anyio.fail_after(30):
        async with FeatureRuntime(
            FEATURE_SET,
            shards=shards,
            batch_size=batch_size,
            payload_format=fmt,  # type: ignore[arg-type]
        ) as rt:
            accepted = 0
            pending: list[Any] = []
            for index, payload in enumerate(payloads):  # some one by one, the rest in bulk
                if index in singles:
                    accepted += await rt.ingest_many(pending)
                    pending = []
                    accepted += await rt.ingest(payload)
                else:
                    pending.append(payload)
            accepted += await rt.ingest_many(pending)
            vectors = await rt.get_many(list(KEYS))
            stats = await rt.statistics()
            letters = rt.dead_letters.letters()
    assert accepted == len(good)
    assert stats.events_ingested == len(good)
    assert stats.events_rejected == len(bad)
    expected = oracle(FEATURE_SET.features, "card", "ts", good)
    for key in KEYS:
        want = expected.get(key, {"n": 0, "total": 0})
        assert (vectors[key]["n"], vectors[key]["total"]) == (want["n"], want["total"]), key
    assert len(letters) == len(bad)
    for letter, (payload, kind) in zip(letters, bad, strict=True):
        assert letter.reason is DeadLetterReason.REJECTED
        if letter.truncated:  # a large payload is kept as its start and size (issue 15)
            assert payload.startswith(letter.message) and letter.size >= len(payload)
        else:
            assert letter.message is payload
        assert isinstance(letter.error, InvalidEvent)
        assert letter.error.field == kind.field
        assert kind.words in str(letter.error), (kind, str(letter.error))
        assert str(letter.error) in letter.detail


# -- one kind at a time --------------------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("kind", sorted(BAD))
async def test_each_kind_of_bad_event_is_rejected_with_its_reason_and_the_runtime_serves_on(
    kind: str, fmt: str, shards: int
) -> None:
    bad = BAD[kind]
    payload = bad.make(fmt)
    with anyio.fail_after(10):
        async with FeatureRuntime(
            FEATURE_SET,
            shards=shards,
            payload_format=fmt,  # type: ignore[arg-type]
        ) as rt:
            assert await rt.ingest(payload) is False
            assert await rt.ingest_many([payload, {"card": "c0", "ts": T0, "amount": 5}]) == 1
            vector = await rt.get("c0")
            stats = await rt.statistics()
            letters = rt.dead_letters.letters()
    assert (vector["n"], vector["total"]) == (1, 5)
    assert stats.events_rejected == 2
    assert len(letters) == 2
    for letter in letters:
        # a large payload is kept as its start and size (issue 15)
        assert letter.message is payload or (
            letter.truncated and payload.startswith(letter.message)
        )
        assert letter.reason is DeadLetterReason.REJECTED
        assert isinstance(letter.error, InvalidEvent)
        assert letter.error.field == bad.field
        assert letter.error.payload is letter.message
        assert bad.words in str(letter.error)
        if bad.field is not None:
            assert f"field {bad.field!r}" in str(letter.error)


# -- time bounds ---------------------------------------------------------------------------------
async def test_an_event_a_little_ahead_of_the_wall_clock_is_accepted() -> None:
    ahead = int(time.time() * 1000) + 60_000  # a minute of clock skew
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert await rt.ingest({"card": "c0", "ts": ahead}) is True
        assert await rt.ingest_many([{"card": "c0", "ts": ahead + 1}]) == 1
        assert (await rt.get("c0"))["n"] == 2


async def test_a_replay_of_old_history_is_accepted_by_default() -> None:
    events = [{"card": "c0", "ts": f"{year}-06-01T00:00:00Z"} for year in range(1971, 2024)]
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert await rt.ingest_many(events) == len(events)
        assert await rt.ingest({"card": "c0", "ts": 0}) is True  # the epoch itself
        assert (await rt.get("c0"))["n"] == len(events) + 1


async def test_a_far_future_event_does_not_make_the_keys_later_events_late() -> None:
    future = int(time.time() * 1000) + 30 * 86_400_000
    async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
        await rt.ingest_many([{"card": "c0", "ts": T0}, {"card": "c0", "ts": future}])
        await rt.ingest({"card": "c0", "ts": T0 + 1})
        vector = await rt.get("c0")
    assert vector["n"] == 2
    assert vector.last_event_time == T0 + 1
    assert vector.watermark == T0 + 1


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def test_the_future_bound_follows_the_wall_clock_and_can_be_set_or_turned_off() -> None:
    clock = FakeClock(T0)
    reader = EventReader(key="k", time="t", max_future_ms=5_000, clock=clock)
    assert reader.read({"k": "a", "t": T0 + 5_000})[1] == T0 + 5_000
    with pytest.raises(
        InvalidEvent, match=r"'t' is 5s1ms ahead of the wall clock.*max_future \(5s"
    ):
        reader.read({"k": "a", "t": T0 + 5_001})
    clock.ms += 1  # the bound moves with the clock, even for a reader that remembers it
    assert reader.read({"k": "a", "t": T0 + 5_001})[1] == T0 + 5_001
    off = EventReader(key="k", time="t", max_future_ms=None, clock=clock)
    assert off.read({"k": "a", "t": "2299-12-31T00:00:00Z"})[0] == "a"
    with pytest.raises(InvalidEvent, match="out of range"):
        off.read({"k": "a", "t": "2300-01-01T00:00:01Z"})


def test_the_past_bound_is_off_by_default_and_can_be_set() -> None:
    clock = FakeClock(T0)
    assert EventReader(key="k", time="t", clock=clock).read({"k": "a", "t": 1})[1] == 1
    reader = EventReader(key="k", time="t", max_past_ms=86_400_000, clock=clock)
    assert reader.read({"k": "a", "t": T0 - 86_400_000})[1] == T0 - 86_400_000
    with pytest.raises(InvalidEvent, match=r"1d1ms behind the wall clock.*max_past \(1d\)"):
        reader.read({"k": "a", "t": T0 - 86_400_001})
    clock.ms += 1_000
    with pytest.raises(InvalidEvent, match="behind the wall clock"):
        reader.read({"k": "a", "t": T0 - 86_400_000})
    assert reader.bounds() == (T0 + 1_000 - 86_400_000, T0 + 1_000 + DEFAULT_MAX_FUTURE_MS)


# -- long keys, large payloads, long values ------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("k" * 4096, True),
        ("k" * 4097, False),
        ("é" * 4096, True),  # characters, not bytes
        (b"k" * 4096, True),
        (b"k" * 4097, False),
        (2**64 - 1, True),  # int keys: 64 bits, signed or not
        (-(2**63), True),
        (2**64, False),
        (-(2**63) - 1, False),
    ],
    ids=["str", "str+1", "non-ascii", "bytes", "bytes+1", "uint64", "int64", "uint64+1", "int64-1"],
)
@pytest.mark.parametrize("shards", [1, 2])
async def test_keys_are_held_to_max_key_length(key: Any, ok: bool, shards: int) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=shards) as rt:
        assert await rt.ingest({"card": key, "ts": T0}) is ok
        assert await rt.ingest_many([{"card": key, "ts": T0}] * 3) == (3 if ok else 0)
        if ok or type(key) is not int:
            assert (await rt.get(key))["n"] == (4 if ok else 0)
        else:  # an int key beyond 64 bits is refused by get too
            with pytest.raises(ValueError, match="beyond 64 bits"):
                await rt.get(key)
        assert (await rt.statistics()).events_rejected == (0 if ok else 4)


async def test_a_key_asked_for_by_get_is_still_checked_at_ingest() -> None:
    long_key = "k" * 5000
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert (await rt.get(long_key))["n"] == 0  # the router now knows the key's shard
        assert await rt.ingest_many([{"card": long_key, "ts": T0}] * 2) == 0
        assert rt.dead_letters.count(DeadLetterReason.REJECTED) == 2


async def test_a_payload_of_max_payload_bytes_is_read_and_one_byte_more_is_not() -> None:
    head = b'{"card": "c0", "ts": 1700000000000, "pad": "'
    fits = head + b"x" * (DEFAULT_MAX_PAYLOAD_BYTES - len(head) - 2) + b'"}'
    assert len(fits) == DEFAULT_MAX_PAYLOAD_BYTES
    over = fits[:-2] + b'x"}'
    async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
        assert await rt.ingest(fits) is True
        assert await rt.ingest(bytearray(over)) is False
        assert await rt.ingest(memoryview(over)) is False
        letters = rt.dead_letters.letters()
    assert [str(letter.error) for letter in letters] == [
        f"the payload is {len(over)} bytes, more than max_payload_bytes (1048576)"
    ] * 2


async def test_a_long_field_value_in_a_dict_event_is_accepted() -> None:
    value = "m" * 10_000_000
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert await rt.ingest({"card": "c0", "ts": T0, "merchant": value}) is True
        assert (await rt.get("c0"))["n"] == 1


async def test_a_lone_surrogate_key_is_rejected_whatever_the_shard_count() -> None:
    event = {"card": "\udcff", "ts": T0}
    for shards in (1, 2, 7):
        async with FeatureRuntime(FEATURE_SET, shards=shards) as rt:
            assert await rt.ingest(event) is False
            assert await rt.ingest_many([event, {"card": "ok", "ts": T0}]) == 1


# -- odd objects ---------------------------------------------------------------------------------
class Broken(Mapping[str, Any]):
    """A mapping that fails when read."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("the mapping broke")

    def __len__(self) -> int:
        return 2


class BadZone(tzinfo):
    """A time zone whose offset is out of range."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(days=2)


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (Broken(), "cannot read the mapping: RuntimeError: the mapping broke"),
        ({"card": "c0", "ts": datetime(2024, 1, 1, tzinfo=BadZone())}, "not a usable datetime"),
        ({"card": Unprintable(), "ts": T0}, "got Unprintable: a Unprintable (its repr failed)"),
        ({"card": "c0", "ts": "x" * 1_000_000}, "not an ISO-8601 time: 'xxxxx"),
    ],
    ids=["broken-mapping", "bad-tzinfo", "unprintable-key", "long-time-text"],
)
async def test_odd_objects_are_rejected_with_a_short_clear_reason(payload: Any, words: str) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert await rt.ingest(payload) is False
        assert await rt.ingest_many([payload]) == 0
        letter = rt.dead_letters.letters()[-1]
    assert words in str(letter.error)
    assert len(str(letter.error)) < 200


# -- NaN and infinity in a feature's input -------------------------------------------------------
async def test_nan_and_infinity_in_a_features_field_are_that_features_errors_only() -> None:
    events = [
        {"card": "c0", "ts": T0, "amount": 2},
        {"card": "c0", "ts": T0 + 1, "amount": math.nan},
        {"card": "c0", "ts": T0 + 2, "amount": -math.inf},
    ]
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        assert await rt.ingest_many(events) == 3
        vector = await rt.get("c0")
        stats = await rt.statistics()
    assert (vector["n"], vector["total"]) == (3, 2)
    assert stats.events_rejected == 0
    assert stats.feature_errors == {"total": 2}


# -- unknown feature names -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["get", "get_many"])
async def test_an_unknown_feature_name_raises_unknown_feature_and_the_runtime_serves_on(
    method: str,
) -> None:
    async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
        await rt.ingest({"card": "c0", "ts": T0, "amount": 3})
        with pytest.raises(UnknownFeature, match=r"no feature named 'nope' \(known: n, total\)"):
            if method == "get":
                await rt.get("c0", ["n", "nope"])
            else:
                await rt.get_many(["c0", "c1"], ["nope"])
        with pytest.raises(KeyError):  # UnknownFeature is a KeyError too
            await rt.get("c0", ["NOPE"])
        assert (await rt.get("c0", ["total"])).values == {"total": 3}


# -- configuration -------------------------------------------------------------------------------
def test_the_limits_default_to_the_readers_defaults() -> None:
    reader = EventReader.of(FEATURE_SET)
    assert FEATURE_SET.duration_ms("max_future") == DEFAULT_MAX_FUTURE_MS
    assert reader.max_future_ms == DEFAULT_MAX_FUTURE_MS
    assert reader.max_past_ms is None
    assert reader.max_key_length == FEATURE_SET.max_key_length == DEFAULT_MAX_KEY_LENGTH
    assert reader.max_payload_bytes == FEATURE_SET.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES


def test_the_limits_are_set_on_the_feature_set_and_reach_the_reader() -> None:
    feature_set = FeatureSet.from_toml(
        'name = "x"\nkey = "k"\ntime = "t"\nmax_future = "10m"\nmax_past = "7d"\n'
        'max_key_length = 64\nmax_payload_bytes = 4096\nfeatures = [{type = "count", name = "n"}]'
    )
    reader = EventReader.of(feature_set, payload_format="msgpack")
    assert (reader.max_future_ms, reader.max_past_ms) == (600_000, 7 * 86_400_000)
    assert (reader.max_key_length, reader.max_payload_bytes) == (64, 4096)
    assert reader.payload_format == "msgpack"
    with pytest.raises(InvalidEvent, match=r"65 characters long, more than max_key_length \(64\)"):
        reader.read({"k": "k" * 65, "t": T0})
    with pytest.raises(InvalidEvent, match=r"more than max_payload_bytes \(4096\)"):
        reader.read(b"\x80" * 4097)


@pytest.mark.parametrize("off", [None, 0, "0s"])
def test_a_time_bound_of_none_or_zero_is_off(off: Any) -> None:
    feature_set = msgspec.structs.replace(FEATURE_SET, max_future=off, max_past=off)
    reader = EventReader.of(feature_set)
    assert (reader.max_future_ms, reader.max_past_ms) == (None, None)
    assert reader.bounds() == (0, 10_413_792_000_000)


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("max_future", "soon", "max_future: not a duration: 'soon'"),
        ("max_future", -1, "max_future: must be >= 0"),
        ("max_past", True, "max_past: not a duration"),
        ("max_key_length", 0, "max_key_length: must be between 1 and 1048576, got 0"),
        ("max_key_length", 2.5, "max_key_length: expected an int, got float"),
        ("max_payload_bytes", 2**31 + 1, "max_payload_bytes: must be between 1 and 2147483648"),
        ("max_payload_bytes", None, "max_payload_bytes: expected an int, got null"),
    ],
)
def test_limits_are_checked_when_the_feature_set_is_made(
    option: str, value: Any, words: str
) -> None:
    with pytest.raises(SpecError, match=words.replace("(", r"\(")):
        msgspec.structs.replace(FEATURE_SET, **{option: value})


async def test_the_runtime_applies_the_feature_sets_limits() -> None:
    feature_set = msgspec.structs.replace(
        FEATURE_SET, max_future="1s", max_key_length=8, max_payload_bytes=100
    )
    ahead = int(time.time() * 1000) + 60_000
    async with FeatureRuntime(feature_set, shards=2) as rt:
        assert await rt.ingest_many([{"card": "c" * 9, "ts": T0}, {"card": "c0", "ts": ahead}]) == 0
        assert await rt.ingest(b'{"card": "c0", "ts": 1700000000000, "pad": "' + b"x" * 30 + b'"}')
        assert not await rt.ingest(
            b'{"card": "c0", "ts": 1700000000000, "pad": "' + b"x" * 60 + b'"}'
        )
        reasons = [str(letter.error) for letter in rt.dead_letters.letters()]
    assert "more than max_key_length (8)" in reasons[0]
    assert "more than max_future (1s)" in reasons[1]
    assert "more than max_payload_bytes (100)" in reasons[2]
