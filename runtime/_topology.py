"""The runtime's topology: its feature groups, joins and enrichers (one actor per shard each),
the streams they read, and the sources the enrichers share.

Events flow ingest -> enrichers -> joins -> feature groups; the lists here keep that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actors import ActorRef

from ._enrich.shard import SourceRuntime
from ._keyed.kernel import CompiledGroup
from ._results import JoinRecord
from ._spec.feature_set import enriched_stream
from ._spec.joins import Join
from ._updates import UpdateHub
from ._windows.engine import WindowEngine

__all__ = ["EnrichGroup", "Group", "JoinGroup", "Topology"]


@dataclass
class Group:
    """A feature group: keyed aggregates (``compiled``) or windowed features (``engine``)."""

    name: str
    features: list[Any]
    compiled: CompiledGroup | None
    engine: WindowEngine | None = None
    refs: list[ActorRef[Any]] = field(default_factory=list)
    defaults: tuple[Any, ...] = ()
    #: the stream whose events the group sees
    stream: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        if self.engine is not None:
            return self.engine.names
        assert self.compiled is not None
        return self.compiled.names

    @property
    def types(self) -> tuple[str, ...]:
        if self.engine is not None:
            return self.engine.types
        assert self.compiled is not None
        return self.compiled.types


@dataclass
class JoinGroup:
    """A join's actors, one per shard."""

    name: str
    join: Join
    refs: list[ActorRef[Any]] = field(default_factory=list)
    #: a join reads every stream's events, tagged
    stream: str = ""
    #: the subscribers of this join's records alone
    hub: UpdateHub[JoinRecord] = field(default_factory=UpdateHub)


@dataclass
class EnrichGroup:
    """An enricher's actors, one per shard."""

    stream: str
    refs: list[ActorRef[Any]] = field(default_factory=list)


class Topology:
    """What runs: the feature groups, joins and enrichers, and the sources they read."""

    def __init__(self, group_streams: Iterable[str]) -> None:
        self.groups: list[Group] = []
        #: per stream (the ingested ones, then the joins' records): its feature groups
        self.stream_groups: dict[str, list[Group]] = {name: [] for name in group_streams}
        #: what the Ingest sends batches to: the groups of the ingested streams (each gets its
        #: stream's events), then the enrichers and the joins (tagged by stream); the live list
        self.targets: list[Any] = []
        self.joins: list[JoinGroup] = []
        #: the enrichers (one per ingested stream with lookups) and the sources they share
        self.enrichers: list[EnrichGroup] = []
        self.sources: dict[str, SourceRuntime] = {}

    def enriched_groups(self, stream: str) -> list[Group]:
        """The feature groups of ``stream``'s enriched form."""
        return self.stream_groups.get(enriched_stream(stream), [])
