"""The three sinks end to end on the real broker: the exporter runs in-process (Exporter + Runner)
with the OTLP and JSON-lines sinks enabled from settings, against a real OTLP receiver and a real
file. Every value is compared with ground truth the test created (committed offsets, watermarks,
record timestamps) and with the Prometheus exposition of the same cycle.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from klag_pipeline.app import Exporter
from klag_pipeline.metrics_catalog import CLUSTER_FAMILIES, CONSUMER_FAMILIES
from klag_pipeline.model import TopicPartition
from klag_pipeline.pipeline.runner import Runner
from klag_pipeline.records import rfc3339
from klag_pipeline.settings.schema import (
    ClusterSettings,
    ExporterSettings,
    JsonlSettings,
    OtelSettings,
    PerformanceSettings,
    Settings,
)
from klag_pipeline.sinks.jsonl import JsonlSink
from klag_pipeline.sinks.otlp import OtlpSink
from klag_pipeline.snapshot import SinkUpdate
from tests.receivers.otlp import GrpcReceiver, HttpReceiver, points, series
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = pytest.mark.kafka

Receiver = GrpcReceiver | HttpReceiver
CLUSTER = "e2e"
AGE_SECONDS = 3600  # records are stamped an hour ago, one second apart


@dataclass(frozen=True)
class Truth:
    """What the test wrote to the broker, and what it reads back as ground truth."""

    topics: tuple[str, str]
    groups: tuple[str, str]
    committed: dict[str, dict[TopicPartition, int]]  # group → committed offsets
    watermarks: dict[TopicPartition, tuple[int, int]]  # (low, high)
    timestamps_ms: dict[TopicPartition, dict[int, int]]  # offset → record timestamp
    group_pattern: str
    topic_pattern: str

    def rows(self) -> dict[tuple[str, str, int], int]:
        """(group, topic, partition) → committed offset."""
        return {
            (group, tp.topic, tp.partition): offset
            for group, offsets in self.committed.items()
            for tp, offset in offsets.items()
        }


async def build_scenario(kafka: KafkaTestClient, unique: Callable[[str], str]) -> Truth:
    orders, payments = unique("orders"), unique("payments")
    await kafka.create_topic(orders, partitions=3)
    await kafka.create_topic(payments, partitions=2)
    base_ms = int((time.time() - AGE_SECONDS) * 1000)
    counts = {
        TopicPartition(orders, 0): 10,
        TopicPartition(orders, 1): 20,
        TopicPartition(orders, 2): 5,
        TopicPartition(payments, 0): 8,
        TopicPartition(payments, 1): 3,
    }
    timestamps: dict[TopicPartition, dict[int, int]] = {}
    for tp, count in counts.items():
        records = [
            Rec(b"v%d" % i, partition=tp.partition, timestamp_ms=base_ms + i * 1000)
            for i in range(count)
        ]
        offsets = await kafka.produce(tp.topic, records)
        timestamps[tp] = {o: r.timestamp_ms or 0 for o, r in zip(offsets, records, strict=True)}
    prefix = unique("grp")
    slow, fast = f"{prefix}-slow", f"{prefix}-fast"
    committed = {
        slow: {
            TopicPartition(orders, 0): 4,
            TopicPartition(orders, 1): 20,  # caught up
            TopicPartition(orders, 2): 0,
        },
        fast: {TopicPartition(orders, 0): 10, TopicPartition(payments, 0): 3},
    }
    for group, offsets in committed.items():
        await kafka.commit(group, offsets)
        assert await kafka.committed(group) == offsets
    watermarks: dict[TopicPartition, tuple[int, int]] = {}
    for topic in (orders, payments):
        for partition, bounds in (await kafka.watermarks(topic)).items():
            watermarks[TopicPartition(topic, partition)] = bounds
    return Truth(
        topics=(orders, payments),
        groups=(slow, fast),
        committed=committed,
        watermarks=watermarks,
        timestamps_ms=timestamps,
        group_pattern=f"^{re.escape(prefix)}-",
        topic_pattern=f"^({re.escape(orders)}|{re.escape(payments)})$",
    )


def exporter_settings(
    truth: Truth,
    bootstrap: str,
    *,
    otel: OtelSettings | None = None,
    jsonl: JsonlSettings | None = None,
    poll_interval: float = 1.0,
    queue_capacity: int = 64,
) -> Settings:
    return Settings(
        exporter=ExporterSettings(
            poll_interval=poll_interval,
            staleness_threshold=60.0,
            otel=otel or OtelSettings(),
            jsonl=jsonl or JsonlSettings(),
            performance=PerformanceSettings(kafka_timeout=10.0, queue_capacity=queue_capacity),
        ),
        clusters=(
            ClusterSettings(
                name=CLUSTER,
                bootstrap_servers=(bootstrap,),
                group_whitelist=(re.compile(truth.group_pattern),),
                topic_whitelist=(re.compile(truth.topic_pattern),),
                labels={"env": "e2e"},
            ),
        ),
    )


def prometheus_series(exporter: Exporter) -> dict[tuple[str, frozenset[Any]], float]:
    """The compatibility and consumer health families and the per-cluster up of ``/metrics``
    right now (the other self-metrics left out): the families the OTLP sink exports too."""
    body, _, _ = exporter.prometheus.render(None, None)
    wanted = {
        *(f.name for f in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)),
        "kafka_lag_exporter_up",
        "klag_pipeline_cluster_up",
    }
    out: dict[tuple[str, frozenset[Any]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name in wanted and math.isfinite(sample.value):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def last_cycle(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The last complete cycle of a JSON-lines run: its summary and its partition records."""
    summaries = [r for r in lines if r["type"] == "cycle"]
    assert summaries, "no cycle written"
    summary = summaries[-1]
    rows = [r for r in lines if r["type"] == "partition" and r["cycle"] == summary["cycle"]]
    return summary, rows


