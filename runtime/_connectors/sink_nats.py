"""The NATS sink: every feature update as a message on ``<subject>.<group>`` (the ``nats``
extra, nats-py).

One message per update, JSON (or MessagePack), a map of ``key``, ``event_time`` (ms since the
epoch), ``group`` and ``values`` (every feature of the group by name), with ``kind`` for rows
that are not plain updates (a window's ``"close"``, ...) and ``errors`` (feature -> message)
when features failed on the event (their values are then null). A bytes key is base64 in
JSON, as msgspec encodes bytes. The subject is per feature group rather than per key: a key
may hold characters a subject token cannot (``.``, ``*``, ``>``, spaces); a reader filters
keys from the payload, or subscribes to ``<subject>.>`` for every group.

Delivery: when a JetStream stream holds the subject (looked up once per subject, or as
``jetstream`` says), each message is published to JetStream and the write returns once the
server acknowledged every one of them (stored); otherwise it is a core NATS publish and the
write returns once the server has received them (a ``PING`` round trip), which keeps nothing
for a subscriber that is not there. A retried write publishes its messages again: at least
once, a reader may see an update twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import anyio
import msgspec

from actors import get_logger

from .._batches import UpdateBatch
from .._exceptions import ConfigError
from .sinks import Sink

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg

__all__ = ["NatsSink", "update_messages"]

_log = get_logger("featurist.connectors")

_SUBJECT_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def update_messages(batch: UpdateBatch) -> list[dict[str, Any]]:
    """The batch's updates as the maps :class:`NatsSink` publishes, in order."""
    names, group = batch.names, batch.group
    errors = batch.errors
    kinds = batch.kinds
    out = []
    for i, row in enumerate(batch.rows):
        message: dict[str, Any] = {
            "key": row[0],
            "event_time": row[1],
            "group": group,
            "values": dict(zip(names, row[2:], strict=True)),
        }
        if kinds[i] != "update":
            update = batch.update(i)
            message["kind"] = update.kind
            if update.window is not None:
                message["window"] = update.window
            if update.parts is not None:
                message["parts"] = update.parts
            message["values"] = update.values
        failed = errors.get(i) if errors else None
        if failed:
            message["errors"] = failed
        out.append(message)
    return out


class _Acks:
    """The acknowledgements one write waits for."""

    __slots__ = ("done", "error", "left", "round")

    def __init__(self, round: int, count: int) -> None:
        self.round = round
        self.left = count
        self.error: Exception | None = None
        self.done = anyio.Event()


