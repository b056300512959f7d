"""The tuner's workloads: a demo's feature set and a fixed number of its simulated events.

Each workload reuses its demo's simulator and feature set, so the tuner measures what the demo
runs. ``prepare(events, seed, directory)`` simulates the stream up front (so that the timed run
is the runtime's alone) and returns it with each event's key and time, which the run uses to
match the updates it reads to the events it offered; files it needs (the fraud demo's merchant
table) go to ``directory``.

``workers_refused(name)`` says why the runtime refuses worker processes for a workload (joins
and lookups run in-process only, for now), or None when it takes them: the tuner sweeps
``workers`` only for the workloads that take them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime import ConfigError, FeatureRuntime, FeatureSet

__all__ = ["WORKLOADS", "Prepared", "Workload", "workers_refused"]


@dataclass
class Prepared:
    """A workload ready to run: its feature set and its events."""

    feature_set: FeatureSet
    #: the events, in order (dicts, or JSON bytes)
    events: list[Any]
    #: each event's stream, or None when every event is of the feature set's first stream
    streams: list[str] | None
    #: each event's ``(key, event time)``, in order: an update names its event this way
    ids: list[tuple[Any, int]]
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
    #: the feature set alone (files it names need not exist): to ask the runtime about workers
    feature_set: Callable[[], FeatureSet]


def _fraud_transactions(events: int, seed: int) -> tuple[Any, list[dict[str, Any]]]:
    from demos.fraud.simulator import SimConfig, build_scenario, transactions

    scenario = build_scenario(SimConfig(events=events, seed=seed))
    return scenario, list(transactions(scenario))[:events]


def _cards_feature_set() -> FeatureSet:
    """The fraud demo's features that need no merchant row: its plain aggregates and sliding
    windows per card (13 of its 16 features, in two feature groups)."""
    import msgspec

    from demos.fraud.__main__ import build_feature_set

    full = build_feature_set("merchants.db")

    def needs_merchant_row(feature: Any) -> bool:
        fields = [
            getattr(feature, "field", None),
            getattr(getattr(feature, "where", None), "field", None),
        ]
        return any(isinstance(f, str) and f.startswith("merchant.") for f in fields)

    return msgspec.structs.replace(
        full,
        sources=[],
        lookups=[],
        features=[feature for feature in full.features if not needs_merchant_row(feature)],
    )


def prepare_cards(events: int, seed: int, directory: Path) -> Prepared:
    """The card-fraud demo's transactions (20,000 cards, none malformed) as JSON bytes, as
    they come from a broker or HTTP, and its features that need no merchant row."""
    import msgspec

    scenario, found = _fraud_transactions(events, seed)
    encode = msgspec.json.encode
    return Prepared(
        feature_set=_cards_feature_set(),
        events=[encode(event) for event in found],
        streams=None,
        ids=[(event["card"], event["ts"]) for event in found],
        keys=scenario.config.cards,
    )


def _fraud_feature_set(path: str = "merchants.db") -> FeatureSet:
    from demos.fraud.__main__ import build_feature_set

    return build_feature_set(path)


def prepare_fraud(events: int, seed: int, directory: Path) -> Prepared:
    """The card-fraud demo's transactions (20,000 cards, 2,000 merchants, none malformed) and
    its sixteen features, with the merchant table written to ``directory`` and loaded whole
    into the cache before the run, as the demo does by default."""
    from demos.fraud.__main__ import SOURCE
    from demos.fraud.merchants import write_merchants

    scenario, found = _fraud_transactions(events, seed)
    path = directory / "merchants.db"
    write_merchants(path, scenario.merchants)
    merchants = [merchant.id for merchant in scenario.merchants]

    async def warm_up(rt: FeatureRuntime) -> int:
        return await rt.warm_up(SOURCE, merchants)

    return Prepared(
        feature_set=_fraud_feature_set(str(path)),
        events=found,
        streams=None,
        ids=[(event["card"], event["ts"]) for event in found],
        keys=scenario.config.cards,
        warm_up=warm_up,
    )


def _ads_feature_set() -> FeatureSet:
    from demos.ads.__main__ import build_feature_set

    return build_feature_set()


def prepare_ads(events: int, seed: int, directory: Path) -> Prepared:
    """The ad-attribution demo's impressions and clicks (2,000 ads), the first ``events`` of
    them in arrival order, each with its stream, and its join and six features."""
    from demos.ads.simulator import SimConfig, simulate

    # clicks come on top of the impressions: ``events`` impressions make more than enough
    sim = simulate(SimConfig(impressions=events, seed=seed))
    part = sim.events[:events]
    return Prepared(
        feature_set=_ads_feature_set(),
        events=[event for _, _, event in part],
        streams=[stream for _, stream, _ in part],
        ids=[(event["ad_id"], event["ts"]) for _, _, event in part],
        keys=sim.config.ads,
    )


#: The workloads by name.
WORKLOADS = {
    workload.name: workload
    for workload in (
        Workload(
            "cards",
            "card transactions as JSON bytes, 13 features per card: aggregates and sliding "
            "windows (demos.fraud without its merchant rows)",
            prepare_cards,
            _cards_feature_set,
        ),
        Workload(
            "fraud",
            "card transactions, 16 features per card, merchant rows from SQLite (demos.fraud)",
            prepare_fraud,
            _fraud_feature_set,
        ),
        Workload(
            "ads",
            "ad impressions and clicks, an interval join and 6 features per ad (demos.ads)",
            prepare_ads,
            _ads_feature_set,
        ),
    )
}


def workers_refused(name: str) -> str | None:
    """Why the runtime refuses ``workers >= 1`` for workload ``name`` (its ``ConfigError``),
    or None when it takes them. Nothing starts: the refusal comes from the constructor."""
    try:
        FeatureRuntime(WORKLOADS[name].feature_set(), workers=1)
    except ConfigError as exc:
        return str(exc)
    return None
