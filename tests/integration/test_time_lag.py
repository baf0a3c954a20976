"""Time lag end to end on the real broker: whole exporter cycles against records whose timestamps
the test chose (SPEC §5, issue 4). Flags and loss scenarios: test_time_lag_loss.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from klag_pipeline.kafka.port import (
    ClusterClient,
    ClusterOverview,
    CommittedOffsets,
    GroupDescriptions,
    GroupListing,
    TimestampListing,
    WatermarkListing,
)
from klag_pipeline.model import Failure, ListedGroup, TopicPartition
from klag_pipeline.settings.schema import TimestampSamplingSettings
from tests.integration.time_lag_harness import (
    LAG_SECONDS,
    MAX_LAG_SECONDS,
    flags,
    now_ms,
    one_value,
    row_of,
    run_cycle,
    run_exporter,
    settings_for,
    values,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka

HOUR_MS = 3600 * 1000


async def test_create_time_lag_is_the_age_of_the_record_at_the_committed_offset(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("ct"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    base = now_ms() - 600_000
    # Not monotonic on purpose: the record's own timestamp, not the newest or oldest one.
    stamps = {
        0: [base + 40_000, base + 10_000, base + 90_000, base + 30_000],
        1: [base + 5_000, base + 250_000, base + 120_000],
    }
    for partition, partition_stamps in stamps.items():
        await kafka.produce(
            topic, [Rec(b"v", partition=partition, timestamp_ms=ts) for ts in partition_stamps]
        )
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 2})

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[group], topics=[topic]))

    p0, p1 = cycle.row(group, topic, 0), cycle.row(group, topic, 1)
    assert (p0.lag, p1.lag) == (3, 1)
    cycle.assert_age(p0.lag_seconds, stamps[0][1], "partition 0 at offset 1")
    cycle.assert_age(p1.lag_seconds, stamps[1][2], "partition 1 at offset 2")
    assert (p0.compaction_detected, p0.data_loss_detected) == (False, False)
    series = cycle.series()
    assert one_value(series, LAG_SECONDS, group=group, partition=0) == p0.lag_seconds
    assert flags(series, group, topic, 0) == ("false", "false")
    # The group's time lag is its oldest unconsumed record: partition 0's.
    assert one_value(series, MAX_LAG_SECONDS, group=group) == p0.lag_seconds
    assert cycle.snapshot.error_count == 0


async def test_idle_producer_shows_the_true_growing_age_from_the_first_cycle(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("idle"), unique("g")
    await kafka.create_topic(topic)
    # An hour ago a producer wrote ten records a second apart, then stopped for good.
    base = now_ms() - HOUR_MS - 10_000
    stamps = [base + i * 1000 for i in range(10)]
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=ts) for ts in stamps])
    await kafka.commit(group, {TopicPartition(topic, 0): 5})
    settings = settings_for(kafka_bootstrap, groups=[group], topics=[topic], poll_interval=1.0)

    (first, second), observer = await run_exporter(settings, cycles=2)

    ages = []
    for snapshot in (first, second):
        row = row_of(snapshot, group, topic)
        assert row.lag == 5
        assert row.lag_seconds is not None
        # "now" of the calculation lies between the cycle's start and a moment after its reads.
        low = snapshot.started_at - stamps[5] / 1000 - 1.0
        high = snapshot.observed_at - stamps[5] / 1000 + 1.0
        assert low <= row.lag_seconds <= high, (row.lag_seconds, low, high)
        ages.append(row.lag_seconds)
    assert ages[0] > 3600
    # It grows with the wall clock (the producer is idle: a rate model would say 0 here).
    elapsed = second.observed_at - first.observed_at
    assert elapsed > 0.5
    assert ages[1] - ages[0] == pytest.approx(elapsed, abs=0.5)
    # The second cycle's timestamp came from the cache: the record at an offset never changes.
    assert observer.fetches == 1


async def test_caught_up_group_has_zero_time_lag_without_any_fetch(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("done"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    old = now_ms() - HOUR_MS
    await kafka.produce(topic, [Rec(b"v", partition=p, timestamp_ms=old) for p in (0, 0, 0, 1, 1)])
    await kafka.commit(group, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 2})

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[group], topics=[topic]))

    for partition in (0, 1):
        row = cycle.row(group, topic, partition)
        assert (row.lag, row.lag_seconds) == (0, 0.0)
    series = cycle.series()
    assert values(series, LAG_SECONDS, group=group) == [0.0, 0.0]
    assert flags(series, group, topic, 0) == ("false", "false")
    assert one_value(series, MAX_LAG_SECONDS, group=group) == 0.0
    assert cycle.fetches == 0, cycle.requests
    assert any(api == "ListOffsets" for api, _, _ in cycle.requests)  # the count is live


async def test_log_append_time_topic_reports_the_broker_timestamp(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("lat"), unique("g")
    await kafka.create_topic(topic, config={"message.timestamp.type": "LogAppendTime"})
    # The producer's (old) timestamps are overwritten by the broker's append time.
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=now_ms() - HOUR_MS)] * 3)
    await kafka.produce(topic, [Rec(b"w", timestamp_ms=now_ms() - HOUR_MS)] * 3, one_batch=True)
    truth = await kafka.read_timestamps(topic, 0, 0)
    await kafka.commit(group, {TopicPartition(topic, 0): 4})

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[group], topics=[topic]))

    row = cycle.row(group, topic)
    cycle.assert_age(row.lag_seconds, truth[4], "LogAppendTime record at offset 4")
    assert row.lag_seconds is not None
    assert row.lag_seconds < 600  # not the producer's hour-old stamps


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_batches_of_each_codec(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str], codec: Any
) -> None:
    topic, early, late = unique(codec), unique("early"), unique("late")
    await kafka.create_topic(topic)
    base = now_ms() - 900_000
    stamps = [base + s * 1000 for s in (50, 10, 300, 70, 20, 600, 90, 40)]
    # One compressed batch: both committed offsets sit in its middle.
    offsets = await kafka.produce(
        topic,
        [Rec(b"payload-%d" % i * 30, timestamp_ms=ts) for i, ts in enumerate(stamps)],
        compression=codec,
        one_batch=True,
    )
    assert offsets == list(range(8))
    await kafka.commit(early, {TopicPartition(topic, 0): 3})
    await kafka.commit(late, {TopicPartition(topic, 0): 6})

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[early, late], topics=[topic]))

    cycle.assert_age(cycle.row(early, topic).lag_seconds, stamps[3], f"{codec} offset 3")
    cycle.assert_age(cycle.row(late, topic).lag_seconds, stamps[6], f"{codec} offset 6")
    assert cycle.snapshot.error_count == 0


async def _produce_big_batch(bootstrap: str, topic: str, partition: int, timestamp_ms: int) -> None:
    """One ~100 KB record batch (incompressible values, so it stays that size on the broker)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 20)
    await producer.start()
    try:
        batch = producer.create_batch()
        for _ in range(100):
            assert batch.append(key=None, value=os.urandom(1000), timestamp=timestamp_ms)
        batch.close()
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


