"""Fixtures of the multi-broker tests: one 3-broker KRaft cluster for the session, started only
when a test here asks for it, with a request-logging proxy in front of every broker.

tests/conftest.py's single-broker ``kafka_bootstrap`` fixture is separate: a session that runs
both starts both clusters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.kafka_local import KafkaCluster, PlaintextListener
from tests.multibroker.proxies import ProxyThread, ThreeBrokers
from tests.multibroker.support import (
    BROKERS,
    MULTIBROKER_PROPERTIES,
    wait_whole,
)
from tests.support.kafka import KafkaTestClient


@pytest.fixture(scope="session")
def three_brokers() -> Iterator[ThreeBrokers]:
    proxies = ProxyThread(BROKERS)
    ports = proxies.start()
    cluster = KafkaCluster(
        BROKERS,
        extra_broker_properties=MULTIBROKER_PROPERTIES,
        listeners=[PlaintextListener("PROXIED", advertised_ports=tuple(ports))],
    )
    try:
        cluster.start()
        upstreams = []
        for node in cluster.node_ids:
            host, _, port = cluster.node_address(node, "PROXIED").rpartition(":")
            upstreams.append((host, int(port)))
        proxies.set_upstreams(upstreams)
        yield ThreeBrokers(cluster, proxies)
    finally:
        cluster.stop()
        proxies.close()


@pytest.fixture
async def mb(three_brokers: ThreeBrokers) -> AsyncIterator[KafkaTestClient]:
    """A :class:`KafkaTestClient` on the 3-broker cluster (direct, not through the proxies).

    The cluster must be whole when a test starts: a test that stopped a broker restarts it."""
    await wait_whole(three_brokers.bootstrap, within=60.0)
    client = await KafkaTestClient.connect(three_brokers.bootstrap)
    try:
        yield client
    finally:
        await client.close()
