"""FindCoordinator (v1..v4; v4 batches keys)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from klag_pipeline.kafka.protocol.primitives import Reader, Writer
from klag_pipeline.kafka.protocol.versions import FIND_COORDINATOR


@dataclass(frozen=True, slots=True)
class Coordinator:
    key: str
    node_id: int
    host: str
    port: int
    error_code: int
    error_message: str | None


@dataclass(frozen=True, slots=True)
class FindCoordinatorResponse:
    throttle_ms: int
    coordinators: tuple[Coordinator, ...]
    error_code: int = 0


GROUP_KEY_TYPE: Final = 0


def encode_find_coordinator(version: int, keys: Sequence[str]) -> bytes:
    """v4+: all ``keys`` in one request; v1..v3: exactly one key."""
    w = Writer(FIND_COORDINATOR.flexible(version))
    if version >= 4:
        w.int8(GROUP_KEY_TYPE)
        w.strings(keys)
    else:
        if len(keys) != 1:
            raise ValueError("FindCoordinator before v4 takes exactly one key")
        w.string(keys[0])
        w.int8(GROUP_KEY_TYPE)
    w.tags()
    return w.getvalue()


def decode_find_coordinator(version: int, data: bytes, key: str = "") -> FindCoordinatorResponse:
    """``key`` names the single key of a v1..v3 request (the response does not echo it)."""
    r = Reader(data, FIND_COORDINATOR.flexible(version))
    throttle = r.int32()
    if version < 4:
        error_code = r.int16()
        message = r.nullable_string()
        node_id, host, port = r.int32(), r.string(), r.int32()
        r.skip_tags()
        coordinator = Coordinator(key, node_id, host, port, error_code, message)
        return FindCoordinatorResponse(throttle, (coordinator,))
    coordinators = []
    for _ in range(r.array_length(12)):
        key_name, node_id, host, port = r.string(), r.int32(), r.string(), r.int32()
        error_code, message = r.int16(), r.nullable_string()
        r.skip_tags()
        coordinators.append(Coordinator(key_name, node_id, host, port, error_code, message))
    r.skip_tags()
    return FindCoordinatorResponse(throttle, tuple(coordinators))
