"""The sink protocol and ``run_sink``, with in-memory sinks: every update published while the
block runs is written (the last per key equals ``rt.get_many``); a slow sink slows ingest with
the buffer bounded and loses nothing; a failing sink is retried, then the block raises
``SinkError`` and the runtime goes on; a write that hangs counts as a failed attempt; the block
drains when it ends, also when cancelled or raising; a drain that cannot finish raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    ConfigError,
    FeatureRuntime,
    RunningSink,
    Sink,
    SinkError,
    SinkStatistics,
    UpdateBatch,
    run_sink,
)

from .common import FEATURE_SET, KEYS, events, runtime, values_of


class FlakySink(Sink):
    """Keeps the rows of the writes that succeed; attempt ``i`` fails when ``fails[i]``."""

    def __init__(self, fails: list[bool]) -> None:
        self.name = "flaky"
        self.fails = fails
        self.attempts = 0
        self.rows: list[tuple[Any, ...]] = []

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        attempt, self.attempts = self.attempts, self.attempts + 1
        await anyio.lowlevel.checkpoint()
        if attempt < len(self.fails) and self.fails[attempt]:
            raise OSError(f"attempt {attempt} failed")
        for batch in batches:
            self.rows.extend(batch.rows)


class ListSink(Sink):
    """Keeps every row written; ``delay`` seconds per write; fails its first ``failures``
    attempts (or every one, with ``failures=-1``)."""

    def __init__(self, *, delay: float = 0.0, failures: int = 0, name: str = "list") -> None:
        self.name = name
        self.rows: list[tuple[Any, ...]] = []
        self.names: dict[str, tuple[str, ...]] = {}
        self.delay = delay
        self.failures = failures
        self.attempts = 0
        self.flushes = 0
        self.largest = 0
        self.deepest = 0
        self.waited = 0
        self.running: RunningSink | None = None

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        self.attempts += 1
        if self.running is not None:
            stats = self.running.statistics()
            self.deepest = max(self.deepest, stats.pending)
            self.waited = max(self.waited, stats.publishers_waiting)
        if self.delay:
            await anyio.sleep(self.delay)
        if self.failures == -1 or self.attempts <= self.failures:
            raise ConnectionError(f"attempt {self.attempts} refused")
        self.largest = max(self.largest, sum(len(b) for b in batches))
        for batch in batches:
            self.names[batch.group] = batch.names
            self.rows.extend((batch.group, *row) for row in batch.rows)

    async def flush(self) -> None:
        self.flushes += 1

    def latest(self) -> dict[Any, dict[str, Any]]:
        """The last values written per key, every group's merged."""
        out: dict[Any, dict[str, Any]] = {}
        for group, key, _t, *values in self.rows:
            out.setdefault(key, {}).update(zip(self.names[group], values, strict=True))
        return out


async def test_every_update_is_written_and_the_last_per_key_equals_get_many() -> None:
    sink = ListSink()
    async with runtime() as rt:
        async with run_sink(rt, sink) as running:
            await rt.ingest_many(events(500))
        assert len(sink.rows) == 500
        assert sink.latest() == await values_of(rt)
        assert sink.flushes == 1
        stats = running.statistics()
        assert isinstance(stats, SinkStatistics)
        assert (stats.written, stats.retries, stats.pending) == (500, 0, 0)


async def test_updates_before_the_block_are_not_written() -> None:
    sink = ListSink()
    async with runtime() as rt:
        await rt.ingest_many(events(50))
        await rt.flush()
        async with run_sink(rt, sink):
            await rt.ingest_many(events(30, seed=1))
        assert len(sink.rows) == 30


async def test_a_slow_sink_slows_ingest_with_a_bounded_buffer_and_loses_nothing() -> None:
    sink = ListSink(delay=0.002)
    async with runtime(batch_size=16) as rt:
        async with run_sink(rt, sink, buffer=64) as running:
            sink.running = running
            for chunk in range(0, 3000, 100):
                await rt.ingest_many(events(3000)[chunk : chunk + 100])
        assert len(sink.rows) == 3000
        assert sink.latest() == await values_of(rt)
    assert sink.waited >= 1  # the shards waited for the sink: ingest was held
    assert sink.deepest <= 64
    assert sink.largest <= 64


