"""Reads of single keys coalesced into rounds (``runtime._service.reads``)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from runtime._service.reads import MAX_ROUNDS, ReadBatcher, ReadsStopped


async def test_concurrent_reads_share_a_round_and_a_bad_key_fails_alone() -> None:
    calls: list[list[Any]] = []

    async def read(keys: list[Any], features: list[str] | None, as_of: Any) -> dict[Any, Any]:
        calls.append(list(keys))
        await anyio.sleep(0.01)
        if "bad" in keys:
            raise ValueError("a bad key")
        return {key: (key, features, as_of) for key in keys}

    batcher = ReadBatcher(read)
    results: dict[Any, Any] = {}

    async def one(key: Any, features: list[str] | None = None, as_of: Any = None) -> None:
        try:
            results[key] = await batcher.get(key, features, as_of)
        except ValueError as exc:
            results[key] = str(exc)

    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        async with anyio.create_task_group() as clients:
            for i in range(20):
                clients.start_soon(one, i)
            clients.start_soon(one, "bad")
            clients.start_soon(one, "x", ["n"], 5)
        # a later read goes in a round of its own
        await one("late")
        tg.cancel_scope.cancel()
    assert results["bad"] == "a bad key"
    assert results["x"] == ("x", ["n"], 5)
    assert all(results[i] == (i, None, None) for i in range(20))
    assert results["late"] == ("late", None, None)
    # one call for the 21 reads without features (it failed: then one call for each), one
    # for "x", whose features differ
    assert [len(c) for c in calls].count(21) == 1 and calls.count([0]) == 1
    assert ["late"] in calls and ["x"] in calls


@pytest.mark.parametrize("count", [1, 3])
async def test_reads_without_load_go_at_once(count: int) -> None:
    async def read(keys: list[Any], features: list[str] | None, as_of: Any) -> dict[Any, Any]:
        return {key: key * 2 for key in keys}

    batcher = ReadBatcher(read)
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        for i in range(count):
            with anyio.fail_after(1):
                assert await batcher.get(i, None, None) == i * 2
        tg.cancel_scope.cancel()


async def test_a_slow_round_does_not_hold_the_reads_after_it() -> None:
    slow = anyio.Event()

    async def read(keys: list[Any], features: list[str] | None, as_of: Any) -> dict[Any, Any]:
        if "slow" in keys:
            await slow.wait()  # a worker being started again, say
        return {key: key for key in keys}

    batcher = ReadBatcher(read)
    got: list[Any] = []

    async def one(key: Any) -> None:
        got.append(await batcher.get(key, None, None))

    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        tg.start_soon(one, "slow")
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(1):
            # later reads are answered while the slow round still waits
            for key in range(3 * MAX_ROUNDS):
                await one(key)
        assert got == list(range(3 * MAX_ROUNDS))
        slow.set()
        await anyio.wait_all_tasks_blocked()
        assert got[-1] == "slow"
        tg.cancel_scope.cancel()


async def test_while_every_round_is_busy_reads_coalesce_into_the_next() -> None:
    release = anyio.Event()
    calls: list[list[Any]] = []

    async def read(keys: list[Any], features: list[str] | None, as_of: Any) -> dict[Any, Any]:
        calls.append(list(keys))
        await release.wait()
        return {key: key for key in keys}

    batcher = ReadBatcher(read)
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        async with anyio.create_task_group() as clients:
            for key in range(MAX_ROUNDS):  # one round each: every round busy
                clients.start_soon(batcher.get, key, None, None)
                await anyio.wait_all_tasks_blocked()
            for key in range(MAX_ROUNDS, MAX_ROUNDS + 10):
                clients.start_soon(batcher.get, key, None, None)
            await anyio.wait_all_tasks_blocked()
            assert len(calls) == MAX_ROUNDS  # the ten wait for a free round
            release.set()
        tg.cancel_scope.cancel()
    assert calls[-1] == list(range(MAX_ROUNDS, MAX_ROUNDS + 10))  # together, in one call


async def test_a_read_while_run_does_not_run_fails_at_once() -> None:
    async def read(keys: list[Any], features: list[str] | None, as_of: Any) -> dict[Any, Any]:
        return {key: key * 2 for key in keys}

    batcher = ReadBatcher(read)
    assert not batcher.active
    with anyio.fail_after(1), pytest.raises(ReadsStopped):  # before run: not a wait for ever
        await batcher.get(1, None, None)
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)  # reads are taken once it has started
        assert batcher.active
        with anyio.fail_after(1):
            assert await batcher.get(2, None, None) == 4
        tg.cancel_scope.cancel()
    assert not batcher.active
    with anyio.fail_after(1), pytest.raises(ReadsStopped):  # after it ended
        await batcher.get(3, None, None)


async def test_the_reads_waiting_when_run_ends_fail() -> None:
    calls: list[list[Any]] = []

    async def read(keys: list[Any], features: list[str] | None, as_of: Any) -> dict[Any, Any]:
        calls.append(list(keys))
        await anyio.sleep_forever()  # a read that never answers: every round stays busy
        raise AssertionError("not reached")

    batcher = ReadBatcher(read)
    errors: dict[Any, BaseException] = {}

    async def one(key: Any) -> None:
        try:
            await batcher.get(key, None, None)
        except ReadsStopped as exc:
            errors[key] = exc

    with anyio.fail_after(2):
        async with anyio.create_task_group() as clients:
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.run)
                for key in range(MAX_ROUNDS):  # each in a round of its own, all busy
                    clients.start_soon(one, key)
                    await anyio.wait_all_tasks_blocked()
                clients.start_soon(one, "queued")  # waits for a free round
                await anyio.wait_all_tasks_blocked()
                assert len(calls) == MAX_ROUNDS
                tg.cancel_scope.cancel()  # the service stops
    # every reader is answered, in a round or not yet: none waits for ever
    assert set(errors) == {*range(MAX_ROUNDS), "queued"}
