"""Distinct counting: an exact set up to a limit, then a HyperLogLog sketch.

The sketch is the classic HyperLogLog (Flajolet et al., 2007) with the small-range correction
(linear counting), ``2 ** precision`` one-byte registers in a ``bytearray``, and a 64-bit
BLAKE2b hash of the value's ``repr``: stable across processes, unlike the builtin ``hash()``.
Relative standard error is about ``1.04 / sqrt(2 ** precision)`` (3.3 % at precision 10).
Two sketches of the same precision merge by taking the register-wise maximum.
"""

from __future__ import annotations

import math
from hashlib import blake2b
from typing import Any

__all__ = ["distinct_add", "distinct_merge", "distinct_value", "hll_add", "hll_estimate", "new_hll"]


def _alpha(m: int) -> float:
    if m == 16:
        return 0.673
    if m == 32:
        return 0.697
    if m == 64:
        return 0.709
    return 0.7213 / (1 + 1.079 / m)


_INVERSE_POWERS = [2.0**-i for i in range(66)]


def _hash64(value: Any) -> int:
    """A stable 64-bit hash; values that are equal in Python (``1 == 1.0 == True``) hash alike,
    as they count once in the exact set."""
    if isinstance(value, (bool, int)) or (isinstance(value, float) and value.is_integer()):
        value = int(value)
        data = b"i" + str(value).encode("ascii")
        return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")
    if isinstance(value, str):
        data = b"s" + value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bytes):
        data = b"b" + value
    else:
        data = b"r" + repr(value).encode("utf-8", "surrogatepass")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def new_hll(precision: int) -> bytearray:
    """An empty sketch: ``2 ** precision`` zeroed registers."""
    return bytearray(1 << precision)


def hll_add(registers: bytearray, value: Any) -> None:
    precision = (len(registers) - 1).bit_length()
    h = _hash64(value)
    index = h & (len(registers) - 1)
    rest = h >> precision
    width = 64 - precision
    rank = width - rest.bit_length() + 1 if rest else width + 1
    if rank > registers[index]:
        registers[index] = rank


def hll_estimate(registers: bytearray) -> int:
    m = len(registers)
    inverse_sum = math.fsum(map(_INVERSE_POWERS.__getitem__, registers))
    zeros = registers.count(0)
    estimate = _alpha(m) * m * m / inverse_sum
    if estimate <= 2.5 * m and zeros:
        estimate = m * math.log(m / zeros)
    return round(estimate)


def distinct_add(state: set[Any] | bytearray | None, value: Any, limit: int, precision: int) -> Any:
    """Add ``value`` and return the (possibly new) state: a set, or a sketch past ``limit``.

    Raises ``TypeError`` for an unhashable value, leaving the state unchanged.
    """
    if state is None:
        return {value}
    if isinstance(state, set):
        state.add(value)
        if len(state) > limit:
            sketch = new_hll(precision)
            for item in state:
                hll_add(sketch, item)
            return sketch
        return state
    hash(value)
    hll_add(state, value)
    return state


def distinct_value(state: set[Any] | bytearray | None) -> int:
    if state is None:
        return 0
    if isinstance(state, set):
        return len(state)
    return hll_estimate(state)


def distinct_merge(
    a: set[Any] | bytearray | None, b: set[Any] | bytearray | None, limit: int, precision: int
) -> Any:
    """Merge two states into a new one (inputs are not modified)."""
    if a is None:
        return None if b is None else distinct_merge(b, None, limit, precision)
    if b is None:
        return set(a) if isinstance(a, set) else bytearray(a)
    if isinstance(a, set) and isinstance(b, set):
        union = a | b
        if len(union) <= limit:
            return union
        sketch = new_hll(precision)
        for item in union:
            hll_add(sketch, item)
        return sketch
    sketch = bytearray(a) if isinstance(a, bytearray) else new_hll(precision)
    if isinstance(a, set):
        for item in a:
            hll_add(sketch, item)
    if isinstance(b, set):
        for item in b:
            hll_add(sketch, item)
    else:
        for i, r in enumerate(b):
            if r > sketch[i]:
                sketch[i] = r
    return sketch
