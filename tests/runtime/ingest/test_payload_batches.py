"""Batches of payloads (bytes) decoded in one pass before they are routed.

``ingest_many`` of JSON or MessagePack payloads decodes a whole chunk first when every payload
is ``bytes`` that decodes to an object (``EventReader.decode_all``), then routes the dicts; any
other chunk is read event by event, as before. Either way the features, the counts and the
dead letters must be the same: a rejected event's dead letter holds the payload as it was sent
(the same object) with the reason reading it gives.
"""

from __future__ import annotations

from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import FeatureRuntime, InvalidEvent
from runtime._ingest.events import EventReader

from ..support.oracle import oracle
from .test_bad_input import BAD, DECODE, ENCODE, FEATURE_SET, KEYS, good_events

#: the bad kinds whose payload is bytes that decode to an object: a chunk of them is decoded
#: in one pass, and each is then refused as a dict
DECODABLE = sorted(k for k in BAD if k.endswith("-in-bytes"))
#: bad bytes that make the chunk they are in be read event by event
UNDECODABLE = ["malformed-bytes", "bytes-not-an-object", "too-large-bytes"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(
        st.one_of(
            good_events().map(lambda good: ("good", good[1])),
            st.sampled_from(DECODABLE).map(lambda kind: ("bad", kind)),
        ),
        max_size=60,
    ),
    undecodable=st.one_of(st.none(), st.sampled_from(UNDECODABLE)),
    shards=st.sampled_from([1, 3]),
    batch_size=st.sampled_from([1, 7, 64]),
    fmt=st.sampled_from(["json", "msgpack"]),
)
async def test_a_chunk_of_payloads_gives_the_features_and_dead_letters_of_one_read_at_a_time(
    stream: list[tuple[str, Any]],
    undecodable: str | None,
    shards: int,
    batch_size: int,
    fmt: str,
) -> None:
    if undecodable is not None:  # one payload that makes its chunk be read one at a time
        stream = [*stream[: len(stream) // 2], ("bad", undecodable), *stream[len(stream) // 2 :]]
    payloads: list[bytes] = []
    good: list[dict[str, Any]] = []
    bad: list[tuple[Any, Any]] = []
    for what, item in stream:
        if what == "good":
            payload = ENCODE[fmt](item)
            good.append(DECODE[fmt](payload))
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
            accepted = await rt.ingest_many(payloads)
            vectors = await rt.get_many(list(KEYS))
            stats = await rt.statistics()
            letters = rt.dead_letters.letters()
    assert accepted == len(good)
    assert (stats.events_ingested, stats.events_rejected) == (len(good), len(bad))
    expected = oracle(FEATURE_SET.features, "card", "ts", good)
    for key in KEYS:
        want = expected.get(key, {"n": 0, "total": 0})
        assert (vectors[key]["n"], vectors[key]["total"]) == (want["n"], want["total"]), key
    assert len(letters) == len(bad)
    for letter, (payload, kind) in zip(letters, bad, strict=True):
        assert letter.reason is DeadLetterReason.REJECTED
        if letter.truncated:
            assert payload.startswith(letter.message)
        else:
            assert letter.message is payload
        assert isinstance(letter.error, InvalidEvent)
        assert letter.error.payload is letter.message
        assert letter.error.field == kind.field
        assert kind.words in str(letter.error), (kind, str(letter.error))


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_decode_all_decodes_a_chunk_of_objects_and_refuses_anything_else(fmt: str) -> None:
    reader = EventReader.of(FEATURE_SET, payload_format=fmt)  # type: ignore[arg-type]
    events = [{"card": "c0", "ts": 1, "amount": 2}, {"card": 7, "ts": 3}]
    payloads = [ENCODE[fmt](event) for event in events]
    assert reader.decode_all(payloads) == events
    assert reader.decode_all([]) is None
    for odd in (
        events[0],  # a dict among payloads
        bytearray(payloads[0]),  # not bytes itself
        ENCODE[fmt]([1, 2]),  # not an object
        payloads[0][:-1],  # cut short
        BAD["too-large-bytes"].make(fmt),  # over max_payload_bytes
    ):
        assert reader.decode_all([*payloads, odd]) is None, odd
