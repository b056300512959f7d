"""The enrichment part of feature specs: sources, lookups, and which features wait for them."""

from __future__ import annotations

from typing import Any

import pytest

from runtime import Count, FeatureSet, Mean, Ratio, SpecError, Where
from runtime._spec.enrich import (
    HttpSource,
    Lookup,
    PostgresSource,
    RedisSource,
    SqliteSource,
)
from runtime._spec.feature_set import enriched_stream

MERCHANTS = SqliteSource(name="merchants", path="m.db", table="merchants", key="merchant_id")


def _set(**options: Any) -> FeatureSet:
    base: dict[str, Any] = {
        "name": "tx",
        "key": "card",
        "time": "ts",
        "sources": [MERCHANTS],
        "lookups": [Lookup(name="merchant", field="merchant_id", source="merchants")],
        "features": [
            Count(name="n"),
            Mean(name="risk", field="merchant.risk"),
            Count(name="gambling", where=Where(field="merchant.category", op="==", value="bet")),
        ],
    }
    return FeatureSet(**{**base, **options})


def test_features_that_read_lookup_fields_go_to_the_enriched_stream() -> None:
    fs = _set()
    assert [fs.enriched(f) for f in fs.features] == [False, True, True]
    assert [fs.group_stream_of(f) for f in fs.features] == ["events", "@events", "@events"]
    assert fs.group_streams == ("events", enriched_stream("events"))
    assert fs.lookups_of("events") == fs.lookups
    # a spec file says the same
    assert FeatureSet.from_json(fs.to_json()) == fs
    assert hash(fs) == hash(FeatureSet.from_json(fs.to_json()))


def test_lookup_rules_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"lookups\[0\]\.source: no source named 'shops'"):
        _set(lookups=[Lookup(name="merchant", field="merchant_id", source="shops")])
    with pytest.raises(SpecError, match=r"sources\[1\]\.name: duplicate source 'merchants'"):
        _set(sources=[MERCHANTS, MERCHANTS])
    with pytest.raises(SpecError, match=r"lookups\[0\]\.name: 'events' is taken"):
        _set(lookups=[Lookup(name="events", field="merchant_id", source="merchants")])
    with pytest.raises(SpecError, match=r"lookups\[0\]\.stream: no stream named 'other'"):
        _set(lookups=[Lookup(name="merchant", field="m", source="merchants", stream="other")])
    mixed = [
        Count(name="n"),
        Mean(name="risk", field="merchant.risk"),
        Ratio(name="r", numerator="risk", denominator="n"),
    ]
    with pytest.raises(SpecError, match="must all read lookup fields or none"):
        _set(features=mixed)
    # with every feature of the stream after its lookups, the operands share one group
    every = _set(features=mixed, wait_for_lookups="all")
    assert {every.group_stream_of(f) for f in every.features} == {"@events"}


def test_sql_names_are_checked_and_sources_validate_their_options() -> None:
    for bad in ("merchants; DROP TABLE x", 'merchants"', "1abc", "a b", ""):
        with pytest.raises(SpecError, match="table"):
            SqliteSource(name="m", path="m.db", table=bad, key="id")
    with pytest.raises(SpecError, match=r"columns\[1\]: not a valid SQL name"):
        SqliteSource(name="m", path="m.db", table="t", key="id", columns=["a", "b--"])
    with pytest.raises(SpecError, match="valid_from and valid_to go together"):
        PostgresSource(name="m", dsn="postgresql://x", table="t", key="id", valid_from="f")
    assert RedisSource(name="m", refresh_ahead=0).refresh_ahead is None  # TOML has no null
    with pytest.raises(SpecError, match="refresh_ahead: must be at least 0 and below 1"):
        RedisSource(name="m", refresh_ahead=1.5)
    with pytest.raises(SpecError, match=r"url: needs \{key\}"):
        HttpSource(name="m", url="http://localhost/merchants")
    assert HttpSource(name="m", url="http://localhost/batch", batch=True).batch
    assert SqliteSource(name="m", path="m.db", table="s.t", key="id").table == "s.t"
    assert MERCHANTS.ms("ttl") == 300_000


def test_sources_load_from_toml() -> None:
    fs = FeatureSet.from_toml(
        """
        name = "tx"
        key = "card"
        time = "ts"

        [[sources]]
        name = "merchants"
        type = "redis"
        prefix = "merchant:"
        ttl = "1m"

        [[lookups]]
        name = "merchant"
        field = "merchant_id"
        source = "merchants"
        default = { risk = 0.5 }

        [[features]]
        type = "mean"
        name = "risk"
        field = "merchant.risk"
        """
    )
    assert isinstance(fs.sources[0], RedisSource) and fs.sources[0].prefix == "merchant:"
    assert fs.lookups[0].default == {"risk": 0.5}
    with pytest.raises(SpecError, match="sources"):
        FeatureSet.from_dict(
            {
                "name": "tx",
                "key": "card",
                "time": "ts",
                "sources": [{"name": "m", "type": "oracle"}],
                "features": [{"type": "count", "name": "n"}],
            }
        )
