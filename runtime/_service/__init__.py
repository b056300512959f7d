"""The feature service: an HTTP API, metrics and a live status page around a runtime.

``create_app`` is importable without Starlette; calling it needs the ``serve`` extra
(``pip install 'featurist[serve]'``). ``docs/service.md`` is the guide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .._connectors.sinks import Sink
    from .._connectors.source import Source
    from .._spec.drift import DriftMonitor
    from .._spec.feature_set import FeatureSet
    from .app import KeyType

__all__ = ["create_app"]


def create_app(
    feature_set: FeatureSet | str | os.PathLike[str],
    *,
    key_type: KeyType = "auto",
    inputs: Sequence[Source] = (),
    sinks: Sequence[Sink] = (),
    drift: Sequence[DriftMonitor] = (),
    max_keys: int = 10_000,
    **runtime_options: Any,
) -> Starlette:
    """An ASGI application (Starlette) that serves a feature set: its lifespan starts a
    :class:`FeatureRuntime` with ``runtime_options`` and stops it (``docs/service.md``).

    Mounted in an application of one's own, its lifespan must be entered from that
    application's (Starlette runs no mounted application's lifespan): without it the routes
    that need the runtime answer 503 ``not_running`` (the probes 503 too).

    Args:
        feature_set: a :class:`FeatureSet`, or the path of a spec file (TOML, YAML or JSON).
        key_type: how a key read from a URL (``GET /features/{key}``) is typed: ``"str"``,
            ``"int"``, or ``"auto"`` (the default: a decimal integer within 64 bits is an
            int, anything else a str; set ``"str"`` when keys are strings of digits).
        inputs: sources read into the runtime while the service runs (``rt.consume``);
            the service is ready (``GET /readyz``) once each has caught up.
        sinks: sinks every update is written to (``run_sink``) while the service runs.
        drift: drift monitors started with the runtime (``rt.monitor_drift``).
        max_keys: the most keys one ``POST /features`` may ask for.
        runtime_options: passed to :class:`FeatureRuntime` (``shards``, ``checkpoints``...).

    Raises:
        ImportError: Starlette is not installed.
        SpecError: the spec file is not a valid feature set.
        ConfigError: a runtime option is not valid (checked now, as :class:`FeatureRuntime`
            checks it, rather than when the server starts).
        TypeError: a runtime option :class:`FeatureRuntime` does not take.
        ValueError: ``key_type`` or ``max_keys`` is not valid.
    """
    try:
        from .app import build_app
    except ImportError as exc:
        raise ImportError(
            "the feature service needs Starlette (and uvicorn to serve it); install the "
            "'serve' extra: pip install 'featurist[serve]'"
        ) from exc
    return build_app(
        feature_set,
        key_type=key_type,
        inputs=inputs,
        sinks=sinks,
        drift=drift,
        max_keys=max_keys,
        runtime_options=runtime_options,
    )
