"""Actors and refs: tell, ask, failures, dead letters, lifecycle hooks and timers."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import (
    Actor,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    DeadLetterReason,
    MailboxConfig,
    Restart,
)

from .helpers import wait_until


class Counter(Actor[Any]):
    def __init__(self) -> None:
        self.total = 0
        self.calls = 0

    async def receive(self, message: Any) -> Any:
        self.calls += 1
        if message == "total":
            return self.total
        if message == "calls":
            return self.calls
        if message == "boom":
            raise ValueError("boom")
        if message == "slow":
            await anyio.sleep(10)
        self.total += message
        return self.total


async def test_tell_delivers_messages_in_order_and_ask_returns_the_reply() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter)
        for i in range(100):
            await ref.tell(i)
        assert await ref.ask("total") == sum(range(100))


async def test_an_actor_is_idle_only_while_it_waits_for_a_message() -> None:
    go_on = anyio.Event()

    class Waiter(Actor[Any]):
        async def receive(self, message: Any) -> None:
            if message == "wait":
                await go_on.wait()

    async with ActorSystem() as system:
        ref = await system.spawn(Waiter)
        await wait_until(lambda: ref.idle)  # started, nothing to do
        await ref.tell(1)
        assert not ref.idle  # a message waits: the actor has not run yet
        await wait_until(lambda: ref.idle)
        await ref.tell("wait")  # in a turn: not idle, though its mailbox is empty
        await wait_until(lambda: ref.statistics().depth == 0)
        await anyio.sleep(0.01)
        assert not ref.idle
        go_on.set()
        await wait_until(lambda: ref.idle)


async def test_ask_times_out_with_ask_timeout_which_is_a_timeout_error() -> None:
    async with ActorSystem(shutdown_timeout=0.2) as system:
        ref = await system.spawn(Counter)
        with pytest.raises(AskTimeout, match=r"no reply from system/Counter within 0\.05s"):
            await ref.ask("slow", timeout=0.05)
        with pytest.raises(TimeoutError):
            await ref.ask("total", timeout=0.05)  # still stuck behind "slow"


async def test_failing_handler_is_retried_once_then_message_goes_to_dead_letters() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter)
        await ref.tell("boom")
        await ref.tell(5)
        assert await ref.ask("total") == 5  # the actor stays alive with its state
        assert await ref.ask("calls") == 5  # boom twice, 5, total, and this ask
        [letter] = system.dead_letters.letters()
        assert letter.reason is DeadLetterReason.FAILED
        assert letter.message == "boom"
        assert isinstance(letter.error, ValueError)
        assert letter.recipient == "system/Counter"


async def test_ask_whose_handler_fails_raises_the_handlers_exception() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter)
        with pytest.raises(ValueError, match="boom"):
            await ref.ask("boom")
        assert system.dead_letters.count(DeadLetterReason.FAILED) == 1


async def test_failed_batch_is_retried_message_by_message() -> None:
    handled: list[int] = []

    class Picky(Actor[int]):
        async def receive_batch(self, messages: list[int]) -> None:
            if 3 in messages:
                raise ValueError("no threes")
            handled.extend(messages)

    async with ActorSystem() as system:
        ref = await system.spawn(Picky, mailbox=MailboxConfig(max_batch_size=100))
        for i in range(6):
            ref.tell_nowait(i)
        await wait_until(lambda: len(handled) == 5)
    assert handled == [0, 1, 2, 4, 5]
    assert [d.message for d in system.dead_letters.letters(DeadLetterReason.FAILED)] == [3]


async def test_tell_to_a_stopped_actor_raises_and_records_an_undeliverable_letter() -> None:
    async with ActorSystem() as system:
        ref = await system.spawn(Counter)
        await ref.stop()
        assert not ref.is_alive
        with pytest.raises(ActorStopped):
            await ref.tell(1)
        with pytest.raises(ActorStopped):
            ref.tell_nowait(2)
        with pytest.raises(ActorStopped):
            await ref.ask(3)
        letters = system.dead_letters.letters(DeadLetterReason.UNDELIVERABLE)
        assert [d.message for d in letters] == [1, 2, 3]


async def test_on_start_and_on_stop_run_once_per_instance() -> None:
    events: list[str] = []

    class Hooks(Actor[Any]):
        async def on_start(self) -> None:
            events.append("start")

        async def on_stop(self) -> None:
            events.append("stop")

        async def receive(self, message: Any) -> Any:
            return message

    async with ActorSystem() as system:
        ref = await system.spawn(Hooks)
        assert await ref.ask("x") == "x"
    assert events == ["start", "stop"]


async def test_spawn_raises_what_the_first_on_start_raised_and_keeps_nothing() -> None:
    class Broken(Actor[Any]):
        async def on_start(self) -> None:
            raise RuntimeError("cannot start")

    async with ActorSystem() as system:
        with pytest.raises(RuntimeError, match="cannot start"):
            await system.spawn(Broken)
        assert system.actors() == []


async def test_context_stop_ends_a_transient_actor_after_the_current_message() -> None:
    class Once(Actor[Any]):
        async def receive(self, message: Any) -> None:
            self.context.stop()

    async with ActorSystem() as system:
        ref = await system.spawn(Once, restart=Restart.TRANSIENT)
        await ref.tell("go")
        with anyio.fail_after(5):
            while ref.is_alive:
                await anyio.sleep(0.001)


async def test_one_shot_timer_delivers_its_message_once() -> None:
    seen: list[str] = []

    class Alarm(Actor[str]):
        async def on_start(self) -> None:
            self.context.start_timer("wake", "ring", 0.01)

        async def receive(self, message: str) -> bool:
            if message == "active?":
                return self.context.is_timer_active("wake")
            seen.append(message)
            return True

    async with ActorSystem() as system:
        ref = await system.spawn(Alarm)
        await wait_until(lambda: seen == ["ring"])
        await anyio.sleep(0.03)
        assert seen == ["ring"]
        assert await ref.ask("active?") is False


async def test_periodic_timer_repeats_until_cancelled() -> None:
    ticks: list[int] = []

    class Ticker(Actor[str]):
        async def on_start(self) -> None:
            self.context.start_periodic_timer("tick", "tick", 0.005)

        async def receive(self, message: str) -> bool:
            if message == "cancel":
                return self.context.cancel_timer("tick")
            ticks.append(1)
            return True

    async with ActorSystem() as system:
        ref = await system.spawn(Ticker)
        await wait_until(lambda: len(ticks) >= 3)
        assert await ref.ask("cancel") is True
        count = len(ticks)
        await anyio.sleep(0.03)
        assert len(ticks) == count


async def test_timers_are_cancelled_when_the_actor_stops() -> None:
    ticks: list[int] = []

    class Ticker(Actor[str]):
        async def on_start(self) -> None:
            self.context.start_periodic_timer("tick", "tick", 0.005)

        async def receive(self, message: str) -> None:
            ticks.append(1)

    async with ActorSystem() as system:
        ref = await system.spawn(Ticker)
        await wait_until(lambda: len(ticks) >= 1)
        await ref.stop()
        count = len(ticks)
        await anyio.sleep(0.03)
        assert len(ticks) == count
        assert system.dead_letters.count() == 0


async def test_timer_with_negative_delay_is_rejected() -> None:
    from actors import ConfigError

    class Bad(Actor[Any]):
        async def on_start(self) -> None:
            self.context.start_timer("t", "x", -1)

    async with ActorSystem() as system:
        with pytest.raises(ConfigError, match="timer delay must be >= 0, got -1"):
            await system.spawn(Bad)
