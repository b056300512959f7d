"""Fetching dimension rows from a source: batching, retries and a circuit breaker (issue 6).

A :class:`Fetcher` stands between a source's cache and the source. The design
(``docs/design/enrichment.md``, "Fetcher"):

- The actor kernel's :class:`~actors.BatchLoader` gathers the keys asked for in the same moment
  into calls of at most ``max_batch_size`` keys, runs at most ``max_in_flight`` calls at once,
  and shares a key's fetch among every caller that asks for it while it is under way. It keeps
  no cache: the dimension cache (``_enrich_cache.py``) is the cache.
- One batch is one *call*. A call makes up to ``1 + retries`` *attempts* of
  ``source.get_many``, each limited to ``timeout`` seconds, with a wait of
  ``backoff * 2**i`` (times a random factor between 0.5 and 1.5, so that shards do not retry
  in step) before retry ``i``. A call whose every attempt failed gives each of its keys a
  :class:`SourceError`.
- A :class:`CircuitBreaker` counts failed calls in a row. After ``breaker_failures`` of them
  it opens, and calls fail at once with :class:`SourceUnavailable` without reaching the source;
  after ``breaker_reset`` seconds one probe call goes through, and its outcome closes the
  circuit or opens it again.
- Failures are answers, not exceptions: :meth:`Fetcher.fetch_many` gives every key its row,
  :data:`NOT_FOUND`, or an exception instance, so the caller can fall back key by key (to a
  stale row, or to the lookup's default) even when some batches failed and others did not.
- A row that is not a row (``rows.checked_row``) is a :class:`~runtime.MalformedRow` here, so
  the fetcher's answer is the one place where rows are told from malformed ones.

The circuit breaker and the backoff between retries are in ``breaker.py``.

The errors::

    FeaturistError
    └── SourceError              a call of a source failed after its retries
        └── SourceUnavailable    the source's circuit is open: the call was not made
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self

import anyio

from actors import BatchLoader, get_logger

from .._exceptions import ConfigError, SourceError, SourceUnavailable
from .._spec.enrich import Source
from .breaker import BreakerState, CircuitBreaker, backoff_delay
from .rows import checked_row

__all__ = ["NOT_FOUND", "FetchStatistics", "Fetcher", "RowSource"]

_log = get_logger("featurist.enrichment")


class _NotFound(enum.Enum):
    NOT_FOUND = "NOT_FOUND"

    def __repr__(self) -> str:
        return "NOT_FOUND"


#: the value :meth:`Fetcher.fetch_many` gives a key that the source does not have (not to be
#: confused with the cache's ``CacheStatus.MISSING``, a key known to be missing)
NOT_FOUND: Final = _NotFound.NOT_FOUND


class RowSource(Protocol):
    """What a :class:`Fetcher` needs of a dimension source."""

    async def get_many(self, keys: Sequence[Hashable], /) -> Mapping[Hashable, Any]:
        """Return the rows of the keys it has (others left out); a value that is an exception
        instance marks the key's row as malformed. Raises if the call failed."""
        ...


@dataclass(frozen=True)
class FetchStatistics:
    """A snapshot of a :class:`Fetcher`'s counters. A *call* is one batch of keys, with its
    retries; calls refused by the open circuit are not calls."""

    #: calls made to the source
    calls: int
    #: keys given to the source, counted once per call (not per attempt)
    keys_requested: int
    #: keys the source returned a row for
    keys_found: int
    #: keys the source does not have
    keys_missing: int
    #: keys whose row the source returned as malformed
    malformed: int
    #: calls that failed after their retries
    failures: int
    #: attempts made after a failed one
    retries: int
    #: attempts that took longer than the timeout
    timeouts: int
    #: calls refused at once because the circuit was open (or its probe was under way)
    rejected_by_breaker: int
    #: the circuit's state now
    breaker_state: BreakerState
    #: how many times the circuit has opened
    breaker_openings: int
    #: mean time of the successful calls (retries and backoff included), in ms; 0 if none
    mean_latency_ms: float
    #: longest successful call, in ms
    max_latency_ms: float
    #: keys waiting for a call
    queued: int
    #: calls under way now
    in_flight: int


