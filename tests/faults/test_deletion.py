"""Topics and groups deleted while the exporter collects: between two cycles, and in the middle
of one (held after the committed offsets were read, before watermarks; or after watermarks,
before the timestamp Fetch). Never a crash, never a re-created topic, and no series of the
deleted topic or group after the next successful cycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import pytest

from klag_pipeline.kafka.port import ClusterClient, TimestampListing, WatermarkListing
from klag_pipeline.model import TopicPartition
from tests.faults.broker import FaultsBroker
from tests.faults.support import check_series, create_truth, fault_settings, missing_series
from tests.integration.pipeline_support import WrappedClient, mentioning, running, scrape, wrapping
from tests.support.kafka import KafkaTestClient

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


class HeldAt(WrappedClient):
    """Holds the cycle at ``list_watermarks`` or ``sample_timestamps`` while ``gate`` is clear."""

    def __init__(self, inner: ClusterClient, where: str) -> None:
        super().__init__(inner)
        self.where = where
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = asyncio.Event()

    async def _hold(self, where: str) -> None:
        if where == self.where and not self.gate.is_set():
            self.held.set()
            await self.gate.wait()

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        await self._hold("watermarks")
        return await super().list_watermarks(topics)

    async def sample_timestamps(
        self, wanted: Mapping[TopicPartition, Collection[int]]
    ) -> TimestampListing:
        await self._hold("timestamps")
        return await super().sample_timestamps(wanted)


@pytest.mark.parametrize("when", ["between_cycles", "before_watermarks", "before_timestamps"])
async def test_deleted_topic_and_group_leave_no_series_and_are_never_recreated(
    faults_broker: FaultsBroker,
    truth: KafkaTestClient,
    unique: Callable[[str], str],
    when: str,
) -> None:
    doomed_topic, kept_topic = unique("dt"), unique("kt")
    doomed_group, kept_group = unique("dg"), unique("kg")
    state = await create_truth(truth, [kept_topic, doomed_topic], [kept_group, doomed_group])
    assert any(tp.topic == doomed_topic for tp in state.commits[doomed_group])
    name = f"deleted-{when}"
    config = fault_settings(name, faults_broker.bootstrap, state, poll_interval=0.3, cache_ttl=0.0)
    where = "timestamps" if when == "before_timestamps" else "watermarks"
    clients: list[HeldAt] = []

    def held(real: Any) -> HeldAt:
        clients.append(HeldAt(real, where))
        return clients[-1]

    async with running(config, client_factory=wrapping(held)) as run:
        began = time.time()
        await run.fresh_snapshot(name)
        series = scrape(run.exporter)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()
        (client,) = clients
        if when != "between_cycles":
            client.gate.clear()
            async with asyncio.timeout(10):
                await client.held.wait()
        await truth.delete_group(doomed_group)
        await truth.delete_topic(doomed_topic)
        client.gate.set()
        deleted = time.time()

        # The truth without them: every series left must still be exact, and complete.
        del state.commits[doomed_group]
        for group in state.commits.values():
            for tp in [tp for tp in group if tp.topic == doomed_topic]:
                del group[tp]
        for tp in [tp for tp in state.high if tp.topic == doomed_topic]:
            del state.high[tp]
        del state.topics[doomed_topic]
        snapshot = await run.recorder.wait_snapshot(name, after=deleted, within=30)
        await run.wait_rendered(snapshot)
        series = scrape(run.exporter)
        assert not mentioning(series, "topic", doomed_topic)
        assert not mentioning(series, "group", doomed_group)
        assert check_series(series, state, name, oldest_observation=began) == []
        assert missing_series(series, state, name) == set()
        # More cycles ask about the group's topics: the deleted one is never re-created.
        await run.cycles(5, within=30)
        assert not run.task.done()
    with pytest.raises(AssertionError, match="does not exist"):
        await truth.watermarks(doomed_topic)
    assert doomed_group not in await truth.groups()
