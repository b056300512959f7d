"""Events at the runtime's door: payload forms, event-time forms, and invalid events.

Every accepted form of an event (dict, other mapping, msgspec Struct, JSON bytes, MessagePack
bytes) must give the same features; every invalid event must land in dead letters with reason
``rejected``, its raw payload and an ``InvalidEvent`` naming the field, without ``ingest``
raising and without stopping the runtime.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import anyio
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given

from actors import DeadLetterReason
from runtime import (
    Count,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    InvalidEvent,
    Last,
    Sum,
)
from runtime._ingest.events import EventReader

FEATURES = [
    Count(name="n"),
    Sum(name="total", field="amount"),
    Last(name="merchant", field="merchant"),
    DistinctCount(name="merchants", field="merchant"),
]
FEATURE_SET = FeatureSet(name="ev", key="card", time="ts", features=FEATURES)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
EVENTS = [
    {"card": "c1", "ts": T0, "amount": 10, "merchant": "m1"},
    {"card": "c1", "ts": T0 + 2_000, "amount": 2.5, "merchant": "m2"},
    {"card": "c1", "ts": T0 + 1_000, "amount": 7, "merchant": "m1"},
]
EXPECTED = {"n": 3, "total": 19.5, "merchant": "m2", "merchants": 2}
GOOD = {"card": "c1", "ts": T0, "amount": 1}


class Tx(msgspec.Struct):
    card: str
    ts: int
    amount: float
    merchant: str


class ReadOnly(Mapping[str, Any]):
    """A mapping that is not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


FORMS: dict[str, tuple[str, Any]] = {
    "dict": ("json", dict),
    "mapping": ("json", ReadOnly),
    "mappingproxy": ("json", MappingProxyType),
    "struct": ("json", lambda e: Tx(**e)),
    "json": ("json", msgspec.json.encode),
    "json-bytearray": ("json", lambda e: bytearray(msgspec.json.encode(e))),
    "msgpack": ("msgpack", msgspec.msgpack.encode),
}


@pytest.mark.parametrize("method", ["ingest", "ingest_many"])
@pytest.mark.parametrize("form", list(FORMS))
async def test_every_payload_form_gives_the_same_features(form: str, method: str) -> None:
    payload_format, convert = FORMS[form]
    payloads = [convert(event) for event in EVENTS]
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2, payload_format=payload_format) as rt:
            if method == "ingest":
                for payload in payloads:
                    assert await rt.ingest(payload) is True
            else:
                assert await rt.ingest_many(payloads) == len(payloads)
            vector = await rt.get("c1")
            assert rt.dead_letters.count() == 0
    assert vector.values == EXPECTED
    assert vector.last_event_time == T0 + 2_000


def _ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


PLUS_TWO = timezone(timedelta(hours=2))
T0_DT = datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=UTC)
T0_123 = T0 + 123
assert _ms(T0_DT) == T0_123

