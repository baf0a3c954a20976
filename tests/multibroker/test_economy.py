"""Request economy on three brokers, counted by a proxy in front of each broker (not by the
exporter's own metrics): per cycle one ListGroups per broker, DescribeGroups and OffsetFetch
batched per coordinator, ListOffsets (earliest + latest) and Fetch per partition leader, however
many groups there are. And the values of the same cycles, exact against ground truth."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from klag_pipeline.settings.schema import Settings
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.pipeline_support import Running, cluster, exactly, running, settings
from tests.multibroker.support import (
    Scenario,
    ThreeBrokers,
    build_scenario,
    per_cycle,
)
from tests.support.kafka import KafkaTestClient

pytestmark = pytest.mark.kafka

CLUSTER = "three"
POLL = 1.0


def exporter_settings(bootstrap: str, scenario: Scenario) -> Settings:
    return settings(
        replace(
            cluster(
                CLUSTER,
                bootstrap,
                groups=[exactly(*scenario.groups)],
                topics=[exactly(*scenario.topics)],
            ),
            bootstrap_servers=tuple(bootstrap.split(",")),
        ),
        poll_interval=POLL,
        staleness_threshold=60.0,
        kafka_timeout=5.0,
    )


def cycle_windows(snapshots: list[ClusterSnapshot]) -> list[tuple[ClusterSnapshot, float, float]]:
    """Each snapshot with its window: from its cycle's start to the next cycle's start (a cycle
    never outlives its poll interval)."""
    return [(s, s.started_at, nxt.started_at) for s, nxt in itertools.pairwise(snapshots)]


def counts_of(three: ThreeBrokers, start: float, end: float) -> Counter[tuple[str, int]]:
    return per_cycle(three.proxies.exchanges(), start, end - 1e-6)


def assert_values_exact(snapshot: ClusterSnapshot, scenario: Scenario) -> None:
    """Every (group, partition) row equals the ground truth the test created."""
    rows = {(r.group, r.topic_partition): r for r in snapshot.rows}
    expected = {(g, tp) for g, offsets in scenario.commits.items() for tp in offsets}
    assert set(rows) == expected, f"cycle {snapshot.cycle}: rows differ from ground truth"
    for (group, tp), row in rows.items():
        committed = scenario.commits[group][tp]
        assert (row.committed, row.low, row.high) == (committed, 0, scenario.high(tp)), (group, tp)
        assert row.lag == scenario.lag(group, tp)
        assert row.lag_seconds is not None, (snapshot.cycle, group, tp)
        stamp = scenario.timestamps[tp][committed] / 1000
        # "now" is some instant of the cycle that produced (or first sampled) the value.
        assert snapshot.started_at - stamp - 1.0 <= row.lag_seconds, (group, tp)
        assert row.lag_seconds <= snapshot.observed_at - stamp + 1.0, (group, tp)
    for summary in snapshot.groups:
        lags = [scenario.lag(summary.group, tp) for tp in scenario.commits[summary.group]]
        assert (summary.max_lag, summary.sum_lag) == (max(lags), sum(lags))


async def wait_snapshots(run: Running, count: int, *, after: float) -> list[ClusterSnapshot]:
    def enough() -> bool:
        return len([s for s in run.recorder.snapshots(CLUSTER) if s.started_at >= after]) >= count

    await run.recorder.wait_for(enough, within=10 + count * POLL * 3, what=f"{count} snapshots")
    return [s for s in run.recorder.snapshots(CLUSTER) if s.started_at >= after]


async def test_requests_per_cycle_scale_with_brokers_not_groups(
    three_brokers: ThreeBrokers, mb: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    scenario = await build_scenario(
        mb, three_brokers.bootstrap, unique, topics=3, partitions_per_topic=6, groups=30
    )
    coordinators = set(scenario.groups.values())
    leaders = set(scenario.leaders.values())
    assert len(coordinators) >= 2
    assert leaders == {1, 2, 3}
    brokers = [1, 2, 3]

    began = time.time()
    async with running(exporter_settings(three_brokers.proxied_bootstrap, scenario)) as run:
        snapshots = await wait_snapshots(run, 5, after=began)
        for snapshot in snapshots:
            assert snapshot.error_count == 0, snapshot.cycle
            assert_values_exact(snapshot, scenario)

        windows = cycle_windows(snapshots)
        # The first cycle found no timestamp in the cache: one Fetch per leader read every
        # committed offset of its partitions (30 groups × 18 partitions).
        first, start, end = windows[0]
        counts = counts_of(three_brokers, start, end)
        assert {b: counts[("Fetch", b)] for b in brokers} == {b: 1 for b in brokers}, counts
        for snapshot, start, end in windows:
            counts = counts_of(three_brokers, start, end)
            per_broker = {
                api: {b: counts[(api, b)] for b in brokers}
                for api in ("ListGroups", "DescribeGroups", "OffsetFetch", "ListOffsets")
            }
            expected = {
                "ListGroups": {b: 1 for b in brokers},
                "DescribeGroups": {b: int(b in coordinators) for b in brokers},
                "OffsetFetch": {b: int(b in coordinators) for b in brokers},
                "ListOffsets": {b: 2 * int(b in leaders) for b in brokers},  # earliest, latest
            }
            assert per_broker == expected, (snapshot.cycle, per_broker)
            assert sum(counts[("FindCoordinator", b)] for b in brokers) == 0, counts
            if snapshot is not first:
                # Timestamps of unchanged commits come from the cache.
                assert sum(counts[("Fetch", b)] for b in brokers) == 0, (snapshot.cycle, counts)

        # New commits everywhere: the next cycle reads them with one Fetch per leader again.
        await scenario.advance(mb)
        moved_at = time.time()
        later = await wait_snapshots(run, 2, after=moved_at)
        snapshot, start, end = cycle_windows(later)[0]
        assert_values_exact(snapshot, scenario)
        counts = counts_of(three_brokers, start, end)
        assert {b: counts[("Fetch", b)] for b in brokers} == {b: 1 for b in brokers}, counts
