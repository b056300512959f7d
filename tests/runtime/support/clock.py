"""A wall clock that moves only when a test moves it, for ``FeatureRuntime(clock=...)`` and the
enricher's fetcher and breaker."""

from __future__ import annotations


class FakeClock:
    """Seconds, as ``time.monotonic`` gives them; set ``now`` or call ``advance``.

    Args:
        now: the first reading. The default, 1,000 s, keeps a test's sums away from zero.
    """

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds
