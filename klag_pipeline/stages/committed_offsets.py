"""Committed offsets of every kept group, topic filter applied. Runs before watermarks."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from klag_pipeline.events import GroupsDiscovered, OffsetsFetched
from klag_pipeline.kafka.port import ClusterClient
from klag_pipeline.model import TopicPartition
from klag_pipeline.pipeline.clock import SYSTEM_CLOCK, TimeSource
from klag_pipeline.pipeline.paced import paced
from klag_pipeline.settings.schema import ClusterSettings


class CommittedOffsetsStage:
    name = "committed_offsets"

    def __init__(
        self,
        client: ClusterClient,
        cluster: ClusterSettings,
        *,
        clock: TimeSource = SYSTEM_CLOCK,
    ) -> None:
        self._client = client
        self._cluster = cluster
        self._clock = clock

    async def process(self, event: GroupsDiscovered) -> OffsetsFetched:
        started = self._clock.monotonic()
        groups = [d.as_listed() for d in event.groups.values()]
        fetched = await self._client.fetch_committed_offsets(groups) if groups else None
        committed: dict[str, Mapping[TopicPartition, int]] = {}
        if fetched is not None:
            keeps_topic = self._cluster.keeps_topic
            topic_kept: dict[str, bool] = {}
            async for group_id, offsets in paced(fetched.offsets.items()):
                if group_id not in event.groups:
                    continue
                kept = {}
                for tp, offset in offsets.items():
                    keep = topic_kept.get(tp.topic)
                    if keep is None:
                        keep = topic_kept[tp.topic] = keeps_topic(tp.topic)
                    if keep and offset >= 0:
                        kept[tp] = offset
                committed[group_id] = MappingProxyType(kept)
        answered = fetched.offsets if fetched is not None else {}
        return OffsetsFetched(
            discovered=event,
            committed=MappingProxyType(committed),
            failures=fetched.failures if fetched is not None else (),
            kafka_seconds=self._clock.monotonic() - started,
            observed_at=self._clock.time(),
            unanswered=frozenset(g.group_id for g in groups if g.group_id not in answered),
        )
