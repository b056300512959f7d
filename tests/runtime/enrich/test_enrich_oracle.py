"""Enrichment against a brute-force oracle: whatever the shard count, the batch size, the size
of the cache (evictions), the source's delay and negative caching, every event gets the row its
key has (or the lookup's default), in order per key, and every lookup is counted once."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    CheckpointError,
    Count,
    CustomSource,
    FeatureRuntime,
    FeatureSet,
    Last,
    Lookup,
    Ratio,
    SpecError,
    Sum,
)
from runtime._enrich.rows import Version

DEFAULT = {"risk": -1.0, "cat": "default"}
#: the source's rows: merchants m0..m5 (m6, m7 are not in it); small numbers, exact sums
ROWS = {f"m{i}": {"risk": float(i), "cat": f"c{i % 3}"} for i in range(6)}


class _Source:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls += 1
        await anyio.sleep(self.delay)
        return {key: ROWS[key] for key in keys if key in ROWS}


def _features(cache_size: int, negative_ttl: str, wait: str = "readers") -> FeatureSet:
    return FeatureSet(
        name="tx",
        wait_for_lookups=wait,  # type: ignore[arg-type]
        key="card",
        time="ts",
        sources=[
            CustomSource(
                name="merchants",
                cache_size=cache_size,
                negative_ttl=negative_ttl,
                max_batch_size=4,
            )
        ],
        lookups=[Lookup(name="m", field="mid", source="merchants", default=DEFAULT)],
        features=[
            Count(name="n"),
            Sum(name="risk", field="m.risk"),
            Last(name="cat", field="m.cat"),
        ],
    )


#: (card, merchant or None: an event without the field)
events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.one_of(st.none(), st.sampled_from([f"m{i}" for i in range(8)])),
    ),
    min_size=1,
    max_size=60,
)


def _oracle(stream: list[tuple[str, str | None]]) -> list[tuple[str, int, float, str]]:
    """Per event, in order: (card, ts, the card's sum of risk, its event's category)."""
    sums: dict[str, float] = {}
    out = []
    for ts, (card, merchant) in enumerate(stream):
        row = ROWS.get(merchant, DEFAULT) if merchant is not None else DEFAULT
        sums[card] = sums.get(card, 0.0) + row["risk"]
        out.append((card, ts, sums[card], row["cat"]))
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    stream=events_strategy,
    shards=st.sampled_from([1, 3]),
    batch_size=st.sampled_from([1, 7, 64]),
    cache_size=st.sampled_from([1, 2, 50]),
    negative_ttl=st.sampled_from(["0s", "30s"]),
    delay=st.sampled_from([0.0, 0.002]),
    whole=st.booleans(),
    chunk=st.sampled_from([1, 5, 60]),
    wait=st.sampled_from(["readers", "all"]),
)
async def test_every_event_gets_its_row_or_the_default_in_order_per_key(
    stream: list[tuple[str, str | None]],
    shards: int,
    batch_size: int,
    cache_size: int,
    negative_ttl: str,
    delay: float,
    whole: bool,
    chunk: int,
    wait: str,
) -> None:
    """With ``wait_for_lookups="all"`` the count is in the lookup's group too: one update
    per event with all three; else it comes in a group of its own, at once."""
    events = []
    for ts, (card, merchant) in enumerate(stream):
        event: dict[str, Any] = {"card": card, "ts": ts}
        if merchant is not None:
            event["mid"] = merchant
        events.append(event)
    source = _Source(delay)
    async with FeatureRuntime(
        _features(cache_size, negative_ttl, wait),
        shards=shards,
        batch_size=batch_size,
        sources={"merchants": source},
    ) as rt:
        updates = rt.updates(buffer=1_000)
        # ``whole``: someone reads the whole enriched events (rows and metadata)
        enriched = rt.enriched_events(buffer=1_000) if whole else None
        with anyio.fail_after(30):
            for start in range(0, len(events), chunk):
                await rt.ingest_many(events[start : start + chunk])
                if delay:
                    await anyio.sleep(delay / 2)  # fetches land between batches
            await rt.flush()
        await updates.aclose()
        got = []
        counts: list[tuple[str, int, int]] = []
        async for batch in updates.batches():
            if "risk" in batch.names:
                risk, cat = batch.names.index("risk") + 2, batch.names.index("cat") + 2
                got.extend((row[0], row[1], row[risk], row[cat]) for row in batch.rows)
            if "n" in batch.names:
                assert ("risk" in batch.names) == (wait == "all")
                n = batch.names.index("n") + 2
                counts.extend((row[0], row[1], row[n]) for row in batch.rows)
        statistics = (await rt.statistics()).enrichment["merchants"]
        if enriched is not None:
            await enriched.aclose()
            whole_events = [e async for e in enriched]
    want = _oracle(stream)
    # in order per key; keys interleave as the shards go
    for card in {card for card, _ in stream}:
        assert [g for g in got if g[0] == card] == [w for w in want if w[0] == card]
    assert len(got) == len(want)
    for card in {card for card, _ in stream}:
        mine = [(ts, n) for c, ts, n in counts if c == card]
        times = [w[1] for w in want if w[0] == card]
        assert mine == [(ts, i + 1) for i, ts in enumerate(times)]
    # each lookup counted once, as a hit (a row, or a key known to be missing) or a miss
    lookups = sum(1 for _, merchant in stream if merchant is not None)
    assert statistics.cache_hits + statistics.cache_misses == lookups
    if enriched is not None:
        assert len(whole_events) == len(stream)
        for e in whole_events:
            merchant = e.event.get("mid")
            row = ROWS.get(merchant, DEFAULT) if merchant is not None else DEFAULT
            assert e.event["enrichment"] == {"m": row}
            assert (e.event["m.risk"], e.event["m.cat"]) == (row["risk"], row["cat"])
            metadata = e.event["enrichment_metadata"]
            assert metadata["cache_hits"] + metadata["cache_misses"] == (merchant is not None)


async def test_a_row_stored_again_gives_its_new_fields_to_later_events() -> None:
    # the fields an entry's row adds are made once per row: a row stored again (a fetch after
    # the ttl, into the entry held for a stale fallback) must not give the old row's fields
    rows = {"m": {"risk": 1.0}}

    class Source:
        async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
            return {key: dict(rows[key]) for key in keys if key in rows}

    fs = FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[CustomSource(name="s", ttl="1s", refresh_ahead=None, max_stale="1h")],
        lookups=[Lookup(name="m", field="mid", source="s")],
        features=[Last(name="risk", field="m.risk")],
    )
    now = [1_000.0]
    async with FeatureRuntime(fs, sources={"s": Source()}, clock=lambda: now[0]) as rt:
        reads = []
        for ts in range(1, 7):
            if ts == 4:
                rows["m"] = {"risk": 2.0}
                now[0] += 5  # past the ttl: fetched again
            await rt.ingest({"card": "c", "ts": ts, "mid": "m"})  # a miss, then hits
            await rt.flush()
            reads.append((await rt.get("c"))["risk"])
    assert reads == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]


async def test_a_versioned_row_in_the_cache_gives_each_event_the_version_of_its_time() -> None:
    versions = [Version(0, 1_000, {"risk": 1.0}), Version(1_000, None, {"risk": 10.0})]

    class Source:
        async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
            return {key: versions for key in keys}

    fs = FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[CustomSource(name="s")],
        lookups=[Lookup(name="m", field="mid", source="s")],
        features=[Sum(name="risk", field="m.risk")],
    )
    async with FeatureRuntime(fs, sources={"s": Source()}) as rt:
        updates = rt.updates()
        for ts in (10, 999, 1_000, 5, 2_000):  # the first fetches; the others hit the cache
            await rt.ingest({"card": "c", "ts": ts, "mid": "m"})
            await rt.flush()
        await updates.aclose()
        got = [row[2] async for batch in updates.batches() for row in batch.rows]
    assert got == [1.0, 2.0, 12.0, 13.0, 23.0]


class _Flaky(_Source):
    """Fails the calls ``failures`` says (by call number, cycling)."""

    def __init__(self, delay: float, failures: list[bool]) -> None:
        super().__init__(delay)
        self.failures = failures

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        failing = self.failures[self.calls % len(self.failures)]
        rows = await super().get_many(keys)
        if failing:
            raise ConnectionError("down for this call")
        return rows


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    stream=events_strategy,
    shards=st.sampled_from([1, 2]),
    batch_size=st.sampled_from([1, 7, 64]),
    cache_size=st.sampled_from([1, 50]),
    failures=st.lists(st.booleans(), min_size=1, max_size=6),
    chunk=st.sampled_from([1, 5, 60]),
)
async def test_a_failing_source_loses_no_event_and_keeps_each_keys_order(
    stream: list[tuple[str, str | None]],
    shards: int,
    batch_size: int,
    cache_size: int,
    failures: list[bool],
    chunk: int,
) -> None:
    # a failed fetch gives its events a stale row or the default, whatever waits behind them
    events = [
        {"card": card, "ts": ts, **({"mid": merchant} if merchant is not None else {})}
        for ts, (card, merchant) in enumerate(stream)
    ]
    fs = FeatureSet(
        name="tx",
        key="card",
        time="ts",
        sources=[
            CustomSource(
                name="merchants",
                cache_size=cache_size,
                max_batch_size=3,
                retries=0,
                breaker_failures=1_000,
            )
        ],
        lookups=[Lookup(name="m", field="mid", source="merchants", default=DEFAULT)],
        features=[Last(name="cat", field="m.cat")],
    )
    source = _Flaky(0.001, failures)
    async with FeatureRuntime(
        fs, shards=shards, batch_size=batch_size, sources={"merchants": source}
    ) as rt:
        updates = rt.updates(buffer=1_000)
        with anyio.fail_after(30):
            for start in range(0, len(events), chunk):
                await rt.ingest_many(events[start : start + chunk])
                await anyio.sleep(0.0005)
            await rt.flush()
        await updates.aclose()
        got = [(row[0], row[1], row[2]) async for b in updates.batches() for row in b.rows]
    assert len(got) == len(stream)
    for card in {card for card, _ in stream}:
        mine = [g for g in got if g[0] == card]
        assert [ts for _, ts, _ in mine] == [ts for ts, (c, _) in enumerate(stream) if c == card]
        for _, ts, cat in mine:
            merchant = stream[ts][1]
            row = ROWS.get(merchant, DEFAULT) if merchant is not None else DEFAULT
            assert cat in (row["cat"], DEFAULT["cat"])


def test_wait_for_lookups_puts_every_feature_of_the_stream_in_the_lookups_group() -> None:
    """``"all"``: the count, which reads no lookup, is grouped with the features that do (on
    the enriched stream); ``"readers"``: it has a group of its own on the ingested stream. A
    choice other than those two is refused, naming the option."""
    readers, every = _features(50, "30s"), _features(50, "30s", "all")
    count = readers.feature("n")
    assert readers.group_stream_of(count) == readers.stream_names[0]
    assert every.group_stream_of(count) == every.group_stream_of(every.feature("risk"))
    assert every.group_stream_of(count) != every.stream_names[0]
    with pytest.raises(SpecError, match="wait_for_lookups: unknown choice 'some'"):
        _features(50, "30s", "some")


async def test_a_checkpoint_restores_only_into_the_same_wait_for_lookups(tmp_path: Any) -> None:
    """Changing ``wait_for_lookups`` moves features between groups: a checkpoint of the other
    choice is refused with the reason, and restores into its own."""
    events = [{"card": f"c{i % 3}", "ts": i, "mid": f"m{i % 4}"} for i in range(40)]
    async with FeatureRuntime(
        _features(50, "30s"), shards=2, checkpoints=tmp_path, sources={"merchants": _Source(0)}
    ) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        await rt.checkpoint()
        before = await rt.get_many(["c0", "c1", "c2"])
    with pytest.raises(CheckpointError, match="'n': stream 'events' -> stream 'events' after"):
        async with FeatureRuntime(
            _features(50, "30s", "all"),
            shards=2,
            checkpoints=tmp_path,
            sources={"merchants": _Source(0)},
        ):
            pass
    async with FeatureRuntime(
        _features(50, "30s"), shards=3, checkpoints=tmp_path, sources={"merchants": _Source(0)}
    ) as rt:
        after = await rt.get_many(["c0", "c1", "c2"])
    assert {k: v.values for k, v in after.items()} == {k: v.values for k, v in before.items()}


async def test_a_ratio_of_a_lookup_feature_and_a_plain_one_under_wait_for_lookups_all() -> None:
    """With every feature after the lookups, a ratio may mix a feature that reads a lookup
    and one that does not: both are in the lookups' group, and the ratio is their quotient."""
    features = FeatureSet(
        name="tx",
        key="card",
        time="ts",
        wait_for_lookups="all",
        sources=[CustomSource(name="merchants", cache_size=50)],
        lookups=[Lookup(name="m", field="mid", source="merchants", default=DEFAULT)],
        features=[
            Count(name="n"),
            Sum(name="risk", field="m.risk"),
            Ratio(name="mean_risk", numerator="risk", denominator="n"),
        ],
    )
    events = [{"card": "a", "ts": i, "mid": f"m{i % 7}"} for i in range(20)]
    async with FeatureRuntime(features, shards=2, sources={"merchants": _Source(0.001)}) as rt:
        await rt.ingest_many(events)
        await rt.flush()
        values = (await rt.get("a")).values
    risks = [ROWS.get(e["mid"], DEFAULT)["risk"] for e in events]
    assert values == {"n": 20, "risk": sum(risks), "mean_risk": sum(risks) / 20}
