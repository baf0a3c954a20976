"""OffsetFetch: v8/v9 many groups, v2..v7 one group. topics = null → every committed partition."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from klag_pipeline.kafka.protocol.primitives import Reader, Writer
from klag_pipeline.kafka.protocol.versions import OFFSET_FETCH


class CommittedPartition(NamedTuple):
    """One partition of an answer (a named tuple: 20,000 are built per cycle at ``large``)."""

    topic: str
    partition: int
    offset: int
    error_code: int


@dataclass(frozen=True, slots=True)
class GroupOffsets:
    group_id: str
    error_code: int
    partitions: tuple[CommittedPartition, ...]


@dataclass(frozen=True, slots=True)
class OffsetFetchResponse:
    throttle_ms: int
    groups: tuple[GroupOffsets, ...]
    error_code: int = 0


def encode_offset_fetch(version: int, groups: Sequence[str]) -> bytes:
    w = Writer(OFFSET_FETCH.flexible(version))
    if version >= 8:
        w.array_length(len(groups))
        for group in groups:
            w.string(group)
            if version >= 9:
                w.string(None)  # member id: null = an admin fetch, no epoch check
                w.int32(-1)  # member epoch
            w.array_length(None)  # all topics
            w.tags()
    else:
        if len(groups) != 1:
            raise ValueError("OffsetFetch before v8 takes exactly one group")
        w.string(groups[0])
        w.array_length(None)
    if version >= 7:
        w.boolean(False)  # require_stable
    w.tags()
    return w.getvalue()


_PARTITION_V5: Final = struct.Struct(">iqi")
"""partition, committed offset, committed leader epoch (v5+)."""
_PARTITION: Final = struct.Struct(">iq")
_FLEXIBLE_PARTITION: Final = struct.Struct(">iqiBhB")
"""A v6+ partition whose metadata is null or empty and that has no tagged fields — nearly
every one: partition, offset, leader epoch, metadata length + 1 (0 or 1), error, tag count (0).
Decoded with one call; any other shape takes the field-by-field path."""


def _decode_offset_topics(r: Reader, version: int) -> tuple[CommittedPartition, ...]:
    out = []
    layout = _PARTITION_V5 if version >= 5 else _PARTITION
    fast = OFFSET_FETCH.flexible(version) and version >= 5
    for _ in range(r.array_length(2)):
        topic = r.string()
        for _ in range(r.array_length(14)):
            if fast:
                guess = r.peek(_FLEXIBLE_PARTITION)
                if guess is not None and guess[3] <= 1 and guess[5] == 0:
                    r.advance(_FLEXIBLE_PARTITION.size)
                    out.append(CommittedPartition(topic, guess[0], guess[1], guess[4]))
                    continue
            partition, offset, *_ = r.unpack(layout)
            r.skip_string()  # metadata
            error_code = r.int16()
            r.skip_tags()
            out.append(CommittedPartition(topic, partition, offset, error_code))
        r.skip_tags()
    return tuple(out)


def decode_offset_fetch(version: int, data: bytes, group: str = "") -> OffsetFetchResponse:
    """``group`` names the single group of a v2..v7 request (the response does not echo it)."""
    r = Reader(data, OFFSET_FETCH.flexible(version))
    throttle = r.int32() if version >= 3 else 0
    if version < 8:
        partitions = _decode_offset_topics(r, version)
        error_code = r.int16()
        r.skip_tags()
        return OffsetFetchResponse(throttle, (GroupOffsets(group, error_code, partitions),))
    groups = []
    for _ in range(r.array_length(4)):
        group_id = r.string()
        partitions = _decode_offset_topics(r, version)
        error_code = r.int16()
        r.skip_tags()
        groups.append(GroupOffsets(group_id, error_code, partitions))
    r.skip_tags()
    return OffsetFetchResponse(throttle, tuple(groups))
