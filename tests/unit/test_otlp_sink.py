"""The OTLP sink against real OTLP receivers (gRPC and HTTP), with hand-built snapshots.

Expected series come from two independent places: hand-written values for the details that
matter (flags, custom labels, resource), and the Prometheus sink's exposition of the same
snapshot, parsed with prometheus_client's parser: OTLP must carry the same names, label sets and
values as ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from devtools.kafka_local import TlsFiles, generate_tls_files
from klag_pipeline.errors import ConfigError
from klag_pipeline.metrics_catalog import BY_NAME, CLUSTER_FAMILIES, CONSUMER_FAMILIES
from klag_pipeline.model import GroupState
from klag_pipeline.pipeline.channel import DroppingChannel
from klag_pipeline.settings.schema import Granularity, OtelSettings
from klag_pipeline.sinks.otlp import OtlpSink
from klag_pipeline.sinks.otlp.exporter import ExportHealth, http_metrics_url
from klag_pipeline.sinks.otlp.families import CardinalityBudget, series_keys
from klag_pipeline.sinks.prometheus import render_snapshots
from klag_pipeline.snapshot import (
    ClusterSnapshot,
    ClusterWithdrawn,
    GroupSummary,
    PartitionOffsets,
    PartitionRow,
    SinkUpdate,
)
from tests.receivers.otlp import GrpcReceiver, HttpReceiver, points, series
from tests.support.waiting import wait_until
from tests.unit.test_health_families import health_snapshot

Receiver = GrpcReceiver | HttpReceiver
SeriesMap = dict[tuple[str, frozenset[tuple[str, Any]]], int | float]
HEALTH = frozenset({"kafka_lag_exporter_up", "klag_pipeline_cluster_up"})

BASE_TIME = 1_700_000_000.0
TOKEN = "Bearer s3cr3t-t0ken"
GPM = {
    "kafka_consumergroup_group_offset",
    "kafka_consumergroup_group_lag",
    "kafka_consumergroup_group_lag_seconds",
    "kafka_consumergroup_group_messages_lost",
    "kafka_consumergroup_group_retention_margin",
    "kafka_consumergroup_group_lag_retention_ratio",
}


# -- snapshot builders ---------------------------------------------------------------------------


def make_row(
    group: str,
    partition: int,
    *,
    topic: str = "orders",
    member: tuple[str, str, str] = ("", "", ""),
    committed: int = 50,
    low: int | None = 10,
    high: int = 110,
    lag_seconds: float | None = 0.0,
    compaction: bool = False,
    consumable: int | None = None,
) -> PartitionRow:
    lag = max(high - committed, 0)
    ratio: float | None = None
    if low is not None:
        window = high - low
        ratio = (math.inf if lag else 0.0) if window == 0 else lag / window * 100
    return PartitionRow(
        group=group,
        topic=topic,
        partition=partition,
        member_host=member[0],
        consumer_id=member[1],
        client_id=member[2],
        committed=committed,
        low=low,
        high=high,
        lag=lag,
        lag_seconds=lag_seconds,
        compaction_detected=compaction,
        data_loss_detected=low is not None and committed < low,
        messages_lost=None if low is None else max(low - committed, 0),
        retention_margin=None if low is None else committed - low,
        lag_retention_ratio=ratio,
        consumable_lag=consumable,
    )


def make_groups(rows: Iterable[PartitionRow]) -> tuple[GroupSummary, ...]:
    by_group: dict[str, list[PartitionRow]] = {}
    for r in rows:
        by_group.setdefault(r.group, []).append(r)
    out = []
    for group, members in sorted(by_group.items()):
        topics: dict[str, int] = {}
        for r in members:
            topics[r.topic] = topics.get(r.topic, 0) + r.lag
        seconds = [r.lag_seconds for r in members if r.lag_seconds is not None]
        out.append(
            GroupSummary(
                group=group,
                state=GroupState.STABLE,
                protocol_type="consumer",
                group_type="classic",
                member_count=len({r.consumer_id for r in members if r.consumer_id}),
                max_lag=max(r.lag for r in members),
                max_lag_seconds=max(seconds) if seconds else None,
                sum_lag=sum(r.lag for r in members),
                topic_sum_lag=topics,
            )
        )
    return tuple(out)


def make_snapshot(
    cluster: str,
    rows: Iterable[PartitionRow],
    *,
    cycle: int = 1,
    labels: dict[str, str] | None = None,
    sampling: bool = True,
) -> ClusterSnapshot:
    rows = tuple(rows)
    partitions = {(r.topic, r.partition): (r.low, r.high) for r in rows}
    return ClusterSnapshot(
        cluster=cluster,
        labels=labels or {},
        cycle=cycle,
        observed_at=BASE_TIME + cycle,
        started_at=BASE_TIME + cycle - 0.25,
        duration_seconds=0.25,
        poll_time_ms=12.5,
        timestamp_sampling=sampling,
        partitions=tuple(
            PartitionOffsets(topic, partition, low, high)
            for (topic, partition), (low, high) in sorted(partitions.items())
        ),
        groups=make_groups(rows),
        rows=rows,
        compaction_detected_count=sum(r.compaction_detected for r in rows),
        data_loss_partition_count=sum(r.data_loss_detected for r in rows),
        error_count=0,
    )


def rich_snapshot(cluster: str = "prod", cycle: int = 1) -> ClusterSnapshot:
    """Every kind of row: members, compaction, data loss, unknown low, unsampled, +Inf ratio,
    a label value that needs escaping in the exposition format."""
    rows = [
        make_row("billing", 0, member=("/10.0.0.7", "consumer-1-abc", "consumer-1")),
        make_row("billing", 1, lag_seconds=42.5, compaction=True),
        make_row("billing", 0, topic="payments", committed=5, low=20, high=90, lag_seconds=7.25),
        make_row("audit", 0, topic="payments", low=None, lag_seconds=None, committed=70, high=90),
        make_row('we"ird\ngroup', 2, committed=30, low=30, high=30, lag_seconds=0.0),
        make_row("empty-window", 3, committed=10, low=40, high=40, lag_seconds=3.0),
        # Caught up on a trailing transaction marker: lag 1, nothing left to consume.
        make_row("txn", 0, committed=109, lag_seconds=0.0, consumable=0),
    ]
    return make_snapshot(cluster, rows, cycle=cycle, labels={"env": "prod", "team": "core"})


# -- running the sink ----------------------------------------------------------------------------


def otel_settings(receiver: Receiver, **overrides: Any) -> OtelSettings:
    protocol = "grpc" if isinstance(receiver, GrpcReceiver) else "http/protobuf"
    base = OtelSettings(
        enabled=True,
        endpoint=receiver.endpoint,
        protocol=protocol,
        export_interval=0.2,
        timeout=2.0,
        headers={"Authorization": TOKEN},
        resource_attributes={"deployment.environment": "test"},
    )
    return replace(base, **overrides)


class ErrorCounter:
    """``on_error`` for the sink: called from the SDK's export thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: list[str] = []

    def __call__(self, sink: str) -> None:
        with self._lock:
            self.names.append(sink)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.names)


