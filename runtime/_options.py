"""``FeatureRuntime``'s options, checked in one place.

:class:`RuntimeOptions` holds the runtime's plain keyword options (numbers and names) and checks
them when it is made, raising :class:`ConfigError` with a message that names the option.
The objects the runtime is given (the clock, the custom sources, the checkpoint config) stay
arguments of ``FeatureRuntime``; :func:`check_sources` checks the custom sources against the
feature set.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from typing import Any

import msgspec

from ._exceptions import ConfigError
from ._gc import DEFAULT_GC_THRESHOLD
from ._ingest.events import PayloadFormat
from ._spec.checks import check_option_int, check_option_seconds
from ._spec.enrich import CustomSource
from ._spec.feature_set import FeatureSet

__all__ = ["RuntimeOptions", "check_sources", "check_workers"]


class RuntimeOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The options of a ``FeatureRuntime`` (see its docstring for each one's meaning).

    Made, it has been checked: each option the runtime itself constrains is checked here, in
    the order below. ``payload_format``, ``dead_letters_capacity`` and ``route_cache_size``
    are checked by the parts that use them (the event reader, the actor system, the key
    router), with their own messages.

    Raises:
        ConfigError: an option is out of its range or of the wrong type.
    """

    shards: int = 4
    batch_size: int = 512
    linger: float = 0.005
    mailbox_capacity: int = 16
    key_groups: int = 256
    payload_format: PayloadFormat = "json"
    sample_every: int = 64
    expected_event_rate: float = 1000.0
    expected_keys: int = 10_000
    shutdown_timeout: float = 30.0
    dead_letters_capacity: int = 10_000
    dead_letters_max_bytes: int = 64 * 1024 * 1024
    route_cache_size: int = 1 << 20
    max_restarts: int = 3
    restart_period: float = 60.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_interval: float = 5.0
    workers: int = 0
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD

    def __post_init__(self) -> None:
        check_option_int("key_groups", self.key_groups, 1)
        check_option_int("shards", self.shards, 1, self.key_groups)
        check_option_int("workers", self.workers, 0, self.key_groups)
        if self.workers and self.shards * self.workers > self.key_groups:
            raise ConfigError(
                f"shards x workers must be at most key_groups ({self.key_groups}): each worker "
                f"runs shards={self.shards} over its own key groups, got workers={self.workers}"
            )
        check_option_int("batch_size", self.batch_size, 1)
        if self.gc_threshold is not None:
            check_option_int("gc_threshold", self.gc_threshold, 1)
        check_option_int("mailbox_capacity", self.mailbox_capacity, 1)
        check_option_int("sample_every", self.sample_every, 1)
        check_option_seconds("linger", self.linger)
        # the actor system checks it too, with its own error (not runtime's ConfigError)
        check_option_seconds("shutdown_timeout", self.shutdown_timeout)
        rate = self.expected_event_rate
        if not (isinstance(rate, (int, float)) and 0 <= rate < math.inf):
            raise ConfigError(f"expected_event_rate must be a number >= 0, got {rate!r}")
        check_option_int("expected_keys", self.expected_keys, 1)
        check_option_int("dead_letters_max_bytes", self.dead_letters_max_bytes, 1)
        check_option_int("max_restarts", self.max_restarts, 0)
        check_option_seconds("restart_period", self.restart_period)
        if self.metrics_port is not None:
            check_option_int("metrics_port", self.metrics_port, 0, 65535)
        host = self.metrics_host
        if not isinstance(host, str) or not host:
            raise ConfigError(f"metrics_host must be a host name or address, got {host!r}")
        check_option_seconds("metrics_interval", self.metrics_interval)


def check_sources(feature_set: FeatureSet, sources: Mapping[str, Any] | None) -> dict[str, Any]:
    """The objects behind the feature set's ``CustomSource`` specs, by name, checked: one for
    each custom source, each with a ``get_many`` method.

    Raises:
        ConfigError: ``sources`` is not a mapping, misses a custom source, names one the
            feature set does not have, or holds an object without ``get_many``.
    """
    if sources is not None and not isinstance(sources, Mapping):
        raise ConfigError(
            f"sources must map custom source names to objects, got {type(sources).__name__}"
        )
    found = dict(sources or {})
    custom = {s.name for s in feature_set.sources if isinstance(s, CustomSource)}
    for name in custom - set(found):
        raise ConfigError(f"sources: the custom source {name!r} needs an object here")
    for name, obj in found.items():
        if name not in custom:
            known = ", ".join(sorted(custom)) or "none"
            raise ConfigError(
                f"sources: {name!r} is not a CustomSource of the feature set (custom: {known})"
            )
        if not callable(getattr(obj, "get_many", None)):
            raise ConfigError(f"sources: {name!r} has no get_many(keys) method")
    return found


def check_workers(
    feature_set: FeatureSet,
    *,
    custom_clock: bool,
    sources: Mapping[str, Any],
) -> None:
    """With ``workers >= 1``: refuse what worker processes do not run yet, naming it, and
    custom sources that cannot be sent to them.

    Each worker makes its own runtime, so the objects of ``sources`` (the custom sources)
    are pickled and sent to each worker process: each worker then has its own copy (and its
    own cache); the built-in sources are specs, opened by each worker.

    Raises:
        ConfigError: a custom source's object cannot be pickled, or the runtime is given a
            clock of its own.
    """
    for name, obj in sources.items():
        try:
            pickle.dumps(obj)
        except Exception as exc:
            raise ConfigError(
                f"sources: {name!r} cannot be sent to worker processes (it cannot be pickled: "
                f"{type(exc).__name__}: {exc}); with workers >= 1 each worker gets a copy of "
                "each custom source: make it picklable (open connections in its async open()), "
                "or use workers=0"
            ) from exc
    if custom_clock:
        raise ConfigError(
            "workers >= 1 does not support a clock of the runtime's own yet (each worker "
            "reads its own wall clock; a replay's clock is passed on to them): use workers=0 "
            "(the default) for it"
        )
