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
- One bad key fails alone (issue 15). A key the source says it cannot send
  (``refuse_key``: a lone surrogate, a key too long for a URL) is a :class:`KeyRefused`
  before the call. A call of several keys that failed with an error other than a timeout or
  an ``OSError`` (a connection error) is split in halves, each tried once, down to the keys
  that fail alone: those are refused, the others get their rows, and the call does not count
  against the circuit. The split is bounded (``_split_budget`` calls), and a call whose
  halves and quarters all fail is a failure of the source, as before. A call of one key that
  fails with an error a value causes (``ValueError``, ``TypeError``, ``LookupError``) refuses
  the key.
- A call cannot hang the fetcher. Each attempt runs in a task of its own; at the deadline it
  is cancelled, and if it has not ended ``_GRACE`` seconds later (it ignored the
  cancellation), it is abandoned: the attempt times out, and the task finishes in the
  background. At most ``max_in_flight`` abandoned calls run at once; past that, attempts fail
  at once (and the circuit opens).
- A call cannot crash the fetcher: whatever the source returns is read inside the attempt, so
  a mapping that raises when read is a failed attempt.

The circuit breaker and the backoff between retries are in ``breaker.py``.

The errors::

    FeaturistError
    ├── SourceError              a call of a source failed after its retries
    │   └── SourceUnavailable    the source's circuit is open: the call was not made
    └── KeyRefused               the source cannot take the key: it fails alone (a ValueError)
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, Self

import anyio

from actors import BatchLoader, get_logger

from .._exceptions import ConfigError, KeyRefused, SourceError, SourceUnavailable
from .._spec.enrich import Source
from .breaker import BreakerState, CircuitBreaker, backoff_delay
from .rows import checked_row

__all__ = ["NOT_FOUND", "FetchStatistics", "Fetcher", "KeyRefused", "RowSource"]

_log = get_logger("featurist.enrichment")


class _NotFound(enum.Enum):
    NOT_FOUND = "NOT_FOUND"

    def __repr__(self) -> str:
        return "NOT_FOUND"


#: the value :meth:`Fetcher.fetch_many` gives a key that the source does not have (not to be
#: confused with the cache's ``CacheStatus.MISSING``, a key known to be missing)
NOT_FOUND: Final = _NotFound.NOT_FOUND


class RowSource(Protocol):
    """What a :class:`Fetcher` needs of a dimension source.

    A source may also have ``refuse_key(key) -> str | None``: why it cannot send ``key`` (a
    lone surrogate, a key too long for a URL), or None. The fetcher asks it before each call,
    so such a key fails alone (:class:`KeyRefused`) instead of failing its whole batch.
    """

    async def get_many(self, keys: Sequence[Hashable], /) -> Mapping[Hashable, Any]:
        """Return the rows of the keys it has (others left out); a value that is an exception
        instance marks the key's row as malformed. Raises if the call failed."""
        ...


#: seconds an attempt cancelled at its deadline gets to end before it is abandoned
_GRACE = 0.25
#: the most characters of a key's repr in a message
_KEY_REPR = 80


