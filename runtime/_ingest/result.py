"""What ``ingest(..., explain=True)`` and ``ingest_many(..., explain=True)`` return: how many
events were accepted and, for each one refused, its place in the call and the reason, so that a
service can answer a bad request (HTTP 422) without reading dead letters."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import msgspec

from .._exceptions import InvalidEvent
from .events import EventReader

__all__ = ["IngestResult", "Rejection", "rejections_of"]


class Rejection(msgspec.Struct, frozen=True):
    """An event ingest refused (it is also in ``rt.dead_letters``, as every refused event)."""

    #: its place among the events of the call (0 for ``ingest``)
    index: int
    #: the event field at fault (the key, the time, a value state keeps), or None when the
    #: payload itself could not be decoded
    field: str | None
    #: why, as dead letters give it: ``"time field 'ts' is missing or null"``
    reason: str


class IngestResult(msgspec.Struct, frozen=True):
    """The events of one ``ingest``/``ingest_many`` call accepted, and those refused."""

    #: how many events were accepted
    accepted: int
    #: the events refused, in the order of the call
    rejections: tuple[Rejection, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no event was refused."""
        return not self.rejections


def rejections_of(
    reader: EventReader, events: Sequence[Any], tags: int | Sequence[int]
) -> list[Rejection]:
    """Why ingest would refuse each of ``events`` (of stream ``tags``, or ``tags[i]`` for
    ``events[i]``) that it would refuse: each is read as ingest reads it, and nothing is
    recorded (ingest, which reads the events again, records the refused ones)."""
    read = reader.read
    found: list[Rejection] = []
    streams = repeat(tags) if isinstance(tags, int) else tags
    for index, (event, tag) in enumerate(zip(events, streams)):  # noqa: B905 (repeat is endless)
        try:
            read(event, tag=tag)
        except InvalidEvent as error:
            found.append(Rejection(index, error.field, str(error)))
    return found
