"""Reads as of a time: ``rt.get(key, as_of=...)``, ``get_many``, ``FeatureSet.serve_as_of``.

What windows show as of a time is checked against the window oracle in
``tests/runtime/windows/test_as_of.py``; here: the serving example of issue 20, keyed
aggregates (which cannot go back), the forms ``as_of`` takes and the errors it gives.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Last,
    Sliding,
    SpecError,
    Sum,
    TimeSince,
    Tumbling,
)

from .support.clock import FakeClock

HOUR = 3_600_000
#: the runtime's clock, in seconds: event times below are ms before it
NOW_S = 1_700_000_000.0
NOW = int(NOW_S * 1000)

FEATURES: list[Any] = [
    Count(name="tx_10m", window=Sliding(size="10m")),
    Sum(name="amount_1h", field="amount", window=Tumbling(size="1h")),
    Count(name="tx"),
    Sum(name="amount", field="amount"),
    Last(name="merchant", field="merchant"),
    TimeSince(name="gap"),
]


def _feature_set(**options: Any) -> FeatureSet:
    return FeatureSet(name="cards", key="card", time="ts", features=FEATURES, **options)


def _events(start: int, n: int = 5) -> list[dict[str, Any]]:
    return [
        {"card": "c1", "ts": start + 1000 * i, "amount": 10 + i, "merchant": f"m{i}"}
        for i in range(n)
    ]


async def test_five_transactions_two_hours_ago_are_not_in_the_last_ten_minutes_now() -> None:
    clock = FakeClock(NOW_S)
    async with FeatureRuntime(_feature_set(), shards=2, clock=clock) as rt:
        await rt.ingest_many(_events(NOW - 2 * HOUR))
        then = await rt.get("c1")
        assert then["tx_10m"] == 5
        assert then.as_of is None
        now = await rt.get("c1", as_of="now")
        assert now["tx_10m"] == 0
        assert now["amount_1h"] == 0  # the hour window holding now has no event
        assert now.as_of == NOW
        # keyed aggregates fold every event in: as of now, all five are before it
        assert (now["tx"], now["amount"], now["merchant"], now["gap"]) == (5, 60, "m4", 1000)
        assert now.last_event_time == then.last_event_time
        ten_minutes_later = await rt.get("c1", as_of=NOW - 2 * HOUR + 600_500)
        assert ten_minutes_later["tx_10m"] == 4  # the first event left the window
        # reads change nothing
        assert (await rt.get("c1")).values == then.values


async def test_serve_as_of_now_makes_reads_default_to_the_runtime_clock() -> None:
    clock = FakeClock(NOW_S)
    feature_set = _feature_set(serve_as_of="now")
    async with FeatureRuntime(feature_set, shards=3, clock=clock) as rt:
        await rt.ingest_many(_events(NOW - 5 * 60_000))
        vector = await rt.get("c1")
        assert (vector["tx_10m"], vector.as_of) == (5, NOW)
        clock.advance(300.5)  # the first event is now 10 minutes and 500 ms old
        vector = await rt.get("c1")
        assert (vector["tx_10m"], vector.as_of) == (4, NOW + 300_500)
        assert (await rt.get("c1", as_of="last_event"))["tx_10m"] == 5
        many = await rt.get_many(["c1", "c2"])
        assert many["c1"]["tx_10m"] == 4
        assert many["c2"]["tx_10m"] == 0 and many["c2"].as_of == NOW + 300_500
        assert not many["c2"].known


async def test_a_read_before_a_keys_last_event_shows_its_last_event_and_says_so() -> None:
    """Neither keyed aggregates nor windows can take events out: a time before the key's
    clock gives the values at the clock, and ``as_of`` is that clock, later than asked."""
    async with FeatureRuntime(_feature_set(), shards=2, clock=FakeClock(NOW_S)) as rt:
        await rt.ingest_many(_events(NOW - HOUR))
        last = NOW - HOUR + 4000
        current = await rt.get("c1")
        for t in (0, NOW - HOUR, last - 1):
            early = await rt.get("c1", as_of=t)
            assert early.values == current.values
            assert early.as_of == last > t
        exact = await rt.get("c1", as_of=last)
        assert exact.values == current.values and exact.as_of == last


async def test_keyed_aggregates_alone_are_exact_as_of_any_time_after_the_last_event() -> None:
    feature_set = FeatureSet(
        name="k",
        key="card",
        time="ts",
        features=[Count(name="tx"), Sum(name="amount", field="amount")],
    )
    async with FeatureRuntime(feature_set, shards=1, clock=FakeClock(NOW_S)) as rt:
        await rt.ingest_many(_events(NOW - HOUR))
        for t in (NOW - HOUR + 4000, NOW, NOW + HOUR):
            vector = await rt.get("c1", as_of=t)
            assert (vector["tx"], vector["amount"], vector.as_of) == (5, 60, t)
        assert (await rt.get("c1", as_of=NOW - HOUR)).as_of == NOW - HOUR + 4000


async def test_as_of_takes_the_time_forms_of_events() -> None:
    feature_set = _feature_set(time_unit="s")
    async with FeatureRuntime(feature_set, shards=1, clock=FakeClock(NOW_S)) as rt:
        start_s = NOW_S - 7200
        await rt.ingest_many(
            [{"card": "c1", "ts": start_s + i, "amount": 1, "merchant": "m"} for i in range(3)]
        )
        at = NOW - 7200_000 + 2000 + 60_000  # a minute after the last event
        forms = [
            at / 1000,  # seconds: the feature set's time_unit
            datetime.fromtimestamp(at / 1000, tz=UTC),
            datetime.fromtimestamp(at / 1000, tz=UTC).replace(tzinfo=None),  # naive is UTC
            datetime.fromtimestamp(at / 1000, tz=UTC).isoformat(),
        ]
        for form in forms:
            vector = await rt.get("c1", as_of=form)
            assert (vector["tx_10m"], vector.as_of) == (3, at), form
        assert (await rt.get("c1", as_of=at / 1000 + 600))["tx_10m"] == 0


@pytest.mark.parametrize(
    ("as_of", "error", "message"),
    [
        (True, TypeError, "as_of must be a time"),
        ([1], TypeError, "got list"),
        (float("nan"), ValueError, "as_of is nan"),
        ("yesterday", ValueError, "as_of is not an ISO-8601 time"),
        (10**20, ValueError, "as_of is out of range"),
    ],
)
async def test_an_unusable_as_of_is_refused(as_of: Any, error: type, message: str) -> None:
    async with FeatureRuntime(_feature_set(), shards=1) as rt:
        with pytest.raises(error, match=message):
            await rt.get("c1", as_of=as_of)
        with pytest.raises(error, match=message):
            await rt.get_many(["c1"], as_of=as_of)


def test_serve_as_of_is_checked_and_loads_from_files() -> None:
    with pytest.raises(SpecError, match=r"serve_as_of: unknown choice 'later'"):
        _feature_set(serve_as_of="later")
    loaded = FeatureSet.from_toml(
        'name = "s"\nkey = "k"\ntime = "t"\nserve_as_of = "now"\n'
        '[[features]]\ntype = "count"\nname = "n"\n'
    )
    assert loaded.serve_as_of == "now"
    assert _feature_set().serve_as_of == "last_event"


@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])
async def test_with_workers_reads_as_of_a_time_are_those_in_process() -> None:
    # workers take no clock of the runtime's own: "now" is the wall clock, read once by the
    # front for every worker
    now = int(time.time() * 1000)
    events = _events(now - 2 * HOUR) + [
        {**e, "card": "c2"} for e in _events(now - 2 * HOUR + 3 * 60_000)
    ]
    # fixed times (a read as of "now" differs from run to run by the time between them)
    times = [None, "last_event", now - 2 * HOUR + 2_500, now - 2 * HOUR + 5 * 60_000]
    found: dict[int, list[Any]] = {}
    for workers in (0, 2):
        async with FeatureRuntime(_feature_set(), shards=2, workers=workers) as rt:
            await rt.ingest_many([dict(e) for e in events])
            await rt.flush()
            found[workers] = []
            for t in times:
                vectors = await rt.get_many(["c1", "c2"], as_of=t)
                found[workers].append({k: (v.values, v.as_of) for k, v in vectors.items()})
            assert (await rt.get("c1", as_of="now"))["tx_10m"] == 0  # two hours ago: none now
            assert (await rt.get("c1"))["tx_10m"] == 5  # as of its last event
    assert found[2] == found[0]
