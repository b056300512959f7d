"""The rows of dimension tables, as sources give them and the enricher reads them.

A source answers a key with a :data:`Row` (column name -> value), with the key's versions
(:class:`Version`, for a versioned table; the enricher picks the one valid at each event's time
with :func:`version_at`), or with a :class:`~runtime.MalformedRow` for a row it cannot read.
:func:`checked_row` is the one place a value that is none of these is told apart.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, TypeAlias

import msgspec

from .._exceptions import MalformedRow

__all__ = ["Row", "Value", "Version", "checked_row", "version_at"]

#: a row of a dimension table: column name -> value
Row: TypeAlias = dict[str, Any]


class Version(msgspec.Struct, frozen=True):
    """One version of a key's row in a versioned table: valid from ``valid_from`` (included)
    until ``valid_to`` (excluded; None: still valid), both in event-time milliseconds."""

    valid_from: int
    valid_to: int | None
    row: Row

    def covers(self, time: int) -> bool:
        """Whether this version is the valid one at ``time``."""
        return self.valid_from <= time and (self.valid_to is None or time < self.valid_to)


def version_at(versions: Sequence[Version], time: int) -> Version | None:
    """The version valid at ``time`` among ``versions`` sorted by ``valid_from`` (as sources
    give them), or None if none is. Where versions overlap, the one that starts last wins."""
    index = bisect.bisect_right(versions, time, key=lambda version: version.valid_from)
    if index == 0:
        return None
    version = versions[index - 1]
    return version if version.covers(time) else None


#: what ``get_many`` gives for a key it found
Value: TypeAlias = Row | list[Version] | MalformedRow


def checked_row(value: object) -> Row | list[Version] | Exception:
    """A source's answer for one key as the enricher can use it: the row or the versions as
    they are, an exception instance as it is (the source's word that the row is malformed),
    and anything else (a custom source may return anything) as a :class:`MalformedRow`."""
    if isinstance(value, dict | Exception):
        return value
    if isinstance(value, list) and all(isinstance(version, Version) for version in value):
        return value
    return MalformedRow(f"a {type(value).__name__}, not a row (a dict) or a list of versions")
