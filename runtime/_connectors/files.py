"""File sources, for backfills and replays: JSON lines, CSV and Parquet.

Each reads one file or a list of files in the order given, as one input. Its records are the
lines of a JSON-lines file, the rows after the header of a CSV file, the rows of a Parquet file;
its position is ``[path, n]``: the first ``n`` records of file ``path`` (and every file before
it in the list) are read. ``seek([path, n])`` goes on from record ``n + 1`` of ``path``
(a Parquet file skips whole row groups without reading them; a text file reads and drops the
lines before). There is nothing to commit: a file is read again from any position.

A schema types the columns (see ``schema.py``). A record that does not fit (a line that is not
a JSON object, a CSV row with too many or too few cells, a value that is not of its column's
type) is rejected with where it was read (``orders.csv line 7``, ``trips.parquet row 12``) and
the reason naming the field; the records around it go on. Line numbers count from 1 and
include the CSV header; Parquet rows count from 1.

The files are opened and read in a worker thread, one batch per trip, so the event loop never
waits on the disk; a file is open only while it is being read.
"""

from __future__ import annotations

import abc
import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import msgspec

from .._exceptions import ConfigError
from .._spec.feature_set import FeatureSet
from .schema import ColumnType, Schema, TimeUnit
from .source import RejectedRecord, Source, SourceBatch

__all__ = ["CsvSource", "FileSource", "JsonLinesSource", "ParquetSource"]

_json = msgspec.json.Decoder()
#: bytes read at once when counting lines
_BLOCK = 1 << 20


