"""The least Kafka ACLs the exporter needs, against a real broker with an authorizer (issue 16).

One Kafka 4.1.1 broker runs ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``.
Its PLAINTEXT listener (inter-broker and controller traffic, and this test's setup: topics,
records, commits, ACLs) authenticates nobody, so ``User:ANONYMOUS`` is a super user there; the
exporter logs in on a SASL/PLAIN listener as a principal with only the ACLs under test:

- ``klag``: Describe on the cluster, on the topics and on the groups — and nothing else;
- ``klag-reader``: the same, plus Read on ``acl-readable`` only.

Offset lag must be exact for both; time lag exists exactly for the topics the principal may
read, and a denied topic is named in a ``time_lag_denied`` warning and counted by
``klag_pipeline_time_lag_denied_topics``; the cycle itself succeeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from devtools import kafka_local
from devtools.kafka_local import TEST_BROKER_PROPERTIES, KafkaCluster, SaslListener
from klag_pipeline.app import Exporter
from klag_pipeline.commands.once import collect_once
from klag_pipeline.model import TopicPartition
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    PerformanceSettings,
    Settings,
    ShardingSettings,
)
from klag_pipeline.snapshot import ClusterSnapshot
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
DESCRIBE_ONLY = ("klag", "klag-describe-secret")
READER = ("klag-reader", "klag-reader-secret")
READABLE = "acl-readable"
DENIED = "acl-denied"
GROUP = "acl-group"
HOUR_MS = 3600 * 1000
# (topic, partition) → (records produced, committed offset): the exact lags are the differences.
SCENARIO = {
    (READABLE, 0): (10, 3),
    (READABLE, 1): (10, 5),
    (DENIED, 0): (10, 4),
}
EXPECTED_LAG = {tp: produced - committed for tp, (produced, committed) in SCENARIO.items()}


@dataclass(frozen=True)
class Secured:
    cluster: KafkaCluster
    produced_at_ms: int

    @property
    def sasl_bootstrap(self) -> str:
        return self.cluster.listener("SASL_PLAINTEXT").bootstrap


def _acl(bootstrap: str, *args: str) -> str:
    result = kafka_local.run_tool(
        "org.apache.kafka.tools.AclCommand", ["--bootstrap-server", bootstrap, *args]
    )
    return result.stdout


def _grant_describe(bootstrap: str, user: str) -> None:
    """Describe on the cluster, on every topic and on every group: what discovery and offsets
    need (ListGroups, DescribeGroups / ConsumerGroupDescribe, OffsetFetch, Metadata,
    ListOffsets)."""
    principal = f"User:{user}"
    _acl(bootstrap, "--add", "--allow-principal", principal, "--operation", "Describe", "--cluster")
    _acl(
        bootstrap,
        "--add",
        "--allow-principal",
        principal,
        "--operation",
        "Describe",
        "--topic",
        "*",
    )
    _acl(
        bootstrap,
        "--add",
        "--allow-principal",
        principal,
        "--operation",
        "Describe",
        "--group",
        "*",
    )


async def _scenario(bootstrap: str) -> int:
    client = await KafkaTestClient.connect(bootstrap)
    try:
        await client.create_topic(READABLE, partitions=2)
        await client.create_topic(DENIED, partitions=1)
        produced_at = int(time.time() * 1000) - HOUR_MS
        for (topic, partition), (count, _) in SCENARIO.items():
            await client.produce(
                topic,
                [Rec(b"x", partition=partition, timestamp_ms=produced_at) for _ in range(count)],
            )
        await client.commit(
            GROUP,
            {TopicPartition(t, p): committed for (t, p), (_, committed) in SCENARIO.items()},
        )
        return produced_at
    finally:
        await client.close()


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    listener = SaslListener(plain_users=dict([DESCRIBE_ONLY, READER]))
    properties = {
        **TEST_BROKER_PROPERTIES,
        "authorizer.class.name": AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        # PLAINTEXT carries the broker's, the controller's and this test's setup traffic.
        "super.users": "User:ANONYMOUS",
    }
    with KafkaCluster(1, extra_broker_properties=properties, listeners=[listener]) as cluster:
        produced_at = asyncio.run(_scenario(cluster.bootstrap))
        for user in (DESCRIBE_ONLY[0], READER[0]):
            _grant_describe(cluster.bootstrap, user)
        _acl(
            cluster.bootstrap,
            "--add",
            "--allow-principal",
            f"User:{READER[0]}",
            "--operation",
            "Read",
            "--topic",
            READABLE,
        )
        yield Secured(cluster, produced_at)


def _settings(secured: Secured, user: tuple[str, str], *, poll_interval: float = 30.0) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll_interval,
            staleness_threshold=poll_interval * 3,
            performance=PerformanceSettings(kafka_timeout=10.0),
        ),
        clusters=(
            ClusterSettings(
                name="acl",
                bootstrap_servers=tuple(secured.sasl_bootstrap.split(",")),
                group_whitelist=(re.compile(f"^{GROUP}$"),),
                consumer_properties={
                    "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanism": "PLAIN",
                    "sasl.username": user[0],
                    "sasl.password": user[1],
                },
            ),
        ),
    )


def _lags(snapshot: ClusterSnapshot) -> dict[tuple[str, int], int]:
    return {(row.topic, row.partition): row.lag for row in snapshot.rows if row.group == GROUP}


def _time_lags(snapshot: ClusterSnapshot) -> dict[tuple[str, int], float | None]:
    return {
        (row.topic, row.partition): row.lag_seconds for row in snapshot.rows if row.group == GROUP
    }


async def _once(settings: Settings) -> ClusterSnapshot:
    snapshots, errors = await collect_once(settings)
    assert errors == [], errors
    (snapshot,) = snapshots
    return snapshot


def test_the_exporter_principal_really_is_restricted(secured: Secured) -> None:
    """The premise: the ACLs are in place and Read is granted to klag-reader only."""
    listed = _acl(secured.cluster.bootstrap, "--list")
    read = [line for line in listed.splitlines() if "operation=READ" in line]
    assert len(read) == 1, listed
    assert f"principal=User:{READER[0]}," in read[0], listed
    describe = [line for line in listed.splitlines() if "operation=DESCRIBE" in line]
    assert len(describe) == 6, listed  # cluster, topics, groups for each principal


async def test_describe_only_gives_exact_offset_lag_and_no_time_lag(secured: Secured) -> None:
    snapshot = await _once(_settings(secured, DESCRIBE_ONLY))
    assert _lags(snapshot) == EXPECTED_LAG
    assert _time_lags(snapshot) == dict.fromkeys(EXPECTED_LAG)
    assert snapshot.time_lag_denied == {READABLE, DENIED}


async def test_read_on_one_topic_gives_time_lag_for_that_topic_only(secured: Secured) -> None:
    snapshot = await _once(_settings(secured, READER))
    assert _lags(snapshot) == EXPECTED_LAG
    time_lags = _time_lags(snapshot)
    expected = snapshot.observed_at - secured.produced_at_ms / 1000
    for tp in ((READABLE, 0), (READABLE, 1)):
        seconds = time_lags[tp]
        assert seconds is not None, tp
        assert abs(seconds - expected) < 30, (tp, seconds, expected)
    assert time_lags[(DENIED, 0)] is None
    assert snapshot.time_lag_denied == {DENIED}


def _series(text: str, family: str) -> dict[tuple[str, int], float]:
    """``(topic, partition) → value`` of ``family``'s acl-group series in an exposition."""
    found: dict[tuple[str, int], float] = {}
    for line in text.splitlines():
        if not line.startswith(family + "{"):
            continue
        labels_text, _, value = line[len(family) + 1 :].rpartition("} ")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
        if labels.get("group") == GROUP:
            found[(labels["topic"], int(labels["partition"]))] = float(value)
    return found