def _key_repr(key: Hashable) -> str:
    try:
        text = repr(key)
    except Exception:  # a key of an application type whose repr raises
        text = f"<{type(key).__name__}>"
    return text if len(text) <= _KEY_REPR else f"{text[:_KEY_REPR]}... ({len(text)} chars)"


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
    #: keys refused: the source cannot take them (refused before the call, or failing alone
    #: when their call was split)
    keys_refused: int
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
    #: calls made on the parts of failed calls, to find the keys that fail alone
    split_calls: int = 0
    #: attempts that ignored their cancellation at the deadline and still run, abandoned
    abandoned: int = 0


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
        self._refuse_key: Callable[[Hashable], str | None] | None = getattr(
            source, "refuse_key", None
        )
        self._name = name
        self._timeout = timeout
        self._max_abandoned = max_in_flight
        #: attempts that ignored cancellation and still run (a strong reference: a task only
        #: weakly held by the loop could be collected while it runs)
        self._abandoned: set[asyncio.Future[Any]] = set()
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
        #: called with each batch call's answers by key (rows, ``NOT_FOUND``, failures) as
        #: they come: the owner's cache stores them (``SourceRuntime``)
        self.on_answers: Callable[[dict[Hashable, object]], None] | None = None
        self._calls = 0
        self._keys_requested = 0
        self._keys_found = 0
        self._keys_missing = 0
        self._malformed = 0
        self._refused = 0
        self._split_calls = 0
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
        callers get ``actors.ActorStopped``). Attempts abandoned at their deadline are
        cancelled once more and not waited for."""
        try:
            await self._loader.__aexit__(exc_type, exc_val, exc_tb)
        finally:
            for task in list(self._abandoned):
                task.cancel()

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
            keys_refused=self._refused,
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
            split_calls=self._split_calls,
            abandoned=len(self._abandoned),
        )

    async def _call(self, keys: list[Hashable]) -> list[object]:
        """The loader's batch function: one call of the source for a batch of keys. It never
        raises (but when cancelled): every key gets its answer, given to :attr:`on_answers`
        first (before any caller of the keys resumes, and before the keys stop being in
        flight)."""
        answers: dict[Hashable, object] = {}
        asked = keys if self._refuse_key is None else self._refuse(keys, answers)
        if asked:
            await self._call_source(asked, answers)
        if self.on_answers is not None:
            try:
                self.on_answers(answers)
            except Exception:  # a bug: the answers still reach the callers
                _log.exception("source_answers_hook_failed", source=self._name)
        return [answers[key] for key in keys]

    def _refuse(self, keys: list[Hashable], answers: dict[Hashable, object]) -> list[Hashable]:
        """The keys the source can take; the others are answered with a :class:`KeyRefused`."""
        assert self._refuse_key is not None
        asked: list[Hashable] = []
        for key in keys:
            try:
                reason = self._refuse_key(key)
            except Exception as exc:  # a key of an application type whose str() raises, say
                reason = f"it cannot be read: {exc!r}"
            if reason is None:
                asked.append(key)
            else:
                answers[key] = _Failure(self._refusal(key, reason))
        return asked

    def _refusal(self, key: Hashable, reason: str) -> KeyRefused:
        self._refused += 1
        return KeyRefused(
            f"source {self._name!r} refused the key {_key_repr(key)}: {reason}",
            source=self._name,
            key=key,
        )

    async def _call_source(self, keys: list[Hashable], answers: dict[Hashable, object]) -> None:
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
            failure = _Failure(error)
            for key in keys:
                answers[key] = failure
            return
        self._calls += 1
        self._keys_requested += len(keys)
        started = self._clock()
        split: _Split | None = None
        try:
            found = await self._attempts(keys)
            if isinstance(found, SourceError):
                split = await self._isolate(keys, found.__cause__)
        except BaseException:
            breaker.release(ticket)  # cancelled: the loader is stopping
            raise
        if not isinstance(found, SourceError):
            self._succeeded(ticket, started)
            self._take_rows({key: found.get(key, NOT_FOUND) for key in keys}, answers)
            return
        if split is None or split.failed:
            self._failed(ticket, found)
            failure = _Failure(found)
            for key in keys:
                answers[key] = failure
            if split is not None:
                self._take_rows(split.rows, answers)  # parts answered before the source failed
            return
        # The source answered, but some keys fail alone: they are refused, the others served.
        if split.rows:
            self._succeeded(ticket, started)
        else:
            breaker.release(ticket)  # every key failed alone: no word on the source's health
        self._take_rows(split.rows, answers)
        for key, cause in split.bad.items():
            refused = self._refusal(key, f"a call of this key alone failed: {cause!r}")
            refused.__cause__ = cause
            answers[key] = _Failure(refused)
        failure = _Failure(found)
        for key in split.unresolved:
            answers[key] = failure

    def _succeeded(self, ticket: int, started: float) -> None:
        elapsed = self._clock() - started
        self._successes += 1
        self._latency_total += elapsed
        self._latency_max = max(self._latency_max, elapsed)
        breaker = self._breaker
        was_state = breaker.state
        breaker.record_success(ticket)
        if was_state is BreakerState.HALF_OPEN and breaker.state is BreakerState.CLOSED:
            _log.info("enrichment_source_circuit_closed", source=self._name)

    def _failed(self, ticket: int, error: SourceError) -> None:
        self._failures += 1
        self._last_error = error
        breaker = self._breaker
        was_open = breaker.openings
        breaker.record_failure(ticket)
        if breaker.openings != was_open:
            _log.warning(
                "enrichment_source_circuit_opened",
                source=self._name,
                openings=breaker.openings,
                error=str(error.__cause__ or error),
            )

    def _take_rows(self, rows: dict[Hashable, Any], answers: dict[Hashable, object]) -> None:
        """Answer the keys a call returned (``NOT_FOUND`` for those it left out)."""
        for key, value in rows.items():
            if value.__class__ is dict:  # a row, the usual answer (what checked_row passes)
                self._keys_found += 1
                answers[key] = value
                continue
            if value is NOT_FOUND:
                self._keys_missing += 1
                answers[key] = value
                continue
            checked = checked_row(value)
            if isinstance(checked, Exception):
                self._malformed += 1
                answers[key] = _Failure(checked)
            else:
                self._keys_found += 1
                answers[key] = checked

    async def _isolate(self, keys: list[Hashable], cause: BaseException | None) -> _Split | None:
        """After a call failed for every attempt: the keys that fail alone, or None when the
        failure is the source's: a timeout or an ``OSError`` (a connection refused or reset) is
        a slow or unreachable source, never a bad key."""
        if isinstance(cause, OSError):  # TimeoutError and ConnectionError included
            return None
        if len(keys) == 1:
            # one key, an error a value causes: the key, not the source (ValueError covers
            # UnicodeEncodeError; LookupError a custom source's KeyError)
            if isinstance(cause, _VALUE_ERRORS) and not isinstance(cause, SourceError):
                assert isinstance(cause, Exception)
                return _Split(rows={}, bad={keys[0]: cause}, unresolved=[], failed=False)
            return None
        return await self._split(keys)

    async def _split(self, keys: list[Hashable]) -> _Split:
        """Call the halves of a failed call, once each, and the halves of each half that
        fails, down to the keys that fail alone, within ``_split_budget`` calls. If the first
        ``_SPLIT_PROBES`` parts all fail (the halves and the quarters: every part holds a bad
        key, or the source fails whatever the keys), or a part times out, the source is
        failing: ``failed``."""
        budget = _split_budget(len(keys))
        split = _Split(rows={}, bad={}, unresolved=[], failed=False)
        parts: deque[list[Hashable]] = deque([keys])
        failed_parts = 0
        while parts:
            part = parts.popleft()
            middle = len(part) // 2
            failing: list[tuple[list[Hashable], Exception]] = []
            for half in (part[:middle], part[middle:]):
                if budget == 0:
                    split.unresolved.extend(half)
                    continue
                budget -= 1
                self._split_calls += 1
                try:
                    found = await self._attempt(half)
                except _Deadline:
                    self._timeouts += 1
                    split.failed = True
                    return split
                except Exception as exc:
                    failing.append((half, exc))
                    failed_parts += 1
                    continue
                split.rows.update((key, found.get(key, NOT_FOUND)) for key in half)
            if not split.rows and failed_parts >= _SPLIT_PROBES:
                split.failed = True  # nothing the source was asked succeeded: its failure
                return split
            for half, error in failing:
                if len(half) == 1:
                    split.bad[half[0]] = error
                else:
                    parts.append(half)
        return split

    async def _attempts(self, keys: list[Hashable]) -> dict[Hashable, Any] | SourceError:
        """The rows the source returned, or the error of the call once every attempt failed."""
        last: Exception | None = None
        attempts = self._retries + 1
        for attempt in range(attempts):
            if attempt:
                self._retries_made += 1
                await anyio.sleep(backoff_delay(self._backoff, attempt - 1, self._rng))
            try:
                return await self._attempt(keys)
            except _Deadline as exc:
                self._timeouts += 1
                last = exc
            except Exception as exc:
                last = exc
        error = SourceError(
            f"source {self._name!r} failed {attempts} attempts for {len(keys)} keys: {last!r}",
            source=self._name,
            attempts=attempts,
        )
        error.__cause__ = last
        return error

    async def _attempt(self, keys: list[Hashable]) -> dict[Hashable, Any]:
        """One attempt of ``get_many``, as a plain dict of the keys asked; raises what the
        source raised, or :class:`_Deadline` past ``timeout``.

        The call runs in an asyncio task of its own, not in the caller's task: a call that
        swallows its cancellation would hold the caller (and the loader's exit, and the
        runtime's shutdown) for as long as it likes. anyio has no task that may outlive its
        task group, hence the plain asyncio task (the runtime runs on asyncio); the fetcher
        keeps every such task it gave up on, and cancels it again when it exits.
        """
        if len(self._abandoned) >= self._max_abandoned:
            raise RuntimeError(
                f"source {self._name!r} has {len(self._abandoned)} calls that ignored their "
                "cancellation still running: no new call until one of them ends"
            )
        task = asyncio.ensure_future(self._read(keys))
        ended = anyio.Event()
        task.add_done_callback(_retrieve)
        task.add_done_callback(lambda _: ended.set())
        try:
            with anyio.move_on_after(self._timeout):
                await ended.wait()
            if not task.done():
                task.cancel()
                with anyio.move_on_after(_GRACE):
                    await ended.wait()
        except BaseException:
            # the fetcher is stopping: the call is cancelled too, and given a moment to end
            task.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(_GRACE):
                await ended.wait()
            if not task.done():
                self._abandon(task)
            raise
        if not task.done():
            self._abandon(task)
        if not task.done() or task.cancelled():
            raise _Deadline(
                f"source {self._name!r} did not answer {len(keys)} keys within {self._timeout} s"
            )
        return task.result()

    async def _read(self, keys: list[Hashable]) -> dict[Hashable, Any]:
        found = await self._source.get_many(keys)
        if not isinstance(found, Mapping):
            raise TypeError(
                f"get_many of source {self._name!r} returned "
                f"{type(found).__name__}, expected a dict"
            )
        # Read here, inside the attempt: a custom source's mapping that raises when it is read
        # fails the attempt, not the fetcher's task (nor, through it, the runtime).
        return {key: found[key] for key in keys if key in found}

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)
        _log.warning(
            "enrichment_source_call_abandoned",
            source=self._name,
            running=len(self._abandoned),
        )


#: errors a value causes: a call of one key that fails with one is the key's fault
_VALUE_ERRORS = (ValueError, TypeError, LookupError, ArithmeticError)


class _Deadline(TimeoutError):
    """An attempt that took longer than the fetcher's timeout (a ``TimeoutError``, as the
    ``__cause__`` of a failed call's :class:`SourceError`)."""


@dataclass
class _Split:
    """What splitting a failed call found."""

    #: the keys of the parts that succeeded: their rows, or ``NOT_FOUND``
    rows: dict[Hashable, Any]
    #: the keys that failed alone, with their error
    bad: dict[Hashable, Exception]
    #: the keys left when the split ran out of calls: they get the call's error
    unresolved: list[Hashable]
    #: the source failed (both halves, or a timeout): the call is a failure
    failed: bool


#: parts of a split call that may all fail before the source is judged failing: the halves
#: and the quarters (so a down source costs at most this many more calls)
_SPLIT_PROBES = 6


def _split_budget(keys: int) -> int:
    """The most calls splitting a failed call of ``keys`` keys makes: enough to isolate two bad
    keys (two calls per halving), a small multiple of one call."""
    return 4 * max(1, (keys - 1).bit_length())


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a call's exception as seen (asyncio logs one never retrieved)."""
    if not task.cancelled():
        task.exception()
