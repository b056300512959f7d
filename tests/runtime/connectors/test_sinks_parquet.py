"""The Parquet sink: the rows pyarrow reads back are the updates, in order (key, event time,
kind, one column per feature); row groups of ``row_group_size``; files rolled by rows and by
size, renamed from ``_`` names when closed and none left open; a column null so far that gets
values starts a new file; a retried write does not write its rows twice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from runtime import ConfigError, ParquetSink, UpdateBatch, run_sink

from .common import FEATURE_SET, events, runtime
from .test_sinks import ListSink, by_key


def read_rows(files: Sequence[Path]) -> list[tuple[Any, ...]]:
    names = [f.name for f in FEATURE_SET.features]
    out = []
    for path in files:
        table = pq.read_table(path)
        assert table.column_names == ["key", "event_time", "kind", *names]
        columns = table.to_pydict()
        assert set(columns["kind"]) == {"update"}
        ordered = [columns["key"], columns["event_time"], *(columns[n] for n in names)]
        out += list(zip(*ordered, strict=True))
    return out


@pytest.mark.parametrize(
    ("directory", "message"),
    [
        ("/proc/featurist-sink", r"cannot make the directory '/proc/featurist-sink' \("),
        ("file", r"cannot make the directory '.*file' \(FileExistsError"),
    ],
)
async def test_a_directory_that_cannot_be_written_fails_run_sink_at_once(
    tmp_path: Path, directory: str, message: str
) -> None:
    """Not at the first flush, after the updates it took were buffered."""
    (tmp_path / "file").write_text("not a directory")
    path = directory if directory.startswith("/") else tmp_path / directory
    sink = ParquetSink(path)
    async with runtime() as rt:
        with pytest.raises(ConfigError, match=message):
            async with run_sink(rt, sink):
                pass


async def test_the_rows_read_back_are_the_updates(tmp_path: Path) -> None:
    updates = ListSink()
    async with runtime() as rt:
        async with ParquetSink(tmp_path, row_group_size=100, max_file_rows=350) as sink:
            async with run_sink(rt, updates), run_sink(rt, sink, max_batch=64):
                await rt.ingest_many(events(1000))
    # the two subscriptions may interleave the shards' batches differently: compare per key
    assert by_key([row[1:] for row in updates.rows]) == by_key(read_rows(sink.files))
    assert len(sink.files) == 3 and all(p.parent == tmp_path / "g0" for p in sink.files)
    assert sorted(tmp_path.rglob("*")) == sorted([tmp_path / "g0", *sink.files])  # noqa: ASYNC240
    first = pq.ParquetFile(sink.files[0])
    assert first.metadata.num_rows == 400  # closed at the first row group past 350
    assert [first.metadata.row_group(i).num_rows for i in range(4)] == [100] * 4
    # the directory reads as one dataset
    assert ds.dataset(tmp_path / "g0").count_rows() == 1000


async def test_files_roll_by_size_and_a_second_sink_writes_beside_the_first(
    tmp_path: Path,
) -> None:
    for _run in range(2):
        async with runtime() as rt:
            async with ParquetSink(tmp_path, row_group_size=50, max_file_bytes=1) as sink:
                async with run_sink(rt, sink):
                    await rt.ingest_many(events(200))
        assert [pq.ParquetFile(p).metadata.num_rows for p in sink.files] == [50] * 4
    assert len(list((tmp_path / "g0").glob("*.parquet"))) == 8


async def test_a_column_null_so_far_that_gets_values_starts_a_new_file(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, row_group_size=2)
    nulls = [("a", 1, None), ("b", 2, None)]
    values = [("a", 3, 1.5), ("b", 4, None)]
    for rows in (nulls, values, nulls):
        await sink.write([UpdateBatch("g", ("x",), list(rows), None, {}, 0)])
    await sink.aclose()
    assert len(sink.files) == 2
    assert pq.read_table(sink.files[0]).column("x").to_pylist() == [None, None]
    assert pq.read_table(sink.files[1]).column("x").to_pylist() == [1.5, None, None, None]


async def test_a_retried_write_takes_its_rows_once(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, row_group_size=1000)
    batches = [UpdateBatch("g", ("x",), [("a", 1, 1), ("b", 2, 2)], None, {}, 0)]
    await sink.write(batches)
    await sink.write(batches)  # the same list again: a retry
    await sink.flush()
    assert pq.read_table(sink.files[0]).column("x").to_pylist() == [1, 2]


async def test_a_write_that_fails_half_way_takes_each_row_once_on_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = ParquetSink(tmp_path, row_group_size=1000)
    await sink.write([UpdateBatch("g", ("x",), [("a", 1, 1)], None, {}, 0)])
    batches = [
        UpdateBatch("g", ("x",), [("b", 2, 2)], None, {}, 0),
        # features registered since: the open file is closed first, which fails once
        UpdateBatch("g", ("x", "y"), [("c", 3, 3, 30)], None, {}, 0),
    ]
    real, calls = sink._write_rows, []

    def failing_once(group: object, close: bool) -> None:
        calls.append(close)
        if len(calls) == 1:
            raise OSError("the disk is full")
        real(group, close)  # type: ignore[arg-type]

    monkeypatch.setattr(sink, "_write_rows", failing_once)
    with pytest.raises(OSError):
        await sink.write(batches)
    await sink.write(batches)  # the retry
    await sink.aclose()
    rows = [pq.read_table(path).column("x").to_pylist() for path in sink.files]
    assert rows == [[1, 2], [3]]


def test_options_are_checked(tmp_path: Path) -> None:
    for option, value in [
        ("row_group_size", 0),
        ("max_file_rows", 1.5),
        ("max_file_bytes", True),
        ("compression", None),
    ]:
        with pytest.raises(ConfigError, match=option):
            ParquetSink(tmp_path, **{option: value})


def batch_of(*rows: tuple[Any, ...], names: tuple[str, ...] = ("x",)) -> UpdateBatch:
    return UpdateBatch("g", names, list(rows), None, {}, 0)


def columns_per_file(files: Sequence[Path], column: str) -> list[list[Any]]:
    return [pq.read_table(path).column(column).to_pylist() for path in files]


@pytest.mark.parametrize(
    ("column", "first", "then"),
    [
        ("x", ("a", 1, {"u": 1}), ("b", 2, {"v": "x"})),  # was read back {"u": None}
        ("x", ("a", 1, "s"), ("b", 2, 5)),  # was "5"
        ("x", ("a", 1, 1), ("b", 2, True)),  # was 1
        ("x", ("a", 1, 1.5), ("b", 2, 2)),  # was 2.0
        ("x", ("a", 1, [None]), ("b", 2, ["s"])),
        ("key", ("a", 1, 1), (3, 2, 1)),  # was "3"
    ],
)
async def test_a_batch_whose_types_the_open_file_cannot_hold_exactly_starts_a_new_file(
    tmp_path: Path, column: str, first: tuple[Any, ...], then: tuple[Any, ...]
) -> None:
    """A cast to the open file's types would change the values (or their types): the rows
    go to a file of their own, as they are."""
    sink = ParquetSink(tmp_path, row_group_size=1)
    await sink.write([batch_of(first)])
    await sink.write([batch_of(then)])
    await sink.aclose()
    index = 0 if column == "key" else 2
    assert columns_per_file(sink.files, column) == [[first[index]], [then[index]]]
    read = [value for [value] in columns_per_file(sink.files, column)]
    assert [type(v) for v in read] == [type(first[index]), type(then[index])]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (("a", 1, 1.5), ("b", 2, None)),
        (("a", 1, [1]), ("b", 2, [])),  # list<null> into list<int64>
        (("a", 1, {"u": 1, "v": "s"}), ("b", 2, {"u": None, "v": "t"})),
    ],
)
async def test_a_batch_null_where_the_file_has_a_type_goes_on_in_the_same_file(
    tmp_path: Path, first: tuple[Any, ...], then: tuple[Any, ...]
) -> None:
    sink = ParquetSink(tmp_path, row_group_size=1)
    await sink.write([batch_of(first), batch_of(then)])
    await sink.aclose()
    assert columns_per_file(sink.files, "x") == [[first[2], then[2]]]


async def test_values_pyarrow_cannot_hold_in_one_column_name_the_feature_and_the_key(
    tmp_path: Path,
) -> None:
    sink = ParquetSink(tmp_path, row_group_size=1000)
    await sink.write([batch_of(("a", 1, 1), ("b", 2, 2), ("c", 3, "three"), ("d", 4, 4))])
    with pytest.raises(ValueError, match=r"feature 'x' of group 'g'.*key 'c'.*'three'"):
        await sink.flush()
    sink = ParquetSink(tmp_path, row_group_size=1000)
    await sink.write([batch_of(("a", 1, 1), (7, 2, 2))])
    with pytest.raises(ValueError, match=r"column 'key' of group 'g'.*key 7 "):
        await sink.flush()
    sink = ParquetSink(tmp_path, row_group_size=1000)
    await sink.write([batch_of(("a", 1, 2**70))])
    with pytest.raises(ValueError, match=r"feature 'x' of group 'g'.*key 'a'.*OverflowError"):
        await sink.flush()


def read_as_documented(folder: Path) -> Any:
    """docs/connectors.md: a group's files as one table, whatever types each file has."""
    import pyarrow as pa

    files = ds.dataset(folder).files
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    return ds.dataset(files, schema=schema).to_table()