def make_sink(
    settings: OtelSettings,
    *,
    granularity: Granularity = "partition",
    on_error: Callable[[str], None] | None = None,
    up: Callable[[], dict[str, bool]] | None = None,
    cluster_labels: dict[str, dict[str, str]] | None = None,
    cardinality_floor: int = 2000,
) -> OtlpSink:
    return OtlpSink(
        settings,
        granularity=granularity,
        version="9.9.9",
        instance_id="instance-7",
        on_error=on_error,
        up=up,
        cluster_labels=cluster_labels,
        cardinality_floor=cardinality_floor,
    )


@contextlib.asynccontextmanager
async def running(sink: OtlpSink, *, stop_within: float = 15.0) -> AsyncIterator[Inbox]:
    """Run ``sink`` on a real inbox; on exit close the inbox and require ``run`` to return."""
    channel = DroppingChannel[SinkUpdate](16, "sink.otlp")
    task = asyncio.create_task(sink.run(channel))
    try:
        yield Inbox(channel)
    finally:
        channel.close()
        async with asyncio.timeout(stop_within):
            await task


class Inbox:
    def __init__(self, channel: DroppingChannel[SinkUpdate]) -> None:
        self._channel = channel

    def send(self, update: SinkUpdate) -> None:
        assert self._channel.send_nowait(update), "the test inbox must never drop"


