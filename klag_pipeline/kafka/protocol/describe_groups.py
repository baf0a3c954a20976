"""DescribeGroups (v0..v6) and the classic ``consumer`` protocol's member assignment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from klag_pipeline.kafka.protocol.primitives import ProtocolDecodeError, Reader, Writer
from klag_pipeline.kafka.protocol.versions import DESCRIBE_GROUPS
from klag_pipeline.model import TopicPartition


@dataclass(frozen=True, slots=True)
class DescribedMember:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class DescribedGroup:
    error_code: int
    error_message: str | None
    group_id: str
    state: str
    protocol_type: str
    protocol: str
    members: tuple[DescribedMember, ...]


@dataclass(frozen=True, slots=True)
class DescribeGroupsResponse:
    throttle_ms: int
    groups: tuple[DescribedGroup, ...]
    error_code: int = 0


def encode_describe_groups(version: int, groups: Sequence[str]) -> bytes:
    w = Writer(DESCRIBE_GROUPS.flexible(version))
    w.strings(groups)
    if version >= 3:
        w.boolean(False)  # include_authorized_operations
    w.tags()
    return w.getvalue()


def decode_describe_groups(version: int, data: bytes) -> DescribeGroupsResponse:
    r = Reader(data, DESCRIBE_GROUPS.flexible(version))
    throttle = r.int32() if version >= 1 else 0
    groups = []
    for _ in range(r.array_length(6)):
        error_code = r.int16()
        error_message = r.nullable_string() if version >= 6 else None
        group_id, state, protocol_type, protocol = r.string(), r.string(), r.string(), r.string()
        members = []
        for _ in range(r.array_length(4)):
            member_id = r.string()
            instance_id = r.nullable_string() if version >= 4 else None
            client_id, client_host = r.string(), r.string()
            metadata = r.nullable_bytes() or b""
            assignment = r.nullable_bytes() or b""
            r.skip_tags()
            members.append(
                DescribedMember(
                    member_id, instance_id, client_id, client_host, metadata, assignment
                )
            )
        if version >= 3:
            r.int32()  # authorized operations
        r.skip_tags()
        groups.append(
            DescribedGroup(
                error_code,
                error_message,
                group_id,
                state,
                protocol_type,
                protocol,
                tuple(members),
            )
        )
    r.skip_tags()
    return DescribeGroupsResponse(throttle, tuple(groups))


def decode_consumer_assignment(data: bytes) -> frozenset[TopicPartition]:
    """Partitions in a classic ``consumer`` protocol member assignment (ConsumerProtocol).

    Layout (always non-flexible, versioned by a leading int16): ``[topic, [partition]]``
    followed by user data and, in later versions, fields we do not need — trailing bytes are
    therefore allowed. An empty blob (member not yet assigned) is an empty assignment.
    """
    if not data:
        return frozenset()
    r = Reader(data, flexible=False)
    version = r.int16()
    if version < 0:
        raise ProtocolDecodeError(f"negative consumer protocol version {version}")
    out: set[TopicPartition] = set()
    for _ in range(r.array_length(6)):
        topic = r.string()
        for partition in r.int32s():
            out.add(TopicPartition(topic, partition))
    return frozenset(out)


def encode_consumer_assignment(assignment: Mapping[str, Sequence[int]], version: int = 0) -> bytes:
    """Inverse of :func:`decode_consumer_assignment` (empty user data); used by tests."""
    w = Writer(flexible=False)
    w.int16(version)
    w.array_length(len(assignment))
    for topic, partitions in assignment.items():
        w.string(topic)
        w.int32s(partitions)
    w.int32(-1)  # null user data
    return w.getvalue()
