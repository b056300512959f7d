"""``GET /metrics``: the runtime's metrics snapshot as Prometheus text.

The families are the Prometheus endpoint's own (``_observe.prometheus.families``,
``docs/metrics.md``), rendered with prometheus-client's encoders in a registry made per scrape,
so the service's ``/metrics`` and ``metrics_port`` say the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from .._observe.metrics import RuntimeMetrics
from .._observe.prometheus import families, import_prometheus

__all__ = ["render"]


class _Snapshot:
    """A collector of one snapshot."""

    def __init__(self, snapshot: RuntimeMetrics) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        yield from families(self.snapshot, time.time())


def render(snapshot: RuntimeMetrics, accept: str) -> tuple[str, bytes]:
    """``(content type, text)`` of ``snapshot`` (OpenMetrics if ``accept`` asks for it); run
    it in a worker thread.

    Raises:
        ImportError: prometheus-client is not installed.
    """
    prometheus = import_prometheus()
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot))
    encoder, content_type = prometheus.exposition.choose_encoder(accept)
    body: bytes = encoder(registry)
    return content_type, body
