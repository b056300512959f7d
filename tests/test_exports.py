"""The public face of ``runtime`` and ``actors``: exactly the names below, each saying it is
``runtime.X`` or ``actors.X`` (as trio's ``_tests/test_exports.py`` checks trio's).

An accidental export, a missing name or a renamed one fails here: add a name to the lists below
only when it is meant to be public, and to the docs' API reference with it.
"""

from __future__ import annotations

import ast
import pickle
import traceback
import typing
from pathlib import Path
from types import FunctionType, ModuleType

import msgspec
import pytest

import actors
import runtime

ROOT = Path(__file__).resolve().parents[1]

RUNTIME_NAMES = {
    # what to compute: the feature set and its features
    *("FEATURE_TYPES", "Computed", "Feature", "FeatureSet", "FeatureSpec", "Where"),
    # keyed aggregates
    *("Count", "Derived", "DistinctCount", "EWMean", "First", "Last", "Max", "Mean", "Min"),
    "Ratio",
    *("Std", "Sum", "TimeSince", "Variance"),
    # user-defined aggregates
    *("Aggregate", "Custom"),
    # features over a window or in event-time order
    *("Percentile", "Quantile", "SequencePattern", "Step", "TopK", "ZScore"),
    # windows, joins, enrichment
    *("Hopping", "Session", "Sliding", "Tumbling", "Window", "Join", "JoinRange"),
    *("CustomSource", "HttpSource", "Lookup", "PostgresSource", "RedisSource", "SqliteSource"),
    # drift monitors
    *("ADWIN", "DriftAlert", "DriftMonitor", "DriftSegmentStatus", "DriftStatus", "KS", "PSI"),
    *("PageHinkley", "Reference"),
    # cost estimates
    *("CostEstimate", "MeasuredCost", "estimate_cost", "estimate_feature_set"),
    # the runtime and what it gives back
    *("EnrichedEvent", "FeatureDescription", "FeatureError", "FeatureResult", "FeatureRuntime"),
    *("FeatureUpdate", "FeatureVector", "JoinRecord", "LateEvent", "UpdateSubscription"),
    *("IngestResult", "RayBackend", "Rejection"),
    # what subscriptions carry
    *("EnrichedBatch", "JoinRecordBatch", "LateEventBatch", "UpdateBatch"),
    # statistics and metrics
    *("ActorMailbox", "ActorMetrics", "CheckpointMetrics", "EnrichmentStatistics"),
    *("FeatureMetrics", "GroupMetrics", "JoinStatistics", "RuntimeMetrics", "RuntimeStatistics"),
    *("SubscriptionStatistics", "WindowStatistics", "FeatureCollector"),
    # connectors
    *("ConsumeResult", "CsvSource", "Input", "JsonLinesSource", "ParquetSource", "RejectedRecord"),
    *("Source", "SourceBatch", "consume"),
    *("NatsSink", "ParquetSink", "RedisSink", "RunningSink", "Sink", "SinkStatistics", "run_sink"),
    *("NatsSource", "RedisStreamSource", "partition_key_groups", "partition_of"),
    # checkpoints, replay and parity
    *("CheckpointConfig", "CheckpointInfo", "FeatureParity", "ParityExample", "ParityMissing"),
    *("ParityReport", "ReplayResult", "check_parity"),
    # point-in-time training sets
    *("TrainingSet", "training_set"),
    # the feature service
    "create_app",
    # errors
    *("CheckpointError", "ConfigError", "FeatureValueError", "FeaturistError", "InvalidEvent"),
    *("KeyRefused", "MalformedRow", "RuntimeClosed", "SourceError", "SourceUnavailable"),
    *("SinkError", "SpecError", "UnknownFeature"),
    # helpers
    *("configure_logging", "format_duration", "parse_duration"),
}

ACTORS_NAMES = {
    *("Actor", "ActorContext", "ActorRef", "ActorSystem", "Directive", "SystemStatistics", "run"),
    *("MailboxConfig", "MailboxStatistics", "Overflow"),
    *("Backoff", "Restart", "Strategy", "Supervisor", "restart_always", "resume_always"),
    *("DeadLetter", "DeadLetterReason", "DeadLetterStatistics", "DeadLetters"),
    *("Key", "KeyRouter", "stable_hash"),
    *("BatchFunction", "BatchLoader", "LoaderCache", "LoaderStatistics"),
    *("ActorError", "ActorStopped", "AskTimeout", "BatchResultError", "ConfigError", "Escalated"),
    *("LoadTimeout", "LoaderError", "MailboxFull"),
    "get_logger",
}