TIMES: dict[str, tuple[str, Any, int]] = {
    "int-ms": ("ms", T0_123, T0_123),
    "float-ms": ("ms", float(T0_123), T0_123),
    "int-s": ("s", T0 // 1000, T0),
    "float-s": ("s", (T0 + 500) / 1000, T0 + 500),
    "int-us": ("us", T0_123 * 1000, T0_123),
    "naive-datetime-is-utc": ("ms", T0_DT.replace(tzinfo=None), T0_123),
    "aware-datetime-utc": ("ms", T0_DT, T0_123),
    "aware-datetime-offset": ("ms", T0_DT.astimezone(PLUS_TWO), T0_123),
    "datetime-ignores-time-unit": ("s", T0_DT, T0_123),
    "iso-z": ("ms", "2023-11-14T22:13:20.123Z", T0_123),
    "iso-offset": ("ms", "2023-11-15T00:13:20.123+02:00", T0_123),
    "iso-naive-is-utc": ("ms", "2023-11-14T22:13:20.123", T0_123),
    "iso-seconds": ("s", "2023-11-14T22:13:20Z", T0),
}


@pytest.mark.parametrize("method", ["ingest", "ingest_many"])
@pytest.mark.parametrize("case", list(TIMES))
async def test_every_event_time_form_gives_the_event_time_in_ms(case: str, method: str) -> None:
    unit, value, expected = TIMES[case]
    feature_set = FeatureSet(name="ev", key="card", time="ts", time_unit=unit, features=FEATURES)
    event = {"card": "c1", "ts": value, "amount": 1}
    with anyio.fail_after(10):
        async with FeatureRuntime(feature_set, shards=1) as rt:
            if method == "ingest":
                assert await rt.ingest(event) is True
            else:
                assert await rt.ingest_many([event]) == 1
            vector = await rt.get("c1")
    assert vector.last_event_time == expected
    assert vector["n"] == 1


async def test_an_iso_time_in_json_bytes_is_read_as_utc() -> None:
    payload = b'{"card": "c1", "ts": "2023-11-15T00:13:20.123+02:00", "amount": 1}'
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
            assert await rt.ingest(payload) is True
            vector = await rt.get("c1")
    assert vector.last_event_time == T0_123


# 2004-04-17T19:04:30.370Z is 1_082_228_670_370 ms, but datetime.timestamp() * 1000 gives
# 1082228670369.9999: a conversion through a float reads it 1 ms early.
EXACT_MS = 1_082_228_670_370


@pytest.mark.parametrize(
    "value",
    [
        "2004-04-17T19:04:30.370Z",
        datetime(2004, 4, 17, 19, 4, 30, 370_000, tzinfo=UTC),
    ],
    ids=["iso", "datetime"],
)
async def test_a_datetime_with_whole_milliseconds_is_read_to_that_millisecond(value: Any) -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
            await rt.ingest({"card": "c1", "ts": value})
            vector = await rt.get("c1")
    assert vector.last_event_time == EXACT_MS


async def test_a_float_time_in_seconds_with_whole_milliseconds_keeps_its_millisecond() -> None:
    feature_set = FeatureSet(name="ev", key="card", time="ts", time_unit="s", features=FEATURES)
    with anyio.fail_after(10):
        async with FeatureRuntime(feature_set, shards=1) as rt:
            await rt.ingest({"card": "c1", "ts": EXACT_MS / 1000})
            vector = await rt.get("c1")
    assert vector.last_event_time == EXACT_MS


async def test_an_integer_time_in_nanoseconds_is_converted_exactly() -> None:
    feature_set = FeatureSet(name="ev", key="card", time="ts", time_unit="ns", features=FEATURES)
    with anyio.fail_after(10):
        async with FeatureRuntime(feature_set, shards=1) as rt:
            await rt.ingest({"card": "c1", "ts": (T0 + 1) * 1_000_000})
            vector = await rt.get("c1")
    assert vector.last_event_time == T0 + 1


# -- invalid events ------------------------------------------------------------------------------
class Bad(msgspec.Struct, frozen=True):
    payload: Any
    #: the field the error must name (None: the payload itself is unusable)
    field: str | None
    #: words the message must contain
    words: str
    payload_format: str = "json"


BAD: dict[str, Bad] = {
    "undecodable-json": Bad(b'{"card": "c1", "ts": ', None, "cannot decode json"),
    "undecodable-msgpack": Bad(b"\xc1", None, "cannot decode msgpack", "msgpack"),
    "json-array": Bad(b'[{"card": "c1", "ts": 1}]', None, "must be an object, got list"),
    "msgpack-string": Bad(msgspec.msgpack.encode("c1"), None, "must be an object", "msgpack"),
    "missing-key": Bad({"ts": T0, "amount": 1}, "card", "is missing"),
    "missing-key-in-json": Bad(b'{"ts": 1700000000000}', "card", "is missing"),
    "null-key": Bad({"card": None, "ts": T0}, "card", "is null"),
    "bool-key": Bad({"card": True, "ts": T0}, "card", "got bool"),
    "float-key": Bad({"card": 1.5, "ts": T0}, "card", "got float"),
    "list-key": Bad({"card": ["c1"], "ts": T0}, "card", "got list"),
    "missing-time": Bad({"card": "c1", "amount": 1}, "ts", "missing"),
    "null-time": Bad({"card": "c1", "ts": None}, "ts", "null"),
    "nan-time": Bad({"card": "c1", "ts": math.nan}, "ts", "not a finite number"),
    "inf-time": Bad({"card": "c1", "ts": math.inf}, "ts", "not a finite number"),
    "bool-time": Bad({"card": "c1", "ts": True}, "ts", "got bool"),
    "negative-time": Bad({"card": "c1", "ts": -1}, "ts", "out of range"),
    "far-future-time": Bad({"card": "c1", "ts": 10**16}, "ts", "out of range"),
    "datetime-before-1970": Bad({"card": "c1", "ts": datetime(1960, 1, 1)}, "ts", "out of range"),
    "unparseable-time": Bad({"card": "c1", "ts": "yesterday"}, "ts", "not an ISO-8601 time"),
    "list-time": Bad({"card": "c1", "ts": [T0]}, "ts", "got list"),
    "int-payload": Bad(42, None, "must be a mapping, a msgspec.Struct"),
    "str-payload": Bad('{"card": "c1"}', None, "must be a mapping, a msgspec.Struct"),
    "list-payload": Bad([("card", "c1")], None, "must be a mapping, a msgspec.Struct"),
    "none-payload": Bad(None, None, "must be a mapping, a msgspec.Struct"),
}


@pytest.mark.parametrize("method", ["ingest", "ingest_many"])
@pytest.mark.parametrize("case", list(BAD))
async def test_an_invalid_event_goes_to_dead_letters_with_its_payload_and_field(
    case: str, method: str
) -> None:
    bad = BAD[case]
    with anyio.fail_after(10):
        async with FeatureRuntime(
            FEATURE_SET,
            shards=2,
            payload_format=bad.payload_format,  # type: ignore[arg-type]
        ) as rt:
            if method == "ingest":
                assert await rt.ingest(bad.payload) is False
            else:
                assert await rt.ingest_many([bad.payload]) == 0
            letters = rt.dead_letters.letters()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.reason is DeadLetterReason.REJECTED
    assert letter.message is bad.payload
    error = letter.error
    assert isinstance(error, InvalidEvent)
    assert error.field == bad.field
    assert error.payload is bad.payload
    assert bad.words in str(error)
    if bad.field is not None:
        assert repr(bad.field) in str(error)
    assert str(error) in letter.detail


@pytest.mark.parametrize("method", ["ingest", "ingest_many"])
async def test_the_runtime_keeps_serving_after_invalid_events(method: str) -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            for bad in BAD.values():
                if bad.payload_format != "json":
                    continue
                if method == "ingest":
                    await rt.ingest(bad.payload)
                else:
                    await rt.ingest_many([bad.payload])
            assert await rt.ingest(GOOD) is True
            vector = await rt.get("c1")
            stats = await rt.statistics()
    assert vector["n"] == 1
    assert vector["total"] == 1
    rejected = sum(1 for bad in BAD.values() if bad.payload_format == "json")
    assert stats.events_rejected == rejected
    assert stats.events_ingested == 1


async def test_statistics_and_dead_letters_count_every_rejected_event() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            for _ in range(3):
                await rt.ingest({"card": None, "ts": T0})
            await rt.ingest_many([{"ts": T0}, b"nope", {"card": "c1", "ts": "never"}])
            stats = await rt.statistics()
            assert rt.dead_letters.count(DeadLetterReason.REJECTED) == 6
    assert stats.events_rejected == 6
    assert stats.events_ingested == 0


async def test_a_stream_mixing_good_and_bad_events_counts_every_good_one() -> None:
    good = [
        {"card": f"c{i % 5}", "ts": T0 + i, "amount": i, "merchant": f"m{i % 3}"}
        for i in range(200)
    ]
    stream: list[Any] = []
    for i, event in enumerate(good):
        stream.append(event)
        if i % 3 == 0:
            stream.append({"card": None, "ts": T0})
        if i % 7 == 0:
            stream.append(b"\x00 not json")
        if i % 11 == 0:
            stream.append(msgspec.json.encode(event))  # a good one, as bytes
    as_bytes = sum(1 for i in range(200) if i % 11 == 0)
    bad = len(stream) - len(good) - as_bytes
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=3, batch_size=16) as rt:
            accepted = await rt.ingest_many(stream)
            vectors = {key: await rt.get(key) for key in (f"c{i}" for i in range(5))}
            stats = await rt.statistics()
    assert accepted == len(good) + as_bytes
    assert stats.events_ingested == len(good) + as_bytes
    assert stats.events_rejected == bad
    assert sum(v["n"] for v in vectors.values()) == len(good) + as_bytes
    assert stats.events_processed == len(good) + as_bytes


