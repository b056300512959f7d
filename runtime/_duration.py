"""Durations in feature specs: ``500``, ``"250ms"``, ``"10s"``, ``"1h30m"``, ``"1.5s"``.

A duration is an integer number of milliseconds, or a string of one or more ``<number><unit>``
parts with no whitespace. The units are ``d``, ``h``, ``m``, ``s`` and ``ms``; each appears at
most once and from the largest to the smallest (``"1h30m"``, not ``"30m1h"``). A number may have a
fractional part (``"1.5s"``) as long as the whole duration is a whole number of milliseconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import TypeAlias

from ._exceptions import SpecError

__all__ = ["MAX_DURATION_MS", "Duration", "format_duration", "parse_duration"]

#: A duration as written in a spec: milliseconds, or a string such as ``"10s"``.
Duration: TypeAlias = int | str

#: The largest duration accepted, in milliseconds: what a signed 64-bit integer holds.
MAX_DURATION_MS = 2**63 - 1

# Largest unit first: the order in which parts must appear and in which they are formatted.
_UNITS: tuple[tuple[str, int], ...] = (
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)
_UNIT_MS = dict(_UNITS)
_UNIT_RANK = {unit: rank for rank, (unit, _) in enumerate(_UNITS)}
# "ms" before "m" and "s" so that the alternation takes the longest unit.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_EXAMPLES = "use e.g. 500ms, 10s, 5m, 2h, 1d"


def parse_duration(value: int | float | str, *, field: str) -> int:
    """Return a duration in milliseconds.

    Args:
        value: a non-negative whole number of milliseconds (an ``int``, or a ``float`` with no
            fractional part), or a duration string such as ``"250ms"``, ``"1h30m"`` or ``"1.5s"``.
        field: the name of the spec field being parsed; error messages start with it.

    Raises:
        SpecError: the value is not a duration, is negative, is not a whole number of
            milliseconds, or exceeds ``MAX_DURATION_MS``. For example
            ``half_life: not a duration: '10 parsecs' (use e.g. 500ms, 10s, 5m, 2h, 1d)``.
    """
    if isinstance(value, bool):
        raise SpecError(f"{field}: not a duration: {value!r} ({_EXAMPLES})")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise SpecError(f"{field}: not a duration: {value!r} ({_EXAMPLES})")
        if not value.is_integer():
            raise SpecError(f"{field}: not a whole number of milliseconds: {value!r}")
        ms = int(value)
    elif isinstance(value, str):
        ms = _parse_string(value, field)
    else:
        raise SpecError(f"{field}: not a duration: {value!r} ({_EXAMPLES})")
    if ms < 0:
        raise SpecError(f"{field}: must be >= 0, got {value!r}")
    if ms > MAX_DURATION_MS:
        raise SpecError(f"{field}: too long: {value!r} (at most {MAX_DURATION_MS} ms)")
    return ms


def _parse_string(text: str, field: str) -> int:
    total = Decimal(0)
    position = 0
    last_rank = -1
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise SpecError(f"{field}: not a duration: {text!r} ({_EXAMPLES})")
        number, unit = match.groups()
        rank = _UNIT_RANK[unit]
        if rank <= last_rank:
            raise SpecError(
                f"{field}: not a duration: {text!r} (units go from largest to smallest, "
                f"each at most once: d, h, m, s, ms)"
            )
        last_rank = rank
        total += Decimal(number) * _UNIT_MS[unit]
        position = match.end()
    if position == 0:
        raise SpecError(f"{field}: not a duration: {text!r} ({_EXAMPLES})")
    if total != total.to_integral_value():
        raise SpecError(f"{field}: not a whole number of milliseconds: {text!r}")
    return int(total)


def format_duration(ms: int) -> str:
    """Return a duration in its compact form: ``90000`` gives ``"1m30s"``, ``0`` gives ``"0ms"``.

    ``parse_duration(format_duration(ms), field=...) == ms`` for every valid duration.

    Raises:
        ValueError: ``ms`` is negative.
    """
    if ms < 0:
        raise ValueError(f"a duration cannot be negative, got {ms}")
    if ms == 0:
        return "0ms"
    parts: list[str] = []
    rest = ms
    for unit, size in _UNITS:
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
