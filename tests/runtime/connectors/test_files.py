"""File sources end to end: JSON lines, CSV and Parquet files read into a real runtime give the
values of ingesting the same events directly, over one file or several; bad rows go to dead
letters with their file, line (or row) and field while the rest goes on; a seek, and a restart
from a checkpoint, go on exactly where the position says; lag counts what is left; the CSV
backfill whose every row the runtime used to reject (strings for times) now goes in.
"""

from __future__ import annotations

import csv
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings

from actors import DeadLetterReason
from runtime import (
    ConfigError,
    CsvSource,
    FeatureRuntime,
    FeatureSet,
    InvalidEvent,
    JsonLinesSource,
    ParquetSource,
    Source,
    Sum,
    consume,
)

from .common import BASE, SCHEMA, direct, events, runtime, values_of, write, write_split

KINDS = ["jsonl", "csv", "parquet"]


def source_of(kind: str, paths: Any, **options: Any) -> Source:
    if kind == "jsonl":
        return JsonLinesSource(paths, **options)
    if kind == "csv":
        return CsvSource(paths, schema=SCHEMA, **options)
    return ParquetSource(paths, **options)


def letters(rt: FeatureRuntime, name: str) -> list[Any]:
    return [
        letter
        for letter in rt.dead_letters.letters(DeadLetterReason.REJECTED)
        if letter.recipient == f"featurist/source/{name}"
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("parts", [1, 3])
async def test_a_file_gives_the_values_of_ingesting_its_events_directly(
    tmp_path: Path, kind: str, parts: int
) -> None:
    rows = events(500)
    paths = write_split(kind, tmp_path, rows, parts)
    async with runtime() as rt:
        async with source_of(kind, paths) as source:
            result = await consume(rt, source, batch_size=128)
        assert (result.records, result.accepted, result.rejected, result.ended) == (
            500,
            500,
            0,
            True,
        )
        assert result.position[0] == str(paths[-1])
        assert await values_of(rt) == await direct(rows)


async def test_bad_csv_rows_go_to_dead_letters_with_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "card,ts,amount,merchant,ok\n"
        f"c1,{BASE},1.5,m1,true\n"
        f"c1,{BASE + 1},abc,m1,true\n"  # line 3: amount
        f"c2,{BASE + 2},2.5,m2\n"  # line 4: a cell short
        "\n"  # line 5: blank, holds no event
        f'c2,{BASE + 3},3.5,"m\n2",maybe\n'  # lines 6-7: ok is not a bool
        f"c3,{BASE + 4},,m3,false\n"  # line 8: empty amount, left out
        f"c3,2023-11-14T22:13:20.005Z,4.5,m3,no\n",  # line 9: ts not an int
        encoding="utf-8",
    )
    async with runtime() as rt:
        source = CsvSource(path, schema=SCHEMA, name="orders")
        result = await consume(rt, source)
        assert (result.records, result.accepted, result.rejected) == (6, 2, 4)  # 1 blank
        assert result.position == [str(path), 7]
        found = {
            (letter.error.args[0].split(": ")[0], letter.error.field): letter.message
            for letter in letters(rt, "orders")
        }
        assert found == {
            (f"{path} line 3", "amount"): {
                "card": "c1",
                "ts": str(BASE + 1),
                "amount": "abc",
                "merchant": "m1",
                "ok": "true",
            },
            (f"{path} line 4", None): ["c2", str(BASE + 2), "2.5", "m2"],
            (f"{path} line 6", "ok"): {
                "card": "c2",
                "ts": str(BASE + 3),
                "amount": "3.5",
                "merchant": "m\n2",
                "ok": "maybe",
            },
            (f"{path} line 9", "ts"): {
                "card": "c3",
                "ts": "2023-11-14T22:13:20.005Z",
                "amount": "4.5",
                "merchant": "m3",
                "ok": "no",
            },
        }
        errors = {str(letter.error) for letter in letters(rt, "orders")}
        assert f"{path} line 3: field 'amount' (float): 'abc' is not a float" in errors
        assert f"{path} line 4: has 4 cells, the header 5" in errors
        assert all(isinstance(letter.error, InvalidEvent) for letter in letters(rt, "orders"))
        values = await values_of(rt)
        assert values["c1"]["n"] == 1 and values["c3"]["n"] == 1
        assert values["c3"]["total"] == 0  # its amount was empty: the field is missing


