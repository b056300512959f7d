"""The garbage collector's first threshold while a runtime runs (``FeatureRuntime(gc_threshold=)``).

CPython's collector looks at the young generation after every 700 net allocations of
containers (dicts, lists, tuples, objects). A runtime works in batches: a batch of 512 to
1,024 events holds a few thousand containers in flight (the decoded events, the routed
tuples, the output rows), so with 700 nearly every young collection finds a batch alive and
moves it to an older generation. Those generations then fill up with objects that die a moment
later, and their collections come often; each full one walks every live container of the
process, every key's state among them (tens of ms at 100,000 keys). Measured: 15 to 25% of the
runtime's CPU at 100,000 keys (``docs/embedding.md``, "The garbage collector").

With a first threshold above what a few batches allocate, a batch dies young, before any
collection sees it, and the older generations' collections become rare. The threshold is a
process-wide setting: it is raised while at least one runtime runs (to the largest threshold
asked for, never lowered), and put back when the last one stops, unless the application set it
meanwhile (then the application's setting stays). Worker processes, which the runtime owns,
raise it for their whole life.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["DEFAULT_GC_THRESHOLD", "GcThreshold"]

#: the first threshold a runtime raises the collector's to (Python's is 700)
DEFAULT_GC_THRESHOLD = 10_000


class _Held:
    """The requests of the running runtimes, and the threshold found before the first."""

    lock = threading.Lock()
    requests: list[int] = []  # noqa: RUF012 (one per process, on purpose)
    #: the first threshold before the first request (None: no request holds it)
    saved: int | None = None
    #: the first threshold set here last (None: none set)
    set_to: int | None = None
    #: the application set its own over the one set here: nothing is set again until the
    #: last runtime stops
    ceded = False


class GcThreshold:
    """One runtime's hold on the collector's first threshold: :meth:`raise_` when it starts,
    :meth:`release` when it stops (each at most once; a release without a raise does
    nothing)."""

    __slots__ = ("_held", "threshold")

    def __init__(self, threshold: int | None) -> None:
        #: the first threshold asked for (None: leave the collector alone)
        self.threshold = threshold
        self._held = False

    def raise_(self) -> None:
        threshold = self.threshold
        if threshold is None or self._held:
            return
        with _Held.lock:
            if not _Held.requests:
                _Held.saved = gc.get_threshold()[0]
                _Held.set_to = None
            _Held.requests.append(threshold)
            self._held = True
            _apply()

    def release(self) -> None:
        if not self._held:
            return
        with _Held.lock:
            self._held = False
            _Held.requests.remove(self.threshold)  # type: ignore[arg-type]
            if _Held.requests:
                _apply()
                return
            _ceded()
            if _Held.set_to is not None and _Held.saved is not None:
                gc.set_threshold(_Held.saved, *gc.get_threshold()[1:])
            _Held.saved = _Held.set_to = None
            _Held.ceded = False


def _ceded() -> None:
    """Unless the first threshold is still the one set here last, it is the application's
    (never set here, or set by the application since): it counts as the one found, and
    nothing is put back over it."""
    current = gc.get_threshold()[0]
    if _Held.set_to is not None and current != _Held.set_to:
        _Held.ceded = True  # the application's own, set over the one set here: it stays
    if _Held.set_to is None or current != _Held.set_to:
        _Held.set_to = None
        _Held.saved = current


def _apply() -> None:
    """Set the first threshold to the largest asked for, if above the one found (a threshold
    of 0, which turns automatic collection off, is left as it is)."""
    _ceded()
    saved = _Held.saved
    assert saved is not None
    if saved == 0 or _Held.ceded:
        return
    want = max(saved, *_Held.requests)
    current = gc.get_threshold()
    if want != current[0]:
        gc.set_threshold(want, *current[1:])
        _Held.set_to = want
