"""The monitor actors that run drift detectors on feature values (``docs/drift.md``).

The detectors are made from the specs of ``runtime._spec.drift`` by :func:`build_detector`:
Page-Hinkley and ADWIN from ``runtime._drift.detectors``, PSI and KS from
``runtime._drift.two_sample``.

Feeding a monitor: each monitor has its own subscription to the runtime's feature updates with
the ``drop_oldest`` policy and a bounded ``buffer``, so a slow monitor never holds a shard
back: when it falls behind, the oldest updates go and are counted. The monitor's actor reads
the subscription in its own turns, on a periodic timer (every ``POLL_INTERVAL`` seconds),
when asked for its status and when it stops. No task of its own: the actor system owns the
actor, and at shutdown the actor stops after the shards have applied everything, so its
``on_stop`` reads what they published last. Reading in its turns rather than in a task of
the runtime also means a status ask sees every update published before it.

Order: a key's updates reach the monitor in the order its events were applied, so a monitor
with ``segment="key"`` gives the same alerts whatever the shard count. One detector over
many keys sees their values in the order the shards published them, which can vary from run
to run (the same values, interleaved differently).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio.lowlevel

from actors import (
    Actor,
    ActorRef,
    ActorSystem,
    DeadLetterReason,
    MailboxConfig,
    Supervisor,
    get_logger,
    resume_always,
)

from .._batches import ItemBatch
from .._exceptions import SpecError, UnknownFeature
from .._messages import GetDriftStatus
from .._results import FeatureUpdate
from .._spec.drift import (
    ADWIN,
    KS,
    PSI,
    Detector,
    DriftAlert,
    DriftMonitor,
    DriftSegmentStatus,
    DriftStatus,
    PageHinkley,
)
from .._spec.feature_set import FeatureSet
from .._updates import Policy, UpdateHub, UpdateSubscription
from .detectors import AdwinDetector, DriftDetector, PageHinkleyDetector
from .two_sample import KSDetector, PSIDetector

__all__ = ["POLL_INTERVAL", "DriftMonitorActor", "DriftMonitors", "MonitorState", "build_detector"]

_log = get_logger("featurist.drift")

#: Seconds between two reads of a monitor's subscription.
POLL_INTERVAL = 0.02
#: Updates a monitor handles before it lets the other tasks run.
_CHUNK = 2048


def build_detector(spec: Detector) -> DriftDetector:
    """A fresh detector for ``spec``."""
    if isinstance(spec, PageHinkley):
        return PageHinkleyDetector(spec)
    if isinstance(spec, ADWIN):
        return AdwinDetector(spec)
    if isinstance(spec, PSI):
        return PSIDetector(spec)
    if isinstance(spec, KS):
        return KSDetector(spec)
    raise TypeError(f"detector: expected PageHinkley, ADWIN, PSI or KS, got {type(spec).__name__}")


#: ints beyond it have no float (10**400): skipped as not finite, as the docs say, rather than
#: fail the detector's float()
_LARGEST = 1 << 1023


def _finite(value: Any) -> bool:
    """Whether ``value`` (not a plain float or int) is a number the detectors can take: an
    int or float subclass, finite as a float."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int subclass too large for a float
        return False


class _Segment:
    __slots__ = ("alerts", "detector", "drifting", "last_alert_time", "value", "values")

    def __init__(self, value: Any, detector: DriftDetector) -> None:
        self.value = value
        self.detector = detector
        self.drifting = False
        self.values = 0
        self.alerts = 0
        self.last_alert_time: int | None = None


class _Drain:
    """The timer message: read the subscription."""


_DRAIN = _Drain()
_ABSENT = object()