@pytest.fixture
async def running(secured: Secured) -> AsyncIterator[Any]:
    """The exporter as ``run`` runs it, as klag-reader, polling every second."""
    settings = _settings(secured, READER, poll_interval=1.0)
    exporter = Exporter(settings)
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
    try:
        yield exporter, task
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
        await exporter.close_clients()


async def test_running_exporter_says_which_topic_lacks_read(running: Any) -> None:
    exporter, task = running
    with structlog.testing.capture_logs() as logs:

        def three_cycles() -> bool:
            assert not task.done()
            return exporter.status.snapshot()[0].successes >= 3

        await wait_until(three_cycles, within=60, interval=0.05, message="3 successful cycles")
    (status,) = exporter.status.snapshot()
    assert status.consecutive_failures == 0
    body, _, _ = exporter.prometheus.render(None, None)
    text = body.decode()
    assert '\nklag_pipeline_time_lag_denied_topics{cluster_name="acl"} 1.0\n' in text, text
    assert '\nklag_pipeline_cluster_up{cluster_name="acl"} 1\n' in text
    # Offset lag exported exactly for every partition; time lag only for the readable topic.
    assert _series(text, "kafka_consumergroup_group_lag") == EXPECTED_LAG
    time_lag = _series(text, "kafka_consumergroup_group_lag_seconds")
    assert set(time_lag) == {(READABLE, 0), (READABLE, 1)}, time_lag
    denied = [entry for entry in logs if entry["event"] == "time_lag_denied"]
    # One warning naming the topic, not one per cycle.
    assert len(denied) == 1, logs
    assert denied[0]["log_level"] == "warning"
    assert denied[0]["topics"] == [DENIED]
    assert denied[0]["cluster"] == "acl"
    assert "Read" in denied[0]["reason"]


