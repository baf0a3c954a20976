"""Scenario generator: topics, records with known timestamps, and consumer groups committed at
chosen offsets, on a real Kafka, plus the ground truth the measurements are checked against.

Group kinds (each group consumes ``topics_per_group`` whole topics):

- ``caught_up`` — committed at the high watermark: lag 0, never sampled.
- ``lagging`` — committed at one of ``distinct_offsets`` positions per partition on an *active*
  topic (records up to a second old); many groups share positions, as real consumer fleets do.
- ``idle`` — lagging on an *idle-producer* topic: nothing produced for hours, so the time lag is
  hours (interpolating exporters show 0 here).
- ``live`` — lagging groups with one joined member each (state Stable, a real assignment).
- ``empty`` — joined once and left without committing: listed and described, no series.

Plans are pure (``plan``); ``Scenario.setup`` creates them with aiokafka on the broker's direct
listener (never through the proxy). Commits are raw OffsetCommit requests, one per group with
all its partitions, many groups concurrently, without joining (Flink/Spark style).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import DeleteGroupsRequest
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.structs import TopicPartition as AioTopicPartition

IDLE_AGE_MS = 6 * 3600 * 1000
"""Idle-producer topics: their newest record is this old."""

RECORD_SPACING_MS = 1000
"""Record ``o`` of a partition is timestamped ``base + o × spacing``."""

FETCH_PARTITIONS_PER_REQUEST = 500
"""Issue 9's Fetch budget: ⌈lagging partitions / 500⌉ requests plus one per repeated offset."""

SETUP_CONCURRENCY = 32
COORDINATOR_GROUP = 0
COORDINATOR_ERRORS = frozenset({14, 15, 16})
"""COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: retry."""
RETRIES = 120
RETRY_BACKOFF = 0.25


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    """Shape of a scenario. ``groups`` counts groups with commits; ``empty_groups`` are extra."""

    name: str
    topics: int
    partitions: int
    groups: int
    empty_groups: int
    live_groups: int
    topics_per_group: int = 1
    records_per_partition: int = 200
    record_bytes: int = 100
    idle_topic_fraction: float = 0.2
    caught_up_fraction: float = 0.3
    idle_group_fraction: float = 0.2
    distinct_offsets: int = 3
    seed: int = 9
    prefix: str = "bench"

    @property
    def group_partitions(self) -> int:
        return self.groups * self.topics_per_group * self.partitions

    def validate(self) -> None:
        idle_topics = self.idle_topic_count
        if self.topics < 2 or idle_topics < 1 or idle_topics >= self.topics:
            raise ValueError("need at least one active and one idle topic (topics >= 2)")
        if not 1 <= self.topics_per_group <= self.topics - idle_topics:
            raise ValueError("topics_per_group must be between 1 and the active topic count")
        if self.distinct_offsets < 1 or self.distinct_offsets >= self.records_per_partition:
            raise ValueError("distinct_offsets must be in [1, records_per_partition)")
        if self.live_groups > self.groups:
            raise ValueError("live_groups cannot exceed groups")

    @property
    def idle_topic_count(self) -> int:
        return max(1, round(self.topics * self.idle_topic_fraction))


PRESETS: dict[str, ScenarioSpec] = {
    "small": ScenarioSpec("small", topics=10, partitions=10, groups=50, empty_groups=3,
                          live_groups=2),
    "medium": ScenarioSpec("medium", topics=50, partitions=10, groups=500, empty_groups=10,
                           live_groups=4),
    "large": ScenarioSpec("large", topics=100, partitions=10, groups=2000, empty_groups=20,
                          live_groups=6),
    "xlarge": ScenarioSpec("xlarge", topics=500, partitions=10, groups=10000, empty_groups=20,
                           live_groups=6, records_per_partition=50),
}  # fmt: skip
"""small: 50 groups / 500 group-partitions; medium: 500 / 5,000; large: 2,000 / 20,000;
xlarge: 10,000 / 100,000 (fewer records per partition, so that setup stays within minutes)."""


def preset(name: str, **overrides: Any) -> ScenarioSpec:
    spec = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    spec.validate()
    return spec


@dataclass(frozen=True, slots=True)
class TopicPlan:
    name: str
    idle: bool
    first_timestamp_ms: int

    def timestamp(self, offset: int) -> int:
        return self.first_timestamp_ms + offset * RECORD_SPACING_MS


