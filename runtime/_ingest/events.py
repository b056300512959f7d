"""The event model: decoding payloads and reading each event's key and event time.

Events arrive as mappings (a ``dict`` is the fast path), ``msgspec.Struct`` instances, or raw
JSON / MessagePack bytes. Internally an event is a ``dict`` and travels as a tuple
``(key, time_ms, event)``: the routing key, the event time in integer milliseconds since the
epoch, and the fields.

Event time may be an ``int`` or ``float`` in the feature set's ``time_unit``, a ``datetime``
(naive means UTC) or an ISO-8601 string. Keys are ``str``, ``int`` or ``bytes``.

What is refused (``InvalidEvent``, naming the field), and why:

- a payload that is not an object, or bytes that do not decode (malformed, nested deeper than
  the decoder allows), or bytes longer than ``max_payload_bytes`` (1 MiB by default, Kafka's
  default largest message): the limit is checked before decoding, so it bounds the decoder's
  work and every field of an event that comes as bytes, the form untrusted input takes;
- a key that is missing, null, of another type, longer than ``max_key_length`` (4096 by
  default: characters of a ``str``, bytes of ``bytes``, decimal digits of an ``int``), or a
  ``str`` that is not valid Unicode (a lone surrogate cannot be encoded, so cannot be routed or
  saved). A key is held by every feature group and the router's cache: a bound keeps one bad
  producer from filling memory, and 4096 passes URLs, e-mails, UUIDs and composite keys;
- a time that is missing, null, a bool, NaN or infinite, not a time, before 1970 or after 2300
  (refused whatever the limits), more than ``max_future`` ahead of the wall clock (1 hour by
  default), or more than ``max_past`` behind it (off by default). A far-future time would
  set its key's watermark ahead, and every later event of the key would be late; an hour is far
  more than clock skew between hosts. The past is open by default because a replay of history is
  all in the past, and an old event is merely late. The bounds follow the real wall clock
  (``time.time``), not ``FeatureRuntime(clock=...)``, which tests and replays set at will.

Keys that are ints must fit in 64 bits (``-2**63`` to ``2**64 - 1``): Python hashes an int
modulo ``2**61 - 1``, so unbounded int keys could be chosen to collide in every dict that holds
keys (32,000 such keys took 10 s to ingest instead of 0.08 s); within 64 bits at most a dozen
ints share a hash.

Field values are checked only where state keeps them as they are (:meth:`EventReader.screen`):
the fields of ``first``, ``last``, ``distinct_count`` and ``top_k`` features (and of ``custom``
features that are not ``numeric``: their aggregate may keep the value), and every field of
the events of a stream a join or a sequence pattern buffers whole. Such a value must be one a
checkpoint can hold: None, bool, int, float, str, bytes, lists, tuples, dicts, sets, datetimes,
times, timedeltas, decimals and UUIDs, nested at most 64 deep. A subclass of ``str``, ``int``,
``float`` or ``bytes`` (an enum member of a ``StrEnum``, a ``numpy.float64``) is taken as its
plain value, in a copy of the event; anything else (a MessagePack extension, a plain ``Enum``,
an object of the application's) is refused, naming the field: kept in state, it would make
every later checkpoint of its key fail. Other values are not checked here: a feature that
cannot use a value (a string, NaN, an infinity) reports the error for that event only. An
event given as a dict is the application's own object, held by reference and not copied; its
size is the application's to bound.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import sys
import time as _time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import msgspec

from .._duration import format_duration
from .._exceptions import InvalidEvent
from .._spec.computed import Computed, computer
from .._spec.limits import (
    DEFAULT_MAX_FUTURE_MS,
    DEFAULT_MAX_KEY_LENGTH,
    DEFAULT_MAX_PAYLOAD_BYTES,
)

if TYPE_CHECKING:
    from .._spec.feature_set import FeatureSet

__all__ = [
    "INT_KEY_MAX",
    "INT_KEY_MIN",
    "MAX_VALUE_DEPTH",
    "PLAIN_VALUES",
    "EventReader",
    "Keeps",
    "keeps_of",
    "value_problem",
]

_json = msgspec.json.Decoder()
_msgpack = msgspec.msgpack.Decoder()
_BYTES = {bytes}
_DICTS = {dict}

#: numeric times in each unit, as (multiply, divide) to milliseconds, exact for ints
_UNIT_TO_MS = {"ms": (1, 1), "s": (1000, 1), "us": (1, 1000), "ns": (1, 1_000_000)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

#: event times outside these bounds (years 1970..2300) are rejected as unusable
MIN_TIME_MS = 0
MAX_TIME_MS = 10_413_792_000_000

PayloadFormat = Literal["json", "msgpack"]

#: int keys lie in ``[INT_KEY_MIN, INT_KEY_MAX]``: 64 bits, signed or not
INT_KEY_MIN, INT_KEY_MAX = -(2**63), 2**64 - 1

#: values that state keeps as they are, with no further look
_PLAIN = PLAIN_VALUES = frozenset({type(None), bool, int, float, str, bytes})
#: containers whose items are looked at in turn
_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})
#: other values a checkpoint holds
_OTHER_VALUES = frozenset(
    {datetime, _dt.date, _dt.time, timedelta, decimal.Decimal, uuid.UUID, bytearray}
)
#: the deepest nesting of containers in a value that state keeps (the checkpoint codec's own
#: bound, ``MAX_DEPTH``, is far above it, leaving room for the state around the value)
MAX_VALUE_DEPTH = 64
#: what a field that state keeps may hold, for messages
_KEPT_TYPES = (
    "None, bool, int, float, str, bytes, lists, tuples, dicts, sets, datetimes, times, "
    "timedeltas, decimals and UUIDs"
)
#: features whose state keeps the values of their field as they are
_KEEPING = frozenset({"first", "last", "distinct_count", "top_k"})


class Keeps:
    """What state keeps of the events of one stream: the fields it keeps as they are, and
    whether it buffers whole events (a join's side, a sequence pattern's pending events)."""

    __slots__ = ("fields", "whole")

    def __init__(self, fields: tuple[str, ...] = (), whole: bool = False) -> None:
        self.fields = fields
        self.whole = whole

    def __bool__(self) -> bool:
        return bool(self.fields) or self.whole

    def __repr__(self) -> str:
        return f"Keeps(fields={self.fields!r}, whole={self.whole!r})"


def keeps_of(feature_set: FeatureSet) -> tuple[Keeps, ...]:
    """Per ingested stream (in ``feature_set.stream_names`` order), what state keeps of its
    events. Features of a join's stream read the join's records, made of the events of its
    two sides, which are kept whole already."""
    names = feature_set.stream_names
    fields: dict[str, dict[str, None]] = {name: {} for name in names}
    whole: set[str] = set()
    for join in feature_set.joins:
        whole.update((join.left, join.right))
    for feature in feature_set.features:
        stream = feature_set.stream_of(feature)
        if stream not in fields:
            continue
        if feature.type_name == "sequence":
            whole.add(stream)
        elif feature.type_name in _KEEPING or (
            # a user-defined aggregate may keep any value it is given in its state
            feature.type_name == "custom" and not getattr(feature, "takes_numbers", True)
        ):
            fields[stream][getattr(feature, "field")] = None  # noqa: B009 (not every feature has one)
    return tuple(Keeps(tuple(fields[name]), name in whole) for name in names)


def value_problem(value: Any) -> str | None:
    """Why state cannot keep ``value`` (see the module docstring), or None. Walks nested
    containers without recursion, at most :data:`MAX_VALUE_DEPTH` deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        cls = item.__class__
        if cls in _PLAIN or cls in _OTHER_VALUES:
            continue
        if cls not in _CONTAINERS:
            kind = f"{cls.__module__}.{cls.__qualname__}"
            if cls.__module__ == "builtins":
                kind = cls.__qualname__
            where = "" if depth == 0 else " inside it"
            return (
                f"holds a {kind}{where}, which feature state cannot keep "
                f"(it may hold {_KEPT_TYPES})"
            )
        if depth >= MAX_VALUE_DEPTH:
            return f"is nested more than {MAX_VALUE_DEPTH} deep, which feature state cannot keep"
        if cls is dict:
            for key, inner in item.items():
                push((key, depth + 1))
                push((inner, depth + 1))
        else:
            for inner in item:
                push((inner, depth + 1))
    return None


