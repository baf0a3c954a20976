"""The timestamp cache on the real broker (issue 17, docs/time-lag.md#cache): a steady cycle
reads only the committed offsets that moved, and a cached sample is dropped exactly when what it
says can have changed — retention, a re-created topic, the log cleaner.

Each test drives the exporter's own chain (long-running, one cache) cycle by cycle, with the
broker changed between cycles. The cache's clock is the system's plus a skew the test adds, so
"an hour later" needs no waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

from klag_pipeline.collection import CollectionChain, collection_chain
from klag_pipeline.events import CycleStarted
from klag_pipeline.kafka.factory import default_client_factory
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import TimestampSamplingSettings
from klag_pipeline.snapshot import PartitionRow
from tests.integration.time_lag_harness import (
    CountingObserver,
    compacted_topic,
    now_ms,
    settings_for,
    wait_cleaned,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka

CACHE_TTL = 60.0
HOUR = 3_600.0
HOUR_MS = 3_600_000


class SkewedClock:
    """System time; monotonic time moves ``skew`` seconds ahead whenever the test says."""

    def __init__(self) -> None:
        self.skew = 0.0

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic() + self.skew


@dataclass
class Exporter:
    """The exporter's chain for one cluster, run one cycle at a time."""

    chain: CollectionChain
    client: ClusterClient
    observer: CountingObserver
    clock: SkewedClock
    cycles: int = 0
    requests: list[str] = field(default_factory=list)

    async def cycle(self) -> dict[tuple[str, str, int], PartitionRow]:
        before = len(self.observer.requests)
        start = CycleStarted("c", self.cycles, self.clock.time(), self.clock.monotonic())
        self.cycles += 1
        snapshot = await self.chain.process(start)
        assert snapshot.error_count == 0, snapshot
        self.requests = [api for api, _, _ in self.observer.requests[before:]]
        return {(r.group, r.topic, r.partition): r for r in snapshot.rows}

    @property
    def fetches(self) -> int:
        return self.requests.count("Fetch")


async def exporter(
    bootstrap: str,
    groups: list[str],
    topics: list[str],
    consumer_properties: Mapping[str, str] | None = None,
) -> Exporter:
    settings = settings_for(
        bootstrap,
        groups=groups,
        topics=topics,
        sampling=TimestampSamplingSettings(cache_ttl=CACHE_TTL),
        consumer_properties=consumer_properties,
    )
    (cluster,) = settings.clusters
    observer = CountingObserver()
    client = default_client_factory(cluster, settings.exporter, observer)
    await client.connect()
    clock = SkewedClock()
    chain = collection_chain(client, cluster, settings.exporter, clock, long_running=True)
    return Exporter(chain, client, observer, clock)


def age_of(row: PartitionRow, timestamp_ms: int) -> float:
    assert row.lag_seconds is not None, row
    return row.lag_seconds - (time.time() - timestamp_ms / 1000)


async def test_steady_cycles_read_only_the_commits_that_moved(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, still, moving = unique("steady"), unique("still"), unique("moving")
    await kafka.create_topic(topic)
    base = now_ms() - 2 * HOUR * 1000
    stamps = [base + i * 60_000 for i in range(20)]
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=ts) for ts in stamps])
    tp = TopicPartition(topic, 0)
    await kafka.commit(still, {tp: 3})
    await kafka.commit(moving, {tp: 5})
    subject = await exporter(kafka_bootstrap, [still, moving], [topic])
    try:
        rows = await subject.cycle()
        assert subject.fetches >= 1
        assert "DescribeConfigs" in subject.requests  # the policy that lets the cache keep
        assert abs(age_of(rows[(still, topic, 0)], stamps[3])) < 2.0

        # Hours later (for the cache), nothing moved: no Fetch at all.
        for _ in range(3):
            subject.clock.skew += HOUR
            rows = await subject.cycle()
            assert subject.fetches == 0, subject.requests
            assert abs(age_of(rows[(still, topic, 0)], stamps[3])) < 2.0

        # One commit moved: one read, of that offset only, with its record's timestamp.
        await kafka.commit(moving, {tp: 11})
        rows = await subject.cycle()
        assert subject.fetches == 1, subject.requests
        assert abs(age_of(rows[(moving, topic, 0)], stamps[11])) < 2.0
        assert abs(age_of(rows[(still, topic, 0)], stamps[3])) < 2.0
    finally:
        await subject.client.close()


