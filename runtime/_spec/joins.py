"""Stream-stream joins in feature specs (``docs/design/joins.md``).

A ``Join`` pairs the events of two of a feature set's streams that share the routing key and
lie within an interval of each other; its records form a stream of their own, named after the
join, that features can read (``stream = "<join name>"``) and ``rt.join_records`` delivers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal, TypeAlias, cast, get_args

import msgspec
import msgspec.structs

from .._duration import Duration, parse_duration
from .._exceptions import SpecError
from .checks import check_duration, check_int, check_name, check_str, fail, kind

__all__ = [
    "JOIN_HOWS",
    "JOIN_MERGES",
    "Join",
    "JoinHow",
    "JoinMerge",
    "JoinRange",
    "function_name",
    "resolve_function",
]

JoinHow: TypeAlias = Literal["inner", "left", "right", "full", "asof"]
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
    """A join of two streams: a symmetric interval join, or an as-of join.

    Args:
        name: the join's name, also the name of the stream of its records.
        left: one stream of the feature set.
        right: another stream of the feature set.
        before: the interval's start: a right event at ``r`` joins a left event at ``l``
            when ``l - before <= r <= l + after`` (a duration, 0 by default).
        after: the interval's end (a duration, 0 by default).
        how: ``"inner"`` (the default), ``"left"``, ``"right"`` or ``"full"``: outer joins also
            emit each unmatched event, once the key's watermark passes the end of its interval.
            ``"asof"``: each left event gets the latest right event at or before its time
            (within ``tolerance``), once the watermark passes its time; one with none gets an
            unmatched row. ``before`` and ``after`` do not apply.
        tolerance: as-of joins: the longest time from the right event to the left one that
            still matches (a duration; None, the default: any).
        on: further fields that must be equal on both sides (a missing field matches nothing).
        range: a ``JoinRange`` condition on two numeric fields.
        predicate: a further condition, ``predicate(left, right) -> bool``: a function, or
            the ``"module:function"`` name of one (what a spec file can hold). One that raises
            matches nothing (counted and logged).
        merge: ``"prefix"`` (``left_x``, ``right_x``; the default), ``"left_priority"`` or
            ``"right_priority"`` (one side wins where both have a field), or a function
            ``merge(left, right) -> mapping`` (or its ``"module:function"`` name). A record
            whose merge raises gets prefixed fields (counted and logged).
        max_buffered_per_key: events of one key and side buffered at most; past it the oldest
            is evicted (default 10,000; None: no cap).
        max_buffered: events buffered by the join at most, over all keys (split evenly among
            shards); past it the oldest event of the least recently active key is evicted
            (default None: no cap). Evictions are counted in statistics and logged; an outer
            join emits an evicted unmatched event's row at once, and an as-of join answers an
            evicted left event with what it has.
    """

    name: str
    left: str
    right: str
    after: Duration = 0
    before: Duration = 0
    how: JoinHow = "inner"
    tolerance: Duration | None = None
    on: tuple[str, ...] = ()
    range: JoinRange | None = None
    #: a function or a ``"module:function"`` name (checked when the spec is made)
    predicate: Any = None
    #: a strategy name, a function, or a ``"module:function"`` name
    merge: Any = "prefix"
    max_buffered_per_key: int | None = 10_000
    max_buffered: int | None = None

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
        if self.tolerance is not None:
            if self.how != "asof":
                fail(self, "tolerance", 'applies to as-of joins only (how="asof")')
            check_duration(self, "tolerance", self.tolerance, positive=False)
        if self.how == "asof":
            if self.on or self.range is not None or self.predicate is not None:
                fail(
                    self,
                    "how",
                    "an as-of join picks the latest right event of the key: it takes no "
                    "on, range or predicate",
                )
            for name in ("before", "after"):
                if parse_duration(getattr(self, name), field=name):
                    fail(self, name, "an as-of join has no interval (use tolerance)")
        if self.predicate is not None:
            resolve_function(self, "predicate", self.predicate)
        if not (isinstance(self.merge, str) and self.merge in JOIN_MERGES):
            if isinstance(self.merge, str) and ":" not in self.merge:
                known = ", ".join(JOIN_MERGES)
                fail(
                    self,
                    "merge",
                    f"unknown merge {self.merge!r} (known: {known}, or a function's "
                    "'module:function' name)",
                )
            resolve_function(self, "merge", self.merge)
        for name in ("max_buffered_per_key", "max_buffered"):
            value = getattr(self, name)
            if value is not None:
                check_int(self, name, value, 1, 2**40)

    @property
    def predicate_function(self) -> Callable[..., Any] | None:
        """The predicate as a function (None without one)."""
        if self.predicate is None:
            return None
        return resolve_function(self, "predicate", self.predicate)

    @property
    def merge_strategy(self) -> str | Callable[..., Any]:
        """The merge: a strategy name, or a function."""
        if isinstance(self.merge, str) and self.merge in JOIN_MERGES:
            return self.merge
        return resolve_function(self, "merge", self.merge)

    @property
    def tolerance_ms(self) -> int | None:
        return None if self.tolerance is None else parse_duration(self.tolerance, field="tolerance")

    @property
    def before_ms(self) -> int:
        return parse_duration(self.before, field="before")

    @property
    def after_ms(self) -> int:
        return parse_duration(self.after, field="after")


def resolve_function(owner: object, path: str, value: object) -> Callable[..., Any]:
    """A function given as itself or by its ``"module:function"`` name (a dotted attribute
    path after the colon is allowed)."""
    if callable(value):
        return value
    if not isinstance(value, str):
        fail(owner, path, f"expected a function or a 'module:function' name, got {kind(value)}")
    if value.count(":") != 1:
        fail(owner, path, f"not a 'module:function' name: {value!r}")
    module_name, _, attribute = value.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        fail(owner, path, f"cannot import module {module_name!r} of {value!r}: {exc}")
    for part in attribute.split("."):
        if not hasattr(found, part):
            fail(owner, path, f"module {module_name!r} has no {attribute!r} (from {value!r})")
        found = getattr(found, part)
    if not callable(found):
        fail(owner, path, f"{value!r} is not a function (it is {kind(found)})")
    return cast("Callable[..., Any]", found)


def function_name(value: Any) -> str:
    """The ``"module:function"`` name of a function, for a spec written back out; raises
    TypeError for one that cannot be found again by its name (a lambda, a nested function)."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    name = f"{module}:{qualname}"
    found: Any = None
    if module and module != "__main__" and qualname and "<" not in qualname:
        try:
            found = resolve_function(None, "", name)
        except SpecError:
            found = None
    # the name must lead back to this very function (not, say, a bound method's class
    # attribute), from any process (not from a script's __main__)
    if found is not value:
        raise TypeError(
            f"cannot write the function {value!r} into a spec: it cannot be found again by "
            "its name; give a function defined at the top level of an importable module (or "
            "its 'module:function' name) instead"
        )
    return name
