"""The featurist feature runtime: keyed features over event streams, on the ``actors`` kernel.

Start with :class:`FeatureSet` (what to compute) and :class:`FeatureRuntime` (computing it).
See ``docs/quickstart.md``.
"""

# General layout (docs/architecture.md draws the layers and which may import which). Every
# public name is re-exported here and says it is ``runtime.X``; the code lives in private
# modules, one subpackage per concern, with plain module names inside:
#
# - _spec/: what to compute, as msgspec structs and no actors: the feature set and its loaders
#   (feature_set), keyed and windowed features, windows, joins, lookups, drift monitors, cost;
#   limits holds the defaults and bounds that the code running a spec shares with it.
# - _stats/: the algorithms features keep (rolling moments, quantiles, sketches, idle keys).
# - _ingest/: decoding and checking events (events), routing them to the shards (router).
# - _keyed/, _windows/, _joins/, _enrich/, _drift/: each concern's engine, pure, and the actor
#   that runs it; _enrich/sources/ has one module per dimension source driver.
# - _messages.py: what the shard actors are told and asked; _shard.py: the keyed groups' actor.
# - _connectors/: the source protocol, consume (a source into a runtime), the inputs a runtime
#   consumes itself, the file and broker sources, the sinks.
# - _checkpoints/, _observe/, _replay/: checkpoint files and their codec, metrics and the
#   Prometheus endpoint, replay of history and the parity check.
# - _training/: point-in-time training sets (labels, the replay paused at each label's time).
# - _topology.py: the actors a feature set needs; _runtime.py: FeatureRuntime, the facade.
# - _exceptions.py (the one error tree), _results.py, _updates.py, _duration.py, _logging.py.
# - parity.py: ``python -m runtime.parity``, the parity check's command line.

from actors._exports import fixup_module_metadata as _fixup_module_metadata

