"""The shared relocate-and-retry round on the OffsetFetch path, the one version-or-raise helper
and the error-code table, over the scripted fake transport of test_kafka_protocol (no broker).
"""

from __future__ import annotations

import pytest

from klag_pipeline.errors import KafkaConnectionError, KafkaError, KafkaProtocolError
from klag_pipeline.kafka import errors
from klag_pipeline.kafka.adapter.groups import GroupOps
from klag_pipeline.kafka.adapter.watermarks import WatermarkOps
from klag_pipeline.model import ListedGroup, TopicPartition
from tests.unit.test_kafka_protocol import (
    TAGS,
    FakeClient,
    Script,
    _transport,
    carr,
    cs,
    i16,
    i32,
    i64,
)


def _offsets_v9(*groups: tuple[str, int, dict[int, int]]) -> bytes:
    entries = []
    for group, error, offsets in groups:
        parts = [
            i32(p) + i64(o) + i32(-1) + cs("") + i16(0) + TAGS for p, o in sorted(offsets.items())
        ]
        topics = [cs("t") + carr(parts) + TAGS] if offsets else []
        entries.append(cs(group) + carr(topics) + i16(error) + TAGS)
    return i32(0) + carr(entries) + TAGS


def _coordinator_v4(*found: tuple[str, int]) -> bytes:
    entries = [cs(g) + i32(node) + cs("h") + i32(1) + i16(0) + cs(None) + TAGS for g, node in found]
    return i32(0) + carr(entries) + TAGS


async def test_offsets_retry_moved_groups_once_and_give_up_on_a_second_move() -> None:
    script: Script = {
        (1, 9): [_offsets_v9(("a", 0, {0: 5}), ("b", 16, {}), ("c", 14, {}))],
        (1, 10): [_coordinator_v4(("b", 2), ("c", 2))],
        (2, 9): [_offsets_v9(("b", 0, {0: 7, 1: 8}), ("c", 16, {}))],
    }
    fake = FakeClient([1, 2], script)
    ops = GroupOps(await _transport(fake))
    listed = [ListedGroup(g, "consumer", "Empty", "classic", 1) for g in ("a", "b", "c")]
    result = await ops.fetch_committed_offsets(listed)
    assert dict(result.offsets["a"]) == {TopicPartition("t", 0): 5}
    assert dict(result.offsets["b"]) == {TopicPartition("t", 0): 7, TopicPartition("t", 1): 8}
    assert "c" not in result.offsets
    assert [(f.stage, f.target, f.error) for f in result.failures] == [
        ("committed_offsets", "c", "coordinator moved twice; retry next cycle")
    ]
    # One batched FindCoordinator, then the moved groups in one request to their new node.
    assert [(node, api) for node, api, _, _ in fake.sent if api != "ApiVersions"] == [
        (1, "OffsetFetch"),
        (1, "FindCoordinator"),
        (2, "OffsetFetch"),
    ]


async def test_offsets_raise_when_no_request_was_answered() -> None:
    script: Script = {(1, 9): [OSError("refused")], (1, 10): [_coordinator_v4()]}
    ops = GroupOps(await _transport(FakeClient([1], script)))
    with pytest.raises(KafkaConnectionError, match="refused"):
        await ops.fetch_committed_offsets([ListedGroup("g", "consumer", "Empty", "classic", 1)])


async def test_require_names_the_api_a_broker_lacks() -> None:
    fake = FakeClient([1], {})
    fake.all_versions = {18: (0, 2)}  # ApiVersions only
    transport = await _transport(fake)
    with pytest.raises(KafkaProtocolError, match=r"^broker 1 does not support ListGroups$"):
        await GroupOps(transport).list_groups()
    with pytest.raises(KafkaError, match=r"listed: broker 1 supports no Metadata v4\+$"):
        await WatermarkOps(transport).list_watermarks(["t"])


def test_error_table_is_kafka_4_1_complete() -> None:
    # Kafka 4.1.1's org.apache.kafka.common.protocol.Errors: codes -1..133 with no gaps.
    unnamed = [c for c in range(-1, 134) if errors.error_name(c) == f"UNKNOWN_ERROR_{c}"]
    assert unnamed == []
    assert errors.error_name(6) == "NOT_LEADER_OR_FOLLOWER"  # aiokafka: NOT_LEADER_FOR_PARTITION
    assert errors.error_name(133) == "SHARE_SESSION_LIMIT_REACHED"
    assert errors.is_retriable(133)
    assert errors.error_name(134) == "UNKNOWN_ERROR_134"
