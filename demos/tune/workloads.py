"""The tuner's workloads: a demo's feature set and a fixed number of its simulated events.

Each workload reuses its demo's simulator and feature set, so the tuner measures what the demo
runs. ``prepare(events, seed, directory)`` simulates the stream up front (so that the timed run
is the runtime's alone) and returns it in the chunks that the run hands to ``ingest_many``;
files it needs (the fraud demo's merchant table) go to ``directory``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import FeatureRuntime, FeatureSet

__all__ = ["CHUNK", "WORKLOADS", "Prepared", "Workload"]

#: Events handed to ``ingest_many`` at a time, at most (as the demos do).
CHUNK = 4096


@dataclass
class Prepared:
    """A workload ready to run: its feature set and its events."""

    feature_set: FeatureSet
    #: the events, in order, as ``(events, streams)`` of at most ``CHUNK`` events each;
    #: ``streams`` names each event's stream, or is None for the feature set's first stream
    chunks: list[tuple[list[Any], list[str] | None]]
    #: the number of events in ``chunks``
    events: int
    #: the distinct keys of the events, about (``FeatureRuntime(expected_keys=...)``)
    keys: int
    #: what to do before the timed run, on the started runtime (load a cache), or None
    warm_up: Callable[[FeatureRuntime], Awaitable[Any]] | None = None


@dataclass(frozen=True)
class Workload:
    """A workload of the tuner, by name."""

    name: str
    #: what it is, in one line
    description: str
    prepare: Callable[[int, int, Path], Prepared]


def _chunks(events: list[Any]) -> list[tuple[list[Any], list[str] | None]]:
    return [(events[i : i + CHUNK], None) for i in range(0, len(events), CHUNK)]


def prepare_fraud(events: int, seed: int, directory: Path) -> Prepared:
    """The card-fraud demo's transactions (20,000 cards, 2,000 merchants, none malformed) and
    its sixteen features, with the merchant table written to ``directory`` and loaded whole
    into the cache before the run, as the demo does by default."""
    from demos.fraud.__main__ import SOURCE, build_feature_set
    from demos.fraud.merchants import write_merchants
    from demos.fraud.simulator import SimConfig, build_scenario, transactions

    config = SimConfig(events=events, seed=seed)
    scenario = build_scenario(config)
    path = directory / "merchants.db"
    write_merchants(path, scenario.merchants)
    merchants = [merchant.id for merchant in scenario.merchants]

    async def warm_up(rt: FeatureRuntime) -> int:
        return await rt.warm_up(SOURCE, merchants)

    return Prepared(
        feature_set=build_feature_set(path),
        chunks=_chunks(list(transactions(scenario))),
        events=events,
        keys=config.cards,
        warm_up=warm_up,
    )


def prepare_ads(events: int, seed: int, directory: Path) -> Prepared:
    """The ad-attribution demo's impressions and clicks (2,000 ads), the first ``events`` of
    them in arrival order, each chunk with its events' streams, and its join and six
    features."""
    from demos.ads.__main__ import build_feature_set
    from demos.ads.simulator import SimConfig, simulate

    # clicks come on top of the impressions: ``events`` impressions make more than enough
    sim = simulate(SimConfig(impressions=events, seed=seed))
    chunks: list[tuple[list[Any], list[str] | None]] = []
    for start in range(0, events, CHUNK):
        part = sim.events[start : min(start + CHUNK, events)]
        chunks.append(([event for _, _, event in part], [stream for _, stream, _ in part]))
    return Prepared(
        feature_set=build_feature_set(),
        chunks=chunks,
        events=sum(len(part) for part, _ in chunks),
        keys=sim.config.ads,
    )


#: The workloads by name.
WORKLOADS = {
    workload.name: workload
    for workload in (
        Workload(
            "fraud",
            "card transactions, 16 features per card, merchant rows from SQLite (demos.fraud)",
            prepare_fraud,
        ),
        Workload(
            "ads",
            "ad impressions and clicks, an interval join and 6 features per ad (demos.ads)",
            prepare_ads,
        ),
    )
}
