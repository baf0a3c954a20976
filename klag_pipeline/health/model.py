"""What the evaluation stage says about consumers: rates, catch-up time, status (issue 14).

Pure data. Codes and rules are documented in docs/health.md; the numbers of :class:`Status` are
part of the exported contract (``kafka_consumergroup_group_status`` and
``kafka_consumergroup_group_partition_status`` carry them), so they never change meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from klag_pipeline.model import TopicPartition


class Status(IntEnum):
    """Consumer status codes, ordered by severity so that ``>= STALLED`` selects the consumers
    that do not progress. ``UNKNOWN`` is negative: it never satisfies a ``>=`` alert."""

    UNKNOWN = -1  # not enough history yet (after a start, or a new group / partition)
    OK = 0  # caught up, or consuming and not falling behind
    LAGGING = 1  # consuming, but lag grew across the window (or a group threshold is exceeded)
    REWOUND = 2  # the committed offset moved backwards within the window
    STALLED = 3  # members present, lag > 0, committed offset not moving
    STOPPED = 4  # no members, lag > 0, and lag growing or commits older than stopped_after


class Rates(NamedTuple):
    """Per-second rates over the window; None when fewer than two observations exist. (A tuple:
    one is made per row per cycle.)"""

    consume: float | None  # committed offset advance per second
    produce: float | None  # high watermark advance per second
    lag_velocity: float | None  # d lag / dt: positive = falling behind


NO_RATES = Rates(None, None, None)
STANDING = Rates(0.0, 0.0, 0.0)
"""The rates of a window in which nothing moved, shared: one idle row costs no Rates object."""


class PartitionHealth(NamedTuple):
    """One (group, topic, partition) row's evaluation. A named tuple, like ``PartitionRow``: one
    is built per row per cycle (docs/decisions.md); copy with ``_replace``."""

    rates: Rates
    catch_up_seconds: float | None  # 0 caught up; +inf never at current rates; None unknown
    commit_age_seconds: float  # since the committed offset last moved (or was first seen)
    status: Status
    reason: str
    estimated_lag_seconds: float | None = None
    """Time lag estimated from the partition's high-watermark history (``mode = "rate"``, or
    where Fetch is denied); None where not estimated. Never mixed into the exact family."""


@dataclass(frozen=True, slots=True)
class GroupTopicHealth:
    """A group's view of one topic: rates summed over its partitions."""

    consume_rate: float | None
    lag_velocity: float | None
    commit_age_seconds: float  # the freshest partition's commit age
    abandoned: bool  # members active, none assigned to this topic, commits older than threshold


@dataclass(frozen=True, slots=True)
class GroupHealth:
    status: Status
    reason: str
    consume_rate: float | None
    lag_velocity: float | None
    max_catch_up_seconds: float | None
    rebalances: int  # transitions into a rebalancing state observed since start (a counter)
    last_rebalance_at: float | None  # unix seconds of the last such transition
    commit_age_seconds: float | None = None  # its freshest partition's; None: no commits


@dataclass(frozen=True, slots=True)
class ClusterHealth:
    """The evaluation of one snapshot. Keys match the snapshot's rows and groups."""

    window_seconds: float
    partitions: Mapping[tuple[str, TopicPartition], PartitionHealth]
    topics: Mapping[tuple[str, str], GroupTopicHealth]
    groups: Mapping[str, GroupHealth]
    produce_rates: Mapping[TopicPartition, float]
    """Per partition of a kept topic (the P label set), where two observations exist."""
    dropped_rows: int = 0
    """Rows of abandoned group-topics left out of the snapshot (``drop_abandoned``)."""
