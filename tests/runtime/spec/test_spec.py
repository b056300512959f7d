"""The feature set specification: loading, validation messages, conditions and durations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime._duration import MAX_DURATION_MS, format_duration, parse_duration
from runtime._exceptions import FeatureValueError, SpecError, UnknownFeature
from runtime._spec.base import FeatureSpec, Op, Where
from runtime._spec.feature_set import FEATURE_TYPES, FeatureSet
from runtime._spec.keyed import (
    Count,
    DistinctCount,
    EWMean,
    First,
    Last,
    Max,
    Mean,
    Min,
    Ratio,
    Std,
    Sum,
    TimeSince,
    Variance,
)

SPECS = Path(__file__).parent / "specs"
HINT = "(use e.g. 500ms, 10s, 5m, 2h, 1d)"
ORDER = "(units go from largest to smallest, each at most once: d, h, m, s, ms)"
KNOWN_TYPES = (
    "count, sum, mean, min, max, first, last, variance, std, ewm_mean, distinct_count, "
    "percentile, quantile, top_k, zscore, sequence, "
    "time_since, ratio, derived, custom"
)


def fraud() -> FeatureSet:
    return FeatureSet(
        name="fraud",
        key="card",
        time="ts",
        max_out_of_orderness="5s",
        features=[
            Count(name="tx_count"),
            Sum(name="amount_sum", field="amount"),
            Count(name="declined_count", where=Where(field="status", value="declined")),
            Ratio(name="decline_ratio", numerator="declined_count", denominator="tx_count"),
            EWMean(name="amount_ewm", field="amount", half_life="10m"),
        ],
    )


def fraud_dict(**changes: Any) -> dict[str, Any]:
    """The fraud set as plain data, with top-level fields replaced by ``changes``."""
    return {**fraud().to_dict(), **changes}


def with_features(*extra: dict[str, Any]) -> dict[str, Any]:
    """The fraud set as plain data with ``extra`` features appended."""
    data = fraud_dict()
    data["features"] = [*data["features"], *extra]
    return data


def spec_error(data: Any) -> str:
    with pytest.raises(SpecError) as info:
        FeatureSet.from_dict(data, source="spec.toml")
    return str(info.value)


def python_error(build: Any) -> str:
    with pytest.raises(SpecError) as info:
        build()
    assert type(info.value) is SpecError
    return str(info.value)


# Loading


@pytest.mark.parametrize("filename", ["fraud.toml", "fraud.json", "fraud.yaml"])
def test_spec_file_loads_to_the_same_set_as_python(filename: str) -> None:
    assert FeatureSet.from_file(SPECS / filename) == fraud()


def test_loaded_set_exposes_names_and_durations_in_ms() -> None:
    spec = FeatureSet.from_file(SPECS / "fraud.toml")
    assert spec.names == ("tx_count", "amount_sum", "declined_count", "decline_ratio", "amount_ewm")
    assert spec.max_out_of_orderness_ms == 5_000
    ewm = spec.feature("amount_ewm")
    assert isinstance(ewm, EWMean)
    assert ewm.half_life_ms == 600_000
    assert spec.time_unit == "ms"


def test_text_loaders_take_a_source_for_messages() -> None:
    text = (SPECS / "fraud.toml").read_text()
    assert FeatureSet.from_toml(text) == fraud()
    assert FeatureSet.from_json((SPECS / "fraud.json").read_bytes()) == fraud()
    assert FeatureSet.from_yaml((SPECS / "fraud.yaml").read_text()) == fraud()
    with pytest.raises(SpecError, match=r"^inline: features\[1\]\.type: unknown feature type"):
        FeatureSet.from_toml(text.replace('"sum"', '"summ"'), source="inline")
    with pytest.raises(SpecError, match=r"^<string>: features\[1\]\.type: unknown feature type"):
        FeatureSet.from_toml(text.replace('"sum"', '"summ"'))


def test_to_json_reads_back_to_an_equal_set() -> None:
    spec = fraud().with_feature(
        Count(name="foreign", where=Where(field="country", op="not_in", value=["US", "CA"]))
    )
    assert FeatureSet.from_json(spec.to_json()) == spec
    assert msgspec.json.decode(spec.to_json())["features"][0] == {
        "type": "count",
        "name": "tx_count",
    }


def test_to_dict_leaves_defaults_out_and_reads_back() -> None:
    data = fraud().to_dict()
    assert "time_unit" not in data
    assert data["features"][2] == {
        "type": "count",
        "name": "declined_count",
        "where": {"field": "status", "value": "declined"},
    }
    assert FeatureSet.from_dict(data) == fraud()


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        (
            "bad_type.toml",
            f"features[1].type: unknown feature type 'cout' (known: {KNOWN_TYPES})",
        ),
        ("bad_exact_limit.toml", "features[2].exact_limit: Expected `int`, got `str`"),
        ("bad_missing_field.yaml", "features[1].field: missing required field of a 'sum' feature"),
        (
            "bad_ratio.json",
            "features[3].denominator: no feature named 'tx_cnt' "
            "(known: tx_count, amount_sum, declined_count)",
        ),
    ],
)
def test_invalid_file_names_the_file_and_the_field(filename: str, message: str) -> None:
    path = SPECS / filename
    with pytest.raises(SpecError) as info:
        FeatureSet.from_file(path)
    assert str(info.value) == f"{path}: {message}"


def test_file_that_does_not_parse_names_the_file_and_the_format() -> None:
    path = SPECS / "bad_syntax.toml"
    with pytest.raises(SpecError, match=r"^.*bad_syntax\.toml: not valid TOML: "):
        FeatureSet.from_file(path)


def test_yaml_and_json_syntax_errors_are_spec_errors() -> None:
    with pytest.raises(SpecError, match=r"^x\.yaml: not valid YAML: "):
        FeatureSet.from_yaml("features: [", source="x.yaml")
    with pytest.raises(SpecError, match=r"^x\.json: not valid JSON: "):
        FeatureSet.from_json("{", source="x.json")


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(SpecError) as info:
        FeatureSet.from_file(path)
    assert str(info.value).startswith(f"{path}: cannot read the spec file: ")


def test_unsupported_suffix_is_rejected() -> None:
    with pytest.raises(SpecError) as info:
        FeatureSet.from_file("features.ini")
    assert str(info.value) == (
        "features.ini: unsupported spec format '.ini' (use .toml, .json, .yaml or .yml)"
    )


def test_document_that_is_not_a_table_is_rejected() -> None:
    assert spec_error([]) == "spec.toml: Expected `object`, got `array`"


# Validation messages from files (plain data)


def test_unknown_type_lists_the_known_types() -> None:
    message = spec_error(with_features({"type": "cout", "name": "c"}))
    assert (
        message
        == f"spec.toml: features[5].type: unknown feature type 'cout' (known: {KNOWN_TYPES})"
    )
    assert set(KNOWN_TYPES.split(", ")) == set(FEATURE_TYPES)


def test_missing_type_lists_the_known_types() -> None:
    message = spec_error(with_features({"name": "c"}))
    assert message == f"spec.toml: features[5].type: missing required field (one of: {KNOWN_TYPES})"


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (
            {"type": "mean", "name": "m"},
            "features[5].field: missing required field of a 'mean' feature",
        ),
        (
            {"type": "ratio", "name": "r", "numerator": "tx_count"},
            "features[5].denominator: missing",
        ),
        ({"type": "ewm_mean", "name": "e", "field": "x"}, "features[5].half_life: missing"),
        ({"type": "count"}, "features[5].name: missing required field of a 'count' feature"),
    ],
)
def test_missing_field_is_named(feature: dict[str, Any], message: str) -> None:
    assert spec_error(with_features(feature)).startswith(f"spec.toml: {message}")


def test_missing_set_field_is_named() -> None:
    data = fraud_dict()
    del data["key"]
    assert spec_error(data) == "spec.toml: key: missing required field"


def test_unknown_feature_field_is_rejected_with_the_known_fields() -> None:
    message = spec_error(with_features({"type": "sum", "name": "s", "feild": "amount"}))
    assert message == (
        "spec.toml: features[5].feild: unknown field "
        "(known: type, field, name, where, description, window, stream)"
    )


def test_unknown_set_and_where_fields_are_rejected() -> None:
    assert spec_error(fraud_dict(shards=4)) == (
        "spec.toml: shards: unknown field "
        "(known: name, key, time, time_unit, max_out_of_orderness, max_future, max_past, "
        "max_key_length, max_payload_bytes, allowed_lateness, "
        "late_policy, correction_horizon, emit, idle_timeout, state_ttl, serve_as_of, streams, "
        "joins, sources, lookups, enrich_stash, wait_for_lookups, computed, features)"
    )
    where = {"field": "status", "valeu": "declined"}
    assert spec_error(with_features({"type": "count", "name": "c", "where": where})) == (
        "spec.toml: features[5].where.valeu: unknown field (known: field, op, value)"
    )


def test_wrong_value_type_names_the_field() -> None:
    message = spec_error(with_features({"type": "std", "name": "s", "field": "x", "ddof": "1"}))
    assert message == "spec.toml: features[5].ddof: Expected `int`, got `str`"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"time_unit": "h"}, "time_unit: unknown time_unit 'h' (known: ms, s, us, ns)"),
        ({"time": "card"}, "time: must differ from key ('card')"),
        ({"key": ""}, "key: must not be empty"),
        ({"name": "fraud set"}, "name: not a valid name: 'fraud set' (use letters, digits and _)"),
        ({"features": []}, "features: at least one feature (or a join) is required"),
        (
            {"max_out_of_orderness": "5 s"},
            f"max_out_of_orderness: not a duration: '5 s' {HINT}",
        ),
        ({"max_out_of_orderness": -1}, "max_out_of_orderness: must be >= 0, got -1"),
        ({"wait_for_lookups": "some"}, "wait_for_lookups: Invalid enum value 'some'"),
    ],
)
def test_set_rules_name_the_field(change: dict[str, Any], message: str) -> None:
    assert spec_error(fraud_dict(**change)) == f"spec.toml: {message}"


@pytest.mark.parametrize(
    ("feature", "message"),
    [
        (
            {"type": "count", "name": "tx_count"},
            "features[5].name: duplicate feature name 'tx_count' (also features[0])",
        ),
        (
            {"type": "count", "name": "9lives"},
            "features[5].name: not a valid name: '9lives' (use letters, digits and _)",
        ),
        (
            {"type": "count", "name": "n" * 101},
            f"features[5].name: longer than 100 characters: {'n' * 20!r}...",
        ),
        ({"type": "sum", "name": "s", "field": ""}, "features[5].field: must not be empty"),
        (
            {"type": "variance", "name": "v", "field": "x", "ddof": 2},
            "features[5].ddof: must be between 0 and 1, got 2",
        ),
        (
            {"type": "distinct_count", "name": "d", "field": "x", "exact_limit": 0},
            "features[5].exact_limit: must be between 1 and 1000000, got 0",
        ),
        (
            {"type": "distinct_count", "name": "d", "field": "x", "precision": 17},
            "features[5].precision: must be between 4 and 16, got 17",
        ),
        (
            {"type": "ewm_mean", "name": "e", "field": "x", "half_life": "10 parsecs"},
            f"features[5].half_life: not a duration: '10 parsecs' {HINT}",
        ),
        (
            {"type": "ewm_mean", "name": "e", "field": "x", "half_life": "0s"},
            "features[5].half_life: must be > 0, got '0s'",
        ),
        (
            {"type": "ratio", "name": "r", "numerator": "tx_count", "denominator": "tx_cnt"},
            "features[5].denominator: no feature named 'tx_cnt' "
            "(known: tx_count, amount_sum, declined_count, decline_ratio, amount_ewm)",
        ),
        (
            {"type": "ratio", "name": "r", "numerator": "r", "denominator": "tx_count"},
            "features[5].numerator: a ratio cannot use itself",
        ),
        (
            {
                "type": "ratio",
                "name": "r",
                "numerator": "tx_count",
                "denominator": "tx_count",
                "where": {"field": "status", "value": "ok"},
            },
            "features[5].where: a ratio takes no where condition (put it on its operands)",
        ),
    ],
)
def test_feature_rules_name_the_field(feature: dict[str, Any], message: str) -> None:
    assert spec_error(with_features(feature)) == f"spec.toml: {message}"


def test_ratio_cycle_is_rejected_with_its_path() -> None:
    data = with_features(
        {"type": "ratio", "name": "a", "numerator": "b", "denominator": "tx_count"},
        {"type": "ratio", "name": "b", "numerator": "tx_count", "denominator": "c"},
        {"type": "ratio", "name": "c", "numerator": "a", "denominator": "tx_count"},
    )
    assert (
        spec_error(data)
        == "spec.toml: features[5].numerator: ratios form a cycle: a -> b -> c -> a"
    )


def test_ratio_of_ratios_without_a_cycle_is_accepted() -> None:
    spec = FeatureSet.from_dict(
        with_features(
            {"type": "ratio", "name": "a", "numerator": "decline_ratio", "denominator": "tx_count"}
        )
    )
    assert spec.feature("a").depends_on() == ("decline_ratio", "tx_count")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            {"field": "s", "op": "=~", "value": "x"},
            "op: unknown op '=~' (known: ==, !=, <, <=, >, >=, in, not_in)",
        ),
        ({"field": "s", "op": "in", "value": "x"}, "value: op 'in' needs a list, got str"),
        ({"field": "s", "op": "not_in", "value": []}, "value: op 'not_in' needs a non-empty list"),
        (
            {"field": "s", "op": "in", "value": ["a", {}]},
            "value[1]: op 'in' needs a string, number or boolean, got dict",
        ),
        (
            {"field": "s", "value": None},
            "value: must not be null (a missing or null event field never matches)",
        ),
        (
            {"field": "s", "value": [1]},
            "value: op '==' needs a string, number or boolean, got list",
        ),
        (
            {"field": "s", "op": "<", "value": True},
            "value: op '<' needs a string or a number, got bool",
        ),
        ({"field": "s", "value": math.nan}, "value: must not be NaN (NaN equals nothing)"),
        ({"field": "", "value": 1}, "field: must not be empty"),
        ({"field": "s"}, "value: missing required field"),
    ],
)
def test_where_rules_name_the_field(where: dict[str, Any], message: str) -> None:
    data = with_features({"type": "count", "name": "c", "where": where})
    assert spec_error(data) == f"spec.toml: features[5].where.{message}"


# Validation messages from Python


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Sum(name="s", field=3), "Sum.field: expected a string, got int"),
        (
            lambda: Count(name="bad name"),
            "Count.name: not a valid name: 'bad name' (use letters, digits and _)",
        ),
        (
            lambda: Count(name="c", where={"field": "x"}),
            "Count.where: expected a Where or None, got dict",
        ),
        (lambda: Where(field="x", op="in", value=3), "Where.value: op 'in' needs a list, got int"),
        (
            lambda: Where(field="x", op="~", value=3),
            "Where.op: unknown operator '~' (known: ==, !=, <, <=, >, >=, in, not_in)",
        ),
        (
            lambda: EWMean(name="e", field="x", half_life="0s"),
            "EWMean.half_life: must be > 0, got '0s'",
        ),
        (
            lambda: EWMean(name="e", field="x", half_life=1.5),
            "EWMean.half_life: not a whole number of milliseconds: 1.5",
        ),
        (lambda: Std(name="s", field="x", ddof=True), "Std.ddof: expected an int, got bool"),
        (
            lambda: DistinctCount(name="d", field="x", precision=3),
            "DistinctCount.precision: must be between 4 and 16, got 3",
        ),
        (
            lambda: Ratio(
                name="r", numerator="a", denominator="b", where=Where(field="x", value=1)
            ),
            "Ratio.where: a ratio takes no where condition (put it on its operands)",
        ),
        (
            lambda: fraud().with_feature(Count(name="tx_count")),
            "FeatureSet.features[5].name: duplicate feature name 'tx_count' (also features[0])",
        ),
        (
            lambda: fraud().with_feature(Ratio(name="r", numerator="x", denominator="tx_count")),
            "FeatureSet.features[5].numerator: no feature named 'x'",
        ),
        (
            lambda: FeatureSet(name="f", key="k", time="t", features=[{"type": "count"}]),
            "FeatureSet.features[0]: expected a feature, got dict",
        ),
        (
            lambda: FeatureSet(name="f", key="k", time="t", features=Count(name="c")),
            "FeatureSet.features: expected a list of features, got Count",
        ),
        (
            lambda: FeatureSet(
                name="f", key="k", time="t", time_unit="h", features=[Count(name="c")]
            ),
            "FeatureSet.time_unit: unknown unit 'h' (known: ms, s, us, ns)",
        ),
        (
            lambda: FeatureSet(name="f", key="k", time="t", features=[]),
            "FeatureSet.features: at least one feature (or a join) is required",
        ),
    ],
)
def test_python_construction_raises_spec_error_naming_python(build: Any, message: str) -> None:
    assert python_error(build).startswith(f"<python>: {message}")


# The set's API


def test_with_feature_returns_a_new_validated_set() -> None:
    spec = fraud()
    bigger = spec.with_feature(Mean(name="amount_mean", field="amount"))
    assert bigger.names[-1] == "amount_mean"
    assert len(spec.features) == 5
    assert bigger.features[:5] == spec.features


def test_feature_looks_up_by_name_or_raises_unknown_feature() -> None:
    spec = fraud()
    assert spec.feature("amount_sum") == Sum(name="amount_sum", field="amount")
    with pytest.raises(UnknownFeature) as info:
        spec.feature("amount_avg")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == (
        "feature set 'fraud' has no feature 'amount_avg' (known: tx_count, amount_sum, "
        "declined_count, decline_ratio, amount_ewm)"
    )


def test_features_are_kept_as_a_tuple_and_the_set_is_hashable() -> None:
    spec = fraud()
    assert isinstance(spec.features, tuple)
    assert hash(spec) == hash(FeatureSet.from_file(SPECS / "fraud.yaml"))


def test_every_feature_type_is_tagged_and_documented() -> None:
    for tag, cls in FEATURE_TYPES.items():
        assert issubclass(cls, FeatureSpec)
        assert cls.__struct_config__.tag == tag
        assert cls.__doc__ and cls.__doc__.strip()
    numeric = {tag for tag, cls in FEATURE_TYPES.items() if cls.numeric}
    assert numeric == {
        "sum",
        "mean",
        "min",
        "max",
        "variance",
        "std",
        "ewm_mean",
        "percentile",
        "quantile",
        "zscore",
    }


@pytest.mark.parametrize(
    ("feature", "inputs"),
    [
        (Count(name="c"), ()),
        (Count(name="c", where=Where(field="status", value="ok")), ("status",)),
        (Sum(name="s", field="amount"), ("amount",)),
        (
            Min(name="s", field="amount", where=Where(field="status", value="ok")),
            ("amount", "status"),
        ),
        (Max(name="s", field="amount", where=Where(field="amount", op=">", value=0)), ("amount",)),
        (First(name="f", field="merchant"), ("merchant",)),
        (Last(name="f", field="merchant"), ("merchant",)),
        (Variance(name="v", field="x", ddof=0), ("x",)),
        (DistinctCount(name="d", field="merchant"), ("merchant",)),
        (TimeSince(name="t"), ()),
        (Ratio(name="r", numerator="a", denominator="b"), ()),
    ],
)
def test_inputs_are_the_event_fields_read(feature: FeatureSpec, inputs: tuple[str, ...]) -> None:
    assert feature.inputs() == inputs


def test_type_name_is_the_tag() -> None:
    assert DistinctCount(name="d", field="x").type_name == "distinct_count"


# Where


@pytest.mark.parametrize(
    ("op", "value", "actual", "expected"),
    [
        ("==", "declined", "declined", True),
        ("==", "declined", "ok", False),
        ("==", 1, 1.0, True),
        ("!=", "declined", "ok", True),
        ("!=", "declined", "declined", False),
        ("<", 10, 9.5, True),
        ("<", 10, 10, False),
        ("<=", 10, 10, True),
        ("<=", 10, 11, False),
        (">", "b", "c", True),
        (">", "b", "a", False),
        (">=", 0, 0, True),
        (">=", 0, -1, False),
        ("in", ["US", "CA"], "CA", True),
        ("in", ["US", "CA"], "FR", False),
        ("not_in", ["US", "CA"], "FR", True),
        ("not_in", ["US", "CA"], "US", False),
    ],
)
def test_where_matches_each_operator(op: Op, value: Any, actual: Any, expected: bool) -> None:
    assert Where(field="f", op=op, value=value).matches({"f": actual}) is expected


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_where_on_a_missing_or_null_field_matches_nothing(op: Op) -> None:
    where = Where(field="f", op=op, value=1)
    assert not where.matches({})
    assert not where.matches({"f": None})


@pytest.mark.parametrize("op", ["in", "not_in"])
def test_list_where_on_a_missing_field_matches_nothing(op: Op) -> None:
    assert not Where(field="f", op=op, value=[1]).matches({"g": 1})


def test_where_ordering_of_incomparable_values_is_a_feature_value_error() -> None:
    where = Where(field="amount", op=">", value=100)
    with pytest.raises(FeatureValueError) as info:
        where.matches({"amount": "lots"})
    assert info.value.field == "amount"
    assert str(info.value) == "amount: cannot compare 'lots' for amount > 100"


def test_where_describes_itself() -> None:
    assert Where(field="status", value="declined").describe() == "status == 'declined'"
    assert Where(field="n", op="<=", value=3).describe() == "n <= 3"
    where = Where(field="country", op="in", value=["US", "CA"])
    assert where.describe() == "country in ['US', 'CA']"
    assert where.value == ("US", "CA")


# Durations


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (0, 0),
        (250, 250),
        (1500.0, 1500),
        ("250ms", 250),
        ("10s", 10_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1h30m", 5_400_000),
        ("1d2h3m4s5ms", 93_784_005),
        ("1.5s", 1_500),
        ("0.25m", 15_000),
        ("1.0ms", 1),
        ("0s", 0),
    ],
)
def test_parse_duration(value: int | float | str, ms: int) -> None:
    assert parse_duration(value, field="window") == ms


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10 parsecs", f"half_life: not a duration: '10 parsecs' {HINT}"),
        ("", f"half_life: not a duration: '' {HINT}"),
        ("10", f"half_life: not a duration: '10' {HINT}"),
        ("10S", f"half_life: not a duration: '10S' {HINT}"),
        (" 10s", f"half_life: not a duration: ' 10s' {HINT}"),
        ("-5s", f"half_life: not a duration: '-5s' {HINT}"),
        (".5s", f"half_life: not a duration: '.5s' {HINT}"),
        (
            "30m1h",
            f"half_life: not a duration: '30m1h' {ORDER}",
        ),
        (
            "1m1m",
            f"half_life: not a duration: '1m1m' {ORDER}",
        ),
        ("1.5ms", "half_life: not a whole number of milliseconds: '1.5ms'"),
        (0.5, "half_life: not a whole number of milliseconds: 0.5"),
        (math.inf, f"half_life: not a duration: inf {HINT}"),
        (True, f"half_life: not a duration: True {HINT}"),
        ([1], f"half_life: not a duration: [1] {HINT}"),
        (-1, "half_life: must be >= 0, got -1"),
        (2**63, f"half_life: too long: {2**63} (at most {MAX_DURATION_MS} ms)"),
    ],
)
def test_parse_duration_rejects(value: Any, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_duration(value, field="half_life")
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (1, "1ms"), (1_500, "1s500ms"), (90_000, "1m30s"), (86_400_000, "1d")],
)
def test_format_duration(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=MAX_DURATION_MS))
def test_format_then_parse_round_trips(ms: int) -> None:
    assert parse_duration(format_duration(ms), field="d") == ms
