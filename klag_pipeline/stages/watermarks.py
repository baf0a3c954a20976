"""Watermarks of every partition of every topic with a kept commit — read after the offsets, so
``high >= committed`` holds for every partition (lag cannot go negative through a race).

The log start is read after the commit too, so ``committed < low`` alone could be a consumer that
moved past a range retention deleted between the two reads. Such a candidate loss is confirmed
by reading the group's committed offset again, now after the log start: only a commit still below
it is a loss (the consumer is behind a log start that existed before its commit was read). The
second read's offset replaces the first for that partition, so every stage after this one sees
one consistent value. A candidate whose second read gets no answer claims no loss this cycle.
Extra requests happen only in cycles with candidates: one OffsetFetch per coordinator involved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from klag_pipeline.errors import KafkaError
from klag_pipeline.events import OffsetsFetched, WatermarksListed
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import Failure, TopicPartition, Watermarks
from klag_pipeline.pipeline.clock import SYSTEM_CLOCK, TimeSource


class WatermarksStage:
    name = "watermarks"

    def __init__(
        self,
        client: ClusterClient,
        *,
        clock: TimeSource = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._clock = clock

    async def process(self, event: OffsetsFetched) -> WatermarksListed:
        started = self._clock.monotonic()
        topics = {tp.topic for offsets in event.committed.values() for tp in offsets}
        topics.update(event.other_topics)
        if topics:
            listing = await self._client.list_watermarks(sorted(topics))
            watermarks, missing, failures = (
                listing.watermarks,
                listing.missing_topics,
                listing.failures,
            )
            identities = listing.topics
        else:
            watermarks, missing, failures = MappingProxyType({}), frozenset(), ()
            identities = MappingProxyType({})
        offsets, unconfirmed, confirm_failures = await self._confirm_losses(event, watermarks)
        return WatermarksListed(
            offsets=offsets,
            watermarks=watermarks,
            missing_topics=missing,
            failures=failures + confirm_failures,
            kafka_seconds=self._clock.monotonic() - started,
            observed_at=self._clock.time(),
            loss_unconfirmed=unconfirmed,
            topics=identities,
        )

    async def _confirm_losses(
        self, event: OffsetsFetched, watermarks: Mapping[TopicPartition, Watermarks]
    ) -> tuple[OffsetsFetched, frozenset[tuple[str, TopicPartition]], tuple[Failure, ...]]:
        candidates: dict[str, dict[TopicPartition, int]] = {}
        for group, offsets in event.committed.items():
            for tp, offset in offsets.items():
                marks = watermarks.get(tp)
                if marks is not None and marks.low is not None and offset < marks.low:
                    candidates.setdefault(group, {})[tp] = offset
        if not candidates:
            return event, frozenset(), ()
        described = event.discovered.groups
        groups = [d.as_listed() for group_id, d in described.items() if group_id in candidates]
        again: Mapping[str, Mapping[TopicPartition, int]] = {}
        failures: tuple[Failure, ...] = ()
        if groups:
            try:
                second = await self._client.fetch_committed_offsets(groups)
            except KafkaError as exc:
                failures = (Failure(self.name, "committed offsets", f"loss check: {exc}"),)
            else:
                again, failures = second.offsets, second.failures
        committed: dict[str, Mapping[TopicPartition, int]] = dict(event.committed)
        unconfirmed: set[tuple[str, TopicPartition]] = set()
        for group, suspects in candidates.items():
            reread = again.get(group, {})
            updated = dict(committed[group])
            for tp in suspects:
                second_read = reread.get(tp)
                if second_read is None or second_read < 0:
                    unconfirmed.add((group, tp))
                else:
                    updated[tp] = second_read
            committed[group] = MappingProxyType(updated)
        confirmed = replace(event, committed=MappingProxyType(committed))
        return confirmed, frozenset(unconfirmed), failures
