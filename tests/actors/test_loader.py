"""Tests of the batching loader: coalescing, limits, errors, timeouts, cache and shutdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors._exceptions import (
    ActorStopped,
    BatchResultError,
    ConfigError,
    LoaderError,
    LoadTimeout,
)
from actors._loader import BatchLoader, LoaderStatistics


class Source:
    """A batch function that records its calls and can be held at a gate."""

    def __init__(self, *, gated: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.gate = anyio.Event()
        if not gated:
            self.gate.set()
        self.started = anyio.Event()
        self.in_flight = 0
        self.peak_in_flight = 0

    async def __call__(self, keys: list[str]) -> Sequence[str | Exception]:
        self.calls.append(list(keys))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.started.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return [ValueError(f"no {k}") if k.startswith("bad") else f"v:{k}" for k in keys]


async def test_50_concurrent_loads_make_exactly_one_batch_call() -> None:
    source = Source()
    results: dict[int, str] = {}
    async with BatchLoader(source) as loader:

        async def load(i: int) -> None:
            results[i] = await loader.load(f"k{i}")

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(load, i)
    assert len(source.calls) == 1
    assert sorted(source.calls[0]) == sorted(f"k{i}" for i in range(50))
    assert results == {i: f"v:k{i}" for i in range(50)}


async def test_250_concurrent_loads_make_3_calls_of_at_most_100_keys() -> None:
    source = Source()
    async with BatchLoader(source, max_batch_size=100) as loader:
        async with anyio.create_task_group() as tg:
            for i in range(250):
                tg.start_soon(loader.load, f"k{i}")
    assert len(source.calls) == 3
    assert all(len(call) <= 100 for call in source.calls)
    assert sorted(k for call in source.calls for k in call) == sorted(f"k{i}" for i in range(250))


async def test_max_in_flight_2_is_never_exceeded() -> None:
    source = Source(gated=True)
    keys = [f"k{i}" for i in range(10)]
    async with BatchLoader(source, max_batch_size=1, max_in_flight=2) as loader:
        async with anyio.create_task_group() as tg:
            tg.start_soon(loader.load_many, keys)
            await source.started.wait()
            # Everything else is now blocked: a third call would have started by now.
            await anyio.wait_all_tasks_blocked()
            assert source.in_flight == 2
            assert loader.statistics().queued == 8
            source.gate.set()
    assert source.peak_in_flight == 2
    assert sorted(k for call in source.calls for k in call) == keys


async def test_same_key_loaded_concurrently_is_fetched_once() -> None:
    source = Source()
    results: list[object] = []
    async with BatchLoader(source) as loader:

        async def load_one() -> None:
            results.append(await loader.load("a"))

        async def load_many() -> None:
            results.append(await loader.load_many(["a", "b", "a"]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(load_one)
            tg.start_soon(load_many)
    assert source.calls == [["a", "b"]]
    assert sorted(map(str, results)) == sorted(["v:a", str(["v:a", "v:b", "v:a"])])


async def test_load_of_a_key_in_flight_waits_for_that_call_instead_of_asking_again() -> None:
    source = Source(gated=True)
    results: list[str] = []
    async with BatchLoader(source) as loader:

        async def load() -> None:
            results.append(await loader.load("a"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            await source.started.wait()
            tg.start_soon(load)
            await anyio.wait_all_tasks_blocked()
            source.gate.set()
    assert source.calls == [["a"]]
    assert results == ["v:a", "v:a"]


async def test_error_raised_by_batch_fn_reaches_every_caller_and_loader_keeps_working() -> None:
    boom = RuntimeError("backend down")
    failing = True
    calls = 0

    async def batch_fn(keys: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if failing:
            raise boom
        return [k.upper() for k in keys]

    caught: list[BaseException] = []
    async with BatchLoader(batch_fn) as loader:

        async def load(key: str) -> None:
            with pytest.raises(RuntimeError) as info:
                await loader.load(key)
            caught.append(info.value)

        async with anyio.create_task_group() as tg:
            for key in ("a", "b", "c"):
                tg.start_soon(load, key)
        failing = False
        assert await loader.load_many(["a", "b"]) == ["A", "B"]
    assert calls == 2
    assert caught == [boom, boom, boom]


async def test_exception_element_is_raised_only_to_its_keys_caller() -> None:
    source = Source()
    async with BatchLoader(source) as loader:
        outcomes: dict[str, object] = {}

        async def load(key: str) -> None:
            try:
                outcomes[key] = await loader.load(key)
            except ValueError as exc:
                outcomes[key] = exc

        async with anyio.create_task_group() as tg:
            for key in ("a", "bad", "b"):
                tg.start_soon(load, key)
    assert len(source.calls) == 1
    assert outcomes["a"] == "v:a"
    assert outcomes["b"] == "v:b"
    assert isinstance(outcomes["bad"], ValueError)
    assert str(outcomes["bad"]) == "no bad"


async def test_wrong_length_result_raises_batch_result_error_naming_the_counts() -> None:
    async def batch_fn(keys: list[str]) -> list[str]:
        return keys[:-1]

    async with BatchLoader(batch_fn, name="x") as loader:
        with pytest.raises(BatchResultError) as info:
            await loader.load_many(["a", "b", "c", "d"])
    assert str(info.value) == "batch function of loader 'x' returned 3 results for 4 keys"
    assert isinstance(info.value, LoaderError)


async def test_non_sequence_result_raises_batch_result_error() -> None:
    async def batch_fn(keys: list[str]) -> Any:
        return {k: k for k in keys}

    loader: BatchLoader[str, str] = BatchLoader(batch_fn, name="x")
    async with loader:
        with pytest.raises(BatchResultError, match="returned dict, expected a sequence of 2"):
            await loader.load_many(["a", "b"])


async def test_batch_call_over_the_timeout_raises_load_timeout_which_is_a_timeout_error() -> None:
    async def batch_fn(keys: list[str]) -> list[str]:
        if "slow" in keys:
            await anyio.sleep_forever()
        return keys

    async with BatchLoader(batch_fn, timeout=0.01, name="slow-db") as loader:
        with pytest.raises(LoadTimeout) as info:
            await loader.load_many(["slow", "a"])
        assert await loader.load("b") == "b"
        stats = loader.statistics()
    assert isinstance(info.value, TimeoutError)
    assert str(info.value) == "batch of 2 keys of loader 'slow-db' did not finish within 0.01 s"
    assert (stats.timeouts, stats.errors) == (1, 2)


async def test_timeout_error_raised_by_batch_fn_itself_is_passed_on_unchanged() -> None:
    own = TimeoutError("upstream timed out")

    async def batch_fn(keys: list[str]) -> list[str]:
        raise own

    async with BatchLoader(batch_fn, timeout=10) as loader:
        with pytest.raises(TimeoutError) as info:
            await loader.load("a")
    assert info.value is own


async def test_cache_serves_the_second_load_without_a_call() -> None:
    source = Source()
    cache: dict[str, str] = {}
    async with BatchLoader(source, cache=cache) as loader:
        assert await loader.load("a") == "v:a"
        assert await loader.load("a") == "v:a"
        assert await loader.load_many(["a", "a"]) == ["v:a", "v:a"]
        assert loader.statistics().cache_hits == 3
    assert source.calls == [["a"]]
    assert cache == {"a": "v:a"}


async def test_errors_are_not_cached() -> None:
    source = Source()
    cache: dict[str, str] = {}
    async with BatchLoader(source, cache=cache) as loader:
        for _ in range(2):
            with pytest.raises(ValueError):
                await loader.load("bad")
    assert source.calls == [["bad"], ["bad"]]
    assert cache == {}


async def test_primed_value_is_served_without_a_call() -> None:
    source = Source()
    async with BatchLoader(source, cache={}) as loader:
        loader.prime("a", "primed")
        assert await loader.load("a") == "primed"
    assert source.calls == []


async def test_cleared_key_is_asked_again() -> None:
    source = Source()
    async with BatchLoader(source, cache={}) as loader:
        await loader.load_many(["a", "b"])
        loader.clear("a")
        await loader.load_many(["a", "b"])
        loader.clear_all()
        await loader.load_many(["a", "b"])
    assert source.calls == [["a", "b"], ["a"], ["a", "b"]]


async def test_value_loaded_while_its_key_is_cleared_is_returned_but_not_cached() -> None:
    source = Source(gated=True)
    cache: dict[str, str] = {}
    async with BatchLoader(source, cache=cache) as loader:
        async with anyio.create_task_group() as tg:
            tg.start_soon(loader.load, "a")
            await source.started.wait()
            loader.clear("a")
            source.gate.set()
    assert cache == {}


async def test_prime_without_a_cache_raises_config_error() -> None:
    async with BatchLoader(Source(), name="x") as loader:
        with pytest.raises(ConfigError, match="loader 'x' has no cache to prime"):
            loader.prime("a", "v")


async def test_load_before_entering_raises_actor_stopped() -> None:
    loader = BatchLoader(Source())
    with pytest.raises(ActorStopped, match="loader 'loader' is not running"):
        await loader.load("a")


async def test_load_after_the_context_exits_raises_actor_stopped() -> None:
    async with BatchLoader(Source()) as loader:
        pass
    with pytest.raises(ActorStopped, match="is not running"):
        await loader.load("a")
    with pytest.raises(ActorStopped):
        await loader.load_many(["a"])


async def test_exit_drains_queued_and_in_flight_loads() -> None:
    source = Source(gated=True)
    results: list[list[str]] = []
    async with anyio.create_task_group() as tg:
        async with BatchLoader(source, max_batch_size=1, max_in_flight=1) as loader:

            async def load() -> None:
                results.append(await loader.load_many(["a", "b"]))

            tg.start_soon(load)
            await source.started.wait()
            assert loader.statistics().queued == 1
            source.gate.set()
    assert results == [["v:a", "v:b"]]
    assert source.calls == [["a"], ["b"]]


async def test_load_issued_while_draining_raises_actor_stopped() -> None:
    gate = anyio.Event()
    seen: list[BaseException] = []
    loader: BatchLoader[str, str]

    async def batch_fn(keys: list[str]) -> list[str]:
        await gate.wait()
        try:
            await loader.load("late")
        except ActorStopped as exc:
            seen.append(exc)
        return keys

    async with anyio.create_task_group() as tg:
        async with BatchLoader(batch_fn) as loader:
            tg.start_soon(loader.load, "a")
            await anyio.wait_all_tasks_blocked()
            gate.set()
    assert len(seen) == 1


async def test_error_in_the_block_cancels_batches_and_their_callers_get_actor_stopped() -> None:
    source = Source(gated=True)
    caught: list[BaseException] = []

    async def load(loader: BatchLoader[str, str]) -> None:
        try:
            await loader.load("a")
        except ActorStopped as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        with pytest.raises(KeyError, match="body failed"):
            async with BatchLoader(source) as loader:
                tg.start_soon(load, loader)
                await source.started.wait()
                raise KeyError("body failed")
    assert len(caught) == 1
    assert "stopped before the load finished" in str(caught[0])
    assert source.in_flight == 0


async def test_cancelling_the_host_stops_the_loader_and_its_callers_get_actor_stopped() -> None:
    source = Source(gated=True)
    caught: list[BaseException] = []

    async def load(loader: BatchLoader[str, str]) -> None:
        try:
            await loader.load("a")
        except ActorStopped as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as host:
            async with BatchLoader(source) as loader:
                tg.start_soon(load, loader)
                await source.started.wait()
                host.cancel()
                await anyio.sleep_forever()
    assert host.cancelled_caught
    assert len(caught) == 1
    assert source.in_flight == 0


async def test_value_loaded_while_its_key_is_primed_does_not_overwrite_the_primed_value() -> None:
    source = Source(gated=True)
    cache: dict[str, str] = {}
    results: list[str] = []
    async with BatchLoader(source, cache=cache) as loader:

        async def load() -> None:
            results.append(await loader.load("a"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            await source.started.wait()
            loader.prime("a", "primed")
            source.gate.set()
        assert await loader.load("a") == "primed"
    assert results == ["v:a"]
    assert cache == {"a": "primed"}


async def test_cancelled_caller_does_not_break_other_callers_of_the_same_key() -> None:
    source = Source(gated=True)
    scope = anyio.CancelScope()
    results: list[str] = []
    async with BatchLoader(source) as loader:

        async def cancelled() -> None:
            with scope:
                await loader.load("k")

        async def patient() -> None:
            results.append(await loader.load("k"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled)
            tg.start_soon(patient)
            await source.started.wait()
            scope.cancel()
            await anyio.wait_all_tasks_blocked()
            source.gate.set()
        assert await loader.load("k") == "v:k"
    assert scope.cancelled_caught
    assert results == ["v:k"]


async def test_statistics_report_queue_in_flight_calls_and_counters() -> None:
    source = Source(gated=True)
    async with BatchLoader(source, max_batch_size=2, max_in_flight=1, cache={}) as loader:
        assert loader.statistics() == LoaderStatistics(
            queued=0,
            in_flight_batches=0,
            in_flight_keys=0,
            batches=0,
            keys_loaded=0,
            cache_hits=0,
            errors=0,
            timeouts=0,
            max_batch_size=2,
            max_in_flight=1,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(loader.load_many, ["a", "b", "c"])
            await source.started.wait()
            stats = loader.statistics()
            assert (stats.queued, stats.in_flight_batches, stats.in_flight_keys) == (1, 1, 2)
            assert stats.batches == 1
            source.gate.set()
        await loader.load("a")
        with pytest.raises(ValueError):
            await loader.load("bad")
        stats = loader.statistics()
    assert (stats.queued, stats.in_flight_batches, stats.in_flight_keys) == (0, 0, 0)
    assert (stats.batches, stats.keys_loaded, stats.cache_hits) == (3, 3, 1)
    assert (stats.errors, stats.timeouts) == (1, 0)


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(st.lists(st.integers(0, 40), max_size=25), min_size=1, max_size=8),
    max_batch_size=st.integers(1, 12),
    max_in_flight=st.integers(1, 4),
    cached=st.booleans(),
)
async def test_any_mix_of_concurrent_loads_gets_the_oracles_answers_within_the_limits(
    requests: list[list[int]], max_batch_size: int, max_in_flight: int, cached: bool
) -> None:
    """Oracle: key k is worth 10 * k, and keys divisible by 7 fail with their own error."""
    calls: list[list[int]] = []
    in_flight_keys: set[int] = set()
    in_flight = peak = 0

    async def batch_fn(keys: list[int]) -> list[int | Exception]:
        nonlocal in_flight, peak
        assert len(keys) == len(set(keys))
        assert in_flight_keys.isdisjoint(keys), "a key was asked twice at once"
        calls.append(keys)
        in_flight_keys.update(keys)
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.lowlevel.checkpoint()
        in_flight -= 1
        in_flight_keys.difference_update(keys)
        return [KeyError(k) if k % 7 == 0 else 10 * k for k in keys]

    outcomes: dict[int, object] = {}
    cache: dict[int, int] | None = {} if cached else None
    loader = BatchLoader(
        batch_fn, max_batch_size=max_batch_size, max_in_flight=max_in_flight, cache=cache
    )
    async with loader:

        async def request(i: int, keys: list[int]) -> None:
            try:
                outcomes[i] = await loader.load_many(keys)
            except KeyError as exc:
                outcomes[i] = exc.args[0]

        async with anyio.create_task_group() as tg:
            for i, keys in enumerate(requests):
                tg.start_soon(request, i, keys)

    for i, keys in enumerate(requests):
        failing = [k for k in keys if k % 7 == 0]
        assert outcomes[i] == (failing[0] if failing else [10 * k for k in keys])
    assert all(len(call) <= max_batch_size for call in calls)
    assert peak <= max_in_flight
    if cached:
        asked = [k for call in calls for k in call if k % 7]
        assert len(asked) == len(set(asked)), "a cached key was asked again"
    assert loader.statistics().keys_loaded == sum(1 for call in calls for k in call if k % 7)


async def test_load_many_of_no_keys_returns_an_empty_list_without_a_call() -> None:
    source = Source()
    async with BatchLoader(source) as loader:
        assert await loader.load_many([]) == []
    assert source.calls == []


async def test_loader_cannot_be_entered_twice() -> None:
    loader = BatchLoader(Source())
    async with loader:
        pass
    with pytest.raises(RuntimeError, match="can be entered only once"):
        async with loader:
            pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
        ({"max_in_flight": 0}, "max_in_flight must be >= 1, got 0"),
        ({"timeout": -1}, "timeout must be > 0 or None, got -1"),
        ({"timeout": 0}, "timeout must be > 0 or None, got 0"),
    ],
)
def test_constructor_rejects_out_of_range_limits_naming_the_parameter(
    kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        BatchLoader(Source(), **kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


async def test_linger_gathers_the_keys_of_later_iterations_into_one_call() -> None:
    source = Source()
    async with BatchLoader(source, max_batch_size=100, linger=0.05) as loader:
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(loader.load, f"k{i}")
                await anyio.sleep(0.005)  # a later iteration of the event loop each time
    assert len(source.calls) == 1 and sorted(source.calls[0]) == [f"k{i}" for i in range(5)]


async def test_a_full_batch_cuts_the_linger_short() -> None:
    source = Source()
    async with BatchLoader(source, max_batch_size=3, linger=10.0) as loader:
        with anyio.fail_after(2):  # far less than the linger
            assert await loader.load_many(["a", "b", "c"]) == ["v:a", "v:b", "v:c"]


def test_linger_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match="linger"):
        BatchLoader(Source(), linger=-1)


async def test_leaving_the_block_does_not_wait_for_a_linger() -> None:
    source = Source()
    with anyio.fail_after(2):
        async with BatchLoader(source, linger=30.0) as loader:
            async with anyio.create_task_group() as tg:
                tg.start_soon(loader.load, "a")
                await anyio.sleep(0.01)  # the dispatcher lingers for more keys now
                tg.cancel_scope.cancel()  # the caller walks away; the block ends
    assert source.calls == []