async def eventually(
    condition: Callable[[], bool], *, within: float = 10.0, what: str = "condition"
) -> None:
    await wait_until(condition, within=within, interval=0.02, message=what)


def cycle_of(cluster: str) -> Callable[[Any], int | None]:
    """The cycle a request reports for ``cluster`` (from last_update_timestamp), or None."""

    def read(request: Any) -> int | None:
        for p in points(request):
            if (
                p.name == "kafka_lag_exporter_last_update_timestamp_seconds"
                and p.attributes.get("cluster_name") == cluster
            ):
                return round(p.value - BASE_TIME)
        return None

    return read


def with_cycles(**cycles: int) -> Callable[[Any], bool]:
    """Predicate: the request carries exactly these clusters at these cycles."""

    def check(request: Any) -> bool:
        clusters = {
            p.attributes["cluster_name"]
            for p in points(request)
            if p.name == "kafka_lag_exporter_last_update_timestamp_seconds"
        }
        return clusters == set(cycles) and all(
            cycle_of(cluster)(request) == cycle for cluster, cycle in cycles.items()
        )

    return check


def prometheus_series(snapshots: list[ClusterSnapshot], granularity: Granularity) -> SeriesMap:
    """The exposition's series, less non-finite values: the OpenTelemetry SDK drops those
    measurements, so +Inf ratios cannot travel over OTLP (docs/otlp.md)."""
    out: SeriesMap = {}
    for family in text_string_to_metric_families(render_snapshots(snapshots, granularity)):
        for sample in family.samples:
            if math.isfinite(sample.value):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def as_floats(values: SeriesMap) -> dict[tuple[str, frozenset[tuple[str, Any]]], float]:
    return {key: float(value) for key, value in values.items()}


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == name]


def level_of(entry: dict[str, Any]) -> str:
    return str(entry.get("level") or entry.get("log_level"))


@pytest.fixture(params=["grpc", "http"])
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    peer: Receiver = GrpcReceiver() if request.param == "grpc" else HttpReceiver()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


# -- what is exported ----------------------------------------------------------------------------


async def test_exports_the_prometheus_series_with_resource_and_headers(receiver: Receiver) -> None:
    snapshot = rich_snapshot()
    sink = make_sink(otel_settings(receiver))
    async with running(sink) as inbox:
        inbox.send(snapshot)
        received = await receiver.wait_for(with_cycles(prod=1))

    exported = series(received.request)
    assert as_floats(exported) == prometheus_series([snapshot], "partition")
    assert {name for name, _ in exported} == {f.name for f in CLUSTER_FAMILIES}
    assert len(exported) == len(prometheus_series([snapshot], "partition")) > 60

    custom = {"env": "prod", "team": "core", "cluster_name": "prod"}
    compacted = {
        **custom,
        "group": "billing",
        "topic": "orders",
        "partition": "1",
        "member_host": "",
        "consumer_id": "",
        "client_id": "",
    }
    flags = {"compaction_detected": "true", "data_loss_detected": "false"}
    key = ("kafka_consumergroup_group_lag_seconds", frozenset({**compacted, **flags}.items()))
    assert exported[key] == 42.5
    lost = {
        **custom,
        "group": "billing",
        "topic": "payments",
        "partition": "0",
        "member_host": "",
        "consumer_id": "",
        "client_id": "",
    }
    loss_flags = {"compaction_detected": "false", "data_loss_detected": "true"}
    assert exported[
        ("kafka_consumergroup_group_lag_seconds", frozenset({**lost, **loss_flags}.items()))
    ] == pytest.approx(7.25)
    assert exported[("kafka_consumergroup_group_messages_lost", frozenset(lost.items()))] == 15
    assert exported[("kafka_consumergroup_group_retention_margin", frozenset(lost.items()))] == -15
    member = {
        **custom,
        "group": "billing",
        "topic": "orders",
        "partition": "0",
        "member_host": "/10.0.0.7",
        "consumer_id": "consumer-1-abc",
        "client_id": "consumer-1",
    }
    offset = exported[("kafka_consumergroup_group_offset", frozenset(member.items()))]
    assert offset == 50
    assert isinstance(offset, int), "offsets are exported as integers"
    # An empty retained window with lag: +Inf on /metrics, absent here, the loss still visible.
    empty_window = {n for n, a in exported if ("group", "empty-window") in a}
    assert "kafka_consumergroup_group_lag_retention_ratio" not in empty_window
    assert "kafka_consumergroup_group_messages_lost" in empty_window
    # Unknown low watermark: no loss figures, no earliest offset, and no time lag when unsampled.
    audit = [(n, dict(a)) for n, a in exported if dict(a).get("group") == "audit"]
    assert {n for n, _ in audit} == {
        "kafka_consumergroup_group_offset",
        "kafka_consumergroup_group_lag",
        "kafka_consumergroup_group_max_lag",
        "kafka_consumergroup_group_sum_lag",
        "kafka_consumergroup_group_topic_sum_lag",
        "kafka_consumergroup_group_state",
    }

    resources = {json.dumps(dict(p.resource), sort_keys=True) for p in points(received.request)}
    assert len(resources) == 1
    resource = json.loads(resources.pop())
    assert resource["service.name"] == "klag-pipeline"
    assert resource["service.version"] == "9.9.9"
    assert resource["service.instance.id"] == "instance-7"
    assert resource["deployment.environment"] == "test"
    assert received.headers["authorization"] == TOKEN
    assert all(p.description == BY_NAME[p.name].help for p in points(received.request))


