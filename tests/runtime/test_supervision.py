"""Supervision in practice (issue 7, item 6), through ``FeatureRuntime``.

A feature that raises on some events reports the error for exactly those events, keeps the
value of the others (a brute-force oracle over the good events) and leaves the other features
of the group alone: keyed and windowed features, and a join whose predicate raises on some
pairs. A *poison* event, whose processing raises past the features' own guards, goes to dead
letters (reason ``FAILED``, with its exception); every other event of its batch is applied
exactly once, and the runtime goes on serving. Random streams, several shard counts and batch
sizes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any
from unittest import mock

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    Count,
    DistinctCount,
    FeatureRuntime,
    FeatureSet,
    FeatureUpdate,
    Join,
    Last,
    Max,
    Mean,
    Sliding,
    Sum,
    Tumbling,
)
from runtime._joins.engine import JoinConfig
from runtime._keyed.kernel import compile_group
from runtime._stats.idle import IdleKeys

from .support.join_oracle import oracle as join_oracle
from .support.join_oracle import pairs
from .support.join_oracle import streams as join_streams
from .support.oracle import feature_value, oracle, same
from .support.window_oracle import KeyOracle

T0 = 1_700_000_000_000
KEYS = ["a", "b", "c", 1, 2]
SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Poison:
    """A value whose conversion to a number raises something no feature guard expects: the
    engines' own per-event code fails on it (a stand-in for a bug)."""

    def __float__(self) -> float:
        raise RuntimeError("poisoned value")

    def __repr__(self) -> str:
        return "Poison()"


#: values a numeric feature refuses: an error for that feature and that event
BAD = ["oops", "12.5", math.nan, math.inf, -math.inf, True]


def is_bad(value: Any) -> bool:
    return value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    )


def is_poison(event: dict[str, Any]) -> bool:
    return isinstance(event.get("amount"), Poison)


@st.composite
def streams(
    draw: st.DrawFn, *, poison: bool = False, floats: bool = True, keys: list[Any] = KEYS
) -> list[dict[str, Any]]:
    """Events over a few keys, times mostly increasing with jitter backwards and ties;
    amounts good, missing, bad (``BAD``) or, with ``poison``, a :class:`Poison`."""
    numbers = st.integers(-50, 50)
    if floats:
        numbers = st.one_of(numbers, st.floats(-1e6, 1e6, allow_nan=False))
    choices = [numbers, st.none(), st.sampled_from(BAD)]
    if poison:
        choices.append(st.builds(Poison))
    amounts = st.one_of(*choices)
    n = draw(st.integers(0, 30))
    t = T0
    events = []
    for _ in range(n):
        t += draw(st.sampled_from([0, 1, 10, 400]))
        events.append(
            {
                "card": draw(st.sampled_from(keys)),
                "ts": t - draw(st.sampled_from([0, 0, 5, 300])),
                "amount": draw(amounts),
                "merchant": draw(st.sampled_from(["m1", "m2", None])),
            }
        )
    return events


async def run(
    feature_set: FeatureSet,
    stream: list[dict[str, Any]],
    keys: Any,
    **options: Any,
) -> tuple[dict[Any, Any], list[FeatureUpdate], Any, Any, FeatureRuntime]:
    """Ingest ``stream``; the vectors of ``keys``, the updates, statistics and recent errors.
    Returns the runtime too (closed) for its dead letters."""
    async with FeatureRuntime(feature_set, **options) as rt:
        updates = rt.updates(buffer=100_000)
        await rt.ingest_many(stream)
        await rt.flush()
        vectors = await rt.get_many(keys)
        stats = await rt.statistics()
        recent = await rt.recent_errors()
        await updates.aclose()
        got = [u async for u in updates]
    return vectors, got, stats, recent, rt


