"""Stream-stream joins in feature specs (``docs/design/joins.md``).

A ``Join`` pairs the events of two of a feature set's streams that share the routing key and
lie within an interval of each other; its records form a stream of their own, named after the
join, that features can read (``stream = "<join name>"``) and ``rt.join_records`` delivers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias, get_args

import msgspec
import msgspec.structs

from .._duration import Duration, parse_duration
from .checks import SpecMeta, check_duration, check_int, check_name, check_str, fail, kind
from .functions import FunctionError, FunctionPolicy, check_function_name, import_function

__all__ = [
    "JOIN_HOWS",
    "JOIN_MERGES",
    "Join",
    "JoinHow",
    "JoinMerge",
    "JoinRange",
]

JoinHow: TypeAlias = Literal["inner", "left", "right", "full", "asof"]
#: The join types.
JOIN_HOWS: tuple[str, ...] = get_args(JoinHow)
JoinMerge: TypeAlias = Literal["prefix", "left_priority", "right_priority"]
#: How a record merges the fields of its two events.
JOIN_MERGES: tuple[str, ...] = get_args(JoinMerge)


class JoinRange(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, metaclass=SpecMeta
):
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
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=SpecMeta,
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
            the ``"module:function"`` name of one (what a spec file can hold: the file's
            loader resolves it only against the functions and modules the application
            allows, ``FeatureSet.from_file(..., functions=..., modules=...)``; built in Python,
            the name is imported at once). One that raises matches nothing (counted and
            logged).
        merge: ``"prefix"`` (``left_x``, ``right_x``; the default), ``"left_priority"`` or
            ``"right_priority"`` (one side wins where both have a field), or a function
            ``merge(left, right) -> mapping`` (or its ``"module:function"`` name, as for
            ``predicate``). A record whose merge raises gets prefixed fields (counted and
            logged).
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
    #: a function, or a ``"module:function"`` name (the function once the spec is loaded)
    predicate: Any = None
    #: a strategy name, a function, or a ``"module:function"`` name (as ``predicate``)
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
        if isinstance(self.merge, str) and ":" not in self.merge and self.merge not in JOIN_MERGES:
            known = ", ".join(JOIN_MERGES)
            fail(
                self,
                "merge",
                f"unknown merge {self.merge!r} (known: {known}, or a function's "
                "'module:function' name)",
            )
        # Names are checked for form only: decoded from a file, they are resolved by the
        # loader against the application's allow-list, once the whole spec is valid; built in
        # Python, by ``_built_in_python`` below.
        for path in self._function_fields():
            value = getattr(self, path)
            if not callable(value):
                try:
                    check_function_name(value)
                except FunctionError as exc:
                    fail(self, path, str(exc))
        for name in ("max_buffered_per_key", "max_buffered"):
            value = getattr(self, name)
            if value is not None:
                check_int(self, name, value, 1, 2**40)

    def _function_fields(self) -> tuple[str, ...]:
        """The fields that hold a function or its name (not a merge strategy's name)."""
        fields = () if self.predicate is None else ("predicate",)
        if not (isinstance(self.merge, str) and self.merge in JOIN_MERGES):
            fields = (*fields, "merge")
        return fields

    def _built_in_python(self) -> None:
        """Called by ``SpecMeta`` after a join is built in Python (never when decoded): its
        ``"module:function"`` names are the application's own code, imported at once."""
        for path in self._function_fields():
            value = getattr(self, path)
            if isinstance(value, str):
                try:
                    msgspec.structs.force_setattr(self, path, import_function(value))
                except FunctionError as exc:
                    fail(self, path, str(exc))

    def resolve_functions(self, policy: FunctionPolicy) -> None:
        """Replace the ``"module:function"`` names of a decoded join by the functions that
        ``policy`` allows; the join is the loader's own, not yet shared.

        Raises:
            SpecError: a name is not allowed or leads to no function (``<python>:
                Join.<field>: ...``; the loader puts the file and the join's index first).
        """
        for path in self._function_fields():
            value = getattr(self, path)
            if isinstance(value, str):
                try:
                    msgspec.structs.force_setattr(self, path, policy.resolve(value))
                except FunctionError as exc:
                    fail(self, path, str(exc))

    @property
    def predicate_function(self) -> Callable[..., Any] | None:
        """The predicate as a function (None without one).

        Raises:
            SpecError: the join was decoded without a loader, so the predicate is still a
                name (``_unresolved``).
        """
        if self.predicate is None:
            return None
        return self._function("predicate")

    @property
    def merge_strategy(self) -> str | Callable[..., Any]:
        """The merge: a strategy name, or a function (raises as ``predicate_function``)."""
        if isinstance(self.merge, str) and self.merge in JOIN_MERGES:
            return self.merge
        return self._function("merge")

    def _function(self, path: str) -> Callable[..., Any]:
        value = getattr(self, path)
        if not callable(value):
            # decoded straight with msgspec rather than by FeatureSet's loaders: a file's
            # name is never imported without the application's allow-list
            fail(
                self,
                path,
                f"{value!r} was never resolved: load spec files with FeatureSet.from_file "
                "(or from_toml, from_json, from_yaml, from_dict), giving the functions or "
                "modules a file may name",
            )
        return value  # type: ignore[no-any-return]

    @property
    def tolerance_ms(self) -> int | None:
        return None if self.tolerance is None else parse_duration(self.tolerance, field="tolerance")

    @property
    def before_ms(self) -> int:
        return parse_duration(self.before, field="before")

    @property
    def after_ms(self) -> int:
        return parse_duration(self.after, field="after")
