"""Point-in-time training sets against a brute-force oracle and against serving.

Histories are random: many keys, times that mostly rise with stragglers (out of order, some
late beyond ``max_out_of_orderness``), duplicate times, gaps longer than the idle timeout.
Labels fall at random times, on event times (ties) and between them, several at one time.

- **No leakage.** Each row equals the oracle's values over the events that had arrived by the
  label's time (each event arrives at the newest event time so far, its own included): keyed
  aggregates from ``oracle.key_values``, windows from the window oracle's ``KeyOracle``. A
  ``Max`` of the event time is never after the label's time.
- **Parity.** Each row equals what a runtime fed the same events online (its clock at each
  arrival, idle time and expiry applied as it moves) served from ``get_many`` at the label's
  time, with and without ``idle_timeout`` and ``state_ttl``.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from runtime import (
    Count,
    FeatureRuntime,
    FeatureSet,
    Hopping,
    Max,
    Mean,
    Session,
    Sliding,
    Sum,
    Tumbling,
    training_set,
)

from ..support.clock import FakeClock
from ..support.oracle import ORACLE_FEATURES, key_values, same
from ..support.window_oracle import KeyOracle

WINDOWED = [
    Sum(name="sum_10s", field="amount", window=Tumbling(size="10s")),
    Count(name="n_5s", window=Sliding(size="5s")),
    Mean(name="avg_hop", field="amount", window=Hopping(size="10s", hop="5s")),
    Max(name="max_session", field="amount", window=Session(gap="3s")),
]
#: the newest event time a row saw: never after the label's time
NEWEST = Max(name="newest", field="ts")
KEYED = [*ORACLE_FEATURES, NEWEST]
OOO_MS = 1_000
UNTIMED = FeatureSet(
    name="t",
    key="card",
    time="ts",
    features=[*KEYED, *WINDOWED],
    max_out_of_orderness=OOO_MS,
)
TIMED = FeatureSet(
    name="t",
    key="card",
    time="ts",
    features=[*KEYED, *WINDOWED],
    max_out_of_orderness=OOO_MS,
    idle_timeout="2s",
    state_ttl="8s",
)
KEYS = [*(f"c{i}" for i in range(8)), 0, 1]
# numbers and None only: a value a feature refuses is reported as its error, which the row
# does not hold (the feature keeps its last value)
amounts = st.one_of(
    st.integers(-50, 100), st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), st.none()
)


@st.composite
def histories(draw: st.DrawFn, max_size: int = 50) -> list[dict[str, Any]]:
    """Events in arrival order. Times are multiples of 125 ms (exact in seconds as floats)."""
    n = draw(st.integers(0, max_size))
    now = 0
    events = []
    for _ in range(n):
        now += draw(st.sampled_from([0, 0, 250, 750, 1_500, 4_000, 9_000]))
        lag = draw(st.sampled_from([0, 0, 0, 375, 1_250, 3_500]))
        events.append(
            {
                "card": draw(st.sampled_from(KEYS)),
                "ts": max(0, now - lag),
                "amount": draw(amounts),
                "merchant": draw(st.sampled_from(["m1", "m2", None])),
                "status": draw(st.sampled_from(["ok", "declined", "review"])),
            }
        )
    return events


@st.composite
def labelled(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A history and labels at random times: on its event times (ties), between them, before
    the first and after the last; several labels may share a time."""
    history = draw(histories())
    times = [event["ts"] for event in history]
    end = max(times, default=0) + 20_000
    at = st.one_of(st.integers(-1_000, end).map(lambda t: t - t % 125), st.sampled_from(times))
    if not times:
        at = st.integers(0, 5_000)
    labels = draw(
        st.lists(
            st.fixed_dictionaries(
                {"card": st.sampled_from(KEYS), "ts": at, "y": st.integers(0, 1)}
            ),
            max_size=25,
        )
    )
    return history, [label for label in labels if label["ts"] >= 0]


def arrivals(history: list[dict[str, Any]]) -> list[int]:
    """Each event's arrival time (ms): the newest event time so far, its own included."""
    newest, found = -1, []
    for event in history:
        newest = max(newest, event["ts"])
        found.append(newest)
    return found


def oracle_row(history: list[dict[str, Any]], label: dict[str, Any]) -> dict[str, Any]:
    """The values of the label's key over the events that had arrived by its time."""
    t = label["ts"]
    seen = [
        (i, event)
        for i, (event, at) in enumerate(zip(history, arrivals(history), strict=True))
        if at <= t and event["card"] == label["card"]
    ]
    values = key_values(KEYED, [(event["ts"], event) for _, event in seen])
    windows = KeyOracle(WINDOWED, OOO_MS, 0, "drop", 0, "update")
    for i, event in seen:
        windows.feed(i, event["ts"], event)
    values.update(windows.vector())
    return values


async def served_online(
    feature_set: FeatureSet, history: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What a runtime fed ``history`` live served at each label's time: its clock is each
    event's arrival; at a label's time the clock moves there and the label's key is read."""
    clock = FakeClock(0.0)
    served: list[dict[str, Any] | None] = [None] * len(labels)
    order = sorted(range(len(labels)), key=lambda i: labels[i]["ts"])
    async with FeatureRuntime(feature_set, shards=3, batch_size=4, clock=clock) as rt:
        pending = list(zip(history, arrivals(history), strict=True))
        for i in order:
            t = labels[i]["ts"]
            while pending and pending[0][1] <= t:
                event, at = pending.pop(0)
                if at / 1000 > clock.now:
                    # what arrived before is applied at its time, then time passes
                    await rt.flush()
                    clock.now = at / 1000
                    await rt.flush()
                await rt.ingest(event)
            await rt.flush()
            clock.now = max(clock.now, t / 1000)
            await rt.flush()
            served[i] = (await rt.get(labels[i]["card"])).values
    return [row for row in served if row is not None]


def assert_rows(rows: list[dict[str, Any]], want: list[dict[str, Any]], names: list[str]) -> None:
    assert len(rows) == len(want)
    for i, (row, expected) in enumerate(zip(rows, want, strict=True)):
        for name in names:
            assert same(row[name], expected[name]), (i, name, row[name], expected[name])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=labelled(), shards=st.sampled_from([1, 2, 5]))
async def test_rows_equal_the_oracle_over_the_events_arrived_by_the_label_time(
    case: tuple[list[dict[str, Any]], list[dict[str, Any]]], shards: int
) -> None:
    history, labels = case
    train = await training_set(UNTIMED, labels, history, options={"shards": shards})
    rows = train.rows()
    assert [{k: row[k] for k in ("card", "ts", "y")} for row in rows] == labels
    assert_rows(rows, [oracle_row(history, label) for label in labels], UNTIMED.names)
    for row in rows:
        assert row["newest"] is None or row["newest"] <= row["ts"]
    assert train.rejected == 0
    assert train.accepted == sum(
        1 for at in arrivals(history) if labels and at <= max(label["ts"] for label in labels)
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=labelled(), timed=st.booleans())
async def test_rows_equal_the_values_served_online_at_the_label_times(
    case: tuple[list[dict[str, Any]], list[dict[str, Any]]], timed: bool
) -> None:
    history, labels = case
    feature_set = TIMED if timed else UNTIMED
    online = await served_online(feature_set, history, labels)
    train = await training_set(
        feature_set, labels, history, resolution=0, options={"shards": 2, "batch_size": 7}
    )
    assert_rows(train.rows(), online, feature_set.names)
