"""Supervisors: strategies, restart policies, budgets, escalation, backoff and restore."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from actors import (
    Actor,
    ActorSystem,
    Backoff,
    ConfigError,
    Directive,
    Escalated,
    Restart,
    Strategy,
    restart_always,
)

from .helpers import wait_until

NO_WAIT = Backoff(initial=0.0, maximum=0.0, jitter=0.0)


class Worker(Actor[Any]):
    """Counts its starts per name in a shared dict; fails on "crash"."""

    def __init__(self, name: str, starts: dict[str, int]) -> None:
        self.name = name
        self.starts = starts
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        self.starts[self.name] = self.starts.get(self.name, 0) + 1

    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed")
        if message == "exit":
            self.context.stop()
            return None
        self.seen.append(message)
        return list(self.seen)


async def spawn_three(
    system: ActorSystem, strategy: Strategy, starts: dict[str, int], **kwargs: Any
) -> list[Any]:
    sup = system.supervisor(
        "sup", strategy=strategy, decider=restart_always, backoff=NO_WAIT, **kwargs
    )
    refs = []
    for name in ("a", "b", "c"):
        refs.append(await sup.spawn(lambda n=name: Worker(n, starts), name=name))  # type: ignore[misc]
    return refs


async def test_one_for_one_restarts_only_the_failed_child() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem() as system:
        a, b, c = await spawn_three(system, Strategy.ONE_FOR_ONE, starts)
        await b.tell("crash")
        await wait_until(lambda: starts["b"] == 2)
        assert await b.ask("after") == ["after"]
        assert starts == {"a": 1, "b": 2, "c": 1}


async def test_one_for_all_restarts_every_child() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem() as system:
        a, b, c = await spawn_three(system, Strategy.ONE_FOR_ALL, starts)
        await a.tell("kept?")
        await b.tell("crash")
        await wait_until(lambda: starts == {"a": 2, "b": 2, "c": 2})
        assert await a.ask("x") == ["x"]  # a fresh instance: its state is gone


async def test_rest_for_one_restarts_exactly_the_later_siblings() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem() as system:
        a, b, c = await spawn_three(system, Strategy.REST_FOR_ONE, starts)
        await b.tell("crash")
        await wait_until(lambda: starts.get("c") == 2)
        await anyio.sleep(0.02)
        assert starts == {"a": 1, "b": 2, "c": 2}
        await c.tell("crash")
        await wait_until(lambda: starts.get("c") == 3)
        await anyio.sleep(0.02)
        assert starts == {"a": 1, "b": 2, "c": 3}


async def test_messages_waiting_in_the_mailbox_survive_a_restart() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem() as system:
        a, _, _ = await spawn_three(system, Strategy.ONE_FOR_ONE, starts)
        a.tell_nowait("crash")
        a.tell_nowait("after-1")
        a.tell_nowait("after-2")
        assert await a.ask("after-3") == ["after-1", "after-2", "after-3"]


async def test_exceeding_the_restart_budget_escalates_to_the_parent() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem(backoff=NO_WAIT, max_restarts=10) as system:
        a, b, c = await spawn_three(
            system, Strategy.ONE_FOR_ONE, starts, max_restarts=2, period=60.0
        )
        for expected in (2, 3):
            await a.tell("crash")
            await wait_until(lambda e=expected: starts["a"] == e)  # type: ignore[misc]
        assert starts["b"] == 1
        await a.tell("crash")  # the third restart within the period: the supervisor gives up
        # the root restarts the whole "sup" subtree, which restarts every child
        await wait_until(lambda: starts["b"] == 2 and starts["c"] == 2)
        assert await c.ask("alive") == ["alive"]


async def test_escalation_past_the_root_raises_escalated_from_the_system() -> None:
    starts: dict[str, int] = {}
    with pytest.raises(Escalated) as info:
        async with ActorSystem(max_restarts=1, backoff=NO_WAIT, decider=restart_always) as sys:
            ref = await sys.spawn(lambda: Worker("a", starts))
            await ref.tell("crash")
            await wait_until(lambda: starts["a"] == 2)
            await ref.tell("crash")
            await anyio.sleep(5)  # cancelled by the escalation
            pytest.fail("the system should have been shut down")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert sys.actors() == []


async def test_transient_child_is_not_restarted_after_a_normal_exit() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(lambda: Worker("t", starts), restart=Restart.TRANSIENT)
        await ref.tell("exit")
        await wait_until(lambda: not ref.is_alive)
        assert starts == {"t": 1}


async def test_transient_child_is_restarted_after_a_failure() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(
            lambda: Worker("t", starts), restart=Restart.TRANSIENT, decider=restart_always
        )
        await ref.tell("crash")
        await wait_until(lambda: starts["t"] == 2)
        assert ref.is_alive


async def test_permanent_child_is_restarted_even_after_a_normal_exit() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(lambda: Worker("p", starts), restart=Restart.PERMANENT)
        await ref.tell("exit")
        await wait_until(lambda: starts["p"] == 2)
        assert ref.is_alive


async def test_temporary_child_is_never_restarted() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(
            lambda: Worker("tmp", starts), restart=Restart.TEMPORARY, decider=restart_always
        )
        await ref.tell("crash")
        await wait_until(lambda: not ref.is_alive)
        assert starts == {"tmp": 1}


async def test_decider_stop_stops_the_child_for_good() -> None:
    starts: dict[str, int] = {}
    async with ActorSystem() as system:
        ref = await system.spawn(lambda: Worker("s", starts), decider=lambda e: Directive.STOP)
        await ref.tell("crash")
        await wait_until(lambda: not ref.is_alive)
        assert starts == {"s": 1}


async def test_restarted_actor_restores_its_state_in_on_restart() -> None:
    saved: dict[str, int] = {}
    errors: list[BaseException] = []

    class Durable(Actor[Any]):
        def __init__(self) -> None:
            self.total = 0

        async def on_restart(self, error: BaseException) -> None:
            errors.append(error)
            self.total = saved.get("total", 0)

        async def receive(self, message: Any) -> Any:
            if message == "crash":
                raise KeyError("lost")
            if message == "total":
                return self.total
            self.total += message
            saved["total"] = self.total
            return self.total

    async with ActorSystem(backoff=NO_WAIT) as system:
        ref = await system.spawn(Durable, decider=restart_always)
        await ref.tell(5)
        await ref.tell("crash")
        assert await ref.ask("total") == 5
        assert isinstance(errors[0], KeyError)


async def test_restart_waits_the_backoff_delay() -> None:
    starts: dict[str, int] = {}
    backoff = Backoff(initial=0.2, maximum=0.2, jitter=0.0)
    async with ActorSystem(backoff=backoff, decider=restart_always) as system:
        ref = await system.spawn(lambda: Worker("slow", starts))
        await ref.tell("crash")
        await anyio.sleep(0.05)
        assert starts["slow"] == 1  # still waiting out the backoff
        await wait_until(lambda: starts["slow"] == 2)


def test_backoff_grows_exponentially_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]


def test_backoff_jitter_stays_within_its_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.25)
    delays = [backoff.delay(1) for _ in range(500)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_restarts": -1}, "max_restarts must be an int >= 0, got -1"),
        ({"period": 0}, "period must be > 0, got 0"),
    ],
)
async def test_supervisor_rejects_bad_limits(kwargs: dict[str, Any], message: str) -> None:
    async with ActorSystem() as system:
        with pytest.raises(ConfigError) as info:
            system.supervisor("bad", **kwargs)
        assert str(info.value) == message
