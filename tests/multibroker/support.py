"""The 3-broker cluster of the multi-broker tests: a request-logging proxy in front of every
broker (in a thread of its own, for the whole session), and ground truth about coordinators,
leaders and replicas read with plain aiokafka clients and the Java tools — never with the code
under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devtools import kafka_local
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import Settings
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.pipeline_support import Running, cluster, exactly, settings
from tests.multibroker.proxies import ThreeBrokers, per_cycle
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

BROKERS = 3
MULTIBROKER_PROPERTIES = {
    **kafka_local.TEST_BROKER_PROPERTIES,
    # A SIGKILLed broker is fenced (its leaderships moved) 3 s after its last heartbeat, not 9 s.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
    # Leaders move only when a test moves them (the controller would otherwise rebalance
    # leadership back to preferred replicas in the middle of another test).
    "auto.leader.rebalance.enable": "false",
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    # Client quotas are measured over 2 windows of 1 s, so a throttle lasts about a second and
    # a throttled exporter still finishes cycles within a test's patience.
    "quota.window.num": "2",
    "quota.window.size.seconds": "1",
}
TOPIC_CONFIG = {"min.insync.replicas": "2"}
LEADER_ELECTION_COMMAND = "org.apache.kafka.tools.LeaderElectionCommand"
REASSIGN_COMMAND = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"
CONFIG_COMMAND = "kafka.admin.ConfigCommand"

# -- ground truth -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _retrying(what: str, call: Any, *, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                return await call()
        except (KafkaError, TimeoutError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: no answer within {within:g}s ({exc!r})") from exc
            await asyncio.sleep(0.2)


async def coordinators(bootstrap: str, groups: Collection[str]) -> dict[str, int]:
    """group → coordinator node id, from FindCoordinator (aiokafka admin)."""
    async with admin_client(bootstrap) as admin:
        found: dict[str, int] = {}
        for group in sorted(groups):

            async def find(group: str = group) -> int:
                return int(await admin.find_coordinator(group))

            found[group] = await _retrying(f"FindCoordinator {group}", find)
        return found


@dataclass(frozen=True, slots=True)
class PartitionTruth:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


async def partitions(
    bootstrap: str, topics: Collection[str] | None = None
) -> dict[TopicPartition, PartitionTruth]:
    """Leader, replicas and ISR of every partition of ``topics`` (None: every topic)."""
    async with admin_client(bootstrap) as admin:
        described = await _retrying(
            "Metadata", lambda: admin.describe_topics(list(topics) if topics else None)
        )
    out: dict[TopicPartition, PartitionTruth] = {}
    for topic in described:
        if topic["error_code"] != 0:
            continue
        for p in topic["partitions"]:
            out[TopicPartition(topic["topic"], p["partition"])] = PartitionTruth(
                int(p["leader"]), tuple(p["replicas"]), tuple(p["isr"])
            )
    return out


async def wait_whole(bootstrap: str, *, within: float = 60.0, preferred: bool = False) -> None:
    """Until Metadata lists every broker and every partition of every topic has all its
    replicas in sync (and, with ``preferred``, its first replica as leader)."""
    problem = "no answer"

    async def whole() -> bool:
        nonlocal problem
        try:
            async with admin_client(bootstrap) as admin:
                brokers = (await admin.describe_cluster())["brokers"]
            truth = await partitions(bootstrap)
        except (AssertionError, KafkaError, OSError, TimeoutError) as exc:
            problem = repr(exc)
            return False
        lagging = [
            tp
            for tp, p in truth.items()
            if set(p.isr) != set(p.replicas) or (preferred and p.leader != p.replicas[0])
        ]
        problem = f"{len(brokers)} brokers, not whole: {lagging[:5]}"
        return len(brokers) == BROKERS and not lagging

    await wait_until(
        whole, within=within, interval=0.3, message="a whole cluster", details=lambda: problem
    )


async def elect_preferred_leaders(bootstrap: str) -> None:
    """Move every partition's leadership back to its preferred (first) replica."""
    await asyncio.to_thread(
        kafka_local.run_tool,
        LEADER_ELECTION_COMMAND,
        ["--bootstrap-server", bootstrap, "--election-type", "PREFERRED", "--all-topic-partitions"],
        timeout=60.0,
        check=False,  # exits non-zero when some partition already has its preferred leader
    )
    await wait_whole(bootstrap, preferred=True)


async def spread_groups(bootstrap: str, prefix: str, count: int) -> dict[str, int]:
    """``count`` new group ids (→ their coordinator) covering every broker that coordinates
    anything: ids are drawn until each such broker has at least one, bounded."""
    offsets_leaders = {
        p.leader
        for tp, p in (await partitions(bootstrap, ["__consumer_offsets"])).items()
        if tp.topic == "__consumer_offsets"
    }
    chosen: dict[str, int] = {}
    for _ in range(20):
        candidates = [f"{prefix}-{secrets.token_hex(3)}" for _ in range(count)]
        found = await coordinators(bootstrap, candidates)
        chosen = found
        if set(found.values()) >= offsets_leaders:
            return chosen
    raise AssertionError(f"no {count} group ids covering coordinators {sorted(offsets_leaders)}")


# -- a scenario: replicated topics, records of known timestamps, groups on every coordinator ---

RECORDS_PER_PARTITION = 20
RECORD_SPACING_MS = 1000