async def test_batch_larger_than_the_cap_gives_no_time_lag_and_an_error(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("big"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    small_ts, big_ts = now_ms() - 120_000, now_ms() - 180_000
    await kafka.produce(topic, [Rec(b"s", partition=0, timestamp_ms=small_ts)] * 2)
    await _produce_big_batch(kafka_bootstrap, topic, 1, big_ts)
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 50})
    sampling = TimestampSamplingSettings(max_bytes_per_partition=65_536)

    cycle = await run_cycle(
        settings_for(kafka_bootstrap, groups=[group], topics=[topic], sampling=sampling)
    )

    small, big = cycle.row(group, topic, 0), cycle.row(group, topic, 1)
    cycle.assert_age(small.lag_seconds, small_ts, "small batch")
    # Never a made-up value: no time lag for the partition whose batch is over the cap...
    assert (big.lag, big.lag_seconds) == (50, None)
    assert cycle.snapshot.error_count >= 1
    series = cycle.series()
    assert values(series, LAG_SECONDS, group=group, partition=1) == []
    # ...while its offset lag is exported, and the group's time lag is the partition it knows.
    assert one_value(series, "kafka_consumergroup_group_lag", group=group, partition=1) == 50
    assert one_value(series, MAX_LAG_SECONDS, group=group) == small.lag_seconds


async def test_groups_at_different_offsets_of_one_partition(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("multi")
    groups = {unique("g"): offset for offset in (1, 4, 8)}
    await kafka.create_topic(topic)
    base = now_ms() - 500_000
    stamps = [base + i * 7_000 for i in range(10)]
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=ts) for ts in stamps])
    for group, offset in groups.items():
        await kafka.commit(group, {TopicPartition(topic, 0): offset})

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=groups, topics=[topic]))

    for group, offset in groups.items():
        cycle.assert_age(cycle.row(group, topic).lag_seconds, stamps[offset], group)
    # A partition appears at most once per Fetch, but the read from the lowest offset (1)
    # returns the small batches after it too, which hold the records at 4 and 8: one request.
    assert cycle.fetches == 1, cycle.requests


