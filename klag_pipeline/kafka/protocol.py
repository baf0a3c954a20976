"""Hand-rolled Kafka request/response codecs for the APIs klag-pipeline uses.

aiokafka's own structs are not used on the collection path: several of them pair a request
version with the wrong response schema, its ``TaggedFields``/``VarInt64`` encoders are wrong for
non-trivial values, and a decode error inside aiokafka's reader task closes the connection. Here
aiokafka only moves bytes (see :class:`WireRequest`); every body is encoded and decoded by this
module, with bounds checks so a malformed or hostile response becomes a
:class:`ProtocolDecodeError` instead of a hang, a huge allocation or a dead connection.

Each codec covers a range of versions with per-field version conditions taken from the Kafka
message JSON definitions (``clients/src/main/resources/common/message``). Flexible versions
(KIP-482) use compact strings/arrays and tagged fields; we always send empty tag buffers and skip
whatever tags a broker sends.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import ClassVar, Final

from klag_pipeline.model import TopicPartition


class ProtocolDecodeError(ValueError):
    """A response body does not match the schema of the version we asked for."""


# --------------------------------------------------------------------------------------------
# API keys, the version ranges implemented here, and the first flexible version of each.


@dataclass(frozen=True, slots=True)
class ApiSpec:
    name: str
    key: int
    min_version: int
    max_version: int
    first_flexible: int

    def flexible(self, version: int) -> bool:
        return version >= self.first_flexible


API_VERSIONS: Final = ApiSpec("ApiVersions", 18, 0, 2, 3)
METADATA: Final = ApiSpec("Metadata", 3, 4, 12, 9)
LIST_OFFSETS: Final = ApiSpec("ListOffsets", 2, 1, 7, 6)
# OffsetFetch is split: v8+ carries many groups per request, v2..v7 one group (v2: null topics).
OFFSET_FETCH: Final = ApiSpec("OffsetFetch", 9, 8, 9, 6)
OFFSET_FETCH_SINGLE: Final = ApiSpec("OffsetFetch", 9, 2, 7, 6)
FIND_COORDINATOR: Final = ApiSpec("FindCoordinator", 10, 1, 4, 3)
DESCRIBE_GROUPS: Final = ApiSpec("DescribeGroups", 15, 0, 6, 5)
LIST_GROUPS: Final = ApiSpec("ListGroups", 16, 0, 5, 3)
CONSUMER_GROUP_DESCRIBE: Final = ApiSpec("ConsumerGroupDescribe", 69, 0, 0, 0)
FETCH_KEY: Final = 1  # reported by ``overview`` only; the Fetch codec lives with timestamp sampling

REPORTED_APIS: Final[Mapping[str, int]] = {
    "ApiVersions": API_VERSIONS.key,
    "Metadata": METADATA.key,
    "ListGroups": LIST_GROUPS.key,
    "DescribeGroups": DESCRIBE_GROUPS.key,
    "ConsumerGroupDescribe": CONSUMER_GROUP_DESCRIBE.key,
    "FindCoordinator": FIND_COORDINATOR.key,
    "OffsetFetch": OFFSET_FETCH.key,
    "ListOffsets": LIST_OFFSETS.key,
    "Fetch": FETCH_KEY,
}


def choose_version(spec: ApiSpec, broker: Mapping[int, tuple[int, int]]) -> int | None:
    """Highest version both this module and the broker support, or None."""
    span = broker.get(spec.key)
    if span is None:
        return None
    low, high = max(span[0], spec.min_version), min(span[1], spec.max_version)
    return high if low <= high else None


# --------------------------------------------------------------------------------------------
# Primitive codec


_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_UUID_LEN = 16
ZERO_UUID: Final = bytes(_UUID_LEN)


class Writer:
    """Big-endian request body builder; ``flexible`` selects compact encodings and tag buffers."""

    __slots__ = ("_flexible", "_parts")

    def __init__(self, flexible: bool) -> None:
        self._flexible = flexible
        self._parts: list[bytes] = []

    def int8(self, value: int) -> Writer:
        self._parts.append(_I8.pack(value))
        return self

    def int16(self, value: int) -> Writer:
        self._parts.append(_I16.pack(value))
        return self

    def int32(self, value: int) -> Writer:
        self._parts.append(_I32.pack(value))
        return self

    def int64(self, value: int) -> Writer:
        self._parts.append(_I64.pack(value))
        return self

    def boolean(self, value: bool) -> Writer:
        self._parts.append(b"\x01" if value else b"\x00")
        return self

    def uuid(self, value: bytes) -> Writer:
        if len(value) != _UUID_LEN:
            raise ValueError("a UUID is 16 bytes")
        self._parts.append(value)
        return self

    def string(self, value: str | None) -> Writer:
        if value is None:
            self._parts.append(_uvarint(0) if self._flexible else _I16.pack(-1))
            return self
        raw = value.encode()
        if self._flexible:
            self._parts.append(_uvarint(len(raw) + 1))
        else:
            self._parts.append(_I16.pack(len(raw)))
        self._parts.append(raw)
        return self

    def array_length(self, count: int | None) -> Writer:
        """Length prefix of an array (None = null array); the caller writes the items."""
        if self._flexible:
            self._parts.append(_uvarint(0 if count is None else count + 1))
        else:
            self._parts.append(_I32.pack(-1 if count is None else count))
        return self

    def strings(self, values: Sequence[str] | None) -> Writer:
        self.array_length(None if values is None else len(values))
        for value in values or ():
            self.string(value)
        return self

    def int32s(self, values: Sequence[int]) -> Writer:
        self.array_length(len(values))
        for value in values:
            self.int32(value)
        return self

    def tags(self) -> Writer:
        """An empty tagged-field buffer (flexible versions only)."""
        if self._flexible:
            self._parts.append(b"\x00")
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("unsigned varint must be >= 0")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Reader:
    """Bounds-checked response body reader.

    Array lengths are checked against the bytes left (every element takes at least
    ``min_item`` bytes), so an absurd length fails at once instead of allocating.
    """

    __slots__ = ("_buf", "_flexible", "_pos")

    def __init__(self, data: bytes, flexible: bool, offset: int = 0) -> None:
        self._buf = data
        self._pos = offset
        self._flexible = flexible

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, size: int) -> int:
        pos = self._pos
        if size < 0 or pos + size > len(self._buf):
            raise ProtocolDecodeError(
                f"buffer underrun at byte {pos}: need {size}, have {len(self._buf) - pos}"
            )
        self._pos = pos + size
        return pos

    def int8(self) -> int:
        return int(_I8.unpack_from(self._buf, self._take(1))[0])

    def int16(self) -> int:
        return int(_I16.unpack_from(self._buf, self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack_from(self._buf, self._take(4))[0])

    def int64(self) -> int:
        return int(_I64.unpack_from(self._buf, self._take(8))[0])

    def boolean(self) -> bool:
        return self.int8() != 0

    def uuid(self) -> bytes:
        start = self._take(_UUID_LEN)
        return self._buf[start : start + _UUID_LEN]

    def uvarint(self) -> int:
        value = 0
        for shift in range(0, 35, 7):
            byte = self._buf[self._take(1)]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ProtocolDecodeError("unsigned varint longer than 5 bytes")

    def nullable_string(self) -> str | None:
        size = self.uvarint() - 1 if self._flexible else self.int16()
        if size < 0:
            return None
        start = self._take(size)
        try:
            return self._buf[start : start + size].decode()
        except UnicodeDecodeError as exc:
            raise ProtocolDecodeError(f"invalid UTF-8 in string at byte {start}") from exc

    def string(self) -> str:
        """A non-nullable string; a null from a misbehaving broker reads as ""."""
        value = self.nullable_string()
        return "" if value is None else value

    def nullable_bytes(self) -> bytes | None:
        size = self.uvarint() - 1 if self._flexible else self.int32()
        if size < 0:
            return None
        start = self._take(size)
        return self._buf[start : start + size]

    def array_length(self, min_item: int = 1) -> int:
        """Element count of an array; a null array reads as 0."""
        count = self.uvarint() - 1 if self._flexible else self.int32()
        if count < 0:
            return 0
        if count * max(min_item, 1) > self.remaining:
            raise ProtocolDecodeError(
                f"array of {count} elements cannot fit in the {self.remaining} bytes left"
            )
        return count

    def nullable_array_length(self, min_item: int = 1) -> int | None:
        pos = self._pos
        count = self.uvarint() - 1 if self._flexible else self.int32()
        if count < 0:
            return None
        self._pos = pos
        return self.array_length(min_item)

    def int32s(self) -> list[int]:
        return [self.int32() for _ in range(self.array_length(4))]

    def strings(self) -> list[str]:
        return [self.string() for _ in range(self.array_length())]

    def skip_tags(self) -> None:
        if not self._flexible:
            return
        for _ in range(self.array_length_raw_tags()):
            self.uvarint()  # tag number
            self._take(self.uvarint())

    def array_length_raw_tags(self) -> int:
        count = self.uvarint()
        if count * 2 > self.remaining:
            raise ProtocolDecodeError(f"{count} tagged fields cannot fit in {self.remaining} bytes")
        return count

    def expect_end(self) -> None:
        if self.remaining:
            raise ProtocolDecodeError(f"{self.remaining} unexpected trailing bytes")


# --------------------------------------------------------------------------------------------
# The aiokafka transport seam.


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


# --------------------------------------------------------------------------------------------
# ApiVersions (v0..v2, non-flexible).


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


# --------------------------------------------------------------------------------------------
# Metadata (v4..v12).


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
        if version >= 10:
            r.uuid()
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
        topics.append(TopicInfo(name, error_code, internal, tuple(partitions)))
    if 8 <= version <= 10:
        r.int32()  # cluster authorized operations
    r.skip_tags()
    return MetadataResponse(throttle, tuple(brokers), cluster_id, controller_id, tuple(topics))


# --------------------------------------------------------------------------------------------
# ListGroups (v0..v5).


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


# --------------------------------------------------------------------------------------------
# DescribeGroups (v0..v6).


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


# --------------------------------------------------------------------------------------------
# ConsumerGroupDescribe (API 69, v0, flexible).


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


# --------------------------------------------------------------------------------------------
# FindCoordinator (v1..v4; v4 batches keys).


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


# --------------------------------------------------------------------------------------------
# OffsetFetch: v8/v9 many groups, v2..v7 one group. topics = null → every committed partition.


@dataclass(frozen=True, slots=True)
class CommittedPartition:
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


def _decode_offset_topics(r: Reader, version: int) -> tuple[CommittedPartition, ...]:
    out = []
    for _ in range(r.array_length(2)):
        topic = r.string()
        for _ in range(r.array_length(14)):
            partition, offset = r.int32(), r.int64()
            if version >= 5:
                r.int32()  # committed leader epoch
            r.nullable_string()  # metadata
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


# --------------------------------------------------------------------------------------------
# ListOffsets (v1..v7).

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