from ._batches import EnrichedBatch as EnrichedBatch
from ._batches import JoinRecordBatch as JoinRecordBatch
from ._batches import LateEventBatch as LateEventBatch
from ._batches import UpdateBatch as UpdateBatch
from ._checkpoints.store import CheckpointConfig as CheckpointConfig
from ._checkpoints.store import CheckpointInfo as CheckpointInfo
from ._connectors.consume import ConsumeResult as ConsumeResult
from ._connectors.consume import consume as consume
from ._connectors.files import CsvSource as CsvSource
from ._connectors.files import JsonLinesSource as JsonLinesSource
from ._connectors.files import ParquetSource as ParquetSource
from ._connectors.inputs import Input as Input
from ._connectors.nats import NatsSource as NatsSource
from ._connectors.partitions import partition_key_groups as partition_key_groups
from ._connectors.partitions import partition_of as partition_of
from ._connectors.redis_streams import RedisStreamSource as RedisStreamSource
from ._connectors.sink_nats import NatsSink as NatsSink
from ._connectors.sink_parquet import ParquetSink as ParquetSink
from ._connectors.sink_redis import RedisSink as RedisSink
from ._connectors.sinks import RunningSink as RunningSink
from ._connectors.sinks import Sink as Sink
from ._connectors.sinks import SinkStatistics as SinkStatistics
from ._connectors.sinks import run_sink as run_sink
from ._connectors.source import RejectedRecord as RejectedRecord
from ._connectors.source import Source as Source
from ._connectors.source import SourceBatch as SourceBatch
from ._duration import format_duration as format_duration
from ._duration import parse_duration as parse_duration
from ._exceptions import CheckpointError as CheckpointError
from ._exceptions import ConfigError as ConfigError
from ._exceptions import FeatureValueError as FeatureValueError
from ._exceptions import FeaturistError as FeaturistError
from ._exceptions import InvalidEvent as InvalidEvent
from ._exceptions import KeyRefused as KeyRefused
from ._exceptions import MalformedRow as MalformedRow
from ._exceptions import RuntimeClosed as RuntimeClosed
from ._exceptions import SinkError as SinkError
from ._exceptions import SourceError as SourceError
from ._exceptions import SourceUnavailable as SourceUnavailable
from ._exceptions import SpecError as SpecError
from ._exceptions import UnknownFeature as UnknownFeature
from ._ingest.result import IngestResult as IngestResult
from ._ingest.result import Rejection as Rejection
from ._logging import configure_logging as configure_logging
from ._observe.metrics import ActorMailbox as ActorMailbox
from ._observe.metrics import ActorMetrics as ActorMetrics
from ._observe.metrics import CheckpointMetrics as CheckpointMetrics
from ._observe.metrics import FeatureMetrics as FeatureMetrics
from ._observe.metrics import GroupMetrics as GroupMetrics
from ._observe.metrics import RuntimeMetrics as RuntimeMetrics
from ._observe.prometheus import FeatureCollector as FeatureCollector
from ._replay.history import ReplayResult as ReplayResult
from ._replay.parity import FeatureParity as FeatureParity
from ._replay.parity import ParityExample as ParityExample
from ._replay.parity import ParityMissing as ParityMissing
from ._replay.parity import ParityReport as ParityReport
from ._replay.parity import check_parity as check_parity
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
from ._service import create_app as create_app
from ._spec.aggregate import Aggregate as Aggregate
from ._spec.aggregate import Custom as Custom
from ._spec.base import FeatureSpec as FeatureSpec
from ._spec.base import Where as Where
from ._spec.computed import Computed as Computed
from ._spec.cost import CostEstimate as CostEstimate
from ._spec.cost import MeasuredCost as MeasuredCost
from ._spec.cost import estimate_cost as estimate_cost
from ._spec.cost import estimate_feature_set as estimate_feature_set
from ._spec.drift import ADWIN as ADWIN
from ._spec.drift import KS as KS
from ._spec.drift import PSI as PSI
from ._spec.drift import DriftAlert as DriftAlert
from ._spec.drift import DriftMonitor as DriftMonitor
from ._spec.drift import DriftSegmentStatus as DriftSegmentStatus
from ._spec.drift import DriftStatus as DriftStatus
from ._spec.drift import PageHinkley as PageHinkley
from ._spec.drift import Reference as Reference
from ._spec.enrich import CustomSource as CustomSource
from ._spec.enrich import HttpSource as HttpSource
from ._spec.enrich import Lookup as Lookup
from ._spec.enrich import PostgresSource as PostgresSource
from ._spec.enrich import RedisSource as RedisSource
from ._spec.enrich import SqliteSource as SqliteSource
from ._spec.feature_set import FEATURE_TYPES as FEATURE_TYPES
from ._spec.feature_set import Feature as Feature
from ._spec.feature_set import FeatureSet as FeatureSet
from ._spec.joins import Join as Join
from ._spec.joins import JoinRange as JoinRange
from ._spec.keyed import Count as Count
from ._spec.keyed import Derived as Derived
from ._spec.keyed import DistinctCount as DistinctCount
from ._spec.keyed import EWMean as EWMean
from ._spec.keyed import First as First
from ._spec.keyed import Last as Last
from ._spec.keyed import Max as Max
from ._spec.keyed import Mean as Mean
from ._spec.keyed import Min as Min
from ._spec.keyed import Ratio as Ratio
from ._spec.keyed import Std as Std
from ._spec.keyed import Sum as Sum
from ._spec.keyed import TimeSince as TimeSince
from ._spec.keyed import Variance as Variance
from ._spec.windowed import Percentile as Percentile
from ._spec.windowed import Quantile as Quantile
from ._spec.windowed import SequencePattern as SequencePattern
from ._spec.windowed import Step as Step
from ._spec.windowed import TopK as TopK
from ._spec.windowed import ZScore as ZScore
from ._spec.windows import Hopping as Hopping
from ._spec.windows import Session as Session
from ._spec.windows import Sliding as Sliding
from ._spec.windows import Tumbling as Tumbling
from ._spec.windows import Window as Window
from ._training.build import training_set as training_set
from ._training.table import TrainingSet as TrainingSet
from ._updates import SubscriptionStatistics as SubscriptionStatistics
from ._updates import UpdateSubscription as UpdateSubscription
from ._workers.backends import RayBackend as RayBackend

