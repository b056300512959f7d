"""The featurist feature runtime: keyed features over event streams, on the ``actors`` kernel.

Start with :class:`FeatureSet` (what to compute) and :class:`FeatureRuntime` (computing it).
See ``docs/quickstart.md``.
"""

from runtime._checkpoints.store import CheckpointConfig as CheckpointConfig
from runtime._checkpoints.store import CheckpointInfo as CheckpointInfo
from runtime._duration import format_duration as format_duration
from runtime._duration import parse_duration as parse_duration
from runtime._exceptions import CheckpointError as CheckpointError
from runtime._exceptions import ConfigError as ConfigError
from runtime._exceptions import FeatureValueError as FeatureValueError
from runtime._exceptions import FeaturistError as FeaturistError
from runtime._exceptions import InvalidEvent as InvalidEvent
from runtime._exceptions import MalformedRow as MalformedRow
from runtime._exceptions import RuntimeClosed as RuntimeClosed
from runtime._exceptions import SourceError as SourceError
from runtime._exceptions import SourceUnavailable as SourceUnavailable
from runtime._exceptions import SpecError as SpecError
from runtime._exceptions import UnknownFeature as UnknownFeature
from runtime._logging import configure_logging as configure_logging
from runtime._observe.metrics import ActorMailbox as ActorMailbox
from runtime._observe.metrics import ActorMetrics as ActorMetrics
from runtime._observe.metrics import CheckpointMetrics as CheckpointMetrics
from runtime._observe.metrics import FeatureMetrics as FeatureMetrics
from runtime._observe.metrics import GroupMetrics as GroupMetrics
from runtime._observe.metrics import RuntimeMetrics as RuntimeMetrics
from runtime._replay.history import ReplayResult as ReplayResult
from runtime._replay.parity import FeatureParity as FeatureParity
from runtime._replay.parity import ParityExample as ParityExample
from runtime._replay.parity import ParityMissing as ParityMissing
from runtime._replay.parity import ParityReport as ParityReport
from runtime._replay.parity import check_parity as check_parity
from runtime._results import EnrichedEvent as EnrichedEvent
from runtime._results import EnrichmentStatistics as EnrichmentStatistics
from runtime._results import FeatureDescription as FeatureDescription
from runtime._results import FeatureError as FeatureError
from runtime._results import FeatureResult as FeatureResult
from runtime._results import FeatureUpdate as FeatureUpdate
from runtime._results import FeatureVector as FeatureVector
from runtime._results import JoinRecord as JoinRecord
from runtime._results import JoinStatistics as JoinStatistics
from runtime._results import LateEvent as LateEvent
from runtime._results import RuntimeStatistics as RuntimeStatistics
from runtime._results import WindowStatistics as WindowStatistics
from runtime._runtime import FeatureRuntime as FeatureRuntime
from runtime._spec.cost import CostEstimate as CostEstimate
from runtime._spec.cost import MeasuredCost as MeasuredCost
from runtime._spec.cost import estimate_cost as estimate_cost
from runtime._spec.cost import estimate_feature_set as estimate_feature_set
from runtime._spec.drift import ADWIN as ADWIN
from runtime._spec.drift import KS as KS
from runtime._spec.drift import PSI as PSI
from runtime._spec.drift import DriftAlert as DriftAlert
from runtime._spec.drift import DriftMonitor as DriftMonitor
from runtime._spec.drift import DriftSegmentStatus as DriftSegmentStatus
from runtime._spec.drift import DriftStatus as DriftStatus
from runtime._spec.drift import PageHinkley as PageHinkley
from runtime._spec.drift import Reference as Reference
from runtime._spec.enrich import CustomSource as CustomSource
from runtime._spec.enrich import HttpSource as HttpSource
from runtime._spec.enrich import Lookup as Lookup
from runtime._spec.enrich import PostgresSource as PostgresSource
from runtime._spec.enrich import RedisSource as RedisSource
from runtime._spec.enrich import SqliteSource as SqliteSource
from runtime._spec.feature_set import FEATURE_TYPES as FEATURE_TYPES
from runtime._spec.keyed import Count as Count
from runtime._spec.keyed import DistinctCount as DistinctCount
from runtime._spec.keyed import EWMean as EWMean
from runtime._spec.feature_set import Feature as Feature
from runtime._spec.feature_set import FeatureSet as FeatureSet
from runtime._spec.base import FeatureSpec as FeatureSpec
from runtime._spec.keyed import First as First
from runtime._spec.keyed import Last as Last
from runtime._spec.keyed import Max as Max
from runtime._spec.keyed import Mean as Mean
from runtime._spec.keyed import Min as Min
from runtime._spec.windowed import Percentile as Percentile
from runtime._spec.windowed import Quantile as Quantile
from runtime._spec.keyed import Ratio as Ratio
from runtime._spec.windowed import SequencePattern as SequencePattern
from runtime._spec.keyed import Std as Std
from runtime._spec.windowed import Step as Step
from runtime._spec.keyed import Sum as Sum
from runtime._spec.keyed import TimeSince as TimeSince
from runtime._spec.windowed import TopK as TopK
from runtime._spec.keyed import Variance as Variance
from runtime._spec.base import Where as Where
from runtime._spec.windowed import ZScore as ZScore
from runtime._spec.joins import Join as Join
from runtime._spec.joins import JoinRange as JoinRange
from runtime._spec.windows import Hopping as Hopping
from runtime._spec.windows import Session as Session
from runtime._spec.windows import Sliding as Sliding
from runtime._spec.windows import Tumbling as Tumbling
from runtime._spec.windows import Window as Window
from runtime._updates import SubscriptionStatistics as SubscriptionStatistics
from runtime._updates import UpdateSubscription as UpdateSubscription

