"""The Parquet sink: every feature update as a row, for training sets and audits (the
``parquet`` extra, pyarrow).

Each feature group's updates go to files of their own, ``<directory>/<group>/<run>-<n>.parquet``
(``run`` is the time the sink was made and a random suffix, so a second run never overwrites
the first). A row holds ``key``, ``event_time`` (ms since the epoch), ``kind`` (``"update"``,
or a windowed group's ``"close"``, ``"correction"``, ...) and one column per feature of the
group, in the group's order; a feature that failed on the event is null.

Rows are buffered and written ``row_group_size`` at a time, as one row group, in a worker
thread. A file is written under a name starting with ``_`` (which pyarrow's datasets skip) and
renamed when closed, so a reader of the directory never sees half a file. A file is closed when
it holds ``max_file_rows`` rows or about ``max_file_bytes`` bytes, when a row group's column
types are not the file's, and on :meth:`flush` and :meth:`aclose`, which write the rows
buffered first.

A row group goes into the open file only if its types are the file's, or null where the file
has a type (a column, a list's items or a struct's field with no values): a cast that changes
values (a string to ``"5"`` from 5, ``True`` to 1, a struct to another struct's fields) would
write something else than the update. Rows of other types start a new file, with their own
types; a column all null in a new file takes the type it had in the group's file before, so
that a group's files keep one schema as long as the values allow.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from .._batches import UpdateBatch
from .._exceptions import ConfigError
from .._spec.feature_set import FeatureSet
from .sinks import Sink

__all__ = ["ParquetSink"]


@dataclass
class _Group:
    """One feature group's buffered rows and its open file."""

    name: str
    names: tuple[str, ...]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    writer: Any = None
    #: the open file's schema, or the last file's when none is open (None before the first)
    schema: Any = None
    path: Path | None = None
    #: rows written to the open file (readable once it is closed)
    file_rows: int = 0
    #: rows the write in progress added to ``rows`` (0 once it returned): the newest rows
    current: int = 0
    #: rows lost with a file whose write or close failed, and why (the sink writes no more)
    lost: int = 0
    lost_reason: str = ""

    def held(self) -> int:
        """Rows of the writes that returned which are not in a closed file yet: rows leave
        the buffer and then the open file oldest first, so the write in progress's are the
        newest ``current`` ones. Rows lost with a failed file count too."""
        return max(0, len(self.rows) + self.file_rows - self.current) + self.lost


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


