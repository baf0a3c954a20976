"""Watermarks of every partition of every topic with a kept commit — read after the offsets, so
``high >= committed`` holds for every partition (lag cannot go negative through a race)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import MappingProxyType

from klag_pipeline.events import OffsetsFetched, WatermarksListed
from klag_pipeline.kafka.port import ClusterClient


class WatermarksStage:
    name = "watermarks"

    def __init__(
        self,
        client: ClusterClient,
        *,
        time_fn: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._time = time_fn
        self._monotonic = monotonic

    async def process(self, event: OffsetsFetched) -> WatermarksListed:
        started = self._monotonic()
        topics = {tp.topic for offsets in event.committed.values() for tp in offsets}
        if topics:
            listing = await self._client.list_watermarks(sorted(topics))
            watermarks, missing, failures = (
                listing.watermarks,
                listing.missing_topics,
                listing.failures,
            )
        else:
            watermarks, missing, failures = MappingProxyType({}), frozenset(), ()
        return WatermarksListed(
            offsets=event,
            watermarks=watermarks,
            missing_topics=missing,
            failures=failures,
            kafka_seconds=self._monotonic() - started,
            observed_at=self._time(),
        )
