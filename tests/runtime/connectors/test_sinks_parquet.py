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
