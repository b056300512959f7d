"""A circuit breaker and the backoff between retries, for calls of a failing backend.

The :class:`~runtime._enrich.fetch.Fetcher` asks its breaker before each call of a source: after
``failures`` failed calls in a row the circuit opens and calls fail at once; after ``reset``
seconds one probe call goes through, and its outcome closes the circuit or opens it again.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

from .._exceptions import ConfigError

__all__ = ["BreakerState", "CircuitBreaker", "backoff_delay"]


class BreakerState(enum.Enum):
    """The state of a :class:`CircuitBreaker`."""

    #: calls go through; failed calls in a row are counted
    CLOSED = "closed"
    #: calls fail at once, until ``reset`` seconds have passed since it opened
    OPEN = "open"
    #: one probe call goes through; the others fail at once until its outcome is known
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calling a failing backend for a while, then probes it with one call.

    Closed, it lets every call through and counts failed calls in a row; the ``failures``-th
    opens it. Open, it refuses every call. ``reset`` seconds after it opened it is half-open:
    it lets one probe call through and refuses the others; the probe's success closes it (and
    resets the count), its failure opens it again for another ``reset`` seconds.

    A caller asks :meth:`acquire` for a ticket before each call, and hands the ticket back with
    the call's outcome: :meth:`record_success`, :meth:`record_failure`, or :meth:`release` for
    a call that ended without one (cancelled). Outcomes of calls let through before the circuit
    last changed state are ignored: a call started before the circuit opened does not close it,
    and only the probe decides the half-open state.

    Args:
        failures: failed calls in a row that open the circuit; at least 1.
        reset: seconds the circuit stays open before the probe; more than 0.
        clock: the monotonic clock, in seconds.

    Raises:
        ConfigError: if a limit is out of range.
    """

    def __init__(
        self, *, failures: int, reset: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(failures, int) or isinstance(failures, bool) or failures < 1:
            raise ConfigError(f"breaker failures must be an int >= 1, got {failures!r}")
        if not reset > 0:
            raise ConfigError(f"breaker reset must be > 0 seconds, got {reset!r}")
        self._threshold = failures
        self._reset = reset
        self._clock = clock
        self._state = BreakerState.CLOSED
        #: bumped on every change of state; a ticket is the generation it was issued in
        self._generation = 0
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._openings = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state.value}>"

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose ``reset`` has passed is half-open)."""
        self._advance()
        return self._state

    @property
    def openings(self) -> int:
        """How many times the circuit has opened (a failed probe opens it again)."""
        return self._openings

    @property
    def consecutive_failures(self) -> int:
        """Failed calls in a row while closed."""
        return self._failures

    def acquire(self) -> int | None:
        """Return a ticket for one call, or None if the call must not be made now."""
        self._advance()
        if self._state is BreakerState.CLOSED:
            return self._generation
        if self._state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return self._generation
        return None

    def record_success(self, ticket: int) -> None:
        """The call of ``ticket`` succeeded: reset the count, or close a half-open circuit."""
        if ticket != self._generation:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False
            self._change(BreakerState.CLOSED)
        self._failures = 0

    def record_failure(self, ticket: int) -> None:
        """The call of ``ticket`` failed: count it, or open a half-open circuit again."""
        if ticket != self._generation:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False
            self._open()
        elif self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()

    def release(self, ticket: int) -> None:
        """The call of ``ticket`` ended without an outcome: a probe's turn passes to the next
        call. Always call one of the three ``record``/``release`` methods per ticket."""
        if ticket == self._generation and self._state is BreakerState.HALF_OPEN:
            self._probing = False

    def _open(self) -> None:
        self._change(BreakerState.OPEN)
        self._opened_at = self._clock()
        self._openings += 1
        self._failures = 0

    def _advance(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset:
            self._change(BreakerState.HALF_OPEN)

    def _change(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1


def backoff_delay(backoff: float, retry: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry`` (0 for the first): ``backoff * 2**retry`` times
    a random factor between 0.5 and 1.5."""
    return backoff * 2.0**retry * rng.uniform(0.5, 1.5)
