"""Defaults, bounds and choices of spec options, shared by the spec and the code that runs it.

They live here, at the bottom of the import graph, so that ``_spec`` reads them without
importing ``_ingest`` or ``_stats`` (which import ``_spec``): ``FeatureSet``'s defaults are the
ones ``EventReader`` applies, and ``Percentile.method`` accepts what ``SortedValues`` computes.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_FUTURE_MS",
    "DEFAULT_MAX_KEY_LENGTH",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_KEY_LENGTH",
    "MAX_PAYLOAD_BYTES",
    "PERCENTILE_METHODS",
]

#: the defaults of the event limits (``FeatureSet.max_future`` and the others)
DEFAULT_MAX_FUTURE_MS = 3_600_000
DEFAULT_MAX_KEY_LENGTH = 4096
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20

#: The largest ``FeatureSet.max_key_length`` (characters) and ``max_payload_bytes`` (bytes).
MAX_KEY_LENGTH = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 31

#: the ``method`` values of ``Percentile`` and ``SortedValues.percentile``
PERCENTILE_METHODS = ("nearest_rank", "linear")
