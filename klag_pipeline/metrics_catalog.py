"""The metric catalog: every family klag-pipeline exports, as data (SPEC §4).

One :class:`Family` per family, in exposition order. The sinks render from it (the Prometheus
sink's ``# HELP`` / ``# TYPE`` headers and family order, the OTLP sink's instruments and the
snapshot field each one reads), the self-metrics take their names, help and labels from it, and
``tests/unit/test_metrics_catalog.py`` checks docs/metrics.md and docs/jsonl.md against it. A new
family is one entry here plus its line in docs/metrics.md (the test fails without the second).

Over 400 lines on purpose: it is some 55 entries of data, one per family, and splitting them
would bring back the several places this catalog replaces.

Pure data on purpose: nothing here imports prometheus_client or OpenTelemetry, so every sink and
the docs test can read it without pulling in another sink's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from klag_pipeline.settings.schema import Granularity

Kind = Literal["gauge", "counter", "histogram"]

Source = Literal[
    "partition",
    "row",
    "group",
    "cluster",
    "produce_rate",
    "partition_health",
    "topic_health",
    "group_health",
    "status",
    "self",
]
"""What feeds a family: ``partition`` a ``PartitionOffsets``, ``row`` a ``PartitionRow``,
``group`` a ``GroupSummary``, ``cluster`` the ``ClusterSnapshot`` itself (all from
klag_pipeline.snapshot); from ``ClusterSnapshot.health`` (klag_pipeline/health/model.py, only
when it is not None): ``produce_rate`` the float of ``ClusterHealth.produce_rates`` (no field),
``partition_health`` a ``PartitionHealth`` (labelled by its row), ``topic_health`` a
``GroupTopicHealth``, ``group_health`` a ``GroupHealth``; ``status`` the exporter's status board
at scrape/export time; ``self`` the exporter's own counters (telemetry/self_metrics.py)."""


@dataclass(frozen=True, slots=True)
class LabelSet:
    """A family's label names, sorted as exposed. ``key`` is the abbreviation docs/metrics.md
    uses for it (``P``, ``GPM``, …), empty for the self-metrics' ad-hoc sets."""

    key: str
    names: tuple[str, ...]


P: Final = LabelSet("P", ("cluster_name", "topic", "partition"))
G: Final = LabelSet("G", ("cluster_name", "group"))
GT: Final = LabelSet("GT", ("cluster_name", "group", "topic"))
GPM: Final = LabelSet(
    "GPM",
    ("cluster_name", "group", "topic", "partition", "member_host", "consumer_id", "client_id"),
)
GPM_FLAGS: Final = LabelSet(
    "GPM + flags", (*GPM.names, "compaction_detected", "data_loss_detected")
)
"""GPM plus the time-lag flags (``kafka_consumergroup_group_lag_seconds`` only)."""
C: Final = LabelSet("C", ("cluster_name",))
NO_LABELS: Final = LabelSet("none", ())

ALL_GRANULARITIES: Final[tuple[Granularity, ...]] = ("partition", "topic")
PARTITION_ONLY: Final[tuple[Granularity, ...]] = ("partition",)


@dataclass(frozen=True, slots=True)
class JsonlField:
    """Where the JSON-lines records (klag_pipeline/records.py, docs/jsonl.md) carry the same
    value: the record ``type`` and its key."""

    record: Literal["partition", "group", "cycle"]
    key: str


@dataclass(frozen=True, slots=True)
class Family:
    """One exported family.

    ``name`` is the name as docs/metrics.md writes it (counters with ``_total``; prometheus_client
    strips that suffix from the family name itself). ``unit`` is documentation only: text format
    0.0.4 has no unit line and the OTLP instruments have always been created without one, so
    neither sink emits it (adding it would change series receivers already store). ``field`` is
    the attribute of the ``source`` object holding the value (empty where no snapshot feeds it).
    Every family whose label set has ``cluster_name`` also carries the cluster's custom labels.
    """

    name: str
    kind: Kind
    help: str
    labels: LabelSet
    unit: str
    source: Source
    field: str = ""
    granularities: tuple[Granularity, ...] = ALL_GRANULARITIES
    needs_sampling: bool = False
    """Absent from snapshots taken without timestamp sampling."""
    jsonl: JsonlField | None = None


