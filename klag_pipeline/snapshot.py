"""The per-cycle, per-cluster result every sink consumes (SPEC §4–§6).

Produced by the calculation stage (pure code in :mod:`klag_pipeline.lag`), immutable, and
complete: a sink never needs anything else to render a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, TypedDict

from klag_pipeline.health.model import ClusterHealth
from klag_pipeline.model import GroupState, TopicPartition


class PartitionRow(NamedTuple):
    """One (group, topic, partition) with a committed offset.

    ``low`` None: the earliest offset is unknown this cycle, so the loss figures
    (``messages_lost``, ``retention_margin``, ``lag_retention_ratio``) are None and
    ``data_loss_detected`` is False: we never claim loss on missing data.
    ``lag_seconds`` None: lag > 0 but no timestamp could be read this cycle (or sampling is off).

    A named tuple, immutable like the frozen dataclasses around it, because one is built per
    row per cycle: a frozen dataclass's ``__init__`` sets each of its 18 fields through
    ``object.__setattr__`` — 44 ms per 20,000 rows against 6 ms for the tuple (issue 17). Copy
    with ``row._replace(...)``.
    """

    group: str
    topic: str
    partition: int
    member_host: str
    consumer_id: str
    client_id: str
    committed: int
    low: int | None
    high: int
    lag: int
    lag_seconds: float | None
    compaction_detected: bool
    data_loss_detected: bool
    messages_lost: int | None
    retention_margin: int | None
    lag_retention_ratio: float | None
    consumable_lag: int | None = None
    """Records the group can still consume, where known to differ from ``lag``: 0 when only
    transaction markers (or, under read_committed, aborted records) lie between the committed
    offset and the end of the log. None: not known to differ."""
    carried: bool = False
    """True when this cycle could not read the row (its coordinator or leader gave no
    trustworthy answer) and it repeats the last good values (klag_pipeline/carry.py)."""

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class GroupSummary:
    group: str
    state: GroupState
    protocol_type: str
    group_type: str
    member_count: int
    max_lag: int
    max_lag_seconds: float | None  # None when sampling is off or no lagging partition was sampled
    sum_lag: int
    topic_sum_lag: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """Watermarks of one partition of a kept topic (the P label set)."""

    topic: str
    partition: int
    low: int | None
    high: int


@dataclass(frozen=True, slots=True)
class ClusterSnapshot:
    """Everything known about one cluster after one successful cycle."""

    cluster: str
    labels: Mapping[str, str]  # the cluster's custom labels, added to every series
    cycle: int
    observed_at: float  # unix seconds when the cycle's data was read (end of broker calls)
    started_at: float  # unix seconds when the cycle started
    duration_seconds: float  # whole collection cycle
    poll_time_ms: float  # time spent in broker calls
    timestamp_sampling: bool  # whether the time-lag families exist in this snapshot
    partitions: tuple[PartitionOffsets, ...]
    groups: tuple[GroupSummary, ...]
    rows: tuple[PartitionRow, ...]
    compaction_detected_count: int
    data_loss_partition_count: int
    error_count: int  # partial failures met during the cycle
    carried_rows: int = 0  # rows repeated from an earlier cycle (no trustworthy answer this one)
    carried_groups: int = 0  # groups whose summary was repeated from an earlier cycle
    health: ClusterHealth | None = None
    """The evaluation stage's rates, catch-up times and statuses (None: health is disabled, or
    a one-cycle ``once``)."""
    time_lag_denied: frozenset[str] = frozenset()
    """Topics whose Fetch the broker refused (TOPIC_AUTHORIZATION_FAILED) this cycle: their
    lagging rows have no exact time lag, and the evaluation estimates it (docs/time-lag.md)."""
    partial: bool = False
    """True for the early publication of a cluster's first cycle (docs/pipeline.md, "The first
    scrape"): offsets, watermarks and group states only, published before the cycle's cold
    timestamp pass ends. It has no time lag (``timestamp_sampling`` False), no health and no
    cycle figures, and reaches the Prometheus store only (``FanOut``'s ``partial_to``)."""


class FlaggedCounts(TypedDict):
    compaction_detected_count: int
    data_loss_partition_count: int


def flagged_counts(rows: tuple[PartitionRow, ...]) -> FlaggedCounts:
    """The snapshot's two row counts for ``rows`` (``ClusterSnapshot(**flagged_counts(rows))``):
    the calculation, the carry-over and the sharding narrowing each set them from their rows."""
    return FlaggedCounts(
        compaction_detected_count=sum(1 for row in rows if row.compaction_detected),
        data_loss_partition_count=sum(1 for row in rows if row.data_loss_detected),
    )


def denied_topics(
    previous: frozenset[str], snapshot: ClusterSnapshot
) -> tuple[frozenset[str], frozenset[str]]:
    """(topics still denied Read, topics proven readable) after ``snapshot``.

    A refusal lasts across cycles until a lagging row of the topic has an exact time lag again
    (only a lagging row is read: a topic without one proves nothing either way) or the topic is
    gone. Callers skip this walk over the rows when ``previous`` and the snapshot's refusals are
    both empty (the usual cycle)."""
    readable = frozenset(r.topic for r in snapshot.rows if r.lag > 0 and r.lag_seconds is not None)
    present = {offsets.topic for offsets in snapshot.partitions}
    still = ((previous | snapshot.time_lag_denied) - readable) & present
    return frozenset(still), readable


@dataclass(frozen=True, slots=True)
class ClusterWithdrawn:
    """Remove every series of ``cluster`` from a sink (stale data or leadership lost)."""

    cluster: str
    reason: str


SinkUpdate = ClusterSnapshot | ClusterWithdrawn
