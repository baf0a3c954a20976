"""The per-cluster log lines (telemetry/cluster_log.py) and ``exporter.log_summary_interval``."""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap

import pytest
import structlog

from klag_pipeline.errors import ConfigError, KafkaConnectionError
from klag_pipeline.settings.loader import parse_settings
from klag_pipeline.settings.schema import ExporterSettings
from klag_pipeline.snapshot import ClusterSnapshot, PartitionOffsets, PartitionRow
from klag_pipeline.telemetry.cluster_log import ClusterLog, log_summaries
from tests.support.kafka import wait_until

CLUSTER = """
[[clusters]]
name = "local"
bootstrap_servers = "127.0.0.1:9092"
"""


def interval(value: str) -> float:
    text = f"[exporter]\nlog_summary_interval = {value}\n{CLUSTER}"
    return parse_settings(
        textwrap.dedent(text), {}, source="t.toml"
    ).settings.exporter.log_summary_interval


def test_summary_interval_defaults_to_five_minutes() -> None:
    assert ExporterSettings().log_summary_interval == 300.0
    settings = parse_settings(CLUSTER, {}, source="t.toml").settings
    assert settings.exporter.log_summary_interval == 300.0


@pytest.mark.parametrize(
    ("value", "seconds"), [('"off"', 0.0), ('"0s"', 0.0), ('"1s"', 1.0), ('"1d"', 86400.0)]
)
def test_summary_interval_accepts_off_zero_and_1s_to_1d(value: str, seconds: float) -> None:
    assert interval(value) == seconds


@pytest.mark.parametrize("value", ['"500ms"', '"2d"', '"sometimes"', "5"])
def test_summary_interval_outside_its_range_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        interval(value)
    (path,) = [p for p, _ in caught.value.problems]
    assert path == "exporter.log_summary_interval"


def snapshot_of(cluster: str, cycle: int) -> ClusterSnapshot:
    return ClusterSnapshot(
        cluster=cluster,
        labels={},
        cycle=cycle,
        observed_at=0.0,
        started_at=0.0,
        duration_seconds=0.2,
        poll_time_ms=100.0,
        timestamp_sampling=True,
        partitions=(),
        groups=(),
        rows=(),
        compaction_detected_count=0,
        data_loss_partition_count=0,
        error_count=1,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_one_warning_then_debug_then_one_recovery_with_its_length() -> None:
    clock = Clock()
    cluster_log = ClusterLog("prod", clock)
    with structlog.testing.capture_logs() as logs:
        cluster_log.cycle_failed(
            1, "discovery", KafkaConnectionError("refused", broker="b:9092"), restated=False
        )
        clock.now += 5
        cluster_log.cycle_failed(
            2, "discovery", KafkaConnectionError("other cause"), restated=False
        )
        clock.now += 5
        cluster_log.cycle_succeeded(snapshot_of("prod", cycle=3))
    said = [(e["event"], e["log_level"]) for e in logs]
    assert said == [
        ("cluster_cycle_failed", "warning"),
        ("cluster_cycle_failed", "debug"),
        ("cluster_recovered", "info"),
    ]
    assert (logs[0]["broker"], logs[0]["error"], logs[0]["stage"]) == (
        "b:9092",
        "refused",
        "discovery",
    )
    assert (logs[2]["down_seconds"], logs[2]["failed_cycles"]) == (10.0, 2)
    assert not cluster_log.failing
    with structlog.testing.capture_logs() as logs:
        cluster_log.summarize()
        cluster_log.summarize()
    first, second = logs
    assert (first["state"], first["cycles_ok"], first["cycles_failed"]) == ("up", 1, 2)
    assert (first["partial_errors"], first["groups"], first["rows"]) == (1, 0, 0)
    assert (second["cycles_ok"], second["cycles_failed"], second["partial_errors"]) == (0, 0, 0)


async def test_summaries_are_logged_every_interval_until_stopped() -> None:
    stop = asyncio.Event()
    logs_ = [ClusterLog("a"), ClusterLog("b")]
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(log_summaries(logs_, 0.05, stop))

        async def four() -> bool:
            return len(logs) >= 4

        await wait_until(four, within=5, interval=0.01, message="four summaries")
        stop.set()
        async with asyncio.timeout(5):
            await task
    assert [e["cluster"] for e in logs[:4]] == ["a", "b", "a", "b"]
    assert {(e["state"], e["cycles_ok"], e["cycles_failed"]) for e in logs} == {("starting", 0, 0)}


def denied_snapshot(cycle: int, denied: set[str], rows: dict[str, float | None]) -> ClusterSnapshot:
    """A cycle whose Fetch was refused for ``denied``; ``rows``: topic → lag_seconds of one
    lagging row (None: no exact time lag)."""
    base = snapshot_of("local", cycle)
    return dataclasses.replace(
        base,
        partitions=tuple(PartitionOffsets(topic, 0, 0, 10) for topic in rows),
        rows=tuple(
            PartitionRow(
                group="g",
                topic=topic,
                partition=0,
                member_host="",
                consumer_id="",
                client_id="",
                committed=5,
                low=0,
                high=10,
                lag=5,
                lag_seconds=seconds,
                compaction_detected=False,
                data_loss_detected=False,
                messages_lost=0,
                retention_margin=5,
                lag_retention_ratio=0.0,
            )
            for topic, seconds in rows.items()
        ),
        time_lag_denied=frozenset(denied),
    )


def test_a_denied_topic_is_reported_once_and_its_read_coming_back_once() -> None:
    cluster_log = ClusterLog("local")
    with structlog.testing.capture_logs() as logs:
        cluster_log.cycle_succeeded(denied_snapshot(1, {"a", "b"}, {"a": None, "b": None}))
        cluster_log.cycle_succeeded(denied_snapshot(2, {"a", "b"}, {"a": None, "b": None}))
        # "b" not read this cycle (nothing to read): neither denied again nor allowed.
        cluster_log.cycle_succeeded(denied_snapshot(3, {"a"}, {"a": None, "b": None}))
        cluster_log.cycle_succeeded(denied_snapshot(4, {"a"}, {"a": None, "b": 12.0}))
        cluster_log.cycle_succeeded(denied_snapshot(5, {"a", "b"}, {"a": None, "b": None}))
    events = [(e["event"], e["cycle"], e["topics"]) for e in logs if e["event"].startswith("time")]
    assert events == [
        ("time_lag_denied", 1, ["a", "b"]),
        ("time_lag_allowed", 4, ["b"]),
        ("time_lag_denied", 5, ["b"]),
    ]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "time_lag_denied")