__all__ = [
    "ADWIN",
    "DriftAlert",
    "DriftMonitor",
    "DriftSegmentStatus",
    "DriftStatus",
    "KS",
    "PSI",
    "PageHinkley",
    "Reference",
    "CheckpointConfig",
    "CheckpointError",
    "ConfigError",
    "MalformedRow",
    "CheckpointInfo",
    "FEATURE_TYPES",
    "CostEstimate",
    "Count",
    "CustomSource",
    "DistinctCount",
    "EWMean",
    "EnrichedEvent",
    "EnrichmentStatistics",
    "Feature",
    "FeatureDescription",
    "FeatureError",
    "FeatureParity",
    "FeatureResult",
    "FeatureRuntime",
    "FeatureSet",
    "FeatureSpec",
    "FeatureUpdate",
    "FeatureValueError",
    "FeatureVector",
    "FeaturistError",
    "First",
    "Hopping",
    "HttpSource",
    "InvalidEvent",
    "Join",
    "JoinRange",
    "JoinRecord",
    "JoinStatistics",
    "Last",
    "LateEvent",
    "Lookup",
    "Max",
    "Mean",
    "MeasuredCost",
    "Min",
    "ParityExample",
    "ParityMissing",
    "ParityReport",
    "Percentile",
    "PostgresSource",
    "Quantile",
    "Ratio",
    "RedisSource",
    "ReplayResult",
    "RuntimeClosed",
    "RuntimeStatistics",
    "ActorMailbox",
    "ActorMetrics",
    "CheckpointMetrics",
    "FeatureMetrics",
    "GroupMetrics",
    "RuntimeMetrics",
    "SequencePattern",
    "Session",
    "Sliding",
    "SourceError",
    "SourceUnavailable",
    "SpecError",
    "SqliteSource",
    "Std",
    "Step",
    "Sum",
    "TimeSince",
    "TopK",
    "Tumbling",
    "UnknownFeature",
    "SubscriptionStatistics",
    "UpdateSubscription",
    "Variance",
    "Where",
    "Window",
    "WindowStatistics",
    "ZScore",
    "check_parity",
    "configure_logging",
    "estimate_cost",
    "estimate_feature_set",
    "format_duration",
    "parse_duration",
]