class MonitorState:
    """A monitor's subscription, detectors and counters: what its actor works on. Kept out of
    the actor so that an instance made by a restart goes on with it."""

    def __init__(
        self,
        spec: DriftMonitor,
        group: str,
        subscription: UpdateSubscription[FeatureUpdate],
        alerts: UpdateHub[DriftAlert],
        clock: Callable[[], float],
    ) -> None:
        self.spec = spec
        self.group = group
        self.subscription = subscription
        self.alerts_hub = alerts
        self.clock = clock
        self.segments: dict[Any, _Segment] = {}
        self.values = 0
        self.skipped = 0
        self.refused = 0
        self.alerts = 0
        #: segments whose reference came out empty
        self.empty_references = 0
        #: segments whose reference is too small for their detector ever to alert
        self.small_references = 0
        #: updates whose value a detector failed on, with the error, for dead letters
        self.failures: list[tuple[FeatureUpdate, Exception]] = []
        self.failed = 0

    async def drain(self) -> None:
        """Handle the updates waiting now (not those that come meanwhile: a busy stream must
        not keep the actor from its asks), letting other tasks run between chunks."""
        subscription = self.subscription
        pending = subscription.statistics().depth
        while pending:
            size = min(pending, _CHUNK)
            pending -= size
            updates = [await subscription.__anext__() for _ in range(size)]
            alerts = self.handle(updates)
            if alerts:
                await self.alerts_hub.publish(ItemBatch(alerts))
            if pending:
                await anyio.lowlevel.checkpoint()

    def handle(self, updates: Iterable[FeatureUpdate]) -> list[DriftAlert]:
        """Run the monitor's values of ``updates`` through its detectors; return the alerts."""
        spec = self.spec
        feature, segment_by, kind, group = spec.feature, spec.segment, spec.on, self.group
        alerts: list[DriftAlert] = []
        segments = self.segments
        skipped = 0
        for update in updates:
            if update.group != group or update.kind != kind:
                continue
            values = update.values
            value = values.get(feature, _ABSENT)
            if value is _ABSENT:
                continue  # a close of another window of the group
            kind_of = type(value)
            if not (
                (kind_of is float and -math.inf < value < math.inf)
                or (kind_of is int and -_LARGEST < value < _LARGEST)
                or _finite(value)
            ) or (update.errors is not None and feature in update.errors):
                skipped += 1
                continue
            if segment_by is None:
                segment_value = None
            elif segment_by == "key":
                segment_value = update.key
            else:
                segment_value = values.get(segment_by)
                if segment_value is None or not _hashable(segment_value):
                    skipped += 1
                    continue
            segment = segments.get(segment_value)
            if segment is None:
                if len(segments) >= spec.max_segments:
                    self.refused += 1
                    continue
                segment = segments[segment_value] = _Segment(
                    segment_value, build_detector(spec.detector)
                )
                segment.detector.on_empty = functools.partial(self._reference_empty, segment_value)
                segment.detector.on_too_small = functools.partial(
                    self._reference_too_small, segment_value
                )
                if segment.detector.too_small is not None:  # a reference given as values
                    self._reference_too_small(segment_value, segment.detector.too_small)
            detector = segment.detector
            try:
                drifting = detector.update(float(value), update.event_time)
            except Exception as exc:
                # a detector's bug: this value is lost, not the chunk, and the actor goes on
                self.failures.append((update, exc))
                continue
            self.values += 1
            segment.values += 1
            if drifting and not segment.drifting:
                alerts.append(self._alert(segment, update))
                if spec.action == "reset":
                    detector.reset()
                    drifting = False
                elif spec.action == "adopt_reference":
                    detector.adopt_reference()
                    drifting = False
            segment.drifting = drifting
        self.skipped += skipped
        return alerts

    def _reference_empty(self, segment: Any) -> None:
        """A segment's reference came out empty (no value in its range): that segment is not
        monitored. Said once per monitor, naming it and the first such segment (one line per
        segment of a monitor by key would be one per key); ``DriftStatus`` counts them
        (segments in phase ``no_reference``)."""
        self.empty_references += 1
        if self.empty_references == 1:
            self._warn(
                "drift_reference_empty",
                segment,
                detail="no value in the reference's range: this segment is not monitored (and "
                "no other of this monitor's segments whose reference is empty is logged)",
            )

    def _reference_too_small(self, segment: Any, size: int) -> None:
        """A segment's reference is too small for its detector ever to alert (KS: even a full
        window against ``size`` values cannot reach ``alpha``). Said once per monitor, as an
        empty reference is."""
        self.small_references += 1
        if self.small_references == 1:
            self._warn(
                "drift_reference_too_small",
                segment,
                reference_values=size,
                detail=f"a {self.spec.detector.type_name} test of a full window against "
                f"{size} reference value(s) can never reach alpha: this segment cannot alert "
                "(a larger reference, or a larger alpha, would let it; no other of this "
                "monitor's segments like it is logged)",
            )

    def _warn(self, event: str, segment: Any, **fields: Any) -> None:
        """A warning about one of this monitor's segments, naming the monitor and feature."""
        _log.warning(
            event, monitor=self.spec.name, feature=self.spec.feature, segment=segment, **fields
        )

    def _alert(self, segment: _Segment, update: FeatureUpdate) -> DriftAlert:
        spec = self.spec
        detector = segment.detector
        segment.alerts += 1
        segment.last_alert_time = update.event_time
        self.alerts += 1
        threshold = detector.threshold
        alert = DriftAlert(
            monitor=spec.name,
            feature=spec.feature,
            detector=detector.kind,
            segment=segment.value,
            key=update.key,
            event_time=update.event_time,
            wall_time=self.clock(),
            score=detector.score if detector.score is not None else math.nan,
            threshold=threshold if threshold is not None else math.nan,
            p_value=detector.p_value,
            reference_size=detector.reference_size,
            window_size=detector.window_size,
            action=spec.action,
            count=segment.alerts,
        )
        _log.info(
            "drift_detected",
            monitor=spec.name,
            segment=repr(segment.value),
            detector=detector.kind,
            score=alert.score,
            threshold=alert.threshold,
            event_time=update.event_time,
            action=spec.action,
        )
        return alert

    def status(self) -> DriftStatus:
        spec = self.spec
        segments = []
        for segment in self.segments.values():
            detector = segment.detector
            segments.append(
                DriftSegmentStatus(
                    segment=segment.value,
                    phase=detector.phase,
                    score=detector.score,
                    threshold=detector.threshold,
                    p_value=detector.p_value,
                    drifting=detector.drifting,
                    values=segment.values,
                    alerts=segment.alerts,
                    reference_size=detector.reference_size,
                    window_size=detector.window_size,
                    last_alert_time=segment.last_alert_time,
                )
            )
        return DriftStatus(
            monitor=spec.name,
            feature=spec.feature,
            detector=spec.detector.type_name,
            action=spec.action,
            segment_by=spec.segment,
            values=self.values,
            skipped=self.skipped,
            dropped=self.subscription.dropped,
            segments_refused=self.refused,
            failed=self.failed + len(self.failures),
            alerts=self.alerts,
            segments=tuple(segments),
        )


