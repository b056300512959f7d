"""A training set: one row per label, its columns and the features as they were at its time.

:class:`TrainingSet` holds the rows in memory and gives them as dicts, as a ``pyarrow.Table``
and as a Parquet file; polars and pandas read the table (``pl.from_arrow(table)``,
``table.to_pandas()``). pyarrow is imported only by the Arrow and Parquet methods: it is the
``parquet`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["TrainingSet"]


def _pyarrow() -> Any:
    try:
        import pyarrow  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - pyarrow is a dev dependency
        raise ImportError(
            "TrainingSet.to_arrow() and to_parquet() need pyarrow: pip install 'featurist[parquet]'"
        ) from exc
    return pyarrow


class TrainingSet:
    """The rows of a point-in-time training set, from :func:`training_set`.

    Each row is a label's own columns followed by every feature requested, as it was at the
    label's time, and by the rows of the lookups requested; the rows are in the order the
    labels were given. ``len(training_set)`` is the number of rows.
    """

    __slots__ = ("_rows", "accepted", "columns", "events", "features", "lookups", "rejected")

    def __init__(
        self,
        rows: list[dict[str, Any]],
        *,
        columns: Sequence[str],
        features: Sequence[str],
        lookups: Sequence[str] = (),
        events: int = 0,
        accepted: int = 0,
        rejected: int = 0,
    ) -> None:
        self._rows = rows
        #: every column, in order: the labels' columns (in the order first seen), the
        #: features, the lookups
        self.columns: tuple[str, ...] = tuple(columns)
        #: the features' columns, and the lookups' (each holds the lookup's row, a dict)
        self.features: tuple[str, ...] = tuple(features)
        self.lookups: tuple[str, ...] = tuple(lookups)
        #: history events read (up to the last label's time: later ones are not needed),
        #: accepted by the runtime, and rejected (each in its dead letters, with the reason)
        self.events = events
        self.accepted = accepted
        self.rejected = rejected

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"TrainingSet({len(self._rows)} rows, {len(self.features)} features, "
            f"{self.accepted} events)"
        )

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (new dicts, yours to change), in the order of the labels. A
        label without one of the labels' columns has no entry for it."""
        return [dict(row) for row in self._rows]

    def column(self, name: str) -> list[Any]:
        """One column's values, in the order of the rows (None where a label lacks it).

        Raises:
            KeyError: no column has this name.
        """
        if name not in self.columns:
            raise KeyError(f"no column named {name!r} (columns: {', '.join(self.columns)})")
        return [row.get(name) for row in self._rows]

    def to_arrow(self, schema: Any = None) -> Any:
        """The rows as a ``pyarrow.Table``, one column per entry of :attr:`columns`.

        Types are inferred per column (ints and floats together make floats; a lookup's rows
        make a struct); give ``schema`` (a ``pyarrow.Schema``) to fix them.

        Raises:
            ImportError: pyarrow is not installed (the ``parquet`` extra).
            TypeError: a column holds values Arrow cannot put in one type (a number and a
                string, say); the message names the column. Give a ``schema``.
        """
        pa = _pyarrow()
        if schema is not None:
            return pa.Table.from_pylist(self._rows, schema=schema)
        arrays = []
        for name in self.columns:
            values = [row.get(name) for row in self._rows]
            try:
                arrays.append(pa.array(values))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
                raise TypeError(
                    f"column {name!r}: its values do not fit one Arrow type ({exc}); give "
                    "to_arrow a schema"
                ) from None
        return pa.Table.from_arrays(arrays, names=list(self.columns))

    def to_parquet(
        self, path: str | os.PathLike[str], *, schema: Any = None, **options: Any
    ) -> None:
        """Write the rows to a Parquet file at ``path`` (the table of :meth:`to_arrow`).
        ``options`` go to ``pyarrow.parquet.write_table`` (``compression``, ...). This blocks
        while it writes: from async code, call it in a thread (``anyio.to_thread.run_sync``).

        Raises:
            ImportError: pyarrow is not installed (the ``parquet`` extra).
            TypeError: as :meth:`to_arrow`.
            OSError: the file could not be written.
        """
        _pyarrow()
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        pq.write_table(self.to_arrow(schema), os.fspath(path), **options)
