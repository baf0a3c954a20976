"""Flat, JSON-able records of a snapshot: the schema of the JSON-lines sink and `once --format
json|jsonl`. Keys are stable snake_case; see docs/jsonl.md, which also says when
:data:`SCHEMA_VERSION` changes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from klag_pipeline.health.model import GroupTopicHealth, PartitionHealth
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionRow

SCHEMA_VERSION: Final = 2
"""Carried by every record as ``schema_version``. 1 was the unversioned schema before the
consumer health keys and the ``group`` lines (issue 14)."""


def rfc3339(unix_seconds: float) -> str:
    return (
        datetime.fromtimestamp(unix_seconds, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _finite(value: float | None) -> float | str | None:
    """JSON has no Infinity: +Inf ratios are written as the string "+Inf"."""
    if value is None or math.isfinite(value):
        return value
    return "+Inf" if value > 0 else "-Inf"


def _at(unix_seconds: float | None) -> str | None:
    return None if unix_seconds is None else rfc3339(unix_seconds)


def row_record(
    snapshot: ClusterSnapshot, row: PartitionRow, group: GroupSummary | None
) -> dict[str, Any]:
    health = snapshot.health
    evaluated: PartitionHealth | None = None
    produce_rate: float | None = None
    if health is not None:
        evaluated = health.partitions.get((row.group, row.topic_partition))
        produce_rate = health.produce_rates.get(row.topic_partition)
    record: dict[str, Any] = {
        "type": "partition",
        "schema_version": SCHEMA_VERSION,
        "timestamp": rfc3339(snapshot.observed_at),
        "cycle": snapshot.cycle,
        "cluster_name": snapshot.cluster,
        "group": row.group,
        "group_state": group.state.name.lower() if group else "unknown",
        "group_state_code": int(group.state) if group else 0,
        "topic": row.topic,
        "partition": row.partition,
        "member_host": row.member_host,
        "consumer_id": row.consumer_id,
        "client_id": row.client_id,
        "committed_offset": row.committed,
        "earliest_offset": row.low,
        "latest_offset": row.high,
        "lag": row.lag,
        "lag_seconds": row.lag_seconds,
        "compaction_detected": row.compaction_detected,
        "data_loss_detected": row.data_loss_detected,
        "messages_lost": row.messages_lost,
        "retention_margin": row.retention_margin,
        "lag_retention_ratio": _finite(row.lag_retention_ratio),
        "consumable_lag": row.consumable_lag,
        "carried_over": row.carried,
        "produce_rate": produce_rate,
        **_partition_health(evaluated),
    }
    if snapshot.labels:
        record["labels"] = dict(snapshot.labels)
    return record


_PARTITION_HEALTH_KEYS: Final = (
    "consume_rate",
    "lag_velocity",
    "catch_up_seconds",
    "status",
    "status_code",
    "status_reason",
    "estimated_lag_seconds",
)
_GROUP_HEALTH_KEYS: Final = (
    "status",
    "status_code",
    "status_reason",
    "consume_rate",
    "lag_velocity",
    "max_catch_up_seconds",
    "rebalances",
    "last_rebalance_at",
    "topic_sum_consume_rate",
    "topic_sum_lag_velocity",
    "topic_commit_age_seconds",
    "abandoned_topics",
)


def _partition_health(evaluated: PartitionHealth | None) -> dict[str, Any]:
    """The consumer health keys of a partition record: all null without an evaluation."""
    if evaluated is None:
        return dict.fromkeys(_PARTITION_HEALTH_KEYS)
    values = (
        evaluated.rates.consume,
        evaluated.rates.lag_velocity,
        _finite(evaluated.catch_up_seconds),
        evaluated.status.name.lower(),
        int(evaluated.status),
        evaluated.reason,
        evaluated.estimated_lag_seconds,
    )
    return dict(zip(_PARTITION_HEALTH_KEYS, values, strict=True))


def topic_health_by_group(
    snapshot: ClusterSnapshot,
) -> Mapping[str, Mapping[str, GroupTopicHealth]]:
    """group → topic → its evaluation (abandoned topics dropped from the rows included)."""
    by_group: dict[str, dict[str, GroupTopicHealth]] = {}
    if snapshot.health is not None:
        for (group, topic), evaluated in sorted(snapshot.health.topics.items()):
            by_group.setdefault(group, {})[topic] = evaluated
    return by_group


def _group_health(
    snapshot: ClusterSnapshot, group: str, topics: Mapping[str, GroupTopicHealth]
) -> dict[str, Any]:
    evaluated = snapshot.health.groups.get(group) if snapshot.health is not None else None
    if evaluated is None:
        return dict.fromkeys(_GROUP_HEALTH_KEYS)
    values = (
        evaluated.status.name.lower(),
        int(evaluated.status),
        evaluated.reason,
        evaluated.consume_rate,
        evaluated.lag_velocity,
        _finite(evaluated.max_catch_up_seconds),
        evaluated.rebalances,
        _at(evaluated.last_rebalance_at),
        {t: h.consume_rate for t, h in topics.items()},
        {t: h.lag_velocity for t, h in topics.items()},
        {t: h.commit_age_seconds for t, h in topics.items()},
        [t for t, h in topics.items() if h.abandoned],
    )
    return dict(zip(_GROUP_HEALTH_KEYS, values, strict=True))


def group_record(
    snapshot: ClusterSnapshot, group: GroupSummary, topics: Mapping[str, GroupTopicHealth]
) -> dict[str, Any]:
    """``topics``: the group's entry of :func:`topic_health_by_group` (built once for all
    groups by :func:`group_records`)."""
    record: dict[str, Any] = {
        "type": "group",
        "schema_version": SCHEMA_VERSION,
        "timestamp": rfc3339(snapshot.observed_at),
        "cycle": snapshot.cycle,
        "cluster_name": snapshot.cluster,
        "group": group.group,
        "group_state": group.state.name.lower(),
        "group_state_code": int(group.state),
        "protocol_type": group.protocol_type,
        "group_type": group.group_type,
        "member_count": group.member_count,
        "max_lag": group.max_lag,
        "max_lag_seconds": group.max_lag_seconds,
        "sum_lag": group.sum_lag,
        "topic_sum_lag": dict(group.topic_sum_lag),
        **_group_health(snapshot, group.group, topics),
    }
    if snapshot.labels:
        record["labels"] = dict(snapshot.labels)
    return record


def cycle_record(snapshot: ClusterSnapshot) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "cycle",
        "schema_version": SCHEMA_VERSION,
        "timestamp": rfc3339(snapshot.observed_at),
        "cycle": snapshot.cycle,
        "cluster_name": snapshot.cluster,
        "started_at": rfc3339(snapshot.started_at),
        "duration_seconds": round(snapshot.duration_seconds, 6),
        "poll_time_ms": round(snapshot.poll_time_ms, 3),
        "group_count": len(snapshot.groups),
        "partition_count": len(snapshot.partitions),
        "row_count": len(snapshot.rows),
        "lagging_row_count": sum(1 for r in snapshot.rows if r.lag > 0),
        "compaction_detected_count": snapshot.compaction_detected_count,
        "data_loss_partition_count": snapshot.data_loss_partition_count,
        "error_count": snapshot.error_count,
        "timestamp_sampling": snapshot.timestamp_sampling,
    }
    if snapshot.labels:
        record["labels"] = dict(snapshot.labels)
    return record


def partition_records(
    snapshot: ClusterSnapshot, *, only_lagging: bool = False
) -> list[dict[str, Any]]:
    groups = {g.group: g for g in snapshot.groups}
    return [
        row_record(snapshot, row, groups.get(row.group))
        for row in snapshot.rows
        if not only_lagging or row.lag > 0
    ]


def group_records(snapshot: ClusterSnapshot) -> list[dict[str, Any]]:
    topics = topic_health_by_group(snapshot)
    return [group_record(snapshot, g, topics.get(g.group, {})) for g in snapshot.groups]


def snapshot_records(
    snapshot: ClusterSnapshot, *, only_lagging: bool = False
) -> list[dict[str, Any]]:
    """One cycle's JSON lines: its partition records, its group records, then the cycle
    summary (the JSON-lines sink and ``once --format jsonl``)."""
    return [
        *partition_records(snapshot, only_lagging=only_lagging),
        *group_records(snapshot),
        cycle_record(snapshot),
    ]
