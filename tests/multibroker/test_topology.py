"""The 3-broker cluster is what the other multi-broker tests rely on: three brokers, topics
replicated three times with ``min.insync.replicas`` 2, and groups whose coordinators are
spread over several brokers (ground truth from FindCoordinator, not from the exporter)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.multibroker.proxies import ThreeBrokers
from tests.multibroker.support import (
    TOPIC_CONFIG,
    admin_client,
    partitions,
    spread_groups,
)
from tests.support.kafka import KafkaTestClient

pytestmark = pytest.mark.kafka


async def test_three_brokers_replicated_topics_and_spread_coordinators(
    three_brokers: ThreeBrokers, mb: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    topic = unique("t")
    await mb.create_topic(topic, partitions=6, replication_factor=3, config=TOPIC_CONFIG)
    truth = await partitions(three_brokers.bootstrap, [topic])
    assert len(truth) == 6
    assert all(len(p.replicas) == 3 and set(p.isr) == {1, 2, 3} for p in truth.values())
    assert {p.leader for p in truth.values()} == {1, 2, 3}
    async with admin_client(three_brokers.bootstrap) as admin:
        [described] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
        )
        assert described.resources[0][4][0][:2] == ("min.insync.replicas", "2")
        brokers = (await admin.describe_cluster())["brokers"]
    assert sorted(b["node_id"] for b in brokers) == [1, 2, 3]

    groups = await spread_groups(three_brokers.bootstrap, unique("g"), 12)
    assert len(set(groups.values())) >= 2, groups
    # Every proxy is in front of the broker it claims to be.
    async with admin_client(three_brokers.proxied_bootstrap) as admin:
        proxied = (await admin.describe_cluster())["brokers"]
    assert {b["node_id"]: b["port"] for b in proxied} == dict(
        zip([1, 2, 3], three_brokers.proxies.ports, strict=True)
    )