async def test_bad_json_lines_go_to_dead_letters_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    path.write_bytes(
        b'{"card": "c1", "ts": %d, "amount": 1}\n'
        b"{not json\n"
        b"[1, 2]\n"
        b"\n"
        b'{"card": "c1", "ts": "2023-11-14T22:13:20Z", "amount": "2"}\n'
        b'{"card": "c1", "ts": %d, "amount": "x"}\n' % (BASE, BASE)
    )
    source = JsonLinesSource(path, schema={"ts": "time", "amount": "float"}, name="feed")
    async with runtime() as rt:
        result = await consume(rt, source)
        assert (result.records, result.accepted, result.rejected) == (5, 2, 3)  # 1 blank
        by_line = {str(letter.error).split(": ")[0]: letter for letter in letters(rt, "feed")}
        assert sorted(by_line) == [f"{path} line {n}" for n in (2, 3, 6)]
        assert by_line[f"{path} line 2"].message == b"{not json"
        assert "not a JSON object: a list" in str(by_line[f"{path} line 3"].error)
        assert by_line[f"{path} line 6"].error.field == "amount"
        values = await values_of(rt)
        # the ISO time is 1_700_000_000_000 ms: the event went in, with its amount typed
        assert values["c1"]["n"] == 2 and values["c1"]["total"] == 3.0


async def test_parquet_rows_that_do_not_fit_are_named_by_row(tmp_path: Path) -> None:
    path = tmp_path / "trips.parquet"
    table = pa.table(
        {
            "card": ["c1", "c1", "c2", "c2"],
            "ts": [str(BASE), "soon", str(BASE + 2), None],
            "amount": [1.0, 2.0, 3.0, 4.0],
        }
    )
    pq.write_table(table, path, row_group_size=3)
    async with runtime() as rt:
        result = await consume(rt, ParquetSource(path, schema={"ts": "int"}, name="trips"))
        # row 4's null ts stays None: the runtime refuses it, with its own reason
        assert (result.records, result.accepted, result.rejected) == (4, 2, 2)
        (letter,) = letters(rt, "trips")
        assert str(letter.error) == f"{path} row 2: field 'ts' (int): 'soon' is not an int"
        assert letter.message == {"card": "c1", "ts": "soon", "amount": 2.0}


async def test_parquet_timestamps_are_event_times_as_they_are_or_typed(tmp_path: Path) -> None:
    path = tmp_path / "stamps.parquet"
    start = dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    times = [start + dt.timedelta(milliseconds=i * 250) for i in range(8)]
    pq.write_table(pa.table({"card": ["c1"] * 8, "ts": times, "amount": [1.0] * 8}), path)
    for schema in (None, {"ts": "time"}):
        async with runtime() as rt:
            source = ParquetSource(path, schema=schema)
            batch = await source.read(2)
            assert batch is not None
            expected = times[0] if schema is None else BASE
            assert batch.payloads[0]["ts"] == expected
            await source.seek([str(path), 0])
            assert (await consume(rt, source)).accepted == 8
            vector = await rt.get("c1")
            assert vector.values["n"] == 8 and vector.last_event_time == BASE + 7 * 250


@pytest.mark.parametrize("kind", KINDS)
async def test_seek_goes_on_after_the_position_across_files(tmp_path: Path, kind: str) -> None:
    rows = events(40)
    paths = write_split(kind, tmp_path, rows, 3)  # 14, 14 and 12 rows
    names = [str(p) for p in paths]
    source = source_of(kind, paths)
    first = await source.read(14)
    assert first is not None and first.position == [names[0], 14]
    whole = await source.read(1000)  # a batch goes on over the ends of files
    assert whole is not None and whole.position == [names[2], 12]
    assert [*first.payloads, *whole.payloads] == rows
    everything = []
    await source.seek((names[0], 0))
    while (batch := await source.read(9)) is not None:
        everything.extend(batch.payloads)
    assert everything == await _all(source_of(kind, paths))
    assert len(everything) == 40
    for position, start in [((names[0], 5), 5), ([names[1], 0], 14), ([names[1], 14], 28)]:
        await source.seek(position)
        rest = await _all(source)
        assert rest == everything[start:]
    await source.seek([names[2], 12])
    assert await source.read(5) is None
    for bad in ([names[0]], ["elsewhere", 1], [names[0], -1], [names[0], "3"], 7):
        with pytest.raises(ValueError):
            await source.seek(bad)
    await source.aclose()


