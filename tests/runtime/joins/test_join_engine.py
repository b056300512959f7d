"""The join engine against the nested-loop oracles of ``support.join_oracle``: every join type,
random streams with out-of-order and duplicate times, late events, conditions on fields; any
batch split."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from runtime._joins.engine import JoinConfig, JoinEngine, JoinKeyState, JoinRows

from ..support.join_oracle import asof_oracle, oracle, pairs, streams


@st.composite
def configs(draw: st.DrawFn) -> JoinConfig:
    return JoinConfig(
        name="j",
        before=draw(st.sampled_from([0, 10, 50])),
        after=draw(st.sampled_from([0, 30, 100])),
        how=draw(st.sampled_from(["inner", "left", "right", "full"])),
        on=draw(st.sampled_from([(), ("c",)])),
        range=draw(st.sampled_from([None, ("v", "v", 0, 5)])),
        predicate=draw(st.sampled_from([None, lambda a, b: (a["id"] + b["id"]) % 3 != 0])),
        max_out_of_orderness=draw(st.sampled_from([0, 50])),
        allowed_lateness=draw(st.sampled_from([0, 30])),
    )


def run_in_batches(
    engine: JoinEngine, events: list[Any], batch: int, states: dict[Any, JoinKeyState]
) -> list[dict[str, Any]]:
    """Apply ``events`` in batches of ``batch``; the records."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(events), batch):
        engine.apply(events[i : i + batch], states, out)
    return out


@settings(max_examples=300, deadline=None)
@given(events=streams(), config=configs(), batch=st.sampled_from([1, 4, 100]))
def test_join_engine_matches_nested_loops(
    events: list[Any], config: JoinConfig, batch: int
) -> None:
    engine = JoinEngine(config)
    states: dict[Any, JoinKeyState] = {}
    out = run_in_batches(engine, events, batch, states)
    got = pairs(out)
    want, late = oracle(config, events)
    assert got == want
    assert engine.counters.late_dropped == late
    for r in out:
        assert r["join_timestamp"] == max(
            t for t in (r["left_event_timestamp"], r["right_event_timestamp"]) if t is not None
        )
        if r["left_event_timestamp"] is not None and r["right_event_timestamp"] is not None:
            assert r["time_difference_ms"] == abs(
                r["left_event_timestamp"] - r["right_event_timestamp"]
            )


def test_records_merge_fields_by_strategy() -> None:
    left, right = {"a": 1, "x": "L"}, {"b": 2, "x": "R"}

    def record(merge: Any) -> dict[str, Any]:
        engine = JoinEngine(JoinConfig(name="j", before=10, after=10, merge=merge))
        out: list[dict[str, Any]] = []
        engine.apply([("k", 5, "left", left), ("k", 7, "right", right)], {}, out)
        return out[0]

    prefixed = record("prefix")
    assert {k: prefixed[k] for k in ("left_a", "left_x", "right_b", "right_x")} == {
        "left_a": 1,
        "left_x": "L",
        "right_b": 2,
        "right_x": "R",
    }
    assert record("left_priority")["x"] == "L"
    assert record("right_priority")["x"] == "R"
    custom = record(lambda a, b: {"sum": a["a"] + b["b"]})
    assert custom["sum"] == 3
    assert (custom["join_timestamp"], custom["time_difference_ms"]) == (7, 2)


def test_a_key_cap_evicts_the_oldest_and_counts_it() -> None:
    engine = JoinEngine(
        JoinConfig(name="j", before=0, after=1_000, how="left", max_buffered_per_key=2)
    )
    out: list[dict[str, Any]] = []
    engine.apply([("k", t, "left", {"id": t}) for t in range(5)], {}, out)
    assert engine.counters.evicted == 3
    # evicted unmatched lefts of a left join come out as unmatched rows at once
    assert [r["left_id"] for r in out] == [0, 1, 2]


@settings(max_examples=100, deadline=None)
@given(events=streams(), batch=st.sampled_from([1, 7]))
def test_counting_without_records_counts_the_same_pairs(events: list[Any], batch: int) -> None:
    config = JoinConfig(name="j", before=10, after=30)
    counted, built = JoinEngine(config), JoinEngine(config)
    states: dict[Any, JoinKeyState] = {}
    other: dict[Any, JoinKeyState] = {}
    out: list[dict[str, Any]] = []
    for i in range(0, len(events), batch):
        counted.apply(events[i : i + batch], states, None)
        built.apply(events[i : i + batch], other, out)
    assert counted.counters == built.counters
    assert counted.counters.records == len(out) == sum(oracle(config, events)[0].values())


