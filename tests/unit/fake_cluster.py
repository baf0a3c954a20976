"""An in-memory ClusterClient: a fake (not a mock) of the Kafka port for stage and app tests."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from klag_pipeline.errors import KafkaConnectionError
from klag_pipeline.kafka.port import (
    ClusterOverview,
    CommittedOffsets,
    GroupDescriptions,
    GroupListing,
    TimestampListing,
    WatermarkListing,
)
from klag_pipeline.model import (
    GroupDescription,
    GroupMember,
    GroupState,
    ListedGroup,
    TimestampSample,
    TopicPartition,
    Watermarks,
)


@dataclass
class FakeGroup:
    state: GroupState = GroupState.EMPTY
    protocol_type: str = "consumer"
    group_type: str = "classic"
    members: tuple[GroupMember, ...] = ()
    committed: dict[TopicPartition, int] = field(default_factory=dict)


@dataclass
class FakeCluster:
    """Cluster state the test sets directly; every call is recorded in ``calls``."""

    groups: dict[str, FakeGroup] = field(default_factory=dict)
    partitions: dict[TopicPartition, Watermarks] = field(default_factory=dict)
    timestamps: dict[tuple[TopicPartition, int], TimestampSample] = field(default_factory=dict)
    reachable: bool = True
    calls: list[str] = field(default_factory=list)

    def member(self, member_id: str, host: str, *tps: TopicPartition) -> GroupMember:
        return GroupMember(member_id, f"client-{member_id}", host, frozenset(tps))

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if not self.reachable:
            raise KafkaConnectionError("connection refused", broker="127.0.0.1:1")

    async def connect(self) -> None:
        self._check("connect")

    async def close(self) -> None:
        self.calls.append("close")

    async def list_groups(self) -> GroupListing:
        self._check("list_groups")
        return GroupListing(
            tuple(
                ListedGroup(gid, g.protocol_type, g.state.name, g.group_type, 1)
                for gid, g in sorted(self.groups.items())
            )
        )

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        self._check("describe_groups")
        return GroupDescriptions(
            MappingProxyType(
                {
                    lg.group_id: GroupDescription(
                        lg.group_id,
                        self.groups[lg.group_id].state,
                        lg.protocol_type,
                        lg.group_type,
                        self.groups[lg.group_id].members,
                        lg.coordinator,
                    )
                    for lg in groups
                    if lg.group_id in self.groups
                }
            )
        )

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        self._check("fetch_committed_offsets")
        return CommittedOffsets(
            MappingProxyType(
                {
                    lg.group_id: MappingProxyType(dict(self.groups[lg.group_id].committed))
                    for lg in groups
                    if lg.group_id in self.groups
                }
            )
        )

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        self._check("list_watermarks")
        wanted = set(topics)
        known = {tp.topic for tp in self.partitions}
        return WatermarkListing(
            MappingProxyType({tp: w for tp, w in self.partitions.items() if tp.topic in wanted}),
            frozenset(wanted - known),
        )

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        self._check("sample_timestamps")
        return TimestampListing(
            MappingProxyType(
                {
                    (tp, offset): self.timestamps[(tp, offset)]
                    for tp, offsets in wanted.items()
                    for offset in offsets
                    if (tp, offset) in self.timestamps
                }
            )
        )

    async def overview(self) -> ClusterOverview:
        self._check("overview")
        return ClusterOverview("fake", 1, ((1, "127.0.0.1", 9092),), 0, 0, len(self.groups), {})
