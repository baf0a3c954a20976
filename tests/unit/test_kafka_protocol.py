"""Hand-rolled protocol codecs against bytes built by hand from the Kafka JSON message schemas,
plus the adapter's request handling over a scripted fake transport (no broker, no mocks).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klag_pipeline.errors import KafkaConnectionError, KafkaProtocolError, KafkaTimeoutError
from klag_pipeline.kafka import protocol as p
from klag_pipeline.kafka.adapter.groups import GroupOps
from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.kafka.errors import error_name, is_retriable
from klag_pipeline.model import GroupState, ListedGroup, TopicPartition
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings

# ---------------------------------------------------------------- hand encoders (the schema)


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def uvar(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def s(v: str | None) -> bytes:  # classic string: int16 length, -1 = null
    if v is None:
        return i16(-1)
    raw = v.encode()
    return i16(len(raw)) + raw


def cs(v: str | None) -> bytes:  # compact string: uvarint(len + 1), 0 = null
    if v is None:
        return b"\x00"
    raw = v.encode()
    return uvar(len(raw) + 1) + raw


def arr(items: list[bytes]) -> bytes:
    return i32(len(items)) + b"".join(items)


def carr(items: list[bytes] | None) -> bytes:
    if items is None:
        return b"\x00"
    return uvar(len(items) + 1) + b"".join(items)


def cbytes(v: bytes) -> bytes:
    return uvar(len(v) + 1) + v


TAGS = b"\x00"
UUID_A = bytes(range(16))


# ---------------------------------------------------------------- primitives & versions


def test_choose_version_takes_highest_common() -> None:
    assert p.choose_version(p.OFFSET_FETCH, {9: (1, 10)}) == 9
    assert p.choose_version(p.OFFSET_FETCH, {9: (1, 7)}) is None
    assert p.choose_version(p.OFFSET_FETCH_SINGLE, {9: (1, 7)}) == 7
    assert p.choose_version(p.LIST_GROUPS, {}) is None


def test_error_names_cover_codes_newer_than_aiokafka() -> None:
    assert error_name(88) == "UNSTABLE_OFFSET_COMMIT"
    assert error_name(100) == "UNKNOWN_TOPIC_ID"
    assert error_name(69) == "GROUP_ID_NOT_FOUND"
    assert error_name(113) == "STALE_MEMBER_EPOCH"
    assert error_name(9999) == "UNKNOWN_ERROR_9999"
    assert is_retriable(14)
    assert not is_retriable(30)


def test_request_header_v2_uses_classic_client_id_and_empty_tags() -> None:
    request = p.WireRequest(p.LIST_GROUPS, 5, b"")
    header = request.build_request_header(correlation_id=7, client_id="klag")
    assert header.encode() == i16(16) + i16(5) + i32(7) + s("klag") + TAGS
    classic = p.WireRequest(p.LIST_GROUPS, 2, b"").build_request_header(7, "klag")
    assert classic.encode() == i16(16) + i16(2) + i32(7) + s("klag")


def test_flexible_response_header_skips_tagged_fields() -> None:
    body = b"BODY"
    raw = BytesIO(i32(42) + uvar(1) + uvar(3) + uvar(2) + b"xy" + body)
    header = p.WireRequest(p.LIST_GROUPS, 5, b"").parse_response_header(raw)
    assert header.correlation_id == 42
    assert p.RawResponse.decode(raw) == body
    plain = BytesIO(i32(9) + TAGS + body)
    assert p.WireRequest(p.LIST_GROUPS, 5, b"").parse_response_header(plain).correlation_id == 9
    assert plain.read() == body


# ---------------------------------------------------------------- ListGroups


def test_list_groups_v5_request_filters_types_only() -> None:
    expected = carr([]) + carr([cs("classic"), cs("consumer")]) + TAGS
    assert p.encode_list_groups(5) == expected
    assert p.encode_list_groups(4) == carr([]) + TAGS
    assert p.encode_list_groups(2) == b""


def test_list_groups_v5_response() -> None:
    group = cs("g1") + cs("consumer") + cs("Stable") + cs("consumer") + TAGS
    other = cs("g2") + cs("") + cs("Empty") + cs("classic") + TAGS
    raw = i32(0) + i16(0) + carr([group, other]) + TAGS
    response = p.decode_list_groups(5, raw)
    assert response.groups == (
        p.ListedGroupEntry("g1", "consumer", "Stable", "consumer"),
        p.ListedGroupEntry("g2", "", "Empty", "classic"),
    )


def test_list_groups_v4_and_v2_responses_have_no_type() -> None:
    v4 = i32(5) + i16(0) + carr([cs("g") + cs("consumer") + cs("Empty") + TAGS]) + TAGS
    assert p.decode_list_groups(4, v4).groups[0] == p.ListedGroupEntry("g", "consumer", "Empty", "")
    assert p.decode_list_groups(4, v4).throttle_ms == 5
    v2 = i32(0) + i16(14) + arr([s("g") + s("consumer")])
    response = p.decode_list_groups(2, v2)
    assert response.error_code == 14
    assert response.groups[0] == p.ListedGroupEntry("g", "consumer", "", "")


# ---------------------------------------------------------------- DescribeGroups


def _assignment_bytes(version: int, topics: dict[str, list[int]], trailing: bytes = b"") -> bytes:
    body = arr([s(t) + arr([i32(x) for x in parts]) for t, parts in topics.items()])
    return i16(version) + body + i32(-1) + trailing


def test_describe_groups_v5_response_with_two_groups() -> None:
    # aiokafka pairs DescribeGroups v3 with the v2 schema and fails on two groups; ours must not.
    assignment = _assignment_bytes(0, {"t": [0, 2]})
    member = (
        cs("m-1") + cs(None) + cs("client") + cs("/127.0.0.1")
        + cbytes(b"meta") + cbytes(assignment) + TAGS
    )  # fmt: skip
    g1 = i16(0) + cs("g1") + cs("Stable") + cs("consumer") + cs("range")
    g1 += carr([member]) + i32(-2147483648) + TAGS
    g2 = i16(0) + cs("g2") + cs("Empty") + cs("") + cs("") + carr([]) + i32(0) + TAGS
    raw = i32(0) + carr([g1, g2]) + TAGS
    response = p.decode_describe_groups(5, raw)
    assert [g.group_id for g in response.groups] == ["g1", "g2"]
    first = response.groups[0]
    assert (first.state, first.protocol_type, first.protocol) == ("Stable", "consumer", "range")
    assert first.members[0] == p.DescribedMember(
        "m-1", None, "client", "/127.0.0.1", b"meta", assignment
    )
    assert p.decode_consumer_assignment(first.members[0].assignment) == {
        TopicPartition("t", 0),
        TopicPartition("t", 2),
    }


def test_describe_groups_v6_has_error_message_and_v0_is_classic() -> None:
    v6 = i32(0) + carr([i16(69) + cs("gone") + cs("g") + cs("Dead") + cs("") + cs("")
                        + carr([]) + i32(0) + TAGS]) + TAGS  # fmt: skip
    group = p.decode_describe_groups(6, v6).groups[0]
    assert (group.error_code, group.error_message) == (69, "gone")
    member = s("m") + s("c") + s("h") + i32(0) + i32(-1)
    v0 = arr([i16(0) + s("g") + s("Stable") + s("consumer") + s("range") + arr([member])])
    decoded = p.decode_describe_groups(0, v0).groups[0]
    assert decoded.members[0].assignment == b""
    assert p.encode_describe_groups(5, ["a", "b"]) == carr([cs("a"), cs("b")]) + b"\x00" + TAGS
    assert p.encode_describe_groups(0, ["a"]) == arr([s("a")])


def test_consumer_assignment_tolerates_newer_versions_and_rejects_garbage() -> None:
    newer = _assignment_bytes(3, {"a": [1]}, trailing=b"\x00\x01\x02")
    assert p.decode_consumer_assignment(newer) == {TopicPartition("a", 1)}
    assert p.decode_consumer_assignment(b"") == frozenset()
    roundtrip = p.encode_consumer_assignment({"x": [3, 4]})
    assert p.decode_consumer_assignment(roundtrip) == {
        TopicPartition("x", 3),
        TopicPartition("x", 4),
    }
    with pytest.raises(p.ProtocolDecodeError):
        p.decode_consumer_assignment(b"\x00\x00\x7f\xff\xff\xff")  # 2^31-1 topics
    with pytest.raises(p.ProtocolDecodeError):
        p.decode_consumer_assignment(b"\x00")


# ---------------------------------------------------------------- ConsumerGroupDescribe


def test_consumer_group_describe_v0() -> None:
    assert p.encode_consumer_group_describe(0, ["g"]) == carr([cs("g")]) + b"\x00" + TAGS
    topic = UUID_A + cs("orders") + carr([i32(0), i32(1)]) + TAGS
    assignment = carr([topic]) + TAGS
    target = carr([]) + TAGS
    member = (
        cs("member-uuid") + cs(None) + cs("rack") + i32(3) + cs("console") + cs("/10.0.0.1")
        + carr([cs("orders")]) + cs(None) + assignment + target + TAGS
    )  # fmt: skip
    group = (
        i16(0) + cs(None) + cs("g") + cs("Stable") + i32(3) + i32(3) + cs("uniform")
        + carr([member]) + i32(-2147483648) + TAGS
    )  # fmt: skip
    response = p.decode_consumer_group_describe(0, i32(0) + carr([group]) + TAGS)
    described = response.groups[0]
    assert (described.group_id, described.state) == ("g", "Stable")
    assert described.members[0] == p.ConsumerGroupMember(
        "member-uuid", None, "console", "/10.0.0.1", ((UUID_A, "orders", (0, 1)),)
    )


# ---------------------------------------------------------------- OffsetFetch


def test_offset_fetch_v8_request_asks_all_topics_of_many_groups() -> None:
    expected = carr([cs("a") + b"\x00" + TAGS, cs("b") + b"\x00" + TAGS]) + b"\x00" + TAGS
    assert p.encode_offset_fetch(8, ["a", "b"]) == expected
    v9 = carr([cs("a") + cs(None) + i32(-1) + b"\x00" + TAGS]) + b"\x00" + TAGS
    assert p.encode_offset_fetch(9, ["a"]) == v9
    assert p.encode_offset_fetch(2, ["a"]) == s("a") + i32(-1)
    assert p.encode_offset_fetch(7, ["a"]) == cs("a") + b"\x00" + b"\x00" + TAGS


def test_offset_fetch_v8_response() -> None:
    part = i32(0) + i64(42) + i32(-1) + cs("") + i16(0) + TAGS
    none = i32(1) + i64(-1) + i32(-1) + cs(None) + i16(0) + TAGS
    topic = cs("t") + carr([part, none]) + TAGS
    g1 = cs("a") + carr([topic]) + i16(0) + TAGS
    g2 = cs("b") + carr([]) + i16(16) + TAGS
    response = p.decode_offset_fetch(8, i32(0) + carr([g1, g2]) + TAGS)
    assert response.groups[0].partitions == (
        p.CommittedPartition("t", 0, 42, 0),
        p.CommittedPartition("t", 1, -1, 0),
    )
    assert response.groups[1] == p.GroupOffsets("b", 16, ())


def test_offset_fetch_partitions_off_the_fast_path_decode_the_same() -> None:
    # The one-call path takes null/empty metadata and no tagged fields; metadata text, a
    # tagged field and an error code must still decode field by field, in order.
    plain = i32(0) + i64(42) + i32(5) + cs("") + i16(0) + TAGS
    metadata = i32(1) + i64(43) + i32(5) + cs("consumer-meta") + i16(0) + TAGS
    tagged = i32(2) + i64(44) + i32(5) + cs(None) + i16(0) + b"\x01\x00\x02xy"
    failed = i32(3) + i64(-1) + i32(-1) + cs(None) + i16(3) + TAGS
    topic = cs("t") + carr([plain, metadata, tagged, failed]) + TAGS
    raw = i32(0) + carr([cs("a") + carr([topic]) + i16(0) + TAGS]) + TAGS
    assert p.decode_offset_fetch(9, raw).groups[0].partitions == (
        p.CommittedPartition("t", 0, 42, 0),
        p.CommittedPartition("t", 1, 43, 0),
        p.CommittedPartition("t", 2, 44, 0),
        p.CommittedPartition("t", 3, -1, 3),
    )


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**31 - 1),
            st.integers(-1, 2**63 - 1),
            st.one_of(st.none(), st.text(max_size=20)),
            st.integers(-(2**15), 2**15 - 1),
            st.binary(max_size=4),
        ),
        max_size=12,
    )
)
def test_offset_fetch_v9_partitions_of_any_shape(
    parts: list[tuple[int, int, str | None, int, bytes]],
) -> None:
    def tags(raw: bytes) -> bytes:  # one tagged field (tag 7) holding raw, or none
        return b"\x01\x07" + bytes([len(raw)]) + raw if raw else TAGS

    encoded = [
        i32(n) + i64(offset) + i32(-1) + cs(meta) + i16(code) + tags(extra)
        for n, offset, meta, code, extra in parts
    ]
    topic = cs("t") + carr(encoded) + TAGS
    raw = i32(0) + carr([cs("a") + carr([topic]) + i16(0) + TAGS]) + TAGS
    expected = tuple(p.CommittedPartition("t", n, offset, code) for n, offset, _, code, _ in parts)
    assert p.decode_offset_fetch(9, raw).groups[0].partitions == expected


def test_offset_fetch_truncated_inside_a_partition_is_a_decode_error() -> None:
    part = i32(0) + i64(42) + i32(5) + cs("") + i16(0) + TAGS
    raw = i32(0) + carr([cs("a") + carr([cs("t") + carr([part, part]) + TAGS]) + i16(0) + TAGS])
    with pytest.raises(p.ProtocolDecodeError):
        p.decode_offset_fetch(9, raw[: len(raw) - 30])


def test_offset_fetch_v5_single_group_response() -> None:
    part = i32(3) + i64(7) + i32(0) + s(None) + i16(0)
    raw = i32(0) + arr([s("t") + arr([part])]) + i16(0)
    response = p.decode_offset_fetch(5, raw, group="g")
    assert response.groups == (p.GroupOffsets("g", 0, (p.CommittedPartition("t", 3, 7, 0),)),)


# ---------------------------------------------------------------- FindCoordinator


def test_find_coordinator_v4_batched_and_v3_single() -> None:
    assert p.encode_find_coordinator(4, ["a", "b"]) == i8(0) + carr([cs("a"), cs("b")]) + TAGS
    assert p.encode_find_coordinator(3, ["a"]) == cs("a") + i8(0) + TAGS
    assert p.encode_find_coordinator(1, ["a"]) == s("a") + i8(0)
    coordinators = [
        cs("a") + i32(2) + cs("h2") + i32(9092) + i16(0) + cs(None) + TAGS,
        cs("b") + i32(-1) + cs("") + i32(-1) + i16(15) + cs("loading") + TAGS,
    ]
    response = p.decode_find_coordinator(4, i32(0) + carr(coordinators) + TAGS)
    assert response.coordinators == (
        p.Coordinator("a", 2, "h2", 9092, 0, None),
        p.Coordinator("b", -1, "", -1, 15, "loading"),
    )
    single = i32(0) + i16(0) + s(None) + i32(3) + s("h3") + i32(1)
    decoded = p.decode_find_coordinator(1, single, key="g")
    assert decoded.coordinators == (p.Coordinator("g", 3, "h3", 1, 0, None),)


# ---------------------------------------------------------------- ListOffsets


def test_list_offsets_v7_request_and_response() -> None:
    expected = (
        i32(-1) + i8(1)
        + carr([cs("t") + carr([i32(0) + i32(-1) + i64(-2) + TAGS,
                                i32(1) + i32(-1) + i64(-2) + TAGS]) + TAGS])
        + TAGS
    )  # fmt: skip
    assert p.encode_list_offsets(7, {"t": [0, 1]}, p.EARLIEST, p.READ_COMMITTED) == expected
    assert p.encode_list_offsets(1, {"t": [0]}, p.LATEST) == (
        i32(-1) + arr([s("t") + arr([i32(0) + i64(-1)])])
    )
    parts = [
        i32(0) + i16(0) + i64(-1) + i64(100) + i32(0) + TAGS,
        i32(1) + i16(6) + i64(-1) + i64(-1) + i32(-1) + TAGS,
    ]
    raw = i32(0) + carr([cs("t") + carr(parts) + TAGS]) + TAGS
    response = p.decode_list_offsets(7, raw)
    assert response.partitions == (p.ListedOffset("t", 0, 0, 100), p.ListedOffset("t", 1, 6, -1))
    v1 = arr([s("t") + arr([i32(0) + i16(0) + i64(-1) + i64(5)])])
    assert p.decode_list_offsets(1, v1).partitions == (p.ListedOffset("t", 0, 0, 5),)


# ---------------------------------------------------------------- Metadata & ApiVersions


def test_metadata_v12_request_never_auto_creates() -> None:
    expected = carr([UUID_A[:0] + bytes(16) + cs("t") + TAGS]) + b"\x00" + b"\x00" + TAGS
    assert p.encode_metadata(12, ["t"]) == expected
    assert p.encode_metadata(12, None) == b"\x00" + b"\x00" + b"\x00" + TAGS
    assert p.encode_metadata(4, ["t"]) == arr([s("t")]) + b"\x00"
    assert p.encode_metadata(8, None) == i32(-1) + b"\x00\x00\x00"


def test_metadata_v12_and_v4_responses() -> None:
    broker = i32(1) + cs("host") + i32(9092) + cs(None) + TAGS
    partition = (
        i16(0) + i32(0) + i32(1) + i32(5) + carr([i32(1)]) + carr([i32(1)]) + carr([]) + TAGS
    )
    topic = i16(0) + cs("t") + UUID_A + b"\x00" + carr([partition]) + i32(0) + TAGS
    missing = i16(3) + cs("gone") + bytes(16) + b"\x00" + carr([]) + i32(0) + TAGS
    raw = i32(0) + carr([broker]) + cs("cid") + i32(1) + carr([topic, missing]) + TAGS
    response = p.decode_metadata(12, raw)
    assert response.brokers == (p.BrokerInfo(1, "host", 9092, None),)
    assert (response.cluster_id, response.controller_id) == ("cid", 1)
    # The topic id is kept (a re-created topic has a new one); the zero UUID means none.
    assert response.topics == (
        p.TopicInfo("t", 0, False, (p.PartitionInfo(0, 0, 1),), UUID_A),
        p.TopicInfo("gone", 3, False, (), None),
    )
    v4_partition = i16(0) + i32(2) + i32(7) + arr([i32(7)]) + arr([i32(7)])
    v4 = (
        i32(0) + arr([i32(7) + s("h") + i32(1) + s("r")]) + s(None) + i32(7)
        + arr([i16(0) + s("t") + b"\x01" + arr([v4_partition])])
    )  # fmt: skip
    decoded = p.decode_metadata(4, v4)
    assert decoded.topics[0] == p.TopicInfo("t", 0, True, (p.PartitionInfo(2, 0, 7),))


def test_describe_configs_v4_request_asks_one_key_per_topic() -> None:
    body = p.encode_describe_configs(4, ["a", "b"], ["cleanup.policy"])
    key = carr([cs("cleanup.policy")])
    resources = carr([i8(2) + cs("a") + key + TAGS, i8(2) + cs("b") + key + TAGS])
    # include_synonyms false, include_documentation (v3+) false, tags
    assert body == resources + b"\x00\x00" + TAGS
    v1 = p.encode_describe_configs(1, ["a"], ["cleanup.policy"])
    assert v1 == arr([i8(2) + s("a") + arr([s("cleanup.policy")])]) + b"\x00"


def test_describe_configs_v4_and_v1_responses() -> None:
    synonym = cs("log.cleanup.policy") + cs("delete") + i8(5) + TAGS
    config = (
        cs("cleanup.policy") + cs("compact,delete") + b"\x00" + i8(1) + b"\x00"
        + carr([synonym]) + i8(7) + cs("doc") + TAGS
    )  # fmt: skip
    ok = i16(0) + cs(None) + i8(2) + cs("t") + carr([config]) + TAGS
    denied = i16(29) + cs("denied") + i8(2) + cs("secret") + carr([]) + TAGS
    decoded = p.decode_describe_configs(4, i32(0) + carr([ok, denied]) + TAGS)
    assert decoded.results == (
        p.DescribedConfigs("t", 0, {"cleanup.policy": "compact,delete"}),
        p.DescribedConfigs("secret", 29, {}),
    )
    v1_config = s("cleanup.policy") + s("delete") + b"\x00" + i8(5) + b"\x00" + arr([])
    v1 = i32(3) + arr([i16(0) + s(None) + i8(2) + s("t") + arr([v1_config])])
    decoded = p.decode_describe_configs(1, v1)
    assert (decoded.throttle_ms, decoded.results) == (
        3,
        (p.DescribedConfigs("t", 0, {"cleanup.policy": "delete"}),),
    )


def test_api_versions_v2() -> None:
    raw = i16(0) + arr([i16(9) + i16(1) + i16(9), i16(69) + i16(0) + i16(1)]) + i32(3)
    response = p.decode_api_versions(2, raw)
    assert response.versions == {9: (1, 9), 69: (0, 1)}
    assert response.throttle_ms == 3


# ---------------------------------------------------------------- hostile input


_HUGE = b"\xff\xff\xff\xff\x01"  # compact array length of ~2^32


@pytest.mark.parametrize(
    ("prefix", "decode"),
    [
        (i32(0) + i16(0) + _HUGE, lambda raw: p.decode_list_groups(5, raw)),
        (i32(0) + _HUGE, lambda raw: p.decode_describe_groups(5, raw)),
        (i32(0) + _HUGE, lambda raw: p.decode_offset_fetch(8, raw)),
        (i32(0) + _HUGE, lambda raw: p.decode_list_offsets(7, raw)),
        (i32(0) + _HUGE, lambda raw: p.decode_metadata(12, raw)),
        (i32(0) + _HUGE, lambda raw: p.decode_consumer_group_describe(0, raw)),
        (i32(0) + _HUGE, lambda raw: p.decode_find_coordinator(4, raw)),
        (i16(0) + i32(2**31 - 1), lambda raw: p.decode_api_versions(0, raw)),
    ],
)
def test_absurd_array_lengths_fail_fast(prefix: bytes, decode: Callable[[bytes], Any]) -> None:
    raw = prefix + b"\x00" * 32
    started = time.monotonic()
    with pytest.raises(p.ProtocolDecodeError, match="cannot fit"):
        decode(raw)
    assert time.monotonic() - started < 0.5


def test_truncated_bad_utf8_and_long_varints_are_decode_errors() -> None:
    good = i32(0) + i16(0) + carr([cs("g") + cs("consumer") + cs("Stable") + cs("classic") + TAGS])
    for cut in range(len(good)):
        with pytest.raises(p.ProtocolDecodeError):
            p.decode_list_groups(5, good[:cut])
    with pytest.raises(p.ProtocolDecodeError):
        p.decode_list_groups(5, i32(0) + i16(0) + carr([b"\x03\xff\xfe" + cs("") + cs("")]))
    with pytest.raises(p.ProtocolDecodeError):
        p.decode_list_groups(5, i32(0) + i16(0) + b"\xff" * 6)


# ---------------------------------------------------------------- adapter over a fake transport


class _Broker:
    def __init__(self, node: int) -> None:
        self.nodeId = node
        self.host = "127.0.0.1"
        self.port = 9000 + node


class _FakeCluster:
    def __init__(self, nodes: list[int]) -> None:
        self._brokers = [_Broker(n) for n in nodes]

    def brokers(self) -> list[_Broker]:
        return self._brokers

    def broker_metadata(self, node: int) -> _Broker | None:
        return next((b for b in self._brokers if b.nodeId == node), None)


Script = dict[tuple[int, int], list[bytes | BaseException]]


class FakeClient:
    """Stands in for AIOKafkaClient: answers each (node, api key) from a script, in order."""

    def __init__(self, nodes: list[int], script: Script) -> None:
        self.cluster = _FakeCluster(nodes)
        self.script = script
        self.sent: list[tuple[int, str, int, bytes]] = []
        # Every API we use, at any version.
        self.all_versions = {key: (0, 20) for key in (3, 2, 9, 10, 15, 16, 69)}

    async def bootstrap(self) -> None:
        return None

    def force_metadata_update(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def send(self, node: int, request: p.WireRequest) -> bytes:
        self.sent.append((node, request.spec.name, request.version, request.body))
        if request.spec.key == p.API_VERSIONS.key:
            entries = [i16(k) + i16(lo) + i16(hi) for k, (lo, hi) in self.all_versions.items()]
            return i16(0) + arr(entries) + i32(0)
        answer = self.script[(node, request.spec.key)].pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.throttles: list[tuple[str, str, int]] = []

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self.requests.append((api, broker, outcome))

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self.throttles.append((api, broker, throttle_ms))


async def _transport(fake: FakeClient, observer: Recorder | None = None) -> Transport:
    cluster = ClusterSettings(name="fake", bootstrap_servers=("127.0.0.1:1",))
    transport = Transport(
        cluster, PerformanceSettings(kafka_timeout=2.0), observer, lambda **_: fake
    )
    await transport.connect()
    return transport


def _list_groups_v5(*groups: tuple[str, str], error: int = 0, throttle: int = 0) -> bytes:
    entries = [cs(g) + cs("consumer") + cs("Stable") + cs(kind) + TAGS for g, kind in groups]
    return i32(throttle) + i16(error) + carr(entries) + TAGS


def _describe_v6(*groups: tuple[str, int, bytes]) -> bytes:
    entries = []
    for group, error, assignment in groups:
        member = cs("m") + cs(None) + cs("c") + cs("/h") + cbytes(b"") + cbytes(assignment) + TAGS
        entries.append(
            i16(error) + cs(None) + cs(group) + cs("Stable") + cs("consumer") + cs("range")
            + carr([member] if not error else []) + i32(0) + TAGS
        )  # fmt: skip
    return i32(0) + carr(entries) + TAGS


async def test_list_groups_keeps_a_loading_brokers_previous_answer() -> None:
    script: Script = {
        (1, 16): [_list_groups_v5(("a", "classic")), _list_groups_v5(error=14)],
        (2, 16): [_list_groups_v5(("b", "consumer")), _list_groups_v5(("b", "consumer"))],
    }
    observer = Recorder()
    ops = GroupOps(await _transport(FakeClient([1, 2], script), observer))
    first = await ops.list_groups()
    assert {(g.group_id, g.group_type, g.coordinator) for g in first.groups} == {
        ("a", "classic", 1),
        ("b", "consumer", 2),
    }
    second = await ops.list_groups()
    assert {g.group_id for g in second.groups} == {"a", "b"}
    assert [(f.target, "COORDINATOR_LOAD_IN_PROGRESS" in f.error) for f in second.failures] == [
        ("1", True)
    ]
    assert ("ListGroups", "1", "COORDINATOR_LOAD_IN_PROGRESS") in observer.requests


async def test_list_groups_raises_when_no_broker_answers() -> None:
    script: Script = {(1, 16): [OSError("refused")]}
    ops = GroupOps(await _transport(FakeClient([1], script)))
    with pytest.raises(KafkaConnectionError, match="refused"):
        await ops.list_groups()


async def test_describe_retries_moved_groups_after_one_batched_find_coordinator() -> None:
    good = p.encode_consumer_assignment({"t": [0]})
    coordinators = carr(
        [
            cs("b") + i32(2) + cs("h") + i32(1) + i16(0) + cs(None) + TAGS,
            cs("c") + i32(2) + cs("h") + i32(1) + i16(0) + cs(None) + TAGS,
        ]
    )
    script: Script = {
        (1, 15): [_describe_v6(("a", 0, good), ("b", 16, b""), ("c", 14, b""), ("gone", 69, b""))],
        (1, 10): [i32(0) + coordinators + TAGS],
        (2, 15): [_describe_v6(("b", 0, b"\x00\x00\x00\x00\x00\x09"), ("c", 0, good))],
    }
    fake = FakeClient([1, 2], script)
    ops = GroupOps(await _transport(fake))
    listed = [ListedGroup(g, "consumer", "Stable", "classic", 1) for g in ("a", "b", "c", "gone")]
    result = await ops.describe_groups(listed)
    assert sorted(result.groups) == ["a", "b", "c"]
    assert result.groups["a"].members[0].assignment == {TopicPartition("t", 0)}
    assert result.groups["c"].coordinator == 2
    assert result.groups["c"].state is GroupState.STABLE
    # b's assignment bytes are malformed: an empty assignment and a Failure, not a crash.
    assert result.groups["b"].members[0].assignment == frozenset()
    assert [f.target for f in result.failures] == ["b"]
    finds = [entry for entry in fake.sent if entry[1] == "FindCoordinator"]
    assert [version for _, _, version, _ in finds] == [4]


async def test_malformed_response_is_a_protocol_error_and_connection_survives() -> None:
    script: Script = {(1, 9): [b"\x00\x00", i32(0) + carr([]) + TAGS]}
    observer = Recorder()
    ops = GroupOps(await _transport(FakeClient([1], script), observer))
    listed = [ListedGroup("g", "consumer", "Empty", "classic", 1)]
    with pytest.raises(KafkaProtocolError):
        await ops.fetch_committed_offsets(listed)
    assert ("OffsetFetch", "1", "protocol") in observer.requests
    again = await ops.fetch_committed_offsets(listed)
    assert [f.error for f in again.failures] == ["OffsetFetch: group missing in answer"]


async def test_throttle_time_delays_the_next_request_to_that_node() -> None:
    script: Script = {(1, 16): [_list_groups_v5(throttle=150), _list_groups_v5()]}
    observer = Recorder()
    ops = GroupOps(await _transport(FakeClient([1], script), observer))
    await ops.list_groups()
    assert observer.throttles == [("ListGroups", "1", 150)]
    started = time.monotonic()
    await ops.list_groups()
    assert time.monotonic() - started >= 0.14


async def test_a_hanging_broker_times_out_within_the_request_deadline() -> None:
    class Hanging(FakeClient):
        async def send(self, node: int, request: p.WireRequest) -> bytes:
            if request.spec.key == p.LIST_GROUPS.key:
                await asyncio.Event().wait()
            return await super().send(node, request)

    closed: list[object] = []

    class Conn:
        def close(self, reason: object = None) -> None:
            closed.append(reason)

    hanging = Hanging([1], {})
    hanging._conns = {(1, 0): Conn()}  # type: ignore[attr-defined]
    cluster = ClusterSettings(name="fake", bootstrap_servers=("127.0.0.1:1",))
    observer = Recorder()
    transport = Transport(
        cluster, PerformanceSettings(kafka_timeout=0.2), observer, lambda **_: hanging
    )
    await transport.connect()
    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        await GroupOps(transport).list_groups()
    assert time.monotonic() - started < 2.0
    assert ("ListGroups", "1", "timeout") in observer.requests
    # Later requests must not queue behind the lost answer: the connection is dropped.
    assert len(closed) == 1
