"""Running a user-defined aggregate (``runtime._spec.aggregate``): its state in a cell, and the
calls into the user's code, each of whose errors names the feature.

A state lives in a :class:`CustomCell`, in a keyed group's slot or in a window's state. A
checkpoint writes the cell as the aggregate's ``dump`` of its state; restored, the cell holds
that data until the runner that owns it next reaches it and ``load``s it (a keyed group on the
key's next event or read, a window engine when its actor restores the key): the codec does not
know the feature set, and never calls code a checkpoint names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .._exceptions import CheckpointError, FeatureValueError, FeaturistError

__all__ = ["CUSTOM_UPDATE_OPS", "CustomCell", "CustomRunner"]

#: Operations the cost estimator charges for one update of an aggregate that gives no
#: ``update_ops``: a Python method call and its work.
CUSTOM_UPDATE_OPS = 10


class CustomCell:
    """One state of a user-defined aggregate.

    ``runner`` is the :class:`CustomRunner` whose state it holds, or None for a cell restored
    from a checkpoint and not used since: ``state`` is then the aggregate's ``dump``.
    """

    __slots__ = ("runner", "state")

    def __init__(self, runner: CustomRunner | None, state: Any) -> None:
        self.runner = runner
        self.state = state

    def dumped(self) -> Any:
        """The state as a checkpoint holds it."""
        runner = self.runner
        if runner is None:
            return self.state
        return runner.dump(self.state)


def reduce_cell(cell: CustomCell) -> tuple[Any]:
    """The codec's form of a cell (``runtime._checkpoints.codec``)."""
    return (cell.dumped(),)


def rebuild_cell(data: tuple[Any, ...]) -> CustomCell:
    """A cell from :func:`reduce_cell`'s form: not loaded yet (its runner loads it)."""
    return CustomCell(None, data[0])


