"""The event model: decoding payloads and reading each event's key and event time.

Events arrive as mappings (a ``dict`` is the fast path), ``msgspec.Struct`` instances, or raw
JSON / MessagePack bytes. Internally an event is a ``dict`` and travels as a tuple
``(key, time_ms, event)``: the routing key, the event time in integer milliseconds since the
epoch, and the fields.

Event time may be an ``int`` or ``float`` in the feature set's ``time_unit``, a ``datetime``
(naive means UTC) or an ISO-8601 string. Keys are ``str``, ``int`` or ``bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn

import msgspec

from ._exceptions import InvalidEvent

__all__ = ["EventReader"]

_json = msgspec.json.Decoder()
_msgpack = msgspec.msgpack.Decoder()

#: numeric times in each unit, as (multiply, divide) to milliseconds, exact for ints
_UNIT_TO_MS = {"ms": (1, 1), "s": (1000, 1), "us": (1, 1000), "ns": (1, 1_000_000)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

#: event times outside these bounds (years 1970..2300) are rejected as unusable
MIN_TIME_MS = 0
MAX_TIME_MS = 10_413_792_000_000

PayloadFormat = Literal["json", "msgpack"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class EventReader:
    """Turns payloads into ``(key, time_ms, event)``. Internal.

    Args:
        key: the key field.
        time: the event-time field.
        time_unit: unit of numeric event times.
        payload_format: how ``bytes`` payloads are decoded.
    """

    def __init__(
        self, *, key: str, time: str, time_unit: str = "ms", payload_format: PayloadFormat = "json"
    ) -> None:
        if payload_format not in ("json", "msgpack"):
            raise ValueError(f"payload_format must be 'json' or 'msgpack', got {payload_format!r}")
        self.key = key
        self.time = time
        self.time_unit = time_unit
        self._multiply, self._divide = _UNIT_TO_MS[time_unit]
        self._ms = time_unit == "ms"
        self._decoder = _json if payload_format == "json" else _msgpack
        self.payload_format = payload_format

    def read(self, payload: Any) -> tuple[Any, int, dict[str, Any]]:
        """Return ``(key, time_ms, event)``.

        Raises:
            InvalidEvent: naming the field at fault, with the payload attached.
        """
        event = self.to_dict(payload)
        key = event.get(self.key)
        cls = key.__class__
        if cls is not str and cls is not int and cls is not bytes:
            key = self._plain_key(key, event, payload)
        ts = event.get(self.time)
        if ts.__class__ is int and self._ms and MIN_TIME_MS <= ts <= MAX_TIME_MS:
            return key, ts, event
        return key, self.time_ms(ts, payload), event

    def to_dict(self, payload: Any) -> dict[str, Any]:
        if payload.__class__ is dict:
            return payload
        if isinstance(payload, (bytes, bytearray, memoryview)):
            try:
                decoded = self._decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise InvalidEvent(
                    f"cannot decode {self.payload_format} payload: {exc}", payload=payload
                ) from exc
            if not isinstance(decoded, dict):
                kind = type(decoded).__name__
                raise InvalidEvent(
                    f"a {self.payload_format} event must be an object, got {kind}",
                    payload=payload,
                )
            return decoded
        if isinstance(payload, msgspec.Struct):
            return msgspec.structs.asdict(payload)
        if isinstance(payload, Mapping):
            return dict(payload)
        raise InvalidEvent(
            "an event must be a mapping, a msgspec.Struct, or JSON/MessagePack bytes, "
            f"got {type(payload).__name__}",
            payload=payload,
        )

    def _plain_key(self, key: Any, event: Mapping[str, Any], payload: Any) -> Any:
        """A key of a subclass of str, int or bytes (an enum member, say) as its plain value."""
        if isinstance(key, str):
            return str.__str__(key)
        if isinstance(key, int) and not isinstance(key, bool):
            return int(key)
        if isinstance(key, bytes):
            return bytes(key)
        self._bad_key(key, event, payload)

    def _bad_key(self, key: Any, event: Mapping[str, Any], payload: Any) -> NoReturn:
        if key is None:
            reason = "is missing" if self.key not in event else "is null"
        else:
            reason = f"must be a str, int or bytes, got {type(key).__name__} {_short(key)}"
        raise InvalidEvent(f"key field {self.key!r} {reason}", field=self.key, payload=payload)

    def time_ms(self, value: Any, payload: Any) -> int:
        field = self.time
        if value is None:
            raise InvalidEvent(
                f"time field {field!r} is missing or null", field=field, payload=payload
            )
        if value.__class__ is bool:
            raise InvalidEvent(
                f"time field {field!r} must be a time, got bool", field=field, payload=payload
            )
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidEvent(
                    f"time field {field!r} is {value!r}: not a finite number",
                    field=field,
                    payload=payload,
                )
            if isinstance(value, int):
                ms = value * self._multiply // self._divide
            else:
                # round to the microsecond first, as datetime does: 1082228670.37 s is
                # 1082228670370 ms, though 1082228670.37 * 1000 is 1082228670369.9999
                ms = math.floor(round(value * self._multiply / self._divide * 1000) / 1000)
        elif isinstance(value, datetime):
            ms = _datetime_ms(value)
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidEvent(
                    f"time field {field!r} is not an ISO-8601 time: {_short(value)}",
                    field=field,
                    payload=payload,
                ) from None
            ms = _datetime_ms(parsed)
        else:
            raise InvalidEvent(
                f"time field {field!r} must be a number ({self.time_unit}), a datetime or an "
                f"ISO-8601 string, got {type(value).__name__}",
                field=field,
                payload=payload,
            )
        if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
            raise InvalidEvent(
                f"time field {field!r} is out of range (1970..2300): {_short(value)} "
                f"({self.time_unit})",
                field=field,
                payload=payload,
            )
        return ms


def _datetime_ms(value: datetime) -> int:
    """Milliseconds since the epoch, exact (integer arithmetic; naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_MS