class FileSource(Source):
    """The part every file source shares: the list of files, the position, the schema, the
    reading in a worker thread. Subclasses say how one file's records are read."""

    #: the format's name, the start of a default source name (``"csv:orders.csv"``)
    kind: ClassVar[str]
    #: how ``where`` names a record: ``"line"`` or ``"row"``
    unit: ClassVar[str] = "line"

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        schema: Mapping[str, ColumnType | type] | None = None,
        time_unit: TimeUnit = "ms",
        name: str | None = None,
    ) -> None:
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self.paths: tuple[str, ...] = tuple(os.fspath(path) for path in paths)
        if not self.paths:
            raise ConfigError(f"{type(self).__name__}: no file given")
        if len(set(self.paths)) != len(self.paths):
            raise ConfigError(f"{type(self).__name__}: a file is listed twice: {self.paths!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"{type(self).__name__}: name must be a non-empty str")
        self.name = name or f"{self.kind}:{self.paths[0]}"
        self._schema = Schema(schema, time_unit)
        #: the file being read (an index of ``paths``) and its records read so far
        self._file = 0
        self._done = 0
        #: records of the current file to skip when it is opened (after a seek)
        self._skip = 0
        #: the current file's records, as (line or row number, raw record), once opened
        self._records: Iterator[tuple[int, Any]] | None = None
        #: the fields every record needs (the feature set's key and time, once ``check`` has
        #: seen a feature set of one stream): a file whose columns lack one is refused whole
        self._needs: tuple[str, ...] = ()
        self._ended = False
        #: records per file, counted when ``lag`` first needs them
        self._counts: dict[int, int] = {}
        self._lock = anyio.Lock()

    def check(self, feature_set: FeatureSet) -> None:
        """Refuse a feature set whose event time the schema would convert to another unit.

        Raises:
            ConfigError: the schema types the feature set's time field as ``"time"`` and
                ``time_unit`` is not the feature set's ``time_unit``.
        """
        if len(feature_set.stream_names) == 1:
            self._needs = (feature_set.key, feature_set.time)
        field, unit = feature_set.time, self._schema.time_unit
        if self._schema.types.get(field) == "time" and unit != feature_set.time_unit:
            raise ConfigError(
                f"{self.name}: the schema converts the time field {field!r} to {unit!r}, but "
                f"the feature set's time_unit is {feature_set.time_unit!r}: give the source "
                f"time_unit={feature_set.time_unit!r}"
            )

    def _check_columns(self, where: str, kind: str, columns: Sequence[str]) -> None:
        """Refuse a file whose ``columns`` (its header, its schema) lack the key or time
        field: every record would be refused alike, one dead letter each, the file read to
        its end.

        Raises:
            ConfigError: naming the file, its columns and the field missing.
        """
        missing = [field for field in self._needs if field not in columns]
        if not missing:
            return
        hint = ""
        if len(columns) == 1 and any(mark in columns[0] for mark in ";\t|,"):
            hint = " (one column: is the delimiter right?)"
        raise ConfigError(
            f"{where}: the {kind} {list(columns)!r} has no column {missing[0]!r} (the feature "
            f"set's {'key' if missing[0] == self._needs[0] else 'time'} field){hint}"
        )

    @property
    def position(self) -> list[Any]:
        """Where the source is: ``[path, records read of it]``."""
        return [self.paths[self._file], self._done]

    # -- the format ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _iterate(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        """The records of ``path`` after the first ``skip``: (line or row number, raw)."""

    @abc.abstractmethod
    def _event(self, raw: Any) -> Any:
        """The event of a raw record, None for a record that holds none (a blank line).

        Raises:
            ValueError: with ``args`` ``(reason,)`` or ``(reason, field)``.
        """

    def _payload(self, raw: Any) -> Any:
        """What a rejected record's dead letter keeps: the record as read."""
        return raw

    @abc.abstractmethod
    def _count(self, path: str) -> int:
        """The records of ``path``."""

    # -- the protocol ----------------------------------------------------------------------------
    async def read(self, max_records: int) -> SourceBatch | None:
        """Up to ``max_records`` records, read in a worker thread; None after the last file's
        last record.

        Raises:
            ConfigError: a CSV file lacks a column the schema names.
            OSError: a file cannot be read.
        """
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records!r}")
        async with self._lock:
            # the thread cannot be stopped halfway: once it runs, its batch is returned (a
            # cancellation then takes effect at the caller's next await), never dropped
            with anyio.CancelScope(shield=True):
                batch = await anyio.to_thread.run_sync(self._read, max_records)
        return batch

    def _read(self, max_records: int) -> SourceBatch | None:
        start = (self._file, self._done, self._ended)
        try:
            return self._read_records(max_records)
        except BaseException:
            # a read that failed (a file unreadable, a header without the schema's columns)
            # returns nothing: the next one opens the file again where this one started
            self._close_file()
            self._file, self._done, self._ended = start
            self._skip = self._done
            raise

    def _read_records(self, max_records: int) -> SourceBatch | None:
        payloads: list[Any] = []
        rejected: list[RejectedRecord] = []
        count = 0
        event = self._event
        while count < max_records and not self._ended:
            records = self._records
            if records is None:
                records = self._records = self._iterate(self.paths[self._file], self._skip)
                self._skip = 0
            for number, raw in records:
                self._done += 1
                count += 1
                try:
                    found = event(raw)
                except ValueError as exc:
                    rejected.append(self._rejected(number, raw, exc))
                else:
                    if found is not None:
                        payloads.append(found)
                if count == max_records:
                    break
            else:
                self._next_file()
        if count == 0:
            return None
        return SourceBatch(payloads, self.position, rejected)

    def _rejected(self, number: int, raw: Any, exc: ValueError) -> RejectedRecord:
        reason = str(exc.args[0]) if exc.args else str(exc)
        field = exc.args[1] if len(exc.args) > 1 else None
        where = f"{self.paths[self._file]} {self.unit} {number}"
        return RejectedRecord(self._payload(raw), reason, where, field)

    def _next_file(self) -> None:
        self._close_file()
        if self._file + 1 < len(self.paths):
            self._file += 1
            self._done = 0
        else:
            self._ended = True

    def _close_file(self) -> None:
        records, self._records = self._records, None
        if records is not None and hasattr(records, "close"):
            records.close()

    async def seek(self, position: Any) -> None:
        """Go to ``[path, n]`` (a list or a tuple): the next read starts with record ``n + 1``
        of ``path``.

        Raises:
            ValueError: ``path`` is not one of the source's files, or ``n`` is not an int >= 0.
        """
        if not isinstance(position, list | tuple) or len(position) != 2:
            raise ValueError(f"{self.name}: a position is [path, records], got {position!r}")
        path, done = position
        if path not in self.paths:
            raise ValueError(f"{self.name}: {path!r} is not one of the source's files")
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise ValueError(f"{self.name}: records must be an int >= 0, got {done!r}")
        async with self._lock:
            if [path, done] == self.position and not self._skip:
                return  # already there: a file need not be read again to skip its records
            self._close_file()
            self._file = self.paths.index(path)
            self._done = self._skip = done
            self._ended = False

    async def lag(self) -> int:
        """Records not read yet, in this file and the ones after it (the first call counts
        each file's records, in a worker thread)."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._lag)

    def _lag(self) -> int:
        if self._ended:
            return 0
        for index in range(self._file, len(self.paths)):
            if index not in self._counts:
                self._counts[index] = self._count(self.paths[index])
        after = sum(self._counts[index] for index in range(self._file + 1, len(self.paths)))
        return max(0, self._counts[self._file] - self._done) + after

    async def aclose(self) -> None:
        """Close the file being read, if any; a later read opens it again where it was."""
        async with self._lock:
            if self._records is not None:
                self._close_file()
                self._skip = self._done


class JsonLinesSource(FileSource):
    """JSON lines: one JSON object per line, read as an event (blank lines are skipped).

    Args:
        paths: a file, or files read one after the other as one input.
        schema: column types (``{"ts": "time", "amount": "float"}``); see
            ``docs/connectors.md``. Columns it does not name are left as decoded.
        time_unit: the unit ``"time"`` columns are converted to: the feature set's
            ``time_unit``.
        name: the source's name in checkpoints (default ``"jsonl:<first path>"``).

    A line that is not a JSON object, or whose values do not fit the schema, is rejected
    with its line number. The position counts lines.
    """

    kind = "jsonl"

    def _iterate(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        with open(path, "rb") as file:
            for number, line in enumerate(file, 1):
                if number > skip:
                    yield number, line

    def _event(self, raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            event = _json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise ValueError(f"not a JSON object: a {type(event).__name__}")
        if self._schema.converters:
            self._schema.convert(event)
        return event

    def _payload(self, raw: bytes) -> Any:
        return raw.rstrip(b"\r\n")

    def _count(self, path: str) -> int:
        lines = 0
        last = b"\n"
        with open(path, "rb") as file:
            while block := file.read(_BLOCK):
                lines += block.count(b"\n")
                last = block[-1:]
        return lines + (last != b"\n")


class CsvSource(FileSource):
    """CSV: each row after the header is an event, the header naming its fields.

    Args:
        paths: a file, or files read one after the other as one input (each with its
            header, unless ``fieldnames`` is given).
        schema: column types (``{"ts": "int", "amount": "float"}``): CSV values are strings,
            so every column that is not text needs one. See ``docs/connectors.md``.
        time_unit: the unit ``"time"`` columns are converted to: the feature set's
            ``time_unit``.
        name: the source's name in checkpoints (default ``"csv:<first path>"``).
        fieldnames: the columns, for files without a header row (then every row is a record).
        delimiter: the character between cells.
        encoding: the files' text encoding.

    An empty cell leaves its field out of the event. A row with more or fewer cells than the
    header, or a value that does not fit its column's type, is rejected with its line number
    (the line where the row starts; the header is line 1). The position counts rows after the
    header; a blank line counts as a row that holds no event.

    Raises:
        ConfigError: (when the file is read) the header lacks a column the schema names.
    """

    kind = "csv"

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        schema: Mapping[str, ColumnType | type] | None = None,
        time_unit: TimeUnit = "ms",
        name: str | None = None,
        fieldnames: Sequence[str] | None = None,
        delimiter: str = ",",
        encoding: str = "utf-8",
    ) -> None:
        super().__init__(paths, schema=schema, time_unit=time_unit, name=name)
        self.fieldnames = None if fieldnames is None else tuple(fieldnames)
        self.delimiter = delimiter
        self.encoding = encoding
        self._header: tuple[str, ...] = ()

    def _rows(self, file: Any) -> Iterator[tuple[int, list[str]]]:
        """The rows after the header, each with the line it starts on; sets ``_header``."""
        reader = csv.reader(file, delimiter=self.delimiter)
        if self.fieldnames is None:
            header = next(reader, None)
            if header is None:
                return
            self._header = tuple(header)
        else:
            self._header = self.fieldnames
        missing = [c for c in self._schema.columns if c not in self._header]
        if missing:
            raise ConfigError(
                f"{file.name}: the schema's columns {missing!r} are not in the header "
                f"{list(self._header)!r}"
            )
        self._check_columns(file.name, "header", self._header)
        start = reader.line_num + 1
        for row in reader:
            yield start, row
            start = reader.line_num + 1

    def _iterate(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        with open(path, newline="", encoding=self.encoding) as file:
            for index, (number, row) in enumerate(self._rows(file)):
                if index >= skip:
                    yield number, row

    def _event(self, raw: list[str]) -> Any:
        if not raw:
            return None
        header = self._header
        if len(raw) != len(header):
            raise ValueError(f"has {len(raw)} cells, the header {len(header)}")
        event = dict(zip(header, raw, strict=True))
        return self._schema.convert(event, drop_empty=True)

    def _payload(self, raw: list[str]) -> Any:
        if len(raw) == len(self._header):
            return dict(zip(self._header, raw, strict=True))
        return raw

    def _count(self, path: str) -> int:
        with open(path, newline="", encoding=self.encoding) as file:
            rows = sum(1 for _ in csv.reader(file, delimiter=self.delimiter))
        return rows if self.fieldnames is not None else max(0, rows - 1)


class ParquetSource(FileSource):
    """Parquet: each row is an event, its columns the fields (needs ``pyarrow``: the
    ``parquet`` extra).

    Args:
        paths: a file, or files read one after the other as one input.
        schema: column types, for columns to convert (a string column of ISO times to
            ``"time"``, a timestamp column to epoch milliseconds). Columns it does not name
            keep the values pyarrow gives (a timestamp is a ``datetime``, which the runtime
            reads as an event time). See ``docs/connectors.md``.
        time_unit: the unit ``"time"`` columns are converted to: the feature set's
            ``time_unit``.
        name: the source's name in checkpoints (default ``"parquet:<first path>"``).
        columns: the columns to read (default: all).

    A row whose values do not fit the schema is rejected with its row number (from 1). The
    position counts rows; a seek skips whole row groups without reading them.

    Raises:
        ImportError: pyarrow is not installed.
    """

    kind = "parquet"
    unit = "row"
    #: rows converted to dicts at once
    _CHUNK = 4096

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        schema: Mapping[str, ColumnType | type] | None = None,
        time_unit: TimeUnit = "ms",
        name: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        try:
            import pyarrow.parquet as parquet  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover: pyarrow is installed for the tests
            raise ImportError(
                "ParquetSource needs pyarrow: pip install 'featurist[parquet]'"
            ) from exc
        super().__init__(paths, schema=schema, time_unit=time_unit, name=name)
        self._parquet = parquet
        self.columns = None if columns is None else list(columns)

    def _open(self, path: str) -> Any:
        try:
            return self._parquet.ParquetFile(path)
        except ValueError as exc:  # pyarrow's ArrowInvalid: its message names no file
            raise ValueError(f"{path}: not a Parquet file ({exc})") from exc

    def _iterate(self, path: str, skip: int) -> Iterator[tuple[int, Any]]:
        with self._open(path) as file:
            names = file.schema_arrow.names
            self._check_columns(
                path,
                "file's columns",
                names if self.columns is None else [c for c in self.columns if c in names],
            )
            metadata = file.metadata
            first = 0  # the first row of row group ``group``
            group = 0
            while group < metadata.num_row_groups:
                rows = metadata.row_group(group).num_rows
                if first + rows > skip:
                    break
                first += rows
                group += 1
            groups = list(range(group, metadata.num_row_groups))
            if not groups:
                return
            number = first
            batches = file.iter_batches(
                batch_size=self._CHUNK, row_groups=groups, columns=self.columns
            )
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    if number > skip:
                        yield number, row

    def _event(self, raw: dict[str, Any]) -> Any:
        if self._schema.converters:
            return self._schema.convert(dict(raw))
        return raw

    def _count(self, path: str) -> int:
        with self._open(path) as file:
            return int(file.metadata.num_rows)