async def _all(source: Source) -> list[Any]:
    return [payload async for payload in source.iterate(batch_size=5)]


@pytest.mark.parametrize("kind", KINDS)
async def test_lag_counts_the_records_not_read(tmp_path: Path, kind: str) -> None:
    paths = write_split(kind, tmp_path, events(30), 2)  # 15 and 15
    source = source_of(kind, paths)
    assert await source.lag() == 30
    await source.read(20)
    assert await source.lag() == 10
    await source.read(20)
    assert await source.lag() == 0
    assert await source.read(20) is None


def _dict_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Write ``rows`` as CSV with a header; read them back as csv.DictReader gives them."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, ["card", "ts", "amount"])
        writer.writeheader()
        writer.writerows(rows)
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


async def test_a_csv_backfill_whose_rows_were_all_rejected_now_goes_in(tmp_path: Path) -> None:
    path = tmp_path / "backfill.csv"
    rows = [
        {"card": f"c{i % 3}", "ts": 1796592768393 + i * 1000, "amount": i + 0.5} for i in range(30)
    ]
    raw = _dict_rows(path, rows)
    features = FeatureSet(
        name="b", key="card", time="ts", features=[Sum(name="total", field="amount")]
    )
    # before: the rows of csv.DictReader are strings, and "1796592768393" is not a time
    async with FeatureRuntime(features) as rt:
        result = await rt.replay(raw)
        assert (result.accepted, result.rejected) == (0, 30)
    schema = {"ts": "int", "amount": "float"}
    async with FeatureRuntime(features) as rt:
        async with CsvSource(path, schema=schema) as source:
            replayed = await rt.replay(source.iterate(dead_letters=rt.dead_letters))
        assert (replayed.accepted, replayed.rejected) == (30, 0)
        assert (await rt.get("c0")).values["total"] == sum(r["amount"] for r in rows[::3])
    async with FeatureRuntime(features) as rt:
        consumed = await consume(rt, CsvSource(path, schema=schema))
        assert (consumed.accepted, consumed.rejected) == (30, 0)
        assert (await rt.get("c0")).values["total"] == sum(r["amount"] for r in rows[::3])


async def test_csv_without_a_header_takes_fieldnames(tmp_path: Path) -> None:
    path = tmp_path / "bare.csv"
    path.write_text(f"c1;{BASE};2.5\nc1;{BASE + 1};1\n", encoding="utf-8")
    source = CsvSource(
        path,
        schema={"ts": int, "amount": float},
        fieldnames=["card", "ts", "amount"],
        delimiter=";",
    )
    assert await source.lag() == 2
    batch = await source.read(10)
    assert batch is not None and batch.payloads == [
        {"card": "c1", "ts": BASE, "amount": 2.5},
        {"card": "c1", "ts": BASE + 1, "amount": 1.0},
    ]


async def test_a_schema_column_missing_from_the_csv_header_is_a_config_error(
    tmp_path: Path,
) -> None:
    path = write("csv", tmp_path / "a.csv", events(3))
    source = CsvSource(path, schema={"amonut": "float"})
    with pytest.raises(ConfigError, match=r"\['amonut'\] are not in the header"):
        await source.read(10)
    # a read that failed returns nothing and moves nowhere: the next one fails the same way
    assert source.position == [str(path), 0]
    with pytest.raises(ConfigError):
        await source.read(10)


async def test_a_file_without_the_key_or_time_column_is_refused_whole(tmp_path: Path) -> None:
    """Every record would be refused alike (one dead letter each, the file read to its end):
    a header (or a Parquet file's columns) without the feature set's key or time field is a
    ConfigError naming the file, its columns and the field; one column that holds another
    delimiter says so."""
    rows = [{"customer": f"c{i}", "ts": BASE + i, "amount": 1.0} for i in range(3)]
    customers = tmp_path / "a.csv"
    customers.write_text(
        "customer,ts,amount\n" + "".join(f"{r['customer']},{r['ts']},1.0\n" for r in rows)
    )
    cases: list[tuple[Any, str]] = [
        (
            CsvSource(customers),
            r"a\.csv: the header \['customer', 'ts', 'amount'\] has no column 'card' "
            r"\(the feature set's key field\)$",
        ),
        (
            ParquetSource(write("parquet", tmp_path / "a.parquet", rows)),
            r"a\.parquet: the file's columns \['customer', 'ts', 'amount'\] has no column "
            r"'card' \(the feature set's key field\)$",
        ),
    ]
    semicolons = tmp_path / "semi.csv"
    semicolons.write_text(f"card;ts;amount\nc1;{BASE};1.0\n")
    cases.append(
        (CsvSource(semicolons), r"has no column 'card' .*\(one column: is the delimiter right\?\)")
    )
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("card,amount\nc1,1.0\n")
    cases.append((CsvSource(no_time), r"has no column 'ts' \(the feature set's time field\)"))
    for source, message in cases:
        with pytest.raises(ConfigError, match=message):
            async with runtime() as rt:
                await rt.consume(source)


