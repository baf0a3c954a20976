"""The compatibility contract of ``/metrics`` (SPEC §4), read from the real exporter (``serve``:
settings → pipeline → HTTP) collecting the real session broker:

* the label NAMES of every compatibility family, at granularity ``partition`` and ``topic``,
  against a table written out below from SPEC §4 — never derived from the code, so a label added
  to or dropped from a family by mistake fails here;
* ``member_host`` exactly as Kafka reports it (``/127.0.0.1``), the value klag-exporter and
  kafka-lag-exporter emit, taken from ``kafka-consumer-groups --describe --members``: on
  ``/metrics`` and in ``once``'s table and JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from klag_pipeline.app import serve
from klag_pipeline.commands.once import collect_once
from klag_pipeline.metrics_catalog import CONSUMER_FAMILIES
from klag_pipeline.model import TopicPartition
from klag_pipeline.output import render_jsonl, render_table
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    Granularity,
    Settings,
    TimestampSamplingSettings,
)
from tests.integration.pipeline_support import closed_port, describe_members, exactly
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

# SPEC §4, "Label sets" and the metrics table, spelled out.
P = frozenset({"cluster_name", "topic", "partition"})
G = frozenset({"cluster_name", "group"})
GT = G | {"topic"}
GPM = frozenset(
    {"cluster_name", "group", "topic", "partition", "member_host", "consumer_id", "client_id"}
)
C = frozenset({"cluster_name"})
SPEC_LABELS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "kafka_partition_latest_offset": P,
        "kafka_partition_earliest_offset": P,
        "kafka_consumergroup_group_offset": GPM,
        "kafka_consumergroup_group_lag": GPM,
        "kafka_consumergroup_group_lag_seconds": GPM
        | {"compaction_detected", "data_loss_detected"},
        "kafka_consumergroup_group_messages_lost": GPM,
        "kafka_consumergroup_group_retention_margin": GPM,
        "kafka_consumergroup_group_lag_retention_ratio": GPM,
        "kafka_consumergroup_group_max_lag": G,
        "kafka_consumergroup_group_max_lag_seconds": G,
        "kafka_consumergroup_group_sum_lag": G,
        "kafka_consumergroup_group_topic_sum_lag": GT,
        "kafka_consumergroup_group_state": G,
        "kafka_consumergroup_poll_time_ms": C,
        "kafka_lag_exporter_scrape_duration_seconds": C,
        "kafka_lag_exporter_last_update_timestamp_seconds": C,
        "kafka_lag_exporter_up": frozenset(),
        "kafka_lag_exporter_compaction_detected_total": C,
        "kafka_lag_exporter_data_loss_partitions_total": C,
    }
)
# SPEC §4: "Granularity topic drops every GPM family (and the flags)".
GPM_FAMILIES = frozenset(name for name, labels in SPEC_LABELS.items() if "member_host" in labels)
# Exporter-level, not a cluster series: no cluster_name and no custom labels.
UNLABELLED = frozenset({"kafka_lag_exporter_up"})
# The consumer health families (issue 14) take the label set of the family they belong with.
HEALTH_LABELS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "kafka_consumergroup_group_consume_rate": GPM,
        "kafka_consumergroup_group_lag_velocity": GPM,
        "kafka_consumergroup_group_catch_up_seconds": GPM,
        "kafka_consumergroup_group_partition_status": GPM,
        "kafka_consumergroup_group_estimated_lag_seconds": GPM,
        "kafka_partition_produce_rate": P,
        "kafka_consumergroup_group_topic_sum_consume_rate": GT,
        "kafka_consumergroup_group_topic_sum_lag_velocity": GT,
        "kafka_consumergroup_group_topic_commit_age_seconds": GT,
        "kafka_consumergroup_group_topic_abandoned": GT,
        "kafka_consumergroup_group_status": G,
        "kafka_consumergroup_group_sum_consume_rate": G,
        "kafka_consumergroup_group_sum_lag_velocity": G,
        "kafka_consumergroup_group_max_catch_up_seconds": G,
        "kafka_consumergroup_group_last_rebalance_timestamp_seconds": G,
        "kafka_consumergroup_group_rebalances_total": G,
    }
)
CUSTOM = MappingProxyType({"env": "compat"})
CLUSTER_UP = "klag_pipeline_cluster_up"
DEADLINE = 60.0


@dataclass(frozen=True)
class Scenario:
    topic: str
    group: str
    client_id: str


async def prepare(kafka: KafkaTestClient, unique: Callable[[str], str]) -> Scenario:
    """Two partitions with records, a group committed with lag on one of them (so every GPM
    family, time lag included, has a series)."""
    topic, group = unique("compat"), unique("compat-g")
    await kafka.create_topic(topic, partitions=2)
    now_ms = int(time.time() * 1000)
    for partition in (0, 1):
        await kafka.produce(topic, [Rec(b"x", partition, now_ms - 30_000 + i) for i in range(6)])
    await kafka.commit(group, {TopicPartition(topic, 0): 2, TopicPartition(topic, 1): 6})
    return Scenario(topic, group, unique("compat-client"))


def exporter_settings(
    name: str, bootstrap: str, scenario: Scenario, granularity: Granularity, port: int
) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            poll_interval=0.5,
            staleness_threshold=5.0,
            http_host="127.0.0.1",
            http_port=port,
            granularity=granularity,
            timestamp_sampling=TimestampSamplingSettings(enabled=True, fetch_timeout=5.0),
        ),
        clusters=(
            ClusterSettings(
                name=name,
                bootstrap_servers=(bootstrap,),
                group_whitelist=(exactly(scenario.group),),
                topic_whitelist=(exactly(scenario.topic),),
                labels=CUSTOM,
            ),
        ),
    )


@contextlib.asynccontextmanager
async def exporter_at(settings: Settings) -> AsyncIterator[str]:
    """The real exporter (``serve``) running until the block ends; yields its /metrics URL."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop), name="compat-exporter")
    try:
        yield f"http://127.0.0.1:{settings.exporter.http_port}/metrics"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