async def test_consumer_health_families_carry_the_prometheus_values(receiver: Receiver) -> None:
    """The hand-built evaluation of tests/unit/test_health_families.py: every health series of
    /metrics with the same value (less the two +Inf catch-up times, which the SDK cannot carry),
    the rebalance counter as a cumulative monotonic sum, statuses as integers."""
    snapshot = health_snapshot()
    sink = make_sink(otel_settings(receiver))
    async with running(sink) as inbox:
        inbox.send(snapshot)
        # The golden snapshot's observed_at is BASE_TIME + 0.5, which cycle_of reads as 0.
        received = await receiver.wait_for(with_cycles(prod=0))

    exported = series(received.request)
    assert as_floats(exported) == prometheus_series([snapshot], "partition")
    # Every family: the golden snapshot has no consumable lag, which is its only gap.
    assert {name for name, _ in exported} == {
        f.name for f in (*CLUSTER_FAMILIES, *CONSUMER_FAMILIES)
    } - {"kafka_consumergroup_group_consumable_lag"}
    kinds = {p.name: p.kind for p in points(received.request)}
    assert {name for name, kind in kinds.items() if kind != "gauge"} == {
        "kafka_consumergroup_group_rebalances_total"
    }
    assert kinds["kafka_consumergroup_group_rebalances_total"] == "cumulative sum"
    base = {"env": "eu-1", "cluster_name": "prod"}
    idle = frozenset({**base, "group": "idle"}.items())
    billing = frozenset({**base, "group": "billing"}.items())
    assert exported[("kafka_consumergroup_group_rebalances_total", billing)] == 3
    status = exported[("kafka_consumergroup_group_status", idle)]
    assert status == 4
    assert isinstance(status, int), "status codes are exported as integers"
    assert ("kafka_consumergroup_group_max_catch_up_seconds", idle) not in exported
    assert exported[("kafka_consumergroup_group_max_catch_up_seconds", billing)] == 40


