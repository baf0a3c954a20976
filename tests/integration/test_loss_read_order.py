"""No false data-loss signal from read order (issue 18, defect 2), on the real broker.

``committed < low`` may understate a loss but never invent one. The race: the exporter reads a
group's committed offset c; the consumer then moves on past a range that retention deletes; the
exporter reads the log start above c. Before the fix that consumer, which never missed a record,
was reported with ``messages_lost > 0`` and ``data_loss_detected="true"``. The interleaving is
forced deterministically: right after the real OffsetFetch answer of the first cycle, the test
commits the consumer's new position and deletes records (DeleteRecords, what retention does)
before the exporter reads the watermarks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import pytest

from klag_pipeline.kafka.port import ClusterClient, CommittedOffsets
from klag_pipeline.model import ListedGroup, TopicPartition
from tests.integration.pipeline_support import WrappedClient
from tests.integration.time_lag_harness import (
    exposition,
    now_ms,
    one_value,
    run_cycle,
    settings_for,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka


class AfterFirstOffsetFetch(WrappedClient):
    """Runs ``meanwhile`` once, between the first OffsetFetch answer and everything after it."""

    def __init__(self, inner: ClusterClient, meanwhile: Callable[[], Awaitable[None]]) -> None:
        super().__init__(inner)
        self.meanwhile: Callable[[], Awaitable[None]] | None = meanwhile
        self.offset_fetches = 0

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        self.offset_fetches += 1
        answer = await super().fetch_committed_offsets(groups)
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return answer


async def test_a_consumer_that_moved_past_a_deletion_between_reads_is_no_loss(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, mover, stuck = unique("race"), unique("mover"), unique("stuck")
    await kafka.create_topic(topic)
    await kafka.produce(topic, [Rec(b"v", timestamp_ms=now_ms() - 60_000)] * 10)
    tp = TopicPartition(topic, 0)
    await kafka.commit(mover, {tp: 2})
    await kafka.commit(stuck, {tp: 2})

    async def consumer_moves_then_retention_deletes() -> None:
        await kafka.commit(mover, {tp: 8})  # it read 2..7: it missed nothing
        assert await kafka.delete_records(topic, {0: 6}) == {0: 6}

    wrappers: list[AfterFirstOffsetFetch] = []

    def wrap(real: ClusterClient) -> ClusterClient:
        wrappers.append(AfterFirstOffsetFetch(real, consumer_moves_then_retention_deletes))
        return wrappers[-1]

    cycle = await run_cycle(
        settings_for(kafka_bootstrap, groups=[mover, stuck], topics=[topic]), wrap=wrap
    )

    moved = cycle.row(mover, topic)
    # Reported at its confirmed position, with no loss claimed.
    assert (moved.committed, moved.low, moved.high, moved.lag) == (8, 6, 10, 2)
    assert (moved.data_loss_detected, moved.messages_lost, moved.retention_margin) == (False, 0, 2)
    # The group that really stayed at 2 lost the records 2..5 to the deletion.
    lost = cycle.row(stuck, topic)
    assert (lost.committed, lost.data_loss_detected, lost.messages_lost) == (2, True, 4)
    series = exposition(cycle.snapshot)
    assert one_value(series, "kafka_consumergroup_group_messages_lost", group=mover) == 0
    assert one_value(series, "kafka_consumergroup_group_messages_lost", group=stuck) == 4
    assert one_value(series, "kafka_lag_exporter_data_loss_partitions_total") == 1
    # The check costs one more OffsetFetch, and only because a loss candidate existed.
    assert wrappers[0].offset_fetches == 2


async def test_no_loss_candidate_costs_no_second_offset_fetch(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("calm"), unique("g")
    await kafka.create_topic(topic)
    await kafka.produce(topic, [Rec(b"v")] * 4)
    await kafka.commit(group, {TopicPartition(topic, 0): 1})
    wrappers: list[AfterFirstOffsetFetch] = []

    async def nothing() -> None:
        return None

    def wrap(real: ClusterClient) -> ClusterClient:
        wrappers.append(AfterFirstOffsetFetch(real, nothing))
        return wrappers[-1]

    cycle = await run_cycle(
        settings_for(kafka_bootstrap, groups=[group], topics=[topic]), wrap=wrap
    )

    assert cycle.row(group, topic).lag == 3
    assert wrappers[0].offset_fetches == 1
