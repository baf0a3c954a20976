"""Flat, JSON-able records of a snapshot: the schema of the JSON-lines sink and `once --format
json|jsonl`. Keys are stable snake_case; see docs/jsonl.md."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionRow


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


def row_record(
    snapshot: ClusterSnapshot, row: PartitionRow, group: GroupSummary | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "partition",
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
    }
    if snapshot.labels:
        record["labels"] = dict(snapshot.labels)
    return record


def group_record(snapshot: ClusterSnapshot, group: GroupSummary) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "group",
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
    }
    if snapshot.labels:
        record["labels"] = dict(snapshot.labels)
    return record


def cycle_record(snapshot: ClusterSnapshot) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "cycle",
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
