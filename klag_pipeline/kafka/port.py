"""The narrow seam between the pipeline and a Kafka cluster.

Stages depend on :class:`ClusterClient` only; the aiokafka adapter implements it and tests use
fakes. Every method returns what it could learn plus the partial failures it met: one broker,
group or partition failing never fails the whole call. A call raises (a ``KafkaError``) only when
nothing at all could be learned, e.g. no broker reachable or authentication refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from klag_pipeline.model import (
    Failure,
    GroupDescription,
    ListedGroup,
    TimestampSample,
    TopicIdentity,
    TopicPartition,
    Watermarks,
)


@dataclass(frozen=True, slots=True)
class GroupListing:
    groups: tuple[ListedGroup, ...]
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupDescriptions:
    """Described groups. ``gone``: groups the coordinator says do not exist (GROUP_ID_NOT_FOUND).
    A group asked for that is in neither got no trustworthy answer this cycle."""

    groups: Mapping[str, GroupDescription]
    failures: tuple[Failure, ...] = ()
    gone: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CommittedOffsets:
    """Committed offsets per group. A group with no commits (or that the coordinator does not
    know) maps to an empty mapping; a group asked for but absent got no trustworthy answer."""

    offsets: Mapping[str, Mapping[TopicPartition, int]]
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True, slots=True)
class WatermarkListing:
    """Watermarks of every partition of the requested topics that exist.

    ``missing_topics`` are topics the cluster does not know (deleted): they are never created.
    ``topics``: id and cleanup policy of the listed topics, as far as known.
    """

    watermarks: Mapping[TopicPartition, Watermarks]
    missing_topics: frozenset[str] = frozenset()
    failures: tuple[Failure, ...] = ()
    topics: Mapping[str, TopicIdentity] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimestampListing:
    """Samples keyed by (partition, committed offset) that was asked for."""

    samples: Mapping[tuple[TopicPartition, int], TimestampSample]
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True, slots=True)
class ClusterOverview:
    """What ``check --connect`` reports: brokers, topics and groups visible."""

    cluster_id: str | None
    controller_id: int | None
    brokers: tuple[tuple[int, str, int], ...]  # (node id, host, port)
    topic_count: int
    partition_count: int
    group_count: int
    api_versions: Mapping[str, int]  # API name → highest version the first broker supports


class ClusterClient(Protocol):
    """One Kafka cluster, as the stages see it."""

    async def connect(self) -> None:
        """Bootstrap: metadata + ApiVersions capability table. Raises on auth/network failure."""

    async def close(self) -> None: ...

    async def list_groups(self) -> GroupListing:
        """ListGroups on every broker (classic + consumer types), each group with its
        coordinator."""

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        """DescribeGroups (classic) / ConsumerGroupDescribe (KIP-848), batched per coordinator."""

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        """OffsetFetch of all committed partitions, many groups per request per coordinator."""

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        """ListOffsets earliest and latest for every partition of ``topics``, batched per leader."""

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        """Fetch the record at each committed offset; batched per leader, bounded in bytes."""

    async def overview(self) -> ClusterOverview:
        """Brokers, topic/partition counts and group count, for ``check --connect``."""


class RequestObserver(Protocol):
    """Told about every broker request, for the ``klag_pipeline_*`` self-metrics."""

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        """``api`` e.g. "ListGroups"; ``broker`` the node id as text; ``outcome`` "ok" or an
        error class name ("timeout", "connection", "auth", "protocol", or a Kafka error name)."""

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        """A broker asked us to back off for ``throttle_ms``."""
