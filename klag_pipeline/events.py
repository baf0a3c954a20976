"""The inter-stage contract: one immutable fact per cluster per cycle per stage.

Each event wraps the one before it, so the calculation stage sees the whole cycle and no stage
needs shared mutable state. Every event exposes ``cluster``, ``cycle`` and ``observed_at``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from klag_pipeline.model import (
    Failure,
    GroupDescription,
    TimestampSample,
    TopicIdentity,
    TopicPartition,
    Watermarks,
)


class CycleEvent(Protocol):
    """What every event entering a stage offers: its cluster, its cycle and the cycle's start
    (for the cycle deadline and for failure reports)."""

    @property
    def cluster(self) -> str: ...

    @property
    def cycle(self) -> int: ...

    @property
    def start(self) -> CycleStarted: ...


@dataclass(frozen=True, slots=True)
class CycleStarted:
    """The ticker fired for ``cluster``. ``observed_at`` is the wall-clock start of the cycle."""

    cluster: str
    cycle: int
    observed_at: float
    started_monotonic: float

    @property
    def start(self) -> CycleStarted:
        return self


@dataclass(frozen=True, slots=True)
class GroupsDiscovered:
    """Kept groups (after the group filters), described.

    ``uncertain``: groups that may exist but got no trustworthy answer this cycle (their describe
    failed, or they vanished from the listing without their coordinator confirming it). They are
    not in ``groups``; the calculation keeps their last good values (docs/failure-behaviour.md).
    """

    start: CycleStarted
    groups: Mapping[str, GroupDescription]
    failures: tuple[Failure, ...]
    kafka_seconds: float
    observed_at: float
    uncertain: frozenset[str] = frozenset()

    @property
    def cluster(self) -> str:
        return self.start.cluster

    @property
    def cycle(self) -> int:
        return self.start.cycle


@dataclass(frozen=True, slots=True)
class OffsetsFetched:
    """Committed offsets of every kept group on kept topics, read before any watermark.

    ``unanswered``: described groups whose OffsetFetch got no trustworthy answer this cycle.
    ``other_topics``: in sharded mode, topics committed only by groups another replica owns;
    their watermarks are read too, for the ``kafka_partition_*`` series this replica owns."""

    discovered: GroupsDiscovered
    committed: Mapping[str, Mapping[TopicPartition, int]]
    failures: tuple[Failure, ...]
    kafka_seconds: float
    observed_at: float
    unanswered: frozenset[str] = frozenset()
    other_topics: frozenset[str] = frozenset()

    @property
    def cluster(self) -> str:
        return self.discovered.cluster

    @property
    def cycle(self) -> int:
        return self.discovered.cycle

    @property
    def start(self) -> CycleStarted:
        return self.discovered.start


@dataclass(frozen=True, slots=True)
class WatermarksListed:
    """Watermarks of every partition of every topic that has a kept commit, read after offsets.

    Partitions of deleted topics are absent from ``watermarks``; their commits produce no series.
    """

    offsets: OffsetsFetched
    watermarks: Mapping[TopicPartition, Watermarks]
    missing_topics: frozenset[str]
    failures: tuple[Failure, ...]
    kafka_seconds: float
    observed_at: float
    loss_unconfirmed: frozenset[tuple[str, TopicPartition]] = frozenset()
    """(group, partition) whose committed offset read below the log start, but whose second
    read (after the log start) got no answer: no loss may be claimed for them this cycle."""
    topics: Mapping[str, TopicIdentity] = field(default_factory=dict)
    """Id and cleanup policy of the listed topics, as far as known (the timestamp cache's)."""

    @property
    def cluster(self) -> str:
        return self.offsets.cluster

    @property
    def cycle(self) -> int:
        return self.offsets.cycle

    @property
    def start(self) -> CycleStarted:
        return self.offsets.start


@dataclass(frozen=True, slots=True)
class TimestampsSampled:
    """Timestamps of the records at lagging committed offsets, keyed by (partition, committed).

    ``enabled`` False: sampling is switched off and the time-lag families are not produced.
    A lagging (partition, offset) missing from ``samples`` had no readable timestamp this cycle.
    """

    watermarks: WatermarksListed
    samples: Mapping[tuple[TopicPartition, int], TimestampSample]
    enabled: bool
    failures: tuple[Failure, ...]
    kafka_seconds: float
    observed_at: float

    @property
    def cluster(self) -> str:
        return self.watermarks.cluster

    @property
    def cycle(self) -> int:
        return self.watermarks.cycle

    @property
    def start(self) -> CycleStarted:
        return self.watermarks.start