@dataclass(frozen=True, slots=True)
class GroupPlan:
    group_id: str
    kind: str
    commits: dict[tuple[str, int], int]


@dataclass(slots=True)
class ScenarioPlan:
    spec: ScenarioSpec
    topics: list[TopicPlan]
    groups: list[GroupPlan]
    empty_groups: list[str]
    high: int = 0
    """Every partition holds offsets [0, high) after setup."""
    topic_index: dict[str, TopicPlan] = field(default_factory=dict)

    def truth(self) -> dict[str, Any]:
        """What a correct exporter must report, and the request budgets derived from it."""
        lagging: dict[tuple[str, int], set[int]] = defaultdict(set)
        rows = lagging_rows = 0
        for group in self.groups:
            for tp, offset in group.commits.items():
                rows += 1
                if offset < self.high:
                    lagging_rows += 1
                    lagging[tp].add(offset)
        max_offsets = max((len(v) for v in lagging.values()), default=0)
        distinct_reads = sum(len(v) for v in lagging.values())
        return {
            "groups_listed": len(self.groups) + len(self.empty_groups),
            "groups_with_commits": len(self.groups),
            "group_kinds": _count(g.kind for g in self.groups) | {"empty": len(self.empty_groups)},
            "topics": len(self.topics),
            "partitions": len(self.topics) * self.spec.partitions,
            "rows": rows,
            "lagging_rows": lagging_rows,
            "lagging_partitions": len(lagging),
            "distinct_offsets_to_read": distinct_reads,
            "max_distinct_offsets_per_partition": max_offsets,
            "fetch_budget_cold": (
                math.ceil(len(lagging) / FETCH_PARTITIONS_PER_REQUEST) + max(0, max_offsets - 1)
            ),
        }


