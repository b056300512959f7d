"""The Redis sink: an online store of the latest feature values, one hash per key (the ``redis``
extra).

Per key, the hash ``<prefix><key>`` holds each feature's value JSON-encoded (``12``, ``3.5``,
``"m1"``, ``null``, ``true``) and the event time of the update written last, under
``time_field``; with a ``ttl``, every write sets the hash's expiry again (``PEXPIRE``), so a
key with no update for ``ttl`` disappears. Any Redis client reads it: ``HGETALL`` and a JSON
decode per field.

The runtime keeps the keys ``7``, ``"7"`` and ``b"7"`` apart, and ``<prefix><key>`` names them
alike: a sink writes keys of one type (``key_type``: that of the first key it writes, or the
one named) and refuses the others rather than merge them in one hash, unless
``key_type="tagged"``, which names every hash with its key's type (``<prefix>s:card-42``,
``<prefix>i:7``, ``<prefix>b:`` and the bytes).

A write is one pipeline (``transaction=False``: one round trip, no ``MULTI``) for the batches
handed over: only the latest values of each key are written, since the hash holds the present,
not the history (use the NATS or Parquet sinks for every update). Rows where a feature failed
leave that feature's field as it was. The hash follows what ``rt.get`` shows: with the feature
set's ``emit="update"`` (the default), the ``"update"`` rows (a window's ``"close"`` is not
what ``rt.get`` shows then); with ``emit="close"``, also the ``"close"`` and ``"correction"``
rows, whose values are the closed window's. Writing a batch again writes the same values:
retries are safe.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import msgspec

from .._batches import UpdateBatch
from .._duration import parse_duration
from .._exceptions import ConfigError
from .._spec.feature_set import FeatureSet
from .sinks import Sink

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisSink", "latest_values"]

#: the classes of keys a hash name can hold (the runtime's: str, int and bytes)
_KEY_CLASSES: dict[str, type] = {"str": str, "int": int, "bytes": bytes}
_KEY_TYPES = ("auto", "str", "int", "bytes", "tagged")

#: keys whose latest closed window a RedisSink remembers (the most recently closed ones)
_ENDS_KEPT = 1_000_000

_encode = msgspec.json.Encoder().encode


def latest_values(
    batches: Sequence[UpdateBatch],
    *,
    closes: bool = False,
    ends: OrderedDict[Any, int] | None = None,
) -> tuple[dict[Any, dict[str, Any]], dict[Any, int]]:
    """Each key's latest feature values in ``batches`` (every group's merged) and the event
    time of its last update. A feature's value in a row where it failed is left out, and so
    are rows of other kinds than ``"update"``, except with ``closes``: then a window's
    ``"close"`` and ``"correction"`` give the closed window's values (a correction only when
    no later window of the key closed before it: in ``batches``, or in earlier writes, whose
    latest closed window per key ``ends`` keeps, the most recent key last)."""
    fields: dict[Any, dict[str, Any]] = {}
    times: dict[Any, int] = {}
    #: with ``closes``: per key, the end of the latest window closed
    if ends is None:
        ends = OrderedDict()
    for batch in batches:
        names = batch.names
        errors = batch.errors
        if not errors and not batch.other_kinds():
            # the usual case: the last row of each key holds all of its values
            for key, row in {row[0]: row for row in batch.rows}.items():
                found = fields.get(key)
                if found is None:
                    found = fields[key] = {}
                found.update(zip(names, row[2:], strict=True))
                times[key] = row[1]
            continue
        kinds = batch.kinds
        for i, row in enumerate(batch.rows):
            key = row[0]
            kind = kinds[i]
            if kind != "update":
                if not closes or kind not in ("close", "correction"):
                    continue
                update = batch.update(i)
                end = update.window[1] if update.window is not None else row[1]
                if kind == "correction" and end < ends.get(key, end):
                    continue  # a window older than one that closed since
                if end >= ends.get(key, end):
                    ends[key] = end
                ends.move_to_end(key)
                fields.setdefault(key, {}).update(update.values)
                times[key] = row[1]
                continue
            found = fields.get(key)
            if found is None:
                found = fields[key] = {}
            failed = errors.get(i)
            if failed:
                found.update(
                    (name, value)
                    for name, value in zip(names, row[2:], strict=True)
                    if name not in failed
                )
            else:
                found.update(zip(names, row[2:], strict=True))
            times[key] = row[1]
    return fields, times


class RedisSink(Sink):
    """Write the latest feature values of each key to a Redis hash ``<prefix><key>``.

    Args:
        url: the server, ``redis://host:port/db`` (ignored when ``client`` is given).
        client: a ``redis.asyncio.Redis`` of your own, used as it is and not closed by
            :meth:`aclose`; by default the sink makes one from ``url`` (redis-py's own
            retries off: :func:`run_sink` retries) and closes it.
        prefix: the start of every hash's name (``features:card-42``).
        ttl: how long a key's hash lives after its last write: a duration (``"1d"``,
            ``3_600_000`` ms), or None for no expiry.
        time_field: the field holding the event time (ms) of the key's last update; a
            feature of that name is refused.
        key_type: how hashes are named for the types of keys. ``"auto"`` (the default):
            ``<prefix><key>`` (``str(key)`` for an int, the prefix's UTF-8 bytes then the key
            for bytes), and the sink writes keys of the type of the first key it writes;
            ``"str"``, ``"int"`` or ``"bytes"``: the same names, keys of that type only.
            A key of another type fails the write (a ``ValueError`` naming it, so
            ``SinkError``), since ``7``, ``"7"`` and ``b"7"`` would share one hash.
            ``"tagged"``: keys of every type, each hash named with its key's type,
            ``<prefix>s:<key>``, ``<prefix>i:<key>``, ``<prefix>b:`` and the bytes.
        timeout: seconds to connect, for a client the sink makes (a write is bounded by
            :func:`run_sink`'s ``write_timeout``).
        name: the sink's name in errors and logs.

    Raises:
        ConfigError: ``ttl``, ``prefix``, ``time_field``, ``key_type`` or ``timeout`` is not
            valid, or the ``redis`` extra is not installed (``pip install 'featurist[redis]'``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: redis.asyncio.Redis | None = None,
        prefix: str = "features:",
        ttl: int | float | str | None = "1d",
        time_field: str = "_event_time",
        key_type: Literal["auto", "str", "int", "bytes", "tagged"] = "auto",
        timeout: float = 5.0,
        name: str = "redis",
    ) -> None:
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a str, got {prefix!r}")
        if key_type not in _KEY_TYPES:
            raise ConfigError(f"key_type must be one of {', '.join(_KEY_TYPES)}, got {key_type!r}")
        if not isinstance(time_field, str) or not time_field:
            raise ConfigError(f"time_field must be a non-empty str, got {time_field!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.ttl_ms: int | None = None
        if ttl is not None:
            try:
                self.ttl_ms = parse_duration(ttl, field="ttl")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if self.ttl_ms <= 0:
                raise ConfigError(f"ttl must be > 0 (or None for no expiry), got {ttl!r}")
        self.name = name
        self.prefix = prefix
        self.time_field = time_field
        self.key_type = key_type
        #: the class of the keys the sink writes (for "auto", set by the first key written)
        self._key_class: type | None = _KEY_CLASSES.get(key_type)
        self._owned = client is None
        if client is None:
            try:
                import redis.asyncio
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff
            except ImportError as exc:
                raise ConfigError(
                    "RedisSink needs redis-py: pip install 'featurist[redis]'"
                ) from exc
            # no socket_timeout: a timeout per reply costs more than the pipeline's own work
            # (run_sink bounds each write with write_timeout)
            client = redis.asyncio.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        self.client: redis.asyncio.Redis = client
        self._bytes_prefix = prefix.encode()
        #: write windows' closes and corrections (a feature set with ``emit="close"``)
        self._closes = False
        #: per key, the end of the latest window whose close was written (the keys written
        #: last, at most ``_ENDS_KEPT``): a correction of an older window is not written
        self._ends: OrderedDict[Any, int] = OrderedDict()

    def check(self, feature_set: FeatureSet) -> None:
        self._closes = feature_set.emit == "close"
        if self.time_field in feature_set.names:
            raise ConfigError(
                f"RedisSink {self.name!r}: time_field {self.time_field!r} is also a feature's "
                "name; give the sink another time_field"
            )

    def hash_name(self, key: Any) -> str | bytes:
        """The name of ``key``'s hash: ``prefix + str(key)`` (bytes for a bytes key); with
        ``key_type="tagged"``, ``prefix + "s:" + key``, ``prefix + "i:" + str(key)`` or
        ``prefix bytes + b"b:" + key``.

        Raises:
            ValueError: a key of another type than the sink's (``key_type``), whose hash would
                be that of another key (``7`` and ``"7"``).
        """
        if self.key_type == "tagged":
            if isinstance(key, bytes):
                return self._bytes_prefix + b"b:" + key
            return self.prefix + ("s:" + key if isinstance(key, str) else "i:" + str(key))
        expected = self._key_class
        if expected is not None and not isinstance(key, expected):
            self._refuse(key, expected)
        if isinstance(key, bytes):
            return self._bytes_prefix + key
        return self.prefix + str(key)

    def _refuse(self, key: Any, expected: type) -> NoReturn:
        why = (
            "the type of the first key it wrote"
            if self.key_type == "auto"
            else f"key_type={self.key_type!r}"
        )
        raise ValueError(
            f"RedisSink {self.name!r}: key {key!r} is a {type(key).__name__}, the sink's keys "
            f"are {expected.__name__} ({why}): both would be named {self.prefix!r} + the key, "
            "one hash for two keys; give the sink key_type='tagged' to keep keys of several "
            "types apart"
        )

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        fields, times = latest_values(batches, closes=self._closes, ends=self._ends)
        ends = self._ends
        while len(ends) > _ENDS_KEPT:
            ends.popitem(last=False)
        if not fields:
            return
        if self._key_class is None and self.key_type == "auto":
            first = next(iter(fields))
            self._key_class = next(
                (c for c in (bytes, str, int) if isinstance(first, c)), type(first)
            )
        encode, time_field, ttl = _encode, self.time_field, self.ttl_ms
        async with self.client.pipeline(transaction=False) as pipeline:
            for key, values in fields.items():
                name = self.hash_name(key)
                try:
                    mapping = {field: encode(value) for field, value in values.items()}
                except Exception as exc:
                    raise self._unencodable(key, values, exc) from exc
                mapping[time_field] = encode(times[key])
                pipeline.hset(name, mapping=mapping)  # type: ignore[arg-type]
                if ttl is not None:
                    pipeline.pexpire(name, ttl)
            await pipeline.execute()

    def _unencodable(self, key: Any, values: dict[str, Any], exc: Exception) -> Exception:
        """The error of a value JSON cannot encode, naming its feature and key."""
        field: str | None = None
        value: Any = None
        for name, held in values.items():
            try:
                _encode(held)
            except Exception as error:
                field, value, exc = name, held, error
                break
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        return kind(
            f"RedisSink {self.name!r}: feature {field!r} of key {key!r} holds {value!r:.100}, "
            f"which cannot be JSON-encoded ({type(exc).__name__}: {exc})"
        )

    async def aclose(self) -> None:
        """Close the client the sink made (not one given to it)."""
        if self._owned:
            await self.client.aclose()
