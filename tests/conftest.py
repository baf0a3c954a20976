"""Shared fixtures: one real Kafka broker per test session, started only when a test needs it.

``KLAG_TEST_BOOTSTRAP=host:port`` points the integration tests at an already running cluster
instead (see docs/kafka-local.md).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from devtools.kafka_local import TEST_BROKER_PROPERTIES, KafkaCluster
from tests.support.kafka import KafkaTestClient
from tests.support.kube_apiserver import KubeApiServer

KAFKA_FIXTURES = frozenset({"kafka", "kafka_bootstrap", "kafka_cluster"})
_UNIT_DIR = Path(__file__).parent / "unit"


def _uses_kafka(item: pytest.Item) -> bool:
    return bool(KAFKA_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `-m "not kafka"` deselects every test that would start the broker.
    for item in items:
        if _uses_kafka(item):
            item.add_marker(pytest.mark.kafka)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Unit tests must run without a JVM: fail before the session broker would start.
    if _UNIT_DIR in item.path.parents and _uses_kafka(item):
        pytest.fail(f"{item.nodeid} is a unit test but uses a Kafka fixture", pytrace=False)


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster | None]:
    """The session's broker, or None when ``KLAG_TEST_BOOTSTRAP`` names an external cluster."""
    if os.environ.get("KLAG_TEST_BOOTSTRAP"):
        yield None
        return
    cluster = KafkaCluster(1, extra_broker_properties=TEST_BROKER_PROPERTIES)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: KafkaCluster | None) -> str:
    """``host:port`` of a PLAINTEXT listener of the session's cluster."""
    external = os.environ.get("KLAG_TEST_BOOTSTRAP")
    if external:
        return external
    assert kafka_cluster is not None
    return kafka_cluster.bootstrap


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique("topic")`` → ``"topic-<short test name>-<6 hex>"``, a fresh name per call."""
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "_", request.node.name.removeprefix("test_"))
    short = test_name.strip("_")[:40]

    def make(prefix: str) -> str:
        return f"{prefix}-{short}-{secrets.token_hex(3)}"

    return make


@pytest.fixture
async def kafka(kafka_bootstrap: str) -> AsyncIterator[KafkaTestClient]:
    """A :class:`KafkaTestClient` on the session's cluster, closed after the test."""
    client = await KafkaTestClient.connect(kafka_bootstrap)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    """A real kube-apiserver + etcd for the session (binaries from ``make tools``)."""
    server = KubeApiServer.start(tmp_path_factory.mktemp("kube-apiserver"))
    try:
        yield server
    finally:
        server.stop()
