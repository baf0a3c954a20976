"""The exporter in sharded mode, in process, on the real broker.

* A replica whose coordinating cluster cannot be reached owns nothing: it exports no consumer
  series of any cluster (it never falls back to collecting everything), ``/ready`` says why, and
  it keeps trying: once the coordinator answers it is assigned and exports.
* When the assignment takes buckets away, the replica republishes at once without them: the
  sinks see the narrowed snapshot before any new cycle ran.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog

from klag_pipeline.app import Exporter
from klag_pipeline.kafka.factory import default_membership_factory
from klag_pipeline.kafka.membership import GroupMembership, JoinAgain, Joined, MembershipTiming
from klag_pipeline.kafka.protocol.membership import SHARD_PROTOCOL, GroupProtocol
from klag_pipeline.model import TopicPartition
from klag_pipeline.pipeline.clock import SYSTEM_CLOCK
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    PerformanceSettings,
    Settings,
    ShardingSettings,
    TimestampSamplingSettings,
)
from klag_pipeline.sharding.assignment import Layout
from klag_pipeline.sharding.member import ShardMember
from klag_pipeline.sharding.ownership import NOTHING, Ownership, group_bucket
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.pipeline_support import RecordingSink
from tests.support.kafka import KafkaTestClient
from tests.support.waiting import wait_until


def settings(bootstrap: str, prefix: str, *, coordinator: str) -> Settings:
    def cluster(name: str, servers: str) -> ClusterSettings:
        return ClusterSettings(
            name=name,
            bootstrap_servers=(servers,),
            group_whitelist=(re.compile(f"^{re.escape(prefix)}-g"),),
        )

    return Settings(
        exporter=ExporterSettings(
            # Far longer than the waits below: a cycle that happens was kicked or is the first.
            poll_interval=30.0,
            staleness_threshold=90.0,
            timestamp_sampling=TimestampSamplingSettings(enabled=False),
            sharding=ShardingSettings(
                enabled=True,
                cluster="coord",
                group_id=f"{prefix}-shards",
                buckets=8,
                session_timeout=6.0,
                heartbeat_interval=0.5,
                identity="replica-1",
            ),
        ),
        clusters=(cluster("data", bootstrap), cluster("coord", coordinator)),
    )


class JoinCounter:
    """The default membership factory, counting JoinGroup attempts."""

    def __init__(self) -> None:
        self.calls = 0

    def factory(
        self,
        cluster: ClusterSettings,
        group: str,
        timing: MembershipTiming,
        performance: PerformanceSettings,
        protocol: GroupProtocol,
    ) -> GroupMembership:
        membership = default_membership_factory(cluster, group, timing, performance, protocol)
        join = membership.join

        async def counted(member_id: str, metadata: bytes) -> Joined | JoinAgain:
            self.calls += 1
            return await join(member_id, metadata)

        membership.join = counted  # type: ignore[method-assign]
        return membership


def second_member(settings: Settings) -> ShardMember:
    """Another replica's membership, without an exporter around it."""
    sharding = settings.exporter.sharding
    coordinator = next(c for c in settings.clusters if c.name == sharding.cluster)
    timing = MembershipTiming(6000, 6000, 2.0, 8.0)
    membership = default_membership_factory(
        coordinator, sharding.group_id, timing, settings.exporter.performance, SHARD_PROTOCOL
    )

    async def ignore(_: Ownership) -> None:
        return None

    return ShardMember(
        membership,
        identity="replica-2",
        group=sharding.group_id,
        layout=Layout(tuple(c.name for c in settings.clusters), sharding.buckets),
        session_timeout=sharding.session_timeout,
        heartbeat_interval=sharding.heartbeat_interval,
        clock=SYSTEM_CLOCK,
        on_change=ignore,
    )


@asynccontextmanager
async def running(exporter: Exporter) -> AsyncIterator[None]:
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=10.0))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await exporter.close_clients()


async def seed(kafka: KafkaTestClient, prefix: str) -> set[str]:
    topic = f"{prefix}-t"
    await kafka.create_topic(topic, 2)
    groups = {f"{prefix}-g{i}": {TopicPartition(topic, i % 2): 0} for i in range(12)}
    await kafka.commit_many(groups)
    return set(groups)