async def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    path = write("jsonl", tmp_path / "events.parquet", events(3))
    with pytest.raises(ValueError, match=r"events\.parquet: not a Parquet file \("):
        await ParquetSource(path).read(10)
    with pytest.raises(ValueError, match=r"events\.parquet: not a Parquet file \("):
        await ParquetSource(path).lag()


async def test_a_read_that_fails_midway_is_read_again_whole(tmp_path: Path) -> None:
    rows = events(30)
    paths = write_split("jsonl", tmp_path, rows, 2)  # 15 and 15
    source = JsonLinesSource(paths)
    first = await source.read(10)
    assert first is not None
    paths[1].unlink()
    with pytest.raises(FileNotFoundError):
        await source.read(10)  # 5 records of the first file, then the second is missing
    assert source.position == [str(paths[0]), 10]
    write("jsonl", paths[1], rows[15:])
    rest = [payload async for payload in source.iterate()]
    assert [*first.payloads, *rest] == rows


def test_bad_source_options_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with pytest.raises(ConfigError, match="no file"):
        JsonLinesSource([])
    with pytest.raises(ConfigError, match="listed twice"):
        JsonLinesSource([path, path])
    with pytest.raises(ConfigError, match="unknown type"):
        JsonLinesSource(path, schema={"ts": "date"})
    with pytest.raises(ConfigError, match="time_unit"):
        JsonLinesSource(path, time_unit="h")  # type: ignore[arg-type]
    assert JsonLinesSource(path).name == f"jsonl:{path}"
    assert CsvSource(path, name="orders").name == "orders"


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(0, 120),
    parts=st.integers(1, 3),
    cut=st.floats(0, 1),
    lost=st.integers(0, 40),
    batch_size=st.sampled_from([1, 5, 16, 1024]),
)
async def test_a_restart_from_a_checkpoint_ends_equal_to_one_pass(
    tmp_path: Path, kind: str, n: int, parts: int, cut: float, lost: int, batch_size: int
) -> None:
    directory = tmp_path / uuid.uuid4().hex
    directory.mkdir()
    rows = events(n, seed=n + parts)
    paths = write_split(kind, directory, rows, parts)
    at = int(n * cut)
    async with runtime(directory / "cp") as rt:
        async with source_of(kind, paths) as source:
            await consume(rt, source, batch_size=batch_size, until=at)
            await rt.checkpoint()
            # read on, then stop with no checkpoint: these records are read again
            await consume(rt, source, batch_size=batch_size, until=lost)
    async with runtime(directory / "cp") as rt:
        async with source_of(kind, paths) as source:
            result = await consume(rt, source, batch_size=batch_size)
        assert result.records == n - at
        assert await values_of(rt) == await direct(rows)


async def test_a_time_column_is_converted_to_the_feature_sets_unit(tmp_path: Path) -> None:
    path = tmp_path / "seconds.jsonl"
    path.write_text(
        '{"card": "c1", "ts": "2023-11-14T22:13:20Z", "amount": 1}\n'
        '{"card": "c1", "ts": "2023-11-14T22:13:21.5Z", "amount": 2}\n',
        encoding="utf-8",
    )
    seconds = FeatureSet(
        name="s", key="card", time="ts", time_unit="s", features=[Sum(name="total", field="amount")]
    )
    async with FeatureRuntime(seconds) as rt:
        with pytest.raises(ConfigError, match="time_unit='s'"):
            await consume(rt, JsonLinesSource(path, schema={"ts": "time"}))
        result = await consume(rt, JsonLinesSource(path, schema={"ts": "time"}, time_unit="s"))
        assert result.accepted == 2
        vector = await rt.get("c1")
        assert vector.values["total"] == 3 and vector.last_event_time == BASE + 1500