def _row(name: str, help_: str, unit: str, field: str, jsonl_key: str) -> Family:
    return Family(
        name,
        "gauge",
        help_,
        GPM,
        unit,
        "row",
        field,
        PARTITION_ONLY,
        jsonl=JsonlField("partition", jsonl_key),
    )


def _cluster(name: str, help_: str, unit: str, field: str, jsonl_key: str) -> Family:
    jsonl = JsonlField("cycle", jsonl_key)
    return Family(name, "gauge", help_, C, unit, "cluster", field, jsonl=jsonl)


CLUSTER_FAMILIES: Final[tuple[Family, ...]] = (
    Family(
        "kafka_partition_latest_offset",
        "gauge",
        "Latest (high watermark) offset of a partition.",
        P,
        "{offset}",
        "partition",
        "high",
        jsonl=JsonlField("partition", "latest_offset"),
    ),
    Family(
        "kafka_partition_earliest_offset",
        "gauge",
        "Earliest (low watermark) offset of a partition.",
        P,
        "{offset}",
        "partition",
        "low",
        jsonl=JsonlField("partition", "earliest_offset"),
    ),
    _row(
        "kafka_consumergroup_group_offset",
        "Committed offset of a consumer group partition.",
        "{offset}",
        "committed",
        "committed_offset",
    ),
    _row(
        "kafka_consumergroup_group_lag",
        "Offset lag max(high watermark - committed, 0).",
        "{record}",
        "lag",
        "lag",
    ),
    _row(
        "kafka_consumergroup_group_consumable_lag",
        "Records the group can still consume where that differs from the offset lag: 0 when "
        "only transaction markers (or aborted records under read_committed) remain.",
        "{record}",
        "consumable_lag",
        "consumable_lag",
    ),
    Family(
        "kafka_consumergroup_group_lag_seconds",
        "gauge",
        "Age in seconds of the record at the committed offset (0 when there is no lag).",
        GPM_FLAGS,
        "s",
        "row",
        "lag_seconds",
        PARTITION_ONLY,
        needs_sampling=True,
        jsonl=JsonlField("partition", "lag_seconds"),
    ),
    _row(
        "kafka_consumergroup_group_messages_lost",
        "Messages deleted by retention before the group read them, max(low - committed, 0).",
        "{record}",
        "messages_lost",
        "messages_lost",
    ),
    _row(
        "kafka_consumergroup_group_retention_margin",
        "Committed offset minus low watermark; negative means data loss.",
        "{record}",
        "retention_margin",
        "retention_margin",
    ),
    _row(
        "kafka_consumergroup_group_lag_retention_ratio",
        "Lag as a percentage of the retained window (above 100 means data loss).",
        "%",
        "lag_retention_ratio",
        "lag_retention_ratio",
    ),
    Family(
        "kafka_consumergroup_group_max_lag",
        "gauge",
        "Maximum partition offset lag of a consumer group.",
        G,
        "{record}",
        "group",
        "max_lag",
        jsonl=JsonlField("group", "max_lag"),
    ),
    Family(
        "kafka_consumergroup_group_max_lag_seconds",
        "gauge",
        "Maximum partition time lag in seconds of a consumer group.",
        G,
        "s",
        "group",
        "max_lag_seconds",
        needs_sampling=True,
        jsonl=JsonlField("group", "max_lag_seconds"),
    ),
    Family(
        "kafka_consumergroup_group_sum_lag",
        "gauge",
        "Sum of partition offset lag of a consumer group.",
        G,
        "{record}",
        "group",
        "sum_lag",
        jsonl=JsonlField("group", "sum_lag"),
    ),
    Family(
        "kafka_consumergroup_group_topic_sum_lag",
        "gauge",
        "Sum of partition offset lag of a consumer group per topic.",
        GT,
        "{record}",
        "group",
        "topic_sum_lag",  # a mapping topic → lag: one series per topic
        jsonl=JsonlField("group", "topic_sum_lag"),
    ),
    Family(
        "kafka_consumergroup_group_state",
        "gauge",
        "Group state: 0 Unknown, 1 PreparingRebalance, 2 CompletingRebalance, 3 Stable, "
        "4 Dead, 5 Empty, 6 Assigning, 7 Reconciling.",
        G,
        "1",
        "group",
        "state",
        jsonl=JsonlField("group", "group_state_code"),
    ),
    _cluster(
        "kafka_consumergroup_poll_time_ms",
        "Time spent in broker calls in the last cycle, in ms.",
        "ms",
        "poll_time_ms",
        "poll_time_ms",
    ),
    _cluster(
        "kafka_lag_exporter_scrape_duration_seconds",
        "Duration of the last collection cycle.",
        "s",
        "duration_seconds",
        "duration_seconds",
    ),
    _cluster(
        "kafka_lag_exporter_last_update_timestamp_seconds",
        "Unix time of the last successful collection cycle.",
        "s",
        "observed_at",
        "timestamp",
    ),
    # The two `_total` names are current counts kept for klag-exporter compatibility, so gauges.
    _cluster(
        "kafka_lag_exporter_compaction_detected_total",
        "Group partitions whose committed record was removed by compaction (current count).",
        "{row}",
        "compaction_detected_count",
        "compaction_detected_count",
    ),
    _cluster(
        "kafka_lag_exporter_data_loss_partitions_total",
        "Group partitions whose committed offset is below the low watermark (current count).",
        "{row}",
        "data_loss_partition_count",
        "data_loss_partition_count",
    ),
)
"""The compatibility families read from cluster snapshots, in exposition order."""


