"""The aiokafka transport seam: aiokafka moves the bytes, our codecs encode and decode them."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import ClassVar

from klag_pipeline.kafka.protocol.primitives import ProtocolDecodeError, Reader, Writer
from klag_pipeline.kafka.protocol.versions import API_VERSIONS, ApiSpec

_I32 = struct.Struct(">i")


class RawResponse:
    """aiokafka's connection calls ``RESPONSE_TYPE.decode``; we keep the bytes and decode later.

    Decoding outside aiokafka's reader task means a malformed body fails one request, not the
    connection, and a large body can be decoded off the event loop.
    """

    @classmethod
    def decode(cls, data: BytesIO) -> bytes:
        return data.read()


@dataclass(frozen=True, slots=True)
class _ResponseHeader:
    correlation_id: int


@dataclass(frozen=True, slots=True)
class _RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str
    flexible: bool

    def encode(self) -> bytes:
        # Request header v1/v2: client_id is always a classic (int16-length) string.
        writer = Writer(flexible=False)
        writer.int16(self.api_key).int16(self.api_version).int32(self.correlation_id)
        writer.string(self.client_id)
        return writer.getvalue() + (b"\x00" if self.flexible else b"")


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One encoded request, shaped like the aiokafka ``Request``/``RequestStruct`` pair.

    ``AIOKafkaConnection.send`` calls ``prepare(versions)``, ``build_request_header``,
    ``encode`` and later ``parse_response_header`` and ``RESPONSE_TYPE.decode``; nothing else.
    We choose the version ourselves from the capability table, so ``prepare`` returns self.
    """

    spec: ApiSpec
    version: int
    body: bytes
    RESPONSE_TYPE: ClassVar[type[RawResponse]] = RawResponse

    def prepare(self, versions: Mapping[int, tuple[int, int]]) -> WireRequest:
        return self

    def build_request_header(self, correlation_id: int, client_id: str) -> _RequestHeader:
        return _RequestHeader(
            self.spec.key, self.version, correlation_id, client_id, self.spec.flexible(self.version)
        )

    def encode(self) -> bytes:
        return self.body

    def parse_response_header(self, data: BytesIO) -> _ResponseHeader:
        raw = data.read(4)
        if len(raw) != 4:
            raise ProtocolDecodeError("response shorter than its header")
        correlation_id = int(_I32.unpack(raw)[0])
        # ApiVersions always answers with header v0, even to flexible requests.
        if self.spec.flexible(self.version) and self.spec.key != API_VERSIONS.key:
            start = data.tell()
            if data.read(1) != b"\x00":  # tags in a response header: rare, take the slow path
                data.seek(start)
                rest = data.read()
                reader = Reader(rest, flexible=True)
                reader.skip_tags()
                data.seek(start + len(rest) - reader.remaining)
        return _ResponseHeader(correlation_id)

    def __repr__(self) -> str:
        return f"WireRequest({self.spec.name} v{self.version}, {len(self.body)} bytes)"
