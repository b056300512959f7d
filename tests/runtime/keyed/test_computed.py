"""Computed event fields: every feature (keyed, windowed, with a ``where`` on a computed field)
sees them as the oracle computes them in plain Python, for shard counts 1 and 3 and every
form of event; an event whose field cannot be computed is refused, naming the field."""

from __future__ import annotations

import json
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from runtime import (
    Computed,
    Count,
    FeatureRuntime,
    FeatureSet,
    InvalidEvent,
    Max,
    SpecError,
    Sum,
    Tumbling,
    Where,
)

from ..support.oracle import key_values, same
from ..support.window_oracle import aggregate

T0 = 1_700_000_000_000
WINDOW = Tumbling(size="5s")
COMPUTED = [
    Computed(name="usd", expr="amount * coalesce(rate, 1)"),
    Computed(name="big", expr="usd > 100"),
    Computed(name="fee", expr="round(usd * 0.02, 2) if big else 0"),
]
KEYED = [
    Count(name="n"),
    Sum(name="usd_total", field="usd"),
    Max(name="top_fee", field="fee"),
    Count(name="big_n", where=Where(field="big", value=True)),
]
WINDOWED = [Sum(name="w_usd", field="usd", window=WINDOW)]
FEATURE_SET = FeatureSet(
    name="computed",
    key="card",
    time="ts",
    max_out_of_orderness="30s",
    computed=COMPUTED,
    features=[*KEYED, *WINDOWED],
)


def computed_fields(event: dict[str, Any]) -> dict[str, Any] | None:
    """The event with its computed fields, by the rules in plain Python; None if refused."""
    amount, rate = event.get("amount"), event.get("rate")
    rate = 1 if rate is None else rate
    if amount is not None and any(isinstance(v, str | bool) for v in (amount, rate)):
        return None  # a None operand gives None before any type is looked at
    usd = None if amount is None else amount * rate
    big = None if usd is None else usd > 100
    fee = round(usd * 0.02, 2) if big else 0
    return {**event, "usd": usd, "big": big, "fee": fee}


events = st.fixed_dictionaries(
    {
        "card": st.sampled_from(["c0", "c1", "c2"]),
        "ts": st.integers(min_value=T0, max_value=T0 + 20_000),
    },
    optional={
        "amount": st.one_of(
            st.integers(min_value=-500, max_value=500),
            st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
            st.none(),
            st.just("12"),
        ),
        "rate": st.one_of(st.sampled_from([0.5, 1.1, 2]), st.none(), st.just(True)),
    },
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(events, min_size=1, max_size=60),
    shards=st.sampled_from([1, 3]),
    as_bytes=st.booleans(),
)
async def test_features_read_computed_fields_as_the_oracle_computes_them(
    stream: list[dict[str, Any]], shards: int, as_bytes: bool
) -> None:
    payloads: list[Any] = [json.dumps(e).encode() if as_bytes else e for e in stream]
    async with FeatureRuntime(FEATURE_SET, shards=shards) as rt:
        accepted = await rt.ingest_many(payloads)
        keys = sorted({e["card"] for e in stream})
        many = await rt.get_many(keys)
        letters = rt.dead_letters.letters()
    good = [c for e in stream if (c := computed_fields(e)) is not None]
    assert accepted == len(good)
    assert len(letters) == len(stream) - len(good)
    for letter in letters:
        assert isinstance(letter.error, InvalidEvent)
        assert letter.error.field == "usd"
        assert "computed field 'usd': '*' needs numbers" in str(letter.error)
    for key in keys:
        history = [(e["ts"], e) for e in good if e["card"] == key]
        expected = key_values(KEYED, history)
        for name, value in expected.items():
            assert same(many[key].values[name], value), (key, name, history)
        if history:
            newest = max(t for t, _ in history)
            start = newest - newest % 5000
            items = [(t, e.get("usd")) for t, e in history if start <= t < start + 5000]
            expected_window = aggregate(WINDOWED[0], [(t, v) for t, v in items if v is not None])
            assert same(many[key].values["w_usd"], expected_window), (key, items)


async def test_an_event_the_application_gave_is_not_changed() -> None:
    event = {"card": "c", "ts": T0, "amount": 10, "rate": 2}
    async with FeatureRuntime(FEATURE_SET, shards=1) as rt:
        await rt.ingest(event)
        assert (await rt.get("c")).values["usd_total"] == 20
    assert event == {"card": "c", "ts": T0, "amount": 10, "rate": 2}


def test_computed_fields_load_from_toml_and_round_trip_through_json() -> None:
    feature_set = FeatureSet.from_toml(
        """
        name = "t"
        key = "card"
        time = "ts"

        [[computed]]
        name = "usd"
        expr = "amount * rate"

        [[features]]
        type = "sum"
        name = "usd_total"
        field = "usd"
        """
    )
    assert feature_set.computed == (Computed(name="usd", expr="amount * rate"),)
    assert FeatureSet.from_json(feature_set.to_json()) == feature_set


@pytest.mark.parametrize(
    ("computed", "message"),
    [
        ({"name": "ts", "expr": "a + 1"}, "computed[0].name: cannot compute the time field 'ts'"),
        ({"name": "u", "expr": "a.b"}, "computed[0].expr: attributes ('.') are not allowed"),
        ({"name": "u", "expr": "u + 1"}, "computed[0].expr: a computed field cannot read itself"),
        ({"name": "u", "expr": "open('x')"}, "computed[0].expr: unknown function 'open'"),
        ({"name": "u", "expr": "2"}, "computed[0].expr: reads no field: '2'"),
    ],
)
def test_a_bad_computed_field_is_refused_at_load_naming_it(
    computed: dict[str, Any], message: str
) -> None:
    data = {
        "name": "t",
        "key": "card",
        "time": "ts",
        "computed": [computed],
        "features": [{"type": "count", "name": "n"}],
    }
    with pytest.raises(SpecError) as info:
        FeatureSet.from_dict(data, source="spec")
    assert str(info.value).startswith(f"spec: {message}"), str(info.value)


def test_a_computed_field_reads_only_fields_computed_before_it() -> None:
    with pytest.raises(SpecError, match=r"computed\[0\]\.expr: reads 'b', which computed\[1\]"):
        FeatureSet(
            name="t",
            key="card",
            time="ts",
            computed=[Computed(name="a", expr="b + 1"), Computed(name="b", expr="x * 2")],
            features=[Count(name="n")],
        )


async def test_a_value_whose_comparison_raises_refuses_that_event_only() -> None:
    class Strange(float):
        """A number whose comparisons raise, as a numpy array's truth value does."""

        def __lt__(self, other: object) -> bool:
            raise ValueError("the truth value is ambiguous")

    feature_set = FeatureSet(
        name="c",
        key="card",
        time="ts",
        computed=[Computed(name="big", expr="1 if amount < 100 else 0")],
        features=[Sum(name="bigs", field="big")],
    )
    async with FeatureRuntime(feature_set, shards=1) as rt:
        accepted = await rt.ingest_many(
            [
                {"card": "c", "ts": T0, "amount": 5},
                {"card": "c", "ts": T0 + 1, "amount": Strange(5)},
                {"card": "c", "ts": T0 + 2, "amount": 500},
            ]
        )
        assert accepted == 2
        assert (await rt.get("c")).values["bigs"] == 1
        (letter,) = rt.dead_letters.letters()
    assert isinstance(letter.error, InvalidEvent) and letter.error.field == "big"
    assert "ValueError: the truth value is ambiguous" in str(letter.error)