async def test_a_failing_write_is_retried_and_nothing_is_lost() -> None:
    sink = ListSink(failures=2)
    async with runtime() as rt:
        async with run_sink(rt, sink, backoff=0.001) as running:
            await rt.ingest_many(events(200))
        assert running.statistics().retries == 2
        assert len(sink.rows) == 200
        assert sink.latest() == await values_of(rt)


async def test_a_sink_failing_every_attempt_raises_and_the_runtime_goes_on() -> None:
    sink = ListSink(failures=-1)
    async with runtime() as rt:
        with pytest.raises(SinkError) as caught:
            async with run_sink(rt, sink, buffer=32, max_attempts=3, backoff=0.001):
                await rt.ingest_many(events(200))
                await anyio.sleep(10)  # cancelled when the sink gives up
                raise AssertionError("the body was not cancelled")
        error = caught.value
        assert error.sink == "list" and error.attempts == 3
        assert error.unwritten >= 1
        assert isinstance(error.__cause__, ConnectionError)
        assert "3 times" in str(error) and f"{error.unwritten} updates" in str(error)
        assert sink.attempts == 3 and not sink.rows
        # detached: ingest does not wait for it any more
        with anyio.fail_after(5):
            await rt.ingest_many(events(2000, seed=7))
            await rt.flush()


async def test_a_write_that_hangs_is_a_failed_attempt() -> None:
    sink = ListSink(delay=10)
    async with runtime() as rt:
        with pytest.raises(SinkError) as caught:
            async with run_sink(rt, sink, max_attempts=2, backoff=0, write_timeout=0.05):
                await rt.ingest_many(events(10))
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert sink.attempts == 2


async def test_a_cancelled_block_still_writes_what_the_runtime_computed() -> None:
    sink = ListSink(delay=0.001)
    async with runtime() as rt:
        with anyio.CancelScope() as scope:  # the code around the block is cancelled
            async with run_sink(rt, sink, buffer=16):
                for chunk in range(2_000):
                    await rt.ingest_many(events(10, seed=chunk))
                    if chunk == 150:
                        scope.cancel()
                    await anyio.lowlevel.checkpoint()  # cancellable, whatever ingest does
        assert rt.position == 1510
        assert len(sink.rows) == 1510
        assert sink.latest() == await values_of(rt)


async def test_a_cancelled_scope_around_the_runtime_and_the_block_ends_both() -> None:
    """The runtime's actors are cancelled too, so the drain's flush fails (ActorStopped): the
    block still ends its subscription, writes what it had and stops, rather than wait for
    ever for a subscription nobody ends."""
    sink = ListSink(delay=0.01)
    with anyio.fail_after(20):
        with anyio.move_on_after(0.3):
            async with runtime() as rt, run_sink(rt, sink, buffer=100, drain_timeout=5):
                await rt.ingest_many(events(500))
                await anyio.sleep(30)
    assert 0 < len(sink.rows) <= 500


async def test_the_body_s_own_error_comes_out_as_itself_after_the_drain() -> None:
    sink = ListSink()
    async with runtime() as rt:
        with pytest.raises(ValueError, match="mine"):
            async with run_sink(rt, sink):
                await rt.ingest_many(events(40))
                raise ValueError("mine")
        assert len(sink.rows) == 40


async def test_a_drain_that_does_not_finish_in_time_raises() -> None:
    sink = ListSink(delay=0.5)
    async with runtime() as rt:
        with pytest.raises(SinkError, match="drain_timeout") as caught:
            async with run_sink(rt, sink, drain_timeout=0.05):
                await rt.ingest_many(events(10))
        assert caught.value.attempts == 0
        assert caught.value.unwritten >= 1


async def test_options_and_names_are_checked() -> None:
    async with FeatureRuntime(FEATURE_SET) as rt:
        for option, value in [
            ("buffer", 0),
            ("buffer", 1.5),
            ("max_batch", True),
            ("max_attempts", 0),
            ("backoff", -1),
            ("write_timeout", float("nan")),
            ("drain_timeout", float("inf")),
        ]:
            with pytest.raises(ValueError, match=option):
                async with run_sink(rt, ListSink(), **{option: value}):
                    pass
        with pytest.raises(ConfigError, match="name"):
            async with run_sink(rt, ListSink(name="")):
                pass


async def test_a_sink_s_check_refuses_before_subscribing() -> None:
    class Refusing(ListSink):
        def check(self, feature_set: Any) -> None:
            raise ConfigError(f"cannot write {feature_set.name}")

    async with runtime() as rt:
        with pytest.raises(ConfigError, match="cannot write tx"):
            async with run_sink(rt, Refusing()):
                pass
        await rt.ingest_many(events(KEYS.__len__()))
        await rt.flush()