def observed_at_of(request: Any) -> float | None:
    for p in points(request):
        if p.name == "kafka_lag_exporter_last_update_timestamp_seconds":
            return float(p.value)
    return None


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_otlp_jsonl_and_prometheus_agree_with_ground_truth(
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    tmp_path: Path,
    protocol: str,
) -> None:
    truth = await build_scenario(kafka, unique)
    receiver: Receiver = GrpcReceiver() if protocol == "grpc" else HttpReceiver()
    jsonl_path = tmp_path / "lag.jsonl"
    async with receiver:
        settings = exporter_settings(
            truth,
            kafka_bootstrap,
            otel=OtelSettings(
                enabled=True,
                endpoint=receiver.endpoint,
                protocol="grpc" if protocol == "grpc" else "http/protobuf",
                export_interval=0.5,
                timeout=5.0,
                headers={"x-scope-orgid": "tenant-1"},
            ),
            jsonl=JsonlSettings(enabled=True, path=str(jsonl_path)),
        )
        exporter = Exporter(settings)
        assert [s.name for s in exporter.sinks] == ["prometheus", "snapshots", "otlp", "jsonl"]
        otlp = exporter.sinks[2]
        assert isinstance(otlp, OtlpSink)
        assert isinstance(exporter.sinks[3], JsonlSink)

        stop = asyncio.Event()
        runner = Runner()
        exporter.add_to(runner, stop)
        task = asyncio.create_task(runner.run(stop, shutdown_timeout=15.0))
        try:
            async with asyncio.timeout(60):
                # The first cycle's early offsets (docs/pipeline.md, "The first scrape"), then
                # two complete cycles: the health statuses need two.
                await exporter.prometheus.wait_applied(3)
            # OTLP pushes on its own schedule: some export already carries cluster data.
            await receiver.wait_for(lambda r: observed_at_of(r) is not None, within=30)
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task
            await exporter.close_clients()

    # After shutdown every sink has taken the same last snapshot: /metrics shows it, the JSON
    # lines end with it, and the OTLP sink flushed it before stopping.
    prometheus = prometheus_series(exporter)
    cluster_labels = frozenset({("cluster_name", CLUSTER), ("env", "e2e")})
    observed_at = prometheus[("kafka_lag_exporter_last_update_timestamp_seconds", cluster_labels)]
    final = [r for r in receiver.received if observed_at_of(r.request) == observed_at]
    assert final, "the last snapshot was not flushed over OTLP"
    otlp_series = {key: float(value) for key, value in series(final[-1].request).items()}
    assert otlp_series == prometheus
    # Both sinks report the cluster's health with its custom labels (the up-ness part: fresh).
    assert otlp_series[("klag_pipeline_cluster_up", cluster_labels)] == 1.0
    assert final[-1].headers["x-scope-orgid"] == "tenant-1"
    resource = points(final[-1].request)[0].resource
    assert resource["service.name"] == "klag-pipeline"
    assert resource["service.instance.id"]
    assert not otlp.health.failing

    lines = [json.loads(line) for line in jsonl_path.read_bytes().splitlines()]
    summary, rows = last_cycle(lines)
    assert summary["timestamp"] == rfc3339(observed_at)  # the same cycle as /metrics and OTLP
    assert (summary["group_count"], summary["row_count"]) == (2, 5)
    assert summary["partition_count"] == 5
    assert summary["error_count"] == 0

    expected_rows = truth.rows()
    assert {(r["group"], r["topic"], r["partition"]) for r in rows} == set(expected_rows)
    for record in rows:
        tp = TopicPartition(record["topic"], record["partition"])
        committed = expected_rows[(record["group"], tp.topic, tp.partition)]
        low, high = truth.watermarks[tp]
        lag = max(high - committed, 0)
        assert record["committed_offset"] == committed
        assert (record["earliest_offset"], record["latest_offset"]) == (low, high)
        assert record["lag"] == lag
        assert record["group_state"] == "empty"
        assert record["group_state_code"] == 5
        assert (record["member_host"], record["consumer_id"], record["client_id"]) == ("", "", "")
        assert record["labels"] == {"env": "e2e"}
        assert record["data_loss_detected"] is False
        assert record["compaction_detected"] is False
        assert record["schema_version"] == 2
        if lag == 0:
            assert record["lag_seconds"] == 0
        else:
            # Age of the record at the committed offset when the cycle read it.
            expected_age = observed_at - truth.timestamps_ms[tp][committed] / 1000
            assert record["lag_seconds"] == pytest.approx(expected_age, abs=5.0)
            assert record["lag_seconds"] > AGE_SECONDS - 60

        gpm = frozenset(
            {
                "cluster_name": CLUSTER,
                "env": "e2e",
                "group": record["group"],
                "topic": tp.topic,
                "partition": str(tp.partition),
                "member_host": "",
                "consumer_id": "",
                "client_id": "",
            }.items()
        )
        assert otlp_series[("kafka_consumergroup_group_offset", gpm)] == committed
        assert otlp_series[("kafka_consumergroup_group_lag", gpm)] == lag
        # Consumer health (on by default), two cycles or more in the window: a caught-up
        # partition is OK (docs/health.md rule 3); every status JSON lines gives, OTLP (and so
        # /metrics, compared above) gives too.
        if lag == 0:
            assert (record["status"], record["status_code"]) == ("ok", 0)
        if record["status_code"] is not None:
            status = otlp_series[("kafka_consumergroup_group_partition_status", gpm)]
            assert status == record["status_code"]
        if record["consume_rate"] is not None:
            consumed = otlp_series[("kafka_consumergroup_group_consume_rate", gpm)]
            assert consumed == record["consume_rate"]
        p = frozenset(
            {
                "cluster_name": CLUSTER,
                "env": "e2e",
                "topic": tp.topic,
                "partition": str(tp.partition),
            }.items()
        )
        assert otlp_series[("kafka_partition_latest_offset", p)] == high
        assert otlp_series[("kafka_partition_earliest_offset", p)] == low

    slow, fast = truth.groups

    def of_group(name: str, group: str) -> float:
        return otlp_series[(name, cluster_labels | {("group", group)})]

    assert of_group("kafka_consumergroup_group_sum_lag", slow) == (10 - 4) + (20 - 20) + (5 - 0)
    assert of_group("kafka_consumergroup_group_max_lag", fast) == 8 - 3
    assert of_group("kafka_consumergroup_group_state", slow) == 5  # Empty
    groups = {
        r["group"]: r for r in lines if r["type"] == "group" and r["cycle"] == summary["cycle"]
    }
    assert set(groups) == set(truth.groups)
    for group, record in groups.items():
        assert record["rebalances"] == of_group("kafka_consumergroup_group_rebalances_total", group)
        assert record["status_code"] == of_group("kafka_consumergroup_group_status", group)


