"""Tests of the enrichment fetcher: batching, sharing, retries, timeouts, the circuit breaker."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any

import anyio
import pytest

from actors import ActorStopped, ConfigError
from runtime import SourceError, SourceUnavailable
from runtime._enrich.breaker import BreakerState, CircuitBreaker, backoff_delay
from runtime._enrich.fetch import NOT_FOUND, Fetcher
from runtime._spec.enrich import SqliteSource

from ..support.clock import FakeClock


class FakeSource:
    """A source that records its calls; it can be slowed, held at a gate, or made to fail.

    Rows are ``{"id": key}``; a key in ``malformed`` gets a ``ValueError`` as its row, and a
    key in ``absent`` is not there.
    """

    def __init__(
        self,
        *,
        clock: FakeClock | None = None,
        tick: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        self.calls: list[list[Hashable]] = []
        self.absent: set[Hashable] = set()
        self.malformed: set[Hashable] = set()
        #: the batches holding one of these keys fail
        self.poison: set[Hashable] = set()
        #: every attempt fails
        self.failing = False
        #: the next attempts that fail
        self.fail_next = 0
        #: the next attempts that take (far) longer than any timeout in these tests
        self.slow_next = 0
        self.error: type[Exception] = ConnectionError
        self.latency = latency
        self.clock = clock
        self.tick = tick
        self.gate = anyio.Event()
        self.gate.set()
        self.started = anyio.Event()
        self.in_flight = 0
        self.peak_in_flight = 0

    def hold(self) -> None:
        """Hold the next calls at a gate until ``gate.set()``."""
        self.gate = anyio.Event()
        self.started = anyio.Event()

    @property
    def keys_asked(self) -> list[Hashable]:
        return [key for call in self.calls for key in call]

    async def get_many(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        self.calls.append(list(keys))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.started.set()
        try:
            if self.clock is not None:
                self.clock.advance(self.tick)
            await self.gate.wait()
            if self.slow_next > 0:
                self.slow_next -= 1
                await anyio.sleep(30)
            elif self.latency:
                await anyio.sleep(self.latency)
            if self.failing or self.fail_next > 0 or self.poison.intersection(keys):
                self.fail_next = max(self.fail_next - 1, 0)
                raise self.error(f"boom {len(self.calls)}")
        finally:
            self.in_flight -= 1
        return {
            key: ValueError(f"bad row {key}") if key in self.malformed else {"id": key}
            for key in keys
            if key not in self.absent
        }


def fetcher(source: FakeSource, clock: FakeClock | None = None, **options: Any) -> Fetcher:
    settings: dict[str, Any] = {
        "name": "merchants",
        "max_batch_size": 100,
        "max_in_flight": 4,
        "timeout": 5.0,
        "retries": 0,
        "backoff": 0.001,
        "breaker_failures": 3,
        "breaker_reset": 5.0,
    }
    settings.update(options)
    if clock is not None:
        settings["clock"] = clock
    return Fetcher(source, **settings)


# --- batching and sharing ------------------------------------------------------------------


async def test_concurrent_single_key_fetches_make_few_calls_within_the_limits() -> None:
    source = FakeSource(latency=0.005)
    results: dict[str, Any] = {}
    async with fetcher(source, max_batch_size=8, max_in_flight=2) as f:

        async def fetch(key: str) -> None:
            results.update(await f.fetch_many([key]))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(fetch, f"k{i}")
    assert len(source.calls) == 7  # ceil(50 / 8): all 50 keys were queued together
    assert all(len(call) <= 8 for call in source.calls)
    assert source.peak_in_flight == 2
    assert sorted(source.keys_asked) == sorted(f"k{i}" for i in range(50))
    assert results == {f"k{i}": {"id": f"k{i}"} for i in range(50)}


async def test_key_in_flight_is_shared_by_a_second_fetch_not_asked_again() -> None:
    source = FakeSource()
    source.hold()
    results: list[dict[Hashable, Any]] = []
    async with fetcher(source) as f:

        async def fetch(keys: list[str]) -> None:
            results.append(await f.fetch_many(keys))

        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch, ["a"])
            await source.started.wait()
            tg.start_soon(fetch, ["a", "b"])
            await anyio.wait_all_tasks_blocked()
            assert source.calls == [["a"], ["b"]]
            source.gate.set()
    assert source.calls == [["a"], ["b"]]
    assert sorted(results, key=len) == [{"a": {"id": "a"}}, {"a": {"id": "a"}, "b": {"id": "b"}}]


async def test_fetch_many_answers_each_distinct_key_once_in_the_order_given() -> None:
    source = FakeSource()
    async with fetcher(source) as f:
        result = await f.fetch_many(["b", "a", "b"])
    assert list(result) == ["b", "a"]
    assert source.calls == [["b", "a"]]


async def test_fetch_many_of_no_keys_returns_an_empty_dict_without_a_call() -> None:
    source = FakeSource()
    async with fetcher(source) as f:
        assert await f.fetch_many([]) == {}
    assert source.calls == []


async def test_fetch_outside_the_block_raises_actor_stopped() -> None:
    f = fetcher(FakeSource())
    with pytest.raises(ActorStopped):
        await f.fetch_many(["a"])
    async with f:
        pass
    with pytest.raises(ActorStopped):
        await f.fetch_many(["a"])


# --- answers -------------------------------------------------------------------------------


async def test_keys_the_source_does_not_have_are_missing() -> None:
    source = FakeSource()
    source.absent = {"gone"}
    async with fetcher(source) as f:
        result = await f.fetch_many(["a", "gone"])
    assert result == {"a": {"id": "a"}, "gone": NOT_FOUND}
    assert repr(NOT_FOUND) == "NOT_FOUND"


async def test_malformed_row_is_its_keys_exception_and_the_call_still_succeeds() -> None:
    source = FakeSource()
    source.malformed = {"bad"}
    async with fetcher(source, breaker_failures=1) as f:
        result = await f.fetch_many(["a", "bad"])
        stats = f.statistics()
    assert result["a"] == {"id": "a"}
    assert isinstance(result["bad"], ValueError) and str(result["bad"]) == "bad row bad"
    assert (stats.malformed, stats.keys_found, stats.failures) == (1, 1, 0)
    assert stats.breaker_state is BreakerState.CLOSED


async def test_a_failed_batch_does_not_hide_the_rows_of_the_other_batches() -> None:
    source = FakeSource()
    source.poison = {"x"}
    async with fetcher(source, max_batch_size=1, breaker_failures=5) as f:
        result = await f.fetch_many(["a", "x", "b"])
    assert result["a"] == {"id": "a"} and result["b"] == {"id": "b"}
    assert isinstance(result["x"], SourceError)


# --- retries and timeouts ------------------------------------------------------------------


async def test_failed_attempts_are_retried_until_one_succeeds() -> None:
    source = FakeSource()
    source.fail_next = 2
    async with fetcher(source, retries=2) as f:
        result = await f.fetch_many(["a"])
        stats = f.statistics()
    assert result == {"a": {"id": "a"}}
    assert len(source.calls) == 3
    assert (stats.calls, stats.retries, stats.failures) == (1, 2, 0)


async def test_call_failing_every_attempt_gives_its_keys_a_source_error_with_the_last_cause() -> (
    None
):
    source = FakeSource()
    source.failing = True
    async with fetcher(source, retries=2) as f:
        result = await f.fetch_many(["a", "b"])
        stats = f.statistics()
    error = result["a"]
    assert isinstance(error, SourceError) and not isinstance(error, SourceUnavailable)
    assert result["b"] is error  # one call, one error for its keys
    assert (error.source, error.attempts) == ("merchants", 3)
    assert isinstance(error.__cause__, ConnectionError) and str(error.__cause__) == "boom 3"
    assert "merchants" in str(error)
    assert len(source.calls) == 3
    assert (stats.calls, stats.retries, stats.failures, stats.keys_requested) == (1, 2, 1, 2)


async def test_slow_attempt_times_out_and_the_retry_succeeds() -> None:
    source = FakeSource()
    source.slow_next = 1
    async with fetcher(source, timeout=0.02, retries=1) as f:
        result = await f.fetch_many(["a"])
        stats = f.statistics()
    assert result == {"a": {"id": "a"}}
    assert (stats.timeouts, stats.retries, stats.failures) == (1, 1, 0)


async def test_source_slower_than_every_attempt_gives_a_source_error_caused_by_a_timeout() -> None:
    source = FakeSource()
    source.slow_next = 2
    async with fetcher(source, timeout=0.01, retries=1) as f:
        result = await f.fetch_many(["a"])
        stats = f.statistics()
    error = result["a"]
    assert isinstance(error, SourceError)
    assert isinstance(error.__cause__, TimeoutError)
    assert "within 0.01 s" in str(error.__cause__)
    assert (stats.timeouts, stats.failures) == (2, 1)


async def test_timeout_error_raised_by_the_source_is_a_failure_not_a_timeout() -> None:
    source = FakeSource()
    source.failing = True
    source.error = TimeoutError
    async with fetcher(source) as f:
        result = await f.fetch_many(["a"])
        stats = f.statistics()
    assert isinstance(result["a"], SourceError)
    assert str(result["a"].__cause__) == "boom 1"
    assert (stats.timeouts, stats.failures) == (0, 1)


def test_backoff_doubles_per_retry_within_the_jitter() -> None:
    rng = random.Random(7)
    for retry in range(6):
        delays = [backoff_delay(0.05, retry, rng) for _ in range(200)]
        base = 0.05 * 2**retry
        assert all(0.5 * base <= delay <= 1.5 * base for delay in delays)
        assert min(delays) < 0.7 * base and max(delays) > 1.3 * base  # jittered, not fixed
    assert backoff_delay(0.0, 3, rng) == 0.0


# --- the circuit breaker in the fetcher ----------------------------------------------------


async def fail_calls(f: Fetcher, count: int) -> None:
    for i in range(count):
        result = await f.fetch_many([f"fail{i}"])
        assert isinstance(result[f"fail{i}"], SourceError)


async def test_circuit_opens_after_breaker_failures_failed_calls_in_a_row() -> None:
    source = FakeSource()
    source.failing = True
    async with fetcher(source, retries=1, breaker_failures=3) as f:
        await fail_calls(f, 2)
        assert f.statistics().breaker_state is BreakerState.CLOSED
        await fail_calls(f, 1)
        stats = f.statistics()
    assert len(source.calls) == 6  # a failed call is counted once, after its retry
    assert (stats.breaker_state, stats.breaker_openings, stats.failures) == (
        BreakerState.OPEN,
        1,
        3,
    )


async def test_open_circuit_fails_fast_without_calling_the_source() -> None:
    source = FakeSource()
    source.failing = True
    async with fetcher(source, breaker_failures=2) as f:
        await fail_calls(f, 2)
        source.failing = False
        calls = len(source.calls)
        result = await f.fetch_many(["a", "b"])
        stats = f.statistics()
    error = result["a"]
    assert isinstance(error, SourceUnavailable) and result["b"] is error
    assert (error.source, error.attempts) == ("merchants", 0)
    assert isinstance(error.__cause__, SourceError)  # the failure before it opened
    assert len(source.calls) == calls
    assert (stats.rejected_by_breaker, stats.calls) == (1, 2)


async def test_half_open_probe_closes_the_circuit_when_the_source_is_back() -> None:
    clock = FakeClock(0.0)
    source = FakeSource()
    source.failing = True
    async with fetcher(source, clock, breaker_failures=1, breaker_reset=5.0) as f:
        await fail_calls(f, 1)
        clock.advance(4.9)
        assert isinstance((await f.fetch_many(["a"]))["a"], SourceUnavailable)
        clock.advance(0.1)
        assert f.statistics().breaker_state is BreakerState.HALF_OPEN
        source.failing = False
        source.hold()
        probe: dict[Hashable, Any] = {}
        async with anyio.create_task_group() as tg:

            async def fetch_probe() -> None:
                probe.update(await f.fetch_many(["a"]))

            tg.start_soon(fetch_probe)
            await source.started.wait()
            # While the probe is under way, the other calls still fail at once.
            calls = len(source.calls)
            assert isinstance((await f.fetch_many(["b"]))["b"], SourceUnavailable)
            assert len(source.calls) == calls
            source.gate.set()
        assert probe == {"a": {"id": "a"}}
        assert f.statistics().breaker_state is BreakerState.CLOSED
        assert await f.fetch_many(["b"]) == {"b": {"id": "b"}}
        assert f.statistics().breaker_openings == 1


async def test_failed_probe_opens_the_circuit_again_and_restarts_its_timer() -> None:
    clock = FakeClock(0.0)
    source = FakeSource()
    source.failing = True
    async with fetcher(source, clock, breaker_failures=2, breaker_reset=5.0) as f:
        await fail_calls(f, 2)
        clock.advance(5.0)
        calls = len(source.calls)
        assert isinstance((await f.fetch_many(["a"]))["a"], SourceError)  # the probe
        assert len(source.calls) == calls + 1
        stats = f.statistics()
        assert (stats.breaker_state, stats.breaker_openings) == (BreakerState.OPEN, 2)
        clock.advance(4.0)
        assert isinstance((await f.fetch_many(["a"]))["a"], SourceUnavailable)
        assert len(source.calls) == calls + 1
        clock.advance(1.0)
        source.failing = False
        assert await f.fetch_many(["a"]) == {"a": {"id": "a"}}
        assert f.statistics().breaker_state is BreakerState.CLOSED


async def test_probe_cancelled_by_the_block_failing_gives_up_its_turn_and_its_caller_stops() -> (
    None
):
    clock = FakeClock(0.0)
    source = FakeSource()
    source.failing = True
    f = fetcher(source, clock, breaker_failures=1)
    stopped: list[ActorStopped] = []

    async def fetch_probe() -> None:
        try:
            await f.fetch_many(["a"])
        except ActorStopped as exc:
            stopped.append(exc)

    async with anyio.create_task_group() as tg:
        with pytest.raises(KeyError):
            async with f:
                await fail_calls(f, 1)
                clock.advance(5.0)
                source.failing = False
                source.hold()
                tg.start_soon(fetch_probe)
                await source.started.wait()
                raise KeyError("the block failed")
    assert len(stopped) == 1
    assert f.breaker.state is BreakerState.HALF_OPEN
    assert f.breaker.acquire() is not None  # the next call may probe


# --- statistics ----------------------------------------------------------------------------


async def test_statistics_count_keys_calls_and_the_latency_of_successful_calls() -> None:
    clock = FakeClock(0.0)
    source = FakeSource(clock=clock)
    source.absent = {"gone"}
    source.malformed = {"bad"}
    async with fetcher(source, clock, retries=1) as f:
        source.tick = 0.004
        await f.fetch_many(["a", "b", "gone"])
        source.tick = 0.010
        await f.fetch_many(["c", "bad"])
        source.tick = 0.050
        source.failing = True
        await f.fetch_many(["d"])  # fails: not in the latency figures
        stats = f.statistics()
    assert stats.calls == 3
    assert stats.keys_requested == 6
    assert (stats.keys_found, stats.keys_missing, stats.malformed) == (3, 1, 1)
    assert (stats.failures, stats.retries, stats.timeouts, stats.rejected_by_breaker) == (
        1,
        1,
        0,
        0,
    )
    assert stats.mean_latency_ms == pytest.approx(7.0)
    assert stats.max_latency_ms == pytest.approx(10.0)
    assert (stats.breaker_state, stats.breaker_openings) == (BreakerState.CLOSED, 0)
    assert (stats.queued, stats.in_flight) == (0, 0)


async def test_statistics_of_a_new_fetcher_are_zero() -> None:
    async with fetcher(FakeSource()) as f:
        stats = f.statistics()
    assert (stats.calls, stats.mean_latency_ms, stats.max_latency_ms) == (0, 0.0, 0.0)


# --- construction --------------------------------------------------------------------------


def test_from_spec_takes_the_fetch_settings_of_the_source_spec() -> None:
    spec = SqliteSource(
        name="merchants",
        path="m.db",
        table="merchants",
        key="id",
        max_batch_size=7,
        max_in_flight=3,
        timeout="250ms",
        retries=4,
        backoff="20ms",
        breaker_failures=9,
        breaker_reset="2s",
    )
    f = Fetcher.from_spec(FakeSource(), spec)
    stats = f.statistics()
    assert repr(f) == "<Fetcher 'merchants'>"
    assert (f._timeout, f._retries, f._backoff) == (0.25, 4, 0.02)
    assert (f.breaker._threshold, f.breaker._reset) == (9, 2.0)
    assert (f._loader.statistics().max_batch_size, f._loader.statistics().max_in_flight) == (7, 3)
    assert stats.breaker_state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("timeout", 0, "timeout must be > 0"),
        ("retries", -1, "retries must be an int >= 0"),
        ("backoff", -0.1, "backoff must be >= 0"),
        ("breaker_failures", 0, "breaker failures must be an int >= 1"),
        ("breaker_reset", 0, "breaker reset must be > 0"),
        ("max_batch_size", 0, "max_batch_size must be >= 1"),
        ("max_in_flight", 0, "max_in_flight must be >= 1"),
    ],
)
def test_out_of_range_option_raises_config_error_naming_it(
    option: str, value: float, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        fetcher(FakeSource(), **{option: value})


# --- the circuit breaker alone -------------------------------------------------------------


def fail(breaker: CircuitBreaker) -> None:
    ticket = breaker.acquire()
    assert ticket is not None
    breaker.record_failure(ticket)


def succeed(breaker: CircuitBreaker) -> None:
    ticket = breaker.acquire()
    assert ticket is not None
    breaker.record_success(ticket)


def test_breaker_opens_after_failures_in_a_row_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failures=3, reset=1.0, clock=FakeClock(0.0))
    fail(breaker)
    fail(breaker)
    succeed(breaker)
    assert breaker.consecutive_failures == 0
    fail(breaker)
    fail(breaker)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)
    assert (breaker.state, breaker.openings) == (BreakerState.OPEN, 1)
    assert repr(breaker) == "<CircuitBreaker open>"


def test_open_breaker_refuses_calls_until_reset_then_lets_exactly_one_probe_through() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(failures=1, reset=10.0, clock=clock)
    fail(breaker)
    clock.advance(9.99)
    assert breaker.acquire() is None
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.01)
    assert breaker.state is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe is not None
    assert breaker.acquire() is None
    assert breaker.acquire() is None
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire() is not None and breaker.acquire() is not None


def test_failed_probe_reopens_the_breaker_for_another_reset_period() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(failures=2, reset=10.0, clock=clock)
    fail(breaker)
    fail(breaker)
    clock.advance(10.0)
    fail(breaker)  # the probe
    assert (breaker.state, breaker.openings) == (BreakerState.OPEN, 2)
    clock.advance(9.0)
    assert breaker.acquire() is None
    clock.advance(1.0)
    succeed(breaker)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)  # the count starts afresh after closing
    assert breaker.state is BreakerState.CLOSED


def test_released_probe_passes_the_turn_to_the_next_call() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(failures=1, reset=1.0, clock=clock)
    fail(breaker)
    clock.advance(1.0)
    probe = breaker.acquire()
    assert probe is not None and breaker.acquire() is None
    breaker.release(probe)  # cancelled: no outcome
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire() is not None


def test_outcomes_of_calls_started_before_the_breaker_changed_state_are_ignored() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(failures=1, reset=1.0, clock=clock)
    early, late = breaker.acquire(), breaker.acquire()
    assert early is not None and late is not None
    breaker.record_failure(early)
    assert breaker.state is BreakerState.OPEN
    breaker.record_success(late)  # started while closed: does not close the circuit
    assert breaker.state is BreakerState.OPEN
    clock.advance(1.0)
    probe = breaker.acquire()
    assert probe is not None
    breaker.record_failure(late)  # nor decide the probe's turn
    assert breaker.state is BreakerState.HALF_OPEN and breaker.openings == 1
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(early)
    assert breaker.consecutive_failures == 0


@pytest.mark.parametrize(
    ("failures", "reset"), [(0, 1.0), (True, 1.0), (1.5, 1.0), (1, 0.0), (1, -1.0)]
)
def test_breaker_rejects_out_of_range_limits(failures: Any, reset: float) -> None:
    with pytest.raises(ConfigError):
        CircuitBreaker(failures=failures, reset=reset)
