"""``python -m demos.bench actors``: the actor kernel's message throughput.

Cases, each moving the same number of messages from one producer task to consumers:

- ``anyio stream, await send/receive``: a bare anyio memory object stream (capacity 1024) used
  the obvious way; every ``send`` yields to the event loop, so producer and consumer alternate;
- ``anyio stream, nowait``: the baseline, the same stream used as well as it can be
  (``send_nowait`` while there is room, the consumer drains with ``receive_nowait``): the floor
  under any actor built on it;
- ``anyio stream, nowait, lists of N``: the baseline for batches;
- ``tell, single``: ``await ref.tell(m)`` per message to one actor;
- ``tell, batches of N``: ``await ref.tell(list_of_N)``, one actor;
- ``router, 4 shards``: lists of N messages split by key with ``KeyRouter.split`` and told to 4
  shard actors (the runtime's ingest path).

The overhead ratio is the case's messages/s over the baseline's of the same shape.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from actors import Actor, ActorSystem, KeyRouter, MailboxConfig, run

from ._common import Row, Timer, peak_rss_mib, print_table, quiet_logs, rate


class Sink(Actor[Any]):
    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: Any) -> Any:
        if message is None:
            return self.count
        self.count += 1
        return None


class BatchSink(Actor[Any]):
    def __init__(self) -> None:
        self.count = 0

    async def receive(self, message: Any) -> Any:
        if message is None:
            return self.count
        self.count += len(message)
        return None

    async def receive_batch(self, messages: list[Any]) -> None:
        count = self.count
        for batch in messages:
            count += len(batch)
        self.count = count


async def bare_stream(messages: int, batch: int) -> float:
    send, receive = anyio.create_memory_object_stream[Any](1024)
    payload = list(range(batch))
    received = 0

    async def consume() -> None:
        nonlocal received
        async with receive:
            async for item in receive:
                received += len(item) if batch > 1 else 1

    with Timer() as t:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            async with send:
                if batch > 1:
                    for _ in range(messages // batch):
                        await send.send(payload)
                else:
                    for i in range(messages):
                        await send.send(i)
    assert received == messages
    return t.seconds


async def bare_stream_nowait(messages: int, batch: int) -> float:
    """The stream used as well as it can be: ``send_nowait`` while there is room, and a consumer
    that drains with ``receive_nowait`` and only waits when the stream is empty."""
    send, receive = anyio.create_memory_object_stream[Any](1024)
    payload = list(range(batch))
    received = 0

    async def consume() -> None:
        nonlocal received
        async with receive:
            while True:
                try:
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                received += len(item) if batch > 1 else 1

    with Timer() as t:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            async with send:
                item: Any = payload
                for i in range(messages // batch):
                    if batch == 1:
                        item = i
                    try:
                        send.send_nowait(item)
                    except anyio.WouldBlock:
                        await send.send(item)
    assert received == messages
    return t.seconds


async def actor_single(messages: int) -> float:
    async with ActorSystem() as system:
        ref = await system.spawn(Sink, mailbox=MailboxConfig(capacity=1024, max_batch_size=256))
        with Timer() as t:
            tell = ref.tell
            for i in range(messages):
                await tell(i)
            count = await ref.ask(None)
        assert count == messages
    return t.seconds


async def actor_batches(messages: int, batch: int) -> float:
    payload = list(range(batch))
    async with ActorSystem() as system:
        ref = await system.spawn(BatchSink, mailbox=MailboxConfig(capacity=1024, max_batch_size=64))
        with Timer() as t:
            for _ in range(messages // batch):
                await ref.tell(payload)
            count = await ref.ask(None)
        assert count == messages
    return t.seconds


async def router_shards(messages: int, batch: int, shards: int) -> float:
    router = KeyRouter(shards=shards)
    keys = [f"key-{i % 10_000}" for i in range(batch)]
    items = [(k, i) for i, k in enumerate(keys)]
    async with ActorSystem() as system:
        refs = [
            await system.spawn(
                BatchSink,
                name=f"shard-{s}",
                mailbox=MailboxConfig(capacity=1024, max_batch_size=64),
            )
            for s in range(shards)
        ]
        with Timer() as t:
            for _ in range(messages // batch):
                parts = router.split(items, lambda item: item[0])
                for ref, part in zip(refs, parts, strict=True):
                    if part:
                        await ref.tell(part)
            total = 0
            for ref in refs:
                total += await ref.ask(None)
        assert total == messages
    return t.seconds


async def main(messages: int, batch: int) -> None:
    # Batched cases move 20 times more messages, so that they run long enough to time.
    many = messages * 20
    naive = await bare_stream(messages // 5, 1)
    base_single = await bare_stream_nowait(messages, 1)
    base_batch = await bare_stream_nowait(many, batch)
    single = await actor_single(messages)
    batched = await actor_batches(many, batch)
    routed = await router_shards(messages, batch, 4)
    cases: list[tuple[str, int, float, str, float | None]] = [
        ("anyio stream, await send/receive", messages // 5, naive, "", None),
        ("[A] anyio stream, nowait", messages, base_single, "", None),
        (f"[B] anyio stream, nowait, lists of {batch}", many, base_batch, "", None),
        ("tell, single messages", messages, single, "A", messages / base_single),
        (f"tell, batches of {batch}", many, batched, "B", many / base_batch),
        (f"router -> 4 shards, batches of {batch}", messages, routed, "A", messages / base_single),
    ]
    rows = []
    for name, count, seconds, base_name, base_rate in cases:
        values = {
            "messages": f"{count:,}",
            "messages/s": rate(count, seconds),
            "seconds": f"{seconds:.3f}",
        }
        if base_rate is not None:
            values["baseline"] = base_name
            values["ratio"] = f"{count / seconds / base_rate:.2f}"
        rows.append(Row(name, values))
    print_table(
        f"actors: one producer, one consumer per shard (peak RSS {peak_rss_mib():.0f} MiB)",
        ["messages", "messages/s", "seconds", "baseline", "ratio"],
        rows,
    )
    print(
        "\nratio = the case's messages/s over its baseline's (1.00 = the actor machinery costs"
        " nothing; the overhead factor is 1/ratio). The router case includes hashing every key"
        " and splitting each list per shard, and is compared with single messages on a bare"
        " stream: what a caller would otherwise do to reach one consumer per key."
    )


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demos.bench actors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages per case")
    parser.add_argument("--batch", type=int, default=100, help="messages per batch")
    args = parser.parse_args(argv)
    quiet_logs()
    run(lambda: main(args.messages, args.batch))
