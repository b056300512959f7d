"""The actor system: spawning, graceful shutdown, pending asks, no leftover tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

import actors
from actors import (
    Actor,
    ActorRef,
    ActorStopped,
    ActorSystem,
    ConfigError,
    DeadLetterReason,
    MailboxConfig,
)

from .helpers import wait_until


class Slow(Actor[Any]):
    def __init__(self, log: list[Any], delay: float = 0.0) -> None:
        self.log = log
        self.delay = delay

    async def receive(self, message: Any) -> Any:
        if message == "hang":
            await anyio.sleep(60)
        await anyio.sleep(self.delay)
        self.log.append(message)
        return message


async def test_shutdown_drains_mailboxes_before_stopping() -> None:
    log: list[Any] = []
    async with ActorSystem() as system:
        ref = await system.spawn(lambda: Slow(log, 0.001), mailbox=MailboxConfig(capacity=100))
        for i in range(50):
            ref.tell_nowait(i)
    assert log == list(range(50))
    assert system.dead_letters.count() == 0


async def test_actors_stop_in_reverse_start_order() -> None:
    order: list[str] = []

    class Named(Actor[Any]):
        def __init__(self, name: str) -> None:
            self.name = name

        async def on_stop(self) -> None:
            order.append(self.name)

    async with ActorSystem() as system:
        for name in ("first", "second", "third"):
            await system.spawn(lambda n=name: Named(n), name=name)  # type: ignore[misc]
    assert order == ["third", "second", "first"]


async def test_ask_pending_at_shutdown_fails_with_actor_stopped_and_nothing_hangs() -> None:
    log: list[Any] = []
    outcomes: list[str] = []
    before = set(asyncio.all_tasks())

    async def asker(ref: ActorRef[Any], message: Any) -> None:
        try:
            await ref.ask(message, timeout=None)
            outcomes.append("answered")
        except ActorStopped:
            outcomes.append("stopped")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with ActorSystem(shutdown_timeout=0.2) as system:
                ref = await system.spawn(lambda: Slow(log), mailbox=MailboxConfig(max_batch_size=1))
                tg.start_soon(asker, ref, "hang")  # in the handler at shutdown
                tg.start_soon(asker, ref, "queued")  # still in the mailbox at shutdown
                await wait_until(lambda: ref.statistics().depth == 1)
    assert outcomes == ["stopped", "stopped"]
    assert set(asyncio.all_tasks()) - before == set()
    assert [d.message for d in system.dead_letters.letters(DeadLetterReason.UNDELIVERABLE)] == [
        "queued"
    ]


async def test_no_task_is_left_behind_after_the_system_exits() -> None:
    before = set(asyncio.all_tasks())
    async with ActorSystem() as system:
        for _ in range(5):
            ref = await system.spawn(lambda: Slow([]))
            await ref.tell("x")
        sup = system.supervisor("group")
        await sup.spawn(lambda: Slow([]))
    assert set(asyncio.all_tasks()) - before == set()


async def test_tell_from_outside_after_shutdown_began_raises_actor_stopped() -> None:
    log: list[Any] = []
    async with ActorSystem() as system:
        ref = await system.spawn(lambda: Slow(log))
    with pytest.raises(ActorStopped):
        await ref.tell("late")
    with pytest.raises(ActorStopped, match="shutting down"):
        await system.spawn(lambda: Slow(log))


async def test_actors_may_message_each_other_while_the_system_drains() -> None:
    log: list[Any] = []

    class Forwarder(Actor[Any]):
        def __init__(self, target: ActorRef[Any]) -> None:
            self.target = target

        async def receive(self, message: Any) -> None:
            await anyio.sleep(0.001)
            await self.target.tell(message)

    async with ActorSystem() as system:
        sink = await system.spawn(lambda: Slow(log))
        forwarder = await system.spawn(lambda: Forwarder(sink))
        for i in range(20):
            forwarder.tell_nowait(i)
    assert log == list(range(20))


async def test_spawn_outside_the_context_raises_actor_stopped() -> None:
    system = ActorSystem()
    with pytest.raises(ActorStopped, match="not running"):
        await system.spawn(lambda: Slow([]))


async def test_statistics_list_each_running_actor() -> None:
    async with ActorSystem() as system:
        await system.spawn(lambda: Slow([]), name="one")
        await system.spawn(lambda: Slow([]), name="one")
        stats = system.statistics()
        assert stats.actors == 2
        assert sorted(stats.mailboxes) == ["system/one", "system/one-1"]


def test_shutdown_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="shutdown_timeout must be > 0, got 0"):
        ActorSystem(shutdown_timeout=0)


def test_run_uses_uvloop_when_it_is_installed() -> None:
    import uvloop

    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert actors.run(loop_type) is uvloop.Loop
    assert actors.run(loop_type, use_uvloop=False) is not uvloop.Loop


def test_public_surface_is_exactly_what_all_declares() -> None:
    public = {name for name in dir(actors) if not name.startswith("_")}
    assert public == set(actors.__all__)
    for name in actors.__all__:
        obj = getattr(actors, name)
        if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__code__")):
            assert obj.__module__.startswith("actors"), name


async def test_an_actor_cancelled_at_the_shutdown_deadline_still_runs_on_stop() -> None:
    stopped: list[str] = []

    class Stuck(Actor[Any]):
        async def receive(self, message: Any) -> None:
            await anyio.sleep_forever()  # still in its handler when the deadline passes

        async def on_stop(self) -> None:
            stopped.append("on_stop")

    with anyio.fail_after(10):
        async with ActorSystem(shutdown_timeout=0.1) as system:
            ref = await system.spawn(Stuck)
            await ref.tell("hang")
            await anyio.sleep(0.01)
    assert stopped == ["on_stop"]
