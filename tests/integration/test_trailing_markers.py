"""A caught-up transactional consumer (issue 18, defect 1): the committed offset points at the
trailing transaction marker, so ``high − committed`` is 1 though nothing is left to consume.

Before the fix the sampler read the marker, then the high watermark, failed with "no records
returned", counted an error and repeated three Fetches every cycle, and the partition had no
``lag_seconds``. Ground truth: the offsets the transactional producer reported and the markers
the read_committed end offset proves written.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from klag_pipeline.model import TopicPartition
from tests.integration.time_lag_harness import (
    LAG_SECONDS,
    Series,
    exposition,
    now_ms,
    one_value,
    run_exporter,
    settings_for,
    values,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka

CONSUMABLE = "kafka_consumergroup_group_consumable_lag"


async def test_commit_on_the_trailing_commit_marker_is_caught_up_in_time(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("trail"), unique("g")
    await kafka.create_topic(topic)
    offsets = await kafka.produce_transactional(
        topic, [Rec(b"t", timestamp_ms=now_ms() - 600_000)] * 3
    )
    assert offsets == [0, 1, 2]  # 3 is the commit marker, the last offset of the log
    tp = TopicPartition(topic, 0)
    # What a consumer that read everything commits: the offset after its last record, which is
    # the marker's.
    await kafka.commit(group, {tp: 3})

    for isolation in ("read_uncommitted", "read_committed"):
        settings = settings_for(
            kafka_bootstrap,
            groups=[group],
            topics=[topic],
            consumer_properties={"isolation.level": isolation},
            poll_interval=0.3,
        )
        snapshots, observer = await run_exporter(settings, cycles=3)

        for snapshot in snapshots:
            (row,) = snapshot.rows
            # Compatibility: offset lag is high − committed, as kafka-consumer-groups.sh says.
            assert (row.committed, row.high, row.lag) == (3, 4, 1), isolation
            assert row.lag_seconds == 0.0, isolation
            assert row.consumable_lag == 0, isolation
            assert snapshot.error_count == 0, isolation
            (summary,) = snapshot.groups
            assert summary.max_lag_seconds == 0.0, isolation
            series: Series = exposition(snapshot)
            assert one_value(series, LAG_SECONDS, group=group) == 0.0
            assert one_value(series, CONSUMABLE, group=group) == 0
        # One read finds the marker and the end of the log; later cycles read nothing while
        # committed offset and high watermark stay where they are.
        assert observer.fetches == 1, (isolation, observer.requests)


async def test_only_aborted_records_left_is_caught_up_under_read_committed(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("abtrail"), unique("g")
    await kafka.create_topic(topic)
    aborted_ts = now_ms() - 300_000
    aborted = await kafka.produce_transactional(
        topic, [Rec(b"a", timestamp_ms=aborted_ts)] * 2, commit=False
    )
    assert aborted == [0, 1]  # 2 is the abort marker; the log ends at 3
    tp = TopicPartition(topic, 0)
    await kafka.commit(group, {tp: 0})

    committed_view = settings_for(
        kafka_bootstrap,
        groups=[group],
        topics=[topic],
        consumer_properties={"isolation.level": "read_committed"},
        poll_interval=0.3,
    )
    snapshots, observer = await run_exporter(committed_view, cycles=2)
    for snapshot in snapshots:
        (row,) = snapshot.rows
        assert (row.high, row.lag) == (3, 3)
        assert row.lag_seconds == 0.0
        assert row.consumable_lag == 0
        assert snapshot.error_count == 0
        assert not row.compaction_detected
    assert observer.fetches == 1, observer.requests

    # A read_uncommitted consumer does get the aborted records: its next record is at 0.
    uncommitted_view = settings_for(
        kafka_bootstrap, groups=[group], topics=[topic], poll_interval=0.3
    )
    (snapshot,), _ = await run_exporter(uncommitted_view, cycles=1)
    (row,) = snapshot.rows
    assert row.consumable_lag is None
    assert row.lag_seconds is not None
    assert row.lag_seconds >= (now_ms() - aborted_ts) / 1000 - 60
    assert values(exposition(snapshot), CONSUMABLE) == []


async def test_records_after_the_trailing_marker_are_the_next_to_consume(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("trailnext"), unique("g")
    await kafka.create_topic(topic)
    await kafka.produce_transactional(topic, [Rec(b"t", timestamp_ms=now_ms() - 600_000)] * 3)
    tp = TopicPartition(topic, 0)
    await kafka.commit(group, {tp: 3})
    settings = settings_for(kafka_bootstrap, groups=[group], topics=[topic], poll_interval=0.3)
    (caught_up,), _ = await run_exporter(settings, cycles=1)
    assert caught_up.rows[0].lag_seconds == 0.0

    next_ts = now_ms() - 120_000
    assert await kafka.produce(topic, [Rec(b"n", timestamp_ms=next_ts)]) == [4]
    (snapshot,), _ = await run_exporter(settings, cycles=1)
    (row,) = snapshot.rows
    assert (row.lag, row.consumable_lag) == (2, None)
    assert row.lag_seconds is not None
    # The record at 4 is the next one: its age, give or take a loaded machine's second or two.
    expected = (snapshot.observed_at * 1000 - next_ts) / 1000
    assert abs(row.lag_seconds - expected) < 5
    assert not row.compaction_detected
