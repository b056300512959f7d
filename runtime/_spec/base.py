"""The base of feature specs: ``Where`` conditions and the ``FeatureSpec`` every feature
type derives from (``runtime._spec.keyed`` has the keyed aggregates, ``runtime._spec.windowed``
the features that need a window or event-time order, ``runtime._spec.feature_set`` the set).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, TypeAlias, get_args

import msgspec
import msgspec.structs

from .._exceptions import FeatureValueError
from .checks import SpecMeta as _SpecMeta
from .checks import check_name as _check_name
from .checks import check_str as _check_str
from .checks import fail as _fail
from .checks import kind as _kind
from .windows import WINDOW_TYPES, Window

__all__ = ["OPS", "TIME_UNITS", "FeatureSpec", "Op", "TimeUnit", "Where"]

Op: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in"]
#: The operators of a ``Where`` condition.
OPS: tuple[str, ...] = get_args(Op)
TimeUnit: TypeAlias = Literal["ms", "s", "us", "ns"]
#: The units of numeric event times.
TIME_UNITS: tuple[str, ...] = get_args(TimeUnit)

_LIST_OPS = frozenset({"in", "not_in"})
_ORDER_OPS = frozenset({"<", "<=", ">", ">="})
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda actual, values: _member(actual, values),
    "not_in": lambda actual, values: not _member(actual, values),
}


def _member(actual: Any, values: tuple[Any, ...]) -> bool:
    """``actual in values`` as a set would answer it: an unhashable value (a list, a dict) is a
    ``TypeError``, not a non-member, as in the keyed kernel, which tests a frozenset."""
    hash(actual)
    return actual in values


def _check_fraction(owner: object, path: str, value: object, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(owner, path, f"expected a number, got {_kind(value)}")
    if not 0 <= value <= high:
        _fail(owner, path, f"must be between 0 and {high}, got {value!r}")


def _check_scalar(owner: object, path: str, value: object, op: str) -> None:
    if value is None:
        _fail(owner, path, "must not be null (a missing or null event field never matches)")
    if not isinstance(value, str | int | float):
        _fail(owner, path, f"op {op!r} needs a string, number or boolean, got {_kind(value)}")
    if isinstance(value, float) and math.isnan(value):
        _fail(owner, path, "must not be NaN (NaN equals nothing)")


class Where(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    metaclass=_SpecMeta,
):
    """A condition on one event field: ``field op value``, such as ``status == 'declined'``.

    A feature with a ``where`` sees only the events that match it. ``in`` and ``not_in`` take a
    non-empty list of values (kept as a tuple); the other operators take one string, number or
    boolean, and ``<``, ``<=``, ``>``, ``>=`` take a string or a number.

    An event whose field is missing or ``None`` matches nothing, not even ``!=`` or ``not_in``,
    as a NULL compares in SQL: ``status != 'ok'`` does not select events without a status.
    """

    field: str
    op: Op = "=="
    value: Any

    def __post_init__(self) -> None:
        _check_str(self, "field", self.field)
        if self.op not in OPS:
            _fail(self, "op", f"unknown operator {self.op!r} (known: {', '.join(OPS)})")
        if self.op in _LIST_OPS:
            if not isinstance(self.value, list | tuple):
                _fail(self, "value", f"op {self.op!r} needs a list, got {_kind(self.value)}")
            if not self.value:
                _fail(self, "value", f"op {self.op!r} needs a non-empty list")
            for index, item in enumerate(self.value):
                _check_scalar(self, f"value[{index}]", item, self.op)
            msgspec.structs.force_setattr(self, "value", tuple(self.value))
        else:
            _check_scalar(self, "value", self.value, self.op)
            if self.op in _ORDER_OPS and isinstance(self.value, bool):
                _fail(self, "value", f"op {self.op!r} needs a string or a number, got bool")

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Return whether ``event`` satisfies the condition.

        Raises:
            FeatureValueError: an ordering operator cannot compare the event's value with the
                condition's (a string with a number, for example), or ``in``/``not_in`` got
                an unhashable value (:meth:`mismatch`).
        """
        actual = event.get(self.field)
        if actual is None:
            return False
        try:
            return bool(_OPERATORS[self.op](actual, self.value))
        except TypeError as exc:
            raise self.mismatch(actual, exc) from exc

    def mismatch(self, actual: Any, error: TypeError) -> FeatureValueError:
        """The error for an event value the condition cannot test, ``error`` as its cause.

        Keyed and windowed features report the same error for the same value: the keyed
        kernel, which compiles the condition, builds it here too.
        """
        shown = repr(actual)
        if len(shown) > 60:  # an event's value may be large: the error is kept and logged
            shown = shown[:57] + "..."
        if self.op in _LIST_OPS:
            text = f"{self.field}: cannot test {shown} for {self.describe()}: {error}"
        else:
            text = f"{self.field}: cannot compare {shown} for {self.describe()}"
        wrapped = FeatureValueError(text, field=self.field)
        wrapped.__cause__ = error
        return wrapped

    def describe(self) -> str:
        """Return the condition as text: ``status == 'declined'``, ``country in ['US', 'CA']``."""
        if self.op in _LIST_OPS:
            shown = "[" + ", ".join(repr(item) for item in self.value) + "]"
        else:
            shown = repr(self.value)
        return f"{self.field} {self.op} {shown}"


class FeatureSpec(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    tag_field="type",
    metaclass=_SpecMeta,
):
    """Fields shared by every feature: its ``name``, an optional ``where`` and a ``description``.

    Names match ``[A-Za-z_][A-Za-z0-9_]*`` and have at most 100 characters.
    """

    name: str
    where: Where | None = None
    description: str = ""
    window: Window | None = None
    stream: str = ""

    #: Whether the feature needs a number in its field.
    numeric: ClassVar[bool] = False
    #: Whether the feature may take a ``window`` (``False``), must (``True``) or cannot (None).
    windowed: ClassVar[bool | None] = False
    #: Whether the feature runs on event time (with the windowed features) even without a window.
    event_time: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_name(self, "name", self.name)
        if self.where is not None and not isinstance(self.where, Where):
            _fail(self, "where", f"expected a Where or None, got {_kind(self.where)}")
        _check_str(self, "description", self.description, empty=True)
        if self.stream:
            _check_name(self, "stream", self.stream)
        if self.window is not None:
            if type(self.window) not in _WINDOW_CLASSES:
                known = ", ".join(WINDOW_TYPES)
                _fail(self, "window", f"expected a window ({known}), got {_kind(self.window)}")
            if self.windowed is None:
                _fail(self, "window", f"{self.type_name} features cannot be windowed")
        elif self.windowed:
            _fail(self, "window", f"{self.type_name} features need a window")

    @property
    def type_name(self) -> str:
        """The feature's ``type`` tag, such as ``"sum"``."""
        return str(type(self).__struct_config__.tag)

    def inputs(self) -> tuple[str, ...]:
        """Return the event fields the feature reads: its ``field``, then its ``where`` field."""
        return () if self.where is None else (self.where.field,)

    def depends_on(self) -> tuple[str, ...]:
        """Return the names of the other features whose values this one is computed from."""
        return ()


class _FieldFeature(FeatureSpec, frozen=True):
    field: str

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_str(self, "field", self.field)

    def inputs(self) -> tuple[str, ...]:
        if self.where is None or self.where.field == self.field:
            return (self.field,)
        return (self.field, self.where.field)


_WINDOW_CLASSES = frozenset(WINDOW_TYPES.values())
