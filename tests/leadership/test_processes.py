"""Exporter processes (``python -m klag_pipeline run``) electing a leader on real backends.

Kafka provider on the real broker, Kubernetes provider against a real kube-apiserver with etcd
(the ``kube_apiserver`` fixture). Throughout each scenario a sampler reads ``/leader`` of every
replica every 100 ms: at no sampled instant may two replicas both lead for longer than the renew
deadline. Takeover times are measured from
the signal to the moment a new leader serves the cluster's series, and printed (``-s``) and
recorded as test properties.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.kafka_local import TEST_BROKER_PROPERTIES, KafkaCluster
from klag_pipeline.model import TopicPartition
from tests.support.kafka import KafkaTestClient, start_broker_again, stop_broker
from tests.support.kube_apiserver import KubeApiServer
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
# The broker refuses sessions below group.min.session.timeout.ms (6 s by default).
KAFKA_TIMINGS = {"lease_duration": 6.0, "renew_deadline": 4.0, "retry_period": 1.0}
KUBE_TIMINGS = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.5}
POLL_INTERVAL = 1.0
# Process start-up, the first cycle and sampling granularity, on a busy 2-core machine.
SLACK = 3.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Replica:
    name: str
    port: int
    settings: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "klag_pipeline", "run", str(self.settings)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("KLAG_")},
            )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name}\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Fleet:
    """Replicas sharing one election, plus the split-brain sampler."""

    tmp: Path
    bootstrap: str
    group: str
    leadership: dict[str, Any]
    replicas: dict[str, Replica] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    longest_overlap: float = 0.0
    samples: int = 0
    _overlap_since: float | None = None
    _sampler: asyncio.Task[None] | None = None

    def add(self, name: str) -> Replica:
        port = free_port()
        settings = self.tmp / f"{name}.toml"
        leadership = "\n".join(
            f"{key} = {_toml(value)}"
            for key, value in {**self.leadership, "identity": name}.items()
        )
        settings.write_text(
            f"""
[exporter]
poll_interval = "{POLL_INTERVAL:g}s"
http_host = "127.0.0.1"
http_port = {port}

[exporter.timestamp_sampling]
enabled = false

[exporter.leadership]
enabled = true
{leadership}

