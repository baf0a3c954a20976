"""Domain types shared by the Kafka port, the stages and the pure calculations.

Everything here is immutable and imports nothing from asyncio, aiokafka or aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple


class TopicPartition(NamedTuple):
    """A partition of a topic; ordered by topic, then partition.

    A named tuple rather than a frozen dataclass: it is the key of nearly every per-partition
    mapping (20,000+ lookups per cycle at the ``large`` preset), and a tuple hashes and compares
    in C: the dataclass's generated ``__hash__``, ``__eq__`` and ``__lt__`` (Python functions)
    were ~3 % of a steady cycle's samples in a py-spy profile (issue 17). It equals the plain
    tuple ``(topic, partition)``; no mapping here mixes the two."""

    topic: str
    partition: int


class GroupState(IntEnum):
    """Numeric state codes of ``kafka_consumergroup_group_state`` (SPEC §4)."""

    UNKNOWN = 0
    PREPARING_REBALANCE = 1
    COMPLETING_REBALANCE = 2
    STABLE = 3
    DEAD = 4
    EMPTY = 5
    ASSIGNING = 6
    RECONCILING = 7

    @classmethod
    def parse(cls, name: str) -> GroupState:
        """Map a broker's state string (classic or KIP-848) onto a code; unknown → UNKNOWN."""
        return _STATE_NAMES.get(name.replace("_", "").replace(" ", "").lower(), cls.UNKNOWN)


_STATE_NAMES: Mapping[str, GroupState] = MappingProxyType(
    {
        "preparingrebalance": GroupState.PREPARING_REBALANCE,
        "completingrebalance": GroupState.COMPLETING_REBALANCE,
        "awaitingsync": GroupState.COMPLETING_REBALANCE,  # pre-2.0 name of CompletingRebalance
        "stable": GroupState.STABLE,
        "dead": GroupState.DEAD,
        "empty": GroupState.EMPTY,
        "assigning": GroupState.ASSIGNING,
        "reconciling": GroupState.RECONCILING,
    }
)


LEADERSHIP_PROTOCOL_TYPE = "klag-pipeline-leader"
"""Protocol type of the group klag-pipeline replicas join to elect a leader (leadership/kafka.py).
Discovery leaves such groups out: they are ours, not consumers, and never commit offsets."""

SHARDING_PROTOCOL_TYPE = "klag-pipeline-shard"
"""Protocol type of the group sharded replicas join to share the work (klag_pipeline/sharding/).
Left out by discovery like the leadership group."""

EXPORTER_PROTOCOL_TYPES = frozenset({LEADERSHIP_PROTOCOL_TYPE, SHARDING_PROTOCOL_TYPE})


@dataclass(frozen=True, slots=True)
class ListedGroup:
    """One group as ListGroups reported it. ``coordinator`` is the node id that listed it."""

    group_id: str
    protocol_type: str
    state: str
    # "classic", "consumer", or "" when the broker predates KIP-848 (ListGroups < 5)
    group_type: str
    coordinator: int


@dataclass(frozen=True, slots=True)
class GroupMember:
    member_id: str
    client_id: str
    client_host: str
    assignment: frozenset[TopicPartition]


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: GroupState
    protocol_type: str
    group_type: str
    members: tuple[GroupMember, ...]
    coordinator: int

    def as_listed(self) -> ListedGroup:
        """The group as a listing would show it: what the offset requests need."""
        return ListedGroup(
            group_id=self.group_id,
            protocol_type=self.protocol_type,
            state=self.state.name,
            group_type=self.group_type,
            coordinator=self.coordinator,
        )


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Low (log start) and high (log end, or last stable offset) offset of one partition.

    ``low`` is None when the earliest-offset lookup failed this cycle: then nothing may be said
    about data loss for that partition (SPEC §11).
    """

    low: int | None
    high: int


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """What tells whether a timestamp read on a topic still holds (docs/time-lag.md#cache).

    ``topic_id``: the topic's id from Metadata (v10+), None when the broker gives none; a
    different id under the same name is a re-created topic. ``compacted``: its cleanup.policy
    includes ``compact`` (the log cleaner may remove records below the high watermark); None
    when the policy could not be read (e.g. no DescribeConfigs permission).
    """

    topic_id: bytes | None
    compacted: bool | None


@dataclass(frozen=True, slots=True)
class TimestampSample:
    """What a Fetch at a committed offset found.

    ``offset`` is the offset of the first data record at or after the committed offset, and
    ``timestamp_ms`` its timestamp. ``offset > committed`` means the record at ``committed`` is
    gone.
    """

    offset: int
    timestamp_ms: int
    record_missing: bool = False
    """True when the record at the committed offset is gone and the gap is not explained by
    control records (transaction markers) or aborted transactions: compaction (or, below the log
    start, retention)."""
    end_of_log: bool = False
    """True when no data record lies between the committed offset and the end of the log the
    broker reported (high watermark, or last stable offset under read_committed): every offset
    in between is a transaction marker (or, under read_committed, an aborted record). The group
    is caught up in time; ``offset`` is that end of the log and ``timestamp_ms`` means nothing.
    Valid only while the end of the log stays at ``offset``."""


@dataclass(frozen=True, slots=True)
class Failure:
    """A partial failure inside an otherwise successful step (one broker, group or partition)."""

    stage: str
    target: str  # broker id, group id or "topic-partition" for display only, never a key
    error: str
    denied_topic: str | None = None
    """The topic when the broker refused the read as TOPIC_AUTHORIZATION_FAILED: its time lag
    can only be estimated (docs/time-lag.md), so the calculation marks it in the snapshot."""


EMPTY_FAILURES: tuple[Failure, ...] = ()


__all__ = [
    "EMPTY_FAILURES",
    "EXPORTER_PROTOCOL_TYPES",
    "LEADERSHIP_PROTOCOL_TYPE",
    "SHARDING_PROTOCOL_TYPE",
    "Failure",
    "GroupDescription",
    "GroupMember",
    "GroupState",
    "ListedGroup",
    "TimestampSample",
    "TopicPartition",
    "Watermarks",
]
