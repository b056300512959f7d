"""Mailboxes: capacity, overflow policies, batches, statistics and the system channel."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import (
    Actor,
    ActorSystem,
    ConfigError,
    DeadLetterReason,
    MailboxConfig,
    MailboxFull,
    Overflow,
)

from .helpers import wait_until


class Gate(Actor[Any]):
    """Records messages; blocks in its handler until ``gate`` is set."""

    def __init__(self, gate: anyio.Event, seen: list[Any]) -> None:
        self.gate = gate
        self.seen = seen

    async def receive(self, message: Any) -> Any:
        await self.gate.wait()
        self.seen.append(message)
        return len(self.seen)


class Batches(Actor[int]):
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches

    async def receive(self, message: int) -> Any:
        return sum(len(b) for b in self.batches)

    async def receive_batch(self, messages: list[int]) -> None:
        self.batches.append(list(messages))


async def test_sender_blocks_when_mailbox_is_full_and_resumes_when_it_drains() -> None:
    gate, seen = anyio.Event(), []
    async with ActorSystem() as system:
        ref = await system.spawn(
            lambda: Gate(gate, seen), mailbox=MailboxConfig(capacity=2, max_batch_size=1)
        )
        sent = []

        async def producer() -> None:
            for i in range(6):
                await ref.tell(i)
                sent.append(i)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            # the actor holds message 0 in its handler; 2 more fit; the producer blocks on 3
            await wait_until(lambda: ref.statistics().senders_waiting == 1)
            assert sent == [0, 1, 2]
            assert ref.statistics().depth == 2
            gate.set()
        assert sent == list(range(6))
        await wait_until(lambda: len(seen) == 6)
        assert seen == list(range(6))


async def test_tell_nowait_raises_mailbox_full_when_blocking_policy_mailbox_is_full() -> None:
    gate, seen = anyio.Event(), []
    async with ActorSystem() as system:
        ref = await system.spawn(lambda: Gate(gate, seen), mailbox=MailboxConfig(capacity=1))
        ref.tell_nowait(0)
        await wait_until(lambda: ref.statistics().depth == 0)  # taken into the handler
        ref.tell_nowait(1)
        with pytest.raises(MailboxFull):
            ref.tell_nowait(2)
        with pytest.raises(anyio.WouldBlock):  # MailboxFull is a WouldBlock
            ref.tell_nowait(2)
        gate.set()


async def test_drop_policy_sends_overflow_to_dead_letters() -> None:
    gate, seen = anyio.Event(), []
    async with ActorSystem() as system:
        ref = await system.spawn(
            lambda: Gate(gate, seen), mailbox=MailboxConfig(capacity=1, overflow=Overflow.DROP)
        )
        await ref.tell("a")
        await wait_until(lambda: ref.statistics().depth == 0)
        await ref.tell("b")
        await ref.tell("c")
        ref.tell_nowait("d")
        dropped = system.dead_letters.letters(DeadLetterReason.DROPPED)
        assert [letter.message for letter in dropped] == ["c", "d"]
        assert ref.statistics().dropped == 2
        gate.set()
        await wait_until(lambda: len(seen) == 2)
        assert seen == ["a", "b"]


async def test_fail_policy_raises_mailbox_full_from_tell() -> None:
    gate, seen = anyio.Event(), []
    async with ActorSystem() as system:
        ref = await system.spawn(
            lambda: Gate(gate, seen), mailbox=MailboxConfig(capacity=1, overflow=Overflow.FAIL)
        )
        await ref.tell("a")
        await wait_until(lambda: ref.statistics().depth == 0)
        await ref.tell("b")
        with pytest.raises(MailboxFull, match=r"mailbox of system/.* is full"):
            await ref.tell("c")
        gate.set()


async def test_batch_handler_gets_at_most_max_batch_size_messages_in_order() -> None:
    batches: list[list[int]] = []
    async with ActorSystem() as system:
        ref = await system.spawn(
            lambda: Batches(batches), mailbox=MailboxConfig(capacity=100, max_batch_size=8)
        )
        for i in range(50):
            ref.tell_nowait(i)
        assert await ref.ask(0) == 50
    assert [m for b in batches for m in b] == list(range(50))
    assert max(len(b) for b in batches) == 8
    assert len(batches) < 50


async def test_actor_yields_to_others_between_batches() -> None:
    order: list[str] = []

    class Busy(Actor[int]):
        async def receive_batch(self, messages: list[int]) -> None:
            order.append("busy")

    class Other(Actor[int]):
        async def receive(self, message: int) -> None:
            order.append("other")

    async with ActorSystem() as system:
        busy = await system.spawn(Busy, mailbox=MailboxConfig(capacity=100, max_batch_size=10))
        other = await system.spawn(Other)
        for i in range(100):
            busy.tell_nowait(i)
        other.tell_nowait(0)
        await wait_until(lambda: len(order) == 11)
    # Busy needs ten turns; Other gets its turn before Busy has taken all of them.
    assert order.index("other") < 10


async def test_statistics_report_depth_capacity_waiting_and_processed() -> None:
    gate, seen = anyio.Event(), []
    async with ActorSystem() as system:
        ref = await system.spawn(
            lambda: Gate(gate, seen), mailbox=MailboxConfig(capacity=3, max_batch_size=1)
        )
        for i in range(4):
            await ref.tell(i)
        await wait_until(lambda: ref.statistics().depth == 3)
        stats = ref.statistics()
        assert (stats.depth, stats.capacity, stats.senders_waiting, stats.processed) == (
            3,
            3,
            0,
            0,
        )
        gate.set()
        await wait_until(lambda: ref.statistics().processed == 4)
        assert ref.statistics().depth == 0


async def test_stop_works_while_mailbox_is_full_and_a_sender_is_blocked() -> None:
    gate, seen = anyio.Event(), []
    async with ActorSystem() as system:
        ref = await system.spawn(lambda: Gate(gate, seen), mailbox=MailboxConfig(capacity=2))
        outcome: list[str] = []

        async def blocked_sender() -> None:
            try:
                for i in range(10):
                    await ref.tell(i)
            except Exception as exc:
                outcome.append(type(exc).__name__)

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_sender)
            await wait_until(lambda: ref.statistics().senders_waiting == 1)
            with anyio.fail_after(5):
                # The actor is stuck in its handler; stop still gets through once it returns.
                async with anyio.create_task_group() as inner:
                    inner.start_soon(ref.stop)
                    await anyio.sleep(0.01)
                    gate.set()
        assert not ref.is_alive
        assert outcome == ["ActorStopped"]
        undeliverable = system.dead_letters.count(DeadLetterReason.UNDELIVERABLE)
        assert undeliverable >= 2  # what was left in the full mailbox, and the refused message


async def test_system_messages_are_served_before_waiting_user_messages() -> None:
    order: list[str] = []

    class Recorder(Actor[str]):
        async def receive(self, message: str) -> None:
            if message == "first":
                self.context.start_timer("t", "timer", 0)
                await anyio.sleep(0.05)  # the timer fires while user messages wait
            order.append(message)

    async with ActorSystem() as system:
        ref = await system.spawn(Recorder, mailbox=MailboxConfig(max_batch_size=1))
        for m in ("first", "a", "b", "c"):
            ref.tell_nowait(m)
        await wait_until(lambda: len(order) == 5)
    assert order[:2] == ["first", "timer"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be an int >= 1, got 0"),
        ({"max_batch_size": 0}, "max_batch_size must be an int >= 1, got 0"),
        ({"overflow": "block"}, "overflow must be an Overflow member, got 'block'"),
    ],
)
def test_mailbox_config_rejects_bad_limits_with_exact_message(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        MailboxConfig(**kwargs)
    assert str(info.value) == message