def _consumer(
    name: str,
    help_: str,
    labels: LabelSet,
    unit: str,
    source: Source,
    field: str,
    jsonl: JsonlField,
    kind: Kind = "gauge",
) -> Family:
    granularities = PARTITION_ONLY if labels == GPM else ALL_GRANULARITIES
    return Family(name, kind, help_, labels, unit, source, field, granularities, jsonl=jsonl)


_RATE_WINDOW = "over the [exporter.health] window"
CONSUMER_FAMILIES: Final[tuple[Family, ...]] = (
    _consumer(
        "kafka_consumergroup_group_consume_rate",
        f"Committed offsets per second of a consumer group partition, {_RATE_WINDOW}.",
        GPM,
        "{record}/s",
        "partition_health",
        "rates.consume",
        JsonlField("partition", "consume_rate"),
    ),
    _consumer(
        "kafka_consumergroup_group_lag_velocity",
        f"Change of offset lag per second of a consumer group partition, {_RATE_WINDOW}; "
        "positive means falling behind.",
        GPM,
        "{record}/s",
        "partition_health",
        "rates.lag_velocity",
        JsonlField("partition", "lag_velocity"),
    ),
    _consumer(
        "kafka_consumergroup_group_catch_up_seconds",
        "Catch-up time: seconds until the partition has no lag at current consume and produce "
        "rates, +Inf when never at these rates (not the time lag, which is the age of the next "
        "record).",
        GPM,
        "s",
        "partition_health",
        "catch_up_seconds",
        JsonlField("partition", "catch_up_seconds"),
    ),
    _consumer(
        "kafka_consumergroup_group_partition_status",
        "Consumer status of a group partition: -1 Unknown, 0 OK, 1 Lagging, 2 Rewound, "
        "3 Stalled, 4 Stopped.",
        GPM,
        "1",
        "partition_health",
        "status",
        JsonlField("partition", "status_code"),
    ),
    _consumer(
        "kafka_consumergroup_group_estimated_lag_seconds",
        "Time lag (age of the record at the committed offset) estimated from the partition's "
        "high-watermark history; only where it is estimated instead of read.",
        GPM,
        "s",
        "partition_health",
        "estimated_lag_seconds",
        JsonlField("partition", "estimated_lag_seconds"),
    ),
    _consumer(
        "kafka_partition_produce_rate",
        f"High watermark advance per second of a partition, {_RATE_WINDOW}.",
        P,
        "{record}/s",
        "produce_rate",
        "",
        JsonlField("partition", "produce_rate"),
    ),
    _consumer(
        "kafka_consumergroup_group_topic_sum_consume_rate",
        f"Committed offsets per second of a consumer group per topic, {_RATE_WINDOW}.",
        GT,
        "{record}/s",
        "topic_health",
        "consume_rate",
        JsonlField("group", "topic_sum_consume_rate"),
    ),
    _consumer(
        "kafka_consumergroup_group_topic_sum_lag_velocity",
        f"Change of offset lag per second of a consumer group per topic, {_RATE_WINDOW}; "
        "positive means falling behind.",
        GT,
        "{record}/s",
        "topic_health",
        "lag_velocity",
        JsonlField("group", "topic_sum_lag_velocity"),
    ),
    _consumer(
        "kafka_consumergroup_group_topic_commit_age_seconds",
        "Seconds since the group's committed offset last moved on any partition of the topic "
        "(measured since the exporter first saw it).",
        GT,
        "s",
        "topic_health",
        "commit_age_seconds",
        JsonlField("group", "topic_commit_age_seconds"),
    ),
    _consumer(
        "kafka_consumergroup_group_topic_abandoned",
        "1 when the group has members but none is assigned the topic and its commits on it are "
        "older than abandoned_after, else 0.",
        GT,
        "1",
        "topic_health",
        "abandoned",
        JsonlField("group", "abandoned_topics"),
    ),
    _consumer(
        "kafka_consumergroup_group_status",
        "Consumer status of a group (its most severe partition status, or Lagging above a "
        "threshold): -1 Unknown, 0 OK, 1 Lagging, 2 Rewound, 3 Stalled, 4 Stopped.",
        G,
        "1",
        "group_health",
        "status",
        JsonlField("group", "status_code"),
    ),
    _consumer(
        "kafka_consumergroup_group_sum_consume_rate",
        f"Committed offsets per second of a consumer group, {_RATE_WINDOW}.",
        G,
        "{record}/s",
        "group_health",
        "consume_rate",
        JsonlField("group", "consume_rate"),
    ),
    _consumer(
        "kafka_consumergroup_group_sum_lag_velocity",
        f"Change of offset lag per second of a consumer group, {_RATE_WINDOW}; positive means "
        "falling behind.",
        G,
        "{record}/s",
        "group_health",
        "lag_velocity",
        JsonlField("group", "lag_velocity"),
    ),
    _consumer(
        "kafka_consumergroup_group_max_catch_up_seconds",
        "Maximum partition catch-up time of a consumer group in seconds at current rates, +Inf "
        "when some partition never catches up (not the time lag).",
        G,
        "s",
        "group_health",
        "max_catch_up_seconds",
        JsonlField("group", "max_catch_up_seconds"),
    ),
    _consumer(
        "kafka_consumergroup_group_last_rebalance_timestamp_seconds",
        "Unix time of the last rebalance of a consumer group the exporter observed.",
        G,
        "s",
        "group_health",
        "last_rebalance_at",
        JsonlField("group", "last_rebalance_at"),
    ),
    # Last on purpose: the only counter rendered from snapshots, and its `# TYPE` line differs
    # between text 0.0.4 and OpenMetrics, so the Prometheus sink appends it after the body both
    # formats share (sinks/prometheus/sink.py).
    _consumer(
        "kafka_consumergroup_group_rebalances_total",
        "Rebalances of a consumer group observed since the exporter started (transitions into a "
        "rebalancing state).",
        G,
        "1",
        "group_health",
        "rebalances",
        JsonlField("group", "rebalances"),
        kind="counter",
    ),
)
"""The consumer health families (issue 14, docs/health.md), read from ``ClusterSnapshot.health``
and exported only when it is not None, after the compatibility families. A series whose value
is None (unknown) is absent, like ``kafka_consumergroup_group_lag_seconds``'s."""

