"""User-defined aggregates: the ``Aggregate`` protocol and the ``Custom`` feature that runs one.

An aggregate is an object with ``empty() -> state``, ``update(state, value) -> state`` and
``value(state) -> value``; optionally ``merge(a, b) -> state`` (two partial states into one) and
``remove(state, value) -> state`` (the inverse of ``update``), and ``dump``/``load`` for a state
a checkpoint cannot hold as it is. ``Custom(name=..., field=..., aggregate=...)`` computes one
per key, over all the key's events or over any window (``docs/features.md#custom``).
``runtime._keyed.custom`` holds what runs it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, ClassVar, Generic, TypeVar

import msgspec.structs

from .base import _FieldFeature
from .checks import fail as _fail
from .checks import kind as _kind
from .functions import FunctionError, FunctionPolicy, check_function_name, function_name

__all__ = ["Aggregate", "Custom", "aggregate_name", "check_aggregate"]

S = TypeVar("S")
V = TypeVar("V")

#: the methods every aggregate has
REQUIRED = ("empty", "update", "value")


class Aggregate(Generic[S, V]):
    """A user-defined aggregate: subclass it, or write any class with the same methods.

    Required:

    - ``empty() -> S``: the state of a key (or a window) with no value yet. Called once per
      key and per window, so it must return a new object each time if the state is mutable.
    - ``update(state, value) -> S``: the state with one more value. It may change ``state``
      in place and return it. It should raise before changing anything: an exception is that
      event's error for the feature (``FeatureValueError`` naming it), and the state is kept.
    - ``value(state) -> V``: the feature's value. It must not change ``state``. An exception,
      NaN or an infinity gives None.

    Optional:

    - ``merge(a, b) -> S``: ``a`` and ``b`` combined, as if one state had seen both sets of
      values. It may change ``a`` and return it, never ``b``. Hopping windows merge their
      panes with it and sessions merge when a late event joins two; without it they keep
      each window's values and fold them with ``update`` instead (memory grows with the
      window, as a sliding window's does).
    - ``remove(state, value) -> S``: the state without one value that ``update`` added (the
      oldest). Sliding windows call it as values leave; without it a sliding window folds
      its values again (``O(w)``) when one has left and its value is read.
    - ``dump(state) -> data`` and ``load(data) -> S``: the state as data a checkpoint holds
      (None, bool, int, float, str, bytes, and lists, tuples, dicts and sets of them) and
      back. By default the state itself is written, so a state made of those types needs
      neither.

    Class attributes (hints; none is required):

    - ``numeric``: ``True`` to take numbers only, as ``sum`` does: an ``int`` or finite
      ``float`` (a ``Decimal`` converted to float); a bool, a string, NaN or an infinity is
      an error for the feature. ``False`` (the default): any value but None.
    - ``state_bytes``: bytes one state takes in a checkpoint, for the cost estimator (by
      default it measures a state after a few updates).
    - ``update_ops``: operations one update costs, for the cost estimator (default
      ``CUSTOM_UPDATE_OPS``).

    Results are exact for any shard count and batch size; the order values reach ``update``
    is each key's arrival order (a sliding window's recomputation folds in event-time order),
    so an aggregate whose result depends on order should be used without windows that fold
    or out-of-order events.
    """

    numeric: ClassVar[bool] = False
    state_bytes: ClassVar[int | None] = None
    update_ops: ClassVar[int | None] = None

    def empty(self) -> S:
        raise NotImplementedError

    def update(self, state: S, value: Any) -> S:
        raise NotImplementedError

    def value(self, state: S) -> V:
        raise NotImplementedError

    def dump(self, state: S) -> Any:
        """The state as data a checkpoint holds (the state itself by default)."""
        return state

    def load(self, data: Any) -> S:
        """The state from what :meth:`dump` returned (the data itself by default)."""
        return data  # type: ignore[no-any-return]


def check_aggregate(aggregate: object) -> str | None:
    """Why ``aggregate`` is not an aggregate (a missing or abstract method), or None."""
    if isinstance(aggregate, type):
        return "expected an aggregate object, got a class"
    for method in REQUIRED:
        found = getattr(aggregate, method, None)
        if not callable(found):
            return f"{type(aggregate).__name__} has no {method}() method"
        if getattr(type(aggregate), method, None) is getattr(Aggregate, method):
            return f"{type(aggregate).__name__} does not define {method}()"
    for method in ("merge", "remove", "dump", "load"):
        found = getattr(aggregate, method, None)
        if found is not None and not callable(found):
            return f"{type(aggregate).__name__}.{method} is not a method"
    return None


def aggregate_name(aggregate: object) -> str:
    """The ``"module:Class"`` name an aggregate is written as in a spec (its class's).

    A class that cannot be found again by its name (one of a script's ``__main__``, or
    defined in a function) is written by its module and qualified name all the same: a
    checkpoint compares definitions by it, but no other process can load it.
    """
    cls = type(aggregate)
    try:
        return function_name(cls)
    except TypeError:
        return f"{cls.__module__}:{cls.__qualname__}"


def _make(cls: Any, owner: object) -> Any:
    try:
        return cls()
    except Exception as exc:
        _fail(
            owner,
            "aggregate",
            f"{cls.__qualname__}() raised {type(exc).__name__}: {exc} (a spec names a class "
            "made with no arguments)",
        )


def _import_class(name: str) -> Any:
    module_name, _, attribute = check_function_name(name).partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FunctionError(f"cannot import module {module_name!r} of {name!r}: {exc}") from None
    return _class_in(found, module_name, attribute, name)


def _class_in(found: Any, module_name: str, attribute: str, name: str) -> Any:
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise FunctionError(f"module {module_name!r} has no {attribute!r} (from {name!r})")
        found = getattr(found, part)
    if not inspect.isclass(found):
        raise FunctionError(f"{name!r} is not a class (it is a {type(found).__name__})")
    if found.__module__ != module_name or found.__qualname__ != attribute:
        raise FunctionError(
            f"{name!r} is {found.__module__}:{found.__qualname__}, defined elsewhere: name a "
            "class by the module that defines it"
        )
    return found


def resolve_class(policy: FunctionPolicy, name: str) -> Any:
    """The aggregate class a spec file names, if ``policy`` allows it: listed among its
    functions (classes are named as functions are), or defined in one of its modules.

    Raises:
        FunctionError: the name is malformed or not allowed, or leads to no class.
    """
    check_function_name(name)
    listed = policy.listed(name)
    if listed is not None:
        return listed
    if not policy.allows_module(name.partition(":")[0]):
        raise FunctionError(
            f"{name!r} is not an aggregate the application allows a spec file to name "
            f"(allowed: {policy.describe()}); list its class with "
            "FeatureSet.from_file(..., functions=[...]) or its module with modules=[...]"
        )
    return _import_class(name)


class Custom(_FieldFeature, tag="custom", frozen=True):
    """A user-defined aggregate of ``field`` per key (or per window): see :class:`Aggregate`.

    ``aggregate`` is an aggregate object, or its class (made with no arguments), or in a
    spec file the class's ``"module:Class"`` name, which the loader resolves only against
    what the application allows (``functions=[MyAggregate]`` or ``modules=[...]``, as a
    join's functions). A set written out (``to_json``) names the class: an aggregate whose
    objects take arguments is written without them.

    It may take a ``window`` of any type, and a ``where``. A missing or None value is skipped,
    as for every feature; ``numeric`` aggregates take numbers only.
    """

    #: an aggregate object, its class, or its ``"module:Class"`` name
    aggregate: Any

    def __post_init__(self) -> None:
        super().__post_init__()
        aggregate = self.aggregate
        if isinstance(aggregate, str):
            try:
                check_function_name(aggregate)
            except FunctionError as exc:
                _fail(self, "aggregate", f"{exc} (an aggregate's 'module:Class' name)")
            return  # resolved by _built_in_python or resolve_functions
        if isinstance(aggregate, type):
            aggregate = _make(aggregate, self)
            msgspec.structs.force_setattr(self, "aggregate", aggregate)
        if aggregate is None or isinstance(aggregate, int | float | list | dict | tuple):
            _fail(self, "aggregate", f"expected an aggregate object, got {_kind(aggregate)}")
        problem = check_aggregate(aggregate)
        if problem is not None:
            _fail(self, "aggregate", problem)

    def _built_in_python(self) -> None:
        """A ``"module:Class"`` name given in Python is the application's own: imported."""
        if isinstance(self.aggregate, str):
            try:
                cls = _import_class(self.aggregate)
            except FunctionError as exc:
                _fail(self, "aggregate", str(exc))
            self._set(_make(cls, self))

    def resolve_functions(self, policy: FunctionPolicy) -> None:
        """Replace a decoded ``"module:Class"`` name by an object of the class ``policy``
        allows.

        Raises:
            SpecError: the name is not allowed or leads to no aggregate class.
        """
        if isinstance(self.aggregate, str):
            try:
                cls = resolve_class(policy, self.aggregate)
            except FunctionError as exc:
                _fail(self, "aggregate", str(exc))
            self._set(_make(cls, self))

    def _set(self, aggregate: Any) -> None:
        problem = check_aggregate(aggregate)
        if problem is not None:
            _fail(self, "aggregate", problem)
        msgspec.structs.force_setattr(self, "aggregate", aggregate)

    @property
    def takes_numbers(self) -> bool:
        """Whether the aggregate takes numbers only (its ``numeric`` attribute)."""
        return bool(getattr(self.aggregate, "numeric", False))

    def resolved(self) -> Any:
        """The aggregate object.

        Raises:
            SpecError: it is still a name (decoded without a loader).
        """
        if isinstance(self.aggregate, str):
            _fail(
                self,
                "aggregate",
                f"{self.aggregate!r} was decoded without a loader: load spec files with "
                "FeatureSet.from_file (or from_toml, from_json, ...), which resolve it",
            )
        return self.aggregate
