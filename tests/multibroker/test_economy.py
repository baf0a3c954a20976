"""Request economy on three brokers, counted by a proxy in front of each broker (not by the
exporter's own metrics): per cycle one ListGroups per broker, DescribeGroups and OffsetFetch
batched per coordinator, ListOffsets (earliest + latest) and Fetch per partition leader, however
many groups there are. And the values of the same cycles, exact against ground truth."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.integration.pipeline_support import running
from tests.multibroker.proxies import ThreeBrokers
from tests.multibroker.support import (
    assert_values_exact,
    build_scenario,
    counts_of,
    cycle_windows,
    exporter_settings,
    wait_snapshots,
)
from tests.support.kafka import KafkaTestClient

pytestmark = pytest.mark.kafka


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
