"""The first scrape (docs/pipeline.md, "The first scrape"): a cluster's first cycle publishes its
offsets to ``/metrics`` before its timestamp pass ends, as one partial snapshot; the complete
snapshot of the same cycle replaces it. Real broker; the timestamp pass is held open by a client
wrapper (an event, not a delay), so every state is observed deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping

import aiohttp
import pytest

from klag_pipeline import __version__
from klag_pipeline.app import Exporter
from klag_pipeline.http import build_app, start_server
from klag_pipeline.kafka.port import ClusterClient, TimestampListing
from klag_pipeline.model import TopicPartition
from klag_pipeline.settings.redaction import redact_settings
from klag_pipeline.settings.schema import Settings
from tests.integration.pipeline_support import (
    Running,
    SeriesKey,
    WrappedClient,
    build_exporter,
    cluster,
    exactly,
    hold,
    parse_exposition,
    running,
    scrape,
    settings,
    wrapping,
)
from tests.support.kafka import KafkaTestClient, Rec

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

CLUSTER = "first"
HOUR_MS = 3_600_000
TIME_LAG_FAMILIES = {
    "kafka_consumergroup_group_lag_seconds",
    "kafka_consumergroup_group_max_lag_seconds",
}
CYCLE_FAMILIES = {
    "kafka_consumergroup_poll_time_ms",
    "kafka_lag_exporter_scrape_duration_seconds",
    "kafka_lag_exporter_compaction_detected_total",
}


class HeldTimestamps(WrappedClient):
    """Holds ``sample_timestamps`` (the timestamp pass) while ``gate`` is clear; ``held`` is set
    while a call waits there."""

    def __init__(self, inner: ClusterClient) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.held = asyncio.Event()

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        await hold(self.gate, self.held)
        return await super().sample_timestamps(wanted)


def holding() -> tuple[list[HeldTimestamps], Callable[[ClusterClient], ClusterClient]]:
    made: list[HeldTimestamps] = []

    def wrap(inner: ClusterClient) -> ClusterClient:
        client = HeldTimestamps(inner)
        made.append(client)
        return client

    return made, wrap


def families(series: Mapping[SeriesKey, float]) -> set[str]:
    return {name for name, _ in series}


def values(series: Mapping[SeriesKey, float], family: str) -> dict[tuple[str, str, str], float]:
    """(group, topic, partition) → value of a per-partition family."""
    out = {}
    for (name, labels), value in series.items():
        if name == family:
            got = dict(labels)
            out[(got["group"], got["topic"], got["partition"])] = value
    return out


def early_published(exporter: Exporter) -> int:
    (pipeline,) = exporter.pipelines
    assert pipeline.early is not None
    return pipeline.early.published


async def until(event: asyncio.Event, what: str, within: float = 30.0) -> None:
    try:
        async with asyncio.timeout(within):
            await event.wait()
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {within:g}s") from None


@contextlib.asynccontextmanager
async def served(exporter: Exporter) -> AsyncIterator[str]:
    """The exporter's real HTTP app on a free loopback port; yields its base URL."""
    app = build_app(
        exporter.prometheus,
        exporter.status,
        version=__version__,
        settings_view=redact_settings(exporter.settings),
    )
    server = await start_server(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.cleanup()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with asyncio.timeout(10), session.get(url) as response:
        return response.status, await response.text()


async def applied(run: Running, count: int, what: str, within: float = 30.0) -> None:
    try:
        async with asyncio.timeout(within):
            await run.exporter.prometheus.wait_applied(count)
    except TimeoutError:
        raise AssertionError(f"{what} not applied within {within:g}s") from None


async def test_first_scrape_has_exact_offsets_and_no_time_lag_until_the_cycle_completes(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("t")
    await kafka.create_topic(topic, partitions=2)
    old = int(time.time() * 1000) - HOUR_MS  # every record an hour old: time lag ≥ 3,600 s
    for partition in (0, 1):
        await kafka.produce(
            topic, [Rec(b"x", partition=partition, timestamp_ms=old + i) for i in range(10)]
        )
    lagging, caught_up = unique("lagging"), unique("caught-up")
    commits = {
        lagging: {TopicPartition(topic, 0): 2, TopicPartition(topic, 1): 7},
        caught_up: {TopicPartition(topic, 0): 10, TopicPartition(topic, 1): 10},
    }
    for group, offsets in commits.items():
        await kafka.commit(group, offsets)
    marks = await kafka.watermarks(topic)
    expected_lag = {
        (group, tp.topic, str(tp.partition)): float(marks[tp.partition][1] - offset)
        for group, offsets in commits.items()
        for tp, offset in offsets.items()
    }
    config = settings(
        cluster(CLUSTER, kafka_bootstrap, groups=[exactly(lagging, caught_up)]),
        poll_interval=30.0,  # one cycle for the whole test: the held pass stays in its deadline
    )
    made, wrap = holding()
    built = build_exporter(config, client_factory=wrapping(wrap))
    async with (
        served(built[0]) as base,
        aiohttp.ClientSession() as session,
        running(config, built=built) as run,
    ):
        (client,) = made
        status = run.exporter.status
        assert await get(session, f"{base}/ready") == (503, "no data yet\n")

        # Cycle 1's timestamp pass is held: /metrics has its offsets already.
        await until(client.held, "the first timestamp pass")
        await applied(run, 1, "the early offsets")
        code, body = await get(session, f"{base}/metrics")
        first = parse_exposition(body)
        assert code == 200
        assert first == scrape(run.exporter)
        assert values(first, "kafka_consumergroup_group_lag") == expected_lag
        assert values(first, "kafka_consumergroup_group_offset") == {
            (g, tp.topic, str(tp.partition)): float(o)
            for g, offsets in commits.items()
            for tp, o in offsets.items()
        }
        assert "kafka_consumergroup_group_max_lag" in families(first)
        assert "kafka_partition_latest_offset" in families(first)
        assert "kafka_lag_exporter_last_update_timestamp_seconds" in families(first)
        # What only the finished cycle knows is absent, never 0 or a stale value.
        assert not families(first) & (TIME_LAG_FAMILIES | CYCLE_FAMILIES)
        # Ready (its data is in /metrics), but not a cycle; the other sinks saw nothing.
        assert await get(session, f"{base}/ready") == (200, "ok\n")
        (board,) = status.snapshot()
        assert (board.successes, board.state) == (0, "pending")
        assert run.recorder.snapshots() == []
        assert run.exporter.snapshot_store.get(CLUSTER) is None  # what /api/v1 and / show
        assert early_published(run.exporter) == 1

        client.gate.set()
        complete = await run.recorder.wait_snapshot(CLUSTER)
        await run.wait_rendered(complete)
        second = scrape(run.exporter)
        assert not complete.partial
        assert complete.cycle == 1  # the same cycle: its offsets are the first scrape's
        assert values(second, "kafka_consumergroup_group_lag") == expected_lag
        assert families(second) >= TIME_LAG_FAMILIES | CYCLE_FAMILIES
        time_lag = values(second, "kafka_consumergroup_group_lag_seconds")
        assert set(time_lag) == set(expected_lag)
        for row, lag in expected_lag.items():
            assert (time_lag[row] >= HOUR_MS / 1000 - 1) if lag else (time_lag[row] == 0.0)
        (board,) = status.snapshot()
        assert board.successes == 1
        # Only the complete snapshot reached the other sinks.
        assert [s.partial for s in run.recorder.snapshots()] == [False]


async def one_group(
    kafka: KafkaTestClient,
    bootstrap: str,
    unique: Callable[[str], str],
    *,
    records: int,
    committed: int,
) -> tuple[str, str, Settings]:
    """A one-partition topic of ``records`` records, a group committed at ``committed``, and
    settings watching exactly that group every second: ``(topic, group, settings)``."""
    topic, group = unique("t"), unique("g")
    await kafka.create_topic(topic, partitions=1)
    await kafka.produce(topic, [Rec(b"x") for _ in range(records)])
    await kafka.commit(group, {TopicPartition(topic, 0): committed})
    config = settings(cluster(CLUSTER, bootstrap, groups=[exactly(group)]), poll_interval=1)
    return topic, group, config


async def test_no_early_publication_once_a_cycle_completed(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group, config = await one_group(kafka, kafka_bootstrap, unique, records=5, committed=1)
    made, wrap = holding()
    async with running(config, client_factory=wrapping(wrap)) as run:
        (client,) = made
        client.gate.set()
        complete = await run.recorder.wait_snapshot(CLUSTER)
        await run.wait_rendered(complete)
        assert early_published(run.exporter) == 1
        shown = run.exporter.prometheus.applied

        # A later cycle's timestamp pass is held (a new commit: a cache miss to read): nothing
        # is published early any more, and /metrics keeps the complete snapshot's time lag.
        client.gate.clear()
        await kafka.commit(group, {TopicPartition(topic, 0): 2})
        await until(client.held, "a later timestamp pass")
        assert early_published(run.exporter) == 1
        assert run.exporter.prometheus.applied == shown
        assert families(scrape(run.exporter)) >= TIME_LAG_FAMILIES
        client.gate.set()


async def test_no_early_publication_without_a_lagging_commit(
    kafka: KafkaTestClient, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    # Caught up: the timestamp pass has nothing to read.
    *_, config = await one_group(kafka, kafka_bootstrap, unique, records=3, committed=3)
    made, wrap = holding()
    async with running(config, client_factory=wrapping(wrap)) as run:
        made[0].gate.set()
        complete = await run.recorder.wait_snapshot(CLUSTER)
        await run.wait_rendered(complete)
        assert early_published(run.exporter) == 0
        assert families(scrape(run.exporter)) >= {"kafka_consumergroup_group_lag_seconds"}
