"""The dashboard and alert queries on a real Prometheus scraping three real sharded replicas.

A known committed state is seeded on the session broker: 300 groups on 4 topics, every tenth one
lagging by a known amount (records an hour old, so its time lag is high too), the rest caught up,
plus 8 groups that each lost 6 messages to retention (so the replicas' data-loss shares differ).
Three ``klag-pipeline run`` processes share the groups in sharded mode (1 s cycles, 6 s session,
1 s heartbeat) and one Prometheus scrapes all three (one job, three static targets, 1 s scrape
and evaluation) with the chart's rules rendered with short ``for:`` durations (as
test_prometheus_live.py does).

Once the replicas are settled, every dashboard panel query returns data (the consumer-health
ones are proven in test_health_live.py and only checked to be valid here), the totals equal the
seeded truth exactly (total lag, group count, data-loss partitions: nothing counted twice or per
replica), ``klag_pipeline_shard_buckets`` sums to 64, and the group alerts that should fire do,
exactly once per group. Then one replica is stopped: its buckets move to the other two, the
totals are the same truth again, the group alerts are still one per group, and the exporter-down
alert fires once, for the stopped replica.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from klag_pipeline.model import TopicPartition
from tests.deploy.test_dashboard import (
    concrete_query,
    is_consumer_health_query,
    load_dashboard,
    panel_queries,
)
from tests.deploy.test_prometheus_live import (
    JOB,
    RATE_INTERVAL,
    PrometheusApi,
    prometheus_process,
)
from tests.leadership.test_processes import Replica, free_port
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.shards import BUCKETS, sharded_settings, stop_all
from tests.support.waiting import wait_until

GROUPS = 300
TOPICS = 4
PARTITIONS = 4
RECORDS = 20
REPLICAS = ("r1", "r2", "r3")
LOST = 6
LOSSY_RECORDS = 10
LOSSY_GROUPS = 8
# Process start-up, three replicas joining one after another (each join is a rebalance of up
# to a session), first cycles and 1 s scrapes, on a busy 2-core machine.
SETTLE = 90.0
DEADLINE = 60.0
ALL = 'cluster_name=~".*"'


class Truth:
    """The seeded state: which groups lag, by how much in total, which one lost data."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.commits: dict[str, dict[TopicPartition, int]] = {}
        for g in range(GROUPS):
            topic = f"{prefix}-t{g % TOPICS}"
            behind = (g // 10) % 5 + 1 if g % 10 == 0 else 0  # 1..5 on every tenth group
            self.commits[f"{prefix}-g{g:03d}"] = {
                TopicPartition(topic, p): RECORDS - behind
                for p in (g % PARTITIONS, (g + 1) % PARTITIONS)
            }
        self.lossy = frozenset(f"{prefix}-lossy{i}" for i in range(LOSSY_GROUPS))
        self.lossy_topic = f"{prefix}-audit"
        self.lagging = frozenset(
            g for g, offsets in self.commits.items() if any(o < RECORDS for o in offsets.values())
        )
        # Committed at 0 on a partition of LOSSY_RECORDS records: their lag is all of them.
        self.total_lag = LOSSY_GROUPS * LOSSY_RECORDS + sum(
            RECORDS - o for offsets in self.commits.values() for o in offsets.values()
        )
        self.groups = GROUPS + LOSSY_GROUPS

    async def seed(self, kafka: KafkaTestClient) -> None:
        old_ms = int(time.time() * 1000) - 3_600_000  # an hour old: time lag far above 300 s
        for t in range(TOPICS):
            topic = f"{self.prefix}-t{t}"
            await kafka.create_topic(topic, PARTITIONS)
            records = [Rec(b"x", p, old_ms + i) for p in range(PARTITIONS) for i in range(RECORDS)]
            await kafka.produce(topic, records)
        await kafka.commit_many(self.commits)
        await kafka.create_topic(self.lossy_topic)
        await kafka.produce(
            self.lossy_topic, [Rec(b"y", 0, old_ms + i) for i in range(LOSSY_RECORDS)]
        )
        await kafka.commit_many({g: {TopicPartition(self.lossy_topic, 0): 0} for g in self.lossy})
        await kafka.delete_records(self.lossy_topic, {0: LOST})


@contextlib.contextmanager
def replicas(tmp_path: Path, bootstrap: str, prefix: str) -> Iterator[dict[str, Replica]]:
    running: dict[str, Replica] = {}
    try:
        for name in REPLICAS:
            port = free_port()
            path = tmp_path / f"{name}.toml"
            text = sharded_settings(
                port, bootstrap, cluster="sharded", prefix=prefix, identity=name, sampling=True
            )
            path.write_text(text, "utf-8")
            running[name] = Replica(name, port, path, tmp_path / f"{name}.log")
            running[name].start()
        yield running
    finally:
        stop_all(running.values())


def scalar(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def dashboard_query(title: str, ref: str = "A") -> str:
    (expr,) = [e for t, r, e in panel_queries(load_dashboard()) if t == title and r == ref]
    return concrete_query(expr, RATE_INTERVAL)


async def settled(api: PrometheusApi, truth: Truth, members: int) -> str | None:
    """None once Prometheus sees ``members`` replicas sharing all buckets and every group
    exactly once; else what is not there yet."""
    buckets = by_label(await api.query(f"klag_pipeline_shard_buckets{{{ALL}}}"), "instance")
    if sum(buckets.values()) != BUCKETS or len([b for b in buckets.values() if b]) != members:
        return f"buckets per replica: {buckets}"
    views = by_label(await api.query("klag_pipeline_shard_members"), "instance")
    if sorted(views.values()) != [float(members)] * members:
        return f"members seen per replica: {views}"
    exported = await api.query(f'kafka_consumergroup_group_sum_lag{{group=~"{truth.prefix}-.*"}}')
    groups = [s["metric"]["group"] for s in exported]
    if len(groups) != truth.groups or len(set(groups)) != truth.groups:
        return f"{len(groups)} group series, {len(set(groups))} groups"
    return None


async def check_totals(api: PrometheusApi, truth: Truth, members: int) -> None:
    """The dashboard's figures equal the seeded truth, whatever the replicas' shares."""
    assert scalar(await api.query(dashboard_query("Total lag"))) == truth.total_lag
    assert scalar(await api.query(dashboard_query("Consumer groups"))) == truth.groups
    assert scalar(await api.query(dashboard_query("Partitions with data loss"))) == LOSSY_GROUPS
    flagged = await api.query(dashboard_query("Flagged partitions", "A"))
    assert by_label(flagged, "cluster_name") == {"sharded": float(LOSSY_GROUPS)}
    # Each replica counts its own share; the old max-over-replicas query undercounted.
    shares = by_label(
        await api.query(f"kafka_lag_exporter_data_loss_partitions_total{{{ALL}}}"), "instance"
    )
    assert len(shares) == members
    assert sum(shares.values()) == LOSSY_GROUPS
    if len([s for s in shares.values() if s]) > 1:  # spread over replicas (almost always)
        old = "sum(max by (cluster_name) (kafka_lag_exporter_data_loss_partitions_total))"
        assert scalar(await api.query(old)) == max(shares.values()) < LOSSY_GROUPS
    assert by_label(await api.query(dashboard_query("Offset lag per group")), "group") == {
        g: float(sum(RECORDS - o for o in truth.commits[g].values())) for g in truth.commits
    } | {g: float(LOSSY_RECORDS) for g in truth.lossy}
    lost = by_label(await api.query(dashboard_query("Messages lost")), "group")
    assert len(lost) == truth.groups  # 0 for every group but one
    assert {g: v for g, v in lost.items() if v} == {g: LOST for g in truth.lossy}
    assigned = await api.query(dashboard_query("Buckets assigned per cluster"))
    assert by_label(assigned, "cluster_name") == {"sharded": float(BUCKETS)}
    total = await api.query(f"sum by (cluster_name) (klag_pipeline_shard_buckets{{{ALL}}})")
    assert by_label(total, "cluster_name") == {"sharded": float(BUCKETS)}
    groups = await api.query(dashboard_query("Groups per replica", "B"))
    assert by_label(groups, "cluster_name") == {"sharded": float(truth.groups)}
    per_replica = by_label(await api.query(dashboard_query("Buckets per replica")), "instance")
    assert len([b for b in per_replica.values() if b > 0]) == members
    up = await api.query(dashboard_query("Cluster up"))
    assert by_label(up, "cluster_name") == {"sharded": 1.0}


async def firing_once(api: PrometheusApi, alertname: str) -> list[str]:
    """The groups ``alertname`` fires for; each at most once (else the assertion fails)."""
    groups = [a["group"] for a in await api.firing(alertname)]
    assert len(groups) == len(set(groups)), f"{alertname} fired twice for a group: {groups}"
    return sorted(groups)


async def check_group_alerts(api: PrometheusApi, truth: Truth) -> None:
    behind = truth.lagging | truth.lossy

    async def expected_alerts() -> bool:
        return (
            await firing_once(api, "KafkaConsumerGroupDataLoss") == sorted(truth.lossy)
            # Empty (no members) with lag: not Stable. Caught-up groups are Empty without lag.
            and await firing_once(api, "KafkaConsumerGroupNotStable") == sorted(behind)
            and set(await firing_once(api, "KafkaConsumerGroupTimeLagHigh")) >= truth.lagging
        )

    await wait_until(expected_alerts, within=DEADLINE, interval=1.0, message="group alerts")
    for loss in await api.firing("KafkaConsumerGroupDataLoss"):
        assert loss["topic"] == truth.lossy_topic
        assert "instance" not in loss
    assert set(await firing_once(api, "KafkaConsumerGroupTimeLagHigh")) <= behind
    assert await api.firing("KlagPipelineDataStale") == []


@pytest.mark.timeout(400)
async def test_dashboard_and_alerts_over_three_sharded_replicas(
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    began = time.monotonic()
    truth = Truth(unique("shardprom"))
    await truth.seed(kafka)
    queries = [
        (title, ref, concrete_query(expr, RATE_INTERVAL))
        for title, ref, expr in panel_queries(load_dashboard())
    ]
    required = [q for q in queries if not is_consumer_health_query(q[2])]

    with (
        replicas(tmp_path, kafka_bootstrap, truth.prefix) as fleet,
        prometheus_process(tmp_path, *(r.port for r in fleet.values())) as base,
    ):

        def logs() -> str:
            return "\n".join(r.tail(8) for r in fleet.values())

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            api = PrometheusApi(session, base)
            await wait_until(api.ready, within=DEADLINE, interval=0.5, message="prometheus ready")
            state: list[str] = []

            async def all_settled(members: int) -> bool:
                state[:] = [await settled(api, truth, members) or ""]
                return not state[0]

            await wait_until(
                lambda: all_settled(3),
                within=SETTLE,
                interval=1.0,
                message="three replicas settled in Prometheus",
                details=lambda: f"{state}\n{logs()}",
            )
            record_property("start_to_settled", round(time.monotonic() - began, 1))

            missing: list[str] = []

            async def every_panel_has_data() -> bool:
                missing[:] = [
                    f"{title} [{ref}]: {expr}"
                    for title, ref, expr in required
                    if not await api.query(expr)
                ]
                return not missing

            await wait_until(
                every_panel_has_data,
                within=DEADLINE,
                interval=1.0,
                message="data in every dashboard panel",
                details=lambda: "panels without data:\n" + "\n".join(missing),
            )
            for _, _, expr in queries:  # the health ones too: valid queries (query() asserts)
                await api.query(expr)

            await check_totals(api, truth, members=3)
            await check_group_alerts(api, truth)
            views = by_label(await api.query(dashboard_query("Sharding group members")), "instance")
            assert sorted(views.values()) == [3.0, 3.0, 3.0]

            # One replica leaves (SIGTERM: LeaveGroup); the other two take its buckets over.
            stopped = fleet["r3"]
            stopped.signal(signal.SIGTERM)
            assert stopped.wait(15) == 0
            await wait_until(
                lambda: all_settled(2),
                within=SETTLE,
                interval=1.0,
                message="two replicas settled after one left",
                details=lambda: f"{state}\n{logs()}",
            )
            await check_totals(api, truth, members=2)
            await check_group_alerts(api, truth)

            async def exporter_down() -> list[dict[str, str]]:
                return await api.firing("KlagPipelineExporterDown")

            down = await wait_until(exporter_down, within=30, interval=0.5, message="down alert")
            assert [(a["job"], a["instance"]) for a in down] == [(JOB, f"127.0.0.1:{stopped.port}")]
    record_property("total_seconds", round(time.monotonic() - began, 1))
    print(f"\nsharded prometheus test: {time.monotonic() - began:.1f}s")
