"""Stages driven through real channels with a fake cluster port and a fake clock."""

from __future__ import annotations

import asyncio
import re

import pytest

from klag_pipeline.errors import KafkaConnectionError, KlagError
from klag_pipeline.events import CycleStarted
from klag_pipeline.model import LEADERSHIP_PROTOCOL_TYPE, GroupState, TopicPartition, Watermarks
from klag_pipeline.pipeline.chain import Chain
from klag_pipeline.pipeline.channel import Channel
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.settings.schema import ClusterSettings, TimestampSamplingSettings
from klag_pipeline.snapshot import ClusterSnapshot
from klag_pipeline.stages.calculation import CalculationStage
from klag_pipeline.stages.committed_offsets import CommittedOffsetsStage
from klag_pipeline.stages.discovery import ConnectionBackoff, DiscoveryStage
from klag_pipeline.stages.loop import run_stage
from klag_pipeline.stages.timestamps import TimestampStage
from klag_pipeline.stages.watermarks import WatermarksStage
from tests.unit.fake_cluster import FakeCluster, FakeGroup

T1 = TopicPartition("orders", 0)
T2 = TopicPartition("orders", 1)
INTERNAL = TopicPartition("__internal", 0)
AUDIT = TopicPartition("audit", 0)


def cluster_settings(**kwargs: object) -> ClusterSettings:
    return ClusterSettings(name="c1", bootstrap_servers=("127.0.0.1:9092",), **kwargs)  # type: ignore[arg-type]


def start(cycle: int = 1) -> CycleStarted:
    return CycleStarted("c1", cycle, 1_700_000_000.0, 100.0)


def populated() -> FakeCluster:
    fake = FakeCluster()
    fake.partitions = {
        T1: Watermarks(0, 100),
        T2: Watermarks(10, 50),
        INTERNAL: Watermarks(0, 5),
        AUDIT: Watermarks(0, 7),
    }
    fake.groups["app"] = FakeGroup(
        state=GroupState.STABLE,
        members=(fake.member("m1", "/10.0.0.1", T1),),
        committed={T1: 40, T2: 50, INTERNAL: 1, AUDIT: 7},
    )
    fake.groups["batch-job"] = FakeGroup(committed={T1: 100})
    fake.groups["ignored"] = FakeGroup(committed={T1: 0})
    return fake


async def run_chain(fake: FakeCluster, cluster: ClusterSettings) -> ClusterSnapshot:
    chain = (
        Chain.of(DiscoveryStage(fake, cluster))
        .then(CommittedOffsetsStage(fake, cluster))
        .then(WatermarksStage(fake))
        .then(TimestampStage(fake, TimestampSamplingSettings(enabled=False)))
        .then(CalculationStage(cluster))
    )
    return await chain.process(start())


async def test_group_and_topic_filters_apply_before_any_offset_is_read() -> None:
    fake = populated()
    cluster = cluster_settings(
        group_blacklist=(re.compile("^ignored$"),),
        topic_blacklist=(re.compile("^__"), re.compile("audit")),
    )
    snapshot = await run_chain(fake, cluster)
    rows = {(r.group, r.topic, r.partition): r.lag for r in snapshot.rows}
    assert rows == {
        ("app", "orders", 0): 60,
        ("app", "orders", 1): 0,
        ("batch-job", "orders", 0): 0,
    }
    assert {g.group for g in snapshot.groups} == {"app", "batch-job"}


async def test_committed_offsets_are_read_before_watermarks() -> None:
    fake = populated()
    await run_chain(fake, cluster_settings())
    assert fake.calls.index("fetch_committed_offsets") < fake.calls.index("list_watermarks")


async def test_watermarks_are_asked_only_for_topics_with_kept_commits() -> None:
    fake = populated()
    fake.partitions[TopicPartition("unrelated", 0)] = Watermarks(0, 1)
    snapshot = await run_chain(fake, cluster_settings())
    topics = {p.topic for p in snapshot.partitions}
    assert topics == {"orders", "audit"}


async def test_commit_on_deleted_topic_produces_no_row() -> None:
    fake = populated()
    fake.groups["app"].committed[TopicPartition("gone", 0)] = 5
    snapshot = await run_chain(fake, cluster_settings())
    assert all(r.topic != "gone" for r in snapshot.rows)


async def test_unreachable_cluster_backs_off_instead_of_retrying_every_cycle() -> None:
    clock = FakeClock()
    fake = FakeCluster(reachable=False)
    stage = DiscoveryStage(
        fake,
        cluster_settings(),
        clock=clock,
        backoff=ConnectionBackoff(initial=10.0, monotonic=clock.monotonic),
    )
    with pytest.raises(KafkaConnectionError):
        await stage.process(start(1))
    for cycle in range(2, 6):  # within the back-off window: no connection attempt at all
        clock.advance(1.0)
        with pytest.raises(KlagError, match="backing off"):
            await stage.process(start(cycle))
    assert fake.calls.count("connect") == 1
    clock.advance(10.0)
    fake.reachable = True
    discovered = await stage.process(start(7))
    assert fake.calls.count("connect") == 2
    assert discovered.groups == {}


async def test_run_stage_drops_a_failing_cycle_and_keeps_going() -> None:
    class Flaky:
        name = "flaky"

        async def process(self, event: CycleStarted) -> int:
            if event.cycle == 2:
                raise KafkaConnectionError("boom")
            return event.cycle

    inbox: Channel[CycleStarted] = Channel(4, "in")
    outbox: Channel[int] = Channel(4, "out")
    failures: list[tuple[str, int, str]] = []
    for cycle in (1, 2, 3):
        await inbox.send(start(cycle))
    inbox.close()
    loop_time = asyncio.get_running_loop().time()
    await run_stage(
        Flaky(),
        inbox,
        outbox,
        deadline_of=lambda _: loop_time + 60,
        on_failure=lambda c, n, s, e: failures.append((c, n, s)),
    )
    assert [item async for item in outbox] == [1, 3]
    assert failures == [("c1", 2, "flaky")]


async def test_run_stage_abandons_a_cycle_past_its_deadline() -> None:
    release = asyncio.Event()

    class Stuck:
        name = "stuck"

        async def process(self, event: CycleStarted) -> int:
            await release.wait()
            return event.cycle

    inbox: Channel[CycleStarted] = Channel(1, "in")
    outbox: Channel[int] = Channel(1, "out")
    failures: list[str] = []
    await inbox.send(start(1))
    inbox.close()
    past = asyncio.get_running_loop().time()  # already expired: no waiting in the test
    await run_stage(
        Stuck(),
        inbox,
        outbox,
        deadline_of=lambda _: past,
        on_failure=lambda *a: failures.append(str(a[3])),
    )
    assert failures == ["cycle exceeded poll_interval during stuck"]
    assert outbox.closed


async def test_the_leadership_group_of_our_own_replicas_is_never_exported() -> None:
    fake = populated()
    fake.groups["klag-pipeline"] = FakeGroup(protocol_type=LEADERSHIP_PROTOCOL_TYPE)
    snapshot = await run_chain(fake, cluster_settings())
    groups = {g.group for g in snapshot.groups}
    assert groups == {"app", "batch-job", "ignored"}