async def test_ingest_many_returns_the_events_accepted_by_that_call() -> None:
    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2) as rt:
            first = await rt.ingest_many([GOOD, GOOD, GOOD])
            second = await rt.ingest_many([GOOD, {"card": None, "ts": T0}])
    assert (first, second) == (3, 1)


async def test_ingest_many_takes_any_iterable_lazily() -> None:
    def events() -> Iterator[dict[str, Any]]:
        for i in range(1000):
            yield {"card": f"c{i % 4}", "ts": T0 + i, "amount": 1}

    with anyio.fail_after(10):
        async with FeatureRuntime(FEATURE_SET, shards=2, batch_size=7) as rt:
            assert await rt.ingest_many(events()) == 1000
            vector = await rt.get("c0")
    assert vector["n"] == 250


# -- the reader's key checks ---------------------------------------------------------------------
SMALL = EventReader(key="card", time="ts", max_key_length=8)
keys = st.one_of(
    st.text(max_size=10),
    st.text(  # around and in the surrogates, which cannot be encoded alone
        alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, exclude_categories=()),
        max_size=10,
    ),
    st.binary(max_size=10),
    st.integers(min_value=-(10**9), max_value=10**9),
    st.sampled_from([10**8 - 1, 10**8, -(10**8 - 1), -(10**8), 0, "\ud800", "a\udfff", b""]),
)


@given(key=keys)
def test_the_fast_key_check_agrees_with_the_full_one(key: Any) -> None:
    try:
        checked = SMALL.check_key(key, {"card": key}, None)
    except InvalidEvent as error:
        assert not SMALL.valid_key(key), str(error)
        assert error.field == "card"
    else:
        assert SMALL.valid_key(key)
        assert checked == key and type(checked) is type(key)


def test_a_key_of_a_subclass_is_read_as_its_plain_value() -> None:
    class Card(str):
        pass

    key, _, _ = SMALL.read({"card": Card("c1"), "ts": T0})
    assert type(key) is str and key == "c1"
    with pytest.raises(InvalidEvent, match="9 characters long, more than max_key_length"):
        SMALL.read({"card": Card("c" * 9), "ts": T0})