__all__ = [
    # what to compute: the feature set and its features
    "Computed",
    "FEATURE_TYPES",
    "Feature",
    "FeatureSet",
    "FeatureSpec",
    "Where",
    # keyed aggregates
    "Count",
    "Derived",
    "DistinctCount",
    "EWMean",
    "First",
    "Last",
    "Max",
    "Mean",
    "Min",
    "Ratio",
    "Std",
    "Sum",
    "TimeSince",
    "Variance",
    # user-defined aggregates
    "Aggregate",
    "Custom",
    # features over a window or in event-time order
    "Percentile",
    "Quantile",
    "SequencePattern",
    "Step",
    "TopK",
    "ZScore",
    # windows
    "Hopping",
    "Session",
    "Sliding",
    "Tumbling",
    "Window",
    # joins
    "Join",
    "JoinRange",
    # enrichment: lookups and their sources
    "CustomSource",
    "HttpSource",
    "Lookup",
    "PostgresSource",
    "RedisSource",
    "SqliteSource",
    # drift monitors
    "ADWIN",
    "DriftAlert",
    "DriftMonitor",
    "DriftSegmentStatus",
    "DriftStatus",
    "KS",
    "PSI",
    "PageHinkley",
    "Reference",
    # cost estimates
    "CostEstimate",
    "MeasuredCost",
    "estimate_cost",
    "estimate_feature_set",
    # the runtime and what it gives back
    "EnrichedEvent",
    "FeatureDescription",
    "FeatureError",
    "FeatureResult",
    "FeatureRuntime",
    "FeatureUpdate",
    "FeatureVector",
    "IngestResult",
    "JoinRecord",
    "LateEvent",
    "RayBackend",
    "Rejection",
    "UpdateSubscription",
    # what subscriptions carry: a batch of outputs per batch of events
    "EnrichedBatch",
    "JoinRecordBatch",
    "LateEventBatch",
    "UpdateBatch",
    # statistics and metrics
    "ActorMailbox",
    "ActorMetrics",
    "CheckpointMetrics",
    "EnrichmentStatistics",
    "FeatureCollector",
    "FeatureMetrics",
    "GroupMetrics",
    "JoinStatistics",
    "RuntimeMetrics",
    "RuntimeStatistics",
    "SubscriptionStatistics",
    "WindowStatistics",
    # connectors: sources and consuming them
    "ConsumeResult",
    "CsvSource",
    "Input",
    "JsonLinesSource",
    "ParquetSource",
    "RejectedRecord",
    "Source",
    "SourceBatch",
    "consume",
    # connectors: broker sources and partitioned input
    "NatsSource",
    "RedisStreamSource",
    "partition_key_groups",
    "partition_of",
    # connectors: sinks
    "NatsSink",
    "ParquetSink",
    "RedisSink",
    "RunningSink",
    "Sink",
    "SinkStatistics",
    "run_sink",
    # checkpoints, replay and parity
    "CheckpointConfig",
    "CheckpointInfo",
    "FeatureParity",
    "ParityExample",
    "ParityMissing",
    "ParityReport",
    "ReplayResult",
    "check_parity",
    # point-in-time training sets
    "TrainingSet",
    "training_set",
    # errors
    "CheckpointError",
    "ConfigError",
    "FeatureValueError",
    "FeaturistError",
    "InvalidEvent",
    "KeyRefused",
    "MalformedRow",
    "RuntimeClosed",
    "SinkError",
    "SourceError",
    "SourceUnavailable",
    "SpecError",
    "UnknownFeature",
    # the feature service (the serve extra)
    "create_app",
    # helpers
    "configure_logging",
    "format_duration",
    "parse_duration",
]


_fixup_module_metadata(__name__, __all__, globals())
