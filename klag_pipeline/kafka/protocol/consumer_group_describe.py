"""ConsumerGroupDescribe (API 69, v0, flexible): KIP-848 ``consumer`` groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from klag_pipeline.kafka.protocol.primitives import Reader, Writer


@dataclass(frozen=True, slots=True)
class ConsumerGroupMember:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    assignment: tuple[tuple[bytes, str, tuple[int, ...]], ...]  # (topic id, topic, partitions)


@dataclass(frozen=True, slots=True)
class ConsumerGroupDescription:
    error_code: int
    error_message: str | None
    group_id: str
    state: str
    members: tuple[ConsumerGroupMember, ...]


@dataclass(frozen=True, slots=True)
class ConsumerGroupDescribeResponse:
    throttle_ms: int
    groups: tuple[ConsumerGroupDescription, ...]
    error_code: int = 0


def encode_consumer_group_describe(version: int, groups: Sequence[str]) -> bytes:
    w = Writer(flexible=True)
    w.strings(groups)
    w.boolean(False)  # include_authorized_operations
    w.tags()
    return w.getvalue()


def _decode_cgd_assignment(r: Reader) -> tuple[tuple[bytes, str, tuple[int, ...]], ...]:
    topics = []
    for _ in range(r.array_length(19)):
        topic_id, name = r.uuid(), r.string()
        partitions = tuple(r.int32s())
        r.skip_tags()
        topics.append((topic_id, name, partitions))
    r.skip_tags()
    return tuple(topics)


def decode_consumer_group_describe(version: int, data: bytes) -> ConsumerGroupDescribeResponse:
    r = Reader(data, flexible=True)
    throttle = r.int32()
    groups = []
    for _ in range(r.array_length(8)):
        error_code = r.int16()
        error_message = r.nullable_string()
        group_id, state = r.string(), r.string()
        r.int32()  # group epoch
        r.int32()  # assignment epoch
        r.string()  # assignor name
        members = []
        for _ in range(r.array_length(8)):
            member_id = r.string()
            instance_id = r.nullable_string()
            r.nullable_string()  # rack id
            r.int32()  # member epoch
            client_id, client_host = r.string(), r.string()
            r.strings()  # subscribed topic names
            r.nullable_string()  # subscribed topic regex
            assignment = _decode_cgd_assignment(r)
            _decode_cgd_assignment(r)  # target assignment
            r.skip_tags()
            members.append(
                ConsumerGroupMember(member_id, instance_id, client_id, client_host, assignment)
            )
        r.int32()  # authorized operations
        r.skip_tags()
        groups.append(
            ConsumerGroupDescription(error_code, error_message, group_id, state, tuple(members))
        )
    r.skip_tags()
    return ConsumerGroupDescribeResponse(throttle, tuple(groups))
