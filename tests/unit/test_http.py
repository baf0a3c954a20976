"""The HTTP endpoints (SPEC §7): a real aiohttp server on 127.0.0.1:0 and a real HTTP client."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from klag_pipeline.http import HttpServer, build_app, start_server
from klag_pipeline.model import GroupState
from klag_pipeline.pipeline.clock import FakeClock
from klag_pipeline.sinks.prometheus import PrometheusSink
from klag_pipeline.snapshot import ClusterSnapshot, GroupSummary, PartitionRow, SinkUpdate
from klag_pipeline.status import StatusBoard
from klag_pipeline.telemetry.self_metrics import SelfMetrics

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PLAIN = {"Accept-Encoding": "identity"}  # aiohttp's client asks for gzip unless told otherwise


def snapshot(
    cluster: str, group: str, lag: int, labels: Mapping[str, str] | None = None
) -> ClusterSnapshot:
    row = PartitionRow(
        group=group,
        topic="orders",
        partition=0,
        member_host="",
        consumer_id="",
        client_id="",
        committed=100 - lag,
        low=0,
        high=100,
        lag=lag,
        lag_seconds=None,
        compaction_detected=False,
        data_loss_detected=False,
        messages_lost=0,
        retention_margin=100 - lag,
        lag_retention_ratio=float(lag),
    )
    summary = GroupSummary(
        group, GroupState.EMPTY, "consumer", "classic", 0, lag, None, lag, {"orders": lag}
    )
    return ClusterSnapshot(
        cluster=cluster,
        labels=labels or {},
        cycle=1,
        observed_at=1_700_000_000.0,
        started_at=1_700_000_000.0,
        duration_seconds=0.1,
        poll_time_ms=50.0,
        timestamp_sampling=False,
        partitions=(),
        groups=(summary,),
        rows=(row,),
        compaction_detected_count=0,
        data_loss_partition_count=0,
        error_count=0,
    )


@dataclass
class Exporter:
    sink: PrometheusSink
    status: StatusBoard
    clock: FakeClock
    server: HttpServer
    session: aiohttp.ClientSession

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        async with self.session.get(self.url(path), headers=headers) as response:
            return response.status, await response.text()


SETTINGS_VIEW = {
    "exporter": {"poll_interval": 30.0},
    "clusters": [{"name": "<prod>", "sasl.password": "***"}],
}


@pytest.fixture
async def exporter() -> AsyncIterator[Exporter]:
    clock = FakeClock()
    status = StatusBoard(
        ["<prod>", "dr"],
        staleness_threshold=90.0,
        poll_interval=30.0,
        clock=clock,
        identity="pod-7",
    )
    sink = PrometheusSink("partition", status, SelfMetrics())
    app = build_app(sink, status, version="1.2.3", settings_view=SETTINGS_VIEW)
    server = await start_server(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Exporter(sink, status, clock, server, session)
    finally:
        await server.cleanup()


async def test_metrics_before_any_snapshot(exporter: Exporter) -> None:
    async with exporter.session.get(exporter.url("/metrics"), headers=PLAIN) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "Content-Encoding" not in response.headers
        text = await response.text()
    names = {family.name for family in parse_text(text)}
    assert "kafka_lag_exporter_up" in names
    assert not {name for name in names if name.startswith("kafka_")} - {"kafka_lag_exporter_up"}


async def test_metrics_text_openmetrics_and_gzip(exporter: Exporter) -> None:
    exporter.sink.apply(snapshot("dr", "billing", 7, {"env": "dr"}))
    status, plain = await exporter.get("/metrics", headers=PLAIN)
    assert status == 200
    lag = {f.name: f for f in parse_text(plain)}["kafka_consumergroup_group_lag"]
    assert [(s.labels["group"], s.labels["env"], s.value) for s in lag.samples] == [
        ("billing", "dr", 7)
    ]

    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "identity"}
    async with exporter.session.get(exporter.url("/metrics"), headers=headers) as response:
        assert response.headers["Content-Type"] == (
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        )
        openmetrics = await response.text()
    assert openmetrics.endswith("# EOF\n")
    om_lag = {f.name: f for f in parse_openmetrics(openmetrics)}["kafka_consumergroup_group_lag"]
    assert om_lag.samples == lag.samples

    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.get(exporter.url("/metrics"), headers={"Accept-Encoding": "gzip"}) as response,
    ):
        assert response.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in response.headers["Vary"]
        compressed = await response.read()
    assert gzip.decompress(compressed).decode() == plain
    # aiohttp's own client (which stops after one gzip member) decodes it too.
    status, decoded = await exporter.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert decoded == plain


async def test_head_metrics(exporter: Exporter) -> None:
    exporter.sink.apply(snapshot("dr", "billing", 7))
    _, body = await exporter.get("/metrics", headers=PLAIN)
    async with exporter.session.head(exporter.url("/metrics"), headers=PLAIN) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) == len(body.encode())
        assert await response.read() == b""


async def test_health(exporter: Exporter) -> None:
    assert await exporter.get("/health") == (200, "ok\n")
    exporter.status.cycle_attempted("<prod>")
    exporter.clock.advance(91)
    exporter.status.cycle_attempted("<prod>")
    assert await exporter.get("/health") == (503, "cluster dr: no collection attempt for 91s\n")
    exporter.status.cycle_attempted("dr")
    exporter.status.loop_died("dr", "bug")
    assert await exporter.get("/health") == (503, "cluster dr: collection loop died: bug\n")


async def test_ready(exporter: Exporter) -> None:
    assert await exporter.get("/ready") == (503, "no data yet\n")
    exporter.status.cycle_attempted("dr")
    exporter.status.cycle_succeeded("dr", 0.1)
    assert await exporter.get("/ready") == (200, "ok\n")
    exporter.status.set_leader(False)
    assert await exporter.get("/ready") == (503, "standby\n")
    exporter.status.set_leader(True)
    exporter.clock.advance(91)
    assert await exporter.get("/ready") == (503, "all clusters stale\n")


async def test_leader(exporter: Exporter) -> None:
    async with exporter.session.get(exporter.url("/leader")) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {"is_leader": True, "identity": "pod-7"}
    exporter.status.set_leader(False)
    async with exporter.session.get(exporter.url("/leader")) as response:
        assert await response.json() == {"is_leader": False, "identity": "pod-7"}


async def test_index_page_escapes_everything(exporter: Exporter) -> None:
    exporter.status.cycle_attempted("dr")
    exporter.status.cycle_failed("dr", "auth failed: <script>alert(1)</script>")
    exporter.status.cycle_attempted("<prod>")
    exporter.status.cycle_succeeded("<prod>", 0.25)
    async with exporter.session.get(exporter.url("/")) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert "klag-pipeline 1.2.3" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>&lt;prod&gt;</td><td>ok</td><td>2023-11-14T22:13:20Z</td><td>0.0s ago</td>" in page
    assert "<td>dr</td><td>failing</td><td>-</td><td>never</td>" in page
    assert "&quot;sasl.password&quot;: &quot;***&quot;" in page
    for path in ("/metrics", "/health", "/ready", "/leader"):
        assert f'href="{path}"' in page


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/metrics"), ("DELETE", "/health"), ("PUT", "/")]
)
async def test_other_methods_are_405(exporter: Exporter, method: str, path: str) -> None:
    async with exporter.session.request(method, exporter.url(path)) as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]


async def test_unknown_path_is_404(exporter: Exporter) -> None:
    assert (await exporter.get("/metricz"))[0] == 404
    assert (await exporter.get("/metrics/extra"))[0] == 404


class BlockingLabels(Mapping[str, str]):
    """Custom labels whose first read blocks the render thread until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getitem__(self, key: str) -> str:
        if key != "env":
            raise KeyError(key)
        return "new"

    def __iter__(self) -> Iterator[str]:
        self.entered.set()
        if not self.release.wait(timeout=10):
            raise TimeoutError("the test never released the render")
        return iter(["env"])

    def __len__(self) -> int:
        return 1


