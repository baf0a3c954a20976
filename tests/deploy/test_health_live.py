"""The consumer-health panels and alerts on a real Prometheus (Debian package), with the chart's
rules rendered as in test_prometheus_live.py (short ``for:`` durations).

Two sources:

- ``test_health_panels_and_alerts_with_synthetic_series``: a stub target serves the health
  families, shaped as docs/health.md defines them (label sets, status codes, ``+Inf``), for a
  stalled, a stopped, a never-catching-up, a healthy group and an abandoned topic. Every health
  panel query returns data, and each alert fires for its group and for no other.
- ``test_health_panels_with_the_real_exporter``: the real exporter on the real broker; every
  health panel query returns data from what it exports.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import HealthSettings, Settings
from tests.deploy.test_dashboard import (
    concrete_query,
    is_consumer_health_query,
    load_dashboard,
    panel_queries,
)
from tests.deploy.test_prometheus_live import (
    DEADLINE,
    RATE_INTERVAL,
    PrometheusApi,
    free_port,
    live_exporter,
    prefixed_cluster,
    prometheus_process,
    running_exporter,
    wait_for,
)
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

# Queries that may rightly return nothing in the real-exporter scenario, with why. Each one is
# still sent and must be a valid query; the synthetic test requires data from all of them.
ONLY_WHERE_ESTIMATED = "kafka_consumergroup_group_estimated_lag_seconds"


def health_queries() -> list[tuple[str, str, str]]:
    return [
        (title, ref, concrete_query(expr, RATE_INTERVAL))
        for title, ref, expr in panel_queries(load_dashboard())
        if is_consumer_health_query(expr)
    ]


def labels(**values: str) -> str:
    return ",".join(f'{name}="{value}"' for name, value in values.items())


def synthetic_exposition() -> str:
    """The health families of one cluster, in the Prometheus text format."""
    lines: list[str] = []

    def family(name: str, kind: str, samples: list[tuple[str, str]]) -> None:
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{{{label_set}}} {value}" for label_set, value in samples)

    # group: (status, catch-up seconds); -1 UNKNOWN, 0 OK, 1 LAGGING, 3 STALLED, 4 STOPPED.
    groups = {
        "healthy": ("0", "60"),
        "stuck": ("3", "+Inf"),
        "gone": ("4", "+Inf"),
        "never": ("1", "+Inf"),
        "migrated": ("0", "0"),
        "new": ("-1", None),  # unknown: the catch-up family is absent for it
    }
    topics = {"healthy": "orders", "stuck": "orders", "gone": "orders", "never": "orders"}
    topics |= {"migrated": "orders-v2", "new": "orders"}
    c = {"cluster_name": "prod"}

    def gpm(group: str, topic: str) -> str:
        member = {"member_host": "", "consumer_id": "", "client_id": ""}
        return labels(**c, group=group, topic=topic, partition="0", **member)

    partitions = [*topics.items(), ("migrated", "orders-v1")]
    family(
        "kafka_consumergroup_group_partition_status",
        "gauge",
        [(gpm(g, t), groups[g][0]) for g, t in partitions],
    )
    for name, value in (
        ("kafka_consumergroup_group_consume_rate", "12.5"),
        ("kafka_consumergroup_group_lag_velocity", "-2"),
        ("kafka_consumergroup_group_estimated_lag_seconds", "30"),
    ):
        family(name, "gauge", [(gpm(g, t), value) for g, t in partitions])
    family(
        "kafka_consumergroup_group_catch_up_seconds",
        "gauge",
        [(gpm(g, t), groups[g][1]) for g, t in partitions if groups[g][1] is not None],
    )
    family(
        "kafka_partition_produce_rate",
        "gauge",
        [(labels(**c, topic=t, partition="0"), "10") for t in ("orders", "orders-v1", "orders-v2")],
    )
    group_topics = [(labels(**c, group=g, topic=t), g, t) for g, t in partitions]
    for name in (
        "kafka_consumergroup_group_topic_sum_consume_rate",
        "kafka_consumergroup_group_topic_sum_lag_velocity",
        "kafka_consumergroup_group_topic_commit_age_seconds",
    ):
        family(name, "gauge", [(label_set, "3") for label_set, _, _ in group_topics])
    family(
        "kafka_consumergroup_group_topic_abandoned",
        "gauge",
        [(ls, "1" if (g, t) == ("migrated", "orders-v1") else "0") for ls, g, t in group_topics],
    )
    group_labels = {g: labels(**c, group=g) for g in groups}
    family(
        "kafka_consumergroup_group_status",
        "gauge",
        [(group_labels[g], status) for g, (status, _) in groups.items()],
    )
    family(
        "kafka_consumergroup_group_max_catch_up_seconds",
        "gauge",
        [(group_labels[g], catch_up) for g, (_, catch_up) in groups.items() if catch_up],
    )
    # "never" is LAGGING with a +Inf catch-up: its lag grows (velocity > 0), the only +Inf the
    # CatchUpTooSlow alert counts; the others' lag falls.
    family(
        "kafka_consumergroup_group_sum_lag_velocity",
        "gauge",
        [(ls, "5" if g == "never" else "-2") for g, ls in group_labels.items()],
    )
    for name, value in (
        ("kafka_consumergroup_group_sum_consume_rate", "12.5"),
        ("kafka_consumergroup_group_last_rebalance_timestamp_seconds", f"{time.time():.3f}"),
    ):
        family(name, "gauge", [(ls, value) for ls in group_labels.values()])
    family(
        "kafka_consumergroup_group_rebalances_total",
        "counter",
        [(ls, "2") for ls in group_labels.values()],
    )
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def stub_target(body: str) -> AsyncIterator[int]:
    """An HTTP server answering /metrics with ``body``; yields its port."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def wait_for_every_query(
    api: PrometheusApi, queries: list[tuple[str, str, str]], what: str
) -> None:
    missing: list[str] = []

    async def every_query_has_data() -> bool:
        missing[:] = [
            f"{title} [{ref}]: {expr}" for title, ref, expr in queries if not await api.query(expr)
        ]
        return not missing

    await wait_until(
        every_query_has_data,
        within=DEADLINE,
        interval=1.0,
        message=what,
        details=lambda: "panels without data:\n" + "\n".join(missing),
    )


