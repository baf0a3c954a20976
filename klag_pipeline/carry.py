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
from klag_pipeline.snapshot import (
    ClusterSnapshot,
    GroupSummary,
    PartitionOffsets,
    PartitionRow,
    flagged_counts,
)

RowKey = tuple[str, TopicPartition]


@dataclass(frozen=True, slots=True)
class CarryState:
    """The last published snapshot, and when its repeated values were really read.

    A value that was read in that cycle was read at ``previous.observed_at``; only the carried
    ones need their own time. Keeping the snapshot itself (not a copy of its rows) makes a cycle
    that read everything cost nothing here."""

    previous: ClusterSnapshot | None
    rows_read_at: Mapping[RowKey, float]
    groups_read_at: Mapping[str, float]
    partitions_read_at: Mapping[TopicPartition, float]


EMPTY = CarryState(None, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


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
    previous = state.previous
    if previous is None or not (unanswered.groups or unanswered.partitions):
        return snapshot, CarryState(snapshot, *(MappingProxyType({}),) * 3)
    now, then = snapshot.observed_at, previous.observed_at

    fresh = {(row.group, row.topic, row.partition) for row in snapshot.rows}
    carried_rows: list[PartitionRow] = []
    rows_read_at: dict[RowKey, float] = {}
    for row in previous.rows:
        if (row.group, row.topic, row.partition) in fresh:
            continue
        tp = row.topic_partition
        read_at = state.rows_read_at.get((row.group, tp), then) if row.carried else then
        if now - read_at > max_age:
            continue
        partition_only = tp in unanswered.partitions and tp in unanswered.committed.get(
            row.group, {}
        )
        if row.group in unanswered.groups or partition_only:
            carried_rows.append(row if row.carried else row._replace(carried=True))
            rows_read_at[(row.group, tp)] = read_at

    shown = {(po.topic, po.partition) for po in snapshot.partitions}
    carried_partitions: list[PartitionOffsets] = []
    partitions_read_at: dict[TopicPartition, float] = {}
    for po in previous.partitions:
        tp = TopicPartition(po.topic, po.partition)
        read_at = state.partitions_read_at.get(tp, then)
        unread = (po.topic, po.partition) not in shown and tp in unanswered.partitions
        if unread and now - read_at <= max_age:
            carried_partitions.append(po)
            partitions_read_at[tp] = read_at

    carried_by_group: dict[str, list[PartitionRow]] = {}
    for row in carried_rows:
        carried_by_group.setdefault(row.group, []).append(row)
    fresh_rows_by_group: dict[str, list[PartitionRow]] = {}
    for row in snapshot.rows:
        if row.group in carried_by_group:
            fresh_rows_by_group.setdefault(row.group, []).append(row)

    summaries: list[GroupSummary] = []
    for summary in snapshot.groups:
        extra = carried_by_group.pop(summary.group, None)
        if extra:
            # Aggregates over every row the group shows, carried ones included: a partition
            # whose watermarks failed must not make the group's lag read lower.
            rows = [*fresh_rows_by_group.get(summary.group, ()), *extra]
            summary = _with_rows(summary, rows, snapshot.timestamp_sampling)
        summaries.append(summary)
    summarised = {summary.group for summary in snapshot.groups}
    groups_read_at: dict[str, float] = {}
    for summary in previous.groups:
        if summary.group in summarised or summary.group not in unanswered.groups:
            continue
        read_at = state.groups_read_at.get(summary.group, then)
        if now - read_at > max_age:
            continue
        summaries.append(summary)
        groups_read_at[summary.group] = read_at
        carried_by_group.pop(summary.group, None)
    # Carried rows of a group without any summary this cycle (its summary was older): keep the
    # rows, and give the group the aggregates of what it shows.
    for group, extra in carried_by_group.items():
        summaries.append(_orphan_summary(group, extra, snapshot.timestamp_sampling))
        groups_read_at[group] = min(rows_read_at[(group, r.topic_partition)] for r in extra)

    carried_groups = len(summaries) - len(snapshot.groups)
    next_state = CarryState(
        None,
        MappingProxyType(rows_read_at),
        MappingProxyType(groups_read_at),
        MappingProxyType(partitions_read_at),
    )
    if not carried_rows and not carried_partitions and not carried_groups:
        return snapshot, dataclasses.replace(next_state, previous=snapshot)
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
        **flagged_counts(all_rows),
        carried_rows=len(carried_rows),
        carried_groups=carried_groups,
    )
    return result, dataclasses.replace(next_state, previous=result)


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
