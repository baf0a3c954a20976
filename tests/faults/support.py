"""Ground truth the fault tests create on the broker, and the check that every exported
partition series carries exactly that truth (or is absent)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    JsonlSettings,
    PerformanceSettings,
    Settings,
    TimestampSamplingSettings,
)
from tests.integration.pipeline_support import SeriesKey, exactly
from tests.support.kafka import KafkaTestClient, Rec

PARTITION_FAMILIES = frozenset(
    {
        "kafka_partition_latest_offset",
        "kafka_partition_earliest_offset",
        "kafka_consumergroup_group_offset",
        "kafka_consumergroup_group_lag",
        "kafka_consumergroup_group_lag_seconds",
        "kafka_consumergroup_group_messages_lost",
        "kafka_consumergroup_group_retention_margin",
        "kafka_consumergroup_group_lag_retention_ratio",
    }
)


@dataclass
class Truth:
    """Topics, their watermarks and record timestamps, and the groups' commits, as created."""

    topics: dict[str, int] = field(default_factory=dict)  # topic → partitions
    high: dict[TopicPartition, int] = field(default_factory=dict)
    timestamp_ms: dict[TopicPartition, int] = field(default_factory=dict)
    commits: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)

    def expected(self) -> set[tuple[str, str, str, str]]:
        """(family, group or "", topic, partition) of every series a complete cycle exports."""
        out: set[tuple[str, str, str, str]] = set()
        for tp in self.high:
            for family in ("kafka_partition_latest_offset", "kafka_partition_earliest_offset"):
                out.add((family, "", tp.topic, str(tp.partition)))
        for group, commits in self.commits.items():
            for tp in commits:
                for family in PARTITION_FAMILIES - {
                    "kafka_partition_latest_offset",
                    "kafka_partition_earliest_offset",
                }:
                    out.add((family, group, tp.topic, str(tp.partition)))
        return out


async def create_truth(
    kafka: KafkaTestClient,
    topics: Sequence[str],
    groups: Sequence[str],
    *,
    partitions: int = 3,
) -> Truth:
    """Topics with a fixed number of records per partition, every record of a partition with
    the same timestamp (partitions hours apart, so a timestamp given to the wrong partition is
    off by at least 600 s), and commit-only groups at offsets from 0 to high (lag 0 too)."""
    truth = Truth()
    now_ms = int(time.time() * 1000)
    for i, topic in enumerate(topics):
        await kafka.create_topic(topic, partitions=partitions)
        truth.topics[topic] = partitions
        for p in range(partitions):
            tp = TopicPartition(topic, p)
            count = 6 + 2 * p + i
            stamp = now_ms - (3600 + 600 * (partitions * i + p)) * 1000
            await kafka.produce(topic, [Rec(b"v", partition=p, timestamp_ms=stamp)] * count)
            truth.high[tp] = count
            truth.timestamp_ms[tp] = stamp
    for j, group in enumerate(groups):
        commits = {
            tp: (high if (j + tp.partition) % 3 == 0 else (j + tp.partition) % high)
            for tp, high in sorted(truth.high.items())
            if j == 0 or (j + topics.index(tp.topic)) % 2 == 0
        }
        await kafka.commit(group, commits)
        truth.commits[group] = commits
    await verify_truth(kafka, truth)
    return truth


async def verify_truth(kafka: KafkaTestClient, truth: Truth) -> None:
    """The broker (read directly) still holds exactly the truth: nothing moved under the test."""
    for topic in truth.topics:
        marks = await kafka.watermarks(topic)
        for p, (low, high) in marks.items():
            assert (low, high) == (0, truth.high[TopicPartition(topic, p)]), (topic, p)
    for group, commits in truth.commits.items():
        assert await kafka.committed(group) == commits, group