async def test_a_new_snapshot_replaces_the_cluster_and_a_withdrawn_cluster_disappears(
    receiver: Receiver,
) -> None:
    first = make_row("g", 0, member=("/10.0.0.1", "old-member", "c1"))
    second = make_row("g", 0, member=("/10.0.0.2", "new-member", "c2"), committed=60)
    sink = make_sink(otel_settings(receiver))
    async with running(sink) as inbox:
        inbox.send(make_snapshot("a", [first], cycle=1))
        inbox.send(make_snapshot("b", [make_row("h", 0)], cycle=1))
        await receiver.wait_for(with_cycles(a=1, b=1))

        inbox.send(make_snapshot("a", [second], cycle=2))
        mark = receiver.count
        replaced = await receiver.wait_for(with_cycles(a=2, b=1), after=mark)
        consumers = {
            p.attributes.get("consumer_id")
            for p in points(replaced.request)
            if p.attributes.get("cluster_name") == "a" and "consumer_id" in p.attributes
        }
        assert consumers == {"new-member"}

        inbox.send(ClusterWithdrawn("a", "stale"))
        await eventually(lambda: sink.clusters == ("b",), what="withdrawal applied")
        mark = receiver.count
        after = await receiver.wait_for(lambda r: True, after=mark)
        assert {p.attributes.get("cluster_name") for p in points(after.request)} == {"b"}
        assert with_cycles(b=1)(after.request)


async def test_topic_granularity_drops_the_partition_member_families(receiver: Receiver) -> None:
    snapshot = rich_snapshot()
    sink = make_sink(otel_settings(receiver), granularity="topic")
    async with running(sink) as inbox:
        inbox.send(snapshot)
        received = await receiver.wait_for(with_cycles(prod=1))
    exported = series(received.request)
    assert not {name for name, _ in exported} & GPM
    assert as_floats(exported) == prometheus_series([snapshot], "topic")


async def test_unsampled_snapshot_has_no_time_lag_families(receiver: Receiver) -> None:
    snapshot = replace(rich_snapshot(), timestamp_sampling=False)
    sink = make_sink(otel_settings(receiver))
    async with running(sink) as inbox:
        inbox.send(snapshot)
        received = await receiver.wait_for(with_cycles(prod=1))
    names = {name for name, _ in series(received.request)}
    assert "kafka_consumergroup_group_lag_seconds" not in names
    assert "kafka_consumergroup_group_max_lag_seconds" not in names
    assert as_floats(series(received.request)) == prometheus_series([snapshot], "partition")


async def test_up_and_cluster_up_are_reported_when_the_exporter_provides_them(
    receiver: Receiver,
) -> None:
    fresh = {"a": False, "b": False}
    sink = make_sink(
        otel_settings(receiver), up=lambda: dict(fresh), cluster_labels={"a": {"env": "eu"}}
    )
    a_key = ("klag_pipeline_cluster_up", frozenset({("cluster_name", "a"), ("env", "eu")}))
    b_key = ("klag_pipeline_cluster_up", frozenset({("cluster_name", "b")}))

    def reported(up: int, a: int, b: int) -> Callable[[Any], bool]:
        def check(request: Any) -> bool:
            exported = series(request)
            health = {k: v for k, v in exported.items() if k[0] in HEALTH}
            return health == {("kafka_lag_exporter_up", frozenset()): up, a_key: a, b_key: b}

        return check

    async with running(sink) as inbox:
        inbox.send(make_snapshot("a", [make_row("g", 0)]))
        # Both clusters have a series from the start, before either has fresh data.
        await receiver.wait_for(reported(0, 0, 0))
        fresh["a"] = True
        await receiver.wait_for(reported(0, 1, 0), after=receiver.count)
        fresh["b"] = True
        await receiver.wait_for(reported(1, 1, 1), after=receiver.count)
        fresh["a"] = False
        await receiver.wait_for(reported(0, 0, 1), after=receiver.count)


# -- failures, recovery, shutdown ----------------------------------------------------------------


