"""The sampler's sender shares the transport's per-broker throttle, and turns a Fetch a broker
over a quota withheld (throttle_time_ms > 0 and no partitions) into an error naming the quota."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.protocol.fetch import FetchRequest, FetchResponse_v4

from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings

PARTITION = (0, 0, 0, 0, [], b"")  # partition, error, high, last stable, aborted, records


class Broker:
    """Answers each send with the next of ``answers`` and records when it was sent."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent_at: list[float] = []

    async def send(self, node_id: int, request: Any) -> Any:
        self.sent_at.append(time.monotonic())
        return self.answers.pop(0)


class Observer:
    def __init__(self) -> None:
        self.throttles: list[tuple[str, str, int]] = []

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        pass

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self.throttles.append((api, broker, throttle_ms))


def transport_with(broker: Broker) -> Transport:
    transport = Transport(
        ClusterSettings(name="c", bootstrap_servers=("127.0.0.1:9",)), PerformanceSettings(), None
    )
    transport._client = type("Client", (), {"send": broker.send})()
    return transport


def request() -> FetchRequest:
    return FetchRequest(0, 1, 1 << 20, 0, [("t", [(0, 5, 1024)])])


async def test_a_withheld_fetch_fails_with_the_quota_named_and_pauses_the_broker() -> None:
    broker = Broker([FetchResponse_v4(200, [])])
    observer = Observer()
    transport = transport_with(broker)
    sender = transport.fetch_sender(observer)
    with pytest.raises(AioKafkaError, match=r"broker 1 withheld .*quota.*200"):
        await sender.send(1, request())
    assert observer.throttles == [("Fetch", "1", 200)]
    began = time.monotonic()
    await transport.wait_throttle(1)
    assert time.monotonic() - began >= 0.15


async def test_a_served_fetch_is_returned_as_it_is() -> None:
    served = FetchResponse_v4(0, [("t", [PARTITION])])
    served_by = transport_with(Broker([served]))
    sender = served_by.fetch_sender()
    assert await sender.send(1, request()) is served


async def test_a_throttled_answer_with_data_delays_the_transports_next_request() -> None:
    broker = Broker([FetchResponse_v4(150, [("t", [PARTITION])])])
    transport = transport_with(broker)
    sender = transport.fetch_sender()
    await sender.send(2, request())
    began = time.monotonic()
    await transport.wait_throttle(2)
    assert time.monotonic() - began >= 0.1
    await transport.wait_throttle(3)  # another broker is not throttled
    assert time.monotonic() - began < 0.2
