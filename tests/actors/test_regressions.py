"""Regressions found in review: each test pins one fixed bug of the kernel."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import (
    Actor,
    ActorStopped,
    ActorSystem,
    Backoff,
    DeadLetterReason,
    Escalated,
    MailboxConfig,
    Restart,
    Strategy,
    restart_always,
)

from .helpers import wait_until

NO_WAIT = Backoff(initial=0.0, maximum=0.0, jitter=0.0)


async def test_batched_actor_keeps_messages_after_an_ask_that_crashes_it() -> None:
    handled: list[str] = []

    class Batched(Actor[str]):
        async def receive(self, message: str) -> str:
            raise ValueError("boom")

        async def receive_batch(self, messages: list[str]) -> None:
            handled.extend(messages)

    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(Batched, decider=restart_always)
        outcome: list[str] = []

        async def asker() -> None:
            with pytest.raises(ValueError):
                await ref.ask("boom")
            outcome.append("raised")

        async with anyio.create_task_group() as tg:
            tg.start_soon(asker)
            await anyio.lowlevel.checkpoint()
            ref.tell_nowait("m1")
            ref.tell_nowait("m2")
        await wait_until(lambda: handled == ["m1", "m2"])
        assert outcome == ["raised"]
        assert ref.statistics().processed == 3


async def test_batched_actor_counts_the_messages_of_a_turn_that_crashed() -> None:
    handled: list[str] = []

    class Batched(Actor[str]):
        async def receive_batch(self, messages: list[str]) -> None:
            if "bad" in messages:
                raise ValueError("bad")
            handled.extend(messages)

    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(Batched, decider=restart_always)
        for message in ("a", "b", "bad", "c"):
            ref.tell_nowait(message)
        await wait_until(lambda: "c" in handled)
        assert handled == ["a", "b", "c"]
        assert ref.statistics().processed == 4


async def test_cancelled_turn_gives_its_unhandled_messages_to_dead_letters_and_fails_asks() -> None:
    gate = anyio.Event()

    class Slow(Actor[str]):
        async def receive(self, message: str) -> str:
            if message == "gate":
                await gate.wait()
            if message == "hang":
                await anyio.sleep(60)
            return message

    outcome: list[str] = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with ActorSystem(shutdown_timeout=0.2) as system:
                ref = await system.spawn(Slow)  # default batches: "hang" and the ask in one turn

                async def asker() -> None:
                    try:
                        await ref.ask("queued", timeout=None)
                    except ActorStopped:
                        outcome.append("stopped")

                ref.tell_nowait("gate")
                await wait_until(lambda: ref.statistics().depth == 0)
                ref.tell_nowait("hang")
                tg.start_soon(asker)
                await wait_until(lambda: ref.statistics().depth == 2)
                gate.set()
    assert outcome == ["stopped"]
    letters = system.dead_letters.letters(DeadLetterReason.UNDELIVERABLE)
    assert [letter.message for letter in letters] == ["hang", "queued"]


async def test_slow_periodic_timer_does_not_starve_the_mailbox() -> None:
    class Poller(Actor[str]):
        async def on_start(self) -> None:
            self.context.start_periodic_timer("poll", "poll", 0.005)

        async def receive(self, message: str) -> str | None:
            if message == "poll":
                await anyio.sleep(0.01)  # slower than the interval
                return None
            return "pong"

    async with ActorSystem(shutdown_timeout=1) as system:
        ref = await system.spawn(Poller)
        await anyio.sleep(0.05)
        assert await ref.ask("ping", timeout=5) == "pong"


async def test_rest_for_one_survives_a_child_that_fails_while_being_stopped() -> None:
    class Worker(Actor[str]):
        async def receive(self, message: str) -> None:
            raise RuntimeError("crash")

    async with ActorSystem() as system:
        sup = system.supervisor(
            "sup", strategy=Strategy.REST_FOR_ONE, decider=restart_always, backoff=NO_WAIT
        )
        await sup.spawn(Worker, name="a")
        b = await sup.spawn(Worker, name="b")
        b.tell_nowait("crash")
        await b.stop()
        assert not b.is_alive
    assert system.actors() == []


async def test_escalation_to_the_root_does_not_wait_to_drain_a_failed_actor() -> None:
    class Worker(Actor[str]):
        async def receive(self, message: str) -> None:
            if message == "crash":
                raise RuntimeError("crash")

    with anyio.fail_after(2):  # well under shutdown_timeout
        with pytest.raises(Escalated):
            async with ActorSystem(
                max_restarts=0, decider=restart_always, shutdown_timeout=30
            ) as system:
                ref = await system.spawn(Worker, mailbox=MailboxConfig(max_batch_size=1))
                ref.tell_nowait("crash")
                ref.tell_nowait("queued")
                await anyio.sleep_forever()
    undeliverable = system.dead_letters.letters(DeadLetterReason.UNDELIVERABLE)
    assert [letter.message for letter in undeliverable] == ["queued"]


async def test_drain_waits_for_messages_held_by_a_restarting_actor() -> None:
    handled: list[str] = []

    class Worker(Actor[str]):
        async def receive(self, message: str) -> None:
            if message == "crash":
                raise RuntimeError("crash")
            handled.append(message)

    class Other(Actor[str]):
        async def receive(self, message: str) -> None:
            await anyio.sleep(0.01)

    backoff = Backoff(initial=0.05, maximum=0.05, jitter=0.0)
    async with ActorSystem(backoff=backoff) as system:
        ref = await system.spawn(Worker, decider=restart_always)
        other = await system.spawn(Other)
        for message in ("crash", "a", "b"):
            ref.tell_nowait(message)
        other.tell_nowait("x")
    assert handled == ["a", "b"]


async def test_on_stop_of_a_later_actor_can_still_use_an_earlier_one() -> None:
    order: list[str] = []

    class Store(Actor[str]):
        async def receive(self, message: str) -> str:
            return "flushed"

        async def on_stop(self) -> None:
            order.append("store stopped")

    class Writer(Actor[str]):
        def __init__(self, store: Any) -> None:
            self.store = store

        async def on_stop(self) -> None:
            await anyio.sleep(0.01)
            order.append(await self.store.ask("flush", timeout=1))

    async with ActorSystem() as system:
        store = await system.spawn(Store)
        await system.spawn(lambda: Writer(store))
    assert order == ["flushed", "store stopped"]


async def test_shutdown_awaited_from_inside_an_actor_raises_instead_of_hanging() -> None:
    errors: list[BaseException] = []

    class Quitter(Actor[str]):
        async def receive(self, message: str) -> None:
            try:
                await self.context.system.shutdown()
            except RuntimeError as exc:
                errors.append(exc)

    async with ActorSystem() as system:
        ref = await system.spawn(Quitter)
        await ref.tell("quit")
        await wait_until(lambda: bool(errors))
    assert "inside one of its actors" in str(errors[0])


async def test_actor_stopping_its_own_ref_does_not_deadlock() -> None:
    class SelfStopper(Actor[str]):
        async def receive(self, message: str) -> None:
            await self.context.self.stop()

    async with ActorSystem() as system:
        ref = await system.spawn(SelfStopper)
        await ref.tell("stop")
        await wait_until(lambda: not ref.is_alive)


async def test_restart_backoff_is_not_cut_short_by_a_timer_tick() -> None:
    starts: list[str] = []

    class Ticking(Actor[str]):
        async def on_start(self) -> None:
            starts.append("ticking")
            self.context.start_periodic_timer("tick", "tick", 0.005)

        async def receive(self, message: str) -> None:
            pass

    class Failing(Actor[str]):
        async def on_start(self) -> None:
            starts.append("failing")

        async def receive(self, message: str) -> None:
            raise RuntimeError("crash")

    backoff = Backoff(initial=0.2, maximum=0.2, jitter=0.0)
    async with ActorSystem() as system:
        sup = system.supervisor(
            "sup", strategy=Strategy.ONE_FOR_ALL, backoff=backoff, decider=restart_always
        )
        await sup.spawn(Ticking)
        failing = await sup.spawn(Failing)
        await failing.tell("crash")
        await anyio.sleep(0.1)
        assert starts == ["ticking", "failing"]  # both still waiting out the backoff
        await wait_until(lambda: len(starts) == 4)


async def test_context_stop_from_a_timer_handler_stops_the_actor() -> None:
    class Once(Actor[str]):
        async def on_start(self) -> None:
            self.context.start_timer("t", "timeout", 0.01)

        async def receive(self, message: str) -> None:
            self.context.stop()

    async with ActorSystem() as system:
        ref = await system.spawn(Once, restart=Restart.TRANSIENT)
        await wait_until(lambda: not ref.is_alive)


async def test_a_stop_request_does_not_outlive_a_crash() -> None:
    class Worker(Actor[str]):
        async def receive(self, message: str) -> str:
            if message == "stop-then-fail":
                self.context.stop()
                raise RuntimeError("failed after asking to stop")
            return "ok"

    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(Worker, decider=restart_always, restart=Restart.TRANSIENT)
        await ref.tell("stop-then-fail")
        assert await ref.ask("hello") == "ok"
        await anyio.sleep(0.02)
        assert ref.is_alive


async def test_a_queued_stop_wins_over_a_queued_restart() -> None:
    starts: list[int] = []

    class Worker(Actor[str]):
        async def on_start(self) -> None:
            starts.append(self.context.restarts)

        async def receive(self, message: str) -> None:
            raise RuntimeError("crash")

    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(Worker, decider=restart_always)
        ref.tell_nowait("crash")
        with anyio.fail_after(5):
            while ref.statistics().system_depth == 0:  # the restart is queued, not yet served
                await anyio.lowlevel.checkpoint()
        await ref.stop()
    assert starts == [0]


async def test_depth_includes_messages_held_back_after_a_crash() -> None:
    class Worker(Actor[str]):
        async def receive(self, message: str) -> None:
            if message == "crash":
                raise RuntimeError("crash")

    backoff = Backoff(initial=0.3, maximum=0.3, jitter=0.0)
    async with ActorSystem(backoff=backoff) as system:
        ref = await system.spawn(Worker, decider=restart_always)
        for message in ("crash", "a", "b"):
            ref.tell_nowait(message)
        await wait_until(lambda: ref.statistics().processed == 1)
        assert ref.statistics().depth == 2


async def test_timer_heap_stays_bounded_when_a_timer_is_re_armed_many_times() -> None:
    class Rearm(Actor[int]):
        async def receive(self, message: int) -> None:
            self.context.start_timer("idle", "idle", 60)

    async with ActorSystem() as system:
        ref = await system.spawn(Rearm)
        for i in range(5_000):
            await ref.tell(i)
        await ref.ask(-1)
        assert len(system.timers._heap) < 300


async def test_actor_of_another_system_cannot_tell_into_a_system_that_is_shutting_down() -> None:
    class Sink(Actor[str]):
        async def receive(self, message: str) -> None:
            pass

    class Busy(Actor[str]):
        async def receive(self, message: str) -> None:
            await anyio.sleep(0.1)

    class Sender(Actor[str]):
        def __init__(self, target: Any) -> None:
            self.target = target

        async def receive(self, message: str) -> str:
            try:
                await self.target.tell("from another system")
            except ActorStopped:
                return "refused"
            return "accepted"

    results: list[str] = []
    async with ActorSystem("other") as other:
        async with ActorSystem("a", shutdown_timeout=1) as a:
            sink = await a.spawn(Sink)
            busy = await a.spawn(Busy)
            busy.tell_nowait("work")
            sender = await other.spawn(lambda: Sender(sink))

            async def during_shutdown() -> None:
                await anyio.sleep(0.01)
                results.append(await sender.ask("go"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(during_shutdown)
                tg.start_soon(a.shutdown)
    assert results == ["refused"]


async def test_closing_a_mailbox_keeps_the_message_of_a_sender_that_was_waiting() -> None:
    class Stuck(Actor[int]):
        async def receive(self, message: int) -> None:
            await anyio.sleep(10)

    told: list[int] = []
    async with anyio.create_task_group() as tg:
        async with ActorSystem(shutdown_timeout=0.2) as system:
            ref = await system.spawn(Stuck, mailbox=MailboxConfig(capacity=1, max_batch_size=2))

            async def send(i: int) -> None:
                await ref.tell(i)
                told.append(i)

            for i in range(4):
                tg.start_soon(send, i)
                await anyio.sleep(0.01)
    assert told == [0, 1, 2, 3]
    assert sorted(letter.message for letter in system.dead_letters.letters()) == [0, 1, 2, 3]


async def test_cancelled_loads_do_not_grow_the_loader_queue() -> None:
    from actors import BatchLoader

    async def stuck(keys: list[int]) -> list[int]:
        await anyio.sleep(3600)
        return keys

    async with anyio.create_task_group() as tg:
        loader = BatchLoader(stuck, max_in_flight=1, max_batch_size=10)
        async with loader:
            for i in range(2_000):
                with anyio.move_on_after(0.0001):
                    await loader.load(i)
            assert loader.statistics().queued < 100
            tg.cancel_scope.cancel()


async def test_clear_during_a_load_makes_the_next_load_ask_again() -> None:
    from actors import BatchLoader

    calls: list[list[str]] = []

    async def fetch(keys: list[str]) -> list[str]:
        calls.append(list(keys))
        await anyio.sleep(0.05)
        return [f"v{len(calls)}" for _ in keys]

    async with BatchLoader(fetch, cache={}) as loader:
        async with anyio.create_task_group() as tg:
            tg.start_soon(loader.load, "k")
            await anyio.sleep(0.01)  # the first load is in flight
            loader.clear("k")
            assert await loader.load("k") == "v2"
    assert calls == [["k"], ["k"]]
