"""Narrowing a snapshot to the buckets a replica owns: the replicas' union is the whole.

Snapshots come from the real collection chain (with the evaluation stage) over a fake cluster
port; the comparison is of the Prometheus sample lines the real renderer makes, so a family
the narrowing forgot shows up as a missing or a doubled series.
"""

from __future__ import annotations

import json
from collections import Counter
from types import MappingProxyType

from klag_pipeline.collection import collection_chain
from klag_pipeline.events import CycleStarted
from klag_pipeline.metrics_catalog import CLUSTER_FAMILIES, CONSUMER_FAMILIES, C
from klag_pipeline.model import GroupState, TopicPartition, Watermarks
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.records import group_records, partition_records
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    HealthSettings,
    TimestampSamplingSettings,
)
from klag_pipeline.sharding.ownership import (
    NOTHING,
    Ownership,
    group_bucket,
    partition_bucket,
    restrict,
)
from klag_pipeline.sinks.otlp.families import observe
from klag_pipeline.sinks.prometheus.deflate import text
from klag_pipeline.sinks.prometheus.render import render_cluster
from klag_pipeline.snapshot import ClusterSnapshot
from tests.unit.fake_cluster import FakeCluster, FakeGroup

CLUSTER = ClusterSettings(name="c1", bootstrap_servers=("127.0.0.1:9092",), labels={"env": "t"})
EXPORTER = ExporterSettings(
    poll_interval=10.0,
    # Rate mode: the estimated time lag of a row reads its partition's high-watermark history,
    # which another replica's bucket may own (a narrowing before the evaluation loses it).
    timestamp_sampling=TimestampSamplingSettings(enabled=True, mode="rate"),
    health=HealthSettings(window=60.0),
)
PER_REPLICA = {f.name for f in CLUSTER_FAMILIES if f.labels == C}
BUCKETS = 16


def cluster_state(step: int) -> FakeCluster:
    fake = FakeCluster()
    for t in range(4):
        for p in range(3 if t < 3 else 8):
            tp = TopicPartition(f"topic-{t}", p)
            fake.partitions[tp] = Watermarks(0, 1000 + 50 * step + p)
    # 30 groups; only group-29 commits topic-3, so the replicas that do not own group-29 learn
    # of topic-3's partitions (some of whose series they own) from its commits alone.
    for g in range(30):
        topics = [f"topic-{g % 3}"] if g < 29 else ["topic-3", f"topic-{g % 3}"]
        committed = {
            TopicPartition(t, p): 960 + 50 * step + (g % 5) for t in topics for p in range(3)
        }
        fake.groups[f"group-{g:02d}"] = FakeGroup(
            state=GroupState.STABLE if g % 2 else GroupState.EMPTY, committed=committed
        )
    return fake


async def snapshots(ownership: Ownership | None) -> list[ClusterSnapshot]:
    """Three cycles of the exporter's chain (evaluation included) over the same states."""
    clock = FakeClock()
    fake = cluster_state(0)
    chain = collection_chain(
        fake,
        CLUSTER,
        EXPORTER,
        clock,
        long_running=True,
        evaluate=True,
        ownership=None if ownership is None else (lambda: ownership),
    )
    result = []
    for cycle in range(3):
        state = cluster_state(cycle)
        fake.groups, fake.partitions = state.groups, state.partitions
        start = CycleStarted("c1", cycle, clock.time(), clock.monotonic())
        snapshot = await chain.process(start)
        # What the publication does with each finished snapshot.
        result.append(snapshot if ownership is None else restrict(snapshot, ownership))
        clock.advance(10.0)
    return result


def lines(snapshot: ClusterSnapshot) -> Counter[str]:
    rendered = render_cluster(snapshot, "partition")
    return Counter(
        line
        for family, chunk in rendered.items()
        if family not in PER_REPLICA
        for line in text((chunk,)).decode().splitlines()
    )


def split(replicas: int) -> list[Ownership]:
    return [
        Ownership(
            generation=1,
            buckets=BUCKETS,
            units=MappingProxyType({"c1": frozenset(range(r, BUCKETS, replicas))}),
            members=replicas,
        )
        for r in range(replicas)
    ]


async def test_the_union_of_three_replicas_chains_is_the_single_process_exposition() -> None:
    whole = (await snapshots(None))[-1]
    assert whole.health is not None
    assert whole.rows
    assert whole.partitions
    union: Counter[str] = Counter()
    for ownership in split(3):
        mine = (await snapshots(ownership))[-1]
        union.update(lines(mine))
        if not ownership.owns_group("c1", "group-29"):
            assert any(p.topic == "topic-3" for p in mine.partitions), "topic-3 owned nowhere"
    expected = lines(whole)
    assert union == expected  # same series, none twice (a Counter counts duplicates)
    assert any("kafka_consumergroup_group_status" in line for line in expected)
    assert any("kafka_consumergroup_group_estimated_lag_seconds" in line for line in expected)
    assert any(
        line.startswith("kafka_partition_latest_offset") and 'topic="topic-3"' in line
        for line in expected
    )


async def test_restrict_splits_a_finished_snapshot_without_overlap_and_keeps_the_counts() -> None:
    whole = (await snapshots(None))[-1]
    parts = [restrict(whole, ownership) for ownership in split(4)]
    union: Counter[str] = Counter()
    for part in parts:
        union.update(lines(part))
    assert union == lines(whole)
    assert sum(len(p.rows) for p in parts) == len(whole.rows)
    assert sum(p.data_loss_partition_count for p in parts) == whole.data_loss_partition_count
    for ownership, part in zip(split(4), parts, strict=True):
        owned = ownership.owned("c1")
        assert all(group_bucket(r.group, BUCKETS) in owned for r in part.rows)
        assert all(
            partition_bucket(p.topic, p.partition, BUCKETS) in owned for p in part.partitions
        )


async def test_a_replica_that_owns_nothing_exports_no_consumer_series() -> None:
    whole = (await snapshots(None))[-1]
    nothing = restrict(whole, NOTHING)
    assert not nothing.rows
    assert not nothing.groups
    assert not nothing.partitions
    assert nothing.health is not None
    assert not nothing.health.groups
    assert not lines(nothing)


async def test_the_json_lines_of_three_replicas_are_the_single_process_records() -> None:
    whole = (await snapshots(None))[-1]

    def records(snapshot: ClusterSnapshot) -> Counter[str]:
        return Counter(
            json.dumps(r, sort_keys=True)
            for r in (*partition_records(snapshot), *group_records(snapshot))
        )

    union: Counter[str] = Counter()
    for ownership in split(3):
        union.update(records(restrict(whole, ownership)))
    assert union == records(whole)
    assert sum(union.values()) == len(whole.rows) + len(whole.groups)


async def test_the_otlp_data_points_of_three_replicas_are_the_single_process_points() -> None:
    whole = (await snapshots(None))[-1]
    families = [
        f.name for f in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES) if f.name not in PER_REPLICA
    ]

    def points(snapshot: ClusterSnapshot) -> Counter[str]:
        return Counter(
            f"{family} {sorted(point.attributes.items())} {point.value}"
            for family in families
            for point in observe(family, [snapshot])
        )

    union: Counter[str] = Counter()
    for ownership in split(3):
        union.update(points(restrict(whole, ownership)))
    expected = points(whole)
    assert union == expected
    assert any(key.startswith("kafka_partition_produce_rate ") for key in expected)
