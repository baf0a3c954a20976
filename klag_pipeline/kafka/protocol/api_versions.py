"""ApiVersions (v0..v2, non-flexible)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from klag_pipeline.kafka.protocol.primitives import Reader


@dataclass(frozen=True, slots=True)
class ApiVersionsResponse:
    error_code: int
    versions: Mapping[int, tuple[int, int]]
    throttle_ms: int = 0


def encode_api_versions(version: int) -> bytes:
    return b""


def decode_api_versions(version: int, data: bytes) -> ApiVersionsResponse:
    r = Reader(data, flexible=False)
    error_code = r.int16()
    versions: dict[int, tuple[int, int]] = {}
    for _ in range(r.array_length(6)):
        key, low, high = r.int16(), r.int16(), r.int16()
        versions[key] = (low, high)
    # A broker that does not support our version answers v0 layout with UNSUPPORTED_VERSION.
    throttle = r.int32() if version >= 1 and r.remaining >= 4 else 0
    return ApiVersionsResponse(error_code, versions, throttle)