def _count(items: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return dict(counts)


def plan(spec: ScenarioSpec, now_ms: int) -> ScenarioPlan:
    """Deterministic (seeded) plan: which topics, which groups at which offsets."""
    spec.validate()
    rng = random.Random(spec.seed)
    records = spec.records_per_partition
    idle_count = spec.idle_topic_count
    topics: list[TopicPlan] = []
    for i in range(spec.topics):
        idle = i < idle_count
        newest = now_ms - (IDLE_AGE_MS if idle else RECORD_SPACING_MS)
        name = f"{spec.prefix}-{'idle' if idle else 'active'}-{i:04d}"
        topics.append(TopicPlan(name, idle, newest - (records - 1) * RECORD_SPACING_MS))
    active = [t for t in topics if not t.idle]
    idle_topics = [t for t in topics if t.idle]
    positions = [
        records * (k + 1) // (spec.distinct_offsets + 1) for k in range(spec.distinct_offsets)
    ]

    n_caught_up = round(spec.groups * spec.caught_up_fraction)
    n_idle = round(spec.groups * spec.idle_group_fraction)
    kinds = (
        ["live"] * spec.live_groups
        + ["caught_up"] * n_caught_up
        + ["idle"] * n_idle
        + ["lagging"] * max(0, spec.groups - spec.live_groups - n_caught_up - n_idle)
    )[: spec.groups]
    groups: list[GroupPlan] = []
    cursor = {"active": 0, "idle": 0}
    for i, kind in enumerate(kinds):
        pool_name = "idle" if kind == "idle" else "active"
        pool = idle_topics if kind == "idle" else active
        chosen = []
        for _ in range(spec.topics_per_group):
            chosen.append(pool[cursor[pool_name] % len(pool)])
            cursor[pool_name] += 1
        commits: dict[tuple[str, int], int] = {}
        for topic in chosen:
            for partition in range(spec.partitions):
                commits[(topic.name, partition)] = (
                    records if kind == "caught_up" else rng.choice(positions)
                )
        groups.append(GroupPlan(f"{spec.prefix}-{kind}-{i:05d}", kind, commits))
    empty = [f"{spec.prefix}-empty-{i:05d}" for i in range(spec.empty_groups)]
    result = ScenarioPlan(spec, topics, groups, empty, high=records)
    result.topic_index = {t.name: t for t in topics}
    return result


async def bounded_gather(
    jobs: Sequence[Callable[[], Awaitable[Any]]], concurrency: int = SETUP_CONCURRENCY
) -> list[Any]:
    """Run ``jobs`` with at most ``concurrency`` in flight; the first failure propagates."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(one(job) for job in jobs))


class _PauseOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """A live member that holds its partitions without fetching (its offsets stay put)."""

    def __init__(self) -> None:
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if self.consumer is not None and assigned:
            self.consumer.pause(*assigned)
        self.assigned.set()


async def _keep_polling(consumer: AIOKafkaConsumer) -> None:
    """Poll a paused member once a second until cancelled (it fetches nothing)."""
    while True:
        await consumer.getmany(timeout_ms=1000)


class Scenario:
    """Creates a plan on a broker and keeps its live members running until ``close``."""

    def __init__(self, bootstrap: str, scenario: ScenarioPlan) -> None:
        self.bootstrap = bootstrap
        self.plan = scenario
        self._client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=60000)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60000)
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
        self._members: dict[str, AIOKafkaConsumer] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> Scenario:
        await self._client.bootstrap()
        await self._admin.start()
        await self._producer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        pollers = list(self._pollers.values())
        self._pollers.clear()
        for poller in pollers:
            poller.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        members = list(self._members.values())
        self._members.clear()
        await asyncio.gather(*(m.stop() for m in members), return_exceptions=True)
        await self._producer.stop()
        await self._admin.close()
        await self._client.close()

    # -- setup

    async def setup(self, log: Callable[[str], None] = print) -> dict[str, float]:
        """Create everything; returns seconds spent per step."""
        timings: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("create_topics", self.create_topics),
            ("produce", self.produce),
            ("commit", self.commit_all),
            ("empty_groups", self.create_empty_groups),
            ("live_members", self.start_live_members),
        ]
        for name, step in steps:
            began = loop.time()
            await step()
            timings[name] = round(loop.time() - began, 2)
            log(f"setup {name}: {timings[name]:.1f}s")
        return timings

    async def create_topics(self) -> None:
        partitions = self.plan.spec.partitions
        topics = [NewTopic(t.name, partitions, 1) for t in self.plan.topics]
        for start in range(0, len(topics), 100):
            response = await self._admin.create_topics(topics[start : start + 100])
            for topic, code, *_ in response.topic_errors:
                if code not in (0, 36):  # 36 TOPIC_ALREADY_EXISTS: a rerun on the same broker
                    raise RuntimeError(f"create topic {topic}: error {code}")
        wanted = {t.name for t in self.plan.topics}
        deadline = asyncio.get_running_loop().time() + 120
        while True:
            await self._client.force_metadata_update()
            cluster = self._client.cluster
            ready = {
                name
                for name in wanted
                if len(cluster.partitions_for_topic(name) or ()) == partitions
                and all(
                    (cluster.leader_for_partition(_tp(name, p)) or -1) >= 0
                    for p in range(partitions)
                )
            }
            if ready == wanted:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{len(wanted - ready)} topics have no leaders after 120 s")
            await asyncio.sleep(0.2)

    async def produce(self) -> None:
        """Every partition gets offsets [0, records) with timestamps from the plan."""
        spec = self.plan.spec
        value = b"v" * spec.record_bytes

        async def fill(topic: TopicPlan, partition: int) -> None:
            offset = 0
            while offset < spec.records_per_partition:
                batch = self._producer.create_batch()
                while offset < spec.records_per_partition:
                    key = f"k{offset}".encode()
                    if (
                        batch.append(key=key, value=value, timestamp=topic.timestamp(offset))
                        is None
                    ):
                        break
                    offset += 1
                batch.close()
                await (await self._producer.send_batch(batch, topic.name, partition=partition))

        await bounded_gather(
            [
                partial(fill, topic, partition)
                for topic in self.plan.topics
                for partition in range(spec.partitions)
            ]
        )

    async def _coordinator(self, group_id: str) -> int:
        # A fresh broker creates __consumer_offsets on the first lookup; its partitions then
        # take a moment to load.
        for _ in range(RETRIES):
            try:
                node: int = await self._client.coordinator_lookup(COORDINATOR_GROUP, group_id)
                return node
            except KafkaError as exc:
                if not exc.retriable:
                    raise
            await asyncio.sleep(RETRY_BACKOFF)
        raise RuntimeError(f"no coordinator for {group_id} after {RETRIES} attempts")

    async def commit(self, group_id: str, commits: dict[tuple[str, int], int]) -> None:
        """OffsetCommit without joining: generation -1, no member id."""
        by_topic: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        for (topic, partition), offset in sorted(commits.items()):
            by_topic[topic].append((partition, offset, ""))
        request = OffsetCommitRequest(group_id, -1, "", -1, list(by_topic.items()))
        for _ in range(RETRIES):
            node = await self._coordinator(group_id)
            response = await self._client.send(node, request)
            codes = {code for _, partitions in response.topics for _, code in partitions}
            if codes <= {0}:
                return
            if not codes <= COORDINATOR_ERRORS | {0}:
                raise RuntimeError(f"commit {group_id}: error codes {sorted(codes)}")
            await asyncio.sleep(RETRY_BACKOFF)
        raise RuntimeError(f"commit {group_id}: coordinator not ready after {RETRIES} attempts")

    async def commit_all(self) -> None:
        await bounded_gather(
            [partial(self.commit, g.group_id, g.commits) for g in self.plan.groups]
        )

    async def join_and_leave(self, group_id: str, topic: str) -> None:
        """Leaves an Empty group with no offsets (it stays listed until offsets expire)."""
        listener = _PauseOnAssign()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group_id, enable_auto_commit=False
        )
        listener.consumer = consumer
        await consumer.start()
        try:
            consumer.subscribe([topic], listener=listener)
            await _wait_assigned(listener)
        finally:
            await consumer.stop()

    async def create_empty_groups(self) -> None:
        topic = next(t.name for t in self.plan.topics if not t.idle)
        await bounded_gather(
            [partial(self.join_and_leave, g, topic) for g in self.plan.empty_groups],
            concurrency=8,
        )

    async def start_member(self, group_id: str, topics: Sequence[str]) -> None:
        """A joined member that holds its partitions (state Stable) until ``stop_member``."""
        listener = _PauseOnAssign()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            client_id=f"bench-member-{group_id}",
        )
        listener.consumer = consumer
        await consumer.start()
        self._members[group_id] = consumer
        consumer.subscribe(list(topics), listener=listener)
        await _wait_assigned(listener)
        # aiokafka leaves the group when the application has not polled for
        # max_poll_interval_ms (5 min): poll (paused, so nothing is fetched) to stay a member
        # for the whole run, so later measurements see the same group states (issue 17).
        self._pollers[group_id] = asyncio.create_task(_keep_polling(consumer))

    async def stop_member(self, group_id: str) -> None:
        poller = self._pollers.pop(group_id, None)
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        consumer = self._members.pop(group_id, None)
        if consumer is not None:
            await consumer.stop()

    @property
    def members(self) -> list[str]:
        return list(self._members)

    async def start_live_members(self) -> None:
        live = [g for g in self.plan.groups if g.kind == "live"]
        await bounded_gather(
            [
                partial(self.start_member, g.group_id, sorted({t for t, _ in g.commits}))
                for g in live
            ],
            concurrency=8,
        )

    async def delete_groups(self, group_ids: Sequence[str]) -> None:
        by_node: dict[int, list[str]] = defaultdict(list)
        for group_id in group_ids:
            by_node[await self._coordinator(group_id)].append(group_id)
        for node, ids in by_node.items():
            response = await self._client.send(node, DeleteGroupsRequest(ids))
            for group_id, code in response.results:
                if code not in (0, 69):  # 69 GROUP_ID_NOT_FOUND: already gone
                    raise RuntimeError(f"delete group {group_id}: error {code}")

    async def produce_more(self, topic: str, partition: int, count: int, now_ms: int) -> None:
        """Append ``count`` records timestamped ``now_ms`` (the soak's live producer)."""
        value = b"v" * self.plan.spec.record_bytes
        batch = self._producer.create_batch()
        for i in range(count):
            if batch.append(key=f"n{i}".encode(), value=value, timestamp=now_ms) is None:
                break
        batch.close()
        await (await self._producer.send_batch(batch, topic, partition=partition))


def _tp(topic: str, partition: int) -> AioTopicPartition:
    return AioTopicPartition(topic, partition)


async def _wait_assigned(listener: _PauseOnAssign) -> None:
    # The consumer's coordinator task joins in the background; the listener fires once the
    # group is joined and synced.
    async with asyncio.timeout(60):
        await listener.assigned.wait()