PACKAGES = [pytest.param(runtime, RUNTIME_NAMES, id="runtime")]
PACKAGES += [pytest.param(actors, ACTORS_NAMES, id="actors")]


def _renamed(package: ModuleType) -> list[tuple[str, type | FunctionType]]:
    """The exported classes and functions: what says which module it is from."""
    found = []
    for name in package.__all__:
        value = getattr(package, name)
        if isinstance(value, type | FunctionType):
            found.append((name, value))
    return found


@pytest.mark.parametrize(("package", "expected"), PACKAGES)
def test_all_is_exactly_the_expected_names(package: ModuleType, expected: set[str]) -> None:
    assert len(package.__all__) == len(set(package.__all__)), "a name is listed twice"
    assert set(package.__all__) - expected == set(), "exported but not expected"
    assert expected - set(package.__all__) == set(), "expected but not exported"


@pytest.mark.parametrize(("package", "expected"), PACKAGES)
def test_the_package_has_no_other_public_name(package: ModuleType, expected: set[str]) -> None:
    public = {
        name
        for name in dir(package)
        # a submodule (``runtime.parity``) is bound on its package once something imports it
        if not name.startswith("_") and not isinstance(getattr(package, name), ModuleType)
    }
    assert public == expected


@pytest.mark.parametrize(("package", "expected"), PACKAGES)
def test_all_is_sorted_within_each_commented_group(package: ModuleType, expected: set[str]) -> None:
    path = Path(str(package.__file__))
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index("__all__ = [")
    groups: list[list[str]] = []
    for line in lines[start + 1 : lines.index("]", start)]:
        if line.strip().startswith("#"):
            groups.append([])
        else:
            groups[-1].append(ast.literal_eval(line.strip().rstrip(",")))
    assert [name for group in groups for name in group] == package.__all__
    assert [group for group in groups if group != sorted(group)] == []


@pytest.mark.parametrize(("package", "expected"), PACKAGES)
def test_each_class_and_function_says_it_is_from_the_package(
    package: ModuleType, expected: set[str]
) -> None:
    wrong = {name: value.__module__ for name, value in _renamed(package)}
    assert {name: module for name, module in wrong.items() if module != package.__name__} == {}
    assert len(wrong) > 0.8 * len(expected)  # the rest are type aliases and a dict


def test_reprs_and_tracebacks_show_the_public_names() -> None:
    assert repr(runtime.FeatureRuntime) == "<class 'runtime.FeatureRuntime'>"
    assert repr(actors.ActorSystem) == "<class 'actors.ActorSystem'>"
    assert runtime.SpecError.__qualname__ == "SpecError"
    try:
        runtime.parse_duration("soon", field="timeout")
    except runtime.SpecError as exc:
        text = "".join(traceback.format_exception(exc))
    assert "\nruntime.SpecError: " in text


def test_exported_values_pickle_by_their_public_names() -> None:
    spec = runtime.FeatureSet(name="s", key="k", time="t", features=[runtime.Count(name="n")])
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert b"_spec" not in pickle.dumps(spec)  # runtime.FeatureSet, not runtime._spec...
    error = pickle.loads(pickle.dumps(runtime.UnknownFeature("no such feature")))
    assert type(error) is runtime.UnknownFeature and str(error) == "no such feature"
    assert pickle.loads(pickle.dumps(runtime.parse_duration)) is runtime.parse_duration
    assert pickle.loads(pickle.dumps(actors.DeadLetterReason.FAILED)) is (
        actors.DeadLetterReason.FAILED
    )


@pytest.mark.parametrize(("package", "expected"), PACKAGES)
def test_annotations_still_resolve(package: ModuleType, expected: set[str]) -> None:
    # they are evaluated in the module __module__ names, which is now the package
    for _, value in _renamed(package):
        if isinstance(value, type):
            typing.get_type_hints(value)


def test_specs_decode_after_the_renaming() -> None:
    spec = runtime.FeatureSet(
        name="s",
        key="k",
        time="t",
        max_out_of_orderness="5s",
        features=[
            runtime.EWMean(name="e", field="x", half_life="1m"),
            runtime.Sum(name="w", field="x", window=runtime.Tumbling(size="1m")),
        ],
    )
    decoded = msgspec.json.decode(spec.to_json(), type=runtime.FeatureSet)
    assert decoded == runtime.FeatureSet.from_json(spec.to_json()) == spec