async def test_an_unreachable_coordinator_means_nothing_exported_and_ready_says_why(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    prefix = unique("unreach")
    await seed(kafka, prefix)
    sink = RecordingSink()
    joins = JoinCounter()
    # The coordinating cluster points at a port nothing listens on.
    exporter = Exporter(
        settings(kafka_bootstrap, prefix, coordinator="127.0.0.1:1"),
        extra_sinks=[sink],
        membership_factory=joins.factory,
    )
    with structlog.testing.capture_logs() as logs:
        async with running(exporter):
            assert exporter.sharding is not None
            member = exporter.sharding.member
            await wait_until(
                lambda: member.problem not in (None, "not yet assigned"),
                within=20,
                message="a join failure",
            )
            await _unreachable_checks(exporter, sink, joins)
    failed = [e for e in logs if e["event"] == "sharding_join_failed"]
    assert failed, logs
    assert failed[0]["log_level"] == "warning"
    assert "coord" in failed[0]["error"]
    # Said once per reason, not once per retry.
    assert len(failed) <= 2, failed


async def _unreachable_checks(exporter: Exporter, sink: RecordingSink, joins: JoinCounter) -> None:
    assert exporter.sharding is not None
    member = exporter.sharding.member
    ok, reason = exporter.status.ready()
    assert not ok
    assert reason.startswith("sharding: ")
    assert "coord" in reason
    assert exporter.status.sharding is not None
    view = exporter.status.sharding()
    assert view["owned"] == {}
    assert view["problem"] == member.problem
    # Cycles reach the gate (the loop is alive) but nothing is collected or published.
    await wait_until(lambda: all(s.cycles >= 1 for s in exporter.status.snapshot()), within=10)
    assert exporter.status.healthy() == (True, "ok")
    # It keeps trying (a JoinGroup every heartbeat_interval) and still owns nothing.
    tried = joins.calls
    await wait_until(lambda: joins.calls >= tried + 3, within=10, message="three more joins")
    assert member.ownership is NOTHING
    assert view["generation"] == -1
    assert sink.snapshots() == []
    # Not one request to the data cluster: its cycles stop at the gate.
    rendered = exporter.self_metrics.render(False).decode().splitlines()
    asked = [
        line
        for line in rendered
        if line.startswith("klag_pipeline_kafka_requests_total{") and 'cluster_name="data"' in line
    ]
    assert asked == []


async def test_losing_buckets_republishes_the_last_snapshot_without_them_at_once(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    prefix = unique("narrow")
    groups = await seed(kafka, prefix)
    sink = RecordingSink()
    exporter = Exporter(
        settings(kafka_bootstrap, prefix, coordinator=kafka_bootstrap), extra_sinks=[sink]
    )
    async with running(exporter):
        gate = exporter.sharding
        assert gate is not None

        def data_groups() -> set[str] | None:
            snaps = sink.snapshots("data")
            return {g.group for g in snaps[-1].groups} if snaps else None

        await wait_until(lambda: data_groups() == groups, within=30, message="all groups")
        assert exporter.status.ready() == (True, "ok")
        assert exporter.status.sharding is not None
        assert exporter.status.sharding()["owned"] == {
            "coord": list(range(8)),
            "data": list(range(8)),
        }
        before = len(sink.updates)
        cycles = exporter.status.snapshot()[0].cycles
        # A second replica joins: the rebalance hands it about half of every cluster's buckets.
        second = second_member(exporter.settings)
        stop_second = asyncio.Event()
        joined = asyncio.create_task(second.run(stop_second))
        try:
            await wait_until(
                lambda: gate.member.ownership.members == 2, within=30, message="a rebalance"
            )

            def republished() -> ClusterSnapshot | None:
                later = [u for u in sink.updates[before:] if isinstance(u, ClusterSnapshot)]
                return next((u for u in later if u.cluster == "data"), None)

            narrowed = await wait_until(republished, within=5, message="a republication")
            kept = gate.member.ownership.owned("data")
            assert kept
            assert kept | second.ownership.owned("data") == frozenset(range(8))
        finally:
            stop_second.set()
            await asyncio.wait_for(joined, 15)
        expected = {g for g in groups if group_bucket(g, 8) in kept}
        assert {g.group for g in narrowed.groups} == expected
        assert {r.group for r in narrowed.rows} == expected
        # No cycle ran in between: the withdrawal did not wait for one.
        assert exporter.status.snapshot()[0].cycles == cycles
        # The second replica left (LeaveGroup): this one owns everything again and collects the
        # buckets it regained at once instead of at its next tick, 30 s away.
        await wait_until(lambda: data_groups() == groups, within=20, message="all groups again")
