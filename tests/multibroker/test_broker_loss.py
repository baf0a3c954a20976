"""SIGKILL the broker that coordinates some groups and leads some partitions while the exporter
runs, change commits and watermarks while it is down, restart it, then move every leadership
back to it: the exporter follows coordinators and leaders without a restart, never shows an
affected group with a wrong lag or without its series, and is exact again within two cycles.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from klag_pipeline.app import Exporter
from tests.integration.pipeline_support import running, scrape
from tests.multibroker.proxies import ThreeBrokers
from tests.multibroker.support import (
    CLUSTER,
    RECORDS_PER_PARTITION,
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

LAG = "kafka_consumergroup_group_lag"


@dataclass
class MetricsWatch:
    """What ``/metrics`` showed for the scenario's rows, scraped every 100 ms."""

    scrapes: int = 0
    phase: str = "healthy"
    missing: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(phase, group) → (partition, scrape) pairs without a lag series."""
    wrong: list[tuple[str, str, int, float, int]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def watching(exporter: Exporter, scenario: Scenario) -> AsyncIterator[MetricsWatch]:
    """Scrape the exposition every 100 ms while the block runs; record every (group, partition)
    whose lag series is absent or differs from the ground truth. Records and commits move
    together in this test (:meth:`Scenario.advance`), so the true lag of a row is always its
    lag now, or — between the new records and the new commits — that plus the new records."""
    watch = MetricsWatch()
    expected = {
        (group, tp): {scenario.lag(group, tp), scenario.lag(group, tp) + RECORDS_PER_PARTITION}
        for group, offsets in scenario.commits.items()
        for tp in offsets
    }

    async def poll() -> None:
        while True:
            series = scrape(exporter)
            watch.scrapes += 1
            for (group, tp), lag in expected.items():
                labels = {"cluster_name": CLUSTER, "group": group, "topic": tp.topic}
                found = [
                    v
                    for (name, lbls), v in series.items()
                    if name == LAG
                    and set(lbls) >= {(k, str(x)) for k, x in labels.items()}
                    and ("partition", str(tp.partition)) in lbls
                ]
                if not found:
                    watch.missing[(watch.phase, group)] += 1
                elif found[0] not in lag:
                    watch.wrong.append((group, tp.topic, tp.partition, found[0], min(lag)))
            await asyncio.sleep(0.1)

    task = asyncio.create_task(poll(), name="metrics-watch")
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_killed_coordinator_and_leader_is_followed_and_never_shows_false_lag(
    three_brokers: ThreeBrokers, mb: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    bootstrap = three_brokers.bootstrap
    scenario = await build_scenario(
        mb, bootstrap, unique, topics=2, partitions_per_topic=6, groups=12
    )
    by_coordinator = Counter(scenario.groups.values())
    victim = by_coordinator.most_common(1)[0][0]
    affected = sorted(g for g, node in scenario.groups.items() if node == victim)
    led = sorted(tp for tp, leader in scenario.leaders.items() if leader == victim)
    assert affected
    assert led
    survivors = [n for n in three_brokers.cluster.node_ids if n != victim]
    survivor_bootstrap = ",".join(three_brokers.cluster.node_address(n) for n in survivors)

    config = exporter_settings(bootstrap, scenario, poll_interval=1.0, kafka_timeout=2.0)
    began = time.time()
    try:
        async with running(config) as run:
            [healthy] = await wait_snapshots(run, 1, after=began)
            assert_values_exact(healthy, scenario)
            # The watch starts from what /metrics shows: the Prometheus sink has this snapshot too
            # (the recording sink can be a moment ahead of it).
            await run.wait_rendered(healthy)
            async with watching(run.exporter, scenario) as watch:
                killed_at = time.time()
                watch.phase = "broker killed"
                await asyncio.to_thread(three_brokers.cluster.kill_node, victim)

                # Ground truth: the victim's groups and partitions moved to the survivors.
                async def moved() -> bool:
                    found = await coordinators(survivor_bootstrap, affected)
                    leaders = await partitions(survivor_bootstrap, scenario.topics)
                    return victim not in found.values() and all(
                        leaders[tp].leader in survivors for tp in led
                    )

                await wait_until(
                    moved, within=30, interval=0.3, message="coordinators and leaders moved"
                )

                # New records and new commits while the victim is down: only an exporter that
                # found the new coordinators and leaders can report them.
                watch.phase = "moved, commits advancing"
                await scenario.advance(mb)
                advanced_at = time.time()
                watch.phase = "moved, advanced"

                async def exact_now() -> bool:
                    snapshots = [
                        s for s in run.recorder.snapshots(CLUSTER) if s.started_at >= advanced_at
                    ]
                    for snapshot in snapshots:
                        with contextlib.suppress(AssertionError):
                            assert_values_exact(snapshot, scenario)
                            return True
                    return False

                await wait_until(
                    exact_now, within=30, interval=0.2, message="exact values, broker down"
                )
                down = [s for s in run.recorder.snapshots(CLUSTER) if s.started_at >= killed_at]
                assert any(s.error_count > 0 for s in down), "the outage left no partial failure"
                # The rows it could not read were shown with their last good values, marked.
                assert any(s.carried_rows > 0 for s in down), "nothing was carried"

                # Restart: the cluster is whole again; the next two cycles are exact.
                watch.phase = "restarting"
                three_brokers.cluster.restart_node(victim, wait=False)
                await asyncio.to_thread(three_brokers.cluster.wait_ready)
                await wait_whole(bootstrap)
                watch.phase = "restarted"
                restarted_at = time.time()
                after_restart = await wait_snapshots(run, 2, after=restarted_at)
                assert_values_exact(after_restart[1], scenario)

                # Leadership back to the preferred replicas: the victim coordinates and leads again
                # and the exporter follows once more.
                watch.phase = "preferred leaders elected"
                await elect_preferred_leaders(bootstrap)
                back = await coordinators(bootstrap, affected)
                assert set(back.values()) == {victim}
                elected_at = time.time()
                after_election = await wait_snapshots(run, 2, after=elected_at)
                assert_values_exact(after_election[1], scenario)

            assert run.recorder.withdrawals() == []
            assert watch.scrapes > 20
            assert watch.wrong == [], watch.wrong[:10]
            # Until the controller fences the killed broker (broker.session.timeout.ms) its
            # groups have no coordinator and its partitions no leader: their last good rows are
            # kept, marked carried (klag_pipeline/carry.py), never withdrawn.
            withdrawn = {f"{phase}: {group}": n for (phase, group), n in watch.missing.items()}
            assert not withdrawn, f"lag series withdrawn (partition-scrapes): {withdrawn}"
    finally:
        # Later tests need the whole cluster with its preferred leaders.
        if not three_brokers.cluster.node_running(victim):
            three_brokers.cluster.restart_node(victim, wait=False)
            await asyncio.to_thread(three_brokers.cluster.wait_ready)
        await elect_preferred_leaders(bootstrap)
