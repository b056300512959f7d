"""The fraud demo on a real broker, with a crash in the middle (``--source``, ``--sink``).

The simulated transactions are published as JSON to a NATS JetStream stream
(``--source nats://127.0.0.1:4222/fraud``) or a Redis stream
(``--source redis://127.0.0.1:6379/0?stream=fraud``), under names of this run's own. Then:

1. a child process consumes them (``rt.consume`` of a ``NatsSource`` or ``RedisStreamSource``),
   writes every feature update to Redis (``--sink redis://...``: a hash per card, through
   ``run_sink``) and checkpoints (at a quarter of the stream, and every ``CHECKPOINT_EVERY``
   seconds); it is killed with SIGKILL once it has read about half of the stream, with a
   checkpoint behind it and messages read since that no checkpoint covers (nor any
   acknowledgement);
2. a new runtime in this process restores the last checkpoint and consumes from its position
   to the end: the broker gives again what the dead process had read after the checkpoint;
3. every card's features are compared with a run that read the same transactions directly,
   with no crash, and every card's Redis hash with what the runtime shows.

Nothing lost, nothing counted twice: the summary says whether every card agrees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.to_thread
import msgspec

from runtime import (
    CheckpointConfig,
    FeatureRuntime,
    FeatureSet,
    NatsSource,
    RedisSink,
    RedisStreamSource,
    Source,
    run_sink,
)

#: seconds between the checkpoints of the consuming processes
CHECKPOINT_EVERY = 0.5
#: records a consume call reads at a time
BATCH = 1024


class BrokerError(Exception):
    """A broker or a URL the demo cannot use."""


def parse_source(url: str, tag: str) -> dict[str, Any]:
    """``nats://host:port/name`` or ``redis://host:port/db?stream=name``: the broker, its
    address and the names of this run's stream (``tag`` makes them new)."""
    parts = urlsplit(url)
    if parts.scheme == "nats":
        name = parts.path.strip("/") or "fraud"
        return {
            "kind": "nats",
            "url": f"nats://{parts.netloc}",
            "stream": f"{name.upper()}_{tag}",
            "subject": f"{name}.{tag}",
        }
    if parts.scheme == "redis":
        name = parse_qs(parts.query).get("stream", ["fraud"])[0]
        return {
            "kind": "redis",
            "url": f"redis://{parts.netloc}{parts.path or '/0'}",
            "stream": f"{name}:{tag}",
        }
    raise BrokerError(f"--source: nats://host:port/name or redis://host:port/db, got {url!r}")