class _Failure:
    """A key's exception wrapped as a value, so the loader hands it out instead of raising."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class Fetcher:
    """Fetches rows of one source in batches, with retries and a circuit breaker.

    Use it as an async context manager (it owns a :class:`~actors.BatchLoader` and its tasks);
    leaving the block normally waits for the fetches under way. It does not open or close the
    source::

        async with Fetcher(source, name="merchants", ...) as fetcher:
            rows = await fetcher.fetch_many(["m1", "m2"])

    Args:
        source: has ``async get_many(keys) -> {key: row}`` (see :class:`RowSource`).
        name: the source's name, for errors, logs and the loader.
        max_batch_size: the most keys one call is given.
        max_in_flight: the most calls under way at once.
        timeout: seconds one attempt may take; a slower attempt is cancelled and retried.
            A call takes at most ``(1 + retries) * timeout`` plus its backoff waits.
        retries: attempts after the first, when one fails or times out; 0 or more.
        backoff: seconds before the first retry; each next one waits twice as long (each wait
            times a random factor between 0.5 and 1.5); 0 or more.
        breaker_failures: failed calls in a row that open the circuit.
        breaker_reset: seconds the circuit stays open before a probe call.
        clock: the monotonic clock (seconds) of the circuit and the latency figures.

    Raises:
        ConfigError: if a limit is out of range.
    """

    def __init__(
        self,
        source: RowSource,
        *,
        name: str,
        max_batch_size: int,
        max_in_flight: int,
        timeout: float,
        retries: int,
        backoff: float,
        breaker_failures: int,
        breaker_reset: float,
        clock: Callable[[], float] = time.monotonic,
        linger: float = 0.0,
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ConfigError(f"retries must be an int >= 0, got {retries!r}")
        if not backoff >= 0:
            raise ConfigError(f"backoff must be >= 0 seconds, got {backoff!r}")
        self._source = source
        self._name = name
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._clock = clock
        self._rng = random.Random()
        self._breaker = CircuitBreaker(failures=breaker_failures, reset=breaker_reset, clock=clock)
        # The timeout is per attempt, inside the batch function, so the loader has none.
        self._loader: BatchLoader[Hashable, object] = BatchLoader(
            self._call,
            max_batch_size=max_batch_size,
            max_in_flight=max_in_flight,
            timeout=None,
            cache=None,
            name=f"source {name}",
            linger=linger,
        )
        self._last_error: SourceError | None = None
        self._calls = 0
        self._keys_requested = 0
        self._keys_found = 0
        self._keys_missing = 0
        self._malformed = 0
        self._failures = 0
        self._retries_made = 0
        self._timeouts = 0
        self._rejected = 0
        self._successes = 0
        self._latency_total = 0.0
        self._latency_max = 0.0

    @classmethod
    def from_spec(
        cls,
        source: RowSource,
        spec: Source,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Fetcher:
        """A fetcher with the fetch settings of a source's spec, named ``name`` (default: the
        spec's name)."""
        return cls(
            source,
            name=spec.name if name is None else name,
            max_batch_size=spec.max_batch_size,
            max_in_flight=spec.max_in_flight,
            timeout=spec.ms("timeout") / 1000,
            retries=spec.retries,
            backoff=spec.ms("backoff") / 1000,
            breaker_failures=spec.breaker_failures,
            breaker_reset=spec.ms("breaker_reset") / 1000,
            clock=clock,
            linger=spec.ms("fetch_linger") / 1000,
        )

    def __repr__(self) -> str:
        return f"<Fetcher {self._name!r}>"

    async def __aenter__(self) -> Self:
        await self._loader.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Wait for the fetches under way; if the block raised, cancel them instead (their
        callers get ``actors.ActorStopped``)."""
        await self._loader.__aexit__(exc_type, exc_val, exc_tb)

    @property
    def breaker(self) -> CircuitBreaker:
        """The source's circuit breaker."""
        return self._breaker

    async def fetch_many(self, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """Fetch the rows of some keys; a key being fetched already is not asked again.

        Returns a dict with every distinct key given, in the order given, mapped to one of:

        - its row, as the source returned it;
        - :data:`NOT_FOUND`: the source does not have the key;
        - a :class:`SourceError` (:class:`SourceUnavailable` if the circuit was open): the call
          holding the key failed, so nothing is known of it; fall back to a stale row or a
          default. Keys of other calls may still have rows;
        - another exception instance (a :class:`~runtime.MalformedRow` for a value that is
          not a row): the source returned the key's row as malformed.

        Source failures never raise; test values with ``isinstance(value, Exception)``.

        Raises:
            actors.ActorStopped: if the fetcher is not running, or stops before answering.
        """
        wanted = list(dict.fromkeys(keys))
        values = await self._loader.load_many(wanted)
        return {
            key: value.error if type(value) is _Failure else value
            for key, value in zip(wanted, values, strict=True)
        }

    def statistics(self) -> FetchStatistics:
        """Return a snapshot of the fetcher's counters and its circuit's state."""
        loader = self._loader.statistics()
        succeeded = self._successes
        return FetchStatistics(
            calls=self._calls,
            keys_requested=self._keys_requested,
            keys_found=self._keys_found,
            keys_missing=self._keys_missing,
            malformed=self._malformed,
            failures=self._failures,
            retries=self._retries_made,
            timeouts=self._timeouts,
            rejected_by_breaker=self._rejected,
            breaker_state=self._breaker.state,
            breaker_openings=self._breaker.openings,
            mean_latency_ms=self._latency_total / succeeded * 1000 if succeeded > 0 else 0.0,
            max_latency_ms=self._latency_max * 1000,
            queued=loader.queued,
            in_flight=loader.in_flight_batches,
        )

    async def _call(self, keys: list[Hashable]) -> list[object]:
        """The loader's batch function: one call of the source for a batch of keys."""
        breaker = self._breaker
        ticket = breaker.acquire()
        if ticket is None:
            self._rejected += 1
            error = SourceUnavailable(
                f"source {self._name!r} is unavailable: its circuit is open after "
                f"failed calls; no call for {len(keys)} keys",
                source=self._name,
                attempts=0,
            )
            error.__cause__ = self._last_error
            return [_Failure(error)] * len(keys)
        self._calls += 1
        self._keys_requested += len(keys)
        started = self._clock()
        try:
            found = await self._attempts(keys)
        except BaseException:
            breaker.release(ticket)  # cancelled: the loader is stopping
            raise
        if isinstance(found, SourceError):
            self._failures += 1
            self._last_error = found
            was_open = breaker.openings
            breaker.record_failure(ticket)
            if breaker.openings != was_open:
                _log.warning(
                    "enrichment_source_circuit_opened",
                    source=self._name,
                    openings=breaker.openings,
                    error=str(found.__cause__ or found),
                )
            return [_Failure(found)] * len(keys)
        elapsed = self._clock() - started
        self._successes += 1
        self._latency_total += elapsed
        self._latency_max = max(self._latency_max, elapsed)
        was_state = breaker.state
        breaker.record_success(ticket)
        if was_state is BreakerState.HALF_OPEN and breaker.state is BreakerState.CLOSED:
            _log.info("enrichment_source_circuit_closed", source=self._name)
        results: list[object] = []
        for key in keys:
            value = found.get(key, NOT_FOUND)
            if value is NOT_FOUND:
                self._keys_missing += 1
                results.append(value)
                continue
            value = checked_row(value)
            if isinstance(value, Exception):
                self._malformed += 1
                results.append(_Failure(value))
            else:
                self._keys_found += 1
                results.append(value)
        return results

    async def _attempts(self, keys: list[Hashable]) -> Mapping[Hashable, Any] | SourceError:
        """The rows the source returned, or the error of the call once every attempt failed."""
        last: Exception | None = None
        attempts = self._retries + 1
        for attempt in range(attempts):
            if attempt:
                self._retries_made += 1
                await anyio.sleep(backoff_delay(self._backoff, attempt - 1, self._rng))
            try:
                # move_on_after rather than fail_after: a TimeoutError of the source's own is
                # a failure of the attempt, not a timeout of ours.
                with anyio.move_on_after(self._timeout) as scope:
                    found = await self._source.get_many(keys)
                if scope.cancelled_caught:
                    self._timeouts += 1
                    last = TimeoutError(
                        f"source {self._name!r} did not answer {len(keys)} keys "
                        f"within {self._timeout} s"
                    )
                    continue
                if not isinstance(found, Mapping):
                    raise TypeError(
                        f"get_many of source {self._name!r} returned "
                        f"{type(found).__name__}, expected a dict"
                    )
                return found
            except Exception as exc:
                last = exc
        error = SourceError(
            f"source {self._name!r} failed {attempts} attempts for {len(keys)} keys: {last!r}",
            source=self._name,
            attempts=attempts,
        )
        error.__cause__ = last
        return error