class _Unresolved:
    """The aggregate of a spec that names its class without resolving it: a feature a
    checkpoint held (its spec is read back as data, and a checkpoint never imports code),
    compiled only to learn the layout of the old state. It holds nothing and loads nothing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def empty(self) -> Any:
        return None

    def update(self, state: Any, value: Any) -> Any:
        raise FeaturistError(f"the aggregate {self.name!r} is not loaded")

    def value(self, state: Any) -> Any:
        return None


class CustomRunner:
    """Calls one feature's aggregate. Every call that runs the user's code turns an exception
    into a ``FeatureValueError`` naming the feature and the method.

    Args:
        feature: the ``Custom`` spec. One whose aggregate is still a ``"module:Class"`` name
            (a checkpoint's, read back) gets a runner that holds no state and leaves restored
            states as they are, for the runner of the runtime's own spec to load.
    """

    __slots__ = (
        "_dump",
        "_empty",
        "_load",
        "_merge",
        "_remove",
        "_update",
        "_value",
        "aggregate",
        "cls_name",
        "field",
        "label",
        "merges",
        "name",
        "numeric",
        "removes",
        "resolved",
    )

    def __init__(self, feature: Any) -> None:
        aggregate = feature.aggregate
        #: whether the aggregate is the application's object (not a name read back)
        self.resolved = not isinstance(aggregate, str)
        if self.resolved:
            aggregate = feature.resolved()
            cls = type(aggregate)
            self.cls_name = f"{cls.__module__}:{cls.__qualname__}"
        else:
            self.cls_name = aggregate
            aggregate = _Unresolved(aggregate)
        self.aggregate = aggregate
        self.name = str(feature.name)
        self.field = str(feature.field)
        self.label = type(aggregate).__name__
        self.numeric = bool(getattr(aggregate, "numeric", False))
        self._empty = aggregate.empty
        self._update = aggregate.update
        self._value = aggregate.value
        self._merge = getattr(aggregate, "merge", None)
        self._remove = getattr(aggregate, "remove", None)
        self._dump = getattr(aggregate, "dump", None)
        self._load = getattr(aggregate, "load", None)
        #: whether the aggregate combines partial states, and takes values back out
        self.merges = self._merge is not None
        self.removes = self._remove is not None

    def _identity(self) -> tuple[Any, ...]:
        return (self.name, self.field, self.cls_name)

    def __eq__(self, other: object) -> bool:
        """Runners of one definition are equal (window buffers compare their needs)."""
        if not isinstance(other, CustomRunner):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def _error(self, method: str, exc: Exception) -> FeatureValueError:
        error = FeatureValueError(
            f"custom feature {self.name!r}: {self.label}.{method} raised "
            f"{type(exc).__name__}: {exc}",
            field=self.field,
        )
        error.__cause__ = exc
        return error

    # -- states -----------------------------------------------------------------------------------
    def empty(self) -> Any:
        try:
            return self._empty()
        except Exception as exc:
            raise self._error("empty", exc) from exc

    def update(self, state: Any, value: Any) -> Any:
        try:
            return self._update(state, value)
        except Exception as exc:
            raise self._error("update", exc) from exc

    def remove(self, state: Any, value: Any) -> Any:
        assert self._remove is not None
        try:
            return self._remove(state, value)
        except Exception as exc:
            raise self._error("remove", exc) from exc

    def merge(self, a: Any, b: Any) -> Any:
        assert self._merge is not None
        try:
            return self._merge(a, b)
        except Exception as exc:
            raise self._error("merge", exc) from exc

    def value(self, state: Any) -> Any:
        """The feature's value: an exception is a ``FeatureValueError``; NaN or an infinity
        is None, as a derived function's."""
        try:
            value = self._value(state)
        except Exception as exc:
            raise self._error("value", exc) from exc
        if value.__class__ is float and not math.isfinite(value):
            return None
        return value

    def fold(self, values: Iterable[Any]) -> Any:
        """A new state of ``values``, updated in order."""
        state = self.empty()
        update = self.update
        for v in values:
            state = update(state, v)
        return state

    def dump(self, state: Any) -> Any:
        if self._dump is None:
            return state
        try:
            return self._dump(state)
        except Exception as exc:
            raise CheckpointError(
                f"custom feature {self.name!r}: {self.label}.dump raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def load(self, data: Any) -> Any:
        if self._load is None:
            return data
        try:
            return self._load(data)
        except Exception as exc:
            raise CheckpointError(
                f"custom feature {self.name!r}: {self.label}.load raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    # -- cells ------------------------------------------------------------------------------------
    def new_cell(self) -> CustomCell:
        return CustomCell(self, self.empty())

    def state_of(self, cell: CustomCell) -> Any:
        """The cell's state, loaded first if the cell was restored and not used since."""
        if cell.runner is not self:
            self.attach(cell)
        return cell.state

    def attach(self, cell: CustomCell) -> None:
        """Make ``cell`` this runner's: ``load`` the data of a restored cell.

        Raises:
            FeatureValueError: ``load`` raised (the cell becomes empty, so the error is
                reported once).
        """
        if not self.resolved:
            return  # a checkpoint's spec: the runtime's own runner loads the cell
        if cell.runner is None:
            data = cell.state
            cell.runner = self
            try:
                cell.state = self.load(data)
            except CheckpointError as exc:
                cell.state = self.empty()
                raise FeatureValueError(str(exc), field=self.field) from exc
        elif cell.runner is not self:
            # a state carried over from an equal definition (a restore into a new runtime)
            cell.runner = self

    def step(self, cell: CustomCell, value: Any) -> None:
        """Update a keyed cell with one value (the keyed kernel's update)."""
        state = cell.state if cell.runner is self else self.state_of(cell)
        cell.state = self.update(state, value)

    def read(self, cell: CustomCell) -> Any:
        """A keyed cell's value (the keyed kernel's value)."""
        return self.value(cell.state if cell.runner is self else self.state_of(cell))

    def merged(self, a: CustomCell, b: CustomCell) -> CustomCell:
        """A new cell of two keyed cells combined, neither changed.

        Raises:
            FeaturistError: the aggregate has no merge.
        """
        if self._merge is None:
            raise FeaturistError(f"custom feature {self.name!r}: {self.label} has no merge()")
        state = self.merge(self.empty(), self.state_of(a))
        return CustomCell(self, self.merge(state, self.state_of(b)))

    def empty_value(self) -> Any:
        """The value of an empty state (None if computing it fails)."""
        try:
            return self.value(self.empty())
        except FeaturistError:
            return None