[[clusters]]
name = "ha"
bootstrap_servers = "{self.bootstrap}"
group_whitelist = ["^{self.group}$"]
"""
        )
        replica = Replica(name, port, settings, self.tmp / f"{name}.log")
        self.replicas[name] = replica
        replica.start()
        return replica

    async def role(self, replica: Replica) -> bool | None:
        """``is_leader`` from ``/leader``, None when the replica does not answer."""
        assert self.session is not None
        try:
            async with self.session.get(f"http://127.0.0.1:{replica.port}/leader") as response:
                body = await response.json()
                return bool(body["is_leader"])
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def roles(self) -> dict[str, bool | None]:
        replicas = list(self.replicas.values())
        answers = await asyncio.gather(*(self.role(r) for r in replicas))
        return {r.name: a for r, a in zip(replicas, answers, strict=True)}

    async def leaders(self) -> list[str]:
        return [name for name, leading in (await self.roles()).items() if leading]

    async def serves_series(self, replica: Replica) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(f"http://127.0.0.1:{replica.port}/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return False
        return f'group="{self.group}"' in text and 'cluster_name="ha"' in text

    async def _sample(self) -> None:
        while True:
            leading = await self.leaders()
            now = time.monotonic()
            self.samples += 1
            if len(leading) > 1:
                self._overlap_since = self._overlap_since or now
                self.longest_overlap = max(self.longest_overlap, now - self._overlap_since)
            else:
                self._overlap_since = None
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> Fleet:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        for replica in self.replicas.values():
            if replica.alive:
                replica.signal(signal.SIGTERM)
        for replica in self.replicas.values():
            if replica.process is None:
                continue
            try:
                replica.wait(15)
            except subprocess.TimeoutExpired:
                replica.signal(signal.SIGKILL)
                replica.wait(5)
        if self.session is not None:
            await self.session.close()

    def logs(self) -> str:
        return "\n".join(r.tail() for r in self.replicas.values())

    async def until(
        self, condition: Callable[[], Awaitable[bool]], within: float, what: str
    ) -> float:
        """Seconds until ``condition`` held (polled every 100 ms); fails after ``within``."""
        began = time.monotonic()
        await wait_until(condition, within=within, message=what, details=self.logs)
        return time.monotonic() - began

    async def one_leader(self, within: float, among: list[str] | None = None) -> Replica:
        """Wait until exactly one replica (of ``among``) leads and serves the cluster's series."""
        found: list[Replica] = []

        async def settled() -> bool:
            roles = await self.roles()
            names = among or list(self.replicas)
            leading = [n for n in names if roles.get(n)]
            if len(leading) != 1 or not await self.serves_series(self.replicas[leading[0]]):
                return False
            found[:] = [self.replicas[leading[0]]]
            return True

        await self.until(settled, within, "exactly one leader serving series")
        return found[0]

    async def assert_single_leader_for(self, seconds: float) -> None:
        """Exactly one leader at every poll during ``seconds`` (no flapping)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            leading = await self.leaders()
            assert len(leading) == 1, f"leaders {leading}\n{self.logs()}"
            await asyncio.sleep(0.2)

    def check_split_brain(self, renew_deadline: float) -> None:
        assert self.samples > 10, "the sampler did not run"
        assert self.longest_overlap <= renew_deadline, (
            f"two leaders for {self.longest_overlap:.1f}s\n{self.logs()}"
        )


def _toml(value: Any) -> str:
    if isinstance(value, float):
        return f'"{value:g}s"'
    return f'"{value}"'


def report(record_property: Callable[[str, object], None], name: str, seconds: float) -> None:
    record_property(name, round(seconds, 2))
    print(f"\n{name}: {seconds:.2f}s")


async def seed_group(bootstrap: str, topic: str, group: str) -> None:
    """A topic and a group with a committed offset: the series a leader must export."""
    client = await KafkaTestClient.connect(bootstrap)
    try:
        await client.create_topic(topic)
        await client.commit(group, {TopicPartition(topic, 0): 0})
    finally:
        await client.close()


async def kill_leader_then_terminate_the_next(
    fleet: Fleet, timings: dict[str, float], record: Callable[[str, float], None]
) -> None:
    """The shared takeover scenario of three replicas: kill -9, then SIGTERM."""
    for name in ("r1", "r2", "r3"):
        fleet.add(name)
    leader = await fleet.one_leader(within=30)
    await fleet.assert_single_leader_for(2.0)

    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivors = [n for n in fleet.replicas if n != leader.name]
    successor = await fleet.one_leader(within=30, among=survivors)
    took = time.monotonic() - killed_at
    record("takeover_after_kill_seconds", took)
    limit = timings["lease_duration"] + timings["retry_period"] + POLL_INTERVAL + SLACK
    assert took <= limit, f"takeover after kill -9 took {took:.1f}s (limit {limit:g}s)"

    successor.signal(signal.SIGTERM)
    terminated_at = time.monotonic()
    last = [n for n in survivors if n != successor.name]
    await fleet.one_leader(within=30, among=last)
    took = time.monotonic() - terminated_at
    record("takeover_after_sigterm_seconds", took)
    limit = 2 * timings["retry_period"] + POLL_INTERVAL + SLACK
    assert took <= limit, f"takeover after SIGTERM took {took:.1f}s (limit {limit:g}s)"
    assert successor.wait(15) == 0, fleet.logs()
    fleet.check_split_brain(timings["renew_deadline"])


# -- kafka provider -------------------------------------------------------------------------------


@pytest.fixture
def kafka_fleet_args(
    kafka_bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> dict[str, Any]:
    return {
        "tmp": tmp_path,
        "bootstrap": kafka_bootstrap,
        "group": unique("ha-group"),
        "leadership": {"provider": "kafka", "lease_name": unique("ha-lease"), **KAFKA_TIMINGS},
    }


async def test_kafka_three_replicas_kill_then_sigterm(
    kafka_fleet_args: dict[str, Any],
    unique: Callable[[str], str],
    record_property: Callable[[str, object], None],
) -> None:
    args = kafka_fleet_args
    await seed_group(args["bootstrap"], unique("ha-topic"), args["group"])
    async with Fleet(**args) as fleet:
        await kill_leader_then_terminate_the_next(
            fleet, KAFKA_TIMINGS, lambda n, s: report(record_property, f"kafka_{n}", s)
        )


async def test_kafka_two_replicas_and_a_killed_leader_that_comes_back(
    kafka_fleet_args: dict[str, Any],
    unique: Callable[[str], str],
    record_property: Callable[[str, object], None],
) -> None:
    args = kafka_fleet_args
    await seed_group(args["bootstrap"], unique("ha-topic"), args["group"])
    async with Fleet(**args) as fleet:
        fleet.add("r1")
        fleet.add("r2")
        first = await fleet.one_leader(within=30)
        first.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        other = next(n for n in fleet.replicas if n != first.name)
        await fleet.one_leader(within=30, among=[other])
        report(record_property, "kafka_two_replicas_takeover_seconds", time.monotonic() - killed_at)
        # The killed replica restarts and joins as a standby: leadership does not move.
        first.wait(5)
        first.start()
        await fleet.until(
            lambda: _answers(fleet, first), within=20, what=f"{first.name} answering again"
        )
        await fleet.assert_single_leader_for(KAFKA_TIMINGS["lease_duration"])
        assert await fleet.leaders() == [other]
        fleet.check_split_brain(KAFKA_TIMINGS["renew_deadline"])


async def _answers(fleet: Fleet, replica: Replica) -> bool:
    return await fleet.role(replica) is not None


@pytest.fixture
def dedicated_cluster() -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(1, extra_broker_properties=TEST_BROKER_PROPERTIES)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_kafka_leader_steps_down_without_its_broker_and_one_leads_after_the_restart(
    dedicated_cluster: KafkaCluster,
    unique: Callable[[str], str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    bootstrap = dedicated_cluster.bootstrap
    group = unique("ha-group")
    await seed_group(bootstrap, unique("ha-topic"), group)
    leadership = {"provider": "kafka", "lease_name": unique("ha-lease"), **KAFKA_TIMINGS}
    async with Fleet(tmp_path, bootstrap, group, leadership) as fleet:
        fleet.add("r1")
        fleet.add("r2")
        await fleet.one_leader(within=30)
        await asyncio.to_thread(stop_broker, dedicated_cluster)
        stopped_at = time.monotonic()

        async def nobody_leads() -> bool:
            return not await fleet.leaders()

        # The coordinator is gone: the leader cannot renew and steps down.
        took = await fleet.until(nobody_leads, within=15, what="the leader stepping down")
        report(record_property, "step_down_without_broker_seconds", time.monotonic() - stopped_at)
        assert took <= KAFKA_TIMINGS["renew_deadline"] + KAFKA_TIMINGS["retry_period"] + SLACK
        started_at = time.monotonic()
        await asyncio.to_thread(start_broker_again, dedicated_cluster)
        await fleet.one_leader(within=40)
        report(record_property, "leader_after_broker_start_seconds", time.monotonic() - started_at)
        await fleet.assert_single_leader_for(3.0)
        fleet.check_split_brain(KAFKA_TIMINGS["renew_deadline"])


# -- kubernetes provider --------------------------------------------------------------------------


async def test_kubernetes_three_replicas_kill_then_sigterm(
    kube_apiserver: KubeApiServer,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    # Kubernetes names are DNS labels / subdomains: no underscores, unlike unique()'s.
    namespace = f"ha-{secrets.token_hex(4)}"
    kube_apiserver.create_namespace(namespace)
    kubeconfig = kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace)
    group = unique("ha-group")
    await seed_group(kafka_bootstrap, unique("ha-topic"), group)
    lease = f"ha-lease-{secrets.token_hex(3)}"
    leadership = {
        "provider": "kubernetes",
        "lease_name": lease,
        "kubeconfig": str(kubeconfig),
        **KUBE_TIMINGS,
    }
    async with Fleet(tmp_path, kafka_bootstrap, group, leadership) as fleet:
        await kill_leader_then_terminate_the_next(
            fleet, KUBE_TIMINGS, lambda n, s: report(record_property, f"kubernetes_{n}", s)
        )
        assert kube_apiserver.holder(namespace, lease) in fleet.replicas
    # The last replica released the Lease on its way out.
    assert kube_apiserver.holder(namespace, lease) is None