async def test_receiver_down_is_logged_once_counted_and_recovers(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    await receiver.stop()
    errors = ErrorCounter()
    sink = make_sink(otel_settings(receiver, timeout=0.5), on_error=errors)
    with captured_logs() as logs:
        async with running(sink) as inbox:
            inbox.send(make_snapshot("a", [make_row("g", 0)], cycle=1))
            await eventually(lambda: errors.count >= 3, what="three failed exports")
            assert sink.health.failing

            await receiver.start()  # same port
            inbox.send(make_snapshot("a", [make_row("g", 0)], cycle=2))
            await receiver.wait_for(with_cycles(a=2))
            await eventually(
                lambda: bool(events(logs, "otlp_export_recovered")), what="recovery logged"
            )

    failed = [e for e in events(logs, "otlp_export_failed") if level_of(e) == "error"]
    assert len(failed) == 1, failed
    assert failed[0]["error"]
    assert len(events(logs, "otlp_export_recovered")) == 1
    assert errors.names == ["otlp"] * errors.count
    assert sink.health.failed == errors.count >= 3
    assert not sink.health.failing
    # The SDK's own per-attempt error logs are folded into the sink's transition logs.
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert TOKEN not in json.dumps(logs, default=str)


async def test_rejected_export_never_logs_the_header_values() -> None:
    async with HttpReceiver() as receiver:
        receiver.reject_with = 401
        errors = ErrorCounter()
        sink = make_sink(otel_settings(receiver), on_error=errors)
        with captured_logs() as logs:
            async with running(sink) as inbox:
                inbox.send(make_snapshot("a", [make_row("g", 0)]))
                await eventually(lambda: errors.count >= 1, what="a rejected export")
        assert receiver.rejected >= 1
        failed = events(logs, "otlp_export_failed")
        assert failed
        assert "401" in failed[0]["error"]
        assert "s3cr3t" not in json.dumps(logs, default=str)


def test_header_values_are_scrubbed_from_what_the_sdk_reported() -> None:
    errors = ErrorCounter()
    health = ExportHealth(
        endpoint="https://user:pw-in-url@collector:4318",
        protocol="http/protobuf",
        secrets={"Authorization": TOKEN},
        on_error=errors,
    )
    with captured_logs() as logs:
        health.record(False, [f"Failed to export: proxy said 'bad {TOKEN}'", "gave up"])
        health.record(False, ["again"])
        health.record(True, [])
    failed = events(logs, "otlp_export_failed")
    assert failed[0]["error"] == "Failed to export: proxy said 'bad ***' (then: gave up)"
    assert failed[0]["endpoint"] == "https://collector:4318"
    # Once at error level on the transition; later failures are debug (or filtered out).
    assert level_of(failed[0]) == "error"
    assert all(level_of(e) == "debug" for e in failed[1:])
    assert "pw-in-url" not in json.dumps(logs)
    assert "s3cr3t" not in json.dumps(logs)
    assert events(logs, "otlp_export_recovered")[0]["failed_exports"] == 2
    assert errors.count == 2


async def test_shutdown_flushes_the_last_snapshot_before_the_first_interval(
    receiver: Receiver,
) -> None:
    sink = make_sink(otel_settings(receiver, export_interval=3600.0))
    async with running(sink) as inbox:
        inbox.send(make_snapshot("a", [make_row("g", 0)], cycle=1))
        inbox.send(make_snapshot("a", [make_row("g", 0)], cycle=2))
        await eventually(lambda: sink.clusters == ("a",), what="snapshot applied")
        assert receiver.count == 0
    # Exiting `running` closed the inbox and waited for run() to return.
    await receiver.wait_for(with_cycles(a=2), within=0.1)


async def test_shutdown_with_the_receiver_down_is_bounded_and_quiet(receiver: Receiver) -> None:
    await receiver.stop()
    errors = ErrorCounter()
    sink = make_sink(otel_settings(receiver, export_interval=3600.0, timeout=0.5), on_error=errors)
    started = time.monotonic()
    async with running(sink, stop_within=10.0) as inbox:
        inbox.send(make_snapshot("a", [make_row("g", 0)]))
        await eventually(lambda: sink.clusters == ("a",), what="snapshot applied")
    assert time.monotonic() - started < 10.0
    assert errors.count >= 1


# -- cardinality ---------------------------------------------------------------------------------


async def test_churning_member_ids_never_overflow(receiver: Receiver) -> None:
    """The SDK never forgets an attribute set; the sink replaces its provider before the
    per-instrument limit folds fresh series into ``otel.metric.overflow``."""
    sink = make_sink(otel_settings(receiver), cardinality_floor=4)
    async with running(sink) as inbox:
        for cycle in range(1, 7):
            rows = [
                make_row("g", p, member=("/10.0.0.1", f"member-{cycle}-{p}", "c")) for p in (0, 1)
            ]
            inbox.send(make_snapshot("a", rows, cycle=cycle))
            received = await receiver.wait_for(with_cycles(a=cycle), after=receiver.count)
            consumers = {
                p.attributes["consumer_id"]
                for p in points(received.request)
                if p.name == "kafka_consumergroup_group_lag"
            }
            assert consumers == {f"member-{cycle}-0", f"member-{cycle}-1"}
    assert sink.generations >= 2
    overflowed = [
        p for r in receiver.requests() for p in points(r) if "otel.metric.overflow" in p.attributes
    ]
    assert overflowed == []


def test_cardinality_budget_replaces_only_when_a_label_set_outgrows_the_limit() -> None:
    budget = CardinalityBudget(floor=4)

    def keys(*members: str) -> Any:
        rows = [make_row("g", i, member=("h", m, "c")) for i, m in enumerate(members)]
        return series_keys(make_snapshot("a", rows), "partition")

    assert not budget.admit(keys("m1", "m2"))
    assert not budget.admit(keys("m1", "m2"))  # the same series again cost nothing
    assert not budget.admit(keys("m3", "m4"))  # four distinct row sets: at the limit
    assert budget.admit(keys("m5", "m6"))
    live = keys("m5", "m6")
    assert budget.reset([live]) == 4  # twice the live rows, never below the floor
    big = keys(*(f"x{i}" for i in range(10)))
    assert budget.admit(big)
    assert budget.reset([big]) == 20


# -- transport settings --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return generate_tls_files(tmp_path_factory.mktemp("otlp-tls"))


@pytest.mark.parametrize("client_auth", [False, True], ids=["server-tls", "mutual-tls"])
async def test_grpc_over_tls_with_a_custom_ca(tls_files: TlsFiles, client_auth: bool) -> None:
    async with GrpcReceiver(tls=tls_files, client_auth=client_auth) as receiver:
        client = (
            {
                "client_certificate_file": str(tls_files.client_cert),
                "client_key_file": str(tls_files.client_key),
            }
            if client_auth
            else {}
        )
        settings = otel_settings(receiver, certificate_file=str(tls_files.ca_cert), **client)
        sink = make_sink(settings)
        async with running(sink) as inbox:
            inbox.send(make_snapshot("a", [make_row("g", 0)]))
            await receiver.wait_for(with_cycles(a=1))


async def test_http_over_tls_with_a_custom_ca(tls_files: TlsFiles) -> None:
    async with HttpReceiver(tls=tls_files) as receiver:
        settings = otel_settings(receiver, certificate_file=str(tls_files.ca_cert))
        sink = make_sink(settings)
        async with running(sink) as inbox:
            inbox.send(make_snapshot("a", [make_row("g", 0)]))
            await receiver.wait_for(with_cycles(a=1))


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        (
            {"endpoint": "https://127.0.0.1:4317", "insecure": True, "protocol": "grpc"},
            "exporter.otel.insecure",
        ),
        (
            {"endpoint": "https://127.0.0.1:4318", "insecure": True, "protocol": "http/protobuf"},
            "exporter.otel.insecure",
        ),
        (
            {"endpoint": "http://127.0.0.1:4318", "insecure": False, "protocol": "http/protobuf"},
            "exporter.otel.insecure",
        ),
        ({"certificate_file": "/nonexistent/ca.pem"}, "exporter.otel.certificate_file"),
    ],
)
def test_contradictory_or_unreadable_transport_settings_fail_at_construction(
    overrides: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_sink(replace(OtelSettings(enabled=True), **overrides))
    assert [p for p, _ in raised.value.problems] == [path]


def test_http_endpoint_gets_the_metrics_path_only_when_it_has_none() -> None:
    assert http_metrics_url("http://collector:4318") == "http://collector:4318/v1/metrics"
    assert http_metrics_url("https://collector:4318/") == "https://collector:4318/v1/metrics"
    assert http_metrics_url("https://gw.example/otlp/v1/metrics") == (
        "https://gw.example/otlp/v1/metrics"
    )


def test_no_export_thread_before_run() -> None:
    before = {t.name for t in threading.enumerate()}
    make_sink(OtelSettings(enabled=True, endpoint="http://127.0.0.1:1"))
    after = {t.name for t in threading.enumerate()}
    assert "OtelPeriodicExportingMetricReader" not in after - before