def _plain(value: Any) -> Any:
    """A subclass of str, int, float or bytes as its plain value; None for anything else."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return None  # never a subclass: bool cannot be subclassed
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return bytes(value)
    return None


def _short(value: Any) -> str:
    """A short repr for a message: safe for huge ints and strings, and for a failing repr."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an int of {value.bit_length()} bits"
    if isinstance(value, (str, bytes, bytearray)) and len(value) > 80:
        value = value[:80]
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__} (its repr failed)"
    return text if len(text) <= 80 else text[:77] + "..."


class EventReader:
    """Turns payloads into ``(key, time_ms, event)``, refusing what the module docstring lists.
    Internal.

    Args:
        key: the key field.
        time: the event-time field.
        time_unit: unit of numeric event times.
        payload_format: how ``bytes`` payloads are decoded.
        max_future_ms: how far ahead of the wall clock an event time may be, or None (off).
        max_past_ms: how far behind the wall clock an event time may be, or None (off).
        max_key_length: the longest key: characters of a ``str``, bytes of ``bytes``, decimal
            digits of an ``int`` (ints are also held to 64 bits: see the module docstring).
        max_payload_bytes: the largest ``bytes`` payload.
        clock: the wall clock, in seconds (tests pass a fake one).
        keeps: per stream index, what state keeps of its events (:func:`keeps_of`); the
            values kept are checked (:meth:`screen`). By default nothing is.
        computed: the feature set's computed fields, set in a copy of each event once its key
            and time are read (:meth:`read`; the router computes those of its fast path in a
            pass of its own). By default there are none, at no cost.
    """

    def __init__(
        self,
        *,
        key: str,
        time: str,
        time_unit: str = "ms",
        payload_format: PayloadFormat = "json",
        max_future_ms: int | None = DEFAULT_MAX_FUTURE_MS,
        max_past_ms: int | None = None,
        max_key_length: int = DEFAULT_MAX_KEY_LENGTH,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        clock: Callable[[], float] = _time.time,
        keeps: tuple[Keeps, ...] = (),
        computed: tuple[Computed, ...] = (),
    ) -> None:
        if payload_format not in ("json", "msgpack"):
            raise ValueError(f"payload_format must be 'json' or 'msgpack', got {payload_format!r}")
        for name, limit in (
            ("max_future_ms", max_future_ms),
            ("max_past_ms", max_past_ms),
            ("max_key_length", max_key_length),
            ("max_payload_bytes", max_payload_bytes),
        ):
            if limit is None and name.endswith("_ms"):
                continue
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"{name} must be an int >= 1, got {limit!r}")
        self.key = key
        self.time = time
        self.time_unit = time_unit
        self._multiply, self._divide = _UNIT_TO_MS[time_unit]
        self._ms = time_unit == "ms"
        self._decoder = _json if payload_format == "json" else _msgpack
        self.payload_format = payload_format
        self.max_future_ms = max_future_ms
        self.max_past_ms = max_past_ms
        self.max_key_length = max_key_length
        self.max_payload_bytes = max_payload_bytes
        self._clock = clock
        #: the upper bound last computed (see ``read``)
        self._high = MAX_TIME_MS
        self.bounds()
        digits = sys.get_int_max_str_digits()
        self._int_digits = min(max_key_length, digits) if digits else max_key_length
        bound = 10**self._int_digits
        #: int keys lie in ``[int_low, int_high]``: 64 bits, and max_key_length digits
        self.int_low = max(INT_KEY_MIN, 1 - bound)
        self.int_high = min(INT_KEY_MAX, bound - 1)
        #: per stream index, what state keeps of its events; ``keeping``: whether any
        self.keeps: tuple[Keeps, ...] = ()
        self.keeping = False
        self.kept_fields: tuple[str, ...] = ()
        self.kept_whole = False
        self.keep(keeps)
        #: whether events get computed fields, and the function that sets them
        self.computing = bool(computed)
        self.compute = computer(computed)

    @classmethod
    def of(cls, feature_set: FeatureSet, *, payload_format: PayloadFormat = "json") -> EventReader:
        """The reader of a feature set's events, with its limits (``max_future`` and the
        others; a duration of 0 turns a time bound off, as None does)."""
        return cls(
            key=feature_set.key,
            time=feature_set.time,
            time_unit=feature_set.time_unit,
            payload_format=payload_format,
            max_future_ms=feature_set.duration_ms("max_future") or None,
            max_past_ms=feature_set.duration_ms("max_past") or None,
            max_key_length=feature_set.max_key_length,
            max_payload_bytes=feature_set.max_payload_bytes,
            keeps=keeps_of(feature_set),
            computed=tuple(feature_set.computed),
        )

    def keep(self, keeps: tuple[Keeps, ...]) -> None:
        """Check from now on the values state keeps per stream (``keeps_of`` of the feature
        set, again after features are registered)."""
        self.keeps = tuple(keeps)
        self.keeping = any(self.keeps)
        #: the fields kept in any stream, and whether any stream is kept whole (the router
        #: looks at them all in one pass first)
        self.kept_fields = tuple(dict.fromkeys(f for keep in self.keeps for f in keep.fields))
        self.kept_whole = any(keep.whole for keep in self.keeps)

    def screen(self, event: dict[str, Any], tag: int = 0) -> dict[str, Any]:
        """``event`` (of stream ``tag``) if state can keep every value of it that it keeps;
        a copy with plain values for subclasses of ``str``, ``int``, ``float`` and ``bytes``.

        Raises:
            InvalidEvent: a kept value state cannot keep, naming the field.
        """
        if tag >= len(self.keeps):
            return event
        keeps = self.keeps[tag]
        names: Any = event if keeps.whole else keeps.fields
        copy: dict[str, Any] | None = None
        for name in names:
            if keeps.whole and name.__class__ not in _PLAIN:
                problem = value_problem(name)
                if problem is not None:
                    raise InvalidEvent(
                        f"a field name {problem.replace('holds', 'is', 1)}: {_short(name)}",
                        payload=event,
                    )
            value = event.get(name)
            if value.__class__ in _PLAIN:
                continue
            problem = value_problem(value)
            if problem is None:
                continue
            plain = _plain(value)
            if plain is None:
                raise InvalidEvent(f"field {name!r} {problem}", field=name, payload=event)
            if copy is None:
                copy = dict(event)
            copy[name] = plain
        return event if copy is None else copy

    def bounds(self) -> tuple[int, int]:
        """The event times accepted now, ``(low, high)`` in ms, both included.

        Hot loops take them once per batch of events and pass them to :meth:`read`.
        """
        future, past = self.max_future_ms, self.max_past_ms
        if future is None and past is None:
            return MIN_TIME_MS, MAX_TIME_MS
        now = int(self._clock() * 1000)
        high = MAX_TIME_MS if future is None or now + future > MAX_TIME_MS else now + future
        low = MIN_TIME_MS if past is None or now - past < MIN_TIME_MS else now - past
        self._high = high
        return low, high

    def read(
        self, payload: Any, low: int | None = None, high: int = MAX_TIME_MS, tag: int = 0
    ) -> tuple[Any, int, dict[str, Any]]:
        """Return ``(key, time_ms, event)`` of stream ``tag``.

        ``low`` and ``high`` are the time bounds, from :meth:`bounds` (hot loops take them once
        per batch of events); by default the reader finds them. The values state keeps are
        screened (:meth:`screen`).

        Raises:
            InvalidEvent: naming the field at fault, with the payload attached.
        """
        if low is None:
            if self.max_past_ms is None:
                # The upper bound only grows with time: the last one computed accepts nothing
                # it should not, and a time above it is checked against a fresh one before it
                # is refused. This spares a clock read per event.
                low, high = MIN_TIME_MS, self._high
            else:
                low, high = self.bounds()
        event = self.to_dict(payload)
        key = event.get(self.key)
        if key.__class__ is not str or len(key) > self.max_key_length or not key.isascii():
            key = self.check_key(key, event, payload)
        ts = event.get(self.time)
        if ts.__class__ is not int or not self._ms or not low <= ts <= high:
            ts = self.time_ms(ts, payload, low, high)
        if self.computing:
            event = self.compute(event, payload)
        if self.keeping:
            event = self.screen(event, tag)
        return key, ts, event

    def decode_all(self, payloads: list[Any]) -> list[dict[str, Any]] | None:
        """The events of a batch of ``bytes`` payloads, decoded in one pass; None if one of
        them is not ``bytes``, is longer than ``max_payload_bytes`` or does not decode to an
        object: :meth:`read` of each then says which and why."""
        if not payloads or set(map(type, payloads)) != _BYTES:
            return None
        if max(map(len, payloads)) > self.max_payload_bytes:
            return None
        try:
            decoded = list(map(self._decoder.decode, payloads))
        except (msgspec.DecodeError, RecursionError):
            return None
        if set(map(type, decoded)) != _DICTS:
            return None
        return decoded

    def to_dict(self, payload: Any) -> dict[str, Any]:
        if payload.__class__ is dict:
            return payload
        cls = payload.__class__
        if cls is bytes or isinstance(payload, (bytes, bytearray, memoryview)):
            size = payload.nbytes if cls is memoryview else len(payload)
            if size > self.max_payload_bytes:
                raise InvalidEvent(
                    f"the payload is {size} bytes, more than max_payload_bytes "
                    f"({self.max_payload_bytes})",
                    payload=payload,
                )
            try:
                decoded = self._decoder.decode(payload)
            except (msgspec.DecodeError, RecursionError) as exc:
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
            try:
                return dict(payload)
            except Exception as exc:  # the application's own Mapping failed: a bad event
                raise InvalidEvent(
                    f"cannot read the mapping: {type(exc).__name__}: {exc}", payload=payload
                ) from exc
        raise InvalidEvent(
            "an event must be a mapping, a msgspec.Struct, or JSON/MessagePack bytes, "
            f"got {type(payload).__name__}",
            payload=payload,
        )

    def valid_key(self, key: Any) -> bool:
        """Whether ``key``, of exact type ``str``, ``int`` or ``bytes``, is within the limits
        (:meth:`check_key` accepts it as it is, or says why not)."""
        cls = key.__class__
        if cls is str:
            if len(key) > self.max_key_length:
                return False
            if key.isascii():
                return True
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                return False
            return True
        if cls is int:
            return bool(self.int_low <= key <= self.int_high)
        return cls is bytes and len(key) <= self.max_key_length

    def check_key(self, key: Any, event: Mapping[str, Any], payload: Any) -> Any:
        """The key as a plain ``str``, ``int`` or ``bytes`` (a subclass, an enum member say, as
        its plain value), within the limits.

        Raises:
            InvalidEvent: the key is missing, of another type, too long, or not valid Unicode.
        """
        limit = self.max_key_length
        if isinstance(key, str):
            key = str.__str__(key)
            if len(key) > limit:
                self._bad_key(
                    f"is {len(key)} characters long, more than max_key_length ({limit})",
                    key,
                    payload,
                )
            if not key.isascii():
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError as exc:
                    self._bad_key(f"is not valid Unicode text ({exc.reason})", key, payload)
            return key
        if isinstance(key, int) and not isinstance(key, bool):
            key = int(key)
            if not self.int_low <= key <= self.int_high:
                self._bad_key(self.int_key_problem(key), key, payload)
            return key
        if isinstance(key, bytes):
            key = bytes(key)
            if len(key) > limit:
                self._bad_key(
                    f"is {len(key)} bytes long, more than max_key_length ({limit})", key, payload
                )
            return key
        if key is None:
            self._bad_key("is missing" if self.key not in event else "is null", None, payload)
        self._bad_key(f"must be a str, int or bytes, got {type(key).__name__}", key, payload)

    def read_time(self, as_of: Any, clock: Callable[[], float]) -> int | None:
        """The event time (ms) a read is taken as of (``rt.get(key, as_of=...)``): None for
        ``"last_event"``, ``clock()`` (seconds) for ``"now"``, else a time as an event's:
        a number in ``time_unit``, a datetime (naive means UTC) or an ISO-8601 string.

        Raises:
            ValueError: ``as_of`` is not a usable time (out of 1970..2300, not finite).
            TypeError: ``as_of`` is of another type.
        """
        if as_of == "last_event" and isinstance(as_of, str):
            return None
        if as_of == "now" and isinstance(as_of, str):
            return int(clock() * 1000)
        if as_of.__class__ is bool or not isinstance(as_of, int | float | str | datetime):
            raise TypeError(
                f"as_of must be a time ({self.time_unit}, a datetime or an ISO-8601 string), "
                f"'now' or 'last_event', got {type(as_of).__name__}"
            )
        try:
            return self.time_ms(as_of, None)
        except InvalidEvent as exc:
            reason = str(exc).replace(f"time field {self.time!r}", "as_of", 1)
            raise ValueError(reason) from None

    def lookup_key(self, key: Any) -> Any:
        """``key`` for a read of state (``rt.get``): as it is, unless it is an int beyond 64
        bits, which ingest refuses, so no state holds.

        Raises:
            ValueError: an int key beyond 64 bits, naming the key field.
            TypeError: a key that is not a str, int or bytes.
        """
        cls = key.__class__
        if cls is str or isinstance(key, (str, bytes)):
            return key
        if isinstance(key, int) and cls is not bool:  # an int subclass is bounded alike
            if not INT_KEY_MIN <= key <= INT_KEY_MAX:
                value = int(key)
                raise ValueError(
                    f"key field {self.key!r} {self.int_key_problem(value)}: {_short(key)}"
                )
            return key
        raise TypeError(
            f"a key is a str, int or bytes (the value of key field {self.key!r}), got "
            f"{cls.__name__}: {_short(key)}"
        )

    def int_key_problem(self, key: int) -> str:
        """Why the int ``key`` is out of bounds (for a message that names the key field)."""
        if not INT_KEY_MIN <= key <= INT_KEY_MAX:
            return (
                "is an int beyond 64 bits (keys that are ints must lie in -2**63..2**64-1: "
                "larger ones could be chosen to collide in Python's hash)"
            )
        return f"is an int of more than {self._int_digits} digits (max_key_length: " + (
            f"{self.max_key_length})"
        )

    def _bad_key(self, reason: str, key: Any, payload: Any) -> NoReturn:
        shown = "" if key is None else f": {_short(key)}"
        raise InvalidEvent(
            f"key field {self.key!r} {reason}{shown}", field=self.key, payload=payload
        )

    def time_ms(
        self, value: Any, payload: Any, low: int = MIN_TIME_MS, high: int = MAX_TIME_MS
    ) -> int:
        """The event time ``value`` in ms, within ``[low, high]`` (see :meth:`bounds`).

        Raises:
            InvalidEvent: ``value`` is not a usable time, or is out of bounds.
        """
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
                scaled = value * self._multiply / self._divide
                if not -1.0 < scaled < MAX_TIME_MS + 1.0:  # rounding 1e306 ms would overflow
                    self._out_of_range(value, payload)
                # round to the microsecond first, as datetime does: 1082228670.37 s is
                # 1082228670370 ms, though 1082228670.37 * 1000 is 1082228670369.9999
                ms = math.floor(round(scaled * 1000) / 1000)
        elif isinstance(value, datetime):
            try:
                ms = _datetime_ms(value)
            except (ValueError, TypeError, OverflowError) as exc:  # a tzinfo that fails
                raise InvalidEvent(
                    f"time field {field!r} is not a usable datetime: {exc}",
                    field=field,
                    payload=payload,
                ) from None
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
        if not low <= ms <= high:
            if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
                self._out_of_range(value, payload)
            low, high = self.bounds()  # the bounds given may be a moment old
            if not low <= ms <= high:
                self._out_of_bounds(value, ms, payload, high)
        return ms

    def _out_of_range(self, value: Any, payload: Any) -> NoReturn:
        raise InvalidEvent(
            f"time field {self.time!r} is out of range (1970..2300): {_short(value)} "
            f"({self.time_unit})",
            field=self.time,
            payload=payload,
        )

    def _out_of_bounds(self, value: Any, ms: int, payload: Any, high: int) -> NoReturn:
        """Raise for a time within 1970..2300 but outside ``max_future`` or ``max_past``."""
        now = int(self._clock() * 1000)
        if ms > high:
            assert self.max_future_ms is not None
            ahead = format_duration(max(0, ms - now))
            where = f"{ahead} ahead of the wall clock, more than max_future"
            limit = self.max_future_ms
        else:
            assert self.max_past_ms is not None
            behind = format_duration(max(0, now - ms))
            where = f"{behind} behind the wall clock, more than max_past"
            limit = self.max_past_ms
        raise InvalidEvent(
            f"time field {self.time!r} is {where} ({format_duration(limit)}): {_short(value)} "
            f"({self.time_unit})",
            field=self.time,
            payload=payload,
        )


def _datetime_ms(value: datetime) -> int:
    """Milliseconds since the epoch, exact (integer arithmetic; naive means UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_MS
