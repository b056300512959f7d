"""Event-time windows in feature specs: ``tumbling``, ``hopping``, ``sliding`` and ``session``.

A feature with a ``window`` is computed over the key's events in that window instead of over
all of them. The semantics (when a window opens, closes and emits) are in ``docs/windows.md``.
Each window is a ``msgspec`` struct tagged by ``type``::

    window = { type = "sliding", size = "10m" }
    window = { type = "hopping", size = "1h", hop = "5m" }
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

import msgspec

from .._duration import Duration, format_duration, parse_duration
from .checks import SpecMeta, check_duration, fail

__all__ = [
    "EMIT_MODES",
    "LATE_POLICIES",
    "WINDOW_TYPES",
    "EmitMode",
    "Hopping",
    "LatePolicy",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
]

LatePolicy: TypeAlias = Literal["drop", "side_output", "update"]
#: What happens to an event later than ``allowed_lateness``.
LATE_POLICIES: tuple[str, ...] = get_args(LatePolicy)
EmitMode: TypeAlias = Literal["update", "close"]
#: When windowed features are emitted: after every event, or when a window closes.
EMIT_MODES: tuple[str, ...] = get_args(EmitMode)


class _Window(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="type",
    metaclass=SpecMeta,
):
    @property
    def type_name(self) -> str:
        """The window's ``type`` tag, such as ``"sliding"``."""
        return str(type(self).__struct_config__.tag)

    def describe(self) -> str:
        """The window as text, such as ``sliding 10m``."""
        raise NotImplementedError


class _SizedWindow(_Window, frozen=True):
    """A window of one ``size`` (a duration > 0)."""

    size: Duration

    def __post_init__(self) -> None:
        check_duration(self, "size", self.size, positive=True)

    @property
    def size_ms(self) -> int:
        return parse_duration(self.size, field="size")

    def describe(self) -> str:
        return f"{self.type_name} {format_duration(self.size_ms)}"


class Tumbling(_SizedWindow, tag="tumbling", frozen=True):
    """Fixed windows ``[k * size, (k + 1) * size)`` aligned to the epoch, one after another.

    Each event belongs to exactly one window.
    """

    @property
    def hop_ms(self) -> int:
        """Windows start every ``size``: a tumbling window is a hopping one with hop = size."""
        return self.size_ms


class Hopping(_Window, tag="hopping", frozen=True):
    """Windows of ``size`` that start every ``hop``, aligned to the epoch: they overlap, and each
    event belongs to ``size / hop`` of them. ``hop`` must divide ``size``.

    The windows share panes of ``hop``: an event updates one pane, and a window's value merges
    its ``size / hop`` panes.
    """

    size: Duration
    hop: Duration

    def __post_init__(self) -> None:
        size = check_duration(self, "size", self.size, positive=True)
        hop = check_duration(self, "hop", self.hop, positive=True)
        if hop > size:
            fail(self, "hop", f"must be <= size ({self.size!r}), got {self.hop!r}")
        if size % hop:
            fail(self, "hop", f"must divide size ({self.size!r}) evenly, got {self.hop!r}")
        if size // hop > 1000:
            fail(self, "hop", f"size / hop must be <= 1000 panes, got {size // hop}")

    @property
    def size_ms(self) -> int:
        return parse_duration(self.size, field="size")

    @property
    def hop_ms(self) -> int:
        return parse_duration(self.hop, field="hop")

    def describe(self) -> str:
        return f"hopping {format_duration(self.size_ms)} every {format_duration(self.hop_ms)}"


class Sliding(_SizedWindow, tag="sliding", frozen=True):
    """A continuous window that ends at the key's newest event: the events with time in
    ``(T - size, T]``, where ``T`` is the greatest event time of the key."""


class Session(_Window, tag="session", frozen=True):
    """Bursts of activity: events less than ``gap`` apart fall in one session, which covers
    ``[first event, last event + gap)``. A late event can merge two sessions."""

    gap: Duration

    def __post_init__(self) -> None:
        check_duration(self, "gap", self.gap, positive=True)

    @property
    def gap_ms(self) -> int:
        return parse_duration(self.gap, field="gap")

    def describe(self) -> str:
        return f"session gap {format_duration(self.gap_ms)}"


#: Any window: the tagged union that a feature's ``window`` decodes to.
Window: TypeAlias = Tumbling | Hopping | Sliding | Session

#: Each window class by its ``type`` tag.
WINDOW_TYPES: dict[str, type[_Window]] = {
    str(cls.__struct_config__.tag): cls for cls in get_args(Window)
}
