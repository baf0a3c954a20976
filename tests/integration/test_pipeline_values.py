"""One full cycle (``collect_once``: discovery → offsets → watermarks → timestamps → calculation)
on the real broker, and the Prometheus exposition of the same snapshot, compared with ground
truth the test wrote and read back with plain clients: exact offsets, watermarks, lag and
aggregates; filters, granularity ``topic`` and custom labels; the request count of a cycle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest

from klag_pipeline.app import Exporter, default_client_factory
from klag_pipeline.commands.once import collect_once
from klag_pipeline.kafka.adapter import AiokafkaClusterClient
from klag_pipeline.kafka.port import ClusterClient, RequestObserver
from klag_pipeline.metrics_catalog import CLUSTER_FAMILIES
from klag_pipeline.model import GroupState, TopicPartition
from klag_pipeline.settings.schema import ClusterSettings, ExporterSettings, PerformanceSettings
from klag_pipeline.sinks.prometheus import render_snapshots
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.pipeline_support import (
    GPM_FAMILIES,
    CountingObserver,
    cluster,
    exactly,
    key,
    parse_exposition,
    settings,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka

CLUSTER = "values"


async def one_snapshot(config_cluster: ClusterSettings) -> ClusterSnapshot:
    snapshots, errors = await collect_once(settings(config_cluster))
    assert errors == []
    (snapshot,) = snapshots
    assert snapshot.error_count == 0
    return snapshot


async def produce_counts(kafka: KafkaTestClient, counts: dict[TopicPartition, int]) -> None:
    for tp, count in counts.items():
        if count:
            await kafka.produce(tp.topic, [Rec(b"x", partition=tp.partition)] * count)


async def test_offsets_watermarks_lag_and_aggregates_are_exact(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    a, b, c = unique("a"), unique("b"), unique("c")
    await kafka.create_topic(a, partitions=3)
    await kafka.create_topic(b, partitions=2)
    await kafka.create_topic(c, partitions=1)
    await produce_counts(
        kafka,
        {
            TopicPartition(a, 0): 10,
            TopicPartition(a, 1): 6,
            TopicPartition(a, 2): 0,  # an empty partition: low == high == 0
            TopicPartition(b, 0): 4,
            TopicPartition(b, 1): 7,
            TopicPartition(c, 0): 5,
        },
    )
    assert await kafka.delete_records(c, {0: 2}) == {0: 2}  # retention took c-0's first two
    g1, g2, g3 = unique("g1"), unique("g2"), unique("g3")
    commits = {
        g1: {TopicPartition(a, 0): 3, TopicPartition(a, 1): 6, TopicPartition(b, 0): 4},
        g2: {
            TopicPartition(a, 0): 10,
            TopicPartition(a, 2): 0,
            TopicPartition(b, 1): 1,
            TopicPartition(c, 0): 1,  # below the log start: one message lost
        },
        g3: {TopicPartition(b, 0): 0, TopicPartition(b, 1): 7, TopicPartition(c, 0): 5},
    }
    for group, offsets in commits.items():
        await kafka.commit(group, offsets)

    # Ground truth, read back from the broker with plain clients.
    committed = {group: await kafka.committed(group) for group in commits}
    assert committed == commits
    marks = {
        TopicPartition(topic, p): bounds
        for topic in (a, b, c)
        for p, bounds in (await kafka.watermarks(topic)).items()
    }
    assert marks[TopicPartition(a, 2)] == (0, 0)
    assert marks[TopicPartition(c, 0)] == (2, 5)

    snapshot = await one_snapshot(
        cluster(CLUSTER, kafka_bootstrap, groups=[exactly(g1, g2, g3)], topics=[exactly(a, b, c)])
    )

    # The snapshot: one row per committed partition, every figure from ground truth.
    rows = {(r.group, r.topic_partition): r for r in snapshot.rows}
    assert set(rows) == {(g, tp) for g, offsets in committed.items() for tp in offsets}
    for (group, tp), row in rows.items():
        low, high = marks[tp]
        offset = committed[group][tp]
        assert (row.committed, row.low, row.high) == (offset, low, high)
        assert row.lag == max(high - offset, 0)
        assert row.messages_lost == max(low - offset, 0)
        assert row.retention_margin == offset - low
        assert row.data_loss_detected == (offset < low)
        assert (row.member_host, row.consumer_id, row.client_id) == ("", "", "")
    assert rows[(g2, TopicPartition(c, 0))].data_loss_detected
    assert {(p.topic, p.partition): (p.low, p.high) for p in snapshot.partitions} == {
        (tp.topic, tp.partition): bounds for tp, bounds in marks.items()
    }
    summaries = {s.group: s for s in snapshot.groups}
    assert set(summaries) == {g1, g2, g3}
    expected_lag = {
        (g, tp): max(marks[tp][1] - offset, 0)
        for g, offsets in committed.items()
        for tp, offset in offsets.items()
    }
    for group, summary in summaries.items():
        lags = {tp: lag for (g, tp), lag in expected_lag.items() if g == group}
        assert summary.state == GroupState.EMPTY
        assert summary.member_count == 0
        assert summary.max_lag == max(lags.values())
        assert summary.sum_lag == sum(lags.values())
        topic_sums: dict[str, int] = {}
        for tp, lag in lags.items():
            topic_sums[tp.topic] = topic_sums.get(tp.topic, 0) + lag
        assert dict(summary.topic_sum_lag) == topic_sums
    # Hand-computed, so a shared mistake in the loops above cannot hide.
    assert (summaries[g1].max_lag, summaries[g1].sum_lag) == (7, 7)
    assert (summaries[g2].max_lag, summaries[g2].sum_lag) == (6, 10)
    assert dict(summaries[g2].topic_sum_lag) == {a: 0, b: 6, c: 4}
    assert (summaries[g3].max_lag, summaries[g3].sum_lag) == (4, 4)
    assert snapshot.data_loss_partition_count == 1
    assert snapshot.compaction_detected_count == 0

    # The exposition of the same snapshot, parsed by prometheus_client.
    series = parse_exposition(render_snapshots([snapshot], "partition"))
    cl = {"cluster_name": CLUSTER}
    expected: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for tp, (low, high) in marks.items():
        expected[
            key("kafka_partition_latest_offset", **cl, topic=tp.topic, partition=tp.partition)
        ] = high
        expected[
            key("kafka_partition_earliest_offset", **cl, topic=tp.topic, partition=tp.partition)
        ] = low
    for (group, tp), lag in expected_lag.items():
        low, high = marks[tp]
        offset = committed[group][tp]
        gpm = {
            **cl,
            "group": group,
            "topic": tp.topic,
            "partition": tp.partition,
            "member_host": "",
            "consumer_id": "",
            "client_id": "",
        }
        expected[key("kafka_consumergroup_group_offset", **gpm)] = offset
        expected[key("kafka_consumergroup_group_lag", **gpm)] = lag
        expected[key("kafka_consumergroup_group_messages_lost", **gpm)] = max(low - offset, 0)
        expected[key("kafka_consumergroup_group_retention_margin", **gpm)] = offset - low
        ratio = 0.0 if lag == 0 else (math.inf if high == low else lag / (high - low) * 100)
        expected[key("kafka_consumergroup_group_lag_retention_ratio", **gpm)] = ratio
    for group, summary in summaries.items():
        expected[key("kafka_consumergroup_group_max_lag", **cl, group=group)] = summary.max_lag
        expected[key("kafka_consumergroup_group_sum_lag", **cl, group=group)] = summary.sum_lag
        expected[key("kafka_consumergroup_group_state", **cl, group=group)] = 5  # Empty
        for topic, total in summary.topic_sum_lag.items():
            name = "kafka_consumergroup_group_topic_sum_lag"
            expected[key(name, **cl, group=group, topic=topic)] = total
    expected[key("kafka_lag_exporter_data_loss_partitions_total", **cl)] = 1
    expected[key("kafka_lag_exporter_compaction_detected_total", **cl)] = 0
    for series_key, value in expected.items():
        assert series_key in series, f"missing {series_key}"
        assert series[series_key] == pytest.approx(value), series_key
    exact_families = {name for name, _ in expected}
    assert {k for k in series if k[0] in exact_families} == set(expected)

    # Time lag is another test's subject; here: one series per row, 0 exactly where lag is 0.
    seconds = {
        (labels["group"], TopicPartition(labels["topic"], int(labels["partition"]))): (
            value,
            labels["data_loss_detected"],
        )
        for (name, label_set), value in series.items()
        if name == "kafka_consumergroup_group_lag_seconds"
        for labels in [dict(label_set)]
    }
    assert set(seconds) == set(expected_lag)
    for row_key, (value, loss) in seconds.items():
        assert (value == 0) == (expected_lag[row_key] == 0), row_key
        assert value >= 0
        assert loss == ("true" if row_key == (g2, TopicPartition(c, 0)) else "false")
    for name in (
        "kafka_consumergroup_poll_time_ms",
        "kafka_lag_exporter_scrape_duration_seconds",
        "kafka_lag_exporter_last_update_timestamp_seconds",
    ):
        assert series[key(name, **cl)] > 0
    assert series[key("kafka_lag_exporter_last_update_timestamp_seconds", **cl)] == pytest.approx(
        snapshot.observed_at
    )


async def test_filters_topic_granularity_and_custom_labels(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    base = unique("f")
    topics = {
        "keep1": f"{base}-t-keep-1",
        "keep2": f"{base}-t-keep-2",
        "drop": f"{base}-t-keep-drop",  # whitelisted, then blacklisted
        "other": f"{base}-t-other",  # never whitelisted
    }
    partitions = {"keep1": 4, "keep2": 2, "drop": 1, "other": 1}
    for name, topic in topics.items():
        await kafka.create_topic(topic, partitions=partitions[name])
        await produce_counts(
            kafka, {TopicPartition(topic, p): 3 + p for p in range(partitions[name])}
        )
    groups = {
        "keep1": f"{base}-g-keep-1",
        "keep2": f"{base}-g-keep-2",
        "drop": f"{base}-g-keep-drop",
        "other": f"{base}-g-other",
    }
    every_partition = [
        TopicPartition(topics[name], p) for name in topics for p in range(partitions[name])
    ]
    for index, group in enumerate(groups.values()):
        await kafka.commit(group, {tp: index % 3 for tp in every_partition})
    labels = {"env": "it", "team": 'pay ments "quoted"'}
    kept_cluster = cluster(
        CLUSTER,
        kafka_bootstrap,
        groups=[re.compile(f"^{re.escape(base)}-g-keep")],
        group_blacklist=[re.compile("-drop$")],
        topics=[re.compile(f"^{re.escape(base)}-t-keep")],
        topic_blacklist=[re.compile("^__"), re.compile("drop")],
        labels=labels,
    )
    snapshot = await one_snapshot(kept_cluster)

    kept_groups = {groups["keep1"], groups["keep2"]}
    kept_topics = {topics["keep1"], topics["keep2"]}
    assert {s.group for s in snapshot.groups} == kept_groups
    assert {(r.group, r.topic) for r in snapshot.rows} == {
        (g, t) for g in kept_groups for t in kept_topics
    }
    assert {p.topic for p in snapshot.partitions} == kept_topics
    assert len(snapshot.rows) == 2 * (4 + 2)

    # Granularity "topic": no GPM family at all; group series O(groups × topics).
    series = parse_exposition(render_snapshots([snapshot], "topic"))
    families = {name for name, _ in series}
    assert not families & GPM_FAMILIES
    assert not any(
        "group" in dict(labels_) and "partition" in dict(labels_) for _, labels_ in series
    )
    group_series = [k for k in series if "group" in dict(k[1])]
    per_group = (
        "kafka_consumergroup_group_max_lag",
        "kafka_consumergroup_group_max_lag_seconds",
        "kafka_consumergroup_group_sum_lag",
        "kafka_consumergroup_group_state",
    )
    assert len(group_series) == len(kept_groups) * (len(per_group) + len(kept_topics))
    assert {k[0] for k in group_series} == {*per_group, "kafka_consumergroup_group_topic_sum_lag"}
    p_series = [k for k in series if k[0] == "kafka_partition_latest_offset"]
    assert len(p_series) == 4 + 2
    cl = {"cluster_name": CLUSTER, **labels}
    for name, group in groups.items():
        if name not in ("keep1", "keep2"):
            continue
        offset = list(groups.values()).index(group) % 3
        for topic_name in ("keep1", "keep2"):
            topic = topics[topic_name]
            expected = sum(3 + p - offset for p in range(partitions[topic_name]))
            name_ = "kafka_consumergroup_group_topic_sum_lag"
            assert series[key(name_, **cl, group=group, topic=topic)] == expected

    # The exporter's own store, configured for granularity "topic", renders the same.
    exporter = Exporter(settings(kept_cluster, granularity="topic"))
    exporter.prometheus.apply(snapshot)
    body, _, _ = exporter.prometheus.render(None, None)
    assert parse_exposition(body.decode(), only={f.name for f in CLUSTER_FAMILIES}) == series

    # Custom labels on every cluster series, at either granularity (values escaped and parsed
    # back intact).
    for granularity in ("topic", "partition"):
        rendered = parse_exposition(render_snapshots([snapshot], granularity))
        assert rendered
        for _, label_set in rendered:
            assert {("env", "it"), ("team", labels["team"]), ("cluster_name", CLUSTER)} <= label_set


async def test_one_cycle_costs_a_constant_number_of_requests_per_api(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topics = [unique("t"), unique("t")]
    for topic in topics:
        await kafka.create_topic(topic, partitions=4)
        await produce_counts(kafka, {TopicPartition(topic, p): 5 for p in range(4)})
    tps = [TopicPartition(t, p) for t in topics for p in range(4)]
    groups = [unique("g") for _ in range(40)]
    # Every group lags (so timestamps are sampled too) at offset 2 of one of the 8 partitions.
    for index, group in enumerate(groups):
        await kafka.commit(group, {tps[index % len(tps)]: 2})

    probe = AiokafkaClusterClient(
        cluster(CLUSTER, kafka_bootstrap), PerformanceSettings(kafka_timeout=10.0)
    )
    await probe.connect()
    try:
        brokers = len((await probe.overview()).brokers)
    finally:
        await probe.close()

    async def counted_cycle(group_ids: list[str]) -> tuple[ClusterSnapshot, CountingObserver]:
        observer = CountingObserver()

        def factory(
            cluster_settings: ClusterSettings, exporter: ExporterSettings, _: RequestObserver
        ) -> ClusterClient:
            return default_client_factory(cluster_settings, exporter, observer)

        config = settings(
            cluster(
                CLUSTER, kafka_bootstrap, groups=[exactly(*group_ids)], topics=[exactly(*topics)]
            )
        )
        snapshots, errors = await collect_once(config, client_factory=factory)
        assert errors == []
        return snapshots[0], observer

    few, few_requests = await counted_cycle(groups[:10])
    many, many_requests = await counted_cycle(groups)
    assert len(few.groups) == 10
    assert len(many.groups) == 40
    assert all(row.lag == 3 and row.lag_seconds is not None for row in many.rows)
    assert len(many.rows) == 40

    counts = many_requests.counts()
    assert all(outcome == "ok" for _, _, outcome in many_requests.requests)
    assert counts["ListGroups"] == brokers
    assert counts["DescribeGroups"] <= brokers
    assert counts["OffsetFetch"] <= brokers
    assert counts["ListOffsets"] <= 2 * brokers
    assert counts["Fetch"] <= brokers
    assert counts["Metadata"] <= 1
    assert counts["FindCoordinator"] == 0
    # Four times the groups, the very same requests: nothing is per group or per partition.
    assert counts == few_requests.counts()