async def test_a_runtime_with_workers_writes_every_update() -> None:
    sink = ListSink(delay=0.001)
    async with runtime(workers=1) as rt:
        async with run_sink(rt, sink, buffer=64):
            await rt.ingest_many(events(1000))
        assert len(sink.rows) == 1000
        assert sink.latest() == await values_of(rt)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(0, 400),
    buffer=st.integers(1, 50),
    max_batch=st.integers(1, 120),
    # never three failures in a row: with max_attempts=3 every write gets through
    fails=st.lists(st.sampled_from([(False,), (True, False), (True, True, False)]), max_size=40),
)
async def test_every_update_is_written_once_whatever_the_buffer_batches_and_failures(
    n: int, buffer: int, max_batch: int, fails: list[tuple[bool, ...]]
) -> None:
    sink = FlakySink([fail for run in fails for fail in run])
    reference = ListSink()
    async with runtime(batch_size=8) as rt:
        async with (
            run_sink(rt, reference),
            run_sink(rt, sink, buffer=buffer, max_batch=max_batch, max_attempts=3, backoff=0),
        ):
            for chunk in range(0, n, 50):
                await rt.ingest_many(events(n)[chunk : chunk + 50])
    # shards publish concurrently, so only each key's order is fixed
    assert by_key(sink.rows) == by_key([row[1:] for row in reference.rows])
    assert len(sink.rows) == n


def by_key(rows: list[tuple[Any, ...]]) -> dict[Any, list[tuple[Any, ...]]]:
    out: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row)
    return out


class Opaque(Exception):
    """As redis-py's errors: a repr without the message."""

    def __repr__(self) -> str:
        return "server:Opaque"


async def test_the_sink_error_and_the_retry_logs_carry_the_cause_s_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(ListSink):
        async def write(self, batches: Sequence[UpdateBatch]) -> None:
            raise Opaque("WRONGTYPE Operation against a key holding the wrong kind of value")

    async with runtime() as rt:
        with pytest.raises(SinkError) as caught:
            async with run_sink(rt, Failing(), max_attempts=2, backoff=0):
                await rt.ingest_many(events(5))
    assert "(last: Opaque: WRONGTYPE Operation against a key" in str(caught.value)
    retries = [r.getMessage() for r in caplog.records if "sink_retry" in r.getMessage()]
    assert retries and "Opaque: WRONGTYPE" in retries[0], retries


async def test_a_write_timeout_says_so() -> None:
    sink = ListSink(delay=10)
    async with runtime() as rt:
        with pytest.raises(SinkError, match=r"TimeoutError \(write_timeout=0.05 s\)"):
            async with run_sink(rt, sink, max_attempts=1, write_timeout=0.05):
                await rt.ingest_many(events(3))


@pytest.mark.parametrize("option", ["write_timeout", "drain_timeout"])
@pytest.mark.parametrize("value", [0, 0.0, -1])
async def test_a_timeout_of_zero_is_refused(option: str, value: float) -> None:
    """Every write (or drain) would time out at once; one error, one message, for 0 and
    below."""
    async with FeatureRuntime(FEATURE_SET) as rt:
        with pytest.raises(ValueError, match=f"{option} must be a number > 0"):
            async with run_sink(rt, ListSink(), **{option: value}):
                pass


class Closes(Sink):
    name = "closes"

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.closed = 0

    async def write(self, batches: Sequence[UpdateBatch]) -> None:
        return None

    async def aclose(self) -> None:
        self.closed += 1
        if self.error is not None:
            raise self.error


async def test_an_aclose_that_fails_while_an_error_propagates_does_not_replace_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Closes(OSError("the disk is full"))
    with pytest.raises(ValueError, match="mine") as caught:
        async with sink:
            raise ValueError("mine")
    assert sink.closed == 1
    assert caught.value.__notes__ == [
        "while it propagated, closing Closes 'closes' failed too: OSError: the disk is full"
    ]
    assert "the disk is full" in caplog.text
    # with nothing propagating, aclose's error is raised
    with pytest.raises(OSError, match="the disk is full"):
        async with Closes(OSError("the disk is full")):
            pass
    async with Closes(None) as fine:
        pass
    assert fine.closed == 1