async def test_groups_at_the_same_offset_cost_one_read(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("same")
    groups = [unique("g") for _ in range(4)]
    await kafka.create_topic(topic)
    stamps = [now_ms() - 300_000 + i * 1000 for i in range(6)]
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=ts) for ts in stamps])
    for group in groups:
        await kafka.commit(group, {TopicPartition(topic, 0): 4})

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=groups, topics=[topic]))

    reported = {cycle.row(group, topic).lag_seconds for group in groups}
    assert len(reported) == 1  # one read, one value for everyone
    cycle.assert_age(reported.pop(), stamps[4], "offset 4")
    assert cycle.fetches == 1, cycle.requests


async def test_sampling_disabled_exports_no_time_lag_and_fetches_nothing(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("off"), unique("g")
    await kafka.create_topic(topic)
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=now_ms() - HOUR_MS)] * 4)
    await kafka.commit(group, {TopicPartition(topic, 0): 1})
    sampling = TimestampSamplingSettings(enabled=False)

    cycle = await run_cycle(
        settings_for(kafka_bootstrap, groups=[group], topics=[topic], sampling=sampling)
    )

    assert cycle.row(group, topic).lag == 3
    assert cycle.row(group, topic).lag_seconds is None
    assert not cycle.snapshot.timestamp_sampling
    series = cycle.series()
    assert LAG_SECONDS not in series
    assert MAX_LAG_SECONDS not in series
    assert one_value(series, "kafka_consumergroup_group_lag", group=group) == 3
    assert cycle.fetches == 0, cycle.requests


class LeaderAway:
    """The real client, except that during its first timestamp sampling the leader of ``away``
    does not answer: its read stalls for ``fetch_timeout`` and fails, as a Fetch to an
    unresponsive leader does. Every other partition is read from the broker as usual.
    """

    def __init__(self, client: ClusterClient, away: TopicPartition, fetch_timeout: float) -> None:
        self._client = client
        self._away = away
        self._fetch_timeout = fetch_timeout
        self.outages = 0

    async def connect(self) -> None:
        await self._client.connect()

    async def close(self) -> None:
        await self._client.close()

    async def list_groups(self) -> GroupListing:
        return await self._client.list_groups()

    async def describe_groups(self, groups: Sequence[ListedGroup]) -> GroupDescriptions:
        return await self._client.describe_groups(groups)

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        return await self._client.fetch_committed_offsets(groups)

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        return await self._client.list_watermarks(topics)

    async def overview(self) -> ClusterOverview:
        return await self._client.overview()

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        if self.outages or self._away not in wanted:
            return await self._client.sample_timestamps(wanted)
        self.outages += 1
        others = {tp: offsets for tp, offsets in wanted.items() if tp != self._away}
        listing, _ = await asyncio.gather(
            self._client.sample_timestamps(others), asyncio.sleep(self._fetch_timeout)
        )
        failure = Failure(
            "timestamps",
            f"{self._away.topic}-{self._away.partition}",
            f"Fetch timed out after {self._fetch_timeout:g}s",
        )
        return TimestampListing(listing.samples, (*listing.failures, failure))


async def test_unavailable_leader_costs_one_partition_its_time_lag_for_one_cycle(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("away"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    stamps = {0: now_ms() - 200_000, 1: now_ms() - 400_000}
    await kafka.produce(
        topic, [Rec(b"v", partition=p, timestamp_ms=ts) for p, ts in stamps.items() for _ in "ab"]
    )
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 1})
    poll_interval, fetch_timeout = 2.0, 0.5
    sampling = TimestampSamplingSettings(fetch_timeout=fetch_timeout)
    settings = settings_for(
        kafka_bootstrap,
        groups=[group],
        topics=[topic],
        sampling=sampling,
        poll_interval=poll_interval,
    )
    wrappers: list[LeaderAway] = []

    def wrap(client: ClusterClient) -> ClusterClient:
        wrappers.append(LeaderAway(client, TopicPartition(topic, 1), fetch_timeout))
        return wrappers[-1]

    (during, after), _ = await run_exporter(settings, cycles=2, wrap=wrap)

    assert [w.outages for w in wrappers] == [1]
    # The cycle finished on time, with partition 1's offset lag but not its time lag.
    assert during.duration_seconds < poll_interval
    assert during.error_count >= 1
    reachable, away = row_of(during, group, topic, 0), row_of(during, group, topic, 1)
    assert reachable.lag_seconds is not None
    assert (away.lag, away.lag_seconds) == (1, None)
    # Next cycle it is back, with the right value.
    back = row_of(after, group, topic, 1)
    assert back.lag_seconds is not None
    low = after.started_at - stamps[1] / 1000 - 1.0
    high = after.observed_at - stamps[1] / 1000 + 1.0
    assert low <= back.lag_seconds <= high
    assert after.error_count == 0
