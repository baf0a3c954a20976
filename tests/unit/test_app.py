"""The composition root with a fake cluster port: cycles, liveness, a stalled sink, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Collection, Mapping

from klag_pipeline.app import Exporter
from klag_pipeline.kafka.port import ClusterClient, RequestObserver, TimestampListing
from klag_pipeline.model import GroupState, TopicPartition, Watermarks
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    PerformanceSettings,
    Settings,
    TimestampSamplingSettings,
)
from klag_pipeline.snapshot import SinkUpdate
from tests.unit.fake_cluster import FakeCluster, FakeGroup

TP = TopicPartition("orders", 0)


def settings(poll: float = 0.02, capacity: int = 2, *, sampling: bool = False) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll,
            staleness_threshold=60.0,
            timestamp_sampling=TimestampSamplingSettings(enabled=sampling),
            performance=PerformanceSettings(queue_capacity=capacity),
        ),
        clusters=(ClusterSettings(name="c1", bootstrap_servers=("127.0.0.1:9092",)),),
    )


def fake() -> FakeCluster:
    cluster = FakeCluster()
    cluster.partitions = {TP: Watermarks(0, 10)}
    cluster.groups["g"] = FakeGroup(state=GroupState.EMPTY, committed={TP: 4})
    return cluster


class StalledSink:
    """A sink that never takes anything from its inbox."""

    name = "stalled"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        await self.release.wait()
        async for _ in inbox:
            pass


async def run_for(exporter: Exporter, cycles: int) -> None:
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
    async with asyncio.timeout(20):
        await exporter.prometheus.wait_applied(cycles)
    stop.set()
    async with asyncio.timeout(10):
        await task


async def test_every_cycle_is_an_attempt_and_keeps_health_ok() -> None:
    cluster = fake()

    def factory(c: ClusterSettings, e: ExporterSettings, o: RequestObserver) -> ClusterClient:
        return cluster

    exporter = Exporter(settings(), client_factory=factory)
    await run_for(exporter, 5)
    (status,) = exporter.status.snapshot()
    assert status.cycles >= 5
    assert status.successes >= 5
    assert exporter.status.healthy() == (True, "ok")
    body, _, _ = exporter.prometheus.render(None, None)
    assert b'kafka_consumergroup_group_lag{client_id="",cluster_name="c1"' in body


async def test_a_stalled_sink_neither_stalls_collection_nor_the_other_sinks() -> None:
    cluster = fake()
    stalled = StalledSink()

    def factory(c: ClusterSettings, e: ExporterSettings, o: RequestObserver) -> ClusterClient:
        return cluster

    exporter = Exporter(settings(capacity=2), client_factory=factory, extra_sinks=[stalled])
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=5.0))
    async with asyncio.timeout(20):
        # Far more cycles than the stalled inbox holds: collection kept going.
        await exporter.prometheus.wait_applied(10)
    assert exporter.inboxes["stalled"].dropped >= 10 - 2
    rendered = exporter.self_metrics.render(openmetrics=False)
    assert b'klag_pipeline_sink_dropped_snapshots_total{sink="stalled"}' in rendered
    stalled.release.set()
    stop.set()
    async with asyncio.timeout(10):
        await task


async def test_shutdown_finishes_within_its_deadline_even_with_a_sink_that_never_ends() -> None:
    cluster = fake()

    class Stubborn:
        name = "stubborn"

        async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
            await asyncio.Event().wait()  # ignores the closed inbox

    def factory(c: ClusterSettings, e: ExporterSettings, o: RequestObserver) -> ClusterClient:
        return cluster

    exporter = Exporter(settings(), client_factory=factory, extra_sinks=[Stubborn()])
    stop = asyncio.Event()
    runner = Runner()
    exporter.add_to(runner, stop)
    task = asyncio.create_task(runner.run(stop, shutdown_timeout=0.5))
    async with asyncio.timeout(20):
        await exporter.prometheus.wait_applied(2)
    stop.set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        await task
    assert loop.time() - started < 5.0


async def test_the_first_timestamp_pass_starts_once_metrics_has_the_partial_snapshot() -> None:
    """docs/pipeline.md, "The first scrape": the timestamp pass would otherwise share the CPU
    with the rendering of the partial snapshot and delay the first complete /metrics."""
    seen: list[tuple[str, ...]] = []

    class Recording(FakeCluster):
        async def sample_timestamps(
            self, wanted: Mapping[TopicPartition, Collection[int]]
        ) -> TimestampListing:
            seen.append(exporter.prometheus.clusters)
            return await super().sample_timestamps(wanted)

    cluster = Recording()
    cluster.partitions = {TP: Watermarks(0, 10)}
    cluster.groups["g"] = FakeGroup(state=GroupState.EMPTY, committed={TP: 4})

    def factory(c: ClusterSettings, e: ExporterSettings, o: RequestObserver) -> ClusterClient:
        return cluster

    exporter = Exporter(settings(poll=0.5, sampling=True), client_factory=factory)
    await run_for(exporter, 2)  # the partial snapshot, then the complete one
    (pipeline,) = exporter.pipelines
    assert pipeline.early is not None
    assert pipeline.early.published == 1
    assert seen[0] == ("c1",)