def by_key(events: list[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    result: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        result[event["card"]].append(event)
    return result


def check_errors(
    good: list[dict[str, Any]], numeric: tuple[str, ...], stats: Any, recent: list[Any]
) -> None:
    """Each event with a bad amount is an error of each numeric feature, and only those."""
    bad = [e for e in good if is_bad(e["amount"])]
    assert stats.feature_errors == ({name: len(bad) for name in numeric} if bad else {})
    # (the recent errors are the last 100 of each shard actor: these streams make fewer)
    want = Counter((name, e["card"], e["ts"]) for e in bad for name in numeric)
    assert Counter((e.feature, e.key, e.event_time) for e in recent) == want
    for error in recent:
        assert error.error.startswith("FeatureValueError"), error
        assert "'amount'" in error.error


def check_update_errors(
    events: list[dict[str, Any]], updates: list[FeatureUpdate], numeric: tuple[str, ...]
) -> None:
    """A key's updates follow its events, in arrival order; the errors of each name the
    numeric features when its amount is bad, and nothing else."""
    assert [u.event_time for u in updates] == [e["ts"] for e in events]
    for event, update in zip(events, updates, strict=True):
        if is_bad(event["amount"]):
            assert update.errors is not None and set(update.errors) == set(numeric)
            assert all("'amount'" in message for message in update.errors.values())
        else:
            assert update.errors is None, (event, update.errors)


# -- (a) features that raise on some events ------------------------------------------------------
KEYED = [
    Count(name="n"),
    Sum(name="total", field="amount"),
    Mean(name="avg", field="amount"),
    Max(name="hi", field="amount"),
    Last(name="merchant", field="merchant"),
    DistinctCount(name="merchants", field="merchant"),
]
KEYED_NUMERIC = ("total", "avg", "hi")
KEYED_SET = FeatureSet(name="tx", key="card", time="ts", features=KEYED)


def keyed_values(events: list[dict[str, Any]]) -> dict[str, Any]:
    history = [(e["ts"], e) for e in events]
    return {f.name: feature_value(f, history) for f in KEYED}


def check_keyed(
    good: list[dict[str, Any]], vectors: dict[Any, Any], updates: list[FeatureUpdate]
) -> None:
    """Final vectors and every update against the oracle over the good events."""
    want = oracle(KEYED, "card", "ts", good)
    for key, values in want.items():
        for name, value in values.items():
            assert same(vectors[key][name], value), (key, name, vectors[key][name], value)
    updates_of: dict[Any, list[FeatureUpdate]] = defaultdict(list)
    for update in updates:
        updates_of[update.key].append(update)
    assert set(updates_of) == set(want)
    for key, events in by_key(good).items():
        check_update_errors(events, updates_of[key], KEYED_NUMERIC)
        for i, update in enumerate(updates_of[key]):
            for name, value in keyed_values(events[: i + 1]).items():
                assert same(update.values[name], value), (key, i, name)


@SETTINGS
@given(
    stream=streams(),
    batch_size=st.sampled_from([1, 4, 64]),
    sample_every=st.sampled_from([1, 64]),
)
async def test_a_keyed_feature_reports_exactly_its_bad_events_and_keeps_its_value(
    stream: list[dict[str, Any]], batch_size: int, sample_every: int
) -> None:
    keys = {e["card"] for e in stream}
    for shards in (1, 3):
        vectors, updates, stats, recent, _ = await run(
            KEYED_SET, stream, keys, shards=shards, batch_size=batch_size, sample_every=sample_every
        )
        check_keyed(stream, vectors, updates)
        check_errors(stream, KEYED_NUMERIC, stats, recent)
        assert stats.events_processed == len(stream)


SLIDING = Sliding(size=1000)
WINDOWED = [
    Count(name="w_n", window=SLIDING),
    Sum(name="w_sum", field="amount", window=SLIDING),
    Mean(name="w_avg", field="amount", window=SLIDING),
    Max(name="w_hi", field="amount", window=Tumbling(size=500)),
    Last(name="w_merchant", field="merchant", window=SLIDING),
]
WINDOWED_NUMERIC = ("w_sum", "w_avg", "w_hi")
#: out of order by far less than an hour: no event is late, every one is applied
WINDOWED_SET = FeatureSet(
    name="w", key="card", time="ts", max_out_of_orderness="1h", features=WINDOWED
)


def check_windowed(
    good: list[dict[str, Any]], vectors: dict[Any, Any], updates: list[FeatureUpdate]
) -> None:
    """Every update and the final vectors against the window oracle over the good events."""
    updates_of: dict[Any, list[FeatureUpdate]] = defaultdict(list)
    for update in updates:
        assert update.kind == "update"  # no window closes within an hour of lateness
        updates_of[update.key].append(update)
    events_of = by_key(good)
    assert set(updates_of) == set(events_of)
    for key, events in events_of.items():
        key_oracle = KeyOracle(WINDOWED, 3_600_000, 0, "drop", 0, "update")
        for index, event in enumerate(events):
            # a bad amount is skipped by the numeric features (the oracle knows no NaN)
            amount = None if is_bad(event["amount"]) else event["amount"]
            key_oracle.feed(index, event["ts"], {**event, "amount": amount})
        check_update_errors(events, updates_of[key], WINDOWED_NUMERIC)
        for (_, t, _, values), update in zip(key_oracle.out, updates_of[key], strict=True):
            assert update.event_time == t
            for name, value in values.items():
                assert same(update.values[name], value), (key, t, name, update.values[name])
        for name, value in key_oracle.vector().items():
            assert same(vectors[key][name], value), (key, name)


@SETTINGS
@given(stream=streams(floats=False), batch_size=st.sampled_from([1, 4, 64]))
async def test_a_windowed_feature_reports_exactly_its_bad_events_and_keeps_its_value(
    stream: list[dict[str, Any]], batch_size: int
) -> None:
    keys = {e["card"] for e in stream}
    for shards in (1, 3):
        vectors, updates, stats, recent, _ = await run(
            WINDOWED_SET, stream, keys, shards=shards, batch_size=batch_size
        )
        check_windowed(stream, vectors, updates)
        check_errors(stream, WINDOWED_NUMERIC, stats, recent)
        assert stats.events_processed == len(stream)


def picky(left: dict[str, Any], right: dict[str, Any]) -> bool:
    """A join predicate that raises on one pair in three."""
    if (left["id"] + right["id"]) % 3 == 0:
        raise ValueError("ids add up to a multiple of 3")
    return bool((left["id"] * right["id"]) % 2 == 0)


def picky_or_false(left: dict[str, Any], right: dict[str, Any]) -> bool:
    try:
        return picky(left, right)
    except ValueError:
        return False


def picky_raises(left: dict[str, Any], right: dict[str, Any]) -> bool:
    try:
        picky(left, right)
    except ValueError:
        return True
    return False


def join_set(join: Join, **options: Any) -> FeatureSet:
    return FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["l", "r"],
        joins=[join],
        features=[Count(name="lefts"), Count(name="pairs", stream=join.name)],
        max_out_of_orderness=50,
        **options,
    )


def join_config(predicate: Any) -> JoinConfig:
    return JoinConfig(name="lr", before=10, after=30, predicate=predicate, max_out_of_orderness=50)


async def run_join(
    feature_set: FeatureSet, events: list[Any], shards: int, batch_size: int
) -> tuple[list[Any], dict[Any, Any], Any, FeatureRuntime]:
    async with FeatureRuntime(feature_set, shards=shards, batch_size=batch_size) as rt:
        sub = rt.join_records(buffer=100_000)
        for key, t, side, ev in events:
            await rt.ingest({"ad": key, "ts": t, **ev}, stream="l" if side == "left" else "r")
        await rt.flush()
        stats = await rt.statistics()
        vectors = await rt.get_many({e[0] for e in events})
        await sub.aclose()
        records = [r async for r in sub]
    return records, vectors, stats, rt


@SETTINGS
@given(events=join_streams(), batch_size=st.sampled_from([1, 5, 64]))
async def test_a_join_predicate_that_raises_matches_nothing_and_is_counted_per_pair(
    events: list[Any], batch_size: int
) -> None:
    want, late = join_oracle(join_config(picky_or_false), events)
    raising, _ = join_oracle(join_config(picky_raises), events)
    join = Join(name="lr", left="l", right="r", before=10, after=30, predicate=picky)
    for shards in (1, 3):
        records, vectors, stats, _ = await run_join(join_set(join), events, shards, batch_size)
        got = pairs({**r.record, "key": r.key} for r in records)
        assert got == want
        assert stats.joins["lr"].predicate_errors == sum(raising.values())
        assert stats.joins["lr"].records == sum(want.values())
        assert stats.joins["lr"].late_dropped == late
        # the features of both streams go on: the join's records, and the left events
        per_key = Counter(r.key for r in records)
        lefts = Counter(key for key, _, side, _ in events if side == "left")
        for key, vector in vectors.items():
            assert vector["pairs"] == per_key.get(key, 0)
            assert vector["lefts"] == lefts.get(key, 0)


# -- (b) poison events ---------------------------------------------------------------------------
def check_poison_letters(rt: FeatureRuntime, poison: list[Any], error: type, where: str) -> None:
    """Each poison event is one dead letter, FAILED, with its exception, naming its actor."""
    letters = rt.dead_letters.letters(DeadLetterReason.FAILED)
    assert sorted(id(letter.message) for letter in letters) == sorted(id(e) for e in poison)
    for letter in letters:
        assert isinstance(letter.error, error), letter.error
        assert where in letter.detail and "shard" in letter.detail, letter.detail
        assert f"/{where.split()[-1]}-shard-" in letter.recipient, letter.recipient


@SETTINGS
@given(
    stream=streams(poison=True, keys=[*KEYS, "fresh"]),
    batch_size=st.sampled_from([1, 4, 64]),
    sample_every=st.sampled_from([1, 64]),
)
async def test_a_poison_event_of_a_keyed_group_goes_to_dead_letters_and_the_rest_is_applied(
    stream: list[dict[str, Any]], batch_size: int, sample_every: int
) -> None:
    good = [e for e in stream if not is_poison(e)]
    poison = [e for e in stream if is_poison(e)]
    keys = {e["card"] for e in stream}
    for shards in (1, 3):
        vectors, updates, stats, recent, rt = await run(
            KEYED_SET, stream, keys, shards=shards, batch_size=batch_size, sample_every=sample_every
        )
        check_keyed(good, vectors, updates)
        check_errors(good, KEYED_NUMERIC, stats, recent)
        assert stats.events_processed == len(good)
        assert stats.poison_events == len(poison)
        check_poison_letters(rt, poison, RuntimeError, "group g0")
        # a key whose every event was poison has no state, not even an empty one
        for key in keys - {e["card"] for e in good}:
            assert not vectors[key].known


@SETTINGS
@given(
    stream=streams(floats=False),
    poison_at=st.lists(st.integers(0, 30), max_size=6),
    batch_size=st.sampled_from([1, 4, 64]),
)
async def test_a_poison_event_of_a_window_group_goes_to_dead_letters_and_leaves_no_new_key(
    stream: list[dict[str, Any]], poison_at: list[int], batch_size: int
) -> None:
    # A poison event fails after its key's state was made and its clock set. For a new key
    # that state is dropped: the poison events here are on keys of their own, which never get
    # one (a known key keeps what the event changed: see the next test).
    good = list(stream)
    poison = []
    for i, position in enumerate(poison_at):
        event = {"card": f"p{i % 3}", "ts": T0 + position, "amount": Poison(), "merchant": "m"}
        poison.append(event)
        stream = [*stream[:position], event, *stream[position:]]
    keys = {e["card"] for e in stream}
    for shards in (1, 3):
        vectors, updates, stats, recent, rt = await run(
            WINDOWED_SET, stream, keys, shards=shards, batch_size=batch_size
        )
        check_windowed(good, vectors, updates)
        check_errors(good, WINDOWED_NUMERIC, stats, recent)
        assert stats.events_processed == len(good)
        check_poison_letters(rt, poison, RuntimeError, "group w0")
        for i in range(min(len(poison_at), 3)):
            assert not vectors[f"p{i}"].known


async def test_a_poison_event_of_a_known_window_key_keeps_the_keys_other_events() -> None:
    features = [Sum(name="total", field="amount", window=SLIDING), Count(name="n", window=SLIDING)]
    feature_set = FeatureSet(name="w", key="card", time="ts", features=features)
    events = [
        {"card": "k", "ts": T0, "amount": 1},
        {"card": "k", "ts": T0 + 10, "amount": Poison()},
        {"card": "k", "ts": T0 + 20, "amount": 2},
    ]
    async with FeatureRuntime(feature_set, shards=2, batch_size=64) as rt:
        await rt.ingest_many(events)
        vector = await rt.get("k")
        await rt.ingest({"card": "k", "ts": T0 + 30, "amount": 4})
        after = await rt.get("k")
        stats = await rt.statistics()
    assert (vector["total"], vector["n"]) == (3, 2)
    assert (after["total"], after["n"]) == (7, 3)
    assert stats.events_processed == 3
    check_poison_letters(rt, [events[1]], RuntimeError, "group w0")


class Fault(Exception):
    """The injected failure."""


def touch_failing_for_poison_keys(original: Any) -> Any:
    """``IdleKeys.touch`` that raises for a key named ``poison...``: the join engine calls it
    for every event of a key once its state exists, outside any per-pair guard."""

    def touch(self: IdleKeys, key: Any) -> None:
        if isinstance(key, str) and key.startswith("poison"):
            raise Fault(f"injected for {key}")
        original(self, key)

    return touch


@SETTINGS
@given(
    events=join_streams(),
    poison_at=st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=6),
    batch_size=st.sampled_from([1, 5, 64]),
)
async def test_a_poison_event_of_a_join_goes_to_dead_letters_and_the_rest_is_joined(
    events: list[Any], poison_at: list[tuple[int, bool]], batch_size: int
) -> None:
    want, _ = join_oracle(join_config(picky_or_false), events)
    stream = list(events)
    poison = []
    for i, (position, left) in enumerate(poison_at):
        ev = {"id": 1000 + i, "c": "x", "v": 1}
        event = (f"poison{i % 2}", 1_000 + position, "left" if left else "right", ev)
        poison.append(event)
        stream = [*stream[:position], event, *stream[position:]]
    join = Join(name="lr", left="l", right="r", before=10, after=30, predicate=picky)
    feature_set = join_set(join, idle_timeout="1h")
    touch = touch_failing_for_poison_keys(IdleKeys.touch)
    with mock.patch.object(IdleKeys, "touch", touch):
        for shards in (1, 3):
            records, vectors, stats, rt = await run_join(feature_set, stream, shards, batch_size)
            assert pairs({**r.record, "key": r.key} for r in records) == want
            letters = rt.dead_letters.letters(DeadLetterReason.FAILED)
            assert len(letters) == len(poison)
            assert sorted(letter.message["id"] for letter in letters) == sorted(
                e[3]["id"] for e in poison
            )
            for letter in letters:
                assert isinstance(letter.error, Fault)
                assert "join lr" in letter.detail and "shard" in letter.detail
            # the keyed group of the left stream applied them: only the join failed
            lefts = Counter(key for key, _, side, _ in stream if side == "left")
            for key, vector in vectors.items():
                assert vector["lefts"] == lefts.get(key, 0)
                if str(key).startswith("poison"):
                    assert vector["pairs"] == 0
            assert stats.joins["lr"].keys == len({e[0] for e in events})