async def test_health_panels_and_alerts_with_synthetic_series(tmp_path: Path) -> None:
    queries = health_queries()
    assert len(queries) >= 20  # every health panel's every target (the dashboard has 21)
    async with stub_target(synthetic_exposition()) as port:
        with prometheus_process(tmp_path, port) as base:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                api = PrometheusApi(session, base)
                await wait_for("prometheus ready", api.ready)
                await wait_for_every_query(api, queries, "data in every health panel")

                # +Inf survives the panels' aggregation (shown as "never").
                catch_up = await api.query(
                    "max by (cluster_name, group) (kafka_consumergroup_group_max_catch_up_seconds)"
                )
                values = {s["metric"]["group"]: s["value"][1] for s in catch_up}
                assert values == {
                    "healthy": "60",
                    "stuck": "+Inf",
                    "gone": "+Inf",
                    "never": "+Inf",
                    "migrated": "0",
                }

                async def firing(alertname: str) -> list[dict[str, str]]:
                    return await api.firing(alertname)

                expected = {
                    "KafkaConsumerGroupStalled": {("stuck", None)},
                    "KafkaConsumerGroupStopped": {("gone", None)},
                    # STALLED and STOPPED have +Inf catch-up too; their own alerts cover them.
                    "KafkaConsumerGroupCatchUpTooSlow": {("never", None)},
                    "KafkaConsumerGroupTopicAbandoned": {("migrated", "orders-v1")},
                }
                for alertname, groups in expected.items():

                    async def fired(name: str = alertname) -> list[dict[str, str]]:
                        return await firing(name)

                    alerts = await wait_for(alertname, fired)
                    # One rule evaluation judged every group: the healthy ones are not there.
                    assert {(a["group"], a.get("topic")) for a in alerts} == groups, alertname
                    assert {a["cluster_name"] for a in alerts} == {"prod"}


async def test_health_panels_with_the_real_exporter(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Any, tmp_path: Path
) -> None:
    prefix = unique("health")
    topic = f"{prefix}-orders"
    consuming, stopped = f"{prefix}-consuming", f"{prefix}-stopped"
    await kafka.create_topic(topic, partitions=2)
    now_ms = int(time.time() * 1000)
    for partition in (0, 1):
        await kafka.produce(topic, [Rec(b"x", partition, now_ms - 60_000 + i) for i in range(10)])
    # No members and lag: STOPPED once stopped_after has passed.
    await kafka.commit(stopped, {TopicPartition(topic, p): 4 for p in (0, 1)})

    exporter_port = free_port()
    settings = Settings(
        exporter=live_exporter(
            exporter_port,
            # Short thresholds so that every status and flag is decided within the test.
            health=HealthSettings(
                window=10.0, stalled_after=3.0, stopped_after=3.0, abandoned_after=3.0
            ),
        ),
        clusters=(prefixed_cluster("health-test", kafka_bootstrap, prefix),),
    )
    queries = health_queries()
    required = [q for q in queries if ONLY_WHERE_ESTIMATED not in q[2]]
    with prometheus_process(tmp_path, exporter_port) as base:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            api = PrometheusApi(session, base)
            await wait_for("prometheus ready", api.ready)
            async with running_exporter(settings), kafka.classic_member(consuming, topic):

                async def status_seen() -> list[dict[str, Any]]:
                    return await api.query(
                        f'kafka_consumergroup_group_status{{group="{consuming}"}}'
                    )

                await wait_for("the consuming group's status", status_seen)
                # A second member joining makes a rebalance the exporter observes (the last
                # rebalance time is exported only once one has been seen).
                async with kafka.classic_member(consuming, topic):
                    await kafka.produce(topic, [Rec(b"y", 0, now_ms + i) for i in range(10)])
                    await wait_for_every_query(api, required, "data in every health panel")
                # Estimated time lag is exported only where time lag is estimated, which this
                # scenario does not set up; its query must still be valid (query() asserts it).
                for _, _, expr in queries:
                    await api.query(expr)