async def test_retention_past_a_cached_offset_reads_the_new_log_start(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("retained"), unique("g")
    await kafka.create_topic(topic)
    base = now_ms() - HOUR * 1000
    stamps = [base + i * 60_000 for i in range(10)]
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=ts) for ts in stamps])
    await kafka.commit(group, {TopicPartition(topic, 0): 2})
    subject = await exporter(kafka_bootstrap, [group], [topic])
    try:
        row = (await subject.cycle())[(group, topic, 0)]
        assert abs(age_of(row, stamps[2])) < 2.0
        assert not row.data_loss_detected

        assert await kafka.delete_records(topic, {0: 6}) == {0: 6}
        row = (await subject.cycle())[(group, topic, 0)]
        # The record at 2 is gone: the earliest survivor (6) is the lower bound, and loss.
        assert (row.low, row.data_loss_detected) == (6, True)
        assert abs(age_of(row, stamps[6])) < 2.0
        assert subject.fetches == 1
    finally:
        await subject.client.close()


@pytest.mark.parametrize("records_after", [6, 10], ids=["offsets-went-back", "same-offsets"])
async def test_a_re_created_topic_is_never_answered_from_the_old_topics_records(
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    records_after: int,
) -> None:
    topic, group = unique("recreated"), unique("g")
    await kafka.create_topic(topic)
    old = now_ms() - 5 * HOUR * 1000
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=old + i * 1000) for i in range(10)])
    tp = TopicPartition(topic, 0)
    await kafka.commit(group, {tp: 4})
    # Metadata (the topic id) refreshed every cycle, so the id is the only thing that differs
    # when the new topic has exactly the old one's offsets.
    subject = await exporter(
        kafka_bootstrap, [group], [topic], consumer_properties={"metadata.max.age.ms": "1"}
    )
    try:
        row = (await subject.cycle())[(group, topic, 0)]
        assert abs(age_of(row, old + 4_000)) < 2.0

        await kafka.delete_topic(topic)
        await kafka.create_topic(topic)
        new = now_ms() - 60_000
        stamps = [new + i * 1000 for i in range(records_after)]
        await kafka.produce(topic, [Rec(b"w", timestamp_ms=ts) for ts in stamps])
        await kafka.commit(group, {tp: 4})

        row = (await subject.cycle())[(group, topic, 0)]
        assert (row.low, row.high) == (0, records_after)
        assert subject.fetches == 1, subject.requests
        assert abs(age_of(row, stamps[4])) < 2.0, "the old topic's record answered"
    finally:
        await subject.client.close()


async def test_a_compacted_topics_sample_is_checked_again_after_cache_ttl(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("compact"), unique("g")
    stamps = await compacted_topic(kafka, topic, now_ms() - 3 * HOUR_MS)
    await kafka.commit(group, {TopicPartition(topic, 0): 2})
    subject = await exporter(kafka_bootstrap, [group], [topic])
    try:
        row = (await subject.cycle())[(group, topic, 0)]
        assert abs(age_of(row, stamps[2])) < 2.0
        assert not row.compaction_detected

        await wait_cleaned(kafka, topic)
        # Within cache_ttl the sample is still trusted: no read (the bound on the re-check).
        subject.clock.skew += CACHE_TTL / 2
        row = (await subject.cycle())[(group, topic, 0)]
        assert subject.fetches == 0, subject.requests
        assert abs(age_of(row, stamps[2])) < 2.0

        # Past cache_ttl it is read again: the record at 2 is gone, the next survivor is 5.
        subject.clock.skew += CACHE_TTL
        row = (await subject.cycle())[(group, topic, 0)]
        assert subject.fetches == 1, subject.requests
        assert row.compaction_detected
        assert abs(age_of(row, stamps[5])) < 2.0
    finally:
        await subject.client.close()