def check_series(
    series: Mapping[SeriesKey, float],
    truth: Truth,
    cluster_name: str,
    *,
    oldest_observation: float,
) -> list[str]:
    """Every partition-level series of ``cluster_name`` against the truth; returns problems.

    ``oldest_observation``: the earliest wall-clock time a shown cycle may have read its data
    (bounds the expected ``lag_seconds``, which grows with the observation time)."""
    problems: list[str] = []
    now = time.time()
    seen: set[tuple[str, str, str, str]] = set()
    for (family, label_set), value in series.items():
        labels = dict(label_set)
        if family not in PARTITION_FAMILIES or labels.get("cluster_name") != cluster_name:
            continue
        topic, partition, group = labels["topic"], labels["partition"], labels.get("group", "")
        identity = (family, group, topic, partition)
        if identity in seen:
            problems.append(f"two series for {identity}")
        seen.add(identity)
        tp = TopicPartition(topic, int(partition))
        high = truth.high.get(tp)
        if high is None:
            problems.append(f"{family} for unknown partition {tp}: {value}")
            continue
        if family == "kafka_partition_latest_offset":
            expected: float | tuple[float, float] = high
        elif family == "kafka_partition_earliest_offset":
            expected = 0
        else:
            committed = truth.commits.get(group, {}).get(tp)
            if committed is None:
                problems.append(f"{family} for {group} {tp} which has no commit: {value}")
                continue
            for flag in ("compaction_detected", "data_loss_detected"):
                if labels.get(flag) == "true":
                    problems.append(f"{family} {group} {tp}: {flag}=true")
            lag = high - committed
            expected = {
                "kafka_consumergroup_group_offset": committed,
                "kafka_consumergroup_group_lag": lag,
                "kafka_consumergroup_group_messages_lost": 0,
                "kafka_consumergroup_group_retention_margin": committed,
                "kafka_consumergroup_group_lag_retention_ratio": 100.0 * lag / high,
            }.get(family, math.nan)
            if family == "kafka_consumergroup_group_lag_seconds":
                stamp = truth.timestamp_ms[tp] / 1000
                expected = 0 if lag == 0 else (oldest_observation - stamp - 1, now - stamp + 1)
        if isinstance(expected, tuple):
            if not expected[0] <= value <= expected[1]:
                problems.append(f"{family} {group} {tp}: {value} not in {expected}")
        elif not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"{family} {group} {tp}: {value} != {expected}")
    return problems


def missing_series(
    series: Mapping[SeriesKey, float], truth: Truth, cluster_name: str
) -> set[tuple[str, str, str, str]]:
    present = {
        (family, dict(labels).get("group", ""), dict(labels)["topic"], dict(labels)["partition"])
        for family, labels in series
        if family in PARTITION_FAMILIES and ("cluster_name", cluster_name) in labels
    }
    return truth.expected() - present


def fault_settings(
    name: str,
    bootstrap: str,
    truth: Truth,
    *,
    poll_interval: float = 0.5,
    kafka_timeout: float = 2.0,
    staleness_threshold: float = 30.0,
    cache_ttl: float = 60.0,
    jsonl_path: str | None = None,
) -> Settings:
    """Settings for one cluster watching exactly the truth's topics and groups."""
    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll_interval,
            http_host="127.0.0.1",
            http_port=0,
            staleness_threshold=staleness_threshold,
            timestamp_sampling=TimestampSamplingSettings(
                enabled=True, cache_ttl=cache_ttl, fetch_timeout=kafka_timeout
            ),
            performance=PerformanceSettings(
                kafka_timeout=kafka_timeout, offset_fetch_timeout=kafka_timeout
            ),
            jsonl=JsonlSettings(enabled=jsonl_path is not None, path=jsonl_path or "-"),
        ),
        clusters=(
            ClusterSettings(
                name=name,
                bootstrap_servers=(bootstrap,),
                group_whitelist=(exactly(*truth.commits),),
                topic_whitelist=(exactly(*truth.topics),),
                topic_blacklist=(re.compile("^__"),),
                # A Metadata answer that (wrongly) lists no topic is not trusted for a minute.
                consumer_properties=MappingProxyType({"metadata.max.age.ms": "1000"}),
            ),
        ),
    )
