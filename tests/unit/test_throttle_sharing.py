"""The sampler's sender shares the transport's per-broker throttle, and sends a Fetch again when
a broker over a request quota withheld its data (throttle_time_ms > 0 and no partitions)."""

from __future__ import annotations

import time
from typing import Any

from aiokafka.protocol.fetch import FetchRequest, FetchResponse_v4

from klag_pipeline.kafka.adapter.client import THROTTLED_FETCH_RETRIES, _ThrottleSharingSender
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


async def test_a_withheld_fetch_is_sent_again_after_the_throttle_time() -> None:
    withheld = FetchResponse_v4(200, [])
    served = FetchResponse_v4(0, [("t", [PARTITION])])
    broker = Broker([withheld, served])
    observer = Observer()
    sender = _ThrottleSharingSender(transport_with(broker), observer)
    assert await sender.send(1, request()) is served
    assert len(broker.sent_at) == 2
    assert broker.sent_at[1] - broker.sent_at[0] >= 0.19
    assert observer.throttles == [("Fetch", "1", 200)]


async def test_retries_are_bounded_and_the_last_answer_is_returned() -> None:
    answers = [FetchResponse_v4(10, []) for _ in range(THROTTLED_FETCH_RETRIES + 1)]
    broker = Broker(list(answers))
    sender = _ThrottleSharingSender(transport_with(broker), None)
    assert await sender.send(1, request()) is answers[-1]
    assert len(broker.sent_at) == THROTTLED_FETCH_RETRIES + 1


async def test_a_throttled_answer_with_data_delays_the_transports_next_request() -> None:
    broker = Broker([FetchResponse_v4(150, [("t", [PARTITION])])])
    transport = transport_with(broker)
    sender = _ThrottleSharingSender(transport, None)
    await sender.send(2, request())
    began = time.monotonic()
    await transport.wait_throttle(2)
    assert time.monotonic() - began >= 0.1
    await transport.wait_throttle(3)  # another broker is not throttled
    assert time.monotonic() - began < 0.2
