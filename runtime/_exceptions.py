"""Errors raised by the feature runtime.

The hierarchy::

    FeaturistError
    ├── SpecError            a feature set or feature spec is invalid (also a ``ValueError``)
    ├── InvalidEvent         an event cannot be decoded or lacks a valid key or time
    │                        (also a ``ValueError``); it goes to dead letters, never raised
    │                        out of ``ingest``
    ├── FeatureValueError    a feature's input field has an unusable value for one event
    │                        (also a ``ValueError``); reported as that feature's error
    ├── UnknownFeature       a feature name that the runtime does not have (also a ``KeyError``)
    ├── ConfigError          an option of the runtime or of a source is invalid (also an
    │                        ``actors.ConfigError`` and a ``ValueError``)
    ├── RuntimeClosed        the runtime is not running (also an ``actors.ActorStopped``)
    ├── SourceError          a call of a dimension source failed after its retries
    │   └── SourceUnavailable    the source's circuit breaker is open: not called at all
    ├── KeyRefused           a lookup key the source cannot take (also a ``ValueError``); in
    │                        dead letters, never raised: its events get the lookup's default
    ├── MalformedRow         a source's row cannot be read (also a ``ValueError``); the key's
    │                        value in the source's answer, not raised: the lookup's default
    ├── SinkError            a sink's write failed after its retries (or could not finish
    │                        writing in time): the updates it names were not written
    └── CheckpointError      a checkpoint cannot be written, read or restored

Other kernel errors (``actors.ActorError`` and its subclasses, such as ``actors.AskTimeout``)
pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable

from actors import ActorStopped
from actors import ConfigError as KernelConfigError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FeatureValueError",
    "FeaturistError",
    "InvalidEvent",
    "KeyRefused",
    "MalformedRow",
    "RuntimeClosed",
    "SourceError",
    "SinkError",
    "SourceUnavailable",
    "SpecError",
    "UnknownFeature",
]


class FeaturistError(Exception):
    """Base class of the runtime's own errors."""


class SpecError(FeaturistError, ValueError):
    """A feature set or a feature specification is invalid.

    The message names where: the file (or ``<python>``) and the field path, for example
    ``fraud.toml: features[2].half_life: must be > 0, got '0s'``.
    """


class InvalidEvent(FeaturistError, ValueError):
    """An event could not be decoded, or its key or time is missing or unusable.

    Attributes:
        field: the event field at fault, or ``None`` when the payload itself could not be decoded.
        payload: the event as it was given (raw bytes included).
    """

    def __init__(self, message: str, *, field: str | None = None, payload: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.payload = payload


class FeatureValueError(FeaturistError, ValueError):
    """A feature's input field holds a value the feature cannot use (wrong type, NaN, ...).

    Attributes:
        field: the event field.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownFeature(FeaturistError, KeyError):
    """A feature name that the runtime does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RuntimeClosed(FeaturistError, ActorStopped):
    """The runtime is not running: it was never entered, or it is shutting down."""


class ConfigError(FeaturistError, KernelConfigError):
    """An option of the runtime, a checkpoint configuration or a source's settings is invalid
    (``FeatureRuntime(fs, linger=-1)``). Also an ``actors.ConfigError`` (and so a
    ``ValueError``), which the kernel raises for its own options."""


class SourceError(FeaturistError):
    """A call of a dimension source failed: every attempt raised or timed out.

    Attributes:
        source: the source's name.
        attempts: the attempts made (0 for :class:`SourceUnavailable`).

    ``__cause__`` is the last attempt's exception (a ``TimeoutError`` for an attempt that took
    longer than the timeout). One instance is shared by every key of the failed call: report
    it, or raise a new error ``from`` it, rather than raising it again from many places.
    """

    def __init__(self, message: str, *, source: str, attempts: int) -> None:
        super().__init__(message)
        self.source = source
        self.attempts = attempts


class SourceUnavailable(SourceError):
    """The source's circuit is open: the call failed at once, without reaching the source.

    ``__cause__`` is the last :class:`SourceError` of the source, if any.
    """


class SinkError(FeaturistError):
    """A sink could not write feature updates: every attempt of a write raised or timed out,
    or the updates left when its ``run_sink`` block ended were not written in time.

    Attributes:
        sink: the sink's name.
        attempts: the attempts made of the write that failed (0 for a drain that timed out).
        unwritten: updates taken from the runtime that the sink did not write: the failed
            write's, those waiting in the subscription's buffer when it failed, and those the
            sink held not yet durable (``Sink.buffered()``: a Parquet file's rows not flushed).

    ``__cause__`` is the last attempt's exception (a ``TimeoutError`` for an attempt that took
    longer than the write timeout).
    """

    def __init__(self, message: str, *, sink: str, attempts: int, unwritten: int) -> None:
        super().__init__(message)
        self.sink = sink
        self.attempts = attempts
        self.unwritten = unwritten


class MalformedRow(FeaturistError, ValueError):
    """The source has a row for the key but cannot make a row of it (undecodable JSON or text,
    JSON that is not an object, a validity column that is not a time). It is the key's value
    in ``get_many``'s answer, not raised: the caller counts it and uses the lookup's default.

    Attributes:
        reason: what is wrong with the row.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CheckpointError(FeaturistError):
    """A checkpoint cannot be written, read or restored, or its directory is held by another
    runtime (the message says why, and names the owner)."""


class KeyRefused(FeaturistError, ValueError):
    """A lookup key that the source cannot take: refused before the call (the source's
    ``refuse_key`` said why), or the one key of a failed call that still failed alone.

    The key's events get the lookup's default (as for a key the source does not have), the
    enricher records the key in dead letters once with this error, and it counts in
    ``keys_refused``. It never counts against the circuit breaker.

    Attributes:
        source: the source's name.
        key: the key refused.
    """

    def __init__(self, message: str, *, source: str, key: Hashable) -> None:
        super().__init__(message)
        self.source = source
        self.key = key
        #: set by the first enricher that records the refusal in dead letters: the shards
        #: that waited for the same key share this one instance, and record it once
        self.recorded = False
