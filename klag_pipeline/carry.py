"""Keep a group's last good values while the cluster's answer about it cannot be trusted.

A cycle can succeed while part of it got no trustworthy answer: a coordinator still loading its
groups after a broker resumed, a coordinator or partition leader moving, a request that timed
out. Dropping those rows would make their series vanish (and group aggregates read 0) exactly
during the incident an operator is looking at. Instead the rows of the previous snapshot are kept
— marked ``carried`` and counted — until a trustworthy answer arrives, and for at most
``max_age`` seconds (the staleness threshold) after they were last read. Confirmed disappearances
are not carried: a group its coordinator says is gone, a commit the group's OffsetFetch answer no
longer contains, a topic the cluster no longer knows.

Pure: no I/O, no asyncio; a function of the previous state and one finished cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from klag_pipeline import lag
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionOffsets, PartitionRow

RowKey = tuple[str, TopicPartition]


@dataclass(frozen=True, slots=True)
class CarryState:
    """The last good value of every row, group and partition, with when it was read."""

    rows: Mapping[RowKey, tuple[PartitionRow, float]]
    groups: Mapping[str, tuple[GroupSummary, float]]
    partitions: Mapping[TopicPartition, tuple[PartitionOffsets, float]]


EMPTY = CarryState(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Unanswered:
    """What this cycle could not read: whole groups, and partitions whose watermarks failed."""

    groups: frozenset[str]
    partitions: frozenset[TopicPartition]
    committed: Mapping[str, Mapping[TopicPartition, int]]
    """This cycle's committed offsets: a row whose group answered without the partition is a
    commit that is gone, not an unanswered one."""


def carry_over(
    snapshot: ClusterSnapshot, state: CarryState, unanswered: Unanswered, *, max_age: float
) -> tuple[ClusterSnapshot, CarryState]:
    """``snapshot`` with the rows, groups and partitions this cycle could not read filled in from
    ``state`` (while younger than ``max_age``), and the state for the next cycle."""
    now = snapshot.observed_at
    rows: dict[RowKey, tuple[PartitionRow, float]] = {
        (row.group, row.topic_partition): (row, now) for row in snapshot.rows
    }
    carried_rows: list[PartitionRow] = []
    for key, (row, read_at) in state.rows.items():
        if key in rows or now - read_at > max_age:
            continue
        group, tp = key
        whole_group = group in unanswered.groups
        partition_only = tp in unanswered.partitions and tp in unanswered.committed.get(group, {})
        if whole_group or partition_only:
            carried_rows.append(dataclasses.replace(row, carried=True))
            rows[key] = (row, read_at)

    partitions: dict[TopicPartition, tuple[PartitionOffsets, float]] = {
        TopicPartition(po.topic, po.partition): (po, now) for po in snapshot.partitions
    }
    carried_partitions = []
    for tp, (po, read_at) in state.partitions.items():
        if tp not in partitions and tp in unanswered.partitions and now - read_at <= max_age:
            carried_partitions.append(po)
            partitions[tp] = (po, read_at)

    carried_by_group: dict[str, list[PartitionRow]] = {}
    for row in carried_rows:
        carried_by_group.setdefault(row.group, []).append(row)
    fresh_rows_by_group: dict[str, list[PartitionRow]] = {}
    for row in snapshot.rows:
        fresh_rows_by_group.setdefault(row.group, []).append(row)

    groups: dict[str, tuple[GroupSummary, float]] = {}
    summaries: list[GroupSummary] = []
    for summary in snapshot.groups:
        extra = carried_by_group.pop(summary.group, None)
        if extra:
            # Aggregates over every row the group shows, carried ones included: a partition
            # whose watermarks failed must not make the group's lag read lower.
            shown = [*fresh_rows_by_group.get(summary.group, ()), *extra]
            summary = _with_rows(summary, shown, snapshot.timestamp_sampling)
        summaries.append(summary)
        groups[summary.group] = (summary, now)
    for group, (summary, read_at) in state.groups.items():
        if group in groups or group not in unanswered.groups or now - read_at > max_age:
            continue
        summaries.append(summary)
        groups[group] = (summary, read_at)
        carried_by_group.pop(group, None)
    # Carried rows of a group without any summary this cycle (its summary was older): keep the
    # rows, and give the group the aggregates of what it shows.
    for group, extra in carried_by_group.items():
        summaries.append(_orphan_summary(group, extra, snapshot.timestamp_sampling))

    if not carried_rows and not carried_partitions and len(summaries) == len(snapshot.groups):
        return snapshot, CarryState(
            MappingProxyType(rows), MappingProxyType(groups), MappingProxyType(partitions)
        )
    all_rows = _sorted_rows([*snapshot.rows, *carried_rows])
    result = dataclasses.replace(
        snapshot,
        rows=all_rows,
        groups=tuple(sorted(summaries, key=lambda s: s.group)),
        partitions=tuple(
            sorted(
                [*snapshot.partitions, *carried_partitions], key=lambda p: (p.topic, p.partition)
            )
        ),
        compaction_detected_count=sum(1 for row in all_rows if row.compaction_detected),
        data_loss_partition_count=sum(1 for row in all_rows if row.data_loss_detected),
        carried_rows=len(carried_rows),
        carried_groups=len(summaries) - len(snapshot.groups),
    )
    return result, CarryState(
        MappingProxyType(rows), MappingProxyType(groups), MappingProxyType(partitions)
    )


def _sorted_rows(rows: Iterable[PartitionRow]) -> tuple[PartitionRow, ...]:
    return tuple(sorted(rows, key=lambda r: (r.group, r.topic, r.partition)))


def _with_rows(summary: GroupSummary, rows: list[PartitionRow], sampling: bool) -> GroupSummary:
    topic_sum: dict[str, int] = {}
    for row in rows:
        topic_sum[row.topic] = topic_sum.get(row.topic, 0) + row.lag
    return dataclasses.replace(
        summary,
        max_lag=max((row.lag for row in rows), default=0),
        max_lag_seconds=lag.max_lag_seconds(rows, sampling=sampling),
        sum_lag=sum(row.lag for row in rows),
        topic_sum_lag=MappingProxyType(dict(sorted(topic_sum.items()))),
    )


def _orphan_summary(group: str, rows: list[PartitionRow], sampling: bool) -> GroupSummary:
    unknown = GroupSummary(
        group=group,
        state=GroupState.UNKNOWN,
        protocol_type="",
        group_type="",
        member_count=0,
        max_lag=0,
        max_lag_seconds=None,
        sum_lag=0,
        topic_sum_lag=MappingProxyType({}),
    )
    return _with_rows(unknown, rows, sampling)