async def wait_applied(sink: PrometheusSink, count: int) -> None:
    async with asyncio.timeout(5):
        await sink.wait_applied(count)


async def test_scrape_during_a_pending_update_returns_the_previous_body(exporter: Exporter) -> None:
    queue: asyncio.Queue[SinkUpdate | None] = asyncio.Queue()

    async def inbox() -> AsyncIterator[SinkUpdate]:
        while (update := await queue.get()) is not None:
            yield update

    blocking = BlockingLabels()
    async with asyncio.timeout(20), asyncio.TaskGroup() as tasks:
        tasks.create_task(exporter.sink.run(inbox()))
        queue.put_nowait(snapshot("dr", "old-group", 1))
        await wait_applied(exporter.sink, 1)
        queue.put_nowait(snapshot("dr", "new-group", 2, blocking))
        assert await asyncio.to_thread(blocking.entered.wait, 5)
        try:
            # The update is mid-render: the scrape must answer now, from the previous body.
            async with asyncio.timeout(2):
                status, body = await exporter.get("/metrics", headers=PLAIN)
            assert status == 200
            assert 'group="old-group"' in body
            assert "new-group" not in body
            assert exporter.sink.applied == 1
        finally:
            blocking.release.set()
        await wait_applied(exporter.sink, 2)
        _, body = await exporter.get("/metrics", headers=PLAIN)
        assert 'env="new",group="new-group"' in body
        assert "old-group" not in body
        queue.put_nowait(None)


async def test_middlewares_wrap_every_route() -> None:
    clock = FakeClock()
    status = StatusBoard(["a"], staleness_threshold=1, poll_interval=1, clock=clock)

    @web.middleware
    async def deny(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Authorization") != "let-me-in":
            raise web.HTTPUnauthorized()
        return await handler(request)

    app = build_app(
        PrometheusSink("topic", status, SelfMetrics()),
        status,
        version="0",
        settings_view={},
        middlewares=[deny],
    )
    server = await start_server(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.port}/metrics"
            async with session.get(url) as response:
                assert response.status == 401
            async with session.get(url, headers={"Authorization": "let-me-in"}) as response:
                assert response.status == 200
    finally:
        await server.cleanup()
