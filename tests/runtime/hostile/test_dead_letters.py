"""Dead letters are bounded in bytes (issue 15, item 2).

A letter used to keep the whole payload and the exception with its traceback, whose frames held
the decoded value and the whole ``ingest_many`` list: 20 rejected payloads of 1 MiB, or one bad
event in each of many batches of 50,000, grew the process by hundreds of MiB. A letter now keeps
a copy of the error without its traceback, the start and the size of a large payload, and the
letters held are bounded in bytes as well as in count, while every letter stays counted.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import psutil
import pytest

from runtime import ConfigError, Count, FeatureRuntime, FeatureSet, InvalidEvent

FEATURES = FeatureSet(name="p", key="k", time="ts", features=[Count(name="n")])
T0 = 1_700_000_000_000
MiB = 1 << 20


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _big_payload(i: int) -> bytes:
    """Just under 1 MiB of JSON without a key, which decodes to 200,000 objects first."""
    raw = json.dumps({"ts": T0, "blob": [[j] for j in range(100_000)], "i": i}).encode()
    assert MiB // 2 < len(raw) < MiB
    return raw


class _Marker:
    """A weakly referenceable field value, to see whether an event list is still alive."""


async def test_rejected_large_payloads_do_not_hold_their_decoded_values() -> None:
    async with FeatureRuntime(FEATURES, shards=2) as rt:
        await rt.ingest(_big_payload(-1))  # warm up the allocator
        before = _rss()
        payloads = [_big_payload(i) for i in range(20)]
        for payload in payloads:
            assert not await rt.ingest(payload)
        del payloads, payload
        grown = _rss() - before
        letters = rt.dead_letters.letters()
        stats = rt.dead_letters.statistics()
    # before the fix: about 280 MiB (each traceback held a decoded 1 MiB payload)
    assert grown < 64 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    assert stats.by_reason == {"rejected": 21} and stats.truncated == 21
    letter = letters[-1]
    assert letter.truncated and isinstance(letter.message, bytes)
    assert letter.message.startswith(b'{"ts":') and len(letter.message) == 1024
    assert MiB // 2 < letter.size < MiB
    assert isinstance(letter.error, InvalidEvent) and letter.error.field == "k"
    assert letter.error.__traceback__ is None
    assert letter.error.payload is letter.message  # shared, not held twice
    assert stats.held_bytes < 21 * 8192


async def test_a_bad_event_does_not_hold_its_ingest_many_list() -> None:
    async with FeatureRuntime(FEATURES, shards=2) as rt:
        await rt.ingest_many([{"k": "w", "ts": T0 + i} for i in range(50_000)])
        await rt.flush()
        before = _rss()
        markers = []
        for b in range(10):
            marker = _Marker()
            markers.append(weakref.ref(marker))
            events: list[Any] = [
                {"k": f"k{i % 100}", "ts": T0 + i, "x": i, "m": marker} for i in range(50_000)
            ]
            events[b] = {"k": "bad", "ts": "not a time"}
            await rt.ingest_many(events)
            del events, marker
        await rt.flush()
        grown = _rss() - before
        letters = rt.dead_letters.letters()
        assert rt.dead_letters.statistics().by_reason == {"rejected": 10}
    # before the fix: the frames of each letter's traceback held its list of 50,000 events
    # (about 16 MiB each)
    assert [ref() for ref in markers] == [None] * 10
    assert grown < 48 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    for letter in letters:
        assert letter.message == {"k": "bad", "ts": "not a time"} and not letter.truncated
        assert isinstance(letter.error, InvalidEvent) and letter.error.field == "ts"
        assert letter.error.__traceback__ is None


async def test_the_letters_held_are_bounded_in_bytes_and_all_are_counted() -> None:
    # 4 MiB: a message of up to 4 KiB is kept whole
    async with FeatureRuntime(FEATURES, dead_letters_max_bytes=4 * MiB) as rt:
        for i in range(2_000):
            await rt.ingest({"ts": T0, "pad": "x" * 3_000, "i": i})  # kept whole
            if i % 10 == 0:
                await rt.ingest({"ts": T0, "pad": "y" * 60_000, "i": i})  # kept as its start
        stats = rt.dead_letters.statistics()
        letters = rt.dead_letters.letters()
        metrics = await rt.metrics()
    assert stats.total == stats.by_reason["rejected"] == 2_200 == metrics.events_rejected
    assert metrics.dead_letters == {"rejected": 2_200}
    assert stats.truncated == 200
    assert stats.max_bytes == 4 * MiB and 3 * MiB < stats.held_bytes <= 4 * MiB
    assert stats.held < 2_200 and stats.held + stats.evicted == 2_200
    assert letters[-1].message == {"ts": T0, "pad": "x" * 3_000, "i": 1_999}
    truncated = [letter for letter in letters if letter.truncated]
    assert truncated and all(60_000 < letter.size < 70_000 for letter in truncated)
    assert truncated[-1].message.startswith("{'ts': 1700000000000, 'pad': 'yyy")


async def test_dead_letters_max_bytes_is_checked() -> None:
    with pytest.raises(ConfigError, match="dead_letters_max_bytes"):
        FeatureRuntime(FEATURES, dead_letters_max_bytes=0)
