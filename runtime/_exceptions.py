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
    └── RuntimeClosed        the runtime is not running (also an ``actors.ActorStopped``)

Kernel errors (``actors.ActorError`` and its subclasses) pass through unchanged.
"""

from __future__ import annotations

from actors import ActorStopped

__all__ = [
    "FeatureValueError",
    "FeaturistError",
    "InvalidEvent",
    "RuntimeClosed",
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
