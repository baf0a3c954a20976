"""Topic metadata cache and ListOffsets (earliest + latest) batched per partition leader.

Metadata is requested for the wanted topics only, with auto-creation off, so a topic that only
survives in old committed offsets is reported missing and never re-created. Entries are cached
for ``metadata.max.age.ms`` (default 60 s) and refreshed early when a ListOffsets answer says a
leader moved or a topic is unknown. Each refresh also reads the topics' ids (Metadata v10+) and
``cleanup.policy`` (one DescribeConfigs to the broker that answered), which tell the timestamp
cache when a sample stops being true (docs/time-lag.md#cache).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

from klag_pipeline.errors import KafkaError, KafkaProtocolError
from klag_pipeline.kafka.adapter.transport import Transport, chunked
from klag_pipeline.kafka.errors import (
    INVALID_TOPIC,
    STALE_LEADER,
    UNKNOWN_TOPIC_OR_PARTITION,
    error_name,
)
from klag_pipeline.kafka.port import WatermarkListing
from klag_pipeline.kafka.protocol import (
    DESCRIBE_CONFIGS,
    EARLIEST,
    LATEST,
    LIST_OFFSETS,
    METADATA,
    ApiSpec,
    MetadataResponse,
    decode_describe_configs,
    decode_list_offsets,
    decode_metadata,
    encode_describe_configs,
    encode_list_offsets,
    encode_metadata,
)
from klag_pipeline.model import Failure, TopicIdentity, TopicPartition, Watermarks

LIST_OFFSETS_PARTITIONS = 10_000
"""Partitions per ListOffsets request, so no single answer takes long to decode."""
METADATA_TOPICS = 1_000
"""Topics per Metadata request."""
DEFAULT_METADATA_MAX_AGE = 60.0
CLEANUP_POLICY = "cleanup.policy"
UNKNOWN_TOPIC = TopicIdentity(None, None)

_STAGE = "watermarks"


@dataclass(frozen=True, slots=True)
class _Topic:
    leaders: Mapping[int, int] | None  # partition → leader node; None: the topic does not exist
    fetched_at: float
    identity: TopicIdentity = UNKNOWN_TOPIC


class WatermarkOps:
    def __init__(self, transport: Transport, metadata_max_age: float | None = None) -> None:
        self._t = transport
        self._max_age = metadata_max_age or DEFAULT_METADATA_MAX_AGE
        self._topics: dict[str, _Topic] = {}
        self._sem = asyncio.Semaphore(max(1, transport.performance.max_concurrent_watermarks))

    # ------------------------------------------------------------------ metadata

    async def metadata(self, topics: Sequence[str] | None) -> tuple[MetadataResponse, int]:
        """One Metadata request (``None`` = all topics) to the first broker that answers."""
        last: KafkaError | None = None
        for node in self._t.nodes():
            try:
                version = await self._t.require(node, METADATA, partial(_too_old, node, METADATA))
                response = await self._t.call(
                    node,
                    METADATA,
                    version,
                    encode_metadata(version, topics),
                    partial(decode_metadata, version),
                )
            except KafkaError as exc:
                last = exc
                continue
            return response, node
        raise last or KafkaProtocolError("no broker to ask for metadata")

    async def _refresh(self, topics: Sequence[str], failures: list[Failure]) -> None:
        for chunk in chunked(sorted(topics), METADATA_TOPICS):
            try:
                reply = await self.metadata(list(chunk))
            except KafkaError as exc:
                failures.append(Failure(_STAGE, "metadata", str(exc)))
                for topic in chunk:
                    # Forget stale leaders; a topic with no entry is reported as a failure.
                    self._topics.pop(topic, None)
                continue
            response, node = reply
            policies = await self._compacted(node, [t.name for t in response.topics])
            now = time.monotonic()
            answered = set()
            for info in response.topics:
                answered.add(info.name)
                if info.error_code in (UNKNOWN_TOPIC_OR_PARTITION, INVALID_TOPIC):
                    self._topics[info.name] = _Topic(None, now)
                elif info.error_code:
                    self._topics.pop(info.name, None)
                    failures.append(
                        Failure(_STAGE, info.name, f"Metadata: {error_name(info.error_code)}")
                    )
                else:
                    leaders = {p.partition: p.leader for p in info.partitions}
                    identity = TopicIdentity(info.topic_id, policies.get(info.name))
                    self._topics[info.name] = _Topic(MappingProxyType(leaders), now, identity)
            for topic in set(chunk) - answered:
                self._topics[topic] = _Topic(None, now)

    async def _compacted(self, node: int, topics: Sequence[str]) -> dict[str, bool]:
        """Topic → whether its cleanup.policy includes ``compact``; topics whose policy could
        not be read (no DescribeConfigs permission, an old broker, an error) are left out and
        count as possibly compacted. Never a failure of the cycle: only the cache's trust in
        old samples depends on it."""
        if not topics:
            return {}
        try:
            version = await self._t.require(
                node, DESCRIBE_CONFIGS, partial(_too_old, node, DESCRIBE_CONFIGS)
            )
            response = await self._t.call(
                node,
                DESCRIBE_CONFIGS,
                version,
                encode_describe_configs(version, topics, [CLEANUP_POLICY]),
                partial(decode_describe_configs, version),
            )
        except KafkaError:
            return {}
        out: dict[str, bool] = {}
        for result in response.results:
            value = result.values.get(CLEANUP_POLICY)
            if result.error_code == 0 and value is not None:
                out[result.resource_name] = "compact" in value.split(",")
        return out

    # ------------------------------------------------------------------ ListOffsets

    async def list_watermarks(self, topics: Collection[str]) -> WatermarkListing:
        wanted = sorted(set(topics))
        failures: list[Failure] = []
        now = time.monotonic()
        stale = [
            t
            for t in wanted
            if t not in self._topics or now - self._topics[t].fetched_at > self._max_age
        ]
        if stale:
            await self._refresh(stale, failures)
        for gone in set(self._topics) - set(wanted):
            del self._topics[gone]

        earliest: dict[TopicPartition, int] = {}
        latest: dict[TopicPartition, int] = {}
        errors: dict[TopicPartition, str] = {}
        pending = self._plan(wanted)
        moved = await self._run(pending, earliest, latest, errors)
        if moved:
            # Leaders moved or topics vanished since the metadata was cached: refresh those
            # topics once and ask again for the partitions that failed.
            await self._refresh(sorted(moved), failures)
            retry = [tp for tp in self._plan(sorted(moved)) if tp not in latest]
            for tp in retry:
                errors.pop(tp, None)
            await self._run(retry, earliest, latest, errors)

        missing = frozenset(t for t in wanted if t in self._topics and not self._leaders(t))
        watermarks: dict[TopicPartition, Watermarks] = {}
        for tp in sorted(set(latest) | set(errors)):
            if tp.topic in missing:
                continue
            high = latest.get(tp)
            if high is None:
                failures.append(Failure(_STAGE, f"{tp.topic}-{tp.partition}", errors[tp]))
                continue
            watermarks[tp] = Watermarks(low=earliest.get(tp), high=high)
        if wanted and not watermarks and not missing and failures:
            raise KafkaError(f"no watermarks could be listed: {failures[0].error}")
        identities = {t: e.identity for t in wanted if (e := self._topics.get(t)) and e.leaders}
        return WatermarkListing(
            MappingProxyType(watermarks), missing, tuple(failures), MappingProxyType(identities)
        )

    def leaders(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Leader node of each partition from the metadata cache (filled by list_watermarks,
        which runs earlier in the same cycle); partitions with no known leader are left out."""
        out: dict[TopicPartition, int] = {}
        for tp in partitions:
            leaders = self._leaders(tp.topic)
            leader = -1 if leaders is None else leaders.get(tp.partition, -1)
            if leader >= 0:
                out[tp] = leader
        return out

    def _leaders(self, topic: str) -> Mapping[int, int] | None:
        entry = self._topics.get(topic)
        return None if entry is None else entry.leaders

    def _plan(self, topics: Sequence[str]) -> list[TopicPartition]:
        out: list[TopicPartition] = []
        for topic in topics:
            entry = self._topics.get(topic)
            if entry is None or entry.leaders is None:
                continue
            out.extend(TopicPartition(topic, p) for p in sorted(entry.leaders))
        return out

    async def _run(
        self,
        partitions: Sequence[TopicPartition],
        earliest: dict[TopicPartition, int],
        latest: dict[TopicPartition, int],
        errors: dict[TopicPartition, str],
    ) -> set[str]:
        """ListOffsets for ``partitions``; returns topics whose metadata proved stale."""
        by_leader: dict[int, list[TopicPartition]] = defaultdict(list)
        moved: set[str] = set()
        for tp in partitions:
            leaders = self._leaders(tp.topic)
            leader = -1 if leaders is None else leaders.get(tp.partition, -1)
            if leader < 0:
                errors[tp] = "no leader"
                moved.add(tp.topic)
            else:
                by_leader[leader].append(tp)
        # Earliest offsets are read (on every leader at once) before any latest offset: both only
        # grow, so low <= high holds for every partition, and a loss signal (committed < low)
        # never comes from a low read after the high it is compared with.
        for timestamp in (EARLIEST, LATEST):
            target = earliest if timestamp == EARLIEST else latest
            await asyncio.gather(
                *(
                    self._list_offsets(leader, chunk, timestamp, target, errors, moved)
                    for leader, tps in sorted(by_leader.items())
                    for chunk in chunked(tps, LIST_OFFSETS_PARTITIONS)
                )
            )
        return moved

    async def _list_offsets(
        self,
        node: int,
        partitions: Sequence[TopicPartition],
        timestamp: int,
        target: dict[TopicPartition, int],
        errors: dict[TopicPartition, str],
        moved: set[str],
    ) -> None:
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in partitions:
            by_topic[tp.topic].append(tp.partition)
        which = "earliest" if timestamp == EARLIEST else "latest"
        async with self._sem:
            try:
                version = await self._t.require(
                    node, LIST_OFFSETS, partial(_too_old, node, LIST_OFFSETS)
                )
                isolation = self._t.isolation_level if version >= 2 else 0
                response = await self._t.call(
                    node,
                    LIST_OFFSETS,
                    version,
                    encode_list_offsets(version, by_topic, timestamp, isolation),
                    partial(decode_list_offsets, version),
                )
            except KafkaError as exc:
                for tp in partitions:
                    errors.setdefault(tp, f"ListOffsets {which}: {exc}")
                moved.update(tp.topic for tp in partitions)
                return
        asked = set(partitions)
        for entry in response.partitions:
            tp = TopicPartition(entry.topic, entry.partition)
            if tp not in asked:
                continue
            asked.discard(tp)
            if entry.error_code == 0 and entry.offset >= 0:
                target[tp] = entry.offset
                continue
            name = error_name(entry.error_code) if entry.error_code else "no offset"
            if timestamp == LATEST or tp not in errors:
                errors[tp] = f"ListOffsets {which}: {name}"
            if entry.error_code in STALE_LEADER:
                moved.add(tp.topic)
        for tp in asked:
            errors.setdefault(tp, f"ListOffsets {which}: partition missing in answer")


def _too_old(node: int, spec: ApiSpec) -> KafkaProtocolError:
    return KafkaProtocolError(f"broker {node} supports no {spec.name} v{spec.min_version}+")