async def test_sharding_without_read_on_its_group_owns_nothing_and_says_why(
    secured: Secured,
) -> None:
    """Sharding joins a group of its own: Describe alone is refused (GROUP_AUTHORIZATION_FAILED),
    the replica exports nothing and ``/ready`` names the reason; Read on that group is enough."""
    base = _settings(secured, DESCRIBE_ONLY, poll_interval=1.0)
    shard_group = "acl-shards"
    settings = dataclasses.replace(
        base,
        exporter=dataclasses.replace(
            base.exporter,
            sharding=ShardingSettings(
                enabled=True, group_id=shard_group, buckets=4, heartbeat_interval=0.5
            ),
        ),
    )
    exporter = Exporter(settings)
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
    grant = ("--allow-principal", f"User:{DESCRIBE_ONLY[0]}", "--operation", "Read")
    try:
        assert exporter.sharding is not None
        member = exporter.sharding.member

        def refused() -> str | None:
            return (
                member.problem if "GROUP_AUTHORIZATION_FAILED" in (member.problem or "") else None
            )

        await wait_until(refused, within=30, message="the join refused")
        ok, reason = exporter.status.ready()
        assert not ok
        assert "GROUP_AUTHORIZATION_FAILED" in reason
        body, _, _ = exporter.prometheus.render(None, None)
        assert _series(body.decode(), "kafka_consumergroup_group_lag") == {}
        _acl(secured.cluster.bootstrap, "--add", *grant, "--group", shard_group)

        def exported() -> dict[tuple[str, int], float]:
            body, _, _ = exporter.prometheus.render(None, None)
            return _series(body.decode(), "kafka_consumergroup_group_lag")

        assert await wait_until(exported, within=30, message="lag exported") == EXPECTED_LAG
        assert exporter.status.ready() == (True, "ok")
    finally:
        _acl(secured.cluster.bootstrap, "--remove", "--force", *grant, "--group", shard_group)
        stop.set()
        async with asyncio.timeout(15):
            await task
        await exporter.close_clients()