async def test_a_group_s_files_read_as_one_table_as_documented(tmp_path: Path) -> None:
    """A column null in the first file and floats later, ints then floats: the plain read
    takes the first file's types and fails; the documented read does not. Two runs."""
    written = []
    for rows in (
        [("a", 1, None, 1), ("b", 2, None, 2)],
        [("a", 3, 1.5, 2.5), ("b", 4, None, 3)],
    ):
        sink = ParquetSink(tmp_path, row_group_size=2)
        await sink.write([batch_of(*rows, names=("x", "y"))])
        await sink.aclose()
        written += rows
    table = read_as_documented(tmp_path / "g")
    read = sorted(
        zip(*(table.column(c).to_pylist() for c in ("event_time", "x", "y")), strict=True)
    )
    assert read == [row[1:] for row in written]


async def test_a_new_file_keeps_the_types_of_the_group_s_last_file_for_null_columns(
    tmp_path: Path,
) -> None:
    """A column all null in a new file takes the type it had in the file before (not
    pyarrow's null type): the files of a group keep one schema while the values allow it,
    so that the plain read works, whatever file comes first."""
    sink = ParquetSink(tmp_path, row_group_size=2)
    await sink.write([batch_of(("a", 1, 1.5, "s"), ("b", 2, None, "t"), names=("x", "y"))])
    await sink.flush()
    await sink.write([batch_of(("a", 3, None, None), ("b", 4, None, None), names=("x", "y"))])
    await sink.aclose()
    assert len(sink.files) == 2
    assert pq.read_schema(sink.files[0]) == pq.read_schema(sink.files[1])
    table = ds.dataset(tmp_path / "g").to_table()
    assert sorted(table.column("x").to_pylist(), key=str) == [1.5, None, None, None]