def _hashable(value: Any) -> bool:
    try:
        hash(value)  # only whether it can be a dict key: nothing is routed or kept by it
    except TypeError:
        return False
    return True


class DriftMonitorActor(Actor[Any]):
    """One monitor: reads its subscription on a timer, on a status ask and when it stops."""

    def __init__(self, state: MonitorState, interval: float = POLL_INTERVAL) -> None:
        self.state = state
        self.interval = interval

    async def on_start(self) -> None:
        self.context.start_periodic_timer("drain", _DRAIN, self.interval)

    async def receive(self, message: Any) -> Any:
        await self._drain()
        if isinstance(message, GetDriftStatus):
            return self.state.status()
        return None

    async def on_stop(self) -> None:
        # at shutdown, after the shards applied everything: what they published last
        await self._drain()

    async def _drain(self) -> None:
        state = self.state
        await state.drain()
        if state.failures:
            for update, error in state.failures:
                self.context.dead_letters.record(
                    update,
                    self.context.name,
                    DeadLetterReason.FAILED,
                    error=error,
                    detail=f"drift monitor {state.spec.name!r}: its detector failed on the "
                    f"value of {state.spec.feature!r} for key {update.key!r}: {error!r}",
                )
            state.failed += len(state.failures)
            state.failures.clear()


