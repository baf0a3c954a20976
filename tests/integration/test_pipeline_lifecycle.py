"""The running exporter (Exporter + Runner, every stage, the Prometheus sink, the HTTP server) on
the real broker: series that leave with their group, topic or partition; clusters that fail
without delaying the others, go stale and come back; scrapes that never wait for a cycle; the
HTTP endpoints before and after the first cycle.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import pytest
import structlog

from klag_pipeline import __version__
from klag_pipeline.app import Exporter
from klag_pipeline.http import HttpServer, build_app, start_server
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.redaction import redact_settings
from klag_pipeline.settings.schema import Settings
from tests.integration.pipeline_support import (
    BreakableClient,
    GatedClient,
    GhostCommitsClient,
    build_exporter,
    closed_port,
    cluster,
    exactly,
    key,
    mentioning,
    of_cluster,
    running,
    scrape,
    self_metric,
    settings,
    silent_listener,
    wrapping,
)
from tests.support.kafka import KafkaTestClient, Rec, wait_until

pytestmark = pytest.mark.kafka

LAST_UPDATE = "kafka_lag_exporter_last_update_timestamp_seconds"


async def assert_topic_absent(kafka: KafkaTestClient, topic: str) -> None:
    with pytest.raises(AssertionError, match="does not exist"):
        await kafka.watermarks(topic)


async def test_deleted_group_topic_and_partition_leave_no_stale_series(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    doomed, shrunk, kept = unique("doomed"), unique("shrunk"), unique("kept")
    ghost = unique("ghost")  # never created: it exists only in (injected) committed offsets
    await kafka.create_topic(doomed, partitions=2)
    await kafka.create_topic(shrunk, partitions=3)
    await kafka.create_topic(kept, partitions=1)
    for topic, partitions in ((doomed, 2), (shrunk, 3), (kept, 1)):
        await kafka.produce(topic, [Rec(b"x", partition=p) for p in range(partitions)] * 3)
    stays, leaves = unique("stays"), unique("leaves")
    await kafka.commit(
        stays,
        {
            TopicPartition(doomed, 0): 1,
            TopicPartition(doomed, 1): 1,
            TopicPartition(shrunk, 0): 1,
            TopicPartition(shrunk, 1): 1,
            TopicPartition(shrunk, 2): 1,
            TopicPartition(kept, 0): 1,
        },
    )
    await kafka.commit(leaves, {TopicPartition(kept, 0): 2})
    clients: list[GhostCommitsClient] = []

    def with_ghost(real: Any) -> GhostCommitsClient:
        client = GhostCommitsClient(real, stays, {TopicPartition(ghost, 0): 5})
        clients.append(client)
        return client

    name = "lifecycle"
    config = settings(
        cluster(
            name,
            kafka_bootstrap,
            groups=[exactly(stays, leaves)],
            topics=[exactly(doomed, shrunk, kept, ghost)],
        ),
        poll_interval=0.3,
    )
    async with running(config, client_factory=wrapping(with_ghost)) as run:
        before = await run.fresh_snapshot(name)
        assert {s.group for s in before.groups} == {stays, leaves}
        assert {(p.topic, p.partition) for p in before.partitions} == {
            (doomed, 0),
            (doomed, 1),
            (shrunk, 0),
            (shrunk, 1),
            (shrunk, 2),
            (kept, 0),
        }
        series = scrape(run.exporter)
        assert mentioning(series, "group", leaves)
        assert mentioning(series, "topic", doomed)
        assert not mentioning(series, "topic", ghost)  # no watermarks, no series

        await kafka.delete_group(leaves)
        await kafka.delete_topic(doomed)
        await kafka.delete_topic(shrunk)
        await kafka.create_topic(shrunk, partitions=1)  # "partitions 1 and 2 removed"
        await kafka.produce(shrunk, [Rec(b"y")] * 4)
        await kafka.commit(stays, {TopicPartition(shrunk, 0): 3})

        after = await run.fresh_snapshot(name)
        assert {s.group for s in after.groups} == {stays}
        assert {(p.topic, p.partition, p.high) for p in after.partitions} == {
            (shrunk, 0, 4),
            (kept, 0, 3),
        }
        assert {(r.topic, r.partition, r.committed, r.lag) for r in after.rows} == {
            (shrunk, 0, 3, 1),
            (kept, 0, 1, 2),
        }
        series = scrape(run.exporter)
        assert not mentioning(series, "group", leaves)
        assert not mentioning(series, "topic", doomed)
        assert not mentioning(series, "topic", ghost)
        shrunk_partitions = {
            dict(labels).get("partition") for _, labels in mentioning(series, "topic", shrunk)
        }
        shrunk_partitions.discard(None)  # topic_sum_lag has no partition label
        assert shrunk_partitions == {"0"}
        summed = key("kafka_consumergroup_group_topic_sum_lag", cluster_name=name, group=stays)
        assert series[(summed[0], summed[1] | {("topic", shrunk)})] == 1

        # Several more cycles keep asking about the ghost topic; it is never created.
        await run.cycles(4)
    (client,) = clients
    assert sum(ghost in topics for topics in client.watermark_requests) >= 4
    await assert_topic_absent(kafka, ghost)
    await assert_topic_absent(kafka, doomed)


def warnings(
    logs: Sequence[Mapping[str, Any]], event: str, cluster_name: str
) -> list[Mapping[str, Any]]:
    return [
        entry
        for entry in logs
        if entry["event"] == event
        and entry.get("cluster") == cluster_name
        and entry["log_level"] == "warning"
    ]


async def test_unreachable_clusters_never_delay_the_good_one_and_log_once(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=2)
    await kafka.produce(topic, [Rec(b"x", partition=p) for p in (0, 0, 0, 1)])
    await kafka.commit(group, {TopicPartition(topic, 0): 1, TopicPartition(topic, 1): 0})
    poll = 0.3
    cycles = 10
    async with silent_listener() as hung_port:
        config = settings(
            cluster("good", kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)]),
            cluster("refused", f"127.0.0.1:{closed_port()}"),  # connection refused at once
            cluster("hung", f"127.0.0.1:{hung_port}"),  # accepts, never answers
            poll_interval=poll,
            staleness_threshold=2.0,
            kafka_timeout=5.0,  # far longer than a cycle may take
        )
        with structlog.testing.capture_logs() as logs:
            async with running(config) as run:
                started = time.monotonic()
                await run.recorder.wait_for(
                    lambda: len(run.recorder.snapshots("good")) >= cycles,
                    within=20,
                    what=f"{cycles} cycles of the good cluster",
                )
                elapsed = time.monotonic() - started
                series = scrape(run.exporter)
                status = {s.name: s for s in run.exporter.status.snapshot()}

    good = run.recorder.snapshots("good")[:cycles]
    # Fully exported on every cycle, at the poll pace, each cycle short.
    for snapshot in good:
        assert {(r.partition, r.lag) for r in snapshot.rows} == {(0, 2), (1, 1)}
        assert snapshot.duration_seconds < poll
    # At the poll pace. Were the clusters' cycles serialised, every good cycle would also wait
    # out the hung cluster's whole cycle (its deadline, one poll interval): gaps of 2 × poll.
    gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(good)]
    assert sum(gaps) / len(gaps) < 1.5 * poll, gaps
    assert max(gaps) < 3 * poll, gaps
    assert elapsed < cycles * poll + 1.5
    assert run.exporter.prometheus.clusters == ("good",)
    assert of_cluster(series, "good")
    assert not of_cluster(series, "refused")
    assert not of_cluster(series, "hung")
    assert series[("kafka_lag_exporter_up", frozenset())] == 0
    assert status["good"].fresh
    for name in ("refused", "hung"):
        assert status[name].last_success_at is None
        assert status[name].consecutive_failures >= 3, status[name]
        # Said once when the cluster started failing, however many cycles failed after.
        said = warnings(logs, "cluster_cycle_failed", name)
        assert len(said) == 1, said
    # ... and counted every time.
    errors = self_metric(run.exporter, "klag_pipeline_cycles_total")
    assert errors[frozenset({("cluster_name", "refused"), ("outcome", "error")})] >= 3
    assert errors[frozenset({("cluster_name", "hung"), ("outcome", "error")})] >= 3


async def test_failing_cluster_is_withdrawn_after_the_staleness_threshold_then_returns(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [Rec(b"x")] * 3)
    await kafka.commit(group, {TopicPartition(topic, 0): 1})
    threshold = 1.5
    breakable: list[BreakableClient] = []

    def make_breakable(real: Any) -> BreakableClient:
        breakable.append(BreakableClient(real))
        return breakable[-1]

    config = settings(
        cluster("good", kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)]),
        cluster("flaky", kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)]),
        poll_interval=0.3,
        staleness_threshold=threshold,
    )
    with structlog.testing.capture_logs() as logs:
        async with running(config, client_factory=wrapping(make_breakable, only="flaky")) as run:
            await run.fresh_snapshot("good")
            await run.fresh_snapshot("flaky")
            series = scrape(run.exporter)
            assert series[("kafka_lag_exporter_up", frozenset())] == 1
            assert of_cluster(series, "flaky")

            (flaky,) = breakable
            flaky.broken = True
            # The last snapshot stays exported until it is older than the threshold.
            assert run.exporter.prometheus.clusters == ("flaky", "good")

            async def withdrawn() -> bool:
                return run.exporter.prometheus.clusters == ("good",)

            await wait_until(withdrawn, within=threshold + 10, interval=0.05, message="withdrawn")
            (status,) = [s for s in run.exporter.status.snapshot() if s.name == "flaky"]
            assert status.age_seconds is not None
            assert status.age_seconds >= threshold  # not withdrawn before the threshold
            series = scrape(run.exporter)
            assert not of_cluster(series, "flaky")
            assert series[("kafka_lag_exporter_up", frozenset())] == 0
            # The good cluster carries on meanwhile.
            await run.fresh_snapshot("good")
            assert of_cluster(scrape(run.exporter), "good")

            # Reachable again: the series come back (after the connection back-off) and up is 1.
            flaky.broken = False
            back = await run.recorder.wait_snapshot("flaky", after=time.time(), within=15)
            await run.wait_rendered(back)

            async def up_again() -> bool:
                return scrape(run.exporter)[("kafka_lag_exporter_up", frozenset())] == 1

            await wait_until(up_again, within=5, interval=0.05, message="up again")
            assert of_cluster(scrape(run.exporter), "flaky")

    assert [w.cluster for w in run.recorder.withdrawals()] == ["flaky"]
    assert flaky.calls_while_broken >= 2
    assert len(warnings(logs, "cluster_cycle_failed", "flaky")) == 1
    assert len(warnings(logs, "cluster_stale", "flaky")) == 1
    events = [e["event"] for e in logs if e.get("cluster") == "flaky" and e["log_level"] == "info"]
    assert events.count("cluster_recovered") == 1
    assert events.count("cluster_fresh_again") == 1
    assert not [e for e in logs if e.get("cluster") == "good" and e["log_level"] == "warning"]


class Http:
    """A real HTTP client against the exporter's real aiohttp server."""

    def __init__(self, server: HttpServer, session: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{server.port}"
        self.session = session

    async def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        async with self.session.request(method, self.base + path) as response:
            return response.status, await response.text()


@contextlib.asynccontextmanager
async def serving(config: Settings, exporter: Exporter) -> AsyncIterator[Http]:
    """The exporter's HTTP app on a free loopback port, and a client for it."""
    app = build_app(
        exporter.prometheus,
        exporter.status,
        version=__version__,
        settings_view=redact_settings(config),
    )
    server = await start_server(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Http(server, session)
    finally:
        await server.cleanup()


def last_update(text: str, cluster_name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(LAST_UPDATE + "{") and f'cluster_name="{cluster_name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_scrape_during_a_cycle_returns_the_previous_snapshot_at_once(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [Rec(b"x")] * 2)
    await kafka.commit(group, {TopicPartition(topic, 0): 1})
    gated: list[GatedClient] = []

    def make_gated(real: Any) -> GatedClient:
        gated.append(GatedClient(real))
        return gated[-1]

    name = "gated"
    # The cycle deadline is poll_interval: 2 s leaves room to hold a cycle and scrape.
    config = settings(
        cluster(name, kafka_bootstrap, groups=[exactly(group)], topics=[exactly(topic)]),
        poll_interval=2.0,
    )
    built = build_exporter(config, client_factory=wrapping(make_gated))
    async with serving(config, built[0]) as http, running(config, built=built) as run:
        first = await run.recorder.wait_snapshot(name)
        await run.wait_rendered(first)
        (client,) = gated
        client.gate.clear()

        async def held() -> bool:
            return client.held.is_set()

        await wait_until(held, within=10, interval=0.02, message="a held cycle")

        status, body = await http.get("/metrics")
        # Answered while the next cycle is still held inside the cluster chain (no later
        # snapshot exists yet), with the previous cycle's data.
        assert client.held.is_set()
        assert run.recorder.snapshots(name)[-1] is first
        assert status == 200
        assert last_update(body, name) == first.observed_at

        client.gate.set()
        later = await run.recorder.wait_snapshot(name, lambda s: s.cycle > first.cycle, within=10)
        await run.wait_rendered(later)
        status, body = await http.get("/metrics")
        assert status == 200
        assert last_update(body, name) == later.observed_at > first.observed_at


async def test_http_endpoints_before_and_after_the_first_cycle(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [Rec(b"x")] * 5)
    await kafka.commit(group, {TopicPartition(topic, 0): 2})
    name = unique("web")
    config = settings(
        cluster(
            name,
            kafka_bootstrap,
            groups=[exactly(group)],
            topics=[exactly(topic)],
            labels={"env": "it"},
        ),
        poll_interval=0.5,
    )
    built = build_exporter(config)
    async with serving(config, built[0]) as http:
        # The server answers before any cycle has run.
        assert await http.get("/health") == (200, "ok\n")
        assert await http.get("/ready") == (503, "no data yet\n")
        status, body = await http.get("/leader")
        assert status == 200
        assert body.replace(" ", "") == '{"is_leader":true,"identity":""}'
        status, body = await http.get("/")
        assert status == 200
        assert name in body
        assert "pending" in body
        status, body = await http.get("/metrics")
        assert status == 200
        assert "kafka_lag_exporter_up 0" in body
        assert "kafka_consumergroup_group_lag" not in body

        async with running(config, built=built) as run:
            await run.fresh_snapshot(name)
            assert await http.get("/ready") == (200, "ok\n")
            assert await http.get("/health") == (200, "ok\n")
            status, body = await http.get("/")
            assert status == 200
            assert f"<td>{name}</td><td>ok</td>" in body
            status, body = await http.get("/metrics")
            assert status == 200
            lag_line = (
                f'kafka_consumergroup_group_lag{{client_id="",cluster_name="{name}",'
                f'consumer_id="",env="it",group="{group}",member_host="",partition="0",'
                f'topic="{topic}"}} 3'
            )
            assert lag_line in body.splitlines()
            assert "kafka_lag_exporter_up 1" in body.splitlines()
            requests = [
                line
                for line in body.splitlines()
                if line.startswith("klag_pipeline_kafka_requests_total{")
                and 'api="ListGroups"' in line
                and f'cluster_name="{name}"' in line
            ]
            assert requests
            assert (await http.get("/metrics", method="POST"))[0] == 405
            assert (await http.get("/nowhere"))[0] == 404