@settings(max_examples=300, deadline=None)
@given(
    events=streams(),
    tolerance=st.sampled_from([None, 0, 20, 100]),
    ooo=st.sampled_from([0, 50]),
    lateness=st.sampled_from([0, 30]),
    batch=st.sampled_from([1, 4, 100]),
)
def test_asof_join_matches_the_latest_right_event(
    events: list[Any], tolerance: int | None, ooo: int, lateness: int, batch: int
) -> None:
    config = JoinConfig(
        name="j",
        before=0,
        after=0,
        how="asof",
        tolerance=tolerance,
        max_out_of_orderness=ooo,
        allowed_lateness=lateness,
    )
    engine = JoinEngine(config)
    states: dict[Any, JoinKeyState] = {}
    out = run_in_batches(engine, events, batch, states)
    got = pairs(out)
    want, late = asof_oracle(config, events)
    assert got == want
    assert engine.counters.late_dropped == late
    assert engine.counters.records + engine.counters.unmatched == len(out)
    assert all(r["join_timestamp"] == r["left_event_timestamp"] for r in out)
    # the right buffer keeps at most the newest event at or before the watermark
    for st_ in states.values():
        wm = st_.clock - ooo - lateness
        assert sum(1 for t, _, _ in st_.right if t <= wm) <= 1
    assert engine.buffered == sum(len(s) for s in states.values())


@settings(max_examples=200, deadline=None)
@given(
    events=streams(),
    how=st.sampled_from(["inner", "left", "full", "asof"]),
    cap=st.sampled_from([1, 3, 10]),
    batch=st.sampled_from([1, 5, 100]),
)
def test_the_total_cap_holds_and_every_eviction_is_counted(
    events: list[Any], how: str, cap: int, batch: int
) -> None:
    after = 0 if how == "asof" else 30
    config = JoinConfig(name="j", before=0, after=after, how=how, max_buffered=cap)  # type: ignore[arg-type]
    engine = JoinEngine(config)
    states: dict[Any, JoinKeyState] = {}
    out: list[dict[str, Any]] = []
    for i in range(0, len(events), batch):
        engine.apply(events[i : i + batch], states, out)
        assert engine.buffered == sum(len(s) for s in states.values()) <= cap
    counters = engine.counters
    # every applied event is buffered, expired or evicted: none is lost unseen
    assert counters.events == len(events) - counters.late_dropped
    if how in ("left", "full", "asof"):
        # an evicted unmatched left event still gives its row
        lefts_out = {r["left_id"] for r in out if r["left_event_timestamp"] is not None}
        buffered = {ev["id"] for s in states.values() for _, ev, _ in s.left}
        applied_lefts = {ev["id"] for _, _, side, ev in events if side == "left"} - _late_ids(
            config, events
        )
        assert applied_lefts <= lefts_out | buffered


def _late_ids(config: JoinConfig, events: list[Any]) -> set[int]:
    clock: dict[Any, int] = {}
    late = set()
    for key, t, _, ev in events:
        if key in clock and t < clock[key] - config.max_out_of_orderness:
            late.add(ev["id"])
            continue
        clock[key] = max(clock.get(key, t), t)
    return late


def test_the_total_cap_evicts_from_the_least_recently_active_key() -> None:
    engine = JoinEngine(JoinConfig(name="j", before=0, after=1_000, how="left", max_buffered=3))
    out: list[dict[str, Any]] = []
    states: dict[Any, JoinKeyState] = {}
    engine.apply([("old", 0, "left", {"id": 0}), ("new", 1, "left", {"id": 1})], states, out)
    engine.apply([("new", 2, "left", {"id": 2}), ("new", 3, "left", {"id": 3})], states, out)
    assert engine.counters.evicted == 1
    assert [r["left_id"] for r in out] == [0]  # the quiet key's event, as an unmatched row
    assert len(states["new"]) == 3


