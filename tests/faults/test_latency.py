"""A slow broker (every response delivered seconds late): cycles stay bounded by the configured
timeouts, and ``/metrics`` and ``/health`` keep answering at once with the last good values."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from klag_pipeline import __version__
from klag_pipeline.app import Exporter
from klag_pipeline.http import build_app, start_server
from klag_pipeline.settings.redaction import redact_settings
from klag_pipeline.settings.schema import Settings
from tests.faults.broker import FaultsBroker
from tests.faults.proxy import FaultProxy
from tests.faults.support import check_series, create_truth, fault_settings, missing_series
from tests.integration.pipeline_support import (
    Running,
    build_exporter,
    parse_exposition,
    running,
    self_metric,
)
from tests.support.kafka import KafkaTestClient

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]

POLL = 3.0
KAFKA_TIMEOUT = 2.5
ANSWER_WITHIN = 1.0
"""Generous bound for one /metrics or /health answer while cycles are slow (normally ~ms)."""


def completed_cycles(exporter: Exporter, name: str) -> float:
    return sum(
        value
        for labels, value in self_metric(exporter, "klag_pipeline_cycles_total").items()
        if ("cluster_name", name) in labels
    )


async def watch(
    run: Running,
    session: aiohttp.ClientSession,
    base: str,
    name: str,
    seconds: float,
    check: Callable[[str], None],
) -> list[float]:
    """For ``seconds``: every 0.25 s GET /health and /metrics (each must answer 200 within
    ANSWER_WITHIN, /metrics passing ``check``), and note when a cycle (ok or failed) ends.
    Returns the monotonic times of cycle ends."""
    ends: list[float] = []
    seen = completed_cycles(run.exporter, name)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/health", "/metrics"):
            began = time.monotonic()
            async with asyncio.timeout(10), session.get(base + path) as response:
                body = await response.text()
            took = time.monotonic() - began
            assert response.status == 200, (path, response.status, body[:200])
            assert took < ANSWER_WITHIN, f"{path} took {took:.2f}s during slow cycles"
            if path == "/metrics":
                check(body)
        now = completed_cycles(run.exporter, name)
        if now > seen:
            ends.append(time.monotonic())
            seen = now
        await asyncio.sleep(0.25)
    assert not run.task.done()
    return ends


def bounded(since: float, ends: list[float], until: float) -> None:
    """Cycles kept ending: a cycle lasts at most POLL (its deadline) and ticks come every POLL,
    so no stretch of more than 2 x POLL (+1 s of slack) of the watch passes without one."""
    gaps = [b - a for a, b in itertools.pairwise([since, *ends, until])]
    assert max(gaps) <= 2 * POLL + 1.0, gaps


async def test_slow_broker_cycles_stay_bounded_and_http_answers_at_once(
    faults_broker: FaultsBroker,
    fault_proxy: FaultProxy,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
) -> None:
    state = await create_truth(truth, [unique("lt")], [unique("gl")], partitions=2)
    name = "slow"
    config = fault_settings(
        name,
        f"127.0.0.1:{faults_broker.proxy_port}",
        state,
        poll_interval=POLL,
        kafka_timeout=KAFKA_TIMEOUT,
        staleness_threshold=120.0,
    )
    exporter, recorder = build_exporter(config)
    began = time.time()

    def exact(body: str) -> None:
        series = parse_exposition(body)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()

    async with (
        served(config, exporter) as base,
        aiohttp.ClientSession() as session,
        running(config, built=(exporter, recorder)) as run,
    ):
        await run.fresh_snapshot(name, within=30)
        good_cycles = len(run.recorder.snapshots(name))

        # Each answer 2 s late: every request gets its answer within kafka_timeout, but a cycle
        # needs several round trips in a row, so the poll_interval deadline ends it.
        fault_proxy.slow(2.0)
        since = time.monotonic()
        bounded(since, await watch(run, session, base, name, 12.0, exact), time.monotonic())
        # Each answer 4 s late: every request ends at kafka_timeout.
        fault_proxy.slow(4.0)
        since = time.monotonic()
        bounded(since, await watch(run, session, base, name, 9.0, exact), time.monotonic())
        requests = self_metric(exporter, "klag_pipeline_kafka_requests_total")
        timeouts = sum(v for labels, v in requests.items() if ("outcome", "timeout") in labels)
        assert timeouts >= 1
        # No slow cycle produced a snapshot: what /metrics showed was the last good one.
        assert len(run.recorder.snapshots(name)) == good_cycles

        fault_proxy.behave()
        resumed = time.time()
        snapshot = await run.recorder.wait_snapshot(
            name, lambda s: s.error_count == 0, after=resumed, within=30
        )
        await run.wait_rendered(snapshot)
        async with asyncio.timeout(10), session.get(base + "/metrics") as response:
            exact(await response.text())


@contextlib.asynccontextmanager
async def served(config: Settings, exporter: Exporter) -> AsyncIterator[str]:
    """The exporter's real HTTP app on a free loopback port; yields its base URL."""
    app = build_app(
        exporter.prometheus,
        exporter.status,
        version=__version__,
        settings_view=redact_settings(config),
    )
    server = await start_server(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.cleanup()
