"""A broker that resumes after a hang (issue 18, defect 3), on a real broker of its own.

Reproduction from the issue: one broker, three groups, the exporter running; SIGSTOP the broker
for 60 s, SIGCONT it while a cycle waits on it. The resumed broker (fenced by its own controller
while it was frozen) answers ListGroups before it has loaded its group metadata again: an empty
list with no error. Before the fix the next cycle published 0 groups, 0 rows, 0 errors — every
group and partition series vanished while ``kafka_lag_exporter_up`` stayed 1. Now a group that
vanishes from the listing is asked about directly, and a group its coordinator cannot answer for
keeps its last good values, counted as a partial failure.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from devtools.kafka_local import TEST_BROKER_PROPERTIES, KafkaCluster
from klag_pipeline.model import TopicPartition
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn
from tests.integration import pipeline_support as ps
from tests.support.kafka import KafkaTestClient, Rec

HANG_SECONDS = 60.0
AFTER_RESUME_SECONDS = 20.0


@pytest.fixture
def own_broker() -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(1, extra_broker_properties=TEST_BROKER_PROPERTIES)
    cluster.start()
    try:
        yield cluster
    finally:
        for process in cluster.processes:
            process.signal(signal.SIGCONT)
        cluster.stop()


@pytest.mark.timeout(240)
async def test_broker_resuming_after_a_hang_never_empties_the_published_cycle(
    own_broker: KafkaCluster,
) -> None:
    kafka = await KafkaTestClient.connect(own_broker.bootstrap)
    truth: dict[str, dict[TopicPartition, int]] = {}
    try:
        await kafka.create_topic("orders", partitions=2)
        await kafka.produce("orders", [Rec(b"v", partition=i % 2) for i in range(20)])
        for n, group in enumerate(("billing", "audit", "search")):
            truth[group] = {TopicPartition("orders", 0): n + 1, TopicPartition("orders", 1): n + 2}
            await kafka.commit(group, truth[group])
    finally:
        await kafka.close()
    high = 10  # 20 records over two partitions

    config = ps.settings(
        ps.cluster("resume", own_broker.bootstrap),
        poll_interval=1.0,
        staleness_threshold=180.0,
        kafka_timeout=30.0,
    )
    async with ps.running(config) as run:
        await run.recorder.wait_snapshot("resume", lambda s: len(s.rows) == 6)
        for process in own_broker.processes:
            process.signal(signal.SIGSTOP)
        await asyncio.sleep(HANG_SECONDS)  # the fault itself: a broker frozen for a minute
        resumed = time.time()
        for process in own_broker.processes:
            process.signal(signal.SIGCONT)
        await run.recorder.wait_snapshot(
            "resume",
            lambda s: s.carried_rows == 0 and len(s.rows) == 6,
            after=resumed + AFTER_RESUME_SECONDS,
            within=AFTER_RESUME_SECONDS + 60,
        )

    assert not [u for u in run.recorder.updates if isinstance(u, ClusterWithdrawn)]
    published = run.recorder.snapshots("resume")
    after = [s for s in published if s.started_at >= resumed - 2 * config.exporter.poll_interval]
    assert after, "no cycle published after the broker resumed"
    for snapshot in after:
        _assert_exact(snapshot, truth, high)
    carried = [s for s in after if s.carried_rows]
    # A cycle that repeated values must say so: it met failures.
    assert all(s.error_count > 0 for s in carried), [(s.cycle, s.error_count) for s in carried]


def _assert_exact(
    snapshot: ClusterSnapshot, truth: dict[str, dict[TopicPartition, int]], high: int
) -> None:
    assert sorted(g.group for g in snapshot.groups) == sorted(truth), (
        f"cycle {snapshot.cycle}: groups {[g.group for g in snapshot.groups]}"
    )
    rows = {(r.group, r.topic_partition): r for r in snapshot.rows}
    expected = {(g, tp): c for g, offsets in truth.items() for tp, c in offsets.items()}
    assert set(rows) == set(expected), f"cycle {snapshot.cycle}: rows {sorted(rows)}"
    for key, committed in expected.items():
        row = rows[key]
        assert (row.committed, row.high, row.lag) == (committed, high, high - committed), (
            snapshot.cycle,
            key,
            row,
        )
    for summary in snapshot.groups:
        assert summary.max_lag == max(high - c for c in truth[summary.group].values())
