"""Malformed answers the fault suite found (tests/faults/test_malformed_cases.py), pinned at the
kafka/ boundary without Kafka: an ApiVersions answer with an inverted range (min > max), on which
aiokafka asserts instead of raising one of its errors, and a throttle time of 2^31 - 1 ms.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaProtocolError as AioProtocolError

from klag_pipeline.errors import KafkaConnectionError, KafkaProtocolError
from klag_pipeline.kafka.adapter.fetch_sender import FetchSender
from klag_pipeline.kafka.adapter.groups import GroupOps
from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.kafka.sampler import TimestampSampler
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings
from tests.unit.test_kafka_protocol import (
    FakeClient,
    Recorder,
    Script,
    _list_groups_v5,
    _transport,
)

INVERTED = "13 should be less than or equal to 0 for 0"


class DeadMetadataTask(FakeClient):
    """An aiokafka client whose metadata task died of an AssertionError, which ``close`` then
    re-raises (as ``AIOKafkaClient.close`` awaits that task)."""

    def __init__(self) -> None:
        super().__init__([1], {})
        self._sync_task: asyncio.Task[None] | None = None
        self.malformed = asyncio.Event()

    async def bootstrap(self) -> None:
        async def synchronizer() -> None:
            await self.malformed.wait()
            raise AssertionError(INVERTED)

        self._sync_task = asyncio.create_task(synchronizer())

    async def close(self) -> None:
        assert self._sync_task is not None
        await self._sync_task


async def test_a_dead_metadata_task_fails_like_a_lost_connection_and_close_never_raises() -> None:
    fake = DeadMetadataTask()
    cluster = ClusterSettings(name="fake", bootstrap_servers=("127.0.0.1:1",))
    transport = Transport(cluster, PerformanceSettings(kafka_timeout=1.0), None, lambda **_: fake)
    await transport.connect()
    assert transport.nodes() == [1]
    fake.malformed.set()
    assert fake._sync_task is not None
    with pytest.raises(AssertionError):
        await fake._sync_task
    with pytest.raises(KafkaConnectionError, match=r"metadata refresh stopped.*AssertionError"):
        transport.nodes()
    # Reconnecting (or stopping) closes the broken client: never a foreign exception.
    await transport.close()
    fresh = DeadMetadataTask()
    transport._client_factory = lambda **_: fresh
    await transport.connect()
    assert transport.nodes() == [1]


class AssertingSend:
    """aiokafka's send when opening the connection meets an inverted ApiVersions range."""

    async def send(self, node_id: int, request: Any) -> Any:
        raise AssertionError(INVERTED)


async def test_a_foreign_exception_while_connecting_fails_the_fetch_not_the_sampler() -> None:
    sampler = TimestampSampler(
        FetchSender(AssertingSend(), lambda node: None),
        max_bytes_per_partition=1024,
        max_concurrent_fetches=2,
        fetch_timeout=1.0,
    )
    tp = TopicPartition("t", 0)
    result = await sampler.sample({tp: [5]}, {tp: 1})
    assert result.samples == {}
    [failure] = result.failures
    assert failure.target == "t-0"
    assert "AssertionError" in failure.error
    assert "offset 5" in failure.error


async def test_an_absurd_throttle_time_fails_the_request_instead_of_pausing_the_broker() -> None:
    script: Script = {(1, 16): [_list_groups_v5(throttle=2**31 - 1), _list_groups_v5()]}
    observer = Recorder()
    transport = await _transport(FakeClient([1], script), observer)
    ops = GroupOps(transport)
    with pytest.raises(KafkaProtocolError, match="implausible throttle_time_ms"):
        await ops.list_groups()
    assert observer.throttles == []
    async with asyncio.timeout(1):  # not paused: the next answer comes at once
        await ops.list_groups()


class ThrottledFetch:
    SCHEMA = SimpleNamespace(names=("throttle_time_ms", "topics"))

    def get_item(self, name: str) -> int:
        return 2**31 - 1


class SendsThrottled:
    async def send(self, node_id: int, request: Any) -> Any:
        return ThrottledFetch()


async def test_an_absurd_fetch_throttle_fails_the_fetch_not_every_later_one() -> None:
    sender = FetchSender(SendsThrottled(), lambda node: None)
    with pytest.raises(AioProtocolError, match="implausible throttle_time_ms"):
        await sender.send(1, object())