def parse_sink(url: str, tag: str) -> dict[str, Any]:
    """``redis://host:port/db[?prefix=...]``: where the hashes go (``tag`` in the prefix)."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise BrokerError(f"--sink: redis://host:port/db, got {url!r}")
    prefix = parse_qs(parts.query).get("prefix", ["fraud:"])[0]
    return {"url": f"redis://{parts.netloc}{parts.path or '/0'}", "prefix": f"{prefix}{tag}:"}


def make_source(spec: dict[str, Any]) -> Source:
    if spec["kind"] == "nats":
        return NatsSource(
            spec["url"], stream=spec["stream"], subjects=spec["subject"], durable="fraud"
        )
    return RedisStreamSource(spec["url"], streams=spec["stream"], group="fraud")


async def publish(spec: dict[str, Any], payloads: Sequence[bytes]) -> None:
    """Publish the transactions to the broker, in order."""
    if spec["kind"] == "nats":
        import nats

        nc = await nats.connect(spec["url"], connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            await js.add_stream(name=spec["stream"], subjects=[spec["subject"]])
            for start in range(0, len(payloads), 10_000):
                for payload in payloads[start : start + 10_000]:
                    await nc.publish(spec["subject"], payload)
                await nc.flush()
            deadline = time.monotonic() + 60
            while (await js.stream_info(spec["stream"])).state.messages < len(payloads):
                if time.monotonic() > deadline:
                    raise BrokerError("JetStream did not store every transaction in 60 s")
                await anyio.sleep(0.05)
        finally:
            await nc.close()
        return
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(spec["url"], socket_connect_timeout=2)
    try:
        for start in range(0, len(payloads), 10_000):
            async with client.pipeline(transaction=False) as pipe:
                for payload in payloads[start : start + 10_000]:
                    pipe.xadd(spec["stream"], {"data": payload})
                await pipe.execute()
    finally:
        await client.aclose()


async def clean_up(spec: dict[str, Any], sink: dict[str, Any]) -> None:
    """Remove this run's stream and hashes."""
    import redis.asyncio

    if spec["kind"] == "nats":
        import nats

        nc = await nats.connect(spec["url"], connect_timeout=2, max_reconnect_attempts=1)
        try:
            await nc.jetstream().delete_stream(spec["stream"])
        finally:
            await nc.close()
    client = redis.asyncio.Redis.from_url(sink["url"], socket_connect_timeout=2)
    try:
        if spec["kind"] == "redis":
            await client.delete(spec["stream"])
        async for key in client.scan_iter(match=sink["prefix"] + "*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


async def consume_part(
    feature_set: FeatureSet,
    spec: dict[str, Any],
    sink: dict[str, Any],
    directory: str,
    total: int,
    report: Any = None,
    cards: Sequence[str] = (),
) -> dict[str, Any]:
    """Consume the stream with checkpoints in ``directory`` (restoring the newest), every
    update to the Redis sink, until the runtime has read all ``total`` transactions;
    ``report(rt)`` after each batch (it may pause, or take a checkpoint). Returns the
    checkpoint restored, and the values of ``cards`` at the end (those the runtime knows)."""
    config = CheckpointConfig(directory=directory, interval=CHECKPOINT_EVERY, on_shutdown=False)
    rt = FeatureRuntime(feature_set, checkpoints=config, payload_format="json")
    async with rt, RedisSink(sink["url"], prefix=sink["prefix"], ttl="1h") as redis_sink:
        async with run_sink(rt, redis_sink), make_source(spec) as source:
            # rt.position: the transactions read, those restored from a checkpoint included
            while rt.position < total:
                await rt.consume(source, batch_size=BATCH, until=min(BATCH, total - rt.position))
                if report is not None:
                    await report(rt)
        values: dict[str, dict[str, Any]] = {}
        for start in range(0, len(cards), 1000):
            found = await rt.get_many(list(cards[start : start + 1000]))
            values.update((card, v.values) for card, v in found.items() if v.known)
        return {"restored": rt.restored, "values": values}


def child_main(config: dict[str, Any]) -> None:
    """The consuming process that is killed: a checkpoint at a quarter of the stream, then
    ``read <records> <checkpoint position>`` after each batch, a little slower than it could
    (a consumer with other work), so that the parent kills it half-way."""
    from actors import run

    from .__main__ import build_feature_set

    feature_set = build_feature_set(config["merchants_db"])
    total = config["total"]

    async def report(rt: FeatureRuntime) -> None:
        if rt.last_checkpoint is None and rt.position >= total // 4:
            await rt.checkpoint()
        checkpoint = rt.last_checkpoint
        print(f"read {rt.position} {-1 if checkpoint is None else checkpoint.position}", flush=True)
        await anyio.sleep(0.005)

    run(
        lambda: consume_part(
            feature_set, config["source"], config["sink"], config["dir"], total, report
        )
    )


async def crash_child(config: dict[str, Any], kill_at: int) -> dict[str, int]:
    """Run the child until it has read ``kill_at`` records with a checkpoint behind it, then
    SIGKILL it; returns what it had read and the position of its last checkpoint."""

    def run_and_kill() -> dict[str, int]:
        child = subprocess.Popen(
            [sys.executable, "-m", "demos.fraud.broker", json.dumps(config)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert child.stdout is not None
        read = position = 0
        try:
            for line in child.stdout:
                _, n, at = line.split()
                read, position = int(n), int(at)
                if read >= kill_at and 0 < position < read:
                    break
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
        return {"read": read, "checkpoint": position}

    return await anyio.to_thread.run_sync(run_and_kill)


async def run_on_broker(
    feature_set: FeatureSet,
    merchants_db: Path,
    events: list[dict[str, Any]],
    cards: list[str],
    source_url: str,
    sink_url: str,
) -> dict[str, Any]:
    """Publish, consume with a crash half-way, resume, and compare (the module's docstring)."""
    tag = uuid.uuid4().hex[:8]
    spec, sink = parse_source(source_url, tag), parse_sink(sink_url, tag)
    payloads = [msgspec.json.encode(event) for event in events]
    started = time.perf_counter()
    try:
        await publish(spec, payloads)
    except (OSError, TimeoutError) as exc:
        raise BrokerError(f"cannot publish to {source_url}: {exc}") from exc
    published_s = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory(prefix="featurist-fraud-broker-") as directory:
            config = {
                "merchants_db": str(merchants_db),
                "source": spec,
                "sink": sink,
                "dir": directory,
                "total": len(payloads),
            }
            killed = await crash_child(config, kill_at=len(payloads) // 2)
            started = time.perf_counter()
            resumed = await consume_part(
                feature_set, spec, sink, directory, len(payloads), cards=cards
            )
            resumed_s = time.perf_counter() - started
            restored, got = resumed["restored"], resumed["values"]
        # the same transactions, read directly by a runtime that never stopped
        async with FeatureRuntime(feature_set, payload_format="json") as direct:
            await direct.ingest_many(payloads)
            await direct.flush()
            want = {c: v.values for c, v in (await direct.get_many(cards)).items() if v.known}
        differing = sorted(card for card in set(want) | set(got) if want.get(card) != got.get(card))
        stale = await _redis_disagrees(sink, got)
    finally:
        await clean_up(spec, sink)
    return {
        "broker": spec["kind"],
        "published": len(payloads),
        "published_seconds": published_s,
        "killed_after": killed["read"],
        "checkpoint_position": killed["checkpoint"],
        "restored_position": None if restored is None else restored.position,
        "resumed_seconds": resumed_s,
        "cards": len(want),
        "cards_differing": len(differing),
        "first_differing": differing[:5],
        "redis_hashes_differing": stale,
    }


async def _redis_disagrees(sink: dict[str, Any], values: dict[str, dict[str, Any]]) -> int:
    """Cards whose Redis hash does not hold the values the runtime shows."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(sink["url"], socket_connect_timeout=2)
    wrong = 0
    try:
        for card, expected in values.items():
            stored = await client.hgetall(sink["prefix"] + card)
            decoded = {_text(k): msgspec.json.decode(v) for k, v in stored.items()}
            decoded.pop("_event_time", None)
            if decoded != expected:
                wrong += 1
    finally:
        await client.aclose()
    return wrong


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    child_main(json.loads(sys.argv[1]))
