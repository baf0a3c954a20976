"""Flags and loss end to end on the real broker: transactions, retention (DeleteRecords) and
compaction the log cleaner really performed (SPEC §4–§5, issue 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from klag_pipeline.model import TopicPartition
from tests.integration.time_lag_harness import (
    LAG_SECONDS,
    compacted_topic,
    flags,
    now_ms,
    one_value,
    run_cycle,
    settings_for,
    values,
    wait_cleaned,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka


async def test_read_committed_group_on_a_transaction_marker(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, on_marker, in_aborted = unique("txn"), unique("marker"), unique("aborted")
    await kafka.create_topic(topic)
    base = now_ms() - 700_000
    committed_ts, after_commit_ts, aborted_ts, after_abort_ts = (
        base + s * 1000 for s in (0, 100, 200, 300)
    )
    assert await kafka.produce_transactional(topic, [Rec(b"t", timestamp_ms=committed_ts)] * 3) == [
        0,
        1,
        2,
    ]
    # 3 is the commit marker.
    assert await kafka.produce(topic, [Rec(b"n", timestamp_ms=after_commit_ts)]) == [4]
    aborted = await kafka.produce_transactional(
        topic, [Rec(b"a", timestamp_ms=aborted_ts)] * 2, commit=False
    )
    assert aborted == [5, 6]  # 7 is the abort marker
    assert await kafka.produce(topic, [Rec(b"m", timestamp_ms=after_abort_ts)]) == [8]
    tp = TopicPartition(topic, 0)
    # What a read_committed consumer stores after the first transaction: the marker's offset.
    await kafka.commit(on_marker, {tp: 3})
    await kafka.commit(in_aborted, {tp: 5})
    settings = settings_for(
        kafka_bootstrap,
        groups=[on_marker, in_aborted],
        topics=[topic],
        consumer_properties={"isolation.level": "read_committed"},
    )

    cycle = await run_cycle(settings)

    marker_row, aborted_row = cycle.row(on_marker, topic), cycle.row(in_aborted, topic)
    assert (marker_row.high, marker_row.lag, aborted_row.lag) == (9, 6, 4)
    # The next record a read_committed consumer gets: 4 after the marker, 8 after the aborted
    # records and their marker. Neither gap is compaction.
    cycle.assert_age(marker_row.lag_seconds, after_commit_ts, "committed on the commit marker")
    cycle.assert_age(aborted_row.lag_seconds, after_abort_ts, "committed on aborted records")
    series = cycle.series()
    assert flags(series, on_marker, topic, 0) == ("false", "false")
    assert flags(series, in_aborted, topic, 0) == ("false", "false")
    assert cycle.snapshot.compaction_detected_count == 0
    assert cycle.snapshot.error_count == 0


async def test_retention_past_the_committed_offset_is_data_loss(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, behind, ahead = unique("ret"), unique("behind"), unique("ahead")
    await kafka.create_topic(topic)
    base = now_ms() - 1_800_000
    stamps = [base + i * 60_000 for i in range(10)]
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=ts) for ts in stamps])
    tp = TopicPartition(topic, 0)
    await kafka.commit(behind, {tp: 2})
    await kafka.commit(ahead, {tp: 7})
    assert await kafka.delete_records(topic, {0: 6}) == {0: 6}

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[behind, ahead], topics=[topic]))

    lost = cycle.row(behind, topic)
    assert (lost.low, lost.high, lost.lag) == (6, 10, 8)
    assert (lost.data_loss_detected, lost.compaction_detected) == (True, False)
    # The record at 2 is gone: the earliest survivor's age, a lower bound.
    cycle.assert_age(lost.lag_seconds, stamps[6], "earliest surviving record")
    series = cycle.series()
    assert flags(series, behind, topic, 0) == ("false", "true")
    assert one_value(series, "kafka_consumergroup_group_messages_lost", group=behind) == 4
    assert one_value(series, "kafka_consumergroup_group_retention_margin", group=behind) == -4
    ratio = one_value(series, "kafka_consumergroup_group_lag_retention_ratio", group=behind)
    assert ratio == 200.0  # lag 8 over a retained window of 4
    # The group past the log start is fine.
    safe = cycle.row(ahead, topic)
    assert not safe.data_loss_detected
    cycle.assert_age(safe.lag_seconds, stamps[7], "record at 7")
    assert flags(series, ahead, topic, 0) == ("false", "false")
    assert one_value(series, "kafka_consumergroup_group_messages_lost", group=ahead) == 0
    assert one_value(series, "kafka_consumergroup_group_retention_margin", group=ahead) == 1
    assert one_value(series, "kafka_lag_exporter_data_loss_partitions_total") == 1


async def test_every_record_deleted_gives_an_infinite_retention_ratio(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("empty"), unique("g")
    await kafka.create_topic(topic)
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=now_ms() - 60_000)] * 5)
    await kafka.commit(group, {TopicPartition(topic, 0): 2})
    assert await kafka.delete_records(topic, {0: 5}) == {0: 5}

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[group], topics=[topic]))

    row = cycle.row(group, topic)
    assert (row.low, row.high, row.lag) == (5, 5, 3)
    assert row.data_loss_detected
    # Nothing is left to read: no time lag rather than a made-up one, and no Fetch.
    assert row.lag_seconds is None
    assert cycle.fetches == 0, cycle.requests
    series = cycle.series()
    assert values(series, LAG_SECONDS, group=group) == []
    ratio = one_value(series, "kafka_consumergroup_group_lag_retention_ratio", group=group)
    assert ratio == math.inf
    text = "".join(
        line
        for line in cycle.exposition_text().splitlines(keepends=True)
        if line.startswith("kafka_consumergroup_group_lag_retention_ratio{")
    )
    assert text.rstrip().endswith(" +Inf"), text
    assert one_value(series, "kafka_consumergroup_group_messages_lost", group=group) == 3


async def test_compaction_that_removed_the_committed_record_is_flagged(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, cleaned, kept = unique("compact"), unique("cleaned"), unique("kept")
    stamps = await compacted_topic(kafka, topic, now_ms() - 3_000_000)
    tp = TopicPartition(topic, 0)
    await kafka.commit(cleaned, {tp: 2})
    await kafka.commit(kept, {tp: 7})
    rolls, survivors = await wait_cleaned(kafka, topic)
    assert set(range(5, 10)) <= survivors

    cycle = await run_cycle(settings_for(kafka_bootstrap, groups=[cleaned, kept], topics=[topic]))

    gone = cycle.row(cleaned, topic)
    assert (gone.low, gone.high, gone.lag) == (0, 10 + rolls, 8 + rolls)
    assert (gone.compaction_detected, gone.data_loss_detected) == (True, False)
    # The record at 2 was removed: the next surviving one (5, same key) is what the group reads.
    cycle.assert_age(gone.lag_seconds, stamps[5], "next surviving record")
    present = cycle.row(kept, topic)
    assert not present.compaction_detected
    cycle.assert_age(present.lag_seconds, stamps[7], "record at 7 still exists")
    series = cycle.series()
    assert flags(series, cleaned, topic, 0) == ("true", "false")
    assert flags(series, kept, topic, 0) == ("false", "false")
    assert one_value(series, "kafka_lag_exporter_compaction_detected_total") == 1
