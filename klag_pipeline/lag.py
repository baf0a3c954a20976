"""The pure calculations of SPEC §4–§5: lag, loss figures, time lag, flags and aggregates.

No I/O and no asyncio, aiokafka or aiohttp: everything here is a function of one finished cycle
(the :class:`~klag_pipeline.events.TimestampsSampled` event chain) and is tested directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

from klag_pipeline.events import TimestampsSampled
from klag_pipeline.model import (
    GroupDescription,
    GroupState,
    TimestampSample,
    TopicPartition,
    Watermarks,
)
from klag_pipeline.snapshot import (
    ClusterSnapshot,
    GroupSummary,
    PartitionOffsets,
    PartitionRow,
    flagged_counts,
)


def offset_lag(committed: int, high: int) -> int:
    """Messages the group still has to read: ``max(high − committed, 0)``.

    Watermarks are read after committed offsets, so ``high < committed`` should not happen; the
    clamp guarantees a negative lag is never exported even if it does.
    """
    return max(high - committed, 0)


class RetentionFigures(NamedTuple):
    """How a committed offset stands against the log start (SPEC §4). A named tuple: one is
    built per row per cycle (see :class:`~klag_pipeline.snapshot.PartitionRow`)."""

    messages_lost: int
    retention_margin: int
    lag_retention_ratio: float
    data_loss_detected: bool


def retention_figures(committed: int, low: int, high: int) -> RetentionFigures:
    """``messages_lost``, ``retention_margin``, ``lag_retention_ratio`` and the loss flag.

    The ratio is the share of the retained window (``high − low``) the group still has to read,
    in percent: 0 when nothing lags, +inf when the window is empty but the group lags (every
    message it wants is gone), above 100 once retention has overtaken the group. A window that
    reads as negative (low and high fetched a moment apart while the log moved) is treated as
    empty.
    """
    lag = offset_lag(committed, high)
    window = high - low
    if lag == 0:
        ratio = 0.0
    elif window <= 0:
        ratio = math.inf
    else:
        ratio = lag / window * 100.0
    return RetentionFigures(
        messages_lost=max(low - committed, 0),
        retention_margin=committed - low,
        lag_retention_ratio=ratio,
        data_loss_detected=committed < low,
    )


def time_lag(now: float, sample: TimestampSample) -> float:
    """Age in seconds of the record at the committed offset, clamped at 0 (producer clocks ahead
    of ours must not give a negative lag)."""
    return max(now - sample.timestamp_ms / 1000.0, 0.0)


def _owners(description: GroupDescription | None) -> Mapping[TopicPartition, tuple[str, str, str]]:
    """(member_host, consumer_id, client_id) of each assigned partition. Should two members
    claim a partition (mid-rebalance), the first listed wins, so the result is deterministic.

    The host is kept exactly as the broker reports it (``/10.0.0.1``): klag-exporter and
    kafka-lag-exporter emit that form, and dashboards and regexes written for them match on it."""
    if description is None:
        return {}
    owners: dict[TopicPartition, tuple[str, str, str]] = {}
    for member in description.members:
        labels = (member.client_host, member.member_id, member.client_id)
        for tp in member.assignment:
            owners.setdefault(tp, labels)
    return owners


_NO_OWNER = ("", "", "")


def _row(
    group: str,
    tp: TopicPartition,
    committed: int,
    marks: Watermarks,
    owner: tuple[str, str, str],
    *,
    sampling: bool,
    samples: Mapping[tuple[TopicPartition, int], TimestampSample],
    now: float,
    unconfirmed: frozenset[tuple[str, TopicPartition]] = frozenset(),
) -> PartitionRow:
    lag = offset_lag(committed, marks.high)
    if marks.low is None or marks.low > marks.high or (group, tp) in unconfirmed:
        # Unknown log start, or one that cannot be trusted (above the high watermark: the log
        # was truncated or re-created between the reads; or a committed offset below it that a
        # second read could not confirm): say nothing about loss (SPEC §11).
        messages_lost: int | None = None
        retention_margin: int | None = None
        ratio: float | None = None
        data_loss = False
    else:
        figures = retention_figures(committed, marks.low, marks.high)
        messages_lost = figures.messages_lost
        retention_margin = figures.retention_margin
        ratio = figures.lag_retention_ratio
        data_loss = figures.data_loss_detected
    lag_seconds: float | None = None
    compaction = False
    consumable: int | None = None
    if sampling:
        if lag == 0:
            lag_seconds = 0.0
        else:
            sample = samples.get((tp, committed))
            if sample is not None:
                if sample.end_of_log:
                    # Only transaction markers (or aborted records) left: caught up in time,
                    # though high − committed is not 0 (docs/time-lag.md).
                    lag_seconds = 0.0
                    consumable = 0
                else:
                    lag_seconds = time_lag(now, sample)
                # Compaction needs committed >= low (SPEC §5); with the log start unknown a
                # missing record may as well be retention, so neither flag is raised.
                compaction = sample.record_missing and marks.low is not None and not data_loss
    member_host, consumer_id, client_id = owner
    return PartitionRow(
        group=group,
        topic=tp.topic,
        partition=tp.partition,
        member_host=member_host,
        consumer_id=consumer_id,
        client_id=client_id,
        committed=committed,
        low=marks.low,
        high=marks.high,
        lag=lag,
        lag_seconds=lag_seconds,
        compaction_detected=compaction,
        data_loss_detected=data_loss,
        messages_lost=messages_lost,
        retention_margin=retention_margin,
        lag_retention_ratio=ratio,
        consumable_lag=consumable,
    )


def max_lag_seconds(rows: Iterable[PartitionRow], *, sampling: bool) -> float | None:
    """The group's time lag: the oldest unconsumed record over its partitions.

    0.0 when no partition lags; None when sampling is off, or when no lagging partition has a
    timestamp this cycle (a made-up 0 would hide a stuck group).
    """
    if not sampling:
        return None
    lagging = [row for row in rows if row.lag > 0]
    if not lagging:
        return 0.0
    known = [row.lag_seconds for row in lagging if row.lag_seconds is not None]
    return max(known) if known else None


def _summary(
    group: str,
    description: GroupDescription | None,
    rows: list[PartitionRow],
    *,
    sampling: bool,
) -> GroupSummary:
    described = GroupSummary(
        group=group,
        state=description.state if description is not None else GroupState.UNKNOWN,
        protocol_type=description.protocol_type if description is not None else "",
        group_type=description.group_type if description is not None else "",
        member_count=len(description.members) if description is not None else 0,
        max_lag=0,
        max_lag_seconds=None,
        sum_lag=0,
        topic_sum_lag=MappingProxyType({}),
    )
    return summarise(described, rows, sampling=sampling)


def summarise(summary: GroupSummary, rows: list[PartitionRow], *, sampling: bool) -> GroupSummary:
    """``summary`` with its lag aggregates recomputed from ``rows`` (state and members kept):
    the group after some of its rows were left out (the evaluation's ``drop_abandoned``)."""
    topic_sum: dict[str, int] = {}
    for row in rows:
        topic_sum[row.topic] = topic_sum.get(row.topic, 0) + row.lag
    return dataclasses.replace(
        summary,
        max_lag=max((row.lag for row in rows), default=0),
        max_lag_seconds=max_lag_seconds(rows, sampling=sampling),
        sum_lag=sum(row.lag for row in rows),
        topic_sum_lag=MappingProxyType(dict(sorted(topic_sum.items()))),
    )


def calculate(
    sampled: TimestampsSampled,
    *,
    labels: Mapping[str, str],
    now: float,
    duration_seconds: float,
    poll_time_ms: float,
) -> ClusterSnapshot:
    """Turn one finished cycle into the snapshot every sink renders.

    ``now`` is the reference for time lag (unix seconds); the snapshot's ``observed_at`` is when
    the last data was read (``sampled.observed_at``).
    Rows exist for every committed partition that has watermarks (commits on deleted topics or
    removed partitions produce nothing), summaries for every described group (and for any group
    with commits but no description, as state Unknown). Everything is sorted by group, topic and
    partition so renders are stable.
    """
    listed = sampled.watermarks
    fetched = listed.offsets
    discovered = fetched.discovered
    watermarks = listed.watermarks
    sampling = sampled.enabled

    rows_by_group: dict[str, list[PartitionRow]] = {}
    for group in sorted(set(discovered.groups) | set(fetched.committed)):
        description = discovered.groups.get(group)
        owners = _owners(description)
        committed = fetched.committed.get(group, {})
        rows_by_group[group] = [
            _row(
                group,
                tp,
                committed[tp],
                watermarks[tp],
                owners.get(tp, _NO_OWNER),
                sampling=sampling,
                samples=sampled.samples,
                now=now,
                unconfirmed=listed.loss_unconfirmed,
            )
            for tp in sorted(committed)
            if tp in watermarks
        ]

    rows = tuple(row for group_rows in rows_by_group.values() for row in group_rows)
    groups = tuple(
        _summary(group, discovered.groups.get(group), group_rows, sampling=sampling)
        for group, group_rows in rows_by_group.items()
        if group in discovered.groups or group_rows
    )
    partitions = tuple(
        PartitionOffsets(topic=tp.topic, partition=tp.partition, low=marks.low, high=marks.high)
        for tp, marks in sorted(watermarks.items())
    )
    errors = (
        len(discovered.failures)
        + len(fetched.failures)
        + len(listed.failures)
        + len(sampled.failures)
    )
    return ClusterSnapshot(
        cluster=sampled.cluster,
        labels=MappingProxyType(dict(sorted(labels.items()))),
        cycle=sampled.cycle,
        observed_at=sampled.observed_at,
        started_at=discovered.start.observed_at,
        duration_seconds=duration_seconds,
        poll_time_ms=poll_time_ms,
        timestamp_sampling=sampling,
        partitions=partitions,
        groups=groups,
        rows=rows,
        **flagged_counts(rows),
        error_count=errors,
        time_lag_denied=frozenset(
            f.denied_topic for f in sampled.failures if f.denied_topic is not None
        ),
    )