async def test_a_flush_that_fails_counts_the_buffered_rows_as_unwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """And the SinkError, not the error of the sink's aclose (which flushes again and fails
    the same way), comes out of ``async with sink, run_sink(...)``; aclose's error is a
    note."""
    from runtime import SinkError

    def failing(group: object, close: bool) -> None:
        raise OSError(28, "No space left on device")

    async with runtime() as rt:
        with pytest.raises(SinkError) as caught:
            async with (
                ParquetSink(tmp_path, row_group_size=1000) as sink,
                run_sink(rt, sink, max_attempts=2, backoff=0),
            ):
                monkeypatch.setattr(sink, "_write_rows", failing)
                await rt.ingest_many(events(30))
    error = caught.value
    assert error.unwritten == 30
    assert "30 updates" in str(error) and "No space left on device" in str(error)
    assert error.__notes__ == [
        "while it propagated, closing ParquetSink 'parquet' failed too: "
        "OSError: [Errno 28] No space left on device"
    ]


async def test_aclose_closes_every_group_s_file_when_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the groups before the one that failed: the others' files are closed (left
    open they would stay under their ``_`` names, unread), and the error is raised after.
    The failed group's file stays under its ``_`` name: its write failed."""
    sink = ParquetSink(tmp_path, row_group_size=1)
    await sink.write(
        [UpdateBatch(group, ("x",), [("a", 1, 1)], None, {}, 0) for group in ("g1", "g2")]
    )
    await sink.write(
        [UpdateBatch(group, ("x",), [("b", 2, 2)], None, {}, 0) for group in ("g1", "g2")]
    )
    real = sink._write_rows

    def failing_for_g1(group: Any, close: bool) -> None:
        if group.name == "g1":
            raise OSError("the disk is full")
        real(group, close)

    monkeypatch.setattr(sink, "_write_rows", failing_for_g1)
    with pytest.raises(OSError, match="the disk is full"):
        await sink.aclose()
    assert [p.parent.name for p in sink.files] == ["g2"]
    assert columns_per_file(sink.files, "x") == [[1, 2]]
    assert [p.parent.name for p in leftovers(tmp_path)] == ["g1"]


def leftovers(directory: Path) -> list[Path]:
    """Files still under their ``_`` names: left open."""
    return list(directory.rglob("_*"))


async def test_a_file_whose_close_failed_is_never_renamed_and_the_sink_writes_no_more(
    tmp_path: Path,
) -> None:
    """Its rows went with it: a later write that succeeded would pass them for written (and
    a checkpoint with them). Every later flush or write raises, naming how many were lost;
    the file keeps its ``_`` name (its footer may be missing)."""
    sink = ParquetSink(tmp_path, row_group_size=1)
    await sink.write([batch_of(("a", 1, 1))])
    await sink.write([batch_of(("b", 2, 2))])
    group = sink._groups["g"]
    assert group.writer is not None

    def failing_close() -> None:
        raise OSError("no space left on device")

    group.writer.close = failing_close
    with pytest.raises(OSError, match="no space left"):
        await sink.flush()
    assert sink.files == []
    assert sink.buffered() == 2
    for attempt in (sink.flush(), sink.write([batch_of(("c", 3, 3))])):
        with pytest.raises(OSError, match=r"2 rows of feature group 'g' were lost .* no space"):
            await attempt
    assert sink.files == []
    assert len(leftovers(tmp_path)) == 1


async def test_after_a_lost_file_a_write_below_a_row_group_raises_too(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, row_group_size=1)
    await sink.write([batch_of(("a", 1, 1))])
    group = sink._groups["g"]

    def failing_close() -> None:
        raise OSError("no space left on device")

    group.writer.close = failing_close
    with pytest.raises(OSError, match="no space left"):
        await sink.flush()
    sink.row_group_size = 1_000  # the next write buffers only: it must still refuse
    with pytest.raises(OSError, match=r"1 rows of feature group 'g' were lost"):
        await sink.write([batch_of(("b", 2, 2))])
