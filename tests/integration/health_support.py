"""Helpers for the consumer-health scenarios: an exporter with short health timings, and a real
consumer and producer that the test paces, so every expectation comes from what the test drove
(records per tick, when commits stop, when members leave), never from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as AioTopicPartition

from klag_pipeline.health.model import GroupHealth, PartitionHealth
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import ClusterSettings, HealthSettings, Settings
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionRow
from tests.integration.pipeline_support import RecordingSink, settings
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

POLL = 0.5
HEALTH = HealthSettings(
    window=3.0,  # six observations: the least the rules need for a trend, at 2 × poll_interval
    stalled_after=2.0,
    stopped_after=2.0,
    abandoned_after=2.0,
)
TICK = 0.1
"""The pace of the drivers: one produce or consume-and-commit step every 100 ms."""


def health_config(cluster_settings: ClusterSettings, **overrides: object) -> Settings:
    """Settings with :data:`HEALTH` (plus ``overrides``), no time-lag sampling (not judged)."""
    config = settings(cluster_settings, poll_interval=POLL, sampling=False)
    health = dataclasses.replace(HEALTH, **overrides)  # type: ignore[arg-type]  # test-only kwargs
    return dataclasses.replace(config, exporter=dataclasses.replace(config.exporter, health=health))


# -- reading the recorded snapshots ---------------------------------------------------------


def row_of(snapshot: ClusterSnapshot, group: str, tp: TopicPartition) -> PartitionRow | None:
    return next((r for r in snapshot.rows if (r.group, r.topic_partition) == (group, tp)), None)


def summary_of(snapshot: ClusterSnapshot, group: str) -> GroupSummary | None:
    return next((g for g in snapshot.groups if g.group == group), None)


def partition_health(
    snapshot: ClusterSnapshot, group: str, tp: TopicPartition
) -> PartitionHealth | None:
    return None if snapshot.health is None else snapshot.health.partitions.get((group, tp))


def group_health(snapshot: ClusterSnapshot, group: str) -> GroupHealth | None:
    return None if snapshot.health is None else snapshot.health.groups.get(group)


async def first_snapshot(
    recorder: RecordingSink,
    cluster_name: str,
    predicate: Callable[[ClusterSnapshot], object],
    *,
    after: float = 0.0,
    within: float = 20.0,
    what: str = "snapshot",
) -> ClusterSnapshot:
    """The first recorded snapshot observed at or after ``after`` that satisfies ``predicate``,
    waiting for it (with a deadline); the failure shows the last snapshot's health."""

    def found() -> ClusterSnapshot | None:
        return next(
            (
                s
                for s in recorder.snapshots(cluster_name)
                if s.observed_at >= after and predicate(s)
            ),
            None,
        )

    def details() -> str:
        shots = recorder.snapshots(cluster_name)
        return f"last snapshot health: {shots[-1].health!r}" if shots else "no snapshot"

    return await wait_until(found, within=within, message=what, details=details)


def between(
    recorder: RecordingSink, cluster_name: str, start: float, end: float
) -> list[ClusterSnapshot]:
    return [s for s in recorder.snapshots(cluster_name) if start <= s.observed_at <= end]


# -- drivers ----------------------------------------------------------------------------------


async def paced(step: Callable[[], object], period: float = TICK) -> None:
    """Call ``step`` (sync or async) every ``period`` seconds on a fixed schedule: a late tick
    (a loaded machine) is followed by early ones, so the average pace is the stated one."""
    due = time.monotonic()
    while True:
        result = step()
        if asyncio.iscoroutine(result):
            await result
        due += period
        await asyncio.sleep(max(0.0, due - time.monotonic()))


@dataclass
class PacedProducer:
    """Produces ``per_tick`` records to partition 0 of ``topic`` every tick; ``acked`` counts
    the records the broker acknowledged (the high watermark once they are all written)."""

    kafka: KafkaTestClient
    topic: str
    per_tick: int
    acked: int = 0

    async def step(self) -> None:
        if self.per_tick:
            await self.kafka.produce(self.topic, [Rec(b"x")] * self.per_tick)
            self.acked += self.per_tick


@dataclass
class PacedConsumer:
    """A real group member (subscribed, auto-commit off) that reads at most ``per_tick``
    records a tick and commits what it read, while ``committing``. It heartbeats in aiokafka's
    background task whatever the test does with it."""

    consumer: AIOKafkaConsumer
    tp: TopicPartition
    per_tick: int
    committing: bool = True
    committed: int = 0
    last_commit_at: float = 0.0  # unix seconds when the last commit was sent
    caught_up_at: float | None = None
    """The first commit within one tick of ``producer``'s acknowledged records: the floor of
    lag a consumer paced in ticks reaches while production goes on (it reads a tick's records
    a tick later)."""
    producer: PacedProducer | None = None

    async def step(self) -> None:
        if not self.committing:
            return
        tp = AioTopicPartition(self.tp.topic, self.tp.partition)
        batches = await self.consumer.getmany(tp, timeout_ms=50, max_records=self.per_tick)
        records = batches.get(tp, [])
        if not records:
            return
        offset = records[-1].offset + 1
        # Stamped before the request: no observation can see this commit earlier than that.
        sent = time.time()
        await self.consumer.commit({tp: offset})
        self.committed = offset
        self.last_commit_at = sent
        if (
            self.caught_up_at is None
            and self.producer is not None
            and offset >= self.producer.acked - self.producer.per_tick
        ):
            self.caught_up_at = self.last_commit_at


@contextlib.asynccontextmanager
async def paced_consumer(
    bootstrap: str, group: str, topic: str, *, per_tick: int, join: bool = True
) -> AsyncIterator[PacedConsumer]:
    """A :class:`PacedConsumer` of partition 0 of ``topic`` (one partition). ``join``: a group
    member, yielded once assigned; otherwise it assigns the partition itself and commits under
    ``group`` without ever joining it (as Flink and Spark do): the group has no members."""
    consumer = AIOKafkaConsumer(
        *([topic] if join else []),
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        if join:
            await wait_until(lambda: bool(consumer.assignment()), message=f"{group} assignment")
        else:
            consumer.assign([AioTopicPartition(topic, 0)])
        yield PacedConsumer(consumer, TopicPartition(topic, 0), per_tick)
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def driving(*steps: Callable[[], object]) -> AsyncIterator[None]:
    """Run each step on the :func:`paced` schedule until the block ends."""
    tasks = [asyncio.create_task(paced(step)) for step in steps]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
