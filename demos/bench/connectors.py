"""``python -m demos.bench connectors``: events read from NATS JetStream and from Redis Streams
through FeatureRuntime, next to the broker's bare read rate with the same client, in one run.

The workload: ``--events`` (1,000,000) JSON events of the aggregates bench (``card``, ``ts``,
``amount``; ``--keys`` cards with Zipf-like skew), published to a JetStream stream (one
subject) and appended to a Redis stream, then read back twice from each broker:

- **bare read**: the broker's client alone, as a consumer that does nothing with the events
  would read them: a JetStream durable pull consumer (nats-py), ``fetch`` of ``--batch``
  messages and one acknowledgement per batch (ack policy ``all``, as ``NatsSource``); a Redis
  consumer group (redis-py), ``XREADGROUP`` of ``--batch`` entries and their ``XACK``;
- **FeatureRuntime**: ``rt.consume(NatsSource(...))`` and ``rt.consume(RedisStreamSource(...))``
  (the same clients, acknowledgements included: without checkpoints a batch is committed once
  the runtime accepted it) into count/sum/mean/last per card, the JSON decoded by the runtime,
  with a consumer task reading every update (``rt.updates()``, a batch at a time).

Both run on the same event loop (``actors.run``: uvloop when installed), one after the other
in one process, after ``gc.freeze()`` of the input (the events, their payloads and the expected
values), so that neither pays for collecting what the bench holds. Both run with the collector's
first threshold at ``--gc-threshold`` (10,000 by default: what ``FeatureRuntime`` raises it to
while it runs; Python's own is 700, at which a batch of a thousand records outlives its young
collection and adds up to full ones; see "Throughput" in ``docs/connectors.md``). The runtime
has ``--shards`` shards (1: in one process more shards add no parallelism, only routing).

``--repeat N`` (3) reads each broker N rounds (a bare read, then the runtime through a source of
a group or durable of its own, back to back) and shows the best of each side, their share,
and the range of the rounds' shares: on a machine shared with other work, the best is the run
least disturbed.

Timed: from the first read to the last event read (bare) or the last update read (runtime).
The consumer keeps each key's latest update, as an application's online cache would; after the
run, every key's is compared with a plain loop's over the same events (untimed), and the bench
exits non-zero when one differs. Printed: events/s of each, the runtime's as a share of the
bare read's (target: at least 0.70), and the CPU time this process spent an event on each side
(the broker's own not included), which moves less than the rates with the load of a shared
machine.

Needs the servers: NATS with JetStream (``--nats``) and Redis (``--redis``); a broker whose
server does not answer is skipped, and says so. ``--brokers nats`` (or ``redis``) reads one of
them only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import uuid
from functools import partial
from typing import Any

import msgspec

from actors import run
from runtime import FeatureRuntime, NatsSource, RedisStreamSource
from runtime._gc import DEFAULT_GC_THRESHOLD

from . import aggregates
from ._common import (
    Checksum,
    Row,
    freeze_input,
    print_table,
    quiet_logs,
    rate,
    run_with_consumer,
)

PUBLISH_CHUNK = 10_000

try:  # nats-py's "no server answered", not an OSError
    from nats.errors import NoServersError as _NoServers
except ImportError:  # pragma: no cover - without the nats extra

    class _NoServers(Exception):  # type: ignore[no-redef]
        pass


def make_payloads(count: int, keys: int, seed: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    events = aggregates.make_events(count, keys, seed)
    encode = msgspec.json.encode
    return events, [encode(event) for event in events]


# -- NATS JetStream -------------------------------------------------------------------------------
async def nats_publish(url: str, stream: str, subject: str, payloads: list[bytes]) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        try:
            await js.delete_stream(stream)
        except Exception:
            pass
        await js.add_stream(name=stream, subjects=[subject])
        publish = nc.publish
        for start in range(0, len(payloads), PUBLISH_CHUNK):
            for payload in payloads[start : start + PUBLISH_CHUNK]:
                await publish(subject, payload)
            await nc.flush()
        deadline = time.monotonic() + 60
        while (await js.stream_info(stream)).state.messages < len(payloads):
            if time.monotonic() > deadline:
                raise TimeoutError("JetStream did not store every message within 60 s")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def nats_bare(url: str, stream: str, subject: str, count: int, batch: int) -> float:
    """Read ``count`` messages with a durable pull consumer of its own, acking each batch:
    the fastest way we found with nats-py. Its ``fetch`` waits for each message in a task of
    its own (about 20,000 messages/s here); a pull request published by hand, its replies
    taken by a core subscription's callback, reads five times as fast."""
    import nats
    from nats.js import api

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        durable = f"bare-{uuid.uuid4().hex[:8]}"
        await js.add_consumer(
            stream,
            api.ConsumerConfig(
                durable_name=durable,
                ack_policy=api.AckPolicy.ALL,
                deliver_policy=api.DeliverPolicy.ALL,
                filter_subject=subject,
                max_ack_pending=1_000_000,
            ),
        )
        inbox = nc.new_inbox()
        got: list[Any] = []
        want = 0
        arrived = asyncio.Event()

        async def take(message: Any) -> None:
            if message.headers and message.headers.get("Status"):
                arrived.set()  # the request expired, or nothing is left
                return
            got.append(message)
            if len(got) >= want:
                arrived.set()

        sub = await nc.subscribe(
            inbox, cb=take, pending_msgs_limit=4 * batch, pending_bytes_limit=1 << 28
        )
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        started = time.perf_counter()
        read = 0
        while read < count:
            want = min(batch, count - read)
            got.clear()
            arrived.clear()
            request = msgspec.json.encode({"batch": want, "expires": 5_000_000_000})
            await nc.publish(next_subject, request, reply=inbox)
            await arrived.wait()
            read += len(got)
            await got[-1].ack()
        seconds = time.perf_counter() - started
        await sub.unsubscribe()
        await js.delete_consumer(stream, durable)
        return seconds
    finally:
        await nc.close()