UP: Final = Family(
    "kafka_lag_exporter_up",
    "gauge",
    "1 when every cluster has fresh data (within staleness_threshold), else 0.",
    NO_LABELS,
    "1",
    "status",
)
CLUSTER_UP: Final = Family(
    "klag_pipeline_cluster_up",
    "gauge",
    "1 when this cluster's last successful cycle is within staleness_threshold, else 0 "
    "(also 0 before the first one).",
    C,
    "1",
    "status",
)
HEALTH_FAMILIES: Final[tuple[Family, ...]] = (UP, CLUSTER_UP)
"""Computed from the exporter's status at scrape/export time, after the cluster families."""


def _self(name: str, kind: Kind, help_: str, labels: tuple[str, ...], unit: str = "1") -> Family:
    return Family(name, kind, help_, LabelSet("", labels), unit, "self")


STAGE_ERRORS: Final = _self(
    "klag_pipeline_stage_errors_total",
    "counter",
    "Collection cycles that failed in a stage, by cluster and stage.",
    ("cluster_name", "stage"),
)
CYCLES: Final = _self(
    "klag_pipeline_cycles_total",
    "counter",
    "Finished collection cycles by cluster and outcome (ok, error).",
    ("cluster_name", "outcome"),
)
PARTIAL_FAILURES: Final = _self(
    "klag_pipeline_partial_failures_total",
    "counter",
    "Groups, partitions or brokers skipped inside otherwise successful cycles.",
    ("cluster_name", "stage"),
)
TICKS_SKIPPED: Final = _self(
    "klag_pipeline_ticks_skipped_total",
    "counter",
    "Ticks skipped because the previous cycle was still running.",
    ("cluster_name",),
)
SINK_DROPPED: Final = _self(
    "klag_pipeline_sink_dropped_snapshots_total",
    "counter",
    "Snapshots dropped from a full sink inbox (the oldest one goes).",
    ("sink",),
)
SINK_ERRORS: Final = _self(
    "klag_pipeline_sink_errors_total",
    "counter",
    "Failed deliveries or writes in a sink.",
    ("sink",),
)
CACHE_HITS: Final = _self(
    "klag_pipeline_timestamp_cache_hits_total",
    "counter",
    "Timestamp lookups answered from the (cluster, partition, offset) cache.",
    (),
)
CACHE_MISSES: Final = _self(
    "klag_pipeline_timestamp_cache_misses_total",
    "counter",
    "Timestamp lookups that had to fetch from a broker.",
    (),
)
KAFKA_REQUESTS: Final = _self(
    "klag_pipeline_kafka_requests_total",
    "counter",
    "Kafka requests sent, by cluster, API, broker node id and outcome.",
    ("cluster_name", "api", "broker", "outcome"),
)
KAFKA_REQUEST_DURATION: Final = _self(
    "klag_pipeline_kafka_request_duration_seconds",
    "histogram",
    "Round-trip time of Kafka requests, by API.",
    ("api",),
    "s",
)
KAFKA_THROTTLED: Final = _self(
    "klag_pipeline_kafka_throttled_responses_total",
    "counter",
    "Kafka responses that asked the client to back off (throttle_time_ms > 0).",
    ("cluster_name", "api", "broker"),
)
KAFKA_THROTTLE_SECONDS: Final = _self(
    "klag_pipeline_kafka_throttle_seconds_total",
    "counter",
    "Total back-off time requested by brokers through throttle_time_ms.",
    ("cluster_name", "api", "broker"),
    "s",
)
CARRIED_ROWS: Final = _self(
    "klag_pipeline_carried_rows",
    "gauge",
    "Group partition rows repeated from an earlier cycle because the last cycle got no "
    "trustworthy answer for them (coordinator loading or moving, leader moving).",
    ("cluster_name",),
)
CARRIED_GROUPS: Final = _self(
    "klag_pipeline_carried_groups",
    "gauge",
    "Groups whose values were repeated from an earlier cycle (no trustworthy answer).",
    ("cluster_name",),
)
TIME_LAG_DENIED_TOPICS: Final = _self(
    "klag_pipeline_time_lag_denied_topics",
    "gauge",
    "Topics whose records the last cycle could not read for time lag because the broker "
    "answered Fetch with TOPIC_AUTHORIZATION_FAILED (the principal lacks Read on the topic).",
    ("cluster_name",),
)
QUEUE_DEPTH: Final = _self(
    "klag_pipeline_queue_depth",
    "gauge",
    "Items currently buffered in an inter-stage channel or sink inbox.",
    ("queue",),
)
LEADER: Final = _self(
    "klag_pipeline_leader",
    "gauge",
    "1 while this instance leads (collects and exports cluster series), else 0.",
    ("provider",),
)
LEADERSHIP_TRANSITIONS: Final = _self(
    "klag_pipeline_leadership_transitions_total",
    "counter",
    "Leadership changes of this instance, by the role it moved to (leader, standby).",
    ("provider", "role"),
)
LEADERSHIP_ERRORS: Final = _self(
    "klag_pipeline_leadership_errors_total",
    "counter",
    "Election rounds that failed to reach the coordination backend.",
    ("provider",),
)
SHARD_BUCKETS: Final = _self(
    "klag_pipeline_shard_buckets",
    "gauge",
    "Buckets of the cluster this replica owns in sharded mode (0: none).",
    ("cluster_name",),
)
SHARD_GROUPS: Final = _self(
    "klag_pipeline_shard_groups",
    "gauge",
    "Consumer groups of the cluster this replica exported in its last published snapshot.",
    ("cluster_name",),
)
SHARD_ROWS: Final = _self(
    "klag_pipeline_shard_rows",
    "gauge",
    "Group partitions of the cluster this replica exported in its last published snapshot.",
    ("cluster_name",),
)
SHARD_MEMBERS: Final = _self(
    "klag_pipeline_shard_members",
    "gauge",
    "Members of the sharding group in this replica's generation (0: not assigned).",
    (),
)
SHARD_REBALANCES: Final = _self(
    "klag_pipeline_shard_rebalances_total",
    "counter",
    "Assignments this replica received from the sharding group's leader.",
    (),
)
SELF_METRICS: Final[tuple[Family, ...]] = (
    CYCLES,
    STAGE_ERRORS,
    PARTIAL_FAILURES,
    TICKS_SKIPPED,
    CARRIED_ROWS,
    CARRIED_GROUPS,
    TIME_LAG_DENIED_TOPICS,
    SINK_DROPPED,
    SINK_ERRORS,
    QUEUE_DEPTH,
    CACHE_HITS,
    CACHE_MISSES,
    KAFKA_REQUESTS,
    KAFKA_REQUEST_DURATION,
    KAFKA_THROTTLED,
    KAFKA_THROTTLE_SECONDS,
    LEADER,
    LEADERSHIP_TRANSITIONS,
    LEADERSHIP_ERRORS,
    SHARD_BUCKETS,
    SHARD_GROUPS,
    SHARD_ROWS,
    SHARD_MEMBERS,
    SHARD_REBALANCES,
)
"""The exporter's own metrics, in docs/metrics.md's order (prometheus_client registers and renders
them in telemetry/self_metrics.py's order)."""

FAMILIES: Final[tuple[Family, ...]] = (
    *CLUSTER_FAMILIES,
    *CONSUMER_FAMILIES,
    *HEALTH_FAMILIES,
    *SELF_METRICS,
)
BY_NAME: Final[Mapping[str, Family]] = MappingProxyType({f.name: f for f in FAMILIES})