# -- the engines' contract -----------------------------------------------------------------------
def test_without_a_poison_list_the_compiled_group_raises_as_before() -> None:
    group = compile_group([Count(name="n"), Sum(name="total", field="amount")])
    states: dict[Any, Any] = {}
    with pytest.raises(RuntimeError, match="poisoned value"):
        group.apply([("k", T0, {"amount": Poison()})], states, [], 0.0)


def test_a_poison_event_leaves_no_state_for_a_key_it_made() -> None:
    group = compile_group([Count(name="n"), Sum(name="total", field="amount")])
    states: dict[Any, Any] = {}
    poison: list[Any] = []
    batch = [("new", T0, {"amount": Poison()}), ("old", T0, {"amount": 1})]
    batch += [("old", T0 + 1, {"amount": Poison()}), ("old", T0 + 2, {"amount": 2})]
    group.apply(batch, states, [], 0.0, poison)
    assert [(key, t) for key, t, _, _ in poison] == [("new", T0), ("old", T0 + 1)]
    assert all(isinstance(exc, RuntimeError) for _, _, _, exc in poison)
    assert list(states) == ["old"]
    assert group.values(states["old"]) == (2, 3)
    assert states["old"].t_ == T0 + 2


def test_the_errors_of_a_poison_event_point_at_no_update() -> None:
    # The second event fails in the error handling of its second feature, after its first
    # feature's error was recorded: that error must not land on the third event's update.
    group = compile_group([Sum(name="total", field="amount"), Mean(name="avg", field="x")])
    wrap = group.apply_emit.__globals__["_wrap"]

    def failing_wrap(error: Exception, field: str) -> Exception:
        if field == "x":
            raise Fault("the error handling itself failed")
        return wrap(error, field)  # type: ignore[no-any-return]

    states: dict[Any, Any] = {}
    errors: list[Any] = []
    out: list[Any] = []
    poison: list[Any] = []
    batch = [
        ("k", T0, {"amount": "oops"}),
        ("k", T0 + 1, {"amount": "oops", "x": "also bad"}),
        ("k", T0 + 2, {"amount": 3}),
    ]
    with mock.patch.dict(group.apply_emit.__globals__, {"_wrap": failing_wrap}):
        group.apply_emit(batch, states, errors, 0.0, out, poison)
    assert [(key, t) for key, t, *_ in out] == [("k", T0), ("k", T0 + 2)]
    assert [(position, t, name) for position, _, t, name, _ in errors] == [
        (0, T0, "total"),
        (-1, T0 + 1, "total"),
    ]
    assert [(t, type(exc)) for _, t, _, exc in poison] == [(T0 + 1, Fault)]