Samples = list[tuple[str, dict[str, str], float]]


async def scrape(session: aiohttp.ClientSession, url: str) -> Samples:
    """Every sample of ``/metrics`` as ``(name, labels, value)``; [] while not listening."""
    try:
        async with session.get(url) as response:
            text = await response.text()
    except aiohttp.ClientConnectionError:
        return []
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def scrape_until(
    session: aiohttp.ClientSession, url: str, done: Callable[[Samples], bool], what: str
) -> Samples:
    samples: Samples = []

    async def seen() -> bool:
        samples[:] = await scrape(session, url)
        return done(samples)

    await wait_until(seen, within=DEADLINE, interval=0.25, message=f"{what} on {url}")
    return samples


def member_labelled(scenario: Scenario, partitions: int) -> Callable[[Samples], bool]:
    """True once the live member owns every lag series and the time lag is sampled."""

    def done(samples: Samples) -> bool:
        owned = [
            labels
            for name, labels, _ in samples
            if name == "kafka_consumergroup_group_lag_seconds"
            and labels.get("group") == scenario.group
            and labels.get("client_id") == scenario.client_id
        ]
        return len(owned) == partitions

    return done


def group_stable(scenario: Scenario) -> Callable[[Samples], bool]:
    def done(samples: Samples) -> bool:
        return any(
            name == "kafka_consumergroup_group_state"
            and labels.get("group") == scenario.group
            and value == 3
            for name, labels, value in samples
        )

    return done


def label_names(samples: Samples) -> dict[str, set[frozenset[str]]]:
    """Family → every distinct set of label names its samples carry."""
    out: dict[str, set[frozenset[str]]] = {}
    for name, labels, _ in samples:
        if name in SPEC_LABELS:
            out.setdefault(name, set()).add(frozenset(labels))
    return out


def expected_names(family: str) -> set[frozenset[str]]:
    if family in UNLABELLED:
        return {SPEC_LABELS[family]}
    return {SPEC_LABELS[family] | set(CUSTOM)}


