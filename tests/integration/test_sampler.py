"""TimestampSampler against a real broker: the timestamps it returns are the ones produced."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.structs import TopicPartition as AioTopicPartition

from klag_pipeline.kafka.adapter.fetch_sender import FetchSender, Throttles
from klag_pipeline.kafka.fetch_plan import DEFAULT_REQUEST_BYTES
from klag_pipeline.kafka.sampler import IsolationLevel, SampleResult, TimestampSampler
from klag_pipeline.model import TimestampSample, TopicPartition
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka

HOUR_MS = 3600 * 1000
CAP = 262_144


def _past_ms(hours: float) -> int:
    return int(time.time() * 1000 - hours * HOUR_MS)


@pytest.fixture
async def transport(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaClient]:
    client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
    await client.bootstrap()
    try:
        yield client
    finally:
        await client.close()


async def leaders_of(client: AIOKafkaClient, *topics: str) -> dict[TopicPartition, int]:
    """Partition leaders from a fresh metadata refresh (the topics exist: no auto-creation)."""
    for topic in topics:
        client.add_topic(topic)
    await client.force_metadata_update()
    leaders: dict[TopicPartition, int] = {}
    for topic in topics:
        for partition in client.cluster.partitions_for_topic(topic) or ():
            leader = client.cluster.leader_for_partition(AioTopicPartition(topic, partition))
            leaders[TopicPartition(topic, partition)] = leader
    return leaders


def sampler(
    client: Any,
    *,
    cap: int = CAP,
    concurrency: int = 4,
    timeout: float = 5.0,
    isolation: IsolationLevel = "read_uncommitted",
    max_request_bytes: int = DEFAULT_REQUEST_BYTES,
) -> TimestampSampler:
    return TimestampSampler(
        client,
        max_bytes_per_partition=cap,
        max_concurrent_fetches=concurrency,
        fetch_timeout=timeout,
        isolation_level=isolation,
        max_request_bytes=max_request_bytes,
    )


async def sample(
    subject: TimestampSampler,
    client: AIOKafkaClient,
    wanted: Mapping[TopicPartition, Collection[int]],
) -> SampleResult:
    leaders = await leaders_of(client, *{tp.topic for tp in wanted})
    return await subject.sample(wanted, leaders)


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
async def test_create_time_at_several_offsets_of_a_compressed_batch(
    kafka: KafkaTestClient,
    transport: AIOKafkaClient,
    unique: Callable[[str], str],
    compression: Any,
) -> None:
    topic = unique("ts")
    await kafka.create_topic(topic)
    # Out of order on purpose: the record's own timestamp, not the batch's first or max.
    stamps = [_past_ms(h) for h in (5, 1, 3, 2, 4, 0.5, 6, 2.5)]
    records = [Rec(b"payload-%d" % i * 20, timestamp_ms=ts) for i, ts in enumerate(stamps)]
    await kafka.produce(topic, records, compression=compression, one_batch=True)
    tp = TopicPartition(topic, 0)

    result = await sample(sampler(transport), transport, {tp: [0, 3, 6]})

    assert result.failures == ()
    assert dict(result.samples) == {
        (tp, 0): TimestampSample(0, stamps[0], False),
        (tp, 3): TimestampSample(3, stamps[3], False),
        (tp, 6): TimestampSample(6, stamps[6], False),
    }
    # One read from offset 0 returns the whole batch, which holds the records at 3 and 6 too.
    assert result.requests_sent == 1


async def test_offsets_beyond_the_bytes_read_for_a_lower_one_get_a_read_of_their_own(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("spread")
    await kafka.create_topic(topic)
    # Three batches of ~15 KB (incompressible): a 16 KiB read from offset 5 returns the first
    # batch and at most a cut-off start of the second.
    stamps = [_past_ms(1 + i / 100) for i in range(45)]
    for first in (0, 15, 30):
        batch = [Rec(os.urandom(1000), timestamp_ms=stamps[i]) for i in range(first, first + 15)]
        await kafka.produce(topic, batch, one_batch=True)
    tp = TopicPartition(topic, 0)

    result = await sample(sampler(transport), transport, {tp: [5, 10, 25, 40]})

    assert result.failures == ()
    assert dict(result.samples) == {
        (tp, offset): TimestampSample(offset, stamps[offset], False) for offset in (5, 10, 25, 40)
    }
    # 5 and 10 from the first read; 25 and 40 each from a read of their own.
    assert result.requests_sent == 3


async def test_one_request_for_many_partitions_of_one_leader(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("batched")
    await kafka.create_topic(topic, partitions=4)
    stamps = {p: _past_ms(p + 1) for p in range(4)}
    await kafka.produce(
        topic, [Rec(b"v", partition=p, timestamp_ms=ts) for p, ts in stamps.items()]
    )

    result = await sample(
        sampler(transport), transport, {TopicPartition(topic, p): [0] for p in range(4)}
    )

    assert {key[0].partition: s.timestamp_ms for key, s in result.samples.items()} == stamps
    assert result.requests_sent == 1


async def test_log_append_time_topic(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("lat")
    await kafka.create_topic(topic, config={"message.timestamp.type": "LogAppendTime"})
    records = [Rec(b"v%d" % i, timestamp_ms=_past_ms(10)) for i in range(5)]
    await kafka.produce(topic, records, compression="lz4", one_batch=True)
    await kafka.produce(topic, records[:2])
    truth = await kafka.read_timestamps(topic, 0, 0)
    assert all(ts > _past_ms(1) for ts in truth.values())  # the broker's time, not ours
    tp = TopicPartition(topic, 0)

    result = await sample(sampler(transport), transport, {tp: [2, 5]})

    assert dict(result.samples) == {
        (tp, 2): TimestampSample(2, truth[2], False),
        (tp, 5): TimestampSample(5, truth[5], False),
    }


async def _big_batch_topic(kafka: KafkaTestClient, topic: str) -> tuple[int, int]:
    """Partition 0: one small batch. Partition 1: one ~100 KB batch. Returns their timestamps."""
    await kafka.create_topic(topic, partitions=2)
    small, big = _past_ms(2), _past_ms(3)
    await kafka.produce(topic, [Rec(b"s", partition=0, timestamp_ms=small)])
    # Incompressible values, so the batch stays ~100 KB on the broker; the helper's producer
    # caps batches at aiokafka's default 16 KiB.
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, max_batch_size=1 << 20)
    await producer.start()
    try:
        batch = producer.create_batch()
        for _ in range(100):
            assert batch.append(key=None, value=os.urandom(1000), timestamp=big) is not None
        batch.close()
        await (await producer.send_batch(batch, topic, partition=1))
    finally:
        await producer.stop()
    return small, big


async def test_batch_bigger_than_the_first_read_is_read_again_within_the_cap(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("bigok")
    small, big = await _big_batch_topic(kafka, topic)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)

    result = await sample(sampler(transport), transport, {p0: [0], p1: [50]})

    assert result.failures == ()
    assert dict(result.samples) == {
        (p0, 0): TimestampSample(0, small, False),
        (p1, 50): TimestampSample(50, big, False),
    }
    # p1's ~100 KB batch did not fit the first 16 KiB read behind p0: it came back empty and
    # was read again at the head of a second request.
    assert result.requests_sent == 2


async def test_batch_bigger_than_the_cap_is_a_failure_and_not_read_again(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("bigcap")
    small, _ = await _big_batch_topic(kafka, topic)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    subject = sampler(transport, cap=65_536)

    result = await sample(subject, transport, {p0: [0], p1: [50]})

    assert dict(result.samples) == {(p0, 0): TimestampSample(0, small, False)}
    assert [
        (f.target, "batch larger than max_bytes_per_partition" in f.error) for f in result.failures
    ] == [(f"{topic}-1", True)]

    again = await sample(subject, transport, {p1: [50]})

    assert again.samples == {}
    assert len(again.failures) == 1
    assert again.requests_sent == 0


async def test_committed_offset_on_a_commit_marker_reads_the_next_record(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("txn")
    await kafka.create_topic(topic)
    await kafka.produce_transactional(topic, [Rec(b"t", timestamp_ms=_past_ms(4))] * 3)
    # Offsets 0-2 data, 3 the commit marker, 4 the next record.
    (after,) = await kafka.produce(topic, [Rec(b"n", timestamp_ms=_past_ms(2))])
    assert after == 4
    truth = await kafka.read_timestamps(topic, 0, 0)
    tp = TopicPartition(topic, 0)

    for isolation in ("read_uncommitted", "read_committed"):
        result = await sample(sampler(transport, isolation=isolation), transport, {tp: [3]})

        assert dict(result.samples) == {(tp, 3): TimestampSample(4, truth[4], False)}, isolation


async def test_aborted_transaction_is_skipped_under_read_committed(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("abort")
    await kafka.create_topic(topic)
    aborted_ts, next_ts = _past_ms(5), _past_ms(1)
    offsets = await kafka.produce_transactional(
        topic, [Rec(b"a", timestamp_ms=aborted_ts)] * 2, commit=False
    )
    assert offsets == [0, 1]
    (after,) = await kafka.produce(topic, [Rec(b"n", timestamp_ms=next_ts)])
    assert after == 3  # 2 is the abort marker
    tp = TopicPartition(topic, 0)

    committed = await sample(sampler(transport, isolation="read_committed"), transport, {tp: [0]})
    uncommitted = await sample(sampler(transport), transport, {tp: [0]})

    assert dict(committed.samples) == {(tp, 0): TimestampSample(3, next_ts, False)}
    assert dict(uncommitted.samples) == {(tp, 0): TimestampSample(0, aborted_ts, False)}


async def test_out_of_range_and_unknown_leader_fail_only_their_partition(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("range")
    await kafka.create_topic(topic, partitions=2)
    stamp = _past_ms(1)
    await kafka.produce(topic, [Rec(b"v", partition=p, timestamp_ms=stamp) for p in (0, 1)])
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    ghost = TopicPartition(topic, 7)
    leaders = await leaders_of(transport, topic)

    result = await sampler(transport).sample({p0: [0], p1: [500], ghost: [0]}, leaders)

    assert dict(result.samples) == {(p0, 0): TimestampSample(0, stamp, False)}
    errors = {f.target: f.error for f in result.failures}
    assert set(errors) == {f"{topic}-1", f"{topic}-7"}
    assert "OFFSET_OUT_OF_RANGE" in errors[f"{topic}-1"]
    assert "no leader" in errors[f"{topic}-7"]


class HangingFirstRequest:
    """Passes requests to the real client, except the first, which never gets an answer."""

    def __init__(self, client: AIOKafkaClient) -> None:
        self._client = client
        self.calls = 0

    async def send(self, node_id: int, request: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            await asyncio.Event().wait()
        return await self._client.send(node_id, request)


async def test_a_request_timing_out_fails_only_its_partitions(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("slow")
    await kafka.create_topic(topic, partitions=2)
    stamps = [_past_ms(3), _past_ms(2)]
    await kafka.produce(
        topic, [Rec(b"v", partition=p, timestamp_ms=ts) for p, ts in enumerate(stamps)]
    )
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    hanging = HangingFirstRequest(transport)
    leaders = await leaders_of(transport, topic)
    # One partition per request and one slot: the second request waits for the first to time
    # out, then still happens.
    subject = sampler(hanging, concurrency=1, timeout=0.5, max_request_bytes=1)

    result = await subject.sample({p0: [0], p1: [0]}, leaders)

    assert dict(result.samples) == {(p1, 0): TimestampSample(0, stamps[1], False)}
    assert [(f.target, "timed out" in f.error) for f in result.failures] == [(f"{topic}-0", True)]
    assert result.requests_sent == hanging.calls == 2


async def test_a_timed_out_read_fails_every_offset_of_its_partition_at_once(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("slow1")
    await kafka.create_topic(topic)
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=_past_ms(i)) for i in (3, 2, 1)])
    tp = TopicPartition(topic, 0)
    hanging = HangingFirstRequest(transport)
    leaders = await leaders_of(transport, topic)

    result = await sampler(hanging, timeout=0.5).sample({tp: [0, 1, 2]}, leaders)

    # Not one more timeout per offset, pass after pass: the cycle pays for it once.
    assert result.samples == {}
    assert sorted(f.error.split(":")[0] for f in result.failures) == [
        f"offset {o}" for o in (0, 1, 2)
    ]
    assert all("timed out" in f.error for f in result.failures)
    assert result.requests_sent == hanging.calls == 1


class InFlightCounter:
    def __init__(self, client: AIOKafkaClient) -> None:
        self._client = client
        self.in_flight = 0
        self.most = 0

    async def send(self, node_id: int, request: Any) -> Any:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            return await self._client.send(node_id, request)
        finally:
            self.in_flight -= 1


async def test_in_flight_requests_are_bounded(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("bounded")
    await kafka.create_topic(topic, partitions=6)
    await kafka.produce(
        topic, [Rec(b"v%d" % p, partition=p, timestamp_ms=_past_ms(p)) for p in range(6)]
    )
    tps = [TopicPartition(topic, p) for p in range(6)]
    counter = InFlightCounter(transport)
    leaders = await leaders_of(transport, topic)
    # A response budget below one partition's: one request per partition, six in all.
    subject = sampler(counter, concurrency=2, max_request_bytes=1)

    result = await subject.sample({tp: [0] for tp in tps}, leaders)

    assert len(result.samples) == 6
    assert result.requests_sent == 6
    assert counter.most == 2


class ThrottlingFirstResponse:
    """Passes requests to the real client; the first response asks for a pause of ``pause_ms``."""

    def __init__(self, client: AIOKafkaClient, pause_ms: int) -> None:
        self._client = client
        self._pause_ms = pause_ms
        self.sent_at: list[float] = []
        self.answered_at: list[float] = []

    async def send(self, node_id: int, request: Any) -> Any:
        self.sent_at.append(time.monotonic())
        response = await self._client.send(node_id, request)
        if not self.answered_at:
            response.__dict__["throttle_time_ms"] = self._pause_ms
        self.answered_at.append(time.monotonic())
        return response


class Observed:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        self.throttles: list[tuple[str, str, int]] = []

    def on_request(self, api: str, broker: str, outcome: str, seconds: float) -> None:
        self.requests.append((api, broker, outcome))

    def on_throttle(self, api: str, broker: str, throttle_ms: int) -> None:
        self.throttles.append((api, broker, throttle_ms))


async def test_broker_throttle_is_honoured_before_the_next_request(
    kafka: KafkaTestClient, transport: AIOKafkaClient, unique: Callable[[str], str]
) -> None:
    topic = unique("throttle")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"v", partition=p, timestamp_ms=_past_ms(1)) for p in (0, 1)])
    tp, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    throttling = ThrottlingFirstResponse(transport, pause_ms=300)
    observed = Observed()
    leaders = await leaders_of(transport, topic)
    # The sampler's sender in the adapter: throttles are honoured on the shared table.
    sender = FetchSender(throttling, lambda node: None, Throttles())
    subject = TimestampSampler(
        sender,
        max_bytes_per_partition=CAP,
        max_concurrent_fetches=1,
        fetch_timeout=5.0,
        observer=observed,
        max_request_bytes=1,  # one partition per request: two requests
    )

    result = await subject.sample({tp: [0], tp1: [0]}, leaders)

    assert len(result.samples) == 2
    assert throttling.sent_at[1] - throttling.answered_at[0] >= 0.3
    leader = str(leaders[tp])
    assert observed.throttles == [("Fetch", leader, 300)]
    assert observed.requests == [("Fetch", leader, "ok")] * 2
