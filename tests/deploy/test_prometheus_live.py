"""A real Prometheus (Debian package) scraping a real klag-pipeline exporter while a scenario runs
on the real broker: every dashboard query returns data, the data-loss alert fires for the group
that lost data and not for the healthy one, with a second configured cluster that cannot be
reached the per-cluster health gauge is 1 and 0 and the stale-data alert fires for the unreachable
cluster only, and the exporter-down alert fires once the exporter stops.

The alert rules are the chart's, rendered by helm with short ``for:`` durations: the only
difference from deploy/prometheus/alerts.yaml, whose job selector ``job="klag-pipeline"`` is the
scrape job here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from devtools import tools
from klag_pipeline.app import serve
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.schema import ClusterSettings, ExporterSettings, Settings
from tests.deploy.test_dashboard import (
    concrete_query,
    is_consumer_health_query,
    is_sharding_query,
    load_dashboard,
    panel_queries,
)
from tests.support.kafka import KafkaTestClient, Rec
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "klag-pipeline"
JOB = "klag-pipeline"
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "10s"  # $__rate_interval: several 1 s scrapes
SHORT_FOR = [
    "alerts.dataLoss.for=1s",
    "alerts.nearDataLoss.for=1s",
    "alerts.timeLag.for=1s",
    "alerts.notStable.for=1s",
    "alerts.exporterDown.for=2s",
    "alerts.staleData.for=5s",
    "alerts.stalled.for=1s",
    "alerts.stopped.for=1s",
    "alerts.catchUp.for=1s",
    "alerts.abandoned.for=1s",
]
DEADLINE = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render_rules(path: Path) -> None:
    argv = [str(tools.tool_path("helm")), "template", JOB, str(CHART)]
    argv += ["--set", "prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml"]
    for item in SHORT_FOR:
        argv += ["--set", item]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    rule = yaml.safe_load(result.stdout)
    path.write_text(yaml.safe_dump(rule["spec"]), "utf-8")


@contextlib.contextmanager
def prometheus_process(tmp_path: Path, *exporter_ports: int) -> Iterator[str]:
    """Prometheus scraping every one of ``exporter_ports`` in job ``JOB``; yields its base URL."""
    rules = tmp_path / "rules.yaml"
    render_rules(rules)
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "honor_labels": True,
                "scrape_timeout": SCRAPE_INTERVAL,
                "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in exporter_ports]}],
            }
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), "utf-8")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            str(tools.tool_path("prometheus")),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        log.close()


class PrometheusApi:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with self.session.get(f"{self.base}/-/ready") as response:
                return response.status == 200
        return False

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def firing(self, alertname: str) -> list[dict[str, str]]:
        async with self.session.get(f"{self.base}/api/v1/alerts") as response:
            body = await response.json()
        return [
            a["labels"]
            for a in body["data"]["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]


@contextlib.asynccontextmanager
async def running_exporter(settings: Settings) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def live_exporter(port: int, **overrides: Any) -> ExporterSettings:
    """The exporter as the live tests run it: 1 s cycles, stale after 5 s, on ``port``."""
    return ExporterSettings(
        poll_interval=1.0,
        http_host="127.0.0.1",
        http_port=port,
        staleness_threshold=5.0,
        **overrides,
    )


def prefixed_cluster(name: str, bootstrap: str, prefix: str) -> ClusterSettings:
    """The broker, restricted to the groups and topics of one test (names starting ``prefix``)."""
    only = (re.compile("^" + re.escape(prefix)),)
    return ClusterSettings(
        name=name,
        bootstrap_servers=(bootstrap,),
        group_whitelist=only,
        topic_whitelist=only,
    )


async def wait_for(what: str, check: Any, within: float = DEADLINE) -> Any:
    """Poll the async ``check`` until it returns something truthy; fail after ``within``."""
    return await wait_until(check, within=within, interval=0.5, message=what)


async def test_dashboard_and_alerts_against_a_real_prometheus(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Any, tmp_path: Path
) -> None:
    prefix = unique("deploy")
    topic, lossy_topic = f"{prefix}-orders", f"{prefix}-audit"
    healthy, lagging, lossy = f"{prefix}-healthy", f"{prefix}-lagging", f"{prefix}-lossy"
    await kafka.create_topic(topic, partitions=2)
    await kafka.create_topic(lossy_topic)
    now_ms = int(time.time() * 1000)
    for partition in (0, 1):
        await kafka.produce(topic, [Rec(b"x", partition, now_ms - 60_000 + i) for i in range(10)])
    await kafka.produce(lossy_topic, [Rec(b"y", 0, now_ms - 30_000 + i) for i in range(10)])
    await kafka.commit(healthy, {TopicPartition(topic, p): 10 for p in (0, 1)})
    await kafka.commit(lagging, {TopicPartition(topic, p): 4 for p in (0, 1)})
    # Committed at 0, then retention (DeleteRecords) removes offsets 0–5: 6 messages lost.
    await kafka.commit(lossy, {TopicPartition(lossy_topic, 0): 0})
    await kafka.delete_records(lossy_topic, {0: 6})

    exporter_port = free_port()
    settings = Settings(
        exporter=live_exporter(exporter_port),
        clusters=(
            prefixed_cluster("deploy-test", kafka_bootstrap, prefix),
            # Nothing listens there: this cluster never completes a cycle.
            ClusterSettings(
                name="unreachable",
                bootstrap_servers=(f"127.0.0.1:{free_port()}",),
                labels={"env": "nowhere"},
            ),
        ),
    )
    # The consumer-health panels are proven in test_health_live.py (their families come from
    # another branch until it is merged), the sharding panels in test_sharded_prometheus.py (an
    # unsharded exporter has no klag_pipeline_shard_* series); every other panel here.
    queries = [
        (title, ref, concrete_query(expr, RATE_INTERVAL))
        for title, ref, expr in panel_queries(load_dashboard())
        if not is_consumer_health_query(expr) and not is_sharding_query(expr)
    ]
    with prometheus_process(tmp_path, exporter_port) as base:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            api = PrometheusApi(session, base)
            await wait_for("prometheus ready", api.ready)
            async with running_exporter(settings), kafka.classic_member(f"{prefix}-live", topic):

                async def empty_panels() -> list[str] | None:
                    missing = [
                        f"{title} [{ref}]: {expr}"
                        for title, ref, expr in queries
                        if not await api.query(expr)
                    ]
                    return missing or None

                missing: list[str] = []

                async def every_panel_has_data() -> bool:
                    missing[:] = await empty_panels() or []
                    return not missing

                await wait_until(
                    every_panel_has_data,
                    within=DEADLINE,
                    interval=1.0,
                    message="data in every dashboard panel",
                    details=lambda: "panels without data:\n" + "\n".join(missing),
                )

                # The exported values are the ground truth the scenario created.
                lost = await api.query(
                    f'kafka_consumergroup_group_messages_lost{{group="{lossy}"}}'
                )
                assert [float(s["value"][1]) for s in lost] == [6.0]
                lag = await api.query(f'kafka_consumergroup_group_sum_lag{{group="{lagging}"}}')
                assert [float(s["value"][1]) for s in lag] == [12.0]

                async def data_loss_firing() -> list[dict[str, str]]:
                    return await api.firing("KafkaConsumerGroupDataLoss")

                alerts = await wait_for("data-loss alert", data_loss_firing)
                groups = {a["group"] for a in alerts}
                assert lossy in groups
                assert healthy not in groups
                assert lagging not in groups
                assert {a["topic"] for a in alerts if a["group"] == lossy} == {lossy_topic}

                # Per-cluster health: the reachable cluster is up, the other one down...
                async def cluster_up() -> dict[str, float] | None:
                    result = await api.query("klag_pipeline_cluster_up")
                    values = {s["metric"]["cluster_name"]: float(s["value"][1]) for s in result}
                    return values if len(values) == 2 else None

                assert await wait_for("cluster up series", cluster_up) == {
                    "deploy-test": 1.0,
                    "unreachable": 0.0,
                }

                # ...and the stale-data alert names the unreachable cluster, and only it.
                async def stale_firing() -> list[dict[str, str]]:
                    return await api.firing("KlagPipelineDataStale")

                stale = await wait_for("stale-data alert", stale_firing)
                assert [a["cluster_name"] for a in stale] == ["unreachable"]
                assert (await cluster_up()) == {"deploy-test": 1.0, "unreachable": 0.0}
                assert [a["cluster_name"] for a in await stale_firing()] == ["unreachable"]

            # The exporter has stopped: scrapes fail, `up` goes 0, the alert fires.
            async def exporter_down() -> list[dict[str, str]]:
                return await api.firing("KlagPipelineExporterDown")

            down = await wait_for("exporter-down alert", exporter_down, within=30.0)
            assert down[0]["job"] == JOB
            assert down[0]["instance"] == f"127.0.0.1:{exporter_port}"
