"""Committed offsets: OffsetFetch straight to each group's coordinator, many groups per request.

Chunks are packed by how many partitions each group committed last cycle, so one answer stays
near :data:`OFFSET_FETCH_PARTITION_BUDGET` partitions. Brokers without OffsetFetch v8 get one
request per group.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import partial
from types import MappingProxyType

from klag_pipeline.errors import KafkaError, KafkaProtocolError
from klag_pipeline.kafka.adapter.coordinators import Coordinators, Round
from klag_pipeline.kafka.adapter.transport import Transport
from klag_pipeline.kafka.errors import COORDINATOR_MOVED, GROUP_ID_NOT_FOUND, error_name
from klag_pipeline.kafka.port import CommittedOffsets
from klag_pipeline.kafka.protocol import (
    OFFSET_FETCH,
    OFFSET_FETCH_SINGLE,
    GroupOffsets,
    decode_offset_fetch,
    encode_offset_fetch,
)
from klag_pipeline.model import Failure, ListedGroup, TopicPartition
from klag_pipeline.pipeline.paced import paced

OFFSET_FETCH_MAX_GROUPS = 10_000
OFFSET_FETCH_PARTITION_BUDGET = 100_000
"""Committed partitions (as seen last cycle) per OffsetFetch response: ~3 MB of answer, decoded
off the event loop."""

_OFFSETS = "committed_offsets"

_Out = dict[str, Mapping[TopicPartition, int]]


class OffsetFetcher:
    def __init__(
        self, transport: Transport, semaphore: asyncio.Semaphore, coordinators: Coordinators
    ) -> None:
        self._t = transport
        self._sem = semaphore
        self._coordinators = coordinators
        self._partition_counts: dict[str, int] = {}

    async def fetch(self, groups: Sequence[ListedGroup]) -> CommittedOffsets:
        # Forget groups no longer asked for. Done first: the rounds below only count the
        # groups asked for, so the table ends the same as pruning afterwards would leave it.
        requested = {g.group_id for g in groups}
        self._partition_counts = {g: n for g, n in self._partition_counts.items() if g in requested}
        out: _Out = {}

        async def run(batch: Sequence[ListedGroup], rnd: Round) -> None:
            await self._round(batch, out, rnd)

        merged = await self._coordinators.with_retry(_OFFSETS, groups, run)
        return CommittedOffsets(MappingProxyType(out), tuple(merged.failures))

    async def _round(self, groups: Sequence[ListedGroup], out: _Out, rnd: Round) -> None:
        by_node: dict[int, list[ListedGroup]] = defaultdict(list)
        for group in groups:
            by_node[group.coordinator].append(group)
        await asyncio.gather(
            *(self._on_node(node, members, out, rnd) for node, members in by_node.items())
        )

    async def _on_node(
        self, node: int, groups: Sequence[ListedGroup], out: _Out, rnd: Round
    ) -> None:
        try:
            batched = await self._t.choose(node, OFFSET_FETCH)
            single = (
                None if batched is not None else await self._t.choose(node, OFFSET_FETCH_SINGLE)
            )
        except KafkaError as exc:
            rnd.request_failed(node, exc, groups)
            return
        if batched is not None:
            jobs = [self._batch(node, batched, chunk, out, rnd) for chunk in self._pack(groups)]
        elif single is not None:
            # Brokers without OffsetFetch v8 (Kafka < 3.0, some Kafka-compatible servers): one
            # request per group, pipelined on the coordinator connection.
            jobs = [self._batch(node, single, [g], out, rnd) for g in groups]
        else:
            error = KafkaProtocolError(f"broker {node} supports no usable OffsetFetch version")
            rnd.request_failed(node, error, ())
            return
        await asyncio.gather(*jobs)

    def _pack(self, groups: Sequence[ListedGroup]) -> list[list[ListedGroup]]:
        """Chunks whose expected answer stays under the partition budget."""
        chunks: list[list[ListedGroup]] = []
        current: list[ListedGroup] = []
        weight = 0
        for group in groups:
            cost = max(1, self._partition_counts.get(group.group_id, 1))
            if current and (
                weight + cost > OFFSET_FETCH_PARTITION_BUDGET
                or len(current) >= OFFSET_FETCH_MAX_GROUPS
            ):
                chunks.append(current)
                current, weight = [], 0
            current.append(group)
            weight += cost
        if current:
            chunks.append(current)
        return chunks

    async def _batch(
        self, node: int, version: int, chunk: Sequence[ListedGroup], out: _Out, rnd: Round
    ) -> None:
        ids = [g.group_id for g in chunk]
        spec = OFFSET_FETCH if version >= 8 else OFFSET_FETCH_SINGLE
        async with self._sem:
            try:
                response = await self._t.call(
                    node,
                    spec,
                    version,
                    encode_offset_fetch(version, ids),
                    partial(decode_offset_fetch, version, group=ids[0]),
                    seconds=self._t.performance.offset_fetch_timeout,
                )
            except KafkaError as exc:
                rnd.request_failed(node, exc, chunk)
                return
        rnd.answered += 1
        wanted = {g.group_id: g for g in chunk}
        async for entry in paced(response.groups):
            listed = wanted.pop(entry.group_id, None)
            if listed is not None:
                self._take(listed, entry, out, rnd)
        for missing in wanted:
            rnd.failures.append(Failure(rnd.stage, missing, "OffsetFetch: group missing in answer"))

    def _take(self, listed: ListedGroup, entry: GroupOffsets, out: _Out, rnd: Round) -> None:
        code = entry.error_code
        if code in COORDINATOR_MOVED:
            rnd.retry.append(listed)
            return
        if code == GROUP_ID_NOT_FOUND:
            # The coordinator answered: the group has no offsets (it is gone).
            out[listed.group_id] = MappingProxyType({})
            return
        if code:
            rnd.failures.append(
                Failure(rnd.stage, listed.group_id, f"OffsetFetch: {error_name(code)}")
            )
            return
        offsets: dict[TopicPartition, int] = {}
        bad: list[str] = []
        for p in entry.partitions:
            if p.error_code:
                bad.append(f"{p.topic}-{p.partition}: {error_name(p.error_code)}")
            elif p.offset >= 0:  # -1: no commit for this partition
                offsets[TopicPartition(p.topic, p.partition)] = p.offset
        if bad:
            shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
            rnd.failures.append(Failure(rnd.stage, listed.group_id, f"OffsetFetch: {shown}"))
        self._partition_counts[listed.group_id] = len(entry.partitions)
        out[listed.group_id] = MappingProxyType(offsets)
