"""What the front and a worker process say to each other, and the framing of it.

One stream socket joins the front to each worker (a unix one; a TCP one to a worker that runs as
a Ray actor). Each message is one frame: a 4-byte big-endian length, then the message in
MessagePack (a msgspec tagged union, encoded as an array: the tag first). Why a socket and not a
``multiprocessing`` pipe: an anyio socket stream is awaited on the event loop itself, no thread
per pipe, and ``send`` waits while the kernel's socket buffer is full, so a slow worker holds
the front's ``ingest`` back (backpressure) with nothing buffered beyond the socket's own bounded
buffer; and the peer's death reads as the end of the stream at once.

Front to worker: :class:`Events` (a batch of events of the worker's key groups), :class:`Call`
(a request answered by a :class:`Reply` of the same ``id``), :class:`Stop`. Worker to front:
:class:`Reply`, :class:`Updates` (one ``UpdateBatch`` of the worker's runtime),
:class:`JoinRecords` (one ``JoinRecordBatch``), :class:`Enriched` (one ``EnrichedBatch``),
:class:`Late` (one ``LateEventBatch``), :class:`Rejected`
(events the worker's reader refused), :class:`Taken` (an :class:`Events` frame was taken
in), :class:`Stopped`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections import deque
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from .._results import FeatureUpdate

_T = TypeVar("_T")

#: the MessagePack extension of an int MessagePack cannot hold (beyond 64 bits): its digits
_BIG_INT = 1


def ext_hook(code: int, data: memoryview) -> Any:
    """Decode what :func:`encode` wrapped: ints beyond 64 bits."""
    if code == _BIG_INT:
        return int(bytes(data))
    raise ValueError(f"a MessagePack extension of type {code} is not featurist's")


def _big_ints(value: Any) -> Any:
    """``value`` with every int beyond 64 bits wrapped in an extension (the slow path, taken
    only for a message that holds one)."""
    cls = value.__class__
    if cls is int:
        return value if -(2**63) <= value < 2**64 else msgspec.msgpack.Ext(_BIG_INT, b"%d" % value)
    if cls is list or cls is tuple:
        return [_big_ints(item) for item in value]
    if cls is dict:
        # keys as they are: a key beyond 64 bits is refused by ingest before it gets here
        return {k: _big_ints(v) for k, v in value.items()}
    if isinstance(value, msgspec.Struct):
        fields = {name: _big_ints(getattr(value, name)) for name in value.__struct_fields__}
        return msgspec.structs.replace(value, **fields)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _big_ints(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def encode(value: Any) -> bytes:
    """``value`` in MessagePack; ints beyond 64 bits (a sum of big ints, an event's field) as
    an extension that :func:`ext_hook` decodes."""
    try:
        return msgspec.msgpack.encode(value)
    except OverflowError:
        return msgspec.msgpack.encode(_big_ints(value))


def decoder(kind: type[_T]) -> msgspec.msgpack.Decoder[_T]:
    """A decoder of what the other end encoded (ints beyond 64 bits included)."""
    return msgspec.msgpack.Decoder(kind, ext_hook=ext_hook)


__all__ = [
    "decoder",
    "encode",
    "ext_hook",
    "Call",
    "Connection",
    "Enriched",
    "Events",
    "FromFront",
    "FromWorker",
    "JoinRecords",
    "Late",
    "Rejected",
    "Reply",
    "Stop",
    "Stopped",
    "Taken",
    "Updates",
]


class Events(msgspec.Struct, array_like=True, tag=0):
    """Events for the worker's runtime, in arrival order: dicts the front has read, or
    bytes the front routed by their key alone (the worker decodes them)."""

    payloads: list[Any]
    #: whether the front has subscribers to updates: the worker subscribes while it has
    updates: bool
    #: with several streams, each event's stream index (parallel to ``payloads``); None: all
    #: of the first stream
    tags: list[int] | None = None
    #: whether the front has subscribers to join records (``rt.join_records()``)
    records: bool = False
    #: whether the front has subscribers to enriched events (``rt.enriched_events()``)
    enriched: bool = False
    #: whether the front has subscribers to late events (``rt.late_events()``)
    late: bool = False
    #: the runtime's clock (seconds since the epoch) while a replay has set it: the worker's
    #: clock is set to it before the events are applied (None: the worker's own clock)
    now: float | None = None


class Call(msgspec.Struct, array_like=True, tag=1):
    """A request: ``op`` is ``"flush"``, ``"get_many"`` (keys, features),
    ``"statistics"``, ``"metrics"``, ``"recent_errors"``, ``"describe"`` (name),
    ``"register"`` (features, pickled),
    ``"warm_up"`` (source, keys,
    rows), ``"step"`` (now, at: a replay's
    step: apply what was sent at ``now``, then idle time and expiry at ``at``),
    ``"checkpoint"`` (directory,
    sequence: the barrier of an aligned checkpoint: write the worker's part of it once
    everything sent before is applied) or ``"restore"`` (directory, sequence, workers:
    restore the worker's key groups from a checkpoint)."""

    id: int
    op: str
    args: list[Any]


class Stop(msgspec.Struct, array_like=True, tag=2):
    """Apply what was sent, send its updates, stop the runtime, and exit."""


class Reply(msgspec.Struct, array_like=True, tag=3):
    """The answer to the :class:`Call` of the same ``id`` (``id`` 0: the worker started).
    ``error`` is the failure's text, or None and the ``result`` encoded."""

    id: int
    error: str | None
    result: msgspec.Raw


class Updates(msgspec.Struct, array_like=True, tag=4):
    """One ``UpdateBatch`` of the worker's runtime, as its fields."""

    group: str
    names: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    errors: dict[int, dict[str, str]] | None
    latency_ms: dict[str, float]
    processed_at: float
    extras: dict[int, FeatureUpdate] | None


class Rejected(msgspec.Struct, array_like=True, tag=5):
    """Events the worker's reader refused: ``(payload, reason)`` each."""

    letters: list[tuple[Any, str]]


class Stopped(msgspec.Struct, array_like=True, tag=6):
    """The worker's runtime stopped; the worker exits."""


class Taken(msgspec.Struct, array_like=True, tag=7):
    """The worker took an :class:`Events` frame in (its runtime accepted the events): the
    front sends a partial buffer at once to a worker with no frame in flight."""


class JoinRecords(msgspec.Struct, array_like=True, tag=8):
    """One ``JoinRecordBatch`` of the worker's runtime, as its columns and its records (built
    in the worker: the front has no join of its own to build them with)."""

    join: str
    keys: list[Any]
    left_events: list[dict[str, Any] | None]
    right_events: list[dict[str, Any] | None]
    left_times: list[int | None]
    right_times: list[int | None]
    join_times: list[int]
    time_differences: list[int | None]
    processed_at: float
    records: list[dict[str, Any]]


class Enriched(msgspec.Struct, array_like=True, tag=9):
    """One ``EnrichedBatch`` of the worker's runtime: ``(key, event_time, event)`` rows."""

    rows: list[tuple[Any, int, dict[str, Any]]]
    processed_at: float


class Late(msgspec.Struct, array_like=True, tag=10):
    """One ``LateEventBatch`` of the worker's runtime: ``(key, event_time, watermark,
    event)`` rows of the group (or join) ``group``."""

    group: str
    rows: list[tuple[Any, int, int, dict[str, Any]]]


FromFront = Events | Call | Stop
FromWorker = Reply | Updates | Rejected | Stopped | Taken | JoinRecords | Enriched | Late

_HEADER = 4
#: the largest frame accepted: a batch of events is far smaller
MAX_FRAME = 1 << 30


#: a worker that runs as a Ray actor connects back to the front and sends the token the
#: front gave it (this many bytes), then its process id (this many, big-endian)
HANDSHAKE_TOKEN = 32
HANDSHAKE_PID = 8


def connect_back(host: str, port: int, token: bytes) -> socket.socket:
    """A Ray worker's side of the handshake: connect to the front and prove who it is.

    Raises:
        ConnectionError: the front cannot be reached from this node, naming it.
    """
    try:
        sock = socket.create_connection((host, port), timeout=30.0)
    except OSError as exc:
        raise ConnectionError(
            f"the worker cannot reach the front at {host}:{port} ({exc}): give "
            "RayBackend(front_host=...) an address of the front's node that every node reaches"
        ) from exc
    sock.settimeout(None)
    sock.sendall(token + os.getpid().to_bytes(HANDSHAKE_PID, "big"))
    return sock


#: seconds of silence after which a TCP peer is probed, between probes, and probes unanswered
#: before it is taken as gone (a node lost without closing its sockets, while the link is idle)
_KEEPALIVE = (10, 5, 3)


def _tcp_options(sock: socket.socket) -> None:
    """A TCP stream to a worker on another node: frames leave at once (no Nagle delay), and
    while the link is idle a peer whose node is lost without closing the socket reads as the
    end of the stream within about half a minute (keepalive probes), not after the system's
    default of hours. No bound is set on unacknowledged data (``TCP_USER_TIMEOUT``): it would
    also cut a live peer that holds its end back for longer (a full socket buffer is the
    backpressure of a slow subscriber or a long checkpoint); the front learns of a lost
    node's worker from Ray as well (``WorkerFront``'s watch of the workers' actors)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = _KEEPALIVE
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; elsewhere, what the system has
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Connection:
    """One end of a front-worker socket: whole frames in, whole frames out.

    ``send`` may be called from several tasks: frames go out whole and in the order ``send``
    was called (each is queued at once; whoever holds the lock sends what is queued, and a
    caller returns once its frame is out, so the queue holds at most one frame per waiting
    caller). ``receive`` is for one task (the end's reader); it raises ``anyio.EndOfStream``
    when the peer closed (or died), and ``send`` an ``anyio.BrokenResourceError``.
    """

    def __init__(self, stream: anyio.abc.ByteStream, decodes: Any) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._lock = anyio.Lock()
        self._outbox: deque[bytearray] = deque()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = decoder(decodes)

    @classmethod
    async def of(cls, sock: Any, decodes: Any) -> Connection:
        """Wrap a connected socket: a unix one (a worker process on this machine) or a TCP
        one (a worker on another node: the Ray backend), without Nagle's delay."""
        stream: anyio.abc.ByteStream
        if sock.family == socket.AF_UNIX:
            stream = await anyio.abc.UNIXSocketStream.from_socket(sock)
        else:
            _tcp_options(sock)
            stream = await anyio.abc.SocketStream.from_socket(sock)
        return cls(stream, decodes)

    def encode(self, message: Any) -> bytearray:
        """``message`` as a frame, to :meth:`send_frame` later (encode outside the lock)."""
        frame = bytearray(_HEADER)
        try:
            self._encoder.encode_into(message, frame, _HEADER)
        except OverflowError:  # an int beyond 64 bits: the slow path, as an extension
            del frame[_HEADER:]
            self._encoder.encode_into(_big_ints(message), frame, _HEADER)
        frame[:_HEADER] = (len(frame) - _HEADER).to_bytes(_HEADER, "big")
        return frame

    async def send(self, message: Any) -> None:
        await self.send_frame(self.encode(message))

    def queue(self, message: Any) -> None:
        """Queue ``message`` to go out after the frames queued before it, without waiting:
        a caller queues frames of several connections at one point of its input (the front's
        barrier), then drains them (:meth:`drain`)."""
        self._outbox.append(self.encode(message))

    async def drain(self) -> None:
        """Send every frame queued (returns once they are out)."""
        async with self._lock:
            outbox = self._outbox
            while outbox:
                await self._stream.send(cast(bytes, outbox.popleft()))

    async def send_frame(self, frame: bytearray) -> None:
        outbox = self._outbox
        outbox.append(frame)
        async with self._lock:
            while outbox:
                # a bytearray is as good as bytes to a socket (no copy)
                await self._stream.send(cast(bytes, outbox.popleft()))

    async def receive(self) -> Any:
        header = await self._reader.receive_exactly(_HEADER)
        size = int.from_bytes(header, "big")
        if size > MAX_FRAME:
            raise anyio.BrokenResourceError(f"a frame of {size} bytes: the stream is corrupt")
        return self._decoder.decode(await self._reader.receive_exactly(size))

    async def aclose(self) -> None:
        await self._stream.aclose()
