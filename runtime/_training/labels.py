"""Reading labels: the rows a training set is made for, each with a key and a time.

Labels come as an iterable of mappings or as a ``pyarrow.Table`` (polars and pandas frames
through Arrow: ``pl.DataFrame.to_arrow()``, ``pa.Table.from_pandas(df)``). Each label's key
and time are read with the rules of events (``_ingest/events.py``): a key is a ``str``, an
``int`` of at most 64 bits or ``bytes``; a time is a number in the feature set's
``time_unit``, a ``datetime`` or an ISO-8601 string. A label that breaks them is refused, with
its index and the field: a training set with labels silently left out would be a biased one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .._exceptions import InvalidEvent
from .._ingest.events import EventReader

__all__ = ["Label", "read_labels"]


class Label(NamedTuple):
    """One label, read: its place among the labels given, its key and time, its columns."""

    position: int
    key: Any
    time_ms: int
    row: dict[str, Any]


def _rows(labels: Any) -> Iterable[Any]:
    """The labels as an iterable of rows: a pyarrow Table (or RecordBatch) by its rows."""
    module = type(labels).__module__ or ""
    if module.startswith("pyarrow") and hasattr(labels, "to_pylist"):
        try:
            rows: list[Any] = labels.to_pylist()
        except ValueError as exc:
            # nanosecond timestamps that are not whole microseconds: Python's datetime cannot
            # hold them (pandas' Timestamp can, when pandas is installed)
            fine = [
                field.name for field in labels.schema if getattr(field.type, "unit", None) == "ns"
            ]
            if not fine:
                raise
            raise ValueError(
                f"labels: the column {fine[0]!r} holds nanosecond timestamps that Python's "
                "datetime cannot hold (not whole microseconds): cast it to "
                "pyarrow.timestamp('us') (or 'ms'), or install pandas"
            ) from exc
        return rows
    if isinstance(labels, (str, bytes, Mapping)) or not isinstance(labels, Iterable):
        raise TypeError(
            "labels must be an iterable of mappings (one per label) or a pyarrow.Table, "
            f"got {type(labels).__name__}"
        )
    return labels


def read_labels(labels: Any, *, key: str, time: str, time_unit: str) -> list[Label]:
    """Every label read, in the order given.

    Raises:
        TypeError: ``labels`` is neither an iterable nor a ``pyarrow.Table``, or a label is
            not a mapping.
        InvalidEvent: a label lacks its key or time field, or holds an unusable one; the
            message names the label's index and the field (``field`` is set).
    """
    # no bounds on times: a label may be as old as the history, or newer than now
    reader = EventReader(key=key, time=time, time_unit=time_unit, max_future_ms=None)
    found: list[Label] = []
    for index, label in enumerate(_rows(labels)):
        if not isinstance(label, Mapping):
            raise TypeError(
                f"labels[{index}]: a label must be a mapping, got {type(label).__name__}"
            )
        row = dict(label)
        try:
            label_key, time_ms, _ = reader.read(row)
        except InvalidEvent as exc:
            raise InvalidEvent(f"labels[{index}]: {exc}", field=exc.field, payload=label) from None
        found.append(Label(index, label_key, time_ms, row))
    return found
