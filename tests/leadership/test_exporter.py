"""The exporter under leadership, with a fake cluster port and a switchable fake provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass

from klag_pipeline.app import Exporter
from klag_pipeline.kafka.port import ClusterClient, RequestObserver
from klag_pipeline.model import GroupState, TopicPartition, Watermarks
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    LeadershipSettings,
    Settings,
    TimestampSamplingSettings,
)
from klag_pipeline.snapshot import ClusterSnapshot, ClusterWithdrawn, SinkUpdate
from tests.support.waiting import wait_until
from tests.unit.fake_cluster import FakeCluster, FakeGroup

TP = TopicPartition("orders", 0)


@dataclass
class SwitchProvider:
    """Leads exactly while ``leading`` is True."""

    leading: bool = False
    kind: str = "fake"
    identity: str = "replica-1"
    holder: str | None = None
    released: bool = False

    async def acquire_or_renew(self) -> bool:
        return self.leading

    async def release(self) -> None:
        self.released = True

    async def close(self) -> None:
        return None


class RecordingSink:
    name = "recording"

    def __init__(self) -> None:
        self.updates: list[SinkUpdate] = []

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        async for update in inbox:
            self.updates.append(update)


def settings(enabled: bool = True) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            # Far longer than any wait below: a cycle that happens was kicked, not ticked.
            poll_interval=30.0,
            staleness_threshold=90.0,
            timestamp_sampling=TimestampSamplingSettings(enabled=False),
            leadership=LeadershipSettings(
                enabled=enabled,
                provider="kafka",
                lease_duration=1.0,
                renew_deadline=0.6,
                retry_period=0.05,
            ),
        ),
        clusters=(
            ClusterSettings(name="c1", bootstrap_servers=("127.0.0.1:9092",)),
            ClusterSettings(name="c2", bootstrap_servers=("127.0.0.1:9093",)),
        ),
    )


def fake() -> FakeCluster:
    cluster = FakeCluster()
    cluster.partitions = {TP: Watermarks(0, 10)}
    cluster.groups["g"] = FakeGroup(state=GroupState.EMPTY, committed={TP: 4})
    return cluster


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    await wait_until(predicate, within=within, interval=0.01)


async def test_only_the_leader_collects_and_losing_leadership_withdraws_every_cluster() -> None:
    clusters = {"c1": fake(), "c2": fake()}

    def factory(c: ClusterSettings, e: ExporterSettings, o: RequestObserver) -> ClusterClient:
        return clusters[c.name]

    provider = SwitchProvider()
    sink = RecordingSink()
    exporter = Exporter(
        settings(), client_factory=factory, extra_sinks=[sink], leadership_provider=provider
    )
    status = exporter.status
    assert (status.is_leader, status.identity) == (False, "replica-1")
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
    try:
        # Standby: the first tick reached the gate (the loop is alive) but nothing touched Kafka.
        await until(lambda: all(s.cycles >= 1 for s in status.snapshot()))
        assert exporter.elector is not None
        rounds = exporter.elector.rounds
        await until(lambda: exporter.elector is not None and exporter.elector.rounds > rounds + 2)
        assert [c.calls for c in clusters.values()] == [[], []]
        assert status.ready() == (False, "standby")
        assert status.healthy() == (True, "ok")
        assert sink.updates == []

        # Elected: both clusters collect at once, though the next tick is 30 s away.
        provider.leading = True
        await until(lambda: {u.cluster for u in sink.updates} == {"c1", "c2"})
        assert all(isinstance(u, ClusterSnapshot) for u in sink.updates)
        assert status.is_leader
        assert status.ready() == (True, "ok")

        # Demoted: every cluster's series are withdrawn, and nothing is exported afterwards.
        provider.leading = False
        await until(lambda: sum(isinstance(u, ClusterWithdrawn) for u in sink.updates) == 2)
        withdrawn = [u for u in sink.updates if isinstance(u, ClusterWithdrawn)]
        assert {(u.cluster, u.reason) for u in withdrawn} == {("c1", "standby"), ("c2", "standby")}
        assert not status.is_leader
        assert status.ready() == (False, "standby")
        seen = len(sink.updates)
        for pipeline in exporter.pipelines:
            pipeline.ticker.kick()  # ticks on a standby still stop at the gate
        await until(lambda: all(s.cycles >= 3 for s in status.snapshot()))
        assert len(sink.updates) == seen
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert provider.released


async def test_without_leadership_the_exporter_always_leads() -> None:
    exporter = Exporter(settings(enabled=False), client_factory=lambda c, e, o: fake())
    assert exporter.elector is None
    assert exporter.status.is_leader
