"""Metadata (v4..v12)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from klag_pipeline.kafka.protocol.primitives import ZERO_UUID, Reader, Writer
from klag_pipeline.kafka.protocol.versions import METADATA


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    node_id: int
    host: str
    port: int
    rack: str | None


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    error_code: int
    leader: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    error_code: int
    internal: bool
    partitions: tuple[PartitionInfo, ...]
    topic_id: bytes | None = None
    """v10+; None from older versions (and the zero UUID is turned into None too)."""


@dataclass(frozen=True, slots=True)
class MetadataResponse:
    throttle_ms: int
    brokers: tuple[BrokerInfo, ...]
    cluster_id: str | None
    controller_id: int
    topics: tuple[TopicInfo, ...]
    error_code: int = 0


def encode_metadata(version: int, topics: Sequence[str] | None) -> bytes:
    """``topics=None`` asks for every topic; auto-creation is always off."""
    w = Writer(METADATA.flexible(version))
    w.array_length(None if topics is None else len(topics))
    for topic in topics or ():
        if version >= 10:
            w.uuid(ZERO_UUID)
        w.string(topic)
        w.tags()
    w.boolean(False)  # allow_auto_topic_creation (v4+)
    if 8 <= version <= 10:
        w.boolean(False)  # include_cluster_authorized_operations
    if version >= 8:
        w.boolean(False)  # include_topic_authorized_operations
    w.tags()
    return w.getvalue()


def decode_metadata(version: int, data: bytes) -> MetadataResponse:
    r = Reader(data, METADATA.flexible(version))
    throttle = r.int32()
    brokers = []
    for _ in range(r.array_length(10)):
        node_id, host, port = r.int32(), r.string(), r.int32()
        rack = r.nullable_string()
        r.skip_tags()
        brokers.append(BrokerInfo(node_id, host, port, rack))
    cluster_id = r.nullable_string()
    controller_id = r.int32()
    topics = []
    for _ in range(r.array_length(4)):
        error_code = r.int16()
        name = r.string()
        topic_id = r.uuid() if version >= 10 else None
        internal = r.boolean()
        partitions = []
        for _ in range(r.array_length(12)):
            p_error, index, leader = r.int16(), r.int32(), r.int32()
            if version >= 7:
                r.int32()  # leader epoch
            r.int32s()  # replicas
            r.int32s()  # isr
            if version >= 5:
                r.int32s()  # offline replicas
            r.skip_tags()
            partitions.append(PartitionInfo(index, p_error, leader))
        if version >= 8:
            r.int32()  # topic authorized operations
        r.skip_tags()
        if topic_id == ZERO_UUID:
            topic_id = None
        topics.append(TopicInfo(name, error_code, internal, tuple(partitions), topic_id))
    if 8 <= version <= 10:
        r.int32()  # cluster authorized operations
    r.skip_tags()
    return MetadataResponse(throttle, tuple(brokers), cluster_id, controller_id, tuple(topics))
