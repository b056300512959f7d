"""The parity check: does a replay of the history give the values the online run served?

:func:`check_parity` replays the history in a fresh ``FeatureRuntime`` and compares its values
with the online ones, feature by feature: the final vectors per key, or every update. It
starts a runtime of its own, so it sits above the runtime (``history.py`` sits below);
``python -m runtime.parity`` is its command line.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

from .._duration import format_duration
from .._exceptions import UnknownFeature
from .._results import FeatureUpdate, FeatureVector
from .._runtime import FeatureRuntime, RuntimeReplayHost
from .._spec.feature_set import FeatureSet
from .history import ReplayOptions, ReplayResult, replay_history

__all__ = [
    "FeatureParity",
    "ParityExample",
    "ParityMissing",
    "ParityReport",
    "check_parity",
]

#: keys read with one ``get_many`` by the parity check
_KEYS_PER_READ = 4096


class ParityExample(msgspec.Struct, frozen=True, kw_only=True):
    """A value that differs: the online one and the replayed one, with the key (and, comparing
    updates, the event's time and the update's kind)."""

    key: Any
    online: Any
    replayed: Any
    event_time: int | None = None
    kind: str | None = None


class ParityMissing(msgspec.Struct, frozen=True, kw_only=True):
    """A key (or an update) that only one side has: ``side`` is the one that has it,
    ``"online"`` or ``"replayed"``."""

    side: str
    key: Any
    event_time: int | None = None
    kind: str | None = None


class FeatureParity(msgspec.Struct, frozen=True, kw_only=True):
    """One feature's part of a :class:`ParityReport`."""

    feature: str
    #: values compared (one per key, or per update), and those that differ
    compared: int = 0
    differ: int = 0
    #: values that only one side has (the feature is missing from the other's vector)
    missing: int = 0
    #: the largest absolute and relative difference between two numbers compared, within the
    #: tolerance or not (None when no two numbers were compared)
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    #: the first few values that differ
    examples: tuple[ParityExample, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.differ and not self.missing


class ParityReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`check_parity` found: per feature, the values compared and those that differ;
    the keys (or updates) that only one side has. ``str(report)`` is :meth:`summary`."""

    #: ``"vectors"`` (final values per key) or ``"updates"`` (every update compared)
    mode: str
    #: keys, or updates, found on both sides and compared
    compared: int
    features: tuple[FeatureParity, ...]
    #: keys (or updates) only the online side has, and only the replay has; a few of each
    only_online: int
    only_replayed: int
    missing: tuple[ParityMissing, ...]
    #: names the online values hold that are not features of the feature set
    unknown_features: tuple[str, ...]
    #: numbers closer than this (absolutely, or relatively to the larger) count as equal
    tolerance: float
    replay: ReplayResult

    @property
    def ok(self) -> bool:
        """True when every value agrees and neither side has keys (or updates) the other lacks."""
        return (
            all(f.ok for f in self.features)
            and not self.only_online
            and not self.only_replayed
            and not self.unknown_features
        )

    @property
    def differences(self) -> tuple[FeatureParity, ...]:
        """The features with values that differ or are missing."""
        return tuple(f for f in self.features if not f.ok)

    def summary(self) -> str:
        """The report as text: a verdict, a line per feature, the missing keys, the replay."""
        unit = "keys" if self.mode == "vectors" else "updates"
        bad = self.differences
        verdict = "OK" if self.ok else "DIFFERENCES"
        if bad:
            verdict += f": {len(bad)} of {len(self.features)} features"
        lines = [
            f"parity: {self.compared:,} {unit} compared (tolerance {self.tolerance:g}): {verdict}",
            f"  {'feature':<24} {'compared':>10} {'differ':>8} {'missing':>8} "
            f"{'max abs diff':>13} {'max rel diff':>13}",
        ]
        for f in self.features:
            lines.append(
                f"  {f.feature:<24} {f.compared:>10,} {f.differ:>8,} {f.missing:>8,} "
                f"{_number_text(f.max_abs_diff):>13} {_number_text(f.max_rel_diff):>13}"
            )
            for example in f.examples:
                when = "" if example.event_time is None else f" at {example.event_time}"
                kind = "" if example.kind in (None, "update") else f" ({example.kind})"
                lines.append(
                    f"      key {_short(example.key)}{when}{kind}: online "
                    f"{_short(example.online)}, replayed {_short(example.replayed)}"
                )
        if self.unknown_features:
            names = ", ".join(self.unknown_features)
            lines.append(f"  online values of names that are not features: {names}")
        lines.append(
            f"  {unit} only online: {self.only_online:,}; only in the replay: "
            f"{self.only_replayed:,}"
        )
        for item in self.missing:
            when = "" if item.event_time is None else f" at {item.event_time}"
            kind = "" if item.kind is None else f" ({item.kind})"
            lines.append(f"      only {item.side}: key {_short(item.key)}{when}{kind}")
        lines.append("  " + _replay_line(self.replay))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _number_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _time_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _replay_line(result: ReplayResult) -> str:
    line = (
        f"replayed {result.events:,} events ({result.accepted:,} accepted, "
        f"{result.rejected:,} rejected)"
    )
    if result.first_event_time is not None and result.last_event_time is not None:
        line += (
            f", event time {_time_text(result.first_event_time)} .. "
            f"{_time_text(result.last_event_time)} ({format_duration(result.span_ms)})"
        )
    return line + f", {result.steps:,} clock steps, in {result.seconds:.2f} s"


# -- comparing values ---------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _nothing(value: Any) -> bool:
    """None, or NaN (JSON writes NaN as null)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a: Any, b: Any, tolerance: float) -> bool:
    """Whether two feature values agree: numbers within the tolerance, sequences and mappings
    element by element (a tuple equals a list, and mapping keys compare as text: JSON turns
    tuples into lists and keys into strings)."""
    if a is b:
        return True
    if _is_number(a) and _is_number(b):
        if a == b:
            return True
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    if _nothing(a) and _nothing(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if len(a) != len(b):
            return False
        texts = {str(k): v for k, v in b.items()}
        return all(str(k) in texts and _same(v, texts[str(k)], tolerance) for k, v in a.items())
    try:
        return bool(a == b)
    except Exception:
        return False


class _Error:
    """A feature's error message in an update, compared in place of its value."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Error) and other.message == self.message

    def __hash__(self) -> int:
        return len(self.message)

    def __repr__(self) -> str:
        return f"error({self.message!r})"


class _Tally:
    """One feature's counts, while comparing."""

    __slots__ = ("compared", "differ", "examples", "max_abs", "max_rel", "missing", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.compared = self.differ = self.missing = 0
        self.max_abs: float | None = None
        self.max_rel: float | None = None
        self.examples: list[ParityExample] = []

    def add(
        self,
        a: Any,
        b: Any,
        tolerance: float,
        limit: int,
        key: Any,
        t: int | None,
        kind: str | None,
    ) -> None:
        self.compared += 1
        if _is_number(a) and _is_number(b) and math.isfinite(a) and math.isfinite(b):
            diff = abs(a - b)
            larger = max(abs(a), abs(b))
            rel = diff / larger if larger else 0.0
            if self.max_abs is None or diff > self.max_abs:
                self.max_abs = float(diff)
            if self.max_rel is None or rel > self.max_rel:
                self.max_rel = float(rel)
        if not _same(a, b, tolerance):
            self.differ += 1
            if len(self.examples) < limit:
                self.examples.append(
                    ParityExample(
                        key=key,
                        online=_plain(a),
                        replayed=_plain(b),
                        event_time=t,
                        kind=kind,
                    )
                )

    def result(self) -> FeatureParity:
        return FeatureParity(
            feature=self.name,
            compared=self.compared,
            differ=self.differ,
            missing=self.missing,
            max_abs_diff=self.max_abs,
            max_rel_diff=self.max_rel,
            examples=tuple(self.examples),
        )


def _plain(value: Any) -> Any:
    return f"error: {value.message}" if isinstance(value, _Error) else value


def _update_values(update: FeatureUpdate) -> dict[str, Any]:
    """An update's values, a failed feature's error in place of its value."""
    if not update.errors:
        return update.values
    values = dict(update.values)
    for name, message in update.errors.items():
        values[name] = _Error(message)
    return values


def _identity(update: FeatureUpdate) -> tuple[Any, ...]:
    """What pairs an online update with a replayed one (with its rank among equals): the key,
    the event time, the kind, the window and the features it holds. Not the group's name,
    which depends on the order features were registered in."""
    window = None if update.window is None else tuple(update.window)
    return (update.key, update.event_time, update.kind, window, tuple(sorted(update.values)))


class _Comparison:
    """The state of one parity check."""

    def __init__(self, names: Sequence[str], tolerance: float, examples: int) -> None:
        self.names = names
        self.tolerance = tolerance
        self.limit = examples
        self.tallies = {name: _Tally(name) for name in names}
        self.compared = 0
        self.only: dict[str, int] = {"online": 0, "replayed": 0}
        self.missing: list[ParityMissing] = []

    def values(
        self,
        online: Mapping[str, Any],
        replayed: Mapping[str, Any],
        key: Any,
        t: int | None = None,
        kind: str | None = None,
    ) -> None:
        self.compared += 1
        tolerance, limit = self.tolerance, self.limit
        for name, tally in self.tallies.items():
            has_online, has_replayed = name in online, name in replayed
            if has_online and has_replayed:
                tally.add(online[name], replayed[name], tolerance, limit, key, t, kind)
            elif has_online or has_replayed:
                tally.missing += 1

    def one_side(self, side: str, key: Any, t: int | None = None, kind: str | None = None) -> None:
        self.only[side] += 1
        if sum(1 for m in self.missing if m.side == side) < self.limit:
            self.missing.append(ParityMissing(side=side, key=key, event_time=t, kind=kind))

    def report(self, mode: str, unknown: Sequence[str], result: ReplayResult) -> ParityReport:
        return ParityReport(
            mode=mode,
            compared=self.compared,
            features=tuple(tally.result() for tally in self.tallies.values()),
            only_online=self.only["online"],
            only_replayed=self.only["replayed"],
            missing=tuple(self.missing),
            unknown_features=tuple(unknown),
            tolerance=self.tolerance,
            replay=result,
        )


def _online_form(online: Any) -> tuple[str, Any]:
    """``("vectors", {key: values})`` or ``("updates", [FeatureUpdate, ...])``."""
    if isinstance(online, Mapping):
        vectors: dict[Any, Mapping[str, Any]] = {}
        for key, item in online.items():
            if isinstance(item, FeatureVector):
                vectors[key] = item.values
            elif isinstance(item, Mapping):
                vectors[key] = item
            else:
                raise TypeError(
                    "online: a mapping of keys must hold FeatureVectors or mappings of feature "
                    f"values, got {type(item).__name__} for key {_short(key)}"
                )
        return "vectors", vectors
    if isinstance(online, (str, bytes)) or not isinstance(online, Iterable):
        raise TypeError(
            "online must be a mapping of keys to FeatureVectors (or to feature values), or "
            f"FeatureVectors or FeatureUpdates, got {type(online).__name__}"
        )
    items = list(online)
    if all(isinstance(item, FeatureUpdate) for item in items):
        return "updates", items
    if all(isinstance(item, FeatureVector) for item in items):
        return "vectors", {item.key: item.values for item in items}
    kinds = sorted({type(item).__name__ for item in items})
    raise TypeError(
        "online: a sequence must hold FeatureUpdates, or FeatureVectors, not a mix: got "
        + ", ".join(kinds)
    )


async def check_parity(
    feature_set: FeatureSet,
    events: Iterable[Any] | AsyncIterable[Any],
    online: Any,
    *,
    stream: str | Callable[[dict[str, Any]], str] | None = None,
    arrival: str | Callable[[dict[str, Any]], float] | None = None,
    resolution: float | None = None,
    until: float | None = None,
    features: Sequence[str] | None = None,
    tolerance: float = 1e-9,
    complete: bool = True,
    examples: int = 5,
    options: Mapping[str, Any] | None = None,
) -> ParityReport:
    """Replay ``events`` in a fresh runtime and compare its values with ``online``, what the
    online run served.

    ``online`` is either the final vectors (a mapping of key to ``FeatureVector`` or to
    ``{feature: value}``, or a list of ``FeatureVector``): each key's values are compared with
    the replay's at its end; or the ``FeatureUpdate``s the online run published
    (``rt.updates()``): each is paired with the replay's update of the same key, event time,
    kind and window, and compared.

    Args:
        feature_set: the feature set of the online run.
        events: the history; it and ``stream``, ``arrival``, ``resolution``, ``until`` are as for
            ``FeatureRuntime.replay``. Give ``until`` as the time the online vectors were read.
        features: the features to compare (default: every feature of the set).
        tolerance: numbers closer than this, absolutely or relatively to the larger, count as
            equal (float sums depend on the order of their adds).
        complete: whether ``online`` holds every key of the history; with False (a sample)
            keys it lacks are not reported.
        examples: values that differ (and keys missing) shown per feature (per side).
        options: keyword arguments of the ``FeatureRuntime`` to replay in (``shards``,
            ``sources``...).

    Raises:
        TypeError: ``online`` has another form.
        UnknownFeature: a name in ``features`` is not a feature of the set.
        ValueError: ``tolerance`` or ``examples`` is negative, or a replay argument is invalid.
    """
    if not (_is_number(tolerance) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"examples must be an int >= 0, got {examples!r}")
    known = list(feature_set.names)
    if features is not None:
        for name in features:
            if name not in known:
                raise UnknownFeature(f"no feature named {name!r} (known: {', '.join(known)})")
    names = list(features) if features is not None else known
    mode, prepared = _online_form(online)
    unknown: set[str] = set()
    if features is None:
        held = (
            (vector for vector in prepared.values())
            if mode == "vectors"
            else (update.values for update in prepared)
        )
        for values in held:
            unknown.update(name for name in values if name not in known)
    comparison = _Comparison(names, tolerance, examples)
    replay = ReplayOptions(stream=stream, arrival=arrival, resolution=resolution, until=until)
    async with FeatureRuntime(feature_set, **dict(options or {})) as rt:
        if mode == "updates":
            result = await _compare_updates(rt, events, prepared, comparison, replay, complete)
        else:
            keys: set[Any] = set()
            result = await replay_history(RuntimeReplayHost(rt), events, replay, keys=keys)
            await _compare_vectors(rt, prepared, keys, comparison, names, complete)
    return comparison.report(mode, sorted(unknown), result)


async def _compare_vectors(
    rt: FeatureRuntime,
    online: dict[Any, Mapping[str, Any]],
    keys: set[Any],
    comparison: _Comparison,
    names: list[str],
    complete: bool,
) -> None:
    both = [key for key in online if key in keys]
    for key in online:
        if key not in keys:
            comparison.one_side("online", key)
    if complete:
        for key in keys:
            if key not in online:
                comparison.one_side("replayed", key)
    for start in range(0, len(both), _KEYS_PER_READ):
        chunk = both[start : start + _KEYS_PER_READ]
        vectors = await rt.get_many(chunk, names)
        for key in chunk:
            comparison.values(online[key], vectors[key].values, key)


async def _compare_updates(
    rt: FeatureRuntime,
    events: Iterable[Any] | AsyncIterable[Any],
    online: list[FeatureUpdate],
    comparison: _Comparison,
    options: ReplayOptions,
    complete: bool,
) -> ReplayResult:
    waiting: dict[tuple[Any, ...], deque[FeatureUpdate]] = {}
    for update in online:
        waiting.setdefault(_identity(update), deque()).append(update)
    # with a sample of online updates, only the keys it holds are compared
    sampled = None if complete else {update.key for update in online}

    async def consume(updates: Any) -> None:
        async for update in updates:
            if sampled is not None and update.key not in sampled:
                continue
            found = waiting.get(_identity(update))
            if not found:
                comparison.one_side("replayed", update.key, update.event_time, update.kind)
                continue
            mine = found.popleft()
            comparison.values(
                _update_values(mine),
                _update_values(update),
                update.key,
                update.event_time,
                update.kind,
            )

    subscription = rt.updates()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, subscription)
        try:
            result = await replay_history(RuntimeReplayHost(rt), events, options)
        finally:
            await subscription.aclose()  # what was delivered is still read
    for left in waiting.values():
        for update in left:
            comparison.one_side("online", update.key, update.event_time, update.kind)
    return result
