"""Broker throttling: a request quota on the exporter's client id makes every broker answer with
throttle_time_ms > 0 (read from the responses by the proxy, not by the exporter). The exporter
waits that long before its next request to that broker, reports the throttling in its
self-metrics, and keeps finishing cycles with exact offsets (a Fetch the quota withholds costs
that cycle's time lag of its partitions, counted as a failure).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from devtools import kafka_local
from klag_pipeline.snapshot import ClusterSnapshot
from tests.integration.pipeline_support import running, self_metric
from tests.multibroker.proxies import Exchange, ThreeBrokers
from tests.multibroker.support import (
    CLUSTER,
    CONFIG_COMMAND,
    Scenario,
    build_scenario,
    exporter_settings,
    wait_snapshots,
)
from tests.support.kafka import KafkaTestClient, wait_until

pytestmark = pytest.mark.kafka

QUOTA_PERCENT = "0.1"
"""A tenth of a percent of one request-handler thread (1 ms a second) per client id: exceeded by
every cycle on every broker, even by brokers whose JIT has warmed up (0.5 % was not, late in a
session). With quota windows of 2 × 1 s (the fixture's broker properties) each throttle is at
most 1 s, but nearly every answer carries one: a cycle's seven or so requests per broker then
take up to 8–11 s, more than POLL_INTERVAL. Broker pauses move the cycle deadline back by up to
two poll intervals (klag_pipeline.pacing), so cycles finish, slower (on the original code every
cycle failed once the brokers' throttles reached their 1 s cap: CI, 2026-12-03)."""

POLL_INTERVAL = 6.0
"""With the two intervals of pause allowance, 18 s per cycle: twice what a cycle needs here."""


async def set_request_quota(bootstrap: str, client_id: str, value: str | None) -> None:
    change = ["--add-config", f"request_percentage={value}"] if value else []
    change = change or ["--delete-config", "request_percentage"]
    await asyncio.to_thread(
        kafka_local.run_tool,
        CONFIG_COMMAND,
        [
            "--bootstrap-server",
            bootstrap,
            "--alter",
            *change,
            "--entity-type",
            "clients",
            "--entity-name",
            client_id,
        ],
        timeout=60.0,
    )


def assert_offsets_exact(snapshot: ClusterSnapshot, scenario: Scenario) -> None:
    rows = {(r.group, r.topic_partition): r for r in snapshot.rows}
    assert set(rows) == {(g, tp) for g, offsets in scenario.commits.items() for tp in offsets}
    for (group, tp), row in rows.items():
        assert (row.committed, row.high, row.lag) == (
            scenario.commits[group][tp],
            scenario.high(tp),
            scenario.lag(group, tp),
        )


def assert_time_lags(snapshot: ClusterSnapshot, scenario: Scenario) -> None:
    """Every time lag present is right; one missing is counted as a failure."""
    missing = 0
    for row in snapshot.rows:
        if row.lag_seconds is None:
            missing += 1
            continue
        stamp = scenario.timestamps[row.topic_partition][row.committed] / 1000
        assert snapshot.started_at - stamp - 1.0 <= row.lag_seconds, (row.group, row.partition)
        assert row.lag_seconds <= snapshot.observed_at - stamp + 1.0, (row.group, row.partition)
    assert snapshot.error_count >= (1 if missing else 0), snapshot.cycle


# Requests aiokafka sends on its own, outside the exporter's transport: the handshake of a new
# connection and its background metadata refresh. The exporter neither schedules them nor sees
# their answers' throttle times (a known limit, docs/protocol-notes.md), so they are neither
# judged as early nor taken as throttles the exporter should have honoured.
LIBRARY_APIS = frozenset({"ApiVersions", "Metadata"})


IN_FLIGHT = 0.005
"""A request the proxy reads within 5 ms after a throttled answer may have left the exporter
before that answer reached it (another cycle's request to the same broker, released by the same
throttle's end): it is in flight, not early. Seen once at 0.5 ms."""


def early_requests(
    exchanges: list[Exchange], slack: float = 0.05
) -> list[tuple[Exchange, Exchange]]:
    """(throttled answer, request sent to the same broker before the throttle time passed), for
    the requests the exporter itself sends (and not already in flight, :data:`IN_FLIGHT`)."""
    exchanges = [e for e in exchanges if e.api not in LIBRARY_APIS]
    found = []
    for answer in exchanges:
        if not answer.throttle_ms or answer.answered_at is None:
            continue
        until = answer.answered_at + answer.throttle_ms / 1000 - slack
        for request in exchanges:
            sent = request.sent_at
            if request.broker == answer.broker and answer.answered_at + IN_FLIGHT < sent < until:
                found.append((answer, request))
    return found


async def test_throttled_exporter_waits_reports_and_finishes_cycles(
    three_brokers: ThreeBrokers, mb: KafkaTestClient, unique: Callable[[str], str]
) -> None:
    bootstrap = three_brokers.bootstrap
    scenario = await build_scenario(
        mb, bootstrap, unique, topics=1, partitions_per_topic=6, groups=6
    )
    client_id = unique("klag-throttled")
    await set_request_quota(bootstrap, client_id, QUOTA_PERCENT)
    config = exporter_settings(
        three_brokers.proxied_bootstrap,
        scenario,
        poll_interval=POLL_INTERVAL,
        kafka_timeout=3.0,
        consumer_properties={"client.id": client_id},
    )
    # Timestamps are read again every cycle (no cache), so every cycle sends a Fetch right
    # after its ListOffsets to the same leaders: the moment a throttle is most often ignored.
    sampling = replace(config.exporter.timestamp_sampling, cache_ttl=0.001)
    config = replace(config, exporter=replace(config.exporter, timestamp_sampling=sampling))
    began = time.time()
    try:
        async with running(config) as run:

            def throttled() -> list[Exchange]:
                return [
                    e
                    for e in three_brokers.proxies.exchanges()
                    if e.sent_at >= began and (e.throttle_ms or 0) > 0
                ]

            async def some_throttled() -> bool:
                return len({e.broker for e in throttled()}) >= 2

            await wait_until(some_throttled, within=40, interval=0.2, message="throttled answers")
            throttled_at = time.time()

            # Cycles go on, offsets exact in each. A Fetch the broker withholds (a quota answers
            # it with no data) costs its partitions their time lag for that cycle: a counted
            # partial failure, never a wrong value.
            snapshots = await wait_snapshots(run, 3, after=throttled_at, within=75)
            for snapshot in snapshots:
                assert_offsets_exact(snapshot, scenario)
                assert_time_lags(snapshot, scenario)

            exchanges = [e for e in three_brokers.proxies.exchanges() if e.sent_at >= began]
            early = early_requests(exchanges)
            assert not early, [
                (a.api, a.throttle_ms, r.api, r.sent_at - a.answered_at) for a, r in early[:10]
            ]

            # Every throttled answer to a request of the exporter's own (aiokafka's background
            # Metadata requests aside) is in the self-metrics. The proxy is read first: the
            # exporter can only have counted more since.
            own = {"ListGroups", "DescribeGroups", "OffsetFetch", "ListOffsets", "Fetch"}
            seen = Counter(e.api for e in throttled() if e.api in own)
            counted = self_metric(run.exporter, "klag_pipeline_kafka_throttled_responses_total")
            seconds = self_metric(run.exporter, "klag_pipeline_kafka_throttle_seconds_total")
            reported: Counter[str] = Counter()
            for labels, value in counted.items():
                names = dict(labels)
                if names["cluster_name"] == CLUSTER and names["api"] in own:
                    reported[names["api"]] += int(value)
            assert all(reported[api] >= n for api, n in seen.items()), (seen, reported)
            assert sum(v for k, v in seconds.items() if ("cluster_name", CLUSTER) in k) > 0
    finally:
        await set_request_quota(bootstrap, client_id, None)