def test_a_failing_merge_prefixes_the_fields_and_a_failing_predicate_matches_nothing() -> None:
    def merge(left: Any, right: Any) -> dict[str, Any]:
        raise KeyError("oops")

    def predicate(left: Any, right: Any) -> bool:
        return bool(left["x"] / right["x"])

    engine = JoinEngine(JoinConfig(name="j", before=10, after=10, merge=merge, predicate=predicate))
    out: list[dict[str, Any]] = []
    engine.apply(
        [("k", 0, "left", {"x": 1}), ("k", 1, "right", {"x": 2}), ("k", 2, "right", {"x": 0})],
        {},
        out,
    )
    assert [(r["left_x"], r["right_x"]) for r in out] == [(1, 2)]
    assert (engine.counters.merge_errors, engine.counters.predicate_errors) == (1, 1)


def test_drop_quiet_answers_waiting_asof_lefts_and_keeps_the_count() -> None:
    engine = JoinEngine(JoinConfig(name="j", before=0, after=0, how="asof", state_ttl=10.0))
    states: dict[Any, JoinKeyState] = {}
    out: list[dict[str, Any]] = []
    engine.apply([("k", 5, "right", {"p": 1}), ("k", 7, "left", {"q": 1})], states, out, now=0.0)
    engine.apply([("j", 1, "left", {"q": 2})], states, out, now=5.0)
    assert out == [] and engine.buffered == 3
    rows = JoinRows()
    engine.drop_quiet(states, 10.0, rows)  # k is quiet for 10 s, j for 5
    assert [(t, r["left_q"], r["right_p"]) for t, r in engine.timed(rows)] == [(7, 1, 1)]
    assert list(states) == ["j"] and engine.buffered == 1
    assert engine.counters.expired_keys == 1


def test_an_asof_join_keeps_to_the_key_cap() -> None:
    config = JoinConfig(
        name="j", before=0, after=0, how="asof", max_buffered_per_key=2, max_out_of_orderness=1000
    )
    engine = JoinEngine(config)
    states: dict[Any, JoinKeyState] = {}
    out: list[dict[str, Any]] = []
    engine.apply([("k", t, "left", {"id": t}) for t in range(10)], states, out)
    assert len(states["k"].left) == 2 and engine.counters.evicted == 8
    # an evicted left event is answered with what is buffered (no right event: unmatched)
    assert [r["left_id"] for r in out] == list(range(8))


def test_rows_are_timed_for_the_features_in_order() -> None:
    """(time, record): a pair at its later event's time; an unmatched row at the end of its
    interval, or at the key's clock when an eviction lets it out sooner; a full join's rows
    of both sides in time order; rows an event makes due before its own records."""
    engine = JoinEngine(JoinConfig(name="j", before=0, after=9_000, how="left"))
    rows = JoinRows()
    engine.apply_tagged(
        [("a", 0, {"id": 0}), ("a", 5_000, {"id": 1}), ("a", 13_000, {"id": 2})],
        [0, 0, 1],
        (0, 1),
        {},
        rows,
    )
    assert [(t, r["left_id"], r.get("right_id")) for t, r in engine.timed(rows)] == [
        (9_000, 0, None),
        (13_000, 1, 2),
    ]
    full = JoinEngine(JoinConfig(name="j", before=10_000, after=10_000, how="full", on=("c",)))
    rows = JoinRows()
    full.apply_tagged(
        [("a", 0, {"c": "x"}), ("a", 0, {"c": "y"}), ("a", 30_000, {"c": "z"})],
        [0, 1, 0],
        (0, 1),
        {},
        rows,
    )
    assert [t for t, _ in full.timed(rows)] == [10_000, 10_000]
    capped = JoinEngine(
        JoinConfig(name="j", before=0, after=3_600_000, how="left", max_buffered_per_key=2)
    )
    rows = JoinRows()
    capped.apply_tagged(
        [("a", t, {"id": t}) for t in (0, 1_000, 2_000)] + [("a", 3_000, {"id": 3})],
        [0, 0, 0, 1],
        (0, 1),
        {},
        rows,
    )
    assert [(t, r["left_id"], r.get("right_id")) for t, r in capped.timed(rows)] == [
        (2_000, 0, None),  # evicted: at the key's clock, not an hour ahead
        (3_000, 1_000, 3),
        (3_000, 2_000, 3),
    ]


def test_the_largest_key_counts_keys_that_shrink_by_the_total_cap() -> None:
    engine = JoinEngine(JoinConfig(name="j", before=0, after=10**9, max_buffered=100))
    states: dict[Any, JoinKeyState] = {}
    engine.apply([("A", t, "left", {}) for t in range(100)], states, None)
    engine.apply([("B", t, "left", {}) for t in range(60)], states, None)
    assert engine.largest == 100 and engine.buffered == 100
