"""Fixtures of the fault suite: its own broker behind a fault-injecting proxy.

The broker is separate from the session broker of the integration tests (and from an external
``KLAG_TEST_BOOTSTRAP`` cluster) because the suite kills and restarts it, and because its PROXIED
listener must advertise the proxy's port.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.faults.broker import FaultsBroker
from tests.faults.proxy import FaultProxy
from tests.support.kafka import KafkaTestClient


@pytest.fixture(scope="session")
def faults_broker() -> Iterator[FaultsBroker]:
    broker = FaultsBroker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def fault_proxy(faults_broker: FaultsBroker) -> AsyncIterator[FaultProxy]:
    """The proxy on the port the broker advertises, forwarding faithfully until told not to."""
    proxy = FaultProxy(faults_broker.proxied, seed=int(os.environ.get("KLAG_FAULT_SEED", "18")))
    await proxy.start("127.0.0.1", faults_broker.proxy_port)
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def truth(faults_broker: FaultsBroker) -> AsyncIterator[KafkaTestClient]:
    """Ground truth on the broker's own listener (never through the proxy)."""
    client = await KafkaTestClient.connect(faults_broker.bootstrap)
    try:
        yield client
    finally:
        await client.close()