class NatsSink(Sink):
    """Publish every feature update to ``<subject>.<group>``.

    Args:
        url: the server (``nats://host:port``; ignored when ``client`` is given).
        client: a connected ``nats.aio.client.Client`` of your own, used as it is and not
            closed by :meth:`aclose`; by default the sink connects to ``url`` at its first
            write and closes the connection in :meth:`aclose`.
        subject: the subjects' first tokens: updates of group ``g0`` go to
            ``<subject>.g0``.
        format: ``"json"`` (the default) or ``"msgpack"``.
        jetstream: True to publish with JetStream acknowledgements (a stream must hold the
            subjects), False for core NATS, None (the default) to ask the server once per
            subject whether a stream holds it.
        timeout: seconds to connect, and for each acknowledgement and flush.
        name: the sink's name in errors and logs.

    Raises:
        ConfigError: ``subject``, ``format`` or ``timeout`` is not valid, or nats-py is not
            installed (``pip install 'featurist[nats]'``).
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        client: nats.aio.client.Client | None = None,
        subject: str = "features",
        format: Literal["json", "msgpack"] = "json",
        jetstream: bool | None = None,
        timeout: float = 5.0,
        name: str = "nats",
    ) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise ConfigError("NatsSink needs nats-py: pip install 'featurist[nats]'") from exc
        tokens = subject.split(".") if isinstance(subject, str) else [""]
        if not all(token and set(token) <= _SUBJECT_TOKEN for token in tokens):
            raise ConfigError(
                f"subject must be dot-separated tokens of letters, digits, '-' and '_', got "
                f"{subject!r}"
            )
        if format not in ("json", "msgpack"):
            raise ConfigError(f"format must be 'json' or 'msgpack', got {format!r}")
        if jetstream not in (True, False, None):
            raise ConfigError(f"jetstream must be True, False or None, got {jetstream!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.url = url
        self.subject = subject
        self.format = format
        self.jetstream = jetstream
        self.timeout = float(timeout)
        self.name = name
        self._client = client
        self._owned = client is None
        #: the reply subjects' prefix of JetStream publishes, once subscribed to
        self._inbox: str | None = None
        #: the subscription to the acknowledgements (removed by ``aclose``)
        self._acks_sub: Any = None
        #: the acknowledgements the write in progress waits for
        self._acks: _Acks | None = None
        self._round = 0
        #: per subject: True when a JetStream stream holds it
        self._streams: dict[str, bool] = {}
        #: whether a write found no JetStream answering (said once)
        self._no_jetstream_said = False
        self._encode = (
            msgspec.json.Encoder().encode if format == "json" else msgspec.msgpack.Encoder().encode
        )

    async def _connection(self) -> nats.aio.client.Client:
        if self._client is None:
            import nats.aio.client

            # nats-py tries again and again to make a first connection that reconnects
            # later: bound it here (run_sink retries the write), and close what a connection
            # cut short had started (its reader and pinger tasks, its socket)
            client = nats.aio.client.Client()
            with anyio.move_on_after(self.timeout):
                await client.connect(
                    self.url,
                    connect_timeout=max(1, math.ceil(self.timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=max(1, round(min(self.timeout / 4, 2.0))),
                )
            if not client.is_connected:
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                    await client.close()
                raise ConnectionError(
                    f"NatsSink {self.name!r}: could not connect to {self.url} within "
                    f"{self.timeout:g} s"
                )
            self._client = client
        return self._client

    async def _in_stream(self, client: nats.aio.client.Client, subject: str) -> bool:
        found = self._streams.get(subject)
        if found is None:
            if self.jetstream is not None:
                found = self.jetstream
            else:
                import nats.errors
                import nats.js.errors

                try:
                    await client.jetstream(timeout=self.timeout).find_stream_name_by_subject(
                        subject
                    )
                    found = True
                except nats.js.errors.NotFoundError:  # no stream holds the subject
                    found = False
                except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
                    # No JetStream answered: a server without it, or JetStream unavailable
                    # for a moment (a leader election, a restart). Core NATS for this write,
                    # and the server is asked again at the next: a stream that answers
                    # later gets its acknowledged publishes back.
                    if not self._no_jetstream_said:
                        self._no_jetstream_said = True
                        _log.warning(
                            "nats_sink_without_jetstream",
                            sink=self.name,
                            subject=subject,
                            detail="no JetStream answered: publishing with core NATS (no "
                            "acknowledgements); asked again at each write",
                        )
                    return False
            self._streams[subject] = found
        return found

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        client = await self._connection()
        encode = self._encode
        acked: list[tuple[str, bytes]] = []
        core = False
        for batch in batches:
            subject = f"{self.subject}.{batch.group}"
            payloads = [encode(message) for message in update_messages(batch)]
            if await self._in_stream(client, subject):
                acked += [(subject, payload) for payload in payloads]
            else:
                if not core:
                    self._connected(client)
                core = True
                for payload in payloads:
                    await client.publish(subject, payload)
        if acked:
            await self._publish_acked(client, acked)
        if core:
            await client.flush(timeout=math.ceil(self.timeout))
            # nats-py's flush returns at once, without the server's answer, while it
            # reconnects: the messages then wait in its buffer, and may never go
            self._connected(client)

    def _connected(self, client: nats.aio.client.Client) -> None:
        """Raise ConnectionError (a failed attempt: ``run_sink`` retries the write) unless the
        client is connected: core NATS publishes to a lost connection go to nats-py's
        reconnect buffer, which a flush does not wait for."""
        if not client.is_connected:
            state = "reconnecting" if client.is_reconnecting else "not connected"
            raise ConnectionError(
                f"NatsSink {self.name!r}: the connection to the server is lost ({state}): "
                "the write is not known to have reached it"
            )

    async def _publish_acked(
        self, client: nats.aio.client.Client, messages: list[tuple[str, bytes]]
    ) -> None:
        """Publish to JetStream, each message with a reply subject of this write, and wait
        for every acknowledgement. (nats-py's ``publish_async`` sends one message per loop
        turn, a system call each: about 8,000 messages a second here.)"""
        if self._inbox is None:
            self._inbox = client.new_inbox()
            self._acks_sub = await client.subscribe(f"{self._inbox}.*.*", cb=self._on_ack)
        self._round += 1
        acks = self._acks = _Acks(self._round, len(messages))
        prefix = f"{self._inbox}.{self._round}."
        for i, (subject, payload) in enumerate(messages):
            await client.publish(subject, payload, reply=prefix + str(i))
        with anyio.fail_after(self.timeout):
            await acks.done.wait()
        if acks.error is not None:
            raise acks.error

    async def _on_ack(self, msg: nats.aio.msg.Msg) -> None:
        """An acknowledgement of a JetStream publish (nats-py calls it in its own task)."""
        acks = self._acks
        if acks is None or msg.subject.split(".")[-2] != str(acks.round):
            return  # an acknowledgement of an earlier write (one that timed out)
        if msg.headers and msg.headers.get("Status") == "503":
            error: Exception | None = ConnectionError(
                f"NatsSink {self.name!r}: no JetStream stream answered for {msg.subject!r}"
            )
        else:
            try:
                reply = msgspec.json.decode(msg.data)
            except msgspec.DecodeError:
                reply = {"error": {"description": f"not JSON: {msg.data[:100]!r}"}}
            error = None
            if not isinstance(reply, dict) or "error" in reply:
                error = ConnectionError(f"NatsSink {self.name!r}: JetStream refused: {reply}")
        if error is not None and acks.error is None:
            acks.error = error
        acks.left -= 1
        if acks.left == 0 or error is not None:
            acks.done.set()

    async def aclose(self) -> None:
        """Close the connection the sink made; on one given to it, only remove the sink's
        subscription."""
        client, self._client = self._client, None
        sub, self._acks_sub, self._inbox = self._acks_sub, None, None
        if client is None:
            return
        if self._owned:
            await client.close()
        elif sub is not None and not client.is_closed:
            await sub.unsubscribe()