class DriftMonitors:
    """The runtime's monitors and the hub of their alerts. Internal: ``FeatureRuntime``'s
    ``monitor_drift``, ``drift_alerts`` and ``drift_status`` use it."""

    def __init__(self) -> None:
        self.hub: UpdateHub[DriftAlert] = UpdateHub()
        self.monitors: list[tuple[MonitorState, ActorRef[Any]]] = []
        self._supervisor: Supervisor | None = None

    def close(self) -> None:
        """End the alert subscriptions (at shutdown, once the monitors have stopped)."""
        self.hub.close()

    def plan(
        self,
        monitors: Sequence[Any],
        feature_set: FeatureSet,
        group_of: Callable[[str], tuple[str, tuple[str, ...]]],
    ) -> list[tuple[DriftMonitor, str]]:
        """Check ``monitors`` against the runtime; return each with its feature's group.

        Raises:
            TypeError: one is not a ``DriftMonitor``.
            SpecError: a name is taken, or ``segment`` or ``on`` does not fit the feature.
            UnknownFeature: the feature (or the segment feature) does not exist.
        """
        if not monitors:
            raise SpecError("monitor_drift() needs at least one DriftMonitor")
        taken = {state.spec.name for state, _ in self.monitors}
        planned = []
        for index, monitor in enumerate(monitors):
            where = f"monitors[{index}]"
            if not isinstance(monitor, DriftMonitor):
                raise TypeError(f"{where}: expected a DriftMonitor, got {type(monitor).__name__}")
            if monitor.name in taken:
                raise SpecError(f"{where}.name: a monitor named {monitor.name!r} is running")
            taken.add(monitor.name)
            try:
                group, names = group_of(monitor.feature)
            except UnknownFeature as exc:
                raise UnknownFeature(f"{where}.feature: {exc}") from None
            feature = feature_set.feature(monitor.feature)
            windowed = feature_set.is_windowed(monitor.feature)
            window = getattr(feature, "window", None)
            if monitor.on == "close":
                if window is None or window.type_name == "sliding":
                    raise SpecError(
                        f"{where}.on: 'close' needs a feature with tumbling, hopping or session "
                        f"windows; {monitor.feature!r} has "
                        + ("none" if window is None else "a sliding window, which never closes")
                    )
            elif windowed and feature_set.emit == "close":
                raise SpecError(
                    f"{where}.on: the feature set emits windowed features only when their "
                    f"windows close (emit='close'): watch {monitor.feature!r} with on='close'"
                )
            segment = monitor.segment
            if segment is not None and segment != "key":
                if segment not in names:
                    if segment not in feature_set.names:
                        known = ", ".join(feature_set.names)
                        raise UnknownFeature(
                            f"{where}.segment: no feature named {segment!r} to segment by "
                            f"(known: {known}; or segment='key')"
                        )
                    raise SpecError(
                        f"{where}.segment: {segment!r} is computed in another group than "
                        f"{monitor.feature!r} (another stream, or windowed and not), so its "
                        "value does not come with the watched one: use a feature of the same "
                        "group, or segment='key'"
                    )
                if (
                    monitor.on == "close"
                    and getattr(feature_set.feature(segment), "window", None) != window
                ):
                    raise SpecError(
                        f"{where}.segment: with on='close', {segment!r} needs the same window "
                        f"as {monitor.feature!r}, to close with it"
                    )
            planned.append((monitor, group))
        return planned

    async def start(
        self,
        system: ActorSystem,
        planned: Sequence[tuple[DriftMonitor, str]],
        updates: UpdateHub[FeatureUpdate],
        clock: Callable[[], float],
    ) -> None:
        """Spawn an actor per planned monitor, each with its own subscription to ``updates``.

        The monitors have a supervisor of their own that resumes a monitor whose handler
        failed (the updates it was reading go to dead letters with the error): a monitor
        never stops the runtime.
        """
        if self._supervisor is None:
            self._supervisor = system.supervisor("drift", decider=resume_always)
        for monitor, group in planned:
            subscription = updates.subscribe(monitor.buffer, "drop_oldest")
            state = MonitorState(monitor, group, subscription, self.hub, clock)
            try:
                ref = await self._supervisor.spawn(
                    functools.partial(DriftMonitorActor, state),
                    name=f"drift-{monitor.name}",
                    mailbox=MailboxConfig(capacity=16, max_batch_size=1),
                )
            except BaseException:
                await subscription.aclose()
                raise
            self.monitors.append((state, ref))
            _log.info(
                "drift_monitor_started",
                monitor=monitor.name,
                feature=monitor.feature,
                detector=monitor.detector.type_name,
                segment=monitor.segment,
            )

    def subscribe(self, buffer: int, policy: Policy) -> UpdateSubscription[DriftAlert]:
        return self.hub.subscribe(buffer, policy)

    async def status(self) -> dict[str, DriftStatus]:
        return {
            state.spec.name: await ref.ask(GetDriftStatus(), timeout=None)
            for state, ref in self.monitors
        }