class StalledSink:
    """A sink that takes nothing from its inbox until released."""

    name = "stalled"

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, inbox: AsyncIterable[SinkUpdate]) -> None:
        await self.release.wait()
        async for _ in inbox:
            pass


async def test_a_stalled_sink_stalls_neither_collection_nor_the_other_sinks(
    kafka: KafkaTestClient,
    kafka_bootstrap: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    truth = await build_scenario(kafka, unique)
    poll_interval = 0.5
    capacity = 2
    jsonl_path = tmp_path / "lag.jsonl"
    stalled = StalledSink()
    async with GrpcReceiver() as receiver:
        settings = exporter_settings(
            truth,
            kafka_bootstrap,
            otel=OtelSettings(
                enabled=True, endpoint=receiver.endpoint, export_interval=0.3, timeout=5.0
            ),
            jsonl=JsonlSettings(enabled=True, path=str(jsonl_path)),
            poll_interval=poll_interval,
            queue_capacity=capacity,
        )
        exporter = Exporter(settings, extra_sinks=[stalled])
        stop = asyncio.Event()
        runner = Runner()
        exporter.add_to(runner, stop)
        task = asyncio.create_task(runner.run(stop, shutdown_timeout=15.0))
        cycles = 8
        try:
            started = time.monotonic()
            async with asyncio.timeout(60):
                await exporter.prometheus.wait_applied(cycles)
            elapsed = time.monotonic() - started
            # Collection kept its pace: `cycles` cycles in about `cycles` poll intervals.
            assert elapsed < cycles * poll_interval * 2 + 5

            # /metrics is fresh: its last update is within a couple of poll intervals.
            prometheus = prometheus_series(exporter)
            last_update = next(
                v
                for (name, _), v in prometheus.items()
                if name == "kafka_lag_exporter_last_update_timestamp_seconds"
            )
            assert time.time() - last_update < poll_interval * 4 + 2

            # The stalled inbox kept only the newest `capacity`; the rest were dropped, counted.
            dropped = exporter.inboxes["stalled"].dropped
            assert dropped >= cycles - capacity - 1
            metrics = exporter.self_metrics.render(openmetrics=False).decode()
            match = re.search(
                r'^klag_pipeline_sink_dropped_snapshots_total\{sink="stalled"\} (\S+)$',
                metrics,
                re.MULTILINE,
            )
            assert match is not None, metrics
            assert float(match.group(1)) == dropped

            # The other sinks kept up: OTLP exports a recent cycle, JSON lines has every cycle.
            await receiver.wait_for(lambda r: (observed_at_of(r) or 0) >= last_update, within=10)
            cycles_written = [
                json.loads(line)["cycle"]
                for line in jsonl_path.read_bytes().splitlines()
                if b'"type":"cycle"' in line
            ]
            assert len(cycles_written) >= cycles - 1
            assert cycles_written == sorted(set(cycles_written))
            assert exporter.inboxes["otlp"].dropped == 0
            assert exporter.inboxes["jsonl"].dropped == 0
        finally:
            stalled.release.set()
            stop.set()
            async with asyncio.timeout(30):
                await task
            await exporter.close_clients()
