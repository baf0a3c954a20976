"""ListGroups (v0..v5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from klag_pipeline.kafka.protocol.primitives import Reader, Writer
from klag_pipeline.kafka.protocol.versions import LIST_GROUPS


@dataclass(frozen=True, slots=True)
class ListedGroupEntry:
    group_id: str
    protocol_type: str
    state: str
    group_type: str


@dataclass(frozen=True, slots=True)
class ListGroupsResponse:
    throttle_ms: int
    error_code: int
    groups: tuple[ListedGroupEntry, ...]


def encode_list_groups(version: int, types: Sequence[str] = ("classic", "consumer")) -> bytes:
    w = Writer(LIST_GROUPS.flexible(version))
    if version >= 4:
        w.strings([])  # states filter: all states
    if version >= 5:
        w.strings(types)
    w.tags()
    return w.getvalue()


def decode_list_groups(version: int, data: bytes) -> ListGroupsResponse:
    r = Reader(data, LIST_GROUPS.flexible(version))
    throttle = r.int32() if version >= 1 else 0
    error_code = r.int16()
    groups = []
    for _ in range(r.array_length(2)):
        group_id, protocol_type = r.string(), r.string()
        state = r.string() if version >= 4 else ""
        group_type = r.string() if version >= 5 else ""
        r.skip_tags()
        groups.append(ListedGroupEntry(group_id, protocol_type, state, group_type))
    r.skip_tags()
    return ListGroupsResponse(throttle, error_code, tuple(groups))
