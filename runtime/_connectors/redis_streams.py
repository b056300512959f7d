"""A Redis Streams source: a consumer group, XACK after the covering checkpoint.

One consumer group on one stream or several (one per partition), read by one consumer name with
``XREADGROUP``. A payload is one field of the entry (``data`` by default), bytes the runtime
decodes (its ``payload_format``); an entry without it is rejected to the dead letters.

Positions: ``{stream: entry id}``, the id of the last entry read from each stream. Entry ids
only grow within a stream.

Exactly-once state, at-least-once delivery: an entry read stays in the group's pending entries
list (PEL) until ``commit`` acknowledges (``XACK``) every entry read up to the committed
position, and :func:`consume` commits only positions a checkpoint holds. After a crash the
entries the dead process had read are still pending for its consumer name: a source starting
from a position ``P`` first reads this consumer's pending entries after ``P`` (``XREADGROUP``
from ``P``, not ``>``), in order, then new ones (``>``); so the entries after the checkpoint
come again, in order, and those at or before it are not read twice (they are acknowledged with
the next commit). A source with no position reads the consumer's pending entries from the
start. If the group's last delivered id is before ``P`` (the group was created again), it is set
to ``P`` (``XGROUP SETID``). Keep the consumer name for the life of the checkpoints, and have one
reader per stream and group: entries another consumer of the group took are not seen.

Reads are shielded from cancellation and block at most ``block`` seconds; a read that fails
(the connection dropped after Redis had handed entries over) goes back to reading the pending
entries after the position, so nothing handed over is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from actors import get_logger

from .._exceptions import ConfigError
from .source import RejectedRecord, Source, SourceBatch

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisStreamSource"]

_log = get_logger("featurist.connectors")

#: entry ids acknowledged (or asked for) per command
_ACK_CHUNK = 10_000
#: seconds to connect, and to wait for a reply beyond a read's block
_TIMEOUT = 10.0


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class _Stream:
    """One stream as this source reads it."""

    key: str
    #: True while this consumer's pending entries after the position are read again
    pending: bool = True
    #: (last id, ids) of each batch read and not acknowledged yet
    unacked: list[tuple[tuple[int, int], list[bytes]]] = field(default_factory=list)
    #: entries of an earlier process pending at or before the position: acknowledged at the
    #: first commit that covers the position
    sweep: bool = False


class RedisStreamSource(Source):
    """Entries of Redis streams, read in a consumer group (``redis.asyncio``, the ``redis``
    extra).

    Args:
        url: the Redis URL (``"redis://127.0.0.1:6379/0"``).
        streams: the stream key or keys, one per partition this process owns
            (``["tx:0", "tx:3"]``); a stream is created (empty) if missing.
        group: the consumer group, created if missing.
        consumer: this reader's consumer name in the group. Keep it for the life of the
            checkpoints: after a crash, the entries to read again are pending under it.
        name: the source's name in checkpoints, by default ``redis:<first stream>:<group>``.
        field: the entry field holding the payload.
        start: where a group created by this source starts: ``"first"``, the stream's first
            entry (the default), or ``"new"``, entries added from then on.
        block: seconds a read waits for entries when there are none (then returns an empty
            batch).

    Raises:
        ConfigError: an argument is out of range.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        streams: str | Sequence[str],
        group: str,
        consumer: str = "featurist",
        name: str | None = None,
        field: str = "data",
        start: Literal["first", "new"] = "first",
        block: float = 0.1,
    ) -> None:
        keys = [streams] if isinstance(streams, str) else list(streams)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"streams must be one or more non-empty str, got {streams!r}")
        if len(set(keys)) != len(keys):
            raise ConfigError(f"streams must differ, got {keys!r}")
        for what, value in (("group", group), ("consumer", consumer), ("field", field)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{what} must be a non-empty str, got {value!r}")
        if start not in ("first", "new"):
            raise ConfigError(f"start must be 'first' or 'new', got {start!r}")
        if isinstance(block, bool) or not isinstance(block, int | float) or block <= 0:
            raise ConfigError(f"block must be a number > 0, got {block!r}")
        self.url = url
        self.streams = keys
        self.group = group
        self.consumer = consumer
        self.name = name if name is not None else f"redis:{keys[0]}:{group}"
        self.field = field.encode()
        self.start = start
        self.block = float(block)
        self._streams = [_Stream(k) for k in keys]
        #: id of the last entry read, by stream
        self._position: dict[str, str] = {}
        self._ready = False
        self._turn = 0
        #: whether a batch of entries all without the payload field was warned of
        self._field_warned = False
        self._client: redis.asyncio.Redis | None = None

    def __repr__(self) -> str:
        return f"RedisStreamSource(streams={self.streams!r}, group={self.group!r})"

    # --- the protocol ---------------------------------------------------------------------------

    async def read(self, max_records: int) -> SourceBatch:
        # shielded, every wait bounded (block, the client's socket timeout): cut short, a read
        # could lose entries Redis had handed over
        with anyio.CancelScope(shield=True):
            batch = await self._read_batch(max_records)
        return batch

    async def _read_batch(self, max_records: int) -> SourceBatch:
        client = await self._redis()
        if not self._ready:
            await self._setup(client)
        try:
            replies = await self._read(client, max_records)
        except BaseException:
            for stream in self._streams:
                stream.pending = True
            raise
        payloads: list[bytes] = []
        rejected: list[RejectedRecord] = []
        by_key = {stream.key: stream for stream in self._streams}
        field = self.field
        append = payloads.append
        for raw_key, entries in replies:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            stream = by_key[key]
            # replies as Redis sends them (``_raw``): [entry id, [field, value, ...]] each
            ids: list[bytes] = [entry[0] for entry in entries]
            for entry_id, fields in entries:
                if fields and fields[0] == field:  # the usual entry: the payload field alone
                    append(fields[1])
                elif fields is not None:  # None: deleted from the stream while pending
                    record = _record(entry_id, fields, field, key)
                    if isinstance(record, RejectedRecord):
                        rejected.append(record)
                    else:
                        append(record)
            last = ids[-1].decode()
            self._position[key] = last
            stream.unacked.append((_id(last), ids))
        if rejected and not payloads and not self._field_warned:
            # every entry of the batch lacks the payload field: most likely a wrong ``field``
            # (they go to the dead letters, and are acknowledged, as any rejected record)
            self._field_warned = True
            _log.warning(
                "stream_entries_lack_the_payload_field",
                source=self.name,
                field=self.field.decode(),
                entries=len(rejected),
                fields_found=sorted(rejected[0].payload)[:10],
            )
        return SourceBatch(payloads, dict(self._position) if self._position else None, rejected)

    async def seek(self, position: Any) -> None:
        if not isinstance(position, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in position.items()
        ):
            raise ValueError(
                f"a RedisStreamSource position is a dict of entry ids by stream, got {position!r}"
            )
        for value in position.values():
            try:
                _id(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a Redis stream entry id") from None
        wanted = {k: position[k] for k in self.streams if k in position}
        if self._ready and wanted == self._position:
            return  # already there (a second consume call going on)
        self._position = wanted
        self._ready = False

    async def commit(self, position: Any) -> None:
        if not isinstance(position, dict) or self._client is None:
            return
        with anyio.CancelScope(shield=True):
            await self._commit(self._client, position)

    async def _commit(self, client: redis.asyncio.Redis, position: dict[str, Any]) -> None:
        for stream in self._streams:
            upto = position.get(stream.key)
            if upto is None:
                continue
            limit = _id(upto)
            ids: list[bytes] = []
            while stream.unacked and stream.unacked[0][0] <= limit:
                ids.extend(stream.unacked.pop(0)[1])
            for at in range(0, len(ids), _ACK_CHUNK):
                await client.xack(stream.key, self.group, *ids[at : at + _ACK_CHUNK])
            if stream.sweep:
                await self._sweep(client, stream, upto)

    async def lag(self) -> int | None:
        """Entries of the streams not yet handed to the group (``XINFO GROUPS``' ``lag``), or
        None when Redis cannot tell (after ``XGROUP SETID``, or entries deleted)."""
        client = await self._redis()
        if not self._ready:
            await self._setup(client)
        total = 0
        for stream in self._streams:
            for info in await client.xinfo_groups(stream.key):
                if _text(info["name"]) == self.group:
                    lag = info.get("lag")
                    if lag is None:
                        return None
                    total += int(lag)
        return total

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._ready = False
        for stream in self._streams:
            stream.unacked, stream.pending = [], True
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.aclose()

    # --- reading --------------------------------------------------------------------------------

    async def _redis(self) -> redis.asyncio.Redis:
        if self._client is None:
            import redis.asyncio

            # RESP2: replies are lists of [stream, entries] (RESP3 would make them dicts)
            self._client = redis.asyncio.from_url(
                self.url,
                protocol=2,
                socket_connect_timeout=_TIMEOUT,
                socket_timeout=_TIMEOUT + self.block,
            )
            self._client.set_response_callback("XREADGROUP", _raw)
        return self._client

    async def _setup(self, client: redis.asyncio.Redis) -> None:
        import redis.exceptions

        for stream in self._streams:
            stream.pending, stream.unacked, stream.sweep = True, [], False
            held = self._position.get(stream.key)
            if not await client.exists(stream.key):
                # made empty by the group's creation below: right for a stream its producers
                # have not written yet, but also what a misspelt key gives, read for ever
                _log.warning(
                    "stream_created_empty",
                    source=self.name,
                    stream=stream.key,
                    hint="the key did not exist: the group's creation made it; check its name "
                    "if its producers already write",
                )
            try:
                await client.xgroup_create(
                    stream.key, self.group, id="0" if self.start == "first" else "$", mkstream=True
                )
            except redis.exceptions.ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    kind = _text(await client.type(stream.key))
                    raise ConfigError(
                        f"{self!r}: the key {stream.key!r} holds a {kind}, not a stream: "
                        "check the stream's name"
                    ) from exc
                if "BUSYGROUP" not in str(exc):
                    raise
            if held is None:
                continue
            for info in await client.xinfo_groups(stream.key):
                if _text(info["name"]) == self.group:
                    if _id(_text(info["last-delivered-id"])) < _id(held):
                        await client.xgroup_setid(stream.key, self.group, held)
            summary = await client.xpending(stream.key, self.group)
            stream.sweep = bool(summary["pending"])
        self._ready = True

    async def _read(self, client: redis.asyncio.Redis, max_records: int) -> list[Any]:
        # this consumer's pending entries first, one stream at a time, from the position on
        for stream in self._streams:
            if stream.pending:
                cursor = self._position.get(stream.key, "0")
                reply: Any = await client.xreadgroup(
                    self.group, self.consumer, {stream.key: cursor}, count=max_records
                )
                if reply and reply[0][1]:
                    return list(reply)
                stream.pending = False  # all of them read again: on to new entries
        k = len(self._streams)
        used = min(k, max_records)
        chosen = [self._streams[(self._turn + i) % k] for i in range(used)]
        self._turn = (self._turn + 1) % k
        reply = await client.xreadgroup(
            self.group,
            self.consumer,
            {stream.key: ">" for stream in chosen},
            count=max_records // used,
            block=max(1, int(self.block * 1000)),
        )
        return [(key, entries) for key, entries in reply or () if entries]

    async def _sweep(self, client: redis.asyncio.Redis, stream: _Stream, upto: str) -> None:
        """Acknowledge the entries pending at or before ``upto`` that an earlier process read."""
        while True:
            pending = await client.xpending_range(
                stream.key, self.group, "-", upto, _ACK_CHUNK, consumername=self.consumer
            )
            if pending:
                await client.xack(stream.key, self.group, *[p["message_id"] for p in pending])
            if len(pending) < _ACK_CHUNK:
                break
        stream.sweep = False


def _record(entry_id: bytes, fields: list[bytes], field: bytes, key: str) -> Any:
    """The payload of an entry whose first field is not the payload's, or a rejected record
    if it has none."""
    pairs = dict(zip(fields[::2], fields[1::2], strict=False))
    payload = pairs.get(field)
    if payload is not None:
        return payload
    return RejectedRecord(
        {k.decode(errors="replace"): v for k, v in pairs.items()},
        f"no field {field.decode()!r}",
        where=f"{key} entry {entry_id.decode()}",
    )


def _raw(response: Any, **options: Any) -> Any:
    """XREADGROUP's reply as Redis sends it: ``[[stream, [[id, [field, value, ...]], ...]]]``
    (redis-py's own parse makes a dict per entry, a third of the cost of a read)."""
    return response


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
