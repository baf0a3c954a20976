"""Answers that cannot be trusted never withdraw series (issue 18, defect 3), on the real broker.

A broker that has not loaded its group metadata lists no groups, without an error; a coordinator
that is loading or moving fails OffsetFetch for its groups; a leader that is moving fails
ListOffsets for its partitions. Each of these happened on a real broker (tests/faults/
test_broker_resume.py reproduces the first end to end); here the real adapter's answer is cut
down the same way in one chosen cycle, so the outcome is deterministic. Ground truth: the offsets
the test committed and the records it produced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from types import MappingProxyType

import pytest

from klag_pipeline.kafka.port import (
    ClusterClient,
    CommittedOffsets,
    GroupListing,
    WatermarkListing,
)
from klag_pipeline.model import Failure, ListedGroup, TopicPartition
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn
from tests.integration.pipeline_support import (
    WrappedClient,
    cluster,
    exactly,
    running,
    self_metric,
    settings,
    wrapping,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka


class CutDown(WrappedClient):
    """The real client, whose answers in the cycles listed in ``blind`` are cut down the way a
    loading broker, coordinator or moving leader cuts them (call counts are per cycle: each of
    these methods is called once per cycle)."""

    def __init__(self, inner: ClusterClient, blind: Collection[int], what: str) -> None:
        super().__init__(inner)
        self.blind = set(blind)
        self.what = what
        self.calls = {"list": 0, "offsets": 0, "watermarks": 0}

    async def list_groups(self) -> GroupListing:
        self.calls["list"] += 1
        real = await super().list_groups()
        if self.what == "listing" and self.calls["list"] in self.blind:
            return GroupListing(())  # an unloaded coordinator: nothing, and no error
        return real

    async def fetch_committed_offsets(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        self.calls["offsets"] += 1
        real = await super().fetch_committed_offsets(groups)
        if self.what == "offsets" and self.calls["offsets"] in self.blind:
            failures = tuple(
                Failure("committed_offsets", g.group_id, "OffsetFetch: load in progress")
                for g in groups
            )
            return CommittedOffsets(MappingProxyType({}), failures)
        return real

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        self.calls["watermarks"] += 1
        real = await super().list_watermarks(topics)
        if self.what == "watermarks" and self.calls["watermarks"] in self.blind:
            kept = {tp: w for tp, w in real.watermarks.items() if tp.partition != 1}
            failures = tuple(
                Failure("watermarks", f"{tp.topic}-{tp.partition}", "NOT_LEADER_OR_FOLLOWER")
                for tp in real.watermarks
                if tp.partition == 1
            )
            return WatermarkListing(MappingProxyType(kept), real.missing_topics, failures)
        return real


async def _scenario(
    kafka: KafkaTestClient, unique: Callable[[str], str]
) -> tuple[str, dict[str, dict[TopicPartition, int]], int]:
    topic = unique("orders")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"v", partition=i % 2) for i in range(12)])
    truth = {
        unique("billing"): {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 4},
        unique("audit"): {TopicPartition(topic, 0): 5, TopicPartition(topic, 1): 2},
    }
    for group, offsets in truth.items():
        await kafka.commit(group, offsets)
    return topic, truth, 6


def _assert_exact(
    snapshot: ClusterSnapshot, truth: dict[str, dict[TopicPartition, int]], high: int
) -> None:
    rows = {(r.group, r.topic_partition): r for r in snapshot.rows}
    expected = {(g, tp): c for g, offsets in truth.items() for tp, c in offsets.items()}
    assert set(rows) == set(expected), f"cycle {snapshot.cycle}: {sorted(rows)}"
    for key, committed in expected.items():
        assert (rows[key].committed, rows[key].lag) == (committed, high - committed), key
    summaries = {s.group: s for s in snapshot.groups}
    assert set(summaries) == set(truth), f"cycle {snapshot.cycle}: {sorted(summaries)}"
    for group, offsets in truth.items():
        assert summaries[group].sum_lag == sum(high - c for c in offsets.values())
        assert summaries[group].max_lag == max(high - c for c in offsets.values())


async def _run(
    kafka_bootstrap: str,
    truth: dict[str, dict[TopicPartition, int]],
    what: str,
    blind: Collection[int],
    cycles: int,
    *,
    staleness: float = 30.0,
) -> tuple[list[ClusterSnapshot], list[ClusterWithdrawn], dict[str, float]]:
    config = settings(
        cluster("trust", kafka_bootstrap, groups=[exactly(*truth)]),
        poll_interval=0.3,
        staleness_threshold=staleness,
    )
    factory = wrapping(lambda real: CutDown(real, blind, what))
    async with running(config, client_factory=factory) as run:
        await run.recorder.wait_for(
            lambda: len(run.recorder.snapshots("trust")) >= cycles, what=f"{cycles} cycles"
        )
        carried = self_metric(run.exporter, "klag_pipeline_carried_rows")
    snapshots = run.recorder.snapshots("trust")[:cycles]
    gauge = {dict(labels)["cluster_name"]: value for labels, value in carried.items()}
    return snapshots, run.recorder.withdrawals(), gauge


async def test_groups_missing_from_a_listing_are_asked_about_before_they_are_dropped(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    _, truth, high = await _scenario(kafka, unique)

    snapshots, withdrawn, _ = await _run(kafka_bootstrap, truth, "listing", blind={2}, cycles=3)

    assert withdrawn == []
    for snapshot in snapshots:
        # The groups' coordinator, asked directly, knows them: exact values, nothing repeated.
        _assert_exact(snapshot, truth, high)
        assert snapshot.carried_rows == 0


async def test_unanswered_offsets_keep_the_last_values_marked_as_carried(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    _, truth, high = await _scenario(kafka, unique)

    snapshots, withdrawn, _ = await _run(kafka_bootstrap, truth, "offsets", blind={2}, cycles=3)

    assert withdrawn == []
    first, blind, after = snapshots
    for snapshot in snapshots:
        _assert_exact(snapshot, truth, high)
    assert (first.carried_rows, after.carried_rows) == (0, 0)
    assert blind.carried_rows == 4
    assert all(row.carried for row in blind.rows)
    assert blind.error_count >= len(truth)  # counted as partial failures
    assert not any(row.carried for row in after.rows)


async def test_a_partition_whose_leader_moves_keeps_its_row_and_its_group_aggregates(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, truth, high = await _scenario(kafka, unique)

    snapshots, withdrawn, _ = await _run(kafka_bootstrap, truth, "watermarks", blind={2}, cycles=3)

    assert withdrawn == []
    blind = snapshots[1]
    for snapshot in snapshots:
        _assert_exact(snapshot, truth, high)
    assert blind.carried_rows == 2
    assert {r.partition for r in blind.rows if r.carried} == {1}
    assert {(p.topic, p.partition) for p in blind.partitions} == {(topic, 0), (topic, 1)}


async def test_carried_values_expire_with_the_staleness_threshold(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    _, truth, high = await _scenario(kafka, unique)

    # Offsets fail from the second cycle on; the staleness threshold is 1.5 s at 0.3 s cycles.
    snapshots, _, gauge = await _run(
        kafka_bootstrap, truth, "offsets", blind=range(2, 100), cycles=12, staleness=1.5
    )

    _assert_exact(snapshots[0], truth, high)
    assert snapshots[1].carried_rows == 4
    read_at = snapshots[0].observed_at
    for snapshot in snapshots[1:]:
        if snapshot.observed_at - read_at > 1.5:
            assert snapshot.rows == (), f"cycle {snapshot.cycle} still repeats old values"
            assert snapshot.carried_rows == 0
    assert snapshots[-1].rows == ()
    assert gauge["trust"] == 0