class ParquetSink(Sink):
    """Write every feature update as a row of Parquet files under ``directory``.

    Args:
        directory: where the files go (made if missing), a folder per feature group.
        row_group_size: rows per row group: the rows buffered per group before a write.
        max_file_rows: a file is closed (and a new one started) once it holds this many rows.
        max_file_bytes: ... or once it is about this large (checked after each row group);
            None for no size limit.
        compression: the Parquet codec (``"zstd"``, ``"snappy"``, ``"none"``, ...).
        name: the sink's name in errors and logs.

    Column types are pyarrow's for the values: a row group whose types are not the open
    file's (other than nulls where the file has a type) starts a new file; values of one row
    group that mix types pyarrow cannot put in one column, such as ints and strings, make the
    write fail, naming the feature and the key.

    Raises:
        ConfigError: an option is not valid, or pyarrow is not installed
            (``pip install 'featurist[parquet]'``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        row_group_size: int = 65_536,
        max_file_rows: int = 1_048_576,
        max_file_bytes: int | None = 256 * 1024 * 1024,
        compression: str = "zstd",
        name: str = "parquet",
    ) -> None:
        try:
            import pyarrow  # type: ignore[import-untyped]  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "ParquetSink needs pyarrow: pip install 'featurist[parquet]'"
            ) from exc
        self.directory = Path(directory)
        self.row_group_size = _positive_int("row_group_size", row_group_size)
        self.max_file_rows = _positive_int("max_file_rows", max_file_rows)
        self.max_file_bytes = (
            None if max_file_bytes is None else _positive_int("max_file_bytes", max_file_bytes)
        )
        if not isinstance(compression, str):
            raise ConfigError(f"compression must be a str, got {compression!r}")
        self.compression = compression
        self.name = name
        self.run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        #: the paths of the files closed so far, in order
        self.files: list[Path] = []
        self._groups: dict[str, _Group] = {}
        #: the batches of the last write, and how many of them are in the buffers
        self._taken: Sequence[UpdateBatch] | None = None
        self._added = 0
        self._count = 0

    def check(self, feature_set: FeatureSet) -> None:
        """Make the directory (if missing) when ``run_sink`` starts, so that one that cannot be
        made or written to fails there, naming it, not at the first flush, after the
        updates it buffered were taken (a directory's making, unlike the files' writes, is
        quick enough for the event loop).

        Raises:
            ConfigError: the directory cannot be made or is not writable.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"ParquetSink {self.name!r}: cannot make the directory {str(self.directory)!r} "
                f"({type(exc).__name__}: {exc.strerror or exc})"
            ) from exc
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ConfigError(
                f"ParquetSink {self.name!r}: the directory {str(self.directory)!r} is not writable"
            )

    def _refuse_if_lost(self, group: _Group) -> None:
        """Raise if rows of ``group`` were lost with a file that failed: a write that
        succeeded now would pass them for written (and a checkpoint with them)."""
        if group.lost:
            raise OSError(
                f"ParquetSink {self.name!r}: {group.lost} rows of feature group "
                f"{group.name!r} were lost with a file whose write failed ({group.lost_reason}); "
                "the sink writes no more (restart from the last checkpoint, which did not "
                "pass them, to write them again)"
            )

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        for held in self._groups.values():  # not only when a row group is due
            self._refuse_if_lost(held)
        if batches is not self._taken:
            self._taken, self._added = batches, 0
            for held in self._groups.values():
                held.current = 0
        # a retry of a write that failed goes on after the batches it took already
        for index in range(self._added, len(batches)):
            batch = batches[index]
            group = self._groups.get(batch.group)
            if group is None or group.names != batch.names:
                schema = None
                if group is not None:  # features registered since: a new file
                    await anyio.to_thread.run_sync(self._write_rows, group, True)
                    schema = group.schema
                group = self._groups[batch.group] = _Group(batch.group, batch.names)
                group.schema = schema
            group.rows.extend(batch.rows)
            group.kinds.extend(batch.kinds)
            group.current += len(batch.rows)
            self._added = index + 1
        for group in self._groups.values():
            while len(group.rows) >= self.row_group_size:
                await anyio.to_thread.run_sync(self._write_rows, group, False)
        for group in self._groups.values():
            group.current = 0

    def buffered(self) -> int:
        """Rows of the writes that returned not in a closed file yet: lost if the sink
        fails, and so counted in a ``SinkError``'s ``unwritten``."""
        return sum(group.held() for group in self._groups.values())

    async def flush(self) -> None:
        """Write the rows buffered and close the open files (readable from then on)."""
        for group in self._groups.values():
            await anyio.to_thread.run_sync(self._write_rows, group, True)

    async def aclose(self) -> None:
        """Write the rows buffered and close the files: every group's, also when one fails
        (whose open file stays under its ``_`` name, unread: its write failed, it may be
        incomplete). The first error is raised then, the others noted on it."""
        errors: list[Exception] = []
        for group in self._groups.values():
            try:
                await anyio.to_thread.run_sync(self._write_rows, group, True)
            except Exception as exc:
                errors.append(exc)
        if errors:
            first = errors[0]
            for other in errors[1:]:
                first.add_note(f"and for another feature group: {_describe(other)}")
            raise first

    # -- in a worker thread ------------------------------------------------------------------
    def _write_rows(self, group: _Group, close: bool) -> None:
        """Write up to a row group of ``group``'s rows (all of them, and close the file, with
        ``close``). Rows leave the buffer only once written."""
        import pyarrow as pa
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self._refuse_if_lost(group)
        count = len(group.rows) if close else self.row_group_size
        rows, kinds = group.rows[:count], group.kinds[:count]
        if rows:
            columns = list(zip(*rows, strict=True))
            table = pa.table(
                {
                    "key": self._array(group, "key", columns[0], rows),
                    "event_time": pa.array(columns[1], pa.int64()),
                    "kind": pa.array(kinds, pa.string()),
                    **{
                        name: self._array(group, name, column, rows)
                        for name, column in zip(group.names, columns[2:], strict=True)
                    },
                }
            )
            if group.schema is not None and table.schema != group.schema:
                fitted = _fitted(table.schema, group.schema)
                try:
                    table = table.cast(fitted)  # nulls only: loses nothing
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    fitted = table.schema  # a cast pyarrow does not have: the types as they are
                if group.writer is not None and fitted != group.schema:
                    self._close(group)  # types the open file cannot hold as they are
            if group.writer is None:
                folder = self.directory / group.name
                folder.mkdir(parents=True, exist_ok=True)
                self._count += 1
                group.path = folder / f"{self.run}-{self._count:05d}.parquet"
                group.writer = pq.ParquetWriter(
                    group.path.with_name("_" + group.path.name),
                    table.schema,
                    compression=self.compression,
                )
                group.schema = table.schema
                group.file_rows = 0
            try:
                group.writer.write_table(table, row_group_size=len(rows))
            except BaseException as exc:
                self._abandon(group, exc)
                raise
            group.file_rows += len(rows)
            del group.rows[:count], group.kinds[:count]
            assert group.path is not None
            if group.file_rows >= self.max_file_rows or (
                self.max_file_bytes is not None
                and os.path.getsize(group.path.with_name("_" + group.path.name))
                >= self.max_file_bytes
            ):
                self._close(group)
        if close:
            self._close(group)

    def _close(self, group: _Group) -> None:
        if group.writer is None:
            return
        assert group.path is not None
        try:
            group.writer.close()
            os.replace(group.path.with_name("_" + group.path.name), group.path)
        except BaseException as exc:
            self._abandon(group, exc)
            raise
        self.files.append(group.path)
        group.writer = None  # the schema stays: a new file's null columns take its types
        group.file_rows = 0

    def _abandon(self, group: _Group, exc: BaseException) -> None:
        """The open file failed (a row group's write, its footer, its rename): it keeps its
        ``_`` name, never read as a file of the sink, and is not written to again (closed a
        second time, pyarrow would let a file without its footer be renamed as whole). The
        rows already in it are lost: counted, and every later write raises (:meth:`_write_rows`),
        so that no write succeeds past them."""
        writer, group.writer = group.writer, None
        if writer is not None:
            # not closed again, also not by its __del__ (which would try the footer again)
            writer.is_open = False
            handle = getattr(writer, "file_handle", None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()  # the file descriptor, whatever the file holds
        if group.file_rows:
            group.lost += group.file_rows
            group.lost_reason = _describe(exc)
        group.file_rows = 0

    def _array(
        self, group: _Group, name: str, values: Sequence[Any], rows: Sequence[tuple[Any, ...]]
    ) -> Any:
        """``values`` as a pyarrow array; if pyarrow cannot hold them in one column, an error
        naming the column and the first row that it cannot hold with those before it."""
        import pyarrow as pa

        try:
            return pa.array(values)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
            # found by halving (only when failing): prefix ``good`` converts, ``bad`` does not
            good, bad = 0, len(values)
            while bad - good > 1:
                middle = (good + bad) // 2
                try:
                    pa.array(values[:middle])
                    good = middle
                except (pa.ArrowException, OverflowError, TypeError, ValueError):
                    bad = middle
            row = rows[bad - 1]
            what = "column 'key'" if name == "key" else f"feature {name!r}"
            raise ValueError(
                f"ParquetSink {self.name!r}: {what} of group {group.name!r} cannot hold the "
                f"value of key {row[0]!r} (event_time {row[1]}), {values[bad - 1]!r:.100}, in "
                f"one column with the values before it ({_describe(exc)})"
            ) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _fits(new: Any, old: Any) -> bool:
    """Whether a column of pyarrow type ``new`` casts to ``old`` losing nothing: the same
    type, or null where ``old`` has a type (a column with no values, a list's items in empty
    lists, a struct's field that is always null). Any other cast may change values (5 to
    ``"5"``, ``True`` to 1, a struct to another struct's fields) or their types (2 to 2.0)."""
    import pyarrow as pa

    if new == old or pa.types.is_null(new):
        return True
    types = pa.types
    for is_list in (types.is_list, types.is_large_list, types.is_fixed_size_list):
        if is_list(new) and is_list(old):
            if types.is_fixed_size_list(new) and new.list_size != old.list_size:
                return False
            return _fits(new.value_type, old.value_type)
    if types.is_map(new) and types.is_map(old):
        return _fits(new.key_type, old.key_type) and _fits(new.item_type, old.item_type)
    if types.is_struct(new) and types.is_struct(old):
        return new.num_fields == old.num_fields and all(
            n.name == o.name and _fits(n.type, o.type)
            for n, o in zip(
                (new.field(i) for i in range(new.num_fields)),
                (old.field(i) for i in range(old.num_fields)),
                strict=True,
            )
        )
    return False


def _fitted(schema: Any, previous: Any) -> Any:
    """``schema`` with the type of ``previous`` (the open file's, or the group's last file's)
    for each column whose type fits it (:func:`_fits`), its own for the others."""
    import pyarrow as pa

    fields = []
    for field_ in schema:
        index = previous.get_field_index(field_.name)
        if index >= 0 and _fits(field_.type, previous.field(index).type):
            field_ = field_.with_type(previous.field(index).type)
        fields.append(field_)
    return pa.schema(fields, metadata=schema.metadata)