# -- Redis Streams --------------------------------------------------------------------------------
async def redis_publish(url: str, key: str, payloads: list[bytes]) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.delete(key)
        for start in range(0, len(payloads), PUBLISH_CHUNK):
            async with client.pipeline(transaction=False) as pipe:
                for payload in payloads[start : start + PUBLISH_CHUNK]:
                    pipe.xadd(key, {"data": payload})
                await pipe.execute()
    finally:
        await client.aclose()


async def redis_bare(url: str, key: str, count: int, batch: int) -> float:
    """Read ``count`` entries in a consumer group of its own: each batch's ``XACK`` goes in
    one pipeline with the next ``XREADGROUP`` (one round trip a batch), RESP2 replies taken
    as Redis sends them, without redis-py's dict per entry (as ``RedisStreamSource``: RESP3's
    are slower to parse in redis-py)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, protocol=2, socket_connect_timeout=2)
    client.set_response_callback("XREADGROUP", lambda response, **options: response)
    group = f"bare-{uuid.uuid4().hex[:8]}"
    try:
        await client.xgroup_create(key, group, id="0")
        started = time.perf_counter()
        read = 0
        ids: list[Any] = []
        while read < count:
            async with client.pipeline(transaction=False) as pipe:
                if ids:
                    pipe.xack(key, group, *ids)
                pipe.xreadgroup(group, "bare", {key: ">"}, count=batch, block=5000)
                replies = await pipe.execute()
            entries = replies[-1][0][1]
            ids = [entry_id for entry_id, _fields in entries]
            read += len(entries)
        await client.xack(key, group, *ids)
        seconds = time.perf_counter() - started
        await client.xgroup_destroy(key, group)
        return seconds
    finally:
        await client.aclose()


# -- the runtime ----------------------------------------------------------------------------------
async def through_runtime(
    source: Any, count: int, batch: int, latest: dict[str, tuple[Any, ...]], shards: int = 1
) -> dict[str, Any]:
    """``rt.consume(source)`` of ``count`` events, a consumer reading every update and keeping
    each key's latest in ``latest`` (what an application's online cache does)."""

    async def feed(rt: Any) -> None:
        async with source:
            result = await rt.consume(source, batch_size=batch, until=count)
        assert result.accepted == count, result

    async def keep_latest(subscription: Any, _checksum: Checksum) -> None:
        async for updates in subscription.batches():
            for row in updates.rows:
                latest[row[0]] = row

    # the collector's threshold is the bench's, for both sides alike
    runtime = FeatureRuntime(
        aggregates.BASIC, shards=shards, payload_format="json", gc_threshold=None
    )
    return await run_with_consumer(runtime, lambda rt: rt.updates(), keep_latest, feed)


def expected(events: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """Each key's last update, by a plain loop: ``(key, event time, n, total, mean, last)``
    with the runtime's arithmetic (the sum in arrival order, the last amount by event time)."""
    state: dict[str, list[Any]] = {}
    out: dict[str, tuple[Any, ...]] = {}
    for event in events:
        key, t, v = event["card"], event["ts"], event["amount"]
        s = state.get(key)
        if s is None:
            s = state[key] = [0, 0, t, v]
        s[0] += 1
        s[1] += v
        if t >= s[2]:
            s[2], s[3] = t, v
        out[key] = (key, t, s[0], s[1], s[1] / s[0], s[3])
    return out


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench connectors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1024, help="records per read (1024)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of the two reads per broker; the best of each side is shown (3)",
    )
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=DEFAULT_GC_THRESHOLD,
        metavar="N",
        help="the collector's first threshold for the whole run, both sides (10,000: what "
        "FeatureRuntime sets while it runs; Python's own is 700)",
    )
    parser.add_argument("--shards", type=int, default=1, help="the runtime's shards (1)")
    parser.add_argument(
        "--brokers",
        default="nats,redis",
        help="the brokers to read, comma-separated: nats, redis (both)",
    )
    args = parser.parse_args(argv)
    brokers = {name.strip() for name in args.brokers.split(",") if name.strip()}
    if not brokers or not brokers <= {"nats", "redis"}:
        parser.error(f"--brokers: nats, redis or both, got {args.brokers!r}")
    quiet_logs()
    events, payloads = make_payloads(args.events, args.keys, args.seed)
    want = expected(events)
    # the input and the expected values out of the collector's sight, for both sides alike:
    # else each full collection of a run walks millions of objects no consumer would hold
    freeze_input()
    gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    n = len(events)
    rows: list[Row] = []
    failures: list[str] = []
    tag = uuid.uuid4().hex[:8]

    def per_event(seconds: float) -> str:
        return f"{seconds / n * 1e6:.2f} us"

    def compare(broker: str, bare_read: Any, source_of: Any) -> None:
        """``--repeat`` rounds of a bare read (``bare_read()``) then the runtime through a
        fresh source (``source_of(round)``: a group or durable of its own, from the first
        record); the best of each side, and the share of each round's pair."""
        bare: list[tuple[float, float]] = []
        runtime: list[tuple[float, float]] = []
        for round_ in range(args.repeat):
            cpu = time.process_time()
            seconds = run(bare_read)
            bare.append((seconds, time.process_time() - cpu))
            latest: dict[str, tuple[Any, ...]] = {}
            source = source_of(round_)
            cpu = time.process_time()
            got = run(partial(through_runtime, source, n, args.batch, latest, args.shards))
            runtime.append((got["seconds"], time.process_time() - cpu))
            wrong = [key for key in want if latest.get(key) != want[key]]
            if wrong or len(latest) != len(want):
                failures.append(
                    f"{broker}: the last update of {len(wrong):,} keys differs from the plain "
                    f"loop's (first: {latest.get(wrong[0]) if wrong else None} != "
                    f"{want[wrong[0]] if wrong else None})"
                )
        best_bare, best_runtime = min(bare), min(runtime)
        shares = [b[0] / r[0] for b, r in zip(bare, runtime, strict=True)]
        rows.append(
            Row(
                f"{broker}: bare read",
                {
                    "events/s": rate(n, best_bare[0]),
                    "share": "1.00",
                    "cpu/event": per_event(best_bare[1]),
                },
            )
        )
        rows.append(
            Row(
                f"{broker}: FeatureRuntime",
                {
                    "events/s": rate(n, best_runtime[0]),
                    "share": f"{best_bare[0] / best_runtime[0]:.2f}",
                    "rounds": f"{min(shares):.2f}-{max(shares):.2f}",
                    "cpu/event": per_event(best_runtime[1]),
                },
            )
        )

    # NATS JetStream
    stream, subject = f"BENCH_{tag}", f"bench.{tag}"
    if "nats" in brokers:
        try:
            asyncio.run(nats_publish(args.nats, stream, subject, payloads))
        except (OSError, TimeoutError, ImportError, _NoServers) as exc:
            rows.append(Row("NATS JetStream: skipped", {"events/s": f"no server ({exc!r})"[:60]}))
        else:
            compare(
                "NATS JetStream",
                lambda: nats_bare(args.nats, stream, subject, n, args.batch),
                lambda i: NatsSource(
                    args.nats, stream=stream, subjects=subject, durable=f"rt{tag}{i}"
                ),
            )
            asyncio.run(_nats_cleanup(args.nats, stream))

    # Redis Streams
    key = f"featurist:bench:{tag}"
    if "redis" in brokers:
        try:
            asyncio.run(redis_publish(args.redis, key, payloads))
        except (OSError, ImportError) as exc:
            rows.append(Row("Redis Streams: skipped", {"events/s": f"no server ({exc!r})"[:60]}))
        else:
            compare(
                "Redis Streams",
                lambda: redis_bare(args.redis, key, n, args.batch),
                lambda i: RedisStreamSource(args.redis, streams=key, group=f"rt{tag}{i}"),
            )
            asyncio.run(_redis_cleanup(args.redis, key))

    print_table(
        f"connectors: {n:,} JSON events over {args.keys:,} keys, read {args.batch:,} at a time, "
        f"acks included; the runtime ({args.shards} shard{'s' if args.shards > 1 else ''}) "
        "computes count/sum/mean/last per key and a consumer reads every update; the "
        f"collector's first threshold {args.gc_threshold:,} on both sides",
        ["events/s", "share", "rounds", "cpu/event"],
        rows,
    )
    print(
        "\nshare: the runtime's events/s over the bare read's with the same client (target "
        f"0.70), the best of {args.repeat} round(s) of each; rounds: the shares of the rounds "
        "(a bare read, then the runtime, back to back)"
    )
    print(
        "cpu/event: this process's CPU time an event (the broker's own not included): on a busy "
        "machine the events/s move with the load, the CPU times less"
    )
    if failures:
        for line in failures:
            print(line)
        raise SystemExit(1)
    print(f"every key's last update read equals a plain loop's ({len(want):,} keys per broker)")


async def _nats_cleanup(url: str, stream: str) -> None:
    import nats

    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def _redis_cleanup(url: str, key: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.delete(key)
    finally:
        await client.aclose()
