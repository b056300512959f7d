"""User-defined aggregates the tests run, each with a brute-force oracle over the list of values
it saw (``ORACLES``). Defined in an importable module so that worker processes, which receive
the feature set pickled, can import them."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from river import stats

from runtime import Aggregate


class SumAgg(Aggregate[int, int]):
    """The built-in ``sum``, again: an int state, with merge and remove."""

    numeric = True

    def empty(self) -> Any:
        return 0

    def update(self, state: Any, value: Any) -> Any:
        return state + value

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def remove(self, state: Any, value: Any) -> Any:
        return state - value

    def value(self, state: Any) -> Any:
        return state


class SumOfSquares(Aggregate[int, int]):
    """The sum of squares, with merge and remove (exact over ints)."""

    numeric = True

    def empty(self) -> Any:
        return 0

    def update(self, state: Any, value: Any) -> Any:
        return state + value * value

    def merge(self, a: Any, b: Any) -> Any:
        return a + b

    def remove(self, state: Any, value: Any) -> Any:
        return state - value * value

    def value(self, state: Any) -> Any:
        return state


class Spread:
    """Max minus min: a tuple state (or None), with merge but no remove. A plain class: the
    protocol is structural."""

    numeric = True

    def empty(self) -> Any:
        return None

    def update(self, state: Any, value: Any) -> Any:
        if state is None:
            return (value, value)
        low, high = state
        return (min(low, value), max(high, value))

    def merge(self, a: Any, b: Any) -> Any:
        if a is None:
            return b
        if b is None:
            return a
        return (min(a[0], b[0]), max(a[1], b[1]))

    def value(self, state: Any) -> Any:
        return None if state is None else state[1] - state[0]


class DistinctList(Aggregate[list[Any], int]):
    """The number of distinct values, of any type: a mutable list state changed in place,
    with neither merge nor remove (windows keep values and fold them). Refuses the value
    ``"bad"`` (an error of the feature) before changing anything."""

    def empty(self) -> Any:
        return []

    def update(self, state: Any, value: Any) -> Any:
        if value == "bad":
            raise ValueError("bad value")
        if value not in state:
            state.append(value)
        return state

    def value(self, state: Any) -> Any:
        return len(state)


class RiverVar(Aggregate[stats.Var, float]):
    """River's ``stats.Var`` (sample variance): a mutable object updated in place, merged
    with ``+=`` (on a copy: ``merge`` never changes ``b``) and reverted on removal. A checkpoint
    holds it pickled (trusted checkpoints only)."""

    numeric = True

    def empty(self) -> stats.Var:
        return stats.Var(ddof=1)

    def update(self, state: stats.Var, value: Any) -> stats.Var:
        state.update(value)
        return state

    def remove(self, state: stats.Var, value: Any) -> stats.Var:
        state.revert(value)
        return state

    def merge(self, a: stats.Var, b: stats.Var) -> stats.Var:
        a += b
        return a

    def value(self, state: stats.Var) -> float | None:
        return state.get() if state.mean.n > 1 else None

    def dump(self, state: stats.Var) -> bytes:
        return pickle.dumps(state)

    def load(self, data: bytes) -> stats.Var:
        return pickle.loads(data)  # the application's own checkpoints: trusted


def _spread(values: list[Any]) -> Any:
    return max(values) - min(values) if values else None


def _variance(values: list[Any]) -> Any:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return sum((v - mean) ** 2 for v in values) / (n - 1)


#: each aggregate class's value over the list of values it saw, computed from scratch
ORACLES: dict[type, Callable[[list[Any]], Any]] = {
    SumAgg: sum,
    SumOfSquares: lambda values: sum(v * v for v in values),
    Spread: _spread,
    DistinctList: lambda values: len(set(values)),
    RiverVar: _variance,
}
