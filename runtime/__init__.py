"""The featurist feature runtime: keyed features over event streams, on the ``actors`` kernel.

Start with :class:`FeatureSet` (what to compute) and :class:`FeatureRuntime` (computing it).
See ``docs/quickstart.md``.
"""

from ._checkpoint import CheckpointConfig as CheckpointConfig
from ._checkpoint import CheckpointInfo as CheckpointInfo
from ._codec import CheckpointError as CheckpointError
from ._cost import CostEstimate as CostEstimate
from ._cost import MeasuredCost as MeasuredCost
from ._cost import estimate_cost as estimate_cost
from ._cost import estimate_feature_set as estimate_feature_set
from ._drift_spec import ADWIN as ADWIN
from ._drift_spec import KS as KS
from ._drift_spec import PSI as PSI
from ._drift_spec import DriftAlert as DriftAlert
from ._drift_spec import DriftMonitor as DriftMonitor
from ._drift_spec import DriftSegmentStatus as DriftSegmentStatus
from ._drift_spec import DriftStatus as DriftStatus
from ._drift_spec import PageHinkley as PageHinkley
from ._drift_spec import Reference as Reference
from ._duration import format_duration as format_duration
from ._duration import parse_duration as parse_duration
from ._enrich_fetch import SourceError as SourceError
from ._enrich_fetch import SourceUnavailable as SourceUnavailable
from ._exceptions import FeatureValueError as FeatureValueError
from ._exceptions import FeaturistError as FeaturistError
from ._exceptions import InvalidEvent as InvalidEvent
from ._exceptions import RuntimeClosed as RuntimeClosed
from ._exceptions import SpecError as SpecError
from ._exceptions import UnknownFeature as UnknownFeature
from ._logging import configure_logging as configure_logging
from ._metrics import ActorMailbox as ActorMailbox
from ._metrics import ActorMetrics as ActorMetrics
from ._metrics import CheckpointMetrics as CheckpointMetrics
from ._metrics import FeatureMetrics as FeatureMetrics
from ._metrics import GroupMetrics as GroupMetrics
from ._metrics import RuntimeMetrics as RuntimeMetrics
from ._replay import FeatureParity as FeatureParity
from ._replay import ParityExample as ParityExample
from ._replay import ParityMissing as ParityMissing
from ._replay import ParityReport as ParityReport
from ._replay import ReplayResult as ReplayResult
from ._replay import check_parity as check_parity
from ._results import EnrichedEvent as EnrichedEvent
from ._results import EnrichmentStatistics as EnrichmentStatistics
from ._results import FeatureDescription as FeatureDescription
from ._results import FeatureError as FeatureError
from ._results import FeatureResult as FeatureResult
from ._results import FeatureUpdate as FeatureUpdate
from ._results import FeatureVector as FeatureVector
from ._results import JoinRecord as JoinRecord
from ._results import JoinStatistics as JoinStatistics
from ._results import LateEvent as LateEvent
from ._results import RuntimeStatistics as RuntimeStatistics
from ._results import WindowStatistics as WindowStatistics
from ._runtime import FeatureRuntime as FeatureRuntime
from ._spec import FEATURE_TYPES as FEATURE_TYPES
from ._spec import Count as Count
from ._spec import DistinctCount as DistinctCount
from ._spec import EWMean as EWMean
from ._spec import Feature as Feature
from ._spec import FeatureSet as FeatureSet
from ._spec import FeatureSpec as FeatureSpec
from ._spec import First as First
from ._spec import Last as Last
from ._spec import Max as Max
from ._spec import Mean as Mean
from ._spec import Min as Min
from ._spec import Percentile as Percentile
from ._spec import Quantile as Quantile
from ._spec import Ratio as Ratio
from ._spec import SequencePattern as SequencePattern
from ._spec import Std as Std
from ._spec import Step as Step
from ._spec import Sum as Sum
from ._spec import TimeSince as TimeSince
from ._spec import TopK as TopK
from ._spec import Variance as Variance
from ._spec import Where as Where
from ._spec import ZScore as ZScore
from ._spec_enrich import CustomSource as CustomSource
from ._spec_enrich import HttpSource as HttpSource
from ._spec_enrich import Lookup as Lookup
from ._spec_enrich import PostgresSource as PostgresSource
from ._spec_enrich import RedisSource as RedisSource
from ._spec_enrich import SqliteSource as SqliteSource
from ._spec_join import Join as Join
from ._spec_join import JoinRange as JoinRange
from ._spec_window import Hopping as Hopping
from ._spec_window import Session as Session
from ._spec_window import Sliding as Sliding
from ._spec_window import Tumbling as Tumbling
from ._spec_window import Window as Window
from ._updates import SubscriptionStatistics as SubscriptionStatistics
from ._updates import UpdateSubscription as UpdateSubscription

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