async def test_every_compatibility_family_has_the_spec_label_set(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    scenario = await prepare(kafka, unique)
    by_partition = exporter_settings(
        unique("compat-p"), kafka_bootstrap, scenario, "partition", closed_port()
    )
    by_topic = exporter_settings(
        unique("compat-t"), kafka_bootstrap, scenario, "topic", closed_port()
    )
    async with (
        kafka.classic_member(
            scenario.group,
            scenario.topic,
            consume=False,
            options={"client_id": scenario.client_id},
        ),
        exporter_at(by_partition) as partition_url,
        exporter_at(by_topic) as topic_url,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        partition_samples = await scrape_until(
            session, partition_url, member_labelled(scenario, 2), "member-owned series"
        )
        topic_samples = await scrape_until(
            session, topic_url, group_stable(scenario), "the Stable group"
        )

    # Granularity partition: every SPEC family, each with exactly its SPEC label set.
    found = label_names(partition_samples)
    assert set(found) == set(SPEC_LABELS)
    for family in SPEC_LABELS:
        assert found[family] == expected_names(family), family

    # Not a compatibility family: the per-cluster health gauge carries the cluster's labels too.
    health = [(labels, value) for name, labels, value in partition_samples if name == CLUSTER_UP]
    assert health == [({"cluster_name": by_partition.clusters[0].name, **CUSTOM}, 1.0)]

    # Granularity topic: the GPM families (and the flags) are gone, the rest unchanged.
    found = label_names(topic_samples)
    assert set(found) == set(SPEC_LABELS) - GPM_FAMILIES
    for family in found:
        assert found[family] == expected_names(family), family

    # The consumer health families (health is on by default): the label set of the
    # compatibility family each belongs with, custom labels included. Statuses, commit ages,
    # abandoned flags and rebalance counts exist from the first cycle; rates need two.
    from_first_cycle = {
        "kafka_consumergroup_group_partition_status",
        "kafka_consumergroup_group_topic_commit_age_seconds",
        "kafka_consumergroup_group_topic_abandoned",
        "kafka_consumergroup_group_status",
        "kafka_consumergroup_group_rebalances_total",
    }
    for samples, granularity in ((partition_samples, "partition"), (topic_samples, "topic")):
        health_found = consumer_label_names(samples)
        expected = {f.name for f in CONSUMER_FAMILIES if granularity in f.granularities}
        assert from_first_cycle & expected <= set(health_found) <= expected, granularity
        for family, names in health_found.items():
            assert names == {HEALTH_LABELS[family] | set(CUSTOM)}, family
    gpm_health = {name for name, labels in HEALTH_LABELS.items() if labels == GPM}
    assert not gpm_health & set(consumer_label_names(topic_samples))


def consumer_label_names(samples: Samples) -> dict[str, set[frozenset[str]]]:
    """Consumer health family → every distinct set of label names its samples carry."""
    assert set(HEALTH_LABELS) == {f.name for f in CONSUMER_FAMILIES}
    out: dict[str, set[frozenset[str]]] = {}
    for name, labels, _ in samples:
        if name in HEALTH_LABELS:
            out.setdefault(name, set()).add(frozenset(labels))
    return out


async def test_member_host_is_exactly_what_kafka_reports(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    scenario = await prepare(kafka, unique)
    config = exporter_settings(
        unique("compat-host"), kafka_bootstrap, scenario, "partition", closed_port()
    )
    async with (
        kafka.classic_member(
            scenario.group,
            scenario.topic,
            consume=False,
            options={"client_id": scenario.client_id},
        ),
        exporter_at(config) as url,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        # Ground truth from the Java admin tool: the host as the broker reports it.
        (truth,) = await describe_members(kafka_bootstrap, scenario.group)
        assert truth.client_id == scenario.client_id
        assert re.fullmatch(r"/127\.0\.0\.1", truth.host), truth.host
        samples = await scrape_until(
            session, url, member_labelled(scenario, 2), "member-owned series"
        )
        # The same value in `once` (table and JSON lines), one cycle with the member present.
        snapshots, errors = await collect_once(config)
        assert errors == []

    table = render_table(snapshots, tty=False).splitlines()
    header = table[0].split()
    # Counted from the end: DATA-LOSS may hold two words ("LOST 5") before HOST.
    host_column = header.index("HOST") - len(header)
    hosts = {
        cells[host_column]
        for cells in (line.split() for line in table[1:])
        if cells[header.index("GROUP")] == scenario.group
    }
    assert hosts == {truth.host}
    records = [json.loads(line) for line in render_jsonl(snapshots).splitlines()]
    assert {r["member_host"] for r in records if r["type"] == "partition"} == {truth.host}

    members = {
        (name, labels["member_host"], labels["consumer_id"], labels["client_id"])
        for name, labels, _ in samples
        if name in GPM_FAMILIES and labels["group"] == scenario.group
    }
    assert members == {
        (name, truth.host, truth.consumer_id, scenario.client_id) for name in GPM_FAMILIES
    }
