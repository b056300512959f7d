"""The lookups of a training set's labels: each label's dimension rows as they were at its time.

A label is enriched as an event at the label's time would be: by the runtime's own enricher,
in a runtime of its own whose events are the labels. With a point-in-time source (``valid_from``
and ``valid_to`` columns) each label gets the version valid at its time; with another source,
the row the source holds now, which may be newer than the label (the source has no history to
give).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import msgspec

from .._runtime import FeatureRuntime
from .._spec.feature_set import FeatureSet
from .._spec.keyed import Count
from .labels import Label

__all__ = ["LabelLookups"]

#: the field holding a label's index in the events of the lookups' runtime
_INDEX = "__featurist_label__"


class LabelLookups:
    """The lookups requested for a training set's labels, checked when it is made."""

    def __init__(
        self,
        feature_set: FeatureSet,
        names: Sequence[str],
        options: Mapping[str, Any] | None,
    ) -> None:
        if isinstance(names, str):
            raise TypeError("lookups must be a list of lookup names, not a str")
        known = {lookup.name: lookup for lookup in feature_set.lookups}
        for name in names:
            if name not in known:
                raise ValueError(
                    f"lookups: no lookup named {name!r} in the feature set (known: "
                    f"{', '.join(known) or 'none'})"
                )
        self.names: tuple[str, ...] = tuple(dict.fromkeys(names))
        self._feature_set = feature_set
        # on the labels' only stream
        self._lookups = [msgspec.structs.replace(known[name], stream=None) for name in self.names]
        self._sources = (options or {}).get("sources")

    async def rows(
        self, labels: list[Label], key: str, time: str
    ) -> dict[int, dict[str, Any]] | None:
        """Per label index, ``{lookup: row}`` (the row valid at the label's time, or the
        lookup's default); None without lookups."""
        if not self.names:
            return None
        used = {lookup.source for lookup in self._lookups}
        feature_set = FeatureSet(
            name="training_labels",
            key=key,
            time=time,
            time_unit=self._feature_set.time_unit,
            max_future=0,  # a label may be newer than now
            sources=[source for source in self._feature_set.sources if source.name in used],
            lookups=self._lookups,
            features=[Count(name="labels")],
        )
        custom = self._sources
        if custom is not None:
            custom = {name: source for name, source in custom.items() if name in used}
        found: dict[int, dict[str, Any]] = {}

        async def collect(subscription: Any) -> None:
            async for enriched in subscription:
                rows = enriched.event.get("enrichment") or {}
                found[enriched.event[_INDEX]] = {name: rows.get(name) for name in self.names}

        async with FeatureRuntime(feature_set, shards=1, sources=custom) as rt:
            subscription = rt.enriched_events()
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, subscription)
                try:
                    await rt.ingest_many({**label.row, _INDEX: label.position} for label in labels)
                    await rt.flush()
                finally:
                    await subscription.aclose()  # what was delivered is still read
        return found
