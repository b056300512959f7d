"""Training sets, case by case: when an event counts (ties, stragglers, later events), the
labels' forms and errors, the rows' columns and order, the history as a file source, the
labels' dimension rows at their time, and the outputs: rows, Arrow, Parquet, pandas, polars.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime import (
    Count,
    FeatureSet,
    InvalidEvent,
    Join,
    JsonLinesSource,
    Last,
    Lookup,
    Max,
    Mean,
    Sliding,
    SqliteSource,
    Sum,
    TrainingSet,
    Tumbling,
    UnknownFeature,
    training_set,
)

T0 = 1_700_000_000_000
FEATURES = FeatureSet(
    name="cards",
    key="card",
    time="ts",
    features=[
        Count(name="n"),
        Sum(name="total", field="amount"),
        Count(name="n_10s", window=Sliding(size="10s")),
        Max(name="newest", field="ts"),
    ],
)


def event(card: str, seconds: float, amount: float = 1.0) -> dict[str, Any]:
    return {"card": card, "ts": T0 + int(seconds * 1000), "amount": amount}


async def test_an_event_at_the_label_time_counts_and_a_later_one_does_not() -> None:
    history = [event("a", 0), event("a", 5), event("a", 5, 2.0), event("a", 5.001)]
    labels = [{"card": "a", "ts": T0 + 5_000}, {"card": "a", "ts": T0 + 4_999}]
    rows = (await training_set(FEATURES, labels, history)).rows()
    assert [(row["n"], row["total"], row["newest"]) for row in rows] == [
        (3, 4.0, T0 + 5_000),
        (1, 1.0, T0),
    ]


async def test_a_straggler_counts_from_its_arrival_not_from_its_time() -> None:
    # b@3s arrives after a@6s: at 4s and 5s it had not come; from 6s it is in
    history = [event("a", 0), event("a", 6), event("b", 3), event("b", 7)]
    labels = [{"card": "b", "ts": T0 + s * 1000} for s in (4, 5, 6, 7)]
    rows = (await training_set(FEATURES, labels, history)).rows()
    assert [row["n"] for row in rows] == [0, 0, 1, 2]


async def test_windows_read_as_of_the_key_clock_as_get_serves_them() -> None:
    # the chosen semantics: rt.get's, a window as of the key's newest event (issue 20 item 1
    # will add reads as of the request time)
    history = [event("a", 0), event("a", 1), event("a", 100)]
    labels = [{"card": "a", "ts": T0 + 50_000}, {"card": "a", "ts": T0 + 100_000}]
    rows = (await training_set(FEATURES, labels, history)).rows()
    assert [row["n_10s"] for row in rows] == [2, 1]


async def test_an_idle_timeout_moves_a_quiet_key_clock_to_the_label_time() -> None:
    timed = FeatureSet(
        name="cards",
        key="card",
        time="ts",
        features=[Count(name="n_10s", window=Sliding(size="10s"))],
        idle_timeout="5s",
    )
    history = [event("a", 0), event("a", 1), event("b", 60)]
    labels = [{"card": "a", "ts": T0 + 2_000}, {"card": "a", "ts": T0 + 60_000}]
    rows = (await training_set(timed, labels, history, resolution=0)).rows()
    assert [row["n_10s"] for row in rows] == [2, 0]


async def test_history_older_than_max_past_or_ahead_of_today_is_replayed() -> None:
    """The wall-clock bounds judge an event against its arrival online; a replay long after
    (or of history dated ahead of today) is not refused by them."""
    bounded = FeatureSet(
        name="cards", key="card", time="ts", max_past="7d", features=[Count(name="n")]
    )
    future = 4_100_000_000_000  # 2099
    history = [event("a", s) for s in range(5)] + [
        {"card": "b", "ts": future + s} for s in range(3)
    ]
    labels = [{"card": "a", "ts": T0 + 10_000}, {"card": "b", "ts": future + 10}]
    result = await training_set(bounded, labels, history)
    assert [row["n"] for row in result.rows()] == [5, 3]
    assert (result.accepted, result.rejected) == (8, 0)


async def test_an_idle_clock_at_a_window_boundary_closes_it_whatever_the_float_rounding() -> None:
    # clock = 37,921 + (45 - 37.921 - 5) s = 40,000 ms, a window's end: 45.0 - 37.921 - 5 is
    # 2.0789999... in floats, which truncated to 2,078 ms left the window [30 s, 40 s) open
    timed = FeatureSet(
        name="cards",
        key="card",
        time="ts",
        features=[Max(name="mx", field="amount", window=Tumbling(size="10s"))],
        idle_timeout="5s",
    )
    history = [{"card": "a", "ts": T0 + 37_921, "amount": 37}]
    labels = [{"card": "a", "ts": T0 + 45_000}]
    rows = (await training_set(timed, labels, history, resolution=0)).rows()
    assert rows[0]["mx"] is None


async def test_nanosecond_label_times_python_cannot_hold_are_refused_naming_the_column() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("with pandas installed, pyarrow reads them as pandas Timestamps")
    labels = pa.table(
        {"card": ["a"], "ts": pa.array([T0 * 1_000_000 + 1], type=pa.timestamp("ns"))}
    )
    with pytest.raises(ValueError, match=r"column 'ts' holds nanosecond timestamps .* cast it"):
        await training_set(FEATURES, labels, [event("a", 0)])


async def test_rows_keep_the_labels_order_and_columns_and_add_the_features() -> None:
    history = [event("a", s) for s in range(5)]
    labels = [
        {"card": "a", "ts": T0 + 4_000, "y": 1, "id": "x"},
        {"card": "zz", "ts": T0, "y": 0},
        {"card": "a", "ts": T0 + 1_000, "weight": 0.5},
    ]
    train = await training_set(FEATURES, labels, history, features=["total", "n"])
    assert isinstance(train, TrainingSet)
    assert train.columns == ("card", "ts", "y", "id", "weight", "total", "n")
    assert train.features == ("total", "n")
    assert len(train) == 3
    assert train.rows() == [
        {"card": "a", "ts": T0 + 4_000, "y": 1, "id": "x", "total": 5.0, "n": 5},
        {"card": "zz", "ts": T0, "y": 0, "total": 0, "n": 0},  # a key never seen
        {"card": "a", "ts": T0 + 1_000, "weight": 0.5, "total": 2.0, "n": 2},
    ]
    assert train.column("n") == [5, 0, 2]
    assert train.column("weight") == [None, None, 0.5]
    assert (train.events, train.accepted, train.rejected) == (5, 5, 0)
    with pytest.raises(KeyError, match="no column named 'nope'"):
        train.column("nope")


async def test_label_times_take_every_form_of_event_times() -> None:
    history = [event("a", 0), event("a", 10)]
    when = dt.datetime.fromtimestamp((T0 + 5_000) / 1000, dt.UTC)
    labels = [
        {"card": "a", "ts": when},
        {"card": "a", "ts": when.isoformat()},
        {"card": "a", "ts": T0 + 5_000},
    ]
    rows = (await training_set(FEATURES, labels, history)).rows()
    assert [row["n"] for row in rows] == [1, 1, 1]
    assert rows[0]["ts"] == when  # the label's columns as given


async def test_labels_may_name_their_own_key_and_time_fields() -> None:
    history = [event("a", 0), event("a", 10)]
    labels = [{"user_card": "a", "at": T0 + 10_000, "y": 1}]
    rows = (await training_set(FEATURES, labels, history, key="user_card", time="at")).rows()
    assert rows == [
        {"user_card": "a", "at": T0 + 10_000, "y": 1, "n": 2, "total": 2.0, "n_10s": 1}
        | {"newest": T0 + 10_000}
    ]


@pytest.mark.parametrize(
    ("label", "field", "message"),
    [
        ({"ts": T0}, "card", "labels\\[1\\]: .*'card'"),
        ({"card": "a"}, "ts", "labels\\[1\\]: .*'ts'"),
        ({"card": "a", "ts": "yesterday"}, "ts", "labels\\[1\\]: .*'ts'"),
        ({"card": 1.5, "ts": T0}, "card", "labels\\[1\\]: .*'card'"),
    ],
)
async def test_a_label_without_a_usable_key_or_time_is_refused_naming_it(
    label: dict[str, Any], field: str, message: str
) -> None:
    labels = [{"card": "a", "ts": T0}, label]
    with pytest.raises(InvalidEvent, match=message) as caught:
        await training_set(FEATURES, labels, [event("a", 0)])
    assert caught.value.field == field
    assert caught.value.payload == label


async def test_wrong_arguments_are_refused_before_anything_runs() -> None:
    labels = [{"card": "a", "ts": T0}]
    with pytest.raises(UnknownFeature, match="no feature named 'nope'"):
        await training_set(FEATURES, labels, [], features=["nope"])
    with pytest.raises(ValueError, match=r"columns named as features .*: total"):
        await training_set(FEATURES, [{"card": "a", "ts": T0, "total": 3}], [])
    with pytest.raises(TypeError, match="a label must be a mapping"):
        await training_set(FEATURES, [("a", T0)], [])
    with pytest.raises(TypeError, match="labels must be an iterable"):
        await training_set(FEATURES, {"card": "a", "ts": T0}, [])
    with pytest.raises(TypeError, match="history must be an iterable"):
        await training_set(FEATURES, labels, 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no lookup named 'm'"):
        await training_set(FEATURES, labels, [], lookups=["m"])


async def test_events_the_runtime_refuses_are_counted_and_the_rest_go_in() -> None:
    history = [event("a", 0), {"card": "a"}, "not json", event("a", 2)]
    train = await training_set(FEATURES, [{"card": "a", "ts": T0 + 2_000}], history)
    assert train.rows()[0]["n"] == 2
    assert (train.events, train.accepted, train.rejected) == (4, 2, 2)


async def test_events_after_the_last_label_are_not_read() -> None:
    read: list[int] = []

    def history() -> Any:
        for s in range(100):
            read.append(s)
            yield event("a", s)

    train = await training_set(FEATURES, [{"card": "a", "ts": T0 + 9_000}], history())
    assert train.rows()[0]["n"] == 10
    assert read == list(range(11))  # the first later event is read, and held
    assert train.events == 10


async def test_the_history_may_be_a_file_source(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event("a", s, s)) + "\n" for s in range(10)))
    source = JsonLinesSource(path)
    labels = [{"card": "a", "ts": T0 + 4_000}, {"card": "a", "ts": T0 + 9_000}]
    rows = (await training_set(FEATURES, labels, source.iterate())).rows()
    assert [(row["n"], row["total"]) for row in rows] == [(5, 10), (10, 45)]


async def test_labels_may_be_a_pyarrow_table() -> None:
    table = pa.table({"card": ["a", "b", "a"], "ts": [T0, T0, T0 + 1_000], "y": [1, 0, 1]})
    rows = (await training_set(FEATURES, table, [event("a", 0), event("a", 1)])).rows()
    assert [(row["card"], row["y"], row["n"]) for row in rows] == [
        ("a", 1, 1),
        ("b", 0, 0),
        ("a", 1, 2),
    ]


async def test_arrow_and_parquet_hold_the_rows(tmp_path: Path) -> None:
    history = [event("a", s, s) for s in range(4)] + [event("b", 2, 0.5)]
    labels = [{"card": c, "ts": T0 + s * 1000, "y": s % 2} for c in "ab" for s in range(4)]
    train = await training_set(FEATURES, labels, history)
    table = train.to_arrow()
    assert table.column_names == list(train.columns)
    assert table.to_pylist() == train.rows()
    assert table.schema.field("total").type == pa.float64()  # ints and floats together
    path = tmp_path / "train.parquet"
    train.to_parquet(path, compression="zstd")
    assert pq.read_table(path).to_pylist() == train.rows()
    schema = pa.schema(
        [
            (name, pa.float32() if name == "total" else table.schema.field(name).type)
            for name in train.columns
        ]
    )
    assert train.to_arrow(schema).schema.field("total").type == pa.float32()


async def test_a_column_of_mixed_types_names_itself_in_arrow() -> None:
    last = FeatureSet(name="s", key="card", time="ts", features=[Last(name="v", field="v")])
    history = [{"card": "a", "ts": T0, "v": 1}, {"card": "b", "ts": T0, "v": "x"}]
    labels = [{"card": "a", "ts": T0}, {"card": "b", "ts": T0}]
    train = await training_set(last, labels, history)
    with pytest.raises(TypeError, match="column 'v'"):
        train.to_arrow()


async def test_pandas_and_polars_read_it_through_arrow() -> None:
    train = await training_set(FEATURES, [{"card": "a", "ts": T0}], [event("a", 0)])
    found = 0
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass
    else:
        assert train.to_arrow().to_pandas()["n"].tolist() == [1]
        found += 1
    try:
        import polars
    except ImportError:
        pass
    else:
        assert polars.from_arrow(train.to_arrow())["n"].to_list() == [1]
        found += 1
    if not found:
        pytest.skip("neither pandas nor polars is installed")


def risk_table(path: Path) -> str:
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "CREATE TABLE risk (merchant_id TEXT, risk REAL, valid_from INTEGER, valid_to INTEGER)"
        )
        connection.executemany(
            "INSERT INTO risk VALUES (?, ?, ?, ?)",
            [("m1", 0.1, T0, T0 + 10_000), ("m1", 0.6, T0 + 10_000, None)],
        )
    connection.close()
    return str(path)


async def test_dimension_rows_are_the_versions_valid_at_each_time(tmp_path: Path) -> None:
    enriched = FeatureSet(
        name="pay",
        key="card",
        time="ts",
        sources=[
            SqliteSource(
                name="risks",
                path=risk_table(tmp_path / "risk.db"),
                table="risk",
                key="merchant_id",
                columns=["risk"],
                valid_from="valid_from",
                valid_to="valid_to",
            )
        ],
        lookups=[
            Lookup(name="merchant", field="merchant_id", source="risks", default={"risk": -1})
        ],
        features=[Mean(name="risk_mean", field="merchant.risk"), Count(name="n")],
    )
    history = [{"card": "a", "ts": T0 + s * 1000, "merchant_id": "m1"} for s in (-5, 2, 12, 14)]
    labels = [
        {"card": "a", "ts": T0 + 3_000, "merchant_id": "m1"},
        {"card": "a", "ts": T0 + 20_000, "merchant_id": "m1"},
        {"card": "a", "ts": T0 - 1_000, "merchant_id": "m1"},
        {"card": "a", "ts": T0 + 20_000},  # no merchant: the default
    ]
    train = await training_set(enriched, labels, history, lookups=["merchant"])
    assert train.lookups == ("merchant",)
    assert train.columns[-1] == "merchant"
    rows = train.rows()
    # features: each event had the version of its own time (-1 before the first)
    assert [row["n"] for row in rows] == [2, 4, 1, 4]
    assert [round(row["risk_mean"], 9) for row in rows] == [-0.45, 0.075, -1.0, 0.075]
    # the labels' own rows: the version valid at the label's time
    assert [(row["merchant"] or {}).get("risk") for row in rows] == [0.1, 0.6, -1, -1]
    assert rows[0]["merchant"]["valid_to"] == T0 + 10_000
    assert train.to_arrow().schema.field("merchant").type.num_fields >= 1


async def test_several_streams_and_a_join_are_read_at_the_label_times() -> None:
    ads = FeatureSet(
        name="ads",
        key="ad",
        time="ts",
        streams=["views", "clicks"],
        joins=[Join(name="j", left="views", right="clicks", after="3s", on=("imp",))],
        features=[
            Count(name="views"),
            Count(name="clicks", stream="clicks"),
            Count(name="matched", stream="j"),
        ],
    )
    history = [
        {"ad": "a", "ts": T0, "imp": 0, "side": "views"},
        {"ad": "a", "ts": T0 + 1_000, "imp": 0, "side": "clicks"},
        # of no stream: refused, and it moves no clock (nor what arrives when)
        {"ad": "a", "ts": T0 + 50_000, "imp": 9, "side": "nope"},
        {"ad": "a", "ts": T0 + 2_000, "imp": 1, "side": "views"},
        {"ad": "a", "ts": T0 + 6_000, "imp": 1, "side": "clicks"},  # too late to match
    ]
    labels = [{"ad": "a", "ts": T0 + s} for s in (500, 1_000, 2_000, 7_000)]
    train = await training_set(ads, labels, history, stream=lambda e: e["side"])
    assert [(r["views"], r["clicks"], r["matched"]) for r in train.rows()] == [
        (1, 0, 0),
        (1, 1, 1),
        (2, 1, 1),
        (2, 2, 1),
    ]
    assert (train.events, train.accepted, train.rejected) == (5, 4, 1)
