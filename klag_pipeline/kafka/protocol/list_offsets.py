"""ListOffsets (v1..v7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from klag_pipeline.kafka.protocol.primitives import Reader, Writer
from klag_pipeline.kafka.protocol.versions import LIST_OFFSETS

EARLIEST: Final = -2
LATEST: Final = -1
READ_UNCOMMITTED: Final = 0
READ_COMMITTED: Final = 1


@dataclass(frozen=True, slots=True)
class ListedOffset:
    topic: str
    partition: int
    error_code: int
    offset: int


@dataclass(frozen=True, slots=True)
class ListOffsetsResponse:
    throttle_ms: int
    partitions: tuple[ListedOffset, ...]
    error_code: int = 0


def encode_list_offsets(
    version: int,
    partitions: Mapping[str, Sequence[int]],
    timestamp: int,
    isolation_level: int = READ_UNCOMMITTED,
) -> bytes:
    w = Writer(LIST_OFFSETS.flexible(version))
    w.int32(-1)  # replica id: a consumer
    if version >= 2:
        w.int8(isolation_level)
    w.array_length(len(partitions))
    for topic, indexes in partitions.items():
        w.string(topic)
        w.array_length(len(indexes))
        for index in indexes:
            w.int32(index)
            if version >= 4:
                w.int32(-1)  # current leader epoch: unknown, no fencing
            w.int64(timestamp)
            w.tags()
        w.tags()
    w.tags()
    return w.getvalue()


def decode_list_offsets(version: int, data: bytes) -> ListOffsetsResponse:
    r = Reader(data, LIST_OFFSETS.flexible(version))
    throttle = r.int32() if version >= 2 else 0
    out = []
    for _ in range(r.array_length(2)):
        topic = r.string()
        for _ in range(r.array_length(22)):
            partition, error_code = r.int32(), r.int16()
            r.int64()  # timestamp
            offset = r.int64()
            if version >= 4:
                r.int32()  # leader epoch
            r.skip_tags()
            out.append(ListedOffset(topic, partition, error_code, offset))
        r.skip_tags()
    r.skip_tags()
    return ListOffsetsResponse(throttle, tuple(out))
