"""JoinGroup, SyncGroup, Heartbeat and LeaveGroup for one member of a classic group.

Only what the exporter's own groups need (leader election, :mod:`klag_pipeline.leadership.kafka`,
and sharding, :mod:`klag_pipeline.sharding`): one protocol type with one protocol (a
:class:`GroupProtocol`), dynamic membership, no topic subscription. Built on
the primitives of :mod:`klag_pipeline.kafka.protocol`; the adapter in
:mod:`klag_pipeline.kafka.adapter.membership` sends them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from klag_pipeline.kafka.protocol.primitives import Reader, Writer
from klag_pipeline.kafka.protocol.versions import HEARTBEAT, JOIN_GROUP, LEAVE_GROUP, SYNC_GROUP
from klag_pipeline.model import LEADERSHIP_PROTOCOL_TYPE, SHARDING_PROTOCOL_TYPE


class GroupProtocol(NamedTuple):
    """The protocol type a group's members share and the one protocol they all offer."""

    type: str
    name: str


LEADER_PROTOCOL: Final = GroupProtocol(LEADERSHIP_PROTOCOL_TYPE, "klag-pipeline-leader-v1")
SHARD_PROTOCOL: Final = GroupProtocol(SHARDING_PROTOCOL_TYPE, "klag-pipeline-shard-v1")
PROTOCOL_TYPE: Final = LEADER_PROTOCOL.type
PROTOCOL_NAME: Final = LEADER_PROTOCOL.name


class _Writer(Writer):
    __slots__ = ()

    def raw_bytes(self, value: bytes) -> _Writer:
        # BYTES / COMPACT_BYTES share the array length prefix (int32, or uvarint(len + 1)).
        self.array_length(len(value))
        self._parts.append(value)
        return self


@dataclass(frozen=True, slots=True)
class JoinGroupResponse:
    throttle_ms: int
    error_code: int
    generation_id: int
    protocol_name: str | None
    leader: str
    member_id: str
    members: tuple[tuple[str, bytes], ...]


def encode_join_group(
    version: int,
    group: str,
    *,
    session_ms: int,
    rebalance_ms: int,
    member_id: str,
    metadata: bytes,
    reason: str | None = None,
    protocol: GroupProtocol = LEADER_PROTOCOL,
) -> bytes:
    w = _Writer(JOIN_GROUP.flexible(version))
    w.string(group).int32(session_ms).int32(rebalance_ms).string(member_id)
    w.string(None)  # group_instance_id: dynamic membership
    w.string(protocol.type)
    w.array_length(1)
    w.string(protocol.name)
    w.raw_bytes(metadata).tags()
    if version >= 8:
        w.string(reason)
    w.tags()
    return w.getvalue()


def decode_join_group(version: int, data: bytes) -> JoinGroupResponse:
    r = Reader(data, JOIN_GROUP.flexible(version))
    throttle, error_code, generation = r.int32(), r.int16(), r.int32()
    if version >= 7:
        r.nullable_string()  # protocol_type
    protocol_name = r.nullable_string()
    leader = r.string()
    if version >= 9:
        r.boolean()  # skip_assignment: static members only
    member_id = r.string()
    members = []
    for _ in range(r.array_length(4)):
        mid = r.string()
        r.nullable_string()  # group_instance_id
        metadata = r.nullable_bytes() or b""
        r.skip_tags()
        members.append((mid, metadata))
    r.skip_tags()
    return JoinGroupResponse(
        throttle, error_code, generation, protocol_name, leader, member_id, tuple(members)
    )


@dataclass(frozen=True, slots=True)
class SyncGroupResponse:
    throttle_ms: int
    error_code: int
    assignment: bytes


def encode_sync_group(
    version: int,
    group: str,
    *,
    generation: int,
    member_id: str,
    assignments: Sequence[tuple[str, bytes]],
    protocol: GroupProtocol = LEADER_PROTOCOL,
) -> bytes:
    w = _Writer(SYNC_GROUP.flexible(version))
    w.string(group).int32(generation).string(member_id).string(None)
    if version >= 5:
        w.string(protocol.type).string(protocol.name)
    w.array_length(len(assignments))
    for mid, assignment in assignments:
        w.string(mid)
        w.raw_bytes(assignment).tags()
    w.tags()
    return w.getvalue()


def decode_sync_group(version: int, data: bytes) -> SyncGroupResponse:
    r = Reader(data, SYNC_GROUP.flexible(version))
    throttle, error_code = r.int32(), r.int16()
    if version >= 5:
        r.nullable_string()
        r.nullable_string()
    assignment = r.nullable_bytes() or b""
    r.skip_tags()
    return SyncGroupResponse(throttle, error_code, assignment)


@dataclass(frozen=True, slots=True)
class GroupResponse:
    """Heartbeat and LeaveGroup answers: only the top-level error matters here."""

    throttle_ms: int
    error_code: int


def encode_heartbeat(version: int, group: str, *, generation: int, member_id: str) -> bytes:
    w = Writer(HEARTBEAT.flexible(version))
    w.string(group).int32(generation).string(member_id).string(None).tags()
    return w.getvalue()


def decode_heartbeat(version: int, data: bytes) -> GroupResponse:
    r = Reader(data, HEARTBEAT.flexible(version))
    response = GroupResponse(r.int32(), r.int16())
    r.skip_tags()
    return response


def encode_leave_group(version: int, group: str, *, member_id: str, reason: str) -> bytes:
    w = Writer(LEAVE_GROUP.flexible(version))
    w.string(group).array_length(1).string(member_id).string(None)
    if version >= 5:
        w.string(reason)
    w.tags().tags()
    return w.getvalue()


def decode_leave_group(version: int, data: bytes) -> GroupResponse:
    # The per-member results that follow are not needed: leaving is best effort.
    r = Reader(data, LEAVE_GROUP.flexible(version))
    return GroupResponse(r.int32(), r.int16())
