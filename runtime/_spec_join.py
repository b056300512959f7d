"""Stream-stream joins in feature specs (``docs/design/joins.md``).

A ``Join`` pairs the events of two of a feature set's streams that share the routing key and
lie within an interval of each other; its records form a stream of their own, named after the
join, that features can read (``stream = "<join name>"``) and ``rt.join_records`` delivers.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

import msgspec
import msgspec.structs

from ._duration import Duration, parse_duration
from ._spec_checks import check_duration, check_name, check_str, fail, kind

__all__ = ["JOIN_HOWS", "JOIN_MERGES", "Join", "JoinHow", "JoinMerge", "JoinRange"]

JoinHow: TypeAlias = Literal["inner", "left", "right", "full"]
#: The join types.
JOIN_HOWS: tuple[str, ...] = get_args(JoinHow)
JoinMerge: TypeAlias = Literal["prefix", "left_priority", "right_priority"]
#: How a record merges the fields of its two events.
JOIN_MERGES: tuple[str, ...] = get_args(JoinMerge)


class JoinRange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A range condition: ``min <= |left.<left> - right.<right>| <= max`` (numbers only; an
    event whose field is missing or not a number matches nothing)."""

    left: str
    right: str
    min: float = 0
    max: float

    def __post_init__(self) -> None:
        check_str(self, "left", self.left)
        check_str(self, "right", self.right)
        for name in ("min", "max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                fail(self, name, f"expected a number, got {kind(value)}")
        if not 0 <= self.min <= self.max:
            fail(self, "max", f"need 0 <= min <= max, got min={self.min!r}, max={self.max!r}")


class Join(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A symmetric interval join of two streams.

    Args:
        name: the join's name, also the name of the stream of its records.
        left, right: two different streams of the feature set.
        before, after: the interval: a right event at ``r`` joins a left event at ``l`` when
            ``l - before <= r <= l + after`` (durations; ``before`` 0 by default).
        how: ``"inner"`` (the default), ``"left"``, ``"right"`` or ``"full"``: outer joins also
            emit each unmatched event, once the key's watermark passes the end of its interval.
        on: further fields that must be equal on both sides (a missing field matches nothing).
        range: a ``JoinRange`` condition on two numeric fields.
        merge: ``"prefix"`` (``left_x``, ``right_x``; the default), ``"left_priority"`` or
            ``"right_priority"`` (one side wins where both have a field).
    """

    name: str
    left: str
    right: str
    after: Duration
    before: Duration = 0
    how: JoinHow = "inner"
    on: tuple[str, ...] = ()
    range: JoinRange | None = None
    merge: JoinMerge = "prefix"

    def __post_init__(self) -> None:
        check_name(self, "name", self.name)
        check_name(self, "left", self.left)
        check_name(self, "right", self.right)
        if self.left == self.right:
            fail(self, "right", f"must differ from left ({self.left!r})")
        check_duration(self, "after", self.after, positive=False)
        check_duration(self, "before", self.before, positive=False)
        if self.how not in JOIN_HOWS:
            fail(self, "how", f"unknown join type {self.how!r} (known: {', '.join(JOIN_HOWS)})")
        if not isinstance(self.on, list | tuple):
            fail(self, "on", f"expected a list of field names, got {kind(self.on)}")
        for index, name in enumerate(self.on):
            check_str(self, f"on[{index}]", name)
        msgspec.structs.force_setattr(self, "on", tuple(self.on))
        if self.range is not None and not isinstance(self.range, JoinRange):
            fail(self, "range", f"expected a JoinRange, got {kind(self.range)}")
        if self.merge not in JOIN_MERGES:
            known = ", ".join(JOIN_MERGES)
            fail(self, "merge", f"unknown merge {self.merge!r} (known: {known})")

    @property
    def before_ms(self) -> int:
        return parse_duration(self.before, field="before")

    @property
    def after_ms(self) -> int:
        return parse_duration(self.after, field="after")