@dataclass
class Scenario:
    """Topics, groups and commits a test created, with the ground truth read back."""

    topics: list[str]
    groups: dict[str, int]  # group → coordinator
    commits: dict[str, dict[TopicPartition, int]]
    timestamps: dict[TopicPartition, dict[int, int]]  # offset → timestamp (ms)
    leaders: dict[TopicPartition, int]
    base_ms: int

    @property
    def partitions(self) -> list[TopicPartition]:
        return sorted(self.timestamps)

    def high(self, tp: TopicPartition) -> int:
        return max(self.timestamps[tp]) + 1

    def lag(self, group: str, tp: TopicPartition) -> int:
        return self.high(tp) - self.commits[group][tp]

    async def produce(self, kafka: KafkaTestClient, count: int = RECORDS_PER_PARTITION) -> None:
        """``count`` more records on every partition, timestamps continuing one second apart
        (plus the partition number, so no two partitions share a timestamp)."""
        by_topic: dict[str, list[Rec]] = {}
        for tp in self.partitions:
            first = self.high(tp) if self.timestamps[tp] else 0
            by_topic.setdefault(tp.topic, []).extend(
                Rec(b"v", tp.partition, self.base_ms + o * RECORD_SPACING_MS + tp.partition)
                for o in range(first, first + count)
            )
        for topic, records in by_topic.items():
            offsets = await kafka.produce(topic, records)
            for record, offset in zip(records, offsets, strict=True):
                assert record.timestamp_ms is not None
                tp = TopicPartition(topic, record.partition)
                self.timestamps[tp][offset] = record.timestamp_ms

    async def verify(self, kafka: KafkaTestClient, groups: int = 3) -> None:
        """The broker holds what this scenario says: watermarks of every partition, and the
        commits of a few groups (read back with plain clients)."""
        for topic in self.topics:
            marks = await kafka.watermarks(topic)
            assert marks == {
                tp.partition: (0, self.high(tp)) for tp in self.partitions if tp.topic == topic
            }
        for group in sorted(self.commits)[:groups]:
            assert await kafka.committed(group) == self.commits[group], group

    async def advance(self, kafka: KafkaTestClient) -> None:
        """New records on every partition and every commit moved onto them (the same lag, at
        offsets no cycle has sampled yet)."""
        await self.produce(kafka)
        self.commits = {
            group: {tp: offset + RECORDS_PER_PARTITION for tp, offset in offsets.items()}
            for group, offsets in self.commits.items()
        }
        await kafka.commit_many(self.commits)
        await self.verify(kafka)


async def build_scenario(
    kafka: KafkaTestClient,
    bootstrap: str,
    unique: Callable[[str], str],
    *,
    topics: int,
    partitions_per_topic: int,
    groups: int,
) -> Scenario:
    """Replicated topics of ``RECORDS_PER_PARTITION`` records with distinct, known timestamps
    (an hour old, one second apart), and ``groups`` groups spread over every coordinator, each
    committed on every partition at an offset with lag > 0."""
    names = [unique(f"t{i}") for i in range(topics)]
    for name in names:
        await kafka.create_topic(
            name, partitions=partitions_per_topic, replication_factor=3, config=TOPIC_CONFIG
        )
    scenario = Scenario(
        names,
        await spread_groups(bootstrap, unique("g"), groups),
        {},
        {TopicPartition(n, p): {} for n in names for p in range(partitions_per_topic)},
        {},
        int(time.time() * 1000) - 3600 * 1000,
    )
    await scenario.produce(kafka)
    span = RECORDS_PER_PARTITION - 1
    scenario.commits = {
        group: {tp: 1 + (i * 7 + j * 3) % span for j, tp in enumerate(scenario.partitions)}
        for i, group in enumerate(sorted(scenario.groups))
    }
    await kafka.commit_many(scenario.commits)
    await scenario.verify(kafka)
    truth = await partitions(bootstrap, names)
    scenario.leaders = {tp: p.leader for tp, p in truth.items()}
    return scenario


# -- the exporter under test ---------------------------------------------------------------

CLUSTER = "three"
POLL = 1.0


def exporter_settings(
    bootstrap: str,
    scenario: Scenario,
    *,
    poll_interval: float = POLL,
    kafka_timeout: float = 5.0,
    consumer_properties: Mapping[str, str] | None = None,
) -> Settings:
    """One cluster ``CLUSTER`` on every address of ``bootstrap``, exactly the scenario's groups
    and topics, staleness far beyond any outage a test makes."""
    return settings(
        replace(
            cluster(
                CLUSTER,
                bootstrap,
                groups=[exactly(*scenario.groups)],
                topics=[exactly(*scenario.topics)],
            ),
            bootstrap_servers=tuple(bootstrap.split(",")),
            consumer_properties=MappingProxyType(dict(consumer_properties or {})),
        ),
        poll_interval=poll_interval,
        staleness_threshold=60.0,
        kafka_timeout=kafka_timeout,
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
    missing = sorted({g for g, _ in expected - set(rows)})
    extra = sorted({g for g, _ in set(rows) - expected})
    assert set(rows) == expected, (
        f"cycle {snapshot.cycle}: rows differ from ground truth; groups with rows missing "
        f"{missing}, groups with extra rows {extra}"
    )
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


async def wait_snapshots(
    run: Running, count: int, *, after: float, within: float = 20.0
) -> list[ClusterSnapshot]:
    """At least ``count`` snapshots of cycles that started at or after ``after``."""

    def enough() -> bool:
        return len([s for s in run.recorder.snapshots(CLUSTER) if s.started_at >= after]) >= count

    await run.recorder.wait_for(enough, within=within, what=f"{count} snapshots")
    return [s for s in run.recorder.snapshots(CLUSTER) if s.started_at >= after]
