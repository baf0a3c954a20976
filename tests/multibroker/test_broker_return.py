"""A broker that was killed and restarted while the exporter runs, and then becomes a group
coordinator again (only the ``__consumer_offsets`` leaderships move back to it; no partition the
exporter reads changes leader, so no request of the exporter fails).

aiokafka forgets a broker whose connection failed and relearns it only at its next full metadata
refresh (5 min by default): without the adapter's broker sync the exporter never sent ListGroups
to the returned broker, and every group it coordinates again vanished from the exposition with
no error at all.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest

from devtools import kafka_local
from tests.integration.pipeline_support import Running, running
from tests.multibroker.proxies import ThreeBrokers
from tests.multibroker.support import (
    CLUSTER,
    LEADER_ELECTION_COMMAND,
    Scenario,
    assert_values_exact,
    build_scenario,
    coordinators,
    elect_preferred_leaders,
    exporter_settings,
    partitions,
    wait_snapshots,
    wait_whole,
)
from tests.support.kafka import KafkaTestClient, wait_until

pytestmark = pytest.mark.kafka


async def test_groups_coordinated_by_a_returned_broker_are_found_again(
    three_brokers: ThreeBrokers, mb: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    bootstrap = three_brokers.bootstrap
    scenario = await build_scenario(
        mb, bootstrap, unique, topics=1, partitions_per_topic=3, groups=6
    )
    victim = Counter(scenario.groups.values()).most_common(1)[0][0]
    returning = sorted(g for g, node in scenario.groups.items() if node == victim)
    survivors = [n for n in three_brokers.cluster.node_ids if n != victim]
    survivor_bootstrap = ",".join(three_brokers.cluster.node_address(n) for n in survivors)

    config = exporter_settings(bootstrap, scenario, poll_interval=1.0, kafka_timeout=2.0)
    began = time.time()
    try:
        async with running(config) as run:
            [healthy] = await wait_snapshots(run, 1, after=began)
            assert_values_exact(healthy, scenario)

            await asyncio.to_thread(three_brokers.cluster.kill_node, victim)

            async def moved() -> bool:
                found = await coordinators(survivor_bootstrap, returning)
                return victim not in found.values()

            await wait_until(moved, within=30, interval=0.3, message="coordinators moved")
            moved_at = time.time()
            await wait_until(
                lambda: _exact_since(run, scenario, moved_at),
                within=30,
                interval=0.2,
                message="exact values with the broker down",
            )

            three_brokers.cluster.restart_node(victim, wait=False)
            await asyncio.to_thread(three_brokers.cluster.wait_ready)
            await wait_whole(bootstrap)
            offsets_partitions = await partitions(bootstrap, ["__consumer_offsets"])
            back = [
                str(tp.partition)
                for tp, p in offsets_partitions.items()
                if p.replicas[0] == victim and p.leader != victim
            ]
            assert back, "the victim is no preferred leader of any __consumer_offsets partition"
            for partition in back:
                await asyncio.to_thread(
                    kafka_local.run_tool,
                    LEADER_ELECTION_COMMAND,
                    [
                        "--bootstrap-server",
                        bootstrap,
                        "--election-type",
                        "PREFERRED",
                        "--topic",
                        "__consumer_offsets",
                        "--partition",
                        partition,
                    ],
                    timeout=60.0,
                )

            async def coordinating_again() -> bool:
                found = await coordinators(bootstrap, returning)
                return set(found.values()) == {victim}

            await wait_until(coordinating_again, within=30, interval=0.3, message="victim back")
            # The partitions the exporter reads stay led by the survivors: nothing it asks
            # fails, so nothing but the broker sync can tell it about the returned broker.
            leaders = await partitions(bootstrap, scenario.topics)
            assert victim not in {p.leader for p in leaders.values()}
            elected_at = time.time()
            after = await wait_snapshots(run, 2, after=elected_at, within=20)
            # Within two cycles every group is back, exact.
            assert_values_exact(after[1], scenario)
            assert {s.group for s in after[1].groups} == set(scenario.groups)
    finally:
        if not three_brokers.cluster.node_running(victim):
            three_brokers.cluster.restart_node(victim, wait=False)
            await asyncio.to_thread(three_brokers.cluster.wait_ready)
        await elect_preferred_leaders(bootstrap)


async def _exact_since(run: Running, scenario: Scenario, since: float) -> bool:
    """Whether a snapshot of a cycle started at or after ``since`` is exact."""
    for snapshot in run.recorder.snapshots(CLUSTER):
        if snapshot.started_at < since:
            continue
        try:
            assert_values_exact(snapshot, scenario)
        except AssertionError:
            continue
        return True
    return False
